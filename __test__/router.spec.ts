// KvRouter against real workers: engine simulators over real ZeroMQ sockets, KvEventPublishers with their
// local indexers and recovery endpoints on a real nats-server. The router's index must end equal to what
// the workers' local indexes hold, and answer findMatches as they imply, for 2,000 random prompts —
// through the event plane (with first-sight dumps, gap recovery and dumps past the ring buffer), through
// the engines' own ZMQ streams (with drops, restarts, engines added and removed), and through JetStream.
import test, { type ExecutionContext } from 'ava'
import { jetstreamManager } from '@nats-io/jetstream'
import { Registry } from 'prom-client'
import * as kv from '../ts/index.js'
import { EngineSimulator } from '../ts/sim/engine.js'
import { Rng } from './helpers/gen-batches.js'
import { holdings, type ManualOp, manualOps, quiet, sleep, waitFor, withNats } from './helpers/publishing.js'
import { startTcpProxy } from './helpers/tcp-proxy.js'
import { caughtUp, freePorts, settle, sorted, warmUp } from './helpers/zmq.js'

const impl = kv.implementation
const shared = withNats(test)
const BS = 16

type Local = { workerId: bigint; index: kv.LocalIndexer }

function localsOf(publishers: kv.KvEventPublisher[]): Local[] {
  return publishers.map((p) => ({ workerId: p.workerId, index: p.localIndexer! })).sort((a, b) => (a.workerId < b.workerId ? -1 : 1))
}

const same = (a: Record<string, string[]>, b: Record<string, string[]>) => JSON.stringify(a) === JSON.stringify(b)
const localHoldings = (locals: Local[]) => holdings(locals.flatMap((l) => l.index.dump()))

/** Polls (every 50 ms) until the router is settled and holds exactly what the local indexes hold. */
async function converged(
  router: kv.KvRouter,
  locals: Local[],
  what: string,
  timeoutMs = 30_000,
  tick?: () => Promise<void>,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (router.settled && same(holdings(router.index.dump()), localHoldings(locals))) return
    if (Date.now() > deadline)
      throw new Error(
        `${what}: the router did not converge: ${JSON.stringify(router.stats())} ${router.index.size()} vs ${locals.map((l) => l.index.size())}`,
      )
    if (tick) await tick()
    await sleep(50)
  }
}

/**
 * `n` query paths (tokens hashes) built from the workers' own contents: chains of stored blocks from the
 * root, as they are, truncated, extended with unknown blocks, with one block changed, or unknown
 * altogether.
 */
function prompts(locals: Local[], n: number, seed: number): BigUint64Array[] {
  const rng = new Rng(seed)
  const nodes = new Map<string, Map<bigint, { tokens: bigint; parent: bigint | null }>>()
  const all: { k: string; hash: bigint }[] = []
  for (const l of locals)
    for (const ev of l.index.dump()) {
      if (ev.event.data.type !== 'stored') continue
      const k = `${ev.workerId}:${ev.event.dpRank}`
      const m = nodes.get(k) ?? new Map<bigint, { tokens: bigint; parent: bigint | null }>()
      nodes.set(k, m)
      for (const b of ev.event.data.blocks) {
        m.set(b.blockHash, { tokens: b.tokensHash, parent: ev.event.data.parentHash })
        all.push({ k, hash: b.blockHash })
      }
    }
  const out: BigUint64Array[] = []
  for (let i = 0; i < n; i++) {
    let path: bigint[] = []
    if (all.length > 0) {
      const start = rng.pick(all)
      const m = nodes.get(start.k)!
      let cur: bigint | null = start.hash
      while (cur !== null) {
        const node = m.get(cur)
        if (!node) break
        path.unshift(node.tokens)
        cur = node.parent
      }
    }
    switch (rng.int(5)) {
      case 1:
        path = path.slice(0, 1 + rng.int(Math.max(1, path.length)))
        break
      case 2:
        for (let k = rng.int(3); k >= 0; k--) path.push(rng.u64())
        break
      case 3:
        if (path.length > 0) path[rng.int(path.length)] = rng.u64()
        break
      case 4:
        path = Array.from({ length: 1 + rng.int(6) }, () => rng.u64())
        break
    }
    out.push(BigUint64Array.from(path))
  }
  return out
}

