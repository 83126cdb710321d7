// KvRouter's manual source: the application carries the event-plane envelopes itself and hands each to
// router.applyEnvelope. Here the envelopes are the ones real KvEventPublishers (2 workers × 2 dp ranks,
// with local indexers) send to a private nats-server, read by the test's own subscription; the router's
// index must end equal to the workers' local indexes and answer findMatches as they imply.
import test from 'ava'
import * as kv from '../ts/index.js'
import { holdings, type ManualOp, manualOps, quiet, sleep, withNats } from './helpers/publishing.js'

const impl = kv.implementation
const shared = withNats(test)
const BS = 16

const local = (pubs: kv.KvEventPublisher[]) => holdings(pubs.flatMap((p) => p.localIndexer!.dump()))
const same = (a: Record<string, string[]>, b: Record<string, string[]>) => JSON.stringify(a) === JSON.stringify(b)
const big = (_k: string, v: unknown) => (typeof v === 'bigint' ? String(v) : v)

async function publishers(comp: string, ids: bigint[]): Promise<kv.KvEventPublisher[]> {
  return Promise.all(
    ids.map((workerId) =>
      kv.KvEventPublisher.create({
        namespace: 'man',
        component: comp,
        kvBlockSize: BS,
        workerId,
        nats: { servers: shared.server.url },
        logger: quiet,
        localIndexer: { bufferSize: 4096 },
        dpRanks: [0, 1],
      }),
    ),
  )
}

async function apply(p: kv.KvEventPublisher, op: ManualOp): Promise<void> {
  if (op.kind === 'stored')
    await p.publishStored({ tokenIds: op.tokenIds, blockHashes: op.blockHashes, parentHash: op.parentHash, dpRank: op.dpRank })
  else if (op.kind === 'removed') await p.publishRemoved(op.blockHashes, op.dpRank)
  else await p.publishCleared(op.dpRank)
}

/** The envelopes published on the component's subject, in the order they arrive. */
async function carry(comp: string, onEnvelope: (bytes: Uint8Array) => void) {
  const sub = shared.nc.subscribe(`namespace.man.component.${comp}.kv-events`, {
    callback: (err, msg) => void (err || onEnvelope(msg.data)),
  })
  await shared.nc.flush()
  return sub
}

/** The query paths (tokens hashes) of every stored block's chain in the workers' local indexes, truncated at random lengths. */
function paths(pubs: kv.KvEventPublisher[], n: number): BigUint64Array[] {
  const chains: bigint[][] = []
  for (const p of pubs) {
    const byRank = new Map<number, Map<bigint, { tokens: bigint; parent: bigint | null }>>()
    for (const ev of p.localIndexer!.dump()) {
      if (ev.event.data.type !== 'stored') continue
      const m = byRank.get(ev.event.dpRank) ?? new Map()
      byRank.set(ev.event.dpRank, m)
      let parent = ev.event.data.parentHash
      for (const b of ev.event.data.blocks) {
        m.set(b.blockHash, { tokens: b.tokensHash, parent })
        parent = b.blockHash
      }
    }
    for (const m of byRank.values())
      for (const h of m.keys()) {
        const chain: bigint[] = []
        for (let b = m.get(h); b; b = b.parent === null ? undefined : m.get(b.parent)) chain.unshift(b.tokens)
        chains.push(chain)
      }
  }
  const out: BigUint64Array[] = []
  for (let i = 0; i < n && chains.length > 0; i++) {
    const c = chains[(i * 7919) % chains.length]!
    // every third path gets an unknown block appended, every fifth is cut short
    const cut = i % 5 === 0 ? Math.max(1, c.length >> 1) : c.length
    out.push(BigUint64Array.from(i % 3 === 0 ? [...c.slice(0, cut), 0xdeadbeefn + BigInt(i)] : c.slice(0, cut)))
  }
  return out
}

