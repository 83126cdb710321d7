// The public, validated API over the raw implementation (native or fallback). Argument checks live
// here, once, so both implementations throw the same TypeError/RangeError naming the argument; the raw
// layer then only ever sees well-typed values. Event semantics live in the core (crates/core) and its
// mirror (ts/fallback), never here.
import { randomBytes } from 'node:crypto'
import {
  MATCH_RECORD_BYTES,
  OUT_HEADER_BYTES,
  SEQUENCE_AT,
  type ApplyOutcome,
  type FindMatchesPacked,
  type BlockExtraInfo,
  type IndexCounterName,
  type RawLocalIndexer,
  type RawRadixIndex,
  type RawRangeResult,
  type ConvertedEvent,
  type CounterName,
  type RawBinding,
  type RawIngestor,
  type RejectReason,
  type RouterEventValue,
  type StorageTier,
} from './binding.js'
import { raw } from './native.js'
import {
  bytesArg,
  checkName,
  describe,
  hashesArg,
  loraArg,
  mmInfosArg,
  nowArg,
  optBoolArg,
  optStringArg,
  positiveInt,
  tokensArg,
  u32,
  u64,
} from '../util/args.js'

export { implementation, nativeLoadError } from './native.js'
export type {
  ApplyOutcome,
  IndexCounterName,
  BlockExtraInfo,
  ConvertedEvent,
  CounterName,
  MmObject,
  RejectReason,
  ResidencyDomain,
  RouterEventValue,
  StorageTier,
  StoredBlock,
} from './binding.js'

// The core's names (both implementations give the same lists; __test__/names.spec.ts checks it).
const NAMES = raw.names()
/** Rejection reasons, in the order of the core's rejected counts. */
export const REJECT_REASONS: readonly RejectReason[] = Object.freeze(NAMES.rejectReasons)
/** Ingestor counter names, in the order of the core's counters. */
export const COUNTER_NAMES: readonly CounterName[] = Object.freeze(NAMES.counterNames)
/** Index apply outcomes, by code. */
export const APPLY_OUTCOMES: readonly ApplyOutcome[] = Object.freeze(NAMES.applyOutcomes)
/** Index counter names, in the order of the core's index counters. */
export const INDEX_COUNTER_NAMES: readonly IndexCounterName[] = Object.freeze(NAMES.indexCounterNames)
/** Dynamo 1.4+'s storage tiers. */
export const STORAGE_TIERS: readonly StorageTier[] = Object.freeze(NAMES.storageTiers)
/** The envelope topics of router events and of worker load. */
export const KV_EVENTS_TOPIC: string = NAMES.kvEventsTopic
export const KV_METRICS_TOPIC: string = NAMES.kvMetricsTopic

/** A batch that is not a decodable engine batch (SPEC 2.2). */
export class KvDecodeError extends Error {
  readonly reason: 'malformed' = 'malformed'
  constructor(message = 'malformed engine batch') {
    super(message)
    this.name = 'KvDecodeError'
  }
}

/** Why bytes are not a RouterEvent (SPEC 8). */
export type RouterEventErrorReason = 'envelope' | 'malformed' | 'invalid'

/**
 * Bytes that cannot be decoded as a router event (`decodeRouterEvent`, `RadixIndex.applyEncoded`),
 * with the same message and reason in both implementations. `reason`: `envelope` (not an event-plane
 * envelope with a bin payload), `malformed` (not well-formed msgpack or JSON), `invalid` (a well-formed
 * value that is not a RouterEvent).
 */
export class RouterEventError extends Error {
  readonly reason: RouterEventErrorReason
  constructor(reason: RouterEventErrorReason, message: string) {
    super(message)
    this.name = 'RouterEventError'
    this.reason = reason
  }
}

const ROUTER_EVENT_PREFIX = 'invalid router event: '
/** A Dynamo publisher id is at most 2^53-1 (a router reads it as a JSON number). */
const MAX_PUBLISHER_ID = (1n << 53n) - 1n

/**
 * The RouterEventError for a raw layer's error (ts/core/binding.ts: the detail's first words name
 * the reason); any other error is returned as it is.
 */
function routerEventError(e: unknown): unknown {
  if (!(e instanceof Error) || !e.message.startsWith(ROUTER_EVENT_PREFIX)) return e
  const detail = e.message.slice(ROUTER_EVENT_PREFIX.length)
  const reason: RouterEventErrorReason =
    detail.startsWith('envelope') || detail.startsWith('malformed envelope') || detail.startsWith('trailing bytes after the envelope')
      ? 'envelope'
      : detail.startsWith('malformed msgpack') || detail.startsWith('trailing bytes') || detail.startsWith('bad JSON')
        ? 'malformed'
        : 'invalid'
  return new RouterEventError(reason, e.message)
}

/**
 * What a closed Ingestor, RadixIndex or LocalIndexer holds instead of its raw object: every call
 * throws `<what> is closed`, close() does nothing (SPEC 8). Swapping the object keeps the check off
 * the hot path.
 */
function closedRaw<T extends object>(what: string): T {
  const fail = (): never => {
    throw new Error(`${what} is closed`)
  }
  const noop = (): void => {}
  return new Proxy({} as T, { get: (_t, key) => (key === 'close' ? noop : fail) })
}

// ---------------------------------------------------------------------------------------------------
// stateless functions

/** How Dynamo hashes a block (SPEC 4); every option absent hashes as Dynamo 1.0 with no LoRA. */
export interface BlockHashOptions {
  /** The LoRA adapter; "" is the base model. */
  loraName?: string | null
  /** Block i's multimodal objects, when present. */
  blockMmInfos?: (BlockExtraInfo | null)[] | null
  /** Dynamo 1.4+: the request's cache salt (cache namespace), mixed into the seed; "" is none. */
  cacheSalt?: string | null
  /** Dynamo 1.4+: Eagle blocks, each hashed with the next block's first token. */
  eagle?: boolean
}

function hashOptionsArg(opts: BlockHashOptions) {
  return {
    lora: loraArg(opts.loraName),
    mm: mmInfosArg('blockMmInfos', opts.blockMmInfos),
    salt: optStringArg('cacheSalt', opts.cacheSalt),
    eagle: optBoolArg('eagle', opts.eagle),
  }
}

/** Dynamo's LocalBlockHash (SPEC 4) of each complete block of `tokens`. */
export function computeBlockHashes(tokens: Uint32Array | number[], kvBlockSize: number, opts: BlockHashOptions = {}): BigUint64Array {
  const t = tokensArg('tokens', tokens)
  const bs = positiveInt('kvBlockSize', kvBlockSize)
  const o = hashOptionsArg(opts)
  return raw.computeBlockHashes(t, bs, o.lora, o.mm, o.salt, o.eagle)
}

export interface DecodedBatch {
  dpRank: number
  events: ConvertedEvent[]
  rejected: Record<RejectReason, number>
}

/** Decodes and converts one engine batch without any publisher state (inspection, tests, CLI). */
export function decodeEngineBatch(payload: Uint8Array, kvBlockSize: number): DecodedBatch {
  const decoded = raw.decodeEngineBatch(bytesArg('payload', payload), positiveInt('kvBlockSize', kvBlockSize))
  if (decoded === null) throw new KvDecodeError()
  return { dpRank: decoded.dpRank, events: decoded.events, rejected: rejectedRecord(decoded.rejected, 0) }
}

/** Reads only the batch header: dp rank and the vLLM publisher id. null = malformed batch. */
export function peekBatch(payload: Uint8Array): { dpRank: number; publisherId: Uint8Array | null } | null {
  return raw.peekBatch(bytesArg('payload', payload))
}

function formatArg(v: unknown): boolean {
  if (v === 'msgpack') return false
  if (v === 'json') return true
  throw new RangeError(`format must be 'msgpack' or 'json', got ${describe(v)}`)
}

