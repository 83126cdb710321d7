// A seeded generator of router-event streams for the indexer tests and benchmarks (SPEC 6), plus a
// naive reference model of the indexer rules used as an oracle. Independent of both implementations.
//
// The token-hash universe is a tree: a root block is one of `rootBranches` shared starts (system
// prompts) or, rarely, unique content; the first `sharedDepth` blocks below a shared start are the same
// for everyone (a fixed prompt), deeper blocks branch `branchWidth` ways (so workers that extend the
// same path often meet on the same nodes) or are unique content. A block hash is derived from the
// parent's block hash, the tokens hash and a salt, as engines do, so the same tokens under another salt
// (a cache salt, or another engine's hashing) give another block hash.
//
// Stores: root stores along shared prefixes, chained stores extending one of the worker's own live
// hashes, re-stores of a recent chain, stores under an unknown parent, moves (a live block hash stored
// at a new place), invalid sequences (a repeated hash, or a hash equal to the parent). Removes: live
// hashes anywhere in the worker's chains (so in the middle of chains), unknown hashes, duplicates, and
// capacity evictions. Occasional clears (all dp ranks of the worker) and removeWorker /
// removeWorkerDpRank calls. Queries: prefixes of live chains extended by continuations or random
// hashes, walks of the shared tree, and random hashes.
import type { ConvertedEvent, RouterEventValue, StoredBlock } from '../../ts/core/binding.js'
import { Rng } from './gen-batches.js'

export { Rng }

const M64 = (1n << 64n) - 1n

/** splitmix64 finaliser of a ^ (b * golden): a cheap, well-spread u64 mix. */
export function mix(a: bigint, b: bigint): bigint {
  let z = (a ^ ((b * 0x9e3779b97f4a7c15n) & M64)) & M64
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64
  return z ^ (z >> 31n)
}

export type IndexOp =
  | { op: 'event'; ev: RouterEventValue }
  | { op: 'removeWorker'; workerId: bigint }
  | { op: 'removeWorkerDpRank'; workerId: bigint; dpRank: number }

export interface EventGenOptions {
  workers: number
  dpRanks: number[]
  /** explicit worker ids (else drawn: small ones, random u64s and some >= 2^63) */
  workerIds?: bigint[]
  rootBranches: number
  sharedDepth: number
  branchWidth: number
  /** probability that a further block is unique content instead of one of branchWidth branches */
  uniqueRate: number
  /** blocks per store: 1 + int(maxBlocks) */
  maxBlocks: number
  /** chains deeper than this are not extended further */
  maxDepth: number
  removeRate: number
  clearRate: number
  removeWorkerRate: number
  removeWorkerDpRankRate: number
  /** store under salt 1 or 2: the same tokens under another block hash */
  saltRate: number
  /** every key whose index is a multiple of this hashes with its own salt (0 = none) */
  saltedKeyEvery: number
  rootStoreRate: number
  restoreRate: number
  moveRate: number
  unknownParentRate: number
  invalidRate: number
  /** removes of only unknown hashes */
  unknownRemoveRate: number
  /** per removed hash: chance of an unknown hash next to it, and (0.6x) of a duplicate */
  removeNoiseRate: number
  /** live hashes per key before evictions start */
  maxLivePerKey: number
  /** first event id of every key */
  firstEventId: bigint
}

export const DEFAULT_EVENT_GEN: EventGenOptions = {
  workers: 32,
  dpRanks: [0, 1],
  rootBranches: 12,
  sharedDepth: 3,
  branchWidth: 3,
  uniqueRate: 0.15,
  maxBlocks: 16,
  maxDepth: 96,
  removeRate: 0.2,
  clearRate: 0.002,
  removeWorkerRate: 0.0003,
  removeWorkerDpRankRate: 0.0003,
  saltRate: 0.08,
  saltedKeyEvery: 5,
  rootStoreRate: 0.3,
  restoreRate: 0.04,
  moveRate: 0.01,
  unknownParentRate: 0.01,
  invalidRate: 0.003,
  unknownRemoveRate: 0.03,
  removeNoiseRate: 0.05,
  maxLivePerKey: 3000,
  firstEventId: 1n,
}

/** A token-hash path, shared structurally (a persistent list from the block up to the root). */
interface PathNode {
  tokensHash: bigint
  parent: PathNode | null
  depth: number // 1 for a root block
}

