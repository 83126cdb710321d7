// KvRouter's dynamo-1.4 source against real KvEventPublishers with wire 'dynamo-1.4': two workers × two
// dp ranks register their ranks in a real discovery store (a temporary file store, or a private etcd) and
// publish over direct ZeroMQ or a private nats-server. The router finds them through the records alone,
// and its index must end equal to the workers' local indexes, answering findMatches as they imply.
import test, { type ExecutionContext } from 'ava'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { connect } from '@nats-io/transport-node'
import { Publisher } from 'zeromq'
import * as kv from '../ts/index.js'
import { openDiscovery, publisherRecords } from '../ts/transport/discovery/index.js'
import { type EtcdServer, startEtcd } from './helpers/etcd-server.js'
import { type NatsServer, startNatsServer } from './helpers/nats-server.js'
import { freePorts } from './helpers/zmq.js'
import { holdings, type ManualOp, manualOps, quiet, sleep, waitFor } from './helpers/publishing.js'

const impl = kv.implementation
const BS = 16
const LONG = 120_000
const NS = 'dynamo'
const COMP = 'backend'
const EP = 'generate'

let etcd: EtcdServer
let nats: NatsServer
const roots: string[] = []
test.before(async () => {
  etcd = await startEtcd()
  nats = await startNatsServer()
})
test.after.always(async () => {
  await etcd?.stop()
  await nats?.stop()
  for (const r of roots) rmSync(r, { recursive: true, force: true })
})

type Local = { workerId: bigint; index: kv.LocalIndexer }
const same = (a: object, b: object) => JSON.stringify(a) === JSON.stringify(b)
const big = (_k: string, v: unknown) => (typeof v === 'bigint' ? String(v) : v)

async function apply(p: kv.KvEventPublisher, op: ManualOp): Promise<void> {
  if (op.kind === 'stored')
    await p.publishStored({ tokenIds: op.tokenIds, blockHashes: op.blockHashes, parentHash: op.parentHash, dpRank: op.dpRank })
  else if (op.kind === 'removed') await p.publishRemoved(op.blockHashes, op.dpRank)
  else await p.publishCleared(op.dpRank)
}

function assertMatches(t: ExecutionContext, router: kv.KvRouter, locals: Local[]): void {
  let n = 0
  let bad = 0
  for (const l of locals)
    for (const ev of l.index.dump()) {
      if (ev.event.data.type !== 'stored') continue
      const path = BigUint64Array.from(ev.event.data.blocks, (b) => b.tokensHash)
      for (const p of [path, path.slice(0, Math.max(1, path.length >> 1))]) {
        const want = locals.flatMap((o) => o.index.findMatches(p).scores)
        n++
        if (JSON.stringify(router.findMatchesForHashes(p).scores, big) !== JSON.stringify(want, big)) bad++
      }
    }
  t.is(bad, 0, `${bad} of ${n} lookups differ`)
  t.true(n > 100, `${n} lookups`)
}

