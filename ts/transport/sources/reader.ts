// The ZeroMQ source's socket side (SPEC 2.1): one SUB per endpoint, a reader per socket that checks the
// frames and moves messages into one bounded queue, and the socket monitor's connection events.
//
// When the queue is full the readers stop reading, so ZMQ's high-water mark drops at the engine and the
// gap/replay path repairs it; one consumer loop takes items in order.
import type { Subscriber } from 'zeromq'
import type { RateLimitedLog } from '../../util/log.js'
import type { SourceSettings, ZmqEndpoint } from './options.js'

/** SPEC 2.1 backoff after the n-th consecutive receive error (n = 1..9); the 10th stops the listener. */
export const RECEIVE_BACKOFF_MS = [20, 40, 80, 160, 320, 640, 1280, 2560, 2560] as const
const MAX_RECEIVE_ERRORS = 10

/** What the readers put in the queue; `endpoint` is the endpoint's index. */
export type ReaderItem =
  | { kind: 'live'; endpoint: number; topic: Buffer; seq: bigint; payload: Buffer }
  | { kind: 'disconnect'; endpoint: number }
  | { kind: 'reconnect'; endpoint: number }

/** The counters the reader keeps (a subset of the source's). */
export type ReaderCounter = 'received' | 'receive_errors' | 'dropped_frames' | 'dropped_seq_length' | 'queue_full'

interface Socket {
  address: string
  sock: Subscriber
  connected: boolean
  disconnected: boolean
}

export class EngineReader {
  readonly #opts: SourceSettings
  readonly #log: RateLimitedLog
  readonly #count: (c: ReaderCounter) => void
  readonly #sockets: Socket[]
  #queue: (ReaderItem | undefined)[] = []
  #queueHead = 0
  #queueBytes = 0
  #wakeLoop: (() => void) | null = null
  #spaceWaiters: (() => void)[] = []
  #sleeps = new Set<{ timer: NodeJS.Timeout; done: () => void }>()
  #closed = false

  constructor(endpoints: ZmqEndpoint[], opts: SourceSettings, log: RateLimitedLog, count: (c: ReaderCounter) => void) {
    this.#opts = opts
    this.#log = log
    this.#count = count
    this.#sockets = endpoints.map((e) => ({ address: e.endpoint, sock: opts.createSubscriber(), connected: false, disconnected: false }))
  }

  /** The live endpoints, with the real port where a SUB bound to port 0. */
  get addresses(): string[] {
    return this.#sockets.map((s) => s.address)
  }

  get depth(): number {
    return this.#queue.length - this.#queueHead
  }

  get bytes(): number {
    return this.#queueBytes
  }

