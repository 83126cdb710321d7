// Worker selection (SPEC 10) on a real nats-server: 3 workers × 2 dp ranks publish stores of shared
// documents and their load (WorkerMetricsPublisher); KvRouter.findBestWorker must equal an independent
// computation of the documented rule — overlaps from the workers' own local indexes, loads as
// published, the router's routed requests as this test tracks them — on 1,000 requests, and sample as
// the rule says with a temperature.
import test from 'ava'
import * as kv from '../ts/index.js'
import { Rng } from './helpers/gen-batches.js'
import { quiet, sleep, waitFor, withNats } from './helpers/publishing.js'

const impl = kv.implementation
const shared = withNats(test)
const BS = 8
const NS = 'sel'
const IDS = [9n, 2n ** 62n, 2n ** 64n - 2n]
const RANKS = [0, 1]

interface World {
  pubs: kv.KvEventPublisher[]
  metrics: kv.WorkerMetricsPublisher[]
  docs: number[][]
  loads: Map<string, number>
  close: () => Promise<void>
}

const key = (w: bigint, r: number) => `${w}:${r}`

async function world(component: string, seed: number): Promise<World> {
  const rng = new Rng(seed)
  const docs = Array.from({ length: 16 }, () => Array.from({ length: BS * (2 + rng.int(10)) + rng.int(BS) }, () => rng.int(50_000)))
  const pubs: kv.KvEventPublisher[] = []
  const metrics: kv.WorkerMetricsPublisher[] = []
  for (const workerId of IDS) {
    const p = await kv.KvEventPublisher.create({
      namespace: NS,
      component,
      kvBlockSize: BS,
      workerId,
      nats: { servers: shared.server.url },
      logger: quiet,
      recoveryEndpoint: true,
      dpRanks: RANKS,
    })
    pubs.push(p)
    metrics.push(await kv.WorkerMetricsPublisher.create({ namespace: NS, workerId, nats: { servers: shared.server.url }, logger: quiet }))
  }
  return {
    pubs,
    metrics,
    docs,
    loads: new Map(),
    close: async () => {
      for (const m of metrics) await m.close()
      for (const p of pubs) await p.close()
    },
  }
}

/** Each rank stores a random prefix of some documents (shared among ranks and workers). */
async function store(w: World, rng: Rng): Promise<void> {
  for (const p of w.pubs)
    for (const dpRank of RANKS)
      for (const doc of w.docs) {
        if (!rng.chance(0.4)) continue
        const blocks = 1 + rng.int(Math.floor(doc.length / BS))
        const tokenIds = doc.slice(0, blocks * BS)
        await p.publishStored({ tokenIds, blockHashes: kv.computeBlockHashes(tokenIds, BS), dpRank })
      }
  for (const p of w.pubs) await p.flush()
}

async function publishLoads(w: World, rng: Rng): Promise<void> {
  for (let i = 0; i < IDS.length; i++)
    for (const r of RANKS) {
      const v = rng.int(6) * 3
      w.metrics[i]!.publish(r, v)
      w.loads.set(key(IDS[i]!, r), v)
    }
}

function request(w: World, rng: Rng): number[] {
  if (rng.chance(0.15)) return Array.from({ length: 1 + rng.int(60) }, () => rng.int(50_000))
  const doc = rng.pick(w.docs)
  const n = 1 + rng.int(doc.length)
  return [...doc.slice(0, n), ...Array.from({ length: rng.int(20) }, () => rng.int(50_000))]
}

/** The documented rule, computed from the workers' own local indexes and the test's own books. */
function expected(w: World, tokens: number[], routed: Map<string, number>, weight: number) {
  const requestBlocks = Math.ceil(tokens.length / BS)
  const overlap = new Map<string, number>()
  for (const p of w.pubs)
    for (const s of p.localIndexer!.findMatchesForTokens(tokens, BS).scores) overlap.set(key(s.workerId, s.dpRank), s.score)
  const rows = IDS.flatMap((id) =>
    RANKS.map((r) => {
      const k = key(id, r)
      const o = overlap.get(k) ?? 0
      return { workerId: id, dpRank: r, cost: weight * (requestBlocks - o) + (w.loads.get(k) ?? 0) + (routed.get(k) ?? 0), overlap: o }
    }),
  )
  return { rows, requestBlocks }
}

async function loadsSeen(router: kv.KvRouter, w: World): Promise<void> {
  await waitFor(() => {
    const d = router.findBestWorkerForHashes([])
    return d?.candidates.every((c) => c.reportedDecodeBlocks === (w.loads.get(key(c.workerId, c.dpRank)) ?? 0)) === true
  }, 'the loads to reach the router')
}