/** A set of bigints with O(1) add, delete and random pick. */
class PickSet<V> {
  readonly keys: bigint[] = []
  readonly values: V[] = []
  readonly #at = new Map<bigint, number>()
  get size(): number {
    return this.keys.length
  }
  get(k: bigint): V | undefined {
    const i = this.#at.get(k)
    return i === undefined ? undefined : this.values[i]
  }
  has(k: bigint): boolean {
    return this.#at.has(k)
  }
  set(k: bigint, v: V): void {
    const i = this.#at.get(k)
    if (i !== undefined) {
      this.values[i] = v
      return
    }
    this.#at.set(k, this.keys.length)
    this.keys.push(k)
    this.values.push(v)
  }
  delete(k: bigint): boolean {
    const i = this.#at.get(k)
    if (i === undefined) return false
    const last = this.keys.length - 1
    if (i !== last) {
      this.keys[i] = this.keys[last]!
      this.values[i] = this.values[last]!
      this.#at.set(this.keys[i]!, i)
    }
    this.keys.pop()
    this.values.pop()
    this.#at.delete(k)
    return true
  }
  clear(): void {
    this.keys.length = 0
    this.values.length = 0
    this.#at.clear()
  }
  pick(rng: Rng): bigint {
    return this.keys[rng.int(this.keys.length)]!
  }
}

interface KeyState {
  workerId: bigint
  workerIndex: number
  dpRank: number
  nextEventId: bigint
  /** what the generator believes the worker holds: block hash -> its token path */
  live: PickSet<PathNode>
  /** recent stored events (for re-stores) */
  recent: Extract<ConvertedEvent, { type: 'stored' }>[]
}

export class EventGenerator {
  readonly rng: Rng
  readonly opts: EventGenOptions
  readonly workerIds: bigint[]
  readonly keys: KeyState[] = []
  readonly #rootTokens: bigint[]
  /** counts of what was generated, for reporting */
  readonly stats = { stored: 0, removed: 0, cleared: 0, blocks: 0, removedHashes: 0, removeWorker: 0, removeWorkerDpRank: 0 }

  constructor(seed: number, opts: Partial<EventGenOptions> = {}) {
    this.rng = new Rng(seed)
    this.opts = { ...DEFAULT_EVENT_GEN, ...opts }
    const r = this.rng
    if (this.opts.workerIds) this.workerIds = [...this.opts.workerIds]
    else {
      const ids = new Set<bigint>()
      while (ids.size < this.opts.workers) {
        const k = r.int(4)
        ids.add(k === 0 ? BigInt(r.int(100)) : k === 1 ? (1n << 63n) | r.u64() : r.u64())
      }
      this.workerIds = [...ids]
    }
    this.workerIds.forEach((workerId, workerIndex) => {
      for (const dpRank of this.opts.dpRanks)
        this.keys.push({ workerId, workerIndex, dpRank, nextEventId: this.opts.firstEventId, live: new PickSet(), recent: [] })
    })
    this.#rootTokens = Array.from({ length: this.opts.rootBranches }, (_, b) => mix(0x5eedn, BigInt(b + 1)))
  }

  // ---- the token-hash universe -------------------------------------------------------------------

  /** Tokens hash of a root block: a shared start, or (rarely) unique content. */
  #rootToken(): bigint {
    return this.rng.chance(0.05) ? this.rng.u64() : this.rng.pick(this.#rootTokens)
  }

