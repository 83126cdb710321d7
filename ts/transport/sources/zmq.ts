// The ZeroMQ engine source (SPEC 2.1): SUB sockets on the engines' live endpoints, validation, sequence
// tracking per (endpoint, dp rank), gap repair by replay over a DEALER, restart detection and loss handling,
// delivering engine batches in order to a consumer that applies them (the publisher's Ingestor).
//
// Flow: one reader per endpoint moves validated messages into one bounded queue (when it is full the
// readers stop reading, so ZMQ's high-water mark drops at the engine and the gap/replay path repairs it);
// one loop takes them in order. Replays run as their own tasks. Every state change and every consumer
// call happens inside one lock, so consumer calls never overlap and each rank's batches arrive in order.
import { EventEmitter } from 'node:events'
import type { Dealer, Subscriber } from 'zeromq'
import { peekBatch } from '../../core/api.js'
import { intInRange } from '../../util/args.js'
import { loggerOption, RateLimitedLog, type Logger } from '../../util/log.js'
import { loadZeromq, zeromq } from '../zeromq.js'

/** What the source feeds: the publisher's ingest path. */
export interface BatchConsumer {
  /** One engine batch (the payload frame), in order per rank; resolves when accepted (backpressure). */
  ingest(payload: Uint8Array): Promise<unknown>
  /** Reset of one dp rank (engine restart, or a loss with onLoss 'reset'): the consumer emits SPEC 3's reset rule. */
  resetRank(dpRank: number): Promise<unknown>
}

export interface ZmqEndpoint {
  /** Live endpoint, e.g. `tcp://127.0.0.1:5557`. */
  endpoint: string
  /** The engine's ROUTER replay endpoint; without one, gaps are losses. */
  replayEndpoint?: string
}

export interface ZmqSourceOptions {
  /** One live endpoint (with `dpRanks`: rank r at `port + r`). Exactly one of endpoint / endpoints. */
  endpoint?: string
  /** Several endpoints feeding one consumer. */
  endpoints?: (string | ZmqEndpoint)[]
  /** Replay endpoint for `endpoint` (with `dpRanks`: rank r at `port + r`). */
  replayEndpoint?: string
  /** vLLM data parallelism: `endpoint` and `replayEndpoint` stand for ranks 0..n-1 at port + rank. Default 1. */
  dpRanks?: number
  /** Topic prefix filter. Default '' (everything). */
  topic?: string
  /** Bind the SUB sockets (engines connect in) instead of connecting. Default false. */
  bind?: boolean
  /** A replay that stays silent this long is abandoned (its missing batches are lost). Default 5000. */
  replayTimeoutMs?: number
  /** On a loss, 'keep' what the index has (default) or 'reset' the rank. */
  onLoss?: 'keep' | 'reset'
  /** Live messages held per tracker while its replay runs. Default 10000. */
  maxHeld?: number
  /** Bytes held per tracker while its replay runs. Default 64 MiB. */
  maxHeldBytes?: number
  /** Messages queued toward the consumer; when full, the source stops reading. Default 1024. */
  queueSize?: number
  /** Bytes queued toward the consumer; when exceeded, the source stops reading. Default 64 MiB. */
  queueBytes?: number
  /** SUB receive high-water mark (ZMQ's default is 1000). */
  receiveHighWaterMark?: number
  /** A pino-compatible logger; default pino on stderr. Recurring conditions are rate-limited. */
  logger?: Logger
  /**
   * Creates the SUB sockets (advanced; tests use it to inject receive errors into a real socket).
   * Default `() => new Subscriber()`.
   */
  createSubscriber?: () => Subscriber
}

export const ZMQ_SOURCE_COUNTERS = [
  'received', // live messages read from the SUB sockets
  'ingested', // consumer.ingest calls (live and replayed)
  'dropped_frames', // not exactly 3 frames
  'dropped_seq_length', // seq frame not 8 bytes
  'dropped_malformed', // payload not a decodable batch header
  'dropped_replay', // replay replies of an unknown layout or another dp rank
  'dropped_rank', // batches of a further dp rank once MAX_TRACKERS streams are tracked
  'duplicates', // live batches skipped because a replay already applied them
  'gaps', // live seq beyond the next expected one
  'replays', // replay requests sent
  'replay_timeouts', // replays abandoned after replayTimeoutMs without a reply (what they missed is lost)
  'replay_stalls', // replay rounds that went silent after some replies, retried from there
  'recovered', // batches applied from a replay
  'lost', // seqs never applied
  'restarts', // engine restarts detected (seq, publisher id, topic epoch, reconnect)
  'resets', // consumer.resetRank calls
  'held_overflow', // live messages not held during a replay (re-requested afterwards, lost if that fails)
  'receive_errors',
  'queue_full', // times the readers stopped reading because the queue was full
  // gauges
  'queue_depth',
  'queue_bytes',
  'held',
  'replays_active',
] as const
export type ZmqSourceCounter = (typeof ZMQ_SOURCE_COUNTERS)[number]

