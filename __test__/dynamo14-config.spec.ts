// KvEventPublisher.create() with wire 'dynamo-1.4' and a bad configuration: each fails with ONE error that
// names the option and the environment variable (Dynamo 1.6.1's names), before anything is written; and the
// etcd client is loaded only when the etcd backend is used.
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { KvEventPublisher, type KvEventPublisherOptions } from '../ts/index.js'
import { freePort } from './helpers/nats-server.js'
import { quiet } from './helpers/publishing.js'

const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-wire14cfg-'))
test.after.always(() => rmSync(root, { recursive: true, force: true }))

const base: KvEventPublisherOptions = {
  namespace: 'dynamo',
  component: 'backend',
  kvBlockSize: 16,
  wire: 'dynamo-1.4',
  workerId: 7n,
  logger: quiet,
  discovery: { backend: 'file', fileRoot: root },
}
const create = (o: Partial<KvEventPublisherOptions>, env: Record<string, string> = {}) =>
  KvEventPublisher.create({ ...base, ...o } as KvEventPublisherOptions, env)

test('JetStream cannot carry the 1.4 wire', async (t) => {
  const err = await t.throwsAsync(create({ mode: 'jetstream' }))
  t.regex(err.message, /mode: 'jetstream'.*wire: 'dynamo-1\.4'/)
})

test('the worker id is required, a u64, from the option or DYNAMO_KV_WORKER_ID', async (t) => {
  const { workerId: _, ...noId } = base
  const missing = await t.throwsAsync(KvEventPublisher.create(noId as KvEventPublisherOptions, {}))
  t.regex(missing.message, /option workerId or DYNAMO_KV_WORKER_ID/)
  t.regex(missing.message, /v1\/instances/)
  const bad = await t.throwsAsync(KvEventPublisher.create(noId as KvEventPublisherOptions, { DYNAMO_KV_WORKER_ID: '0x1f' }))
  t.regex(bad.message, /DYNAMO_KV_WORKER_ID="0x1f" \(option workerId\) is not a u64/)
  const big = await t.throwsAsync(KvEventPublisher.create(noId as KvEventPublisherOptions, { DYNAMO_KV_WORKER_ID: '18446744073709551616' }))
  t.regex(big.message, /DYNAMO_KV_WORKER_ID/)
  for (const v of [-1n, 1n << 64n, 7, '7.0', '']) {
    const e = await t.throwsAsync(create({ workerId: v as bigint }))
    t.regex(e.message, /^option workerId must be a u64/)
  }
})

test('the event plane is zmq or nats, from the option or DYN_EVENT_PLANE', async (t) => {
  t.regex((await t.throwsAsync(create({}, { DYN_EVENT_PLANE: 'kafka' }))).message, /DYN_EVENT_PLANE="kafka" \(option eventPlane\)/)
  t.regex((await t.throwsAsync(create({ eventPlane: 'tcp' as 'zmq' }))).message, /option eventPlane must be/)
  t.regex((await t.throwsAsync(create({ eventPlane: 'nats', zmqPort: 5000 }))).message, /zmqPort applies to eventPlane 'zmq'/)
  t.regex((await t.throwsAsync(create({ nats: { servers: 'nats://127.0.0.1:1' } }))).message, /nats applies to eventPlane 'nats'/)
})

test('the advertised host is an address routers can reach: DYN_EVENT_PLANE_HOST', async (t) => {
  t.regex((await t.throwsAsync(create({}, { DYN_EVENT_PLANE_HOST: '0.0.0.0' }))).message, /DYN_EVENT_PLANE_HOST="0\.0\.0\.0".*unspecified/)
  t.regex(
    (await t.throwsAsync(create({}, { DYN_EVENT_PLANE_HOST: 'no-such-iface0' }))).message,
    /DYN_EVENT_PLANE_HOST="no-such-iface0" \(option eventPlaneHost\) is neither an IP address nor a network interface/,
  )
  t.regex((await t.throwsAsync(create({ eventPlaneHost: '::' }))).message, /option eventPlaneHost: an unspecified address/)
  t.regex((await t.throwsAsync(create({ zmqPort: 70000 }))).message, /option zmqPort must be a TCP port/)
  t.regex((await t.throwsAsync(create({ zmqBindHost: 'localhost' }))).message, /option zmqBindHost/)
  t.regex((await t.throwsAsync(create({ zmqSettleMs: -1 }))).message, /option zmqSettleMs/)
})

test('discovery: unknown and unsupported backends, bad variables, unreachable etcd', async (t) => {
  const env = (e: Record<string, string>) => create({ discovery: undefined }, e)
  t.regex(
    (await t.throwsAsync(env({ DYN_DISCOVERY_BACKEND: 'zookeeper' }))).message,
    /DYN_DISCOVERY_BACKEND="zookeeper" is not a discovery backend/,
  )
  const k8s = await t.throwsAsync(env({ DYN_DISCOVERY_BACKEND: 'kubernetes' }))
  t.regex(k8s.message, /DYN_DISCOVERY_BACKEND="kubernetes".*DynamoWorkerMetadata.*sidecar/)
  t.regex((await t.throwsAsync(env({ ETCD_LEASE_TTL: 'ten' }))).message, /ETCD_LEASE_TTL="ten" \(option etcdLeaseTtlSeconds\)/)
  t.regex((await t.throwsAsync(env({ ETCD_ENDPOINTS: 'etcd:2379' }))).message, /ETCD_ENDPOINTS \(option etcdEndpoints\)/)
  const port = await freePort()
  const unreachable = await t.throwsAsync(
    create({ discovery: { etcdConnectTimeoutMs: 1000 } }, { DYN_DISCOVERY_BACKEND: 'etcd', ETCD_ENDPOINTS: `http://127.0.0.1:${port}` }),
  )
  t.regex(
    unreachable.message,
    new RegExp(`etcd is not reachable at http://127\\.0\\.0\\.1:${port} \\(ETCD_ENDPOINTS, option etcdEndpoints\\)`),
  )
  // nothing was written to the file store by any of the failed attempts
  t.deepEqual(readdirSync(root), [])
})

test('options of the 1.4 wire are refused on the 1.0 wire, which is unchanged', async (t) => {
  for (const k of ['endpoint', 'eventPlane', 'zmqPort', 'discovery'] as const) {
    const e = await t.throwsAsync(
      KvEventPublisher.create({ namespace: 'ns', component: 'c', kvBlockSize: 16, [k]: 'x' } as KvEventPublisherOptions, {}),
    )
    t.is(e.message, `${k} applies to wire: 'dynamo-1.4' only`)
  }
  t.regex((await t.throwsAsync(create({ wire: 'dynamo-1.6' as 'dynamo-1.4' }))).message, /wire must be 'dynamo-1\.0' or 'dynamo-1\.4'/)
})

test('the built package loads etcd3 only when the etcd backend is opened', (t) => {
  const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
  if (!existsSync(path.join(pkg, 'dist', 'index.cjs'))) throw new Error('dist/ is missing: run `npm run build` before the tests')
  const loaded = execFileSync(
    process.execPath,
    [
      '-e',
      `require(${JSON.stringify(path.join(pkg, 'dist', 'index.cjs'))});` +
        "console.log(Object.keys(require.cache).some((k) => k.includes('/node_modules/etcd3/')))",
    ],
    { encoding: 'utf8' },
  )
  t.is(loaded.trim(), 'false')
})
