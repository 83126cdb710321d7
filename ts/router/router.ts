// KvRouter (SPEC 10): follows the workers' KV events into one RadixIndex and chooses a worker per
// request. Sources: the NATS event plane (with gap recovery from the workers' recovery endpoints,
// SPEC 7), the engines' own ZeroMQ streams (no Dynamo at all), a JetStream stream (durable consumer),
// Dynamo 1.4+ publishers, or envelopes the application hands over itself (manual).
// Events are applied by the core from their bytes (applyEncoded): JavaScript only peeks at the header
// fields it needs to order them.
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, type ConsumerMessages } from '@nats-io/jetstream'
import { createInbox, headers as natsHeaders, type Msg, type Subscription } from '@nats-io/transport-node'
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'
import {
  type ApplyOutcome,
  APPLY_OUTCOMES,
  type BlockExtraInfo,
  computeBlockHashes,
  decodeRouterEvents,
  Ingestor,
  type IngestResult,
  jetstreamStreamName,
  kvEventsSubject,
  kvMetricsSubject,
  type OverlapScores,
  RadixIndex,
  RouterEventError,
} from '../core/api.js'
import { checkName, describe, hashesArg, intInRange, positiveInt, tokensArg, u64 } from '../util/args.js'
import { type Logger, loggerOption, RateLimitedLog } from '../util/log.js'
import { openNats, type NatsConnection, type NatsOption } from '../transport/nats.js'
import { ensureStream } from '../transport/sinks/jetstream.js'
import { ZmqSource } from '../transport/sources/zmq.js'
import { type TierMatch, TierBlocks } from './tiers.js'
import type { DiscoveryOptions } from '../transport/discovery/config.js'
import { Dynamo14Follower, type Dynamo14Stats } from './dynamo14-source.js'
import { GATE_PASS, type RawRadixIndex } from '../core/binding.js'
import { raw as core } from '../core/native.js'
import {
  type DefaultRule,
  type DefaultSelectorOptions,
  defaultRuleOf,
  defaultSelector,
  type RouteCandidate,
  sampleByCost,
  type WorkerSelector,
} from './selector.js'
import {
  CHUNK_HEADER,
  CHUNKS_HEADER,
  decodeActiveLoadEnvelope,
  type EventKind,
  encodeRecoveryRequest,
  eventIdOfJson,
  parseRangeResponse,
  peekEnvelope,
  responseArray,
  ArraySplitter,
  peeked,
  recoverySubject,
} from './wire.js'

import type { Env } from '../util/env.js'

/** Dynamo 1.0's event plane: core NATS envelopes on `namespace.{ns}.component.{c}.kv-events`. */
export interface EventPlaneSource {
  kind: 'event-plane'
  namespace: string
  component: string
}

/** One engine whose ZeroMQ KV-event stream the router reads itself. */
export interface RouterEngine {
  /** The id this engine's blocks are indexed under (u64). */
  workerId: bigint
  /** The engine's ZMQ PUB endpoint (with dpRanks: rank r at port + r). */
  endpoint: string
  /** The engine's replay ROUTER endpoint (with dpRanks: rank r at port + r); without it, gaps are losses. */
  replayEndpoint?: string
  /** vLLM data parallelism: ranks 0..dpRanks-1 (default 1). */
  dpRanks?: number
  /**
   * Instead of dpRanks: the dp ranks this one endpoint carries (each batch names its rank; a batch
   * without one is rank 0), for an engine rank registered on its own as Dynamo's standalone indexer does.
   */
  ranks?: number[]
  /** Topic prefix filter (default '' — everything). */
  topic?: string
}

/** No Dynamo: the engines' ZeroMQ streams, read by the router (ZmqSource, Ingestor, replay). */
export interface EnginesSource {
  kind: 'engines'
  engines: RouterEngine[]
}

/** A JetStream stream of RouterEvent JSON (the publishers' `jetstream` mode), read in order. */
export interface JetStreamSource {
  kind: 'jetstream'
  namespace: string
  component: string
  /** Durable consumer name: a router restarted with the same name resumes where it acked. Default: an ordered consumer from the start. */
  durable?: string
}

/**
 * Dynamo 1.4+ publishers (`wire: 'dynamo-1.4'`) of one endpoint, found through their discovery records
 * (etcd or the file store): batches from the endpoint's NATS subject (when the router has a NATS
 * connection: the `nats` option or NATS_SERVER) and from the ZeroMQ channels the records advertise.
 */
export interface Dynamo14Source {
  kind: 'dynamo-1.4'
  namespace: string
  component: string
  /** The serving endpoint (Dynamo's default 'generate'). */
  endpoint: string
  /** Where the records are (default: Dynamo's variables, DYN_DISCOVERY_BACKEND and the backend's own). */
  discovery?: DiscoveryOptions
  /** How often the records are listed, in ms (default 500). */
  pollMs?: number
}

/**
 * The application carries the event-plane envelopes itself and hands each one to
 * `router.applyEnvelope(bytes)`: ordered per (worker, rank) as the event-plane source orders them, with no
 * recovery (a gap is counted and the loss accepted, as for a worker without a recovery endpoint).
 */
export interface ManualSource {
  kind: 'manual'
}

export type RouterSource = EventPlaneSource | EnginesSource | JetStreamSource | Dynamo14Source | ManualSource

export interface KvRouterOptions {
  /** Tokens per KV block; must match the workers'. */
  kvBlockSize: number
  source: RouterSource
  /** How to reach NATS (default: the environment of SPEC 5), or a connection the caller owns. Not used by the engines and manual sources unless metricsNamespace is set. */
  nats?: NatsOption
  logger?: Logger
  /** The default selector's options, or a selector function. */
  selector?: DefaultSelectorOptions | WorkerSelector
  /** Where workers' ActiveLoad is read (`namespace.{ns}.kv_metrics`); default the source's namespace (none for engines and manual). */
  metricsNamespace?: string
  /** Recovery queries (event plane): attempts (default 8), first backoff in ms, doubling (default 200), idle timeout per attempt in ms (default 5000). */
  recovery?: { attempts?: number; backoffMs?: number; timeoutMs?: number }
  /** A worker that sends nothing (events, loads) for this long is removed (ms; default 600,000; 0 never). Not for the engines source. */
  workerExpiryMs?: number
  /** Register the router's Prometheus metrics on this registry. */
  registry?: Registry
  /** Metric name prefix (default `dynamo_kv_router_`). */
  metricsPrefix?: string
  /**
   * Engines source: also keep the blocks engines report on lower storage tiers (CPU, disk, external
   * media), read with Dynamo 1.6.1's engine conversion (`wire: 'dynamo-1.4'`, which also hashes the
   * engines' cache salts), for tierMatches(). Default false (non-GPU media are dropped).
   */
  tiers?: boolean
}

/**
 * How one recovery ended: `events` (a range applied), `tree_dump` (the rank rebuilt from a dump),
 * `unavailable` (nothing serves the worker's recovery subject, e.g. a worker without the endpoint: not
 * retried, and the worker's gaps are accepted without a query for a minute), `failed` (no usable answer
 * after every attempt, or a definite refusal).
 */
export type RecoveryOutcome = 'events' | 'tree_dump' | 'unavailable' | 'failed'

export interface KvRouterStats {
  /** Events applied, by type and by the index's outcome. */
  events: Record<EventKind, Record<ApplyOutcome, number>>
  /** Event bytes that were not a router event (counted, logged, skipped). */
  invalid: number
  /** Events older than the rank's cursor (already covered by a recovery), or JetStream messages delivered again, skipped. */
  stale: number
  /** Event-id gaps found. */
  gaps: number
  /** Recoveries by how they ended (a first sight's dump is one). */
  recoveries: Record<RecoveryOutcome, number>
  /** Recovery attempts that failed and were retried (timeouts, truncated replies, no responders). */
  recoveryRetries: number
  /** Publisher restarts detected (event ids starting again). */
  restarts: number
  /** ActiveLoad messages applied. */
  loads: number
  /** Workers removed for silence. */
  expired: number
  /** Block hashes in the index. */
  indexSize: number
  /** Worker ranks known (from events, loads or configured engines). */
  workerRanks: number
  /** Requests routed with a requestId and not yet marked finished. */
  activeRequests: number
}

