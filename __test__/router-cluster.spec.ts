// KvRouter on a three-node NATS cluster (real nats-server processes, routes on loopback, JetStream
// clustered): the workers publish through two nodes, the router is connected to the third, and that node
// hangs (SIGSTOP) and is then SIGKILLed while the workers keep publishing. The router reconnects to
// another node (it was given all three URLs); on the event plane it finds the gaps and recovers them from
// the workers' recovery endpoints; on a JetStream stream replicated on all three nodes it loses nothing.
// Either way its index ends equal to the workers' local indexes.
import test, { type ExecutionContext } from 'ava'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect, nanos, type NatsConnection } from '@nats-io/transport-node'
import * as kv from '../ts/index.js'
import { startNatsCluster, type NatsCluster } from './helpers/nats-cluster.js'
import { stopProcess } from './helpers/nats-server.js'
import { holdings, type ManualOp, manualOps, quiet, sleep, waitFor } from './helpers/publishing.js'

const impl = kv.implementation
const BS = 16
/** Generous: the machine is small and shared; nothing here is timed, these only stop a hang. */
const LONG = 240_000

type Local = { workerId: bigint; index: kv.LocalIndexer }

const localsOf = (pubs: kv.KvEventPublisher[]): Local[] => pubs.map((p) => ({ workerId: p.workerId, index: p.localIndexer! }))
const localHoldings = (locals: Local[]) => holdings(locals.flatMap((l) => l.index.dump()))
const same = (a: object, b: object) => JSON.stringify(a) === JSON.stringify(b)

async function converged(router: kv.KvRouter, locals: Local[], what: string, tick?: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + LONG
  for (;;) {
    if (router.settled && same(holdings(router.index.dump()), localHoldings(locals))) return
    if (Date.now() > deadline) throw new Error(`${what}: the router did not converge: ${JSON.stringify(router.stats())}`)
    if (tick) await tick()
    await sleep(100)
  }
}

/** findMatches of the router against the sum of the workers' local answers, for every stored chain. */
function assertMatches(t: ExecutionContext, router: kv.KvRouter, locals: Local[]): void {
  let n = 0
  let bad = 0
  for (const l of locals)
    for (const ev of l.index.dump()) {
      if (ev.event.data.type !== 'stored') continue
      const path = BigUint64Array.from(ev.event.data.blocks, (b) => b.tokensHash)
      const want = locals.flatMap((o) => o.index.findMatches(path).scores)
      const got = router.findMatchesForHashes(path).scores
      n++
      if (JSON.stringify(got, big) !== JSON.stringify(want, big)) bad++
    }
  t.is(bad, 0, `${bad} of ${n} lookups differ`)
  t.true(n > 50, `${n} lookups`)
}
const big = (_k: string, v: unknown) => (typeof v === 'bigint' ? String(v) : v)

async function apply(p: kv.KvEventPublisher, op: ManualOp): Promise<void> {
  if (op.kind === 'stored')
    await p.publishStored({ tokenIds: op.tokenIds, blockHashes: op.blockHashes, parentHash: op.parentHash, dpRank: op.dpRank })
  else if (op.kind === 'removed') await p.publishRemoved(op.blockHashes, op.dpRank)
  else await p.publishCleared(op.dpRank)
}

/** The router's connection: every node's URL, the first (node 0) tried first. */
function routerConnection(cluster: NatsCluster): Promise<NatsConnection> {
  return connect({ servers: cluster.urls, noRandomize: true, reconnectTimeWait: 100, maxReconnectAttempts: -1, timeout: 20_000 })
}

/**
 * Publishes continuously; meanwhile node 0 (the router's) hangs for 100 steps (everything published then
 * is lost to the router), is SIGKILLed, and publishing goes on for 150 more steps.
 */
async function crashMidStream(cluster: NatsCluster, step: () => Promise<void>, log?: (s: string) => void): Promise<void> {
  let running = true
  let done = 0
  const loop = (async () => {
    while (running) {
      await step()
      done++
      // a macrotask between steps, so that the waits below see each step
      await new Promise((r) => setImmediate(r))
    }
  })()
  try {
    const t0 = Date.now()
    const mark = (what: string) => log?.(`${what}: ${done} steps, ${Date.now() - t0} ms`)
    await waitFor(() => done >= 50, '50 steps', LONG)
    mark('node 0 hangs')
    const node = cluster.nodes[0]!
    stopProcess(node.pid!)
    const frozenAt = done
    await waitFor(() => done >= frozenAt + 100, '100 steps while node 0 hangs', LONG)
    mark('node 0 killed')
    await node.kill('SIGKILL')
    await waitFor(() => done >= frozenAt + 250, '150 steps after node 0 died', LONG)
    mark('done')
  } finally {
    running = false
    await loop
  }
}

