// Direct unit tests of the fallback indexer classes (ts/fallback/index.ts, local.ts) on the
// rules that are easy to get wrong: the empty-node procedure with a stale subtree, moving a hash, dump
// order and parents, eventsInRange outcomes, the ingestor's local indexer; plus a randomized comparison
// with a naive model written straight from SPEC 6.
import test from 'ava'
import { MATCH_RECORD_BYTES, type RawLocalIndexer, type RawRadixIndex, type RouterEventValue } from '../ts/core/binding.js'
import type { FallbackRadixIndex } from '../ts/fallback/index.js'
import { fallback } from '../ts/fallback/lib.js'
import { checkIndexInvariants } from './helpers/index-invariants.js'
import { CanonicalRouterEvent as FastEvent } from '../ts/fallback/wire.js'

const INDEX_COUNTER_NAMES = fallback.names().indexCounterNames

const W1 = 1n
const W2 = 2n

function stored(workerId: bigint, eventId: bigint, parentHash: bigint | null, blocks: [bigint, bigint][], dpRank = 0): RouterEventValue {
  return {
    workerId,
    event: {
      eventId,
      dpRank,
      data: { type: 'stored', parentHash, blocks: blocks.map(([blockHash, tokensHash]) => ({ blockHash, tokensHash, mmExtraInfo: null })) },
    },
  }
}
function removed(workerId: bigint, eventId: bigint, blockHashes: bigint[], dpRank = 0): RouterEventValue {
  return { workerId, event: { eventId, dpRank, data: { type: 'removed', blockHashes } } }
}
function cleared(workerId: bigint, eventId: bigint, dpRank = 0): RouterEventValue {
  return { workerId, event: { eventId, dpRank, data: { type: 'cleared' } } }
}

type Match = { workerId: bigint; dpRank: number; score: number; treeSize: bigint }
/** Runs a query into a small buffer first (it must ask for more), then into one of the size asked. */
function matches(run: (out: Uint8Array) => number): Match[] {
  const small = Buffer.alloc(3, 0xee)
  let len = run(small)
  if (len > 0) throw new Error('wrote into a buffer shorter than 4 bytes')
  if (!small.equals(Buffer.alloc(3, 0xee))) throw new Error('wrote into a buffer that was too small')
  const buf = Buffer.alloc(-len + 5, 0xee)
  len = run(buf)
  if (len !== buf.length - 5 || !buf.subarray(len).equals(Buffer.alloc(5, 0xee))) throw new Error('bad length written')
  if (len > 4) {
    // one byte short: asks for exactly len
    const short = Buffer.alloc(len - 1)
    if (run(short) !== -len) throw new Error('bad length asked')
  }
  const n = buf.readUInt32LE(0)
  const out: Match[] = []
  for (let i = 0, at = 4; i < n; i++, at += MATCH_RECORD_BYTES) {
    out.push({
      workerId: buf.readBigUInt64LE(at),
      dpRank: buf.readUInt32LE(at + 8),
      score: buf.readUInt32LE(at + 12),
      treeSize: buf.readBigUInt64LE(at + 16),
    })
  }
  if (len !== 4 + n * MATCH_RECORD_BYTES) throw new Error('bad packed length')
  return out
}
const find = (ix: RawRadixIndex, q: bigint[], earlyExit = false): Match[] =>
  matches((out) => ix.findMatches(BigUint64Array.from(q), earlyExit, out))
const scores = (ix: RawRadixIndex, q: bigint[], earlyExit = false): [bigint, number, number][] =>
  find(ix, q, earlyExit).map((m) => [m.workerId, m.dpRank, m.score])
function counters(ix: RawRadixIndex): Record<string, number> {
  const c = ix.counters()
  return Object.fromEntries(INDEX_COUNTER_NAMES.map((n, i) => [n, Number(c[i])]))
}
/** dump() as [workerId, dpRank, eventId, parent, blockHash, tokensHash] rows. */
function dumpRows(events: RouterEventValue[]): [bigint, number, bigint, bigint | null, bigint, bigint][] {
  return events.map((e) => {
    const d = e.event.data
    if (d.type !== 'stored' || d.blocks.length !== 1 || d.blocks[0]!.mmExtraInfo !== null)
      throw new Error('dump must give one-block stored events')
    return [e.workerId, e.event.dpRank, e.event.eventId, d.parentHash, d.blocks[0]!.blockHash, d.blocks[0]!.tokensHash]
  })
}