test.serial(
  `[${impl}] findBestWorker equals the documented cost rule on 1,000 requests (loads, routed requests, markFinished)`,
  async (t) => {
    const w = await world('greedy', 1)
    const rng = new Rng(2)
    const weight = 1.5
    const router = await kv.KvRouter.create({
      kvBlockSize: BS,
      source: { kind: 'event-plane', namespace: NS, component: 'greedy' },
      nats: { servers: shared.server.url },
      logger: quiet,
      selector: { overlapWeight: weight },
    })
    try {
      await store(w, rng)
      await waitFor(() => router.settled && router.index.size() === w.pubs.reduce((n, p) => n + p.localIndexer!.size(), 0), 'the stores')
      const routed = new Map<string, number>()
      const active = new Map<string, { k: string; blocks: number }>()
      let withOverlap = 0
      let notFirst = 0
      // every 5th decision's candidates are read only after all requests (loads republished, requests
      // routed and finished since): they show the state when the choice was made
      const late: { i: number; got: kv.RouteDecision; costs: number[]; overlaps: number[] }[] = []
      for (let i = 0; i < 1000; i++) {
        if (i % 200 === 0) {
          await publishLoads(w, rng)
          await loadsSeen(router, w)
        }
        const tokens = request(w, rng)
        const want = expected(w, tokens, routed, weight)
        const best = want.rows.reduce((a, b) => (b.cost < a.cost ? b : a))
        const requestId = rng.chance(0.5) ? `r${i}` : undefined
        const got = router.findBestWorker(tokens, { requestId })!
        t.deepEqual({ workerId: got.workerId, dpRank: got.dpRank }, { workerId: best.workerId, dpRank: best.dpRank }, `request ${i}`)
        const costs = want.rows.map((r) => r.cost)
        const overlaps = want.rows.map((r) => r.overlap)
        if (i % 5 === 0) late.push({ i, got, costs, overlaps })
        else {
          t.deepEqual(
            got.candidates.map((c) => kv.defaultCost(c, weight)),
            costs,
            `request ${i}`,
          )
          t.deepEqual(
            got.candidates.map((c) => c.overlapBlocks),
            overlaps,
          )
        }
        if (best.overlap > 0) withOverlap++
        if (best !== want.rows[0]) notFirst++
        if (requestId !== undefined) {
          const k = key(got.workerId, got.dpRank)
          routed.set(k, (routed.get(k) ?? 0) + want.requestBlocks)
          active.set(requestId, { k, blocks: want.requestBlocks })
        }
        if (active.size > 0 && rng.chance(0.3)) {
          const [id, r] = [...active][rng.int(active.size)]!
          t.true(router.markFinished(id))
          active.delete(id)
          routed.set(r.k, routed.get(r.k)! - r.blocks)
        }
      }
      for (const { i, got, costs, overlaps } of late) {
        t.deepEqual(
          got.candidates.map((c) => kv.defaultCost(c, weight)),
          costs,
          `request ${i}, read late`,
        )
        t.deepEqual(
          got.candidates.map((c) => c.overlapBlocks),
          overlaps,
          `request ${i}, read late`,
        )
      }
      t.true(
        late.some(({ got }) => got.candidates.some((c) => c.routedBlocks > 0 && c.reportedDecodeBlocks > 0)),
        'decisions read late with loads and routed blocks',
      )
      t.false(router.markFinished('never routed'))
      t.is(router.stats().activeRequests, active.size)
      t.true(withOverlap > 300, `${withOverlap} choices with an overlap`)
      t.true(notFirst > 300, `${notFirst} choices other than the first candidate`)
      t.throws(() => router.findBestWorker([1, 2, 3], { requestId: [...active.keys()][0] }), { message: /already active/ })
    } finally {
      await router.close()
      await w.close()
    }
  },
)

