// The publisher's waiting calls and close() (SPEC 8), each test against its own nats-server, stopped with
// SIGSTOP (nothing is ever confirmed, room never frees) or killed: calls beyond maxWaiting reject naming the
// option; close() with 100,000 waiting calls keeps closeTimeoutMs (the calls it could not accept are
// rejected in order and counted), also when the waiting call is the ZMQ source's; and close() still accepts
// waiting calls as room frees before its deadline.
import test from 'ava'
import * as kv from '../ts/index.js'
import { EngineSimulator } from '../ts/sim/engine.js'
import { engine, hex } from './helpers/fixtures.js'
import { startNatsServer, stopProcess, type NatsServer } from './helpers/nats-server.js'
import { quiet, sleep, waitFor } from './helpers/publishing.js'

const impl = kv.implementation

/** A fixture engine batch that emits events, and its block size. */
const batch = (() => {
  const c = engine.find((c) => !('error' in c.expect) && c.expect.events.length > 0)!
  return { payload: hex(c.hex), kvBlockSize: c.kv_block_size }
})()

/** Settles of calls by index: accepted ones in the order they were accepted, rejected ones with their error. */
function track(calls: Promise<unknown>[]) {
  const accepted: number[] = []
  const rejected: { i: number; message: string }[] = []
  calls.forEach(
    (c, i) =>
      void c.then(
        () => accepted.push(i),
        (err: Error) => rejected.push({ i, message: err.message }),
      ),
  )
  return { accepted, rejected }
}

/** A private nats-server that the test can freeze (SIGSTOP) and resume; resume() is safe to call twice. */
async function stoppableServer(): Promise<{ nats: NatsServer; stop: () => void; resume: () => void }> {
  const nats = await startNatsServer()
  const pid = nats.pid!
  let stopped = false
  return {
    nats,
    stop: () => {
      stopProcess(pid)
      stopped = true
    },
    resume: () => {
      if (stopped) process.kill(pid, 'SIGCONT')
      stopped = false
    },
  }
}

test.serial(`[${impl}] maxWaiting: calls beyond it reject at once naming the option; the waiting ones are accepted in order`, async (t) => {
  const { nats, resume, stop } = await stoppableServer()
  try {
    const p = await kv.KvEventPublisher.create({
      namespace: 'close',
      component: 'w',
      kvBlockSize: 1,
      workerId: 1n,
      maxPending: 8,
      maxWaiting: 20,
      nats: { servers: nats.url },
      logger: quiet,
    })
    stop()
    const calls: Promise<kv.IngestResult>[] = []
    for (let i = 0; i < 30; i++) calls.push(p.publishStored({ tokenIds: [i], blockHashes: [BigInt(i + 1)] }))
    const { accepted, rejected } = track(calls)
    await sleep(0)
    // 8 accepted at once (one event each), 20 waiting, 2 rejected
    t.deepEqual(accepted, [0, 1, 2, 3, 4, 5, 6, 7])
    t.deepEqual(
      rejected.map((r) => r.i),
      [28, 29],
    )
    for (const r of rejected) t.regex(r.message, /maxWaiting = 20/)
    t.is(p.stats().waiting, 20)
    t.is(p.stats().waitingRejected, 2)
    resume()
    await Promise.allSettled(calls)
    t.deepEqual(
      accepted,
      Array.from({ length: 28 }, (_, i) => i),
      'the waiting calls are accepted in call order',
    )
    t.true(await p.flush(30_000))
    await p.close()
    const s = p.stats()
    t.is(s.sink.published, 28)
    t.is(s.droppedAtClose, 0)
  } finally {
    resume()
    await nats.stop()
  }
})

test.serial(
  `[${impl}] close() with 100,000 un-awaited ingest calls and a stopped server keeps closeTimeoutMs: the rest are rejected in order and counted`,
  async (t) => {
    const { nats, resume, stop } = await stoppableServer()
    const N = 100_000
    const maxPending = 1000
    const closeTimeoutMs = 1500
    try {
      const p = await kv.KvEventPublisher.create({
        namespace: 'close',
        component: 'many',
        kvBlockSize: batch.kvBlockSize,
        workerId: 2n,
        maxPending,
        maxWaiting: N,
        closeTimeoutMs,
        nats: { servers: nats.url },
        logger: quiet,
      })
      stop()
      const calls: Promise<kv.IngestResult>[] = []
      for (let i = 0; i < N; i++) calls.push(p.ingest(batch.payload))
      const { accepted, rejected } = track(calls)
      await sleep(0)
      const acceptedBeforeClose = accepted.length
      const waitingBeforeClose = p.stats().waiting
      t.true(acceptedBeforeClose > 0 && acceptedBeforeClose <= maxPending, `accepted before close: ${acceptedBeforeClose}`)
      t.is(acceptedBeforeClose + waitingBeforeClose, N)

      const started = performance.now()
      let atClose: kv.PublisherStats | null = null
      await p.close().then(() => {
        atClose = p.stats()
      })
      const closeMs = performance.now() - started
      await sleep(0)
      const s = atClose! as kv.PublisherStats
      t.log(
        `close took ${closeMs.toFixed(0)} ms (closeTimeoutMs ${closeTimeoutMs}); ${accepted.length} accepted, ${rejected.length} rejected`,
      )
      t.log(JSON.stringify(s.sink))
      // the close deadline fired: close() resolved with the calls it could not accept rejected and counted
      t.is(s.waiting, 0)
      t.is(s.droppedAtClose, N - accepted.length)
      t.is(accepted.length, acceptedBeforeClose, 'no room freed while the server was stopped: nothing more was accepted')
      t.is(accepted.length + rejected.length, N, 'every call settled by the time close() resolved')
      t.deepEqual(
        accepted,
        Array.from({ length: accepted.length }, (_, i) => i),
        'accepted calls are a prefix, in call order',
      )
      t.true(
        rejected.every((r, k) => r.i === accepted.length + k),
        'rejected calls are the rest, rejected in call order',
      )
      t.regex(rejected[0]!.message, /closeTimeoutMs \(1500 ms\)/)
      // what was accepted is counted: never confirmed (the server never answered), so undelivered
      const emitted = Number(s.emitted.stored + s.emitted.removed + s.emitted.cleared)
      t.is(s.sink.queueDepth, 0)
      t.is(s.sink.published + s.sink.undelivered, emitted)
      t.is(s.sink.undeliveredByReason.unconfirmed, emitted)
      // generous: close must not scale with the waiting calls (100,000 ingests without the bound)
      t.true(closeMs < closeTimeoutMs + 20_000, `close took ${closeMs} ms`)
    } finally {
      resume()
      await nats.stop()
    }
  },
)