test('store, findMatches scores, tree sizes and the packed layout', (t) => {
  const ix = new fallback.RawRadixIndex()
  t.is(
    ix.applyEvent(
      stored(W1, 0n, null, [
        [101n, 1n],
        [102n, 2n],
        [103n, 3n],
      ]),
    ),
    0,
  )
  t.is(
    ix.applyEvent(
      stored(W2, 0n, null, [
        [201n, 1n],
        [202n, 2n],
      ]),
    ),
    0,
  )
  t.is(ix.applyEvent(stored(W2, 1n, null, [[301n, 9n]], 3)), 0)
  t.deepEqual(find(ix, [1n, 2n, 3n, 4n]), [
    { workerId: W1, dpRank: 0, score: 3, treeSize: 3n },
    { workerId: W2, dpRank: 0, score: 2, treeSize: 2n },
  ])
  t.deepEqual(scores(ix, [9n, 1n]), [[W2, 3, 1]])
  t.deepEqual(scores(ix, [2n]), [])
  t.deepEqual(scores(ix, []), [])
  t.is(ix.findMatches(new BigUint64Array(0), false, new Uint8Array(4)), 4)
  t.is(ix.findMatches(new BigUint64Array(0), false, new Uint8Array(2)), -4)
  // early exit: stops as soon as one worker remains active (after it is credited the node it reached)
  t.deepEqual(scores(ix, [1n, 2n, 3n], true), [
    [W1, 0, 3],
    [W2, 0, 2],
  ])
  ix.applyEvent(removed(W2, 2n, [201n]))
  t.deepEqual(scores(ix, [1n, 2n, 3n], true), [[W1, 0, 1]])
  t.deepEqual(scores(ix, [1n, 2n, 3n], false), [[W1, 0, 3]])
  t.deepEqual(Array.from(ix.workers()), [W1, W2])
  t.is(ix.size(), 5)
  // re-storing the same chain is idempotent
  const before = counters(ix)
  ix.applyEvent(
    stored(W1, 5n, null, [
      [101n, 1n],
      [102n, 2n],
      [103n, 3n],
    ]),
  )
  t.is(ix.size(), 5)
  t.deepEqual(counters(ix), { ...before, applied_stored: before.applied_stored! + 1, blocks_stored: before.blocks_stored! + 3 })
  // findMatchesForTokens hashes the tokens like computeBlockHashes
  const tokens = Uint32Array.from({ length: 12 }, (_, i) => i + 1)
  const h = fallback.computeBlockHashes(tokens, 4, null, null)
  ix.applyEvent(
    stored(7n, 0n, null, [
      [1n, h[0]!],
      [2n, h[1]!],
    ]),
  )
  t.deepEqual(
    matches((out) => ix.findMatchesForTokens(tokens, 4, null, null, false, out)),
    [{ workerId: 7n, dpRank: 0, score: 2, treeSize: 2n }],
  )
  t.deepEqual(
    matches((out) => ix.findMatchesForTokens(tokens, 4, 'lora', null, false, out)),
    [],
  )
})

test('a node that loses its last holder detaches its children: a stale subtree never scores or dumps', (t) => {
  const ix = new fallback.RawRadixIndex()
  ix.applyEvent(
    stored(W1, 0n, null, [
      [11n, 1n],
      [12n, 2n],
    ]),
  )
  ix.applyEvent(
    stored(W2, 0n, null, [
      [21n, 1n],
      [22n, 2n],
      [23n, 3n],
    ]),
  )
  // node 1 loses both holders: node 2 (held by both) becomes stale with its child 3
  t.is(ix.applyEvent(removed(W1, 1n, [11n])), 0)
  t.is(ix.applyEvent(removed(W2, 1n, [21n])), 0)
  t.is(ix.size(), 3)
  t.deepEqual(scores(ix, [1n, 2n, 3n]), [])
  t.deepEqual(ix.dump(), [])
  // a new node 1 does not bring the stale node 2 back
  ix.applyEvent(stored(W1, 2n, null, [[11n, 1n]]))
  t.deepEqual(scores(ix, [1n, 2n, 3n]), [[W1, 0, 1]])
  // the stale blocks are still the workers' own: a store may chain onto them (and stays stale)
  t.is(ix.applyEvent(stored(W2, 2n, 22n, [[24n, 4n]])), 0)
  t.deepEqual(scores(ix, [1n, 2n, 4n]), [[W1, 0, 1]])
  t.is(ix.size(), 5)
  // removing them works, and unknown hashes are counted one by one
  t.is(ix.applyEvent(removed(W2, 3n, [22n, 23n, 24n, 99n, 98n])), 2)
  t.is(ix.size(), 2)
  t.like(counters(ix), { applied_removed: 3, block_not_found: 2, blocks_removed: 5 })
  // W1's 12 is still on the stale node 2: held (size) but neither dumped nor scored
  t.deepEqual(dumpRows(ix.dump()), [[W1, 0, 2n, null, 11n, 1n]])
  t.deepEqual(scores(ix, [1n, 2n]), [[W1, 0, 1]])
})

test('workers on a node that were not active on its parent are ignored', (t) => {
  const ix = new fallback.RawRadixIndex()
  ix.applyEvent(
    stored(W1, 0n, null, [
      [11n, 1n],
      [12n, 2n],
    ]),
  )
  ix.applyEvent(stored(W2, 0n, null, [[21n, 1n]]))
  ix.applyEvent(stored(W2, 1n, 21n, [[22n, 2n]]))
  // W1 leaves node 1 but node 1 keeps W2, so node 2 stays attached with W1 on it
  ix.applyEvent(removed(W1, 1n, [11n]))
  t.deepEqual(scores(ix, [1n, 2n]), [[W2, 0, 2]])
  // W1's block 12 is not dumped: W1 is not on its parent
  t.deepEqual(dumpRows(ix.dump()), [
    [W2, 0, 1n, null, 21n, 1n],
    [W2, 0, 1n, 21n, 22n, 2n],
  ])
  t.is(ix.size(), 3)
})

