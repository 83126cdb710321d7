// A standalone KV indexer over HTTP with the routes, bodies and status codes of Dynamo 1.6's
// (`python -m dynamo.indexer`): engines register their ZeroMQ KV-event streams, clients ask which worker
// holds how much of a prompt. Each (model_name, routing_group) partition is a KvRouter with the
// `engines` source; each registered dp rank is an engine of the partition's router for that rank. The
// answers are one function, `respond(request) → reply` (status, content type, headers, body); two HTTP
// fronts serve it: the native one (native-front.ts: hyper on a thread of its own, the requests handed
// over in batches), the default when the native core is loaded, and node:http. The exact status, content
// type and text of every answer (Dynamo's axum extractor rejections included) are the service's own, so
// both fronts give the same bytes.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { type Logger, silentLogger } from '../util/log.js'
import { KvRouter } from '../router/router.js'
import { computeBlockHashes } from '../core/api.js'
import {
  type FieldSpec,
  type JsonNode,
  JsonShapeError,
  JsonSyntaxError,
  nullable,
  parseJson,
  readI64,
  readSeq,
  readString,
  readStruct,
  readU32,
  readU64,
  stringifyExact,
} from './json.js'
import { type ScannedQuery, scanQuery } from './query-scan.js'
import { type FrontRequest, NativeFront, NativeFrontClass } from './native-front.js'

/** A request as an HTTP front reads it (see `IndexerService.respond`). */
export type IndexerRequest = FrontRequest

/** The HTTP fronts: `native` (hyper, off the JavaScript thread) or `node` (node:http). */
export type IndexerHttpFront = 'native' | 'node'

/** Whether the native HTTP front can run here (the native core is loaded). */
export const nativeHttpAvailable = NativeFrontClass !== null

/**
 * The front chosen: `http`, else DYNAMO_KV_INDEXER_HTTP, else native when available. Throws for an
 * unknown name, or native without the native core.
 */
export function resolveHttpFront(http?: string): IndexerHttpFront {
  const env = process.env.DYNAMO_KV_INDEXER_HTTP
  const want = http ?? (env === undefined || env === '' ? undefined : env)
  if (want === undefined) return nativeHttpAvailable ? 'native' : 'node'
  if (want !== 'native' && want !== 'node') throw new Error(`the HTTP front must be native or node, got ${JSON.stringify(want)}`)
  if (want === 'native' && !nativeHttpAvailable)
    throw new Error(
      'the native HTTP front needs the native core, which is not loaded (DYNAMO_KV_FORCE_JS=1 or no binary for this platform)',
    )
  return want
}

/** A /register body (also an entry of `--engines FILE`). */
export interface RegisterRequest {
  /** The worker id its blocks are scored under (u64). */
  instance_id: bigint
  /** The engine's ZeroMQ PUB endpoint (`tcp://host:port`, `ipc://path`, `inproc://name`). */
  endpoint: string
  model_name: string
  /** Tokens per KV block; the partition's first registration fixes it (at least 1). */
  block_size: number
  /** Default `default`. */
  routing_group?: string
  /** The dp rank this endpoint carries (default 0). */
  dp_rank?: number | null
  /** The engine's replay ROUTER endpoint; without it, a gap is a loss. */
  replay_endpoint?: string | null
}

/** One HTTP answer: status, content type (null: none) and body bytes. */
export interface IndexerReply {
  status: number
  contentType: string | null
  body: string
  headers?: Record<string, string>
}

export interface IndexerServiceOptions {
  logger?: Logger
  /** Largest /query and /query_by_hash body in bytes (default 8 MiB, Dynamo's). */
  queryBodyLimit?: number
  /** Largest body of the other routes in bytes (default 2 MiB, Dynamo's). */
  bodyLimit?: number
  /**
   * Warn (once per listener) when a registered engine has sent nothing this long after registration,
   * in ms (default 5000; 0 never): an endpoint nothing publishes on is otherwise accepted in silence.
   */
  engineSilenceMs?: number
  /**
   * Serve the test-only routes POST /test/pause_listener and /test/resume_listener (Dynamo's with
   * DYN_KV_INDEXER_TEST_ENDPOINTS set); default false (404).
   */
  testEndpoints?: boolean
  /**
   * The HTTP front of `listen()`: `native` (hyper on a thread of its own; needs the native core) or `node`
   * (node:http). Default: DYNAMO_KV_INDEXER_HTTP, else native when the native core is loaded. Both give the
   * same answers.
   */
  http?: IndexerHttpFront
}

const JSON_TYPE = 'application/json'
const TEXT_TYPE = 'text/plain; charset=utf-8'
const OK = { status: 'ok' }
const EMPTY = Buffer.alloc(0)

interface Listener {
  endpoint: string
  replayEndpoint: string | null
  /** The silence warning's timer, until it fires or the listener goes. */
  silence: NodeJS.Timeout | null
}

interface Instance {
  id: bigint
  model: string
  group: string
  ranks: Map<number, Listener>
}

interface Partition {
  model: string
  group: string
  blockSize: number
  /** One router per registered dp rank: its engines are the instances registered for that rank. */
  routers: Map<number, KvRouter>
}

