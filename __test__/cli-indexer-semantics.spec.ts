// The captured scoring exchanges of Dynamo 1.6.1's indexer (fixtures/dynamo-1.6/standalone-indexer-1.6.json)
// reproduced with real ZeroMQ engines: the engine traffic the capture describes (its labels and /dump)
// is sent again, and /query must answer what Dynamo answered (scores in tokens per dp rank). Where Dynamo
// is wrong the package deliberately answers otherwise (SPEC "Standalone indexer"), and the test says so:
// - after a mid-chain remove, Dynamo's default backend credits a worker with blocks it never stored
//   (#172); the package answers what its single-threaded backend answered (#173), the exact one;
// - an engine restart (seq back to 0) is ignored by Dynamo until the seq passes the old one (#107); the
//   package detects the restart, drops the engine's old blocks and applies the new batches at once;
// - a worker whose engine hashes differ from another's for the same tokens loses its later chained
//   stores in Dynamo (#105); the package indexes them.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { EngineSimulator } from '../ts/sim/index.js'
import { IndexerService, type IndexerServiceOptions } from '../ts/indexer/service.js'
import { KvRouter } from '../ts/router/router.js'
import { computeBlockHashes } from '../ts/core/api.js'
import { silentLogger } from '../ts/util/log.js'
import { type JsonNode, parseJson } from '../ts/indexer/json.js'
import { arr, encode, f64, map, nil, s, u, type Mp } from './helpers/mp.js'
import { canonical, canonicalText, http, postJson, pyDumps } from './helpers/http.js'

const FIXTURE = parseJson(readFileSync(new URL('./fixtures/dynamo-1.6/standalone-indexer-1.6.json', import.meta.url), 'utf8'))
const field = (v: JsonNode | undefined, k: string) => (v?.t === 'obj' ? v.entries.find(([key]) => key === k)?.[1] : undefined)

/** The captured exchange number n: its request body (text) and response. */
function exchange(n: number): { body: string; response: JsonNode } {
  const routes = field(FIXTURE, 'routes')
  for (const r of routes?.t === 'arr' ? routes.items : []) {
    const ex = field(r, 'examples')
    for (const e of ex?.t === 'arr' ? ex.items : []) {
      const num = field(e, 'n')
      if (num?.t === 'num' && Number(num.raw) === n) {
        const b = field(field(e, 'request'), 'body')!
        return { body: pyDumps(b), response: field(e, 'response')! }
      }
    }
  }
  throw new Error(`no exchange ${n}`)
}

const range = (a: number, n: number) => Array.from({ length: n }, (_, k) => a + k)

function stored(
  hashes: number[],
  tokens: number[],
  opts: { parent?: number; lora?: string; medium?: string; salt?: string; saltKey?: string } = {},
): Mp {
  const fields: Record<string, Mp> = {
    type: s('BlockStored'),
    block_hashes: arr(...hashes.map((h) => u(h))),
    parent_block_hash: opts.parent === undefined ? nil : u(opts.parent),
    token_ids: arr(...tokens.map((x) => u(x))),
    block_size: u(4),
    lora_id: nil,
    medium: s(opts.medium ?? 'GPU'),
    lora_name: opts.lora === undefined ? nil : s(opts.lora),
  }
  // vLLM tags the salt among the first block's extra keys; other engines send a cache_salt key
  if (opts.salt !== undefined) fields.extra_keys = arr(arr(s(`dynamo-cache-salt:${opts.salt}`)), ...hashes.slice(1).map(() => nil))
  if (opts.saltKey !== undefined) fields.cache_salt = s(opts.saltKey)
  return map(fields)
}
const removed = (hashes: number[], medium = 'GPU'): Mp =>
  map({ type: s('BlockRemoved'), block_hashes: arr(...hashes.map((h) => u(h))), medium: s(medium) })
const cleared = (): Mp => map({ type: s('AllBlocksCleared') })
const batch = (...events: Mp[]) => encode(arr(f64(Date.now() / 1000), arr(...events), nil))
/** A batch naming its dp rank (vLLM with data parallelism). */
const rankBatch = (rank: number, ...events: Mp[]) => encode(arr(f64(Date.now() / 1000), arr(...events), u(rank)))

interface Setup {
  svc: IndexerService
  port: number
  engine: (id: number, rank?: number, model?: string, opts?: { replay?: boolean; register?: boolean }) => Promise<EngineSimulator>
  register: (id: number, sim: EngineSimulator, rank?: number) => Promise<void>
  close: () => Promise<void>
}

