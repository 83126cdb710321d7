// The standalone indexer service section of `npm run bench` (BENCH_ONLY=indexer-http): `dynamo-kv indexer`
// (the built bin, dist/cli.js) in a child process; 64 engines (EngineSimulator sockets sending prepared
// vLLM batches over real ZeroMQ, with replay) registered over HTTP; each worker stores 256 chains of 64
// blocks (16 tokens a block): a shared document prefix of 8-56 blocks and a suffix of its own, so the
// index holds 64 × 256 × 64 = 1,048,576 (worker, block) entries. Then a closed-loop HTTP load from this
// process (keep-alive, BENCH_HTTP_CONNECTIONS connections, default 8 then 32, one request in flight on
// each) for BENCH_HTTP_SECONDS (default 10) of POST /query with 1,024-token prompts (half a document
// prefix, half one worker's own chain): queries per second and latency percentiles measured by the
// client (request written → response read), and the client's own CPU time. The client and the service
// share the machine's 2 cores, so the client is light by default (BENCH_HTTP_CLIENT=raw: requests
// encoded once, written whole on plain sockets); BENCH_HTTP_CLIENT=node uses the node:http client.
// BENCH_INDEXER_CLI runs another build's bin; BENCH_PROF=DIR writes a CPU profile of the service.
// BENCH_INDEXER_HTTP names the HTTP fronts to compare (default `native,node`; `default` starts the bin
// without --http, for a build that has no such option): one service per front, all subscribed to the same
// engines (so they index the same blocks), measured alternately row by row in the same minutes.
// The service's own CPU time is read from /proc over each row: its main (JavaScript) thread per request
// (schedstat, ns) and the whole process in cores (stat: utime + stime). CPU per request stays comparable
// when other work shares the machine, where the rates do not.
// Run alone: `BENCH_ONLY=indexer-http npx tsx bench/run.ts` or `npx tsx bench/indexer-http.ts`.
import { encode } from '@msgpack/msgpack'
import { type ChildProcess, spawn } from 'node:child_process'
import { Agent, request } from 'node:http'
import { connect, type Socket } from 'node:net'
import { readFileSync } from 'node:fs'
import { cpus, loadavg } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { EngineSimulator } from '../ts/sim/index.js'

const HERE = dirname(fileURLToPath(import.meta.url))
/** The service's bin (BENCH_INDEXER_CLI: another build's, to compare builds in alternated runs). */
const CLI = process.env.BENCH_INDEXER_CLI ?? join(HERE, '..', 'dist', 'cli.js')
const WORKERS = 64
const CHAINS = 256
const BLOCKS = 64
const BS = 16
const DOCS = 512
const SECONDS = Number(process.env.BENCH_HTTP_SECONDS ?? 10)
const CONNECTIONS = (process.env.BENCH_HTTP_CONNECTIONS ?? '8,32').split(',').map(Number)
/** The load generator: `raw` (default) pre-encoded requests on plain sockets; `node` the node:http client. */
const CLIENT = process.env.BENCH_HTTP_CLIENT ?? 'raw'
if (CLIENT !== 'raw' && CLIENT !== 'node') throw new Error(`BENCH_HTTP_CLIENT must be raw or node, got ${CLIENT}`)
/** The HTTP fronts compared, one service each (`default`: no --http flag). */
const FRONTS = (process.env.BENCH_INDEXER_HTTP ?? 'native,node').split(',').map((f) => f.trim())
for (const f of FRONTS)
  if (f !== 'native' && f !== 'node' && f !== 'default') throw new Error(`BENCH_INDEXER_HTTP: native, node or default, got ${f}`)

function rng(seed: number) {
  let s = seed >>> 0 || 1
  return () => {
    s ^= s << 13
    s >>>= 0
    s ^= s >>> 17
    s ^= s << 5
    s >>>= 0
    return s / 2 ** 32
  }
}

const docTokens = (d: number, k: number) => Array.from({ length: BS }, (_, i) => (d * 7919 + k * 131 + i * 17) % 150_000)

