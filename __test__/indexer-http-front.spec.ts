// The indexer's two HTTP fronts (SPEC "Standalone indexer", HTTP fronts): the native one (hyper on a thread
// of its own) when the native core is loaded, and node:http. Each is checked for the transport's duties
// (keep-alive and pipelining, Content-Length and chunked bodies, the body limit's 413 that reaches the client
// and closes, malformed HTTP's 400 that closes, HEAD, a handler that throws or rejects, close() with a request
// in flight, a process that exits once the service is closed), and both fronts must give the same status,
// headers that matter and body to the same requests. The other indexer specs run on the default front: the
// native one in the native pass, node:http in the fallback pass.
import test from 'ava'
import { spawn } from 'node:child_process'
import { connect, type Socket } from 'node:net'
import { fileURLToPath } from 'node:url'
import { type IndexerHttpFront, type IndexerReply, IndexerService, nativeHttpAvailable } from '../ts/indexer/service.js'
import { implementation } from '../ts/core/native.js'
import { http, postJson } from './helpers/http.js'

const FRONTS: IndexerHttpFront[] = nativeHttpAvailable ? ['native', 'node'] : ['node']
const REGISTER = JSON.stringify({ instance_id: 5, endpoint: 'tcp://127.0.0.1:1', model_name: 'm', block_size: 4 })
const QUERY = JSON.stringify({ token_ids: [1, 2, 3, 4, 5, 6, 7, 8], model_name: 'm' })
const EMPTY_SCORES = '{"scores":{},"frequencies":[],"instances":{}}'

async function service(front: IndexerHttpFront, opts: { bodyLimit?: number; queryBodyLimit?: number } = {}) {
  const svc = new IndexerService({ http: front, engineSilenceMs: 0, ...opts })
  const { port } = await svc.listen(0)
  return { svc, port }
}

/** A raw HTTP/1.1 exchange on one socket: sends the bytes (in pieces, if given several), reads until the server closes. */
function rawExchange(port: number, pieces: (string | Buffer)[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1')
    const got: Buffer[] = []
    s.on('data', (c: Buffer) => got.push(c))
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' || e.code === 'EPIPE' ? undefined : reject(e)))
    s.on('close', () => resolve(Buffer.concat(got).toString('latin1')))
    s.on('connect', async () => {
      for (const p of pieces) {
        s.write(p)
        await new Promise((r) => setTimeout(r, 5))
      }
    })
  })
}

