// Runs helpers/dynamo-router.py, a real Dynamo 1.6.1 KvRouter (PyPI ai-dynamo-runtime==1.6.1), as a child
// process and asks it for overlaps. The interpreter: $DYNAMO_KV_DYNAMO_PYTHON, else the venv that
// `.ci/dynamo-venv` creates (${XDG_CACHE_HOME:-~/.cache}/dynamo-kv/dynamo-venv). Nothing is installed here.
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { homedir } from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'

const SCRIPT = fileURLToPath(new URL('./dynamo-router.py', import.meta.url))
const OUTPUT_LIMIT = 64 * 1024

/** Where the Dynamo interpreter is looked for, and whether it is there. */
export function dynamoPython(env = process.env): { python: string; found: boolean } {
  const explicit = env.DYNAMO_KV_DYNAMO_PYTHON
  if (explicit) return { python: explicit, found: existsSync(explicit) }
  const venv = env.DYNAMO_KV_DYNAMO_VENV || path.join(env.XDG_CACHE_HOME || path.join(homedir(), '.cache'), 'dynamo-kv', 'dynamo-venv')
  const python = path.join(venv, 'bin', 'python')
  return { python, found: existsSync(python) }
}

export interface DynamoRouterOptions {
  python: string
  /** The discovery store shared with the publisher: a file store's root (DYN_FILE_KV) or etcd's URL. */
  discovery: { backend: 'file'; fileKv: string } | { backend: 'etcd'; etcdUrl: string }
  eventPlane: 'zmq' | 'nats'
  /** nats://127.0.0.1:PORT, for the nats event plane. */
  natsUrl?: string
  namespace: string
  component: string
  endpoint: string
  kvBlockSize: number
  /** Data-parallel ranks 0..dpSize-1 are registered with the model. */
  dpSize: number
  /** The router's KV indexer threads (KvRouterConfig router_event_threads; Dynamo's default 4). */
  eventThreads?: number
}

export interface RouterAnswer {
  /** best_worker: the chosen (worker, rank) and its overlap in blocks. */
  best: { workerId: bigint; dpRank: number; overlap: number }
  /** get_overlap_scores: device overlap blocks per dp rank of the served worker (every registered rank). */
  ranks: Record<number, number>
  /** compute_block_hash_for_seq: Dynamo's own block hashes of the tokens. */
  hashes: bigint[]
}

export interface Query {
  tokens: Uint32Array | number[]
  lora?: string | null
  salt?: string | null
}

interface RawAnswer {
  id: number
  error?: string
  dump?: string
  best?: { workerId: string; dpRank: number; overlap: number }
  ranks?: Record<string, number>
  hashes?: string[]
}

/** One Dynamo runtime serving the endpoint (its model registered) plus a KvRouter on it. */
export class DynamoRouter {
  /** The served instance id: the worker id a publisher's events and EventSource records must carry. */
  readonly workerId: bigint
  /** The installed ai-dynamo-runtime version. */
  readonly dynamoVersion: string
  readonly #child: ChildProcessWithoutNullStreams
  readonly #log: { text: string }
  #nextId = 1
  readonly #waiting = new Map<number, { resolve: (a: RawAnswer) => void; reject: (e: Error) => void }>()
  #exited: Error | null = null

  private constructor(child: ChildProcessWithoutNullStreams, ready: { workerId: bigint; dynamoVersion: string }, log: { text: string }) {
    this.#child = child
    this.workerId = ready.workerId
    this.dynamoVersion = ready.dynamoVersion
    this.#log = log
  }

  /** Everything the router printed on stderr (last 64 KiB), for a failure message. */
  output(): string {
    return this.#log.text
  }

