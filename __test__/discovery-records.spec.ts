// Discovery records and configuration: the bytes against Dynamo 1.6.1's own output
// (fixtures/dynamo-1.6/discovery-1.6.json), and every configuration error naming its option or variable.
import test from 'ava'
import type { RawEventChannelSpec, RawEventSourceSpec } from '../ts/core/binding.js'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { DiscoveryConfigError, publisherRecords, randomPublisherId, resolveDiscoveryConfig } from '../ts/transport/discovery/index.js'
import { keyOfFile, readEventChannel, readEventSource } from './helpers/discovery-reader.js'
import { fixture } from './helpers/fixtures.js'
import { fallback, needNative, parityTest } from './helpers/impls.js'

interface Fixture {
  records: {
    inputs: {
      worker_id: string
      dp_rank: number
      publisher_id: string
      serving_endpoint: { namespace: string; component: string; name: string }
    }
    file_backend: {
      registered: { label: string; instance_json: string }[]
      files: { path: string; decoded_key: string; content: string }[]
    }
    memory_backend_entries: { bucket: string; key: string; value: string }[]
    recovery_target_endpoint_record: { json: string }
  }
}

const f = fixture<Fixture>('dynamo-1.6/discovery-1.6.json')
const inputs = f.records.inputs
const endpoint = inputs.serving_endpoint
const workerId = BigInt(inputs.worker_id)
const publisherId = BigInt(inputs.publisher_id)
const registered = (label: string) => {
  const r = f.records.file_backend.registered.find((x) => x.label === label)
  if (!r) throw new Error(label)
  return r.instance_json
}
const fileAt = (p: string) => f.records.file_backend.files.find((x) => x.path === p)
const must = <T>(v: T | undefined): T => {
  if (v === undefined) throw new Error('missing fixture entry')
  return v
}

// Both implementations of the raw interface build records; each must give Dynamo's bytes. The native
// binding's cases are skipped only where no binding was built and none is expected.
const impls = [
  { name: 'fallback', d: fallback, t: test },
  {
    name: 'native',
    d: {
      eventSourceRecord: (s: RawEventSourceSpec) => needNative().eventSourceRecord(s),
      eventChannelRecord: (c: RawEventChannelSpec) => needNative().eventChannelRecord(c),
    },
    t: parityTest,
  },
]

