// JetStream sink (SPEC 5, 8): the RouterEvent JSON of each event, published to `{stream}.kv-events` with
// message id `{worker_id}.{dp_rank}.{epoch}.{event_id}`, many publishes in flight.
//
// Ordering is the hard part. The invariant: a consumer applying the stream in order ends with exactly the
// worker's state. Publishes on one connection land in order, but a failed publish is retried (same message
// id, so the stream's duplicate window stores it once), and a message handed to the client before a
// disconnect may still be stored after it; either way an event can land after a later one. The acks carry
// the stream sequence where each event landed (a duplicate's ack carries the original's), so acks are
// examined in publish order: an event that landed below the highest sequence seen before it is out of
// order, and every event sent from it on is published again, after the stream's current end, under new
// message ids (epoch `{epoch}r{round}`). Applying a suffix of the log again after a misordered copy of it
// restores the worker's state: stores are idempotent, removes of absent blocks are no-ops, and the last
// operation on each block is again the right one. Superseded publishes are still retried until acked, so
// where they landed is known; one landing late triggers the next repair.
import {
  createInbox,
  headers,
  InvalidArgumentError,
  nanos,
  type Msg,
  type NatsConnection,
  type Subscription,
} from '@nats-io/transport-node'
import { jetstreamManager, type JetStreamManager, type PubAck, type StreamConfig } from '@nats-io/jetstream'
import { jetstreamSubject } from '../../core/api.js'
import type { Logger, RateLimitedLog } from '../../util/log.js'
import { emptySinkStats, IdleWaiters, type Sink, type SinkStats } from './types.js'

export interface JetStreamSinkOptions {
  /** Events sent and not yet examined (in flight, failed and waiting for a retry, or acked after a slower one); default 1024. */
  window?: number
  /** How long to wait for one ack before retrying (ms, default 5000). */
  ackTimeoutMs?: number
  /** Message-id epoch; default a random one per sink, so a restarted publisher never collides with its past. */
  epoch?: string
  /** The publish call; default the JetStream client's. Tests wrap it to inject faults around a real server. */
  publish?: PublishFn
}

export type PublishFn = (subject: string, data: Uint8Array, opts: { msgID: string; timeout: number }) => Promise<PubAck>

const QUEUED = 0
const IN_FLIGHT = 1
const FAILED = 2 // waiting for the retry timer
const ACKED = 3
const GAVE_UP = 4 // a publish the client refuses outright (e.g. over max_payload): counted, skipped

interface Entry {
  data: Uint8Array
  dpRank: number
  eventId: bigint
  msgId: string
  state: number
  /** Stream sequence where it landed (valid once ACKED). */
  seq: number
  /** A later copy replaces it; its landing only matters for the order check. */
  superseded: boolean
}

const RETRY_MIN_MS = 50
const RETRY_MAX_MS = 2000

/** Creates the stream when absent (SPEC 5); an existing one is used as it is. */
export async function ensureStream(
  jsm: JetStreamManager,
  name: string,
  maxAgeSeconds: number,
  logger: Logger,
): Promise<'created' | 'existing'> {
  const wanted: Partial<StreamConfig> & { name: string } = {
    name,
    subjects: [`${name}.*`],
    max_age: nanos(maxAgeSeconds * 1000),
    duplicate_window: nanos(Math.min(120, maxAgeSeconds) * 1000),
  }
  try {
    const info = await jsm.streams.info(name)
    const have = info.config
    if (have.max_age !== wanted.max_age || !have.subjects?.includes(`${name}.*`))
      logger.info({ stream: name, max_age_s: have.max_age / 1e9, subjects: have.subjects }, 'using the existing JetStream stream as it is')
    return 'existing'
  } catch (err) {
    if (!/stream not found/i.test((err as Error).message)) throw err
  }
  try {
    await jsm.streams.add(wanted)
    logger.info({ stream: name, max_age_s: maxAgeSeconds }, 'created the JetStream stream')
    return 'created'
  } catch (err) {
    // another publisher created it in the meantime
    if (/already in use|stream name already/i.test((err as Error).message)) return 'existing'
    throw err
  }
}