async function setup(opts: IndexerServiceOptions = {}): Promise<Setup> {
  const svc = new IndexerService(opts)
  const { port } = await svc.listen(0)
  const sims: EngineSimulator[] = []
  const register = async (id: number, sim: EngineSimulator, rank: number, model: string) => {
    const body: Record<string, unknown> = { instance_id: id, dp_rank: rank, endpoint: sim.endpoint, model_name: model, block_size: 4 }
    if (sim.replayEndpoint !== null) body.replay_endpoint = sim.replayEndpoint
    const r = await postJson(port, '/register', JSON.stringify(body))
    if (r.status !== 201) throw new Error(r.body)
  }
  return {
    svc,
    port,
    engine: async (id, rank = 0, model = 'llama', opts = {}) => {
      // the simulator's own batches (heartbeats) name the engine's rank, as a vLLM rank's do
      const sim = await EngineSimulator.create({
        kvBlockSize: 4,
        replayEndpoint: opts.replay === false ? null : 'tcp://127.0.0.1:0',
        dpRank: rank,
      })
      sims.push(sim)
      if (opts.register !== false) await register(id, sim, rank, model)
      return sim
    },
    register: (id, sim, rank = 0) => register(id, sim, rank, 'llama'),
    close: async () => {
      for (const x of sims) x.close()
      await svc.close()
    },
  }
}

/**
 * Polls a query until it answers `expected` (the engines' batches travel over real sockets; a heartbeat
 * lets a listener that joined late ask for the batches it missed), failing with the last answer.
 */
async function answers(port: number, body: string, expected: unknown, sims: EngineSimulator[], path = '/query'): Promise<unknown> {
  let last: unknown
  for (let k = 0; k < 100; k++) {
    const r = await postJson(port, path, body)
    last = canonicalText(r.body)
    if (JSON.stringify(last) === JSON.stringify(expected)) return last
    for (const sim of sims) await sim.heartbeat()
    await new Promise((res) => setTimeout(res, 50))
  }
  return last
}

const dynamo = (n: number) => canonical(exchange(n).response)

test('stores, removes and clears per dp rank score as Dynamo scores them (#43-#51, #73-#76)', async (t) => {
  const x = await setup()
  try {
    const w1 = await x.engine(1)
    const w2r0 = await x.engine(2, 0)
    const w2r1 = await x.engine(2, 1)
    const all = [w1, w2r0, w2r1]
    const T = range(1000, 16)
    await w1.sendPayload(batch(stored(range(1001, 4), T)))
    await w2r0.sendPayload(batch(stored(range(1001, 2), T.slice(0, 8))))
    // rank 1's engine names its rank in its batches; rank 0's batches name none
    await w2r1.sendPayload(rankBatch(1, stored(range(1001, 3), T.slice(0, 12))))
    for (const n of [43, 44, 45, 46, 47, 48]) t.deepEqual(await answers(x.port, exchange(n).body, dynamo(n), all), dynamo(n), `#${n}`)
    for (const n of [50, 51]) t.deepEqual(await answers(x.port, exchange(n).body, dynamo(n), all, '/query_by_hash'), dynamo(n), `#${n}`)
    // the dump's tokens_hash of every block is Dynamo's (#49), so the hashing is the same
    const dump = canonicalText((await http(x.port, 'GET', '/dump')).body) as Record<string, { events: unknown[] }>
    const ours = JSON.stringify(dump['llama:default']!.events.map((e) => (e as { event: { data: unknown } }).event.data))
    const theirs = (dynamo(49) as Record<string, { events: unknown[] }>)['llama:default']!.events.map(
      (e) => (e as { event: { data: { stored: { blocks: { block_hash: string; tokens_hash: string }[] } } } }).event.data.stored.blocks,
    )
    for (const blocks of theirs)
      for (const b of blocks) t.true(ours.includes(`"tokens_hash":"${b.tokens_hash}"`), `tokens_hash of block ${b.block_hash}`)
    await w1.sendPayload(batch(removed([1003])))
    t.deepEqual(await answers(x.port, exchange(73).body, dynamo(73), all), dynamo(73), '#73')
    await w1.sendPayload(batch(removed([1001])))
    t.deepEqual(await answers(x.port, exchange(74).body, dynamo(74), all), dynamo(74), '#74')
    await w2r1.sendPayload(rankBatch(1, cleared()))
    t.deepEqual(await answers(x.port, exchange(75).body, dynamo(75), all), dynamo(75), '#75')
    await w2r0.sendPayload(batch(cleared()))
    t.deepEqual(await answers(x.port, exchange(76).body, dynamo(76), all), dynamo(76), '#76')
    // LoRA blocks: invisible to a query without the adapter's name (#80), matched with it (#81)
    await w1.sendPayload(batch(stored([1030, 1031], range(1024, 8), { lora: 'adapter-a' })))
    t.deepEqual(await answers(x.port, exchange(81).body, dynamo(81), all), dynamo(81), '#81')
    t.deepEqual(await answers(x.port, exchange(80).body, dynamo(80), all), dynamo(80), '#80')
  } finally {
    await x.close()
  }
})

