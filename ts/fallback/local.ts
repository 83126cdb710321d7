// The worker-side local indexer (SPEC 6) for the fallback: a radix index plus, per dp rank, a ring of
// the last N events applied, for router recovery (eventsInRange).
//
// The ring keeps each event encoded (msgpack RouterEvent bytes, or the JSON an ingestor in jetstream
// mode emitted) with its id as u32 halves: compact, never shared with a caller, and decoded into fresh
// objects only when a range is asked for.
import type { BlockExtraInfo, RawLocalIndexer, RawRangeResult, RouterEventValue, StoredBlock } from '../core/binding.js'
import { type FallbackDumpCursor, FallbackRadixIndex, OUTCOME_IGNORED, targetsGpuIndex } from './index.js'
import { bigFromHalves, ByteWriter } from './msgpack.js'
import { decodeEncodedList, decodeRouterEvent, jsonEncoder, msgpackEncoder, writeRouterEvent } from './wire.js'

export const RING_MSGPACK = 1
/** Open reply cursors per local indexer (lib.rs MAX_REPLIES). */
const MAX_REPLIES = 1024
const TREE_DUMP_HEAD = Buffer.from('{"TreeDump":[')

/** A recovery body being read in chunks (local.rs ReplyCursor): the bytes not yet returned are w.buf[at, w.pos). */
interface Reply {
  dump: FallbackDumpCursor | null
  any: boolean
  w: ByteWriter
  at: number
}
export const RING_JSON = 2

/** The last `cap` events of one dp rank, oldest first from `head`. */
class Ring {
  idHi: Uint32Array
  idLo: Uint32Array
  fmt: Uint8Array
  items: Uint8Array[] = []
  /** Slot of the oldest event (0 until the ring is full). */
  head = 0
  count = 0

  constructor(readonly cap: number) {
    const initial = Math.min(cap, 16)
    this.idHi = new Uint32Array(initial)
    this.idLo = new Uint32Array(initial)
    this.fmt = new Uint8Array(initial)
  }

  push(idHi: number, idLo: number, bytes: Uint8Array, fmt: number): void {
    let at: number
    if (this.count < this.cap) {
      if (this.count === this.idHi.length) {
        // not full yet, so slots [0, count) are in order: grow by copying
        const cap = Math.min(this.cap, this.idHi.length * 2)
        const hi = new Uint32Array(cap)
        const lo = new Uint32Array(cap)
        const f = new Uint8Array(cap)
        hi.set(this.idHi)
        lo.set(this.idLo)
        f.set(this.fmt)
        this.idHi = hi
        this.idLo = lo
        this.fmt = f
      }
      at = this.count++
    } else {
      at = this.head
      this.head = this.head + 1 === this.cap ? 0 : this.head + 1
    }
    this.idHi[at] = idHi
    this.idLo[at] = idLo
    this.fmt[at] = fmt
    this.items[at] = bytes
  }

  /** Slot of the i-th oldest event. */
  slot(i: number): number {
    const s = this.head + i
    return s >= this.cap ? s - this.cap : s
  }

  decode(slot: number): RouterEventValue {
    return decodeRouterEvent(this.items[slot]!, this.fmt[slot] === RING_JSON)
  }
}

/** The event with absent optional values (undefined) as null, as the encoder expects. */
function normalized(ev: RouterEventValue): RouterEventValue {
  const d = ev.event.data
  if (d.type !== 'stored') return ev
  if (d.parentHash !== undefined && d.blocks.every((b) => b.mmExtraInfo !== undefined)) return ev
  return {
    workerId: ev.workerId,
    event: {
      eventId: ev.event.eventId,
      dpRank: ev.event.dpRank,
      data: {
        type: 'stored',
        parentHash: d.parentHash ?? null,
        blocks: d.blocks.map((b) => ({ ...b, mmExtraInfo: b.mmExtraInfo ?? null })),
      },
    },
  }
}

/** -1, 0, 1 comparing u64 halves. */
function cmp64(ahi: number, alo: number, bhi: number, blo: number): number {
  if (ahi !== bhi) return ahi < bhi ? -1 : 1
  if (alo !== blo) return alo < blo ? -1 : 1
  return 0
}

export class FallbackLocalIndexer extends FallbackRadixIndex implements RawLocalIndexer {
  private readonly rings = new Map<number, Ring>()
  private readonly scratch = new ByteWriter(1024)
  private replies = new Map<number, Reply>()
  private nextReply = 0

  readonly bufferSize: number

  /** bufferSize: events kept per dp rank (at least 1, as in the core). */
  constructor(bufferSize: number) {
    super()
    this.bufferSize = Math.max(1, bufferSize)
  }

