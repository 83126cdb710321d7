// The engine simulator on its own, over real ZeroMQ sockets: the live frame layout, both replay layouts
// byte for byte, and its ground truth checked by applying everything it published (read back by replay)
// to a real Ingestor.
import test from 'ava'
import { Dealer, Subscriber } from 'zeromq'
import * as kv from '../ts/index.js'
import { EngineSimulator, type EngineSimulatorOptions, type ReplayLayout } from '../ts/sim/engine.js'
import { IngestorConsumer, sorted } from './helpers/zmq.js'

const impl = kv.implementation
const END = Buffer.alloc(8, 0xff)

function seq8(n: bigint): Buffer {
  const b = Buffer.alloc(8)
  b.writeBigUInt64BE(n)
  return b
}

/** Asks the simulator's ROUTER for everything from `from` with a raw DEALER; returns the raw replies up to the end marker. */
async function rawReplay(sim: EngineSimulator, from: bigint): Promise<Buffer[][]> {
  const d = new Dealer({ linger: 0, receiveTimeout: 10_000 })
  d.receiveHighWaterMark = 0
  d.connect(sim.replayEndpoint!)
  try {
    await d.send([Buffer.alloc(0), seq8(from)])
    const out: Buffer[][] = []
    for (;;) {
      const frames = await d.receive()
      out.push(frames)
      if (frames.some((f) => f.equals(END))) return out
    }
  } finally {
    d.close()
  }
}

async function withSim<T>(opts: EngineSimulatorOptions, fn: (sim: EngineSimulator) => Promise<T>): Promise<T> {
  const sim = await EngineSimulator.create(opts)
  try {
    return await fn(sim)
  } finally {
    sim.close()
  }
}

test(`${impl}: live messages are [topic, seq u64 BE, batch] with seq from 0, the rank and a 16-byte publisher id`, async (t) => {
  await withSim({ topic: 'kv-events', dpRank: 3, publisherId: true, kvBlockSize: 4 }, async (sim) => {
    t.regex(sim.endpoint, /^tcp:\/\/127\.0\.0\.1:\d+$/u)
    const sub = new Subscriber({ linger: 0 })
    sub.subscribe('')
    sub.connect(sim.endpoint)
    try {
      const got: Buffer[][] = []
      const reading = (async () => {
        while (got.length < 20) got.push(await sub.receive())
      })()
      // slow joiner: keep publishing until the subscription is in place
      const deadline = Date.now() + 20_000
      while (got.length === 0 && Date.now() < deadline) {
        await sim.step()
        await new Promise((r) => setTimeout(r, 10))
      }
      const first = got[0]![1]!.readBigUInt64BE(0)
      while (got.length < 20) {
        await sim.step()
        await new Promise((r) => setTimeout(r, 1))
      }
      await reading
      got.forEach((frames, i) => {
        t.is(frames.length, 3)
        t.deepEqual(frames[0], Buffer.from('kv-events'))
        t.is(frames[1]!.length, 8)
        t.is(frames[1]!.readBigUInt64BE(0), first + BigInt(i))
        const peek = kv.peekBatch(frames[2]!)
        t.is(peek?.dpRank, 3)
        t.deepEqual(Buffer.from(peek!.publisherId!), sim.publisherId)
        const batch = kv.decodeEngineBatch(frames[2]!, 4)
        t.true(Object.values(batch.rejected).every((n) => n === 0))
      })
      // the seq counts from 0: what was published before the subscription arrived took seqs 0..first-1
      t.true(first < sim.nextSeq)
    } finally {
      sub.close()
    }
  })
})

