// The raw interface that both implementations provide: the napi binding (crates/node) and the
// pure-TypeScript fallback (ts/fallback). Everything above ts/core/native.ts talks to this interface only.
//
// Arguments arrive already validated by the public wrappers in ts/core/api.ts (types, ranges, dp-rank
// limits), so an implementation may assume well-typed input, but it must still never crash or panic on
// any byte sequence: every payload argument is untrusted.
//
// u64 values are bigint (or BigUint64Array), never number.

// Names (rejection reasons, counters, outcomes, topics, subjects) belong to the core: they reach
// TypeScript through RawBinding.names() and the subject functions, never rebuilt here. The types below
// only let the compiler check their uses; __test__/names.spec.ts checks them against both cores.

/** Rejection reasons, in the order of the `rejected` counts of RawIngestOutput and RawDecoded. */
export type RejectReason =
  | 'malformed'
  | 'invalid'
  | 'unknown_type'
  | 'filtered_tier'
  | 'filtered_group'
  | 'empty'
  | 'self_reference'
  | 'block_size'
  | 'dp_rank'
  | 'ambiguous_salt'

/** Counter names of `RawIngestor.counters()`: what each counts is documented in crates/core/src/ingest.rs. */
export type CounterName =
  | 'batches'
  | 'events_in'
  | 'emitted_stored'
  | 'emitted_removed'
  | 'emitted_cleared'
  | 'blocks_stored'
  | 'blocks_removed'
  | 'truncated_stores'
  | 'resets'
  | 'payload_bytes'
  | 'untracked_blocks'
  | `rejected_${RejectReason}`

/** Outcomes of the RawRadixIndex apply methods, by code. */
export type ApplyOutcome = 'applied' | 'parent_not_found' | 'block_not_found' | 'invalid_block_sequence' | 'ignored'

/** Counter names of `RawRadixIndex.counters()` (crates/core/src/index.rs). */
export type IndexCounterName =
  | 'applied_stored'
  | 'applied_removed'
  | 'applied_cleared'
  | 'parent_not_found'
  | 'block_not_found'
  | 'invalid_block_sequence'
  | 'blocks_stored'
  | 'blocks_removed'

/** The encodings of applyEncoded, by format code. */
export type EncodedFormat = 'envelope' | 'msgpack' | 'json'

/** The core's names; every list is in the order of the codes and counter arrays it names. */
export interface RawNames {
  /** The envelope topic of router events (`kv-events`). */
  kvEventsTopic: string
  /** The envelope topic of worker load (`kv_metrics`). */
  kvMetricsTopic: string
  rejectReasons: RejectReason[]
  counterNames: CounterName[]
  indexCounterNames: IndexCounterName[]
  applyOutcomes: ApplyOutcome[]
  encodedFormats: EncodedFormat[]
  /** Dynamo 1.4+'s storage tiers, in the order of the core's tier codes. */
  storageTiers: StorageTier[]
}

/** Dynamo 1.4+'s `storage_tier` of a RouterEvent: where the blocks live. */
export type StorageTier = 'device' | 'host_pinned' | 'disk' | 'external'
/** Dynamo 1.5+'s `residency_domain` of a RouterEvent. */
export type ResidencyDomain = 'worker' | 'cache_owner'

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
  /**
   * Dynamo 1.4+ only (absent on a Dynamo 1.0 event): where the blocks live. Encoded, it adds
   * `storage_tier` (and `start_position: null` to stores).
   */
  storageTier?: StorageTier
  /** Dynamo 1.5+ only: `worker` (what this package writes) or `cache_owner`. */
  residencyDomain?: ResidencyDomain
}

export interface RawDecoded {
  dpRank: number
  events: ConvertedEvent[]
  /** Counts indexed like names().rejectReasons (index 0, malformed, is always 0 here). */
  rejected: Uint32Array
}

export interface RawPeek {
  dpRank: number
  /** The 4th element of a positional batch when it is a 16-byte bin (vLLM publisher id), else null. */
  publisherId: Uint8Array | null
}