test('a hash stored elsewhere moves; a move can leave the current path stale', (t) => {
  const ix = new fallback.RawRadixIndex()
  ix.applyEvent(
    stored(W1, 0n, null, [
      [11n, 1n],
      [12n, 2n],
    ]),
  )
  // 12 moves under the root at key 3: node 2 empties and goes
  t.is(ix.applyEvent(stored(W1, 1n, null, [[12n, 3n]])), 0)
  t.is(ix.size(), 2)
  t.deepEqual(scores(ix, [1n, 2n]), [[W1, 0, 1]])
  t.deepEqual(scores(ix, [3n]), [[W1, 0, 1]])
  t.deepEqual(dumpRows(ix.dump()), [
    [W1, 0, 1n, null, 11n, 1n],
    [W1, 0, 1n, null, 12n, 3n],
  ])
  // chain 11 -> 12 again (12 moves back), then store below 12 the hash 11 itself at key 5:
  // 11 leaves node 1, which empties, so node 2 (current) is detached and the new node 5 hangs below it
  ix.applyEvent(stored(W1, 2n, 11n, [[12n, 2n]]))
  t.deepEqual(scores(ix, [1n, 2n]), [[W1, 0, 2]])
  t.is(ix.applyEvent(stored(W1, 3n, 12n, [[11n, 5n]])), 0)
  t.is(ix.size(), 2)
  t.deepEqual(scores(ix, [1n, 2n, 5n]), [])
  t.deepEqual(ix.dump(), [])
  // several hashes of one worker on one node: dumped in insertion order, the first is the children's parent
  const iy = new fallback.RawRadixIndex()
  iy.applyEvent(stored(W1, 0n, null, [[31n, 1n]]))
  iy.applyEvent(
    stored(W1, 1n, null, [
      [30n, 1n],
      [40n, 2n],
    ]),
  )
  t.deepEqual(dumpRows(iy.dump()), [
    [W1, 0, 1n, null, 31n, 1n],
    [W1, 0, 1n, null, 30n, 1n],
    [W1, 0, 1n, 31n, 40n, 2n],
  ])
  t.deepEqual(find(iy, [1n, 2n]), [{ workerId: W1, dpRank: 0, score: 2, treeSize: 3n }])
})

test('failed events: nothing applied, but the worker is known and its event id recorded', (t) => {
  const ix = new fallback.RawRadixIndex()
  t.is(ix.applyEvent(stored(5n, 7n, 99n, [[1n, 1n]])), 1)
  t.is(
    ix.applyEvent(
      stored(4n, 8n, null, [
        [1n, 1n],
        [2n, 2n],
        [1n, 3n],
      ]),
    ),
    3,
  )
  t.is(
    ix.applyEvent(
      stored(4n, 9n, 2n, [
        [1n, 1n],
        [2n, 2n],
      ]),
    ),
    3,
  )
  const many: [bigint, bigint][] = Array.from({ length: 40 }, (_, i) => [BigInt(i + 1), BigInt(i + 1)])
  many.push([17n, 99n])
  t.is(ix.applyEvent(stored(4n, 10n, null, many)), 3)
  t.is(ix.applyEvent(removed(3n, 11n, [1n])), 2)
  t.deepEqual(Array.from(ix.workers()), [3n, 4n, 5n])
  t.is(ix.size(), 0)
  t.deepEqual(counters(ix), {
    applied_stored: 0,
    applied_removed: 1,
    applied_cleared: 0,
    parent_not_found: 1,
    block_not_found: 1,
    invalid_block_sequence: 3,
    blocks_stored: 0,
    blocks_removed: 0,
  })
  // the recorded id shows in a dump once the worker holds something
  ix.applyEvent(stored(5n, 12n, null, [[1n, 1n]]))
  ix.applyEvent(stored(5n, 3n, 1n, [[2n, 2n]], 1))
  t.deepEqual(dumpRows(ix.dump()), [[5n, 0, 12n, null, 1n, 1n]])
})

test('dump: workers ascending, children in ascending u64 key order, eventId per worker key', (t) => {
  const ix = new fallback.RawRadixIndex()
  const big = (1n << 63n) + 5n
  ix.applyEvent(stored(W2, 4n, null, [[1n, 7n]], 1))
  ix.applyEvent(stored(W1 << 40n, 1n, null, [[1n, 7n]], 0))
  ix.applyEvent(
    stored(
      W2,
      6n,
      null,
      [
        [10n, big],
        [11n, 3n],
      ],
      0,
    ),
  )
  ix.applyEvent(stored(W2, 7n, null, [[20n, 2n]], 0))
  ix.applyEvent(stored(W2, 8n, 10n, [[12n, 1n]], 0))
  ix.applyEvent(
    stored(
      W2,
      9n,
      20n,
      [
        [21n, 1n << 32n],
        [22n, 1n],
      ],
      0,
    ),
  )
  ix.applyEvent(stored(W2, 10n, 20n, [[23n, 5n]], 0))
  t.deepEqual(dumpRows(ix.dump()), [
    [W2, 0, 10n, null, 20n, 2n],
    [W2, 0, 10n, 20n, 23n, 5n],
    [W2, 0, 10n, 20n, 21n, 1n << 32n],
    [W2, 0, 10n, 21n, 22n, 1n],
    [W2, 0, 10n, null, 10n, big],
    [W2, 0, 10n, 10n, 12n, 1n],
    [W2, 0, 10n, 10n, 11n, 3n],
    [W2, 1, 4n, null, 1n, 7n],
    [W1 << 40n, 0, 1n, null, 1n, 7n],
  ])
  // a dump replayed into a fresh index gives the same dump
  const iy = new fallback.RawRadixIndex()
  for (const e of ix.dump()) t.is(iy.applyEvent(e), 0)
  t.deepEqual(iy.dump(), ix.dump())
})