for (const { name, d, t: test } of impls) {
  test(`${name}: live-only EventSource is Dynamo's record, etcd key and file`, (t) => {
    const rec = d.eventSourceRecord({ endpoint, workerId, dpRank: inputs.dp_rank, publisherId })
    t.is(rec.value.toString('utf8'), registered('event_source_live_only'))
    const mem = must(f.records.memory_backend_entries[0])
    t.is(rec.bucket, mem.bucket)
    t.is(rec.etcdKey, mem.key)
    t.is(rec.value.toString('utf8'), mem.value)
    const file = fileAt(rec.filePath)
    t.truthy(file, rec.filePath)
    t.is(file?.content, rec.value.toString('utf8'))
    t.is(file?.decoded_key, rec.key)
  })

  test(`${name}: recoverable EventSource carries the recovery target exactly`, (t) => {
    const target = JSON.parse(f.records.recovery_target_endpoint_record.json.replace(/"instance_id":(\d+)/, '"instance_id":"$1"')) as {
      namespace: string
      component: string
      endpoint: string
      instance_id: string
      transport: { tcp: string }
    }
    const rec = d.eventSourceRecord({
      endpoint,
      workerId,
      dpRank: 0,
      publisherId: publisherId + 1n,
      recoveryTarget: {
        namespace: target.namespace,
        component: target.component,
        endpoint: target.endpoint,
        instanceId: BigInt(target.instance_id),
        tcp: target.transport.tcp,
      },
    })
    t.is(rec.value.toString('utf8'), registered('event_source_recoverable'))
    t.is(fileAt(rec.filePath)?.content, rec.value.toString('utf8'))
  })

  test(`${name}: EventChannels (ZeroMQ, NATS, kv_metrics) are Dynamo's records and files`, (t) => {
    const cases = [
      { label: 'event_channel_zmq', topic: 'kv-events', id: publisherId, zmq: 'tcp://10.0.0.5:41234' },
      { label: 'event_channel_nats', topic: 'kv-events', id: publisherId + 2n, zmq: null },
      { label: 'event_channel_zmq_kv_metrics', topic: 'kv_metrics', id: publisherId + 3n, zmq: 'tcp://10.0.0.5:41235' },
    ]
    for (const c of cases) {
      const rec = d.eventChannelRecord({ endpoint, topic: c.topic, publisherId: c.id, zmqEndpoint: c.zmq })
      t.is(rec.value.toString('utf8'), registered(c.label), c.label)
      t.is(fileAt(rec.filePath)?.content, rec.value.toString('utf8'), c.label)
    }
    const zmq = d.eventChannelRecord({ endpoint, topic: 'kv-events', publisherId, zmqEndpoint: 'tcp://10.0.0.5:41234' })
    t.is(zmq.etcdKey, must(f.records.memory_backend_entries[1]).key)
  })

  test(`${name}: bad inputs are errors, not crashes`, (t) => {
    const base = { endpoint, workerId, dpRank: 0, publisherId }
    t.throws(() => d.eventSourceRecord({ ...base, publisherId: 1n << 53n }), { message: /publisher_id/ })
    t.throws(() => d.eventSourceRecord({ ...base, publisherId: 0n }), { message: /publisher_id/ })
    t.throws(() => d.eventSourceRecord({ ...base, endpoint: { ...endpoint, namespace: '' } }), {
      message: /namespace/,
    })
    t.throws(() => d.eventChannelRecord({ endpoint, topic: '', publisherId }), { message: /topic/ })
    t.throws(() => d.eventChannelRecord({ endpoint, topic: 'kv-events', publisherId, zmqEndpoint: '' }), {
      message: /ZeroMQ endpoint/,
    })
    for (const dpRank of [-1, 1.5, 2 ** 32, Number.NaN]) {
      t.throws(() => d.eventSourceRecord({ ...base, dpRank }), { message: /dp_rank .* is not a u32/ })
    }
    t.throws(() => d.eventSourceRecord({ ...base, workerId: -1n }), { message: /workerId must be within 0..2\^64-1/ })
    t.throws(() => d.eventSourceRecord({ ...base, workerId: 1n << 64n }), { message: /workerId/ })
    t.throws(() => d.eventSourceRecord({ ...base, publisherId: -5n }), { message: /publisher/i })
    const odd = d.eventSourceRecord({
      ...base,
      workerId: (1n << 64n) - 1n,
      dpRank: 0xffffffff,
      endpoint: { namespace: 'a.b/c', component: 'é "q"\n\u0001', name: 'x' },
    })
    t.is(odd.key, `namespace/a%2Eb%2Fc/component/%C3%A9%20%22q%22%0A%01/endpoint/x/topic/kv-events/${publisherId.toString(16)}`)
    t.true(odd.value.toString().includes('"component":"é \\"q\\"\\n\\u0001"'))
    t.true(odd.value.toString().includes('"worker_id":18446744073709551615,"dp_rank":4294967295'))
    const read = readEventSource(odd.etcdKey, odd.value)
    t.is(read.component, 'é "q"\n\u0001')
    t.is(keyOfFile('v1/event_sources', path.basename(odd.filePath)), odd.etcdKey)
  })
}

test('publisherRecords: EventSource plus the ZeroMQ EventChannel, readable by a fixture-rules reader', (t) => {
  const recs = publisherRecords({
    namespace: 'dynamo',
    component: 'backend',
    endpoint: 'generate',
    workerId: inputs.worker_id,
    dpRank: 0,
    publisherId,
    zmqEndpoint: 'tcp://10.0.0.5:41234',
  })
  t.is(recs.length, 2)
  const src = readEventSource(recs[0]?.etcdKey as string, recs[0]?.value as Buffer)
  t.is(src.workerId, workerId)
  t.is(src.publisherId, publisherId)
  const ch = readEventChannel(recs[1]?.etcdKey as string, recs[1]?.value as Buffer)
  t.is(ch.instanceId, publisherId)
  t.deepEqual(ch.transport, { kind: 'Zmq', config: { endpoint: 'tcp://10.0.0.5:41234' } })
  t.is(recs[0]?.value.toString(), registered('event_source_live_only'))
  t.is(publisherRecords({ namespace: 'n', component: 'c', endpoint: 'e', workerId: 1n, dpRank: 0, publisherId: 1n }).length, 1)
})

