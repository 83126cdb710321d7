// WorkerMetricsPublisher with wire 'dynamo-1.4': its `kv_metrics` EventChannel is in the discovery store when
// create() resolves (the fixture's key path), and the envelope a router receives on the advertised ZeroMQ
// endpoint (or the percent-encoded NATS subject) is Dynamo 1.6.1's ActiveLoad envelope byte for byte
// (fixtures/dynamo-1.6/router-wire-1.6.json).
import test from 'ava'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { connect } from '@nats-io/transport-node'
import { WorkerMetricsPublisher } from '../ts/index.js'
import { fixture } from './helpers/fixtures.js'
import { startNatsServer } from './helpers/nats-server.js'
import { quiet } from './helpers/publishing.js'
import { ChannelSubscriber, hex, listFileStore } from './helpers/router14.js'

const fx = fixture<{
  envelope: { kv_metrics_active_load: { publisher_id: string; payload_msgpack_hex: string; envelope_msgpack_hex: string } }
  subjects: {
    examples: {
      label: string
      namespace: string
      component: string
      endpoint: string
      kv_metrics_subject: string
      kv_metrics_event_channel_key_path: string
    }[]
  }
}>('dynamo-1.6/router-wire-1.6.json')
const load = fx.envelope.kv_metrics_active_load
const PUBLISHER = BigInt(load.publisher_id)
const plain = fx.subjects.examples.find((e) => e.label === 'plain')!

const roots: string[] = []
function newRoot(): string {
  const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-metrics14-'))
  roots.push(root)
  return root
}
test.after.always(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true })
})

test('ZeroMQ: the kv_metrics channel is registered by create(); the ActiveLoad envelope is Dynamo 1.6.1 bytes', async (t) => {
  const root = newRoot()
  const m = await WorkerMetricsPublisher.create(
    {
      wire: 'dynamo-1.4',
      namespace: 'dynamo',
      component: 'backend',
      workerId: 7n,
      publisherId: PUBLISHER,
      eventPlaneHost: '127.0.0.1',
      zmqSettleMs: 60_000,
      discovery: { backend: 'file', fileRoot: root },
      now: () => 1_700_000_000_000,
      logger: quiet,
    },
    {},
  )
  const found = await listFileStore(root)
  t.is(found.sources.length, 0, 'a metrics channel has no EventSource')
  t.is(found.channels.length, 1)
  const ch = found.channels[0]!
  // the fixture's key path, with this channel's publisher id as its last segment
  const prefix = plain.kv_metrics_event_channel_key_path.replace(/[0-9a-f]+$/, '')
  t.is(ch.key, `v1/event_channels/${prefix}${PUBLISHER.toString(16)}`)
  t.is(ch.topic, 'kv_metrics')
  t.is(ch.transport.config.endpoint, m.eventChannel?.eventChannel)
  // the value waits for a first subscriber (zmqSettleMs), so the router gets it with sequence 0
  m.publish(0, 12)
  const sub = new ChannelSubscriber(ch)
  try {
    const got = await sub.receive()
    t.is(hex(got.envelope), load.envelope_msgpack_hex)
    t.is(hex(got.payload), load.payload_msgpack_hex)
    t.deepEqual(got.frames[0], Buffer.from('kv_metrics'))
  } finally {
    sub.close()
    await m.close()
  }
  t.deepEqual(await listFileStore(root), { sources: [], channels: [] })
})

test('NATS: the ActiveLoad envelope on the endpoint-scoped kv_metrics subject is Dynamo 1.6.1 bytes', async (t) => {
  const server = await startNatsServer()
  const nc = await connect({ servers: server.url })
  const root = newRoot()
  try {
    const sub = nc.subscribe(plain.kv_metrics_subject, { max: 1 })
    await nc.flush()
    const m = await WorkerMetricsPublisher.create(
      {
        wire: 'dynamo-1.4',
        namespace: 'dynamo',
        component: 'backend',
        workerId: '7',
        publisherId: PUBLISHER,
        now: () => 1_700_000_000_000,
        logger: quiet,
      },
      { DYN_EVENT_PLANE: 'nats', NATS_SERVER: server.url, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root },
    )
    t.is(m.subject, plain.kv_metrics_subject)
    const ch = (await listFileStore(root)).channels[0]
    t.deepEqual(ch?.transport, { kind: 'Nats', config: { subject_prefix: 'namespace.dynamo.component.backend.endpoint.generate' } })
    m.publish(0, 12n)
    for await (const msg of sub) t.is(hex(msg.data), load.envelope_msgpack_hex)
    await m.close()
    t.deepEqual(await listFileStore(root), { sources: [], channels: [] })
  } finally {
    await nc.close()
    await server.stop()
  }
})

test('wire 1.4 configuration errors name the option and the variable', async (t) => {
  const e1 = await t.throwsAsync(
    WorkerMetricsPublisher.create({ wire: 'dynamo-1.4', namespace: 'dynamo', component: 'backend', logger: quiet }, {}),
  )
  t.regex(e1.message, /option workerId or DYNAMO_KV_WORKER_ID/)
  const e2 = await t.throwsAsync(
    WorkerMetricsPublisher.create({ wire: 'dynamo-1.4', namespace: 'dynamo', workerId: 7n, logger: quiet }, {}),
  )
  t.regex(e2.message, /option component/)
  const e3 = await t.throwsAsync(
    WorkerMetricsPublisher.create({ namespace: 'dynamo', workerId: 7n, component: 'backend', logger: quiet }, {}),
  )
  t.is(e3.message, "component applies to wire: 'dynamo-1.4' only")
})
