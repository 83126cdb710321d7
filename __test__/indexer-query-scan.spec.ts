// The /query body scanner against the exact reader: over HTTP the service reads a plain body with
// scanQuery, while IndexerService.handle() reads the text with the exact reader; both must give the same
// status, content type and bytes for every body, those the scanner takes and those it leaves alone.
import test from 'ava'
import { EngineSimulator } from '../ts/sim/index.js'
import { IndexerService } from '../ts/indexer/service.js'
import { scanQuery } from '../ts/indexer/query-scan.js'
import { parseJson } from '../ts/indexer/json.js'
import { arr, encode, f64, map, nil, s, u, type Mp } from './helpers/mp.js'
import { postJson, http } from './helpers/http.js'
import { fallback, needNative, parityTest } from './helpers/impls.js'

const range = (a: number, n: number) => Array.from({ length: n }, (_, k) => a + k)

function stored(hashes: number[], tokens: number[], parent?: number): Mp {
  return map({
    type: s('BlockStored'),
    block_hashes: arr(...hashes.map((h) => u(h))),
    parent_block_hash: parent === undefined ? nil : u(parent),
    token_ids: arr(...tokens.map((x) => u(x))),
    block_size: u(4),
    lora_id: nil,
    medium: s('GPU'),
    lora_name: nil,
  })
}
const batch = (rank: number | null, ...events: Mp[]) => encode(arr(f64(Date.now() / 1000), arr(...events), rank === null ? nil : u(rank)))

const T = range(1000, 16)
const ids = (xs: number[]) => xs.join(',')

/** Bodies the scanner reads itself. */
const PLAIN = [
  `{"token_ids":[${ids(T)}],"model_name":"llama"}`,
  ` \r\n\t{ "model_name" : "llama" ,\n "token_ids" : [ ${T.join(' , ')} ] } \n`,
  `{"token_ids":[${ids(T.slice(0, 10))}],"model_name":"llama","routing_group":"default"}`,
  `{"token_ids":[${ids(T.slice(0, 3))}],"model_name":"llama"}`,
  `{"token_ids":[],"model_name":"llama"}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","lora_name":null,"cache_salt":null,"tenant_id":"t"}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","lora_name":"","cache_salt":""}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","lora_name":"adapter"}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","cache_salt":"salt"}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","routing_group":"other"}`,
  `{"token_ids":[0,4294967295,7],"model_name":"unknown model"}`,
  `{"token_ids":[${ids(T)}],"model_name":""}`,
]

/** Bodies left to the exact reader (errors, or shapes the scanner does not take). */
const OTHER = [
  `{"token_ids":[4294967296],"model_name":"llama"}`,
  `{"token_ids":[99999999999],"model_name":"llama"}`,
  `{"token_ids":[01],"model_name":"llama"}`,
  `{"token_ids":[-1],"model_name":"llama"}`,
  `{"token_ids":[1.0],"model_name":"llama"}`,
  `{"token_ids":[1e2],"model_name":"llama"}`,
  `{"token_ids":[1,],"model_name":"llama"}`,
  `{"token_ids":[1 2],"model_name":"llama"}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","token_ids":[1]}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","extra":{"a":[1,2]}}`,
  `{"token_ids":[${ids(T)}],"model_name":"ll\\u0061ma"}`,
  `{"token_ids":[${ids(T)}],"model_name":"llämа"}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama",}`,
  `{"token_ids":[${ids(T)}]}`,
  `{"model_name":"llama"}`,
  `{"token_ids":null,"model_name":"llama"}`,
  `{"token_ids":[${ids(T)}],"model_name":null}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","lora_name":5}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","tenant_id":null}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama","routing_group":null}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama"} x`,
  `\ufeff{"token_ids":[${ids(T)}],"model_name":"llama"}`,
  `{"token_ids":[${ids(T)}],"model_name":"llama"`,
  `{"token_ids":[1`,
  '{}',
  '[]',
  '',
]

test('scanQuery reads the plain bodies exactly and leaves every other one', (t) => {
  for (const body of PLAIN) {
    const q = scanQuery(Buffer.from(body))
    t.not(q, null, body)
    const v = JSON.parse(body) as { token_ids: number[]; model_name: string; routing_group?: string; lora_name?: string | null }
    t.deepEqual([...q!.tokens], v.token_ids, body)
    t.is(q!.model, v.model_name)
    t.is(q!.group, v.routing_group)
    t.is(q!.lora, v.lora_name)
  }
  for (const body of OTHER) t.is(scanQuery(Buffer.from(body)), null, body)
})

/** One implementation's scan of a body: its return value, the token ids written and the field ranges. */
function scanWith(impl: typeof fallback, body: Uint8Array, capacity: number): string {
  const tokens = new Uint32Array(capacity)
  const fields = new Uint32Array(8)
  const n = impl.scanQueryBody(body, tokens, fields)
  return `${n} [${tokens.subarray(0, Math.max(0, Math.min(n < -1 ? capacity : n, capacity))).join(',')}] ${fields.join(',')}`
}

