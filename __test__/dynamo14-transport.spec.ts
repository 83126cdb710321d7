// The Dynamo 1.4+ transport on its own, fed with Dynamo 1.6.1's envelope bytes from
// fixtures/dynamo-1.6/router-wire-1.6.json: the 4 direct-ZeroMQ frames byte for byte, the endpoint-scoped
// NATS subjects, and the sink that registers a rank in a real discovery store (file store, etcd) before it
// publishes the rank's envelopes on a real ZeroMQ socket or a real nats-server. The receiving side is the
// fixture-rules router of helpers/router14.ts.
import test from 'ava'
import { mkdtempSync, promises as fs, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { connect } from '@nats-io/transport-node'
import { Etcd3 } from 'etcd3'
import { openDiscovery, publisherRecords } from '../ts/transport/discovery/index.js'
import { endpointSubject } from '../ts/index.js'
import { Dynamo14Sink } from '../ts/transport/sinks/dynamo14.js'
import { envelopeIds, ZmqPubChannel, zmqFrames } from '../ts/transport/zmq-pub.js'
import { RateLimitedLog, silentLogger } from '../ts/util/log.js'
import { eventually } from './helpers/discovery-process.js'
import { type EtcdServer, startEtcd } from './helpers/etcd-server.js'
import { fixture } from './helpers/fixtures.js'
import { startNatsServer } from './helpers/nats-server.js'
import { waitFor } from './helpers/publishing.js'
import { ChannelSubscriber, hex, listEtcd, listFileStore } from './helpers/router14.js'

interface Wire16 {
  envelope: {
    publisher_id: string
    envelope_seq0: { msgpack_hex: string }
    envelope_seq1: { msgpack_hex: string }
    kv_metrics_active_load: { publisher_id: string; envelope_msgpack_hex: string }
  }
  zmq_direct_frames: {
    example_multipart_hex_for_envelope_seq0: string[]
    live_capture_from_real_ZmqPubTransport: { frames_hex: string[]; envelope_hex: string }
    live_event_publisher: { captured_messages: { frames_hex: string[] }[] }
  }
  subjects: {
    examples: {
      namespace: string
      component: string
      endpoint: string
      kv_events_subject: string
      kv_metrics_subject: string
      endpoint_subject_prefix: string
    }[]
  }
}
const fx = fixture<Wire16>('dynamo-1.6/router-wire-1.6.json')
const buf = (h: string) => Buffer.from(h, 'hex')
const PUBLISHER = BigInt(fx.envelope.publisher_id)
const SEQ0 = buf(fx.envelope.envelope_seq0.msgpack_hex)
const SEQ1 = buf(fx.envelope.envelope_seq1.msgpack_hex)
/** A real 1.6.1 publisher's envelope: another publisher id than PUBLISHER. */
const FOREIGN = buf(fx.zmq_direct_frames.live_event_publisher.captured_messages[0]!.frames_hex[3]!).subarray(5)
const log = new RateLimitedLog(silentLogger)

const roots: string[] = []
function newRoot(): string {
  const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-wire14-'))
  roots.push(root)
  return root
}
test.after.always(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true })
})

/** The frames Dynamo 1.6.1 sent for an envelope, recomputed from the envelope alone. */
function framesOf(envelope: Buffer, topic = 'kv-events'): string[] {
  const ids = envelopeIds(envelope)
  if (ids === null) throw new Error('no ids')
  return zmqFrames(topic, ids, envelope).map(hex)
}