/** Why the source stopped: close(), a listener that failed 10 times in a row, or a consumer call that threw. */
export type ZmqSourceStop =
  | { reason: 'closed' }
  | { reason: 'receive_errors'; endpoint: string; error: unknown }
  | { reason: 'consumer_error'; error: unknown }

/** One (endpoint, dp rank) stream as the source tracks it (inspection). */
export interface ZmqTrackerState {
  endpoint: string
  dpRank: number
  /** Last seq received live (null: none yet, or reset). */
  lastLive: bigint | null
  /** Last seq applied (live or replayed); -1n after a restart before anything was applied. */
  lastApplied: bigint | null
  replaying: boolean
  held: number
}

export interface ZmqSourceEvents {
  stopped: [ZmqSourceStop]
}

/** SPEC 2.1 backoff after the n-th consecutive receive error (n = 1..9); the 10th stops the listener. */
export const RECEIVE_BACKOFF_MS = [20, 40, 80, 160, 320, 640, 1280, 2560, 2560] as const
const MAX_RECEIVE_ERRORS = 10
/** Streams tracked per source, so input cannot grow the state without bound (SPEC 8). */
const MAX_TRACKERS = 4096
/** Silence that ends a replay round once replies have flowed (see #runReplay). */
const REPLAY_STALL_MS = 1000

const END_SEQ = (1n << 64n) - 1n
const EPOCH_MARK = Buffer.from('\x00sgl-kv-epoch=', 'latin1')
const EMPTY = Buffer.alloc(0)

interface Endpoint {
  address: string
  replay: string | null
  sock: Subscriber
  /** Tracker of the last well-formed batch seen here: a malformed payload belongs to it. */
  last: Tracker | null
  trackers: Set<Tracker>
  connected: boolean
  disconnected: boolean
}

interface Held {
  seq: bigint
  payload: Uint8Array | null // null: malformed payload (advances the cursor, applies nothing)
}

interface Tracker {
  ep: Endpoint
  dpRank: number
  lastLive: bigint | null
  /** null: fresh (the first seq seen is taken as the start); otherwise the last applied seq (-1n: none). */
  lastApplied: bigint | null
  publisherId: Uint8Array | null
  epoch: string | null
  replay: Replay | null
  held: Held[]
  heldBytes: number
  /** Set by a restart detected between a disconnect and the reconnect, which then need not reset again. */
  restartedSinceDisconnect: boolean
}

interface Replay {
  tracker: Tracker
  kind: 'initial' | 'restart' | 'gap'
  dealer: Dealer | null
  cancelled: boolean
}

type Item = { kind: 'live'; ep: Endpoint; topic: Buffer; seq: bigint; payload: Buffer } | { kind: 'disconnect' | 'reconnect'; ep: Endpoint }

/**
 * Reads engine KV events from ZeroMQ and feeds them to a consumer. `await ZmqSource.create(opts, consumer)`
 * validates the options (a TypeError or RangeError naming the option), opens the sockets and starts
 * reading. It emits one `'stopped'` event ({@link ZmqSourceStop}) when it stops, whether by close() or
 * by 10 consecutive receive errors; it never emits `'error'`.
 */
export class ZmqSource extends EventEmitter<ZmqSourceEvents> {
  readonly #consumer: BatchConsumer
  readonly #opts: SourceSettings
  readonly #log: RateLimitedLog
  readonly #endpoints: Endpoint[] = []
  readonly #trackers = new Map<string, Tracker>()
  readonly #counts = Object.fromEntries(ZMQ_SOURCE_COUNTERS.map((k) => [k, 0n])) as Record<ZmqSourceCounter, bigint>

  #queue: Item[] = []
  #queueHead = 0
  #queueBytes = 0
  #wakeLoop: (() => void) | null = null
  #spaceWaiters: (() => void)[] = []
  #lock: Promise<void> = Promise.resolve()
  #tasks = new Set<Promise<void>>()
  #replays = new Set<Replay>()
  #sleeps = new Set<{ timer: NodeJS.Timeout; done: () => void }>()
  #stopping = false
  #stopped: Promise<void> | null = null

