// RadixIndex.findMatches' results (SPEC 6): their lists are built when first read, from the answer their
// own query wrote, so a result read after later queries, applied events, a close or answers too big for
// the scratch still shows its own answer (hand-checked values); the native and fallback results agree
// however late each is read; and the native findMatchesPacked callback behind it refuses bad arguments
// and handles.
import test from 'ava'
import { inspect } from 'node:util'
import * as kv from '../ts/index.js'
import type { RouterEventValue } from '../ts/index.js'
import { implementation } from '../ts/core/api.js'
import { EventGenerator, applyOp } from './helpers/gen-events.js'
import { fallback, needNative, parityTest } from './helpers/impls.js'

const impl = implementation

const stored = (workerId: bigint, dpRank: number, parentHash: bigint | null, blocks: [bigint, bigint][]): RouterEventValue => ({
  workerId,
  event: {
    eventId: 1n,
    dpRank,
    data: { type: 'stored', parentHash, blocks: blocks.map(([blockHash, tokensHash]) => ({ blockHash, tokensHash, mmExtraInfo: null })) },
  },
})

const plain = (m: kv.OverlapScores) => ({ scores: m.scores, treeSizes: m.treeSizes })
const rows = (m: kv.OverlapScores) => m.scores.map((s, i) => [s.workerId, s.dpRank, s.score, m.treeSizes[i]!.size])

for (const [name, make] of [
  ['RadixIndex', () => new kv.RadixIndex()],
  ['LocalIndexer', () => new kv.LocalIndexer({ bufferSize: 16 })],
] as const) {
  test(`[${impl}] ${name}: a result read after later queries, events and a close shows its own answer`, (t) => {
    const ix = make()
    ix.applyEvent(
      stored(7n, 0, null, [
        [1n, 11n],
        [2n, 12n],
        [3n, 13n],
      ]),
    )
    ix.applyEvent(
      stored(9n, 2, null, [
        [4n, 11n],
        [5n, 12n],
      ]),
    )
    const q = [11n, 12n, 13n]
    const first = ix.findMatches(q)
    const scoresFirst = ix.findMatches(q)
    const sizesFirst = ix.findMatches(q)
    t.deepEqual(
      sizesFirst.treeSizes.map((s) => [s.workerId, s.dpRank, s.size]),
      [
        [7n, 0, 3],
        [9n, 2, 2],
      ],
    )
    const assigned = ix.findMatches(q)
    assigned.scores = []
    t.deepEqual(
      scoresFirst.scores.map((s) => [s.workerId, s.dpRank, s.score]),
      [
        [7n, 0, 3],
        [9n, 2, 2],
      ],
    )
    // the index changes: worker 9 gets a third block, worker 7 goes, worker 3 comes
    ix.applyEvent(stored(9n, 2, 5n, [[6n, 13n]]))
    ix.removeWorker(7n)
    ix.applyEvent(stored(3n, 1, null, [[8n, 11n]]))
    const after = ix.findMatches(q)
    // many later answers, and findMatchesForTokens' (the same scratch)
    ix.findMatchesForTokens([1, 2, 3, 4], 2)
    for (let k = 0; k < 5000; k++) ix.findMatches(k % 2 ? q : [11n])
    t.deepEqual(rows(first), [
      [7n, 0, 3, 3],
      [9n, 2, 2, 2],
    ])
    t.deepEqual(
      scoresFirst.treeSizes.map((s) => [s.workerId, s.dpRank, s.size]),
      [
        [7n, 0, 3],
        [9n, 2, 2],
      ],
    )
    t.deepEqual(
      sizesFirst.scores.map((s) => [s.workerId, s.dpRank, s.score]),
      [
        [7n, 0, 3],
        [9n, 2, 2],
      ],
    )
    t.deepEqual(assigned.scores, [])
    t.deepEqual(
      assigned.treeSizes.map((s) => [s.workerId, s.dpRank, s.size]),
      [
        [7n, 0, 3],
        [9n, 2, 2],
      ],
    )
    t.deepEqual(rows(after), [
      [3n, 1, 1, 1],
      [9n, 2, 3, 3],
    ])
    t.deepEqual(rows(ix.findMatches(q)), rows(after))
    // read twice: the same arrays
    t.is(first.scores, first.scores)
    t.is(first.treeSizes, first.treeSizes)
    // with earlyExit the walk stops once worker 9 is alone, after 2 blocks
    const last = ix.findMatches(q, { earlyExit: true })
    ix.close()
    t.deepEqual(rows(last), [
      [3n, 1, 1, 1],
      [9n, 2, 2, 3],
    ])
  })
}

