// What a router asks of the core in one call each (mirrors crates/core/src/select.rs): the default
// selector's pass over every candidate rank, and event-plane envelopes applied when they are the next
// event of their rank (RankGate).
import {
  GATE_OTHER,
  GATE_PASS,
  MATCH_RECORD_BYTES,
  type RawBinding,
  type RawRadixIndex,
  type RawRankGate,
  type RouterEventValue,
} from '../core/binding.js'
import { decodeRouterEventList, envelopePayload, PAYLOAD_AT } from './wire.js'

let matchBuf = new Uint8Array(4 + MATCH_RECORD_BYTES * 64)

function tooShort(name: string): never {
  throw new Error(`${name} is shorter than the candidates`)
}

/**
 * The first candidate whose (worker, rank) is not below the key (the columns ascend): a few steps on from
 * `from` when the key is just ahead of it (matches and candidates both ascend), else a binary search.
 */
function seek(ids: BigUint64Array, ranks: Uint32Array, n: number, from: number, workerId: bigint, dpRank: number): number {
  const below = (i: number) => ids[i]! < workerId || (ids[i] === workerId && ranks[i]! < dpRank)
  if (from <= n && (from === 0 || below(from - 1))) for (let i = from; i < Math.min(n, from + 8); i++) if (!below(i)) return i
  let lo = 0
  let hi = n
  while (lo < hi) {
    const mid = lo + ((hi - lo) >>> 1)
    if (below(mid)) lo = mid + 1
    else hi = mid
  }
  return lo
}

/** RawBinding.selectBest (ts/core/binding.ts). */
export const selectBest: RawBinding['selectBest'] = (
  index,
  tokensHashes,
  requestBlocks,
  overlapWeight,
  workerIds,
  dpRanks,
  decodeBlocks,
  n,
  out,
  offset,
) => {
  if (workerIds.length < n) tooShort('workerIds')
  if (dpRanks.length < n) tooShort('dpRanks')
  if (decodeBlocks.length < n) tooShort('decodeBlocks')
  if (out.length < offset + 3 * n) tooShort('out')
  let len = index.findMatches(tokensHashes, false, matchBuf)
  if (len < 0) {
    matchBuf = new Uint8Array(-len)
    len = index.findMatches(tokensHashes, false, matchBuf)
  }
  const overlapAt = offset
  const treeAt = offset + n
  const costAt = offset + 2 * n
  out.fill(0, overlapAt, treeAt + n)
  const view = new DataView(matchBuf.buffer, matchBuf.byteOffset, len)
  const count = view.getUint32(0, true)
  // matches come in ascending order: each is looked for from where the last one was found
  let k = 0
  for (let i = 0, at = 4; i < count; i++, at += MATCH_RECORD_BYTES) {
    const workerId = view.getBigUint64(at, true)
    const dpRank = view.getUint32(at + 8, true)
    k = seek(workerIds, dpRanks, n, k, workerId, dpRank)
    if (k < n && workerIds[k] === workerId && dpRanks[k] === dpRank) {
      out[overlapAt + k] = view.getUint32(at + 12, true)
      out[treeAt + k] = Number(view.getBigUint64(at + 16, true))
    }
  }
  let best = -1
  for (let i = 0; i < n; i++) {
    const cost = overlapWeight * Math.max(0, requestBlocks - out[overlapAt + i]!) + decodeBlocks[i]!
    out[costAt + i] = cost
    if (best < 0 || cost < out[costAt + best]!) best = i
  }
  return best
}

const KIND_CODES = { stored: 0, removed: 1, cleared: 2 } as const

/** RawRankGate (ts/core/binding.ts). */
export class FallbackRankGate implements RawRankGate {
  /** next id due and whether an event was applied since takeSeen, by `${workerId}:${dpRank}` */
  readonly #ranks = new Map<string, { workerId: bigint; next: bigint; seen: boolean }>()

  arm(workerId: bigint, dpRank: number, next: bigint): void {
    this.#ranks.set(`${workerId}:${dpRank}`, { workerId, next, seen: false })
  }

  disarm(workerId: bigint, dpRank: number): bigint | null {
    const k = `${workerId}:${dpRank}`
    const armed = this.#ranks.get(k)
    this.#ranks.delete(k)
    return armed === undefined ? null : armed.next
  }

  removeWorker(workerId: bigint): void {
    for (const [k, a] of this.#ranks) if (a.workerId === workerId) this.#ranks.delete(k)
  }

  takeSeen(): BigUint64Array {
    const seen = new Set<bigint>()
    for (const a of this.#ranks.values())
      if (a.seen) {
        a.seen = false
        seen.add(a.workerId)
      }
    return BigUint64Array.from([...seen].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)))
  }

  apply(index: RawRadixIndex, payload: Uint8Array, out: BigUint64Array): number {
    if (out.length < 6) throw new Error('out must hold 6 values')
    let ev: RouterEventValue
    try {
      envelopePayload(payload)
      // one RouterEvent map (a Dynamo 1.4+ array goes to the caller)
      const first = payload[PAYLOAD_AT.at]
      if (PAYLOAD_AT.len === 0 || !((first! & 0xf0) === 0x80 || first === 0xde || first === 0xdf)) return GATE_OTHER
      const list = decodeRouterEventList(payload.subarray(PAYLOAD_AT.at, PAYLOAD_AT.at + PAYLOAD_AT.len), false)
      if (list.length !== 1) return GATE_OTHER
      ev = list[0]!
    } catch {
      return GATE_OTHER
    }
    const kind = KIND_CODES[ev.event.data.type]
    const armed = this.#ranks.get(`${ev.workerId}:${ev.event.dpRank}`)
    out[0] = ev.workerId
    out[1] = ev.event.eventId
    out[2] = BigInt(ev.event.dpRank)
    out[3] = BigInt(kind)
    out[4] = armed === undefined ? 0n : 1n
    out[5] = armed === undefined ? 0n : armed.next
    if (armed === undefined || armed.next !== ev.event.eventId) return GATE_PASS
    armed.next = BigInt.asUintN(64, armed.next + 1n)
    armed.seen = true
    return index.applyEvent(ev) + 5 * kind
  }
}
