// The raw interface that both implementations provide: the napi binding (crates/node) and the
// pure-TypeScript fallback (ts/fallback). Everything above ts/core/native.ts talks to this interface only.
//
// Arguments arrive already validated by the public wrappers in ts/core/api.ts (types, ranges, dp-rank
// limits), so an implementation may assume well-typed input, but it must still never crash or panic on
// any byte sequence: every payload argument is untrusted.
//
// u64 values are bigint (or BigUint64Array), never number.

/** Rejection reasons, in the order used by the `rejected` counts of RawIngestOutput and RawDecoded. */
export const REJECT_REASONS = [
  'malformed',
  'invalid',
  'unknown_type',
  'filtered_tier',
  'filtered_group',
  'empty',
  'self_reference',
  'block_size',
  'dp_rank',
] as const
export type RejectReason = (typeof REJECT_REASONS)[number]

/** Counter names returned by `RawIngestor.counters()`, in this order; every value is a bigint. */
export const COUNTER_NAMES = [
  'batches', // ingest() calls
  'events_in', // engine events seen in well-formed batches
  'emitted_stored', // stored router events emitted (after splitting)
  'emitted_removed',
  'emitted_cleared',
  'blocks_stored', // blocks in emitted stored events
  'blocks_removed', // hashes in emitted removed events
  'truncated_stores', // stores cut short because token_ids ran out
  'resets', // rank resets (engine clear, cleared() call)
  'payload_bytes', // bytes of outgoing payloads
  'untracked_blocks', // stored blocks not added to a rank's full live set (at most 2^22 per rank)
  'rejected_malformed',
  'rejected_invalid',
  'rejected_unknown_type',
  'rejected_filtered_tier',
  'rejected_filtered_group',
  'rejected_empty',
  'rejected_self_reference',
  'rejected_block_size',
  'rejected_dp_rank',
] as const
export type CounterName = (typeof COUNTER_NAMES)[number]

export interface MmObject {
  mmHash: bigint
  /** [start, end] pairs, each 0..2^32-1 (start > end is not checked). */
  offsets: [number, number][]
}
export interface BlockExtraInfo {
  mmObjects: MmObject[]
}
export interface StoredBlock {
  blockHash: bigint
  tokensHash: bigint
  mmExtraInfo: BlockExtraInfo | null
}
export type ConvertedEvent =
  | { type: 'stored'; parentHash: bigint | null; blocks: StoredBlock[] }
  | { type: 'removed'; blockHashes: bigint[] }
  | { type: 'cleared' }

export interface RouterEventValue {
  workerId: bigint
  event: { eventId: bigint; dpRank: number; data: ConvertedEvent }
}

export interface RawDecoded {
  dpRank: number
  events: ConvertedEvent[]
  /** Counts indexed like REJECT_REASONS (index 0, malformed, is always 0 here). */
  rejected: Uint32Array
}

export interface RawPeek {
  dpRank: number
  /** The 4th element of a positional batch when it is a 16-byte bin (vLLM publisher id), else null. */
  publisherId: Uint8Array | null
}

/**
 * Output of one RawIngestor call, packed into a single Buffer so that crossing the native boundary
 * costs one allocation. All integers little-endian:
 *
 *   offset  0  u32  N, the number of payloads
 *   offset  4  u32  dp rank of the batch (0 when flag bit 2 is clear)
 *   offset  8  u32  flags: bit 0 = firstEventId present, bit 1 = warnings pending (call takeWarnings()),
 *                   bit 2 = the dp rank is present (clear when the batch was malformed),
 *                   bit 3 = some rejected count is non-zero
 *   offset 12  u32  reserved, 0
 *   offset 16  u64  firstEventId (0 when absent); payload i has event id firstEventId + i
 *   offset 24  u32 × 9  rejected counts, indexed like REJECT_REASONS
 *   offset 60  the N payloads, concatenated
 *   then       u32 × N  payload lengths (the last 4N bytes)
 *
 * In event-plane mode each payload is the msgpack envelope around the msgpack RouterEvent; in
 * jetstream mode it is the RouterEvent JSON. All payloads of one call share one dp rank.
 */
export type RawIngestOutput = Buffer
export const OUT_HEADER_BYTES = 60

export interface RawIngestorOptions {
  kvBlockSize: number // integer >= 1
  workerId: bigint // 0..2^64-1
  jetstream: boolean // false = event plane
  maxDpRanks: number // integer >= 1; ignored when dpRanks is given
  dpRanks: Uint32Array | null // exactly these ranks are allowed (non-empty, distinct)
  /** 0: no local indexer; else the ring-buffer size per dp rank of the local indexer (SPEC 6). */
  localIndexerBufferSize: number
}

// ---------------------------------------------------------------------------------------------------
// Indexer (SPEC 6)

/** Outcome codes of RawRadixIndex.applyEvent / applyEncoded, indexed like APPLY_OUTCOMES. */
export const APPLY_OUTCOMES = ['applied', 'parent_not_found', 'block_not_found', 'invalid_block_sequence'] as const
export type ApplyOutcome = (typeof APPLY_OUTCOMES)[number]

/** Counter names of RawRadixIndex.counters(), in this order; every value is a bigint. */
export const INDEX_COUNTER_NAMES = [
  'applied_stored', // stored events fully applied
  'applied_removed', // removed events (counted even when some hashes were unknown)
  'applied_cleared',
  'parent_not_found', // stored events whose parent the worker does not hold: nothing applied
  'block_not_found', // removed hashes the worker did not hold
  'invalid_block_sequence', // stored events repeating a block hash or its parent: nothing applied
  'blocks_stored', // blocks applied by stored events
  'blocks_removed', // hashes removed
] as const
export type IndexCounterName = (typeof INDEX_COUNTER_NAMES)[number]