/** The scores (and, where no block is stale, tree sizes) the workers' local indexes imply for a path. */
function implied(locals: Local[], path: BigUint64Array): kv.OverlapScores {
  const scores: kv.WorkerScore[] = []
  const treeSizes: kv.WorkerTreeSize[] = []
  for (const l of locals) {
    const m = l.index.findMatches(path)
    scores.push(...m.scores)
    treeSizes.push(...m.treeSizes)
  }
  return { scores, treeSizes }
}

/** Asserts findMatches equality on `n` prompts; returns how many prompts matched some worker. */
function assertMatches(t: ExecutionContext, router: kv.KvRouter, locals: Local[], n: number, seed: number, sizes = true): void {
  let matched = 0
  let mismatched = 0
  let first: { path: string[]; got: kv.OverlapScores; want: kv.OverlapScores } | null = null
  for (const path of prompts(locals, n, seed)) {
    const got = router.findMatchesForHashes(path)
    const want = implied(locals, path)
    if (!sizes) {
      got.treeSizes = []
      want.treeSizes = []
    }
    if (want.scores.length > 0) matched++
    const ok =
      JSON.stringify(got, (_k, v) => (typeof v === 'bigint' ? String(v) : v)) ===
      JSON.stringify(want, (_k, v) => (typeof v === 'bigint' ? String(v) : v))
    if (!ok) {
      mismatched++
      first ??= { path: Array.from(path, String), got, want }
    }
  }
  if (first) t.deepEqual(first.got, first.want, `first of ${mismatched} mismatches`)
  t.is(mismatched, 0, `${n} prompts`)
  t.true(matched > n / 2, `${matched} of ${n} prompts matched some worker`)
  t.log(`${n} prompts, ${matched} matched a worker, ${router.index.size()} blocks`)
}

// ---------------------------------------------------------------------------------------------------
// simulated engines behind real publishers

interface SimWorker {
  workerId: bigint
  sims: EngineSimulator[]
  publisher: kv.KvEventPublisher
  /** The engine's live and replay endpoints for rank 0 (rank r at port + r). */
  endpoint: string
  replayEndpoint: string
}

async function simWorker(ns: string, comp: string, workerId: bigint, seeds: number[]): Promise<SimWorker> {
  const base = await freePorts(2 * seeds.length)
  const sims = await Promise.all(
    seeds.map((seed, r) =>
      EngineSimulator.create({
        endpoint: `tcp://127.0.0.1:${base + r}`,
        replayEndpoint: `tcp://127.0.0.1:${base + seeds.length + r}`,
        dpRank: r,
        seed,
        kvBlockSize: BS,
        capacityBlocks: 400,
      }),
    ),
  )
  const endpoint = `tcp://127.0.0.1:${base}`
  const replayEndpoint = `tcp://127.0.0.1:${base + seeds.length}`
  const publisher = await kv.KvEventPublisher.create({
    namespace: ns,
    component: comp,
    kvBlockSize: BS,
    workerId,
    nats: { servers: shared.server.url },
    logger: quiet,
    recoveryEndpoint: true,
    zmq: { endpoint, replayEndpoint, dpRanks: seeds.length },
  })
  await warmUp(publisher.source!, ...sims)
  return { workerId, sims, publisher, endpoint, replayEndpoint }
}

async function closeSimWorker(w: SimWorker): Promise<void> {
  await w.publisher.close()
  for (const s of w.sims) s.close()
}