test('a mid-chain remove: the package answers the exact score (#173), not the default backend’s (#172)', async (t) => {
  const x = await setup()
  try {
    const w21 = await x.engine(21, 0, 'cmp')
    const w22 = await x.engine(22, 0, 'cmp')
    const B = range(1264, 24)
    await w21.sendPayload(batch(stored(range(2001, 6), B)))
    // worker 22: B1-4 (same tokens, same hashes) then two blocks of its own
    await w22.sendPayload(batch(stored(range(2001, 4), B.slice(0, 16)), stored([3001, 3002], range(5000, 8), { parent: 2004 })))
    await w21.sendPayload(batch(removed([2003])))
    const n172 = dynamo(172)
    const n173 = dynamo(173)
    t.notDeepEqual(n172, n173)
    // deliberate: Dynamo's default backend (#172) credits worker 22 with 24 tokens, two blocks it never stored
    t.deepEqual(await answers(x.port, exchange(172).body, n173, [w21, w22]), n173)
  } finally {
    await x.close()
  }
})

test('an engine restart (seq back to 0) is applied at once, the old blocks dropped (Dynamo ignores it: #107, #108)', async (t) => {
  const x = await setup()
  try {
    const w11 = await x.engine(11)
    const old = JSON.stringify({ token_ids: range(1100, 8), model_name: 'llama' })
    await w11.sendPayload(batch(stored([1050, 1051], range(1100, 8))))
    for (let k = 0; k < 5; k++) await w11.heartbeat()
    const held = {
      scores: { 11: { 0: 8 } },
      frequencies: [],
      instances: { 11: { longest_matched: 8, gpu: 8, dp: { 0: 8 }, cpu: 8, disk: 8 } },
    }
    t.deepEqual(await answers(x.port, old, canonical(parseJson(JSON.stringify(held))), [w11]), canonical(parseJson(JSON.stringify(held))))
    await w11.restart()
    await w11.sendPayload(batch(stored([1058, 1059], range(1240, 8))))
    // Dynamo answered {} here (#107) until the seq passed the old watermark (#108); the package answers #108 now
    t.deepEqual(await answers(x.port, exchange(107).body, dynamo(108), [w11]), dynamo(108))
    const none = canonical(parseJson('{"scores":{},"frequencies":[],"instances":{}}'))
    t.deepEqual(await answers(x.port, old, none, [w11]), none, 'the restarted engine no longer holds its old blocks')
  } finally {
    await x.close()
  }
})

test('a worker storing the same tokens under its own hashes keeps its chained stores (Dynamo drops them: #105)', async (t) => {
  const x = await setup()
  try {
    const w1 = await x.engine(1)
    const w2 = await x.engine(2)
    const C = range(1224, 16)
    await w1.sendPayload(batch(stored([4001, 4002], C.slice(0, 8))))
    await w2.sendPayload(batch(stored([5001, 5002], C.slice(0, 8))))
    await w2.sendPayload(batch(stored([5003, 5004], C.slice(8, 16), { parent: 5002 })))
    const n105 = dynamo(105) as { scores: Record<string, Record<string, string>> }
    t.deepEqual(n105.scores['2'], { 0: '#8' }, 'Dynamo credits worker 2 with its first two blocks only')
    const expected = canonical(
      parseJson(
        '{"scores":{"1":{"0":8},"2":{"0":16}},"frequencies":[],"instances":{"1":{"longest_matched":8,"gpu":8,"dp":{"0":8},"cpu":8,"disk":8},"2":{"longest_matched":16,"gpu":16,"dp":{"0":16},"cpu":16,"disk":16}}}',
      ),
    )
    t.deepEqual(await answers(x.port, exchange(105).body, expected, [w1, w2]), expected)
  } finally {
    await x.close()
  }
})

