// Faults (SPEC 8), each against its own real nats-server: the server is killed and
// restarted on the same port and store while 20,000 events are in flight (JetStream mode, and event-plane
// mode with a stream recording what the server received); and, deterministically, a
// JetStream publish whose ack is lost lands after later events (a fault-injecting wrapper around the real
// client's publish), which the sink must detect from the acks and repair.
import test from 'ava'
import { jetstream, jetstreamManager, StorageType, type PubAck } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import * as kv from '../ts/index.js'
import { RateLimitedLog } from '../ts/util/log.js'
import { JetStreamSink, type PublishFn } from '../ts/transport/sinks/jetstream.js'
import { readEnvelope } from './helpers/fixtures.js'
import { startNatsServer } from './helpers/nats-server.js'
import { assertHoldingsEqual, holdings, manualOps, quiet, readStream, sleep, waitFor, type ManualOp } from './helpers/publishing.js'

const impl = kv.implementation
const EVENTS = 20_000

function call(p: kv.KvEventPublisher, op: ManualOp): Promise<kv.IngestResult> {
  switch (op.kind) {
    case 'stored':
      return p.publishStored({ tokenIds: op.tokenIds, blockHashes: op.blockHashes, parentHash: op.parentHash, dpRank: op.dpRank })
    case 'removed':
      return p.publishRemoved(op.blockHashes, op.dpRank)
    case 'cleared':
      return p.publishCleared(op.dpRank)
  }
}

/** Applies a stream's RouterEvent JSON in stream order to a fresh index, as a Dynamo router would. */
function applyInOrder(messages: { data: Uint8Array }[]): kv.RadixIndex {
  const index = new kv.RadixIndex()
  for (const m of messages) index.applyEncoded(m.data, 'json')
  return index
}

test.serial(
  `[${impl}] JetStream: nats-server killed and restarted under 20,000 events; the stream applied in order equals the local index`,
  async (t) => {
    const nats = await startNatsServer()
    let observer: NatsConnection | null = null
    try {
      const p = await kv.KvEventPublisher.create({
        namespace: 'fault',
        component: 'js',
        kvBlockSize: 2,
        workerId: 0xabcdef0123456789n,
        mode: 'jetstream',
        localIndexer: true,
        maxPending: 4000,
        nats: { servers: nats.url, reconnectTimeWaitMs: 100 },
        jetstream: { ackTimeoutMs: 1000 },
        closeTimeoutMs: 60_000,
        logger: quiet,
      })
      let accepted = 0
      let killed = false
      const killer = (async () => {
        await waitFor(() => accepted >= 6000, '6000 accepted events', 60_000)
        await nats.kill('SIGKILL')
        killed = true
        await sleep(300)
        await nats.restart()
      })()
      // two ranks, stores chained to earlier stores, removes, and a clear every 5000 calls
      for (const op of manualOps(7, EVENTS, 2, 2, 5000)) {
        await call(p, op)
        accepted++
      }
      await killer
      t.true(killed)
      t.true(await p.flush(60_000), 'every accepted event is acknowledged after the restart')
      const stats = p.stats()
      await p.close()

      observer = await connect({ servers: nats.url })
      const messages = await readStream(observer, p.streamName!)
      const emitted = Number(stats.emitted.stored + stats.emitted.removed + stats.emitted.cleared)
      t.log(`emitted ${emitted}, stream holds ${messages.length}; sink`, JSON.stringify(stats.sink))
      // every stored message is accounted for: a fresh ack, or the duplicate ack of a retry whose first try had landed
      t.is(messages.length, stats.sink.published + stats.sink.duplicates)
      t.is(messages.length, emitted + stats.sink.republished)
      t.true(stats.sink.retries > 0, 'the outage caused retries')
      t.is(stats.sink.publishErrors, 0)
      assertHoldingsEqual(t, holdings(applyInOrder(messages).dump()), holdings(p.localIndexer!.dump()), 'router index vs local index')
    } finally {
      await observer?.close()
      await nats.stop()
    }
  },
)

