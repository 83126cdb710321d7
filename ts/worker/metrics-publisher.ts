// WorkerMetricsPublisher (SPEC 5, "Worker load"): Dynamo's ActiveLoad, in a `kv_metrics` envelope with its
// own sequence, on `namespace.{ns}.kv_metrics`. Per dp rank the latest value wins: a change (re)starts a
// 1 ms timer, and when it fires the value is published unless it equals the last one published for that
// rank. (Dynamo keeps one value for all ranks; here two ranks changing at once each get their message.)
// A rank whose value keeps changing is still published at least every 50 ms.
import { checkName, describe, u32, u64 } from '../util/args.js'
import { encodeActiveLoad, encodeEnvelope, KV_METRICS_TOPIC, kvMetricsSubject } from '../core/api.js'
import { loggerOption, RateLimitedLog, type Logger } from '../util/log.js'
import { openNats, type NatsConnection, type NatsOption } from '../transport/nats.js'

type Env = Record<string, string | undefined>

export interface WorkerMetricsPublisherOptions {
  namespace: string
  /** The worker id (u64), as for the KvEventPublisher. */
  workerId: bigint
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

export class WorkerMetricsPublisher {
  readonly workerId: bigint
  readonly subject: string
  readonly #nc: NatsConnection
  readonly #ownsConnection: boolean
  readonly #now: () => number
  readonly #log: RateLimitedLog
  readonly #ranks = new Map<number, RankState>()
  readonly #stats: MetricsPublisherStats = { published: 0, publishErrors: 0, coalesced: 0 }
  #sequence = 0n
  #closing: Promise<void> | null = null

  private constructor(workerId: bigint, subject: string, nc: NatsConnection, ownsConnection: boolean, now: () => number, logger: Logger) {
    this.workerId = workerId
    this.subject = subject
    this.#nc = nc
    this.#ownsConnection = ownsConnection
    this.#now = now
    this.#log = new RateLimitedLog(logger)
  }

  static async create(options: WorkerMetricsPublisherOptions, env: Env = process.env): Promise<WorkerMetricsPublisher> {
    if (typeof options !== 'object' || options === null)
      throw new TypeError(`WorkerMetricsPublisher options must be an object, got ${describe(options)}`)
    for (const k of Object.keys(options))
      if (!['namespace', 'workerId', 'nats', 'now', 'logger'].includes(k))
        throw new TypeError(`${k} is not a WorkerMetricsPublisher option`)
    const namespace = checkName('namespace', options.namespace)
    const workerId = u64('workerId', options.workerId)
    const now = options.now ?? Date.now
    if (typeof now !== 'function') throw new TypeError(`now must be a function returning unix ms, got ${describe(now)}`)
    const logger = loggerOption(options.logger)
    const { nc, owned: owns } = await openNats(options.nats, env)
    return new WorkerMetricsPublisher(workerId, kvMetricsSubject(namespace), nc, owns, now, logger)
  }

  /** Reports a rank's active decode blocks (a count: a bigint, or a non-negative safe integer). */
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
      if (this.#ownsConnection) await this.#nc.close().catch(() => {})
      else await this.#nc.flush().catch(() => {})
    })()
    return this.#closing
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }

  #fire(rank: number, s: RankState): void {
    if (s.timer !== null) clearTimeout(s.timer)
    s.timer = null
    if (s.latest === s.lastPublished) {
      this.#stats.coalesced++
      return
    }
    const payload = encodeActiveLoad({ workerId: this.workerId, dpRank: rank, activeDecodeBlocks: s.latest })
    try {
      const envelope = encodeEnvelope({
        publisherId: this.workerId,
        sequence: this.#sequence,
        publishedAt: this.#now(),
        topic: KV_METRICS_TOPIC,
        payload,
      })
      this.#nc.publish(this.subject, envelope)
      this.#sequence++
      this.#stats.published++
      s.lastPublished = s.latest
    } catch (err) {
      this.#stats.publishErrors++
      this.#log.log('warn', 'metrics-publish', { err: (err as Error).message }, 'publishing worker load failed')
    }
  }
}