test.serial(
  `[${impl}] event-plane and engines sources: 2 workers × 2 dp ranks, the router equals the workers' local indexes on 2,000 prompts`,
  async (t) => {
    const ns = 'rt'
    const comp = 'sim'
    // worker 1 rank 0 and worker 2 rank 0 run the same workload: shared prefixes across workers
    const w1 = await simWorker(ns, comp, 2n ** 63n + 1n, [5, 6])
    const w2 = await simWorker(ns, comp, 77n, [5, 7])
    const plane = await kv.KvRouter.create({
      kvBlockSize: BS,
      source: { kind: 'event-plane', namespace: ns, component: comp },
      nats: { servers: shared.server.url },
      logger: quiet,
    })
    const engines = await kv.KvRouter.create({
      kvBlockSize: BS,
      source: {
        kind: 'engines',
        engines: [w1, w2].map((w) => ({ workerId: w.workerId, endpoint: w.endpoint, replayEndpoint: w.replayEndpoint, dpRanks: 2 })),
      },
      logger: quiet,
    })
    try {
      for (const w of [w1, w2]) await warmUp(engines.engineSources().get(w.workerId)!, ...w.sims)
      for (let round = 0; round < 3; round++) for (const w of [w1, w2]) for (const s of w.sims) await s.run(100)
      for (const w of [w1, w2])
        for (const s of w.sims) {
          await settle(w.publisher.source!, s)
          await settle(engines.engineSources().get(w.workerId)!, s)
        }
      for (const w of [w1, w2]) t.true(await w.publisher.flush(10_000))
      const locals = localsOf([w1.publisher, w2.publisher])
      await converged(plane, locals, 'event plane')
      await converged(engines, locals, 'engines')
      // the local indexes are the engines' ground truth
      for (const w of [w1, w2])
        for (const s of w.sims) t.deepEqual(holdings(engines.index.dump())[`${w.workerId}/${s.dpRank}`] ?? [], sorted(s.held()).map(String))
      assertMatches(t, plane, locals, 2000, 1)
      assertMatches(t, engines, locals, 2000, 2)
      const st = plane.stats()
      t.is(st.recoveries.failed, 0)
      t.is(st.recoveries.tree_dump, 4, 'one dump per worker rank at first sight')
      t.is(st.invalid, 0)
      t.deepEqual(plane.workers(), [77n, 2n ** 63n + 1n])
      t.is(st.workerRanks, 4)
    } finally {
      await plane.close()
      await engines.close()
      await closeSimWorker(w1)
      await closeSimWorker(w2)
    }
  },
)

test.serial(`[${impl}] a router started after the workers equals them once it has seen each rank (a dump at first sight)`, async (t) => {
  const ns = 'rt'
  const comp = 'late'
  const w1 = await simWorker(ns, comp, 3n, [11, 12])
  const w2 = await simWorker(ns, comp, 4n, [13, 14])
  let router: kv.KvRouter | null = null
  try {
    for (const w of [w1, w2]) for (const s of w.sims) await s.run(150)
    for (const w of [w1, w2]) for (const s of w.sims) await settle(w.publisher.source!, s)
    router = await kv.KvRouter.create({
      kvBlockSize: BS,
      source: { kind: 'event-plane', namespace: ns, component: comp },
      nats: { servers: shared.server.url },
      logger: quiet,
    })
    t.is(router.index.size(), 0, 'nothing is known before an event arrives')
    for (const w of [w1, w2]) for (const s of w.sims) await s.run(20)
    for (const w of [w1, w2]) for (const s of w.sims) await settle(w.publisher.source!, s)
    const locals = localsOf([w1.publisher, w2.publisher])
    await converged(router, locals, 'late router')
    t.is(router.stats().recoveries.tree_dump, 4)
    assertMatches(t, router, locals, 2000, 3)
  } finally {
    await router?.close()
    await closeSimWorker(w1)
    await closeSimWorker(w2)
  }
})

// ---------------------------------------------------------------------------------------------------
// manual publishers and a router behind a proxy that can cut its connection

