// The per-publisher conversion state (SPEC 3) for the fallback: per-rank event ids, learned KV groups and
// live blocks, the envelope sequence, counters and rate-limited warnings. One call converts one engine
// batch (or one manual event) into the packed output described in ts/core/binding.ts.
//
// Hot path: the batch is read straight from its bytes (engine.ts, convert.ts), every RouterEvent is written into one
// reused ByteWriter, and the output is one Buffer allocation per call.
import {
  OUT_HEADER_BYTES,
  SEQUENCE_AT,
  type BlockExtraInfo,
  type CounterName,
  type RawIngestor,
  type RawIngestorOptions,
  type RawLocalIndexer,
  type RawIngestOutput,
  type RouterEventValue,
  type StorageTier,
  type StoredBlock,
} from '../core/binding.js'
import {
  convertEvent,
  convertEvent14,
  hashKept,
  hashKept14,
  OK,
  REJ_DP_RANK,
  REJ_EMPTY,
  REJ_MALFORMED,
  REJECT_COUNT,
  SaltChain,
  storeChecks,
  TIER_DEVICE,
} from './convert.js'
import { BatchHead, EV_CLEARED, EV_REMOVED, EventParser, readBatchHead } from './engine.js'
import { hashBlocks, saltSeed, tokenBytesLE } from './hash.js'
import { FallbackLocalIndexer, RING_JSON, RING_MSGPACK } from './local.js'
import { ByteWriter, HI, LO, u64Pairs } from './msgpack.js'
import { U64Set } from './u64set.js'
import {
  ENV_PAYLOAD_KEY,
  ENV_TOPIC_KV_EVENTS,
  jsonEncoder,
  KV_EVENTS_TOPIC,
  msgpackEncoder,
  STORAGE_TIERS,
  writeEnvelope,
  writeEnvelopeHead,
  writeRouterEventValue,
  type EventEncoder,
} from './wire.js'

/** dynamo-1.4: at most this many events and blocks per envelope (one larger event goes alone). */
export const MAX_EVENTS_PER_ENVELOPE = 128
export const MAX_BLOCKS_PER_ENVELOPE = 8192
/** dynamo-1.4: adjacent events are coalesced up to this many blocks (Dynamo 1.6.1's default). */
export const MAX_COALESCED_BLOCKS = 128
const MAX_PUBLISHER_ID = (1n << 53n) - 1n
const M64 = (1n << 64n) - 1n

/** splitmix64 (ingest.rs mix64). */
function mix64(z: bigint): bigint {
  z = (z + 0x9e3779b97f4a7c15n) & M64
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & M64
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & M64
  return z ^ (z >> 31n)
}

/** The publisher id a seed gives a rank (ingest.rs derived_publisher_id). */
export function derivedPublisherId(seed: bigint, rank: number): bigint {
  const id = mix64(seed ^ mix64(BigInt(rank))) & MAX_PUBLISHER_ID
  return id === 0n ? 1n : id
}

/** dynamo-1.4: one event on its way out (coalesced, not yet numbered). */
type Ev14 =
  | { kind: 'stored'; parentHash: bigint | null; blocks: StoredBlock[] }
  | { kind: 'removed'; hashes: bigint[] }
  | { kind: 'cleared' }

function ev14Blocks(ev: Ev14): number {
  return ev.kind === 'stored' ? ev.blocks.length : ev.kind === 'removed' ? ev.hashes.length : 0
}

/** Largest stored event (blocks) and removed event (hashes) emitted; bigger ones are split. */
export const MAX_BLOCKS_PER_STORED = 1024
export const MAX_HASHES_PER_REMOVED = 4096
/** Truncation warnings given per ingestor. */
const MAX_TRUNCATION_WARNINGS = 3

const TWO32 = 4294967296

/** Counter names (the core's COUNTER_NAMES), in the order of counters(). */
export const COUNTER_NAMES: CounterName[] = [
  'batches',
  'events_in',
  'emitted_stored',
  'emitted_removed',
  'emitted_cleared',
  'blocks_stored',
  'blocks_removed',
  'truncated_stores',
  'resets',
  'payload_bytes',
  'untracked_blocks',
  'rejected_malformed',
  'rejected_invalid',
  'rejected_unknown_type',
  'rejected_filtered_tier',
  'rejected_filtered_group',
  'rejected_empty',
  'rejected_self_reference',
  'rejected_block_size',
  'rejected_dp_rank',
  'rejected_ambiguous_salt',
]

// counter indices (COUNTER_NAMES order)
const C_BATCHES = 0
const C_EVENTS_IN = 1
const C_EMITTED_STORED = 2
const C_EMITTED_REMOVED = 3
const C_EMITTED_CLEARED = 4
const C_BLOCKS_STORED = 5
const C_BLOCKS_REMOVED = 6
const C_TRUNCATED = 7
const C_RESETS = 8
const C_PAYLOAD_BYTES = 9
const C_UNTRACKED = 10
const C_REJECTED = 11 // + reason