test('cleared empties every dp rank of the worker id; removeWorker and removeWorkerDpRank forget', (t) => {
  const ix = new fallback.RawRadixIndex()
  ix.applyEvent(stored(W1, 0n, null, [[1n, 1n]], 0))
  ix.applyEvent(stored(W1, 0n, null, [[2n, 1n]], 1))
  ix.applyEvent(stored(W2, 0n, null, [[3n, 1n]], 0))
  t.is(ix.applyEvent(cleared(W1, 5n, 1)), 0)
  t.is(ix.size(), 1)
  t.deepEqual(Array.from(ix.workers()), [W1, W2])
  t.like(counters(ix), { applied_cleared: 1, blocks_removed: 0 })
  ix.applyEvent(stored(W1, 6n, null, [[1n, 1n]], 0))
  ix.applyEvent(stored(W1, 6n, null, [[2n, 1n]], 1))
  ix.removeWorkerDpRank(W1, 1)
  t.deepEqual(scores(ix, [1n]), [
    [W1, 0, 1],
    [W2, 0, 1],
  ])
  ix.removeWorker(W1)
  t.deepEqual(Array.from(ix.workers()), [W2])
  t.is(ix.size(), 1)
  ix.removeWorker(W2)
  t.deepEqual(Array.from(ix.workers()), [])
  t.deepEqual(scores(ix, [1n]), [])
  // a forgotten worker comes back fresh (no recorded event id)
  ix.applyEvent(stored(W2, 0n, null, [[3n, 1n]], 0))
  t.deepEqual(dumpRows(ix.dump()), [[W2, 0, 0n, null, 3n, 1n]])
})

test('applyEncoded: envelope, msgpack and JSON; undecodable bytes throw', (t) => {
  const ix = new fallback.RawRadixIndex()
  const ev = stored((1n << 64n) - 1n, (1n << 64n) - 2n, null, [[(1n << 64n) - 3n, 1n]], 4294967295)
  const mp = fallback.encodeRouterEvent(ev, false)
  t.is(ix.applyEncoded(mp, 1), 0)
  t.is(ix.applyEncoded(fallback.encodeRouterEvent(stored(W1, 0n, null, [[1n, 1n]]), true), 2), 0)
  t.is(
    ix.applyEncoded(fallback.encodeEnvelope(9n, 1n, 2n, 'kv-events', fallback.encodeRouterEvent(stored(W2, 0n, 5n, [[1n, 1n]]), false)), 0),
    1,
  )
  t.deepEqual(dumpRows(ix.dump()), [
    [W1, 0, 0n, null, 1n, 1n],
    [(1n << 64n) - 1n, 4294967295, (1n << 64n) - 2n, null, (1n << 64n) - 3n, 1n],
  ])
  const bad = [
    [new Uint8Array([0xc1]), 1],
    [Buffer.from('{"worker_id":1}'), 2],
    [mp, 0], // a RouterEvent is not an envelope (its values are containers)
    [fallback.encodeEnvelope(1n, 1n, 1n, 't', mp).subarray(0, 20), 0],
    [Buffer.concat([fallback.encodeEnvelope(1n, 1n, 1n, 't', mp), Buffer.from([0])]), 0],
    [fallback.encodeEnvelope(1n, 1n, 1n, 't', new Uint8Array([0x90])), 0],
    [new Uint8Array([0x81, 0xa7, ...Buffer.from('payload'), 0xa1, 0x41]), 0], // payload as a str
    [new Uint8Array(), 0],
  ] as const
  for (const [bytes, format] of bad) t.throws(() => ix.applyEncoded(bytes, format), { message: /^invalid router event/ })
})

// ---------------------------------------------------------------------------------------------------
// local indexer

