// The worker side of the recovery query (SPEC 7): answers range and dump queries for every dp rank of
// one worker from its local indexer, over NATS request/reply, in chunks that fit the server's max payload.
import { headers as natsHeaders, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node'
import { IndexChangedError, type LocalIndexer, type ReplyChunks } from '../core/api.js'
import { checkName, describe, positiveInt, u64 } from '../util/args.js'
import { type Logger, loggerOption, RateLimitedLog } from '../util/log.js'
import { CHUNK_HEADER, CHUNKS_HEADER, componentPrefix, errorBody, parseRecoveryRequest, RECOVERY_TOKEN } from './wire.js'

export interface RecoveryEndpointOptions {
  /** A connection the caller owns (close() does not close it). */
  nats: NatsConnection
  namespace: string
  component: string
  /** The worker id the events carry (u64). */
  workerId: bigint
  /** The local indexer the worker's events are applied to and buffered in. */
  localIndexer: LocalIndexer
  /** Largest chunk in bytes (default: the server's max_payload less 1 KiB for headers). */
  maxChunkBytes?: number
  /**
   * Bytes of one reply published between two flushes (default 4 MiB, at least one chunk): what the NATS client and
   * the socket hold at most for a reply; the event loop runs during each flush (SPEC 7).
   */
  flushBytes?: number
  logger?: Logger
}

/** What an endpoint has served. */
export interface RecoveryEndpointStats {
  /** Queries answered with Events, TreeDump, TooNew or InvalidRange. */
  answered: number
  /** Queries answered with Error (malformed, another worker id, unknown rank). */
  errors: number
  /** Chunks sent (closing messages not included). */
  chunks: number
  bytes: number
  /** Dumps started over from chunk 0 because the index changed during a flush. */
  restarts: number
}

const RANK_RE = new RegExp(`^${RECOVERY_TOKEN}(0|[1-9][0-9]{0,9})$`)
/** Headers and subject take far less than this. */
const HEADER_ROOM = 1024
const ERROR_HEAD = Buffer.from('{"Error":')
const DEFAULT_FLUSH_BYTES = 4 << 20

/**
 * Serves `namespace.{ns}.component.{comp}.worker_kv_indexer_query_dp{rank}.{worker_id}` for every rank
 * with one wildcard subscription. Each answer is the response JSON in chunks (header `Kv-Chunk: i`),
 * then an empty message with `Kv-Chunks: n`.
 */
export class RecoveryEndpoint {
  /** The wildcard subject served. */
  readonly subject: string
  readonly workerId: bigint
  readonly #nc: NatsConnection
  readonly #local: LocalIndexer
  readonly #sub: Subscription
  readonly #maxChunk: number | null
  readonly #flushBytes: number
  readonly #log: RateLimitedLog
  readonly #stats: RecoveryEndpointStats = { answered: 0, errors: 0, chunks: 0, bytes: 0, restarts: 0 }
  #closed = false

  private constructor(opts: RecoveryEndpointOptions) {
    if (typeof opts !== 'object' || opts === null) throw new TypeError(`RecoveryEndpoint options must be an object, got ${describe(opts)}`)
    const namespace = checkName('namespace', opts.namespace)
    const component = checkName('component', opts.component)
    this.workerId = u64('workerId', opts.workerId)
    if (typeof opts.localIndexer?.rangeReplyChunks !== 'function') throw new TypeError('localIndexer must be a LocalIndexer')
    if (typeof opts.nats?.subscribe !== 'function') throw new TypeError('nats must be a NATS connection')
    this.#maxChunk = opts.maxChunkBytes === undefined ? null : positiveInt('maxChunkBytes', opts.maxChunkBytes, 1 << 30)
    this.#flushBytes = opts.flushBytes === undefined ? DEFAULT_FLUSH_BYTES : positiveInt('flushBytes', opts.flushBytes, 1 << 30)
    this.#nc = opts.nats
    this.#local = opts.localIndexer
    this.#log = new RateLimitedLog(loggerOption(opts.logger))
    this.subject = `${componentPrefix(namespace, component)}*.${this.workerId}`
    this.#sub = this.#nc.subscribe(this.subject, { callback: (err, msg) => (err ? undefined : this.#serve(msg)) })
  }

  /** Starts serving (the subscription is sent to the server at the connection's next flush). */
  static start(opts: RecoveryEndpointOptions): RecoveryEndpoint {
    return new RecoveryEndpoint(opts)
  }

  stats(): RecoveryEndpointStats {
    return { ...this.#stats }
  }

  /** Stops serving. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    try {
      this.#sub.unsubscribe()
    } catch {
      // the connection is already closed
    }
  }

  #serve(msg: Msg): void {
    if (!msg.reply || this.#closed) return
    const tokens = msg.subject.split('.')
    const m = RANK_RE.exec(tokens[tokens.length - 2] ?? '')
    if (m === null || Number(m[1]) > 0xffffffff) {
      this.#stats.errors++
      void this.#reply(msg.reply, { body: errorBody(`not a recovery subject: ${msg.subject}`) })
      return
    }
    void this.#reply(msg.reply, this.#answer(Number(m[1]), msg.data))
  }

  /** The answer: an error body, or the query that the local indexer writes chunk by chunk (a dump is never built whole). */
  #answer(dpRank: number, data: Uint8Array): Answer {
    let req: ReturnType<typeof parseRecoveryRequest>
    try {
      req = parseRecoveryRequest(data)
    } catch (e) {
      this.#stats.errors++
      return { body: errorBody(`malformed request: ${(e as Error).message}`) }
    }
    if (req.workerId !== this.workerId) {
      this.#stats.errors++
      return { body: errorBody(`worker_id mismatch: asked ${req.workerId}, this is ${this.workerId}`) }
    }
    return { dpRank, start: req.startEventId, end: req.endEventId }
  }

  /** Opens the answer's chunks (exactly `max` bytes but the last), or the error body (counted) when the query failed. */
  #open(a: Answer, max: number): ReplyChunks | Buffer {
    if ('body' in a) return a.body
    try {
      return this.#local.rangeReplyChunks(a.dpRank, a.start, a.end, max)
    } catch (e) {
      this.#stats.errors++
      return errorBody(`query failed: ${(e as Error).message}`)
    }
  }

  /**
   * Publishes the answer's chunks as the local indexer writes them, flushing after every `flushBytes` (which bounds
   * what the NATS client and the socket hold, and lets the worker run). A dump whose index changed during a flush
   * is started over from chunk 0 and then published without flushing, so that it completes whatever the event rate.
   */
  async #reply(reply: string, answer: Answer): Promise<void> {
    const maxPayload = this.#nc.info?.max_payload ?? 1 << 20
    const max = Math.max(64, Math.min(this.#maxChunk ?? Number.POSITIVE_INFINITY, maxPayload - HEADER_ROOM))
    let chunks = this.#open(answer, max)
    let windowed = true
    let counted = false
    let n = 0
    let sinceFlush = 0
    try {
      for (;;) {
        let chunk: Buffer | null
        if (Buffer.isBuffer(chunks)) chunk = n === 0 ? chunks : null
        else {
          try {
            chunk = chunks.next().value ?? null
          } catch (e) {
            if (!(e instanceof IndexChangedError)) throw e
            this.#stats.restarts++
            windowed = false
            n = 0
            chunks = this.#open(answer, max)
            continue
          }
          if (chunk !== null && !counted) {
            counted = true
            if (chunk.subarray(0, ERROR_HEAD.length).equals(ERROR_HEAD)) this.#stats.errors++
            else this.#stats.answered++
          }
        }
        if (chunk === null) break
        const h = natsHeaders()
        h.set(CHUNK_HEADER, String(n))
        this.#nc.publish(reply, chunk, { headers: h })
        n++
        this.#stats.chunks++
        this.#stats.bytes += chunk.length
        sinceFlush += chunk.length
        if (windowed && sinceFlush >= this.#flushBytes) {
          sinceFlush = 0
          await this.#nc.flush()
          if (this.#closed) return
        }
      }
      const h = natsHeaders()
      h.set(CHUNKS_HEADER, String(n))
      this.#nc.publish(reply, new Uint8Array(0), { headers: h })
    } catch (e) {
      // the connection closed or refused the publish: the router sees a truncated reply and asks again
      this.#log.log('warn', 'recovery-reply', { err: String(e) }, 'a recovery reply could not be sent')
    } finally {
      if (!Buffer.isBuffer(chunks)) chunks.close()
    }
  }
}

/** A parsed query, or the error body that answers it. */
type Answer = { body: Buffer } | { dpRank: number; start: bigint | null; end: bigint | null }
