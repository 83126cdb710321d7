// KvEventPublisher with wire 'dynamo-1.4' end to end, against real stores and sockets: a dp rank's records
// are in the discovery store (file store, etcd) before its first event, stay while the publisher runs
// (past several TTLs), disappear on close() and expire after the publisher process is SIGKILLed. A router
// built only from the fixtures' rules (helpers/router14.ts) finds each rank's EventChannel, subscribes to
// the advertised ZeroMQ endpoint (or the percent-encoded NATS subject) and receives payloads equal, byte
// for byte, to what a reference Ingestor emits for the same calls; decodeRouterEvent reads them.
import test from 'ava'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { connect } from '@nats-io/transport-node'
import { Etcd3 } from 'etcd3'
import { Registry } from 'prom-client'
import { decodeRouterEvents, Ingestor, KvEventPublisher, type KvEventPublisherOptions, registerPublisherMetrics } from '../ts/index.js'
import { openDiscovery, publisherRecords } from '../ts/transport/discovery/index.js'
import { eventually } from './helpers/discovery-process.js'
import { type EtcdServer, startEtcd } from './helpers/etcd-server.js'
import { fixture } from './helpers/fixtures.js'
import { startNatsServer } from './helpers/nats-server.js'
import { BatchGenerator } from './helpers/gen-batches.js'
import { type ManualOp, manualOps, quiet, sleep, waitFor } from './helpers/publishing.js'
import { ChannelSubscriber, type Discovered, decodeEnvelope, hex, listEtcd, listFileStore } from './helpers/router14.js'

const WORKER = 8468889610773921793n
const BS = 4

const subjects = fixture<{
  subjects: { examples: { namespace: string; component: string; endpoint: string; kv_events_subject: string }[] }
}>('dynamo-1.6/router-wire-1.6.json').subjects.examples

const roots: string[] = []
function newRoot(): string {
  const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-pub14-'))
  roots.push(root)
  return root
}
let etcd: EtcdServer
test.before(async () => {
  etcd = await startEtcd()
})
test.after.always(async () => {
  await etcd?.stop()
  for (const r of roots) rmSync(r, { recursive: true, force: true })
})

type Op = ManualOp | { kind: 'ingest'; payload: Buffer }
type Target = Pick<KvEventPublisher, 'publishStored' | 'publishRemoved' | 'publishCleared' | 'ingest'>

/** Manual calls, then engine batches (some events bad, some batches malformed) over the same ranks. */
function steps(seed: number, n: number, ranks: number): Op[] {
  const gen = new BatchGenerator(seed, { kvBlockSize: BS, ranks: Array.from({ length: ranks }, (_, i) => i) })
  return [...manualOps(seed, n, BS, ranks), ...Array.from({ length: n }, () => ({ kind: 'ingest' as const, payload: gen.next() }))]
}

async function apply(p: Target, op: Op): Promise<void> {
  if (op.kind === 'ingest') await p.ingest(op.payload)
  else if (op.kind === 'stored')
    await p.publishStored({ tokenIds: op.tokenIds, blockHashes: op.blockHashes, parentHash: op.parentHash, dpRank: op.dpRank })
  else if (op.kind === 'removed') await p.publishRemoved(op.blockHashes, op.dpRank)
  else await p.publishCleared(op.dpRank)
}

/** The payloads (msgpack arrays of RouterEvents) a reference Ingestor emits per dp rank for the same calls. */
function reference(ops: Op[]): Map<number, string[]> {
  const ing = new Ingestor({ kvBlockSize: BS, workerId: WORKER, wire: 'dynamo-1.4' })
  const out = new Map<number, string[]>()
  for (const op of ops) {
    const r =
      op.kind === 'ingest'
        ? ing.ingest(op.payload)
        : op.kind === 'stored'
          ? ing.stored({ tokenIds: op.tokenIds, blockHashes: op.blockHashes, parentHash: op.parentHash, dpRank: op.dpRank })
          : op.kind === 'removed'
            ? ing.removed(op.blockHashes, op.dpRank)
            : ing.cleared(op.dpRank)
    if (r.dpRank === null) continue
    for (const env of r.payloads) {
      const list = out.get(r.dpRank!) ?? []
      list.push(hex(decodeEnvelope(env).payload))
      out.set(r.dpRank!, list)
    }
  }
  ing.close()
  return out
}