parityTest('scanQueryBody: the native core and the fallback read every body alike (plain, other, mutated, too many)', (t) => {
  const native = needNative()
  const bodies: Uint8Array[] = [...PLAIN, ...OTHER].map((b) => Buffer.from(b))
  // mutations of the plain bodies: each byte replaced by a JSON-significant one, and every truncation
  const swaps = Buffer.from(' 0159"\\,:[]{}n-.e\x7f\x80')
  for (const body of PLAIN.slice(0, 6)) {
    const b = Buffer.from(body)
    for (let i = 0; i < b.length; i++) {
      bodies.push(b.subarray(0, i))
      for (const c of swaps) {
        const m = Buffer.from(b)
        m[i] = c
        bodies.push(m)
      }
    }
  }
  // long bodies: ids of 1 to 10 digits, with and without spaces, each at 8 offsets; then the same with
  // some ids of 11 digits (refused)
  let x = 12345
  const longIds = Array.from({ length: 2000 }, (_, k) => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0
    return String(x % 10 ** ((k % 10) + 1) || x)
  })
  const tooLong = longIds.map((v, k) => (k % 97 === 96 && v.length === 10 ? `${v}0` : v))
  for (const ids of [longIds, tooLong])
    for (let pad = 0; pad < 8; pad++)
      for (const sep of [',', ' , ', ',\n']) bodies.push(Buffer.from(`{"model_name":"m",${' '.repeat(pad)}"token_ids":[${ids.join(sep)}]}`))
  let taken = 0
  for (const body of bodies)
    for (const capacity of [0, 3, 64, 4096]) {
      const a = scanWith(native, body, capacity)
      t.is(a, scanWith(fallback, body, capacity), Buffer.from(body).toString('latin1'))
      if (capacity === 4096 && !a.startsWith('-')) taken++
    }
  // both took the plain bodies and some mutations, and refused the rest
  t.true(taken > PLAIN.length + 24 && taken < bodies.length / 2, `${taken} of ${bodies.length}`)
  const long = Buffer.from(`{"token_ids":[${longIds.join(',')}],"model_name":"m"}`)
  t.is(scanWith(native, long, 4096).split(' ')[1], `[${longIds.join(',')}]`)
  t.is(scanWith(native, Buffer.from(`{"token_ids":[${tooLong.join(',')}],"model_name":"m"}`), 4096).split(' ')[0], '-1')
  // a body whose token ids do not fit: -(2 + n), the first ones written
  t.is(scanWith(native, Buffer.from(PLAIN[0]!), 3), `-18 [1000,1001,1002] ${[109, 114, ...Array(6).fill(0xffff_ffff)].join(',')}`)
})

test('/query over HTTP (scanned) answers byte for byte as the exact reader', async (t) => {
  const svc = new IndexerService()
  const { port } = await svc.listen(0)
  const sims: EngineSimulator[] = []
  try {
    // worker 1 on rank 0, worker 2 on ranks 0 and 1: several workers and ranks in the answers
    for (const [id, rank] of [
      [1, 0],
      [2, 0],
      [2, 1],
    ] as const) {
      const sim = await EngineSimulator.create({ kvBlockSize: 4, replayEndpoint: 'tcp://127.0.0.1:0', dpRank: rank })
      sims.push(sim)
      const r = await postJson(
        port,
        '/register',
        JSON.stringify({
          instance_id: id,
          dp_rank: rank,
          endpoint: sim.endpoint,
          replay_endpoint: sim.replayEndpoint,
          model_name: 'llama',
          block_size: 4,
        }),
      )
      t.is(r.status, 201, r.body)
    }
    await sims[0]!.sendPayload(batch(null, stored(range(1001, 4), T)))
    await sims[1]!.sendPayload(batch(null, stored(range(1001, 2), T.slice(0, 8))))
    await sims[2]!.sendPayload(batch(1, stored(range(1001, 3), T.slice(0, 12))))
    // loaded once the full prompt scores every worker and rank
    const full = PLAIN[0]!
    let loaded = ''
    for (let k = 0; k < 100 && !loaded.includes('"1":12'); k++) {
      loaded = (await postJson(port, '/query', full)).body
      if (!loaded.includes('"1":12') || !loaded.includes('"1":16'))
        for (const sim of sims) {
          await sim.heartbeat()
          await new Promise((res) => setTimeout(res, 20))
        }
    }
    const scores = parseJson(loaded)
    t.is(scores.t, 'obj')
    t.true(loaded.includes('"1":{"0":16}') && loaded.includes('"0":8,"1":12'), loaded)
    for (const body of [...PLAIN, ...OTHER]) {
      const viaHttp = await postJson(port, '/query', body)
      const exact = await svc.handle('POST', '/query', 'application/json', body)
      t.is(viaHttp.status, exact.status, body)
      t.is(viaHttp.headers['content-type'], exact.contentType ?? undefined, body)
      t.is(viaHttp.body, exact.body, body)
    }
    // a body of another content type is refused before it is read
    const wrongType = await http(port, 'POST', '/query', PLAIN[0]!, { 'content-type': 'text/plain' })
    t.is(wrongType.status, 415)
  } finally {
    for (const sim of sims) sim.close()
    await svc.close()
  }
})