/** The live set of a rank stops growing here (SPEC 8: bounded memory); mirrors the core. */
const MAX_LIVE_BLOCKS_PER_RANK = 1 << 22

/** The exact text of the truncation warning (both implementations give the same). */
function truncationWarning(dpRank: number, tokens: number, kept: number, hashes: number, blockSize: number): string {
  return `store truncated on dp rank ${dpRank}: ${tokens} token_ids cover ${kept} of ${hashes} blocks of ${blockSize}`
}

function put32(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff
  b[at + 1] = (v >>> 8) & 0xff
  b[at + 2] = (v >>> 16) & 0xff
  b[at + 3] = v >>> 24
}

class RankState {
  idHi = 0
  idLo = 0
  readonly live = new U64Set()
  readonly groups = new Map<number, boolean>()
  /** dynamo-1.4: the envelope sequence of the rank's publisher. */
  sequence = 0n
  /** dynamo-1.4: stores minus removes per block hash, per storage tier (Dynamo 1.6.1's refcount dedup). */
  refcounts: Map<bigint, number>[] = [new Map(), new Map(), new Map(), new Map()]
  /** dynamo-1.4: the cache salt each device or host-pinned block hash was stored under. */
  readonly salts = new SaltChain()
  constructor(wire14: boolean) {
    if (wire14) this.idLo = 1
  }
}

export class FallbackIngestor implements RawIngestor {
  private readonly kvBlockSize: number
  private readonly workerHi: number
  private readonly workerLo: number
  private readonly jetstream: boolean
  private readonly maxDpRanks: number
  private readonly configured: Set<number> | null
  /** Ranks seen (registered), in first-seen order. */
  private readonly ranks = new Map<number, RankState>()
  private seqHi = 0
  private seqLo = 0
  private readonly counts = new Float64Array(COUNTER_NAMES.length)
  private warnings: string[] = []
  /** The warnings section of the pending output (ts/core/binding.ts). */
  private warningBytes: Uint8Array = NO_WARNINGS
  private liveOverflowWarned = false
  private truncationWarnings = 0

  private readonly encoder: EventEncoder
  private readonly head = new BatchHead()
  private readonly parser = new EventParser()
  /** The payloads of the current call, concatenated. */
  private readonly out = new ByteWriter(1 << 16)
  /** One msgpack RouterEvent (event-plane mode wraps it in an envelope in `out`). */
  private readonly eventWriter = new ByteWriter(1 << 14)
  private payloadLens = new Uint32Array(64)
  private payloadCount = 0
  private firstHi = 0
  private firstLo = 0
  private readonly rejected = new Uint32Array(REJECT_COUNT)
  private nowHi = 0
  private nowLo = 0
  /** Where the current payload starts in `out`. */
  private payloadStart = 0
  private sorted = new BigUint64Array(64)
  private readonly seed = { seedHi: 0, seedLo: 0 }
  /** Header fields and length of the pending output. */
  private outRank = -1
  private outFlags = 0
  private outLen = OUT_HEADER_BYTES
  /** The local indexer every emitted event is applied to and buffered in (SPEC 6), or null. */
  private readonly local: FallbackLocalIndexer | null
  /** Id of the event being written. */
  private curIdHi = 0
  private curIdLo = 0
  /** The envelope sequence of the call's first payload. */
  private firstSeq = -1n
  private readonly wire14: boolean
  private readonly publisherIds = new Map<number, bigint>()
  private readonly publisherSeed: bigint
  /** dynamo-1.4: the event being coalesced, and the call's numbered events. */
  private pending: { tier: number; ev: Ev14 } | null = null
  private emitted: { tier: number; id: bigint; ev: Ev14 }[] = []
  private readonly payload14 = new ByteWriter(1 << 14)

  constructor(private readonly options: RawIngestorOptions) {
    const o = options
    this.kvBlockSize = o.kvBlockSize
    this.workerHi = Number(o.workerId >> 32n)
    this.workerLo = Number(o.workerId & 0xffffffffn)
    this.jetstream = o.jetstream
    this.maxDpRanks = o.maxDpRanks
    // undefined is tolerated like null (the contract says null)
    this.configured = o.dpRanks == null ? null : new Set(o.dpRanks)
    this.encoder = o.jetstream ? jsonEncoder : msgpackEncoder
    this.wire14 = o.wire14 === true
    const ranks = o.publisherIdRanks ?? []
    for (let i = 0; i < ranks.length; i++) this.publisherIds.set(ranks[i]!, o.publisherIdValues![i]!)
    this.publisherSeed = o.publisherSeed ?? 0n
    const bufferSize = o.localIndexerBufferSize ?? 0
    this.local = bufferSize > 0 ? new FallbackLocalIndexer(bufferSize) : null
    if (this.local !== null && this.configured !== null) for (const r of this.configured) this.local.registerRank(r)
  }