  private constructor(opts: ParsedOptions, consumer: BatchConsumer) {
    super()
    this.#consumer = consumer
    this.#opts = opts.rest
    this.#log = new RateLimitedLog(opts.logger)
    for (const e of opts.endpoints) {
      const sock = this.#opts.createSubscriber()
      this.#endpoints.push({
        address: e.endpoint,
        replay: e.replayEndpoint ?? null,
        sock,
        last: null,
        trackers: new Set(),
        connected: false,
        disconnected: false,
      })
    }
  }

  static async create(opts: ZmqSourceOptions, consumer: BatchConsumer): Promise<ZmqSource> {
    const parsed = parseOptions(opts)
    await loadZeromq()
    if (
      typeof consumer !== 'object' ||
      consumer === null ||
      typeof consumer.ingest !== 'function' ||
      typeof consumer.resetRank !== 'function'
    )
      throw new TypeError('consumer must have ingest(payload) and resetRank(dpRank) methods')
    const source = new ZmqSource(parsed, consumer)
    try {
      await source.#open()
    } catch (e) {
      await source.close()
      throw e
    }
    return source
  }

  /** The live endpoints, with the real port where a SUB bound to port 0. */
  get endpoints(): string[] {
    return this.#endpoints.map((e) => e.address)
  }

  /** Counters by name (see ZMQ_SOURCE_COUNTERS), plus the current queue, held and replay gauges. */
  stats(): Record<ZmqSourceCounter, bigint> {
    let held = 0
    for (const t of this.#trackers.values()) held += t.held.length
    return {
      ...this.#counts,
      queue_depth: BigInt(this.#queue.length - this.#queueHead),
      queue_bytes: BigInt(this.#queueBytes),
      held: BigInt(held),
      replays_active: BigInt(this.#replays.size),
    }
  }

  /** Every tracked (endpoint, dp rank) stream. */
  trackers(): ZmqTrackerState[] {
    return [...this.#trackers.values()].map((t) => ({
      endpoint: t.ep.address,
      dpRank: t.dpRank,
      lastLive: t.lastLive,
      lastApplied: t.lastApplied,
      replaying: t.replay !== null,
      held: t.held.length,
    }))
  }

  /** Stops reading and replaying, waits for the consumer call in flight. Idempotent. */
  close(): Promise<void> {
    return this.#stop({ reason: 'closed' })
  }

  // ---------------------------------------------------------------------------------------------------
  // sockets

  async #open(): Promise<void> {
    for (const ep of this.#endpoints) {
      const sock = ep.sock
      sock.linger = 0
      if (this.#opts.receiveHighWaterMark !== undefined) sock.receiveHighWaterMark = this.#opts.receiveHighWaterMark
      sock.subscribe(this.#opts.topic)
      if (this.#opts.bind) {
        // several engines may connect to one bound endpoint: a peer's reconnect cannot be told apart, so
        // only seq, publisher id and topic epoch reveal restarts here
        await sock.bind(ep.address)
        ep.address = sock.lastEndpoint ?? ep.address
      } else {
        this.#watch(ep)
        sock.connect(ep.address)
      }
    }
    for (const ep of this.#endpoints) this.#spawn(this.#read(ep))
    this.#spawn(this.#loop())
  }

  /** A disconnect then a reconnect of an endpoint: its ranks' state is unknown, treated as a restart. */
  #watch(ep: Endpoint): void {
    const events = ep.sock.events
    events.on('connect', () => {
      if (ep.connected && ep.disconnected) this.#push({ kind: 'reconnect', ep })
      ep.connected = true
      ep.disconnected = false
    })
    events.on('disconnect', () => {
      if (!ep.connected || ep.disconnected) return
      ep.disconnected = true
      this.#push({ kind: 'disconnect', ep })
    })
  }

  async #read(ep: Endpoint): Promise<void> {
    let errors = 0
    while (!this.#stopping) {
      await this.#waitForSpace()
      if (this.#stopping) return
      let frames: Buffer[]
      try {
        frames = await ep.sock.receive()
      } catch (error) {
        if (this.#stopping) return
        errors++
        this.#counts.receive_errors++
        if (errors >= MAX_RECEIVE_ERRORS) {
          this.#log.logger.error({ endpoint: ep.address, err: error, errors }, 'zmq receive failed 10 times in a row: source stopped')
          void this.#stop({ reason: 'receive_errors', endpoint: ep.address, error })
          return
        }
        const ms = RECEIVE_BACKOFF_MS[errors - 1]!
        this.#log.log('warn', `receive:${ep.address}`, { endpoint: ep.address, err: error, errors, backoffMs: ms }, 'zmq receive error')
        await this.#sleep(ms)
        continue
      }
      errors = 0
      this.#counts.received++
      if (frames.length !== 3) {
        this.#drop('dropped_frames', ep, { frames: frames.length }, 'message without exactly 3 frames dropped')
        continue
      }
      if (frames[1]!.length !== 8) {
        this.#drop('dropped_seq_length', ep, { seqBytes: frames[1]!.length }, 'message with a seq frame not 8 bytes long dropped')
        continue
      }
      this.#push({ kind: 'live', ep, topic: frames[0]!, seq: frames[1]!.readBigUInt64BE(0), payload: frames[2]! })
    }
  }

  #drop(counter: ZmqSourceCounter, ep: Endpoint, obj: object, msg: string): void {
    this.#counts[counter]++
    this.#log.log('warn', `${counter}:${ep.address}`, { endpoint: ep.address, ...obj }, msg)
  }

  // ---------------------------------------------------------------------------------------------------
  // the bounded queue

  #push(item: Item): void {
    if (this.#stopping) return
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
    this.#counts.queue_full++
    while (this.#full() && !this.#stopping) await new Promise<void>((r) => this.#spaceWaiters.push(r))
  }

  async #take(): Promise<Item | null> {
    while (this.#queueHead === this.#queue.length) {
      if (this.#stopping) return null
      await new Promise<void>((r) => (this.#wakeLoop = r))
    }
    const item = this.#queue[this.#queueHead]!
    // drop the reference now: a taken payload must not live on until the array is compacted
    this.#queue[this.#queueHead++] = undefined as never
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

  async #loop(): Promise<void> {
    for (;;) {
      const item = await this.#take()
      if (item === null) return
      await this.#locked(() => (item.kind === 'live' ? this.#onLive(item) : this.#onConnection(item.kind, item.ep)))
    }
  }

  /** Runs `fn` when no other state change or consumer call is in flight. */
  #locked(fn: () => Promise<void> | void): Promise<void> {
    const run = this.#lock.then(async () => {
      if (!this.#stopping) await fn()
    })
    this.#lock = run.catch(() => undefined)
    return run
  }

  // ---------------------------------------------------------------------------------------------------
  // sequence tracking

  /** The stream of (endpoint, dp rank); null past MAX_TRACKERS (a dp rank is a u32 the engine picks). */
  #tracker(ep: Endpoint, dpRank: number): Tracker | null {
    const key = `${this.#endpoints.indexOf(ep)}:${dpRank}`
    let t = this.#trackers.get(key)
    if (!t) {
      if (this.#trackers.size >= MAX_TRACKERS) return null
      t = {
        ep,
        dpRank,
        lastLive: null,
        lastApplied: null,
        publisherId: null,
        epoch: null,
        replay: null,
        held: [],
        heldBytes: 0,
        restartedSinceDisconnect: false,
      }
      this.#trackers.set(key, t)
      ep.trackers.add(t)
    }
    return t
  }

  async #onLive(m: Extract<Item, { kind: 'live' }>): Promise<void> {
    const peek = peekBatch(m.payload)
    let t: Tracker
    if (peek === null) {
      // A malformed payload still takes its seq: it advances the stream of the endpoint's last rank when
      // it is that stream's next seq (so it is never replayed in a loop); otherwise there is no telling
      // which stream it belongs to, and touching one could fake a restart.
      const last = m.ep.last
      if (last === null || last.lastLive === null || m.seq !== last.lastLive + 1n) {
        this.#drop('dropped_malformed', m.ep, { seq: String(m.seq) }, 'malformed batch dropped')
        return
      }
      t = last
    } else {
      const found = this.#tracker(m.ep, peek.dpRank)
      if (found === null) {
        this.#drop('dropped_rank', m.ep, { dpRank: peek.dpRank }, `batch of a dp rank beyond ${MAX_TRACKERS} streams dropped`)
        return
      }
      t = found
      m.ep.last = t
    }
    const msg: Held = { seq: m.seq, payload: peek === null ? null : m.payload }
    const epoch = topicEpoch(m.topic)
    const publisherId = peek?.publisherId ?? null

    if (t.lastLive !== null) {
      const why =
        m.seq <= t.lastLive
          ? 'seq'
          : publisherId !== null && t.publisherId !== null && !Buffer.from(publisherId).equals(t.publisherId)
            ? 'publisher_id'
            : epoch !== null && t.epoch !== null && epoch !== t.epoch
              ? 'topic_epoch'
              : null
      if (why !== null) {
        if (publisherId !== null) t.publisherId = publisherId
        if (epoch !== null) t.epoch = epoch
        return this.#restart(t, why, msg)
      }
    }
    if (publisherId !== null) t.publisherId = publisherId
    if (epoch !== null) t.epoch = epoch

    const first = t.lastLive === null && t.lastApplied === null
    t.lastLive = m.seq
    if (t.replay !== null) return this.#hold(t, msg)
    if (first) {
      if (t.ep.replay !== null) {
        this.#hold(t, msg)
        return this.#startReplay(t, 'initial', 0n)
      }
      return this.#apply(t, msg)
    }
    const last = t.lastApplied ?? m.seq - 1n
    if (m.seq <= last) {
      this.#counts.duplicates++
      return
    }
    if (m.seq === last + 1n) return this.#apply(t, msg)
    this.#counts.gaps++
    if (t.ep.replay !== null) {
      this.#log.log(
        'info',
        `gap:${t.ep.address}:${t.dpRank}`,
        this.#where(t, { from: String(last + 1n), to: String(m.seq - 1n) }),
        'seq gap: replaying',
      )
      this.#hold(t, msg)
      return this.#startReplay(t, 'gap', last + 1n)
    }
    await this.#lose(t, m.seq - last - 1n, 'gap without a replay endpoint')
    return this.#apply(t, msg)
  }

  /** The engine behind a stream restarted: reset the rank, then read the new incarnation from seq 0. */
  async #restart(t: Tracker, why: string, msg: Held | null): Promise<void> {
    this.#counts.restarts++
    t.restartedSinceDisconnect = true
    this.#log.log('info', `restart:${t.ep.address}:${t.dpRank}`, this.#where(t, { why }), 'engine restart: resetting the rank')
    this.#cancelReplay(t)
    // what is held belongs to the old incarnation, which the reset drops anyway
    t.held = []
    t.heldBytes = 0
    await this.#reset(t)
    t.lastApplied = -1n
    t.lastLive = msg?.seq ?? null
    if (t.ep.replay !== null) {
      if (msg) this.#hold(t, msg)
      return this.#startReplay(t, 'restart', 0n)
    }
    if (msg === null) {
      t.lastApplied = null // no replay: whatever comes next is the start
      return
    }
    // without replay the stream continues from this message; earlier seqs of the new incarnation were missed
    if (msg.seq > 0n) this.#lost(t, msg.seq, 'start of a restarted engine missed')
    return this.#apply(t, msg)
  }

  async #onConnection(kind: 'disconnect' | 'reconnect', ep: Endpoint): Promise<void> {
    if (kind === 'disconnect') {
      for (const t of ep.trackers) t.restartedSinceDisconnect = false
      return
    }
    for (const t of ep.trackers) {
      if (t.restartedSinceDisconnect) continue
      await this.#restart(t, 'reconnect', null)
    }
  }

  #hold(t: Tracker, msg: Held): void {
    const size = msg.payload?.length ?? 0
    if (t.held.length >= this.#opts.maxHeld || t.heldBytes + size > this.#opts.maxHeldBytes) {
      // not held: the replay rounds after this one fetch it again, or count it lost
      this.#counts.held_overflow++
      this.#log.log(
        'warn',
        `held:${t.ep.address}:${t.dpRank}`,
        this.#where(t, { seq: String(msg.seq) }),
        'too many live messages held during a replay',
      )
      return
    }
    t.held.push(msg)
    t.heldBytes += size
  }

  /** Applies one batch (the tracker's next seq) through the consumer. */
  async #apply(t: Tracker, msg: Held, replayed = false): Promise<void> {
    t.lastApplied = msg.seq
    if (msg.payload === null) {
      this.#counts.dropped_malformed++
      this.#log.log('warn', `dropped_malformed:${t.ep.address}`, this.#where(t, { seq: String(msg.seq) }), 'malformed batch dropped')
      return
    }
    if (replayed) this.#counts.recovered++
    this.#counts.ingested++
    await this.#consumer.ingest(msg.payload)
  }

  async #reset(t: Tracker): Promise<void> {
    this.#counts.resets++
    await this.#consumer.resetRank(t.dpRank)
  }

  /** Counts and logs `n` seqs that will never be applied. */
  #lost(t: Tracker, n: bigint, why: string): void {
    this.#counts.lost += n
    this.#log.log('warn', `lost:${t.ep.address}:${t.dpRank}`, this.#where(t, { lost: String(n), why }), 'engine batches lost')
  }

  /** A loss: counted, logged, and with onLoss 'reset' the rank is reset. */
  async #lose(t: Tracker, n: bigint, why: string): Promise<void> {
    if (n <= 0n) return
    this.#lost(t, n, why)
    if (this.#opts.onLoss === 'reset') await this.#reset(t)
  }

  #where(t: Tracker, obj: object): object {
    return { endpoint: t.ep.address, dpRank: t.dpRank, ...obj }
  }

  // ---------------------------------------------------------------------------------------------------
  // replay

  #startReplay(t: Tracker, kind: Replay['kind'], from: bigint): void {
    const rep: Replay = { tracker: t, kind, dealer: null, cancelled: false }
    t.replay = rep
    this.#replays.add(rep)
    this.#spawn(this.#runReplay(rep, from))
  }

  #cancelReplay(t: Tracker): void {
    const rep = t.replay
    if (!rep) return
    rep.cancelled = true
    rep.dealer?.close()
    this.#replays.delete(rep)
    t.replay = null
  }

  /**
   * Replay rounds until the stream is whole again. In a round, replies are applied in seq order, merged
   * with the held live messages. A round that starts later than asked (the engine's buffer rolled over)
   * loses the seqs it skips. A hole in the middle of a round (ZMQ dropped replies at a high-water mark)
   * or after it (live messages dropped meanwhile), or a round that goes silent after some replies (its
   * tail and end marker dropped), starts another round from there, as long as the round made progress;
   * otherwise what is missing is lost. A round without any reply for replayTimeoutMs loses what is missing.
   */
  async #runReplay(rep: Replay, from: bigint): Promise<void> {
    const t = rep.tracker
    const replayEndpoint = t.ep.replay!
    try {
      for (;;) {
        const dealer = new (zeromq().Dealer)({
          linger: 0,
          receiveTimeout: this.#opts.replayTimeoutMs,
          sendTimeout: this.#opts.replayTimeoutMs,
        })
        rep.dealer = dealer
        if (rep.cancelled) return dealer.close()
        dealer.connect(replayEndpoint)
        let outcome: 'end' | 'hole' | 'timeout' = 'timeout'
        let progress = 0
        let firstReply = true
        let holeAt = 0n
        try {
          this.#counts.replays++
          if (!(await this.#request(dealer, rep, from))) return
          for (;;) {
            const frames = await this.#receiveReply(dealer, rep)
            if (frames === 'closed') return
            if (frames === 'timeout') break
            const reply = parseReply(frames)
            if (reply === null) {
              this.#counts.dropped_replay++
              continue
            }
            if (reply === 'end') {
              outcome = 'end'
              break
            }
            let r = 'skipped' as 'applied' | 'skipped' | 'hole'
            await this.#locked(async () => {
              if (rep.cancelled) return
              r = await this.#onReplayed(t, rep, reply.seq, reply.payload, firstReply, progress)
              firstReply = false
            })
            if (rep.cancelled || this.#stopping) return
            if (r === 'applied') {
              // once replies flow, silence means the engine's ROUTER dropped the rest (end marker included)
              // at its high-water mark: retry soon rather than wait the full timeout
              if (progress++ === 0) dealer.receiveTimeout = Math.min(this.#opts.replayTimeoutMs, REPLAY_STALL_MS)
            } else if (r === 'hole') {
              outcome = 'hole'
              holeAt = reply.seq
              break
            }
          }
        } finally {
          dealer.close()
          rep.dealer = null
        }
        let again: bigint | null = null
        await this.#locked(async () => {
          if (rep.cancelled) return
          if (outcome === 'timeout' && progress === 0) {
            this.#counts.replay_timeouts++
            this.#log.log(
              'warn',
              `replay_timeout:${replayEndpoint}`,
              this.#where(t, { replayEndpoint, from: String(from) }),
              'replay timed out',
            )
          } else if (outcome === 'timeout') this.#counts.replay_stalls++
          again = await this.#drainHeld(t, progress > 0)
          // the engine has holeAt: go on from what is still missing before it
          if (again === null && outcome === 'hole' && t.lastApplied !== null && t.lastApplied < holeAt) again = t.lastApplied + 1n
          if (again === null) {
            t.replay = null
            this.#replays.delete(rep)
          }
        })
        if (again === null || rep.cancelled || this.#stopping) return
        from = again
      }
    } finally {
      if (t.replay === rep && (this.#stopping || rep.cancelled)) t.replay = null
      this.#replays.delete(rep)
    }
  }

  /** Sends the replay request; false when the replay was cancelled meanwhile. */
  async #request(dealer: Dealer, rep: Replay, from: bigint): Promise<boolean> {
    const start = Buffer.allocUnsafe(8)
    start.writeBigUInt64BE(from)
    try {
      await dealer.send([EMPTY, start])
      return true
    } catch (e) {
      if (!rep.cancelled && !this.#stopping)
        this.#log.log('warn', `replay_error:${rep.tracker.ep.replay}`, this.#where(rep.tracker, { err: e }), 'replay request not sent')
      return !rep.cancelled && !this.#stopping
    }
  }

  /** The next reply frames; 'timeout' after replayTimeoutMs of silence (a DEALER never reports a dead peer). */
  async #receiveReply(dealer: Dealer, rep: Replay): Promise<Buffer[] | 'timeout' | 'closed'> {
    try {
      const frames = await dealer.receive()
      return rep.cancelled || this.#stopping ? 'closed' : frames
    } catch (e) {
      if (rep.cancelled || this.#stopping) return 'closed'
      if ((e as { code?: string }).code !== 'EAGAIN')
        this.#log.log('warn', `replay_error:${rep.tracker.ep.replay}`, this.#where(rep.tracker, { err: e }), 'replay receive failed')
      return 'timeout'
    }
  }

  /** One replayed batch. Returns 'hole' when the round should stop and start again from lastApplied + 1. */
  async #onReplayed(
    t: Tracker,
    rep: Replay,
    seq: bigint,
    payload: Buffer,
    firstReply: boolean,
    progress: number,
  ): Promise<'applied' | 'skipped' | 'hole'> {
    const peek = peekBatch(payload)
    if (peek !== null && peek.dpRank !== t.dpRank) {
      this.#counts.dropped_replay++
      return 'skipped'
    }
    await this.#applyHeld(t, seq, rep.kind === 'initial', false)
    const msg: Held = { seq, payload: peek === null ? null : payload }
    if (t.lastApplied === null) {
      // first contact: the replay starts where the engine's buffer does
      await this.#apply(t, msg, true)
      return 'applied'
    }
    if (seq > t.lastApplied + 1n) {
      if (!firstReply && progress > 0) return 'hole'
      // the replay started late (the engine's buffer rolled over) or skipped seqs: what neither it nor
      // the held live messages have is lost
      await this.#applyHeld(t, seq, false, true)
      if (seq > t.lastApplied + 1n)
        await this.#lose(t, seq - t.lastApplied - 1n, firstReply ? 'replay started after the requested seq' : 'replay skipped seqs')
    }
    if (seq <= t.lastApplied) return 'skipped' // already applied (a live copy, or an earlier round)
    await this.#apply(t, msg, true)
    return 'applied'
  }

  /**
   * Applies the held live messages before `seq` that are next in line, so a reply never overtakes them
   * (on first contact the earliest one is the start). With `losing`, also those after a hole, which is lost.
   */
  async #applyHeld(t: Tracker, seq: bigint, firstContact: boolean, losing: boolean): Promise<void> {
    while (t.held.length > 0 && t.held[0]!.seq < seq) {
      const h = t.held[0]!
      if (t.lastApplied === null) {
        if (!firstContact) return
      } else if (h.seq <= t.lastApplied) {
        this.#shiftHeld(t)
        this.#counts.duplicates++
        continue
      } else if (h.seq !== t.lastApplied + 1n) {
        if (!losing) return
        await this.#lose(t, h.seq - t.lastApplied - 1n, 'replay started after the requested seq')
      }
      this.#shiftHeld(t)
      await this.#apply(t, h)
    }
  }

  /**
   * After a round: apply the held messages in seq order. Returns the seq to start another round from when
   * something is missing that the engine published after answering (and the round made progress), else
   * null, losing what is missing.
   */
  async #drainHeld(t: Tracker, retry: boolean): Promise<bigint | null> {
    while (t.held.length > 0) {
      const h = t.held[0]!
      if (t.lastApplied === null) {
        // first contact and the replay gave nothing: the first live message is the start
        this.#shiftHeld(t)
        await this.#apply(t, h)
        continue
      }
      if (h.seq <= t.lastApplied) {
        this.#shiftHeld(t)
        this.#counts.duplicates++
        continue
      }
      if (h.seq !== t.lastApplied + 1n) {
        if (retry) return t.lastApplied + 1n
        await this.#lose(t, h.seq - t.lastApplied - 1n, 'replay did not fill the gap')
      }
      this.#shiftHeld(t)
      await this.#apply(t, h)
    }
    // live messages dropped by an overflow after the last one held
    if (t.lastLive !== null && t.lastApplied !== null && t.lastLive > t.lastApplied) {
      if (retry) return t.lastApplied + 1n
      await this.#lose(t, t.lastLive - t.lastApplied, 'replay did not fill the gap')
      t.lastApplied = t.lastLive
    }
    return null
  }

  #shiftHeld(t: Tracker): void {
    const h = t.held.shift()!
    t.heldBytes -= h.payload?.length ?? 0
  }

  // ---------------------------------------------------------------------------------------------------
  // lifecycle

  #spawn(p: Promise<void>): void {
    const task = p.catch((error) => {
      // a consumer that throws: log it, stop the source (nothing sane can follow a failed apply)
      this.#log.logger.error({ err: error }, 'zmq source: the consumer failed; source stopped')
      void this.#stop({ reason: 'consumer_error', error })
    })
    this.#tasks.add(task)
    void task.finally(() => this.#tasks.delete(task))
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

  #stop(why: ZmqSourceStop): Promise<void> {
    if (this.#stopped) return this.#stopped
    this.#stopping = true
    this.#stopped = (async () => {
      for (const ep of this.#endpoints) ep.sock.close()
      for (const rep of [...this.#replays]) {
        rep.cancelled = true
        rep.dealer?.close()
      }
      for (const s of this.#sleeps) {
        clearTimeout(s.timer)
        s.done()
      }
      this.#sleeps.clear()
      this.#wakeLoop?.()
      for (const w of this.#spaceWaiters) w()
      this.#spaceWaiters = []
      // wait for the consumer call in flight and every task
      while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks])
      await this.#lock
      this.#queue = []
      this.#queueHead = 0
      this.#queueBytes = 0
      this.emit('stopped', why)
    })()
    return this.#stopped
  }
}