function eventArg(ev: unknown): RouterEventValue {
  if (typeof ev !== 'object' || ev === null) throw new TypeError(`event must be an object, got ${describe(ev)}`)
  const e = ev as RouterEventValue
  const inner = e.event
  if (typeof inner !== 'object' || inner === null) throw new TypeError('event.event must be an object')
  const out: RouterEventValue = {
    workerId: u64('workerId', e.workerId),
    event: { eventId: u64('event.eventId', inner.eventId), dpRank: u32('event.dpRank', inner.dpRank), data: dataArg(inner.data) },
  }
  metaArg(e, out)
  return out
}

/** Copies a checked storageTier / residencyDomain (Dynamo 1.4+) from `e` to `out`; true when any is present. */
function metaArg(e: RouterEventValue, out?: RouterEventValue): boolean {
  let any = false
  if (e.storageTier !== undefined) {
    if (!(STORAGE_TIERS as readonly unknown[]).includes(e.storageTier))
      throw new RangeError(`storageTier must be one of ${STORAGE_TIERS.join(', ')}, got ${describe(e.storageTier)}`)
    if (out) out.storageTier = e.storageTier
    any = true
  }
  if (e.residencyDomain !== undefined) {
    if (e.residencyDomain !== 'worker' && e.residencyDomain !== 'cache_owner')
      throw new RangeError(`residencyDomain must be 'worker' or 'cache_owner', got ${describe(e.residencyDomain)}`)
    if (out) out.residencyDomain = e.residencyDomain
    any = true
  }
  return any
}

function dataArg(d: unknown): ConvertedEvent {
  const data = d as ConvertedEvent
  switch (data?.type) {
    case 'stored':
      if (!Array.isArray(data.blocks)) throw new TypeError('event.data.blocks must be an array')
      return {
        type: 'stored',
        parentHash: data.parentHash === null || data.parentHash === undefined ? null : u64('event.data.parentHash', data.parentHash),
        blocks: data.blocks.map((b, i) => ({
          blockHash: u64(`blocks[${i}].blockHash`, b?.blockHash),
          tokensHash: u64(`blocks[${i}].tokensHash`, b?.tokensHash),
          mmExtraInfo: b.mmExtraInfo == null ? null : (mmInfosArg(`blocks[${i}].mmExtraInfo`, [b.mmExtraInfo])![0] ?? null),
        })),
      }
    case 'removed':
      return { type: 'removed', blockHashes: Array.from(hashesArg('event.data.blockHashes', data.blockHashes)) }
    case 'cleared':
      return { type: 'cleared' }
    default:
      throw new TypeError(`event.data.type must be 'stored', 'removed' or 'cleared', got ${describe((d as { type?: unknown })?.type)}`)
  }
}

/**
 * RouterEvent bytes: rmp-serde named msgpack, or compact JSON with exact u64. Dynamo 1.0's shape, or
 * Dynamo 1.4+'s when the event has a `storageTier` (SPEC 5b).
 */
export function encodeRouterEvent(ev: RouterEventValue, format: 'msgpack' | 'json' = 'msgpack'): Buffer {
  return raw.encodeRouterEvent(eventArg(ev), formatArg(format))
}

/** A Dynamo 1.4+ event-plane payload: the events as one msgpack array (or JSON array). */
export function encodeRouterEvents(evs: RouterEventValue[], format: 'msgpack' | 'json' = 'msgpack'): Buffer {
  if (!Array.isArray(evs)) throw new TypeError(`events must be an array, got ${describe(evs)}`)
  return raw.encodeRouterEvents(evs.map(eventArg), formatArg(format))
}

/**
 * Parses one RouterEvent in either encoding (a Dynamo 1.4+ array of exactly one event is accepted);
 * throws a RouterEventError on bytes that are not one. Batches: decodeRouterEvents.
 */
export function decodeRouterEvent(bytes: Uint8Array, format: 'msgpack' | 'json' = 'msgpack'): RouterEventValue {
  const b = bytesArg('bytes', bytes)
  const json = formatArg(format)
  try {
    return raw.decodeRouterEvent(b, json)
  } catch (e) {
    throw routerEventError(e)
  }
}

/**
 * Every RouterEvent of a payload, in both shapes: a Dynamo 1.0 event (one map) or a Dynamo 1.4+ array;
 * `envelope` reads the event-plane envelope around either. Throws a RouterEventError on bytes that are
 * not one.
 */
export function decodeRouterEvents(bytes: Uint8Array, format: 'envelope' | 'msgpack' | 'json' = 'msgpack'): RouterEventValue[] {
  const b = bytesArg('bytes', bytes)
  const f = formatCode(format)
  try {
    return raw.decodeRouterEvents(b, f)
  } catch (e) {
    throw routerEventError(e)
  }
}

/** The event-plane envelope around a payload (msgpack map, payload as bin). */
export function encodeEnvelope(env: {
  publisherId: bigint
  sequence: bigint
  publishedAt: bigint | number
  topic: string
  payload: Uint8Array
}): Buffer {
  const publishedAt = typeof env.publishedAt === 'number' ? BigInt(nowArg(env.publishedAt)) : u64('publishedAt', env.publishedAt)
  if (typeof env.topic !== 'string') throw new TypeError(`topic must be a string, got ${describe(env.topic)}`)
  return raw.encodeEnvelope(
    u64('publisherId', env.publisherId),
    u64('sequence', env.sequence),
    publishedAt,
    env.topic,
    bytesArg('payload', env.payload),
  )
}

/**
 * Dynamo's ActiveLoad message (the payload of a kv_metrics envelope). With `kvUsedBlocks` present (a
 * bigint or null) it is Dynamo 1.4+'s, which adds `kv_used_blocks` and lets `activeDecodeBlocks` be
 * null (a Dynamo 1.6 worker publishes only kv_used_blocks).
 */
export function encodeActiveLoad(load: {
  workerId: bigint
  dpRank: number
  activeDecodeBlocks: bigint | null
  activePrefillTokens?: bigint | null
  kvUsedBlocks?: bigint | null
}): Buffer {
  if (typeof load !== 'object' || load === null) throw new TypeError(`load must be an object, got ${describe(load)}`)
  const prefill = load.activePrefillTokens == null ? null : u64('activePrefillTokens', load.activePrefillTokens)
  if (load.kvUsedBlocks !== undefined) {
    return raw.encodeActiveLoad14(
      u64('workerId', load.workerId),
      u32('dpRank', load.dpRank),
      load.activeDecodeBlocks == null ? null : u64('activeDecodeBlocks', load.activeDecodeBlocks),
      prefill,
      load.kvUsedBlocks === null ? null : u64('kvUsedBlocks', load.kvUsedBlocks),
    )
  }
  return raw.encodeActiveLoad(
    u64('workerId', load.workerId),
    u32('dpRank', load.dpRank),
    u64('activeDecodeBlocks', load.activeDecodeBlocks),
    prefill,
  )
}

/** The JetStream stream a Dynamo 1.0 router reads for this namespace and component. */
export function jetstreamStreamName(namespace: string, component: string): string {
  return raw.jetstreamStreamName(checkName('namespace', namespace), checkName('component', component))
}

/** The core NATS subject the event plane publishes router events on (SPEC 5). */
export function kvEventsSubject(namespace: string, component: string): string {
  return raw.kvEventsSubject(checkName('namespace', namespace), checkName('component', component))
}

/** The subject events are published to in the JetStream stream `streamName`. */
export function jetstreamSubject(streamName: string): string {
  if (typeof streamName !== 'string') throw new TypeError(`streamName must be a string, got ${describe(streamName)}`)
  return raw.jetstreamSubject(streamName)
}

/** The subject worker load (kv_metrics envelopes) is published on. */
export function kvMetricsSubject(namespace: string): string {
  return raw.kvMetricsSubject(checkName('namespace', namespace))
}

function segmentArg(name: string, v: unknown): string {
  if (typeof v !== 'string' || v.length === 0) throw new TypeError(`${name} must be a non-empty string, got ${describe(v)}`)
  return v
}

