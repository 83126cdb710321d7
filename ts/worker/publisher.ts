// KvEventPublisher: engine batches (or manual calls) -> Ingestor -> bounded queue -> NATS (SPEC 5, 8).
// The Ingestor assigns every event its id and encodes it in the native call; this file only moves the
// payloads to a sink, applies backpressure and owns the connection's lifecycle.
import { randomBytes } from 'node:crypto'
import { checkName, describe, positiveInt, u64 } from '../util/args.js'
import {
  Ingestor,
  REJECT_REASONS,
  jetstreamStreamName,
  jetstreamSubject,
  kvEventsSubject,
  type IngestMode,
  type IngestResult,
  type LocalIndexer,
  type StoredArgs,
} from '../core/api.js'
import type { CounterName, RejectReason } from '../core/binding.js'
import { loggerOption, RateLimitedLog, type Logger } from '../util/log.js'
import { openNats, type NatsConnection, type NatsOption } from '../transport/nats.js'
import { type DiscoveryBackend, type DiscoveryOptions, openDiscovery, resolveDiscoveryConfig } from '../transport/discovery/index.js'
import {
  ConfigError,
  DEFAULT_ENDPOINT,
  DEFAULT_REGISTER_TIMEOUT_MS,
  DEFAULT_ZMQ_SETTLE_MS,
  type EventPlaneKind,
  resolveAdvertiseHost,
  resolveBindHost,
  resolveEventPlane,
  resolveMs,
  resolveName14,
  resolvePort,
  resolveWorkerId,
} from '../transport/dynamo14-config.js'
import { endpointSubject } from '../core/api.js'
import { Dynamo14Sink, type DiscoveryStats } from '../transport/sinks/dynamo14.js'
import { EventPlaneSink } from '../transport/sinks/event-plane.js'
import { JetStreamSink } from '../transport/sinks/jetstream.js'
import type { Sink, SinkStats } from '../transport/sinks/types.js'
import { ZmqSource, type ZmqSourceCounter, type ZmqSourceOptions } from '../transport/sources/zmq.js'
import { RecoveryEndpoint } from '../router/recovery-endpoint.js'

import type { Env } from '../util/env.js'

/** A call waiting to be accepted. */
interface Waiter {
  run: () => void
  reject: (err: Error) => void
}

/** How long one turn of the event loop admits waiting calls before yielding. */
const ADMIT_SLICE_MS = 5

/** Which Dynamo router wire to publish: Dynamo 1.0–1.3's (SPEC 5) or Dynamo 1.4–1.6's (SPEC 5b). */
export type DynamoWire = 'dynamo-1.0' | 'dynamo-1.4'