test('the 4 direct-ZeroMQ frames are Dynamo 1.6.1 frames byte for byte', (t) => {
  t.deepEqual(framesOf(SEQ0), fx.zmq_direct_frames.example_multipart_hex_for_envelope_seq0)
  const live = fx.zmq_direct_frames.live_capture_from_real_ZmqPubTransport
  t.deepEqual(framesOf(buf(live.envelope_hex)), live.frames_hex)
  for (const m of fx.zmq_direct_frames.live_event_publisher.captured_messages) {
    t.deepEqual(framesOf(buf(m.frames_hex[3]!).subarray(5)), m.frames_hex)
  }
  const metrics = buf(fx.envelope.kv_metrics_active_load.envelope_msgpack_hex)
  t.deepEqual(envelopeIds(metrics), { publisherId: BigInt(fx.envelope.kv_metrics_active_load.publisher_id), sequence: 0n })
  t.deepEqual(envelopeIds(SEQ1), { publisherId: PUBLISHER, sequence: 1n })
  // bytes that are not an envelope carry no ids
  t.is(envelopeIds(Buffer.alloc(0)), null)
  t.is(envelopeIds(SEQ0.subarray(0, 20)), null)
  t.is(envelopeIds(Buffer.from([0x85, 0xa3, 0x61, 0x62, 0x63])), null)
})

test('endpoint-scoped subjects are percent-encoded as Dynamo 1.6.1 writes them', (t) => {
  for (const e of fx.subjects.examples) {
    t.is(endpointSubject(e.namespace, e.component, e.endpoint, 'kv-events'), e.kv_events_subject)
    t.is(endpointSubject(e.namespace, e.component, e.endpoint, 'kv_metrics'), e.kv_metrics_subject)
  }
})

test('a channel sends only its own publisher id, in order, to a subscriber that checks every rule', async (t) => {
  const ch = await ZmqPubChannel.bind({
    topic: 'kv-events',
    publisherId: PUBLISHER,
    bindHost: '127.0.0.1',
    port: 0,
    advertiseHost: '127.0.0.1',
  })
  t.regex(ch.advertisedEndpoint, /^tcp:\/\/127\.0\.0\.1:\d+$/)
  const sub = new ChannelSubscriber({
    key: '',
    topic: 'kv-events',
    instanceId: PUBLISHER,
    transport: { kind: 'Zmq', config: { endpoint: ch.advertisedEndpoint } },
  })
  try {
    await ch.subscribed()
    t.is(ch.send([FOREIGN, SEQ0, SEQ1]), 1)
    const a = await sub.receive()
    const b = await sub.receive()
    t.deepEqual(a.frames.map(hex), fx.zmq_direct_frames.example_multipart_hex_for_envelope_seq0)
    t.is(hex(b.envelope), hex(SEQ1))
    t.is(b.sequence, 1n)
    await ch.drained()
    t.like(ch.stats(), { sent: 2, failed: 1 })
    t.true(ch.stats().subscriptions >= 1)
  } finally {
    sub.close()
    await ch.close()
  }
  t.is(ch.send([SEQ0]), 1, 'a closed channel refuses')
})

function zmqSink(discovery: Awaited<ReturnType<typeof openDiscovery>>, settleMs: number): Dynamo14Sink {
  return new Dynamo14Sink({
    namespace: 'dynamo',
    component: 'backend',
    endpoint: 'generate',
    workerId: 7n,
    publisherId: () => PUBLISHER,
    discovery,
    transport: { kind: 'zmq', bindHost: '127.0.0.1', basePort: null, advertiseHost: '127.0.0.1', settleMs },
    registerTimeoutMs: 20_000,
    log,
  })
}