for (const layout of ['legacy', 'topic'] as ReplayLayout[]) {
  test(`${impl}: replay in the ${layout} layout, byte for byte, and the ground truth equals an index fed with everything`, async (t) => {
    await withSim(
      {
        replayEndpoint: 'tcp://127.0.0.1:0',
        replayLayout: layout,
        topic: 'kv',
        capacityBlocks: 64,
        clearRate: 0.01,
        encoding: 'mixed',
        seed: 11,
      },
      async (sim) => {
        let cleared = 0
        let removed = 0
        for (let i = 0; i < 300; i++) {
          const r = await sim.step()
          cleared += Number(r.cleared)
          removed += r.removedBlocks
        }
        t.true(removed > 0, 'the workload evicts')
        t.true(cleared > 0, 'the workload clears now and then')
        const replies = await rawReplay(sim, 0n)
        const end = replies.pop()!
        t.deepEqual(
          end,
          layout === 'legacy' ? [Buffer.alloc(0), END, Buffer.alloc(0)] : [Buffer.alloc(0), Buffer.alloc(0), END, Buffer.alloc(0)],
        )
        t.is(replies.length, 300)
        const consumer = new IngestorConsumer()
        for (const [i, frames] of replies.entries()) {
          t.is(frames.length, layout === 'legacy' ? 3 : 4)
          t.is(frames[0]!.length, 0)
          if (layout === 'topic') t.deepEqual(frames[1], Buffer.from('kv'))
          const [seq, payload] = frames.slice(-2) as [Buffer, Buffer]
          t.deepEqual(seq, seq8(BigInt(i)))
          await consumer.ingest(payload)
        }
        const c = consumer.ingestor.counters()
        t.is(c.blocks_stored > 0n, true)
        // every store chains on a block the engine holds: the index never misses a parent
        t.is(consumer.ingestor.localIndexer!.counters().parent_not_found, 0n)
        t.deepEqual(consumer.blocks(0), sorted(sim.held()))
        // nothing was dropped: what a live consumer would index is what the engine holds
        t.deepEqual(sorted(sim.announced()), sorted(sim.held()))

        // a request within the buffer starts there
        const tail = await rawReplay(sim, 295n)
        t.deepEqual(
          tail.slice(0, -1).map((f) => f.at(-2)!.readBigUInt64BE(0)),
          [295n, 296n, 297n, 298n, 299n],
        )
      },
    )
  })
}

test(`${impl}: the replay buffer is bounded: a request from 0 starts at the oldest batch kept`, async (t) => {
  await withSim({ replayEndpoint: 'tcp://127.0.0.1:0', replayBufferSize: 50 }, async (sim) => {
    await sim.run(120)
    sim.drop(120, { replay: false })
    await sim.run(3)
    const seqs = (await rawReplay(sim, 0n)).slice(0, -1).map((f) => f.at(-2)!.readBigUInt64BE(0))
    // the last 50 buffered: 120 was never buffered (vLLM consumes a seq without buffering when a send fails)
    t.deepEqual(seqs, [...Array.from({ length: 48 }, (_, i) => BigInt(72 + i)), 121n, 122n])
  })
})

test(`${impl}: restart: seq back to 0, a new publisher id and epoch, an empty replay buffer, nothing held`, async (t) => {
  await withSim({ replayEndpoint: 'tcp://127.0.0.1:0', publisherId: true, topicEpoch: true, topic: 'kv' }, async (sim) => {
    await sim.run(30)
    const id = Buffer.from(sim.publisherId!)
    const topic = Buffer.from(sim.topic)
    t.true(topic.toString('latin1').startsWith('kv\x00sgl-kv-epoch='))
    t.true(sim.held().size > 0)
    await sim.restart()
    t.is(sim.nextSeq, 0n)
    t.is(sim.held().size, 0)
    t.false(id.equals(sim.publisherId!))
    t.false(topic.equals(sim.topic))
    t.deepEqual(await rawReplay(sim, 0n), [[Buffer.alloc(0), Buffer.alloc(0), END, Buffer.alloc(0)]])
    await sim.step()
    t.is(sim.nextSeq, 1n)
  })
})

test(`${impl}: simulator options are checked, naming the option`, async (t) => {
  await t.throwsAsync(EngineSimulator.create({ kvBlockSize: 0 }), { instanceOf: RangeError, message: /kvBlockSize/ })
  await t.throwsAsync(EngineSimulator.create({ replayLayout: 'v3' as ReplayLayout }), { instanceOf: RangeError, message: /replayLayout/ })
  await t.throwsAsync(EngineSimulator.create({ dpRank: -1 }), { instanceOf: RangeError, message: /dpRank/ })
  await t.throwsAsync(EngineSimulator.create({ encoding: 'json' as 'map' }), { instanceOf: RangeError, message: /encoding/ })
})