test('KvRouter engines: `ranks` (the ranks one endpoint carries) is checked, naming the option', async (t) => {
  const router = await KvRouter.create({ kvBlockSize: 4, source: { kind: 'engines', engines: [] }, logger: silentLogger })
  try {
    const ep = 'tcp://127.0.0.1:1'
    await t.throwsAsync(router.addEngine({ workerId: 1n, endpoint: ep, ranks: [1], dpRanks: 2 }), {
      message: /ranks and dpRanks exclude each other/,
    })
    await t.throwsAsync(router.addEngine({ workerId: 1n, endpoint: ep, ranks: [] }), { message: /ranks must be a non-empty array/ })
    await t.throwsAsync(router.addEngine({ workerId: 1n, endpoint: ep, ranks: [1, 1] }), { message: /must not repeat/ })
    await t.throwsAsync(router.addEngine({ workerId: 1n, endpoint: ep, ranks: [-1] }), { message: /ranks\[0\]/ })
    await router.addEngine({ workerId: 1n, endpoint: ep, ranks: [0, 3] })
    // both ranks are candidates from the start
    t.deepEqual(
      router.findBestWorker([1, 2, 3, 4])?.candidates.map((c) => c.dpRank),
      [0, 3],
    )
  } finally {
    await router.close()
  }
})

/** Heartbeats until the indexer's listener of `id` for the engine's rank has heard from it (/workers: active). */
async function listening(port: number, id: number, sim: EngineSimulator): Promise<void> {
  for (let k = 0; k < 200; k++) {
    const workers = JSON.parse((await http(port, 'GET', '/workers')).body) as {
      instance_id: number
      listeners: Record<string, { status: string }>
    }[]
    if (workers.find((w) => w.instance_id === id)?.listeners[String(sim.dpRank)]?.status === 'active') return
    await sim.heartbeat()
    await new Promise((r) => setTimeout(r, 25))
  }
  throw new Error(`worker ${id} never connected`)
}

test('gaps with and without replay, late joiners, other LoRA names, foreign block sizes, a rank unregistered (#81-#103, #137-#139)', async (t) => {
  const x = await setup()
  try {
    const w1 = await x.engine(1)
    const w2 = await x.engine(2, 0, 'llama', { replay: false })
    const w2r1 = await x.engine(2, 1)
    const all = [w1, w2, w2r1]
    await listening(x.port, 2, w2)
    const check = async (n: number, path = '/query') =>
      t.deepEqual(await answers(x.port, exchange(n).body, dynamo(n), all, path), dynamo(n), `#${n}`)
    // LoRA blocks: another adapter's name matches nothing (#82)
    await w1.sendPayload(batch(stored([1030, 1031], range(1024, 8), { lora: 'adapter-a' })))
    t.deepEqual(await answers(x.port, exchange(81).body, dynamo(81), all), dynamo(81), '#81')
    await check(82)
    // an event whose block size is not the registration's stores nothing (#88)
    await w1.sendPayload(
      batch(
        map({
          type: s('BlockStored'),
          block_hashes: arr(u(1090)),
          parent_block_hash: nil,
          token_ids: arr(...range(1048, 16).map((v) => u(v))),
          block_size: u(16),
          lora_id: nil,
          medium: s('GPU'),
        }),
      ),
    )
    await check(88)
    // a batch lost on the live socket comes back through the engine's replay (#96)
    w1.drop(w1.nextSeq)
    await w1.sendPayload(batch(stored([1100, 1101], range(1128, 8))))
    await check(96)
    // the foreign-size batch came before that one on the same socket: it stayed unindexed
    await check(88)
    // without a replay endpoint the lost batch stays lost (#98) and the next one is applied (#99)
    w2.drop(w2.nextSeq)
    await w2.sendPayload(batch(stored([1110, 1111], range(1160, 8))))
    await w2.sendPayload(batch(stored([1112, 1113], range(1168, 8))))
    await check(99)
    await check(98)
    // a late joiner with replay gets the batch it published before registering (#102)
    const w6 = await x.engine(6, 0, 'llama', { register: false })
    await w6.sendPayload(batch(stored([1120, 1121], range(1176, 8))))
    await x.register(6, w6)
    all.push(w6)
    await check(102)
    // and one without replay joins for what comes after (#103)
    const w7 = await x.engine(7, 0, 'llama', { replay: false })
    await listening(x.port, 7, w7)
    await w6.sendPayload(batch(stored([1122, 1123], range(1200, 8))))
    await w7.sendPayload(batch(stored([1124, 1125], range(1200, 8))))
    all.push(w7)
    await check(103)
    // unregistering one rank drops that rank's blocks (#137, #139)
    await w2r1.sendPayload(rankBatch(1, stored([1130, 1131], range(1152, 8))))
    await check(137)
    const un = await postJson(x.port, '/unregister', exchange(138).body)
    t.is(un.status, 200)
    await check(139)
  } finally {
    await x.close()
  }
})