async function manualWorkers(ns: string, comp: string, ids: bigint[], bufferSize: number) {
  return Promise.all(
    ids.map((workerId) =>
      kv.KvEventPublisher.create({
        namespace: ns,
        component: comp,
        kvBlockSize: BS,
        workerId,
        nats: { servers: shared.server.url },
        logger: quiet,
        localIndexer: { bufferSize },
        recoveryEndpoint: true,
        dpRanks: [0, 1],
      }),
    ),
  )
}

async function apply(p: kv.KvEventPublisher, op: ManualOp): Promise<void> {
  if (op.kind === 'stored')
    await p.publishStored({ tokenIds: op.tokenIds, blockHashes: op.blockHashes, parentHash: op.parentHash, dpRank: op.dpRank })
  else if (op.kind === 'removed') await p.publishRemoved(op.blockHashes, op.dpRank)
  else await p.publishCleared(op.dpRank)
}

async function outage(t: ExecutionContext, comp: string, bufferSize: number): Promise<kv.KvRouterStats> {
  const proxy = await startTcpProxy(shared.server.port)
  const pubs = await manualWorkers('rt', comp, [21n, 22n], bufferSize)
  const ops = pubs.map((_, i) => manualOps(100 + i, 1_000_000, BS, 2))
  const step = async () => {
    for (let i = 0; i < pubs.length; i++) await apply(pubs[i]!, ops[i]!.next().value as ManualOp)
  }
  const router = await kv.KvRouter.create({
    kvBlockSize: BS,
    source: { kind: 'event-plane', namespace: 'rt', component: comp },
    nats: { servers: `nats://127.0.0.1:${proxy.port}`, reconnectTimeWaitMs: 50 },
    logger: quiet,
    recovery: { backoffMs: 50, timeoutMs: 2000 },
  })
  try {
    for (let i = 0; i < 100; i++) await step()
    for (const p of pubs) await p.flush()
    const locals = localsOf(pubs)
    await converged(router, locals, 'before the outage')
    const before = router.stats()
    proxy.cut()
    for (let i = 0; i < 250; i++) await step() // 500 events, none reach the router
    for (const p of pubs) t.true(await p.flush())
    t.is(router.stats().events.stored.applied, before.events.stored.applied, 'the router was cut off')
    proxy.resume()
    // the router finds each rank's gap with that rank's next event
    await converged(router, locals, 'after the outage', 30_000, step)
    assertMatches(t, router, locals, 2000, 4, false)
    const st = router.stats()
    t.true(st.gaps >= 1, `${st.gaps} gaps`)
    t.is(st.recoveries.failed, 0)
    return st
  } finally {
    await router.close()
    for (const p of pubs) await p.close()
    await proxy.close()
  }
}

test.serial(`[${impl}] outage: events published while the router is cut off are recovered as a range`, async (t) => {
  const st = await outage(t, 'outage', 1024)
  t.true(st.recoveries.events >= 1, `${st.recoveries.events} range recoveries`)
  t.is(st.recoveries.tree_dump, 4, 'dumps only at first sight')
})

test.serial(`[${impl}] outage longer than the ring buffer: the rank is rebuilt from a dump`, async (t) => {
  const st = await outage(t, 'longoutage', 32)
  t.true(st.recoveries.tree_dump > 4, `${st.recoveries.tree_dump} dumps`)
})