test(`[${impl}] answers larger than the scratch, kept unread, read back intact`, (t) => {
  const ix = new kv.RadixIndex()
  // 600 workers on one 3-block chain, and a longer chain for every third: an answer is 14,404 bytes
  for (let w = 1n; w <= 600n; w++) {
    ix.applyEvent(
      stored(w, 0, null, [
        [w << 8n, 21n],
        [(w << 8n) + 1n, 22n],
        [(w << 8n) + 2n, 23n],
      ]),
    )
    if (w % 3n === 0n) ix.applyEvent(stored(w, 0, (w << 8n) + 2n, [[(w << 8n) + 3n, 24n]]))
  }
  const kept: { q: bigint[]; m: kv.OverlapScores }[] = []
  for (let k = 0; k < 40; k++) {
    const q = k % 2 ? [21n, 22n, 23n, 24n] : [21n, 22n]
    kept.push({ q, m: ix.findMatches(q) })
    ix.findMatches([21n]) // small answers in between
  }
  for (const { q, m } of kept) {
    t.is(m.scores.length, 600)
    const want = (w: bigint) => (q.length === 2 ? 2 : w % 3n === 0n ? 4 : 3)
    t.true(
      m.scores.every((s, i) => s.workerId === BigInt(i + 1) && s.dpRank === 0 && s.score === want(s.workerId)),
      `query of ${q.length} blocks`,
    )
    t.true(m.treeSizes.every((s, i) => s.workerId === BigInt(i + 1) && s.size === (s.workerId % 3n === 0n ? 4 : 3)))
  }
})

test(`[${impl}] a result prints, serializes and takes assignments as the plain object did`, (t) => {
  const ix = new kv.RadixIndex()
  ix.applyEvent(stored(5n, 1, null, [[1n, 11n]]))
  const m = ix.findMatches([11n, 12n])
  const want = { scores: [{ workerId: 5n, dpRank: 1, score: 1 }], treeSizes: [{ workerId: 5n, dpRank: 1, size: 1 }] }
  const big = (_k: string, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v)
  t.is(JSON.stringify(m, big), JSON.stringify(want, big))
  t.is(inspect(m), inspect(want))
  t.deepEqual(plain(m), want)
  m.treeSizes = []
  t.deepEqual(m.treeSizes, [])
  t.deepEqual(m.scores, want.scores)
  m.scores = []
  t.deepEqual(plain(m), { scores: [], treeSizes: [] })
  t.deepEqual(plain(ix.findMatches([])), { scores: [], treeSizes: [] })
  t.deepEqual(plain(ix.findMatches([99n])), { scores: [], treeSizes: [] })
})

parityTest('native and fallback results agree whichever is read first, and however late', (t) => {
  const bindings = [needNative(), fallback]
  const [a, b] = bindings.map((impl) => new kv.RadixIndex(impl)) as [kv.RadixIndex, kv.RadixIndex]
  const gen = new EventGenerator(77, { workers: 40, dpRanks: [0, 1] })
  const late: [kv.OverlapScores, kv.OverlapScores][] = []
  let matched = 0
  for (let k = 0; k < 20_000; k++) {
    const op = gen.next()
    applyOp(a, op)
    applyOp(b, op)
    if (k % 25 === 0) {
      const q = gen.query()
      const earlyExit = k % 100 === 50
      const ma = a.findMatches(q, { earlyExit })
      const mb = b.findMatches(q, { earlyExit })
      // one read now, the other at the end (and the other way round every second query)
      if (k % 50 === 0) late.push([ma, plain(mb)])
      else late.push([plain(ma), mb])
      if (ma.scores.length) matched++
    }
  }
  let bad = 0
  for (const [x, y] of late)
    if (JSON.stringify(rows(x), String) !== JSON.stringify(rows(y), String) && bad++ < 3) t.deepEqual(rows(x), rows(y))
  t.is(bad, 0, `${late.length} queries`)
  t.true(matched > late.length / 4, `${matched} of ${late.length} queries matched some worker`)
})

