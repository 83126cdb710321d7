// Event-plane sink (SPEC 5, 8): core NATS publish of each envelope on
// `namespace.{ns}.component.{comp}.kv-events`. At-most-once by design: a failed publish is counted, never
// retried (a retry would reorder events and make routers see false gaps; the ring buffer and recovery
// repair what was lost).
//
// Delivery accounting: an event counts as published only once the server confirmed it. Every coalesced
// write of payloads is followed by one flush (PING); its PONG arrives after the server has read every
// payload written before it on that connection, so it confirms them. nats.js rejects the pending flushes
// when the connection fails (at its next dial), and then the payloads of those writes are counted as
// undelivered `unconfirmed`: they may or may not have reached the server, and they are never retried.
//
// While disconnected, payloads are held here, in order, up to reconnectBufferBytes, and written once the
// client reports the reconnect. They are not handed to nats.js: its own reconnect buffer is discarded at
// every dial attempt, silently. What exceeds the bound, or is still held at close, is undelivered `dropped`.
//
// Memory stays bounded both ways: while connected, the publisher waits when too much is unconfirmed (a slow
// server slows the engine's source instead of growing the client's buffer); while disconnected, held
// payloads are bounded in bytes and do not count against maxPending, so a NATS outage never stalls the engine.
import type { NatsConnection, Status } from '@nats-io/transport-node'
import type { RateLimitedLog } from '../../util/log.js'
import { emptySinkStats, IdleWaiters, type Sink, type SinkStats } from './types.js'

export interface EventPlaneSinkOptions {
  /** Bytes held while disconnected, written after the reconnect (default 8 MiB, as the Go client). */
  reconnectBufferBytes?: number
}

const COALESCE_BYTES = 64 * 1024

/** Payloads written to the client and covered by one flush. */
interface Write {
  count: number
  settled: boolean
}

