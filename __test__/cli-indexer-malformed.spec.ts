// 1,000 malformed requests against the indexer service over real HTTP (bad JSON, wrong types, bodies over
// the limit, unknown workers and models, a missing content type, deep nesting, numbers out of range): each
// gets a 4xx with a message naming the problem, and the service keeps answering valid requests.
import test from 'ava'
import { IndexerService } from '../ts/indexer/service.js'
import { http, postJson } from './helpers/http.js'

function rng(seed: number) {
  let s = seed >>> 0
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 2 ** 32
  }
}

const ROUTES = ['/register', '/unregister', '/query', '/query_by_hash', '/register_peer', '/deregister_peer']
const VALID: Record<string, Record<string, unknown>> = {
  '/register': { instance_id: 1, endpoint: 'tcp://127.0.0.1:1', model_name: 'm', block_size: 4 },
  '/unregister': { instance_id: 1, model_name: 'm' },
  '/query': { token_ids: [1, 2, 3, 4], model_name: 'm' },
  '/query_by_hash': { block_hashes: [1, -2], model_name: 'm' },
  '/register_peer': { url: 'http://127.0.0.1:1' },
  '/deregister_peer': { url: 'http://127.0.0.1:1' },
}
const BAD_VALUES = ['"x"', '-1', '1.5', '1e999', '18446744073709551616', 'true', 'null', '[]', '{}', '[-1]', '["1"]', '4294967296', '[[1]]']

function malformed(k: number, r: () => number): { route: string; body: string; contentType: string | null; why: string } {
  const route = ROUTES[Math.floor(r() * ROUTES.length)]!
  const valid = JSON.stringify(VALID[route])
  switch (k % 10) {
    case 0: // truncated JSON
      return { route, body: valid.slice(0, Math.floor(r() * (valid.length - 1))), contentType: 'application/json', why: 'truncated' }
    case 1: {
      // random bytes
      const bytes = Array.from({ length: 1 + Math.floor(r() * 60) }, () => String.fromCharCode(Math.floor(r() * 128)))
      return { route, body: `{${bytes.join('')}`, contentType: 'application/json', why: 'garbage' }
    }
    case 2: {
      // a field of the wrong type
      const v = VALID[route]!
      const keys = Object.keys(v)
      const key = keys[Math.floor(r() * keys.length)]!
      const bad = BAD_VALUES[Math.floor(r() * BAD_VALUES.length)]!
      const body = `{${keys.map((x) => `"${x}":${x === key ? bad : JSON.stringify(v[x])}`).join(',')}}`
      // some replacements happen to be valid for the field (null for an optional, [] for a list): skip those
      return { route, body, contentType: 'application/json', why: `type ${key}=${bad}` }
    }
    case 3: // a required field missing
      return { route, body: '{}', contentType: 'application/json', why: 'missing' }
    case 4: // over the body limit
      return { route, body: `{"pad":"${'x'.repeat(5000 + Math.floor(r() * 20_000))}"}`, contentType: 'application/json', why: 'huge' }
    case 5: // unknown worker / model
      if (route === '/query' || route === '/query_by_hash')
        return { route, body: JSON.stringify({ ...VALID[route], model_name: `nope-${k}` }), contentType: 'application/json', why: 'model' }
      return {
        route: '/unregister',
        body: `{"instance_id":${BigInt(k) * 7919n + 10n ** 18n},"model_name":"m"}`,
        contentType: 'application/json',
        why: 'worker',
      }
    case 6: // no or wrong content type
      return { route, body: valid, contentType: r() < 0.5 ? null : 'text/plain', why: 'content-type' }
    case 7: // deep nesting
      return { route, body: `${'['.repeat(200 + Math.floor(r() * 1000))}`, contentType: 'application/json', why: 'deep' }
    case 8: // a body that is JSON but not an object, or an object whose keys are Object.prototype's
      if (r() < 0.5)
        return {
          route,
          body: ['{"constructor":1}', '{"__proto__":{"model_name":"m"}}', '{"toString":"x","hasOwnProperty":[]}'][Math.floor(r() * 3)]!,
          contentType: 'application/json',
          why: 'prototype keys',
        }
      return {
        route,
        body: ['[]', '"s"', '7', 'null', 'true', '[1,2]'][Math.floor(r() * 6)]!,
        contentType: 'application/json',
        why: 'not object',
      }
    default: // a bad endpoint or hash out of range
      return route === '/query_by_hash'
        ? { route, body: '{"block_hashes":[9223372036854775808],"model_name":"m"}', contentType: 'application/json', why: 'i64' }
        : {
            route: '/register',
            body: JSON.stringify({ ...VALID['/register'], endpoint: ['udp://x:1', 'tcp://h', 'x', 'tcp://h:99999', 'tcp://:5'][k % 5] }),
            contentType: 'application/json',
            why: 'endpoint',
          }
  }
}

test('1,000 malformed requests: each a 4xx with a message, and the service keeps answering', async (t) => {
  const svc = new IndexerService({ bodyLimit: 4096, queryBodyLimit: 4096 })
  const { port } = await svc.listen(0)
  try {
    // one valid partition so that queries reach the index
    t.is(
      (await postJson(port, '/register', JSON.stringify({ instance_id: 5, endpoint: 'tcp://127.0.0.1:1', model_name: 'm', block_size: 4 })))
        .status,
      201,
    )
    const r = rng(7)
    let sent = 0
    const counts: Record<number, number> = {}
    for (let batch = 0; batch < 50; batch++) {
      const reqs = Array.from({ length: 20 }, (_, i) => malformed(batch * 20 + i, r))
      const answers = await Promise.all(
        reqs.map((q) => http(port, 'POST', q.route, q.body, q.contentType === null ? {} : { 'content-type': q.contentType })),
      )
      for (const [i, a] of answers.entries()) {
        const q = reqs[i]!
        sent++
        if (q.why.startsWith('type ') && a.status < 300) continue // the replacement was valid for that field
        t.true(a.status >= 400 && a.status < 500, `${q.why} ${q.route} ${q.body.slice(0, 80)} → ${a.status} ${a.body}`)
        t.true(a.body.length > 0, `${q.why}: a message`)
        counts[a.status] = (counts[a.status] ?? 0) + 1
      }
      // still answering
      const health = await http(port, 'GET', '/health')
      t.is(health.status, 200)
    }
    t.is(sent, 1000)
    t.log(counts)
    for (const status of [400, 404, 413, 415, 422]) t.true((counts[status] ?? 0) > 0, `some ${status}`)
    const q = await postJson(port, '/query', JSON.stringify({ token_ids: [1, 2, 3, 4], model_name: 'm' }))
    t.is(q.status, 200)
    t.deepEqual(JSON.parse(q.body), { scores: {}, frequencies: [], instances: {} })
    const w = await http(port, 'GET', '/workers')
    t.is((JSON.parse(w.body) as unknown[]).length, 1)
  } finally {
    await svc.close()
  }
})