  localIndexer(): RawLocalIndexer | null {
    return this.local
  }

  /** Frees the live sets, buffers and local indexer for those of a fresh ingestor (SPEC 8). */
  close(): void {
    this.local?.close()
    Object.assign(this, new FallbackIngestor({ ...this.options, localIndexerBufferSize: 0 }))
  }

  // --- ranks ---

  rankAllowed(dpRank: number): boolean {
    if (this.ranks.has(dpRank)) return true
    return this.configured !== null ? this.configured.has(dpRank) : this.ranks.size < this.maxDpRanks
  }

  /** The state of an allowed rank (registering it), or null when the rank is not allowed. */
  private rank(dpRank: number): RankState | null {
    let rs = this.ranks.get(dpRank)
    if (rs !== undefined) return rs
    if (!this.rankAllowed(dpRank)) return null
    rs = new RankState(this.wire14)
    this.ranks.set(dpRank, rs)
    return rs
  }

  nextEventId(dpRank: number): bigint {
    const rs = this.ranks.get(dpRank)
    if (rs === undefined) return this.wire14 ? 1n : 0n
    return (BigInt(rs.idHi) << 32n) | BigInt(rs.idLo)
  }

  publisherId(dpRank: number): bigint {
    if (!this.wire14) return (BigInt(this.workerHi) << 32n) | BigInt(this.workerLo)
    return this.publisherIds.get(dpRank) ?? derivedPublisherId(this.publisherSeed, dpRank)
  }

  counters(): BigUint64Array {
    const out = new BigUint64Array(this.counts.length)
    for (let i = 0; i < this.counts.length; i++) out[i] = BigInt(this.counts[i]!)
    return out
  }

  // --- the calls ---

  ingest(payload: Uint8Array, nowMs: number): RawIngestOutput {
    return this.packed(this.run(payload, nowMs))
  }

  ingestInto(payload: Uint8Array, nowMs: number, out: Uint8Array, offset: number): number | Buffer {
    const len = this.run(payload, nowMs)
    if (len > out.length - offset) return this.packed(len)
    this.writeOutput(out, offset)
    return len
  }

  /** The fallback needs no handle: ingestPacked runs on its receiver. */
  handle(): number {
    return 0
  }

  /** `arena` only matters natively (where an arena lives in memory); here it changes nothing. */
  ingestPacked(_handle: number, payload: Uint8Array, nowMs: number, out: Uint8Array, offset: number, _arena?: boolean): number | Buffer {
    return this.ingestInto(payload, nowMs, out, offset)
  }

  /** Converts one engine batch; the output stays pending (see finish) and its length is returned. */
  private run(payload: Uint8Array, nowMs: number): number {
    this.begin(nowMs)
    const counts = this.counts
    counts[C_BATCHES]!++
    const b = payload
    const head = this.head
    if (!readBatchHead(b, head)) {
      this.reject(REJ_MALFORMED)
      return this.finish(-1)
    }
    const dpRank = head.dpRank
    const rs = this.rank(dpRank)
    if (rs === null) {
      this.reject(REJ_DP_RANK)
      return this.finish(dpRank)
    }
    counts[C_EVENTS_IN]! += head.eventsCount
    const parser = this.parser
    const kvbs = this.kvBlockSize
    let q = head.eventsPos
    if (this.wire14) return this.run14(b, head, dpRank, rs)
    for (let e = 0; e < head.eventsCount; e++) {
      let r = parser.parse(b, q)
      q = parser.end
      if (r === OK && parser.kind === EV_CLEARED) {
        this.reset(dpRank, rs)
        continue
      }
      if (r === OK) r = convertEvent(parser, rs.groups, kvbs)
      if (r !== OK) {
        this.reject(r)
        continue
      }
      if (parser.kind === EV_REMOVED) {
        this.emitRemoved(dpRank, rs, parser.hashes, parser.nHashes, true)
        continue
      }
      if (parser.kept < parser.nHashes) this.truncated(dpRank, parser.nTokens, parser.kept, parser.nHashes)
      hashKept(parser, kvbs)
      this.emitStored(
        dpRank,
        rs,
        parser.hashes,
        parser.tokHashes,
        parser.kept,
        parser.hasParent,
        parser.parentHi,
        parser.parentLo,
        parser.mm,
      )
    }
    return this.finish(dpRank)
  }

