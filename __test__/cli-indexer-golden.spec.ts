// Every exchange captured from Dynamo 1.6.1's standalone indexer (fixtures/dynamo-1.6/standalone-indexer-1.6.json),
// replayed in capture order against IndexerService over real HTTP, one service per captured indexer
// instance. Status, content type and body must be Dynamo's, except:
// - answers that depend on engine traffic the capture does not record (the /query scores after stores,
//   /dump's events, /metrics' counts): status and shape here (and /metrics' families and /register count);
//   cli-indexer-semantics.spec.ts sends that traffic again with real engines and checks the scores;
// - the package's deliberate differences (SPEC "Standalone indexer"), asserted as the package's answer;
// - indexer C ran with DYN_KV_INDEXER_TEST_ENDPOINTS=1: its test-only listener routes are served here with
//   `testEndpoints` (a listener that has not heard from its engine is pending here, active in Dynamo).
import test from 'ava'
import { readFileSync } from 'node:fs'
import { IndexerService } from '../ts/indexer/service.js'
import { type JsonNode, parseJson } from '../ts/indexer/json.js'
import { canonical, canonicalText, http, pyDumps } from './helpers/http.js'

const FIXTURE = parseJson(readFileSync(new URL('./fixtures/dynamo-1.6/standalone-indexer-1.6.json', import.meta.url), 'utf8'))

function get(v: JsonNode, k: string): JsonNode | undefined {
  return v.t === 'obj' ? v.entries.find(([key]) => key === k)?.[1] : undefined
}
const s = (v: JsonNode | undefined): string | undefined => (v?.t === 'str' ? v.v : undefined)
const n = (v: JsonNode | undefined): number => (v?.t === 'num' ? Number(v.raw) : Number.NaN)

interface Exchange {
  n: number
  label: string
  indexer: string
  method: string
  path: string
  headers: Record<string, string>
  body: string | null
  status: number
  responseHeaders: Record<string, string>
  response: JsonNode | undefined
}

function exchanges(): Exchange[] {
  const out: Exchange[] = []
  const all: JsonNode[] = []
  const routes = get(FIXTURE, 'routes')
  if (routes?.t === 'arr')
    for (const r of routes.items) all.push(...((get(r, 'examples') as { items: JsonNode[] } | undefined)?.items ?? []))
  const unmatched = get(FIXTURE, 'unmatched_route_examples')
  if (unmatched?.t === 'arr') all.push(...unmatched.items)
  for (const e of all) {
    const req = get(e, 'request')!
    const headers: Record<string, string> = {}
    const h = get(req, 'headers')
    if (h?.t === 'obj') for (const [k, v] of h.entries) headers[k] = s(v)!
    const rh: Record<string, string> = {}
    const rhn = get(e, 'response_headers')
    if (rhn?.t === 'obj') for (const [k, v] of rhn.entries) rh[k] = s(v)!
    const kind = s(get(req, 'body_kind'))
    const b = get(req, 'body')
    let body: string | null = null
    if (kind === 'json' && b !== undefined) body = pyDumps(b)
    else if (kind === 'raw' && b?.t === 'str') {
      const omitted = /^<(\d+) bytes omitted>$/.exec(b.v)
      body = omitted ? `{"token_ids": [${'1, '.repeat(Math.ceil(Number(omitted[1]) / 3))}1]}` : b.v
    }
    out.push({
      n: n(get(e, 'n')),
      label: s(get(e, 'label'))!,
      indexer: (s(get(e, 'indexer')) ?? 'A').split('(')[0]!,
      method: s(get(req, 'method'))!,
      path: s(get(req, 'path'))!,
      headers,
      body,
      status: n(get(e, 'status')),
      responseHeaders: rh,
      response: get(e, 'response'),
    })
  }
  return out.sort((a, b) => a.n - b.n)
}

/** Exchanges whose answer depends on engine traffic between the captured requests. */
function engineDependent(e: Exchange): boolean {
  if (e.status !== 200 || e.response === undefined) return false
  if (e.path === '/metrics') return true
  if (e.path === '/dump') {
    const parts = e.response.t === 'obj' ? e.response.entries : []
    return parts.some(([, p]) => {
      const ev = get(p, 'events')
      return ev?.t === 'arr' && ev.items.length > 0
    })
  }
  if (e.path === '/query' || e.path === '/query_by_hash') {
    const scores = get(e.response, 'scores')
    const inst = get(e.response, 'instances')
    return (scores?.t === 'obj' && scores.entries.length > 0) || (inst?.t === 'obj' && inst.entries.length > 0)
  }
  return false
}

/** The package's deliberate answers where Dynamo's is wrong (SPEC "Standalone indexer"). */
const DELIBERATE: Record<number, { status: number; body: unknown }> = {
  // block_size 0 can never match anything: refused instead of accepted silently
  174: { status: 400, body: { error: 'block_size must be at least 1' } },
  // so no partition exists for the query on it
  175: { status: 404, body: { error: 'no indexer for model=z routing_group=default' } },
}

const EX = exchanges()

test('the fixture holds the 176 captured exchanges', (t) => {
  t.is(EX.length, 176)
  t.deepEqual(
    EX.map((e) => e.n),
    Array.from({ length: 176 }, (_, i) => i + 1),
  )
})

