// WorkerMetricsPublisher (SPEC 5, "Worker load"): Dynamo's ActiveLoad, in a `kv_metrics` envelope with its
// own sequence, on `namespace.{ns}.kv_metrics`. Per dp rank the latest value wins: a change (re)starts a
// 1 ms timer, and when it fires the value is published unless it equals the last one published for that
// rank. (Dynamo keeps one value for all ranks; here two ranks changing at once each get their message.)
// A rank whose value keeps changing is still published at least every 50 ms.
//
// With wire 'dynamo-1.4' (SPEC 5b): the value is `kv_used_blocks` (active_decode_blocks and
// active_prefill_tokens nil, as a Dynamo 1.6.1 worker publishes), the envelope carries the publisher's own
// random publisher id, and it goes to the endpoint-scoped `kv_metrics` channel: a direct ZeroMQ socket
// (default) or the endpoint-scoped NATS subject, advertised by an EventChannel record written at create().
import { checkName, describe, u32, u64 } from '../util/args.js'
import { encodeActiveLoad, encodeEnvelope, KV_METRICS_TOPIC, kvMetricsSubject } from '../core/api.js'
import { loggerOption, RateLimitedLog, type Logger } from '../util/log.js'
import { openNats, type NatsConnection, type NatsOption } from '../transport/nats.js'
import {
  channelRecord,
  type DiscoveryBackend,
  type DiscoveryOptions,
  openDiscovery,
  randomPublisherId,
  resolveDiscoveryConfig,
} from '../transport/discovery/index.js'
import {
  DEFAULT_ENDPOINT,
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
import { ZmqPubChannel } from '../transport/zmq-pub.js'
import type { DynamoWire } from './publisher.js'

import type { Env } from '../util/env.js'

export interface WorkerMetricsPublisherOptions {
  namespace: string
  /**
   * The worker id (u64), as for the KvEventPublisher. `dynamo-1.4`: the Dynamo instance id of the serving
   * endpoint (a bigint or a decimal string), else `$DYNAMO_KV_WORKER_ID`.
   */
  workerId?: bigint | string
  /** `dynamo-1.0` (default, SPEC 5) or `dynamo-1.4` (SPEC 5b: `kv_used_blocks`, endpoint-scoped). */
  wire?: DynamoWire
  /** `dynamo-1.4`: the worker's component (required) and serving endpoint (default `generate`). */
  component?: string
  endpoint?: string
  /** `dynamo-1.4`: `zmq` (default) or `nats`; default `$DYN_EVENT_PLANE`, else `zmq`. */
  eventPlane?: EventPlaneKind
  /** `dynamo-1.4`, ZeroMQ: advertised address (default `$DYN_EVENT_PLANE_HOST`, else detected), bind address, port. */
  eventPlaneHost?: string
  zmqBindHost?: string
  zmqPort?: number
  /**
   * `dynamo-1.4`, ZeroMQ: values wait (the latest per rank) until a first router subscribed to the socket,
   * for at most this long after create() (ms, default 1000; 0: no wait).
   */
  zmqSettleMs?: number
  /** `dynamo-1.4`: the discovery store (default: Dynamo's variables). */
  discovery?: DiscoveryOptions
  /** `dynamo-1.4`: the publisher id of this publisher's `kv_metrics` channel (default random in 1..=2^53-1). */
  publisherId?: bigint
  /** How to reach NATS (`dynamo-1.0`, or `dynamo-1.4` with the NATS event plane). */
  nats?: NatsOption
  /** Clock for `published_at` (unix ms; default Date.now). */
  now?: () => number
  logger?: Logger
}

export interface MetricsPublisherStats {
  published: number
  publishErrors: number
  /** Values dropped because a later one replaced them within the debounce, or equal to the last published. */
  coalesced: number
}

const DEBOUNCE_MS = 1
const MAX_DELAY_MS = 50

interface RankState {
  latest: bigint
  lastPublished: bigint | null
  timer: NodeJS.Timeout | null
  /** When the pending value first changed, and last changed (performance.now()). */
  since: number
  changed: number
}

const OPTIONS_14 = [
  'component',
  'endpoint',
  'eventPlane',
  'eventPlaneHost',
  'zmqBindHost',
  'zmqPort',
  'zmqSettleMs',
  'discovery',
  'publisherId',
]

/** Where a `dynamo-1.4` metrics publisher sends its envelopes. */
interface Wire14 {
  publisherId: bigint
  channel: ZmqPubChannel | null
  discovery: DiscoveryBackend
  /** The advertised ZeroMQ endpoint, or the NATS subject. */
  eventChannel: string
  /** False until a first router subscribed (or zmqSettleMs passed): values wait, the latest one per rank. */
  ready: boolean
}

export class WorkerMetricsPublisher {
  readonly workerId: bigint
  /** The NATS subject (`dynamo-1.0`; `dynamo-1.4`: the endpoint-scoped `kv_metrics` subject). */
  readonly subject: string
  /** The router wire this publisher speaks. */
  readonly wire: DynamoWire
  readonly #nc: NatsConnection | null
  readonly #ownsConnection: boolean
  readonly #w14: Wire14 | null
  readonly #now: () => number
  readonly #log: RateLimitedLog
  readonly #ranks = new Map<number, RankState>()
  readonly #stats: MetricsPublisherStats = { published: 0, publishErrors: 0, coalesced: 0 }
  #sequence = 0n
  #closing: Promise<void> | null = null

  private constructor(
    workerId: bigint,
    subject: string,
    nc: NatsConnection | null,
    ownsConnection: boolean,
    now: () => number,
    logger: Logger,
    w14: Wire14 | null = null,
  ) {
    this.workerId = workerId
    this.subject = subject
    this.wire = w14 === null ? 'dynamo-1.0' : 'dynamo-1.4'
    this.#w14 = w14
    this.#nc = nc
    this.#ownsConnection = ownsConnection
    this.#now = now
    this.#log = new RateLimitedLog(logger)
  }

  static async create(options: WorkerMetricsPublisherOptions, env: Env = process.env): Promise<WorkerMetricsPublisher> {
    if (typeof options !== 'object' || options === null)
      throw new TypeError(`WorkerMetricsPublisher options must be an object, got ${describe(options)}`)
    for (const k of Object.keys(options))
      if (!['namespace', 'workerId', 'nats', 'now', 'logger', 'wire', ...OPTIONS_14].includes(k))
        throw new TypeError(`${k} is not a WorkerMetricsPublisher option`)
    const wire = options.wire ?? 'dynamo-1.0'
    if (wire === 'dynamo-1.4') return WorkerMetricsPublisher.#create14(options, env)
    if (wire !== 'dynamo-1.0') throw new RangeError(`wire must be 'dynamo-1.0' or 'dynamo-1.4', got ${describe(wire)}`)
    for (const k of OPTIONS_14)
      if ((options as unknown as Record<string, unknown>)[k] !== undefined) throw new TypeError(`${k} applies to wire: 'dynamo-1.4' only`)
    const namespace = checkName('namespace', options.namespace)
    const workerId = u64('workerId', options.workerId)
    const now = options.now ?? Date.now
    if (typeof now !== 'function') throw new TypeError(`now must be a function returning unix ms, got ${describe(now)}`)
    const logger = loggerOption(options.logger)
    const { nc, owned: owns } = await openNats(options.nats, env)
    return new WorkerMetricsPublisher(workerId, kvMetricsSubject(namespace), nc, owns, now, logger)
  }

  static async #create14(options: WorkerMetricsPublisherOptions, env: Env): Promise<WorkerMetricsPublisher> {
    const namespace = resolveName14('namespace', options.namespace)
    const component = resolveName14('component', options.component)
    const endpoint = resolveName14('endpoint', options.endpoint ?? DEFAULT_ENDPOINT)
    const workerId = resolveWorkerId(options.workerId, env)
    const eventPlane = resolveEventPlane(options.eventPlane, env)
    if (eventPlane === 'zmq' && options.nats !== undefined)
      throw new TypeError("nats applies to eventPlane 'nats' (DYN_EVENT_PLANE=nats); this publisher uses direct ZeroMQ")
    const advertiseHost = eventPlane === 'zmq' ? resolveAdvertiseHost(options.eventPlaneHost, env) : ''
    const bindHost = resolveBindHost(options.zmqBindHost)
    const port = resolvePort(options.zmqPort)
    const settleMs = resolveMs(options.zmqSettleMs, 'zmqSettleMs', DEFAULT_ZMQ_SETTLE_MS, 0)
    const publisherId = options.publisherId === undefined ? randomPublisherId() : u64('publisherId', options.publisherId)
    if (publisherId < 1n || publisherId > (1n << 53n) - 1n) throw new RangeError(`publisherId must be within 1..2^53-1, got ${publisherId}`)
    if (options.discovery !== undefined && (typeof options.discovery !== 'object' || options.discovery === null))
      throw new TypeError(`discovery must be an object of discovery options, got ${describe(options.discovery)}`)
    resolveDiscoveryConfig(options.discovery ?? {}, env)
    const now = options.now ?? Date.now
    if (typeof now !== 'function') throw new TypeError(`now must be a function returning unix ms, got ${describe(now)}`)
    const logger = loggerOption(options.logger)
    const log = new RateLimitedLog(logger)
    const subject = endpointSubject(namespace, component, endpoint, KV_METRICS_TOPIC)

    const discovery = await openDiscovery(
      {
        ...options.discovery,
        onError: (err) => log.log('error', 'discovery', { err: err.message }, 'discovery store error'),
        onRetry: (message) => logger.warn({ component: 'discovery' }, message),
      },
      env,
    )
    let nc: NatsConnection | null = null
    let owns = false
    let channel: ZmqPubChannel | null = null
    try {
      if (eventPlane === 'nats') {
        const opened = await openNats(options.nats, env)
        nc = opened.nc
        owns = opened.owned
      } else {
        channel = await ZmqPubChannel.bind({ topic: KV_METRICS_TOPIC, publisherId, bindHost, port: port ?? 0, advertiseHost })
        channel.onError = (err) => log.log('warn', 'metrics-zmq', { err: err.message }, 'publishing worker load failed')
      }
      await discovery.register([
        channelRecord({
          namespace,
          component,
          endpoint,
          topic: KV_METRICS_TOPIC,
          publisherId,
          zmqEndpoint: channel?.advertisedEndpoint ?? null,
        }),
      ])
    } catch (err) {
      await channel?.close(0)
      if (owns) await nc?.close().catch(() => {})
      await discovery.close()
      throw err
    }
    const w14: Wire14 = {
      publisherId,
      channel,
      discovery,
      eventChannel: channel?.advertisedEndpoint ?? subject,
      ready: channel === null || settleMs === 0,
    }
    logger.info(
      { wire: 'dynamo-1.4', workerId: workerId.toString(), publisherId: publisherId.toString(), eventChannel: w14.eventChannel },
      'worker metrics publisher ready',
    )
    const publisher = new WorkerMetricsPublisher(workerId, subject, nc, owns, now, logger, w14)
    if (!w14.ready && channel !== null) {
      let timer: NodeJS.Timeout | undefined
      void Promise.race([channel.subscribed(), new Promise<void>((r) => (timer = setTimeout(r, settleMs)))]).then(() => {
        clearTimeout(timer)
        w14.ready = true
        if (publisher.#closing === null)
          for (const [rank, st] of publisher.#ranks) if (st.timer === null && st.latest !== st.lastPublished) publisher.#fire(rank, st)
      })
    }
    return publisher
  }

  /** `dynamo-1.4`: this publisher's `kv_metrics` publisher id and event channel (endpoint or subject); null for `dynamo-1.0`. */
  get eventChannel(): { publisherId: bigint; eventChannel: string } | null {
    return this.#w14 === null ? null : { publisherId: this.#w14.publisherId, eventChannel: this.#w14.eventChannel }
  }

  /**
   * Reports a rank's load (a count: a bigint, or a non-negative safe integer): `dynamo-1.0` its active
   * decode blocks (`active_decode_blocks`), `dynamo-1.4` the KV blocks in use (`kv_used_blocks`).
   */
  publish(dpRank: number, activeDecodeBlocks: bigint | number): void {
    if (this.#closing !== null) throw new Error('WorkerMetricsPublisher is closed')
    const rank = u32('dpRank', dpRank)
    let value: bigint
    if (typeof activeDecodeBlocks === 'number') {
      if (!Number.isSafeInteger(activeDecodeBlocks) || activeDecodeBlocks < 0)
        throw new RangeError(`activeDecodeBlocks must be a non-negative safe integer or a bigint, got ${activeDecodeBlocks}`)
      value = BigInt(activeDecodeBlocks)
    } else value = u64('activeDecodeBlocks', activeDecodeBlocks)

    const now = performance.now()
    let s = this.#ranks.get(rank)
    if (!s) {
      s = { latest: value, lastPublished: null, timer: null, since: now, changed: now }
      this.#ranks.set(rank, s)
    } else if (s.timer !== null) {
      if (s.latest === value) return
      this.#stats.coalesced++
    } else s.since = now
    s.latest = value
    s.changed = now
    // One timer per pending value: a change only moves `changed`, and the timer, when it fires, waits
    // out the rest of the quiet period (so a busy caller costs no timer churn).
    if (s.timer === null) {
      const state = s
      state.timer = setTimeout(() => this.#due(rank, state), DEBOUNCE_MS)
    }
  }

  /** The timer of a pending value: publish once it has been unchanged for 1 ms, or pending for 50 ms. */
  #due(rank: number, s: RankState): void {
    const now = performance.now()
    const quietFor = DEBOUNCE_MS - (now - s.changed)
    if (quietFor > 0 && now - s.since < MAX_DELAY_MS) {
      s.timer = setTimeout(() => this.#due(rank, s), Math.min(quietFor, s.since + MAX_DELAY_MS - now))
      return
    }
    this.#fire(rank, s)
  }

  stats(): MetricsPublisherStats {
    return { ...this.#stats }
  }

  /** Publishes what is pending, then closes the connection if it owns it. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const [rank, s] of this.#ranks) if (s.timer !== null) this.#fire(rank, s)
      if (this.#w14?.channel) await this.#w14.channel.close()
      if (this.#nc !== null) {
        if (this.#ownsConnection) await this.#nc.close().catch(() => {})
        else await this.#nc.flush().catch(() => {})
      }
      await this.#w14?.discovery.close()
    })()
    return this.#closing
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  #fire(rank: number, s: RankState): void {
    if (s.timer !== null) clearTimeout(s.timer)
    s.timer = null
    // held until a first router subscribed (or zmqSettleMs passed); then the latest value goes out
    if (this.#w14 !== null && !this.#w14.ready && this.#closing === null) return
    if (s.latest === s.lastPublished) {
      this.#stats.coalesced++
      return
    }
    const w14 = this.#w14
    // runs in a timer: nothing here may throw (it would end the process)
    try {
      const payload =
        w14 === null
          ? encodeActiveLoad({ workerId: this.workerId, dpRank: rank, activeDecodeBlocks: s.latest })
          : encodeActiveLoad({ workerId: this.workerId, dpRank: rank, activeDecodeBlocks: null, kvUsedBlocks: s.latest })
      const envelope = encodeEnvelope({
        publisherId: w14?.publisherId ?? this.workerId,
        sequence: this.#sequence,
        publishedAt: this.#now(),
        topic: KV_METRICS_TOPIC,
        payload,
      })
      if (w14?.channel) {
        if (w14.channel.send([envelope]) > 0) throw new Error('the ZeroMQ channel refused the envelope')
      } else this.#nc!.publish(this.subject, envelope)
      this.#sequence++
      this.#stats.published++
      s.lastPublished = s.latest
    } catch (err) {
      this.#stats.publishErrors++
      this.#log.log('warn', 'metrics-publish', { err: (err as Error).message }, 'publishing worker load failed')
    }
  }
}