/**
 * Dynamo 1.4+'s endpoint-scoped NATS subject of `topic` (`kv-events` for router events, `kv_metrics`
 * for worker load): `namespace.{ns}.component.{c}.endpoint.{e}.{topic}`, each name percent-encoded
 * (bytes outside [A-Za-z0-9_-] become %XX, upper-case, per UTF-8 byte).
 */
export function endpointSubject(namespace: string, component: string, endpoint: string, topic = 'kv-events'): string {
  if (typeof topic !== 'string' || topic.length === 0) throw new TypeError(`topic must be a non-empty string, got ${describe(topic)}`)
  return raw.endpointSubject(
    segmentArg('namespace', namespace),
    segmentArg('component', component),
    segmentArg('endpoint', endpoint),
    topic,
  )
}

/** `namespace.{ns}.component.{c}.endpoint.{e}`, each name percent-encoded (an EventChannel's NATS subject prefix). */
export function endpointSubjectPrefix(namespace: string, component: string, endpoint: string): string {
  return raw.endpointSubjectPrefix(segmentArg('namespace', namespace), segmentArg('component', component), segmentArg('endpoint', endpoint))
}

// ---------------------------------------------------------------------------------------------------
// Ingestor

export type IngestMode = 'event-plane' | 'jetstream'

/**
 * The router wire an Ingestor produces: `dynamo-1.0` (Dynamo 1.0 to 1.3, SPEC 5; the default) or
 * `dynamo-1.4` (Dynamo 1.4 to 1.6, SPEC 5b).
 */
export type WireProfile = 'dynamo-1.0' | 'dynamo-1.4'

export interface IngestorOptions {
  /** Tokens per KV block; must match the engine's block size. */
  kvBlockSize: number
  /** The worker id the router knows this worker by (u64). */
  workerId: bigint
  /** Output encoding: msgpack envelopes for the event plane (default), or RouterEvent JSON for JetStream. */
  mode?: IngestMode
  /** At most this many distinct dp ranks (default 64); a batch for a further rank is rejected `dp_rank`. */
  maxDpRanks?: number
  /** Exactly these dp ranks are accepted (overrides maxDpRanks). */
  dpRanks?: number[]
  /**
   * Keep a local indexer: every emitted event is applied to it and buffered (per dp rank, the last
   * `bufferSize` events, default 1024) in the same native call, for router recovery. Off by default.
   */
  localIndexer?: { bufferSize?: number } | boolean
  /**
   * The router wire (default `dynamo-1.0`, unchanged). `dynamo-1.4`: envelopes of RouterEvent arrays
   * with storage tiers, one publisher per dp rank, ids from 1, per-rank `cleared`, Dynamo 1.6.1's
   * engine conversion (SPEC 5b). Not with `mode: 'jetstream'` (Dynamo 1.4 removed JetStream).
   */
  wire?: WireProfile
  /**
   * dynamo-1.4: fixed publisher ids per dp rank (each 1..2^53-1), e.g. to reproduce bytes in tests;
   * other ranks get a random id per Ingestor. A record or a Map from dp rank to id.
   */
  publisherIds?: Record<number, bigint> | Map<number, bigint>
}

/** The manual API's store (SPEC 3): what an engine without ZMQ events reports. */
export interface StoredArgs {
  tokenIds: Uint32Array | number[]
  blockHashes: BigUint64Array | bigint[]
  /** Default the publisher's kvBlockSize. */
  blockSize?: number
  parentHash?: bigint | null
  loraName?: string | null
  blockMmInfos?: (BlockExtraInfo | null)[] | null
  dpRank?: number
  /** dynamo-1.4 only: the request's cache salt, mixed into every tokens hash (SPEC 4). */
  cacheSalt?: string | null
  /** dynamo-1.4 only: Eagle blocks, each hashed with the next block's first token (SPEC 4). */
  eagle?: boolean
}

/**
 * What one ingest call (or one manual store / removal / clear) produced. The payloads are views into
 * memory the result keeps alive; nothing in a result changes after the call.
 *
 * The cheap way to consume a result is `count` and `views` (plain `Uint8Array` views, built on first
 * access); `payloads` gives the same bytes as `Buffer`s, built on first access too, for code that needs
 * Buffer methods. The package's publisher uses `views`. The fields are getters over the packed output,
 * so a spread (`{ ...result }`) or `JSON.stringify` does not list them.
 */
export interface IngestResult {
  /** The number of outgoing payloads (the length of `views` and of `payloads`). */
  readonly count: number
  /**
   * Outgoing payloads, ready to publish, in order, as `Uint8Array` views (built on the first access, then
   * the same array). dynamo-1.0: payload i carries event id firstEventId + i. dynamo-1.4: each payload is
   * one envelope holding an array of events numbered on from firstEventId. An empty result gives a
   * shared frozen empty array.
   */
  readonly views: readonly Uint8Array[]
  /** The same payloads as `Buffer`s over the same bytes (built on the first access; `views` is cheaper). */
  readonly payloads: Buffer[]
  /**
   * The envelope sequence of payload 0 (payload i has firstSequence + i) under the publisher id
   * `ingestor.publisherId(dpRank)`; null without payloads, and in jetstream mode.
   */
  readonly firstSequence: bigint | null
  /** The batch's dp rank; null when the batch was malformed. */
  readonly dpRank: number | null
  /** Id of the first emitted event; null when nothing was emitted. */
  readonly firstEventId: bigint | null
  /** Events rejected by reason. When nothing was rejected, one shared frozen record of zeros. */
  readonly rejected: Readonly<Record<RejectReason, number>>
  /** Rate-limited warnings raised by this call (e.g. a store truncated for missing tokens); undefined when none. */
  readonly warnings?: string[]
}

/**
 * Outputs of ingest() are written straight into an arena shared by all Ingestors (JavaScript runs one
 * call at a time) and handed out as views, so a batch costs one native call and no allocation. A new
 * arena is started when little room is left; an output larger than the room comes back from the call
 * as a Buffer of its own. A result's payloads keep their arena (64 KiB) alive. The native call is told
 * that `out` is an arena: it keeps the one at the highest address alive, so that the allocator reuses
 * freed arenas instead of returning them to the system (ingestPacked in ts/core/binding.ts).
 */
const ARENA_BYTES = 1 << 16
/** Below this much room a fresh arena is started before the call (most outputs are a few KiB). */
const ARENA_MIN_ROOM = 1 << 13

/**
 * The memory packed outputs live in (an arena, or the Buffer of one output) with what reading it takes,
 * taken once per memory: a typed array's `buffer` and `byteOffset` are calls on Node 20 (tens of ns each),
 * too many to pay per result.
 */
interface OutputMemory {
  readonly buffer: ArrayBuffer
  /** Where the memory starts in `buffer`. */
  readonly base: number
  /** The memory's bytes (offsets from `base`). */
  readonly view: DataView
}

function outputMemory(b: Buffer): OutputMemory {
  const buffer = b.buffer as ArrayBuffer
  return { buffer, base: b.byteOffset, view: new DataView(buffer, b.byteOffset, b.byteLength) }
}

let arena = Buffer.allocUnsafeSlow(ARENA_BYTES)
let arenaMemory = outputMemory(arena)
let arenaUsed = 0

/** Every reason at 0: the `rejected` of every result that rejected nothing. */
const NONE_REJECTED: Readonly<Record<RejectReason, number>> = Object.freeze(
  Object.fromEntries(REJECT_REASONS.map((r) => [r, 0])) as Record<RejectReason, number>,
)

/** The rejected counts of a packed output, read in the core's reason order. */
function readRejected(v: DataView, at: number): Record<RejectReason, number> {
  const out = {} as Record<RejectReason, number>
  for (let i = 0; i < REJECT_REASONS.length; i++) out[REJECT_REASONS[i]!] = v.getUint32(at + 4 * i, true)
  return out
}

/** Reads the warnings' texts (invalid sequences become U+FFFD, as Buffer.toString did). */
const UTF8 = new TextDecoder()

/** The payload list of every result without payloads. */
const NO_VIEWS: readonly Uint8Array[] = Object.freeze([])