  /** The dynamo-1.4 conversion of one validated batch (ingest.rs with Wire::Dynamo14). */
  private run14(b: Uint8Array, head: BatchHead, dpRank: number, rs: RankState): number {
    const parser = this.parser
    const kvbs = this.kvBlockSize
    let q = head.eventsPos
    for (let e = 0; e < head.eventsCount; e++) {
      let r = parser.parse(b, q)
      q = parser.end
      if (r === OK && parser.kind === EV_CLEARED) {
        rs.salts.clear()
        this.reset14(dpRank, rs)
        continue
      }
      if (r === OK) r = convertEvent14(parser, rs.groups, kvbs, rs.salts)
      if (r !== OK) {
        this.reject(r)
        continue
      }
      const h = parser.hashes
      if (parser.kind === EV_REMOVED) {
        const hashes: bigint[] = new Array(parser.nHashes)
        for (let i = 0; i < parser.nHashes; i++) hashes[i] = (BigInt(h[2 * i + HI]!) << 32n) | BigInt(h[2 * i + LO]!)
        this.push14(dpRank, rs, parser.tier, { kind: 'removed', hashes })
        continue
      }
      if (parser.kept < parser.nHashes) this.truncated(dpRank, parser.nTokens, parser.kept, parser.nHashes)
      hashKept14(parser, kvbs)
      const t = parser.tokHashes
      const blocks: StoredBlock[] = new Array(parser.kept)
      for (let i = 0; i < parser.kept; i++) {
        blocks[i] = {
          blockHash: (BigInt(h[2 * i + HI]!) << 32n) | BigInt(h[2 * i + LO]!),
          tokensHash: (BigInt(t[2 * i + HI]!) << 32n) | BigInt(t[2 * i + LO]!),
          mmExtraInfo: parser.mm === null ? null : parser.mm[i]!,
        }
      }
      const parentHash = parser.hasParent ? (BigInt(parser.parentHi) << 32n) | BigInt(parser.parentLo) : null
      this.push14(dpRank, rs, parser.tier, { kind: 'stored', parentHash, blocks })
    }
    this.finish14(dpRank, rs)
    return this.finish(dpRank)
  }

  private reset14(dpRank: number, rs: RankState): void {
    this.counts[C_RESETS]!++
    this.push14(dpRank, rs, TIER_DEVICE, { kind: 'cleared' })
  }

  /**
   * Coalesces `ev` with the pending event when it continues it (a store whose parent is the pending store's
   * last block, or a remove after a remove, of the same tier) up to MAX_COALESCED_BLOCKS; a cleared flushes
   * the pending event and passes as it is (ingest.rs push14).
   */
  private push14(dpRank: number, rs: RankState, tier: number, ev: Ev14): void {
    if (ev.kind === 'cleared') {
      this.flush14(dpRank, rs)
      this.ready14(rs, tier, ev)
      return
    }
    const p = this.pending
    if (p !== null && p.tier === tier) {
      const pe = p.ev
      if (
        pe.kind === 'stored' &&
        ev.kind === 'stored' &&
        ev.parentHash === (pe.blocks.length > 0 ? pe.blocks[pe.blocks.length - 1]!.blockHash : null)
      ) {
        for (const blk of ev.blocks) pe.blocks.push(blk)
        if (pe.blocks.length >= MAX_COALESCED_BLOCKS) this.flush14(dpRank, rs)
        return
      }
      if (pe.kind === 'removed' && ev.kind === 'removed') {
        for (const x of ev.hashes) pe.hashes.push(x)
        if (pe.hashes.length >= MAX_COALESCED_BLOCKS) this.flush14(dpRank, rs)
        return
      }
    }
    this.flush14(dpRank, rs)
    if (ev14Blocks(ev) >= MAX_COALESCED_BLOCKS) this.ready14(rs, tier, ev)
    else this.pending = { tier, ev }
  }

  private flush14(_dpRank: number, rs: RankState): void {
    const p = this.pending
    if (p === null) return
    this.pending = null
    this.ready14(rs, p.tier, p.ev)
  }

  /** The refcount dedup, then the event's id (ingest.rs ready14). */
  private ready14(rs: RankState, tier: number, ev: Ev14): void {
    const counts = rs.refcounts[tier]!
    if (ev.kind === 'stored') {
      for (const blk of ev.blocks) {
        const c = counts.get(blk.blockHash)
        if (c !== undefined) counts.set(blk.blockHash, c + 1)
        else if (counts.size < MAX_LIVE_BLOCKS_PER_RANK) counts.set(blk.blockHash, 1)
        else this.counts[C_UNTRACKED]!++
      }
    } else if (ev.kind === 'removed') {
      ev.hashes = ev.hashes.filter((h) => {
        const c = counts.get(h)
        if (c === undefined) return true
        if (c > 1) {
          counts.set(h, c - 1)
          return false
        }
        counts.delete(h)
        return true
      })
      if (ev.hashes.length === 0) return
    } else {
      rs.refcounts = [new Map(), new Map(), new Map(), new Map()]
      rs.live.clear()
    }
    const id = (BigInt(rs.idHi) << 32n) | BigInt(rs.idLo)
    if (rs.idLo === 0xffffffff) {
      rs.idLo = 0
      rs.idHi = (rs.idHi + 1) >>> 0
    } else {
      rs.idLo++
    }
    if (ev.kind === 'stored') {
      this.counts[C_EMITTED_STORED]!++
      this.counts[C_BLOCKS_STORED]! += ev.blocks.length
    } else if (ev.kind === 'removed') {
      this.counts[C_EMITTED_REMOVED]!++
      this.counts[C_BLOCKS_REMOVED]! += ev.hashes.length
    } else {
      this.counts[C_EMITTED_CLEARED]!++
    }
    this.emitted.push({ tier, id, ev })
  }