test('eventsInRange: Error, InvalidRange, TreeDump, TooNew, Events, eviction', (t) => {
  const li: RawLocalIndexer = new fallback.RawLocalIndexer(3)
  t.deepEqual(li.eventsInRange(0, null, null), { kind: 'Error', message: 'no events for dp rank 0' })
  li.applyEvent(stored(W1, 10n, null, [[1n, 1n]]))
  li.applyEvent(stored(W1, 11n, 1n, [[2n, 2n]]))
  li.applyEvent(stored(W1, 12n, 77n, [[3n, 3n]])) // parent_not_found, still buffered
  li.applyEvent(stored(W1, 0n, null, [[9n, 9n]], 2))
  t.deepEqual(li.eventsInRange(1, 0n, null), { kind: 'Error', message: 'no events for dp rank 1' })
  t.deepEqual(li.eventsInRange(0, 5n, 4n), { kind: 'InvalidRange', startId: 5n, endId: 4n })
  const dump0 = { kind: 'TreeDump', events: li.dump().filter((e) => e.event.dpRank === 0) }
  t.is(dump0.events.length, 2)
  t.deepEqual(li.eventsInRange(0, null, 11n), dump0)
  t.deepEqual(li.eventsInRange(0, 13n, null), { kind: 'TooNew', requestedStart: 13n, requestedEnd: 12n, newestAvailable: 12n })
  t.deepEqual(li.eventsInRange(0, 13n, 20n), { kind: 'TooNew', requestedStart: 13n, requestedEnd: 20n, newestAvailable: 12n })
  t.deepEqual(li.eventsInRange(0, 9n, null), dump0)
  const r = li.eventsInRange(0, 11n, null)
  t.deepEqual(r, { kind: 'Events', events: [stored(W1, 11n, 1n, [[2n, 2n]]), stored(W1, 12n, 77n, [[3n, 3n]])] })
  t.deepEqual(li.eventsInRange(0, 10n, 10n), { kind: 'Events', events: [stored(W1, 10n, null, [[1n, 1n]])] })
  t.deepEqual(li.eventsInRange(0, 11n, 100n), r)
  // fresh objects every time
  if (r.kind === 'Events') (r.events[0]!.event.data as { blocks: unknown[] }).blocks.length = 0
  t.deepEqual(li.eventsInRange(0, 11n, null), {
    kind: 'Events',
    events: [stored(W1, 11n, 1n, [[2n, 2n]]), stored(W1, 12n, 77n, [[3n, 3n]])],
  })
  // the ring keeps the last 3: 10 is evicted
  const fourth = removed(W1, 13n, [1n])
  li.applyEvent(fourth)
  fourth.event.eventId = 99n // the caller's object is not the ring's
  t.is(li.eventsInRange(0, 10n, null).kind, 'TreeDump')
  t.deepEqual(li.eventsInRange(0, 11n, 12n), {
    kind: 'Events',
    events: [stored(W1, 11n, 1n, [[2n, 2n]]), stored(W1, 12n, 77n, [[3n, 3n]])],
  })
  t.deepEqual(li.eventsInRange(0, 13n, null), { kind: 'Events', events: [removed(W1, 13n, [1n])] })
  // rank 2's dump only
  t.deepEqual(li.eventsInRange(2, null, null), { kind: 'TreeDump', events: [stored(W1, 0n, null, [[9n, 9n]], 2)] })
  // ids out of order: the range filter keeps ring order
  const lj = new fallback.RawLocalIndexer(8)
  for (const id of [5n, 3n, 7n, 4n]) lj.applyEvent(removed(W2, id, [id]))
  const ids = (x: ReturnType<RawLocalIndexer['eventsInRange']>): bigint[] =>
    x.kind === 'Events' ? x.events.map((e) => e.event.eventId) : []
  t.deepEqual(ids(lj.eventsInRange(0, 4n, 6n)), [5n, 4n])
  t.is(lj.eventsInRange(0, 2n, null).kind, 'TreeDump')
})

test('the ingestor applies and buffers every emitted event in its local indexer', (t) => {
  for (const jetstream of [false, true]) {
    const ing = new fallback.RawIngestor({
      kvBlockSize: 2,
      workerId: 42n,
      jetstream,
      maxDpRanks: 4,
      dpRanks: Uint32Array.from([0, 3]),
      localIndexerBufferSize: 16,
    })
    const li = ing.localIndexer()!
    t.truthy(li)
    t.is(
      new fallback.RawIngestor({
        kvBlockSize: 2,
        workerId: 42n,
        jetstream,
        maxDpRanks: 4,
        dpRanks: null,
        localIndexerBufferSize: 0,
      }).localIndexer(),
      null,
    )
    // configured ranks are known from the start
    t.deepEqual(li.eventsInRange(3, null, null), { kind: 'TreeDump', events: [] })
    t.is(li.eventsInRange(1, null, null).kind, 'Error')
    const tokens = Uint32Array.from([1, 2, 3, 4, 5, 6])
    const th = fallback.computeBlockHashes(tokens, 2, null, null)
    ing.stored(tokens, BigUint64Array.from([100n, 101n, 102n]), 2, null, null, null, 0, 0)
    ing.removed(BigUint64Array.from([102n, 555n]), 0, 0)
    t.deepEqual(
      matches((out) => li.findMatches(th, false, out)),
      [{ workerId: 42n, dpRank: 0, score: 2, treeSize: 2n }],
    )
    t.like(counters(li), { applied_stored: 1, applied_removed: 1, block_not_found: 1, blocks_removed: 1 })
    const r = li.eventsInRange(0, 0n, null)
    t.is(r.kind, 'Events')
    if (r.kind === 'Events') {
      t.deepEqual(
        r.events.map((e) => e.event.eventId),
        [0n, 1n],
      )
      t.deepEqual(r.events[1], removed(42n, 1n, [102n, 555n]))
      t.deepEqual(r.events[0]!.event.data, {
        type: 'stored',
        parentHash: null,
        blocks: [0, 1, 2].map((i) => ({ blockHash: 100n + BigInt(i), tokensHash: th[i]!, mmExtraInfo: null })),
      })
    }
    // a reset with two known ranks emits removes of the live blocks
    ing.stored(tokens.subarray(0, 2), BigUint64Array.from([300n]), 2, null, null, null, 3, 0)
    ing.cleared(0, 0)
    t.is(li.size(), 1)
    t.deepEqual(dumpRows(li.dump()), [[42n, 3, 0n, null, 300n, th[0]!]])
    const after = li.eventsInRange(0, 2n, null)
    t.deepEqual(after.kind === 'Events' ? after.events.map((e) => e.event.data.type) : [], ['removed'])
  }
  // the only known rank: cleared, applied to the index for every rank of the worker id
  const ing = new fallback.RawIngestor({
    kvBlockSize: 2,
    workerId: 42n,
    jetstream: false,
    maxDpRanks: 1,
    dpRanks: null,
    localIndexerBufferSize: 2,
  })
  const li = ing.localIndexer()!
  t.is(li.eventsInRange(0, null, null).kind, 'Error')
  ing.stored(Uint32Array.from([1, 2]), BigUint64Array.from([7n]), 2, null, null, null, 0, 0)
  t.is(li.size(), 1)
  ing.cleared(0, 0)
  t.is(li.size(), 0)
  t.like(counters(li), { applied_cleared: 1 })
  const r = li.eventsInRange(0, 0n, null)
  t.deepEqual(r.kind === 'Events' ? r.events.map((e) => e.event.data) : null, [
    {
      type: 'stored',
      parentHash: null,
      blocks: [{ blockHash: 7n, tokensHash: fallback.computeBlockHashes(Uint32Array.from([1, 2]), 2, null, null)[0]!, mmExtraInfo: null }],
    },
    { type: 'cleared' },
  ])
})