test('file store: a rank is registered before its envelopes go out, held until a router subscribed, removed on close', async (t) => {
  const root = newRoot()
  const discovery = await openDiscovery({ backend: 'file', fileRoot: root }, {})
  const sink = zmqSink(discovery, 60_000)
  sink.send([SEQ0, SEQ1], 0)
  t.is(sink.pending, 2)

  t.true(await eventually(async () => (await listFileStore(root)).channels.length === 1))
  const found = await listFileStore(root)
  t.is(found.sources.length, 1)
  t.like(found.sources[0], { workerId: 7n, dpRank: 0, publisherId: PUBLISHER, recoverable: false, endpoint: 'generate' })
  const channel = found.channels[0]!
  t.is(channel.instanceId, PUBLISHER)
  t.is(channel.transport.kind, 'Zmq')
  // nothing was sent to nobody: the envelopes wait for a first subscriber
  t.is(sink.stats().published, 0)
  t.is(sink.discoveryStats().heldTotal, 2)

  const sub = new ChannelSubscriber(channel)
  try {
    const a = await sub.receive()
    const b = await sub.receive()
    t.deepEqual(a.frames.map(hex), fx.zmq_direct_frames.example_multipart_hex_for_envelope_seq0)
    t.is(hex(b.envelope), hex(SEQ1))
    await waitFor(() => sink.pending === 0, 'the sink to drain')
    t.like(sink.discoveryStats(), { ranksRegistered: 1, held: 0, heldTotal: 2, registerFailures: 0 })
    t.like(sink.stats(), { published: 2, undelivered: 0 })
    t.deepEqual(sink.channels(), [{ dpRank: 0, publisherId: PUBLISHER, eventChannel: channel.transport.config.endpoint, registered: true }])
  } finally {
    sub.close()
    await sink.close(5000)
  }
  t.deepEqual(await listFileStore(root), { sources: [], channels: [] })
})

test('without a subscriber, a registered rank sends after zmqSettleMs (frames nobody receives)', async (t) => {
  const root = newRoot()
  const discovery = await openDiscovery({ backend: 'file', fileRoot: root }, {})
  const sink = zmqSink(discovery, 200)
  try {
    sink.send([SEQ0, SEQ1], 0)
    await waitFor(() => sink.stats().published === 2, 'the settle time to pass')
    t.like(sink.discoveryStats(), { ranksRegistered: 1, held: 0, heldTotal: 2 })
    t.is(sink.pending, 0)
  } finally {
    await sink.close(2000)
  }
})

test('a rank that cannot register drops what it held, counted, and publishes nothing', async (t) => {
  const root = newRoot()
  // another descriptor already holds this publisher id's EventSource key
  const [source] = publisherRecords({
    namespace: 'dynamo',
    component: 'backend',
    endpoint: 'generate',
    workerId: 8n,
    dpRank: 0,
    publisherId: PUBLISHER,
  })
  await fs.mkdir(path.dirname(path.join(root, source!.filePath)), { recursive: true })
  await fs.writeFile(path.join(root, source!.filePath), source!.value)
  const discovery = await openDiscovery({ backend: 'file', fileRoot: root }, {})
  const sink = zmqSink(discovery, 0)
  sink.send([SEQ0, SEQ1], 0)
  await waitFor(() => sink.discoveryStats().registerFailures === 1, 'the registration to fail')
  t.like(sink.discoveryStats(), { ranksRegistered: 0, held: 0, heldTotal: 2, droppedUnregistered: 2 })
  t.like(sink.stats(), { published: 0, undelivered: 2 })
  t.is(sink.pending, 0)
  // within the retry pause, later envelopes of the rank are dropped at once
  sink.send([SEQ0], 0)
  t.is(sink.discoveryStats().droppedUnregistered, 3)
  // once the conflict is gone, a later event (after the retry pause) registers the rank
  await fs.rm(path.join(root, source!.filePath))
  await waitFor(() => {
    if (sink.discoveryStats().ranksRegistering === 0) sink.send([SEQ1], 0)
    return sink.discoveryStats().ranksRegistered === 1
  }, 'the retry to register')
  const found = await listFileStore(root)
  t.like(found.sources[0], { workerId: 7n, publisherId: PUBLISHER })
  t.is(found.channels.length, 1)
  await sink.close(2000)
  t.deepEqual(await listFileStore(root), { sources: [], channels: [] })
})