  /** The RouterEventValue of a numbered dynamo-1.4 event. */
  private value14(dpRank: number, tier: number, id: bigint, ev: Ev14): RouterEventValue {
    const data =
      ev.kind === 'stored'
        ? { type: 'stored' as const, parentHash: ev.parentHash, blocks: ev.blocks }
        : ev.kind === 'removed'
          ? { type: 'removed' as const, blockHashes: ev.hashes }
          : { type: 'cleared' as const }
    return {
      workerId: (BigInt(this.workerHi) << 32n) | BigInt(this.workerLo),
      storageTier: STORAGE_TIERS[tier] as StorageTier,
      residencyDomain: 'worker',
      event: { eventId: id, dpRank, data },
    }
  }

  /**
   * Ends a dynamo-1.4 call: flushes the pending event and packs the numbered events into envelopes of at
   * most MAX_EVENTS_PER_ENVELOPE events and MAX_BLOCKS_PER_ENVELOPE blocks (ingest.rs finish).
   */
  private finish14(dpRank: number, rs: RankState): void {
    this.flush14(dpRank, rs)
    const emitted = this.emitted
    if (emitted.length === 0) return
    this.emitted = []
    const publisherId = this.publisherId(dpRank)
    const values = emitted.map((x) => this.value14(dpRank, x.tier, x.id, x.ev))
    this.firstHi = Number(emitted[0]!.id >> 32n)
    this.firstLo = Number(emitted[0]!.id & 0xffffffffn)
    const now = (BigInt(this.nowHi) << 32n) | BigInt(this.nowLo)
    const out = this.out
    let start = 0
    while (start < emitted.length) {
      let end = start
      let blocks = 0
      while (end < emitted.length) {
        const n = ev14Blocks(emitted[end]!.ev)
        if (end > start && (end - start === MAX_EVENTS_PER_ENVELOPE || blocks + n > MAX_BLOCKS_PER_ENVELOPE)) break
        blocks += n
        end++
      }
      const w = this.payload14
      w.reset()
      w.arrayHeader(end - start)
      for (let i = start; i < end; i++) writeRouterEventValue(w, false, values[i]!)
      if (this.firstSeq < 0n) this.firstSeq = rs.sequence
      const at = out.pos
      writeEnvelope(out, publisherId, rs.sequence, now, KV_EVENTS_TOPIC, w.buf.subarray(0, w.pos))
      rs.sequence++
      this.pushPayload(out.pos - at)
      start = end
    }
    if (this.local !== null) {
      for (let i = 0; i < emitted.length; i++) if (emitted[i]!.tier === TIER_DEVICE) this.local.applyEvent(values[i]!)
    }
  }

  private pushPayload(len: number): void {
    if (this.payloadCount === this.payloadLens.length) {
      const lens = new Uint32Array(this.payloadLens.length * 2)
      lens.set(this.payloadLens)
      this.payloadLens = lens
    }
    this.payloadLens[this.payloadCount++] = len
    this.counts[C_PAYLOAD_BYTES]! += len
  }

