// The ZeroMQ source's options (SPEC 2.1): their types, defaults and validation. Every error names the option
// (a TypeError for a wrong type, a RangeError for a value out of range).
import type { Subscriber } from 'zeromq'
import { intInRange } from '../../util/args.js'
import { type Logger, loggerOption } from '../../util/log.js'
import { zeromq } from '../zeromq.js'

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

export interface ParsedOptions {
  endpoints: ZmqEndpoint[]
  logger: Logger
  rest: SourceSettings
}

export interface SourceSettings {
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

export function parseOptions(opts: ZmqSourceOptions): ParsedOptions {
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