test.serial(`[${impl}] with a temperature, findBestWorker samples the softmax of the normalised costs`, async (t) => {
  const w = await world('soft', 3)
  const rng = new Rng(4)
  const temperature = 0.7
  // the router's random numbers start with the cases (waiting for the loads also asks the selector)
  let routerRandom = new Rng(0)
  const ownRandom = new Rng(99)
  const router = await kv.KvRouter.create({
    kvBlockSize: BS,
    source: { kind: 'event-plane', namespace: NS, component: 'soft' },
    nats: { servers: shared.server.url },
    logger: quiet,
    selector: { temperature, random: () => routerRandom.next() },
  })
  try {
    await store(w, rng)
    await waitFor(() => router.settled && router.index.size() === w.pubs.reduce((n, p) => n + p.localIndexer!.size(), 0), 'the stores')
    await publishLoads(w, rng)
    await loadsSeen(router, w)
    routerRandom = new Rng(99)
    const counts = new Map<string, number>()
    for (let i = 0; i < 1000; i++) {
      const tokens = request(w, rng)
      const { rows } = expected(w, tokens, new Map(), 1)
      const min = Math.min(...rows.map((r) => r.cost))
      const range = Math.max(...rows.map((r) => r.cost)) - min
      const weights = rows.map((r) => Math.exp(-(range === 0 ? 0 : (r.cost - min) / range) / temperature))
      let x = ownRandom.next() * weights.reduce((a, b) => a + b, 0)
      let pick = rows.length - 1
      for (let j = 0; j < rows.length; j++) {
        x -= weights[j]!
        if (x < 0) {
          pick = j
          break
        }
      }
      const got = router.findBestWorker(tokens)!
      t.deepEqual([got.workerId, got.dpRank], [rows[pick]!.workerId, rows[pick]!.dpRank], `request ${i}`)
      counts.set(key(got.workerId, got.dpRank), (counts.get(key(got.workerId, got.dpRank)) ?? 0) + 1)
    }
    t.is(counts.size, IDS.length * RANKS.length, 'every rank is drawn sometimes')
  } finally {
    await router.close()
    await w.close()
  }
})

test.serial(`[${impl}] a custom selector chooses; silent workers expire; removeWorker forgets a worker`, async (t) => {
  const w = await world('custom', 5)
  const router = await kv.KvRouter.create({
    kvBlockSize: BS,
    source: { kind: 'event-plane', namespace: NS, component: 'custom' },
    nats: { servers: shared.server.url },
    logger: quiet,
    selector: (candidates) => candidates.length - 1,
    workerExpiryMs: 300,
  })
  try {
    t.is(router.findBestWorker([1, 2, 3]), null, 'no worker known yet')
    await store(w, new Rng(6))
    await waitFor(() => router.settled && router.workers().length === 3, 'three workers')
    const d = router.findBestWorker(w.docs[0]!)!
    t.deepEqual([d.workerId, d.dpRank], [IDS[2]!, 1])
    router.removeWorker(IDS[2]!)
    t.deepEqual(router.workers(), IDS.slice(0, 2))
    t.deepEqual(router.findBestWorker(w.docs[0]!)!.workerId, IDS[1]!)
    // worker 0 keeps reporting load; worker 1 goes silent and expires
    const deadline = Date.now() + 10_000
    while (router.workers().length !== 1 && Date.now() < deadline) {
      w.metrics[0]!.publish(0, Math.floor(Math.random() * 1000))
      await sleep(50)
    }
    t.deepEqual(router.workers(), [IDS[0]!])
    t.true(router.stats().expired >= 1)
    t.true(router.index.dump().every((e) => e.workerId === IDS[0]))
  } finally {
    await router.close()
    await w.close()
  }
})

test(`[${impl}] options are checked, naming the bad option`, async (t) => {
  const base = { kvBlockSize: 16, logger: quiet, nats: { servers: shared.server.url } }
  await t.throwsAsync(kv.KvRouter.create({ ...base, source: { kind: 'nope' } as never }), { message: /source.kind/ })
  await t.throwsAsync(kv.KvRouter.create({ ...base, source: { kind: 'event-plane', namespace: 'a b', component: 'c' } }), {
    message: /source.namespace/,
  })
  await t.throwsAsync(kv.KvRouter.create({ ...base, kvBlockSize: 0, source: { kind: 'event-plane', namespace: 'a', component: 'c' } }), {
    message: /kvBlockSize/,
  })
  await t.throwsAsync(
    kv.KvRouter.create({ ...base, source: { kind: 'event-plane', namespace: 'a', component: 'c' }, selector: { temperature: -1 } }),
    { message: /selector.temperature/ },
  )
  await t.throwsAsync(kv.KvRouter.create({ ...base, source: { kind: 'engines', engines: [{ workerId: 1n, endpoint: 5 as never }] } }), {
    message: /source.engines\[0\].endpoint/,
  })
  await t.throwsAsync(kv.KvRouter.create({ ...base, source: { kind: 'event-plane', namespace: 'a', component: 'c' }, bogus: 1 } as never), {
    message: /bogus is not a KvRouter option/,
  })
})