  stored(
    tokenIds: Uint32Array,
    blockHashes: BigUint64Array,
    blockSize: number,
    parentHash: bigint | null,
    loraName: string | null,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
    dpRank: number,
    nowMs: number,
    cacheSalt: string | null = null,
    eagle = false,
  ): RawIngestOutput {
    this.begin(nowMs)
    const rs = this.rank(dpRank)
    if (rs === null) {
      // not reachable through ts/core/api.ts, which checks rankAllowed first
      this.reject(REJ_DP_RANK)
      return this.finishBuffer(dpRank)
    }
    const hashes = u64Pairs(blockHashes)
    const nHashes = blockHashes.length
    const hasParent = parentHash !== null
    const parentHi = hasParent ? Number(parentHash >> 32n) : 0
    const parentLo = hasParent ? Number(parentHash & 0xffffffffn) : 0
    const kvbs = this.kvBlockSize
    const n = storeChecks(hashes, nHashes, hasParent, parentHi, parentLo, blockSize, tokenIds.length, kvbs, eagle)
    if (n < 0) {
      this.reject(-1 - n)
      return this.finishBuffer(dpRank)
    }
    if (n < nHashes) this.truncated(dpRank, tokenIds.length, n, nHashes)
    saltSeed(loraName, cacheSalt, this.seed)
    const tokHashes = new Uint32Array(2 * n)
    let mm: (BlockExtraInfo | null)[] | null = null
    if (blockMmInfos !== null) {
      mm = new Array<BlockExtraInfo | null>(n)
      let any = false
      for (let i = 0; i < n; i++) {
        const info = i < blockMmInfos.length ? (blockMmInfos[i] ?? null) : null
        mm[i] = info
        if (info !== null) any = true
      }
      if (!any) mm = null
    }
    hashBlocks(tokenBytesLE(tokenIds, n * kvbs + (eagle ? 1 : 0)), kvbs, n, this.seed.seedHi, this.seed.seedLo, mm, tokHashes, eagle)
    if (this.wire14) {
      const blocks: StoredBlock[] = new Array(n)
      for (let i = 0; i < n; i++) {
        blocks[i] = {
          blockHash: blockHashes[i]!,
          tokensHash: (BigInt(tokHashes[2 * i + HI]!) << 32n) | BigInt(tokHashes[2 * i + LO]!),
          mmExtraInfo: mm === null ? null : mm[i]!,
        }
      }
      this.push14(dpRank, rs, TIER_DEVICE, { kind: 'stored', parentHash, blocks })
      this.finish14(dpRank, rs)
      return this.finishBuffer(dpRank)
    }
    this.emitStored(dpRank, rs, hashes, tokHashes, n, hasParent, parentHi, parentLo, mm)
    return this.finishBuffer(dpRank)
  }

  removed(blockHashes: BigUint64Array, dpRank: number, nowMs: number): RawIngestOutput {
    this.begin(nowMs)
    const rs = this.rank(dpRank)
    if (rs === null) {
      this.reject(REJ_DP_RANK)
      return this.finishBuffer(dpRank)
    }
    if (blockHashes.length === 0) this.reject(REJ_EMPTY)
    else if (this.wire14) this.push14(dpRank, rs, TIER_DEVICE, { kind: 'removed', hashes: Array.from(blockHashes) })
    else this.emitRemoved(dpRank, rs, u64Pairs(blockHashes), blockHashes.length, true)
    if (this.wire14) this.finish14(dpRank, rs)
    return this.finishBuffer(dpRank)
  }

  cleared(dpRank: number, nowMs: number): RawIngestOutput {
    this.begin(nowMs)
    const rs = this.rank(dpRank)
    if (rs === null) {
      this.reject(REJ_DP_RANK)
      return this.finishBuffer(dpRank)
    }
    if (this.wire14) {
      this.reset14(dpRank, rs)
      this.finish14(dpRank, rs)
    } else {
      this.reset(dpRank, rs)
    }
    return this.finishBuffer(dpRank)
  }

  // --- rules ---

  /** The reset rule (SPEC 3): `cleared` when this rank is the only one known, else removes of its live blocks. */
  private reset(dpRank: number, rs: RankState): void {
    this.counts[C_RESETS]!++
    const known = this.configured ?? this.ranks
    if (known.size === 1 && known.has(dpRank)) {
      this.beginEvent(rs)
      this.encoder.cleared(this.eventOut())
      this.endEvent(dpRank)
      if (this.local !== null) this.local.applyClearedParts(this.workerHi, this.workerLo, dpRank, this.curIdHi, this.curIdLo)
      this.counts[C_EMITTED_CLEARED]!++
    } else {
      const n = rs.live.size
      if (n > 0) {
        if (this.sorted.length < n) {
          let cap = this.sorted.length
          while (cap < n) cap *= 2
          this.sorted = new BigUint64Array(cap)
        }
        rs.live.exportTo(u64Pairs(this.sorted))
        const sorted = this.sorted.subarray(0, n).sort() // ascending u64, natively
        this.emitRemoved(dpRank, rs, u64Pairs(sorted), n, false)
      }
    }
    rs.live.clear()
  }

  private untracked(dpRank: number): void {
    this.counts[C_UNTRACKED]!++
    if (!this.liveOverflowWarned) {
      this.liveOverflowWarned = true
      this.warnings.push(
        `live block set of dp rank ${dpRank} is full (${MAX_LIVE_BLOCKS_PER_RANK} blocks): further blocks are not tracked, so a reset of this rank cannot remove them from a router`,
      )
    }
  }

  private truncated(dpRank: number, tokens: number, kept: number, hashes: number): void {
    this.counts[C_TRUNCATED]!++
    if (this.truncationWarnings < MAX_TRUNCATION_WARNINGS) {
      this.truncationWarnings++
      this.warnings.push(truncationWarning(dpRank, tokens, kept, hashes, this.kvBlockSize))
    }
  }