// ---------------------------------------------------------------------------------------------------
// randomized comparison with a naive model of SPEC 6

class MNode {
  kids = new Map<bigint, MNode>()
  holders: { w: string; h: bigint }[] = []
  parent: MNode | null
  constructor(
    readonly key: bigint,
    parent: MNode | null,
  ) {
    this.parent = parent
  }
}
class Model {
  root = new MNode(0n, null)
  workers = new Map<string, { id: bigint; rank: number; map: Map<bigint, MNode>; last: bigint }>()
  c = Object.fromEntries(INDEX_COUNTER_NAMES.map((n) => [n, 0])) as Record<string, number>
  wk(id: bigint, rank: number, eventId: bigint) {
    const k = `${id}/${rank}`
    let w = this.workers.get(k)
    if (!w) {
      w = { id, rank, map: new Map(), last: 0n }
      this.workers.set(k, w)
    }
    w.last = eventId
    return [k, w] as const
  }
  empty(n: MNode): void {
    if (n === this.root) return
    if (n.parent) n.parent.kids.delete(n.key)
    n.parent = null
    for (const c of n.kids.values()) {
      c.parent = null
      if (c.holders.length === 0) this.empty(c)
    }
    n.kids.clear()
  }
  leave(n: MNode, k: string, h: bigint): void {
    n.holders = n.holders.filter((x) => !(x.w === k && x.h === h))
    if (n.holders.length === 0) this.empty(n)
  }
  apply(ev: RouterEventValue): number {
    const [k, w] = this.wk(ev.workerId, ev.event.dpRank, ev.event.eventId)
    const d = ev.event.data
    if (d.type === 'stored') {
      const hs = d.blocks.map((b) => b.blockHash)
      if (new Set(hs).size !== hs.length || (d.parentHash !== null && hs.includes(d.parentHash))) {
        this.c.invalid_block_sequence!++
        return 3
      }
      let cur = this.root
      if (d.parentHash !== null) {
        const p = w.map.get(d.parentHash)
        if (!p) {
          this.c.parent_not_found!++
          return 1
        }
        cur = p
      }
      for (const b of d.blocks) {
        const old = w.map.get(b.blockHash)
        if (old && !(old.parent === cur && cur.kids.get(b.tokensHash) === old)) {
          w.map.delete(b.blockHash)
          this.leave(old, k, b.blockHash)
        }
        let child = cur.kids.get(b.tokensHash)
        if (!child) {
          child = new MNode(b.tokensHash, cur)
          cur.kids.set(b.tokensHash, child)
        }
        if (!child.holders.some((x) => x.w === k && x.h === b.blockHash)) child.holders.push({ w: k, h: b.blockHash })
        w.map.set(b.blockHash, child)
        cur = child
      }
      this.c.applied_stored!++
      this.c.blocks_stored! += d.blocks.length
      return 0
    }
    if (d.type === 'removed') {
      let missing = 0
      for (const h of d.blockHashes) {
        const n = w.map.get(h)
        if (!n) {
          missing++
          continue
        }
        w.map.delete(h)
        this.leave(n, k, h)
        this.c.blocks_removed!++
      }
      this.c.applied_removed!++
      this.c.block_not_found! += missing
      return missing > 0 ? 2 : 0
    }
    for (const [k2, w2] of this.workers) if (w2.id === ev.workerId) this.clearKey(k2)
    this.c.applied_cleared!++
    return 0
  }
  clearKey(k: string): void {
    const w = this.workers.get(k)!
    for (const [h, n] of w.map) this.leave(n, k, h)
    w.map.clear()
  }
  removeWorker(id: bigint, rank?: number): void {
    for (const [k, w] of [...this.workers]) {
      if (w.id === id && (rank === undefined || w.rank === rank)) {
        this.clearKey(k)
        this.workers.delete(k)
      }
    }
  }
  sortedKeys() {
    return [...this.workers.entries()].sort(([, a], [, b]) => (a.id < b.id ? -1 : a.id > b.id ? 1 : a.rank - b.rank))
  }
  find(q: bigint[], earlyExit: boolean): Match[] {
    const score = new Map<string, number>()
    let node = q.length > 0 ? this.root.kids.get(q[0]!) : undefined
    if (node) {
      let active = new Set(node.holders.map((x) => x.w))
      let depth = 1
      for (let i = 1; i < q.length; i++) {
        if (earlyExit && active.size === 1) break
        const child: MNode | undefined = node!.kids.get(q[i]!)
        if (!child) break
        const on = new Set(child.holders.map((x) => x.w))
        for (const w of active) if (!on.has(w)) score.set(w, depth)
        active = new Set([...active].filter((w) => on.has(w)))
        if (active.size === 0) break
        depth = i + 1
        node = child
      }
      for (const w of active) score.set(w, depth)
    }
    return this.sortedKeys()
      .filter(([k]) => score.has(k))
      .map(([k, w]) => ({ workerId: w.id, dpRank: w.rank, score: score.get(k)!, treeSize: BigInt(w.map.size) }))
  }
  dump(): RouterEventValue[] {
    const out: RouterEventValue[] = []
    for (const [k, w] of this.sortedKeys()) {
      const visit = (n: MNode, parent: bigint | null): void => {
        const kids = [...n.kids.values()].filter((c) => c.holders.some((x) => x.w === k)).sort((a, b) => (a.key < b.key ? -1 : 1))
        for (const c of kids) {
          const mine = c.holders.filter((x) => x.w === k)
          for (const x of mine) out.push(stored(w.id, w.last, parent, [[x.h, c.key]], w.rank))
          visit(c, mine[0]!.h)
        }
      }
      visit(this.root, null)
    }
    return out
  }
  size(): number {
    let n = 0
    for (const w of this.workers.values()) n += w.map.size
    return n
  }
}

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

