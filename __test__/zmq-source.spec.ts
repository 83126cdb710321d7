// The ZeroMQ source (SPEC 2.1) over real sockets on loopback, fed by the engine simulator, delivering to a
// real Ingestor with its local indexer. Each test compares the index with the simulator's ground truth:
// the blocks the engine holds (and, after a loss, what it announced on the live socket).
import { once } from 'node:events'
import { runInNewContext } from 'node:vm'
import { setFlagsFromString } from 'node:v8'
import test, { type ExecutionContext } from 'ava'
import { Subscriber } from 'zeromq'
import * as kv from '../ts/index.js'
import { EngineSimulator, type EngineSimulatorOptions, type ReplayLayout } from '../ts/sim/engine.js'
import { RECEIVE_BACKOFF_MS, ZmqSource, type ZmqSourceOptions, type ZmqSourceStop } from '../ts/transport/sources/zmq.js'
import { capture as captureLogger, waitFor } from './helpers/publishing.js'
import { IngestorConsumer, driveCaughtUp, freePorts, settle, sorted, waitCaughtUp, warmUp } from './helpers/zmq.js'

const impl = kv.implementation
const REPLAY = 'tcp://127.0.0.1:0'

/** Opens what a test needs and closes it whatever happens. */
async function setup<T>(
  sims: EngineSimulatorOptions[],
  source: (sims: EngineSimulator[]) => ZmqSourceOptions,
  consumerOpts: ConstructorParameters<typeof IngestorConsumer>[0],
  fn: (ctx: {
    sims: EngineSimulator[]
    source: ZmqSource
    consumer: IngestorConsumer
    log: ReturnType<typeof captureLogger>
  }) => Promise<T>,
): Promise<T> {
  const open: EngineSimulator[] = []
  let src: ZmqSource | null = null
  try {
    for (const o of sims) open.push(await EngineSimulator.create({ seed: 1 + open.length, ...o }))
    const consumer = new IngestorConsumer(consumerOpts)
    const log = captureLogger()
    src = await ZmqSource.create({ logger: log, ...source(open) }, consumer)
    return await fn({ sims: open, source: src, consumer, log })
  } finally {
    await src?.close()
    for (const s of open) s.close()
  }
}

function one(sim: EngineSimulator, extra: Partial<ZmqSourceOptions> = {}): ZmqSourceOptions {
  const o: ZmqSourceOptions = { endpoint: sim.endpoint, ...extra }
  if (sim.replayEndpoint) o.replayEndpoint = sim.replayEndpoint
  return o
}

function expectNoLoss(t: ExecutionContext, source: ZmqSource): void {
  const st = source.stats()
  t.is(st.lost, 0n)
  t.is(st.resets, 0n)
}

function tracker(source: ZmqSource, dpRank = 0) {
  return source.trackers().find((t) => t.dpRank === dpRank)!
}

test(`${impl}: normal flow: the index equals the engine's blocks (first contact replays from 0)`, async (t) => {
  await setup(
    [{ replayEndpoint: REPLAY, encoding: 'mixed', publisherId: true, capacityBlocks: 128, clearRate: 0.005 }],
    ([sim]) => one(sim!),
    {},
    async ({ sims: [sim], source, consumer }) => {
      // no warm-up: what the PUB dropped before the subscription arrived comes back by replay from 0
      await sim!.run(300)
      await warmUp(source, sim!)
      await waitCaughtUp(source, sim!)
      const st = source.stats()
      t.deepEqual(consumer.blocks(0), sorted(sim!.held()))
      t.true(consumer.blocks(0).length > 0)
      t.is(st.lost, 0n)
      t.is(st.restarts, 0n)
      t.is(st.resets, 0n)
      t.is(st.ingested, sim!.nextSeq, 'every batch applied exactly once')
      t.true(st.replays >= 1n)
    },
  )
})

for (const layout of ['legacy', 'topic'] as ReplayLayout[]) {
  test(`${impl}: gap: dropped seqs are replayed (${layout} layout) and the index equals ground truth`, async (t) => {
    await setup(
      [{ replayEndpoint: REPLAY, replayLayout: layout, topic: 'kv@engine' }],
      ([sim]) => one(sim!, { topic: 'kv@' }),
      {},
      async ({ sims: [sim], source, consumer }) => {
        await warmUp(source, sim!)
        await sim!.run(40)
        await waitCaughtUp(source, sim!)
        const before = source.stats()
        const k = sim!.nextSeq
        sim!.drop([k + 2n, k + 3n, k + 7n])
        await sim!.run(40)
        await waitCaughtUp(source, sim!)
        const st = source.stats()
        t.deepEqual(consumer.blocks(0), sorted(sim!.held()))
        t.true(st.gaps - before.gaps >= 1n)
        t.true(st.recovered - before.recovered >= 3n)
        t.is(st.lost, 0n)
        t.is(st.ingested, sim!.nextSeq, 'every batch applied exactly once')
      },
    )
  })
}