/**
 * An IngestResult over one packed output (layout in ts/core/binding.ts) at `at` in `mem`. The number
 * fields are read at once; the payload views, Buffers and the bigint ids on first access, since the
 * output is never written again (an arena only moves forward).
 */
class PackedResult implements IngestResult {
  readonly count: number
  readonly dpRank: number | null
  readonly rejected: Readonly<Record<RejectReason, number>>
  readonly warnings: string[] | undefined
  #mem: OutputMemory
  #at: number
  #len: number
  #flags: number
  #views: readonly Uint8Array[] | undefined = undefined
  #payloads: Buffer[] | undefined = undefined

  constructor(mem: OutputMemory, at: number, len: number) {
    const v = mem.view
    const flags = v.getUint32(at + 8, true)
    this.count = v.getUint32(at, true)
    this.dpRank = flags & 4 ? v.getUint32(at + 4, true) : null
    this.rejected = flags & 8 ? readRejected(v, at + 24) : NONE_REJECTED
    this.#mem = mem
    this.#at = at
    this.#len = len
    this.#flags = flags
    this.warnings = flags & 2 ? this.#readWarnings() : undefined
  }

  get views(): readonly Uint8Array[] {
    let views = this.#views
    if (views === undefined) {
      const n = this.count
      if (n === 0) views = NO_VIEWS
      else {
        const list = new Array<Uint8Array>(n)
        const mem = this.#mem
        const v = mem.view
        const ab = mem.buffer
        // `new Uint8Array(arrayBuffer, offset, length)` is several times cheaper than Buffer.from or subarray on Node 20
        let p = mem.base + this.#at + OUT_HEADER_BYTES
        const lensAt = this.#at + this.#len - 4 * n
        for (let i = 0; i < n; i++) {
          const plen = v.getUint32(lensAt + 4 * i, true)
          list[i] = new Uint8Array(ab, p, plen)
          p += plen
        }
        views = list
      }
      this.#views = views
    }
    return views
  }

  get payloads(): Buffer[] {
    let payloads = this.#payloads
    if (payloads === undefined) {
      const views = this.views
      payloads = new Array<Buffer>(views.length)
      for (let i = 0; i < views.length; i++) {
        const p = views[i]!
        payloads[i] = Buffer.from(p.buffer, p.byteOffset, p.byteLength)
      }
      this.#payloads = payloads
    }
    return payloads
  }

  get firstEventId(): bigint | null {
    return this.#flags & 1 ? this.#mem.view.getBigUint64(this.#at + 16, true) : null
  }

  get firstSequence(): bigint | null {
    return this.#flags & 16 ? this.#mem.view.getBigUint64(this.#at + SEQUENCE_AT, true) : null
  }

  /** The warnings section, after the payloads: per warning a u32 byte length and its UTF-8 text. */
  #readWarnings(): string[] {
    const mem = this.#mem
    const v = mem.view
    const n = this.count
    let at = this.#at + OUT_HEADER_BYTES
    const lensAt = this.#at + this.#len - 4 * n
    for (let i = 0; i < n; i++) at += v.getUint32(lensAt + 4 * i, true)
    const end = at + v.getUint32(this.#at + 12, true)
    const text = UTF8
    const warnings: string[] = []
    while (at < end) {
      const len = v.getUint32(at, true)
      warnings.push(text.decode(new Uint8Array(mem.buffer, mem.base + at + 4, len)))
      at += 4 + len
    }
    return warnings
  }
}

function rejectedRecord(counts: Uint32Array | ArrayLike<number>, base: number): Record<RejectReason, number> {
  const out = {} as Record<RejectReason, number>
  for (let i = 0; i < REJECT_REASONS.length; i++) out[REJECT_REASONS[i]!] = counts[base + i]!
  return out
}

/**
 * The per-publisher conversion state (SPEC 3): per-rank event ids shared by ingest and the manual API,
 * the envelope sequence, learned KV groups, live blocks per rank for the reset rule, and counters.
 * One ingest() call converts one engine batch into ready-to-send payloads.
 */
export class Ingestor {
  readonly kvBlockSize: number
  readonly workerId: bigint
  readonly mode: IngestMode
  readonly wire: WireProfile
  #raw: RawIngestor
  /** The raw ingestor's handle for ingestPacked. */
  #handle: number