const configs = [
  // few distinct values, so that paths share and hashes repeat and move
  { seeds: 12, steps: 1500, hashes: 24, toks: 4, check: 25, p: [0.6, 0.93, 0.96, 0.98] },
  // many, so that the arenas and tables grow and shrink
  { seeds: 2, steps: 8000, hashes: 4000, toks: 40, check: 500, p: [0.7, 0.97, 0.985, 0.993] },
  { seeds: 1, steps: 6000, hashes: 20000, toks: 200, check: 1000, p: [0.9, 0.997, 0.998, 0.999] },
  // one tokens hash (two with the high bit) and many block hashes: crowded nodes (position maps, tombs)
  { seeds: 3, steps: 5000, hashes: 3000, toks: 1, check: 250, p: [0.8, 0.995, 0.997, 0.999] },
]

test('randomized: the fallback index agrees with a naive model of SPEC 6', (t) => {
  for (const cfg of configs)
    for (let seed = 1; seed <= cfg.seeds; seed++) {
      const r = rng(seed)
      const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!
      const ix = new fallback.RawRadixIndex()
      const m = new Model()
      const ids = [1n, 2n, 3n, (1n << 63n) + 1n]
      const hashOf = () => BigInt(1 + Math.floor(r() * cfg.hashes)) + (r() < 0.2 ? 1n << 40n : 0n)
      const tokOf = () => BigInt(1 + Math.floor(r() * cfg.toks)) + (r() < 0.1 ? 1n << 63n : 0n)
      let eventId = 0n
      const recent: bigint[] = []
      let maxSize = 0
      let bigNodes = 0
      for (let step = 0; step < cfg.steps; step++) {
        const workerId = pick(ids)
        const dpRank = pick([0, 0, 1])
        const x = r()
        let ev: RouterEventValue
        if (x < cfg.p[0]!) {
          const n = 1 + Math.floor(r() * (r() < 0.1 ? 30 : cfg.hashes > 100 ? 12 : 5))
          const blocks: [bigint, bigint][] = Array.from({ length: n }, () => [hashOf(), tokOf()])
          const parent = r() < 0.4 ? null : recent.length > 0 && r() < 0.7 ? pick(recent) : hashOf()
          ev = stored(workerId, eventId++, parent, blocks, dpRank)
          for (const [h] of blocks) recent.push(h)
          if (recent.length > 256) recent.splice(0, 128)
        } else if (x < cfg.p[1]!) {
          const h = () => (recent.length > 0 && r() < 0.5 ? pick(recent) : hashOf())
          ev = removed(workerId, eventId++, Array.from({ length: 1 + Math.floor(r() * 4) }, h), dpRank)
        } else if (x < cfg.p[2]!) {
          ev = cleared(workerId, eventId++, dpRank)
        } else if (x < cfg.p[3]!) {
          ix.removeWorker(workerId)
          m.removeWorker(workerId)
          continue
        } else {
          ix.removeWorkerDpRank(workerId, dpRank)
          m.removeWorker(workerId, dpRank)
          continue
        }
        const fmt = step % 3
        const got =
          fmt === 0
            ? ix.applyEvent(ev)
            : ix.applyEncoded(
                fmt === 1
                  ? fallback.encodeRouterEvent(ev, false)
                  : fallback.encodeEnvelope(1n, 2n, 3n, 'kv-events', fallback.encodeRouterEvent(ev, false)),
                fmt === 1 ? 1 : 0,
              )
        t.is(got, m.apply(ev), `seed ${seed} step ${step}`)
        if (step % cfg.check === 0) {
          for (let k = 0; k < 5; k++) {
            const q = Array.from({ length: 1 + Math.floor(r() * 6) }, tokOf)
            const ee = r() < 0.5
            t.deepEqual(find(ix, q, ee), m.find(q, ee), `seed ${seed} step ${step} query`)
          }
          t.deepEqual(ix.dump(), m.dump(), `seed ${seed} step ${step} dump`)
          t.is(ix.size(), m.size())
          checkIndexInvariants(ix as FallbackRadixIndex)
          maxSize = Math.max(maxSize, ix.size())
          bigNodes = Math.max(bigNodes, (ix as unknown as { bigHolders: Map<number, unknown> }).bigHolders.size)
        }
      }
      t.deepEqual(counters(ix), m.c)
      if (seed === 1 && cfg.hashes > 10000) t.true(maxSize > 2000, 'the large run grows the tables')
      if (cfg.toks === 1) t.true(bigNodes > 0, 'the crowded run has nodes with position maps')
      t.deepEqual(Array.from(ix.workers()), [...new Set(m.sortedKeys().map(([, w]) => w.id))])
      t.deepEqual(ix.dump(), m.dump())
    }
})

