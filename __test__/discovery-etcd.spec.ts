// The etcd discovery backend against a real, private etcd: records appear with Dynamo's bytes as soon as
// register() resolves, stay while the lease is kept alive past several TTLs, vanish on close(), and
// expire after the registering process is SIGKILLed. A reader built from the fixture's rules finds them.
import test from 'ava'
import { Etcd3 } from 'etcd3'
import { DiscoveryError, type EtcdDiscovery, openDiscovery, publisherRecords } from '../ts/transport/discovery/index.js'
import { readEventChannel, readEventSource } from './helpers/discovery-reader.js'
import { type EtcdServer, startEtcd } from './helpers/etcd-server.js'
import { eventually, spawnRegisteringChild } from './helpers/discovery-process.js'
import { fixture } from './helpers/fixtures.js'
import { freePort } from './helpers/nats-server.js'

let etcd: EtcdServer
let reader: Etcd3

test.before(async () => {
  etcd = await startEtcd()
  reader = new Etcd3({ hosts: [etcd.url] })
})

test.after.always(async () => {
  reader?.close()
  await etcd?.stop()
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const fx = fixture<{
  records: { file_backend: { registered: { label: string; instance_json: string }[] }; inputs: { worker_id: string; publisher_id: string } }
}>('dynamo-1.6/discovery-1.6.json')
const expected = (label: string) => fx.records.file_backend.registered.find((r) => r.label === label)?.instance_json

const records = (publisherId: bigint | string, zmq = 'tcp://10.0.0.5:41234') =>
  publisherRecords({
    namespace: 'dynamo',
    component: 'backend',
    endpoint: 'generate',
    workerId: fx.records.inputs.worker_id,
    dpRank: 0,
    publisherId,
    zmqEndpoint: zmq,
  })

async function listPrefix(prefix: string): Promise<Record<string, Buffer>> {
  const out: Record<string, Buffer> = {}
  const kvs = await reader.getAll().prefix(prefix).exec()
  for (const kv of kvs.kvs) out[kv.key.toString()] = kv.value
  return out
}

test.serial('records appear with exact bytes, survive several TTLs, and vanish on close()', async (t) => {
  const discovery = (await openDiscovery(
    { backend: 'etcd', etcdEndpoints: etcd.url, etcdLeaseTtlSeconds: 2, etcdConnectTimeoutMs: 10_000 },
    {},
  )) as EtcdDiscovery
  t.is(discovery.kind, 'etcd')
  const recs = records(fx.records.inputs.publisher_id)
  await discovery.register(recs)

  // Readable the moment register() resolves: before the publisher could send a first event.
  const sources = await listPrefix('v1/event_sources/')
  const channels = await listPrefix('v1/event_channels/')
  t.deepEqual(Object.keys(sources), [recs[0]?.etcdKey])
  t.deepEqual(Object.keys(channels), [recs[1]?.etcdKey])
  const [srcKey, srcVal] = Object.entries(sources)[0] ?? []
  t.is(srcVal?.toString(), expected('event_source_live_only'))
  t.is(Object.values(channels)[0]?.toString(), expected('event_channel_zmq'))
  const src = readEventSource(srcKey as string, srcVal as Buffer)
  t.is(src.workerId, 8468889610773921793n)
  t.is(src.publisherId, 548535317935783n)
  t.is(readEventChannel(Object.keys(channels)[0] as string, Object.values(channels)[0] as Buffer).transport.kind, 'Zmq')

  // Both keys hang on the backend's lease, with the TTL asked for.
  const ttl = await reader.leaseClient.leaseTimeToLive({ ID: discovery.leaseId })
  t.is(String(ttl.grantedTTL), '2')
  const raw = await reader.get(srcKey as string).exec()
  t.is(raw.kvs[0]?.lease, discovery.leaseId)

  // Several TTLs later, the keep-alive has held them.
  await sleep(7000)
  t.is(Object.keys(await listPrefix('v1/event_sources/')).length, 1)
  t.is(Object.keys(await listPrefix('v1/event_channels/')).length, 1)

  await discovery.close()
  t.deepEqual(await listPrefix('v1/'), {})
  await discovery.close()
})

test.serial('create-if-absent: the same record again is accepted, another record under its key is refused', async (t) => {
  const a = await openDiscovery({ backend: 'etcd', etcdEndpoints: [etcd.url], etcdLeaseTtlSeconds: 5 }, {})
  const b = await openDiscovery({ backend: 'etcd', etcdEndpoints: [etcd.url], etcdLeaseTtlSeconds: 5 }, {})
  await a.register(records(77n))
  await b.register(records(77n))
  const err = await t.throwsAsync(b.register(records(77n, 'tcp://10.0.0.9:1')), { instanceOf: DiscoveryError })
  t.regex(err?.message ?? '', /v1\/event_channels\/.*already holds another record/)
  t.is((await listPrefix('v1/event_channels/'))[records(77n)[1]?.etcdKey as string]?.toString(), records(77n)[1]?.value.toString())
  await a.close()
  await b.close()
  t.deepEqual(await listPrefix('v1/'), {})
})

test.serial('an unreachable etcd fails within the bound, naming ETCD_ENDPOINTS', async (t) => {
  const port = await freePort()
  const err = await t.throwsAsync(
    openDiscovery({}, { ETCD_ENDPOINTS: `http://127.0.0.1:${port}`, ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS: '2' }),
    { instanceOf: DiscoveryError },
  )
  t.regex(err?.message ?? '', new RegExp(`etcd is not reachable at http://127.0.0.1:${port} \\(ETCD_ENDPOINTS`))
  t.regex(err?.message ?? '', /ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS/)
})

test.serial("a SIGKILLed publisher's records expire with its lease", async (t) => {
  const child = spawnRegisteringChild({ DYN_DISCOVERY_BACKEND: 'etcd', ETCD_ENDPOINTS: etcd.url, ETCD_LEASE_TTL: '2' })
  try {
    t.true(await child.registered(), child.output())
    const sources = await listPrefix('v1/event_sources/')
    const [key, value] = Object.entries(sources)[0] ?? []
    const src = readEventSource(key as string, value as Buffer)
    t.is(src.workerId, 18446744073709551615n)
    t.is(src.publisherId, 9007199254740991n)
    t.true(key?.endsWith('/1fffffffffffff'))
    // Alive past its TTL while the process runs.
    await sleep(4500)
    t.is(Object.keys(await listPrefix('v1/')).length, 2)
  } finally {
    await child.kill()
  }
  t.true(await eventually(async () => Object.keys(await listPrefix('v1/')).length === 0), 'records outlived the lease')
})

test.serial('a lease lost while running is reported through onError', async (t) => {
  const errors: Error[] = []
  const discovery = (await openDiscovery(
    { backend: 'etcd', etcdEndpoints: etcd.url, etcdLeaseTtlSeconds: 2, onError: (e) => errors.push(e) },
    {},
  )) as EtcdDiscovery
  await discovery.register(records(91n))
  t.is(Object.keys(await listPrefix('v1/')).length, 2)
  // An operator (or etcd itself, after a partition longer than the TTL) revokes the lease.
  await reader.leaseClient.leaseRevoke({ ID: discovery.leaseId })
  t.deepEqual(await listPrefix('v1/'), {})
  t.true(await eventually(async () => errors.length > 0), 'no error reported')
  t.true(errors[0] instanceof DiscoveryError)
  t.regex(errors[0]?.message ?? '', /lease .* was lost/)
  await discovery.close()
})

test.serial(
  'while etcd stays unreachable at start-up, the retrying is reported once after 3 s, and a start-up failing sooner reports nothing',
  async (t) => {
    const port = await freePort()
    const retries: string[] = []
    await t.throwsAsync(
      openDiscovery(
        { onRetry: (message) => retries.push(message) },
        { ETCD_ENDPOINTS: `http://127.0.0.1:${port}`, ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS: '6' },
      ),
      { instanceOf: DiscoveryError },
    )
    t.is(retries.length, 1, retries.join('\n'))
    t.regex(
      retries[0] ?? '',
      new RegExp(
        `^etcd is not reachable at http://127.0.0.1:${port} after [34] s \\(.+\\); still retrying for up to [23] s \\(ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS\\)$`,
      ),
    )
    const quick: string[] = []
    await t.throwsAsync(
      openDiscovery(
        { onRetry: (message) => quick.push(message) },
        { ETCD_ENDPOINTS: `http://127.0.0.1:${port}`, ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS: '2' },
      ),
      { instanceOf: DiscoveryError },
    )
    t.deepEqual(quick, [])
  },
)