test.serial(`[${impl}] no recovery endpoint: asked once per rank; a silent one: bounded retries; then followed live`, async (t) => {
  // worker 5 serves no endpoint (the server answers "no responders"); worker 6's endpoint never answers
  const pubs = await Promise.all(
    [5n, 6n].map((workerId) =>
      kv.KvEventPublisher.create({
        namespace: 'rt',
        component: 'noendpoint',
        kvBlockSize: BS,
        workerId,
        dpRanks: [0, 1],
        nats: { servers: shared.server.url },
        logger: quiet,
      }),
    ),
  )
  const silent = shared.nc.subscribe('namespace.rt.component.noendpoint.*.6')
  await shared.nc.flush()
  const registry = new Registry()
  const router = await kv.KvRouter.create({
    kvBlockSize: BS,
    source: { kind: 'event-plane', namespace: 'rt', component: 'noendpoint' },
    nats: { servers: shared.server.url },
    logger: quiet,
    recovery: { attempts: 3, backoffMs: 10, timeoutMs: 200 },
    registry,
  })
  try {
    const ops = pubs.map((_, i) => manualOps(9 + i, 1_000_000, BS, 2))
    for (let k = 0; k < 50; k++) for (let i = 0; i < pubs.length; i++) await apply(pubs[i]!, ops[i]!.next().value as ManualOp)
    for (const p of pubs) await p.flush()
    await converged(router, localsOf(pubs), 'live only')
    const st = router.stats()
    t.is(st.recoveries.unavailable, 2, 'worker 5: one query per rank, answered "no responders"')
    t.is(st.recoveries.failed, 2, 'worker 6: every attempt timed out')
    t.is(st.recoveryRetries, 4, 'worker 6: attempts - 1 retries per rank; none for worker 5')
    const scraped = await registry.metrics()
    t.true(scraped.includes('dynamo_kv_router_recoveries_total{outcome="unavailable"} 2'))
    t.true(scraped.includes('dynamo_kv_router_recoveries_total{outcome="failed"} 2'))
    t.true(scraped.includes('dynamo_kv_router_recovery_duration_seconds_count{outcome="failed"} 2'))
    t.true(scraped.includes(`dynamo_kv_router_index_blocks ${router.index.size()}`))
    t.true(st.events.stored.applied > 0)
    t.true(scraped.includes(`dynamo_kv_router_events_applied_total{type="stored",outcome="applied"} ${st.events.stored.applied}`))
  } finally {
    silent.unsubscribe()
    await router.close()
    for (const p of pubs) await p.close()
  }
})

// ---------------------------------------------------------------------------------------------------
// engines: drops, restarts, engines added and removed

test.serial(
  `[${impl}] engines source: drops are replayed, restarts reset the rank, engines come and go; the index equals ground truth`,
  async (t) => {
    const mk = async (seed: number) => {
      const base = await freePorts(4)
      const sims = await Promise.all(
        [0, 1].map((r) =>
          EngineSimulator.create({
            endpoint: `tcp://127.0.0.1:${base + r}`,
            replayEndpoint: `tcp://127.0.0.1:${base + 2 + r}`,
            dpRank: r,
            seed: seed + r,
            kvBlockSize: BS,
          }),
        ),
      )
      return { sims, endpoint: `tcp://127.0.0.1:${base}`, replayEndpoint: `tcp://127.0.0.1:${base + 2}` }
    }
    const a = await mk(31)
    const b = await mk(41)
    const router = await kv.KvRouter.create({
      kvBlockSize: BS,
      source: { kind: 'engines', engines: [{ workerId: 1n, endpoint: a.endpoint, replayEndpoint: a.replayEndpoint, dpRanks: 2 }] },
      logger: quiet,
    })
    const truth = (id: bigint, sims: EngineSimulator[]) => {
      const h = holdings(router.index.dump())
      for (const s of sims) t.deepEqual(h[`${id}/${s.dpRank}`] ?? [], sorted(s.held()).map(String), `${id}/${s.dpRank}`)
    }
    const settled = async (id: bigint, sims: EngineSimulator[]) => {
      for (const s of sims) await settle(router.engineSources().get(id)!, s)
    }
    try {
      await warmUp(router.engineSources().get(1n)!, ...a.sims)
      await a.sims[0]!.run(50)
      a.sims[0]!.drop([a.sims[0]!.nextSeq + 2n, a.sims[0]!.nextSeq + 3n])
      a.sims[1]!.drop([a.sims[1]!.nextSeq + 1n])
      for (const s of a.sims) await s.run(100)
      await settled(1n, a.sims)
      truth(1n, a.sims)
      t.true(router.engineSources().get(1n)!.stats().recovered >= 3n)
      await a.sims[1]!.restart()
      await warmUp(router.engineSources().get(1n)!, a.sims[1]!)
      await a.sims[1]!.run(60)
      await settled(1n, a.sims)
      truth(1n, a.sims)
      t.true(router.engineSources().get(1n)!.stats().restarts >= 1n)
      // a second engine while running
      await router.addEngine({ workerId: 2n, endpoint: b.endpoint, replayEndpoint: b.replayEndpoint, dpRanks: 2 })
      await warmUp(router.engineSources().get(2n)!, ...b.sims)
      for (const s of b.sims) await s.run(80)
      await settled(2n, b.sims)
      truth(2n, b.sims)
      truth(1n, a.sims)
      t.deepEqual(router.workers(), [1n, 2n])
      t.true(await router.removeEngine(1n))
      t.deepEqual(router.workers(), [2n])
      t.deepEqual(Object.keys(holdings(router.index.dump())).sort(), ['2/0', '2/1'])
      truth(2n, b.sims)
      t.false(await router.removeEngine(1n))
      t.true(caughtUp(router.engineSources().get(2n)!, b.sims[0]!))
    } finally {
      await router.close()
      for (const s of [...a.sims, ...b.sims]) s.close()
    }
  },
)

