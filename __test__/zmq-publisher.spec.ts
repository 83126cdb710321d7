// The whole worker side: engine simulators publish over real ZeroMQ sockets,
// a KvEventPublisher with the zmq option ingests and publishes to a real nats-server, and a router-side
// RadixIndex fed from NATS (the subject, or the JetStream stream applied in order) must end equal to the
// engines' ground truth: the blocks each engine holds.
import test from 'ava'
import { Registry } from 'prom-client'
import * as kv from '../ts/index.js'
import { EngineSimulator } from '../ts/sim/engine.js'
import { readEnvelope } from './helpers/fixtures.js'
import { blocksOf, quiet, readStream, waitFor, withNats } from './helpers/publishing.js'
import { freePorts, settle, sorted } from './helpers/zmq.js'

const impl = kv.implementation
const shared = withNats(test)

/** A router's view: every envelope on the subject applied to a RadixIndex, in arrival order. */
function router(subject: string) {
  const index = new kv.RadixIndex()
  const events: kv.RouterEventValue[] = []
  const sub = shared.nc.subscribe(subject, {
    callback: (_err, m) => {
      events.push(kv.decodeRouterEvent(readEnvelope(m.data).payload))
      index.applyEncoded(m.data, 'envelope')
    },
  })
  return { index, events, stop: () => sub.unsubscribe() }
}

async function delivered(p: kv.KvEventPublisher, r: { events: unknown[] }): Promise<void> {
  t_assert(await p.flush(10_000), 'publisher flushed')
  await shared.nc.flush()
  const total = () => Number(p.stats().sink.published)
  await waitFor(() => r.events.length >= total(), `${total()} events at the router`, 10_000)
}

function t_assert(ok: boolean, what: string): void {
  if (!ok) throw new Error(`failed: ${what}`)
}

test.serial(
  `[${impl}] normal flow: the engine's batches reach the router's index over the event plane, equal to ground truth`,
  async (t) => {
    const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', seed: 21, encoding: 'mixed' })
    const r = router('namespace.zmq.component.flow.kv-events')
    await shared.nc.flush()
    const p = await kv.KvEventPublisher.create({
      namespace: 'zmq',
      component: 'flow',
      kvBlockSize: sim.kvBlockSize,
      workerId: 11n,
      nats: shared.nc,
      logger: quiet,
      zmq: { endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint! },
    })
    try {
      await sim.run(400)
      await settle(p.source!, sim)
      await delivered(p, r)
      const truth = sorted(sim.held())
      t.true(truth.length > 50, `${truth.length} blocks held`)
      t.deepEqual(blocksOf(r.index, 11n, 0), truth)
      t.deepEqual(blocksOf(p.localIndexer!, 11n, 0), truth)
      t.deepEqual(
        r.events.map((e) => (e as kv.RouterEventValue).event.eventId),
        r.events.map((_, i) => BigInt(i)),
        'ids 0, 1, 2, ... without gaps',
      )
      t.is(p.stats().source!.ingested, sim.nextSeq, 'every seq ingested once')
      const registry = new Registry()
      kv.registerPublisherMetrics(p, { registry })
      const scraped = await registry.metrics()
      t.true(
        scraped.includes(`dynamo_kv_zmq_ingested_total{worker_id="11",namespace="zmq",component="flow"} ${sim.nextSeq}`),
        'the source counters are exported',
      )
      t.true(scraped.includes('dynamo_kv_zmq_queue_depth{worker_id="11",namespace="zmq",component="flow"} 0'))
    } finally {
      await p.close()
      r.stop()
      sim.close()
    }
    t.true(p.closed)
  },
)