export interface KvEventPublisherOptions {
  /**
   * Dynamo namespace and component of the workers. `dynamo-1.0`: SPEC 5 naming rules; `dynamo-1.4`: any
   * non-empty string (subjects and discovery keys percent-encode them).
   */
  namespace: string
  component: string
  /** Tokens per KV block; must match the engine's. */
  kvBlockSize: number
  /**
   * The id routers know this worker by (u64). `dynamo-1.0`: default a random 63-bit id. `dynamo-1.4`:
   * required, the Dynamo instance id of the worker's serving endpoint (a bigint or a decimal string), else
   * `$DYNAMO_KV_WORKER_ID`; a 1.4 router ignores the events of a worker it does not serve.
   */
  workerId?: bigint | string
  /**
   * `dynamo-1.0` (default; SPEC 5, unchanged) or `dynamo-1.4`: the wire a Dynamo 1.4–1.6 router consumes
   * (SPEC 5b): batched envelopes per dp rank, each rank registered in Dynamo's discovery store before its
   * first event, sent on a direct ZeroMQ socket per rank (default) or on NATS.
   */
  wire?: DynamoWire
  /** `dynamo-1.4`: the serving endpoint the worker's KV state belongs to (default `generate`, as Dynamo). */
  endpoint?: string
  /** `dynamo-1.4`: `zmq` (direct ZeroMQ, default) or `nats`. Default `$DYN_EVENT_PLANE`, else `zmq`. */
  eventPlane?: EventPlaneKind
  /**
   * `dynamo-1.4`, ZeroMQ: the address written into the EventChannel records, which routers connect to.
   * Default `$DYN_EVENT_PLANE_HOST` (an IP address or an interface name), else this host's first
   * non-internal IPv4 address.
   */
  eventPlaneHost?: string
  /** `dynamo-1.4`, ZeroMQ: the address the sockets bind (default `0.0.0.0`, as Dynamo). */
  zmqBindHost?: string
  /** `dynamo-1.4`, ZeroMQ: dp rank r binds port zmqPort + r (default: a free port per rank). */
  zmqPort?: number
  /**
   * `dynamo-1.4`, ZeroMQ: after a rank's records are written, its events wait until a first router has
   * subscribed to its socket, for at most this long (ms, default 1000; 0: no wait). Frames sent before a
   * router connected are lost (SPEC 5b).
   */
  zmqSettleMs?: number
  /** `dynamo-1.4`: the discovery store (default: Dynamo's variables, SPEC 5b "Discovery"). */
  discovery?: DiscoveryOptions
  /** `dynamo-1.4`: bound on writing one rank's records (ms, default 30,000); its held events are then dropped, counted. */
  registerTimeoutMs?: number
  /** `event-plane` (default: core NATS, msgpack envelopes) or `jetstream` (durable stream, JSON; `dynamo-1.0` only). */
  mode?: IngestMode
  /** Keep a local indexer with per-rank replay buffers; default on in event-plane mode, off in JetStream mode. */
  localIndexer?: boolean | { bufferSize?: number }
  /** How to reach NATS (default: the environment of SPEC 5), or a connection the caller owns. */
  nats?: NatsOption
  /** A pino-compatible logger (default: pino on stderr). */
  logger?: Logger
  /** Events accepted but not yet confirmed before ingest() and the publish methods wait (default 10,000). */
  maxPending?: number
  /**
   * Calls that may wait to be accepted (FIFO) while maxPending is reached (default 10,000); a call beyond
   * this rejects at once with an error naming this option.
   */
  maxWaiting?: number
  /** Clock for the envelopes' `published_at` (unix ms; default Date.now). */
  now?: () => number
  /** At most this many distinct dp ranks (default 64). */
  maxDpRanks?: number
  /** Exactly these dp ranks (overrides maxDpRanks). */
  dpRanks?: number[]
  /** JetStream mode only. */
  jetstream?: {
    /** Stream max age in seconds when this publisher creates the stream (default $DYN_NATS_STREAM_MAX_AGE, else 3600). */
    maxAgeSeconds?: number
    /** Events sent and not yet examined (default 1024). */
    window?: number
    /** Ack timeout before a retry (ms, default 5000). */
    ackTimeoutMs?: number
    /** Message-id epoch (default random per publisher; give the same one only to deduplicate on purpose). */
    epoch?: string
  }
  /** Event-plane mode only: bytes buffered by the client while disconnected before events are dropped (default 8 MiB). */
  reconnectBufferBytes?: number
  /**
   * How long close() may take (ms, default 10,000): waiting calls are accepted as room frees until then,
   * the rest are rejected (counted in droppedAtClose), and unconfirmed events are counted undelivered.
   */
  closeTimeoutMs?: number
  /**
   * Listen to the engine's ZMQ KV-event stream (SPEC 2.1) and ingest every batch: `endpoint` or
   * `endpoints`, `replayEndpoint`, `dpRanks` (port + rank), `topic`, `bind`, `onLoss`... (ZmqSourceOptions;
   * its logger defaults to the publisher's). close() stops it first.
   */
  zmq?: Omit<ZmqSourceOptions, 'createSubscriber'>
  /**
   * Serve this package's router recovery queries (SPEC 7) from the local indexer, over NATS
   * request/reply on this connection. Default false; needs the local indexer.
   */
  recoveryEndpoint?: boolean
}

export interface PublisherStats {
  /** Emitted router events by type. */
  emitted: { stored: bigint; removed: bigint; cleared: bigint }
  /** Rejected engine events (or batches, for malformed/dp_rank) by reason. */
  rejected: Record<RejectReason, bigint>
  /** All Ingestor counters (COUNTER_NAMES). */
  ingest: Record<CounterName, bigint>
  /**
   * Sink counters: published, publishErrors, undelivered (and undeliveredByReason), retries, duplicates,
   * republished, repairs, queueDepth (SPEC 8).
   */
  sink: SinkStats
  /** Calls waiting for room in the queue. */
  waiting: number
  /** Calls rejected because maxWaiting calls were already waiting. */
  waitingRejected: number
  /** Calls still waiting when close() ran out of closeTimeoutMs: rejected, their events never emitted. */
  droppedAtClose: number
  /** The ZMQ source's counters (null without the zmq option). */
  source: Record<ZmqSourceCounter, bigint> | null
  /** `dynamo-1.4`: registration of the ranks in discovery, and events held until then (null for `dynamo-1.0`). */
  discovery: DiscoveryStats | null
}

/** Where one dp rank's events go on the `dynamo-1.4` wire. */
export interface EventChannelInfo {
  dpRank: number
  publisherId: bigint
  /** The advertised ZeroMQ endpoint (`tcp://host:port`), or the NATS subject. */
  eventChannel: string
  /** Whether its records are written and its events flow. */
  registered: boolean
}