test.serial(`[${impl}] JetStream: a retried publish that lands after later events is detected from the acks and repaired`, async (t) => {
  const nats = await startNatsServer()
  const nc = await connect({ servers: nats.url })
  try {
    const js = jetstream(nc)
    const real: PublishFn = (subject, data, o) => js.publish(subject, data, { ...o, retries: 0 })
    let acked = 0
    const held = new Set<string>()
    // Event k's first attempt is held back until 5 later events were acked, then really published (it lands
    // after them) and reported as failed, as when an ack is lost in a disconnect: the sink retries with the
    // same message id and gets a duplicate ack carrying the late sequence.
    const faulty =
      (victims: Set<bigint>): PublishFn =>
      async (subject, data, o) => {
        const eventId = BigInt(o.msgID.split('.')[3]!)
        if (victims.has(eventId) && !held.has(o.msgID) && o.msgID.split('.')[2]!.indexOf('r') < 0) {
          held.add(o.msgID)
          const target = acked + 5
          await waitFor(() => acked >= target, 'later acks', 10_000)
          await real(subject, data, o)
          throw new Error('simulated lost ack')
        }
        const ack: PubAck = await real(subject, data, o)
        acked++
        return ack
      }
    const stream = kv.jetstreamStreamName('repair', 'c')
    const ing = new kv.Ingestor({ kvBlockSize: 2, workerId: 5n, mode: 'jetstream', localIndexer: true })
    const sink = await JetStreamSink.create(nc, stream, 3600, 5n, new RateLimitedLog(quiet), {
      publish: faulty(new Set([3n])),
      ackTimeoutMs: 2000,
    })
    const send = (r: kv.IngestResult) => r.payloads.length > 0 && sink.send(r.payloads, r.dpRank!, r.firstEventId!)
    // Event 3 stores X and event 4 removes it: landing out of order would leave X on a router.
    for (let i = 0; i < 3; i++) send(ing.stored({ tokenIds: [i, i], blockHashes: [BigInt(100 + i)] }))
    send(ing.stored({ tokenIds: [9, 9], blockHashes: [0xdead_beef_0000_0001n] })) // id 3
    send(ing.removed([0xdead_beef_0000_0001n])) // id 4
    for (const op of manualOps(11, 60, 2)) {
      if (op.kind === 'stored') send(ing.stored({ tokenIds: op.tokenIds, blockHashes: op.blockHashes, parentHash: op.parentHash }))
      else if (op.kind === 'removed') send(ing.removed(op.blockHashes))
    }
    t.true(await sink.flush(30_000))
    const s = sink.stats()
    t.log(JSON.stringify(s))
    t.is(s.repairs, 1)
    t.is(s.duplicates, 1, 'the retry of the held event was acked as a duplicate')
    t.true(s.republished >= 6, 'the repair re-published at least the held event and the 5 that landed before it')
    const messages = await readStream(nc, stream)
    // without the repair the stream would leave 0xdeadbeef00000001 stored
    const naive = new kv.RadixIndex()
    for (const m of messages.slice(0, messages.length - s.republished)) naive.applyEncoded(m.data, 'json')
    t.notDeepEqual(holdings(naive.dump()), holdings(ing.localIndexer!.dump()), 'the fault really reordered the stream')
    assertHoldingsEqual(t, holdings(applyInOrder(messages).dump()), holdings(ing.localIndexer!.dump()), 'repaired stream vs local index')
    const republishedIds = messages.map((m) => m.msgId!).filter((id) => id.split('.')[2]!.includes('r'))
    t.is(republishedIds.length, s.republished)
    await sink.close(1000)
    const jsm = await jetstreamManager(nc)
    t.is((await jsm.streams.info(stream)).state.messages, messages.length)
  } finally {
    await nc.close()
    await nats.stop()
  }
})