for (const onLoss of ['keep', 'reset'] as const) {
  test(`${impl}: replay buffer rolled over: the loss is counted, onLoss '${onLoss}'`, async (t) => {
    await setup(
      [{ replayEndpoint: REPLAY, replayBufferSize: 20, capacityBlocks: 96 }],
      ([sim]) => one(sim!, { onLoss, replayTimeoutMs: 30_000 }),
      {},
      async ({ sims: [sim], source, consumer, log }) => {
        await warmUp(source, sim!)
        // (a first-contact replay that starts after the buffer rolled over is a loss too: let it finish first)
        await waitCaughtUp(source, sim!)
        await sim!.run(30)
        await settle(source, sim!)
        expectNoLoss(t, source)
        const k = sim!.nextSeq
        sim!.drop([k, k + 1n, k + 2n])
        sim!.pauseReplay()
        await sim!.run(4) // k + 3 reveals the gap; the replay request waits at the engine
        await waitFor(() => tracker(source).replaying && tracker(source).held >= 1, 'the gap replay to start')
        await sim!.run(25) // more than the buffer holds: k .. k + 8 roll out of it
        await waitFor(() => tracker(source).lastLive === sim!.nextSeq - 1n, 'the live messages to be held')
        sim!.resumeReplay()
        await waitCaughtUp(source, sim!)
        const st = source.stats()
        // k + 3 .. k + 8 were held live, the rest came back by replay: exactly k .. k + 2 are lost
        t.is(st.lost, 3n)
        t.true(log.lines.some((l) => l.level === 'warn' && /lost/u.test(l.msg ?? '')))
        const index = new Set(consumer.blocks(0))
        const held = sim!.held()
        if (onLoss === 'keep') {
          t.is(st.resets, 0n)
          const missing = [...held].filter((h) => sim!.announced().has(h) && !index.has(h))
          t.deepEqual(missing, [], 'every held block that was announced live is indexed')
        } else {
          t.is(st.resets, 1n)
          t.deepEqual(
            [...index].filter((h) => !held.has(h)),
            [],
            'the index holds no block the engine does not hold',
          )
        }
        t.true(index.size > 0)
      },
    )
  })
}

test(`${impl}: a replayed batch that also arrives live afterwards is applied once (duplicate)`, async (t) => {
  await setup(
    [{ replayEndpoint: REPLAY }],
    ([sim]) => one(sim!),
    {},
    async ({ sims: [sim], source, consumer }) => {
      await warmUp(source, sim!)
      await sim!.run(20)
      // live copies of what the first-contact replay applied are duplicates too: let them arrive first
      await settle(source, sim!)
      const dup0 = source.stats().duplicates
      const k = sim!.nextSeq
      sim!.drop(k + 1n)
      sim!.delay([k + 3n, k + 4n, k + 5n])
      await sim!.run(6) // k .. k + 5: live k, k + 2; the replay from k + 1 brings k + 1 .. k + 5
      await waitCaughtUp(source, sim!)
      await sim!.sendDelayed() // k + 3 .. k + 5 arrive live after they were applied from the replay
      await waitFor(() => source.stats().duplicates - dup0 >= 4n, 'four duplicates (k + 2 held, k + 3 .. k + 5 late)')
      await sim!.run(10)
      await waitCaughtUp(source, sim!)
      const st = source.stats()
      t.is(st.duplicates - dup0, 4n)
      t.is(st.restarts, 0n, 'a late live seq above lastLive is a duplicate, not a restart')
      t.is(st.ingested, sim!.nextSeq, 'every batch applied exactly once')
      t.deepEqual(consumer.blocks(0), sorted(sim!.held()))
    },
  )
})

