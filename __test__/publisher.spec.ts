// KvEventPublisher and WorkerMetricsPublisher against a real nats-server (started by the helper on a free
// port with -js and a temporary store): event-plane bytes for every fixture batch, the JetStream stream's
// configuration and contents, deduplication, backpressure, auth, and option errors.
import test from 'ava'
import { jetstreamManager } from '@nats-io/jetstream'
import { connect, nkeys, type Msg } from '@nats-io/transport-node'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { decode as mpDecode } from '@msgpack/msgpack'
import { Registry } from 'prom-client'
import * as kv from '../ts/index.js'
import { engine, hex, NOW, readEnvelope, rev, toEvent, wire } from './helpers/fixtures.js'
import { startNatsServer, stopProcess } from './helpers/nats-server.js'
import { capture, quiet, readStream, sleep, waitFor, withNats } from './helpers/publishing.js'

const impl = kv.implementation
const shared = withNats(test)

/** Collects the messages of a subject (wildcards allowed) on the shared connection. */
function collect(subject: string): { msgs: Msg[]; stop: () => void } {
  const sub = shared.nc.subscribe(subject)
  const msgs: Msg[] = []
  void (async () => {
    for await (const m of sub) msgs.push(m)
  })()
  return { msgs, stop: () => sub.unsubscribe() }
}

let unique = 0
const name = (prefix: string) => `${prefix}${++unique}`

// ---------------------------------------------------------------------------------------------------
// event plane

test(`[${impl}] event plane: every fixture batch reaches the subject as the expected envelopes`, async (t) => {
  const ns = name('fx')
  const got = collect(`namespace.${ns}.component.*.kv-events`)
  await shared.nc.flush()
  let expectedMessages = 0
  const cases = engine.filter((c) => !('error' in c.expect))
  const publishers: kv.KvEventPublisher[] = []
  for (const [i, c] of cases.entries()) {
    // a fresh publisher per batch on the shared connection: it saw only this rank, so a clear is `cleared`
    const p = await kv.KvEventPublisher.create({
      namespace: ns,
      component: `c${i}`,
      kvBlockSize: c.kv_block_size,
      workerId: 7n,
      nats: shared.nc,
      now: () => NOW,
      logger: quiet,
    })
    publishers.push(p)
    const res = await p.ingest(hex(c.hex))
    t.is(res.payloads.length, 'error' in c.expect ? 0 : c.expect.events.length, c.name)
    expectedMessages += res.payloads.length
  }
  await Promise.all(publishers.map((p) => p.close()))
  t.false(publishers.some((p) => p.stats().sink.publishErrors > 0))
  await waitFor(() => got.msgs.length >= expectedMessages, `${expectedMessages} messages`, 10_000)
  got.stop()
  t.is(got.msgs.length, expectedMessages)

  for (const [i, c] of cases.entries()) {
    if ('error' in c.expect) continue
    const rank = c.expect.dp_rank
    const mine = got.msgs.filter((m) => m.subject === `namespace.${ns}.component.c${i}.kv-events`)
    t.is(mine.length, c.expect.events.length, c.name)
    c.expect.events.forEach((e, k) => {
      const env = readEnvelope(mine[k]!.data)
      t.is(env.topic, 'kv-events', c.name)
      t.is(env.publisherId, 7n, c.name)
      t.is(env.sequence, BigInt(k), c.name)
      t.is(env.publishedAt, BigInt(NOW), c.name)
      // the payload is the RouterEvent with consecutive ids from 0, byte for byte
      t.true(Buffer.from(env.payload).equals(kv.encodeRouterEvent(rev(7n, BigInt(k), rank, toEvent(e)))), c.name)
    })
  }
})