/** A replay reply in either layout: `["", seq, payload]` or `["", topic, seq, payload]`; 'end' for END_SEQ. */
function parseReply(frames: Buffer[]): { seq: bigint; payload: Buffer } | 'end' | null {
  if (frames[0]?.length !== 0) return null
  let seqFrame: Buffer
  let payload: Buffer
  if (frames.length === 3) [, seqFrame, payload] = frames as [Buffer, Buffer, Buffer]
  else if (frames.length === 4) [, , seqFrame, payload] = frames as [Buffer, Buffer, Buffer, Buffer]
  else return null
  if (seqFrame.length !== 8) return null
  const seq = seqFrame.readBigUInt64BE(0)
  return seq === END_SEQ ? 'end' : { seq, payload }
}

/** SGLang's epoch suffix of a topic (`"\x00sgl-kv-epoch=<epoch>"`, up to the next NUL), or null. */
function topicEpoch(topic: Buffer): string | null {
  const at = topic.indexOf(EPOCH_MARK)
  if (at < 0) return null
  const from = at + EPOCH_MARK.length
  const end = topic.indexOf(0, from)
  return topic.toString('latin1', from, end < 0 ? topic.length : end)
}

// ---------------------------------------------------------------------------------------------------
// options

interface ParsedOptions {
  endpoints: ZmqEndpoint[]
  logger: Logger
  rest: SourceSettings
}