/** A request the indexer refuses: the HTTP status and the message of the `{"error"}` body. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

const json = (status: number, v: unknown): IndexerReply => ({ status, contentType: JSON_TYPE, body: stringifyExact(v) })
const text = (status: number, s: string): IndexerReply => ({ status, contentType: TEXT_TYPE, body: s })
const empty = (status: number, headers?: Record<string, string>): IndexerReply => ({ status, contentType: null, body: '', headers })

const pkey = (model: string, group: string) => `${model}\u0000${group}`

// ---------------------------------------------------------------------------------------------------
// endpoint syntax (Dynamo checks it before connecting; the connect itself is lazy)

/** Dynamo's syntax check of a ZeroMQ endpoint; the reason, or null when valid. */
export function endpointProblem(ep: string): string | null {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/(.*)$/su.exec(ep)
  if (m === null) return 'missing scheme'
  const [, scheme, rest] = m as unknown as [string, string, string]
  if (scheme === 'ipc' || scheme === 'inproc') return rest.length === 0 ? 'missing path' : null
  if (scheme !== 'tcp') return `unsupported scheme \`${scheme}\``
  let host: string
  let port: string
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']')
    if (close < 0) return 'invalid IPv6 host'
    host = rest.slice(0, close + 1)
    if (rest[close + 1] !== ':') return 'missing TCP port'
    port = rest.slice(close + 2)
  } else {
    const colon = rest.lastIndexOf(':')
    if (colon < 0) return 'missing TCP port'
    host = rest.slice(0, colon)
    port = rest.slice(colon + 1)
  }
  if (host.length === 0) return 'missing TCP host'
  if (port.length === 0) return 'missing TCP port'
  if (!/^\d+$/.test(port)) return 'invalid TCP port: invalid digit found in string'
  if (Number(port) > 65535) return 'invalid TCP port: number too large to fit in target type'
  return null
}

// ---------------------------------------------------------------------------------------------------
// request bodies

const str = { read: readString }
const optStr = { read: nullable(readString), optional: true }
const optU32 = { read: nullable(readU32), optional: true }

const REGISTER: Record<string, FieldSpec> = {
  instance_id: { read: readU64 },
  endpoint: str,
  model_name: str,
  block_size: { read: readU32 },
  routing_group: { read: readString, optional: true },
  dp_rank: optU32,
  replay_endpoint: optStr,
  tenant_id: { read: readString, optional: true },
  additional_salt: optStr,
}
const UNREGISTER: Record<string, FieldSpec> = {
  instance_id: { read: readU64 },
  model_name: str,
  routing_group: optStr,
  dp_rank: optU32,
  tenant_id: optStr,
}
const LISTENER_CONTROL: Record<string, FieldSpec> = {
  instance_id: { read: readU64 },
  dp_rank: optU32,
}
const QUERY: Record<string, FieldSpec> = {
  token_ids: { read: (p, v) => readSeq(p, v, readU32) },
  model_name: str,
  routing_group: { read: readString, optional: true },
  lora_name: optStr,
  cache_salt: optStr,
  tenant_id: { read: readString, optional: true },
}
const QUERY_BY_HASH: Record<string, FieldSpec> = {
  block_hashes: { read: (p, v) => readSeq(p, v, readI64) },
  model_name: str,
  routing_group: { read: readString, optional: true },
  cache_salt: optStr,
  tenant_id: { read: readString, optional: true },
}
const PEER: Record<string, FieldSpec> = { url: str }

/** Reads a JSON body into a struct: a body that is not JSON is 400, one of another shape 422 (text/plain). */
function body(raw: string, name: string, fields: Record<string, FieldSpec>, aliases?: Record<string, string>): Record<string, unknown> {
  try {
    return readStruct(name, parseJson(raw), fields, aliases)
  } catch (e) {
    if (e instanceof JsonSyntaxError) throw new TextError(400, `Failed to parse the request body as JSON: ${e.message}`)
    if (e instanceof JsonShapeError)
      throw new TextError(422, `Failed to deserialize the JSON body into the target type: ${e.describe(raw)}`)
    throw e
  }
}

class TextError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message)
  }
}

const QUERY_KEYS = Object.keys(QUERY)
const U32_MAX = 0xffff_ffff

/**
 * The common /query body read with JSON.parse (it has no u64 field: token ids are u32), or null when the
 * body is anything but plainly valid (a float or exponent, an escape, a repeated key, a wrong type): then
 * the exact reader runs and gives serde's answer.
 */