/** Per rank (ascending) the payloads, for comparing maps filled in different orders. */
const byRank = (m: Map<number, string[]>) => [...m.entries()].sort((a, b) => a[0] - b[0])

/** Checks the records as a 1.6 router reads them: one source and one ZeroMQ channel per rank, same ids. */
function checkRecords(t: import('ava').ExecutionContext, found: Discovered, ranks: number[], kind: 'Zmq' | 'Nats'): void {
  t.deepEqual(found.sources.map((s) => s.dpRank).sort(), ranks)
  for (const s of found.sources) {
    t.is(s.workerId, WORKER)
    t.false(s.recoverable, 'live only: no recovery_target')
    const ch = found.channels.find((c) => c.instanceId === s.publisherId)
    t.truthy(ch, `rank ${s.dpRank} has its EventChannel`)
    t.is(ch?.transport.kind, kind)
  }
  t.is(found.channels.length, ranks.length)
}

/** Receives every payload of the ranks from their discovered ZeroMQ channels, checking each message. */
async function receiveAll(found: Discovered, want: Map<number, string[]>): Promise<Map<number, string[]>> {
  const got = new Map<number, string[]>()
  await Promise.all(
    found.sources.map(async (s) => {
      const sub = new ChannelSubscriber(found.channels.find((c) => c.instanceId === s.publisherId)!)
      const list: string[] = []
      try {
        let seq = 0n
        while (list.length < (want.get(s.dpRank)?.length ?? 0)) {
          const m = await sub.receive()
          if (m.sequence !== seq++) throw new Error(`rank ${s.dpRank}: sequence ${m.sequence}, expected ${seq - 1n}`)
          const events = decodeRouterEvents(m.payload)
          if (events.length === 0 || events.some((e) => e.workerId !== WORKER || e.event.dpRank !== s.dpRank))
            throw new Error(`rank ${s.dpRank}: an event of another worker or rank`)
          list.push(hex(m.payload))
        }
      } finally {
        sub.close()
      }
      got.set(s.dpRank, list)
    }),
  )
  return got
}

const opts = (o: Partial<KvEventPublisherOptions>): KvEventPublisherOptions => ({
  wire: 'dynamo-1.4',
  namespace: 'dynamo',
  component: 'backend',
  kvBlockSize: BS,
  workerId: WORKER,
  eventPlaneHost: '127.0.0.1',
  zmqSettleMs: 60_000,
  logger: quiet,
  ...o,
})

test('ZeroMQ + file store: records before the first event, kept past several TTLs, frames equal a reference Ingestor, removed on close', async (t) => {
  const root = newRoot()
  const ops = steps(11, 40, 2)
  const want = reference(ops)
  const p = await KvEventPublisher.create(opts({ discovery: { backend: 'file', fileRoot: root, fileTtlMs: 1500 } }), {})
  t.teardown(() => p.close())
  t.deepEqual(await listFileStore(root), { sources: [], channels: [] }, 'nothing is registered before a rank has an event')
  for (const op of ops) await apply(p, op)
  t.true(await eventually(async () => (await listFileStore(root)).channels.length === 2))
  const found = await listFileStore(root)
  checkRecords(t, found, [0, 1], 'Zmq')
  // held until a router subscribes: nothing was sent yet
  t.is(p.stats().sink.published, 0)
  const got = await receiveAll(found, want)
  t.deepEqual(byRank(got), byRank(want))
  t.deepEqual(
    p
      .eventChannels()
      .map((c) => c.publisherId)
      .sort(),
    found.sources.map((s) => s.publisherId).sort(),
  )
  await sleep(4000)
  t.is((await listFileStore(root)).sources.length, 2, 'kept past several TTLs')
  t.like(p.stats().discovery, { ranksRegistered: 2, held: 0, droppedUnregistered: 0 })
  const registry = new Registry()
  registerPublisherMetrics(p, { registry })
  const text = await registry.metrics()
  const labels = `{worker_id="${WORKER}",namespace="dynamo",component="backend"}`
  for (const [name, value] of [
    ['dynamo_kv_discovery_ranks_registered', 2],
    ['dynamo_kv_discovery_held', 0],
    ['dynamo_kv_discovery_register_failures_total', 0],
    ['dynamo_kv_discovery_dropped_unregistered_total', 0],
  ] as const)
    t.true(text.split('\n').includes(`${name}${labels} ${value}`), name)
  await p.close()
  t.deepEqual(await listFileStore(root), { sources: [], channels: [] })
})

