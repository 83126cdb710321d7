// RadixIndex.findMatchesInto (SPEC 6 find_matches into the caller's typed arrays), on whichever
// implementation loads (CI runs the suite natively and with DYNAMO_KV_FORCE_JS=1): hand-checked
// scores, the too-short rule, argument errors, and agreement with the naive reference model on seeded
// streams over 64 workers (full-length matches included).
import test from 'ava'
import * as kv from '../ts/index.js'
import type { RouterEventValue } from '../ts/index.js'
import { EventGenerator, ReferenceIndex } from './helpers/gen-events.js'

const stored = (workerId: bigint, dpRank: number, parentHash: bigint | null, blocks: [bigint, bigint][]): RouterEventValue => ({
  workerId,
  event: {
    eventId: 1n,
    dpRank,
    data: { type: 'stored', parentHash, blocks: blocks.map(([blockHash, tokensHash]) => ({ blockHash, tokensHash, mmExtraInfo: null })) },
  },
})

/** The arrays' first n entries as (workerId, dpRank, score) triples. */
function triples(n: number, w: BigUint64Array, r: Uint32Array, s: Uint32Array): [bigint, number, number][] {
  return Array.from({ length: n }, (_, i) => [w[i]!, r[i]!, s[i]!])
}

test('findMatchesInto writes each scored worker, its dp rank and score in findMatches order', (t) => {
  const ix = new kv.RadixIndex()
  const big = (1n << 64n) - 1n // every bit of a u64 survives
  ix.applyEvent(
    stored(big, 3, null, [
      [1n, 11n],
      [2n, 12n],
      [3n, 13n],
    ]),
  )
  ix.applyEvent(
    stored(7n, 0, null, [
      [21n, 11n],
      [22n, 12n],
    ]),
  )
  ix.applyEvent(stored(7n, 1, null, [[31n, 11n]]))
  ix.applyEvent(stored(0x1_0000_0002n, 0, null, [[41n, 99n]])) // another root: not on the query
  const w = new BigUint64Array(8).fill(5n)
  const r = new Uint32Array(8).fill(5)
  const s = new Uint32Array(8).fill(5)
  const n = ix.findMatchesInto([11n, 12n, 13n, 14n], w, r, s)
  t.is(n, 3)
  t.deepEqual(triples(n, w, r, s), [
    [7n, 0, 2],
    [7n, 1, 1],
    [big, 3, 3],
  ])
  t.is(w[3], 5n, 'entries past n are left alone')
  t.deepEqual(
    triples(n, w, r, s),
    ix.findMatches([11n, 12n, 13n, 14n]).scores.map((x) => [x.workerId, x.dpRank, x.score]),
  )
  t.is(ix.findMatchesInto([12n], w, r, s), 0, 'a query that starts off the root matches nothing')
  t.is(ix.findMatchesInto([], w, r, s), 0)
  // early exit: the walk stops once one worker remains
  t.is(
    ix.findMatchesInto([11n, 12n, 13n], w, r, s, { earlyExit: true }),
    ix.findMatches([11n, 12n, 13n], { earlyExit: true }).scores.length,
  )
  // a view into a larger buffer, at an offset
  const buf = new ArrayBuffer(8 * 10)
  const wv = new BigUint64Array(buf, 16, 4)
  t.is(ix.findMatchesInto(BigUint64Array.of(11n, 12n, 13n), wv, r, s), 3)
  t.deepEqual([...wv.subarray(0, 3)], [7n, 7n, big])
  t.deepEqual([...new BigUint64Array(buf, 0, 2)], [0n, 0n], 'nothing before the view is written')
})

test('findMatchesInto returns minus the length needed when an array is too short, and writes nothing', (t) => {
  const ix = new kv.RadixIndex()
  for (let i = 0n; i < 5n; i++) ix.applyEvent(stored(i, 0, null, [[100n + i, 11n]]))
  const w = new BigUint64Array(5)
  const r = new Uint32Array(5)
  const short = new Uint32Array(4).fill(9)
  t.is(ix.findMatchesInto([11n], w, r, short), -5)
  t.deepEqual([...short], [9, 9, 9, 9])
  t.is(ix.findMatchesInto([11n], w, new Uint32Array(0), new Uint32Array(5)), -5)
  t.is(ix.findMatchesInto([11n], new BigUint64Array(2), r, new Uint32Array(5)), -5)
  t.is(ix.findMatchesInto([11n], w, r, new Uint32Array(5)), 5)
})

test('findMatchesInto refuses arrays of the wrong kind', (t) => {
  const ix = new kv.RadixIndex()
  const w = new BigUint64Array(4)
  const u = new Uint32Array(4)
  const bad = [
    () => ix.findMatchesInto([1n], new BigInt64Array(4) as unknown as BigUint64Array, u, u),
    () => ix.findMatchesInto([1n], w, new Int32Array(4) as unknown as Uint32Array, u),
    () => ix.findMatchesInto([1n], w, u, [0, 0] as unknown as Uint32Array),
    () => ix.findMatchesInto([1 as unknown as bigint], w, u, u),
  ]
  for (const f of bad) t.throws(f, { instanceOf: TypeError })
})

test('findMatchesInto agrees with the reference model on seeded streams over 64 workers', (t) => {
  for (const seed of [1, 2, 3]) {
    const gen = new EventGenerator(seed, { workers: 32, dpRanks: [0, 1] })
    const ix = new kv.RadixIndex()
    const ref = new ReferenceIndex()
    const w = new BigUint64Array(64)
    const r = new Uint32Array(64)
    const s = new Uint32Array(64)
    let compared = 0
    let wide = 0
    for (let i = 0; i < 3000; i++) {
      const ev = gen.nextEvent()
      ix.applyEvent(ev)
      ref.applyEvent(ev)
      if (i % 30 !== 29) continue
      for (const q of [gen.query(), gen.deepQuery(64)]) {
        const want = ref.findMatches(q).scores.map((x) => [x.workerId, x.dpRank, x.score])
        const n = ix.findMatchesInto(q, w, r, s)
        t.deepEqual(triples(n, w, r, s), want, `seed ${seed}, after event ${i}`)
        compared++
        if (n >= 16) wide++
      }
    }
    t.true(compared >= 200)
    t.true(wide > 0, 'some queries score many workers')
  }
})
