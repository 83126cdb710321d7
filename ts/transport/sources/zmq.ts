// The ZeroMQ engine source (SPEC 2.1): reads engine batches and delivers them in order to a consumer that
// applies them (the publisher's Ingestor), repairing gaps by replay and detecting engine restarts.
//
// Flow: reader.ts reads the SUB sockets into one bounded queue; one loop here takes its items in order,
// reads the batch header and asks the sequencer (sequencer.ts), which decides; this class performs the
// actions it returns (consumer calls, replay rounds from replay.ts, counters and logs). Every sequencer
// event and the actions it returns run inside one lock, so consumer calls never overlap and each rank's
// batches arrive in order.
import { EventEmitter } from 'node:events'
// the batch header is read in TypeScript, so the consumer's ingest is the only native call per message
import { peekBatch } from '../../fallback/engine.js'
import { RateLimitedLog } from '../../util/log.js'
import { loadZeromq } from '../zeromq.js'
import { type ParsedOptions, parseOptions, type SourceSettings, type ZmqEndpoint, type ZmqSourceOptions } from './options.js'
import { EngineReader, RECEIVE_BACKOFF_MS, type ReaderItem } from './reader.js'
import { ReplayRound } from './replay.js'
import { type BatchHeader, MAX_STREAMS, Sequencer, type SequencerAction } from './sequencer.js'

export type { ZmqEndpoint, ZmqSourceOptions }
export { RECEIVE_BACKOFF_MS }

/** What the source feeds: the publisher's ingest path. */
export interface BatchConsumer {
  /** One engine batch (the payload frame), in order per rank; resolves when accepted (backpressure). */
  ingest(payload: Uint8Array): Promise<unknown>
  /** Reset of one dp rank (engine restart, or a loss with onLoss 'reset'): the consumer emits SPEC 3's reset rule. */
  resetRank(dpRank: number): Promise<unknown>
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
  readonly #replayEndpoints: (string | null)[]
  #reader: EngineReader
  readonly #endpointList: ZmqEndpoint[]
  #loopDone: Promise<void> = Promise.resolve()
  #paused = false
  readonly #sequencer: Sequencer
  readonly #rounds = new Map<number, ReplayRound>()
  readonly #counts = Object.fromEntries(ZMQ_SOURCE_COUNTERS.map((k) => [k, 0n])) as Record<ZmqSourceCounter, bigint>

  #lock: Promise<void> = Promise.resolve()
  #tasks = new Set<Promise<void>>()
  #stopping = false
  #stopped: Promise<void> | null = null