  /** Makes a dp rank known (an empty ring) without an event. */
  registerRank(dpRank: number): void {
    if (!this.rings.has(dpRank)) this.rings.set(dpRank, new Ring(this.bufferSize))
  }

  /** Buffers one event already encoded (RING_MSGPACK or RING_JSON); the bytes must not be shared. */
  bufferEncoded(dpRank: number, idHi: number, idLo: number, bytes: Uint8Array, fmt: number): void {
    let ring = this.rings.get(dpRank)
    if (ring === undefined) {
      ring = new Ring(this.bufferSize)
      this.rings.set(dpRank, ring)
    }
    ring.push(idHi, idLo, bytes, fmt)
  }

  override applyEvent(ev: RouterEventValue): number {
    // an event of another tier or domain is neither applied nor buffered (index.rs apply_with_meta)
    if (!targetsGpuIndex(ev)) return OUTCOME_IGNORED
    const outcome = super.applyEvent(ev)
    const w = this.scratch
    w.reset()
    writeRouterEvent(w, msgpackEncoder, normalized(ev))
    const id = ev.event.eventId
    this.bufferEncoded(ev.event.dpRank, Number(id >> 32n), Number(id & 0xffffffffn), w.buf.slice(0, w.pos), RING_MSGPACK)
    return outcome
  }

  // The flat forms apply and buffer through applyEvent: the ring keeps the event's bytes either way.
  override applyStored(
    head: BigUint64Array,
    dpRank: number,
    hasParent: boolean,
    blockHashes: BigUint64Array,
    tokensHashes: BigUint64Array,
    n: number,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
  ): number {
    const blocks: StoredBlock[] = new Array(n)
    for (let i = 0; i < n; i++)
      blocks[i] = { blockHash: blockHashes[i]!, tokensHash: tokensHashes[i]!, mmExtraInfo: blockMmInfos?.[i] ?? null }
    return this.applyEvent({
      workerId: head[0]!,
      event: { eventId: head[1]!, dpRank, data: { type: 'stored', parentHash: hasParent ? head[2]! : null, blocks } },
    })
  }

  override applyRemoved(head: BigUint64Array, dpRank: number, blockHashes: BigUint64Array, n: number): number {
    return this.applyEvent({
      workerId: head[0]!,
      event: { eventId: head[1]!, dpRank, data: { type: 'removed', blockHashes: Array.from(blockHashes.subarray(0, n)) } },
    })
  }

  override applyCleared(head: BigUint64Array, dpRank: number): number {
    return this.applyEvent({ workerId: head[0]!, event: { eventId: head[1]!, dpRank, data: { type: 'cleared' } } })
  }

  override applyEncoded(payload: Uint8Array, format: number): number {
    const r = this.applyCanonical(payload, format)
    if (r < 0) return this.applyList(decodeEncodedList(payload, format)) // applyEvent above buffers each
    const ev = this.canonical
    this.bufferEncoded(ev.dpRank, ev.eventIdHi, ev.eventIdLo, payload.slice(this.canonicalAt, this.canonicalEnd), RING_MSGPACK)
    return r
  }

  protected override fresh(): FallbackLocalIndexer {
    return new FallbackLocalIndexer(this.bufferSize)
  }

  /** The answer as the recovery response JSON, byte for byte as the core's write_range_result_json. */
  eventsInRangeJson(dpRank: number, start: bigint | null, end: bigint | null): Buffer {
    const w = new ByteWriter(1024)
    writeRangeResult(w, this.eventsInRange(dpRank, start, end))
    return w.toBuffer()
  }

  rangeReplyOpen(dpRank: number, start: bigint | null, end: bigint | null): number {
    const r = this.rangeAnswer(dpRank, start, end)
    if (r === 'dump') return this.dumpReplyOpen(dpRank)
    const w = new ByteWriter(1024)
    writeRangeResult(w, r)
    return this.addReply({ dump: null, any: false, w, at: 0 })
  }

  dumpReplyOpen(dpRank: number | null): number {
    const w = new ByteWriter(4096)
    w.bytes(TREE_DUMP_HEAD)
    return this.addReply({ dump: this.dumpCursor(dpRank), any: false, w, at: 0 })
  }

