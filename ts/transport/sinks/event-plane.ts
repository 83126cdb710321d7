// Event-plane sink (SPEC 5, 8): core NATS publish of each envelope on
// `namespace.{ns}.component.{comp}.kv-events`. At-most-once by design: a failed publish is counted, never
// retried (a retry would reorder events and make routers see false gaps; the ring buffer and recovery
// repair what was lost).
//
// Memory stays bounded both ways: while connected, one flush (PING/PONG) is always in flight and confirms
// everything handed to the client before it, and the publisher waits when too much is unconfirmed (a slow
// server slows the engine's source instead of growing the client's buffer); while disconnected, the
// client buffers up to reconnectBufferBytes (nats.js would otherwise grow without limit) and the rest is
// dropped and counted as undelivered, so a NATS outage never stalls the engine.
import type { NatsConnection, Status } from '@nats-io/transport-node'
import type { RateLimitedLog } from '../../util/log.js'
import { emptySinkStats, IdleWaiters, type Sink, type SinkStats } from './types.js'

export interface EventPlaneSinkOptions {
  /** Bytes the client may buffer while disconnected (default 8 MiB, as the Go client). */
  reconnectBufferBytes?: number
}

const COALESCE_BYTES = 64 * 1024

export class EventPlaneSink implements Sink {
  onProgress: () => void = () => {}
  readonly #nc: NatsConnection
  readonly #subject: string
  readonly #log: RateLimitedLog
  readonly #reconnectBufferBytes: number
  readonly #stats: SinkStats = emptySinkStats()
  #connected = true
  #bufferedWhileDown = 0
  /** Payloads not handed to the client yet (see send). */
  #queued: Buffer[] = []
  #queuedBytes = 0
  #drainScheduled = false
  /** Payloads handed to the client since the last flush started. */
  #unflushed = 0
  /** Payloads covered by the flush in progress (unconfirmed = inFlush + unflushed). */
  #inFlush = 0
  #flushing = false
  /** Bumped on disconnect, so a flush that straddled it confirms nothing. */
  #generation = 0
  readonly #idle = new IdleWaiters()
  #closed = false
  #status: AsyncIterable<Status>

  constructor(nc: NatsConnection, subject: string, log: RateLimitedLog, opts: EventPlaneSinkOptions = {}) {
    this.#nc = nc
    this.#subject = subject
    this.#log = log
    this.#reconnectBufferBytes = opts.reconnectBufferBytes ?? 8 << 20
    this.#status = nc.status()
    // a rejection here must never become an unhandled one (Node would exit)
    this.#watchStatus().catch((err: unknown) => this.#log.log('warn', 'status', { err: String(err) }, 'NATS status watch ended'))
  }

  get pending(): number {
    return this.#queued.length + this.#inFlush + this.#unflushed
  }

  /**
   * Payloads are handed to the client once per event-loop turn (or every 64 KiB): nats.js writes to the
   * socket once per microtask checkpoint, so publishing each engine batch as it comes would cost a
   * write system call per batch, most of the publisher's time at ~3 events per batch.
   */
  send(payloads: Buffer[]): void {
    for (const p of payloads) {
      this.#queued.push(p)
      this.#queuedBytes += p.length
    }
    if (this.#queuedBytes >= COALESCE_BYTES) this.#drain()
    else if (!this.#drainScheduled && this.#queued.length > 0) {
      this.#drainScheduled = true
      setImmediate(this.#drainSoon)
    }
  }

  readonly #drainSoon = () => {
    this.#drainScheduled = false
    this.#drain()
  }

  #drain(): void {
    const queued = this.#queued
    if (queued.length === 0) return
    this.#queued = []
    this.#queuedBytes = 0
    for (const p of queued) {
      if (!this.#connected) {
        if (this.#bufferedWhileDown + p.length > this.#reconnectBufferBytes) {
          this.#stats.undelivered++
          this.#log.log(
            'warn',
            'undelivered',
            { subject: this.#subject },
            'NATS is disconnected and the reconnect buffer is full: dropping events (routers recover them from the local indexer, or keep a gap)',
          )
          continue
        }
        this.#bufferedWhileDown += p.length
      }
      try {
        this.#nc.publish(this.#subject, p)
        this.#stats.published++
        if (this.#connected) this.#unflushed++
      } catch (err) {
        this.#stats.publishErrors++
        this.#log.log(
          'error',
          'publish-error',
          { subject: this.#subject, err: (err as Error).message },
          'core NATS publish failed: event counted, not retried',
        )
      }
    }
    this.#startFlush()
  }

  async flush(timeoutMs: number): Promise<boolean> {
    this.#drain()
    if (this.#unflushed > 0) this.#startFlush()
    if (this.pending === 0) return true
    return await this.#idle.wait(timeoutMs)
  }

  async close(timeoutMs: number): Promise<void> {
    if (this.#closed) return
    const done = await this.flush(timeoutMs)
    this.#closed = true
    // the connection may be the caller's and outlive this sink (nats.js status iterators have stop())
    ;(this.#status as { stop?: () => void }).stop?.()
    if (!done) this.#log.log('warn', 'close-unconfirmed', { unconfirmed: this.pending }, 'closing with events the server has not confirmed')
  }

  stats(): SinkStats {
    return { ...this.#stats, queueDepth: this.pending }
  }

  #startFlush(): void {
    if (this.#flushing || this.#unflushed === 0 || !this.#connected || this.#nc.isClosed()) return
    this.#flushing = true
    this.#inFlush = this.#unflushed
    this.#unflushed = 0
    const generation = this.#generation
    const finish = () => {
      if (generation !== this.#generation) return
      this.#flushing = false
      this.#inFlush = 0
      this.#startFlush()
      this.#progress()
    }
    this.#nc.flush().then(finish, finish)
  }

  #progress(): void {
    this.#idle.notify(this.pending)
    this.onProgress()
  }

  async #watchStatus(): Promise<void> {
    for await (const s of this.#status) {
      if (s.type === 'disconnect') {
        this.#connected = false
        this.#bufferedWhileDown = 0
        // What was unconfirmed now sits in the client's buffer or died with the socket: nothing to wait for.
        this.#generation++
        this.#flushing = false
        this.#inFlush = 0
        this.#unflushed = 0
        this.#log.log(
          'warn',
          'disconnect',
          { server: s.server },
          'NATS disconnected: event-plane publishes are buffered up to the reconnect buffer, then dropped and counted',
        )
        this.#progress()
      } else if (s.type === 'reconnect') {
        this.#connected = true
        this.#log.log('info', 'reconnect', { server: s.server }, 'NATS reconnected')
      }
    }
  }
}