test(`[${impl}] event plane: one publisher over all block-size-4 batches sends exactly what its Ingestor emits, ids consecutive per rank`, async (t) => {
  const ns = name('seq')
  const got = collect(`namespace.${ns}.component.c.kv-events`)
  await shared.nc.flush()
  let clock = NOW
  const p = await kv.KvEventPublisher.create({
    namespace: ns,
    component: 'c',
    kvBlockSize: 4,
    workerId: 0xfedcba9876543210n,
    nats: shared.nc,
    now: () => ++clock,
    logger: quiet,
  })
  const reference = new kv.Ingestor({ kvBlockSize: 4, workerId: 0xfedcba9876543210n })
  const want: Buffer[] = []
  let refClock = NOW
  for (const c of engine.filter((x) => x.kv_block_size === 4)) {
    await p.ingest(hex(c.hex))
    want.push(...reference.ingest(hex(c.hex), ++refClock).payloads.map((b) => Buffer.from(b)))
  }
  await p.close()
  await waitFor(() => got.msgs.length >= want.length, 'messages', 10_000)
  got.stop()
  t.true(want.length >= 40, `${want.length} events`)
  t.is(got.msgs.length, want.length)
  const nextId = new Map<number, bigint>()
  got.msgs.forEach((m, i) => {
    t.true(Buffer.from(m.data).equals(want[i]!), `message ${i}`)
    const env = readEnvelope(m.data)
    t.is(env.sequence, BigInt(i))
    const ev = kv.decodeRouterEvent(env.payload)
    const expectId = nextId.get(ev.event.dpRank) ?? 0n
    t.is(ev.event.eventId, expectId)
    nextId.set(ev.event.dpRank, expectId + 1n)
  })
  t.is(p.stats().sink.published, want.length)
})

test(`[${impl}] event plane: manual API shares the ingest id counters and the local indexer sees every event`, async (t) => {
  const ns = name('man')
  const got = collect(`namespace.${ns}.component.c.kv-events`)
  await shared.nc.flush()
  const p = await kv.KvEventPublisher.create({
    namespace: ns,
    component: 'c',
    kvBlockSize: 4,
    workerId: 9n,
    nats: shared.nc,
    logger: quiet,
  })
  t.not(p.localIndexer, null, 'event-plane mode keeps a local indexer by default')
  const a = await p.publishStored({ tokenIds: [1, 2, 3, 4, 5, 6, 7, 8], blockHashes: [11n, 12n] })
  t.is(a.firstEventId, 0n)
  t.is(p.nextEventId(), 1n)
  const vllm = engine.find((c) => c.name === 'vllm_map_single_store')!
  const b = await p.ingest(hex(vllm.hex))
  t.is(b.firstEventId, 1n)
  const c = await p.publishRemoved([11n])
  t.is(c.firstEventId, 2n)
  const d = await p.publishCleared()
  t.is(d.firstEventId, 3n)
  await t.throwsAsync(p.publishRemoved([1] as unknown as bigint[]), { instanceOf: TypeError, message: /blockHashes\[0\]/ })
  await p.close()
  await waitFor(() => got.msgs.length >= 4, 'messages')
  got.stop()
  const types = got.msgs.map((m) => kv.decodeRouterEvent(readEnvelope(m.data).payload).event.data.type)
  t.deepEqual(types, ['stored', 'stored', 'removed', 'cleared'])
  t.deepEqual(p.stats().emitted, { stored: 2n, removed: 1n, cleared: 1n })
  t.is(p.localIndexer!.size(), 0)
  const range = p.localIndexer!.eventsInRange(0, 0n, 3n)
  t.is(range.kind, 'Events')
})

test(`[${impl}] close() is idempotent, flushes what was accepted, and later calls reject`, async (t) => {
  const ns = name('close')
  const got = collect(`namespace.${ns}.component.c.kv-events`)
  await shared.nc.flush()
  const own = await kv.KvEventPublisher.create({
    namespace: ns,
    component: 'c',
    kvBlockSize: 2,
    nats: { servers: shared.server.url },
    logger: quiet,
  })
  t.true(own.workerId >= 0n && own.workerId < 1n << 63n, 'default worker id is a random 63-bit id')
  for (let i = 0; i < 500; i++) void own.publishStored({ tokenIds: [i, i + 1], blockHashes: [BigInt(i) + (1n << 60n)] })
  const first = own.close()
  const second = own.close()
  t.is(first, second)
  await first
  t.true(own.closed)
  await waitFor(() => got.msgs.length >= 500, 'messages')
  got.stop()
  t.is(got.msgs.length, 500)
  await t.throwsAsync(own.publishCleared(), { message: /closed/ })
  await own[Symbol.asyncDispose]()
})