test('applyEncoded: the fast msgpack reader agrees with the generic decoder, on canonical and mutated bytes', (t) => {
  const r = rng(99)
  const fe = new FastEvent()
  const samples: RouterEventValue[] = [
    stored(1n, 2n, null, [[3n, 4n]]),
    stored(
      (1n << 64n) - 1n,
      1n << 40n,
      5n,
      [
        [1n << 63n, 0n],
        [6n, 255n],
        [7n, 65536n],
      ],
      4294967295,
    ),
    {
      workerId: 3n,
      event: {
        eventId: 9n,
        dpRank: 1,
        data: {
          type: 'stored',
          parentHash: null,
          blocks: [{ blockHash: 1n, tokensHash: 2n, mmExtraInfo: { mmObjects: [{ mmHash: 3n, offsets: [[0, 1]] }] } }],
        },
      },
    },
    removed(4n, 5n, [1n, 2n, 1n << 50n]),
    removed(4n, 5n, []),
    stored(4n, 6n, 1n, []),
    cleared(8n, 0n, 7),
  ]
  let fastHits = 0
  let mutants = 0
  for (const ev of samples) {
    const mp = fallback.encodeRouterEvent(ev, false)
    if (fe.parse(mp, 0, mp.length)) fastHits++
    for (let k = 0; k < 400; k++) {
      const b = Buffer.from(mp)
      if (k > 0) {
        for (let m = 1 + Math.floor(r() * 2); m > 0; m--) {
          const at = Math.floor(r() * b.length)
          const x = r()
          b[at] =
            x < 0.3
              ? b[at]! ^ (1 << Math.floor(r() * 8))
              : x < 0.5
                ? [0xc0, 0xd0, 0xd3, 0xcf, 0xff, 0x00][Math.floor(r() * 6)]!
                : Math.floor(r() * 256)
        }
        mutants++
      }
      for (const bytes of [b, fallback.encodeEnvelope(1n, 2n, 3n, 'kv-events', b)]) {
        const fmt = bytes === b ? 1 : 0
        const a = new fallback.RawLocalIndexer(4)
        const g = new fallback.RawLocalIndexer(4)
        a.applyEvent(
          stored(4n, 0n, null, [
            [1n, 1n],
            [2n, 2n],
          ]),
        )
        g.applyEvent(
          stored(4n, 0n, null, [
            [1n, 1n],
            [2n, 2n],
          ]),
        )
        let ra: unknown
        let rg: unknown
        try {
          ra = a.applyEncoded(bytes, fmt)
        } catch (e) {
          ra = (e as Error).message.startsWith('invalid router event')
        }
        try {
          const decoded = fallback.decodeRouterEvent(b, false) // the envelope's payload is b
          rg = g.applyEvent(decoded)
        } catch (e) {
          rg = (e as Error).message.startsWith('invalid router event')
        }
        t.is(ra, rg)
        t.deepEqual(a.dump(), g.dump())
        t.deepEqual(a.counters(), g.counters())
        for (const rank of [0, 1, 7, 4294967295]) t.deepEqual(a.eventsInRange(rank, 0n, null), g.eventsInRange(rank, 0n, null))
      }
    }
  }
  t.is(fastHits, samples.length - 1) // all but the one with mm_extra_info
  t.true(mutants > 2000)
})

test('a crowded node whose pairs all share one position-map key: found, removed and dumped in order', (t) => {
  // (worker, hi, lo) with lo = X ^ hi * 0x9e3779b1 (mod 2^32) share their 30-bit mix: all but the first
  // go to the position map's spill
  const ix = new fallback.RawRadixIndex()
  const hashes: bigint[] = []
  for (let hi = 0; hi < 300; hi++) {
    const lo = (0x1234567 ^ Math.imul(hi, 0x9e3779b1)) >>> 0
    hashes.push((BigInt(hi) << 32n) | BigInt(lo))
  }
  let id = 0n
  for (const h of hashes) t.is(ix.applyEvent(stored(W1, id++, null, [[h, 5n]])), 0)
  checkIndexInvariants(ix as FallbackRadixIndex)
  // every third removed, from the end (tombs, then a compaction), then the first re-stored: it goes last
  const gone = hashes.filter((_, i) => i % 3 !== 1).reverse()
  t.is(ix.applyEvent(removed(W1, id++, gone)), 0)
  checkIndexInvariants(ix as FallbackRadixIndex)
  const left = hashes.filter((_, i) => i % 3 === 1)
  t.is(ix.applyEvent(stored(W1, id++, null, [[hashes[0]!, 5n]])), 0)
  checkIndexInvariants(ix as FallbackRadixIndex)
  const dumped = ix.dump().map((e) => (e.event.data.type === 'stored' ? e.event.data.blocks[0]!.blockHash : -1n))
  t.deepEqual(dumped, [...left, hashes[0]!])
  t.is(ix.applyEvent(removed(W1, id++, [...left, hashes[0]!])), 0)
  t.is(ix.size(), 0)
  checkIndexInvariants(ix as FallbackRadixIndex)
})