  static async start(o: DynamoRouterOptions): Promise<DynamoRouter> {
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? '/usr/bin:/bin',
      HOME: process.env.HOME ?? '/tmp',
      DYN_LOG: process.env.DYNAMO_KV_DYNAMO_LOG || 'warn',
      NO_COLOR: '1',
    }
    if (o.natsUrl) env.NATS_SERVER = o.natsUrl
    if (o.discovery.backend === 'file') env.DYN_FILE_KV = o.discovery.fileKv
    else env.ETCD_ENDPOINTS = o.discovery.etcdUrl
    const child = spawn(
      o.python,
      [
        SCRIPT,
        `--event-plane=${o.eventPlane}`,
        `--discovery=${o.discovery.backend}`,
        `--namespace=${o.namespace}`,
        `--component=${o.component}`,
        `--endpoint=${o.endpoint}`,
        `--block-size=${o.kvBlockSize}`,
        `--dp-size=${o.dpSize}`,
        `--event-threads=${o.eventThreads ?? 4}`,
      ],
      { env, stdio: ['pipe', 'pipe', 'pipe'] },
    )
    const log = { text: '' }
    const append = (text: string) => {
      log.text = (log.text + text).slice(-OUTPUT_LIMIT)
    }
    child.stderr.on('data', (d: Buffer) => append(d.toString()))
    const lines = createInterface({ input: child.stdout })
    let router: DynamoRouter | null = null
    const ready = new Promise<{ workerId: bigint; dynamoVersion: string }>((resolve, reject) => {
      child.once('error', reject)
      child.once('exit', (code, signal) =>
        reject(new Error(`dynamo-router.py exited (${code ?? signal}) before it was ready:\n${log.text}`)),
      )
      lines.on('line', (line) => {
        let msg: { ready?: boolean; workerId?: string; dynamoVersion?: string } & RawAnswer
        try {
          msg = JSON.parse(line)
        } catch {
          append(`${line}\n`) // not ours: a library printing to stdout
          return
        }
        if (msg.ready) resolve({ workerId: BigInt(msg.workerId!), dynamoVersion: msg.dynamoVersion! })
        else if (router !== null) router.#answered(msg)
      })
    })
    try {
      router = new DynamoRouter(child, await ready, log)
    } catch (e) {
      child.kill('SIGKILL')
      throw e
    }
    const r = router
    child.on('exit', (code, signal) => {
      r.#exited = new Error(`dynamo-router.py exited (${code ?? signal}):\n${log.text}`)
      for (const w of r.#waiting.values()) w.reject(r.#exited)
      r.#waiting.clear()
    })
    return r
  }

  #answered(msg: RawAnswer): void {
    const w = this.#waiting.get(msg.id)
    this.#waiting.delete(msg.id)
    w?.resolve(msg)
  }

  #ask(msg: object): Promise<RawAnswer> {
    if (this.#exited) return Promise.reject(this.#exited)
    const id = this.#nextId++
    return new Promise<RawAnswer>((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject })
      this.#child.stdin.write(`${JSON.stringify({ id, ...msg })}\n`)
    })
  }

  /** The router indexer's events (its dump_events()), for a failure message. */
  async dump(): Promise<string> {
    const raw = await this.#ask({ op: 'dump' })
    return raw.dump ?? `error: ${raw.error}`
  }

  /** Asks the router; null while it cannot answer yet (e.g. the worker is not discovered). */
  async query(q: Query): Promise<RouterAnswer | null> {
    const raw = await this.#ask({ tokens: Array.from(q.tokens), lora: q.lora ?? null, salt: q.salt ?? null })
    if (raw.error !== undefined) return null
    const ranks: Record<number, number> = {}
    for (const [k, v] of Object.entries(raw.ranks!)) ranks[Number(k)] = v
    return {
      best: { workerId: BigInt(raw.best!.workerId), dpRank: raw.best!.dpRank, overlap: raw.best!.overlap },
      ranks,
      hashes: raw.hashes!.map((h) => BigInt(h)),
    }
  }

  /** Closes its stdin (it shuts down), then kills it if it has not exited after 5 s. */
  async stop(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return
    const exited = new Promise((r) => this.#child.once('exit', r))
    this.#child.stdin.end()
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 5000)
    await exited
    clearTimeout(timer)
  }
}