  /**
   * @param impl the raw implementation to use; defaults to the one loaded for the process
   *   (benchmarks and parity tests pass the other one explicitly).
   */
  constructor(options: IngestorOptions, impl: RawBinding = raw) {
    if (typeof options !== 'object' || options === null) throw new TypeError('Ingestor options must be an object')
    this.kvBlockSize = positiveInt('kvBlockSize', options.kvBlockSize)
    this.workerId = u64('workerId', options.workerId)
    const mode = options.mode ?? 'event-plane'
    if (mode !== 'event-plane' && mode !== 'jetstream')
      throw new RangeError(`mode must be 'event-plane' or 'jetstream', got ${describe(mode)}`)
    this.mode = mode
    const wire = options.wire ?? 'dynamo-1.0'
    if (wire !== 'dynamo-1.0' && wire !== 'dynamo-1.4')
      throw new RangeError(`wire must be 'dynamo-1.0' or 'dynamo-1.4', got ${describe(wire)}`)
    if (wire === 'dynamo-1.4' && mode === 'jetstream')
      throw new RangeError("wire: 'dynamo-1.4' cannot be used with mode: 'jetstream' (Dynamo 1.4 has no JetStream)")
    this.wire = wire
    const publisherIdRanks: number[] = []
    const publisherIdValues: bigint[] = []
    if (options.publisherIds !== undefined) {
      if (wire !== 'dynamo-1.4') throw new RangeError("publisherIds needs wire: 'dynamo-1.4' (dynamo-1.0 publishes under the worker id)")
      const ids = options.publisherIds
      if (typeof ids !== 'object' || ids === null)
        throw new TypeError('publisherIds must be a record or a Map from dp rank to publisher id')
      const entries = ids instanceof Map ? [...ids.entries()] : Object.entries(ids).map(([k, v]) => [Number(k), v] as const)
      for (const [rank, id] of entries) {
        const r = u32('publisherIds dp rank', rank)
        const v = u64(`publisherIds[${r}]`, id)
        if (v === 0n || v > MAX_PUBLISHER_ID) throw new RangeError(`publisherIds[${r}] must be in 1..2^53-1, got ${v}`)
        publisherIdRanks.push(r)
        publisherIdValues.push(v)
      }
    }
    const maxDpRanks = positiveInt('maxDpRanks', options.maxDpRanks ?? 64, 65536)
    let dpRanks: Uint32Array | null = null
    if (options.dpRanks !== undefined) {
      if (!Array.isArray(options.dpRanks) || options.dpRanks.length === 0)
        throw new TypeError('dpRanks must be a non-empty array of dp ranks')
      dpRanks = Uint32Array.from(options.dpRanks.map((r, i) => u32(`dpRanks[${i}]`, r)))
      if (new Set(dpRanks).size !== dpRanks.length) throw new RangeError('dpRanks must not repeat a rank')
    }
    let localIndexerBufferSize = 0
    const li = options.localIndexer
    if (li !== undefined && li !== false) {
      if (li !== true && (typeof li !== 'object' || li === null)) throw new TypeError('localIndexer must be a boolean or { bufferSize }')
      localIndexerBufferSize = positiveInt('localIndexer.bufferSize', (li === true ? undefined : li.bufferSize) ?? 1024, 1 << 24)
    }
    this.#raw = new impl.RawIngestor({
      kvBlockSize: this.kvBlockSize,
      workerId: this.workerId,
      jetstream: mode === 'jetstream',
      maxDpRanks,
      dpRanks,
      localIndexerBufferSize,
      wire14: wire === 'dynamo-1.4',
      publisherIdRanks,
      publisherIdValues,
      publisherSeed: randomBytes(8).readBigUInt64LE(0),
    })
    this.#handle = this.#raw.handle()
    const rawLocal = this.#raw.localIndexer()
    this.localIndexer = rawLocal ? new LocalIndexer({ bufferSize: localIndexerBufferSize }, impl, rawLocal) : null
  }

  /**
   * Frees the native memory (live-block sets, local indexer) now rather than when the garbage
   * collector gets to it; every later call, here and on `localIndexer`, throws `Ingestor is closed`
   * (`LocalIndexer is closed`). Idempotent. Also `using ingestor = new Ingestor(...)`.
   */
  close(): void {
    this.#raw.close()
    this.#raw = closedRaw('Ingestor')
    this.localIndexer?.close()
  }

  [Symbol.dispose](): void {
    this.close()
  }

  /** The local indexer fed by this ingestor (null unless enabled with the localIndexer option). */
  readonly localIndexer: LocalIndexer | null

  /** Converts one raw engine batch (the ZMQ payload frame). Never throws on bad bytes. One native call. */
  ingest(payload: Uint8Array, nowMs?: number): IngestResult {
    const bytes = bytesArg('payload', payload)
    const now = nowArg(nowMs)
    if (ARENA_BYTES - arenaUsed < ARENA_MIN_ROOM) {
      // the payloads of earlier results keep the old arena alive
      arena = Buffer.allocUnsafeSlow(ARENA_BYTES)
      arenaMemory = outputMemory(arena)
      arenaUsed = 0
    }
    const at = arenaUsed
    const r = this.#raw.ingestPacked(this.#handle, bytes, now, arena, at, true)
    if (typeof r !== 'number') return this.#unpack(r)
    arenaUsed = at + r
    return new PackedResult(arenaMemory, at, r)
  }

  /** Manual API: a store, as an engine without ZMQ events would report it (checks 5-7 of SPEC 3). */
  stored(args: StoredArgs, nowMs?: number): IngestResult {
    if (typeof args !== 'object' || args === null) throw new TypeError('stored() takes an object')
    const tokenIds = tokensArg('tokenIds', args.tokenIds)
    const blockHashes = hashesArg('blockHashes', args.blockHashes)
    const blockSize = args.blockSize === undefined ? this.kvBlockSize : u32('blockSize', args.blockSize)
    const parent = args.parentHash === undefined || args.parentHash === null ? null : u64('parentHash', args.parentHash)
    const lora = loraArg(args.loraName)
    const mm = mmInfosArg('blockMmInfos', args.blockMmInfos)
    const salt = optStringArg('cacheSalt', args.cacheSalt)
    const eagle = optBoolArg('eagle', args.eagle)
    if ((salt || eagle) && this.wire !== 'dynamo-1.4')
      throw new RangeError(`${salt ? 'cacheSalt' : 'eagle'} needs wire: 'dynamo-1.4' (a Dynamo 1.0 router hashes without it)`)
    const rank = this.#rank(args.dpRank)
    return this.#unpack(this.#raw.stored(tokenIds, blockHashes, blockSize, parent, lora, mm, rank, nowArg(nowMs), salt, eagle))
  }

  /** Manual API: blocks evicted from GPU memory. */
  removed(blockHashes: BigUint64Array | bigint[], dpRank?: number, nowMs?: number): IngestResult {
    const hashes = hashesArg('blockHashes', blockHashes)
    return this.#unpack(this.#raw.removed(hashes, this.#rank(dpRank), nowArg(nowMs)))
  }

  /** Manual API: the engine dropped every block of this rank (emitted under the reset rule of SPEC 3). */
  cleared(dpRank?: number, nowMs?: number): IngestResult {
    return this.#unpack(this.#raw.cleared(this.#rank(dpRank), nowArg(nowMs)))
  }

  /** The id the next emitted event of this rank will get. A peek: consumes nothing. */
  nextEventId(dpRank = 0): bigint {
    return this.#raw.nextEventId(u32('dpRank', dpRank))
  }

  /**
   * The publisher id of the rank's envelopes. dynamo-1.4: one per dp rank, 1..2^53-1, random per
   * Ingestor (unless fixed by `publisherIds`) and stable for its life; a discovery EventSource record
   * binds it to `(workerId, dpRank)`. dynamo-1.0: the worker id, for every rank.
   */
  publisherId(dpRank = 0): bigint {
    return this.#raw.publisherId(u32('dpRank', dpRank))
  }

  counters(): Record<CounterName, bigint> {
    const values = this.#raw.counters()
    const out = {} as Record<CounterName, bigint>
    for (let i = 0; i < COUNTER_NAMES.length; i++) out[COUNTER_NAMES[i]!] = values[i]!
    return out
  }

  /** Whether events of this dp rank are accepted (within maxDpRanks, or one of dpRanks). */
  allowsRank(dpRank: number): boolean {
    return this.#raw.rankAllowed(u32('dpRank', dpRank))
  }

  #rank(dpRank: unknown): number {
    const rank = dpRank === undefined ? 0 : u32('dpRank', dpRank)
    if (!this.#raw.rankAllowed(rank)) throw new RangeError(`dpRank ${rank} is not one of this publisher's allowed dp ranks`)
    return rank
  }

  /** A result over a packed output of its own (the manual API, or an ingest output too big for the arena). */
  #unpack(out: Buffer): IngestResult {
    return new PackedResult(outputMemory(out), 0, out.length)
  }
}

// ---------------------------------------------------------------------------------------------------
// Indexer (SPEC 6)

export interface WorkerScore {
  workerId: bigint
  dpRank: number
  score: number
}
export interface WorkerTreeSize {
  workerId: bigint
  dpRank: number
  size: number
}
export interface OverlapScores {
  /** Matched prefix length in blocks per worker, ascending (workerId, dpRank); zero scores omitted. */
  scores: WorkerScore[]
  /** Number of block hashes each scored worker holds, same order. */
  treeSizes: WorkerTreeSize[]
}

/**
 * findMatches' answers are written into one scratch shared by all indexes (a query is synchronous; the
 * same memory every time, so it stays in cache) and handed out as MatchResults over its words, so a
 * query costs one native call and one small object; `scores` and `treeSizes` are built when first read.
 * The result of the previous query is released before the next one writes: one that has built a list
 * keeps what the other list needs (a number per worker) and lets the scratch go; one never read takes
 * a copy of its words (copy on overwrite). A result read late thus still shows its own query's answer.
 */
let findScratch = Buffer.allocUnsafeSlow(4 + MATCH_RECORD_BYTES * 256)
let findWords = new Uint32Array(findScratch.buffer, findScratch.byteOffset, findScratch.byteLength >>> 2)
/** The last result handed out, while it may still read the scratch. */
let findPending: MatchResult | null = null

/** Releases the previous result's hold on the scratch (before a query writes into it). */
function releaseFindScratch(): void {
  const p = findPending
  if (p !== null) {
    findPending = null
    p.release()
  }
}

/** Grows the scratch to at least `need` bytes (a query answered with minus the bytes it needs). */
function growFindScratch(need: number): void {
  findScratch = Buffer.allocUnsafeSlow(Math.max(need, 2 * findScratch.length))
  findWords = new Uint32Array(findScratch.buffer, findScratch.byteOffset, findScratch.byteLength >>> 2)
}

/** The scratch's words as the platform reads them: little-endian like the records, or swapped. */
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1
const le32 = (x: number): number =>
  LITTLE_ENDIAN ? x : (((x & 0xff) << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24)) >>> 0

/**
 * The answer of one findMatches call (OverlapScores): `scores` and `treeSizes` are getters that build
 * their list on first read, from this query's answer, and return the same array after that (assigning
 * one replaces it). JSON.stringify and util.inspect show both lists; an object spread, Object.keys or a
 * deep-equality check does not see them (compare `{ scores: r.scores, treeSizes: r.treeSizes }`).
 */
class MatchResult implements OverlapScores {
  /** The answer's words (u32 N, then per worker: id lo, id hi, dp rank, score, tree size lo, hi): the
   * shared scratch while this is the last result, else its own copy; null once a list was built. */
  #w: Uint32Array | null
  #scores: WorkerScore[] | undefined
  #treeSizes: WorkerTreeSize[] | undefined
  /** Once one list is built, what the other needs per worker: the scores or the tree sizes. */
  #other: number[] | undefined