interface SourceSettings {
  topic: string
  bind: boolean
  replayTimeoutMs: number
  onLoss: 'keep' | 'reset'
  maxHeld: number
  maxHeldBytes: number
  queueSize: number
  queueBytes: number
  receiveHighWaterMark: number | undefined
  createSubscriber: () => Subscriber
}

const ENDPOINT_RE = /^(tcp|ipc|inproc):\/\/.+/u

function endpointArg(name: string, v: unknown): string {
  if (typeof v !== 'string') throw new TypeError(`${name} must be a string, got ${typeof v}`)
  if (!ENDPOINT_RE.test(v)) throw new RangeError(`${name} must be a tcp://, ipc:// or inproc:// endpoint, got ${JSON.stringify(v)}`)
  return v
}

function intArg(name: string, v: unknown, dflt: number, min: number, max: number): number {
  return v === undefined ? dflt : intInRange(name, v, min, max)
}

/** `tcp://host:port` for rank r: `tcp://host:(port + r)` (vLLM's DP layout). */
function offsetPort(name: string, endpoint: string, rank: number): string {
  const m = /^(tcp:\/\/.+):(\d+)$/u.exec(endpoint)
  if (!m) throw new RangeError(`${name} must be tcp://host:port when dpRanks > 1, got ${JSON.stringify(endpoint)}`)
  const port = Number(m[2]) + rank
  if (port > 65535) throw new RangeError(`${name}: port + dpRanks - 1 exceeds 65535`)
  return `${m[1]}:${port}`
}