test.serial(`[${impl}] a manual router fed the envelopes of 2 workers × 2 ranks equals their local indexes`, async (t) => {
  const pubs = await publishers('equal', [11n, 12n])
  const router = await kv.KvRouter.create({ kvBlockSize: BS, source: { kind: 'manual' }, logger: quiet }, {})
  const sub = await carry('equal', (b) => router.applyEnvelope(b))
  try {
    const ops = pubs.map((_, i) => manualOps(21 + i, 1_000_000, BS, 2, 97))
    for (let k = 0; k < 400; k++) for (let i = 0; i < pubs.length; i++) await apply(pubs[i]!, ops[i]!.next().value as ManualOp)
    for (const p of pubs) await p.flush()
    await shared.nc.flush()
    for (let i = 0; i < 400 && !same(holdings(router.index.dump()), local(pubs)); i++) await sleep(25)
    t.deepEqual(holdings(router.index.dump()), local(pubs))
    const st = router.stats()
    t.is(st.invalid, 0)
    t.is(st.gaps, 0)
    t.is(st.recoveries.unavailable, 4, 'each rank seen for the first time: nowhere to ask, followed from there')
    t.is(st.workerRanks, 4)
    const total = (o: Record<string, number>) => Object.values(o).reduce((a, n) => a + n, 0)
    t.is(total(st.events.stored) + total(st.events.removed) + total(st.events.cleared), 800, 'every call carried once')
    t.true(total(st.events.removed) > 0, 'removes carried')
    let matched = 0
    const ps = paths(pubs, 400)
    t.true(ps.length >= 300)
    for (const path of ps) {
      const want = pubs.flatMap((p) => {
        const m = p.localIndexer!.findMatches(path)
        return m.scores
      })
      const got = router.findMatchesForHashes(path).scores
      if (want.length > 0) matched++
      t.is(JSON.stringify(got, big), JSON.stringify(want, big))
    }
    t.true(matched > ps.length / 2, `${matched} of ${ps.length} matched a worker`)
    // the router's decision weighs the same overlaps
    const d = router.findBestWorkerForHashes(ps[1]!)!
    t.is(d.candidates.length, 4)
    t.is(d.overlapBlocks, Math.max(...d.candidates.map((c) => c.overlapBlocks)))
  } finally {
    sub.unsubscribe()
    await router.close()
    for (const p of pubs) await p.close()
  }
})

test.serial(`[${impl}] manual source: a missing envelope is a gap counted and accepted; a restart starts over`, async (t) => {
  const pubs = await publishers('gap', [13n])
  const router = await kv.KvRouter.create({ kvBlockSize: BS, source: { kind: 'manual' }, logger: quiet }, {})
  const seen: Uint8Array[] = []
  const sub = await carry('gap', (b) => seen.push(b))
  try {
    const ops = manualOps(5, 1_000_000, BS, 1)
    for (let k = 0; k < 6; k++) await apply(pubs[0]!, ops.next().value as ManualOp)
    await pubs[0]!.flush()
    for (let i = 0; i < 400 && seen.length < 6; i++) await sleep(25)
    t.is(seen.length, 6)
    for (const [i, b] of seen.entries()) if (i !== 2) router.applyEnvelope(b)
    let st = router.stats()
    t.is(st.gaps, 1)
    t.is(st.recoveries.unavailable, 2, 'first sight, then the gap')
    t.is(st.stale, 0)
    const applied = Object.values(st.events).reduce((a, o) => a + Object.values(o).reduce((b, n) => b + n, 0), 0)
    t.is(applied, 5, 'every envelope but the missing one applied')
    // an old envelope again is stale, skipped
    router.applyEnvelope(seen[1]!)
    st = router.stats()
    t.is(st.stale, 1)
    // event id 0 again: the publisher restarted, followed from there
    router.applyEnvelope(seen[0]!)
    st = router.stats()
    t.is(st.restarts, 1)
    t.is(st.recoveries.unavailable, 3)
  } finally {
    sub.unsubscribe()
    await router.close()
    for (const p of pubs) await p.close()
  }
})

test(`[${impl}] manual source: bad bytes are counted as invalid, never thrown; wrong source or argument: clear errors`, async (t) => {
  const router = await kv.KvRouter.create({ kvBlockSize: BS, source: { kind: 'manual' }, logger: quiet }, {})
  try {
    for (const bytes of [
      new Uint8Array(0),
      Uint8Array.of(0xc1),
      new TextEncoder().encode('{"not":"an envelope"}'),
      Uint8Array.of(0x93, 1, 2),
    ])
      t.notThrows(() => router.applyEnvelope(bytes))
    t.is(router.stats().invalid, 4)
    t.is(router.index.size(), 0)
    t.throws(() => router.applyEnvelope('abc' as unknown as Uint8Array), { instanceOf: TypeError, message: /bytes must be a Uint8Array/ })
  } finally {
    await router.close()
  }
  const ep = await kv.KvRouter.create({
    kvBlockSize: BS,
    source: { kind: 'event-plane', namespace: 'man', component: 'other' },
    nats: { servers: shared.server.url },
    logger: quiet,
  })
  try {
    t.throws(() => ep.applyEnvelope(new Uint8Array(0)), {
      message: "applyEnvelope needs source kind 'manual', this router's is 'event-plane'",
    })
  } finally {
    await ep.close()
  }
  await t.throwsAsync(kv.KvRouter.create({ kvBlockSize: BS, source: { kind: 'manul' } as unknown as kv.RouterSource }, {}), {
    message: /source\.kind must be .*'manual', got string manul/,
  })
  await t.throwsAsync(kv.KvRouter.create({ kvBlockSize: BS, source: { kind: 'manual' }, tiers: true }, {}), {
    message: "tiers needs source kind 'engines'",
  })
})