test.serial(
  `[${impl}] event plane: nats-server SIGKILLed and restarted mid-stream; published <= what the server stored <= published + undelivered = accepted`,
  async (t) => {
    const nats = await startNatsServer()
    const subject = 'namespace.fault.component.ep.kv-events'
    // The record of what the server received: a stream capturing the subject, in a file store that
    // survives the kill. A subscriber would not do: it is disconnected by the same kill, and loses what
    // the server had received but not yet written to it.
    const admin = await connect({ servers: nats.url })
    await (await jetstreamManager(admin)).streams.add({ name: 'CAPTURE', subjects: [subject], storage: StorageType.File })
    await admin.close()
    let observer: NatsConnection | null = null
    try {
      const p = await kv.KvEventPublisher.create({
        namespace: 'fault',
        component: 'ep',
        kvBlockSize: 2,
        workerId: 3n,
        nats: { servers: nats.url, reconnectTimeWaitMs: 100 },
        reconnectBufferBytes: 64 * 1024,
        closeTimeoutMs: 60_000,
        logger: quiet,
      })
      let accepted = 0
      let publishedInOutage = -1
      const killer = (async () => {
        await waitFor(() => accepted >= 6000, '6000 accepted events', 60_000)
        await nats.kill('SIGKILL')
        await sleep(1000)
        // nothing can be confirmed while the server is down
        publishedInOutage = p.stats().sink.published
        await nats.restart()
      })()
      for (const op of manualOps(3, EVENTS, 2, 1)) {
        // the last 2,000 events go out once the publisher is back (a confirmation after the restart),
        // however slow the machine is to restart the server and reconnect
        if (accepted === EVENTS - 2000) {
          await waitFor(() => publishedInOutage >= 0, 'the restart', 60_000)
          await waitFor(() => p.stats().sink.published > publishedInOutage, 'a confirmation after the restart', 60_000)
        }
        await call(p, op)
        accepted++
        // keep publishing through the outage at a pace the reconnect buffer cannot absorb
        if (accepted % 200 === 0) await sleep(accepted > 6000 && publishedInOutage < 0 ? 5 : 0)
      }
      await killer
      t.true(await p.flush(60_000), 'everything accepted after the restart is confirmed or counted')
      await p.close()
      const stats = p.stats()
      const sink = stats.sink
      const emitted = Number(stats.emitted.stored + stats.emitted.removed + stats.emitted.cleared)

      observer = await connect({ servers: nats.url })
      const arrived = (await readStream(observer, 'CAPTURE')).map((m) => kv.decodeRouterEvent(readEnvelope(m.data).payload).event.eventId)
      t.log(`accepted ${accepted} calls, ${emitted} events; the server stored ${arrived.length}; sink`, JSON.stringify(sink))
      t.is(emitted, accepted, 'one event per call')
      t.is(sink.queueDepth, 0)
      t.true(sink.published <= arrived.length, 'nothing counts as published that the server did not receive')
      t.true(arrived.length <= sink.published + sink.undelivered, 'nothing arrives that was not published or counted undelivered')
      t.is(sink.published + sink.undelivered, emitted, 'every accepted event is published or counted undelivered')
      const reasons = sink.undeliveredByReason
      t.is(reasons.unconfirmed + reasons.dropped + reasons.refused, sink.undelivered)
      t.true(reasons.dropped > 0, 'what exceeded the reconnect buffer is counted as dropped')
      t.is(reasons.refused, 0)
      t.is(sink.publishErrors, 0)
      t.true(arrived.length < emitted, 'core NATS lost events in the outage')
      // nothing retried out of order, nothing twice, and the events after the restart arrived
      t.true(arrived.every((id, i) => i === 0 || id > arrived[i - 1]!))
      t.is(arrived.at(-1), BigInt(emitted - 1))
    } finally {
      await observer?.close()
      await nats.stop()
    }
  },
)