test.serial(`[${impl}] normal flow into JetStream: the stream applied in order equals ground truth`, async (t) => {
  const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', seed: 22, replayLayout: 'legacy', publisherId: true })
  const p = await kv.KvEventPublisher.create({
    namespace: 'zmq',
    component: 'durable',
    kvBlockSize: sim.kvBlockSize,
    workerId: 12n,
    mode: 'jetstream',
    nats: shared.nc,
    logger: quiet,
    zmq: { endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint! },
  })
  try {
    await sim.run(300)
    await settle(p.source!, sim)
    t.true(await p.flush(10_000))
    const index = new kv.RadixIndex()
    for (const m of await readStream(shared.nc, p.streamName!)) index.applyEncoded(m.data, 'json')
    const truth = sorted(sim.held())
    t.true(truth.length > 50)
    t.deepEqual(blocksOf(index, 12n, 0), truth)
  } finally {
    await p.close()
    sim.close()
  }
})

test.serial(
  `[${impl}] two dp ranks on port and port + 1: ids per rank without gaps; restarting one rank keeps the other's blocks`,
  async (t) => {
    const [live, replay] = [await freePorts(2), await freePorts(2)]
    const sims = await Promise.all(
      [0, 1].map((rank) =>
        EngineSimulator.create({
          endpoint: `tcp://127.0.0.1:${live + rank}`,
          replayEndpoint: `tcp://127.0.0.1:${replay + rank}`,
          dpRank: rank,
          seed: 30 + rank,
          publisherId: true,
        }),
      ),
    )
    const r = router('namespace.zmq.component.ranks.kv-events')
    await shared.nc.flush()
    const p = await kv.KvEventPublisher.create({
      namespace: 'zmq',
      component: 'ranks',
      kvBlockSize: 16,
      workerId: 13n,
      nats: shared.nc,
      logger: quiet,
      // both ranks configured, so a reset of one is never published as `cleared`, even when that rank's
      // engine clears before the other rank's first batch has been ingested (SPEC 3, reset rule)
      dpRanks: [0, 1],
      zmq: { endpoint: `tcp://127.0.0.1:${live}`, replayEndpoint: `tcp://127.0.0.1:${replay}`, dpRanks: 2 },
    })
    try {
      await Promise.all(sims.map((s) => s.run(200)))
      for (const s of sims) await settle(p.source!, s)
      await delivered(p, r)
      const before0 = sorted(sims[0]!.held())
      t.true(before0.length > 20)
      t.deepEqual(blocksOf(r.index, 13n, 0), before0)
      t.deepEqual(blocksOf(r.index, 13n, 1), sorted(sims[1]!.held()))

      // rank 1's engine restarts (seq back to 0, new publisher id, holds nothing): the rank is reset
      await sims[1]!.restart()
      await sims[1]!.run(50)
      await sims[0]!.run(50)
      for (const s of sims) await settle(p.source!, s)
      await delivered(p, r)
      t.true(p.stats().source!.restarts >= 1n)
      t.deepEqual(blocksOf(r.index, 13n, 0), sorted(sims[0]!.held()), "rank 0's blocks stay")
      t.deepEqual(blocksOf(r.index, 13n, 1), sorted(sims[1]!.held()), 'rank 1 holds only the new incarnation')
      t.true(blocksOf(r.index, 13n, 0).length > 20)

      // events carry their rank, and each rank's ids run 0, 1, 2, ... without gaps (the reset used ids too)
      for (const rank of [0, 1]) {
        const ids = r.events
          .filter((e) => (e as kv.RouterEventValue).event.dpRank === rank)
          .map((e) => (e as kv.RouterEventValue).event.eventId)
        t.true(ids.length > 50)
        t.deepEqual(
          ids,
          ids.map((_, i) => BigInt(i)),
          `rank ${rank}`,
        )
        t.is(p.nextEventId(rank), BigInt(ids.length))
      }
      // with two ranks configured, the reset is published as removes, never as `cleared` (which wipes every rank)
      t.false(
        r.events.some((e) => (e as kv.RouterEventValue).event.data.type === 'cleared' && (e as kv.RouterEventValue).event.dpRank === 1),
      )
    } finally {
      await p.close()
      r.stop()
      for (const s of sims) s.close()
    }
  },
)