test.serial(`[${impl}] backpressure: with the server stopped, calls wait (never reject) and resume in order`, async (t) => {
  const nats = await startNatsServer()
  try {
    const sub = await connect({ servers: nats.url })
    const got: Uint8Array[] = []
    const s = sub.subscribe('namespace.bp.component.c.kv-events')
    void (async () => {
      for await (const m of s) got.push(m.data)
    })()
    await sub.flush()
    const p = await kv.KvEventPublisher.create({
      namespace: 'bp',
      component: 'c',
      kvBlockSize: 1,
      workerId: 1n,
      maxPending: 8,
      nats: { servers: nats.url },
      logger: quiet,
    })
    stopProcess(nats.pid!)
    const calls: Promise<kv.IngestResult>[] = []
    for (let i = 0; i < 40; i++) calls.push(p.publishStored({ tokenIds: [i], blockHashes: [BigInt(i + 1)] }))
    const settled: number[] = []
    calls.forEach((c, i) => void c.then(() => settled.push(i)))
    await sleep(300)
    const waiting = p.stats().waiting
    t.true(settled.length <= 9, `accepted while the server is stopped: ${settled.length}`)
    t.true(waiting >= 31, `waiting: ${waiting}`)
    process.kill(nats.pid!, 'SIGCONT')
    const results = await Promise.all(calls)
    t.deepEqual(
      settled,
      [...settled].sort((a, b) => a - b),
      'calls are accepted in call order',
    )
    t.deepEqual(
      results.map((r) => r.firstEventId),
      results.map((_, i) => BigInt(i)),
    )
    await p.close()
    await waitFor(() => got.length >= 40, 'messages')
    t.is(got.length, 40)
    await sub.close()
  } finally {
    if (nats.pid) process.kill(nats.pid, 'SIGCONT')
    await nats.stop()
  }
})