/** Options that apply only to the `dynamo-1.4` wire. */
const WIRE14_OPTIONS = [
  'endpoint',
  'eventPlane',
  'eventPlaneHost',
  'zmqBindHost',
  'zmqPort',
  'zmqSettleMs',
  'discovery',
  'registerTimeoutMs',
]

const KNOWN_OPTIONS = new Set([
  'namespace',
  'component',
  'kvBlockSize',
  'workerId',
  'mode',
  'localIndexer',
  'nats',
  'logger',
  'maxPending',
  'maxWaiting',
  'now',
  'maxDpRanks',
  'dpRanks',
  'jetstream',
  'reconnectBufferBytes',
  'closeTimeoutMs',
  'zmq',
  'wire',
  ...WIRE14_OPTIONS,
  'recoveryEndpoint',
])

/** A random worker id below 2^63 (Dynamo's instance ids are i64-safe). */
function randomWorkerId(): bigint {
  return randomBytes(8).readBigUInt64BE() >> 1n
}

function maxAgeFromEnv(env: Env): number {
  const v = env.DYN_NATS_STREAM_MAX_AGE
  if (v === undefined || v === '') return 3600
  const n = Number(v)
  if (!/^\d+$/.test(v.trim()) || !Number.isSafeInteger(n) || n < 1)
    throw new RangeError(`DYN_NATS_STREAM_MAX_AGE must be a positive number of seconds, got ${JSON.stringify(v)}`)
  return n
}

export class KvEventPublisher {
  readonly workerId: bigint
  readonly namespace: string
  readonly component: string
  readonly mode: IngestMode
  /** The router wire this publisher speaks. */
  readonly wire: DynamoWire
  /** `dynamo-1.4`: the serving endpoint; null for `dynamo-1.0`. */
  readonly endpoint: string | null
  /** `dynamo-1.4`: `zmq` or `nats`; `dynamo-1.0` publishes on NATS (`nats`). */
  readonly eventPlane: EventPlaneKind
  /**
   * Core NATS subject (event plane) or JetStream publish subject. `dynamo-1.4`: the endpoint-scoped
   * `kv-events` subject (where the events go with the NATS event plane; ZeroMQ frames carry the bare topic).
   */
  readonly subject: string
  /** The JetStream stream (JetStream mode), else null. */
  readonly streamName: string | null
  /** The local indexer fed by every emitted event, or null. */
  readonly localIndexer: LocalIndexer | null
  readonly #ingestor: Ingestor
  readonly #sink: Sink
  readonly #nc: NatsConnection | null
  readonly #ownsConnection: boolean
  readonly #maxPending: number
  readonly #maxWaiting: number
  readonly #now: () => number
  readonly #closeTimeoutMs: number
  readonly #logger: Logger
  /** Calls waiting to be accepted, oldest first from #waitHead (a queue without O(n) shifts). */
  #waiters: (Waiter | undefined)[] = []
  #waitHead = 0
  #admitScheduled = false
  #waitingRejected = 0
  #droppedAtClose = 0
  /** Set once close() ran out of closeTimeoutMs: no call is accepted any more. */
  #closeExpired = false
  /** Set by close() while it waits for the waiting calls to be admitted or rejected. */
  #waitersGone: (() => void) | null = null
  #closing: Promise<void> | null = null
  #source: ZmqSource | null = null
  /** While close() stops the source, its calls still get in. */
  #sourceOpen = false
  /** The recovery endpoint (the recoveryEndpoint option), else null. */
  #recovery: RecoveryEndpoint | null = null

  private constructor(init: {
    options: KvEventPublisherOptions
    ingestor: Ingestor
    sink: Sink
    nc: NatsConnection | null
    ownsConnection: boolean
    wire: DynamoWire
    endpoint: string | null
    eventPlane: EventPlaneKind
    subject: string
    streamName: string | null
    maxPending: number
    maxWaiting: number
    now: () => number
    closeTimeoutMs: number
    logger: Logger
  }) {
    this.workerId = init.ingestor.workerId
    this.namespace = init.options.namespace
    this.component = init.options.component
    this.mode = init.ingestor.mode
    this.wire = init.wire
    this.endpoint = init.endpoint
    this.eventPlane = init.eventPlane
    this.subject = init.subject
    this.streamName = init.streamName
    this.#ingestor = init.ingestor
    this.localIndexer = init.ingestor.localIndexer
    this.#sink = init.sink
    this.#nc = init.nc
    this.#ownsConnection = init.ownsConnection
    this.#maxPending = init.maxPending
    this.#maxWaiting = init.maxWaiting
    this.#now = init.now
    this.#closeTimeoutMs = init.closeTimeoutMs
    this.#logger = init.logger
    this.#sink.onProgress = () => this.#admitWaiting()
  }

