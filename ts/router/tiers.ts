// Storage tiers of the engines source: what each worker rank holds on the device and on the lower tiers
// (host_pinned, disk, external), as Dynamo 1.6's lower-tier indexers see it. The device tier is scored by
// the RadixIndex; this keeps each tier's blocks per (worker, dp rank) as (parent hash, tokens hash) →
// block hash links, so that a match can be continued on a lower tier from the last device block (the
// continuation is anchored on that block's engine hash, as Dynamo's). A link's key is one 128-bit BigInt,
// parent << 64 | tokens hash (about 115 bytes of heap per block with its reverse entry; strings took twice that).

import type { RouterEventValue, StorageTier } from '../core/api.js'

const TIER_ORDER: readonly StorageTier[] = ['device', 'host_pinned', 'disk', 'external']
/** The parent of a block stored from the root (no engine hash is 2^64). */
const ROOT = 1n << 64n
const link = (parent: bigint, tokensHash: bigint) => (parent << 64n) | tokensHash

interface Tier {
  /** link(parent, tokensHash) → block hash (parent ROOT for a block from the root). */
  children: Map<bigint, bigint>
  /** block hash → its link key, for removal. */
  links: Map<bigint, bigint>
}

/** A worker rank's continuation: blocks matched cumulatively through each tier. */
export interface TierMatch {
  workerId: bigint
  dpRank: number
  /** Device blocks, then device + host_pinned, then + disk + external (counts of blocks). */
  device: number
  cpu: number
  disk: number
}

/** Per (worker, dp rank) blocks per storage tier (engines source with `tiers`). */
export class TierBlocks {
  /** Lower-tier blocks held over all ranks (0: every answer is the device one, nothing to walk). */
  #lower = 0
  readonly #ranks = new Map<string, { workerId: bigint; dpRank: number; tiers: Map<StorageTier, Tier>; lower: number }>()

  /** Applies one decoded router event (any tier). */
  apply(ev: RouterEventValue): void {
    const tier = ev.storageTier ?? 'device'
    const k = `${ev.workerId}:${ev.event.dpRank}`
    const d = ev.event.data
    if (d.type === 'cleared') {
      this.#lower -= this.#ranks.get(k)?.lower ?? 0
      this.#ranks.delete(k)
      return
    }
    let r = this.#ranks.get(k)
    if (r === undefined) {
      if (d.type !== 'stored') return
      r = { workerId: ev.workerId, dpRank: ev.event.dpRank, tiers: new Map(), lower: 0 }
      this.#ranks.set(k, r)
    }
    let t = r.tiers.get(tier)
    if (t === undefined) {
      if (d.type !== 'stored') return
      t = { children: new Map(), links: new Map() }
      r.tiers.set(tier, t)
    }
    if (d.type === 'stored') {
      let parent = d.parentHash ?? ROOT
      for (const b of d.blocks) {
        const k = link(parent, b.tokensHash)
        if (!t.links.has(b.blockHash)) {
          t.children.set(k, b.blockHash)
          t.links.set(b.blockHash, k)
          if (tier !== 'device') {
            r.lower++
            this.#lower++
          }
        }
        parent = b.blockHash
      }
    } else {
      for (const h of d.blockHashes) {
        const k = t.links.get(h)
        if (k === undefined) continue
        t.links.delete(h)
        if (t.children.get(k) === h) t.children.delete(k)
        if (tier !== 'device') {
          r.lower--
          this.#lower--
        }
      }
    }
  }

  /** Forgets a worker (every rank, every tier). */
  removeWorker(workerId: bigint): void {
    for (const [k, r] of this.#ranks)
      if (r.workerId === workerId) {
        this.#lower -= r.lower
        this.#ranks.delete(k)
      }
  }

  /** Lower-tier blocks held (all ranks). */
  get lowerBlocks(): number {
    return this.#lower
  }

  /**
   * Continues each rank's device match (`device`: blocks per `${worker}:${rank}`) on the lower tiers in
   * Dynamo's order (host_pinned, then disk, then external), each from where the previous stopped. Ranks
   * that hold lower-tier blocks but matched nothing on the device start from the first block.
   */
  match(seq: BigUint64Array, device: Map<string, number>): TierMatch[] {
    const out: TierMatch[] = []
    for (const [k, r] of this.#ranks) {
      const dev = device.get(k) ?? 0
      if (r.lower === 0) {
        if (dev > 0) out.push({ workerId: r.workerId, dpRank: r.dpRank, device: dev, cpu: dev, disk: dev })
        continue
      }
      // the anchor: the engine hash of the last device block of the match
      let anchor = ROOT
      let i = 0
      const dt = r.tiers.get('device')
      while (i < dev && dt !== undefined) {
        const h = dt.children.get(link(anchor, seq[i]!))
        if (h === undefined) break
        anchor = h
        i++
      }
      i = dev
      const walk = (tier: StorageTier) => {
        const t = r.tiers.get(tier)
        if (t === undefined) return
        while (i < seq.length) {
          const h = t.children.get(link(anchor, seq[i]!))
          if (h === undefined) return
          anchor = h
          i++
        }
      }
      walk(TIER_ORDER[1]!)
      const cpu = i
      walk(TIER_ORDER[2]!)
      walk(TIER_ORDER[3]!)
      if (i > 0) out.push({ workerId: r.workerId, dpRank: r.dpRank, device: dev, cpu, disk: i })
    }
    return out
  }
}