for (const transport of ['zmq', 'nats'] as const)
  for (const backend of ['file', 'etcd'] as const)
    test.serial(
      `[${impl}] dynamo-1.4 source, ${transport} event plane, ${backend} discovery: the router equals the workers' local indexes`,
      async (t) => {
        t.timeout(5 * 60_000)
        let discovery: kv.KvEventPublisherOptions['discovery']
        if (backend === 'file') {
          const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-router14-'))
          roots.push(root)
          discovery = { backend: 'file', fileRoot: root }
        } else discovery = { backend: 'etcd', etcdEndpoints: etcd.url }
        const router = await kv.KvRouter.create(
          {
            kvBlockSize: BS,
            source: { kind: 'dynamo-1.4', namespace: NS, component: COMP, endpoint: EP, discovery, pollMs: 100 },
            nats: transport === 'nats' ? { servers: nats.url } : undefined,
            logger: quiet,
          },
          {},
        )
        const pubs: kv.KvEventPublisher[] = []
        try {
          for (const workerId of [2n ** 63n + 11n, 12n])
            pubs.push(
              await kv.KvEventPublisher.create(
                {
                  wire: 'dynamo-1.4',
                  namespace: NS,
                  component: COMP,
                  endpoint: EP,
                  kvBlockSize: BS,
                  workerId,
                  dpRanks: [0, 1],
                  localIndexer: true,
                  eventPlane: transport,
                  ...(transport === 'zmq' ? { eventPlaneHost: '127.0.0.1', zmqSettleMs: 60_000 } : { nats: { servers: nats.url } }),
                  discovery,
                  logger: quiet,
                },
                {},
              ),
            )
          const ops = pubs.map((_, i) => manualOps(700 + i, 1_000_000, BS, 2))
          for (let k = 0; k < 300; k++) for (let i = 0; i < pubs.length; i++) await apply(pubs[i]!, ops[i]!.next().value as ManualOp)
          for (const p of pubs) t.true(await p.flush(LONG))
          const locals: Local[] = pubs
            .map((p) => ({ workerId: p.workerId, index: p.localIndexer! }))
            .sort((a, b) => (a.workerId < b.workerId ? -1 : 1))
          const want = () => holdings(locals.flatMap((l) => l.index.dump()))
          const deadline = Date.now() + LONG
          while (!same(holdings(router.index.dump()), want())) {
            if (Date.now() > deadline)
              throw new Error(`the router did not converge: ${JSON.stringify(router.dynamo14Stats())} ${JSON.stringify(router.stats())}`)
            await sleep(100)
          }
          t.true(router.index.size() > 500, `${router.index.size()} blocks`)
          t.log(
            `${router.index.size()} blocks; ${JSON.stringify(router.dynamo14Stats())}; applied ${JSON.stringify(router.stats().events)}`,
          )
          assertMatches(t, router, locals)
          const st = router.dynamo14Stats()!
          t.is(st.activeRanks, 4)
          t.is(st.ambiguousRanks, 0)
          t.is(st.droppedBatches, 0)
          t.is(st.resets, 0)
          t.is(st.zmqChannels, transport === 'zmq' ? 4 : 0)
          t.deepEqual(router.workers(), [12n, 2n ** 63n + 11n])
          t.is(router.stats().invalid, 0)
        } finally {
          await router.close()
          for (const p of pubs) await p.close()
        }
      },
    )

// ---------------------------------------------------------------------------------------------------
// Dynamo 1.6.1's acceptance rules, with records registered by hand and envelopes built by hand