test('every captured exchange, replayed in order, gets Dynamo’s answer (or the documented one)', async (t) => {
  const services = new Map<string, { svc: IndexerService; port: number }>()
  const serviceFor = async (name: string) => {
    let x = services.get(name)
    if (x === undefined) {
      // indexer C ran with DYN_KV_INDEXER_TEST_ENDPOINTS=1 (the test-only listener routes)
      const svc = new IndexerService({ testEndpoints: name === 'C' })
      const { port } = await svc.listen(0)
      x = { svc, port }
      services.set(name, x)
      if (name === 'B') {
        // indexer B was started with --peers <A>: it loads A's /dump (this replay's A) before answering
        await svc.recoverFrom(`http://127.0.0.1:${services.get('A')!.port}`)
      }
      if (name === 'C') {
        // indexer C was started with --workers; the package's equivalent is --engines (register at start)
        const first = EX.find((e) => e.n === 157)!
        if (first.response?.t === 'arr')
          for (const w of first.response.items) {
            const eps = get(w, 'endpoints')
            if (eps?.t !== 'obj') continue
            for (const [rank, ep] of eps.entries)
              await svc.register({
                instance_id: BigInt((get(w, 'instance_id') as { raw: string }).raw),
                endpoint: s(ep)!,
                model_name: s(get(w, 'model_name'))!,
                routing_group: s(get(w, 'routing_group'))!,
                block_size: n(get(w, 'block_size')),
                dp_rank: Number(rank),
              })
          }
      }
    }
    return x
  }
  let exact = 0
  let shaped = 0
  try {
    for (const e of EX) {
      const { port } = await serviceFor(e.indexer)
      const r = await http(port, e.method, e.path, e.body, e.headers)
      if (e.n === 113 && e.response?.t === 'arr') {
        // B's peer is this replay's A, at another address than the capture's
        const theirs = s(e.response.items[0])!
        r.body = r.body.replace(`http://127.0.0.1:${services.get('A')!.port}`, theirs)
      }
      const what = `#${e.n} ${e.label}`
      // the replay's engines are not live: the listener is pending here, where Dynamo says active (as in /workers)
      const pendingAsActive = e.n === 166
      if (pendingAsActive) r.body = r.body.replace('from status pending', 'from status active')
      const deliberate = DELIBERATE[e.n]
      if (deliberate !== undefined) {
        t.is(r.status, deliberate.status, what)
        t.deepEqual(JSON.parse(r.body), deliberate.body, what)
        continue
      }
      t.is(r.status, e.status, `${what}: status (body ${r.body.slice(0, 200)})`)
      t.is(r.headers['content-type'], e.responseHeaders['content-type'], `${what}: content-type`)
      if (e.responseHeaders.allow !== undefined) t.is(r.headers.allow, e.responseHeaders.allow, `${what}: allow`)
      if (engineDependent(e)) {
        if (e.path === '/metrics') {
          // Dynamo's indexer families (its dynamo_kvrouter_* ones are not served)
          const families = get(FIXTURE, 'metrics_families')
          for (const f of families?.t === 'arr' ? families.items : []) {
            const name = s(get(f, 'name'))!
            if (name.startsWith('dynamo_kvindexer_')) t.regex(r.body, new RegExp(`^# TYPE ${name} ${s(get(f, 'type'))}$`, 'm'), name)
          }
          // this replay's counts: every /register so far, and the 4xx among them
          const registers = EX.filter((x) => x.n < e.n && x.path === '/register' && x.method === 'POST' && x.indexer === 'A')
          t.regex(r.body, new RegExp(`^dynamo_kvindexer_requests_total\\{endpoint="/register",method="POST"\\} ${registers.length}$`, 'm'))
        } else if (e.path === '/dump') t.is(typeof JSON.parse(r.body), 'object', what)
        else t.deepEqual(Object.keys(JSON.parse(r.body) as object).sort(), ['frequencies', 'instances', 'scores'], what)
        shaped++
        continue
      }
      if (e.response === undefined || e.response.t === 'null') t.is(r.body, '', `${what}: empty body`)
      else if (e.response.t === 'str' && e.responseHeaders['content-type']?.startsWith('text/plain')) t.is(r.body, e.response.v, what)
      else if (e.path.startsWith('/workers'))
        // the captured engines were live; the replay's are not, and a listener that has not heard from its
        // engine is `pending` here (deliberate: Dynamo says `active` even for an unreachable endpoint)
        t.deepEqual(canonicalText(r.body.replaceAll('"status":"pending"', '"status":"active"'), true), canonical(e.response, true), what)
      else t.deepEqual(canonicalText(r.body, true), canonical(e.response, true), what)
      if (e.responseHeaders['content-length'] !== undefined && !e.path.startsWith('/workers') && !pendingAsActive)
        t.is(r.headers['content-length'], e.responseHeaders['content-length'], `${what}: content-length`)
      exact++
    }
  } finally {
    for (const { svc } of services.values()) await svc.close()
  }
  t.log(`exact: ${exact}, shape only (engine traffic): ${shaped}, deliberate: ${Object.keys(DELIBERATE).length}`)
  t.is(exact + shaped + Object.keys(DELIBERATE).length, 176)
})