// ---------------------------------------------------------------------------------------------------
// JetStream

test.serial(
  `[${impl}] jetstream source: applies the stream in order; a router restarted with the same durable resumes after its acks`,
  async (t) => {
    const pubs = await Promise.all(
      [31n, 32n].map((workerId) =>
        kv.KvEventPublisher.create({
          namespace: 'rt',
          component: 'js',
          kvBlockSize: BS,
          workerId,
          mode: 'jetstream',
          localIndexer: true,
          dpRanks: [0, 1],
          nats: { servers: shared.server.url },
          logger: quiet,
        }),
      ),
    )
    const ops = pubs.map((_, i) => manualOps(200 + i, 1_000_000, BS, 2))
    const step = async (n: number) => {
      for (let k = 0; k < n; k++) for (let i = 0; i < pubs.length; i++) await apply(pubs[i]!, ops[i]!.next().value as ManualOp)
      for (const p of pubs) t.true(await p.flush())
    }
    const open = (durable?: string) =>
      kv.KvRouter.create({
        kvBlockSize: BS,
        source: { kind: 'jetstream', namespace: 'rt', component: 'js', durable },
        nats: { servers: shared.server.url },
        logger: quiet,
      })
    try {
      await step(300)
      const locals = localsOf(pubs)
      const ordered = await open()
      try {
        await converged(ordered, locals, 'jetstream, ordered consumer')
        assertMatches(t, ordered, locals, 2000, 5, false)
      } finally {
        await ordered.close()
      }
      // counts come from the stream itself: under load the publishers may re-publish a reordered suffix
      const jsm = await jetstreamManager(shared.nc)
      const streamName = kv.jetstreamStreamName('rt', 'js')
      const inStream = async () => (await jsm.streams.info(streamName)).state.messages
      const applied = (r: kv.KvRouter) => {
        const e = r.stats().events
        return Object.values(e).reduce((n, byOutcome) => n + Object.values(byOutcome).reduce((a, b) => a + b, 0), 0)
      }
      const upTo = async (r: kv.KvRouter, n: number, what: string) => {
        await waitFor(() => applied(r) >= n, what, 30_000)
        await sleep(200)
        await shared.nc.flush()
      }
      const before = await inStream()
      const first = await open('router-a')
      try {
        await converged(first, locals, 'jetstream, durable')
        await upTo(first, before, 'every message')
        t.is(applied(first), before, 'every message once')
      } finally {
        await first.close()
      }
      await step(50)
      const more = (await inStream()) - before
      t.true(more >= 100)
      const resumed = await open('router-a')
      try {
        await upTo(resumed, more, 'the messages published since')
        t.is(applied(resumed), more, 'only the messages after the acked ones')
      } finally {
        await resumed.close()
      }
    } finally {
      for (const p of pubs) await p.close()
    }
  },
)