function fastQuery(raw: string): Record<string, unknown> | null {
  if (raw.includes('\\') || /\d[.eE]/.test(raw)) return null
  let v: unknown
  try {
    v = JSON.parse(raw)
  } catch {
    return null
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return null
  const o = v as Record<string, unknown>
  for (const k of QUERY_KEYS) {
    const at = raw.indexOf(`"${k}"`)
    if (at >= 0 && raw.indexOf(`"${k}"`, at + 1) >= 0) return null
  }
  const t = o.token_ids
  if (!Array.isArray(t) || typeof o.model_name !== 'string') return null
  for (const x of t) if (typeof x !== 'number' || !Number.isInteger(x) || x < 0 || x > U32_MAX) return null
  if (o.routing_group !== undefined && typeof o.routing_group !== 'string') return null
  if (o.tenant_id !== undefined && typeof o.tenant_id !== 'string') return null
  for (const k of ['lora_name', 'cache_salt']) if (o[k] !== undefined && o[k] !== null && typeof o[k] !== 'string') return null
  return o
}

/** Parses a /register body (or one entry of an engines file); throws with the message a client would get. */
export function parseRegister(raw: string): RegisterRequest {
  const b = body(raw, 'RegisterRequest', REGISTER, { additionalsalt: 'additional_salt' })
  return b as unknown as RegisterRequest
}

// ---------------------------------------------------------------------------------------------------
// the service

/**
 * The indexer's state and routes, without the HTTP server: `handle(method, url, contentType, body)`
 * answers one request. `listen()` serves it over HTTP.
 */
export class IndexerService {
  readonly #partitions = new Map<string, Partition>()
  readonly #instances = new Map<bigint, Instance>()
  readonly #peers = new Set<string>()
  readonly #log: Logger
  readonly queryBodyLimit: number
  readonly bodyLimit: number
  readonly #silenceMs: number
  readonly #testEndpoints: boolean
  #server: Server | null = null
  #native: NativeFront | null = null
  /** The HTTP front of `listen()`. */
  readonly http: IndexerHttpFront
  /** Dynamo's indexer metric families (GET /metrics). */
  readonly registry = new Registry()
  readonly #requests: Counter<'endpoint' | 'method'>
  readonly #errors: Counter<'endpoint' | 'status_class'>
  readonly #duration: Histogram<'endpoint'>
  /** The request counter and latency histogram of each (endpoint, method), bound to their labels once. */
  readonly #meters = new Map<string, { requests: { inc(): void }; duration: { observe(v: number): void } }>()
  /** Registrations and removals run one at a time (they open and close sockets). */
  #queue: Promise<unknown> = Promise.resolve()

  constructor(opts: IndexerServiceOptions = {}) {
    this.#log = opts.logger ?? silentLogger
    this.queryBodyLimit = opts.queryBodyLimit ?? 8 * 1024 * 1024
    this.bodyLimit = opts.bodyLimit ?? 2 * 1024 * 1024
    this.#silenceMs = opts.engineSilenceMs ?? 5000
    this.#testEndpoints = opts.testEndpoints === true
    this.http = resolveHttpFront(opts.http)
    const registers = [this.registry]
    this.#requests = new Counter({
      name: 'dynamo_kvindexer_requests_total',
      help: 'Total HTTP requests',
      labelNames: ['endpoint', 'method'],
      registers,
    })
    this.#errors = new Counter({
      name: 'dynamo_kvindexer_errors_total',
      help: 'HTTP error responses (4xx/5xx)',
      labelNames: ['endpoint', 'status_class'],
      registers,
    })
    this.#duration = new Histogram({
      name: 'dynamo_kvindexer_request_duration_seconds',
      help: 'HTTP request latency',
      labelNames: ['endpoint'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
      registers,
    })
    const self = this
    new Gauge({
      name: 'dynamo_kvindexer_models',
      help: 'Number of active model+routing-group indexers',
      registers,
      collect() {
        this.set(self.#partitions.size)
      },
    })
    new Gauge({
      name: 'dynamo_kvindexer_workers',
      help: 'Number of registered worker instances',
      registers,
      collect() {
        this.set(self.#instances.size)
      },
    })
    new Gauge({
      name: 'dynamo_kvindexer_listeners',
      help: 'Number of ZMQ listeners by status',
      labelNames: ['status'],
      registers,
      collect() {
        const counts = { active: 0, pending: 0, paused: 0 }
        for (const w of self.workers() as { listeners: Map<number, { status: 'active' | 'pending' | 'paused' }> }[])
          for (const l of w.listeners.values()) counts[l.status]++
        this.reset()
        for (const [status, n] of Object.entries(counts)) this.set({ status }, n)
      },
    })
  }

  /** The body limit of a path (bytes). */
  limitFor(path: string): number {
    return path === '/query' || path === '/query_by_hash' ? this.queryBodyLimit : this.bodyLimit
  }

  #serial<T>(step: () => Promise<T>): Promise<T> {
    const run = this.#queue.then(step, step)
    this.#queue = run.catch(() => undefined)
    return run
  }

  /** Registers one engine rank (the /register route). Throws HttpError with Dynamo's message. */
  register(r: RegisterRequest): Promise<void> {
    return this.#serial(() => this.#register(r))
  }

  async #register(r: RegisterRequest): Promise<void> {
    const group = r.routing_group ?? 'default'
    const rank = r.dp_rank ?? 0
    const ep = endpointProblem(r.endpoint)
    if (ep !== null) throw new HttpError(400, `invalid ZMQ endpoint \`${r.endpoint}\`: ${ep}`)
    if (r.replay_endpoint != null) {
      const rp = endpointProblem(r.replay_endpoint)
      if (rp !== null)
        throw new HttpError(400, `invalid replay endpoint \`${r.replay_endpoint}\`: invalid ZMQ endpoint \`${r.replay_endpoint}\`: ${rp}`)
    }
    const inst = this.#instances.get(r.instance_id)
    if (inst !== undefined) {
      if (inst.model !== r.model_name || inst.group !== group)
        throw new HttpError(409, `instance ${r.instance_id} is already registered for model=${inst.model} routing_group=${inst.group}`)
      if (inst.ranks.has(rank)) throw new HttpError(409, `instance ${r.instance_id} dp_rank ${rank} already registered`)
    }
    const k = pkey(r.model_name, group)
    let part = this.#partitions.get(k)
    if (part !== undefined && part.blockSize !== r.block_size)
      throw new HttpError(
        409,
        `block_size mismatch for model=${r.model_name} routing_group=${group}: existing=${part.blockSize}, requested=${r.block_size}`,
      )
    // Deliberate: Dynamo accepts block_size 0 and then matches nothing; a partition that can never answer is refused
    if (r.block_size === 0) throw new HttpError(400, 'block_size must be at least 1')
    if (part === undefined) {
      part = { model: r.model_name, group, blockSize: r.block_size, routers: new Map() }
      this.#partitions.set(k, part)
    }
    let router = part.routers.get(rank)
    if (router === undefined) {
      router = await KvRouter.create({
        kvBlockSize: r.block_size,
        source: { kind: 'engines', engines: [] },
        logger: this.#log,
        tiers: true,
      })
      part.routers.set(rank, router)
    }
    try {
      await router.addEngine({
        workerId: r.instance_id,
        endpoint: r.endpoint,
        // batches name their rank; one without (rank 0) belongs to the registered rank, as in Dynamo
        ranks: rank === 0 ? [0] : [0, rank],
        ...(r.replay_endpoint != null ? { replayEndpoint: r.replay_endpoint } : {}),
      })
    } catch (e) {
      await this.#dropEmpty(part, rank)
      throw new HttpError(400, `invalid ZMQ endpoint \`${r.endpoint}\`: ${e instanceof Error ? e.message : String(e)}`)
    }
    const i = inst ?? { id: r.instance_id, model: r.model_name, group, ranks: new Map<number, Listener>() }
    const listener: Listener = { endpoint: r.endpoint, replayEndpoint: r.replay_endpoint ?? null, silence: null }
    if (this.#silenceMs > 0) {
      const source = router.engineSources().get(r.instance_id)
      listener.silence = setTimeout(() => {
        listener.silence = null
        if ((source?.stats().received ?? 0n) === 0n)
          this.#log.warn(
            { instance_id: r.instance_id.toString(), dp_rank: rank, endpoint: r.endpoint, seconds: this.#silenceMs / 1000 },
            'no message from the engine since it was registered: is anything publishing on that endpoint?',
          )
      }, this.#silenceMs)
      listener.silence.unref()
    }
    i.ranks.set(rank, listener)
    this.#instances.set(r.instance_id, i)
    this.#log.info({ instance_id: r.instance_id.toString(), dp_rank: rank, endpoint: r.endpoint, model_name: r.model_name }, 'registered')
  }

  async #dropEmpty(part: Partition, rank: number): Promise<void> {
    const router = part.routers.get(rank)
    if (router !== undefined && router.engineSources().size === 0) {
      part.routers.delete(rank)
      await router.close()
    }
    if (part.routers.size === 0) this.#partitions.delete(pkey(part.model, part.group))
  }

  async #removeRank(inst: Instance, rank: number): Promise<void> {
    const part = this.#partitions.get(pkey(inst.model, inst.group))
    const l = inst.ranks.get(rank)
    if (l?.silence) clearTimeout(l.silence)
    inst.ranks.delete(rank)
    if (inst.ranks.size === 0) this.#instances.delete(inst.id)
    if (part === undefined) return
    await part.routers.get(rank)?.removeEngine(inst.id)
    await this.#dropEmpty(part, rank)
  }

  /** The /unregister route. */
  unregister(b: { instance_id: bigint; model_name: string; routing_group?: string | null; dp_rank?: number | null }): Promise<void> {
    return this.#serial(async () => {
      const inst = this.#instances.get(b.instance_id)
      if (inst === undefined) throw new HttpError(404, `instance ${b.instance_id} not found`)
      if (inst.model !== b.model_name || (b.routing_group != null && inst.group !== b.routing_group))
        throw new HttpError(404, `instance ${b.instance_id} is registered for model=${inst.model} routing_group=${inst.group}`)
      if (b.routing_group != null && b.dp_rank != null) {
        if (!inst.ranks.has(b.dp_rank)) throw new HttpError(404, `instance ${b.instance_id} dp_rank ${b.dp_rank} not found`)
        await this.#removeRank(inst, b.dp_rank)
      } else for (const r of [...inst.ranks.keys()]) await this.#removeRank(inst, r)
      this.#log.info({ instance_id: b.instance_id.toString() }, 'unregistered')
    })
  }

  /**
   * Loads another indexer's GET /dump (Dynamo's or this package's) into this one's partitions, as
   * Dynamo's `--peers` recovery does: the blocks are indexed, no listener is recovered (they change only
   * when their workers register here). Adds `url` to the peers. Resolves to the number of events loaded;
   * throws when the peer cannot be reached or its dump cannot be read.
   */
  recoverFrom(url: string, timeoutMs = 10_000): Promise<number> {
    return this.#serial(async () => {
      const res = await fetch(`${url.replace(/\/+$/, '')}/dump`, { signal: AbortSignal.timeout(timeoutMs) })
      if (res.status !== 200) throw new Error(`GET ${url}/dump answered ${res.status}`)
      const root = parseJson(await res.text())
      if (root.t !== 'obj') throw new Error(`GET ${url}/dump: not an object`)
      const field = (v: JsonNode | undefined, k: string) => (v?.t === 'obj' ? v.entries.find(([key]) => key === k)?.[1] : undefined)
      const items = (v: JsonNode | undefined) => (v?.t === 'arr' ? v.items : [])
      let loaded = 0
      for (const [name, part] of root.entries) {
        const colon = name.lastIndexOf(':')
        const bsNode = field(part, 'block_size')
        if (colon < 0 || bsNode === undefined) continue
        const model = name.slice(0, colon)
        const group = name.slice(colon + 1)
        const blockSize = readU32('block_size', bsNode)
        if (blockSize === 0) continue
        let p = this.#partitions.get(pkey(model, group))
        if (p !== undefined && p.blockSize !== blockSize) continue
        if (p === undefined) {
          p = { model, group, blockSize, routers: new Map() }
          this.#partitions.set(pkey(model, group), p)
        }
        for (const ev of items(field(part, 'events'))) {
          const inner = field(ev, 'event')
          const stored = field(field(inner, 'data'), 'stored')
          if (stored === undefined) continue
          const rank = readU32('dp_rank', field(inner, 'dp_rank') ?? { t: 'num', raw: '0', end: 0 })
          let router = p.routers.get(rank)
          if (router === undefined) {
            router = await KvRouter.create({
              kvBlockSize: blockSize,
              source: { kind: 'engines', engines: [] },
              logger: this.#log,
              tiers: true,
            })
            p.routers.set(rank, router)
          }
          const parent = field(stored, 'parent_hash')
          router.index.applyEvent({
            workerId: readU64('worker_id', field(ev, 'worker_id')!),
            event: {
              eventId: readU64('event_id', field(inner, 'event_id')!),
              dpRank: rank,
              data: {
                type: 'stored',
                parentHash: parent === undefined || parent.t === 'null' ? null : readU64('parent_hash', parent),
                blocks: items(field(stored, 'blocks')).map((b) => ({
                  blockHash: readU64('block_hash', field(b, 'block_hash')!),
                  tokensHash: readU64('tokens_hash', field(b, 'tokens_hash')!),
                  mmExtraInfo: null,
                })),
              },
            },
          })
          loaded++
        }
      }
      this.#peers.add(url)
      this.#log.info({ peer: url, events: loaded }, 'recovered the index from a peer')
      return loaded
    })
  }

  /** Adds a peer URL to GET /peers (as POST /register_peer does). */
  addPeer(url: string): void {
    this.#peers.add(url)
  }

  /** A prompt's (or block hashes') scores in a partition: the /query answer's JSON (tokens per worker and rank). */
  score(
    model: string,
    group: string,
    query: { tokens?: Uint32Array | number[]; hashes?: bigint[]; loraName?: string | null; cacheSalt?: string | null },
  ) {
    const part = this.#partitions.get(pkey(model, group))
    if (part === undefined) throw new HttpError(404, `no indexer for model=${model} routing_group=${group}`)
    const scores = new Map<bigint, Map<number, number>>()
    const lower = new Map<bigint, Map<number, { cpu: number; disk: number }>>()
    const bs = part.blockSize
    // only full blocks are hashed (Dynamo ignores a trailing partial block); the hashing and the lookup
    // are one call into the index
    const tokens = query.tokens === undefined ? null : query.tokens instanceof Uint32Array ? query.tokens : Uint32Array.from(query.tokens)
    const hashOpts = tokens === null ? null : { loraName: query.loraName || null, cacheSalt: query.cacheSalt || null }
    let seq: BigUint64Array | null = null
    for (const [rank, router] of part.routers) {
      let s: ReturnType<KvRouter['findMatches']>
      if (query.hashes !== undefined) s = router.findMatchesForHashes(query.hashes)
      else {
        if (tokens!.length < bs) continue
        s = router.index.findMatchesForTokens(tokens!, bs, hashOpts!)
      }
      // the router of a registered rank holds only that rank's engines: what they index (under the
      // batch's rank, or rank 0 for a batch without one) is that rank's
      const list = s.scores
      // the lower tiers are walked only when some engine reported blocks there
      const device = router.lowerTierBlocks > 0 ? new Map<string, number>() : null
      for (let i = 0; i < list.length; i++) {
        const w = list[i]!
        if (w.score <= 0) continue
        device?.set(`${w.workerId}:${w.dpRank}`, w.score)
        let m = scores.get(w.workerId)
        if (m === undefined) {
          m = new Map<number, number>()
          scores.set(w.workerId, m)
        }
        const t = w.score * bs
        const had = m.get(rank)
        if (had === undefined || t > had) m.set(rank, t)
      }
      // lower tiers: each rank's match continued from its last device block (section 11)
      if (device === null) continue
      if (seq === null)
        seq =
          query.hashes !== undefined
            ? BigUint64Array.from(query.hashes, (h) => BigInt.asUintN(64, h))
            : computeBlockHashes(tokens!, bs, hashOpts!)
      for (const t of router.tierMatches(seq, device) ?? []) {
        let m = lower.get(t.workerId)
        if (m === undefined) {
          m = new Map()
          lower.set(t.workerId, m)
        }
        const had = m.get(rank)
        m.set(rank, { cpu: Math.max(had?.cpu ?? 0, t.cpu * bs), disk: Math.max(had?.disk ?? 0, t.disk * bs) })
      }
    }
    return scoreBody(scores, lower)
  }

  /** A listener's /workers status: paused (test route), pending (nothing heard from the engine yet) or active. */
  #listenerStatus(inst: Instance, rank: number): 'active' | 'pending' | 'paused' {
    const source = this.#partitions.get(pkey(inst.model, inst.group))?.routers.get(rank)?.engineSources().get(inst.id)
    if (source?.paused) return 'paused'
    // deliberate: a listener that has not heard from its engine yet is pending (Dynamo: active at once)
    return (source?.stats().received ?? 0n) > 0n ? 'active' : 'pending'
  }

  /**
   * The test-only routes: pause (close its SUB, keeping its blocks and seq cursor) or resume (a fresh SUB)
   * one listener. 404 for an unknown instance or rank, 409 from the wrong status.
   */
  listenerControl(b: { instance_id: bigint; dp_rank?: number | null }, action: 'pause' | 'resume'): Promise<void> {
    return this.#serial(async () => {
      const inst = this.#instances.get(b.instance_id)
      if (inst === undefined) throw new HttpError(404, `instance ${b.instance_id} not found`)
      const rank = b.dp_rank ?? 0
      if (!inst.ranks.has(rank)) throw new HttpError(404, `instance ${b.instance_id} dp_rank ${rank} not found`)
      const status = this.#listenerStatus(inst, rank)
      if ((action === 'pause') === (status === 'paused'))
        throw new HttpError(409, `instance ${b.instance_id} dp_rank ${rank} cannot be ${action}d from status ${status}`)
      const router = this.#partitions.get(pkey(inst.model, inst.group))?.routers.get(rank)
      if (action === 'pause') await router?.pauseEngine(inst.id)
      else await router?.resumeEngine(inst.id)
      this.#log.info({ instance_id: inst.id.toString(), dp_rank: rank }, action === 'pause' ? 'listener paused' : 'listener resumed')
    })
  }

  /** The /workers list. */
  workers(filter: { model?: string; group?: string } = {}) {
    const out: unknown[] = []
    for (const inst of this.#instances.values()) {
      if (filter.model !== undefined && inst.model !== filter.model) continue
      if (filter.group !== undefined && inst.group !== filter.group) continue
      const part = this.#partitions.get(pkey(inst.model, inst.group))
      const endpoints = new Map<number, string>()
      const listeners = new Map<number, unknown>()
      let pending = false
      for (const [r, l] of inst.ranks) {
        endpoints.set(r, l.endpoint)
        // deliberate: a listener that has not heard from its engine yet is pending (Dynamo: active at once)
        const status = this.#listenerStatus(inst, r)
        pending ||= status === 'pending'
        listeners.set(r, { endpoint: l.endpoint, status })
      }
      out.push({
        instance_id: inst.id,
        source: 'zmq',
        status: pending ? 'pending' : 'active',
        model_name: inst.model,
        routing_group: inst.group,
        block_size: part?.blockSize ?? 0,
        endpoints,
        listeners,
      })
    }
    return out
  }

  /** The /dump: every partition's blocks as Dynamo RouterEvents (stored, per worker rank). */
  dump() {
    const out = new Map<string, unknown>()
    for (const part of this.#partitions.values()) {
      const events: unknown[] = []
      let id = 0n
      for (const [rank, router] of part.routers)
        for (const ev of router.index.dump()) {
          if (ev.event.data.type !== 'stored') continue
          events.push({
            worker_id: ev.workerId,
            storage_tier: 'device',
            residency_domain: 'worker',
            event: {
              event_id: id++,
              data: {
                stored: {
                  parent_hash: ev.event.data.parentHash,
                  start_position: null,
                  blocks: ev.event.data.blocks.map((b) => ({ block_hash: b.blockHash, tokens_hash: b.tokensHash, mm_extra_info: null })),
                },
              },
              dp_rank: rank,
            },
          })
        }
      out.set(`${part.model}:${part.group}`, { block_size: part.blockSize, events })
    }
    return out
  }

  /** Answers one HTTP request (counted in the metrics). Never throws for any input. */
  async handle(method: string, url: string, contentType: string | undefined, raw: string): Promise<IndexerReply> {
    return this.#dispatch(method, url, contentType, raw)
  }

  /** `handle`, answered synchronously where the route has nothing to wait for (a promise otherwise). */
  #dispatch(method: string, url: string, contentType: string | undefined, raw: string): IndexerReply | Promise<IndexerReply> {
    const start = performance.now()
    let reply: IndexerReply | Promise<IndexerReply>
    try {
      reply = this.#route(method, url, contentType, raw)
    } catch (e) {
      reply = this.#errorReply(e)
    }
    if (reply instanceof Promise)
      return reply.then(
        (r) => {
          this.#observe(method, url, r.status, start)
          return r
        },
        (e) => {
          const r = this.#errorReply(e)
          this.#observe(method, url, r.status, start)
          return r
        },
      )
    this.#observe(method, url, reply.status, start)
    return reply
  }

  #observe(method: string, url: string, status: number, start: number): void {
    const q = url.indexOf('?')
    const endpoint = q < 0 ? url : url.slice(0, q)
    if (!ROUTES.has(endpoint)) return
    const key = `${endpoint} ${method}`
    let m = this.#meters.get(key)
    if (m === undefined) {
      m = { requests: this.#requests.labels({ endpoint, method }), duration: this.#duration.labels({ endpoint }) }
      this.#meters.set(key, m)
    }
    m.requests.inc()
    if (status >= 400) this.#errors.inc({ endpoint, status_class: `${Math.floor(status / 100)}xx` })
    m.duration.observe((performance.now() - start) / 1000)
  }

  /** A /query read by scanQuery, answered without the general route's promises. */
  #query(b: ScannedQuery): IndexerReply {
    try {
      const body = this.score(b.model, b.group ?? 'default', { tokens: b.tokens, loraName: b.lora, cacheSalt: b.salt })
      return { status: 200, contentType: JSON_TYPE, body }
    } catch (e) {
      if (e instanceof HttpError) return json(e.status, { error: e.message })
      this.#log.error({ err: e }, 'request failed')
      return json(500, { error: e instanceof Error ? e.message : String(e) })
    }
  }

  /** The answer to a refused request (HttpError: JSON, TextError: text) or a failed one (500). */
  #errorReply(e: unknown): IndexerReply {
    if (e instanceof HttpError) return json(e.status, { error: e.message })
    if (e instanceof TextError) return text(e.status, e.message)
    this.#log.error({ err: e }, 'request failed')
    return json(500, { error: e instanceof Error ? e.message : String(e) })
  }

  /** The routes; a promise only from those that wait (registrations, metrics). Throws a refusal. */
  #route(method: string, url: string, contentType: string | undefined, raw: string): IndexerReply | Promise<IndexerReply> {
    const q = url.indexOf('?')
    const path = q < 0 ? url : url.slice(0, q)
    const allow = ROUTES.get(path) ?? (this.#testEndpoints ? TEST_ROUTES.get(path) : undefined)
    if (allow === undefined) return empty(404)
    const m = method === 'HEAD' && allow === 'GET' ? 'GET' : method
    if (m !== allow) return empty(405, { allow: allow === 'GET' ? 'GET,HEAD' : allow })
    if (m === 'GET') {
      switch (path) {
        case '/health':
          return empty(200)
        case '/workers': {
          const params = new URLSearchParams(q < 0 ? '' : url.slice(q + 1))
          return json(200, this.workers({ model: params.get('model_name') ?? undefined, group: params.get('routing_group') ?? undefined }))
        }
        case '/dump':
          return json(200, this.dump())
        case '/peers':
          return json(200, [...this.#peers])
        case '/metrics':
          return this.registry.metrics().then((body) => ({ status: 200, contentType: 'text/plain; version=0.0.4', body }))
      }
    }
    if (path === '/reopen_logs') return json(200, OK)
    if (!isJson(contentType)) return text(415, 'Expected request with `Content-Type: application/json`')
    switch (path) {
      case '/register':
        return this.register(parseRegister(raw)).then(() => json(201, OK))
      case '/unregister': {
        const b = body(raw, 'UnregisterRequest', UNREGISTER)
        return this.unregister(b as never).then(() => json(200, OK))
      }
      case '/query': {
        const b = (fastQuery(raw) ?? body(raw, 'QueryRequest', QUERY)) as {
          token_ids: number[]
          model_name: string
          routing_group?: string
        }
        const x = b as unknown as { lora_name?: string | null; cache_salt?: string | null }
        const scored = this.score(b.model_name, b.routing_group ?? 'default', {
          tokens: b.token_ids,
          loraName: x.lora_name,
          cacheSalt: x.cache_salt,
        })
        return { status: 200, contentType: JSON_TYPE, body: scored }
      }
      case '/query_by_hash': {
        const b = body(raw, 'QueryByHashRequest', QUERY_BY_HASH) as {
          block_hashes: bigint[]
          model_name: string
          routing_group?: string
          cache_salt?: string | null
        }
        if (b.cache_salt != null)
          throw new HttpError(
            400,
            'cache_salt is not accepted by /query_by_hash; block_hashes must already include the intended cache salt',
          )
        const hashes = b.block_hashes.map((h) => BigInt.asUintN(64, h))
        return { status: 200, contentType: JSON_TYPE, body: this.score(b.model_name, b.routing_group ?? 'default', { hashes }) }
      }
      case '/test/pause_listener':
      case '/test/resume_listener': {
        const b = body(raw, 'ListenerControlRequest', LISTENER_CONTROL) as { instance_id: bigint; dp_rank?: number | null }
        return this.listenerControl(b, path === '/test/pause_listener' ? 'pause' : 'resume').then(() => json(200, OK))
      }
      case '/register_peer': {
        const b = body(raw, 'PeerRequest', PEER) as { url: string }
        this.addPeer(b.url)
        return json(201, OK)
      }
      case '/deregister_peer': {
        const b = body(raw, 'PeerRequest', PEER) as { url: string }
        if (!this.#peers.delete(b.url)) throw new HttpError(404, 'peer not found')
        return json(200, OK)
      }
    }
    return empty(404)
  }

  /**
   * Answers one request as an HTTP front read it: the 413 for a body over its limit, the common /query
   * body read from its bytes and answered at once (synchronously), any other request through `handle`
   * (a promise). Both fronts serve this function; it never throws for any input.
   */
  respond(req: IndexerRequest): IndexerReply | Promise<IndexerReply> {
    const { method, url } = req
    if (req.tooLarge) {
      const reply = text(413, 'Failed to buffer the request body: length limit exceeded')
      this.#observe(method, url, 413, performance.now())
      return reply
    }
    if (url === '/query' && method === 'POST' && isJson(req.contentType)) {
      const t = performance.now()
      const scanned = scanQuery(req.body)
      if (scanned !== null) {
        const reply = this.#query(scanned)
        this.#observe('POST', url, reply.status, t)
        return reply
      }
    }
    return this.#dispatch(method, url, req.contentType, req.body.toString('utf8'))
  }

  /** The answer to a request whose handling threw: 500 with the message. */
  #failure(e: unknown): IndexerReply {
    this.#log.error({ err: e }, 'request failed')
    return json(500, { error: e instanceof Error ? e.message : String(e) })
  }

  /**
   * Serves the routes over HTTP on host:port (port 0: any free one) with the service's front (`http`);
   * resolves with the bound address.
   */
  listen(port: number, host = '127.0.0.1'): Promise<AddressInfo> {
    if (this.#server !== null || this.#native !== null) return Promise.reject(new Error('the indexer is already listening'))
    if (this.http === 'native') {
      try {
        this.#native = new NativeFront({
          host,
          port,
          queryBodyLimit: this.queryBodyLimit,
          bodyLimit: this.bodyLimit,
          handler: (req) => this.respond(req),
          failure: (e) => this.#failure(e),
        })
        return Promise.resolve(this.#native.address)
      } catch (e) {
        return Promise.reject(e)
      }
    }
    const server = createServer((req, res) => this.#serve(req, res))
    server.keepAliveTimeout = 5000
    server.headersTimeout = 10_000
    server.requestTimeout = 30_000
    this.#server = server
    return new Promise((resolve, reject) => {
      server.once('error', (e) => {
        this.#server = null
        reject(e)
      })
      server.listen(port, host, () => {
        server.removeAllListeners('error')
        resolve(server.address() as AddressInfo)
      })
    })
  }

  /** The node:http front: reads the body up to its limit, answers with `respond`. */
  #serve(req: IncomingMessage, res: ServerResponse): void {
    const url = req.url ?? '/'
    const method = req.method ?? 'GET'
    const q = url.indexOf('?')
    const limit = this.limitFor(q < 0 ? url : url.slice(0, q))
    const chunks: Buffer[] = []
    let size = 0
    let over = false
    const send = (r: IndexerReply) => {
      if (!over && r.status === 200 && r.contentType === JSON_TYPE && r.headers === undefined) {
        // the common answer: the flat header list is node:http's cheapest form, and the header and body
        // go out in one write
        res.writeHead(200, ['content-length', Buffer.byteLength(r.body), 'content-type', JSON_TYPE])
        res.end(method === 'HEAD' ? undefined : r.body)
        return
      }
      const headers: Record<string, string | number> = { ...(r.headers ?? {}), 'content-length': Buffer.byteLength(r.body) }
      if (r.contentType !== null) headers['content-type'] = r.contentType
      if (over) headers.connection = 'close'
      res.writeHead(r.status, headers)
      res.end(method === 'HEAD' ? undefined : r.body)
    }
    const answer = (body: Buffer, tooLarge: boolean) => {
      let r: IndexerReply | Promise<IndexerReply>
      try {
        r = this.respond({ method, url, contentType: req.headers['content-type'], body, tooLarge })
      } catch (e) {
        r = this.#failure(e)
      }
      if (r instanceof Promise) r.then(finish, (e) => finish(this.#failure(e)))
      else finish(r)
    }
    // an answer that cannot be sent (not a reply at all) is a 500 instead
    const finish = (r: IndexerReply) => {
      try {
        send(r)
      } catch (e) {
        if (res.headersSent) res.destroy()
        else send(this.#failure(e))
      }
    }
    const declared = Number(req.headers['content-length'] ?? 0)
    if (declared > limit) {
      req.resume()
      over = true
      answer(EMPTY, true)
      return
    }
    req.on('data', (c: Buffer) => {
      if (over) return
      size += c.length
      if (size > limit) {
        over = true
        answer(EMPTY, true)
        return
      }
      chunks.push(c)
    })
    req.on('error', () => res.destroy())
    req.on('end', () => {
      if (over) return
      answer(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks), false)
    })
  }

  /** Stops the HTTP server (requests in flight are answered first) and every engine listener. */
  async close(): Promise<void> {
    const server = this.#server
    this.#server = null
    if (server !== null) {
      server.closeIdleConnections()
      await new Promise<void>((r) => server.close(() => r()))
    }
    const native = this.#native
    this.#native = null
    if (native !== null) await native.close()
    await this.#serial(async () => {
      for (const i of this.#instances.values()) for (const l of i.ranks.values()) if (l.silence) clearTimeout(l.silence)
      for (const p of this.#partitions.values()) for (const r of p.routers.values()) await r.close()
      this.#partitions.clear()
      this.#instances.clear()
    })
  }
}

/**
 * The /query answer (Dynamo's ScoreResponse) as JSON text, written directly: per instance, the device
 * tokens per rank, and the summary: gpu (the best rank's device tokens), cpu and disk (the best rank's
 * match continued on the host tier, then on disk and external; gpu without lower-tier blocks) and
 * longest_matched (the largest). An instance matched only on lower tiers has its ranks at 0.
 */
function scoreBody(scores: Map<bigint, Map<number, number>>, lower: Map<bigint, Map<number, { cpu: number; disk: number }>>): string {
  let s = ''
  let inst = ''
  const ids = [...scores.keys()]
  for (const id of lower.keys()) if (!scores.has(id)) ids.push(id)
  for (const id of ids) {
    const ranks = scores.get(id)
    const low = lower.get(id)
    let dp = ''
    let dev = ''
    let gpu = 0
    let cpu = 0
    let disk = 0
    if (ranks !== undefined)
      for (const [rank, tokens] of ranks) {
        dp += dp.length === 0 ? `"${rank}":${tokens}` : `,"${rank}":${tokens}`
        if (tokens > gpu) gpu = tokens
      }
    dev = dp
    if (low !== undefined)
      for (const [rank, t] of low) {
        if (ranks === undefined || !ranks.has(rank)) dp += dp.length === 0 ? `"${rank}":0` : `,"${rank}":0`
        if (t.cpu > cpu) cpu = t.cpu
        if (t.disk > disk) disk = t.disk
      }
    if (gpu > cpu) cpu = gpu
    if (cpu > disk) disk = cpu
    if (ranks !== undefined) s += `${s.length === 0 ? '' : ','}"${id}":{${dev}}`
    inst += `${inst.length === 0 ? '' : ','}"${id}":{"longest_matched":${disk},"gpu":${gpu},"dp":{${dp}},"cpu":${cpu},"disk":${disk}}`
  }
  return `{"scores":{${s}},"frequencies":[],"instances":{${inst}}}`
}

const ROUTES = new Map<string, string>([
  ['/health', 'GET'],
  ['/workers', 'GET'],
  ['/dump', 'GET'],
  ['/peers', 'GET'],
  ['/metrics', 'GET'],
  ['/register', 'POST'],
  ['/unregister', 'POST'],
  ['/query', 'POST'],
  ['/query_by_hash', 'POST'],
  ['/register_peer', 'POST'],
  ['/deregister_peer', 'POST'],
  ['/reopen_logs', 'POST'],
])

/** The test-only routes, served with `testEndpoints`. */
const TEST_ROUTES = new Map<string, string>([
  ['/test/pause_listener', 'POST'],
  ['/test/resume_listener', 'POST'],
])

function isJson(ct: string | undefined): boolean {
  if (ct === undefined) return false
  if (ct === JSON_TYPE) return true
  const mime = ct.split(';')[0]!.trim().toLowerCase()
  return mime === 'application/json' || (mime.startsWith('application/') && mime.endsWith('+json'))
}