  constructor(w: Uint32Array) {
    this.#w = w
  }

  /** The scratch is about to be overwritten: keep a copy of the words if no list was built yet. */
  release(): void {
    const w = this.#w
    if (w !== null) this.#w = w.slice(0, 1 + 6 * le32(w[0]!))
  }

  get scores(): WorkerScore[] {
    let s = this.#scores
    if (s === undefined) {
      const t = this.#treeSizes
      if (t !== undefined) {
        // the ids from the tree sizes, the scores kept when they were built
        const sc = this.#other!
        s = new Array(t.length)
        for (let i = 0; i < t.length; i++) {
          const x = t[i]!
          s[i] = { workerId: x.workerId, dpRank: x.dpRank, score: sc[i]! }
        }
      } else {
        const w = this.#w!
        const n = le32(w[0]!)
        s = new Array(n)
        const sizes: number[] = new Array(n)
        for (let i = 0, at = 1; i < n; i++, at += 6) {
          const workerId = workerIdOf(le32(w[at]!), le32(w[at + 1]!))
          s[i] = { workerId, dpRank: le32(w[at + 2]!), score: le32(w[at + 3]!) }
          // a tree size is a count of entries: far below 2^53
          sizes[i] = le32(w[at + 4]!) + le32(w[at + 5]!) * 4294967296
        }
        this.#other = sizes
        this.#w = null
      }
      this.#scores = s
    }
    return s
  }

  set scores(v: WorkerScore[]) {
    void this.treeSizes // built first: it must not need the scores
    this.#scores = v
  }

  get treeSizes(): WorkerTreeSize[] {
    let t = this.#treeSizes
    if (t === undefined) {
      const s = this.#scores
      if (s !== undefined) {
        const sizes = this.#other!
        t = new Array(s.length)
        for (let i = 0; i < s.length; i++) {
          const x = s[i]!
          t[i] = { workerId: x.workerId, dpRank: x.dpRank, size: sizes[i]! }
        }
      } else {
        const w = this.#w!
        const n = le32(w[0]!)
        t = new Array(n)
        const scores: number[] = new Array(n)
        for (let i = 0, at = 1; i < n; i++, at += 6) {
          const workerId = workerIdOf(le32(w[at]!), le32(w[at + 1]!))
          t[i] = { workerId, dpRank: le32(w[at + 2]!), size: le32(w[at + 4]!) + le32(w[at + 5]!) * 4294967296 }
          scores[i] = le32(w[at + 3]!)
        }
        this.#other = scores
        this.#w = null
      }
      this.#treeSizes = t
    }
    return t
  }

  set treeSizes(v: WorkerTreeSize[]) {
    void this.scores // built first: it must not need the tree sizes
    this.#treeSizes = v
  }

  /** The plain form, `{ scores, treeSizes }` (what JSON.stringify writes). */
  toJSON(): OverlapScores {
    return { scores: this.scores, treeSizes: this.treeSizes }
  }

  [Symbol.for('nodejs.util.inspect.custom')](): OverlapScores {
    return this.toJSON()
  }
}

/** Each binding's findMatchesPackedFunction(), asked once (null where it has none). */
const packedFunctions = new WeakMap<RawBinding, FindMatchesPacked | null>()

function packedFunction(impl: RawBinding): FindMatchesPacked | null {
  let f = packedFunctions.get(impl)
  if (f === undefined) {
    f = typeof impl.findMatchesPackedFunction === 'function' ? impl.findMatchesPackedFunction() : null
    packedFunctions.set(impl, f)
  }
  return f
}

export type RangeResult = RawRangeResult

function formatCode(v: unknown): number {
  const i = (NAMES.encodedFormats as readonly unknown[]).indexOf(v)
  if (i < 0) throw new RangeError(`format must be 'envelope', 'msgpack' or 'json', got ${describe(v)}`)
  return i
}

/** Query output scratch shared by all indexes (a query is synchronous; results are read out at once). */
let matchScratch = Buffer.allocUnsafeSlow(4 + MATCH_RECORD_BYTES * 256)
// DataView reads are several times faster than Buffer's readUInt32LE on Node 20
let matchView = new DataView(matchScratch.buffer, matchScratch.byteOffset, matchScratch.byteLength)

/** Grows the scratch to at least `need` bytes (a query answered with minus the bytes it needs). */
function growMatchScratch(need: number): void {
  matchScratch = Buffer.allocUnsafeSlow(Math.max(need, 2 * matchScratch.length))
  matchView = new DataView(matchScratch.buffer, matchScratch.byteOffset, matchScratch.byteLength)
}

/**
 * Worker ids as bigints, cached by their two 32-bit halves in a direct-mapped table: results list the
 * same workers query after query, and creating a BigInt costs more than the rest of a record.
 */
const ID_CACHE = 1024
const cacheLo = new Uint32Array(ID_CACHE)
const cacheHi = new Uint32Array(ID_CACHE)
const cacheId: (bigint | undefined)[] = new Array<bigint | undefined>(ID_CACHE).fill(undefined)

export function workerIdOf(lo: number, hi: number): bigint {
  const at = (Math.imul(lo ^ hi, 0x9e3779b1) >>> 22) & (ID_CACHE - 1)
  const id = cacheId[at]
  if (id !== undefined && cacheLo[at] === lo && cacheHi[at] === hi) return id
  const fresh = (BigInt(hi) << 32n) | BigInt(lo)
  cacheLo[at] = lo
  cacheHi[at] = hi
  cacheId[at] = fresh
  return fresh
}

/** The last `outWorkers` of findMatchesInto and its 32-bit view (callers reuse one array). */
let intoWorkers: BigUint64Array | null = null
let intoWorkers32: Uint32Array = new Uint32Array(0)
/** The query scratch as 32-bit words, where the platform is little-endian as the scratch's layout. */
let intoScratch: Buffer | null = null
let intoScratch32: Uint32Array = new Uint32Array(0)
/** Where the low half of a u64 sits in a typed array's memory (the platform's byte order). */
const LO_HALF = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1 ? 0 : 1

/** findMatchesInto's copy: worker ids move as their two 32-bit halves (no BigInt is made). */
function readMatchesInto(workers: BigUint64Array, ranks: Uint32Array, scores: Uint32Array): number {
  const v = matchView
  const n = v.getUint32(0, true)
  if (workers.length < n || ranks.length < n || scores.length < n) return -n
  if (workers !== intoWorkers || intoWorkers32.buffer !== workers.buffer) {
    intoWorkers = workers
    intoWorkers32 = new Uint32Array(workers.buffer, workers.byteOffset, 2 * workers.length)
  }
  const w32 = intoWorkers32
  if (LO_HALF === 0 && matchScratch.byteOffset % 4 === 0) {
    if (intoScratch !== matchScratch) {
      intoScratch = matchScratch
      intoScratch32 = new Uint32Array(matchScratch.buffer, matchScratch.byteOffset, matchScratch.byteLength >>> 2)
    }
    // records of 6 words after the count: worker lo, hi, dp rank, score, tree size lo, hi
    const m = intoScratch32
    for (let i = 0, at = 1; i < n; i++, at += 6) {
      w32[2 * i] = m[at]!
      w32[2 * i + 1] = m[at + 1]!
      ranks[i] = m[at + 2]!
      scores[i] = m[at + 3]!
    }
    return n
  }
  for (let i = 0, at = 4; i < n; i++, at += MATCH_RECORD_BYTES) {
    w32[2 * i + LO_HALF] = v.getUint32(at, true)
    w32[2 * i + 1 - LO_HALF] = v.getUint32(at + 4, true)
    ranks[i] = v.getUint32(at + 8, true)
    scores[i] = v.getUint32(at + 12, true)
  }
  return n
}