  /** Binds or connects every socket. */
  async open(): Promise<void> {
    for (const [i, s] of this.#sockets.entries()) {
      const sock = s.sock
      sock.linger = 0
      if (this.#opts.receiveHighWaterMark !== undefined) sock.receiveHighWaterMark = this.#opts.receiveHighWaterMark
      sock.subscribe(this.#opts.topic)
      if (this.#opts.bind) {
        // several engines may connect to one bound endpoint: a peer's reconnect cannot be told apart, so
        // only seq, publisher id and topic epoch reveal restarts here
        await sock.bind(s.address)
        s.address = sock.lastEndpoint ?? s.address
      } else {
        this.#watch(i, s)
        sock.connect(s.address)
      }
    }
  }

  /**
   * Reads endpoint `i` until close(). Resolves with the error of the 10th consecutive receive failure
   * (the listener stopped), or null once closed.
   */
  async read(i: number): Promise<{ error: unknown } | null> {
    const s = this.#sockets[i]!
    let errors = 0
    while (!this.#closed) {
      await this.#waitForSpace()
      if (this.#closed) return null
      let frames: Buffer[]
      try {
        frames = await s.sock.receive()
      } catch (error) {
        if (this.#closed) return null
        errors++
        this.#count('receive_errors')
        if (errors >= MAX_RECEIVE_ERRORS) {
          this.#log.logger.error({ endpoint: s.address, err: error, errors }, 'zmq receive failed 10 times in a row: source stopped')
          return { error }
        }
        const ms = RECEIVE_BACKOFF_MS[errors - 1]!
        this.#log.log('warn', `receive:${s.address}`, { endpoint: s.address, err: error, errors, backoffMs: ms }, 'zmq receive error')
        await this.#sleep(ms)
        continue
      }
      errors = 0
      this.#count('received')
      if (frames.length !== 3) {
        this.#drop('dropped_frames', s, { frames: frames.length }, 'message without exactly 3 frames dropped')
        continue
      }
      if (frames[1]!.length !== 8) {
        this.#drop('dropped_seq_length', s, { seqBytes: frames[1]!.length }, 'message with a seq frame not 8 bytes long dropped')
        continue
      }
      this.#push({ kind: 'live', endpoint: i, topic: frames[0]!, seq: frames[1]!.readBigUInt64BE(0), payload: frames[2]! })
    }
    return null
  }

  /** The next item in arrival order; null once closed. */
  async take(): Promise<ReaderItem | null> {
    while (this.#queueHead === this.#queue.length) {
      if (this.#closed) return null
      await new Promise<void>((r) => {
        this.#wakeLoop = r
      })
    }
    const item = this.#queue[this.#queueHead]!
    // drop the reference now: a taken payload must not live on until the array is compacted
    this.#queue[this.#queueHead++] = undefined
    if (this.#queueHead > 1024 && this.#queueHead * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#queueHead)
      this.#queueHead = 0
    }
    if (item.kind === 'live') this.#queueBytes -= item.payload.length
    if (!this.#full()) {
      const waiters = this.#spaceWaiters
      this.#spaceWaiters = []
      for (const w of waiters) w()
    }
    return item
  }

  /** Closes the sockets and wakes every waiter; the readers and take() then return null. */
  close(): void {
    if (this.#closed) return
    this.#closed = true
    for (const s of this.#sockets) s.sock.close()
    for (const s of this.#sleeps) {
      clearTimeout(s.timer)
      s.done()
    }
    this.#sleeps.clear()
    this.#wakeLoop?.()
    for (const w of this.#spaceWaiters) w()
    this.#spaceWaiters = []
  }

  /** Drops what is still queued (after close, once nothing takes from it any more). */
  clear(): void {
    this.#queue = []
    this.#queueHead = 0
    this.#queueBytes = 0
  }

  /** A disconnect then a reconnect of an endpoint: the sequencer decides what it means. */
  #watch(i: number, s: Socket): void {
    const events = s.sock.events
    events.on('connect', () => {
      if (s.connected && s.disconnected) this.#push({ kind: 'reconnect', endpoint: i })
      s.connected = true
      s.disconnected = false
    })
    events.on('disconnect', () => {
      if (!s.connected || s.disconnected) return
      s.disconnected = true
      this.#push({ kind: 'disconnect', endpoint: i })
    })
  }

  #drop(counter: ReaderCounter, s: Socket, obj: object, msg: string): void {
    this.#count(counter)
    this.#log.log('warn', `${counter}:${s.address}`, { endpoint: s.address, ...obj }, msg)
  }

  #push(item: ReaderItem): void {
    if (this.#closed) return
    // connection items are tiny and rare: only live messages count toward the bound
    this.#queue.push(item)
    if (item.kind === 'live') this.#queueBytes += item.payload.length
    const wake = this.#wakeLoop
    this.#wakeLoop = null
    wake?.()
  }

  #full(): boolean {
    return this.#queue.length - this.#queueHead >= this.#opts.queueSize || this.#queueBytes >= this.#opts.queueBytes
  }

  async #waitForSpace(): Promise<void> {
    if (!this.#full()) return
    this.#count('queue_full')
    while (this.#full() && !this.#closed) await new Promise<void>((r) => this.#spaceWaiters.push(r))
  }

  #sleep(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const s = {
        timer: setTimeout(() => {
          this.#sleeps.delete(s)
          resolve()
        }, ms),
        done: resolve,
      }
      this.#sleeps.add(s)
    })
  }
}