/** Worker w's chain c: its tokens and the engine's block hashes. */
function chain(w: number, c: number): { tokens: number[]; hashes: bigint[] } {
  const r = rng(w * 100_003 + c * 7 + 1)
  const doc = Math.floor(r() * DOCS)
  const shared = 8 + Math.floor(r() * 49)
  const tokens: number[] = []
  const hashes: bigint[] = []
  for (let k = 0; k < BLOCKS; k++) {
    if (k < shared) {
      tokens.push(...docTokens(doc, k))
      hashes.push(BigInt(doc) * 1000n + BigInt(k) + 1n)
    } else {
      for (let i = 0; i < BS; i++) tokens.push(Math.floor(r() * 150_000))
      hashes.push((1n << 40n) + BigInt(w) * 1_000_000n + BigInt(c) * 100n + BigInt(k))
    }
  }
  return { tokens, hashes }
}

function batch(w: number, c: number): Uint8Array {
  const { tokens, hashes } = chain(w, c)
  return encode(
    [
      Date.now() / 1000 + 0.5,
      [
        {
          type: 'BlockStored',
          block_hashes: hashes,
          parent_block_hash: null,
          token_ids: tokens,
          block_size: BS,
          lora_id: null,
          medium: 'GPU',
          lora_name: null,
        },
      ],
      null,
    ],
    { useBigInt64: true },
  )
}

/** A process's CPU time: its main thread's (schedstat, ns) and the whole process's (stat, clock ticks). */
function processCpu(pid: number): { mainNs: number; ticks: number } | null {
  try {
    const mainNs = Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0])
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    // fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the command
    return { mainNs, ticks: Number(f[11]) + Number(f[12]) }
  } catch {
    return null
  }
}
/** Clock ticks per second of /proc/PID/stat (USER_HZ, 100 on Linux). */
const TICKS = 100

const agent = new Agent({ keepAlive: true, maxSockets: Math.max(...CONNECTIONS) })

/**
 * One request on the keep-alive agent. A request written on a reused socket that the server closed as
 * idle meanwhile (its keep-alive timeout) fails with ECONNRESET before any answer; it is sent again once,
 * as node:http's documentation recommends.
 */
function send(
  port: number,
  method: 'GET' | 'POST',
  path: string,
  body: string | undefined,
  retried = false,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }
    const req = request({ host: '127.0.0.1', port, method, path, agent, headers }, (res) => {
      if (body === undefined) {
        res.resume()
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: '' }))
        return
      }
      let b = ''
      res.setEncoding('utf8')
      res.on('data', (c: string) => {
        b += c
      })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }))
    })
    req.on('error', (e: NodeJS.ErrnoException) => {
      if (!retried && req.reusedSocket && e.code === 'ECONNRESET') send(port, method, path, body, true).then(resolve, reject)
      else reject(e)
    })
    req.end(body)
  })
}

const post = (port: number, path: string, body: string) => send(port, 'POST', path, body)
const get = (port: number, path: string) => send(port, 'GET', path, undefined)

/**
 * One keep-alive connection of the light load generator: whole requests (head and body) encoded once,
 * written with one call, and the response read by its status line and content-length only. One request
 * in flight at a time, as with the node:http client.
 */
class RawConnection {
  readonly #socket: Socket
  #buf: Buffer = Buffer.alloc(0)
  #done: ((status: number) => void) | null = null
  #fail: ((e: Error) => void) | null = null

  private constructor(socket: Socket) {
    this.#socket = socket
    socket.setNoDelay(true)
    socket.on('data', (c: Buffer) => this.#read(c))
    socket.on('error', (e) => this.#fail?.(e))
    socket.on('close', () => this.#fail?.(new Error('connection closed')))
  }

  static open(port: number): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect(port, '127.0.0.1', () => {
        socket.off('error', reject)
        resolve(new RawConnection(socket))
      })
      socket.once('error', reject)
    })
  }

  /** Sends one encoded request; resolves with the response's status once its whole body is read. */
  send(request: Buffer): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#done = resolve
      this.#fail = reject
      this.#socket.write(request)
    })
  }

  #read(c: Buffer): void {
    this.#buf = this.#buf.length === 0 ? c : Buffer.concat([this.#buf, c])
    const head = this.#buf.indexOf('\r\n\r\n')
    if (head < 0) return
    const text = this.#buf.toString('latin1', 0, head)
    const m = /\r\ncontent-length: *(\d+)/i.exec(text)
    const total = head + 4 + (m === null ? 0 : Number(m[1]))
    if (this.#buf.length < total) return
    this.#buf = this.#buf.subarray(total)
    const done = this.#done
    this.#done = null
    this.#fail = null
    done?.(Number(text.slice(9, 12)))
  }

  close(): void {
    this.#fail = null
    this.#socket.destroy()
  }
}