  /** Tokens hash of the block after `prev` at depth `depth` (1-based depth of the new block). */
  #nextToken(prev: bigint, depth: number): bigint {
    if (depth <= this.opts.sharedDepth + 1) return mix(prev, 0n)
    if (this.rng.chance(this.opts.uniqueRate)) return this.rng.u64()
    return mix(prev, BigInt(1 + this.rng.int(this.opts.branchWidth)))
  }

  #saltOf(k: KeyState): bigint {
    if (this.rng.chance(this.opts.saltRate)) return BigInt(1 + this.rng.int(2))
    const every = this.opts.saltedKeyEvery
    return every > 0 && k.workerIndex % every === 0 ? 7n : 0n
  }

  static blockHash(parentBlockHash: bigint | null, tokensHash: bigint, salt: bigint): bigint {
    return mix(parentBlockHash ?? 0x0123456789abcdefn, tokensHash ^ (salt * 0x100000001b3n))
  }

  /** The tokens hashes from the root to `p`. */
  static path(p: PathNode): bigint[] {
    const out: bigint[] = new Array(p.depth)
    for (let q: PathNode | null = p; q; q = q.parent) out[q.depth - 1] = q.tokensHash
    return out
  }

  // ---- events ------------------------------------------------------------------------------------

  #event(k: KeyState, data: ConvertedEvent): IndexOp {
    const eventId = k.nextEventId
    k.nextEventId += 1n
    return { op: 'event', ev: { workerId: k.workerId, event: { eventId, dpRank: k.dpRank, data } } }
  }

  #forget(workerId: bigint, dpRank?: number): void {
    for (const k of this.keys) if (k.workerId === workerId && (dpRank === undefined || k.dpRank === dpRank)) k.live.clear()
  }

  /** The next operation: mostly an event, rarely a removeWorker / removeWorkerDpRank call. */
  next(): IndexOp {
    const r = this.rng
    const o = this.opts
    const k = r.pick(this.keys)
    if (r.chance(o.removeWorkerRate)) {
      this.#forget(k.workerId)
      this.stats.removeWorker++
      return { op: 'removeWorker', workerId: k.workerId }
    }
    if (r.chance(o.removeWorkerDpRankRate)) {
      this.#forget(k.workerId, k.dpRank)
      this.stats.removeWorkerDpRank++
      return { op: 'removeWorkerDpRank', workerId: k.workerId, dpRank: k.dpRank }
    }
    if (r.chance(o.clearRate)) {
      this.#forget(k.workerId) // cleared drops every dp rank of the worker
      this.stats.cleared++
      return this.#event(k, { type: 'cleared' })
    }
    if (k.live.size > o.maxLivePerKey) return this.#removed(k, 16 + r.int(48))
    if (r.chance(o.removeRate)) return this.#removed(k, 1 + r.int(8))
    return this.#stored(k)
  }

  /** The next event only (removeWorker calls are skipped). */
  nextEvent(): RouterEventValue {
    for (;;) {
      const op = this.next()
      if (op.op === 'event') return op.ev
    }
  }

  #removed(k: KeyState, n: number): IndexOp {
    const r = this.rng
    const hashes: bigint[] = []
    if (k.live.size === 0 || r.chance(this.opts.unknownRemoveRate)) {
      for (let j = 0, m = 1 + r.int(3); j < m; j++) hashes.push(r.u64())
    } else {
      for (let j = 0; j < n && k.live.size > 0; j++) {
        if (r.chance(this.opts.removeNoiseRate)) hashes.push(r.u64()) // unknown among known ones
        if (r.chance(0.6 * this.opts.removeNoiseRate) && hashes.length) hashes.push(hashes[r.int(hashes.length)]!) // duplicate
        const h = k.live.pick(r)
        k.live.delete(h)
        hashes.push(h)
      }
    }
    this.stats.removed++
    this.stats.removedHashes += hashes.length
    return this.#event(k, { type: 'removed', blockHashes: hashes })
  }

  #stored(k: KeyState): IndexOp {
    const r = this.rng
    const o = this.opts
    const x = r.next()
    let cut = o.restoreRate
    if (x < cut && k.recent.length > 0) {
      // re-store a recent chain (idempotent when its parent is still held)
      const data = r.pick(k.recent)
      if (data.parentHash === null || k.live.has(data.parentHash)) this.#believeStored(k, data)
      return this.#countStore(k, data)
    }
    cut += o.moveRate
    if (x < cut && k.live.size >= 2) return this.#move(k)
    cut += o.unknownParentRate
    if (x < cut) {
      const data = this.#chain(k, r.u64(), null)
      return this.#countStore(k, data)
    }
    cut += o.invalidRate
    if (x < cut) {
      const data = this.#chain(k, null, null, r.chance(0.3) ? 17 + r.int(30) : 2 + r.int(3)) // long ones too
      const blocks = data.blocks
      if (r.chance(0.5))
        blocks.push({ ...blocks[r.int(blocks.length)]! }) // a repeated hash
      else data.parentHash = blocks[r.int(blocks.length)]!.blockHash // a hash equal to the parent
      return this.#countStore(k, data)
    }
    let parent: bigint | null = null
    let parentPath: PathNode | null = null
    if (k.live.size > 0 && !r.chance(o.rootStoreRate)) {
      parent = k.live.pick(r)
      parentPath = k.live.get(parent)!
      if (parentPath.depth >= o.maxDepth) {
        parent = null
        parentPath = null
      }
    }
    const data = this.#chain(k, parent, parentPath)
    this.#believeStored(k, data)
    k.recent.push(data)
    if (k.recent.length > 8) k.recent.shift()
    return this.#countStore(k, data)
  }

  #countStore(k: KeyState, data: Extract<ConvertedEvent, { type: 'stored' }>): IndexOp {
    this.stats.stored++
    this.stats.blocks += data.blocks.length
    return this.#event(k, data)
  }

  /** Records the paths of a store's blocks (when the parent is known or null). */
  #believeStored(k: KeyState, data: Extract<ConvertedEvent, { type: 'stored' }>): void {
    let path: PathNode | null = data.parentHash === null ? null : (k.live.get(data.parentHash) ?? null)
    if (data.parentHash !== null && path === null) return
    for (const b of data.blocks) {
      path = { tokensHash: b.tokensHash, parent: path, depth: (path?.depth ?? 0) + 1 }
      k.live.set(b.blockHash, path)
    }
  }

  /** A chain of new blocks under `parent` (null: a root store). */
  #chain(
    k: KeyState,
    parent: bigint | null,
    parentPath: PathNode | null,
    n = 1 + this.rng.int(this.opts.maxBlocks),
  ): Extract<ConvertedEvent, { type: 'stored' }> {
    const salt = this.#saltOf(k)
    const blocks: StoredBlock[] = []
    let prevBlock = parent
    let prevTokens = parentPath?.tokensHash ?? null
    let depth = parentPath?.depth ?? (parent === null ? 0 : 1 + this.rng.int(8))
    for (let j = 0; j < n; j++) {
      depth++
      const tokensHash = prevTokens === null ? this.#rootToken() : this.#nextToken(prevTokens, depth)
      const blockHash = EventGenerator.blockHash(prevBlock, tokensHash, salt)
      blocks.push({ blockHash, tokensHash, mmExtraInfo: null })
      prevBlock = blockHash
      prevTokens = tokensHash
    }
    return { type: 'stored', parentHash: parent, blocks }
  }

  /** A live block hash stored at a new place: under another live hash, or at the root. */
  #move(k: KeyState): IndexOp {
    const r = this.rng
    const h = k.live.pick(r)
    let parent: bigint | null = k.live.pick(r)
    if (parent === h || r.chance(0.3)) parent = null
    const parentPath = parent === null ? null : k.live.get(parent)!
    const data = this.#chain(k, parent, parentPath, 1 + r.int(3))
    const last = data.blocks[data.blocks.length - 1]!
    last.blockHash = h
    // the chain's other blocks must not repeat h
    if (data.blocks.slice(0, -1).some((b) => b.blockHash === h)) data.blocks = [last]
    this.#believeStored(k, data)
    return this.#countStore(k, data)
  }

  // ---- queries -----------------------------------------------------------------------------------

  /** A query: prefixes of live chains (extended), walks of the shared tree, or random hashes. */
  query(maxLen = 128): BigUint64Array {
    const r = this.rng
    const x = r.next()
    let q: bigint[]
    const withLive = this.keys.filter((k) => k.live.size > 0)
    if (x < 0.55 && withLive.length > 0) {
      const k = r.pick(withLive)
      const full = EventGenerator.path(k.live.get(k.live.pick(r))!)
      q = full.slice(0, 1 + r.int(full.length))
      for (let j = 0, m = r.chance(0.5) ? r.int(8) : 0; j < m; j++)
        q.push(r.chance(0.5) ? this.#nextToken(q[q.length - 1]!, q.length + 1) : r.u64())
    } else if (x < 0.85) {
      q = [r.pick(this.#rootTokens)]
      for (let j = 0, m = r.int(40); j < m; j++) q.push(this.#nextToken(q[q.length - 1]!, q.length + 1))
    } else if (x < 0.95) {
      q = Array.from({ length: 1 + r.int(8) }, () => r.u64())
    } else {
      q = [r.pick(this.#rootTokens), ...Array.from({ length: r.int(4) }, () => r.u64())]
    }
    if (r.chance(0.01)) q = []
    return BigUint64Array.from(q.slice(0, maxLen))
  }

  /** A query of exactly `len` hashes following a live chain as far as it goes, then the shared tree. */
  deepQuery(len: number): BigUint64Array {
    const r = this.rng
    const withLive = this.keys.filter((k) => k.live.size > 0)
    let q: bigint[] = []
    if (withLive.length > 0) {
      const k = r.pick(withLive)
      q = EventGenerator.path(k.live.get(k.live.pick(r))!)
      q = q.slice(0, Math.min(len, 1 + r.int(q.length)))
    }
    if (q.length === 0) q.push(r.pick(this.#rootTokens))
    while (q.length < len) q.push(this.#nextToken(q[q.length - 1]!, q.length + 1))
    return BigUint64Array.from(q)
  }
}

// ---------------------------------------------------------------------------------------------------
// Reference model: the rules of SPEC 6, as plainly as possible (nodes are JS
// objects that are never freed; a node that loses its last holder clears its children map).

type Key = string
const keyOf = (workerId: bigint, dpRank: number): Key => `${workerId}/${dpRank}`

interface MNode {
  tokensHash: bigint
  children: Map<bigint, MNode>
  /** per worker key, that worker's hashes on this node in the order they were put there */
  holders: Map<MWorker, bigint[]>
}

interface MWorker {
  workerId: bigint
  dpRank: number
  lookup: Map<bigint, MNode>
  lastEventId: bigint
}

const byKey = (a: MWorker, b: MWorker) => (a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : a.dpRank - b.dpRank)

export interface ModelScore {
  workerId: bigint
  dpRank: number
  score: number
}

export class ReferenceIndex {
  readonly root: MNode = { tokensHash: 0n, children: new Map(), holders: new Map() }
  readonly workersByKey = new Map<Key, MWorker>()
  readonly counters = {
    applied_stored: 0n,
    applied_removed: 0n,
    applied_cleared: 0n,
    parent_not_found: 0n,
    block_not_found: 0n,
    invalid_block_sequence: 0n,
    blocks_stored: 0n,
    blocks_removed: 0n,
  }

  #worker(workerId: bigint, dpRank: number): MWorker {
    const key = keyOf(workerId, dpRank)
    let w = this.workersByKey.get(key)
    if (!w) {
      w = { workerId, dpRank, lookup: new Map(), lastEventId: 0n }
      this.workersByKey.set(key, w)
    }
    return w
  }

  #leave(w: MWorker, hash: bigint): void {
    const node = w.lookup.get(hash)!
    w.lookup.delete(hash)
    const hs = node.holders.get(w)!
    hs.splice(hs.indexOf(hash), 1)
    if (hs.length === 0) {
      node.holders.delete(w)
      if (node.holders.size === 0) node.children.clear()
    }
  }

  #clearWorker(w: MWorker): void {
    for (const h of [...w.lookup.keys()]) this.#leave(w, h)
  }

  applyEvent(ev: RouterEventValue): 'applied' | 'parent_not_found' | 'block_not_found' | 'invalid_block_sequence' {
    const w = this.#worker(ev.workerId, ev.event.dpRank)
    w.lastEventId = ev.event.eventId
    const d = ev.event.data
    const c = this.counters
    if (d.type === 'cleared') {
      for (const x of this.workersByKey.values()) if (x.workerId === ev.workerId) this.#clearWorker(x)
      c.applied_cleared++
      return 'applied'
    }
    if (d.type === 'removed') {
      let missing = 0
      for (const h of d.blockHashes) {
        if (w.lookup.has(h)) {
          this.#leave(w, h)
          c.blocks_removed++
        } else missing++
      }
      c.applied_removed++
      c.block_not_found += BigInt(missing)
      return missing > 0 ? 'block_not_found' : 'applied'
    }
    const seen = new Set<bigint>()
    for (const b of d.blocks) {
      if (seen.has(b.blockHash) || b.blockHash === d.parentHash) {
        c.invalid_block_sequence++
        return 'invalid_block_sequence'
      }
      seen.add(b.blockHash)
    }
    let current = this.root
    if (d.parentHash !== null) {
      const p = w.lookup.get(d.parentHash)
      if (!p) {
        c.parent_not_found++
        return 'parent_not_found'
      }
      current = p
    }
    for (const b of d.blocks) {
      const old = w.lookup.get(b.blockHash)
      if (old && old !== current.children.get(b.tokensHash)) this.#leave(w, b.blockHash)
      let child = current.children.get(b.tokensHash)
      if (!child) {
        child = { tokensHash: b.tokensHash, children: new Map(), holders: new Map() }
        current.children.set(b.tokensHash, child)
      }
      if (w.lookup.get(b.blockHash) !== child) {
        w.lookup.set(b.blockHash, child)
        const hs = child.holders.get(w)
        if (hs) hs.push(b.blockHash)
        else child.holders.set(w, [b.blockHash])
      }
      current = child
    }
    c.applied_stored++
    c.blocks_stored += BigInt(d.blocks.length)
    return 'applied'
  }

  removeWorker(workerId: bigint): void {
    for (const [k, w] of [...this.workersByKey]) {
      if (w.workerId !== workerId) continue
      this.#clearWorker(w)
      this.workersByKey.delete(k)
    }
  }

  removeWorkerDpRank(workerId: bigint, dpRank: number): void {
    const w = this.workersByKey.get(keyOf(workerId, dpRank))
    if (!w) return
    this.#clearWorker(w)
    this.workersByKey.delete(keyOf(workerId, dpRank))
  }

  #sortedWorkers(): MWorker[] {
    return [...this.workersByKey.values()].sort(byKey)
  }

  findMatches(
    q: ArrayLike<bigint>,
    earlyExit = false,
  ): { scores: ModelScore[]; treeSizes: { workerId: bigint; dpRank: number; size: number }[] } {
    const scores = new Map<MWorker, number>()
    const first: MNode | undefined = q.length > 0 ? this.root.children.get(q[0]!) : undefined
    if (first) {
      let node: MNode = first
      let active = new Set(node.holders.keys())
      let depth = 1
      for (let i = 1; i < q.length && active.size > 0; i++) {
        if (earlyExit && active.size === 1) break
        const child: MNode | undefined = node.children.get(q[i]!)
        if (!child) break
        const next = new Set<MWorker>()
        for (const k of active) {
          if (child.holders.has(k)) next.add(k)
          else scores.set(k, depth)
        }
        active = next
        node = child
        depth++
      }
      for (const k of active) scores.set(k, depth)
    }
    const out = [...scores.keys()].filter((w) => scores.get(w)! > 0).sort(byKey)
    return {
      scores: out.map((w) => ({ workerId: w.workerId, dpRank: w.dpRank, score: scores.get(w)! })),
      treeSizes: out.map((w) => ({ workerId: w.workerId, dpRank: w.dpRank, size: w.lookup.size })),
    }
  }

  /** dump() as SPEC 6 describes it; `order` of the hashes of one worker on one node: as put there. */
  dump(filter?: (w: { workerId: bigint; dpRank: number }) => boolean): RouterEventValue[] {
    const out: RouterEventValue[] = []
    for (const w of this.#sortedWorkers()) {
      if (filter && !filter(w)) continue
      const visit = (node: MNode, parentHash: bigint | null) => {
        const kids = [...node.children.values()].sort((a, b) => (a.tokensHash < b.tokensHash ? -1 : a.tokensHash > b.tokensHash ? 1 : 0))
        for (const child of kids) {
          const hs = child.holders.get(w)
          if (!hs) continue
          for (const h of hs)
            out.push({
              workerId: w.workerId,
              event: {
                eventId: w.lastEventId,
                dpRank: w.dpRank,
                data: { type: 'stored', parentHash, blocks: [{ blockHash: h, tokensHash: child.tokensHash, mmExtraInfo: null }] },
              },
            })
          visit(child, hs[0]!)
        }
      }
      visit(this.root, null)
    }
    return out
  }

  workers(): bigint[] {
    return [...new Set([...this.workersByKey.values()].map((w) => w.workerId))].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
  }

  size(): number {
    let n = 0
    for (const w of this.workersByKey.values()) n += w.lookup.size
    return n
  }
}

/** Applies an IndexOp to anything with the RadixIndex surface; returns the outcome of an event. */
export function applyOp(
  index: { applyEvent(ev: RouterEventValue): string; removeWorker(id: bigint): void; removeWorkerDpRank(id: bigint, rank: number): void },
  op: IndexOp,
): string | null {
  if (op.op === 'event') return index.applyEvent(op.ev)
  if (op.op === 'removeWorker') index.removeWorker(op.workerId)
  else index.removeWorkerDpRank(op.workerId, op.dpRank)
  return null
}