/**
 * findMatches output, written into a caller's buffer (little-endian): u32 N, then N records of 24 bytes
 * { u64 workerId, u32 dpRank, u32 score, u64 treeSize }, in ascending (workerId, dpRank) order.
 * Only workers with a non-zero score appear; treeSize is the number of block hashes that worker holds.
 * The call returns the number of bytes written, or minus the number needed when `out` is too small
 * (nothing is written then; a query changes no state, so the caller retries with a bigger buffer).
 */
export const MATCH_RECORD_BYTES = 24

/** Format codes of applyEncoded. */
export const ENCODED_FORMATS = ['envelope', 'msgpack', 'json'] as const

export interface RawRadixIndex {
  /** Never throws for event-level outcomes; returns an APPLY_OUTCOMES index. */
  applyEvent(ev: RouterEventValue): number
  /** format: index into ENCODED_FORMATS. Throws Error('invalid router event: ...') on bytes it cannot decode. */
  applyEncoded(payload: Uint8Array, format: number): number
  findMatches(tokensHashes: BigUint64Array, earlyExit: boolean, out: Uint8Array): number
  findMatchesForTokens(
    tokens: Uint32Array,
    kvBlockSize: number,
    loraName: string | null,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
    earlyExit: boolean,
    out: Uint8Array,
  ): number
  removeWorker(workerId: bigint): void
  removeWorkerDpRank(workerId: bigint, dpRank: number): void
  /** Per worker in ascending (workerId, dpRank), that worker's blocks depth-first (children in ascending tokens_hash), one block per stored event. */
  dump(): RouterEventValue[]
  /** Distinct known worker ids, ascending. */
  workers(): BigUint64Array
  /** Total (worker, dp rank, block hash) entries. */
  size(): number
  counters(): BigUint64Array
}

export type RawRangeResult =
  | { kind: 'Events'; events: RouterEventValue[] }
  | { kind: 'TreeDump'; events: RouterEventValue[] }
  | { kind: 'TooNew'; requestedStart: bigint; requestedEnd: bigint; newestAvailable: bigint }
  | { kind: 'InvalidRange'; startId: bigint; endId: bigint }
  | { kind: 'Error'; message: string }

export interface RawLocalIndexer extends RawRadixIndex {
  /** Applies (and buffers, even when the index rejects it) one event of this worker. */
  eventsInRange(dpRank: number, start: bigint | null, end: bigint | null): RawRangeResult
}

export interface RawIngestor {
  /** Never throws on any payload; a malformed batch gives rejected[malformed] = 1 and dp rank -1. */
  ingest(payload: Uint8Array, nowMs: number): RawIngestOutput
  stored(
    tokenIds: Uint32Array,
    blockHashes: BigUint64Array,
    blockSize: number,
    parentHash: bigint | null,
    loraName: string | null,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
    dpRank: number,
    nowMs: number,
  ): RawIngestOutput
  /**
   * The hot path: writes what ingest() would return into `out` at `offset` (an arena the caller
   * reuses) and returns its length, or minus the length needed when it does not fit; then
   * takeOutput(out2, offset2) hands over that same output, provided no other call came in between.
   */
  ingestInto(payload: Uint8Array, nowMs: number, out: Uint8Array, offset: number): number
  takeOutput(out: Uint8Array, offset: number): number
  removed(blockHashes: BigUint64Array, dpRank: number, nowMs: number): RawIngestOutput
  cleared(dpRank: number, nowMs: number): RawIngestOutput
  /** Whether dpRank may be used (already seen, configured, or room for one more). */
  rankAllowed(dpRank: number): boolean
  nextEventId(dpRank: number): bigint
  /** Values in COUNTER_NAMES order. */
  counters(): BigUint64Array
  takeWarnings(): string[]
  /** The local indexer every emitted event is applied to and buffered in (null when not enabled). */
  localIndexer(): RawLocalIndexer | null
}

export interface RawBinding {
  computeBlockHashes(
    tokens: Uint32Array,
    kvBlockSize: number,
    loraName: string | null,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
  ): BigUint64Array
  /** null = malformed batch. */
  decodeEngineBatch(payload: Uint8Array, kvBlockSize: number): RawDecoded | null
  /** null = malformed batch (the whole payload is checked for msgpack well-formedness and depth). */
  peekBatch(payload: Uint8Array): RawPeek | null
  encodeRouterEvent(ev: RouterEventValue, json: boolean): Buffer
  /** Throws an Error whose message starts with "invalid router event" on bytes it cannot decode. */
  decodeRouterEvent(bytes: Uint8Array, json: boolean): RouterEventValue
  encodeEnvelope(publisherId: bigint, sequence: bigint, publishedAt: bigint, topic: string, payload: Uint8Array): Buffer
  encodeActiveLoad(workerId: bigint, dpRank: number, activeDecodeBlocks: bigint, activePrefillTokens: bigint | null): Buffer
  jetstreamStreamName(namespace: string, component: string): string
  RawIngestor: new (options: RawIngestorOptions) => RawIngestor
  RawRadixIndex: new () => RawRadixIndex
  /** bufferSize: events kept per dp rank (>= 1). */
  RawLocalIndexer: new (
    bufferSize: number,
  ) => RawLocalIndexer
}