for (const replayLayout of ['legacy', 'topic'] as const) {
  test.serial(
    `[${impl}] gap (${replayLayout} replay layout): the skipped batch is replayed and the router's index equals ground truth`,
    async (t) => {
      const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', seed: 40, replayLayout })
      const component = `gap-${replayLayout}`
      const r = router(`namespace.zmq.component.${component}.kv-events`)
      await shared.nc.flush()
      const p = await kv.KvEventPublisher.create({
        namespace: 'zmq',
        component,
        kvBlockSize: 16,
        workerId: 14n,
        nats: shared.nc,
        logger: quiet,
        zmq: { endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint! },
      })
      try {
        await sim.run(30)
        await settle(p.source!, sim)
        const k = sim.nextSeq
        sim.drop([k, k + 5n])
        await sim.run(20)
        await settle(p.source!, sim)
        await delivered(p, r)
        const s = p.stats().source!
        t.true(
          s.gaps >= 1n && s.replays >= 2n,
          JSON.stringify(s, (_k, v) => (typeof v === 'bigint' ? String(v) : v)),
        )
        t.is(s.lost, 0n)
        t.deepEqual(blocksOf(r.index, 14n, 0), sorted(sim.held()))
      } finally {
        await p.close()
        r.stop()
        sim.close()
      }
    },
  )
}

for (const onLoss of ['keep', 'reset'] as const) {
  test.serial(
    `[${impl}] replay buffer rolled over, onLoss '${onLoss}': the loss is counted and the router's index is as promised`,
    async (t) => {
      const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', seed: 41, replayBufferSize: 20, capacityBlocks: 96 })
      const component = `loss-${onLoss}`
      const r = router(`namespace.zmq.component.${component}.kv-events`)
      await shared.nc.flush()
      const p = await kv.KvEventPublisher.create({
        namespace: 'zmq',
        component,
        kvBlockSize: 16,
        workerId: 15n,
        nats: shared.nc,
        logger: quiet,
        zmq: { endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint!, onLoss, replayTimeoutMs: 30_000 },
      })
      try {
        await sim.heartbeat()
        await settle(p.source!, sim)
        await sim.run(30)
        await settle(p.source!, sim)
        const k = sim.nextSeq
        sim.drop([k, k + 1n, k + 2n])
        sim.pauseReplay()
        await sim.run(4) // k + 3 reveals the gap; the replay request waits at the engine
        await waitFor(() => p.source!.trackers()[0]!.replaying, 'the gap replay to start')
        await sim.run(25) // more than the engine's buffer holds: k .. k + 2 roll out of it
        await waitFor(() => p.source!.trackers()[0]!.lastLive === sim.nextSeq - 1n, 'the live messages to be held')
        sim.resumeReplay()
        await settle(p.source!, sim)
        await delivered(p, r)
        t.is(p.stats().source!.lost, 3n)
        const index = new Set(blocksOf(r.index, 15n, 0))
        const held = sim.held()
        if (onLoss === 'keep') {
          t.deepEqual(
            [...held].filter((h) => sim.announced().has(h) && !index.has(h)),
            [],
            'every held block that was announced is indexed',
          )
        } else {
          t.is(p.stats().source!.resets, 1n)
          t.deepEqual(
            [...index].filter((h) => !held.has(h)),
            [],
            'the router holds no block the engine does not hold',
          )
        }
        t.true(index.size > 0)
      } finally {
        await p.close()
        r.stop()
        sim.close()
      }
    },
  )
}

test(`[${impl}] zmq option errors name the option, and nothing is left open`, async (t) => {
  const base = { namespace: 'zmq', component: 'bad', kvBlockSize: 16, nats: shared.nc, logger: quiet }
  await t.throwsAsync(kv.KvEventPublisher.create({ ...base, zmq: 5 as never }), { instanceOf: TypeError, message: /zmq/ })
  await t.throwsAsync(kv.KvEventPublisher.create({ ...base, zmq: {} }), { message: /zmq\.|endpoint/ })
  await t.throwsAsync(kv.KvEventPublisher.create({ ...base, zmq: { endpoint: 'tcp://127.0.0.1:5557', onLoss: 'drop' as never } }), {
    message: /onLoss/,
  })
  t.false(shared.nc.isClosed(), 'a connection the caller passed stays open')
})