  replyNext(cursor: number, maxBytes: number): Buffer | null {
    const r = this.replies.get(cursor)
    if (r === undefined) throw new Error(`LocalIndexer: no open reply cursor ${cursor}`)
    const max = Math.max(1, maxBytes)
    const w = r.w
    if (r.dump !== null) {
      if (!this.dumpValid(r.dump)) {
        this.replies.delete(cursor)
        throw new Error('LocalIndexer: the index changed since the dump was opened')
      }
      while (w.pos - r.at < max) {
        const ev = this.dumpNext(r.dump)
        if (ev === 'stale') throw new Error('LocalIndexer: the index changed since the dump was opened')
        if (ev === null) {
          w.bytes(Buffer.from(']}'))
          r.dump = null
          break
        }
        if (r.any) w.byte(0x2c)
        r.any = true
        writeRouterEvent(w, jsonEncoder, ev)
      }
    }
    if (r.at >= w.pos) {
      this.replies.delete(cursor)
      return null
    }
    const n = Math.min(max, w.pos - r.at)
    const chunk = Buffer.allocUnsafe(n)
    chunk.set(w.buf.subarray(r.at, r.at + n))
    r.at += n
    // keep only what is not yet returned while dumping: at most maxBytes plus one event
    if (r.dump !== null) {
      w.buf.copyWithin(0, r.at, w.pos)
      w.pos -= r.at
      r.at = 0
    }
    return chunk
  }

  replyClose(cursor: number): void {
    this.replies.delete(cursor)
  }

  private addReply(r: Reply): number {
    if (this.replies.size >= MAX_REPLIES) throw new Error(`LocalIndexer: ${MAX_REPLIES} reply cursors are open (close them)`)
    while (this.replies.has(this.nextReply)) this.nextReply = (this.nextReply + 1) >>> 0
    const id = this.nextReply
    this.nextReply = (this.nextReply + 1) >>> 0
    this.replies.set(id, r)
    return id
  }

  eventsInRange(dpRank: number, start: bigint | null, end: bigint | null): RawRangeResult {
    const r = this.rangeAnswer(dpRank, start, end)
    return r === 'dump' ? { kind: 'TreeDump', events: this.dumpRank(dpRank) } : r
  }

  /** eventsInRange without building a dump: 'dump' where the answer is the rank's dump (local.rs range_answer). */
  private rangeAnswer(dpRank: number, start: bigint | null, end: bigint | null): RawRangeResult | 'dump' {
    const ring = this.rings.get(dpRank)
    if (ring === undefined) return { kind: 'Error', message: `no events for dp rank ${dpRank}` }
    if (start !== null && end !== null && end < start) return { kind: 'InvalidRange', startId: start, endId: end }
    if (start === null || ring.count === 0) return 'dump'
    let newHi = 0
    let newLo = 0
    let oldHi = 0xffffffff
    let oldLo = 0xffffffff
    for (let i = 0; i < ring.count; i++) {
      const hi = ring.idHi[i]!
      const lo = ring.idLo[i]!
      if (cmp64(hi, lo, newHi, newLo) > 0) {
        newHi = hi
        newLo = lo
      }
      if (cmp64(hi, lo, oldHi, oldLo) < 0) {
        oldHi = hi
        oldLo = lo
      }
    }
    const newest = bigFromHalves(newHi, newLo)
    const requestedEnd = end ?? newest
    if (start > newest) return { kind: 'TooNew', requestedStart: start, requestedEnd, newestAvailable: newest }
    if (start < bigFromHalves(oldHi, oldLo)) return 'dump'
    // the earlier of the two (bigints: no Math.min)
    let last = newest
    if (requestedEnd < newest) last = requestedEnd
    const sHi = Number(start >> 32n)
    const sLo = Number(start & 0xffffffffn)
    const eHi = Number(last >> 32n)
    const eLo = Number(last & 0xffffffffn)
    const events: RouterEventValue[] = []
    for (let i = 0; i < ring.count; i++) {
      const s = ring.slot(i)
      const hi = ring.idHi[s]!
      const lo = ring.idLo[s]!
      if (cmp64(hi, lo, sHi, sLo) >= 0 && cmp64(hi, lo, eHi, eLo) <= 0) events.push(ring.decode(s))
    }
    return { kind: 'Events', events }
  }
}

/** The answer as the recovery response JSON, byte for byte as the core's write_range_result_json. */
function writeRangeResult(w: ByteWriter, r: RawRangeResult): void {
  const text = (s: string) => w.bytes(Buffer.from(s, 'utf8'))
  switch (r.kind) {
    case 'Events':
    case 'TreeDump':
      text(`{"${r.kind}":[`)
      for (let i = 0; i < r.events.length; i++) {
        if (i > 0) text(',')
        writeRouterEvent(w, jsonEncoder, r.events[i]!)
      }
      text(']}')
      break
    case 'TooNew':
      text(`{"TooNew":{"requested_start":${r.requestedStart},"requested_end":${r.requestedEnd},"newest_available":${r.newestAvailable}}}`)
      break
    case 'InvalidRange':
      text(`{"InvalidRange":{"start_id":${r.startId},"end_id":${r.endId}}}`)
      break
    case 'Error':
      // JSON.stringify escapes a string as serde_json does (quote, backslash, \b \f \n \r \t, other controls as \u00xx)
      text(`{"Error":${JSON.stringify(r.message)}}`)
      break
  }
}