test.serial(
  `[${impl}] dynamo-1.4 source: only the bound publisher's batches of its own rank; ambiguous ranks dropped; live-only gaps and new incarnations clear the rank`,
  async (t) => {
    const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-router14-rules-'))
    roots.push(root)
    const discovery = { backend: 'file', fileRoot: root } as const
    const registrations: { close(): Promise<void> }[] = []
    const register = async (publisherId: bigint, workerId: bigint, dpRank: number) => {
      const d = await openDiscovery(discovery, {})
      await d.register(
        publisherRecords({ namespace: NS, component: COMP, endpoint: EP, workerId, dpRank, publisherId, natsEventPlane: true }),
      )
      registrations.push(d)
      return d
    }
    const nc = await connect({ servers: nats.url })
    const subject = kv.endpointSubject(NS, COMP, EP, 'kv-events')
    const seqs = new Map<bigint, bigint>()
    const send = (publisherId: bigint, workerId: bigint, dpRank: number, eventId: bigint, block: bigint, parent: bigint | null = null) => {
      const ev: kv.RouterEventValue = {
        workerId,
        event: {
          eventId,
          dpRank,
          data: { type: 'stored', parentHash: parent, blocks: [{ blockHash: block, tokensHash: block + 1000n, mmExtraInfo: null }] },
        },
      }
      const sequence = seqs.get(publisherId) ?? 0n
      seqs.set(publisherId, sequence + 1n)
      nc.publish(
        subject,
        kv.encodeEnvelope({ publisherId, sequence, publishedAt: 0, topic: 'kv-events', payload: kv.encodeRouterEvents([ev], 'msgpack') }),
      )
    }
    const r = await kv.KvRouter.create(
      {
        kvBlockSize: BS,
        source: { kind: 'dynamo-1.4', namespace: NS, component: COMP, endpoint: EP, discovery, pollMs: 50 },
        nats: { servers: nats.url },
        logger: quiet,
      },
      {},
    )
    const held = () => holdings(r.index.dump())
    const stats = () => r.dynamo14Stats()!
    try {
      await register(0x102n, 5n, 1)
      await register(0x103n, 6n, 0)
      await register(0x104n, 6n, 0)
      await waitFor(() => stats().activeRanks === 1 && stats().ambiguousRanks === 1, 'the first records', LONG)
      // a batch from a publisher not listed yet is held until its records are
      send(0x101n, 5n, 0, 1n, 11n)
      await nc.flush()
      await sleep(200)
      t.deepEqual(held(), {}, 'not applied while unbound')
      const p1 = await register(0x101n, 5n, 0)
      await waitFor(() => (held()['5/0'] ?? []).length === 1, 'the held batch applied once bound', LONG)
      // another rank's event from 0x102 (bound to 5/1): the whole batch is dropped
      send(0x102n, 5n, 0, 1n, 21n)
      // an ambiguous rank: dropped
      send(0x103n, 6n, 0, 1n, 31n)
      // in order, a duplicate and an older id (ignored), then a gap: the rank is cleared, then the event applied
      send(0x101n, 5n, 0, 2n, 12n, 11n)
      send(0x101n, 5n, 0, 2n, 13n, 11n)
      send(0x101n, 5n, 0, 1n, 14n)
      await nc.flush()
      await waitFor(() => stats().droppedBatches === 2 && stats().ignored === 2, 'drops and ignores', LONG)
      t.deepEqual(held(), { '5/0': ['11', '12'] })
      send(0x101n, 5n, 0, 5n, 15n)
      await nc.flush()
      await waitFor(() => stats().resets === 1, 'the live-only gap', LONG)
      t.deepEqual(held(), { '5/0': ['15'] }, 'the rank was cleared, then the event applied')
      // the rank's publisher is replaced (a new incarnation, ids from 1 again): the rank starts over
      await p1.close()
      await register(0x105n, 5n, 0)
      await waitFor(() => held()['5/0'] === undefined, 'the old incarnation cleared', LONG)
      send(0x105n, 5n, 0, 1n, 16n)
      send(0x101n, 5n, 0, 6n, 17n) // the old publisher is no longer bound
      await nc.flush()
      await waitFor(() => (held()['5/0'] ?? []).length === 1, 'the new incarnation', LONG)
      await sleep(300)
      t.deepEqual(held(), { '5/0': ['16'] })
      t.is(stats().ambiguousRanks, 1)
      t.is(stats().activeRanks, 2)
    } finally {
      await r.close()
      await nc.close()
      for (const d of registrations) await d.close()
    }
  },
)

test(`[${impl}] dynamo-1.4 source: option errors name the option`, async (t) => {
  const base = { kind: 'dynamo-1.4', namespace: NS, component: COMP, endpoint: EP } as const
  const create = (source: object) => kv.KvRouter.create({ kvBlockSize: BS, source: source as kv.RouterSource, logger: quiet }, {})
  await t.throwsAsync(create({ ...base, endpoint: '' }), { instanceOf: TypeError, message: /source\.endpoint must be a non-empty string/ })
  await t.throwsAsync(create({ ...base, namespace: 7 }), { instanceOf: TypeError, message: /source\.namespace/ })
  await t.throwsAsync(create({ ...base, discovery: 'etcd' }), { instanceOf: TypeError, message: /source\.discovery must be an object/ })
  await t.throwsAsync(create({ ...base, pollMs: 0 }), { message: /source\.pollMs/ })
  await t.throwsAsync(create({ ...base, discovery: { backend: 'zookeeper' } }), { message: /backend "zookeeper"/ })
  await t.throwsAsync(create({ ...base, kind: 'dynamo-2' }), { instanceOf: RangeError, message: /'dynamo-1\.4'/ })
})

