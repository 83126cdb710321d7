// KvRouter's dynamo-1.4 source against real KvEventPublishers with wire 'dynamo-1.4': two workers × two
// dp ranks register their ranks in a real discovery store (a temporary file store, or a private etcd) and
// publish over direct ZeroMQ or a private nats-server. The router finds them through the records alone,
// and its index must end equal to the workers' local indexes, answering findMatches as they imply.
import test, { type ExecutionContext } from 'ava'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import * as kv from '../ts/index.js'
import { type EtcdServer, startEtcd } from './helpers/etcd-server.js'
import { type NatsServer, startNatsServer } from './helpers/nats-server.js'
import { holdings, type ManualOp, manualOps, quiet, sleep } from './helpers/publishing.js'

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