  private reject(reason: number): void {
    this.rejected[reason]!++
    this.counts[C_REJECTED + reason]!++
  }

  // --- emission ---

  /** The writer the current RouterEvent goes to. */
  private eventOut(): ByteWriter {
    return this.jetstream ? this.out : this.eventWriter
  }

  private emitStored(
    dpRank: number,
    rs: RankState,
    hashes: Uint32Array,
    tokHashes: Uint32Array,
    n: number,
    hasParent: boolean,
    parentHi: number,
    parentLo: number,
    mm: (BlockExtraInfo | null)[] | null,
  ): void {
    const enc = this.encoder
    const live = rs.live
    for (let start = 0; start < n; start += MAX_BLOCKS_PER_STORED) {
      const m = Math.min(MAX_BLOCKS_PER_STORED, n - start)
      this.beginEvent(rs)
      const w = this.eventOut()
      enc.storedStart(w, hasParent, parentHi, parentLo, m)
      for (let i = 0; i < m; i++) {
        const k = start + i
        const hi = hashes[2 * k + HI]!
        const lo = hashes[2 * k + LO]!
        enc.block(w, i, hi, lo, tokHashes[2 * k + HI]!, tokHashes[2 * k + LO]!, mm === null ? null : mm[k]!)
        if (live.size < MAX_LIVE_BLOCKS_PER_RANK || live.has(hi, lo)) live.add(hi, lo)
        else this.untracked(dpRank)
      }
      enc.storedEnd(w)
      this.endEvent(dpRank)
      if (this.local !== null) {
        this.local.applyStoredParts(
          this.workerHi,
          this.workerLo,
          dpRank,
          this.curIdHi,
          this.curIdLo,
          hasParent,
          parentHi,
          parentLo,
          hashes,
          tokHashes,
          start,
          m,
        )
      }
      // the next chunk chains to the last block of this one
      hasParent = true
      parentHi = hashes[2 * (start + m - 1) + HI]!
      parentLo = hashes[2 * (start + m - 1) + LO]!
      this.counts[C_EMITTED_STORED]!++
      this.counts[C_BLOCKS_STORED]! += m
    }
  }

  private emitRemoved(dpRank: number, rs: RankState, hashes: Uint32Array, n: number, untrack: boolean): void {
    const enc = this.encoder
    const live = rs.live
    for (let start = 0; start < n; start += MAX_HASHES_PER_REMOVED) {
      const m = Math.min(MAX_HASHES_PER_REMOVED, n - start)
      this.beginEvent(rs)
      const w = this.eventOut()
      enc.removedStart(w, m)
      for (let i = 0; i < m; i++) {
        const k = start + i
        const hi = hashes[2 * k + HI]!
        const lo = hashes[2 * k + LO]!
        enc.hash(w, i, hi, lo)
        if (untrack) live.delete(hi, lo)
      }
      enc.removedEnd(w)
      this.endEvent(dpRank)
      if (this.local !== null)
        this.local.applyRemovedParts(this.workerHi, this.workerLo, dpRank, this.curIdHi, this.curIdLo, hashes, start, m)
      this.counts[C_EMITTED_REMOVED]!++
      this.counts[C_BLOCKS_REMOVED]! += m
    }
  }

  private begin(nowMs: number): void {
    this.out.reset()
    this.payloadCount = 0
    this.firstSeq = -1n
    this.rejected.fill(0)
    this.nowHi = Math.floor(nowMs / TWO32)
    this.nowLo = nowMs >>> 0
  }

  /** Takes the next id of the rank and writes the RouterEvent up to its data. */
  private beginEvent(rs: RankState): void {
    if (this.payloadCount === 0) {
      this.firstHi = rs.idHi
      this.firstLo = rs.idLo
    }
    const w = this.eventOut()
    if (this.jetstream) this.payloadStart = w.pos
    else w.reset()
    this.curIdHi = rs.idHi
    this.curIdLo = rs.idLo
    this.encoder.start(w, this.workerHi, this.workerLo, rs.idHi, rs.idLo)
    if (rs.idLo === 0xffffffff) {
      rs.idLo = 0
      rs.idHi = (rs.idHi + 1) >>> 0
    } else {
      rs.idLo++
    }
  }