for (const transport of ['zmq', 'nats'] as const)
  test.serial(
    `[${impl}] dynamo-1.4 source, ${transport}: a worker restarted under the same id (new publishers) replaces its ranks' blocks`,
    async (t) => {
      t.timeout(5 * 60_000)
      const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-router14-restart-'))
      roots.push(root)
      const discovery = { backend: 'file', fileRoot: root } as const
      const router = await kv.KvRouter.create(
        {
          kvBlockSize: BS,
          source: { kind: 'dynamo-1.4', namespace: NS, component: COMP, endpoint: EP, discovery, pollMs: 100 },
          nats: transport === 'nats' ? { servers: nats.url } : undefined,
          logger: quiet,
        },
        {},
      )
      const open = () =>
        kv.KvEventPublisher.create(
          {
            wire: 'dynamo-1.4',
            namespace: NS,
            component: COMP,
            endpoint: EP,
            kvBlockSize: BS,
            workerId: 77n,
            dpRanks: [0, 1],
            localIndexer: true,
            eventPlane: transport,
            ...(transport === 'zmq' ? { eventPlaneHost: '127.0.0.1', zmqSettleMs: 60_000 } : { nats: { servers: nats.url } }),
            discovery,
            logger: quiet,
          },
          {},
        )
      const converge = async (p: kv.KvEventPublisher, what: string) => {
        const deadline = Date.now() + LONG
        while (!same(holdings(router.index.dump()), holdings(p.localIndexer!.dump()))) {
          if (Date.now() > deadline) throw new Error(`${what}: ${JSON.stringify(router.dynamo14Stats())}`)
          await sleep(100)
        }
      }
      let p = await open()
      try {
        const first = manualOps(900, 1_000_000, BS, 2)
        for (let k = 0; k < 150; k++) await apply(p, first.next().value as ManualOp)
        t.true(await p.flush(LONG))
        await converge(p, 'first incarnation')
        const before = new Set(Object.values(holdings(router.index.dump())).flat())
        t.true(before.size > 100)
        await p.close()
        p = await open()
        const again = manualOps(901, 1_000_000, BS, 2)
        for (let k = 0; k < 150; k++) await apply(p, again.next().value as ManualOp)
        t.true(await p.flush(LONG))
        await converge(p, 'second incarnation')
        const after = Object.values(holdings(router.index.dump())).flat()
        t.true(after.length > 100)
        t.false(
          after.some((h) => before.has(h)),
          'nothing of the first incarnation is left',
        )
        assertMatches(t, router, [{ workerId: 77n, index: p.localIndexer! }])
        t.is(router.dynamo14Stats()!.droppedBatches, 0)
      } finally {
        await router.close()
        await p.close()
      }
    },
  )

test.serial(`[${impl}] dynamo-1.4 source, etcd: records are picked up by the watch (no periodic listing in the test's time)`, async (t) => {
  t.timeout(5 * 60_000)
  const discovery = { backend: 'etcd', etcdEndpoints: etcd.url } as const
  const router = await kv.KvRouter.create(
    {
      kvBlockSize: BS,
      source: { kind: 'dynamo-1.4', namespace: NS, component: 'watched', endpoint: EP, discovery, pollMs: 3_600_000 },
      nats: { servers: nats.url },
      logger: quiet,
    },
    {},
  )
  const p = await kv.KvEventPublisher.create(
    {
      wire: 'dynamo-1.4',
      namespace: NS,
      component: 'watched',
      endpoint: EP,
      kvBlockSize: BS,
      workerId: 5n,
      dpRanks: [0, 1],
      localIndexer: true,
      eventPlane: 'nats',
      nats: { servers: nats.url },
      discovery,
      logger: quiet,
    },
    {},
  )
  try {
    const ops = manualOps(950, 1_000_000, BS, 2)
    for (let k = 0; k < 100; k++) await apply(p, ops.next().value as ManualOp)
    t.true(await p.flush(LONG))
    await waitFor(() => same(holdings(router.index.dump()), holdings(p.localIndexer!.dump())), 'the router equal to the worker', LONG)
    t.is(router.dynamo14Stats()!.activeRanks, 2)
    t.true(router.index.size() > 50)
  } finally {
    await router.close()
    await p.close()
  }
})