test('blocks on CPU and disk media extend a worker’s match as Dynamo’s lower tiers do (#89-#93)', async (t) => {
  const x = await setup()
  try {
    const w1 = await x.engine(1)
    const all = [w1]
    const check = async (n: number) => t.deepEqual(await answers(x.port, exchange(n).body, dynamo(n), all), dynamo(n), `#${n}`)
    // each tier from the root: 2 blocks on the GPU, 4 on the CPU, 6 on disk (#89)
    const A = range(1064, 24)
    await w1.sendPayload(
      batch(
        stored([1200, 1201], A.slice(0, 8)),
        stored([1200, 1201, 1202, 1203], A.slice(0, 16), { medium: 'CPU' }),
        stored(range(1200, 6), A, { medium: 'DISK' }),
      ),
    )
    await check(89)
    // each tier continuing the one before it (#90)
    const B = range(1088, 24)
    await w1.sendPayload(
      batch(
        stored([1210, 1211], B.slice(0, 8)),
        stored([1212, 1213], B.slice(8, 16), { parent: 1211, medium: 'CPU_PINNED' }),
        stored([1214, 1215], B.slice(16, 24), { parent: 1213, medium: 'NVME' }),
      ),
    )
    await check(90)
    // a prefix held only on the CPU: absent from scores, in instances with gpu 0 (#91)
    await w1.sendPayload(batch(stored([1220, 1221], range(1112, 8), { medium: 'CPU' })))
    await check(91)
    // the CPU tier loses its 4th block: the CPU match stops at 3, the disk continues from there (#92)
    await w1.sendPayload(batch(removed([1203], 'CPU')))
    await check(92)
    // a medium no tier stands for is dropped: nothing changes
    await w1.sendPayload(batch(stored([1230, 1231], range(1112, 8), { medium: 'OBJ' })))
    await check(91)
    // AllBlocksCleared clears every tier (#93)
    await w1.sendPayload(batch(cleared()))
    await check(93)
    t.deepEqual(canonicalText((await postJson(x.port, '/query', exchange(91).body)).body), { scores: {}, frequencies: [], instances: {} })
  } finally {
    await x.close()
  }
})

test('cache salts sent by engines are hashed in: /query matches them only with the same cache_salt (#83-#87)', async (t) => {
  const x = await setup()
  try {
    const w1 = await x.engine(1)
    const all = [w1]
    const check = async (n: number) => t.deepEqual(await answers(x.port, exchange(n).body, dynamo(n), all), dynamo(n), `#${n}`)
    await w1.sendPayload(
      batch(
        stored([1240, 1241], range(1032, 8), { salt: 'tenant-x' }),
        stored([1242, 1243], range(1040, 8), { saltKey: 'tenant-y' }),
        // a LoRA adapter's blocks for the same tokens, unsalted
        stored([1244, 1245], range(1032, 8), { lora: 'adapter-a' }),
      ),
    )
    await check(84)
    await check(85)
    await check(83)
    await check(86)
    await check(87)
  } finally {
    await x.close()
  }
})