/** Responses read one by one from a kept-alive socket (status, headers, body by content-length). */
class RawClient {
  #buf = Buffer.alloc(0)
  #waiting: (() => void) | null = null
  #closed = false
  private constructor(readonly socket: Socket) {
    socket.on('data', (c: Buffer) => {
      this.#buf = Buffer.concat([this.#buf, c])
      this.#waiting?.()
    })
    socket.on('close', () => {
      this.#closed = true
      this.#waiting?.()
    })
    socket.on('error', () => undefined)
  }
  static open(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect(port, '127.0.0.1', () => resolve(new RawClient(s)))
      s.once('error', reject)
    })
  }
  get closed() {
    return this.#closed
  }
  /** The next whole response (to a HEAD request: no body), or null when the server closed first. */
  async next(head = false): Promise<{ status: number; headers: Record<string, string>; body: string } | null> {
    const isHead = head
    for (;;) {
      const head = this.#buf.indexOf('\r\n\r\n')
      if (head >= 0) {
        const lines = this.#buf.toString('latin1', 0, head).split('\r\n')
        const headers: Record<string, string> = {}
        for (const l of lines.slice(1)) {
          const c = l.indexOf(':')
          headers[l.slice(0, c).toLowerCase()] = l.slice(c + 1).trim()
        }
        const total = head + 4 + (isHead ? 0 : Number(headers['content-length'] ?? 0))
        if (this.#buf.length >= total) {
          const body = this.#buf.toString('utf8', head + 4, total)
          this.#buf = this.#buf.subarray(total)
          return { status: Number(lines[0]!.split(' ')[1]), headers, body }
        }
      }
      if (this.#closed) return null
      await new Promise<void>((r) => {
        this.#waiting = r
      })
      this.#waiting = null
    }
  }
  /** Resolves once the server has closed the connection. */
  async untilClosed(): Promise<void> {
    while (!this.#closed)
      await new Promise<void>((r) => {
        this.#waiting = r
      })
  }
}

const req = (method: string, path: string, body?: string, headers: Record<string, string> = {}) => {
  const h = Object.entries(headers)
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')
  return body === undefined
    ? `${method} ${path} HTTP/1.1\r\nHost: x\r\n${h}\r\n`
    : `${method} ${path} HTTP/1.1\r\nHost: x\r\n${h}Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
}

test('the default front: native when the native core is loaded, node:http with the fallback', (t) => {
  const saved = process.env.DYNAMO_KV_INDEXER_HTTP
  delete process.env.DYNAMO_KV_INDEXER_HTTP
  try {
    t.is(new IndexerService().http, implementation === 'native' ? 'native' : 'node')
    t.is(new IndexerService({ http: 'node' }).http, 'node')
    if (!nativeHttpAvailable) t.throws(() => new IndexerService({ http: 'native' }), { message: /needs the native core/ })
    t.throws(() => new IndexerService({ http: 'uv' as never }), { message: /native or node/ })
  } finally {
    if (saved !== undefined) process.env.DYNAMO_KV_INDEXER_HTTP = saved
  }
})

for (const front of FRONTS) {
  test(`${front}: keep-alive and pipelined requests are answered in order on one connection`, async (t) => {
    const { svc, port } = await service(front)
    try {
      const c = await RawClient.open(port)
      c.socket.write(req('POST', '/register', REGISTER, { 'content-type': 'application/json' }))
      t.like(await c.next(), { status: 201, body: '{"status":"ok"}' })
      // three requests in one write: a query, a 404 and a health check
      c.socket.write(req('POST', '/query', QUERY, { 'content-type': 'application/json' }) + req('GET', '/nope') + req('GET', '/health'))
      t.like(await c.next(), { status: 200, body: EMPTY_SCORES, headers: { 'content-type': 'application/json' } })
      t.like(await c.next(), { status: 404, body: '' })
      t.like(await c.next(), { status: 200, body: '', headers: { 'content-length': '0' } })
      t.false(c.closed)
      c.socket.destroy()
    } finally {
      await svc.close()
    }
  })

  test(`${front}: a chunked body is read like a Content-Length one`, async (t) => {
    const { svc, port } = await service(front)
    try {
      t.is((await postJson(port, '/register', REGISTER)).status, 201)
      const chunk = (s: string) => `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`
      const head =
        'POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n'
      const text = await rawExchange(port, [head, chunk(QUERY.slice(0, 10)), chunk(QUERY.slice(10)), '0\r\n\r\n'])
      t.regex(text, /^HTTP\/1\.1 200 OK\r\n/)
      t.true(text.endsWith(`\r\n\r\n${EMPTY_SCORES}`), text)
      // a chunked body that is not JSON: the same 400 as with a Content-Length
      const bad = await rawExchange(port, [head, chunk('{"token_ids":'), '0\r\n\r\n'])
      const direct = await postJson(port, '/query', '{"token_ids":')
      t.is(direct.status, 400)
      t.true(bad.startsWith('HTTP/1.1 400 '), bad)
      t.true(bad.endsWith(`\r\n\r\n${direct.body}`), bad)
    } finally {
      await svc.close()
    }
  })

  test(`${front}: a body over the limit gets the 413 (declared or chunked), and the connection closes`, async (t) => {
    const { svc, port } = await service(front, { bodyLimit: 4096, queryBodyLimit: 8192 })
    try {
      const message = 'Failed to buffer the request body: length limit exceeded'
      // declared, and sent whole (1 MiB): the answer still reaches the client
      const big = `{"pad":"${'x'.repeat(1 << 20)}"}`
      const c = await RawClient.open(port)
      c.socket.write(req('POST', '/register', big, { 'content-type': 'application/json' }))
      const a = await c.next()
      t.like(a, { status: 413, body: message, headers: { 'content-type': 'text/plain; charset=utf-8', connection: 'close' } })
      await c.untilClosed()
      // the limit of /query is its own: 6,000 bytes pass there, not on /register
      const mid = JSON.stringify({ token_ids: Array.from({ length: 1200 }, (_, i) => i), model_name: 'nope' })
      t.true(mid.length > 4096 && mid.length < 8192)
      t.is((await postJson(port, '/query', mid)).status, 404)
      t.is((await postJson(port, '/register', mid)).status, 413)
      // chunked, going over while streaming
      const head = 'POST /query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n'
      const piece = `1000\r\n${'y'.repeat(4096)}\r\n`
      const text = await rawExchange(port, [head, piece, piece, piece, '0\r\n\r\n'])
      t.regex(text, /^HTTP\/1\.1 413 /)
      t.regex(text, /\r\nconnection: close\r\n/i)
      t.true(text.endsWith(message))
      // still serving
      t.is((await http(port, 'GET', '/health')).status, 200)
      // counted in the metrics as a 4xx of the route
      const metrics = (await http(port, 'GET', '/metrics')).body
      t.regex(metrics, /dynamo_kvindexer_errors_total\{endpoint="\/register",status_class="4xx"\} 2/)
    } finally {
      await svc.close()
    }
  })

  test(`${front}: malformed HTTP gets a 400 and the connection closes`, async (t) => {
    const { svc, port } = await service(front)
    try {
      for (const bad of [
        'NOT HTTP AT ALL\r\n\r\n',
        'GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n',
        'POST /query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
        'GET /health HTTP/1.1\r\nBad Header Line\r\n\r\n',
        Buffer.from([0x47, 0x45, 0x54, 0x20, 0x2f, 0x00, 0xff, 0x20, 0x48, 0x0d, 0x0a, 0x0d, 0x0a]),
      ]) {
        const text = await rawExchange(port, [bad])
        t.regex(text, /^HTTP\/1\.1 400 /, JSON.stringify(bad.toString()))
      }
      t.is((await http(port, 'GET', '/health')).status, 200)
    } finally {
      await svc.close()
    }
  })

  test(`${front}: HEAD answers a GET route's status and length without its body`, async (t) => {
    const { svc, port } = await service(front)
    try {
      t.is((await postJson(port, '/register', REGISTER)).status, 201)
      const get = await http(port, 'GET', '/workers')
      const c = await RawClient.open(port)
      c.socket.write(req('HEAD', '/workers') + req('GET', '/health'))
      const head = await c.next(true)
      // the body of HEAD is not sent: the next bytes are the /health answer's
      t.is(head?.status, 200)
      t.is(head?.headers['content-length'], String(Buffer.byteLength(get.body)))
      t.is(head?.headers['content-type'], 'application/json')
      t.like(await c.next(), { status: 200, body: '' })
      c.socket.destroy()
    } finally {
      await svc.close()
    }
  })

  test(`${front}: a handler that throws or rejects gets a 500 with its message, and the service goes on`, async (t) => {
    const { svc, port } = await service(front)
    const respond = svc.respond.bind(svc)
    try {
      svc.respond = (r) => {
        if (r.url === '/throw') throw new Error('thrown by the handler')
        if (r.url === '/reject') return Promise.reject(new TypeError('rejected by the handler'))
        if (r.url === '/broken') return undefined as unknown as IndexerReply
        return respond(r)
      }
      const a = await http(port, 'GET', '/throw')
      t.is(a.status, 500)
      t.deepEqual(JSON.parse(a.body), { error: 'thrown by the handler' })
      const b = await http(port, 'POST', '/reject', '{}', { 'content-type': 'application/json' })
      t.is(b.status, 500)
      t.deepEqual(JSON.parse(b.body), { error: 'rejected by the handler' })
      const c = await http(port, 'GET', '/broken')
      t.is(c.status, 500)
      t.is(typeof (JSON.parse(c.body) as { error: unknown }).error, 'string')
      t.is((await http(port, 'GET', '/health')).status, 200)
    } finally {
      await svc.close()
    }
  })

  test(`${front}: close() answers the request in flight, then stops accepting`, async (t) => {
    const { svc, port } = await service(front)
    const respond = svc.respond.bind(svc)
    let release: () => void = () => undefined
    const held = new Promise<void>((r) => {
      release = r
    })
    let arrived: () => void = () => undefined
    const inFlight = new Promise<void>((r) => {
      arrived = r
    })
    svc.respond = (r) => {
      if (r.url !== '/slow') return respond(r)
      arrived()
      return held.then(() => ({ status: 200, contentType: 'application/json', body: '{"late":true}' }))
    }
    // a kept-alive connection, idle after its first request
    const idle = await RawClient.open(port)
    idle.socket.write(req('GET', '/health'))
    t.like(await idle.next(), { status: 200 })
    const slow = http(port, 'GET', '/slow')
    await inFlight
    const closing = svc.close()
    // an idle kept-alive connection is closed at once; new connections are refused
    await idle.untilClosed()
    await new Promise((r) => setTimeout(r, 50))
    const refused = await http(port, 'GET', '/health').then(
      () => false,
      (e: NodeJS.ErrnoException) => e.code === 'ECONNREFUSED',
    )
    t.true(refused)
    release()
    const answer = await slow
    t.is(answer.status, 200)
    t.is(answer.body, '{"late":true}')
    await closing
  })
}