test.serial(`[${impl}] dynamo-1.4 source, ZeroMQ: frames checked as a 1.6 router does; bad ones dropped, the rest applied`, async (t) => {
  t.timeout(5 * 60_000)
  const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-router14-frames-'))
  roots.push(root)
  const discovery = { backend: 'file', fileRoot: root } as const
  const port = await freePorts(1)
  const endpoint = `tcp://127.0.0.1:${port}`
  const pub = new Publisher({ linger: 0 })
  await pub.bind(endpoint)
  const publisherId = 0xabcn
  const d = await openDiscovery(discovery, {})
  await d.register(
    publisherRecords({ namespace: NS, component: 'frames', endpoint: EP, workerId: 9n, dpRank: 0, publisherId, zmqEndpoint: endpoint }),
  )
  const router = await kv.KvRouter.create(
    {
      kvBlockSize: BS,
      source: { kind: 'dynamo-1.4', namespace: NS, component: 'frames', endpoint: EP, discovery, pollMs: 50 },
      logger: quiet,
    },
    {},
  )
  const be8 = (v: bigint) => {
    const b = Buffer.alloc(8)
    b.writeBigUInt64BE(v)
    return b
  }
  let seq = 0n
  const envelope = (eventId: bigint, block: bigint, pid = publisherId, sequence = seq) =>
    kv.encodeEnvelope({
      publisherId: pid,
      sequence,
      publishedAt: 0,
      topic: 'kv-events',
      payload: kv.encodeRouterEvents(
        [
          {
            workerId: 9n,
            event: {
              eventId,
              dpRank: 0,
              data: { type: 'stored', parentHash: null, blocks: [{ blockHash: block, tokensHash: block, mmExtraInfo: null }] },
            },
          },
        ],
        'msgpack',
      ),
    })
  const frame3 = (env: Buffer, version = 1, len = env.length) => {
    const h = Buffer.alloc(5)
    h[0] = version
    h.writeUInt32BE(len, 1)
    return Buffer.concat([h, env])
  }
  const good = async (eventId: bigint, block: bigint) => {
    const env = envelope(eventId, block)
    await pub.send([Buffer.from('kv-events'), be8(publisherId), be8(seq), frame3(env)])
    seq++
  }
  try {
    await waitFor(() => router.dynamo14Stats()!.zmqChannels === 1, 'the channel connected', LONG)
    // the SUB joins a moment after it connects: id 1 is sent until it arrives (repeats are ignored)
    const deadline = Date.now() + LONG
    while ((holdings(router.index.dump())['9/0'] ?? []).length === 0) {
      if (Date.now() > deadline) throw new Error('nothing arrived on the channel')
      await good(1n, 101n)
      await sleep(50)
    }
    const dropped0 = router.dynamo14Stats()!.droppedBatches
    const env = envelope(2n, 102n)
    const bad: Buffer[][] = [
      [Buffer.from('kv-events'), be8(publisherId), be8(seq), frame3(env), Buffer.from('extra')], // 5 frames
      [Buffer.from('kv-events'), be8(0xdefn), be8(seq), frame3(env)], // another publisher id in the frame
      [Buffer.from('kv-events'), be8(publisherId), be8(seq), frame3(env, 2)], // frame version 2
      [Buffer.from('kv-events'), be8(publisherId), be8(seq), frame3(env, 1, env.length + 1)], // wrong length
      [Buffer.from('kv-events'), be8(publisherId), be8(seq + 5n), frame3(env)], // frame and envelope sequences differ
      [Buffer.from('kv-events'), be8(publisherId), be8(seq), frame3(envelope(2n, 102n, 0x999n))], // envelope of another publisher
    ]
    for (const frames of bad) await pub.send(frames)
    await good(2n, 103n)
    await waitFor(() => (holdings(router.index.dump())['9/0'] ?? []).length === 2, 'the good batch after the bad ones', LONG)
    t.deepEqual(holdings(router.index.dump()), { '9/0': ['101', '103'] })
    t.is(router.dynamo14Stats()!.droppedBatches - dropped0, bad.length)
  } finally {
    await router.close()
    await d.close()
    pub.close()
  }
})

test(`[${impl}] dynamo-1.4 source: discovery that cannot be read fails create, naming source.discovery and the store`, async (t) => {
  const port = await freePorts(1)
  const err = await t.throwsAsync(
    kv.KvRouter.create(
      {
        kvBlockSize: BS,
        source: {
          kind: 'dynamo-1.4',
          namespace: NS,
          component: COMP,
          endpoint: EP,
          discovery: { backend: 'etcd', etcdEndpoints: `http://127.0.0.1:${port}`, etcdConnectTimeoutMs: 1000 },
        },
        logger: quiet,
      },
      {},
    ),
  )
  t.regex(err!.message, /source\.discovery: could not list the records in etcd at http:\/\/127\.0\.0\.1:\d+/)
})