  /**
   * Validates every option (errors name the option), connects, and in JetStream mode ensures the stream.
   * `env` defaults to process.env (tests pass their own).
   */
  static async create(options: KvEventPublisherOptions, env: Env = process.env): Promise<KvEventPublisher> {
    if (typeof options !== 'object' || options === null)
      throw new TypeError(`KvEventPublisher options must be an object, got ${describe(options)}`)
    for (const k of Object.keys(options)) if (!KNOWN_OPTIONS.has(k)) throw new TypeError(`${k} is not a KvEventPublisher option`)
    const wire = options.wire ?? 'dynamo-1.0'
    if (wire !== 'dynamo-1.0' && wire !== 'dynamo-1.4')
      throw new RangeError(`wire must be 'dynamo-1.0' or 'dynamo-1.4', got ${describe(wire)}`)
    if (wire === 'dynamo-1.4') return KvEventPublisher.#create14(options, env)
    for (const k of WIRE14_OPTIONS)
      if ((options as unknown as Record<string, unknown>)[k] !== undefined) throw new TypeError(`${k} applies to wire: 'dynamo-1.4' only`)
    const namespace = checkName('namespace', options.namespace)
    const component = checkName('component', options.component)
    const logger = loggerOption(options.logger)
    const mode = options.mode ?? 'event-plane'
    if (mode !== 'event-plane' && mode !== 'jetstream')
      throw new RangeError(`mode must be 'event-plane' or 'jetstream', got ${describe(mode)}`)
    const workerId = options.workerId === undefined ? randomWorkerId() : u64('workerId', options.workerId)
    const maxPending = positiveInt('maxPending', options.maxPending ?? 10_000, 1 << 24)
    const maxWaiting = positiveInt('maxWaiting', options.maxWaiting ?? 10_000, 1 << 24)
    const closeTimeoutMs = positiveInt('closeTimeoutMs', options.closeTimeoutMs ?? 10_000)
    const now = options.now ?? Date.now
    if (typeof now !== 'function') throw new TypeError(`now must be a function returning unix ms, got ${describe(now)}`)
    if (mode === 'event-plane' && options.jetstream !== undefined) throw new TypeError("jetstream options need mode: 'jetstream'")
    if (mode === 'jetstream' && options.reconnectBufferBytes !== undefined)
      throw new TypeError("reconnectBufferBytes applies to mode: 'event-plane' only")
    const reconnectBufferBytes =
      options.reconnectBufferBytes === undefined ? undefined : positiveInt('reconnectBufferBytes', options.reconnectBufferBytes, 2 ** 31)
    const js = options.jetstream ?? {}
    if (typeof js !== 'object' || js === null) throw new TypeError('jetstream must be an object')
    const maxAgeSeconds =
      js.maxAgeSeconds === undefined
        ? mode === 'jetstream'
          ? maxAgeFromEnv(env)
          : 3600
        : positiveInt('jetstream.maxAgeSeconds', js.maxAgeSeconds, 2 ** 31)
    const window = js.window === undefined ? undefined : positiveInt('jetstream.window', js.window, 1 << 16)
    const ackTimeoutMs = js.ackTimeoutMs === undefined ? undefined : positiveInt('jetstream.ackTimeoutMs', js.ackTimeoutMs)
    if (js.epoch !== undefined && (typeof js.epoch !== 'string' || !/^[A-Za-z0-9_-]+$/.test(js.epoch)))
      throw new TypeError(`jetstream.epoch must be a non-empty string of letters, digits, '_' or '-', got ${describe(js.epoch)}`)

    // The Ingestor checks kvBlockSize, maxDpRanks, dpRanks and localIndexer, naming the option.
    const ingestor = new Ingestor({
      kvBlockSize: options.kvBlockSize,
      workerId,
      mode,
      maxDpRanks: options.maxDpRanks,
      dpRanks: options.dpRanks,
      localIndexer: options.localIndexer ?? mode === 'event-plane',
    })

    if (env.DYN_EVENT_PLANE !== undefined && env.DYN_EVENT_PLANE !== '' && env.DYN_EVENT_PLANE.toLowerCase() !== 'nats')
      logger.warn(
        { DYN_EVENT_PLANE: env.DYN_EVENT_PLANE },
        "DYN_EVENT_PLANE is not nats: Dynamo routers in this deployment may not listen on NATS, where this package publishes (Dynamo 1.4+ routers need wire: 'dynamo-1.4')",
      )

    const streamName = mode === 'jetstream' ? jetstreamStreamName(namespace, component) : null
    if (streamName !== null && /[^a-z0-9-]/.test(namespace + component))
      logger.warn(
        { namespace, component, stream: streamName },
        'this JetStream stream name is shared by every namespace/component that maps to it (case, "_", "." and other characters are folded)',
      )

    const { nc, owned: ownsConnection } = await openNats(options.nats, env)
    const log = new RateLimitedLog(logger)
    let sink: Sink
    let subject: string
    try {
      if (streamName !== null) {
        const jsSink = await JetStreamSink.create(nc, streamName, maxAgeSeconds, workerId, log, { window, ackTimeoutMs, epoch: js.epoch })
        sink = jsSink
        subject = jetstreamSubject(streamName)
      } else {
        subject = kvEventsSubject(namespace, component)
        sink = new EventPlaneSink(nc, subject, log, { reconnectBufferBytes })
      }
    } catch (err) {
      if (ownsConnection) await nc.close().catch(() => {})
      throw err
    }
    const publisher = new KvEventPublisher({
      options,
      ingestor,
      sink,
      nc,
      ownsConnection,
      subject,
      streamName,
      maxPending,
      maxWaiting,
      now,
      closeTimeoutMs,
      logger,
      wire,
      endpoint: null,
      eventPlane: 'nats',
    })
    if (options.recoveryEndpoint !== undefined && typeof options.recoveryEndpoint !== 'boolean') {
      await publisher.close()
      throw new TypeError(`recoveryEndpoint must be a boolean, got ${describe(options.recoveryEndpoint)}`)
    }
    if (options.recoveryEndpoint === true) {
      if (publisher.localIndexer === null) {
        await publisher.close()
        throw new TypeError('recoveryEndpoint needs the local indexer (localIndexer must not be false)')
      }
      publisher.#recovery = RecoveryEndpoint.start({
        nats: nc,
        namespace,
        component,
        workerId,
        localIndexer: publisher.localIndexer,
        logger,
      })
    }
    await KvEventPublisher.#attachSource(publisher, options, logger)
    logger.info(
      {
        workerId: workerId.toString(),
        mode,
        subject,
        localIndexer: ingestor.localIndexer !== null,
        zmq: publisher.#source?.endpoints ?? null,
      },
      'KV event publisher ready',
    )
    return publisher
  }

  /** The ZMQ source of the engine's events, when the zmq option is given. */
  static async #attachSource(publisher: KvEventPublisher, options: KvEventPublisherOptions, logger: Logger): Promise<void> {
    if (options.zmq !== undefined) {
      if (typeof options.zmq !== 'object' || options.zmq === null) {
        await publisher.close()
        throw new TypeError(`zmq must be an object of ZMQ source options, got ${describe(options.zmq)}`)
      }
      try {
        publisher.#source = await ZmqSource.create({ logger, ...options.zmq }, publisher.#sourceConsumer())
      } catch (err) {
        await publisher.close()
        if (err instanceof Error && !/^zmq\./.test(err.message)) err.message = `zmq.${err.message}`
        throw err
      }
      publisher.#source.on('stopped', (why) => {
        if (why.reason !== 'closed')
          logger.error(
            { ...why, error: String((why as { error?: unknown }).error) },
            'the ZMQ source stopped: no more engine events will be published',
          )
      })
    }
  }

  /** create() for wire 'dynamo-1.4' (SPEC 5b): Dynamo 1.6.1's configuration, discovery, then the event plane. */
  static async #create14(options: KvEventPublisherOptions, env: Env): Promise<KvEventPublisher> {
    const namespace = resolveName14('namespace', options.namespace)
    const component = resolveName14('component', options.component)
    const endpoint = resolveName14('endpoint', options.endpoint ?? DEFAULT_ENDPOINT)
    const logger = loggerOption(options.logger)
    const mode = options.mode ?? 'event-plane'
    if (mode === 'jetstream')
      throw new ConfigError(
        "mode: 'jetstream' cannot be used with wire: 'dynamo-1.4': Dynamo 1.4+ routers read no JetStream stream; " +
          "leave mode unset (the event plane) or use wire: 'dynamo-1.0'",
      )
    if (mode !== 'event-plane') throw new RangeError(`mode must be 'event-plane' or 'jetstream', got ${describe(mode)}`)
    if (options.jetstream !== undefined) throw new TypeError("jetstream options need mode: 'jetstream' (wire: 'dynamo-1.0' only)")
    if (options.recoveryEndpoint !== undefined && options.recoveryEndpoint !== false)
      throw new TypeError(
        "recoveryEndpoint serves this package's NATS recovery protocol of wire 'dynamo-1.0'; a 'dynamo-1.4' source is live-only",
      )
    const workerId = resolveWorkerId(options.workerId, env)
    const eventPlane = resolveEventPlane(options.eventPlane, env)
    if (eventPlane === 'zmq') {
      if (options.nats !== undefined)
        throw new TypeError("nats applies to eventPlane 'nats' (DYN_EVENT_PLANE=nats); this publisher uses direct ZeroMQ")
      if (options.reconnectBufferBytes !== undefined) throw new TypeError("reconnectBufferBytes applies to eventPlane 'nats' only")
    } else {
      for (const k of ['eventPlaneHost', 'zmqBindHost', 'zmqPort', 'zmqSettleMs'] as const)
        if (options[k] !== undefined) throw new TypeError(`${k} applies to eventPlane 'zmq' only (DYN_EVENT_PLANE is nats)`)
    }
    const advertiseHost = eventPlane === 'zmq' ? resolveAdvertiseHost(options.eventPlaneHost, env) : ''
    const bindHost = resolveBindHost(options.zmqBindHost)
    const basePort = resolvePort(options.zmqPort)
    const settleMs = resolveMs(options.zmqSettleMs, 'zmqSettleMs', DEFAULT_ZMQ_SETTLE_MS, 0)
    const registerTimeoutMs = resolveMs(options.registerTimeoutMs, 'registerTimeoutMs', DEFAULT_REGISTER_TIMEOUT_MS, 1)
    if (options.discovery !== undefined && (typeof options.discovery !== 'object' || options.discovery === null))
      throw new TypeError(`discovery must be an object of discovery options, got ${describe(options.discovery)}`)
    // a bad discovery configuration fails here, before anything is bound or connected
    resolveDiscoveryConfig(options.discovery ?? {}, env)
    const maxPending = positiveInt('maxPending', options.maxPending ?? 10_000, 1 << 24)
    const maxWaiting = positiveInt('maxWaiting', options.maxWaiting ?? 10_000, 1 << 24)
    const closeTimeoutMs = positiveInt('closeTimeoutMs', options.closeTimeoutMs ?? 10_000)
    const reconnectBufferBytes =
      options.reconnectBufferBytes === undefined ? undefined : positiveInt('reconnectBufferBytes', options.reconnectBufferBytes, 2 ** 31)
    const now = options.now ?? Date.now
    if (typeof now !== 'function') throw new TypeError(`now must be a function returning unix ms, got ${describe(now)}`)

    const ingestor = new Ingestor({
      kvBlockSize: options.kvBlockSize,
      workerId,
      mode,
      wire: 'dynamo-1.4',
      maxDpRanks: options.maxDpRanks,
      dpRanks: options.dpRanks,
      localIndexer: options.localIndexer ?? true,
    })
    const subject = endpointSubject(namespace, component, endpoint, 'kv-events')

    const log = new RateLimitedLog(logger)
    const discovery: DiscoveryBackend = await openDiscovery(
      {
        ...options.discovery,
        onError: (err) =>
          log.log('error', 'discovery', { err: err.message }, 'discovery store error: routers may stop seeing this publisher'),
        onRetry: (message) => logger.warn({ component: 'discovery' }, message),
      },
      env,
    )
    let nc: NatsConnection | null = null
    let ownsConnection = false
    if (eventPlane === 'nats') {
      try {
        const opened = await openNats(options.nats, env)
        nc = opened.nc
        ownsConnection = opened.owned
      } catch (err) {
        await discovery.close()
        throw err
      }
    }
    const sink = new Dynamo14Sink({
      namespace,
      component,
      endpoint,
      workerId,
      publisherId: (dpRank) => ingestor.publisherId(dpRank),
      discovery,
      transport:
        eventPlane === 'nats'
          ? { kind: 'nats', nc: nc!, subject, reconnectBufferBytes }
          : { kind: 'zmq', bindHost, basePort, advertiseHost, settleMs },
      registerTimeoutMs,
      log,
    })
    const publisher = new KvEventPublisher({
      options,
      ingestor,
      sink,
      nc,
      ownsConnection,
      subject,
      streamName: null,
      maxPending,
      maxWaiting,
      now,
      closeTimeoutMs,
      logger,
      wire: 'dynamo-1.4',
      endpoint,
      eventPlane,
    })
    await KvEventPublisher.#attachSource(publisher, options, logger)
    logger.info(
      {
        wire: 'dynamo-1.4',
        workerId: workerId.toString(),
        namespace,
        component,
        endpoint,
        eventPlane,
        subject: eventPlane === 'nats' ? subject : null,
        advertiseHost: eventPlane === 'zmq' ? advertiseHost : null,
        discovery: discovery.kind,
        localIndexer: ingestor.localIndexer !== null,
        zmq: publisher.#source?.endpoints ?? null,
      },
      'KV event publisher ready',
    )
    return publisher
  }

  /**
   * `dynamo-1.4`: each dp rank seen so far, with its publisher id and its event channel (the advertised
   * ZeroMQ endpoint or the NATS subject). Empty for `dynamo-1.0`.
   */
  eventChannels(): EventChannelInfo[] {
    return this.#sink instanceof Dynamo14Sink ? this.#sink.channels() : []
  }

  /** The ZMQ source (null without the zmq option): its `stopped` event tells why it stopped. */
  get source(): ZmqSource | null {
    return this.#source
  }

  /** What the ZMQ source feeds: ingest, and the reset rule for a rank the engine restarted or lost. */
  #sourceConsumer() {
    return {
      ingest: (payload: Uint8Array) => this.#accept(() => this.#ingestor.ingest(payload, this.#clock()), true),
      // a rank outside dpRanks had all its batches rejected `dp_rank`: there is nothing to reset
      resetRank: (dpRank: number) =>
        this.#ingestor.allowsRank(dpRank) ? this.#accept(() => this.#ingestor.cleared(dpRank, this.#clock()), true) : Promise.resolve(null),
    }
  }

  /**
   * Converts one raw engine batch and queues its events. Resolves once accepted (waits while the queue is
   * full; never rejects for fullness). Bad bytes never throw: they are counted in the result's `rejected`.
   */
  ingest(payload: Uint8Array): Promise<IngestResult> {
    return this.#accept(() => this.#ingestor.ingest(payload, this.#clock()))
  }

  /** Manual API (engines without ZMQ events): the Ingestor's stored(), queued like ingest(). */
  publishStored(args: StoredArgs): Promise<IngestResult> {
    return this.#accept(() => this.#ingestor.stored(args, this.#clock()))
  }

  publishRemoved(blockHashes: BigUint64Array | bigint[], dpRank?: number): Promise<IngestResult> {
    return this.#accept(() => this.#ingestor.removed(blockHashes, dpRank, this.#clock()))
  }

  /** The rank's reset (SPEC 3): `cleared`, or removes of its live blocks when other ranks exist. */
  publishCleared(dpRank?: number): Promise<IngestResult> {
    return this.#accept(() => this.#ingestor.cleared(dpRank, this.#clock()))
  }

  /** The id the next event of this rank will get (a peek). */
  nextEventId(dpRank = 0): bigint {
    return this.#ingestor.nextEventId(dpRank)
  }

  stats(): PublisherStats {
    const ingest = this.#ingestor.counters()
    const rejected = {} as Record<RejectReason, bigint>
    for (const r of REJECT_REASONS) rejected[r] = ingest[`rejected_${r}` as CounterName]
    return {
      emitted: { stored: ingest.emitted_stored, removed: ingest.emitted_removed, cleared: ingest.emitted_cleared },
      rejected,
      ingest,
      sink: this.#sink.stats(),
      waiting: this.#waiting,
      waitingRejected: this.#waitingRejected,
      droppedAtClose: this.#droppedAtClose,
      source: this.#source?.stats() ?? null,
      discovery: this.#sink instanceof Dynamo14Sink ? this.#sink.discoveryStats() : null,
    }
  }

  /** Resolves when every accepted event is confirmed (flushed, or acked by the stream); false on timeout. */
  flush(timeoutMs = this.#closeTimeoutMs): Promise<boolean> {
    return this.#sink.flush(timeoutMs)
  }

  /**
   * Idempotent, and done within closeTimeoutMs (plus the time to close the connection):
   * stops the ZMQ source (it finishes the batch in hand), lets waiting calls in as room frees, flushes what
   * was accepted, then closes the connection if it owns it. Calls still waiting when the time runs out are
   * rejected and counted (droppedAtClose); events still unconfirmed are counted by the sink (SPEC 8).
   */
  close(): Promise<void> {
    this.#closing ??= this.#close()
    return this.#closing
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  get closed(): boolean {
    return this.#closing !== null
  }

  async #close(): Promise<void> {
    const deadline = performance.now() + this.#closeTimeoutMs
    // Calls already waiting were made before close(): they are accepted as room frees, in order, until the
    // deadline; then the rest are rejected. Admitting them all at once past maxPending could take longer
    // than closeTimeoutMs (each runs the Ingestor) and hold every one of their events in memory. The
    // deadline also covers the source's call in flight, which may be waiting for room.
    const timer = setTimeout(() => this.#dropWaiting(), this.#closeTimeoutMs)
    if (this.#source) {
      // the source's calls are still accepted while it stops, within the bound
      this.#sourceOpen = true
      await this.#source.close()
      this.#sourceOpen = false
    }
    if (this.#waiting > 0) {
      const gone = new Promise<void>((resolve) => {
        this.#waitersGone = resolve
      })
      this.#admitWaiting()
      await gone
    }
    clearTimeout(timer)
    await this.#sink.close(Math.max(0, deadline - performance.now()))
    await this.#recovery?.close()
    if (this.#ownsConnection && this.#nc !== null)
      await this.#nc.close().catch((err: unknown) => this.#logger.warn({ err: String(err) }, 'closing the NATS connection failed'))
    this.#logger.info({ workerId: this.workerId.toString(), ...this.#sink.stats() }, 'KV event publisher closed')
  }

  #clock(): number {
    const t = this.#now()
    if (!Number.isSafeInteger(t) || t < 0)
      throw new RangeError(`now() must return unix ms as a non-negative safe integer, got ${describe(t)}`)
    return t
  }

  get #waiting(): number {
    return this.#waiters.length - this.#waitHead
  }

  /**
   * Runs `work` now if there is room and nobody waits, else after the calls before it (FIFO); rejects at
   * once when maxWaiting calls already wait.
   */
  #accept(work: () => IngestResult, fromSource = false): Promise<IngestResult> {
    if (this.#closing !== null && !(fromSource && this.#sourceOpen && !this.#closeExpired))
      return Promise.reject(new Error('KvEventPublisher is closed'))
    if (this.#waiting === 0 && this.#sink.pending < this.#maxPending) {
      try {
        return Promise.resolve(this.#run(work))
      } catch (err) {
        return Promise.reject(err)
      }
    }
    if (this.#waiting >= this.#maxWaiting) {
      this.#waitingRejected++
      return Promise.reject(
        new Error(
          `KvEventPublisher: ${this.#waiting} calls are already waiting to be accepted (maxWaiting = ${this.#maxWaiting}); ` +
            'await earlier calls before making more, or raise maxWaiting',
        ),
      )
    }
    return new Promise<IngestResult>((resolve, reject) => {
      this.#waiters.push({
        run: () => {
          try {
            resolve(this.#run(work))
          } catch (err) {
            reject(err)
          }
        },
        reject,
      })
    })
  }

  #run(work: () => IngestResult): IngestResult {
    const result = work()
    // the views, not the Buffers of `payloads`: one cheap view per payload, nothing built twice
    if (result.count > 0) this.#sink.send(result.views, result.dpRank!, result.firstEventId!)
    // the core rate-limits its warnings (a few per publisher), so each is logged
    if (result.warnings !== undefined) for (const w of result.warnings) this.#logger.warn({ workerId: this.workerId.toString() }, w)
    return result
  }

  /**
   * Admits waiting calls while there is room. Each runs synchronously and adds to pending before the next
   * one is considered; after ADMIT_SLICE_MS the rest continue on a later turn, so confirmations, sockets
   * and close()'s deadline are served in between.
   */
  #admitWaiting(): void {
    const sliceEnd = performance.now() + ADMIT_SLICE_MS
    let n = 0
    while (this.#waiting > 0 && this.#sink.pending < this.#maxPending) {
      if ((++n & 63) === 0 && performance.now() >= sliceEnd) {
        if (!this.#admitScheduled) {
          this.#admitScheduled = true
          setImmediate(() => {
            this.#admitScheduled = false
            this.#admitWaiting()
          })
        }
        return
      }
      const w = this.#waiters[this.#waitHead]!
      this.#waiters[this.#waitHead++] = undefined
      w.run()
    }
    if (this.#waiting === 0) {
      this.#waiters = []
      this.#waitHead = 0
      this.#waitersGone?.()
    } else if (this.#waitHead >= 1024 && this.#waitHead * 2 >= this.#waiters.length) {
      this.#waiters = this.#waiters.slice(this.#waitHead)
      this.#waitHead = 0
    }
  }

  /** close() ran out of closeTimeoutMs: the calls still waiting are rejected, oldest first. */
  #dropWaiting(): void {
    this.#closeExpired = true
    const left = this.#waiters.slice(this.#waitHead)
    this.#waiters = []
    this.#waitHead = 0
    this.#droppedAtClose += left.length
    if (left.length > 0) {
      this.#logger.warn(
        { dropped: left.length, closeTimeoutMs: this.#closeTimeoutMs },
        'close() ran out of closeTimeoutMs: calls still waiting to be accepted were rejected',
      )
      const err = new Error(
        `KvEventPublisher closed before this call was accepted: closeTimeoutMs (${this.#closeTimeoutMs} ms) ran out with ${left.length} calls waiting`,
      )
      for (const w of left) w!.reject(err)
    }
    this.#waitersGone?.()
  }
}