/** The choice for one request, with every candidate as the selector saw it. */
export interface RouteDecision {
  workerId: bigint
  dpRank: number
  /** The chosen rank's overlap, in blocks. */
  overlapBlocks: number
  /**
   * Every known rank, ascending (workerId, dpRank), as when the choice was made. With the default
   * selector the array is built when this is first read (the choice itself needs no candidate objects).
   */
  candidates: RouteCandidate[]
}

export interface FindBestWorkerOptions {
  loraName?: string | null
  cacheSalt?: string | null
  blockMmInfos?: (BlockExtraInfo | null)[] | null
  /** Count the request against the chosen rank until markFinished(requestId). */
  requestId?: string
}

interface RankState {
  workerId: bigint
  dpRank: number
  /** Newest event id applied (null: none yet). */
  last: bigint | null
  recovering: boolean
  held: HeldEvent[]
  /** Consecutive events older than the cursor (a run of them means the publisher restarted). */
  staleRun: number
  /** The core's gate applies this rank's next event itself (live, in order); `last` is then the gate's. */
  armed: boolean
}

interface KnownRank {
  workerId: bigint
  dpRank: number
  /** key(workerId, dpRank) */
  key: string
}

interface HeldEvent {
  bytes: Uint8Array
  id: bigint
  kind: EventKind
}

const KNOWN_OPTIONS = new Set([
  'kvBlockSize',
  'source',
  'nats',
  'logger',
  'selector',
  'metricsNamespace',
  'recovery',
  'workerExpiryMs',
  'registry',
  'metricsPrefix',
  'tiers',
])
const KINDS: EventKind[] = ['stored', 'removed', 'cleared']
/** Events held per rank while its recovery runs; beyond this the rank is rebuilt from a dump. */
const MAX_HELD = 100_000
/** This many events in a row older than the cursor: the publisher restarted with the same worker id. */
const STALE_RESTART_RUN = 8
/** A recovery's events are applied in slices of this many milliseconds, lookups served in between. */
const APPLY_SLICE_MS = 5
/** After "no responders", a worker's gaps are accepted without a query for this long. */
const NO_ENDPOINT_RETRY_MS = 60_000
/** Stream messages a JetStream consumer that skipped ahead is filled with, at most, from the stream. */
const MAX_STREAM_FILL = 100_000
/** Bytes of a recovery body split per slice (a few milliseconds). */
const SPLIT_SLICE_BYTES = 1 << 20

const key = (workerId: bigint, dpRank: number) => `${workerId}:${dpRank}`
const U64_MAX = (1n << 64n) - 1n

class RecoveryError extends Error {
  constructor(
    message: string,
    /** The server said nothing subscribes to the subject (503 no responders). */
    readonly noResponders = false,
  ) {
    super(message)
  }
}

/**
 * Follows the workers' KV events into one radix index and routes requests by prefix overlap and load
 * (SPEC 10). `await KvRouter.create(options)`; `findBestWorker(tokens)`; `close()`.
 */