const encodeRequest = (port: number, method: string, path: string, body?: string) =>
  Buffer.from(
    body === undefined
      ? `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: keep-alive\r\n\r\n`
      : `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  )

async function startIndexer(front: string): Promise<{ child: ChildProcess; port: number }> {
  const child = spawn(
    process.execPath,
    [
      ...(process.env.BENCH_PROF ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_PROF] : []),
      CLI,
      'indexer',
      ...(front === 'default' ? [] : ['--http', front]),
      '--port',
      '0',
      '--log-format',
      'json',
      '--log-level',
      'info',
    ],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  )
  const port = await new Promise<number>((resolve, reject) => {
    let err = ''
    child.stderr!.on('data', (d: Buffer) => {
      err += d
      const m = /"port":(\d+).*"msg":"indexer listening"/.exec(err)
      if (m) resolve(Number(m[1]))
    })
    child.on('exit', (code) => reject(new Error(`indexer exited ${code}: ${err}`)))
  })
  return { child, port }
}

export async function benchIndexerHttp(): Promise<void> {
  console.log(`\n## Standalone indexer service (dynamo-kv indexer), ${cpus().length} cores, load ${loadavg()[0]!.toFixed(1)}`)
  const services: { front: string; child: ChildProcess; port: number }[] = []
  const sims: EngineSimulator[] = []
  try {
    for (const front of FRONTS) services.push({ front, ...(await startIndexer(front)) })
    for (let w = 0; w < WORKERS; w++) {
      const sim = await EngineSimulator.create({ kvBlockSize: BS, replayEndpoint: 'tcp://127.0.0.1:0', replayBufferSize: CHAINS + 10 })
      sims.push(sim)
      // every service subscribes to every engine: they all index the same blocks
      for (const { port } of services) {
        const r = await post(
          port,
          '/register',
          JSON.stringify({
            instance_id: w + 1,
            endpoint: sim.endpoint,
            replay_endpoint: sim.replayEndpoint,
            model_name: 'bench',
            block_size: BS,
          }),
        )
        if (r.status !== 201) throw new Error(`register: ${r.status} ${r.body}`)
      }
    }
    const t0 = performance.now()
    for (let c = 0; c < CHAINS; c++) for (let w = 0; w < WORKERS; w++) await sims[w]!.sendPayload(batch(w, c))
    // loaded when every worker's last chain is matched whole
    const last = (w: number) => JSON.stringify({ token_ids: chain(w, CHAINS - 1).tokens, model_name: 'bench' })
    for (const { port } of services)
      for (let w = 0; w < WORKERS; w++) {
        for (let k = 0; ; k++) {
          const r = await post(port, '/query', last(w))
          if (r.status !== 200) throw new Error(`/query while loading: ${r.status} ${JSON.stringify(r.body)}`)
          const scores = JSON.parse(r.body) as { scores: Record<string, Record<string, number>> }
          if (scores.scores[String(w + 1)]?.['0'] === BLOCKS * BS) break
          if (k > 600) throw new Error(`worker ${w + 1} never finished loading`)
          await sims[w]!.heartbeat()
          await new Promise((res) => setTimeout(res, 100))
        }
      }
    const loadS = (performance.now() - t0) / 1000
    const entries = WORKERS * CHAINS * BLOCKS
    console.log(
      `index: ${WORKERS} workers, ${entries} (worker, block) entries in each of ${services.length} service(s) (HTTP front: ${FRONTS.join(', ')}), loaded over ZeroMQ in ${loadS.toFixed(1)} s`,
    )

    // prompts: half a document prefix (shared by many workers), half one worker's own chain
    const r = rng(99)
    const bodies: string[] = []
    for (let q = 0; q < 2000; q++) {
      let tokens: number[]
      if (q % 2 === 0) {
        const d = Math.floor(r() * DOCS)
        tokens = Array.from({ length: BLOCKS }, (_, k) => docTokens(d, k)).flat()
      } else tokens = chain(Math.floor(r() * WORKERS), Math.floor(r() * CHAINS)).tokens
      bodies.push(JSON.stringify({ token_ids: tokens, model_name: 'bench' }))
    }
    // the same answers from every service (they index the same blocks)
    const expected = new Map<number, string>()
    for (const { port, front } of services)
      for (let q = 0; q < 20; q++) {
        const body = (await post(port, '/query', bodies[q]!)).body
        const had = expected.get(q)
        if (had === undefined) expected.set(q, body)
        else if (had !== body) throw new Error(`the ${front} service answers query ${q} differently: ${body} vs ${had}`)
      }
    // warm up, then measure; the client's own CPU time is measured too (it shares the cores)
    const run = async (svc: { child: ChildProcess; port: number }, connections: number, seconds: number, path = '/query') => {
      const { port, child } = svc
      const encoded = bodies.map((b) => encodeRequest(port, 'POST', '/query', b))
      const health = encodeRequest(port, 'GET', '/health')
      const lat: number[] = []
      let errors = 0
      const end = performance.now() + seconds * 1000
      let i = 0
      const nodeLoop = async () => {
        while (performance.now() < end) {
          const body = bodies[i++ % bodies.length]!
          const s = performance.now()
          const res = path === '/query' ? await post(port, path, body) : await get(port, path)
          lat.push(performance.now() - s)
          if (res.status !== 200) errors++
        }
      }
      const rawLoop = async () => {
        const conn = await RawConnection.open(port)
        try {
          while (performance.now() < end) {
            const req = path === '/query' ? encoded[i++ % encoded.length]! : health
            const s = performance.now()
            const status = await conn.send(req)
            lat.push(performance.now() - s)
            if (status !== 200) errors++
          }
        } finally {
          conn.close()
        }
      }
      const cpu0 = process.cpuUsage()
      const svc0 = processCpu(child.pid!)
      const s = performance.now()
      await Promise.all(Array.from({ length: connections }, CLIENT === 'raw' ? rawLoop : nodeLoop))
      const wall = (performance.now() - s) / 1000
      const cpu = process.cpuUsage(cpu0)
      const svc1 = processCpu(child.pid!)
      const used =
        svc0 === null || svc1 === null
          ? null
          : { mainUsPerRequest: (svc1.mainNs - svc0.mainNs) / 1000 / lat.length, cores: (svc1.ticks - svc0.ticks) / TICKS / wall }
      return { lat, errors, seconds: wall, clientCpu: (cpu.user + cpu.system) / 1e6 / wall, svc: used }
    }
    for (const svc of services) await run(svc, Math.max(...CONNECTIONS), 2)
    console.log(`client: ${CLIENT === 'raw' ? 'raw sockets, pre-encoded requests' : 'node:http'}`)
    console.log(
      '| load | HTTP front | queries/s | p50 | p99 | max | errors | client CPU (cores) | service CPU (cores) | service main thread CPU per request |\n|---|---|---|---|---|---|---|---|---|---|',
    )
    const rows: [string, number, string][] = CONNECTIONS.map((c) => ['POST /query, 1,024-token prompts', c, '/query'])
    // the HTTP floor: a route that does no work, at the highest load
    rows.push(['GET /health (no work: the HTTP floor)', Math.max(...CONNECTIONS), '/health'])
    // each row for every front in turn: the fronts share the same minutes of the machine
    for (const [what, connections, path] of rows)
      for (const svc of services) {
        const m = await run(svc, connections, SECONDS, path)
        m.lat.sort((a, b) => a - b)
        const pct = (p: number) => `${m.lat[Math.min(m.lat.length - 1, Math.floor(p * m.lat.length))]!.toFixed(2)} ms`
        console.log(
          `| ${what}, ${connections} keep-alive connections, ${SECONDS} s | ${svc.front} | ${(m.lat.length / m.seconds).toFixed(0)} | ${pct(0.5)} | ${pct(0.99)} | ${m.lat.at(-1)!.toFixed(2)} ms | ${m.errors} | ${m.clientCpu.toFixed(2)} | ${m.svc?.cores.toFixed(2) ?? '-'} | ${m.svc === null ? '-' : `${m.svc.mainUsPerRequest.toFixed(1)} µs`} |`,
        )
      }
    console.log(
      `load average after: ${loadavg()
        .map((x) => x.toFixed(1))
        .join(', ')}`,
    )
  } finally {
    for (const s of sims) s.close()
    for (const { child } of services) {
      child.kill('SIGTERM')
      await new Promise((res) => child.once('exit', res))
    }
    agent.destroy()
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await benchIndexerHttp()