export class JetStreamAckError extends Error {
  constructor(
    message: string,
    readonly code: number,
  ) {
    super(message)
    this.name = 'JetStreamAckError'
  }
}

/**
 * JetStream publishes with one ack inbox per sink. It does what the client's js.publish does (a publish
 * with a reply subject and a Nats-Msg-Id header, the ack parsed from the reply) without its per-message
 * costs: each js.publish builds a request object, a timer and an Error with a stack trace (the client
 * rejects every settled request once more with a fresh "cancelled" error), which held the sink to ~40k
 * events/s. Timeouts are found by one interval timer: acks are awaited in send order, so the expired ones
 * are always at the front of the map.
 */
class AckInbox {
  readonly #nc: NatsConnection
  readonly #prefix: string
  readonly #timeoutMs: number
  readonly #waiting = new Map<number, { resolve: (a: PubAck) => void; reject: (e: Error) => void; deadline: number }>()
  readonly #timer: NodeJS.Timeout
  readonly #sub: Subscription
  #next = 0

  constructor(nc: NatsConnection, timeoutMs: number) {
    this.#nc = nc
    this.#prefix = `${createInbox()}.`
    this.#timeoutMs = timeoutMs
    this.#sub = nc.subscribe(`${this.#prefix}*`, { callback: (err, msg) => (err ? undefined : this.#onAck(msg)) })
    this.#timer = setInterval(() => this.#expire(), Math.max(10, Math.min(250, timeoutMs / 4)))
    this.#timer.unref()
  }

  readonly publish: PublishFn = (subject, data, o) => {
    const token = this.#next++
    const h = headers()
    h.set('Nats-Msg-Id', o.msgID)
    this.#nc.publish(subject, data, { reply: this.#prefix + token, headers: h })
    return new Promise<PubAck>((resolve, reject) => {
      this.#waiting.set(token, { resolve, reject, deadline: Date.now() + this.#timeoutMs })
    })
  }