for (const replay of [true, false]) {
  test(`${impl}: restart (seq back to 0) resets the rank, then the new stream: ground truth (${replay ? 'with' : 'without'} replay)`, async (t) => {
    await setup(
      [{ replayEndpoint: replay ? REPLAY : null, replayLayout: 'legacy' }],
      ([sim]) => one(sim!),
      {},
      async ({ sims: [sim], source, consumer }) => {
        await warmUp(source, sim!)
        await sim!.run(40)
        await waitCaughtUp(source, sim!)
        const old = sorted(sim!.held())
        t.deepEqual(consumer.blocks(0), old)
        await sim!.restart()
        await sim!.run(25)
        await waitCaughtUp(source, sim!)
        const st = source.stats()
        t.is(st.restarts, 1n)
        t.is(st.resets, 1n)
        t.deepEqual(consumer.resets, [0])
        t.deepEqual(consumer.blocks(0), sorted(sim!.held()))
        t.is(st.lost, 0n)
      },
    )
  })
}

test(`${impl}: with two ranks, restarting one leaves the other's blocks`, async (t) => {
  await setup(
    [
      { replayEndpoint: REPLAY, dpRank: 0 },
      { replayEndpoint: REPLAY, dpRank: 1 },
    ],
    (sims) => ({ endpoints: sims.map((s) => ({ endpoint: s.endpoint, replayEndpoint: s.replayEndpoint! })) }),
    { dpRanks: [0, 1] },
    async ({ sims: [a, b], source, consumer }) => {
      await warmUp(source, a!, b!)
      for (let i = 0; i < 30; i++) await Promise.all([a!.step(), b!.step()])
      await waitCaughtUp(source, a!, b!)
      const rank1 = sorted(b!.held())
      t.deepEqual(consumer.blocks(1), rank1)
      await a!.restart()
      await a!.run(20)
      await waitCaughtUp(source, a!, b!)
      t.deepEqual(consumer.blocks(0), sorted(a!.held()))
      t.deepEqual(consumer.blocks(1), rank1)
      t.deepEqual(consumer.resets, [0])
      t.is(source.stats().restarts, 1n)
    },
  )
})

for (const signal of ['publisher_id', 'topic_epoch', 'reconnect'] as const) {
  test(`${impl}: a restart whose seqs overtake the old ones is detected by ${signal}`, async (t) => {
    const simOpts: EngineSimulatorOptions = {
      replayEndpoint: REPLAY,
      publisherId: signal === 'publisher_id',
      topicEpoch: signal === 'topic_epoch',
      topic: 'kv',
    }
    await setup(
      [simOpts],
      ([sim]) => one(sim!, { topic: 'kv' }),
      {},
      async ({ sims: [sim], source, consumer, log }) => {
        await warmUp(source, sim!)
        await sim!.run(10)
        await waitCaughtUp(source, sim!)
        const last = sim!.nextSeq - 1n
        await sim!.restart({ sockets: signal === 'reconnect' })
        // the new incarnation's first seqs never arrive live: by seq alone this would look like a gap
        sim!.drop(Array.from({ length: Number(last) + 3 }, (_, i) => i))
        await sim!.run(Number(last) + 15)
        await waitCaughtUp(source, sim!)
        t.true(source.stats().restarts >= 1n)
        t.true(log.lines.some((l) => l.msg?.includes('restart') && (l.obj as { why?: string }).why === signal))
        t.deepEqual(consumer.blocks(0), sorted(sim!.held()))
      },
    )
  })
}

test(`${impl}: a silent replay endpoint times out: the loss is counted and the stream goes on`, async (t) => {
  await setup(
    [{ replayEndpoint: REPLAY }],
    ([sim]) => one(sim!, { replayTimeoutMs: 300 }),
    {},
    async ({ sims: [sim], source, consumer }) => {
      sim!.pauseReplay() // the engine never answers
      await warmUp(source, sim!) // first contact: the replay from 0 times out, the first live message is the start
      await sim!.run(10)
      await waitCaughtUp(source, sim!)
      const k = sim!.nextSeq
      sim!.drop(k + 1n)
      await sim!.run(10)
      await waitCaughtUp(source, sim!)
      const st = source.stats()
      t.is(st.replay_timeouts, 2n)
      t.is(st.lost, 1n)
      const index = new Set(consumer.blocks(0))
      t.deepEqual(
        [...sim!.held()].filter((h) => sim!.announced().has(h) && !index.has(h)),
        [],
      )
    },
  )
})