test.serial(
  `[${impl}] event plane: the router's node dies mid-stream; it reconnects to another node, recovers the gaps, equals the workers`,
  async (t) => {
    t.timeout(15 * 60_000)
    const cluster = await startNatsCluster(3)
    const pubs: kv.KvEventPublisher[] = []
    let nc: NatsConnection | null = null
    let router: kv.KvRouter | null = null
    try {
      // worker 41 on node 1, worker 42 on node 2
      for (const [i, workerId] of [41n, 42n].entries())
        pubs.push(
          await kv.KvEventPublisher.create({
            namespace: 'cl',
            component: 'ep',
            kvBlockSize: BS,
            workerId,
            dpRanks: [0, 1],
            nats: { servers: cluster.nodes[i + 1]!.url, reconnectTimeWaitMs: 100 },
            logger: quiet,
            localIndexer: { bufferSize: 4096 },
            recoveryEndpoint: true,
          }),
        )
      nc = await routerConnection(cluster)
      t.is(nc.info?.server_name, 'n0', 'the router starts on node 0')
      router = await kv.KvRouter.create({
        kvBlockSize: BS,
        source: { kind: 'event-plane', namespace: 'cl', component: 'ep' },
        nats: nc,
        logger: quiet,
        recovery: { attempts: 20, backoffMs: 200, timeoutMs: 10_000 },
      })
      const ops = pubs.map((_, i) => manualOps(300 + i, 1_000_000, BS, 2))
      const step = async () => {
        for (let i = 0; i < pubs.length; i++) await apply(pubs[i]!, ops[i]!.next().value as ManualOp)
      }
      const locals = localsOf(pubs)
      // wait for the routes to carry the router's interest: the first events reach it
      await converged(router, locals, 'before the crash', step)
      for (let i = 0; i < 100; i++) await step()
      for (const p of pubs) t.true(await p.flush(LONG))
      await converged(router, locals, 'before the crash')
      const before = router.stats()
      t.is(before.recoveries.failed, 0)

      await crashMidStream(cluster, step, (s) => t.log(s))
      for (const p of pubs) t.true(await p.flush(LONG))
      await waitFor(() => !nc!.isClosed() && ['n1', 'n2'].includes(nc!.info?.server_name ?? ''), 'the router on another node', LONG)
      t.log(`the router reconnected to ${nc.info?.server_name}`)
      await converged(router, locals, 'after the crash', step)
      assertMatches(t, router, locals)
      const st = router.stats()
      t.log(JSON.stringify(st))
      t.true(st.gaps > before.gaps, 'events published while node 0 hung were missing')
      t.true(st.recoveries.events + st.recoveries.tree_dump > before.recoveries.events + before.recoveries.tree_dump, 'and recovered')
      t.is(st.recoveries.failed, 0)
      t.is(st.recoveries.unavailable, 0)
      t.is(st.invalid, 0)
    } finally {
      await router?.close()
      await nc?.close()
      for (const p of pubs) await p.close()
      await cluster.stop()
    }
  },
)

test.serial(
  `[${impl}] JetStream, stream replicated on 3 nodes: the router's node dies mid-stream; ordered and durable routers lose nothing`,
  async (t) => {
    t.timeout(15 * 60_000)
    const cluster = await startNatsCluster(3)
    const pubs: kv.KvEventPublisher[] = []
    let admin: NatsConnection | null = null
    let nc: NatsConnection | null = null
    const routers: kv.KvRouter[] = []
    try {
      admin = await connect({ servers: cluster.nodes[1]!.url, timeout: 20_000 })
      const jsm = await jetstreamManager(admin, { timeout: 20_000 })
      const name = kv.jetstreamStreamName('cl', 'js')
      // the publishers use an existing stream as it is: this one has a replica on every node
      await jsm.streams.add({ name, subjects: [`${name}.*`], num_replicas: 3, max_age: nanos(3_600_000), duplicate_window: nanos(120_000) })
      t.is((await jsm.streams.info(name)).config.num_replicas, 3)
      for (const [i, workerId] of [51n, 52n].entries())
        pubs.push(
          await kv.KvEventPublisher.create({
            namespace: 'cl',
            component: 'js',
            kvBlockSize: BS,
            workerId,
            mode: 'jetstream',
            dpRanks: [0, 1],
            localIndexer: true,
            nats: { servers: cluster.nodes[i + 1]!.url, reconnectTimeWaitMs: 100, timeoutMs: 20_000 },
            logger: quiet,
          }),
        )
      nc = await routerConnection(cluster)
      t.is(nc.info?.server_name, 'n0', 'the routers start on node 0')
      for (const durable of [undefined, 'router-cl'])
        routers.push(
          await kv.KvRouter.create({
            kvBlockSize: BS,
            source: { kind: 'jetstream', namespace: 'cl', component: 'js', durable },
            nats: nc,
            logger: quiet,
          }),
        )
      const ops = pubs.map((_, i) => manualOps(400 + i, 1_000_000, BS, 2))
      const step = async () => {
        for (let i = 0; i < pubs.length; i++) await apply(pubs[i]!, ops[i]!.next().value as ManualOp)
      }
      const locals = localsOf(pubs)
      for (let i = 0; i < 100; i++) await step()
      for (const p of pubs) t.true(await p.flush(LONG))
      for (const r of routers) await converged(r, locals, 'before the crash')

      await crashMidStream(cluster, step, (s) => t.log(s))
      for (const p of pubs) t.true(await p.flush(LONG), 'every publish acknowledged by the remaining nodes')
      await waitFor(() => !nc!.isClosed() && ['n1', 'n2'].includes(nc!.info?.server_name ?? ''), 'the routers on another node', LONG)
      t.log(`the routers reconnected to ${nc.info?.server_name}`)
      const inStream = (await jsm.streams.info(name)).state.messages
      const applied = (r: kv.KvRouter) =>
        Object.values(r.stats().events).reduce((n, byOutcome) => n + Object.values(byOutcome).reduce((a, b) => a + b, 0), 0)
      for (const [i, r] of routers.entries()) {
        const what = i === 0 ? 'ordered consumer' : 'durable consumer'
        await converged(r, locals, what)
        await waitFor(() => applied(r) >= inStream, `${what}: every message`, LONG)
        await sleep(500)
        t.is(applied(r), inStream, `${what}: each of the stream's ${inStream} messages applied once`)
        t.is(r.stats().invalid, 0)
        assertMatches(t, r, locals)
      }
    } finally {
      for (const r of routers) await r.close()
      await nc?.close()
      for (const p of pubs) await p.close()
      await admin?.close()
      await cluster.stop()
    }
  },
)