test(`[${impl}] Prometheus: every publisher's counters on one registry, read at scrape time`, async (t) => {
  const registry = new Registry()
  const ns = name('prom')
  const a = await kv.KvEventPublisher.create({
    namespace: ns,
    component: 'a',
    kvBlockSize: 2,
    workerId: 0xfedcba9876543210n,
    nats: shared.nc,
    logger: quiet,
  })
  const b = await kv.KvEventPublisher.create({
    namespace: ns,
    component: 'b',
    kvBlockSize: 2,
    workerId: 2n,
    nats: shared.nc,
    logger: quiet,
  })
  const offA = kv.registerPublisherMetrics(a, { registry })
  kv.registerPublisherMetrics(b, { registry })
  await a.publishStored({ tokenIds: [1, 2, 3, 4], blockHashes: [1n, 2n] })
  await a.publishRemoved([2n])
  await a.ingest(Uint8Array.of(0xc1)) // malformed
  await b.publishCleared()
  t.true(await a.flush(5000))
  const text = await registry.metrics()
  const value = (metric: string, labels: string) => {
    const line = text.split('\n').find((l) => l.startsWith(`${metric}{`) && l.includes(labels))
    return line === undefined ? null : Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  const la = `worker_id="${0xfedcba9876543210n}",namespace="${ns}",component="a"`
  const lb = `worker_id="2",namespace="${ns}",component="b"`
  t.is(value('dynamo_kv_events_emitted_total', `${la},type="stored"`), 1)
  t.is(value('dynamo_kv_events_emitted_total', `${la},type="removed"`), 1)
  t.is(value('dynamo_kv_events_emitted_total', `${lb},type="cleared"`), 1)
  t.is(value('dynamo_kv_events_rejected_total', `${la},reason="malformed"`), 1)
  t.is(value('dynamo_kv_engine_batches_total', la), 1)
  t.is(value('dynamo_kv_published_total', la), 2)
  t.is(value('dynamo_kv_queue_depth', la), 0)
  t.is(value('dynamo_kv_undelivered_total', la), 0)
  for (const reason of ['unconfirmed', 'dropped', 'refused'])
    t.is(value('dynamo_kv_undelivered_by_reason_total', `${la},reason="${reason}"`), 0)
  t.is(value('dynamo_kv_calls_rejected_total', `${la},reason="max_waiting"`), 0)
  t.is(value('dynamo_kv_calls_rejected_total', `${la},reason="close_timeout"`), 0)
  t.is(value('dynamo_kv_calls_waiting', la), 0)
  t.is(value('dynamo_kv_zmq_gaps_total', la), null, 'no ZMQ series without a source')
  offA()
  const after = await registry.metrics()
  t.false(after.includes(la), 'an unregistered publisher disappears')
  t.true(after.includes(lb))
  t.throws(() => kv.registerPublisherMetrics(b, { registry, prefix: 'bad prefix' }), { instanceOf: RangeError, message: /prefix/ })
  await Promise.all([a.close(), b.close()])
})

// ---------------------------------------------------------------------------------------------------
// JetStream

test(`[${impl}] JetStream: the stream is created as specified and holds the JSON events in order, u64 exact`, async (t) => {
  const ns = name('Js_NS.')
  const stream = kv.jetstreamStreamName(ns, 'Backend')
  const log = capture()
  const workerId = 0xfedcba9876543210n
  const p = await kv.KvEventPublisher.create({
    namespace: ns,
    component: 'Backend',
    kvBlockSize: 2,
    workerId,
    mode: 'jetstream',
    nats: shared.nc,
    logger: log,
  })
  t.is(p.streamName, stream)
  t.is(p.subject, `${stream}.kv-events`)
  t.is(p.localIndexer, null, 'JetStream mode has no local indexer by default')
  t.true(
    log.lines.some((l) => l.level === 'warn' && /shared/.test(l.msg ?? '')),
    'warns that folded names share the stream',
  )
  const jsm = await jetstreamManager(shared.nc)
  const info = await jsm.streams.info(stream)
  t.deepEqual(info.config.subjects, [`${stream}.*`])
  t.is(info.config.max_age, 3600 * 1e9)
  t.is(info.config.duplicate_window, 120 * 1e9)

  const big = [0xffffffffffffffffn, (1n << 53n) + 1n, 0x8000000000000001n]
  const r1 = await p.publishStored({ tokenIds: [1, 2, 3, 4, 5, 6], blockHashes: big, parentHash: (1n << 63n) + 7n })
  const r2 = await p.publishRemoved([big[2]!])
  const r3 = await p.publishCleared()
  t.true(await p.flush(5000))
  const msgs = await readStream(shared.nc, stream)
  t.is(msgs.length, 3)
  const payloads = [...r1.payloads, ...r2.payloads, ...r3.payloads]
  msgs.forEach((m, i) => {
    t.is(m.subject, `${stream}.kv-events`)
    t.true(Buffer.from(m.data).equals(payloads[i]!))
    t.is(m.msgId?.split('.').slice(0, 2).join('.'), `${workerId}.0`)
    t.is(m.msgId?.split('.')[3], String(i))
  })
  const text = Buffer.from(msgs[0]!.data).toString('utf8')
  t.true(text.includes(`"worker_id":${workerId}`), text)
  t.true(text.includes('"block_hash":18446744073709551615'), text)
  t.true(text.includes('"parent_hash":9223372036854775815'), text)
  const first = kv.decodeRouterEvent(msgs[0]!.data, 'json')
  t.deepEqual(first.event.data.type === 'stored' && first.event.data.blocks.map((b) => b.blockHash), big)
  t.deepEqual(
    msgs.map((m) => kv.decodeRouterEvent(m.data, 'json').event.data.type),
    ['stored', 'removed', 'cleared'],
  )
  await p.close()
})

test(`[${impl}] JetStream: DYN_NATS_STREAM_MAX_AGE sets max age and duplicate window; an existing stream is used as is`, async (t) => {
  const ns = name('age')
  const p = await kv.KvEventPublisher.create(
    { namespace: ns, component: 'c', kvBlockSize: 2, mode: 'jetstream', nats: shared.nc, logger: quiet },
    { DYN_NATS_STREAM_MAX_AGE: '60' },
  )
  const jsm = await jetstreamManager(shared.nc)
  const info = await jsm.streams.info(p.streamName!)
  t.is(info.config.max_age, 60 * 1e9)
  t.is(info.config.duplicate_window, 60 * 1e9)
  await p.close()
  // a second publisher with another max age leaves the stream alone
  const q = await kv.KvEventPublisher.create(
    { namespace: ns, component: 'c', kvBlockSize: 2, mode: 'jetstream', nats: shared.nc, logger: quiet },
    { DYN_NATS_STREAM_MAX_AGE: '7200' },
  )
  t.is((await jsm.streams.info(p.streamName!)).config.max_age, 60 * 1e9)
  await q.close()
  await t.throwsAsync(
    kv.KvEventPublisher.create(
      { namespace: ns, component: 'c', kvBlockSize: 2, mode: 'jetstream', nats: shared.nc, logger: quiet },
      { DYN_NATS_STREAM_MAX_AGE: '1h' },
    ),
    { instanceOf: RangeError, message: /DYN_NATS_STREAM_MAX_AGE/ },
  )
})

test(`[${impl}] JetStream: the same event published twice is stored once; a restarted publisher's new events are stored`, async (t) => {
  const ns = name('dup')
  const opts = { namespace: ns, component: 'c', kvBlockSize: 2, workerId: 42n, mode: 'jetstream' as const, nats: shared.nc, logger: quiet }
  const call = { tokenIds: [1, 2, 3, 4], blockHashes: [100n, 101n] }
  const a = await kv.KvEventPublisher.create({ ...opts, jetstream: { epoch: 'fixed' } })
  await a.publishStored(call)
  await a.publishRemoved([101n])
  await a.close()
  // the same worker, epoch and event ids: the stream's duplicate window drops both
  const b = await kv.KvEventPublisher.create({ ...opts, jetstream: { epoch: 'fixed' } })
  await b.publishStored(call)
  await b.publishRemoved([101n])
  await b.close()
  t.is(b.stats().sink.duplicates, 2)
  t.is(b.stats().sink.published, 0)
  // a restarted publisher (new random epoch) with the same worker id: ids restart at 0, yet are stored
  const c = await kv.KvEventPublisher.create(opts)
  await c.publishStored(call)
  await c.close()
  t.is(c.stats().sink.duplicates, 0)
  t.is(c.stats().sink.published, 1)
  const msgs = await readStream(shared.nc, a.streamName!)
  t.is(msgs.length, 3)
  t.deepEqual(
    msgs.map((m) => kv.decodeRouterEvent(m.data, 'json').event.eventId),
    [0n, 1n, 0n],
  )
})

// ---------------------------------------------------------------------------------------------------
// worker metrics

test(`[${impl}] metrics: the latest value per rank after 1 ms, repeats skipped, bytes as the fixture`, async (t) => {
  const ns = name('m')
  const got = collect(`namespace.${ns}.kv_metrics`)
  await shared.nc.flush()
  const fx = wire.envelopes.find((e) => e.name === 'active_load_envelope')!
  const m = await kv.WorkerMetricsPublisher.create({
    namespace: ns,
    workerId: 7n,
    nats: shared.nc,
    now: () => Number(fx.published_at),
    logger: quiet,
  })
  t.is(m.subject, `namespace.${ns}.kv_metrics`)
  // 10 changes within 1 ms: one message, with the last value (12, the fixture's)
  for (let v = 3; v <= 12; v++) m.publish(0, v)
  await sleep(30)
  await shared.nc.flush()
  await waitFor(() => got.msgs.length >= 1, 'messages')
  await sleep(20)
  t.is(got.msgs.length, 1)
  t.is(Buffer.from(got.msgs[0]!.data).toString('hex'), fx.envelope_msgpack_hex)
  // the same value again: nothing
  m.publish(0, 12n)
  await sleep(30)
  await shared.nc.flush()
  t.is(got.msgs.length, 1)
  // two ranks at once: one message each, sequence continuing
  m.publish(0, 5)
  m.publish(1, 5)
  await waitFor(() => got.msgs.length >= 3, 'messages')
  await sleep(20)
  t.is(got.msgs.length, 3)
  const loads = got.msgs.slice(1).map((x) => readEnvelope(x.data))
  t.deepEqual(
    loads.map((e) => e.sequence),
    [1n, 2n],
  )
  t.deepEqual(
    loads.map((e) => e.topic),
    ['kv_metrics', 'kv_metrics'],
  )
  // each rank has its own timer: which of the two fires first is not fixed, the sequence follows sending
  t.deepEqual(
    loads.map((e) => Buffer.from(e.payload).toString('hex')).sort(),
    [0, 1].map((rank) => kv.encodeActiveLoad({ workerId: 7n, dpRank: rank, activeDecodeBlocks: 5n }).toString('hex')).sort(),
  )
  t.throws(() => m.publish(0, -1), { instanceOf: RangeError, message: /activeDecodeBlocks/ })
  t.throws(() => m.publish(-1, 1), { instanceOf: RangeError, message: /dpRank/ })
  await m.close()
  t.is(m.stats().published, 3)
  got.stop()
})

test(`[${impl}] metrics: a value that keeps changing is still published (at most 50 ms after it first changed)`, async (t) => {
  const ns = name('m')
  const got = collect(`namespace.${ns}.kv_metrics`)
  await shared.nc.flush()
  const m = await kv.WorkerMetricsPublisher.create({ namespace: ns, workerId: 8n, nats: shared.nc, logger: quiet })
  // a change on every turn of the event loop until 3 messages have arrived: a pure debounce would never
  // publish (the bound on the loop only ends a failing run; how long it takes depends on the machine)
  const giveUp = Date.now() + 60_000
  let calls = 0
  while (got.msgs.length < 3 && Date.now() < giveUp) {
    m.publish(0, ++calls)
    await new Promise((r) => setImmediate(r))
  }
  const whileChanging = got.msgs.length
  await m.close()
  await shared.nc.flush()
  const lastValue = () => {
    const last = mpDecode(readEnvelope(got.msgs.at(-1)!.data).payload, { useBigInt64: true }) as Record<string, unknown>
    return BigInt(last.active_decode_blocks as number)
  }
  await waitFor(() => lastValue() === BigInt(calls), 'the latest value')
  got.stop()
  t.log(`${calls} changes, ${whileChanging} messages while changing`)
  t.true(whileChanging >= 3, `${whileChanging} messages while the value kept changing`)
  t.is(lastValue(), BigInt(calls), 'close() publishes the latest value')
})

// ---------------------------------------------------------------------------------------------------
// auth

test.serial(`[${impl}] auth: token and user/password, by options and by environment; a wrong password fails create clearly`, async (t) => {
  const tokenServer = await startNatsServer({ args: ['--auth', 's3cret-token'] })
  const userServer = await startNatsServer({ args: ['--user', 'alice', '--pass', 'wonderland'] })
  try {
    const base = { namespace: 'auth', component: 'c', kvBlockSize: 4, logger: quiet }
    const viaTokenOption = await kv.KvEventPublisher.create({ ...base, nats: { servers: tokenServer.url, token: 's3cret-token' } }, {})
    await viaTokenOption.close()
    const viaTokenEnv = await kv.KvEventPublisher.create(base, { NATS_SERVER: tokenServer.url, NATS_AUTH_TOKEN: 's3cret-token' })
    await viaTokenEnv.close()
    const viaUserOption = await kv.KvEventPublisher.create(
      { ...base, nats: { servers: userServer.url, user: 'alice', pass: 'wonderland' } },
      {},
    )
    await viaUserOption.close()
    // user/password wins over a token in the environment (Dynamo's order)
    const viaUserEnv = await kv.KvEventPublisher.create(base, {
      NATS_SERVER: userServer.url,
      NATS_AUTH_USERNAME: 'alice',
      NATS_AUTH_PASSWORD: 'wonderland',
      NATS_AUTH_TOKEN: 'nope',
    })
    await viaUserEnv.close()
    const metrics = await kv.WorkerMetricsPublisher.create(
      { namespace: 'auth', workerId: 1n, logger: quiet },
      { NATS_SERVER: tokenServer.url, NATS_AUTH_TOKEN: 's3cret-token' },
    )
    await metrics.close()

    const wrong = await t.throwsAsync(
      kv.KvEventPublisher.create({ ...base, nats: { servers: userServer.url, user: 'alice', pass: 'wrong' } }, {}),
      { instanceOf: kv.NatsConnectError },
    )
    t.regex(
      wrong!.message,
      new RegExp(
        `could not connect to NATS at ${userServer.url.replace(/[.]/g, '\\.')} \\(user/password auth from options\\): .*[Aa]uthorization`,
      ),
    )
    const noToken = await t.throwsAsync(kv.KvEventPublisher.create(base, { NATS_SERVER: tokenServer.url }), {
      instanceOf: kv.NatsConnectError,
    })
    t.regex(noToken!.message, /no auth.*[Aa]uthorization/)
    const envWrong = await t.throwsAsync(kv.KvEventPublisher.create(base, { NATS_SERVER: tokenServer.url, NATS_AUTH_TOKEN: 'bad' }), {
      instanceOf: kv.NatsConnectError,
    })
    t.regex(envWrong!.message, /token auth from environment/)
  } finally {
    await tokenServer.stop()
    await userServer.stop()
  }
})

test.serial(`[${impl}] auth: an nkey seed from the environment, a credentials file that does not exist, and TLS by options`, async (t) => {
  const user = nkeys.createUser()
  const dir = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-nkey-'))
  const conf = path.join(dir, 'nkey.conf')
  writeFileSync(conf, `authorization { users = [ { nkey: "${user.getPublicKey()}" } ] }\n`)
  const tls = (f: string) => fileURLToPath(new URL(`./fixtures/tls/${f}`, import.meta.url))
  const nkeyServer = await startNatsServer({ args: ['-c', conf] })
  const tlsServer = await startNatsServer({ args: ['--tls', '--tlscert', tls('server.pem'), '--tlskey', tls('server-key.pem')] })
  try {
    const base = { namespace: 'auth', component: 'c', kvBlockSize: 4, logger: quiet }
    const seed = new TextDecoder().decode(user.getSeed())
    const viaNkey = await kv.KvEventPublisher.create(base, { NATS_SERVER: nkeyServer.url, NATS_AUTH_NKEY: seed })
    await viaNkey.publishCleared()
    t.true(await viaNkey.flush(5000))
    await viaNkey.close()
    const other = new TextDecoder().decode(nkeys.createUser().getSeed())
    const wrongKey = await t.throwsAsync(kv.KvEventPublisher.create(base, { NATS_SERVER: nkeyServer.url, NATS_AUTH_NKEY: other }), {
      instanceOf: kv.NatsConnectError,
    })
    t.regex(wrongKey!.message, /nkey auth from environment/)
    await t.throwsAsync(
      kv.KvEventPublisher.create(base, { NATS_SERVER: nkeyServer.url, NATS_AUTH_CREDENTIALS_FILE: path.join(dir, 'missing.creds') }),
      {
        instanceOf: kv.NatsConnectError,
        message: /credentials file .*missing\.creds.*NATS_AUTH_CREDENTIALS_FILE/,
      },
    )

    const viaTls = await kv.KvEventPublisher.create({ ...base, nats: { servers: tlsServer.url, tls: { caFile: tls('ca.pem') } } }, {})
    await viaTls.publishCleared()
    t.true(await viaTls.flush(5000))
    await viaTls.close()
    // without the CA the server's certificate is not trusted
    const untrusted = await t.throwsAsync(
      kv.KvEventPublisher.create({ ...base, nats: { servers: tlsServer.url, tls: true, timeoutMs: 3000 } }, {}),
      { instanceOf: kv.NatsConnectError },
    )
    t.regex(untrusted!.message, /certificate|self.signed|TLS|tls/i)
  } finally {
    await nkeyServer.stop()
    await tlsServer.stop()
    rmSync(dir, { recursive: true, force: true })
  }
})

// ---------------------------------------------------------------------------------------------------
// options

test(`[${impl}] invalid options fail create with an error naming the option`, async (t) => {
  const base = { namespace: 'ns', component: 'c', kvBlockSize: 4, nats: shared.nc, logger: quiet }
  const cases: [object, RegExp, object?][] = [
    [{ ...base, namespace: 'has space' }, /namespace/],
    [{ ...base, component: 'a*' }, /component/],
    [{ ...base, kvBlockSize: 0 }, /kvBlockSize/],
    [{ ...base, workerId: 5 }, /workerId/],
    [{ ...base, mode: 'zmq' }, /mode/],
    [{ ...base, maxPending: 0 }, /maxPending/],
    [{ ...base, maxWaiting: 0 }, /maxWaiting/],
    [{ ...base, maxWaiting: 1.5 }, /maxWaiting/],
    [{ ...base, dpRanks: [0, 0] }, /dpRanks/],
    [{ ...base, localIndexer: { bufferSize: -1 } }, /localIndexer\.bufferSize/],
    [{ ...base, now: 5 }, /now/],
    [{ ...base, logger: console.log }, /logger/],
    [{ ...base, jetstream: { window: 4 } }, /jetstream/],
    [{ ...base, mode: 'jetstream', jetstream: { window: 0 } }, /jetstream\.window/],
    [{ ...base, mode: 'jetstream', jetstream: { epoch: 'a.b' } }, /jetstream\.epoch/],
    [{ ...base, colour: 'red' }, /colour/],
    [{ ...base, nats: { servers: [] } }, /nats\.servers/],
    [{ ...base, nats: { user: 'a' } }, /nats\.user and nats\.pass/],
    [{ ...base, nats: { token: 't', user: 'a', pass: 'b' } }, /one kind of auth/],
    [{ ...base, nats: { sever: 'x' } }, /nats\.sever/],
    [{ ...base, nats: undefined }, /NATS_AUTH_USERNAME and \$NATS_AUTH_PASSWORD/, { NATS_AUTH_PASSWORD: 'x' }],
  ]
  for (const [opts, message, env] of cases) {
    await t.throwsAsync(
      kv.KvEventPublisher.create(opts as kv.KvEventPublisherOptions, (env ?? {}) as Record<string, string>),
      { message },
      JSON.stringify(opts, (_k, v) => (typeof v === 'bigint' ? String(v) : v === shared.nc ? 'nc' : v)),
    )
  }
  const log = capture()
  const p = await kv.KvEventPublisher.create({ ...base, logger: log }, { DYN_EVENT_PLANE: 'zmq' })
  t.true(log.lines.some((l) => l.level === 'warn' && /DYN_EVENT_PLANE/.test(l.msg ?? '')))
  await p.close()
  const unreachable = await t.throwsAsync(
    kv.KvEventPublisher.create({ ...base, nats: { servers: 'nats://127.0.0.1:1', timeoutMs: 1000 } }, {}),
    { instanceOf: kv.NatsConnectError },
  )
  t.regex(unreachable!.message, /nats:\/\/127\.0\.0\.1:1/)
})