export class EventPlaneSink implements Sink {
  onProgress: () => void = () => {}
  readonly #nc: NatsConnection
  readonly #subject: string
  readonly #log: RateLimitedLog
  readonly #reconnectBufferBytes: number
  readonly #stats: SinkStats = emptySinkStats()
  /** As the client last reported it (its status events). */
  #connected = true
  /** Payloads not handed to the client yet (see send). */
  #queued: Uint8Array[] = []
  #queuedBytes = 0
  #drainScheduled = false
  /** Payloads held while disconnected, oldest first. */
  #held: Uint8Array[] = []
  #heldBytes = 0
  /** Writes whose flush has not settled; settled in write order by nats.js. */
  readonly #open = new Set<Write>()
  #unconfirmed = 0
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
    // A connection closed for good (no reconnect, or the caller closed it) never answers its pending flushes.
    nc.closed().then(
      () => this.#connectionClosed(),
      () => this.#connectionClosed(),
    )
  }

  /** What counts against maxPending: queued and unconfirmed payloads (held ones are bounded in bytes instead). */
  get pending(): number {
    return this.#queued.length + this.#unconfirmed
  }

  /** Everything neither confirmed nor counted undelivered yet. */
  get #outstanding(): number {
    return this.pending + this.#held.length
  }

  /**
   * Payloads are handed to the client once per event-loop turn (or every 64 KiB): nats.js writes to the
   * socket once per microtask checkpoint, so publishing each engine batch as it comes would cost a
   * write system call per batch, most of the publisher's time at ~3 events per batch.
   */
  send(payloads: readonly Uint8Array[]): void {
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
    // a closed connection refuses the publish, which write() counts
    if (this.#connected || this.#nc.isClosed()) this.#write(queued)
    else this.#hold(queued)
  }

  #hold(payloads: readonly Uint8Array[]): void {
    let dropped = 0
    for (const p of payloads) {
      if (this.#heldBytes + p.length > this.#reconnectBufferBytes) {
        dropped++
        continue
      }
      this.#held.push(p)
      this.#heldBytes += p.length
    }
    if (dropped > 0) {
      this.#undelivered('dropped', dropped)
      this.#log.log(
        'warn',
        'dropped',
        { subject: this.#subject, reconnectBufferBytes: this.#reconnectBufferBytes },
        'NATS is disconnected and the reconnect buffer is full: dropping events (routers recover them from the local indexer, or keep a gap)',
      )
    }
    this.#progress()
  }

  /** Publishes in order; each 64 KiB (and the rest) is followed by one flush that confirms it. */
  #write(payloads: readonly Uint8Array[]): void {
    let count = 0
    let bytes = 0
    for (const p of payloads) {
      try {
        this.#nc.publish(this.#subject, p)
        count++
        bytes += p.length
      } catch (err) {
        this.#stats.publishErrors++
        this.#undelivered('refused', 1)
        this.#log.log(
          'error',
          'publish-error',
          { subject: this.#subject, err: (err as Error).message },
          'core NATS publish failed: event counted, not retried',
        )
      }
      if (bytes >= COALESCE_BYTES) {
        this.#confirm(count)
        count = 0
        bytes = 0
      }
    }
    if (count > 0) this.#confirm(count)
  }

  #confirm(count: number): void {
    const write: Write = { count, settled: false }
    this.#open.add(write)
    this.#unconfirmed += count
    let pong: Promise<void>
    try {
      pong = this.#nc.flush()
    } catch (err) {
      pong = Promise.reject(err)
    }
    pong.then(
      () => this.#settle(write, true),
      () => this.#settle(write, false),
    )
  }

  #settle(write: Write, confirmed: boolean): void {
    if (write.settled) return
    write.settled = true
    this.#open.delete(write)
    this.#unconfirmed -= write.count
    if (confirmed) this.#stats.published += write.count
    else {
      this.#undelivered('unconfirmed', write.count)
      this.#log.log(
        'warn',
        'unconfirmed',
        { subject: this.#subject, events: write.count },
        'the NATS connection failed before the server confirmed these events: counted undelivered (they may or may not have arrived), not retried',
      )
    }
    this.#progress()
  }

  #undelivered(reason: keyof SinkStats['undeliveredByReason'], n: number): void {
    this.#stats.undelivered += n
    this.#stats.undeliveredByReason[reason] += n
  }

  /** Counts everything unsettled as undelivered: written ones as unconfirmed, held ones as dropped. */
  #abandon(): void {
    for (const w of [...this.#open]) this.#settle(w, false)
    if (this.#held.length > 0) {
      this.#undelivered('dropped', this.#held.length)
      this.#held = []
      this.#heldBytes = 0
    }
    this.#progress()
  }

  #connectionClosed(): void {
    this.#drain()
    this.#abandon()
  }

  async flush(timeoutMs: number): Promise<boolean> {
    this.#drain()
    if (this.#outstanding === 0) return true
    return await this.#idle.wait(timeoutMs)
  }

  async close(timeoutMs: number): Promise<void> {
    if (this.#closed) return
    const done = await this.flush(timeoutMs)
    this.#closed = true
    // the connection may be the caller's and outlive this sink (nats.js status iterators have stop())
    ;(this.#status as { stop?: () => void }).stop?.()
    if (!done) {
      const left = { unconfirmed: this.#unconfirmed, held: this.#held.length }
      this.#drain()
      this.#abandon()
      this.#log.log('warn', 'close-unconfirmed', left, 'closing with events the server has not confirmed: counted undelivered')
    }
  }

  stats(): SinkStats {
    return { ...this.#stats, undeliveredByReason: { ...this.#stats.undeliveredByReason }, queueDepth: this.#outstanding }
  }

  #progress(): void {
    this.#idle.notify(this.#outstanding)
    this.onProgress()
  }

  async #watchStatus(): Promise<void> {
    for await (const s of this.#status) {
      if (s.type === 'disconnect') {
        // Writes not yet confirmed are settled by nats.js (their flushes are rejected at its next dial).
        this.#connected = false
        this.#log.log(
          'warn',
          'disconnect',
          { server: s.server },
          'NATS disconnected: event-plane events are held up to the reconnect buffer, then dropped and counted',
        )
      } else if (s.type === 'reconnect') {
        this.#connected = true
        this.#log.log('info', 'reconnect', { server: s.server, held: this.#held.length }, 'NATS reconnected')
        if (this.#closed) continue
        const held = this.#held
        this.#held = []
        this.#heldBytes = 0
        // held payloads are older than queued ones
        if (held.length > 0) this.#write(held)
        this.#drain()
        this.#progress()
      }
    }
  }
}