/**
 * Output of one RawIngestor call, packed into a single Buffer so that one call hands over everything
 * it produced (payloads, counts and warnings). All integers little-endian:
 *
 *   offset  0  u32  N, the number of payloads
 *   offset  4  u32  dp rank of the batch (0 when flag bit 2 is clear)
 *   offset  8  u32  flags: bit 0 = firstEventId present, bit 1 = W > 0 (the call raised warnings),
 *                   bit 2 = the dp rank is present (clear when the batch was malformed),
 *                   bit 3 = some rejected count is non-zero, bit 4 = firstSequence present
 *   offset 12  u32  W, the byte length of the warnings section
 *   offset 16  u64  firstEventId (0 when absent); in dynamo-1.0 payload i has event id firstEventId + i,
 *                   in dynamo-1.4 the events of the payloads are numbered on from it
 *   offset 24  u32 × 10  rejected counts, indexed like names().rejectReasons
 *   offset 64  u64  firstSequence (flag bit 4; 0 when absent): payload i is the envelope of sequence
 *                   firstSequence + i (event-plane modes)
 *   offset 72  the N payloads, concatenated
 *   then       the warnings section (W bytes): per warning a u32 byte length and its UTF-8 text
 *   then       u32 × N  payload lengths (the last 4N bytes)
 *
 * In event-plane mode each payload is the msgpack envelope around the msgpack RouterEvent (dynamo-1.4:
 * around a msgpack array of RouterEvents); in jetstream mode it is the RouterEvent JSON. All payloads
 * of one call share one dp rank.
 */
export type RawIngestOutput = Buffer
/** Where firstSequence sits in RawIngestOutput (after the rejected counts). */
export const SEQUENCE_AT = 64
export const OUT_HEADER_BYTES = 72

export interface RawIngestorOptions {
  kvBlockSize: number // integer >= 1
  workerId: bigint // 0..2^64-1
  jetstream: boolean // false = event plane
  maxDpRanks: number // integer >= 1; ignored when dpRanks is given
  dpRanks: Uint32Array | null // exactly these ranks are allowed (non-empty, distinct)
  /** 0: no local indexer; else the ring-buffer size per dp rank of the local indexer (SPEC 6). */
  localIndexerBufferSize: number
  /** The dynamo-1.4 wire (SPEC 5b) instead of dynamo-1.0; never with jetstream. */
  wire14?: boolean
  /** dynamo-1.4: fixed publisher ids, publisherIdValues[i] for rank publisherIdRanks[i] (1..2^53-1). */
  publisherIdRanks?: number[] | null
  publisherIdValues?: bigint[] | null
  /** dynamo-1.4: the seed the other ranks' publisher ids derive from (random per Ingestor). */
  publisherSeed?: bigint
}

// ---------------------------------------------------------------------------------------------------
// Indexer (SPEC 6)

/**
 * findMatches output, written into a caller's buffer (little-endian): u32 N, then N records of 24 bytes
 * { u64 workerId, u32 dpRank, u32 score, u64 treeSize }, in ascending (workerId, dpRank) order.
 * Only workers with a non-zero score appear; treeSize is the number of block hashes that worker holds.
 * The call returns the number of bytes written, or minus the number needed when `out` is too small
 * (nothing is written then; a query changes no state, so the caller retries with a bigger buffer).
 */
export const MATCH_RECORD_BYTES = 24

/**
 * findMatches on the index `handle` names (from RawRadixIndex.handle(); a receiver is not used to find
 * it), written at byte `offset` of `out`: the bytes written, or minus the bytes needed from `offset`
 * (nothing written then). A handle that no longer names a live index throws `RadixIndex is closed`.
 */
export type FindMatchesPacked = (
  handle: number,
  tokensHashes: BigUint64Array,
  earlyExit: boolean,
  out: Uint8Array,
  offset: number,
) => number