test.serial('ZeroMQ + etcd: records under the lease, kept past several TTLs, revoked on close', async (t) => {
  const reader = new Etcd3({ hosts: [etcd.url] })
  try {
    const ops = steps(12, 25, 1)
    const want = reference(ops)
    const p = await KvEventPublisher.create(opts({}), {
      DYN_DISCOVERY_BACKEND: 'etcd',
      ETCD_ENDPOINTS: etcd.url,
      ETCD_LEASE_TTL: '1',
    })
    t.teardown(() => p.close())
    for (const op of ops) await apply(p, op)
    t.true(await eventually(async () => (await listEtcd(reader)).channels.length === 1))
    const found = await listEtcd(reader)
    checkRecords(t, found, [0], 'Zmq')
    t.deepEqual(byRank(await receiveAll(found, want)), byRank(want))
    await sleep(3500)
    t.is((await listEtcd(reader)).sources.length, 1, 'kept alive past 3 TTLs')
    await p.close()
    t.deepEqual(await listEtcd(reader), { sources: [], channels: [] })
  } finally {
    reader.close()
  }
})

test('NATS event plane: the envelopes on the percent-encoded endpoint subject equal a reference Ingestor', async (t) => {
  const server = await startNatsServer()
  const nc = await connect({ servers: server.url })
  const root = newRoot()
  const e = subjects.find((x) => x.kv_events_subject.includes('%20'))!
  try {
    const ops = steps(13, 30, 2)
    const want = reference(ops)
    const sub = nc.subscribe(e.kv_events_subject)
    await nc.flush()
    const p = await KvEventPublisher.create(
      opts({ namespace: e.namespace, component: e.component, endpoint: e.endpoint, eventPlaneHost: undefined, zmqSettleMs: undefined }),
      { DYN_EVENT_PLANE: 'nats', NATS_SERVER: server.url, DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root },
    )
    t.teardown(() => p.close())
    t.is(p.subject, e.kv_events_subject)
    for (const op of ops) await apply(p, op)
    const total = [...want.values()].reduce((n, l) => n + l.length, 0)
    const got = new Map<number, string[]>()
    const publishers = new Map<bigint, number>()
    let n = 0
    for await (const m of sub) {
      const env = decodeEnvelope(m.data)
      const events = decodeRouterEvents(env.payload)
      const rank = events[0]!.event.dpRank
      // a rank's records are written before its first envelope (another rank may still be registering)
      if (!got.has(rank)) {
        const found = await listFileStore(root)
        const sources = found.sources.filter((s) => s.dpRank === rank)
        const channels = found.channels.filter((c) => sources.some((s) => s.publisherId === c.instanceId))
        checkRecords(t, { sources, channels }, [rank], 'Nats')
      }
      t.true(events.every((ev) => ev.workerId === WORKER && ev.event.dpRank === rank))
      t.is(publishers.get(env.publisherId) ?? rank, rank, 'one publisher id per rank')
      publishers.set(env.publisherId, rank)
      got.set(rank, [...(got.get(rank) ?? []), hex(env.payload)])
      if (++n === total) break
    }
    t.deepEqual(byRank(got), byRank(want))
    checkRecords(t, await listFileStore(root), [0, 1], 'Nats')
    await p.close()
    t.deepEqual(await listFileStore(root), { sources: [], channels: [] })
  } finally {
    await nc.close()
    await server.stop()
  }
})