export class KvRouter {
  readonly kvBlockSize: number
  readonly source: RouterSource
  /** The index's raw object: the selection and the in-order applies call the core on it directly. */
  readonly #raw: RawRadixIndex = new core.RawRadixIndex()
  readonly #index = new RadixIndex(core, this.#raw)
  /** Per rank followed live, the event id the core applies on arrival (event-plane and manual sources). */
  readonly #gate = new core.RawRankGate()
  readonly #head = new BigUint64Array(6)
  /** The raw index was freed (close): queries throw as the closed RadixIndex does. */
  #freed = false
  /** The default selector's rule (null: a custom selector, which gets candidate objects). */
  readonly #rule: DefaultRule | null
  readonly #log: RateLimitedLog
  readonly #logger: Logger
  readonly #selector: WorkerSelector
  readonly #ranks = new Map<string, RankState>()
  /** Every rank a request may go to (events, loads, engines), by key. */
  readonly #known = new Map<string, KnownRank>()
  /** #known sorted, and each rank's place in it by worker id and rank (null: to be rebuilt). */
  #rankList: KnownRank[] | null = null
  readonly #slots = new Map<bigint, number[]>()
  /** By place in the sorted ranks: worker id, dp rank, reported and routed decode blocks, their sum. */
  #slotWorker = new BigUint64Array(0)
  #slotRank = new Uint32Array(0)
  /** Held by the decisions made since they last changed (#reportedHeld, #routedHeld): copied before a write. */
  #reported: number[] = []
  #routed: number[] = []
  #reportedHeld = false
  #routedHeld = false
  #decode = new Float64Array(0)
  /**
   * What the core writes for a decision, reused by every decision: overlap, tree size and cost at 0, n
   * and 2n. The decision it belongs to (#scratchOwner) copies its part out before the next one.
   */
  #scratch = new Float64Array(0)
  #scratchOwner: Decision | null = null
  /** A decision is being made (a selector or its random() may ask for another). */
  #routing = false
  readonly #loads = new Map<string, bigint>()
  readonly #routedBlocks = new Map<string, number>()
  readonly #requests = new Map<string, { key: string; blocks: number; workerId: bigint; dpRank: number }>()
  readonly #lastSeen = new Map<bigint, number>()
  /** Workers whose recovery subject had no responders, and when that was found. */
  readonly #noEndpoint = new Map<bigint, number>()
  readonly #engines = new Map<bigint, { source: ZmqSource; ingestor: Ingestor; ranks: number }>()
  /** The engines' blocks per storage tier (option `tiers`), else null. */
  readonly #tiers: TierBlocks | null
  readonly #recoveryAttempts: number
  readonly #recoveryBackoffMs: number
  readonly #recoveryTimeoutMs: number
  readonly #expiryMs: number
  #nc: NatsConnection | null = null
  #ownsConnection = false
  #subs: Subscription[] = []
  #jsMessages: ConsumerMessages | null = null
  #jsLoop: Promise<void> | null = null
  #jsStatus: { stop?: () => void } | null = null
  #follower: Dynamo14Follower | null = null
  #expiryTimer: NodeJS.Timeout | null = null
  #closing: Promise<void> | null = null
  #tasks = new Set<Promise<void>>()
  #latency: Histogram | null = null
  readonly #stats = {
    events: Object.fromEntries(KINDS.map((k) => [k, Object.fromEntries(APPLY_OUTCOMES.map((o) => [o, 0]))])) as Record<
      EventKind,
      Record<ApplyOutcome, number>
    >,
    invalid: 0,
    stale: 0,
    gaps: 0,
    recoveries: { events: 0, tree_dump: 0, unavailable: 0, failed: 0 } as Record<RecoveryOutcome, number>,
    recoveryRetries: 0,
    restarts: 0,
    loads: 0,
    expired: 0,
  }

  private constructor(opts: KvRouterOptions, source: RouterSource) {
    this.kvBlockSize = positiveInt('kvBlockSize', opts.kvBlockSize)
    this.source = source
    this.#logger = loggerOption(opts.logger)
    this.#log = new RateLimitedLog(this.#logger)
    const sel = opts.selector
    if (typeof sel === 'function') this.#selector = sel
    else if (sel === undefined || (typeof sel === 'object' && sel !== null)) this.#selector = defaultSelector(sel)
    else throw new TypeError(`selector must be a function or the default selector's options, got ${describe(sel)}`)
    this.#rule = defaultRuleOf(this.#selector)
    const rec = opts.recovery ?? {}
    if (typeof rec !== 'object' || rec === null) throw new TypeError('recovery must be an object')
    this.#recoveryAttempts = positiveInt('recovery.attempts', rec.attempts ?? 8, 1000)
    this.#recoveryBackoffMs = intInRange('recovery.backoffMs', rec.backoffMs ?? 200, 0, 3_600_000)
    this.#recoveryTimeoutMs = positiveInt('recovery.timeoutMs', rec.timeoutMs ?? 5000, 3_600_000)
    this.#expiryMs = intInRange('workerExpiryMs', opts.workerExpiryMs ?? 600_000, 0, 2 ** 31 - 1)
    if (opts.tiers !== undefined && typeof opts.tiers !== 'boolean')
      throw new TypeError(`tiers must be a boolean, got ${describe(opts.tiers)}`)
    if (opts.tiers === true && source.kind !== 'engines') throw new TypeError("tiers needs source kind 'engines'")
    this.#tiers = opts.tiers === true ? new TierBlocks() : null
    if (opts.registry !== undefined) this.#registerMetrics(opts.registry, opts.metricsPrefix ?? 'dynamo_kv_router_')
  }

  /**
   * Validates the options (errors name the option), connects, subscribes (event plane, loads) or opens
   * the engines' sockets or the JetStream consumer, and resolves once the router is listening.
   * `env` defaults to process.env.
   */
  static async create(options: KvRouterOptions, env: Env = process.env): Promise<KvRouter> {
    if (typeof options !== 'object' || options === null) throw new TypeError(`KvRouter options must be an object, got ${describe(options)}`)
    for (const k of Object.keys(options)) if (!KNOWN_OPTIONS.has(k)) throw new TypeError(`${k} is not a KvRouter option`)
    const source = sourceArg(options.source)
    const router = new KvRouter(options, source)
    const metricsNs =
      options.metricsNamespace !== undefined
        ? checkName('metricsNamespace', options.metricsNamespace)
        : source.kind === 'engines' || source.kind === 'dynamo-1.4' || source.kind === 'manual'
          ? null
          : source.namespace
    const wantsNats =
      source.kind === 'engines' || source.kind === 'manual'
        ? metricsNs !== null
        : source.kind === 'dynamo-1.4'
          ? metricsNs !== null || options.nats !== undefined || (env.NATS_SERVER ?? '') !== ''
          : true
    try {
      if (wantsNats) {
        const { nc, owned } = await openNats(options.nats, env)
        router.#nc = nc
        router.#ownsConnection = owned
      }
      const nc = router.#nc
      if (metricsNs !== null && nc !== null) {
        router.#subs.push(nc.subscribe(kvMetricsSubject(metricsNs), { callback: (err, msg) => void (err || router.#onLoad(msg.data)) }))
      }
      if (source.kind === 'event-plane') {
        router.#subs.push(
          nc!.subscribe(kvEventsSubject(source.namespace, source.component), {
            callback: (err, msg) => void (err || router.#onEvent(msg.data)),
          }),
        )
      } else if (source.kind === 'jetstream') {
        await router.#startJetStream(nc!, source)
      } else if (source.kind === 'dynamo-1.4') {
        router.#follower = await Dynamo14Follower.start({
          namespace: source.namespace,
          component: source.component,
          endpoint: source.endpoint,
          discovery: source.discovery,
          env,
          nats: nc,
          log: router.#log,
          pollMs: source.pollMs ?? 500,
          sink: {
            apply: (ev) => {
              const kind: EventKind = ev.event.data.type
              try {
                router.#count(kind, router.#index.applyEvent(ev))
              } catch (e) {
                router.#invalid(e)
              }
            },
            clearRank: (workerId, dpRank) => router.#index.removeWorkerDpRank(workerId, dpRank),
            touch: (workerId, dpRank) => router.#touch(workerId, dpRank),
          },
        })
      } else if (source.kind === 'engines') {
        for (const e of source.engines) await router.addEngine(e)
      }
      if (nc !== null) await nc.flush()
      if (source.kind !== 'engines' && router.#expiryMs > 0) {
        const every = Math.max(10, Math.min(router.#expiryMs / 4, 10_000))
        router.#expiryTimer = setInterval(() => router.#expire(), every)
        router.#expiryTimer.unref()
      }
    } catch (e) {
      await router.close()
      throw e
    }
    router.#logger.info({ source: source.kind }, 'KV router ready')
    return router
  }

  // -------------------------------------------------------------------------------------------------
  // queries

  /** Overlap scores of the request's tokens (block hashes computed as the workers do, SPEC 4). */
  findMatches(tokens: Uint32Array | number[], opts: Omit<FindBestWorkerOptions, 'requestId'> = {}): OverlapScores {
    return this.#index.findMatches(this.#hashes(tokens, opts))
  }

  /** Overlap scores for block (tokens) hashes computed by the caller. */
  findMatchesForHashes(blockHashes: BigUint64Array | bigint[]): OverlapScores {
    return this.#index.findMatches(blockHashes)
  }

  /**
   * Chooses the worker rank for a request: every known rank is a candidate, weighed by the selector
   * (default: SPEC 10's cost rule). null when no worker is known. With `requestId`, the request's blocks
   * count as the chosen rank's decode blocks until markFinished(requestId).
   */
  findBestWorker(tokens: Uint32Array | number[], opts: FindBestWorkerOptions = {}): RouteDecision | null {
    if (typeof opts !== 'object' || opts === null) throw new TypeError('findBestWorker options must be an object')
    const t = tokensArg('tokens', tokens)
    const hashes = this.#hashes(t, opts)
    return this.#route(hashes, Math.ceil(t.length / this.kvBlockSize), opts.requestId)
  }

  /** findBestWorker for block (tokens) hashes computed by the caller; `requestBlocks` defaults to their number. */
  findBestWorkerForHashes(
    blockHashes: BigUint64Array | bigint[],
    opts: { requestBlocks?: number; requestId?: string } = {},
  ): RouteDecision | null {
    const hashes = hashesArg('blockHashes', blockHashes)
    const blocks = opts.requestBlocks === undefined ? hashes.length : intInRange('requestBlocks', opts.requestBlocks, 0, 2 ** 31)
    return this.#route(hashes, blocks, opts.requestId)
  }

  /** Releases a request counted by findBestWorker({ requestId }); false when it is not active. */
  markFinished(requestId: string): boolean {
    const r = this.#requests.get(requestId)
    if (r === undefined) return false
    this.#requests.delete(requestId)
    const left = (this.#routedBlocks.get(r.key) ?? 0) - r.blocks
    if (left > 0) this.#routedBlocks.set(r.key, left)
    else this.#routedBlocks.delete(r.key)
    this.#refreshSlot(r.workerId, r.dpRank, r.key)
    return true
  }

  #hashes(tokens: Uint32Array | number[], opts: Omit<FindBestWorkerOptions, 'requestId'>): BigUint64Array {
    return computeBlockHashes(tokens, this.kvBlockSize, {
      loraName: opts.loraName,
      cacheSalt: opts.cacheSalt,
      blockMmInfos: opts.blockMmInfos,
    })
  }

  #route(hashes: BigUint64Array, requestBlocks: number, requestId: string | undefined): RouteDecision | null {
    if (requestId !== undefined) {
      if (typeof requestId !== 'string') throw new TypeError(`requestId must be a string, got ${describe(requestId)}`)
      if (this.#requests.has(requestId)) throw new RangeError(`requestId ${JSON.stringify(requestId)} is already active`)
    }
    if (this.#known.size === 0) return null
    if (this.#freed) throw new Error('RadixIndex is closed')
    const ranks = this.#sortedRanks()
    const n = ranks.length
    // the scratch is this decision's: the last one keeps its own values (unless its candidates were built).
    // A call from within a selector or its random() (this router deciding meanwhile) gets its own.
    const nested = this.#routing
    if (!nested) {
      this.#scratchOwner?.keep()
      this.#scratchOwner = null
      if (this.#scratch.length < 3 * n) this.#scratch = new Float64Array(3 * n)
    }
    const scratch = nested ? new Float64Array(3 * n) : this.#scratch
    this.#routing = true
    try {
      return this.#decide(ranks, scratch, hashes, requestBlocks, requestId, nested)
    } finally {
      this.#routing = nested
    }
  }

  #decide(
    ranks: KnownRank[],
    scratch: Float64Array,
    hashes: BigUint64Array,
    requestBlocks: number,
    requestId: string | undefined,
    nested: boolean,
  ): RouteDecision {
    const n = ranks.length
    const rule = this.#rule
    const best = core.selectBest(
      this.#raw,
      hashes,
      requestBlocks,
      rule?.overlapWeight ?? 1,
      this.#slotWorker,
      this.#slotRank,
      this.#decode,
      n,
      scratch,
      0,
    )
    // the load columns as they are now (all 0 when there is nothing to hold); a change copies them first
    const reported = this.#loads.size > 0 ? this.#reported : null
    const routed = this.#routedBlocks.size > 0 ? this.#routed : null
    if (reported !== null) this.#reportedHeld = true
    if (routed !== null) this.#routedHeld = true
    const decision = new Decision(ranks, requestBlocks, scratch, reported, routed)
    let i: number
    if (rule !== null) {
      i = rule.temperature === 0 ? best : sampleByCost(scratch, 2 * n, n, best, rule.temperature, rule.random)
      if (!nested) this.#scratchOwner = decision
    } else {
      const made = decision.candidates
      i = this.#selector(made, { requestBlocks, blockHashes: hashes })
      if (!Number.isInteger(i) || i < 0 || i >= n)
        throw new RangeError(`the selector returned ${describe(i)}, not an index into its ${n} candidates`)
    }
    const chosen = ranks[i]!
    decision.workerId = chosen.workerId
    decision.dpRank = chosen.dpRank
    decision.overlapBlocks = scratch[i]!
    if (requestId !== undefined) {
      const k = chosen.key
      this.#requests.set(requestId, { key: k, blocks: requestBlocks, workerId: chosen.workerId, dpRank: chosen.dpRank })
      this.#routedBlocks.set(k, (this.#routedBlocks.get(k) ?? 0) + requestBlocks)
      this.#refreshSlot(chosen.workerId, chosen.dpRank, k)
    }
    return decision
  }

  /** Every known rank, ascending (workerId, dpRank); rebuilt only after the known ranks changed. */
  #sortedRanks(): KnownRank[] {
    if (this.#rankList !== null) return this.#rankList
    const list = [...this.#known.values()].sort((a, b) =>
      a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : a.dpRank - b.dpRank,
    )
    const n = list.length
    this.#slots.clear()
    this.#slotWorker = new BigUint64Array(n)
    this.#slotRank = new Uint32Array(n)
    this.#reported = new Array<number>(n).fill(0)
    this.#routed = new Array<number>(n).fill(0)
    this.#reportedHeld = false
    this.#routedHeld = false
    this.#decode = new Float64Array(n)
    this.#rankList = list
    for (let i = 0; i < n; i++) {
      const r = list[i]!
      const bySlot = this.#slots.get(r.workerId) ?? []
      if (bySlot.length === 0) this.#slots.set(r.workerId, bySlot)
      bySlot[r.dpRank] = i
      this.#slotWorker[i] = r.workerId
      this.#slotRank[i] = r.dpRank
      this.#refreshSlot(r.workerId, r.dpRank, r.key)
    }
    return list
  }

  /** A rank's decode blocks in the slot columns after its load or routed blocks changed. */
  #refreshSlot(workerId: bigint, dpRank: number, k: string): void {
    if (this.#rankList === null) return
    const slot = this.#slots.get(workerId)?.[dpRank]
    if (slot === undefined) return
    const reported = Number(this.#loads.get(k) ?? 0n)
    const routed = this.#routedBlocks.get(k) ?? 0
    // copy on write: decisions hold the columns as they were when they were made
    if (this.#reportedHeld && this.#reported[slot] !== reported) {
      this.#reported = this.#reported.slice()
      this.#reportedHeld = false
    }
    if (this.#routedHeld && this.#routed[slot] !== routed) {
      this.#routed = this.#routed.slice()
      this.#routedHeld = false
    }
    this.#reported[slot] = reported
    this.#routed[slot] = routed
    this.#decode[slot] = reported + routed
  }

  #addKnown(workerId: bigint, dpRank: number, k: string): void {
    this.#known.set(k, { workerId, dpRank, key: k })
    this.#rankList = null
  }

  /** The index (read-only use: queries, dump, size). */
  get index(): RadixIndex {
    return this.#index
  }

  /** Known worker ids, ascending. */
  workers(): bigint[] {
    return [...new Set([...this.#known.values()].map((r) => r.workerId))].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
  }

  /** The dynamo-1.4 source's counters (null for other sources). */
  dynamo14Stats(): Dynamo14Stats | null {
    return this.#follower?.stats() ?? null
  }

  /** Whether no recovery is running and no event waits for one. */
  get settled(): boolean {
    for (const st of this.#ranks.values()) if (st.recovering) return false
    return this.#tasks.size === 0
  }

  stats(): KvRouterStats {
    const s = this.#stats
    return {
      events: Object.fromEntries(KINDS.map((k) => [k, { ...s.events[k] }])) as KvRouterStats['events'],
      invalid: s.invalid,
      stale: s.stale,
      gaps: s.gaps,
      recoveries: { ...s.recoveries },
      recoveryRetries: s.recoveryRetries,
      restarts: s.restarts,
      loads: s.loads,
      expired: s.expired,
      indexSize: this.#closing === null ? this.#index.size() : 0,
      workerRanks: this.#known.size,
      activeRequests: this.#requests.size,
    }
  }

  // -------------------------------------------------------------------------------------------------
  // workers

  /** Drops every block of the worker (all ranks), its loads and routed requests, and forgets it. */
  removeWorker(workerId: bigint): void {
    const id = u64('workerId', workerId)
    this.#index.removeWorker(id)
    for (const [k, r] of this.#known) if (r.workerId === id) this.#known.delete(k)
    this.#rankList = null
    for (const [k, st] of this.#ranks)
      if (st.workerId === id) {
        st.held = []
        this.#ranks.delete(k)
      }
    for (const k of this.#loads.keys()) if (k.startsWith(`${id}:`)) this.#loads.delete(k)
    for (const k of this.#routedBlocks.keys()) if (k.startsWith(`${id}:`)) this.#routedBlocks.delete(k)
    for (const [rid, r] of this.#requests) if (r.key.startsWith(`${id}:`)) this.#requests.delete(rid)
    this.#lastSeen.delete(id)
    this.#noEndpoint.delete(id)
    this.#gate.removeWorker(id)
  }

  #touch(workerId: bigint, dpRank: number): void {
    this.#lastSeen.set(workerId, performance.now())
    const k = key(workerId, dpRank)
    if (!this.#known.has(k)) this.#addKnown(workerId, dpRank, k)
  }

  #expire(): void {
    const now = performance.now()
    // the workers whose events the core's gate applied since the last sweep
    for (const id of this.#gate.takeSeen()) if (this.#lastSeen.has(id)) this.#lastSeen.set(id, now)
    for (const [id, at] of this.#lastSeen)
      if (now - at > this.#expiryMs) {
        this.#logger.info({ workerId: id.toString(), silentMs: Math.round(now - at) }, 'removing a worker that has been silent')
        this.removeWorker(id)
        this.#stats.expired++
      }
  }

  // -------------------------------------------------------------------------------------------------
  // applying

  /**
   * Manual source: applies one event-plane envelope (SPEC 6) the application received, in the order it
   * arrived, exactly as the event-plane source applies a NATS message (per-rank event-id order, stale and
   * restart detection, counters). There is no recovery: a first sight, a gap or a restart is counted as an
   * `unavailable` recovery and the events are applied from there. Bytes that are not an envelope are
   * counted in `stats().invalid`, never thrown. Ignored once the router is closing.
   */
  applyEnvelope(bytes: Uint8Array): void {
    if (this.source.kind !== 'manual') throw new Error(`applyEnvelope needs source kind 'manual', this router's is '${this.source.kind}'`)
    if (!(bytes instanceof Uint8Array)) throw new TypeError(`bytes must be a Uint8Array, got ${describe(bytes)}`)
    this.#onEvent(bytes)
  }

  #count(kind: EventKind, outcome: ApplyOutcome): void {
    this.#stats.events[kind][outcome]++
  }

  /** Applies bytes the core decodes; a RouterEventError is counted and logged, never thrown. */
  #apply(bytes: Uint8Array, format: 'envelope' | 'json', kind: EventKind): void {
    try {
      this.#count(kind, this.#index.applyEncoded(bytes, format))
    } catch (e) {
      this.#invalid(e)
    }
  }

  #invalid(e: unknown): void {
    if (!(e instanceof RouterEventError)) throw e
    this.#stats.invalid++
    this.#log.log('warn', 'invalid', { reason: e.reason, err: e.message }, 'skipped bytes that are not a router event')
  }

  #onLoad(data: Uint8Array): void {
    const load = decodeActiveLoadEnvelope(data)
    if (load === null) {
      this.#log.log('warn', 'bad-load', { bytes: data.length }, 'skipped a kv_metrics message that is not an ActiveLoad')
      return
    }
    this.#stats.loads++
    this.#touch(load.workerId, load.dpRank)
    const k = key(load.workerId, load.dpRank)
    this.#loads.set(k, load.activeDecodeBlocks)
    this.#refreshSlot(load.workerId, load.dpRank, k)
  }

  /**
   * One event-plane message: the next event of a rank followed live is applied by the core's gate in
   * the call that reads it; anything else (a gap, a first sight, a restart, a rank in recovery, bytes
   * the gate does not read) comes here to be ordered.
   */
  #onEvent(data: Uint8Array): void {
    if (this.#closing !== null) return
    const code = this.#gate.apply(this.#raw, data, this.#head)
    if (code < GATE_PASS) {
      this.#stats.events[KINDS[(code / 5) | 0]!][APPLY_OUTCOMES[code % 5]!]++
      return
    }
    if (code === GATE_PASS) {
      const h = this.#head
      this.#onPeeked(data, h[0]!, Number(h[2]!), h[1]!, KINDS[Number(h[3]!)]!)
      return
    }
    if (!peekEnvelope(data)) {
      // the core says why (it throws a RouterEventError for these bytes)
      try {
        this.#index.applyEncoded(data, 'envelope')
        this.#stats.invalid++
      } catch (e) {
        this.#invalid(e)
      }
      return
    }
    this.#onPeeked(data, peeked.workerId, peeked.dpRank, peeked.eventId, peeked.kind)
  }

  #onPeeked(data: Uint8Array, workerId: bigint, dpRank: number, eventId: bigint, kind: EventKind): void {
    this.#touch(workerId, dpRank)
    const k = key(workerId, dpRank)
    let st = this.#ranks.get(k)
    if (st === undefined) {
      st = { workerId, dpRank, last: null, recovering: true, held: [{ bytes: data, id: eventId, kind }], staleRun: 0, armed: false }
      this.#ranks.set(k, st)
      this.#startRecovery(st, null, null)
      return
    }
    if (st.armed) {
      // the gate applied the events since it was armed: its cursor is the rank's
      st.armed = false
      const due = this.#gate.disarm(workerId, dpRank)
      if (due !== null && due - 1n !== st.last) {
        st.last = due - 1n
        st.staleRun = 0
      }
    }
    if (st.recovering) {
      this.#hold(st, { bytes: data, id: eventId, kind })
      return
    }
    this.#live(st, data, eventId, kind)
    this.#arm(st)
  }

  /** Hands a rank followed live, in order, to the core's gate (event-plane and manual sources). */
  #arm(st: RankState): void {
    if (st.armed || st.recovering || st.last === null || st.last === U64_MAX) return
    if (this.#ranks.get(key(st.workerId, st.dpRank)) !== st) return
    this.#gate.arm(st.workerId, st.dpRank, st.last + 1n)
    st.armed = true
  }

  #hold(st: RankState, ev: HeldEvent): void {
    if (st.held.length >= MAX_HELD) {
      // far behind: what is held is dropped; the gap this leaves is recovered once this recovery ends
      this.#log.log(
        'warn',
        'held-overflow',
        { workerId: st.workerId.toString(), dpRank: st.dpRank },
        'too many events held during a recovery',
      )
      st.held = []
    }
    st.held.push(ev)
  }

  #live(st: RankState, data: Uint8Array, id: bigint, kind: EventKind): void {
    if (st.last === null || id === st.last + 1n) {
      st.last = id
      st.staleRun = 0
      this.#apply(data, 'envelope', kind)
      return
    }
    if (id <= st.last) {
      // core NATS delivers each message once: an old id is one a recovery already covered, unless the
      // publisher restarted (ids from 0 again)
      this.#stats.stale++
      if (id === 0n || ++st.staleRun >= STALE_RESTART_RUN) {
        this.#stats.restarts++
        st.staleRun = 0
        st.last = null
        st.recovering = true
        st.held = [{ bytes: data, id, kind }]
        this.#startRecovery(st, null, null)
      }
      return
    }
    this.#stats.gaps++
    const none = this.#noEndpoint.get(st.workerId)
    if (this.source.kind === 'manual' || (none !== undefined && performance.now() - none < NO_ENDPOINT_RETRY_MS)) {
      // this worker serves no recovery endpoint: the loss is accepted without asking again
      this.#stats.recoveries.unavailable++
      st.last = id
      st.staleRun = 0
      this.#apply(data, 'envelope', kind)
      return
    }
    st.recovering = true
    st.held = [{ bytes: data, id, kind }]
    this.#startRecovery(st, st.last + 1n, id - 1n)
  }

  #startRecovery(st: RankState, start: bigint | null, end: bigint | null): void {
    if (this.source.kind === 'manual') {
      // nowhere to ask: the loss is accepted at once, as when a worker serves no recovery endpoint
      this.#stats.recoveries.unavailable++
      st.last = null
      this.#drain(st)
      return
    }
    const task = this.#recover(st, start, end).catch((e) => {
      this.#logger.error({ err: String(e) }, 'recovery failed unexpectedly')
    })
    this.#tasks.add(task)
    void task.finally(() => this.#tasks.delete(task))
  }

  async #recover(st: RankState, start: bigint | null, end: bigint | null): Promise<void> {
    const t0 = performance.now()
    let outcome: RecoveryOutcome = 'failed'
    for (let attempt = 0; attempt < this.#recoveryAttempts; attempt++) {
      if (this.#closing !== null || this.#ranks.get(key(st.workerId, st.dpRank)) !== st) return
      if (attempt > 0) {
        this.#stats.recoveryRetries++
        await sleep(this.#recoveryBackoffMs * 2 ** (attempt - 1))
        if (this.#closing !== null || this.#ranks.get(key(st.workerId, st.dpRank)) !== st) return
      }
      let body: Buffer
      try {
        body = await this.#query(st.workerId, st.dpRank, start, end)
      } catch (e) {
        if (e instanceof RecoveryError && e.noResponders) {
          outcome = 'unavailable'
          this.#noEndpoint.set(st.workerId, performance.now())
          this.#log.log(
            'info',
            `recovery-none-${st.workerId}`,
            { workerId: st.workerId.toString(), dpRank: st.dpRank },
            'the worker serves no recovery endpoint: following it live only',
          )
          break
        }
        this.#log.log(
          'warn',
          `recovery-${st.workerId}`,
          { workerId: st.workerId.toString(), dpRank: st.dpRank, attempt, err: (e as Error).message },
          'a recovery query failed',
        )
        continue
      }
      if (this.#closing !== null || this.#ranks.get(key(st.workerId, st.dpRank)) !== st) return
      let answer: ReturnType<typeof parseRangeResponse>
      try {
        const arr = responseArray(body)
        if (arr !== null) {
          // a large body is split in slices too
          const splitter = new ArraySplitter(body, arr.open)
          while (!splitter.step(SPLIT_SLICE_BYTES)) {
            await new Promise((r) => setImmediate(r))
            if (this.#closing !== null || this.#ranks.get(key(st.workerId, st.dpRank)) !== st) return
          }
          if (body.toString('latin1', splitter.end) !== '}') throw new Error('bad response: trailing bytes')
          answer = { kind: arr.kind, events: splitter.items }
        } else answer = parseRangeResponse(body)
      } catch (e) {
        this.#log.log('warn', 'recovery-body', { err: (e as Error).message }, 'a recovery reply could not be read')
        continue
      }
      if (answer.kind === 'Events') {
        const done = await this.#sliced(st, answer.events, (ev) => {
          const id = eventIdOfJson(ev)
          if (id === null || (st.last !== null && id <= st.last)) return
          st.last = id
          this.#apply(ev, 'json', jsonKind(ev))
        })
        if (!done) return
        outcome = 'events'
        break
      }
      if (answer.kind === 'TreeDump') {
        this.#index.removeWorkerDpRank(st.workerId, st.dpRank)
        if (!(await this.#sliced(st, answer.events, (ev) => this.#apply(ev, 'json', 'stored')))) return
        st.last = answer.events.length > 0 ? eventIdOfJson(answer.events[0]!) : null
        outcome = 'tree_dump'
        break
      }
      // TooNew, InvalidRange, Error: a definite answer that no retry changes
      this.#log.log(
        'warn',
        `recovery-answer-${st.workerId}`,
        {
          workerId: st.workerId.toString(),
          dpRank: st.dpRank,
          answer: answer.kind,
          detail: 'message' in answer ? answer.message : undefined,
        },
        'the worker could not answer the recovery query',
      )
      break
    }
    this.#stats.recoveries[outcome]++
    this.#latency?.observe({ outcome }, (performance.now() - t0) / 1000)
    if (outcome === 'failed' || outcome === 'unavailable') {
      // accept the loss: continue from the events held
      st.last = null
    }
    this.#drain(st)
  }

  /**
   * Applies a recovery's events in slices of APPLY_SLICE_MS, yielding to the event loop between them so
   * that lookups are served while a large dump is applied (the rank's live events stay held meanwhile).
   * false when the router closed or the rank was removed in between.
   */
  async #sliced(st: RankState, events: Buffer[], each: (ev: Buffer) => void): Promise<boolean> {
    let sliceEnd = performance.now() + APPLY_SLICE_MS
    for (let i = 0; i < events.length; i++) {
      if ((i & 255) === 255 && performance.now() > sliceEnd) {
        await new Promise((r) => setImmediate(r))
        if (this.#closing !== null || this.#ranks.get(key(st.workerId, st.dpRank)) !== st) return false
        sliceEnd = performance.now() + APPLY_SLICE_MS
      }
      each(events[i]!)
    }
    return true
  }

  /** Applies the events held during a recovery, in order; stops if one of them starts another. */
  #drain(st: RankState): void {
    const held = st.held
    st.held = []
    st.recovering = false
    for (let i = 0; i < held.length; i++) {
      const ev = held[i]!
      if (st.recovering) {
        st.held.push(ev)
        continue
      }
      if (st.last !== null && ev.id <= st.last) {
        this.#stats.stale++
        continue
      }
      this.#live(st, ev.bytes, ev.id, ev.kind)
    }
    this.#arm(st)
  }

  /** One recovery query: the reply's chunks in order, ended by the closing message. */
  #query(workerId: bigint, dpRank: number, start: bigint | null, end: bigint | null): Promise<Buffer> {
    const nc = this.#nc!
    const src = this.source as EventPlaneSource
    const subject = recoverySubject(src.namespace, src.component, dpRank, workerId)
    const inbox = createInbox()
    const chunks: Uint8Array[] = []
    let sub: Subscription | null = null
    let timer: NodeJS.Timeout | null = null
    return new Promise<Buffer>((resolve, reject) => {
      const arm = () => {
        if (timer !== null) clearTimeout(timer)
        timer = setTimeout(() => reject(new RecoveryError(`no reply within ${this.#recoveryTimeoutMs} ms`)), this.#recoveryTimeoutMs)
      }
      sub = nc.subscribe(inbox, {
        callback: (err, msg: Msg) => {
          if (err) return reject(err)
          const h = msg.headers
          if (h?.hasError) return reject(new RecoveryError(`${h.code} ${h.description}`, h.code === 503))
          const idx = h?.get(CHUNK_HEADER)
          const total = h?.get(CHUNKS_HEADER)
          if (idx) {
            // chunk 0 again: the worker started the reply over (its index changed during a dump)
            if (idx === '0') chunks.length = 0
            if (Number(idx) !== chunks.length) return reject(new RecoveryError(`chunk ${idx} arrived when ${chunks.length} was due`))
            chunks.push(msg.data)
            arm()
          } else if (total) {
            if (Number(total) !== chunks.length) return reject(new RecoveryError(`reply truncated: ${chunks.length} of ${total} chunks`))
            resolve(Buffer.concat(chunks))
          } else reject(new RecoveryError('a reply without Kv-Chunk headers'))
        },
      })
      arm()
      nc.publish(subject, encodeRecoveryRequest({ workerId, startEventId: start, endEventId: end }), {
        reply: inbox,
        headers: natsHeaders(),
      })
    }).finally(() => {
      if (timer !== null) clearTimeout(timer)
      try {
        ;(sub as Subscription | null)?.unsubscribe()
      } catch {
        // closed connection
      }
    })
  }

  // -------------------------------------------------------------------------------------------------
  // the engines source

  /** Starts reading an engine's ZeroMQ stream into the index (engines source only). */
  async addEngine(engine: RouterEngine): Promise<void> {
    if (this.source.kind !== 'engines') throw new Error("addEngine needs source kind 'engines'")
    if (this.#closing !== null) throw new Error('KvRouter is closed')
    const e = engineArg(engine, 'engine')
    if (this.#engines.has(e.workerId)) throw new RangeError(`engine workerId ${e.workerId} is already added`)
    const ranks = e.dpRanks ?? 1
    const rankList = e.ranks ?? Array.from({ length: ranks }, (_, r) => r)
    const tiers = this.#tiers
    const ingestor = new Ingestor({
      kvBlockSize: this.kvBlockSize,
      workerId: e.workerId,
      dpRanks: rankList,
      wire: tiers === null ? 'dynamo-1.0' : 'dynamo-1.4',
    })
    const apply = (r: IngestResult) => {
      for (const p of r.views) {
        // the index keeps the device events of a payload (the others are 'ignored'); the tiers all of them
        this.#apply(p, 'envelope', peekEnvelope(p) ? peeked.kind : 'stored')
        if (tiers !== null) for (const ev of decodeRouterEvents(p, 'envelope')) tiers.apply(ev)
      }
      return null
    }
    const consumer = {
      ingest: async (payload: Uint8Array) => apply(ingestor.ingest(payload, Date.now())),
      resetRank: async (dpRank: number) => (ingestor.allowsRank(dpRank) ? apply(ingestor.cleared(dpRank, Date.now())) : null),
    }
    let source: ZmqSource
    try {
      source = await ZmqSource.create(
        {
          endpoint: e.endpoint,
          replayEndpoint: e.replayEndpoint,
          dpRanks: ranks,
          topic: e.topic,
          logger: this.#logger,
        },
        consumer,
      )
    } catch (err) {
      ingestor.close()
      throw err
    }
    this.#engines.set(e.workerId, { source, ingestor, ranks })
    for (const r of rankList) this.#addKnown(e.workerId, r, key(e.workerId, r))
  }

  /** Stops reading an engine and removes its blocks. false when it was not added. */
  async removeEngine(workerId: bigint): Promise<boolean> {
    const id = u64('workerId', workerId)
    const e = this.#engines.get(id)
    if (e === undefined) return false
    this.#engines.delete(id)
    await e.source.close()
    e.ingestor.close()
    this.removeWorker(id)
    this.#tiers?.removeWorker(id)
    return true
  }

  /**
   * Closes an engine's ZeroMQ SUB sockets, keeping its blocks and sequence cursors (ZmqSource.pause).
   * false when the engine was not added.
   */
  async pauseEngine(workerId: bigint): Promise<boolean> {
    const e = this.#engines.get(u64('workerId', workerId))
    if (e === undefined) return false
    await e.source.pause()
    return true
  }

  /** Reopens a paused engine's SUB sockets (ZmqSource.resume). false when the engine was not added. */
  async resumeEngine(workerId: bigint): Promise<boolean> {
    const e = this.#engines.get(u64('workerId', workerId))
    if (e === undefined) return false
    await e.source.resume()
    return true
  }

  /** Option `tiers`: the lower-tier blocks held over all engines (0 without the option). */
  get lowerTierBlocks(): number {
    return this.#tiers?.lowerBlocks ?? 0
  }

  /**
   * Option `tiers`: each worker rank's match of `tokensHashes` continued on the lower tiers from its
   * device match (`device`: blocks by `${workerId}:${dpRank}`, e.g. from findMatches). Ranks with
   * nothing on any tier are left out; null without the option.
   */
  tierMatches(tokensHashes: BigUint64Array, device: Map<string, number>): TierMatch[] | null {
    return this.#tiers === null ? null : this.#tiers.match(tokensHashes, device)
  }

  /** The engines' ZMQ sources (engines source), by worker id: counters via stats(). */
  engineSources(): Map<bigint, ZmqSource> {
    return new Map([...this.#engines].map(([id, e]) => [id, e.source]))
  }

  // -------------------------------------------------------------------------------------------------
  // the JetStream source

  async #startJetStream(nc: NatsConnection, src: JetStreamSource): Promise<void> {
    const stream = jetstreamStreamName(src.namespace, src.component)
    const jsm = await jetstreamManager(nc)
    await ensureStream(jsm, stream, 3600, this.#logger)
    const js = jetstream(nc)
    if (src.durable !== undefined) {
      try {
        await jsm.consumers.info(stream, src.durable)
      } catch {
        await jsm.consumers.add(stream, { durable_name: src.durable, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All })
      }
    }
    // stream sequence of the newest message applied (0: none yet)
    let lastSeq = 0
    const open = async (): Promise<ConsumerMessages> => {
      const consumer =
        src.durable !== undefined
          ? await js.consumers.get(stream, src.durable)
          : await js.consumers.get(stream, lastSeq > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: lastSeq + 1 } : {})
      const messages = await consumer.consume({ max_messages: 256 })
      this.#jsMessages = messages
      // a consumer whose server went away (a cluster node down, its leader moved) may stay silent:
      // missed heartbeats end this iteration, and the consumer is opened again after the last message applied
      void (async () => {
        for await (const st of messages.status()) if (st.type === 'heartbeats_missed' && st.count >= 2) await messages.close()
      })().catch(() => {})
      return messages
    }
    const applyOne = (seq: number, data: Uint8Array) => {
      lastSeq = seq
      const ids = jsonHead(data)
      if (ids !== null) this.#touch(ids.workerId, ids.dpRank)
      this.#apply(data, 'json', jsonKind(Buffer.from(data.buffer, data.byteOffset, data.byteLength)))
    }
    const consume = async (messages: ConsumerMessages) => {
      for await (const m of messages) {
        if (this.#closing !== null) break
        if (m.seq <= lastSeq) {
          // delivered again (an ack lost with a server that went down is redelivered after the ack wait,
          // out of order): acknowledged, not applied
          this.#stats.stale++
          m.ack()
          continue
        }
        if (lastSeq > 0 && m.seq > lastSeq + 1) {
          // a durable consumer moved past messages it had delivered to a server that went down (they come
          // back after the ack wait): they are read from the stream now, in order
          for (let seq = lastSeq + 1; seq < m.seq && seq - lastSeq <= MAX_STREAM_FILL; seq++) {
            let stored: Awaited<ReturnType<typeof jsm.streams.getMessage>> = null
            try {
              stored = await jsm.streams.getMessage(stream, { seq })
            } catch {
              // deleted from the stream (age limit): nothing to apply
            }
            if (this.#closing !== null) return
            if (stored !== null) applyOne(seq, stored.data)
            else this.#stats.gaps++
          }
        }
        applyOne(m.seq, m.data)
        m.ack()
      }
    }
    let messages = await open()
    const loop = async () => {
      for (;;) {
        try {
          await consume(messages)
        } catch (e) {
          if (this.#closing === null)
            this.#log.log('warn', 'jetstream', { err: String(e) }, 'the JetStream consumer stopped; opening it again')
        }
        if (this.#closing !== null) return
        await sleep(250)
        if (this.#closing !== null) return
        try {
          messages = await open()
          if (this.#closing !== null) return void (await messages.close().catch(() => {}))
        } catch (e) {
          this.#log.log('warn', 'jetstream-open', { err: String(e) }, 'the JetStream consumer could not be opened; retrying')
        }
      }
    }
    this.#jsLoop = loop()
    // a reconnect (to this server or another one of the cluster) ends the current iteration too
    const status = nc.status()
    this.#jsStatus = status as { stop?: () => void }
    void (async () => {
      for await (const st of status) {
        if (this.#closing !== null) return
        if (st.type === 'reconnect') await this.#jsMessages?.close().catch(() => {})
      }
    })().catch(() => {})
  }

  // -------------------------------------------------------------------------------------------------
  // metrics, close

  #registerMetrics(registry: Registry, prefix: string): void {
    const router = this
    new Counter({
      name: `${prefix}events_applied_total`,
      help: 'Router events applied to the index, by type and outcome',
      labelNames: ['type', 'outcome'],
      registers: [registry],
      collect() {
        this.reset()
        const s = router.#stats.events
        for (const k of KINDS) for (const o of APPLY_OUTCOMES) this.inc({ type: k, outcome: o }, s[k][o])
      },
    })
    const counter = (name: string, help: string, read: () => number) =>
      new Counter({
        name: `${prefix}${name}`,
        help,
        registers: [registry],
        collect() {
          this.reset()
          this.inc(read())
        },
      })
    counter('events_invalid_total', 'Event bytes that were not a router event', () => router.#stats.invalid)
    counter('events_stale_total', 'Events older than their rank cursor, skipped', () => router.#stats.stale)
    counter('gaps_total', 'Event-id gaps found', () => router.#stats.gaps)
    counter('restarts_total', 'Publisher restarts detected', () => router.#stats.restarts)
    counter('worker_expired_total', 'Workers removed for silence', () => router.#stats.expired)
    new Counter({
      name: `${prefix}recoveries_total`,
      help: 'Recoveries by outcome',
      labelNames: ['outcome'],
      registers: [registry],
      collect() {
        this.reset()
        for (const [o, n] of Object.entries(router.#stats.recoveries)) this.inc({ outcome: o }, n)
      },
    })
    this.#latency = new Histogram({
      name: `${prefix}recovery_duration_seconds`,
      help: 'Time from a gap (or first sight) to its recovery applied',
      labelNames: ['outcome'],
      buckets: [0.001, 0.005, 0.02, 0.1, 0.5, 2, 10, 60],
      registers: [registry],
    })
    new Gauge({
      name: `${prefix}index_blocks`,
      help: 'Block hashes in the index',
      registers: [registry],
      collect() {
        this.set(router.#closing === null ? router.#index.size() : 0)
      },
    })
    new Gauge({
      name: `${prefix}worker_ranks`,
      help: 'Worker ranks known',
      registers: [registry],
      collect() {
        this.set(router.#known.size)
      },
    })
  }

  /** Stops every source and subscription, closes the connection if it owns it, frees the index. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  async #close(): Promise<void> {
    if (this.#expiryTimer !== null) clearInterval(this.#expiryTimer)
    for (const s of this.#subs) {
      try {
        s.unsubscribe()
      } catch {
        // closed connection
      }
    }
    this.#jsStatus?.stop?.()
    if (this.#jsMessages !== null) {
      // bounded: a consumer whose connection is gone may never report itself closed
      const bound = new Promise<void>((r) => setTimeout(r, 5000).unref())
      await Promise.race([Promise.all([this.#jsMessages.close().catch(() => {}), this.#jsLoop]), bound])
      // the last acks reach the server before the connection goes
      if (this.#nc !== null) await Promise.race([this.#nc.flush().catch(() => {}), bound])
    }
    await this.#follower?.close()
    for (const e of this.#engines.values()) {
      await e.source.close()
      e.ingestor.close()
    }
    this.#engines.clear()
    await Promise.allSettled([...this.#tasks])
    if (this.#nc !== null && this.#ownsConnection) await this.#nc.close().catch(() => {})
    this.#index.close()
    this.#freed = true
    this.#raw.close()
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A kept decision packs a rank's overlap (below this) and tree size (below PACK_TREE) into one number. */
const PACK_OVERLAP = 2 ** 21
const PACK_TREE = 2 ** 32

/**
 * A decision of KvRouter.#route. Its candidates are built when first read, from the values of the
 * time it was made: the core's overlaps and tree sizes (in the router's scratch until the router's next
 * decision, which has this decision copy them out first: `keep`) and the load columns it holds (the
 * router copies a column before changing one a decision holds).
 */
class Decision implements RouteDecision {
  workerId = 0n
  dpRank = 0
  overlapBlocks = 0
  readonly #ranks: KnownRank[]
  readonly #requestBlocks: number
  /** Overlap at [0, n), tree size at [n, 2n); or, once kept and #packed, one packed value per rank. */
  #scores: ArrayLike<number>
  readonly #reported: readonly number[] | null
  readonly #routed: readonly number[] | null
  /** #scores holds n packed values (see keep). */
  #packed = false
  /** The candidates once built or assigned (then returned as they are; #scores is no longer read). */
  #list: RouteCandidate[] | null = null
  #built = false

  constructor(
    ranks: KnownRank[],
    requestBlocks: number,
    scores: ArrayLike<number>,
    reported: readonly number[] | null,
    routed: readonly number[] | null,
  ) {
    this.#ranks = ranks
    this.#requestBlocks = requestBlocks
    this.#scores = scores
    this.#reported = reported
    this.#routed = routed
  }

  /** Every known rank, ascending (workerId, dpRank), as when the choice was made (built when first read). */
  get candidates(): RouteCandidate[] {
    if (this.#built) return this.#list!
    const n = this.#ranks.length
    const scores = this.#scores
    const out: RouteCandidate[] = new Array(n)
    for (let i = 0; i < n; i++) {
      const r = this.#ranks[i]!
      const v = scores[i]!
      const overlap = this.#packed ? v % PACK_OVERLAP : v
      const reported = this.#reported === null ? 0 : this.#reported[i]!
      const routed = this.#routed === null ? 0 : this.#routed[i]!
      out[i] = {
        workerId: r.workerId,
        dpRank: r.dpRank,
        overlapBlocks: overlap,
        treeSize: this.#packed ? (v - overlap) / PACK_OVERLAP : scores[n + i]!,
        prefillBlocks: Math.max(0, this.#requestBlocks - overlap),
        reportedDecodeBlocks: reported,
        routedBlocks: routed,
        decodeBlocks: reported + routed,
      }
    }
    this.#list = out
    this.#built = true
    return out
  }

  set candidates(v: RouteCandidate[]) {
    this.#list = v
    this.#built = true
  }

  /** The router is about to reuse its scratch: the overlaps and tree sizes become this decision's own. */
  keep(): void {
    if (this.#built) return
    const from = this.#scores
    const n = this.#ranks.length
    // one number per rank, tree size × 2^21 + overlap, exact below 2^53; else the two columns as they are
    const own: number[] = new Array(n)
    for (let i = 0; i < n; i++) {
      const overlap = from[i]!
      const tree = from[n + i]!
      if (overlap >= PACK_OVERLAP || tree >= PACK_TREE) {
        const both: number[] = new Array(2 * n)
        for (let j = 0; j < both.length; j++) both[j] = from[j]!
        this.#scores = both
        return
      }
      own[i] = tree * PACK_OVERLAP + overlap
    }
    this.#scores = own
    this.#packed = true
  }
}

/** The data kind of a RouterEvent's JSON. */
function jsonKind(ev: Buffer): EventKind {
  const at = ev.indexOf('"data":')
  if (at >= 0) {
    const c = ev.toString('latin1', at + 7, at + 16)
    if (c.startsWith('{"removed"')) return 'removed'
    if (c.startsWith('"cleared"')) return 'cleared'
  }
  return 'stored'
}

/** worker_id and dp_rank of a RouterEvent's JSON (exact), or null. */
function jsonHead(b: Uint8Array): { workerId: bigint; dpRank: number } | null {
  const s = Buffer.from(b.buffer, b.byteOffset, b.byteLength)
  const w = /^\{"worker_id":(\d{1,20}),/.exec(s.toString('latin1', 0, 40))
  const r = /"dp_rank":(\d{1,10})\}\}$/.exec(s.toString('latin1', Math.max(0, s.length - 40)))
  if (!w || !r) return null
  return { workerId: BigInt(w[1]!), dpRank: Number(r[1]) }
}

function engineArg(v: unknown, name: string): RouterEngine {
  if (typeof v !== 'object' || v === null) throw new TypeError(`${name} must be an object, got ${describe(v)}`)
  const e = v as RouterEngine
  if (typeof e.endpoint !== 'string') throw new TypeError(`${name}.endpoint must be a string, got ${describe(e.endpoint)}`)
  if (e.replayEndpoint !== undefined && typeof e.replayEndpoint !== 'string')
    throw new TypeError(`${name}.replayEndpoint must be a string, got ${describe(e.replayEndpoint)}`)
  return {
    workerId: u64(`${name}.workerId`, e.workerId),
    endpoint: e.endpoint,
    replayEndpoint: e.replayEndpoint,
    dpRanks: e.dpRanks === undefined ? undefined : positiveInt(`${name}.dpRanks`, e.dpRanks, 1024),
    ranks: ranksArg(e, name),
    topic: e.topic,
  }
}

function ranksArg(e: RouterEngine, name: string): number[] | undefined {
  if (e.ranks === undefined) return undefined
  if (e.dpRanks !== undefined) throw new TypeError(`${name}: ranks and dpRanks exclude each other`)
  if (!Array.isArray(e.ranks) || e.ranks.length === 0) throw new TypeError(`${name}.ranks must be a non-empty array of dp ranks`)
  const out = e.ranks.map((r, i) => intInRange(`${name}.ranks[${i}]`, r, 0, 0xffff_ffff))
  if (new Set(out).size !== out.length) throw new RangeError(`${name}.ranks must not repeat a rank`)
  return out
}

function sourceArg(v: unknown): RouterSource {
  if (typeof v !== 'object' || v === null) throw new TypeError(`source must be an object, got ${describe(v)}`)
  const s = v as RouterSource
  switch (s.kind) {
    case 'event-plane':
      return { kind: s.kind, namespace: checkName('source.namespace', s.namespace), component: checkName('source.component', s.component) }
    case 'jetstream': {
      if (s.durable !== undefined && (typeof s.durable !== 'string' || !/^[A-Za-z0-9_-]+$/.test(s.durable)))
        throw new TypeError(`source.durable must be a non-empty string of letters, digits, '_' or '-', got ${describe(s.durable)}`)
      return {
        kind: s.kind,
        namespace: checkName('source.namespace', s.namespace),
        component: checkName('source.component', s.component),
        durable: s.durable,
      }
    }
    case 'engines': {
      if (!Array.isArray(s.engines)) throw new TypeError(`source.engines must be an array, got ${describe(s.engines)}`)
      const engines = s.engines.map((e, i) => engineArg(e, `source.engines[${i}]`))
      if (new Set(engines.map((e) => e.workerId)).size !== engines.length) throw new RangeError('source.engines must not repeat a workerId')
      return { kind: 'engines', engines }
    }
    case 'dynamo-1.4': {
      for (const k of ['namespace', 'component', 'endpoint'] as const)
        if (typeof s[k] !== 'string' || s[k].length === 0)
          throw new TypeError(`source.${k} must be a non-empty string, got ${describe(s[k])}`)
      if (s.discovery !== undefined && (typeof s.discovery !== 'object' || s.discovery === null))
        throw new TypeError(`source.discovery must be an object of discovery options, got ${describe(s.discovery)}`)
      const pollMs = s.pollMs === undefined ? undefined : positiveInt('source.pollMs', s.pollMs, 3_600_000)
      return { kind: s.kind, namespace: s.namespace, component: s.component, endpoint: s.endpoint, discovery: s.discovery, pollMs }
    }
    case 'manual':
      return { kind: s.kind }
    default:
      throw new RangeError(
        `source.kind must be 'event-plane', 'engines', 'jetstream', 'dynamo-1.4' or 'manual', got ${describe((s as { kind?: unknown }).kind)}`,
      )
  }
}