export interface RawRadixIndex {
  // The apply methods take an event flattened by the caller (ts/core/api.ts) into typed arrays, so
  // that crossing into the native core costs no per-block object conversion. `head` holds
  // [workerId, eventId, parentHash] (parentHash read only when hasParent); the first n values of
  // blockHashes / tokensHashes are the event's. Each returns an outcome code (names().applyOutcomes)
  // and never throws for event-level outcomes.
  applyStored(
    head: BigUint64Array,
    dpRank: number,
    hasParent: boolean,
    blockHashes: BigUint64Array,
    tokensHashes: BigUint64Array,
    n: number,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
  ): number
  applyRemoved(head: BigUint64Array, dpRank: number, blockHashes: BigUint64Array, n: number): number
  applyCleared(head: BigUint64Array, dpRank: number): number
  /** The same for an event object (tests and tools; the public RadixIndex uses the methods above). */
  applyEvent(ev: RouterEventValue): number
  /** format: index into names().encodedFormats. Throws a router event error (see RawBinding.decodeRouterEvent) on bytes it cannot decode. */
  applyEncoded(payload: Uint8Array, format: number): number
  findMatches(tokensHashes: BigUint64Array, earlyExit: boolean, out: Uint8Array): number
  /**
   * findMatches written at byte `offset` of `out`: the bytes written, or minus the bytes needed from
   * `offset` (nothing written then). The fallback's indexes only (the handle is not used); the native
   * binding has it as a plain function, RawBinding.findMatchesPackedFunction.
   */
  findMatchesPacked?: FindMatchesPacked
  /** The handle findMatchesPacked finds this index by (the native RawRadixIndex and the fallback's). */
  handle?(): number
  findMatchesForTokens(
    tokens: Uint32Array,
    kvBlockSize: number,
    loraName: string | null,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
    earlyExit: boolean,
    out: Uint8Array,
    /** Dynamo 1.4+'s hash options, as in computeBlockHashes. */
    cacheSalt?: string | null,
    eagle?: boolean,
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
  /**
   * Frees the index now and gives back the memory reported to V8 (SPEC 8). Idempotent. The public
   * layer refuses every later call; a raw object must only stay safe after it.
   */
  close(): void
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
  /** The same answer as the recovery response JSON (SPEC 7, `router-wire.json`), exact u64, in one call. */
  eventsInRangeJson(dpRank: number, start: bigint | null, end: bigint | null): Buffer
  /** Opens a cursor over eventsInRangeJson's body (a dump is written as replyNext asks for it); returns its id. */
  rangeReplyOpen(dpRank: number, start: bigint | null, end: bigint | null): number
  /** Opens a cursor over the `{"TreeDump":[...]}` body of one dp rank's dump, or of every rank's (null). */
  dumpReplyOpen(dpRank: number | null): number
  /**
   * The next chunk: exactly maxBytes (≥ 1) bytes except the last; null after the last (the cursor is then closed).
   * Throws `LocalIndexer: the index changed since the dump was opened` (closing it) when the index changed under an
   * unfinished dump, `LocalIndexer: no open reply cursor <id>` for an unknown id.
   */
  replyNext(cursor: number, maxBytes: number): Buffer | null
  /** Forgets a cursor; unknown ids are ignored. */
  replyClose(cursor: number): void
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
    /** Dynamo 1.4+'s hash inputs (SPEC 4). */
    cacheSalt?: string | null,
    eagle?: boolean,
  ): RawIngestOutput
  /**
   * The hot path: writes what ingest() would return into `out` at `offset` (an arena the caller
   * reuses) and returns its length; when it does not fit there, returns that output as a new Buffer
   * instead. Either way one call hands over the whole output.
   */
  ingestInto(payload: Uint8Array, nowMs: number, out: Uint8Array, offset: number): number | Buffer
  /**
   * ingestInto on the ingestor `handle` names (from handle(); the receiver is not used to find it),
   * through the cheapest native call: the public Ingestor.ingest uses it. Throws `Ingestor is closed`
   * for a handle of a closed or collected ingestor. `arena` (default false) says that `out` is one of the
   * public API's arenas: the native call then keeps the arena at the highest address it has seen
   * referenced (one per Node-API environment, that is per thread), so that glibc's malloc, which returns
   * the top of its heap to the system, reuses the arenas V8 frees below it instead of faulting fresh pages
   * in for each new one. Nothing else changes; the fallback ignores it.
   */
  ingestPacked(handle: number, payload: Uint8Array, nowMs: number, out: Uint8Array, offset: number, arena?: boolean): number | Buffer
  /** This ingestor's handle for ingestPacked: an integer, never reused for another live ingestor. */
  handle(): number
  removed(blockHashes: BigUint64Array, dpRank: number, nowMs: number): RawIngestOutput
  cleared(dpRank: number, nowMs: number): RawIngestOutput
  /** Whether dpRank may be used (already seen, configured, or room for one more). */
  rankAllowed(dpRank: number): boolean
  nextEventId(dpRank: number): bigint
  /** The publisher id of the rank's envelopes (dynamo-1.0: the worker id for every rank). */
  publisherId(dpRank: number): bigint
  /** Values in names().counterNames order. */
  counters(): BigUint64Array
  /** The local indexer every emitted event is applied to and buffered in (null when not enabled). */
  localIndexer(): RawLocalIndexer | null
  /** Frees the ingestor and its local indexer now (SPEC 8); later calls throw `Ingestor is closed`. Idempotent. */
  close(): void
}