test('publisherRecords: a worker id that is not a u64 is one clear error naming workerId', (t) => {
  const base = { namespace: 'n', component: 'c', endpoint: 'e', dpRank: 0, publisherId: 5n }
  for (const workerId of ['18446744073709551616', '-1', '1e3', '', 'abc', 7 as unknown as string, -1n]) {
    const err = t.throws(() => publisherRecords({ ...base, workerId }), { instanceOf: DiscoveryConfigError })
    t.regex(err?.message ?? '', /^workerId must be a u64/)
  }
  t.throws(() => publisherRecords({ ...base, workerId: 1n, publisherId: (1n << 53n).toString() }), {
    message: /publisher_id/,
  })
  t.throws(() => publisherRecords({ ...base, workerId: 1n, dpRank: -1 }), { message: /dpRank/ })
})

test('randomPublisherId stays within 1..=2^53-1', (t) => {
  for (let i = 0; i < 1000; i++) {
    const id = randomPublisherId()
    t.true(id >= 1n && id <= (1n << 53n) - 1n)
  }
})

test("configuration defaults are Dynamo 1.6's", (t) => {
  t.deepEqual(resolveDiscoveryConfig({}, {}), {
    backend: 'etcd',
    endpoints: ['http://localhost:2379'],
    leaseTtlSeconds: 30,
    connectTimeoutMs: 120_000,
  })
  t.deepEqual(resolveDiscoveryConfig({}, { DYN_DISCOVERY_BACKEND: 'file' }), {
    backend: 'file',
    root: path.join(tmpdir(), 'dynamo_store_kv'),
    ttlMs: 10_000,
  })
  t.deepEqual(
    resolveDiscoveryConfig(
      {},
      {
        ETCD_ENDPOINTS: 'http://10.0.0.1:2379,https://10.0.0.2:2379',
        ETCD_LEASE_TTL: '12',
        ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS: '3',
      },
    ),
    {
      backend: 'etcd',
      endpoints: ['http://10.0.0.1:2379', 'https://10.0.0.2:2379'],
      leaseTtlSeconds: 12,
      connectTimeoutMs: 3000,
    },
  )
  t.is(resolveDiscoveryConfig({ backend: 'file', fileRoot: '/x/y' }, { DYN_FILE_KV: '/a' }).backend, 'file')
  t.like(resolveDiscoveryConfig({}, { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: '/srv/kv' }), { root: '/srv/kv' })
  // Options win over the environment.
  t.like(resolveDiscoveryConfig({ backend: 'etcd', etcdLeaseTtlSeconds: 5 }, { DYN_DISCOVERY_BACKEND: 'file', ETCD_LEASE_TTL: '9' }), {
    backend: 'etcd',
    leaseTtlSeconds: 5,
  })
})

test('bad configuration fails with one message naming the option or variable', (t) => {
  const bad = (opts: object, env: NodeJS.ProcessEnv, re: RegExp) => {
    const err = t.throws(() => resolveDiscoveryConfig(opts, env), { instanceOf: DiscoveryConfigError })
    t.regex(err?.message ?? '', re)
  }
  bad({}, { DYN_DISCOVERY_BACKEND: 'consul' }, /DYN_DISCOVERY_BACKEND="consul" is not a discovery backend/)
  bad({ backend: 'zk' }, {}, /option backend "zk" is not a discovery backend/)
  bad({}, { DYN_DISCOVERY_BACKEND: 'kubernetes' }, /kubernetes.*not supported.*DynamoWorkerMetadata.*sidecar/s)
  bad({}, { DYN_DISCOVERY_BACKEND: 'mem' }, /mem discovery backend/)
  bad({}, { ETCD_LEASE_TTL: 'ten' }, /ETCD_LEASE_TTL="ten"/)
  bad({}, { ETCD_LEASE_TTL: '0' }, /ETCD_LEASE_TTL/)
  bad({ etcdLeaseTtlSeconds: 0.5 }, {}, /option etcdLeaseTtlSeconds/)
  bad({}, { ETCD_ENDPOINTS: 'localhost:2379' }, /ETCD_ENDPOINTS/)
  bad({}, { ETCD_ENDPOINTS: 'http://a:1,,http://b:2' }, /ETCD_ENDPOINTS/)
  bad({ etcdEndpoints: ['ftp://x'] }, {}, /option etcdEndpoints/)
  bad({ backend: 'file', fileTtlMs: 10 }, {}, /option fileTtlMs/)
})