test('a process whose indexer is closed exits by itself (nothing left holding its loop)', async (t) => {
  for (const front of FRONTS) {
    const child = spawn(process.execPath, ['--import=tsx', fileURLToPath(new URL('./helpers/indexer-exit-child.ts', import.meta.url))], {
      env: { ...process.env, INDEXER_FRONT: front },
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    let out = ''
    child.stdout!.on('data', (d: Buffer) => {
      out += d
    })
    const code = await new Promise<number | null>((r) => child.once('exit', r))
    t.is(code, 0, front)
    t.is(out.trim(), `${front} 200 closed`)
  }
})

test('both fronts give the same status, content type, allow, length and body to the same requests', async (t) => {
  if (!nativeHttpAvailable) {
    t.pass('one front only with the fallback')
    return
  }
  const a = await service('native', { bodyLimit: 4096, queryBodyLimit: 4096 })
  const b = await service('node', { bodyLimit: 4096, queryBodyLimit: 4096 })
  const json = { 'content-type': 'application/json' }
  const cases: [string, string, string | null, Record<string, string>][] = [
    ['GET', '/health', null, {}],
    ['HEAD', '/health', null, {}],
    ['POST', '/health', null, {}],
    ['GET', '/nope?x=1', null, {}],
    ['POST', '/query', QUERY, json],
    ['POST', '/register', REGISTER, json],
    ['POST', '/register', REGISTER, json],
    ['POST', '/query', QUERY, json],
    ['POST', '/query', QUERY, { 'content-type': 'application/json; charset=utf-8' }],
    ['POST', '/query', QUERY, {}],
    ['POST', '/query', QUERY, { 'content-type': 'text/plain' }],
    ['POST', '/query', '{"token_ids":[1,2,3,4.5],"model_name":"m"}', json],
    ['POST', '/query', '{"token_ids":[1,2,3,4],"model_name":"m","routing_group":"g"}', json],
    ['POST', '/query', '{"token_ids":"\u00e9","model_name":"\u00e9"}', json],
    ['POST', '/query', `{"pad":"${'x'.repeat(5000)}"}`, json],
    ['POST', '/query_by_hash', '{"block_hashes":[1,-2],"model_name":"m"}', json],
    ['POST', '/unregister', '{"instance_id":99,"model_name":"m"}', json],
    ['GET', '/workers', null, {}],
    ['GET', '/workers?model_name=m', null, {}],
    ['GET', '/dump', null, {}],
    ['GET', '/peers', null, {}],
    ['POST', '/register_peer', '{"url":"http://127.0.0.1:1"}', json],
    ['GET', '/peers', null, {}],
    ['POST', '/deregister_peer', '{"url":"http://127.0.0.1:2"}', json],
    ['POST', '/reopen_logs', null, {}],
    ['DELETE', '/query', null, {}],
    ['POST', '/unregister', '{"instance_id":5,"model_name":"m"}', json],
    ['POST', '/query', QUERY, json],
  ]
  try {
    for (const [method, path, body, headers] of cases) {
      const x = await http(a.port, method, path, body, headers)
      const y = await http(b.port, method, path, body, headers)
      const what = `${method} ${path} ${body?.slice(0, 60) ?? ''}`
      t.is(x.status, y.status, what)
      t.is(x.body, y.body, what)
      for (const h of ['content-type', 'content-length', 'allow']) t.is(x.headers[h], y.headers[h], `${what}: ${h}`)
    }
  } finally {
    await a.svc.close()
    await b.svc.close()
  }
})

test('the native front survives 1,000 random byte streams and answers afterwards', async (t) => {
  if (!nativeHttpAvailable) {
    t.pass('native front only')
    return
  }
  const { svc, port } = await service('native', { bodyLimit: 4096, queryBodyLimit: 4096 })
  let s = 12345
  const rand = () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 2 ** 32
  }
  const prefixes = [
    '',
    'GET / HTTP/1.1\r\n',
    'POST /query HTTP/1.1\r\nContent-Length: 10\r\n\r\n',
    'POST /query HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n',
  ]
  try {
    for (let round = 0; round < 50; round++) {
      await Promise.all(
        Array.from({ length: 20 }, () => {
          const bytes = Buffer.from(Array.from({ length: Math.floor(rand() * 300) }, () => Math.floor(rand() * 256)))
          const prefix = prefixes[Math.floor(rand() * prefixes.length)]!
          return new Promise<void>((resolve) => {
            const c = connect(port, '127.0.0.1', () => {
              c.end(Buffer.concat([Buffer.from(prefix), bytes]))
            })
            c.on('data', () => undefined)
            c.on('error', () => resolve())
            c.on('close', () => resolve())
            c.setTimeout(2000, () => c.destroy())
          })
        }),
      )
      t.is((await http(port, 'GET', '/health')).status, 200)
    }
  } finally {
    await svc.close()
  }
})

test('the native front: arguments JavaScript gets wrong are errors, never a crash', async (t) => {
  if (!nativeHttpAvailable) {
    t.pass('native front only')
    return
  }
  const { raw } = await import('../ts/core/native.js')
  const Front = (raw as unknown as { IndexerHttpFront: new (...a: unknown[]) => { respond(m: unknown, d: unknown): void; close(): void } })
    .IndexerHttpFront
  const { svc, port } = await service('native')
  try {
    // the port in use: node's wording
    t.throws(() => new Front('127.0.0.1', port, 1024, 1024, () => undefined), { message: /EADDRINUSE/ })
    t.throws(() => new Front('127.0.0.1', 70_000, 1024, 1024, () => undefined), { message: /port/ })
    t.throws(() => new Front('127.0.0.1', 0, -1, 1024, () => undefined), { message: /queryBodyLimit/ })
    t.throws(() => new Front('no-such-host.invalid', 0, 1024, 1024, () => undefined), { message: /ENOTFOUND/ })
    const f = new Front('127.0.0.1', 0, 1024, 1024, () => undefined)
    t.throws(() => f.respond(new Uint32Array(3), Buffer.alloc(0)), { message: /4 words/ })
    t.throws(() => f.respond(Uint32Array.of(1, 200, 10, 10), Buffer.alloc(5)), { message: /shorter/ })
    // unknown ids and odd statuses are taken without harm
    f.respond(Uint32Array.of(12345, 99999, 0, 2), Buffer.from('{}'))
    f.close()
    t.is((await http(port, 'GET', '/health')).status, 200)
  } finally {
    await svc.close()
  }
})