// Discovery records (SPEC 5b, "Discovery"): u64 as bigint, values as compact JSON bytes.

/** The serving endpoint a record is scoped to. */
export interface RawEndpoint {
  namespace: string
  component: string
  name: string
}

/** The request-plane instance serving Dynamo-native recovery for a source. */
export interface RawRecoveryTarget {
  namespace: string
  component: string
  endpoint: string
  instanceId: bigint
  /** The TCP request-plane address. */
  tcp: string
}

/** One publisher incarnation of one (workerId, dpRank). */
export interface RawEventSourceSpec {
  endpoint: RawEndpoint
  workerId: bigint
  dpRank: number
  publisherId: bigint
  /** Absent or null: the router treats the source as live-only. */
  recoveryTarget?: RawRecoveryTarget | null
}

/** One publisher's event-plane channel. */
export interface RawEventChannelSpec {
  endpoint: RawEndpoint
  topic: string
  publisherId: bigint
  /** The bound ZeroMQ PUB endpoint (`tcp://host:port`); absent or null advertises the NATS event plane. */
  zmqEndpoint?: string | null
}

/** A record ready to write. */
export interface RawDiscoveryRecord {
  bucket: string
  /** `namespace/{ns}/component/{c}/endpoint/{e}/topic/{topic}/{publisher_id:x}`, segments encoded. */
  key: string
  /** `{bucket}/{key}`. */
  etcdKey: string
  /** Relative to the file store's root: `{bucket}/{key percent-encoded as a whole}`. */
  filePath: string
  /** Compact JSON. */
  value: Buffer
}

/**
 * Per (worker, dp rank), the event id due next for the ranks a router follows live (crates/core/src/select.rs):
 * an event-plane envelope holding its rank's due event is decoded and applied in one call.
 */
export interface RawRankGate {
  arm(workerId: bigint, dpRank: number, next: bigint): void
  /** Returns the id that was due, null when the rank was not armed. */
  disarm(workerId: bigint, dpRank: number): bigint | null
  removeWorker(workerId: bigint): void
  /** Workers with an event applied by apply() since the last call, ascending. */
  takeSeen(): BigUint64Array
  /**
   * Decodes an event-plane envelope holding one RouterEvent map. `out` (6 values) receives [workerId,
   * eventId, dpRank, kind (0 stored, 1 removed, 2 cleared), armed (0/1), the id due when armed]. Returns
   * `outcome + 5 × kind` when the rank is armed and the event is the one due (applied to `index`),
   * GATE_PASS when not applied, GATE_OTHER (nothing written) for bytes it does not read.
   */
  apply(index: RawRadixIndex, payload: Uint8Array, out: BigUint64Array): number
}

/** RawRankGate.apply: one event, not applied (its rank not armed, or not the id due). */
export const GATE_PASS = 15
/** RawRankGate.apply: not an envelope of one RouterEvent map that decodes; nothing applied. */
export const GATE_OTHER = 16