test(`${impl}: bad messages are counted by reason and the listener keeps running`, async (t) => {
  await setup(
    [{}],
    ([sim]) => one(sim!),
    {},
    async ({ sims: [sim], source, consumer, log }) => {
      await warmUp(source, sim!)
      await sim!.run(20)
      for (let i = 0; i < 3; i++) {
        await sim!.sendMalformed('frames')
        await sim!.sendMalformed('seq_length')
        await sim!.sendMalformed('garbage')
        await sim!.run(2)
      }
      await sim!.sendMalformed('junk') // 10 MiB
      await sim!.sendMalformed('junk')
      await sim!.run(20)
      await waitCaughtUp(source, sim!)
      const st = source.stats()
      t.is(st.dropped_frames, 3n)
      t.is(st.dropped_seq_length, 3n)
      t.is(st.dropped_malformed, 5n)
      // a malformed batch still takes its seq: no false gap, no restart
      t.is(st.gaps, 0n)
      t.is(st.restarts, 0n)
      t.is(st.lost, 0n)
      t.deepEqual(consumer.blocks(0), sorted(sim!.held()))
      t.true(log.lines.some((l) => l.level === 'warn' && /3 frames/u.test(l.msg ?? '')))
      // rate-limited: one line per reason here, not one per message
      t.is(log.lines.filter((l) => /malformed/u.test(l.msg ?? '')).length, 1)
    },
  )
})

