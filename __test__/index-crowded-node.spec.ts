// Nodes where one worker holds many block hashes for the same tokens (SPEC 6, multi-hash nodes): with
// thousands of hashes on one node, stores, removals (in any order), moves and re-stores keep the
// answers of find_matches, dump (insertion order, parents) and size, in the implementation this pass
// loads; and the native and fallback indexes agree on seeded streams that crowd a few nodes.
import test from 'ava'
import { isDeepStrictEqual } from 'node:util'
import * as kv from '../ts/index.js'
import type { RouterEventValue } from '../ts/core/binding.js'
import { fallback, needNative, parityTest } from './helpers/impls.js'

const stored = (workerId: bigint, parentHash: bigint | null, blockHash: bigint, tokensHash: bigint, dpRank = 0): RouterEventValue => ({
  workerId,
  event: { eventId: blockHash, dpRank, data: { type: 'stored', parentHash, blocks: [{ blockHash, tokensHash, mmExtraInfo: null }] } },
})
const removed = (workerId: bigint, blockHashes: bigint[], dpRank = 0): RouterEventValue => ({
  workerId,
  event: { eventId: 0n, dpRank, data: { type: 'removed', blockHashes } },
})

/** One worker's dump as [parent, block hash, tokens hash]. */
function blocksOf(ix: kv.RadixIndex, workerId: bigint): [bigint | null, bigint, bigint][] {
  return ix
    .dump()
    .filter((e) => e.workerId === workerId)
    .map((e) => {
      const d = e.event.data
      if (d.type !== 'stored') throw new Error('a dump holds stored events only')
      return [d.parentHash, d.blocks[0]!.blockHash, d.blocks[0]!.tokensHash]
    })
}

// a result's lists are getters: a deep comparison looks at them through the plain form
const plain = (m: kv.OverlapScores) => ({ scores: m.scores, treeSizes: m.treeSizes })

const scores = (ix: kv.RadixIndex, q: bigint[]) => {
  const m = ix.findMatches(q)
  return m.scores.map((s, i) => [s.workerId, s.score, m.treeSizes[i]!.size])
}

for (const [name, make] of [
  ['RadixIndex', () => new kv.RadixIndex()],
  ['LocalIndexer', () => new kv.LocalIndexer({ bufferSize: 16 })],
] as const) {
  test(`${name}: 5,000 hashes of one worker on one node, removed in reverse, moved and re-stored`, (t) => {
    const N = 5000n
    const ix = make()
    for (let h = 1n; h <= N; h++) {
      t.is(ix.applyEvent(stored(1n, null, h, 7n)), 'applied')
      if (h === 10n) t.is(ix.applyEvent(stored(2n, null, 1n << 40n, 7n)), 'applied')
    }
    t.is(ix.applyEvent(stored(1n, 5n, 1n << 41n, 8n)), 'applied')
    t.is(ix.applyEvent(stored(1n, null, 4n, 7n)), 'applied', 'the same hash at the same place again')
    t.is(ix.size(), Number(N) + 2)
    t.deepEqual(scores(ix, [7n, 8n]), [
      [1n, 2, Number(N) + 1],
      [2n, 1, 1],
    ])
    const odd: bigint[] = []
    for (let h = N; h >= 1n; h--) if (h % 2n === 1n) odd.push(h)
    t.is(ix.applyEvent(removed(1n, odd)), 'applied')
    t.is(ix.applyEvent(stored(1n, null, 6n, 9n)), 'applied', 'hash 6 moves to another node')
    const left: bigint[] = []
    for (let h = 2n; h <= N; h += 2n) if (h !== 6n) left.push(h)
    const want: [bigint | null, bigint, bigint][] = left.map((h) => [null, h, 7n])
    want.push([2n, 1n << 41n, 8n], [null, 6n, 9n])
    t.deepEqual(blocksOf(ix, 1n), want, 'insertion order kept; the child names the first hash of its parent')
    t.deepEqual(blocksOf(ix, 2n), [[null, 1n << 40n, 7n]])
    t.deepEqual(scores(ix, [9n]), [[1n, 1, left.length + 2]])
    t.is(ix.applyEvent(removed(1n, left)), 'applied')
    t.deepEqual(scores(ix, [7n, 8n]), [[2n, 1, 1]])
    t.deepEqual(blocksOf(ix, 1n), [[null, 6n, 9n]])
    t.is(ix.applyEvent(removed(2n, [1n << 40n])), 'applied')
    t.deepEqual(scores(ix, [7n, 8n]), [], 'the node is gone, its child detached')
    t.is(ix.size(), 2)
    t.is(ix.applyEvent(removed(1n, [6n, 1n << 41n, 3n])), 'block_not_found')
    t.is(ix.size(), 0)
    t.deepEqual(ix.dump(), [])
    ix.close()
  })
}