test('the test-only routes pause a listener (blocks kept, its batches missed) and resume it (missed batches replayed from the cursor)', async (t) => {
  const x = await setup({ testEndpoints: true })
  try {
    const w1 = await x.engine(1)
    const all = [w1]
    await listening(x.port, 1, w1)
    const query = JSON.stringify({ token_ids: range(1300, 16), model_name: 'llama' })
    // (keys in canonical order: answers() compares JSON text)
    const tokens = (n: number) => ({
      frequencies: [],
      instances: { 1: { cpu: `#${n}`, disk: `#${n}`, dp: { 0: `#${n}` }, gpu: `#${n}`, longest_matched: `#${n}` } },
      scores: { 1: { 0: `#${n}` } },
    })
    await w1.sendPayload(batch(stored([1300, 1301], range(1300, 8))))
    t.deepEqual(await answers(x.port, query, tokens(8), all), tokens(8))
    const pause = (b: object) => postJson(x.port, '/test/pause_listener', JSON.stringify(b))
    const resume = (b: object) => postJson(x.port, '/test/resume_listener', JSON.stringify(b))
    t.deepEqual(
      [(await pause({ instance_id: 1 })).status, (await pause({ instance_id: 1 })).body],
      [200, '{"error":"instance 1 dp_rank 0 cannot be paused from status paused"}'],
    )
    t.deepEqual(
      [(await pause({ instance_id: 9 })).status, (await pause({ instance_id: 1, dp_rank: 2 })).body],
      [404, '{"error":"instance 1 dp_rank 2 not found"}'],
    )
    const workers = JSON.parse((await http(x.port, 'GET', '/workers')).body) as { listeners: Record<string, { status: string }> }[]
    t.is(workers[0]!.listeners['0']!.status, 'paused')
    // published while paused: no SUB is connected, so the batch is not received; the blocks stay
    await w1.sendPayload(batch(stored([1302], range(1308, 4), { parent: 1301 })))
    t.deepEqual(canonicalText((await postJson(x.port, '/query', query)).body), tokens(8))
    t.is((await resume({ instance_id: 1 })).status, 200)
    t.is((await resume({ instance_id: 1 })).body, '{"error":"instance 1 dp_rank 0 cannot be resumed from status active"}')
    // the next batch shows the gap: the missed one is replayed from the kept cursor
    await w1.sendPayload(batch(stored([1303], range(1312, 4), { parent: 1302 })))
    t.deepEqual(await answers(x.port, query, tokens(16), all), tokens(16))
  } finally {
    await x.close()
  }
})

test('KvRouter engines with `tiers`: lower-tier blocks continue the device match; the option is checked', async (t) => {
  await t.throwsAsync(
    KvRouter.create({ kvBlockSize: 4, source: { kind: 'engines', engines: [] }, logger: silentLogger, tiers: 1 as unknown as boolean }),
    { message: /tiers must be a boolean, got number 1/ },
  )
  await t.throwsAsync(
    KvRouter.create({ kvBlockSize: 4, source: { kind: 'event-plane', namespace: 'n', component: 'c' }, logger: silentLogger, tiers: true }),
    { message: /tiers needs source kind 'engines'/ },
  )
  const plain = await KvRouter.create({ kvBlockSize: 4, source: { kind: 'engines', engines: [] }, logger: silentLogger })
  t.is(plain.tierMatches(new BigUint64Array(1), new Map()), null)
  await plain.close()
  const router = await KvRouter.create({ kvBlockSize: 4, source: { kind: 'engines', engines: [] }, logger: silentLogger, tiers: true })
  const sim = await EngineSimulator.create({ kvBlockSize: 4, replayEndpoint: 'tcp://127.0.0.1:0' })
  try {
    await router.addEngine({ workerId: 5n, endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint! })
    t.false(await router.pauseEngine(6n))
    t.false(await router.resumeEngine(6n))
    const T = range(2000, 16)
    await sim.sendPayload(batch(stored([1, 2], T.slice(0, 8)), stored([3], T.slice(8, 12), { parent: 2, medium: 'CPU' })))
    await sim.sendPayload(batch(stored([4], T.slice(12, 16), { parent: 3, medium: 'EXTERNAL' })))
    const seq = computeBlockHashes(T, 4)
    let m: ReturnType<KvRouter['tierMatches']> = null
    for (let k = 0; k < 200; k++) {
      const device = new Map(router.findMatchesForHashes(seq).scores.map((w) => [`${w.workerId}:${w.dpRank}`, w.score]))
      m = router.tierMatches(seq, device)
      if (m?.[0]?.disk === 4) break
      await sim.heartbeat()
      await new Promise((r) => setTimeout(r, 25))
    }
    t.deepEqual(m, [{ workerId: 5n, dpRank: 0, device: 2, cpu: 3, disk: 4 }])
    // the same blocks from another parent are another chain: nothing continues
    t.deepEqual(router.tierMatches(computeBlockHashes(T.slice(8, 16), 4), new Map()), [])
    t.true(await router.removeEngine(5n))
    t.deepEqual(router.tierMatches(seq, new Map()), [])
  } finally {
    sim.close()
    await router.close()
  }
})