test.serial(
  `[${impl}] a worker restarted under the same id (event ids from 0 again) is rebuilt from a dump; bad bytes are counted`,
  async (t) => {
    const open = () =>
      kv.KvEventPublisher.create({
        namespace: 'rt',
        component: 'restart',
        kvBlockSize: BS,
        workerId: 8n,
        dpRanks: [0, 1],
        nats: { servers: shared.server.url },
        logger: quiet,
        recoveryEndpoint: true,
      })
    const router = await kv.KvRouter.create({
      kvBlockSize: BS,
      source: { kind: 'event-plane', namespace: 'rt', component: 'restart' },
      nats: { servers: shared.server.url },
      logger: quiet,
    })
    let p = await open()
    try {
      const ops = manualOps(50, 1_000_000, BS, 2)
      for (let i = 0; i < 80; i++) await apply(p, ops.next().value as ManualOp)
      await p.flush()
      await converged(router, localsOf([p]), 'first incarnation')
      // not router events: counted, skipped, nothing else changes
      for (const junk of [
        Buffer.from('junk'),
        kv.encodeEnvelope({ publisherId: 1n, sequence: 0n, publishedAt: 0, topic: 'kv-events', payload: Buffer.from([0xc0]) }),
      ])
        shared.nc.publish('namespace.rt.component.restart.kv-events', junk)
      await shared.nc.flush()
      await p.close()
      // the restarted worker starts empty and numbers its events from 0 again
      p = await open()
      const again = manualOps(51, 1_000_000, BS, 2)
      for (let i = 0; i < 40; i++) await apply(p, again.next().value as ManualOp)
      await p.flush()
      await converged(router, localsOf([p]), 'second incarnation')
      assertMatches(t, router, localsOf([p]), 500, 6, false)
      const st = router.stats()
      t.is(st.invalid, 2)
      t.true(st.restarts >= 1, `${st.restarts} restarts`)
      t.is(st.recoveries.failed, 0)
    } finally {
      await router.close()
      await p.close()
    }
  },
)

test.serial(
  `[${impl}] a worker without an endpoint (ids with holes, as Dynamo's own publisher numbers rejected events): gaps accepted without a query`,
  async (t) => {
    const router = await kv.KvRouter.create({
      kvBlockSize: BS,
      source: { kind: 'event-plane', namespace: 'rt', component: 'holes' },
      nats: { servers: shared.server.url },
      logger: quiet,
    })
    const index = new kv.RadixIndex()
    try {
      let seq = 0n
      const send = (eventId: bigint, blockHash: bigint) => {
        const ev: kv.RouterEventValue = {
          workerId: 2n ** 64n - 5n,
          event: {
            eventId,
            dpRank: 0,
            data: { type: 'stored', parentHash: null, blocks: [{ blockHash, tokensHash: blockHash + 1n, mmExtraInfo: null }] },
          },
        }
        index.applyEvent(ev)
        shared.nc.publish(
          'namespace.rt.component.holes.kv-events',
          kv.encodeEnvelope({ publisherId: 1n, sequence: seq++, publishedAt: 0, topic: 'kv-events', payload: kv.encodeRouterEvent(ev) }),
        )
      }
      send(0n, 100n) // first sight: "no responders"
      await shared.nc.flush()
      await waitFor(() => router.settled && router.stats().recoveries.unavailable === 1, 'the first sight')
      send(1n, 101n)
      send(5n, 105n) // a hole: accepted at once
      send(6n, 106n)
      send(9n, 109n)
      await shared.nc.flush()
      await waitFor(() => router.index.size() === 5, 'five blocks')
      t.deepEqual(holdings(router.index.dump()), holdings(index.dump()))
      const st = router.stats()
      t.is(st.gaps, 2)
      t.is(st.recoveries.unavailable, 3, 'the first sight, then each gap without a query')
      t.is(st.recoveryRetries, 0)
    } finally {
      await router.close()
      index.close()
    }
  },
)