// The fallback's findMatchesPacked runs on its receiver, and its raw methods trust the public layer's
// checked arguments: these checks are of the native callback only, so they take the built binding
// directly and run in the fallback pass too (skipped only without a build).
parityTest('[native] findMatchesPacked with bad arguments or handles throws; answers land at the offset', (t) => {
  const bound = needNative()
  const packed = bound.findMatchesPackedFunction!()
  const a = new bound.RawRadixIndex()
  a.applyEvent(
    stored(7n, 0, null, [
      [1n, 11n],
      [2n, 12n],
    ]),
  )
  const q = BigUint64Array.from([11n, 12n, 13n])
  const h = a.handle!()
  t.is(a.handle!(), h, 'one handle per index')
  const out = Buffer.alloc(256, 0xee)
  // one record of 24 bytes after the count, at offset 8
  t.is(packed(h, q, false, out, 8), 28)
  t.true(
    out.subarray(0, 8).every((x) => x === 0xee),
    'nothing before the offset',
  )
  const ref = Buffer.alloc(64)
  t.is(a.findMatches(q, false, ref), 28)
  t.true(out.subarray(8, 36).equals(ref.subarray(0, 28)), 'the bytes of findMatches')
  t.true(
    out.subarray(36).every((x) => x === 0xee),
    'nothing after the answer',
  )
  // too little room: minus the bytes needed, nothing written
  const small = Buffer.alloc(40, 0xee)
  t.is(packed(h, q, false, small, 20), -28)
  t.true(small.every((x) => x === 0xee))
  t.is(packed(h, q, false, small, small.length), -28)
  // the query's own memory as the output: read first, then overwritten
  const shared = new BigUint64Array(8)
  shared.set(q)
  const bytes = new Uint8Array(shared.buffer)
  t.is(packed(h, shared.subarray(0, 3), false, bytes, 0), 28)
  t.true(Buffer.from(bytes.subarray(0, 28)).equals(ref.subarray(0, 28)))
  // handles of no live index: the slot's next generation, and values that are no handle at all
  for (const bad of [h + 2 ** 21, -1, 0.5, Number.NaN, 2 ** 60, Number.NEGATIVE_INFINITY]) {
    t.throws(() => packed(bad, q, false, out, 0), { message: 'RadixIndex is closed' }, `handle ${bad}`)
  }
  const call = packed as (...x: unknown[]) => unknown
  t.throws(() => call('1', q, false, out, 0), { message: /handle must be a number/ })
  t.throws(() => call(h, [11n], false, out, 0), { message: /tokensHashes must be a BigUint64Array/ })
  t.throws(() => call(h, new BigInt64Array(1), false, out, 0), { message: /tokensHashes must be a BigUint64Array/ })
  t.throws(() => call(h, q, 1, out, 0), { message: /earlyExit must be a boolean/ })
  t.throws(() => call(h, q, false, new Uint16Array(8), 0), { message: /out must be a Uint8Array/ })
  for (const at of [-1, 0.5, out.length + 1, Number.NaN, '0'])
    t.throws(() => call(h, q, false, out, at), { message: /offset/ }, `offset ${String(at)}`)
  t.throws(() => call(h, q), { message: /takes/ })
  a.close()
  t.throws(() => packed(h, q, false, out, 0), { message: 'RadixIndex is closed' })
  // a new index never answers to the closed one's handle
  const c = new bound.RawRadixIndex()
  t.not(c.handle!(), h)
  t.throws(() => packed(h, q, false, out, 0), { message: 'RadixIndex is closed' })
  t.is(packed(c.handle!(), q, false, out, 0), 4, 'an empty index: no matches')
})