export interface RawBinding {
  /**
   * The native binding's findMatchesPacked, a plain Node-API callback without napi-rs's per-call borrow
   * tracking (ask once and keep it). Absent in the fallback, whose indexes have it as a method.
   */
  findMatchesPackedFunction?(): FindMatchesPacked
  /** cacheSalt and eagle are Dynamo 1.4+'s hash options (SPEC 4); absent, they hash as Dynamo 1.0. */
  computeBlockHashes(
    tokens: Uint32Array,
    kvBlockSize: number,
    loraName: string | null,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
    cacheSalt?: string | null,
    eagle?: boolean,
  ): BigUint64Array
  /** null = malformed batch. */
  decodeEngineBatch(payload: Uint8Array, kvBlockSize: number): RawDecoded | null
  /** null = malformed batch (the whole payload is checked for msgpack well-formedness and depth). */
  peekBatch(payload: Uint8Array): RawPeek | null
  encodeRouterEvent(ev: RouterEventValue, json: boolean): Buffer
  /**
   * On bytes it cannot decode, throws an Error whose message is `invalid router event: <detail>`,
   * identical in both implementations for every input (__test__/error-parity.spec.ts). The detail's
   * first words name the reason, which ts/core/api.ts maps to RouterEventError.reason:
   * `envelope...`, `malformed envelope`, `trailing bytes after the envelope` → envelope;
   * `malformed msgpack`, `trailing bytes`, `bad JSON: <what> at byte <n>` → malformed;
   * any other detail (a field missing or of the wrong type) → invalid.
   */
  decodeRouterEvent(bytes: Uint8Array, json: boolean): RouterEventValue
  /** Every RouterEvent of a payload: one (Dynamo 1.0) or an array (Dynamo 1.4+); format: names().encodedFormats. */
  decodeRouterEvents(bytes: Uint8Array, format: number): RouterEventValue[]
  /** A Dynamo 1.4+ payload: the events as a msgpack (or JSON) array. */
  encodeRouterEvents(evs: RouterEventValue[], json: boolean): Buffer
  encodeEnvelope(publisherId: bigint, sequence: bigint, publishedAt: bigint, topic: string, payload: Uint8Array): Buffer
  encodeActiveLoad(workerId: bigint, dpRank: number, activeDecodeBlocks: bigint, activePrefillTokens: bigint | null): Buffer
  /** Dynamo 1.4+'s ActiveLoad, with `kv_used_blocks`; every value nil when null. */
  encodeActiveLoad14(
    workerId: bigint,
    dpRank: number,
    activeDecodeBlocks: bigint | null,
    activePrefillTokens: bigint | null,
    kvUsedBlocks: bigint | null,
  ): Buffer
  /** Dynamo 1.4+'s endpoint-scoped subject of `topic`, each name percent-encoded. */
  endpointSubject(namespace: string, component: string, endpoint: string, topic: string): string
  /** `namespace.{ns}.component.{c}.endpoint.{e}`, each name percent-encoded. */
  endpointSubjectPrefix(namespace: string, component: string, endpoint: string): string
  jetstreamStreamName(namespace: string, component: string): string
  /** The event-plane subject a Dynamo 1.0 router subscribes to. */
  kvEventsSubject(namespace: string, component: string): string
  /** The subject worker load (kv_metrics envelopes) is published on. */
  kvMetricsSubject(namespace: string): string
  /** The subject events are published to in a JetStream stream. */
  jetstreamSubject(streamName: string): string
  names(): RawNames
  /** The EventSource record of one (workerId, dpRank) publisher. Throws an Error naming the bad argument. */
  eventSourceRecord(spec: RawEventSourceSpec): RawDiscoveryRecord
  /** The EventChannel record of one publisher's event plane. Throws an Error naming the bad argument. */
  eventChannelRecord(spec: RawEventChannelSpec): RawDiscoveryRecord
  /**
   * The indexer service's common POST /query body read from its bytes (crates/core/src/query.rs): the
   * number of token ids, all written to `tokens`; -1 for any other body (the exact reader answers it);
   * -(2 + n) when its n token ids do not fit in `tokens`. `fields` (8 values) receives the byte ranges
   * [start, end) of model_name, routing_group, lora_name and cache_salt: 0xffffffff twice for a field not
   * given, 0xfffffffe for null.
   */
  scanQueryBody(body: Uint8Array, tokens: Uint32Array, fields: Uint32Array): number
  RawIngestor: new (options: RawIngestorOptions) => RawIngestor
  RawRadixIndex: new () => RawRadixIndex
  /** bufferSize: events kept per dp rank (>= 1). */
  RawLocalIndexer: new (
    bufferSize: number,
  ) => RawLocalIndexer
  /**
   * The default selector's pass (SPEC 10) over the first n candidates (ascending (workerIds[i], dpRanks[i])):
   * their overlaps on `tokensHashes` in `index`, and cost = overlapWeight × max(0, requestBlocks − overlap)
   * + decodeBlocks[i]. Writes overlap, tree size (0 when not scored) and cost at out[offset + i],
   * out[offset + n + i], out[offset + 2n + i]; returns the lowest cost's candidate (the first of equal
   * ones), -1 when n is 0.
   */
  selectBest(
    index: RawRadixIndex,
    tokensHashes: BigUint64Array,
    requestBlocks: number,
    overlapWeight: number,
    workerIds: BigUint64Array,
    dpRanks: Uint32Array,
    decodeBlocks: Float64Array,
    n: number,
    out: Float64Array,
    offset: number,
  ): number
  RawRankGate: new () => RawRankGate
}