  /** Closes the RouterEvent and records it as one payload (in an envelope in event-plane mode). */
  private endEvent(dpRank: number): void {
    const out = this.out
    if (this.jetstream) {
      this.encoder.end(out, dpRank)
      if (this.local !== null)
        this.local.bufferEncoded(dpRank, this.curIdHi, this.curIdLo, out.buf.slice(this.payloadStart, out.pos), RING_JSON)
    } else {
      const ev = this.eventWriter
      this.encoder.end(ev, dpRank)
      if (this.local !== null) this.local.bufferEncoded(dpRank, this.curIdHi, this.curIdLo, ev.buf.slice(0, ev.pos), RING_MSGPACK)
      this.payloadStart = out.pos
      if (this.payloadCount === 0) this.firstSeq = (BigInt(this.seqHi) << 32n) | BigInt(this.seqLo)
      writeEnvelopeHead(out, this.workerHi, this.workerLo, this.seqHi, this.seqLo, this.nowHi, this.nowLo)
      out.bytes(ENV_TOPIC_KV_EVENTS)
      out.bytes(ENV_PAYLOAD_KEY)
      out.bin(ev.buf, 0, ev.pos)
      if (this.seqLo === 0xffffffff) {
        this.seqLo = 0
        this.seqHi = (this.seqHi + 1) >>> 0
      } else {
        this.seqLo++
      }
    }
    const len = out.pos - this.payloadStart
    if (this.payloadCount === this.payloadLens.length) {
      const lens = new Uint32Array(this.payloadLens.length * 2)
      lens.set(this.payloadLens)
      this.payloadLens = lens
    }
    this.payloadLens[this.payloadCount++] = len
    this.counts[C_PAYLOAD_BYTES]! += len
  }

  /**
   * Ends a call: fixes its header, moves the call's warnings into the output and returns the length of its
   * packed output (ts/core/binding.ts), which stays pending (for writeOutput) until the next call.
   */
  private finish(dpRank: number): number {
    const n = this.payloadCount
    this.outRank = dpRank
    // bit 0: first event id present; bit 1: the call raised warnings; bit 2: the batch had a dp rank
    let anyRejected = 0
    for (let i = 0; i < REJECT_COUNT; i++) anyRejected |= this.rejected[i]!
    // bit 3: some event was rejected
    // bit 4: the first payload's envelope sequence is there
    this.outFlags =
      (n > 0 ? 1 : 0) |
      (this.warnings.length > 0 ? 2 : 0) |
      (dpRank >= 0 ? 4 : 0) |
      (anyRejected !== 0 ? 8 : 0) |
      (this.firstSeq >= 0n ? 16 : 0)
    this.warningBytes = this.warnings.length > 0 ? warningSection(this.warnings) : NO_WARNINGS
    this.warnings = []
    this.outLen = OUT_HEADER_BYTES + this.out.pos + this.warningBytes.length + 4 * n
    return this.outLen
  }

  private finishBuffer(dpRank: number): RawIngestOutput {
    return this.packed(this.finish(dpRank))
  }

  /** The pending output in a new Buffer (one allocation). */
  private packed(len: number): RawIngestOutput {
    const buf = Buffer.allocUnsafe(len)
    this.writeOutput(buf)
    return buf
  }

  /** Writes the pending output (outLen bytes) into `target`: header, payloads, warnings, then the payload lengths. */
  private writeOutput(target: Uint8Array, offset = 0): void {
    const n = this.payloadCount
    const body = this.out.pos
    put32(target, offset + 0, n)
    put32(target, offset + 4, Math.max(this.outRank, 0)) // u32; flag bit 2 says whether there is one
    put32(target, offset + 8, this.outFlags)
    const warnings = this.warningBytes
    put32(target, offset + 12, warnings.length)
    put32(target, offset + 16, n > 0 ? this.firstLo : 0)
    put32(target, offset + 20, n > 0 ? this.firstHi : 0)
    const rejected = this.rejected
    for (let i = 0; i < REJECT_COUNT; i++) put32(target, offset + 24 + 4 * i, rejected[i]!)
    const seq = this.firstSeq >= 0n ? this.firstSeq : 0n
    put32(target, offset + SEQUENCE_AT, Number(seq & 0xffffffffn))
    put32(target, offset + SEQUENCE_AT + 4, Number(seq >> 32n))
    if (body > 0) target.set(this.out.buf.subarray(0, body), offset + OUT_HEADER_BYTES)
    if (warnings.length > 0) target.set(warnings, offset + OUT_HEADER_BYTES + body)
    const lens = this.payloadLens
    const at = offset + OUT_HEADER_BYTES + body + warnings.length
    for (let i = 0; i < n; i++) put32(target, at + 4 * i, lens[i]!)
  }
}

const NO_WARNINGS = new Uint8Array(0)

/** The warnings section of a packed output: per warning a u32 byte length (LE) and its UTF-8 text. */
function warningSection(warnings: string[]): Uint8Array {
  const texts = warnings.map((w) => Buffer.from(w, 'utf8'))
  const out = Buffer.allocUnsafe(texts.reduce((n, t) => n + 4 + t.length, 0))
  let at = 0
  for (const t of texts) {
    out.writeUInt32LE(t.length, at)
    out.set(t, at + 4)
    at += 4 + t.length
  }
  return out
}