/**
 * RadixIndex.applyEvent checks the event while it flattens it into these arrays (shared by all
 * indexes: a call is synchronous), so the core reads the hashes without a conversion per block.
 */
const applyHead = new BigUint64Array(3)
let applyHashes = new BigUint64Array(1024)
let applyTokens = new BigUint64Array(1024)

function applyFlat(index: RawRadixIndex, ev: RouterEventValue): number {
  if (typeof ev !== 'object' || ev === null) throw new TypeError(`event must be an object, got ${describe(ev)}`)
  const inner = ev.event
  if (typeof inner !== 'object' || inner === null) throw new TypeError('event.event must be an object')
  const head = applyHead
  head[0] = u64('workerId', ev.workerId)
  head[1] = u64('event.eventId', inner.eventId)
  const rank = u32('event.dpRank', inner.dpRank)
  const data = inner.data as ConvertedEvent
  switch (data?.type) {
    case 'stored': {
      const blocks = data.blocks
      if (!Array.isArray(blocks)) throw new TypeError('event.data.blocks must be an array')
      const hasParent = data.parentHash !== null && data.parentHash !== undefined
      head[2] = hasParent ? u64('event.data.parentHash', data.parentHash) : 0n
      const n = blocks.length
      if (applyHashes.length < n) {
        applyHashes = new BigUint64Array(2 * n)
        applyTokens = new BigUint64Array(2 * n)
      }
      const hashes = applyHashes
      const tokens = applyTokens
      let mm: (BlockExtraInfo | null)[] | null = null
      for (let i = 0; i < n; i++) {
        const b = blocks[i]!
        hashes[i] = u64(`blocks[${i}].blockHash`, b?.blockHash)
        tokens[i] = u64(`blocks[${i}].tokensHash`, b?.tokensHash)
        if (b.mmExtraInfo != null) {
          mm ??= new Array<BlockExtraInfo | null>(n).fill(null)
          mm[i] = mmInfosArg(`blocks[${i}].mmExtraInfo`, [b.mmExtraInfo])![0] ?? null
        }
      }
      return index.applyStored(head, rank, hasParent, hashes, tokens, n, mm)
    }
    case 'removed': {
      const hs = data.blockHashes
      if (hs instanceof BigUint64Array) return index.applyRemoved(head, rank, hs, hs.length)
      if (!Array.isArray(hs))
        throw new TypeError(`event.data.blockHashes must be a BigUint64Array or an array of bigints, got ${describe(hs)}`)
      const n = hs.length
      if (applyHashes.length < n) {
        applyHashes = new BigUint64Array(2 * n)
        applyTokens = new BigUint64Array(2 * n)
      }
      const hashes = applyHashes
      for (let i = 0; i < n; i++) hashes[i] = u64(`event.data.blockHashes[${i}]`, hs[i])
      return index.applyRemoved(head, rank, hashes, n)
    }
    case 'cleared':
      return index.applyCleared(head, rank)
    default:
      throw new TypeError(`event.data.type must be 'stored', 'removed' or 'cleared', got ${describe((data as { type?: unknown })?.type)}`)
  }
}

/**
 * A radix tree of the blocks each worker `(workerId, dpRank)` holds, keyed by the tokens hashes of the
 * path from the root: it answers "which worker already holds the longest prefix of these blocks". Apply
 * router events (as values, or encoded as they travel), then ask findMatches.
 */
export class RadixIndex {
  protected raw: RawRadixIndex
  /** Whether the raw object belongs to another (an Ingestor's local indexer): close() only detaches. */
  readonly #borrowed: boolean
  /** findMatches written into the scratch, and the raw index's handle for it (null and -1 where the raw
   * index has no such path, a native local indexer, and once closed). */
  #packed: FindMatchesPacked | null = null
  #handle = -1

  /** @param impl the raw implementation (defaults to the one loaded for the process). */
  constructor(impl: RawBinding = raw, inner?: RawRadixIndex) {
    const r = inner ?? new impl.RawRadixIndex()
    this.raw = r
    this.#borrowed = inner !== undefined
    if (typeof r.handle === 'function') {
      const own = r.findMatchesPacked
      const packed = typeof own === 'function' ? own.bind(r) : packedFunction(impl)
      if (packed !== null) {
        this.#packed = packed
        this.#handle = r.handle()
      }
    }
  }

  /**
   * Frees the index's memory now rather than when the garbage collector gets to it; every later
   * call throws `RadixIndex is closed` (`LocalIndexer is closed`). An Ingestor's local indexer is
   * only detached: its memory goes with the Ingestor's close(). Idempotent. Also `using`.
   */
  close(): void {
    this.#packed = null
    this.#handle = -1
    if (!this.#borrowed) this.raw.close()
    this.raw = closedRaw(this instanceof LocalIndexer ? 'LocalIndexer' : 'RadixIndex')
  }

  [Symbol.dispose](): void {
    this.close()
  }

  /**
   * Applies one router event; event-level failures are returned (and counted), never thrown. A Dynamo
   * 1.4+ event of another storage tier than `device` (or of the `cache_owner` domain) is `ignored`: the
   * index holds the workers' GPU blocks. A `cleared` with a `residencyDomain` clears only its dp rank.
   */
  applyEvent(ev: RouterEventValue): ApplyOutcome {
    if (typeof ev === 'object' && ev !== null && metaArg(ev)) return APPLY_OUTCOMES[this.raw.applyEvent(eventArg(ev))]!
    return APPLY_OUTCOMES[applyFlat(this.raw, ev)]!
  }

  /**
   * Applies encoded events: an event-plane envelope, msgpack or JSON, holding one RouterEvent (Dynamo
   * 1.0) or an array of them (Dynamo 1.4+; each applied as applyEvent does). The outcome of an array is
   * the first that is not `applied` or `ignored`, else `applied` if any event was, else `ignored` (an
   * empty array is refused). Throws a RouterEventError on bytes that are not that (nothing is applied then).
   */
  applyEncoded(payload: Uint8Array, format: 'envelope' | 'msgpack' | 'json'): ApplyOutcome {
    const b = bytesArg('payload', payload)
    const f = formatCode(format)
    try {
      return APPLY_OUTCOMES[this.raw.applyEncoded(b, f)]!
    } catch (e) {
      throw routerEventError(e)
    }
  }

  /**
   * The workers holding the longest prefixes of `tokensHashes` (SPEC 6). One native call writes the
   * answer into a shared scratch; the result's `scores` and `treeSizes` are built when first read (see
   * MatchResult), and always show this query's answer, whatever was queried or applied since.
   */
  findMatches(tokensHashes: BigUint64Array | bigint[], opts?: { earlyExit?: boolean }): OverlapScores {
    const hashes = hashesArg('tokensHashes', tokensHashes)
    const earlyExit = opts?.earlyExit === true
    releaseFindScratch()
    const len = this.#find(hashes, earlyExit)
    if (len < 0) {
      growFindScratch(-len)
      this.#find(hashes, earlyExit)
    }
    const r = new MatchResult(findWords)
    findPending = r
    return r
  }

  /** The raw findMatches into the scratch: the bytes written, or minus the bytes needed. */
  #find(hashes: BigUint64Array, earlyExit: boolean): number {
    const packed = this.#packed
    if (packed !== null) return packed(this.#handle, hashes, earlyExit, findScratch, 0)
    return this.raw.findMatches(hashes, earlyExit, findScratch)
  }

  /**
   * findMatches into arrays the caller owns and reuses: no object per call. Entry i of `outWorkers`,
   * `outRanks` and `outScores` is the i-th scored worker, in the order of findMatches' `scores`. Returns
   * how many were written, or minus the length the arrays need when one is shorter (nothing is written
   * then). Tree sizes are left out.
   */
  findMatchesInto(
    tokensHashes: BigUint64Array | bigint[],
    outWorkers: BigUint64Array,
    outRanks: Uint32Array,
    outScores: Uint32Array,
    opts?: { earlyExit?: boolean },
  ): number {
    const hashes = hashesArg('tokensHashes', tokensHashes)
    if (!(outWorkers instanceof BigUint64Array)) throw new TypeError(`outWorkers must be a BigUint64Array, got ${describe(outWorkers)}`)
    if (!(outRanks instanceof Uint32Array)) throw new TypeError(`outRanks must be a Uint32Array, got ${describe(outRanks)}`)
    if (!(outScores instanceof Uint32Array)) throw new TypeError(`outScores must be a Uint32Array, got ${describe(outScores)}`)
    const earlyExit = opts?.earlyExit === true
    const len = this.raw.findMatches(hashes, earlyExit, matchScratch)
    if (len < 0) {
      growMatchScratch(-len)
      this.raw.findMatches(hashes, earlyExit, matchScratch)
    }
    return readMatchesInto(outWorkers, outRanks, outScores)
  }

  /** findMatches on the block hashes of `tokens` (computeBlockHashes with the same options). */
  findMatchesForTokens(
    tokens: Uint32Array | number[],
    kvBlockSize: number,
    opts: BlockHashOptions & { earlyExit?: boolean } = {},
  ): OverlapScores {
    const t = tokensArg('tokens', tokens)
    const bs = positiveInt('kvBlockSize', kvBlockSize)
    const o = hashOptionsArg(opts)
    const earlyExit = opts.earlyExit === true
    releaseFindScratch()
    const len = this.raw.findMatchesForTokens(t, bs, o.lora, o.mm, earlyExit, findScratch, o.salt, o.eagle)
    if (len < 0) {
      growFindScratch(-len)
      this.raw.findMatchesForTokens(t, bs, o.lora, o.mm, earlyExit, findScratch, o.salt, o.eagle)
    }
    const r = new MatchResult(findWords)
    findPending = r
    return r
  }

  /** Drops every block of every dp rank of the worker and forgets it. */
  removeWorker(workerId: bigint): void {
    this.raw.removeWorker(u64('workerId', workerId))
  }

  removeWorkerDpRank(workerId: bigint, dpRank: number): void {
    this.raw.removeWorkerDpRank(u64('workerId', workerId), u32('dpRank', dpRank))
  }

  /** The index as stored events of one block each, per worker, parents before children. */
  dump(): RouterEventValue[] {
    return this.raw.dump()
  }

  workers(): bigint[] {
    return Array.from(this.raw.workers())
  }

  /** Total (worker, dp rank, block hash) entries. */
  size(): number {
    return this.raw.size()
  }

  counters(): Record<IndexCounterName, bigint> {
    const values = this.raw.counters()
    const out = {} as Record<IndexCounterName, bigint>
    for (let i = 0; i < INDEX_COUNTER_NAMES.length; i++) out[INDEX_COUNTER_NAMES[i]!] = values[i]!
    return out
  }
}

/**
 * The worker-side index: a RadixIndex plus a ring buffer per dp rank of the last `bufferSize` (default
 * 1024) events applied, so a router that missed events can ask for a range (SPEC 6 and 7).
 */
export class LocalIndexer extends RadixIndex {
  declare protected raw: RawLocalIndexer