test('a record of another descriptor is never removed by close()', async (t) => {
  const root = newRoot()
  const [source] = publisherRecords({
    namespace: 'dynamo',
    component: 'backend',
    endpoint: 'generate',
    workerId: 8n,
    dpRank: 0,
    publisherId: PUBLISHER,
  })
  await fs.mkdir(path.dirname(path.join(root, source!.filePath)), { recursive: true })
  await fs.writeFile(path.join(root, source!.filePath), source!.value)
  const sink = zmqSink(await openDiscovery({ backend: 'file', fileRoot: root }, {}), 0)
  sink.send([SEQ0], 0)
  await waitFor(() => sink.discoveryStats().registerFailures === 1, 'the registration to fail')
  await sink.close(2000)
  const left = await listFileStore(root)
  t.is(left.sources.length, 1)
  t.is(left.sources[0]?.workerId, 8n)
})

test.serial('etcd: records are written under the lease before the first envelope, kept past several TTLs, revoked on close', async (t) => {
  let etcd: EtcdServer | undefined
  let reader: Etcd3 | undefined
  try {
    etcd = await startEtcd()
    reader = new Etcd3({ hosts: [etcd.url] })
    const discovery = await openDiscovery({}, { DYN_DISCOVERY_BACKEND: 'etcd', ETCD_ENDPOINTS: etcd.url, ETCD_LEASE_TTL: '1' })
    const sink = zmqSink(discovery, 60_000)
    sink.send([SEQ0], 0)
    const r = reader
    t.true(await eventually(async () => (await listEtcd(r)).channels.length === 1))
    await new Promise((res) => setTimeout(res, 3500))
    const found = await listEtcd(r)
    t.is(found.sources.length, 1, 'kept alive past 3 TTLs')
    t.like(found.sources[0], { workerId: 7n, dpRank: 0, publisherId: PUBLISHER })
    const sub = new ChannelSubscriber(found.channels[0]!)
    try {
      t.deepEqual((await sub.receive()).frames.map(hex), fx.zmq_direct_frames.example_multipart_hex_for_envelope_seq0)
    } finally {
      sub.close()
    }
    await sink.close(5000)
    t.deepEqual(await listEtcd(r), { sources: [], channels: [] })
  } finally {
    reader?.close()
    await etcd?.stop()
  }
})

test('NATS: the rank registers a Nats EventChannel, then its envelopes go unchanged to the percent-encoded subject', async (t) => {
  const server = await startNatsServer()
  const nc = await connect({ servers: server.url })
  const root = newRoot()
  const e = fx.subjects.examples.find((x) => x.kv_events_subject.includes('%20'))!
  try {
    const subject = endpointSubject(e.namespace, e.component, e.endpoint, 'kv-events')
    const sub = nc.subscribe(e.kv_events_subject)
    await nc.flush()
    const discovery = await openDiscovery({ backend: 'file', fileRoot: root }, {})
    const sink = new Dynamo14Sink({
      namespace: e.namespace,
      component: e.component,
      endpoint: e.endpoint,
      workerId: 7n,
      publisherId: () => PUBLISHER,
      discovery,
      transport: { kind: 'nats', nc, subject },
      registerTimeoutMs: 20_000,
      log,
    })
    sink.send([SEQ0, SEQ1], 0)
    const got: Buffer[] = []
    for await (const m of sub) {
      // the records were readable before the first message was sent
      if (got.length === 0) {
        const found = await listFileStore(root)
        t.is(found.sources.length, 1)
        t.deepEqual(found.channels[0]?.transport, { kind: 'Nats', config: { subject_prefix: e.endpoint_subject_prefix } })
      }
      got.push(Buffer.from(m.data))
      if (got.length === 2) break
    }
    t.deepEqual(got.map(hex), [hex(SEQ0), hex(SEQ1)])
    t.true(await sink.flush(5000))
    t.like(sink.stats(), { published: 2 })
    await sink.close(5000)
    t.deepEqual(await listFileStore(root), { sources: [], channels: [] })
  } finally {
    await nc.close()
    await server.stop()
  }
})