// serial: alone in this process, so the heap is this test's
test.serial(`${impl}: memory stays flat over many bad messages, 10 MiB junk among them`, async (t) => {
  setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const mem = async () => {
    gc()
    await new Promise((r) => setImmediate(r)) // lets native finalizers of collected buffers run
    gc()
    const m = process.memoryUsage()
    return { js: m.heapUsed + m.external, rss: m.rss }
  }
  await setup(
    [{}],
    ([sim]) => one(sim!),
    {},
    async ({ sims: [sim], source }) => {
      await warmUp(source, sim!)
      const bad = async (n: number) => {
        for (let i = 0; i < n; i++) {
          await sim!.sendMalformed('junk')
          for (let j = 0; j < 50; j++) {
            await sim!.sendMalformed('frames')
            await sim!.sendMalformed('seq_length')
            await sim!.sendMalformed('garbage')
          }
          await sim!.heartbeat()
          await waitCaughtUp(source, sim!)
        }
      }
      await bad(10) // the allocators reach their working size
      const before = await mem()
      await bad(40) // 400 MiB of junk, 6000 small bad messages
      const after = await mem()
      const st = source.stats()
      t.is(st.dropped_malformed, 50n * 51n)
      t.is(st.dropped_frames, 50n * 50n)
      t.is(st.dropped_seq_length, 50n * 50n)
      const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`
      t.log(`JS heap + external ${mib(before.js)} -> ${mib(after.js)}, rss ${mib(before.rss)} -> ${mib(after.rss)}`)
      // nothing of a 10 MiB payload may stay referenced; rss only loosely (allocators keep freed pages)
      t.true(after.js - before.js < 16 * 2 ** 20, `heap + external grew by ${mib(after.js - before.js)}`)
      t.true(after.rss - before.rss < 128 * 2 ** 20, `rss grew by ${mib(after.rss - before.rss)}`)
    },
  )
})

test(`${impl}: two dp ranks on port and port + 1 feed one consumer; each rank's event ids run 0, 1, 2, ...`, async (t) => {
  const live = await freePorts(2)
  const replay = await freePorts(2)
  await setup(
    [0, 1].map((r) => ({ endpoint: `tcp://127.0.0.1:${live + r}`, replayEndpoint: `tcp://127.0.0.1:${replay + r}`, dpRank: r })),
    () => ({ endpoint: `tcp://127.0.0.1:${live}`, replayEndpoint: `tcp://127.0.0.1:${replay}`, dpRanks: 2 }),
    { dpRanks: [0, 1] },
    async ({ sims: [a, b], source, consumer }) => {
      t.deepEqual(source.endpoints, [`tcp://127.0.0.1:${live}`, `tcp://127.0.0.1:${live + 1}`])
      for (let i = 0; i < 50; i++) await Promise.all([a!.step(), b!.step()])
      await warmUp(source, a!, b!) // whatever the PUBs dropped before the subscriptions came comes back by replay
      await waitCaughtUp(source, a!, b!)
      for (const r of [0, 1]) {
        let next = 0n
        for (const e of consumer.emitted.filter((x) => x.dpRank === r)) {
          t.is(e.firstEventId, next)
          next += BigInt(e.count)
        }
        t.is(next, consumer.ingestor.nextEventId(r))
        t.true(next > 10n)
      }
      t.deepEqual(consumer.blocks(0), sorted(a!.held()))
      t.deepEqual(consumer.blocks(1), sorted(b!.held()))
      t.is(source.stats().ingested, a!.nextSeq + b!.nextSeq)
    },
  )
})

test(`${impl}: bind mode: two engines connecting to one bound endpoint cause no false gap or restart`, async (t) => {
  const sims: EngineSimulator[] = []
  const consumer = new IngestorConsumer({ dpRanks: [0, 1] })
  const source = await ZmqSource.create({ endpoint: 'tcp://127.0.0.1:0', bind: true, logger: captureLogger() }, consumer)
  try {
    t.regex(source.endpoints[0]!, /^tcp:\/\/127\.0\.0\.1:\d+$/u)
    for (const r of [0, 1])
      sims.push(await EngineSimulator.create({ endpoint: source.endpoints[0]!, connect: true, dpRank: r, seed: 5 + r }))
    const [a, b] = sims as [EngineSimulator, EngineSimulator]
    await warmUp(source, a, b)
    for (let i = 0; i < 60; i++) await Promise.all([a.step(), b.step()])
    await waitCaughtUp(source, a, b)
    const st = source.stats()
    t.is(st.gaps, 0n)
    t.is(st.restarts, 0n)
    t.is(st.lost, 0n)
    t.deepEqual(consumer.blocks(0), sorted(a.held()))
    t.deepEqual(consumer.blocks(1), sorted(b.held()))
  } finally {
    await source.close()
    for (const s of sims) s.close()
  }
})

/** Receive failures to inject: zeromq seals its sockets, so the state lives outside the subclass. */
const fault = { failures: 0, failedAt: [] as number[] }

/** A real SUB socket whose receive() fails on demand (the test hook for receive errors). */
class FaultySubscriber extends Subscriber {
  override async receive(): Promise<Buffer[]> {
    if (fault.failures > 0) {
      fault.failures--
      fault.failedAt.push(performance.now())
      throw Object.assign(new Error('injected receive failure'), { code: 'EFAULT' })
    }
    return super.receive()
  }
}

test(`${impl}: receive errors back off 20, 40, ..., 2560 ms; a good message resets the count; the 10th stops the source`, async (t) => {
  fault.failures = 3
  await setup(
    [{}],
    ([sim]) => one(sim!, { createSubscriber: () => new FaultySubscriber() }),
    {},
    async ({ sims: [sim], source, log }) => {
      const stops: ZmqSourceStop[] = []
      source.on('stopped', (w) => stops.push(w))
      await warmUp(source, sim!) // after 3 failures (20 + 40 + 80 ms), a good message
      t.is(source.stats().receive_errors, 3n)
      fault.failures = 10
      fault.failedAt.length = 0
      const stopped = once(source, 'stopped')
      await sim!.heartbeat() // ends the receive in progress; the next 10 fail
      const [why] = (await stopped) as [ZmqSourceStop]
      t.is(why.reason, 'receive_errors')
      t.is(fault.failedAt.length, 10, 'seven more errors would have stopped it had the count not been reset')
      const gaps = fault.failedAt.slice(1).map((at, i) => at - fault.failedAt[i]!)
      gaps.forEach((ms, i) => {
        t.true(ms >= RECEIVE_BACKOFF_MS[i]! - 2, `backoff ${i + 1}: ${ms.toFixed(1)} ms >= ${RECEIVE_BACKOFF_MS[i]}`)
        t.true(ms < RECEIVE_BACKOFF_MS[i]! + 1000, `backoff ${i + 1}: ${ms.toFixed(1)} ms`)
      })
      t.deepEqual([...RECEIVE_BACKOFF_MS], [20, 40, 80, 160, 320, 640, 1280, 2560, 2560])
      t.is(source.stats().receive_errors, 13n)
      t.true(log.lines.some((l) => l.level === 'error' && /stopped/u.test(l.msg ?? '')))
      await source.close()
      t.is(stops.length, 1, 'stopped is emitted once')
    },
  )
})

test(`${impl}: a slow consumer: the bounded queue stops reading, ZMQ drops at the engine, replay repairs it`, async (t) => {
  await setup(
    [{ replayEndpoint: REPLAY, sendHighWaterMark: 20, maxUniqueBlocks: 48, maxPrefixBlocks: 32, capacityBlocks: 1024 }],
    ([sim]) => one(sim!, { queueSize: 16, receiveHighWaterMark: 20, replayTimeoutMs: 30_000 }),
    {},
    async ({ sims: [sim], source, consumer }) => {
      await warmUp(source, sim!)
      await sim!.run(10)
      // idle and no live copy in flight: the first batch below is the next expected one, which blocks
      await settle(source, sim!)
      let release!: () => void
      consumer.gate = new Promise<void>((r) => (release = r))
      try {
        const received0 = source.stats().received
        let maxDepth = 0n
        for (let i = 0; i < 4000; i++) {
          await sim!.step()
          if (i % 100 === 0) {
            await new Promise((r) => setImmediate(r))
            const d = source.stats().queue_depth
            if (d > maxDepth) maxDepth = d
          }
        }
        await waitFor(() => consumer.inFlight === 1 && source.stats().queue_depth === 16n, 'the queue to fill')
        await new Promise((r) => setTimeout(r, 200)) // more time to (wrongly) read on
        const st = source.stats()
        t.true(maxDepth <= 16n && st.queue_depth <= 16n, 'the queue stays bounded')
        t.true(st.received - received0 <= 16n + 2n, `read ${st.received - received0} messages while the consumer was stuck`)
        t.true(st.queue_bytes > 0n)
      } finally {
        consumer.gate = null
        release()
      }
      // the engine goes on working: its next batches also reveal what ZMQ dropped at the tail
      await sim!.run(20)
      await driveCaughtUp(source, sim!)
      const end = source.stats()
      t.true(end.gaps >= 1n, 'the engine dropped at its high-water mark')
      t.is(end.lost, 0n)
      t.deepEqual(consumer.blocks(0), sorted(sim!.held()))
    },
  )
})

test(`${impl}: close() is idempotent and waits for the consumer call in flight`, async (t) => {
  await setup(
    [{}],
    ([sim]) => one(sim!),
    {},
    async ({ sims: [sim], source, consumer }) => {
      await warmUp(source, sim!)
      let release!: () => void
      consumer.gate = new Promise<void>((r) => (release = r))
      await sim!.step()
      await waitFor(() => consumer.inFlight === 1, 'a consumer call in flight')
      const stops: ZmqSourceStop[] = []
      source.on('stopped', (w) => stops.push(w))
      let closed = false
      const c1 = source.close().then(() => (closed = true))
      const c2 = source.close()
      await new Promise((r) => setImmediate(r))
      t.false(closed)
      release()
      await Promise.all([c1, c2])
      t.is(consumer.inFlight, 0)
      t.deepEqual(stops, [{ reason: 'closed' }])
      await source.close()
      t.is(stops.length, 1)
    },
  )
})

test(`${impl}: invalid options are rejected, naming the option`, async (t) => {
  const c = new IngestorConsumer()
  const bad: [ZmqSourceOptions, RegExp][] = [
    [{}, /endpoint/],
    [{ endpoint: 'tcp://a:1', endpoints: ['tcp://b:1'] }, /endpoint/],
    [{ endpoint: 'localhost:5557' }, /endpoint/],
    [{ endpoints: [] }, /endpoints/],
    [{ endpoints: [{ endpoint: 'tcp://a:1', replayEndpoint: 'x' }] }, /endpoints\[0\]\.replayEndpoint/],
    [{ endpoint: 'tcp://a:1', dpRanks: 0 }, /dpRanks/],
    [{ endpoint: 'ipc:///tmp/x', dpRanks: 2 }, /endpoint/],
    [{ endpoint: 'tcp://a:1', replayEndpoint: 'inproc://r', dpRanks: 2 }, /replayEndpoint/],
    [{ endpoint: 'tcp://a:1', onLoss: 'drop' as 'keep' }, /onLoss/],
    [{ endpoint: 'tcp://a:1', replayTimeoutMs: 0 }, /replayTimeoutMs/],
    [{ endpoint: 'tcp://a:1', maxHeld: 1.5 }, /maxHeld/],
    [{ endpoint: 'tcp://a:1', queueSize: 0 }, /queueSize/],
    [{ endpoint: 'tcp://a:1', topic: 5 as unknown as string }, /topic/],
    [{ endpoint: 'tcp://a:1', bind: 'yes' as unknown as boolean }, /bind/],
    [{ endpoint: 'tcp://a:1', logger: {} as kv.Logger }, /logger/],
  ]
  for (const [opts, re] of bad) await t.throwsAsync(ZmqSource.create(opts, c), { message: re }, JSON.stringify(opts))
  await t.throwsAsync(ZmqSource.create({ endpoint: 'tcp://127.0.0.1:1' }, {} as never), { instanceOf: TypeError, message: /consumer/ })
})