  close(): void {
    clearInterval(this.#timer)
    // the connection may be the caller's and outlive this sink
    if (!this.#nc.isClosed()) this.#sub.unsubscribe()
    for (const w of this.#waiting.values()) w.reject(new Error('closed'))
    this.#waiting.clear()
  }

  #onAck(msg: Msg): void {
    const token = Number(msg.subject.slice(this.#prefix.length))
    const w = this.#waiting.get(token)
    if (!w) return // expired already: the retry's ack tells where it landed
    this.#waiting.delete(token)
    if (msg.data.length === 0) {
      const code = msg.headers?.code ?? 0
      w.reject(new JetStreamAckError(code === 503 ? 'no responders: JetStream or the stream is not available' : `status ${code}`, code))
      return
    }
    const text = Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength).toString('latin1')
    const seq = /"seq":(\d+)/.exec(text)
    if (!seq || text.includes('"error"')) {
      w.reject(new JetStreamAckError(`JetStream refused the message: ${text.slice(0, 200)}`, 0))
      return
    }
    w.resolve({ stream: '', seq: Number(seq[1]), duplicate: /"duplicate":\s*true/.test(text) })
  }

  #expire(): void {
    const now = Date.now()
    for (const [token, w] of this.#waiting) {
      if (w.deadline > now) break
      this.#waiting.delete(token)
      w.reject(new JetStreamAckError('ack timeout', 408))
    }
  }
}

export class JetStreamSink implements Sink {
  onProgress: () => void = () => {}
  readonly epoch: string
  readonly #publishFn: PublishFn
  readonly #stopAcks: () => void = () => {}
  readonly #nc: NatsConnection
  readonly #subject: string
  readonly #workerId: bigint
  readonly #log: RateLimitedLog
  readonly #window: number
  readonly #ackTimeoutMs: number
  readonly #stats: SinkStats = emptySinkStats()
  readonly #ensure: () => Promise<unknown>
  /** The publish log from `#head` on: examined entries are dropped from the front. */
  #log_: Entry[] = []
  #head = 0
  /** First entry not yet sent. Entries in [head, next) are sent: in flight, failed, or acked and waiting for an earlier one. */
  #next = 0
  /** Highest stream sequence among examined entries. */
  #high = 0
  #round = 0
  #failures = 0
  #retryTimer: NodeJS.Timeout | null = null
  readonly #idle = new IdleWaiters()
  #closed = false

  constructor(
    nc: NatsConnection,
    stream: string,
    workerId: bigint,
    log: RateLimitedLog,
    ensure: () => Promise<unknown>,
    opts: JetStreamSinkOptions = {},
  ) {
    this.#nc = nc
    this.#ackTimeoutMs = opts.ackTimeoutMs ?? 5000
    if (opts.publish) this.#publishFn = opts.publish
    else {
      const acks = new AckInbox(nc, this.#ackTimeoutMs)
      this.#publishFn = acks.publish
      this.#stopAcks = () => acks.close()
    }
    this.#subject = jetstreamSubject(stream)
    this.#workerId = workerId
    this.#log = log
    this.#ensure = ensure
    this.#window = opts.window ?? 1024
    this.epoch =
      opts.epoch ??
      Math.floor(Math.random() * 2 ** 32)
        .toString(16)
        .padStart(8, '0')
  }

  static async create(
    nc: NatsConnection,
    stream: string,
    maxAgeSeconds: number,
    workerId: bigint,
    log: RateLimitedLog,
    opts?: JetStreamSinkOptions,
  ): Promise<JetStreamSink> {
    let ensure: () => Promise<unknown>
    try {
      const jsm = await jetstreamManager(nc)
      ensure = () => ensureStream(jsm, stream, maxAgeSeconds, log.logger)
      await ensure()
    } catch (err) {
      const why = (err as Error)?.message ?? String(err)
      throw new Error(`could not set up the JetStream stream ${stream} (does the server run with JetStream, -js?): ${why}`, { cause: err })
    }
    return new JetStreamSink(nc, stream, workerId, log, ensure, opts)
  }

  get pending(): number {
    return this.#log_.length - this.#head
  }

  send(payloads: readonly Uint8Array[], dpRank: number, firstEventId: bigint): void {
    const prefix = `${this.#workerId}.${dpRank}.${this.epoch}.`
    for (let i = 0; i < payloads.length; i++) {
      const eventId = firstEventId + BigInt(i)
      this.#log_.push({ data: payloads[i]!, dpRank, eventId, msgId: prefix + eventId, state: QUEUED, seq: 0, superseded: false })
    }
    this.#pump()
  }

  async flush(timeoutMs: number): Promise<boolean> {
    if (this.pending === 0) return true
    return await this.#idle.wait(timeoutMs)
  }

  async close(timeoutMs: number): Promise<void> {
    if (this.#closed) return
    const done = await this.flush(timeoutMs)
    this.#closed = true
    if (this.#retryTimer) clearTimeout(this.#retryTimer)
    this.#stopAcks()
    if (!done) {
      const lost = this.pending
      this.#stats.publishErrors += lost
      this.#log.logger.error({ unconfirmed: lost }, 'closing with JetStream publishes never acknowledged: counted as publish errors')
    }
  }

  stats(): SinkStats {
    return { ...this.#stats, undeliveredByReason: { ...this.#stats.undeliveredByReason }, queueDepth: this.pending }
  }

  #pump(): void {
    if (this.#closed) return
    const log = this.#log_
    // Bounding sent-but-unexamined entries (not only those in flight) keeps an outage from turning the
    // whole queue into retries.
    while (this.#next < log.length && this.#next - this.#head < this.#window) {
      const e = log[this.#next++]!
      this.#publish(e)
    }
  }

  #publish(e: Entry): void {
    e.state = IN_FLIGHT
    let sent: Promise<PubAck>
    try {
      sent = this.#publishFn(this.#subject, e.data, { msgID: e.msgId, timeout: this.#ackTimeoutMs })
    } catch (err) {
      sent = Promise.reject(err)
    }
    sent.then(
      (ack) => {
        this.#failures = 0
        e.state = ACKED
        e.seq = ack.seq
        if (ack.duplicate) this.#stats.duplicates++
        else this.#stats.published++
        this.#examine()
        this.#pump()
      },
      (err: unknown) => {
        if (err instanceof InvalidArgumentError) {
          // The client refuses this message outright (e.g. larger than the server's max_payload): a
          // retry cannot help. Counted and skipped; the router sees a gap in this rank's ids.
          e.state = GAVE_UP
          this.#stats.publishErrors++
          this.#log.logger.error({ msgId: e.msgId, err: (err as Error).message }, 'JetStream publish refused by the client: event dropped')
          this.#examine()
          this.#pump()
          return
        }
        e.state = FAILED
        this.#failures++
        this.#log.log(
          'warn',
          'js-publish-failed',
          { err: (err as Error)?.message ?? String(err) },
          'JetStream publish failed: retrying with the same message id',
        )
        this.#scheduleRetry()
      },
    )
  }

  /** One timer re-sends every failed entry in log order, so retries keep their relative order. */
  #scheduleRetry(): void {
    if (this.#retryTimer || this.#closed) return
    const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** Math.min(this.#failures, 10))
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null
      if (this.#closed || this.#nc.isClosed()) return
      // Repeated failures may mean the stream is gone (deleted, or a server that lost its store).
      if (this.#failures >= 8 && this.#failures % 8 === 0) this.#ensure().catch(() => {})
      const log = this.#log_
      for (let i = this.#head; i < this.#next; i++) {
        const e = log[i]!
        if (e.state === FAILED) {
          this.#stats.retries++
          this.#publish(e)
        }
      }
    }, delay)
  }

  /** Examines acked entries in publish order, repairing an out-of-order landing (see the top). */
  #examine(): void {
    const log = this.#log_
    let moved = false
    while (this.#head < this.#next) {
      const e = log[this.#head]!
      if (e.state !== ACKED && e.state !== GAVE_UP) break
      if (e.state === ACKED) {
        if (e.seq > this.#high) this.#high = e.seq
        else if (!e.superseded) this.#repairFrom(this.#head)
      }
      this.#head++
      moved = true
    }
    if (!moved) return
    if (this.#head > 4096 && this.#head * 2 > log.length) {
      log.splice(0, this.#head)
      this.#next -= this.#head
      this.#head = 0
    }
    this.#idle.notify(this.pending)
    this.onProgress()
  }

  #repairFrom(at: number): void {
    const log = this.#log_
    const round = ++this.#round
    const copies: Entry[] = []
    for (let i = at; i < this.#next; i++) {
      const e = log[i]!
      e.superseded = true
      if (e.state === GAVE_UP) continue
      copies.push({
        data: e.data,
        dpRank: e.dpRank,
        eventId: e.eventId,
        msgId: `${this.#workerId}.${e.dpRank}.${this.epoch}r${round}.${e.eventId}`,
        state: QUEUED,
        seq: 0,
        superseded: false,
      })
    }
    // The copies go before the entries not sent yet, which must still follow them.
    log.splice(this.#next, 0, ...copies)
    this.#stats.repairs++
    this.#stats.republished += copies.length
    this.#log.logger.warn(
      { from: log[at]!.msgId, landedAt: log[at]!.seq, after: this.#high, republished: copies.length },
      'a JetStream publish landed after a later one: re-publishing the suffix under new message ids',
    )
  }
}