  private constructor(opts: ParsedOptions, consumer: BatchConsumer) {
    super()
    this.#consumer = consumer
    this.#opts = opts.rest
    this.#log = new RateLimitedLog(opts.logger)
    this.#replayEndpoints = opts.endpoints.map((e) => e.replayEndpoint ?? null)
    this.#endpointList = opts.endpoints
    this.#reader = new EngineReader(opts.endpoints, opts.rest, this.#log, (c) => this.#counts[c]++)
    this.#sequencer = new Sequencer({
      endpoints: this.#replayEndpoints.map((r) => ({ replay: r !== null })),
      bind: opts.rest.bind,
      onLoss: opts.rest.onLoss,
      maxHeld: opts.rest.maxHeld,
      maxHeldBytes: opts.rest.maxHeldBytes,
    })
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
    return this.#reader.addresses
  }

  /** Counters by name (see ZMQ_SOURCE_COUNTERS), plus the current queue, held and replay gauges. */
  stats(): Record<ZmqSourceCounter, bigint> {
    return {
      ...this.#counts,
      queue_depth: BigInt(this.#reader.depth),
      queue_bytes: BigInt(this.#reader.bytes),
      held: BigInt(this.#sequencer.held()),
      replays_active: BigInt(this.#sequencer.replaysActive()),
    }
  }

  /** Every tracked (endpoint, dp rank) stream. */
  trackers(): ZmqTrackerState[] {
    const addresses = this.#reader.addresses
    return this.#sequencer.streams().map((s) => ({ ...s, endpoint: addresses[s.endpoint]! }))
  }

  /** Whether pause() closed the SUB sockets (until resume()). */
  get paused(): boolean {
    return this.#paused
  }

  /**
   * Closes the SUB sockets and waits until what they had queued is applied; the sequence cursors stay,
   * so resume()'s first batch after a gap is replayed from the cursor (replays under way go on). No-op
   * when paused or closed.
   */
  async pause(): Promise<void> {
    if (this.#paused || this.#stopping) return
    this.#paused = true
    this.#reader.close()
    await this.#loopDone
    this.#reader.clear()
  }

  /** Opens fresh SUB sockets on the same endpoints after pause(). No-op when not paused or closed. */
  async resume(): Promise<void> {
    if (!this.#paused || this.#stopping) return
    const addresses = this.#reader.addresses
    const endpoints = this.#endpointList.map((e, i) => ({ ...e, endpoint: addresses[i] ?? e.endpoint }))
    this.#reader = new EngineReader(endpoints, this.#opts, this.#log, (c) => this.#counts[c]++)
    this.#paused = false
    await this.#open()
  }

  /** Stops reading and replaying, waits for the consumer call in flight. Idempotent. */
  close(): Promise<void> {
    return this.#stop({ reason: 'closed' })
  }

  async #open(): Promise<void> {
    await this.#reader.open()
    this.#reader.addresses.forEach((address, i) => {
      this.#spawn(
        this.#reader.read(i).then((failed) => {
          if (failed !== null) void this.#stop({ reason: 'receive_errors', endpoint: address, error: failed.error })
        }),
      )
    })
    const loop = this.#loop()
    this.#loopDone = loop.catch(() => undefined)
    this.#spawn(loop)
  }

  async #loop(): Promise<void> {
    const reader = this.#reader
    for (;;) {
      const item = await reader.take()
      if (item === null) return
      await this.#locked(() => this.#perform(this.#onItem(item)))
    }
  }

  #onItem(item: ReaderItem): SequencerAction[] {
    if (item.kind === 'disconnect') return this.#sequencer.disconnected(item.endpoint)
    if (item.kind === 'reconnect') return this.#sequencer.reconnected(item.endpoint)
    return this.#sequencer.live(item.endpoint, item.topic, item.seq, peekHeader(item.payload), item.payload)
  }

  /** Runs `fn` when no other sequencer event or consumer call is in flight; undefined once stopping. */
  #locked<T>(fn: () => Promise<T> | T): Promise<T | undefined> {
    const run = this.#lock.then(async () => (this.#stopping ? undefined : await fn()))
    this.#lock = run.then(
      () => undefined,
      () => undefined,
    )
    return run
  }

  // ---------------------------------------------------------------------------------------------------
  // the sequencer's actions

  async #perform(actions: SequencerAction[]): Promise<void> {
    for (const a of actions) {
      const where = { endpoint: this.#reader.addresses[a.endpoint]!, dpRank: a.dpRank }
      switch (a.type) {
        case 'ingest':
          if (a.replayed) this.#counts.recovered++
          this.#counts.ingested++
          await this.#consumer.ingest(a.payload)
          break
        case 'reset':
          this.#counts.resets++
          await this.#consumer.resetRank(a.dpRank)
          break
        case 'replay':
          this.#startRound(a)
          break
        case 'cancel_replay':
          this.#rounds.get(a.replay)?.cancel()
          this.#rounds.delete(a.replay)
          break
        case 'lost':
          this.#counts.lost += a.count
          this.#log.log(
            'warn',
            `lost:${where.endpoint}:${a.dpRank}`,
            { ...where, lost: String(a.count), why: a.why },
            'engine batches lost',
          )
          break
        case 'drop':
          if (a.reason === 'replay') this.#counts.dropped_replay++
          else if (a.reason === 'rank') {
            this.#counts.dropped_rank++
            this.#log.log(
              'warn',
              `dropped_rank:${where.endpoint}`,
              { endpoint: where.endpoint, dpRank: a.dpRank },
              `batch of a dp rank beyond ${MAX_STREAMS} streams dropped`,
            )
          } else {
            this.#counts.dropped_malformed++
            const obj = a.dpRank === null ? { endpoint: where.endpoint } : where
            this.#log.log('warn', `dropped_malformed:${where.endpoint}`, { ...obj, seq: String(a.seq) }, 'malformed batch dropped')
          }
          break
        case 'duplicate':
          this.#counts.duplicates++
          break
        case 'gap':
          this.#counts.gaps++
          if (a.replaying)
            this.#log.log(
              'info',
              `gap:${where.endpoint}:${a.dpRank}`,
              { ...where, from: String(a.from), to: String(a.to) },
              'seq gap: replaying',
            )
          break
        case 'restart':
          this.#counts.restarts++
          this.#log.log('info', `restart:${where.endpoint}:${a.dpRank}`, { ...where, why: a.why }, 'engine restart: resetting the rank')
          break
        case 'overflow':
          this.#counts.held_overflow++
          this.#log.log(
            'warn',
            `held:${where.endpoint}:${a.dpRank}`,
            { ...where, seq: String(a.seq) },
            'too many live messages held during a replay',
          )
          break
        case 'replay_timeout': {
          this.#counts.replay_timeouts++
          const replayEndpoint = this.#replayEndpoints[a.endpoint]!
          this.#log.log('warn', `replay_timeout:${replayEndpoint}`, { ...where, replayEndpoint, from: String(a.from) }, 'replay timed out')
          break
        }
        case 'replay_stall':
          this.#counts.replay_stalls++
          break
      }
    }
  }

  /** One replay round, as its own task: its replies and its end go back to the sequencer under the lock. */
  #startRound(a: Extract<SequencerAction, { type: 'replay' }>): void {
    // a consumer call in flight when close() came may still ask for one: its replies could never be applied
    if (this.#stopping) return
    const replayEndpoint = this.#replayEndpoints[a.endpoint]!
    const where = { endpoint: this.#reader.addresses[a.endpoint]!, dpRank: a.dpRank }
    const round = new ReplayRound(replayEndpoint, a.from, this.#opts.replayTimeoutMs)
    this.#rounds.get(a.replay)?.cancel()
    this.#rounds.set(a.replay, round)
    this.#counts.replays++
    const run = async () => {
      try {
        const outcome = await round.run({
          reply: async (seq, payload) => {
            const verdict = await this.#locked(async () => {
              if (round.cancelled) return 'stop' as const
              const r = this.#sequencer.replayed(a.replay, seq, peekHeader(payload), payload)
              await this.#perform(r.actions)
              return r.verdict === 'applied' || r.verdict === 'skipped' ? r.verdict : 'stop'
            })
            return verdict ?? 'stop'
          },
          unknown: () => this.#counts.dropped_replay++,
          error: (what, err) => this.#log.log('warn', `replay_error:${replayEndpoint}`, { ...where, err }, what),
        })
        if (outcome === 'stopped') return
        await this.#locked(async () => {
          if (!round.cancelled) await this.#perform(this.#sequencer.replayEnded(a.replay, outcome))
        })
      } finally {
        if (this.#rounds.get(a.replay) === round) this.#rounds.delete(a.replay)
      }
    }
    this.#spawn(run())
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

  #stop(why: ZmqSourceStop): Promise<void> {
    if (this.#stopped) return this.#stopped
    this.#stopping = true
    this.#stopped = (async () => {
      this.#reader.close()
      for (const round of this.#rounds.values()) round.cancel()
      this.#rounds.clear()
      // wait for the consumer call in flight and every task
      while (this.#tasks.size > 0) await Promise.allSettled([...this.#tasks])
      await this.#lock
      this.#reader.clear()
      this.emit('stopped', why)
    })()
    return this.#stopped
  }
}

/**
 * The batch header (dp rank, vLLM publisher id), read by the TypeScript engine decoder, which walks the
 * msgpack structure without decoding the events (SPEC 1): the consumer's ingest stays the only native call
 * per engine message. null for a malformed batch.
 */
function peekHeader(payload: Uint8Array): BatchHeader | null {
  return peekBatch(payload)
}