  constructor(opts: { bufferSize?: number } = {}, impl: RawBinding = raw, inner?: RawLocalIndexer) {
    const size = positiveInt('bufferSize', opts.bufferSize ?? 1024, 1 << 24)
    super(impl, inner ?? new impl.RawLocalIndexer(size))
  }

  eventsInRange(dpRank: number, start?: bigint | null, end?: bigint | null): RangeResult {
    return this.raw.eventsInRange(
      u32('dpRank', dpRank),
      start === undefined || start === null ? null : u64('start', start),
      end === undefined || end === null ? null : u64('end', end),
    )
  }

  /**
   * eventsInRange's answer as the recovery response body (SPEC 7): Dynamo's WorkerKvQueryResponse JSON
   * with exact u64, written by the core in one call (no event object is built).
   */
  eventsInRangeJson(dpRank: number, start?: bigint | null, end?: bigint | null): Buffer {
    return this.raw.eventsInRangeJson(
      u32('dpRank', dpRank),
      start === undefined || start === null ? null : u64('start', start),
      end === undefined || end === null ? null : u64('end', end),
    )
  }

  /**
   * eventsInRangeJson's body in chunks, without building it: a dump is written from the index as the chunks are
   * asked for (memory: about `maxBytes` plus the walk's position), any other answer (bounded by the ring buffer) at
   * once. The concatenated chunks equal `eventsInRangeJson(dpRank, start, end)` byte for byte, as of this call.
   * Every chunk has exactly `maxBytes` bytes except the last (cut anywhere, even inside an event).
   *
   * The answer is fixed when this is called; once the index changes (any event applied, worker removed), the next
   * chunk of an unfinished dump throws {@link IndexChangedError}. Read the chunks in one synchronous run for a
   * consistent dump, or start over on that error. Leaving a `for...of` early, `return()` and `close()` free the
   * cursor; at most 1024 may be open per local indexer.
   */
  rangeReplyChunks(dpRank: number, start: bigint | null | undefined, end: bigint | null | undefined, maxBytes: number): ReplyChunks {
    const max = positiveInt('maxBytes', maxBytes, 0xffffffff)
    const id = this.raw.rangeReplyOpen(
      u32('dpRank', dpRank),
      start === undefined || start === null ? null : u64('start', start),
      end === undefined || end === null ? null : u64('end', end),
    )
    return new ReplyChunks(this, id, max)
  }

  /**
   * The `{"TreeDump":[...]}` body of the dump of one dp rank (or of every rank: `dpRank` null or absent) in chunks,
   * as {@link rangeReplyChunks}: byte for byte `eventsInRangeJson(dpRank)` of a known rank.
   */
  dumpChunks(maxBytes: number, dpRank?: number | null): ReplyChunks {
    const max = positiveInt('maxBytes', maxBytes, 0xffffffff)
    const id = this.raw.dumpReplyOpen(dpRank === undefined || dpRank === null ? null : u32('dpRank', dpRank))
    return new ReplyChunks(this, id, max)
  }

  /** @internal */
  replyNext(id: number, max: number): Buffer | null {
    return this.raw.replyNext(id, max)
  }

  /** @internal */
  replyClose(id: number): void {
    this.raw.replyClose(id)
  }
}

/** The index changed while a dump was being read in chunks ({@link LocalIndexer.rangeReplyChunks}). */
export class IndexChangedError extends Error {
  override readonly name = 'IndexChangedError'
}

const STALE_MESSAGE = 'LocalIndexer: the index changed since the dump was opened'

/** A recovery response body read chunk by chunk ({@link LocalIndexer.rangeReplyChunks}, {@link LocalIndexer.dumpChunks}). */
export class ReplyChunks implements IterableIterator<Buffer> {
  readonly #local: LocalIndexer
  readonly #id: number
  readonly #max: number
  #done = false

  /** @internal */
  constructor(local: LocalIndexer, id: number, maxBytes: number) {
    this.#local = local
    this.#id = id
    this.#max = maxBytes
  }

  /** The next chunk; throws {@link IndexChangedError} when the index changed under an unfinished dump (the cursor is then closed). */
  next(): IteratorResult<Buffer, undefined> {
    if (this.#done) return { done: true, value: undefined }
    let chunk: Buffer | null
    try {
      chunk = this.#local.replyNext(this.#id, this.#max)
    } catch (e) {
      this.close()
      if ((e as Error).message === STALE_MESSAGE) throw new IndexChangedError(STALE_MESSAGE)
      throw e
    }
    if (chunk === null) {
      this.#done = true
      return { done: true, value: undefined }
    }
    return { done: false, value: chunk }
  }

  return(): IteratorResult<Buffer, undefined> {
    this.close()
    return { done: true, value: undefined }
  }

  [Symbol.iterator](): this {
    return this
  }

  /** Frees the cursor. Idempotent; also after the local indexer was closed. */
  close(): void {
    if (this.#done) return
    this.#done = true
    try {
      this.#local.replyClose(this.#id)
    } catch {
      // the local indexer is closed: its cursors went with it
    }
  }
}