function parseOptions(opts: ZmqSourceOptions): ParsedOptions {
  if (typeof opts !== 'object' || opts === null) throw new TypeError('ZmqSource options must be an object')
  const endpoints: ZmqEndpoint[] = []
  if ((opts.endpoint === undefined) === (opts.endpoints === undefined))
    throw new TypeError('exactly one of endpoint or endpoints must be given')
  if (opts.endpoint !== undefined) {
    const endpoint = endpointArg('endpoint', opts.endpoint)
    const replay = opts.replayEndpoint === undefined ? undefined : endpointArg('replayEndpoint', opts.replayEndpoint)
    const ranks = intArg('dpRanks', opts.dpRanks, 1, 1, 1024)
    for (let r = 0; r < ranks; r++) {
      const e: ZmqEndpoint = { endpoint: ranks === 1 ? endpoint : offsetPort('endpoint', endpoint, r) }
      if (replay !== undefined) e.replayEndpoint = ranks === 1 ? replay : offsetPort('replayEndpoint', replay, r)
      endpoints.push(e)
    }
  } else {
    if (opts.replayEndpoint !== undefined)
      throw new TypeError('replayEndpoint goes with endpoint; with endpoints, give each its replayEndpoint')
    if (opts.dpRanks !== undefined) throw new TypeError('dpRanks goes with endpoint, not endpoints')
    if (!Array.isArray(opts.endpoints) || opts.endpoints.length === 0) throw new TypeError('endpoints must be a non-empty array')
    opts.endpoints.forEach((e, i) => {
      if (typeof e === 'string') endpoints.push({ endpoint: endpointArg(`endpoints[${i}]`, e) })
      else if (typeof e === 'object' && e !== null) {
        const out: ZmqEndpoint = { endpoint: endpointArg(`endpoints[${i}].endpoint`, e.endpoint) }
        if (e.replayEndpoint !== undefined) out.replayEndpoint = endpointArg(`endpoints[${i}].replayEndpoint`, e.replayEndpoint)
        endpoints.push(out)
      } else throw new TypeError(`endpoints[${i}] must be a string or { endpoint, replayEndpoint? }`)
    })
  }
  if (new Set(endpoints.map((e) => e.endpoint)).size !== endpoints.length) throw new RangeError('endpoints must not repeat an endpoint')
  const topic = opts.topic ?? ''
  if (typeof topic !== 'string') throw new TypeError(`topic must be a string, got ${typeof topic}`)
  const bind = opts.bind ?? false
  if (typeof bind !== 'boolean') throw new TypeError(`bind must be a boolean, got ${typeof bind}`)
  const onLoss = opts.onLoss ?? 'keep'
  if (onLoss !== 'keep' && onLoss !== 'reset') throw new RangeError(`onLoss must be 'keep' or 'reset', got ${JSON.stringify(onLoss)}`)
  const createSubscriber = opts.createSubscriber ?? (() => new (zeromq().Subscriber)())
  if (typeof createSubscriber !== 'function') throw new TypeError('createSubscriber must be a function')
  return {
    endpoints,
    logger: loggerOption(opts.logger),
    rest: {
      topic,
      bind,
      onLoss,
      createSubscriber,
      replayTimeoutMs: intArg('replayTimeoutMs', opts.replayTimeoutMs, 5000, 1, 3_600_000),
      maxHeld: intArg('maxHeld', opts.maxHeld, 10_000, 1, 1 << 24),
      maxHeldBytes: intArg('maxHeldBytes', opts.maxHeldBytes, 64 << 20, 1, 2 ** 40),
      queueSize: intArg('queueSize', opts.queueSize, 1024, 1, 1 << 24),
      queueBytes: intArg('queueBytes', opts.queueBytes, 64 << 20, 1, 2 ** 40),
      receiveHighWaterMark:
        opts.receiveHighWaterMark === undefined ? undefined : intArg('receiveHighWaterMark', opts.receiveHighWaterMark, 0, 0, 1 << 30),
    },
  }
}