/** Starts helpers/publisher14-child.ts with `env`; resolves once it has published its first event. */
async function publishingChild(env: Record<string, string>): Promise<{ kill: () => Promise<void> }> {
  const child = spawn(process.execPath, ['--import=tsx', 'helpers/publisher14-child.ts'], {
    cwd: new URL('.', import.meta.url).pathname,
    env: { ...process.env, DYNAMO_KV_WORKER_ID: '42', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  const collect = (d: Buffer) => {
    out += d.toString()
  }
  child.stdout.on('data', collect)
  child.stderr.on('data', collect)
  const exited = new Promise((r) => child.once('exit', r))
  const kill = async () => {
    child.kill('SIGKILL')
    await exited
  }
  try {
    await waitFor(() => out.includes('published'), 'the child to publish', 60_000)
  } catch (err) {
    await kill()
    throw new Error(`${(err as Error).message}: ${out}`)
  }
  return { kill }
}

test.serial('a SIGKILLed publisher leaves its records to expire with its etcd lease', async (t) => {
  const reader = new Etcd3({ hosts: [etcd.url] })
  const child = await publishingChild({ DYN_DISCOVERY_BACKEND: 'etcd', ETCD_ENDPOINTS: etcd.url, ETCD_LEASE_TTL: '2' })
  try {
    const found = await listEtcd(reader)
    t.deepEqual(
      found.sources.filter((s) => s.workerId === 42n).map((s) => s.dpRank),
      [0],
    )
    await child.kill()
    t.true(await eventually(async () => (await listEtcd(reader)).sources.every((s) => s.workerId !== 42n), 20_000))
    const mine = found.sources.filter((s) => s.workerId === 42n).map((s) => s.publisherId)
    t.true(
      (await listEtcd(reader)).channels.every((c) => !mine.includes(c.instanceId)),
      'its EventChannel expired too',
    )
  } finally {
    await child.kill()
    reader.close()
  }
})

test('a SIGKILLed publisher leaves its file-store records to the sweep of another process', async (t) => {
  const root = newRoot()
  const child = await publishingChild({ DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root })
  const found = await listFileStore(root)
  t.is(found.sources.length, 1)
  t.is(found.channels.length, 1)
  await child.kill()
  // any other process using the store sweeps files not touched within its TTL (here 1.5 s)
  const other = await openDiscovery({ backend: 'file', fileRoot: root, fileTtlMs: 1500 }, {})
  await other.register(
    publisherRecords({
      namespace: 'dynamo',
      component: 'backend',
      endpoint: 'generate',
      workerId: 1n,
      dpRank: 0,
      publisherId: 1n,
      zmqEndpoint: 'tcp://127.0.0.1:1',
    }),
  )
  try {
    t.true(
      await eventually(async () => {
        // the sweep goes through one bucket directory at a time
        const left = await listFileStore(root)
        return left.sources.every((s) => s.workerId !== 42n) && left.channels.length === 1
      }, 30_000),
      "only the sweeper's own records are left",
    )
  } finally {
    await other.close()
  }
})

test('events held for their rank count against maxPending: calls wait (in order) until a router subscribed', async (t) => {
  const root = newRoot()
  const p = await KvEventPublisher.create(opts({ maxPending: 4, discovery: { backend: 'file', fileRoot: root } }), {})
  t.teardown(() => p.close())
  const calls = Array.from({ length: 10 }, (_, i) => p.publishStored({ tokenIds: [1, 2, 3, 4], blockHashes: [BigInt(i + 1)] }))
  const settled: number[] = []
  for (const [i, c] of calls.entries()) void c.then(() => settled.push(i))
  t.true(await eventually(async () => (await listFileStore(root)).channels.length === 1))
  // registered, no router yet: 4 events held, the other calls wait
  await waitFor(() => p.stats().discovery?.held === 4 && p.stats().waiting === 6, 'held events and waiting calls')
  t.deepEqual(settled, [0, 1, 2, 3])
  const sub = new ChannelSubscriber((await listFileStore(root)).channels[0]!)
  try {
    const ids: bigint[] = []
    while (ids.length < 10) for (const ev of decodeRouterEvents((await sub.receive()).payload)) ids.push(ev.event.eventId)
    t.deepEqual(
      ids,
      Array.from({ length: 10 }, (_, i) => BigInt(i + 1)),
      'ids from 1, in call order',
    )
    await Promise.all(calls)
    t.deepEqual(settled, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    t.like(p.stats().discovery, { held: 0, heldTotal: 4, ranksRegistered: 1 })
  } finally {
    sub.close()
  }
})