test('80 worker keys with 40 hashes each on one node: every worker matches, and keeps matching with one hash left', (t) => {
  const ix = new kv.RadixIndex()
  for (let r = 0n; r < 40n; r++)
    for (let w = 0n; w < 80n; w++) {
      const h = (w << 32n) | r
      ix.applyEvent(stored(w, null, h, 3n))
      if (r === 39n && w % 4n === 0n) ix.applyEvent(stored(w, h, h | (1n << 31n), 4n))
    }
  const want = Array.from({ length: 80 }, (_, i) => [BigInt(i), i % 4 === 0 ? 2 : 1])
  const got = () => ix.findMatches([3n, 4n]).scores.map((s) => [s.workerId, s.score])
  t.deepEqual(got(), want)
  for (let w = 0n; w < 80n; w++)
    t.is(
      ix.applyEvent(
        removed(
          w,
          Array.from({ length: 39 }, (_, r) => (w << 32n) | BigInt(r)),
        ),
      ),
      'applied',
    )
  t.deepEqual(got(), want)
  t.deepEqual(blocksOf(ix, 79n), [[null, (79n << 32n) | 39n, 3n]])
  for (let w = 0n; w < 80n; w++) ix.removeWorker(w)
  t.is(ix.size(), 0)
  ix.close()
})

/** Deterministic PRNG (mulberry32). */
function rng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

parityTest('crowded nodes, seeded streams: native and fallback local indexers give identical outcomes, matches, dumps, sizes', (t) => {
  const n = needNative()
  let mismatches = 0
  const same = (a: unknown, b: unknown, what: string) => {
    if (isDeepStrictEqual(a, b)) return
    if (mismatches++ < 5) t.deepEqual(a, b, what)
  }
  for (let seed = 1; seed <= 3; seed++) {
    const r = rng(seed)
    const a = new kv.LocalIndexer({ bufferSize: 64 }, n)
    const b = new kv.LocalIndexer({ bufferSize: 64 }, fallback)
    const held = new Map<string, bigint[]>()
    for (let step = 0; step < 20_000; step++) {
      // mostly 2 workers x 2 ranks, sometimes one of 90 others (slots past the 64-slot mask)
      const workerId = BigInt(r() < 0.8 ? Math.floor(r() * 2) : 2 + Math.floor(r() * 90))
      const dpRank = r() < 0.5 ? 0 : 1
      const key = `${workerId}/${dpRank}`
      const mine = held.get(key) ?? []
      held.set(key, mine)
      const x = r()
      let ev: RouterEventValue
      if (x < 0.35 && mine.length > 0) {
        const hs = Array.from({ length: 1 + Math.floor(r() * 30) }, () => mine[Math.floor(r() * mine.length)]!)
        ev = removed(workerId, hs, dpRank)
      } else if (x < 0.36) {
        ev = { workerId, event: { eventId: BigInt(step), dpRank, data: { type: 'cleared' } } }
      } else {
        // 1-4 blocks on tokens hashes 1-2 (few nodes), block hashes from a space of 3,000
        const parent = r() < 0.5 || mine.length === 0 ? null : mine[Math.floor(r() * mine.length)]!
        const blocks = Array.from({ length: 1 + Math.floor(r() * 4) }, () => ({
          blockHash: BigInt(1 + Math.floor(r() * 3000)),
          tokensHash: BigInt(1 + Math.floor(r() * 2)),
          mmExtraInfo: null,
        }))
        ev = { workerId, event: { eventId: BigInt(step), dpRank, data: { type: 'stored', parentHash: parent, blocks } } }
        for (const bl of blocks) mine.push(bl.blockHash)
        if (mine.length > 4000) mine.splice(0, 2000)
      }
      same(a.applyEvent(ev), b.applyEvent(ev), `seed ${seed} step ${step}: outcome`)
      if (step % 1000 === 999) {
        for (let k = 0; k < 8; k++) {
          const q = Array.from({ length: 1 + Math.floor(r() * 5) }, () => BigInt(1 + Math.floor(r() * 2)))
          same(plain(a.findMatches(q)), plain(b.findMatches(q)), `seed ${seed} step ${step}: findMatches`)
        }
        same(a.size(), b.size(), `seed ${seed} step ${step}: size`)
        same(a.dump(), b.dump(), `seed ${seed} step ${step}: dump`)
        same(a.eventsInRange(0), b.eventsInRange(0), `seed ${seed} step ${step}: eventsInRange`)
      }
    }
    same(a.counters(), b.counters(), `seed ${seed}: counters`)
    t.true(a.size() > 1000, `seed ${seed}: the stream keeps thousands of entries (${a.size()})`)
    a.close()
    b.close()
  }
  t.is(mismatches, 0)
})