test.serial(`[${impl}] close() accepts waiting calls in order as room frees before its deadline`, async (t) => {
  const { nats, resume, stop } = await stoppableServer()
  try {
    const p = await kv.KvEventPublisher.create({
      namespace: 'close',
      component: 'drain',
      kvBlockSize: 1,
      workerId: 3n,
      maxPending: 16,
      maxWaiting: 5000,
      closeTimeoutMs: 60_000,
      nats: { servers: nats.url },
      logger: quiet,
    })
    stop()
    const calls: Promise<kv.IngestResult>[] = []
    for (let i = 0; i < 5000; i++) calls.push(p.publishStored({ tokenIds: [i], blockHashes: [BigInt(i + 1)] }))
    const { accepted, rejected } = track(calls)
    const closing = p.close()
    await waitFor(() => p.stats().waiting > 0 && accepted.length === 16, 'the first calls to be accepted')
    resume()
    await closing
    t.is(rejected.length, 0)
    t.deepEqual(
      accepted,
      Array.from({ length: 5000 }, (_, i) => i),
    )
    const s = p.stats()
    t.is(s.droppedAtClose, 0)
    t.is(s.sink.published, 5000)
    t.is(s.sink.undelivered, 0)
  } finally {
    resume()
    await nats.stop()
  }
})

test.serial(
  `[${impl}] close() with 100,000 un-awaited ingest calls and a killed server: held events beyond the reconnect buffer are dropped, every call and event counted`,
  async (t) => {
    const nats = await startNatsServer()
    const N = 100_000
    try {
      const p = await kv.KvEventPublisher.create({
        namespace: 'close',
        component: 'down',
        kvBlockSize: batch.kvBlockSize,
        workerId: 4n,
        maxPending: 1000,
        maxWaiting: N,
        reconnectBufferBytes: 64 * 1024,
        closeTimeoutMs: 1500,
        nats: { servers: nats.url, reconnectTimeWaitMs: 100 },
        logger: quiet,
      })
      await nats.kill('SIGKILL')
      await sleep(200)
      const calls: Promise<kv.IngestResult>[] = []
      for (let i = 0; i < N; i++) calls.push(p.ingest(batch.payload))
      const { accepted, rejected } = track(calls)
      await p.close()
      await sleep(0)
      const s = p.stats()
      t.log(`${accepted.length} accepted, ${rejected.length} rejected at close;`, JSON.stringify(s.sink))
      t.is(accepted.length + rejected.length, N)
      t.is(s.droppedAtClose, rejected.length)
      t.deepEqual(
        accepted,
        Array.from({ length: accepted.length }, (_, i) => i),
      )
      t.true(rejected.every((r, k) => r.i === accepted.length + k))
      const emitted = Number(s.emitted.stored + s.emitted.removed + s.emitted.cleared)
      t.is(s.sink.queueDepth, 0)
      t.is(s.sink.published, 0)
      t.is(s.sink.published + s.sink.undelivered, emitted)
      t.true(s.sink.undeliveredByReason.dropped > 0, 'the reconnect buffer overflowed')
    } finally {
      await nats.stop()
    }
  },
)

test.serial(`[${impl}] close() with the ZMQ source's call waiting for room and a stopped server still keeps closeTimeoutMs`, async (t) => {
  const { nats, stop, resume } = await stoppableServer()
  const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', seed: 5 })
  try {
    const p = await kv.KvEventPublisher.create({
      namespace: 'close',
      component: 'zmq',
      kvBlockSize: sim.kvBlockSize,
      workerId: 5n,
      maxPending: 8,
      closeTimeoutMs: 1000,
      nats: { servers: nats.url },
      logger: quiet,
      zmq: { endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint! },
    })
    stop()
    await sim.run(200)
    // the source's call waits for room that never frees (nothing is confirmed while the server is stopped)
    await waitFor(() => p.stats().waiting === 1, "the source's call to wait")
    let atClose: kv.PublisherStats | null = null
    await p.close().then(() => {
      atClose = p.stats()
    })
    const s = atClose! as kv.PublisherStats
    t.log(JSON.stringify({ droppedAtClose: s.droppedAtClose, sink: s.sink }))
    t.is(s.waiting, 0)
    t.is(s.droppedAtClose, 1, "the source's call was rejected when the deadline passed")
    const emitted = Number(s.emitted.stored + s.emitted.removed + s.emitted.cleared)
    t.is(s.sink.queueDepth, 0)
    t.is(s.sink.published + s.sink.undelivered, emitted)
  } finally {
    resume()
    sim.close()
    await nats.stop()
  }
})
