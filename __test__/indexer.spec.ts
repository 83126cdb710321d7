// The radix index and the local indexer (SPEC 6) through the public API, on whichever
// implementation loads (CI runs the suite natively and with DYNAMO_KV_FORCE_JS=1): one scenario per
// rule, the recovery of Dynamo's test_distributed_kvindexer_recovery_from_outage, the Ingestor's local
// indexer, dump() round trips on random streams, and agreement with a naive reference model.
import test from 'ava'
import { readFileSync } from 'node:fs'
import { decode } from '@msgpack/msgpack'
import * as kv from '../ts/index.js'
import type { ConvertedEvent, RouterEventValue } from '../ts/index.js'
import { BatchGenerator } from './helpers/gen-batches.js'
import { EventGenerator, ReferenceIndex, Rng, applyOp } from './helpers/gen-events.js'
import { arr, encode, nil, s, u, type Mp } from './helpers/mp.js'

const impl = kv.implementation

// ---------------------------------------------------------------------------------------------------
// helpers

type Block = [blockHash: bigint, tokensHash: bigint]
const st = (parentHash: bigint | null, ...blocks: Block[]): ConvertedEvent => ({
  type: 'stored',
  parentHash,
  blocks: blocks.map(([blockHash, tokensHash]) => ({ blockHash, tokensHash, mmExtraInfo: null })),
})
const rm = (...blockHashes: bigint[]): ConvertedEvent => ({ type: 'removed', blockHashes })
const clr: ConvertedEvent = { type: 'cleared' }
const ev = (workerId: bigint, eventId: bigint, data: ConvertedEvent, dpRank = 0): RouterEventValue => ({
  workerId,
  event: { eventId, dpRank, data },
})

/** An index plus per-(worker, rank) event ids counting from 1. */
class Sim {
  readonly ids = new Map<string, bigint>()
  constructor(readonly idx: kv.RadixIndex = new kv.RadixIndex()) {}
  ev(workerId: bigint, data: ConvertedEvent, dpRank = 0): RouterEventValue {
    const k = `${workerId}/${dpRank}`
    const id = (this.ids.get(k) ?? 0n) + 1n
    this.ids.set(k, id)
    return ev(workerId, id, data, dpRank)
  }
  apply(workerId: bigint, data: ConvertedEvent, dpRank = 0): kv.ApplyOutcome {
    return this.idx.applyEvent(this.ev(workerId, data, dpRank))
  }
}

type Row = [workerId: bigint, dpRank: number, n: number]
/** A result's lists are getters: a deep comparison looks at them through the plain form. */
function plain(m: kv.OverlapScores): kv.OverlapScores {
  return { scores: m.scores, treeSizes: m.treeSizes }
}
function scores(idx: kv.RadixIndex, q: bigint[], earlyExit = false): Row[] {
  return idx.findMatches(BigUint64Array.from(q), { earlyExit }).scores.map((s) => [s.workerId, s.dpRank, s.score])
}
function treeSizes(idx: kv.RadixIndex, q: bigint[]): Row[] {
  return idx.findMatches(BigUint64Array.from(q)).treeSizes.map((s) => [s.workerId, s.dpRank, s.size])
}

type DumpRow = [workerId: bigint, dpRank: number, eventId: bigint, parentHash: bigint | null, blockHash: bigint, tokensHash: bigint]
/** dump() as rows, checking the shape of every dumped event on the way. */
function dumpRows(t: { true(v: boolean, m?: string): void }, events: RouterEventValue[]): DumpRow[] {
  return events.map((e) => {
    const d = e.event.data
    t.true(
      d.type === 'stored' && d.blocks.length === 1 && d.blocks[0]!.mmExtraInfo === null,
      'a dumped event stores one block, mmExtraInfo null',
    )
    if (d.type !== 'stored') throw new Error('not a stored event')
    return [e.workerId, e.event.dpRank, e.event.eventId, d.parentHash, d.blocks[0]!.blockHash, d.blocks[0]!.tokensHash]
  })
}

function counters(idx: kv.RadixIndex): Record<string, number> {
  return Object.fromEntries(Object.entries(idx.counters()).map(([k, v]) => [k, Number(v)]))
}

/** The RouterEvent inside an Ingestor payload (event-plane envelope or JetStream JSON). */
function routerEventOf(payload: Uint8Array, mode: kv.IngestMode): RouterEventValue {
  if (mode === 'jetstream') return kv.decodeRouterEvent(payload, 'json')
  const env = decode(payload, { useBigInt64: true }) as { topic: string; payload: Uint8Array }
  return kv.decodeRouterEvent(env.payload, 'msgpack')
}

const TOP = 1n << 63n // worker ids and hashes at and above 2^63 check unsigned ordering

// ---------------------------------------------------------------------------------------------------
// Stored

test(`${impl}: stored at the root and chained; scores, treeSizes, workers, size`, (t) => {
  const s = new Sim()
  t.is(s.apply(1n, st(null, [10n, 100n], [11n, 101n])), 'applied')
  t.is(s.apply(1n, st(11n, [12n, 102n])), 'applied')
  t.is(s.apply(2n, st(null, [20n, 100n])), 'applied')
  t.deepEqual(scores(s.idx, [100n, 101n, 102n]), [
    [1n, 0, 3],
    [2n, 0, 1],
  ])
  t.deepEqual(treeSizes(s.idx, [100n, 101n, 102n]), [
    [1n, 0, 3],
    [2n, 0, 1],
  ])
  t.deepEqual(s.idx.workers(), [1n, 2n])
  t.is(s.idx.size(), 4)
  t.deepEqual(scores(s.idx, [101n]), [], 'a query must start at the root')
  t.deepEqual(scores(s.idx, []), [])
  t.deepEqual(plain(s.idx.findMatches([])), { scores: [], treeSizes: [] })
})

test(`${impl}: unknown parent applies nothing (and the worker is known from that failing event)`, (t) => {
  const s = new Sim()
  t.is(s.apply(5n, st(999n, [1n, 100n], [2n, 101n])), 'parent_not_found')
  t.is(s.idx.size(), 0)
  t.deepEqual(s.idx.workers(), [5n])
  t.deepEqual(scores(s.idx, [100n, 101n]), [])
  s.apply(5n, st(null, [1n, 100n]))
  t.is(s.apply(5n, st(77n, [2n, 101n], [3n, 102n])), 'parent_not_found')
  t.deepEqual(scores(s.idx, [100n, 101n, 102n]), [[5n, 0, 1]])
  t.is(s.idx.size(), 1)
  // a parent held by another worker, or by another dp rank of the same worker, is unknown too
  s.apply(6n, st(null, [60n, 100n]))
  t.is(s.apply(5n, st(60n, [4n, 101n])), 'parent_not_found')
  t.is(s.apply(5n, st(1n, [4n, 101n]), 1), 'parent_not_found')
  t.deepEqual(scores(s.idx, [100n, 101n]), [
    [5n, 0, 1],
    [6n, 0, 1],
  ])
  t.like(counters(s.idx), { parent_not_found: 4, applied_stored: 2, blocks_stored: 2 })
  t.deepEqual(s.idx.workers(), [5n, 6n])
})

test(`${impl}: invalid block sequences apply nothing`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n]))
  // a hash repeated within the event: not even the blocks before the repeat are applied
  t.is(s.apply(1n, st(1n, [2n, 101n], [3n, 102n], [2n, 103n])), 'invalid_block_sequence')
  // a hash equal to the parent
  t.is(s.apply(1n, st(1n, [4n, 101n], [1n, 102n])), 'invalid_block_sequence')
  // at the root, and for a worker never seen before (who becomes known)
  t.is(s.apply(9n, st(null, [7n, 100n], [7n, 101n])), 'invalid_block_sequence')
  t.is(s.idx.size(), 1)
  t.deepEqual(scores(s.idx, [100n, 101n, 102n, 103n]), [[1n, 0, 1]])
  t.deepEqual(s.idx.workers(), [1n, 9n])
  t.like(counters(s.idx), { invalid_block_sequence: 3, applied_stored: 1, blocks_stored: 1 })
})

test(`${impl}: invalid sequences longer than 16 blocks, and long valid ones`, (t) => {
  const s = new Sim()
  const chain = (n: number, base: bigint): Block[] => Array.from({ length: n }, (_, i): Block => [base + BigInt(i), 100n + BigInt(i)])
  for (const n of [16, 17, 40, 1500]) {
    for (const at of [0, n - 1, n >> 1]) {
      const dup = chain(n, 1000n * BigInt(n))
      dup[at] = [dup[(at + 1) % n]![0], dup[at]![1]]
      t.is(s.apply(9n, st(null, ...dup)), 'invalid_block_sequence', `${n} blocks, repeat at ${at}`)
      const withParent = chain(n, 5_000_000n + 1000n * BigInt(n))
      t.is(s.apply(9n, st(withParent[at]![0], ...withParent)), 'invalid_block_sequence', `${n} blocks, parent at ${at}`)
    }
    t.is(s.apply(8n, st(null, ...chain(n, 1000n * BigInt(n)))), 'applied')
  }
  t.is(s.idx.size(), 16 + 17 + 40 + 1500, 'only the valid chains (distinct hashes on shared nodes)')
  t.deepEqual(
    scores(
      s.idx,
      Array.from({ length: 1600 }, (_, i) => 100n + BigInt(i)),
    ),
    [[8n, 0, 1500]],
  )
  t.deepEqual(counters(s.idx).invalid_block_sequence, 24)
})

test(`${impl}: re-storing a chain is idempotent`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n], [2n, 101n], [3n, 102n]))
  s.apply(2n, st(null, [1n, 100n]))
  const before = { size: s.idx.size(), m: s.idx.findMatches([100n, 101n, 102n]) }
  const dump0 = dumpRows(t, s.idx.dump()).map((r) => r.filter((_, i) => i !== 2))
  t.is(s.apply(1n, st(null, [1n, 100n], [2n, 101n], [3n, 102n])), 'applied')
  t.is(s.apply(1n, st(1n, [2n, 101n], [3n, 102n])), 'applied')
  t.is(s.apply(1n, st(2n, [3n, 102n])), 'applied')
  t.is(s.idx.size(), before.size)
  t.deepEqual(plain(s.idx.findMatches([100n, 101n, 102n])), plain(before.m))
  t.deepEqual(
    dumpRows(t, s.idx.dump()).map((r) => r.filter((_, i) => i !== 2)),
    dump0,
    'the same dump apart from event ids',
  )
  t.like(counters(s.idx), { applied_stored: 5, blocks_stored: 3 + 1 + 3 + 2 + 1 })
})

test(`${impl}: a block hash stored at a new place leaves the old one`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n], [2n, 101n]))
  s.apply(2n, st(null, [20n, 100n], [21n, 101n]))
  // block 2 of worker 1 re-stored at the root under other tokens
  t.is(s.apply(1n, st(null, [2n, 300n])), 'applied')
  t.deepEqual(scores(s.idx, [100n, 101n]), [
    [1n, 0, 1],
    [2n, 0, 2],
  ])
  t.deepEqual(scores(s.idx, [300n]), [[1n, 0, 1]])
  t.is(s.idx.size(), 4, 'a move does not add an entry')
  t.deepEqual(dumpRows(t, s.idx.dump()), [
    [1n, 0, 2n, null, 1n, 100n],
    [1n, 0, 2n, null, 2n, 300n],
    [2n, 0, 1n, null, 20n, 100n],
    [2n, 0, 1n, 20n, 21n, 101n],
  ])
  // moved again, deeper, under its old parent but other tokens; and back to where it was
  s.apply(1n, st(1n, [2n, 102n]))
  t.deepEqual(scores(s.idx, [300n]), [])
  t.deepEqual(scores(s.idx, [100n, 102n]), [
    [1n, 0, 2],
    [2n, 0, 1],
  ])
  s.apply(1n, st(1n, [2n, 101n]))
  t.deepEqual(scores(s.idx, [100n, 101n]), [
    [1n, 0, 2],
    [2n, 0, 2],
  ])
  t.deepEqual(scores(s.idx, [100n, 102n]), [
    [1n, 0, 1],
    [2n, 0, 1],
  ])
  t.is(s.idx.size(), 4)
})

test(`${impl}: a move that leaves a node without workers drops that node's children`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n], [2n, 101n], [3n, 102n]))
  // block 1 moves to the root under tokens 200: node 100 loses its only worker, so 101 and 102 go
  s.apply(1n, st(null, [1n, 200n]))
  t.deepEqual(scores(s.idx, [100n, 101n, 102n]), [])
  t.deepEqual(scores(s.idx, [200n]), [[1n, 0, 1]])
  t.is(s.idx.size(), 3, 'blocks 2 and 3 are still held (stale, unreachable)')
  t.deepEqual(dumpRows(t, s.idx.dump()), [[1n, 0, 2n, null, 1n, 200n]])
  // storing 100 again at the root: the old children are gone, so worker 1 is only on 100
  s.apply(1n, st(null, [5n, 100n]))
  t.deepEqual(scores(s.idx, [100n, 101n, 102n]), [[1n, 0, 1]])
  // blocks 2 and 3 are still known parents (stores under them apply, on the unreachable subtree)
  t.is(s.apply(1n, st(3n, [4n, 103n])), 'applied')
  t.deepEqual(scores(s.idx, [100n, 101n, 102n, 103n]), [[1n, 0, 1]])
  t.is(s.idx.size(), 5)
})

// ---------------------------------------------------------------------------------------------------
// Removed, cleared, removeWorker

test(`${impl}: removes do not cascade to descendants`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n], [2n, 101n], [3n, 102n], [4n, 103n]))
  s.apply(2n, st(null, [1n, 100n], [2n, 101n], [3n, 102n], [4n, 103n]))
  t.is(s.apply(1n, rm(2n)), 'applied')
  t.deepEqual(treeSizes(s.idx, [100n]), [
    [1n, 0, 3],
    [2n, 0, 4],
  ])
  t.is(s.idx.size(), 7)
  t.deepEqual(scores(s.idx, [100n, 101n, 102n, 103n]), [
    [1n, 0, 1],
    [2n, 0, 4],
  ])
  // worker 1 still holds 3 and 4 (stale): chaining under 3 is still allowed
  t.is(s.apply(1n, st(4n, [5n, 104n])), 'applied')
  t.like(counters(s.idx), { applied_removed: 1, blocks_removed: 1, block_not_found: 0 })
})

test(`${impl}: a stale deeper node only counts for workers still active on the path`, (t) => {
  const s = new Sim()
  for (const w of [1n, 2n, 3n]) s.apply(w, st(null, [1n, 100n], [2n, 101n], [3n, 102n], [4n, 103n]))
  s.apply(1n, rm(2n)) // worker 1: on 100, not on 101, still on 102 and 103
  s.apply(2n, rm(1n)) // worker 2: not on 100, still on 101..103
  t.deepEqual(scores(s.idx, [100n, 101n, 102n, 103n]), [
    [1n, 0, 1],
    [3n, 0, 4],
  ])
  t.deepEqual(scores(s.idx, [100n, 101n, 102n, 103n], true), [
    [1n, 0, 1],
    [3n, 0, 2],
  ])
  // with worker 3 gone from 102 only worker 3's score changes; 1 and 2 never come back
  s.apply(3n, rm(3n))
  t.deepEqual(scores(s.idx, [100n, 101n, 102n, 103n]), [
    [1n, 0, 1],
    [3n, 0, 2],
  ])
  // the node 101 still has workers 2 and 3, so its children stay; 102 has 1 and 2 (stale), so it
  // keeps 103: a query along it still stops scoring at the active set
  t.deepEqual(treeSizes(s.idx, [100n, 101n, 102n, 103n]), [
    [1n, 0, 3],
    [3n, 0, 3],
  ])
})

test(`${impl}: a node left without workers loses its children`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n], [2n, 101n], [3n, 102n]))
  s.apply(2n, st(null, [20n, 100n], [21n, 101n]))
  // 101 still has worker 2 after worker 1 leaves it: it keeps its child 102
  s.apply(1n, rm(2n))
  s.apply(1n, st(null, [2n, 101n], [9n, 999n])) // block 2 to the root (101 there), 9 under it
  t.deepEqual(scores(s.idx, [101n, 999n]), [[1n, 0, 2]])
  s.apply(1n, st(1n, [2n, 101n])) // block 2 back: the root's 101 is left empty, so 999 goes
  t.deepEqual(scores(s.idx, [101n, 999n]), [])
  t.deepEqual(scores(s.idx, [100n, 101n, 102n]), [
    [1n, 0, 3],
    [2n, 0, 2],
  ])
  // now 100 loses both workers: its children (101, and 102 under it) are dropped
  s.apply(1n, rm(1n))
  s.apply(2n, rm(20n))
  t.deepEqual(scores(s.idx, [100n, 101n, 102n]), [], 'the emptied node stays but scores nobody')
  t.is(s.idx.size(), 4, 'worker 1 still holds 2, 3 and 9, worker 2 holds 21 (all stale)')
  // worker 3 stores the same tokens: new nodes under 100, so 1 and 2 (stale below) never show up
  s.apply(3n, st(null, [30n, 100n], [31n, 101n], [32n, 102n]))
  t.deepEqual(scores(s.idx, [100n, 101n, 102n]), [[3n, 0, 3]])
  // worker 1 stores 100 again: it is on 100 only; 101 and 102 are worker 3's new nodes
  s.apply(1n, st(null, [1n, 100n]))
  s.apply(2n, st(null, [20n, 100n]))
  t.deepEqual(scores(s.idx, [100n, 101n, 102n]), [
    [1n, 0, 1],
    [2n, 0, 1],
    [3n, 0, 3],
  ])
  // the dump has neither the stale nor the unreachable blocks
  t.deepEqual(
    dumpRows(t, s.idx.dump()).map(([w, , , p, b, tk]) => [w, p, b, tk]),
    [
      [1n, null, 1n, 100n],
      [2n, null, 20n, 100n],
      [3n, null, 30n, 100n],
      [3n, 30n, 31n, 101n],
      [3n, 31n, 32n, 102n],
    ],
  )
})

test(`${impl}: removed counts unknown hashes as block_not_found and removes the known ones`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n], [2n, 101n], [3n, 102n]))
  t.is(s.apply(1n, rm(77n, 3n, 78n)), 'block_not_found')
  t.is(s.idx.size(), 2)
  t.is(s.apply(1n, rm(2n, 2n)), 'block_not_found', 'a hash repeated within a remove is unknown the second time')
  t.is(s.idx.size(), 1)
  t.is(s.apply(1n, rm(1n, 2n), 1), 'block_not_found', 'the hashes of another dp rank are unknown')
  t.is(s.apply(4n, rm(1n)), 'block_not_found', 'a worker never seen')
  t.deepEqual(s.idx.workers(), [1n, 4n])
  t.is(s.apply(1n, rm()), 'applied')
  t.deepEqual(counters(s.idx), {
    applied_stored: 1,
    applied_removed: 5,
    applied_cleared: 0,
    parent_not_found: 0,
    block_not_found: 2 + 1 + 2 + 1,
    invalid_block_sequence: 0,
    blocks_stored: 3,
    blocks_removed: 2,
  })
})

test(`${impl}: cleared drops every dp rank of the worker, which stays known`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n], [2n, 101n]), 0)
  s.apply(1n, st(null, [1n, 100n]), 1)
  s.apply(1n, st(null, [1n, 100n]), 7)
  s.apply(2n, st(null, [1n, 100n]), 0)
  t.deepEqual(scores(s.idx, [100n]), [
    [1n, 0, 1],
    [1n, 1, 1],
    [1n, 7, 1],
    [2n, 0, 1],
  ])
  t.is(s.apply(1n, clr, 1), 'applied')
  t.deepEqual(scores(s.idx, [100n, 101n]), [[2n, 0, 1]])
  t.is(s.idx.size(), 1)
  t.deepEqual(s.idx.workers(), [1n, 2n])
  t.is(s.apply(1n, st(1n, [3n, 101n]), 0), 'parent_not_found', 'the cleared blocks are gone as parents')
  // a cleared from a rank never seen still clears the others
  s.apply(2n, st(null, [5n, 100n]), 3)
  t.is(s.apply(2n, clr, 9), 'applied')
  t.deepEqual(scores(s.idx, [100n]), [])
  t.like(counters(s.idx), { applied_cleared: 2 })
})

test(`${impl}: removeWorker forgets every rank; removeWorkerDpRank only one`, (t) => {
  const s = new Sim()
  for (const w of [1n, 2n, 3n]) for (const r of [0, 1]) s.apply(w, st(null, [w * 10n + BigInt(r), 100n], [w, 101n]), r)
  t.is(s.idx.size(), 12)
  s.idx.removeWorker(2n)
  t.deepEqual(s.idx.workers(), [1n, 3n])
  t.is(s.idx.size(), 8)
  t.deepEqual(scores(s.idx, [100n, 101n]), [
    [1n, 0, 2],
    [1n, 1, 2],
    [3n, 0, 2],
    [3n, 1, 2],
  ])
  s.idx.removeWorkerDpRank(3n, 0)
  t.deepEqual(s.idx.workers(), [1n, 3n])
  t.deepEqual(scores(s.idx, [100n, 101n]), [
    [1n, 0, 2],
    [1n, 1, 2],
    [3n, 1, 2],
  ])
  s.idx.removeWorkerDpRank(3n, 1)
  t.deepEqual(s.idx.workers(), [1n], 'a worker id whose last rank is removed is forgotten')
  t.is(s.idx.size(), 4)
  // unknown ids and ranks are no-ops
  s.idx.removeWorker(42n)
  s.idx.removeWorkerDpRank(1n, 5)
  t.is(s.idx.size(), 4)
  // a removed worker's hashes are unknown as parents; it comes back from its next event
  t.is(s.apply(2n, st(20n, [5n, 102n])), 'parent_not_found')
  t.deepEqual(s.idx.workers(), [1n, 2n])
  // removing the last holders of a node drops its children too
  s.idx.removeWorker(1n)
  s.apply(4n, st(null, [40n, 100n]))
  s.apply(1n, st(null, [10n, 100n]))
  t.deepEqual(scores(s.idx, [100n, 101n]), [
    [1n, 0, 1],
    [4n, 0, 1],
  ])
  t.deepEqual(s.idx.counters().applied_cleared, 0n, 'removeWorker is not an event')
})

// ---------------------------------------------------------------------------------------------------
// findMatches

test(`${impl}: findMatches orders by unsigned (workerId, dpRank), omits zero scores, counts every hash in treeSizes`, (t) => {
  const s = new Sim()
  const ids = [TOP + 5n, 3n, (1n << 64n) - 1n, TOP - 1n, 0n]
  for (const w of ids) s.apply(w, st(null, [w ^ 1n, 100n]), w === 3n ? 4_000_000_000 : 0)
  s.apply(3n, st(null, [9n, 100n], [10n, 101n]), 2)
  s.apply(TOP - 1n, st(null, [77n, 555n], [78n, 556n]), 0) // elsewhere: counted in its tree size
  const m = s.idx.findMatches([100n, 101n])
  t.deepEqual(
    m.scores.map((x) => [x.workerId, x.dpRank, x.score]),
    [
      [0n, 0, 1],
      [3n, 2, 2],
      [3n, 4_000_000_000, 1],
      [TOP - 1n, 0, 1],
      [TOP + 5n, 0, 1],
      [(1n << 64n) - 1n, 0, 1],
    ],
  )
  t.deepEqual(
    m.treeSizes.map((x) => [x.workerId, x.dpRank, x.size]),
    [
      [0n, 0, 1],
      [3n, 2, 2],
      [3n, 4_000_000_000, 1],
      [TOP - 1n, 0, 3],
      [TOP + 5n, 0, 1],
      [(1n << 64n) - 1n, 0, 1],
    ],
  )
  t.deepEqual(s.idx.workers(), [0n, 3n, TOP - 1n, TOP + 5n, (1n << 64n) - 1n])
  // the query may go past the tree; a missing child stops the walk
  t.deepEqual(scores(s.idx, [100n, 101n, 102n, 103n]), scores(s.idx, [100n, 101n]))
  t.deepEqual(scores(s.idx, [100n, 555n]), scores(s.idx, [100n]))
})

test(`${impl}: earlyExit stops as soon as one worker remains (checked before descending)`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n], [2n, 101n], [3n, 102n], [4n, 103n]))
  s.apply(2n, st(null, [1n, 100n], [2n, 101n]))
  const q = [100n, 101n, 102n, 103n]
  t.deepEqual(scores(s.idx, q), [
    [1n, 0, 4],
    [2n, 0, 2],
  ])
  t.deepEqual(scores(s.idx, q, true), [
    [1n, 0, 3],
    [2n, 0, 2],
  ])
  t.deepEqual(scores(s.idx, [100n, 101n], true), [
    [1n, 0, 2],
    [2n, 0, 2],
  ])
  s.idx.removeWorker(2n)
  t.deepEqual(scores(s.idx, q, true), [[1n, 0, 1]], 'a single worker on the first node scores 1')
  t.deepEqual(scores(s.idx, q, false), [[1n, 0, 4]])
  t.deepEqual(s.idx.findMatches(q, { earlyExit: true }).treeSizes, [{ workerId: 1n, dpRank: 0, size: 4 }])
})

test(`${impl}: findMatchesForTokens equals findMatches(computeBlockHashes(...))`, (t) => {
  const idx = new kv.RadixIndex()
  const bs = 4
  const tokens = Uint32Array.from({ length: 4 * 9 + 2 }, (_, i) => (i * 7919) % 50000)
  const mm = [null, { mmObjects: [{ mmHash: 0x1111111111111111n, offsets: [[0, 4]] as [number, number][] }] }, null]
  const variants = [{}, { loraName: 'adapter-a' }, { blockMmInfos: mm }, { loraName: 'lörä', blockMmInfos: mm }]
  for (const [w, opts] of variants.entries()) {
    const th = kv.computeBlockHashes(tokens.subarray(0, 4 * (3 + w)), bs, opts)
    idx.applyEvent(ev(BigInt(w), 1n, st(null, ...Array.from(th, (x, i): Block => [BigInt(1000 * w + i), x]))))
  }
  for (const opts of variants)
    for (const n of [0, 3, 4, 9, 16, tokens.length])
      for (const earlyExit of [false, true]) {
        const q = tokens.subarray(0, n)
        const want = idx.findMatches(kv.computeBlockHashes(q, bs, opts), { earlyExit })
        t.deepEqual(plain(idx.findMatchesForTokens(q, bs, { ...opts, earlyExit })), plain(want))
        t.deepEqual(plain(idx.findMatchesForTokens(Array.from(q), bs, { ...opts, earlyExit })), plain(want))
      }
  // worker 2's first block has no mm info: the same tokens hash as worker 0's
  t.deepEqual(scores(idx, Array.from(kv.computeBlockHashes(tokens, bs))), [
    [0n, 0, 3],
    [2n, 0, 1],
  ])
  t.deepEqual(idx.findMatchesForTokens(tokens, bs, { loraName: 'adapter-a' }).scores, [{ workerId: 1n, dpRank: 0, score: 4 }])
})

test(`${impl}: argument errors name the argument`, (t) => {
  const idx = new kv.RadixIndex()
  t.throws(() => idx.findMatches([1] as unknown as bigint[]), { instanceOf: TypeError, message: /tokensHashes\[0\]/ })
  t.throws(() => idx.findMatches([1n << 64n]), { instanceOf: RangeError, message: /tokensHashes\[0\]/ })
  t.throws(() => idx.applyEncoded(Buffer.alloc(1), 'cbor' as 'json'), { instanceOf: RangeError, message: /format/ })
  t.throws(() => idx.applyEncoded('x' as unknown as Uint8Array, 'json'), { instanceOf: TypeError, message: /payload/ })
  t.throws(() => idx.applyEvent(ev(-1n, 1n, clr)), { instanceOf: RangeError, message: /workerId/ })
  t.throws(() => idx.removeWorkerDpRank(1n, -1), { instanceOf: RangeError, message: /dpRank/ })
  t.throws(() => new kv.LocalIndexer({ bufferSize: 0 }), { instanceOf: RangeError, message: /bufferSize/ })
  t.throws(() => new kv.LocalIndexer().eventsInRange(0, 1 as unknown as bigint), { instanceOf: TypeError, message: /start/ })
  t.is(idx.size(), 0)
})

// ---------------------------------------------------------------------------------------------------
// dump

test(`${impl}: two workers with different block hashes for the same tokens each get their own hashes back from dump()`, (t) => {
  const s = new Sim()
  s.apply(2n, st(null, [0x20n, 100n], [0x21n, 101n]))
  s.apply(1n, st(null, [0x10n, 100n], [0x11n, 101n]))
  s.apply(1n, st(null, [0x30n, 100n])) // the same tokens again under another hash (a cache salt)
  s.apply(1n, st(0x30n, [0x31n, 101n], [0x32n, 102n]))
  t.deepEqual(scores(s.idx, [100n, 101n, 102n]), [
    [1n, 0, 3],
    [2n, 0, 2],
  ])
  t.deepEqual(treeSizes(s.idx, [100n]), [
    [1n, 0, 5],
    [2n, 0, 2],
  ])
  const rows = dumpRows(t, s.idx.dump())
  // worker 1 holds 0x10 and 0x30 on node 100, 0x11 and 0x31 on node 101: both are dumped, each
  // under the worker's first hash on the parent node (0x10, stored first and also the smaller)
  const w1 = rows.filter((r) => r[0] === 1n)
  const node = (tk: bigint) => w1.filter((r) => r[5] === tk).map((r) => [r[3], r[4]])
  t.deepEqual(
    new Set(node(100n).map(String)),
    new Set(
      [
        [null, 0x10n],
        [null, 0x30n],
      ].map(String),
    ),
  )
  t.deepEqual(
    new Set(node(101n).map(String)),
    new Set(
      [
        [0x10n, 0x11n],
        [0x10n, 0x31n],
      ].map(String),
    ),
  )
  t.deepEqual(node(102n), [[0x11n, 0x32n]])
  t.deepEqual(
    w1.map((r) => r[5]),
    [100n, 100n, 101n, 101n, 102n],
    'parents before children',
  )
  t.deepEqual(
    rows.filter((r) => r[0] === 2n),
    [
      [2n, 0, 1n, null, 0x20n, 100n],
      [2n, 0, 1n, 0x20n, 0x21n, 101n],
    ],
  )
  t.deepEqual(
    rows.map((r) => r[2]),
    [3n, 3n, 3n, 3n, 3n, 1n, 1n],
    'eventId = the last event id applied for that worker key',
  )
})

test(`${impl}: dump() order: worker keys ascending, depth-first, children by ascending unsigned tokens hash`, (t) => {
  const idx = new kv.RadixIndex()
  const big = TOP + 3n
  idx.applyEvent(ev(TOP, 5n, st(null, [1n, big], [2n, 7n])))
  idx.applyEvent(ev(TOP, 6n, st(null, [3n, 9n], [4n, big], [5n, 1n])))
  idx.applyEvent(ev(TOP, 7n, st(3n, [6n, 2n])))
  idx.applyEvent(ev(TOP, 2n, st(null, [8n, 9n]), 1))
  idx.applyEvent(ev(4n, 9n, st(null, [10n, big]), 3_000_000_000))
  idx.applyEvent(ev(4n, 11n, st(null, [11n, 5n]), 2))
  t.deepEqual(dumpRows(t, idx.dump()), [
    [4n, 2, 11n, null, 11n, 5n],
    [4n, 3_000_000_000, 9n, null, 10n, big],
    [TOP, 0, 7n, null, 3n, 9n],
    [TOP, 0, 7n, 3n, 6n, 2n],
    [TOP, 0, 7n, 3n, 4n, big],
    [TOP, 0, 7n, 4n, 5n, 1n],
    [TOP, 0, 7n, null, 1n, big],
    [TOP, 0, 7n, 1n, 2n, 7n],
    [TOP, 1, 2n, null, 8n, 9n],
  ])
  t.deepEqual(new kv.RadixIndex().dump(), [])
})

test(`${impl}: dump() skips stale blocks, keeps mmExtraInfo out, and carries the last event id (failing events count)`, (t) => {
  const idx = new kv.RadixIndex()
  const mm = { mmObjects: [{ mmHash: 5n, offsets: [[0, 1]] as [number, number][] }] }
  idx.applyEvent({
    workerId: 1n,
    event: {
      eventId: 10n,
      dpRank: 0,
      data: {
        type: 'stored',
        parentHash: null,
        blocks: [
          { blockHash: 1n, tokensHash: 100n, mmExtraInfo: mm },
          { blockHash: 2n, tokensHash: 101n, mmExtraInfo: null },
          { blockHash: 3n, tokensHash: 102n, mmExtraInfo: mm },
        ],
      },
    },
  })
  idx.applyEvent(ev(1n, 11n, rm(2n)))
  t.deepEqual(dumpRows(t, idx.dump()), [[1n, 0, 11n, null, 1n, 100n]], 'block 3 is stale (its worker is not on 101)')
  t.is(idx.size(), 2)
  // a removed event whose hashes are all unknown is still the last event applied for that key
  idx.applyEvent(ev(1n, 12n, rm(99n)))
  t.deepEqual(
    idx.dump().map((e) => e.event.eventId),
    [12n],
  )
})

test(`${impl}: dump() applied to an empty index gives the same index (and the same dump)`, (t) => {
  const s = new Sim()
  s.apply(1n, st(null, [1n, 100n], [2n, 101n], [3n, 102n]))
  s.apply(1n, st(null, [4n, 100n], [5n, 103n]))
  s.apply(2n, st(null, [6n, 100n], [7n, 101n]), 1)
  s.apply(1n, rm(2n))
  const copy = new kv.RadixIndex()
  for (const e of s.idx.dump()) t.is(copy.applyEvent(e), 'applied')
  t.deepEqual(copy.dump(), s.idx.dump())
  t.deepEqual(scores(copy, [100n, 101n, 102n]), scores(s.idx, [100n, 101n, 102n]))
  t.is(copy.size(), 5, 'the stale block 3 is not carried over')
  t.is(s.idx.size(), 6)
})

// ---------------------------------------------------------------------------------------------------
// applyEncoded

test(`${impl}: applyEncoded takes event-plane envelopes, msgpack RouterEvents and JetStream JSON`, (t) => {
  const eventPlane = new kv.Ingestor({ kvBlockSize: 4, workerId: TOP + 9n, dpRanks: [0, 2] })
  const jetstream = new kv.Ingestor({ kvBlockSize: 4, workerId: TOP + 9n, mode: 'jetstream', dpRanks: [0, 2] })
  const byValue = new kv.RadixIndex()
  const enc = { envelope: new kv.RadixIndex(), msgpack: new kv.RadixIndex(), json: new kv.RadixIndex() }
  const tokens = Uint32Array.from({ length: 40 }, (_, i) => i * 31 + 1)
  const steps: ((ing: kv.Ingestor) => kv.IngestResult)[] = [
    (ing) => ing.stored({ tokenIds: tokens.subarray(0, 16), blockHashes: [11n, 12n, 13n, 14n] }),
    (ing) => ing.stored({ tokenIds: tokens.subarray(16, 24), blockHashes: [15n, 16n], parentHash: 14n }),
    (ing) => ing.stored({ tokenIds: tokens.subarray(0, 8), blockHashes: [21n, 22n], dpRank: 2, loraName: 'x' }),
    (ing) => ing.stored({ tokenIds: tokens.subarray(0, 4), blockHashes: [31n], parentHash: 999n }), // parent_not_found
    (ing) => ing.removed([12n, 77n]), // block_not_found
    (ing) => ing.removed([22n], 2),
    (ing) => ing.cleared(2), // two ranks known: emitted as removes of rank 2's live blocks
  ]
  const outcomes: Record<string, kv.ApplyOutcome[]> = { envelope: [], msgpack: [], json: [], value: [] }
  for (const step of steps) {
    const a = step(eventPlane)
    const b = step(jetstream)
    t.is(a.payloads.length, b.payloads.length)
    for (const [i, p] of a.payloads.entries()) {
      const value = routerEventOf(p, 'event-plane')
      t.deepEqual(routerEventOf(b.payloads[i]!, 'jetstream'), value)
      outcomes.value!.push(byValue.applyEvent(value))
      outcomes.envelope!.push(enc.envelope.applyEncoded(p, 'envelope'))
      outcomes.msgpack!.push(enc.msgpack.applyEncoded(kv.encodeRouterEvent(value, 'msgpack'), 'msgpack'))
      outcomes.json!.push(enc.json.applyEncoded(b.payloads[i]!, 'json'))
    }
  }
  t.deepEqual(outcomes.value, ['applied', 'applied', 'applied', 'parent_not_found', 'block_not_found', 'applied', 'applied'])
  for (const [name, idx] of Object.entries(enc)) {
    t.deepEqual(outcomes[name], outcomes.value, name)
    t.deepEqual(idx.dump(), byValue.dump(), name)
    t.deepEqual(idx.counters(), byValue.counters(), name)
    t.deepEqual(idx.workers(), [TOP + 9n], name)
    t.is(idx.size(), 5, name) // 11, 13, 14, 15, 16 (12, 21 and 22 removed; 31 rejected)
  }
  const q = kv.computeBlockHashes(tokens.subarray(0, 24), 4)
  t.deepEqual(scores(byValue, Array.from(q)), [[TOP + 9n, 0, 1]], 'block 12 was removed: the chain stops at 11')
})

test(`${impl}: applyEncoded throws on bytes it cannot decode and leaves the index as it was`, (t) => {
  const idx = new kv.RadixIndex()
  idx.applyEvent(ev(1n, 1n, st(null, [1n, 100n])))
  const good = kv.encodeRouterEvent(ev(1n, 2n, st(1n, [2n, 101n])), 'msgpack')
  const bad: [Uint8Array, 'envelope' | 'msgpack' | 'json'][] = [
    [Buffer.alloc(0), 'msgpack'],
    [Buffer.from([0xc1]), 'msgpack'],
    [good.subarray(0, good.length - 3), 'msgpack'],
    [Buffer.concat([good, Buffer.from([0])]), 'msgpack'],
    [good, 'json'],
    [good, 'envelope'],
    [Buffer.from('{"worker_id":1}'), 'json'],
    [Buffer.from('{"worker_id":1,"event":{"event_id":3,"data":"cleared","dp_rank":0}'), 'json'],
    [kv.encodeEnvelope({ publisherId: 1n, sequence: 0n, publishedAt: 0, topic: 'kv-events', payload: good.subarray(0, 9) }), 'envelope'],
  ]
  for (const [bytes, format] of bad)
    t.throws(() => idx.applyEncoded(bytes, format), { instanceOf: Error }, `${format} ${Buffer.from(bytes).toString('hex').slice(0, 40)}`)
  t.is(idx.size(), 1)
  t.deepEqual(idx.workers(), [1n])
  t.is(idx.applyEncoded(good, 'msgpack'), 'applied')
  t.is(idx.size(), 2)
})

/** A RouterEvent in msgpack forms other than the canonical one: wider ints, str8 keys, map16/array16, shuffled or extra keys. */
function mpVariant(r: Rng, e: RouterEventValue): Mp {
  const uint = (v: bigint | number): Mp => {
    const x = BigInt(v)
    const widths = ([0, 1, 2, 4, 8] as const).filter((w) => x < [128n, 256n, 65536n, 4294967296n, 1n << 64n][[0, 1, 2, 4, 8].indexOf(w)]!)
    return r.chance(0.4) ? u(x, r.pick(widths)) : u(x)
  }
  const key = (k: string): Mp => (r.chance(0.3) ? s(k, 8) : s(k))
  const m = (entries: [string, Mp][]): Mp => {
    const es: [Mp, Mp][] = entries.map(([k, v]) => [key(k), v])
    if (r.chance(0.1)) es.push([key('extra_field'), uint(r.int(1000))])
    if (r.chance(0.15)) es.reverse()
    return { t: 'map', v: es, w: r.chance(0.2) ? 16 : undefined }
  }
  const a = (xs: Mp[]): Mp => ({ t: 'arr', v: xs, w: r.chance(0.2) ? 16 : undefined })
  const d = e.event.data
  const data: Mp =
    d.type === 'cleared'
      ? key('cleared')
      : d.type === 'removed'
        ? m([['removed', m([['block_hashes', a(d.blockHashes.map(uint))]])]])
        : m([
            [
              'stored',
              m([
                ['parent_hash', d.parentHash === null ? nil : uint(d.parentHash)],
                [
                  'blocks',
                  a(
                    d.blocks.map((b) =>
                      m([
                        ['block_hash', uint(b.blockHash)],
                        ['tokens_hash', uint(b.tokensHash)],
                        [
                          'mm_extra_info',
                          b.mmExtraInfo === null
                            ? nil
                            : m([
                                [
                                  'mm_objects',
                                  a(
                                    b.mmExtraInfo.mmObjects.map((o) =>
                                      m([
                                        ['mm_hash', uint(o.mmHash)],
                                        ['offsets', a(o.offsets.map(([x, y]) => arr(uint(x), uint(y))))],
                                      ]),
                                    ),
                                  ),
                                ],
                              ]),
                        ],
                      ]),
                    ),
                  ),
                ],
              ]),
            ],
          ])
  return m([
    ['worker_id', uint(e.workerId)],
    [
      'event',
      m([
        ['event_id', uint(e.event.eventId)],
        ['data', data],
        ['dp_rank', uint(e.event.dpRank)],
      ]),
    ],
  ])
}

/** RouterEvent JSON with random whitespace and key order (u64 written exactly). */
function jsonVariant(r: Rng, e: RouterEventValue): string {
  const ws = () => (r.chance(0.2) ? r.pick([' ', '\n', '\t ', '  ']) : '')
  const obj = (entries: [string, string][]) => {
    if (r.chance(0.15)) entries.reverse()
    return `{${ws()}${entries.map(([k, v]) => `"${k}"${ws()}:${ws()}${v}`).join(`,${ws()}`)}${ws()}}`
  }
  const list = (xs: string[]) => `[${ws()}${xs.join(`,${ws()}`)}${ws()}]`
  const d = e.event.data
  const data =
    d.type === 'cleared'
      ? '"cleared"'
      : d.type === 'removed'
        ? obj([['removed', obj([['block_hashes', list(d.blockHashes.map(String))]])]])
        : obj([
            [
              'stored',
              obj([
                ['parent_hash', d.parentHash === null ? 'null' : String(d.parentHash)],
                [
                  'blocks',
                  list(
                    d.blocks.map((b) =>
                      obj([
                        ['block_hash', String(b.blockHash)],
                        ['tokens_hash', String(b.tokensHash)],
                        ['mm_extra_info', 'null'],
                      ]),
                    ),
                  ),
                ],
              ]),
            ],
          ])
  return obj([
    ['worker_id', String(e.workerId)],
    [
      'event',
      obj([
        ['event_id', String(e.event.eventId)],
        ['data', data],
        ['dp_rank', String(e.event.dpRank)],
      ]),
    ],
  ])
}

test(`${impl}: applyEncoded(bytes) is applyEvent(decodeRouterEvent(bytes)) for non-canonical and damaged encodings`, (t) => {
  const gen = new EventGenerator(99, { workers: 6, dpRanks: [0, 70000] })
  const r = new Rng(5)
  const byBytes = new kv.RadixIndex()
  const byValue = new kv.RadixIndex()
  const kinds = { applied: 0, threw: 0 }
  let bad = 0
  for (let k = 0; k < 6000; k++) {
    const e = gen.nextEvent()
    if (e.event.data.type === 'stored' && r.chance(0.2))
      e.event.data.blocks[0]!.mmExtraInfo = { mmObjects: [{ mmHash: r.u64(), offsets: [[r.int(9), 9 + r.int(70000)]] }] }
    const format = r.pick(['msgpack', 'json', 'envelope'] as const)
    let bytes: Uint8Array = format === 'json' ? Buffer.from(jsonVariant(r, e)) : encode(mpVariant(r, e))
    const damage = r.next()
    if (damage < 0.05) bytes = bytes.subarray(0, r.int(bytes.length))
    else if (damage < 0.1) {
      bytes = Buffer.from(bytes)
      bytes[r.int(bytes.length)] = r.int(256)
    }
    let want: RouterEventValue | Error
    try {
      want = kv.decodeRouterEvent(bytes, format === 'json' ? 'json' : 'msgpack')
    } catch (err) {
      want = err as Error
    }
    if (format === 'envelope')
      bytes = kv.encodeEnvelope({ publisherId: e.workerId, sequence: BigInt(k), publishedAt: 1, topic: 'kv-events', payload: bytes })
    let got: kv.ApplyOutcome | Error
    try {
      got = byBytes.applyEncoded(bytes, format)
    } catch (err) {
      got = err as Error
    }
    if (want instanceof Error || got instanceof Error) {
      kinds.threw++
      if (!(want instanceof Error && got instanceof Error) && bad++ < 5)
        t.fail(
          `${format} ${Buffer.from(bytes).toString('hex')}: decodeRouterEvent ${want instanceof Error ? `threw ${want.message}` : 'decoded'}, applyEncoded ${got instanceof Error ? `threw ${got.message}` : `gave ${got}`}`,
        )
      continue
    }
    kinds.applied++
    const outcome = byValue.applyEvent(want)
    if (outcome !== got && bad++ < 5) t.is(got, outcome, `${format} ${Buffer.from(bytes).toString('hex')}`)
  }
  t.is(bad, 0)
  t.deepEqual(byBytes.dump(), byValue.dump())
  t.deepEqual(byBytes.counters(), byValue.counters())
  t.deepEqual(byBytes.workers(), byValue.workers())
  t.true(kinds.applied > 4000 && kinds.threw > 300, JSON.stringify(kinds))
})

// ---------------------------------------------------------------------------------------------------
// LocalIndexer

test(`${impl}: eventsInRange gives each of the five outcomes`, (t) => {
  const li = new kv.LocalIndexer({ bufferSize: 4 })
  const evs: RouterEventValue[] = []
  for (let id = 1n; id <= 6n; id++) {
    const e = ev(7n, id, id === 1n ? st(null, [1n, 100n]) : st(id - 1n, [id, 100n + id]))
    evs.push(e)
    li.applyEvent(e)
  }
  li.applyEvent(ev(7n, 1n, st(null, [50n, 500n]), 1))
  // ring of rank 0: ids 3..6 (bufferSize 4)
  t.deepEqual(li.eventsInRange(0, 3n, 5n), { kind: 'Events', events: evs.slice(2, 5) })
  t.deepEqual(li.eventsInRange(0, 4n), { kind: 'Events', events: evs.slice(3) }, 'end defaults to the newest')
  t.deepEqual(li.eventsInRange(0, 6n, 100n), { kind: 'Events', events: evs.slice(5) }, 'end is capped at the newest')
  t.deepEqual(li.eventsInRange(0, 5n, 5n), { kind: 'Events', events: evs.slice(4, 5) })
  t.deepEqual(li.eventsInRange(0, 7n), { kind: 'TooNew', requestedStart: 7n, requestedEnd: 6n, newestAvailable: 6n })
  t.deepEqual(li.eventsInRange(0, 9n, 12n), { kind: 'TooNew', requestedStart: 9n, requestedEnd: 12n, newestAvailable: 6n })
  t.deepEqual(li.eventsInRange(0, 5n, 3n), { kind: 'InvalidRange', startId: 5n, endId: 3n })
  t.deepEqual(li.eventsInRange(0, 9n, 3n), { kind: 'InvalidRange', startId: 9n, endId: 3n }, 'InvalidRange before TooNew')
  const dump0 = li.dump().filter((e) => e.event.dpRank === 0)
  const dump1 = li.dump().filter((e) => e.event.dpRank === 1)
  t.is(dump0.length, 6)
  t.deepEqual(li.eventsInRange(0, 2n), { kind: 'TreeDump', events: dump0 }, 'start older than the oldest buffered')
  t.deepEqual(li.eventsInRange(0, 2n, 4n), { kind: 'TreeDump', events: dump0 })
  t.deepEqual(li.eventsInRange(0), { kind: 'TreeDump', events: dump0 }, 'no start')
  t.deepEqual(li.eventsInRange(0, null, 5n), { kind: 'TreeDump', events: dump0 }, 'no start, with an end')
  t.deepEqual(li.eventsInRange(1), { kind: 'TreeDump', events: dump1 }, "restricted to that rank's workers")
  t.deepEqual(li.eventsInRange(1, 1n), { kind: 'Events', events: [ev(7n, 1n, st(null, [50n, 500n]), 1)] })
  const unknown = li.eventsInRange(2, 1n)
  t.is(unknown.kind, 'Error')
  t.true(unknown.kind === 'Error' && typeof unknown.message === 'string' && unknown.message.length > 0)
  t.is(li.eventsInRange(2).kind, 'Error')
  t.is(li.eventsInRange(2, 5n, 3n).kind, 'Error', 'an unknown rank is an Error whatever the range')
})

test(`${impl}: eventsInRange over buffered ids with gaps gives the ids within the range`, (t) => {
  const li = new kv.LocalIndexer({ bufferSize: 10 })
  const evs = [1n, 2n, 5n, 6n, 9n].map((id) => ev(3n, id, rm(id)))
  for (const e of evs) li.applyEvent(e)
  t.deepEqual(li.eventsInRange(0, 3n), { kind: 'Events', events: evs.slice(2) }, 'a missing start id starts at the next one')
  t.deepEqual(li.eventsInRange(0, 2n, 5n), { kind: 'Events', events: evs.slice(1, 3) })
  t.deepEqual(li.eventsInRange(0, 3n, 4n), { kind: 'Events', events: [] })
  t.deepEqual(li.eventsInRange(0, 7n, 8n), { kind: 'Events', events: [] })
  t.deepEqual(li.eventsInRange(0, 9n), { kind: 'Events', events: evs.slice(4) })
  t.deepEqual(li.eventsInRange(0, 10n), { kind: 'TooNew', requestedStart: 10n, requestedEnd: 9n, newestAvailable: 9n })
  t.deepEqual(li.eventsInRange(0, 0n), { kind: 'TreeDump', events: [] })
})

test(`${impl}: the recovery_json fixtures' semantics (TooNew with no end reports the defaulted end)`, (t) => {
  const fx = JSON.parse(readFileSync(new URL('./fixtures/router-wire.json', import.meta.url), 'utf8')) as {
    recovery_json: { name: string; json: string }[]
  }
  const get = (name: string) => JSON.parse(fx.recovery_json.find((c) => c.name === name)!.json)
  // a buffer holding ids 0..9, request start 15 with no end
  const li = new kv.LocalIndexer()
  for (let id = 0n; id < 10n; id++) li.applyEvent(ev(7n, id, id === 0n ? st(null, [1000n, 1n]) : st(999n + id, [1000n + id, 1n + id])))
  const tooNew = get('too_new_end_defaulted').TooNew
  t.deepEqual(li.eventsInRange(0, 15n), {
    kind: 'TooNew',
    requestedStart: BigInt(tooNew.requested_start),
    requestedEnd: BigInt(tooNew.requested_end),
    newestAvailable: BigInt(tooNew.newest_available),
  })
  const inv = get('invalid_range').InvalidRange
  t.deepEqual(li.eventsInRange(0, BigInt(inv.start_id), BigInt(inv.end_id)), { kind: 'InvalidRange', startId: 5n, endId: 3n })
  t.deepEqual(get('tree_dump_empty'), { TreeDump: [] })
  // a rank whose worker was cleared answers an empty TreeDump
  li.applyEvent(ev(7n, 10n, clr))
  t.deepEqual(li.eventsInRange(0), { kind: 'TreeDump', events: [] })
  t.deepEqual(li.eventsInRange(0, 10n), { kind: 'Events', events: [ev(7n, 10n, clr)] })
})

test(`${impl}: a local indexer buffers rejected events too, and evicts the oldest`, (t) => {
  const li = new kv.LocalIndexer({ bufferSize: 3 })
  const evs = [
    ev(1n, 0n, st(null, [1n, 100n])),
    ev(1n, 1n, st(42n, [2n, 101n])), // parent_not_found
    ev(1n, 2n, rm(77n)), // block_not_found
    ev(1n, 3n, st(1n, [1n, 101n])), // invalid_block_sequence
  ]
  t.deepEqual(
    evs.map((e) => li.applyEvent(e)),
    ['applied', 'parent_not_found', 'block_not_found', 'invalid_block_sequence'],
  )
  t.deepEqual(li.eventsInRange(0, 1n), { kind: 'Events', events: evs.slice(1) })
  t.is(li.eventsInRange(0, 0n).kind, 'TreeDump', 'id 0 was evicted')
  t.like(counters(li), { applied_stored: 1, parent_not_found: 1, block_not_found: 1, invalid_block_sequence: 1, applied_removed: 1 })
  t.is(li.size(), 1)
  // the default buffer keeps 1024 events per rank
  const big = new kv.LocalIndexer()
  for (let id = 0n; id < 1100n; id++) big.applyEvent(ev(1n, id, rm(id)))
  const r = big.eventsInRange(0, 76n)
  t.is(r.kind, 'Events')
  t.is(r.kind === 'Events' ? r.events.length : 0, 1024)
  t.is(big.eventsInRange(0, 75n).kind, 'TreeDump')
})

test(`${impl}: recovery from an outage (Dynamo's test_distributed_kvindexer_recovery_from_outage)`, (t) => {
  // worker side: a local indexer with a buffer of 100; router side: a radix index
  const worker = new kv.LocalIndexer({ bufferSize: 100 })
  const router = new kv.RadixIndex()
  const event1 = ev(1n, 1n, st(null, [100n, 200n], [101n, 201n]))
  const event2 = ev(1n, 2n, st(null, [100n, 200n], [102n, 202n])) // shared prefix, then a new block
  // step 1: normal operation (the router gets the published bytes)
  worker.applyEvent(event1)
  router.applyEncoded(kv.encodeRouterEvent(event1), 'msgpack')
  t.deepEqual(router.workers(), [1n])
  // steps 2 and 3: outage, the router misses event 2
  worker.applyEvent(event2)
  t.deepEqual(scores(router, [200n, 202n]), [[1n, 0, 1]], 'the router sees only the shared block')
  // steps 4 and 5: the router asks for what it missed and applies it
  const missed = worker.eventsInRange(0, 1n + 1n)
  t.deepEqual(missed, { kind: 'Events', events: [event2] })
  if (missed.kind === 'Events') for (const e of missed.events) t.is(router.applyEvent(e), 'applied')
  t.deepEqual(scores(router, [200n, 202n]), [[1n, 0, 2]], 'the router now sees both blocks')
  t.deepEqual(router.dump(), worker.dump())
})

test(`${impl}: recovery from an outage with an Ingestor's local indexer: gap [last+1, current-1], then the current event`, (t) => {
  for (const mode of ['event-plane', 'jetstream'] as const) {
    const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, mode, localIndexer: { bufferSize: 100 } })
    const fmt = mode === 'jetstream' ? 'json' : 'envelope'
    const router = new kv.RadixIndex()
    const toks = (a: number, b: number) => Uint32Array.from({ length: 4 * (b - a) }, (_, i) => 4 * a + i + 1)
    let last = -1n
    const deliver = (r: kv.IngestResult, lost: boolean) => {
      for (const [i, p] of r.payloads.entries()) {
        const current = r.firstEventId! + BigInt(i)
        if (lost) continue
        if (current !== last + 1n) {
          const missed = ing.localIndexer!.eventsInRange(0, last + 1n, current - 1n)
          t.is(missed.kind, 'Events', mode)
          if (missed.kind === 'Events') {
            t.deepEqual(
              missed.events.map((e) => e.event.eventId),
              Array.from({ length: Number(current - last - 1n) }, (_, k) => last + 1n + BigInt(k)),
            )
            for (const e of missed.events) router.applyEvent(e)
          }
        }
        t.is(router.applyEncoded(p, fmt), 'applied', mode)
        last = current
      }
    }
    deliver(ing.stored({ tokenIds: toks(0, 2), blockHashes: [100n, 101n] }), false) // id 0
    deliver(ing.stored({ tokenIds: [...toks(0, 1), ...toks(5, 6)], blockHashes: [100n, 102n] }), true) // id 1, lost
    deliver(ing.stored({ tokenIds: toks(6, 7), blockHashes: [103n], parentHash: 102n }), true) // id 2, lost
    const q = [...toks(0, 1), ...toks(5, 7)]
    t.deepEqual(router.findMatchesForTokens(q, 4).scores, [{ workerId: 1n, dpRank: 0, score: 1 }], mode)
    deliver(ing.stored({ tokenIds: toks(7, 8), blockHashes: [104n], parentHash: 103n }), false) // id 3: gap
    t.deepEqual(router.findMatchesForTokens([...q, ...toks(7, 8)], 4).scores, [{ workerId: 1n, dpRank: 0, score: 4 }], mode)
    t.deepEqual(router.dump(), ing.localIndexer!.dump(), mode)
  }
})

test(`${impl}: an Ingestor's local indexer: option forms, and every emitted event applied and buffered`, (t) => {
  t.is(new kv.Ingestor({ kvBlockSize: 4, workerId: 1n }).localIndexer, null)
  t.is(new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, localIndexer: false }).localIndexer, null)
  t.true(new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, localIndexer: true }).localIndexer instanceof kv.LocalIndexer)
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, localIndexer: { bufferSize: 0 } }), {
    instanceOf: RangeError,
    message: /bufferSize/,
  })
  for (const mode of ['event-plane', 'jetstream'] as const) {
    const ing = new kv.Ingestor({ kvBlockSize: 1, workerId: 3n, mode, localIndexer: true })
    const li = ing.localIndexer!
    const mirror = new kv.RadixIndex()
    const emitted: RouterEventValue[][] = [[], []]
    const take = (r: kv.IngestResult) => {
      for (const p of r.payloads) {
        const e = routerEventOf(p, mode)
        emitted[e.event.dpRank]!.push(e)
        mirror.applyEncoded(p, mode === 'jetstream' ? 'json' : 'envelope')
      }
      return r
    }
    // a store of 2,500 blocks is split into chunks of 1024, 1024 and 452 blocks, each with its own id
    const n = 2500
    const big = take(
      ing.stored({
        tokenIds: Uint32Array.from({ length: n }, (_, i) => i),
        blockHashes: BigUint64Array.from({ length: n }, (_, i) => BigInt(i + 1)),
      }),
    )
    t.is(big.payloads.length, 3)
    take(ing.stored({ tokenIds: [1, 2], blockHashes: [9001n, 9002n], dpRank: 1 }))
    // an emitted store the local index rejects (unknown parent) is still buffered
    take(ing.stored({ tokenIds: [5], blockHashes: [7777n], parentHash: 4242n }))
    t.is(li.counters().parent_not_found, 1n, mode)
    // a reset of rank 0 with two ranks known: removes of its 2,500 live blocks (4096 per event at most)
    const reset = take(ing.cleared(0))
    t.is(reset.payloads.length, 1)
    t.is(li.size(), 2)
    t.deepEqual(li.dump(), mirror.dump(), mode)
    t.deepEqual(li.counters(), mirror.counters(), mode)
    t.deepEqual(li.eventsInRange(0, 0n), { kind: 'Events', events: emitted[0]! }, mode)
    t.deepEqual(li.eventsInRange(1, 0n), { kind: 'Events', events: emitted[1]! }, mode)
    t.deepEqual(
      emitted[0]!.map((e) => e.event.eventId),
      [0n, 1n, 2n, 3n, 4n],
    )
    t.is(li.eventsInRange(2).kind, 'Error')
  }
})

test(`${impl}: an Ingestor's local indexer equals a RadixIndex fed every emitted payload (generated batches)`, (t) => {
  for (const mode of ['event-plane', 'jetstream'] as const) {
    const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 0xfedcba9876543210n, mode, localIndexer: { bufferSize: 64 } })
    const mirror = new kv.RadixIndex()
    const perRank = new Map<number, RouterEventValue[]>()
    const gen = new BatchGenerator(77, { kvBlockSize: 4, ranks: [0, 1, 2] })
    let now = 1_700_000_000_000
    for (let k = 0; k < 3000; k++) {
      now += gen.rng.int(3)
      const r = ing.ingest(gen.next(), now)
      for (const p of r.payloads) {
        mirror.applyEncoded(p, mode === 'jetstream' ? 'json' : 'envelope')
        const e = routerEventOf(p, mode)
        const list = perRank.get(e.event.dpRank) ?? []
        list.push(e)
        perRank.set(e.event.dpRank, list)
      }
    }
    const li = ing.localIndexer!
    t.deepEqual(li.dump(), mirror.dump(), mode)
    t.deepEqual(li.counters(), mirror.counters(), mode)
    t.is(li.size(), mirror.size(), mode)
    t.deepEqual(li.workers(), mirror.workers(), mode)
    for (const [rank, list] of perRank) {
      const newest = list[list.length - 1]!.event.eventId
      t.deepEqual(li.eventsInRange(rank, newest - 63n), { kind: 'Events', events: list.slice(-64) }, `${mode} rank ${rank}`)
      t.deepEqual(li.eventsInRange(rank, newest - 10n, newest - 5n), { kind: 'Events', events: list.slice(-11, -5) })
      t.deepEqual(li.eventsInRange(rank, newest - 64n), { kind: 'TreeDump', events: mirror.dump().filter((e) => e.event.dpRank === rank) })
      t.deepEqual(li.eventsInRange(rank, newest + 1n), {
        kind: 'TooNew',
        requestedStart: newest + 1n,
        requestedEnd: newest,
        newestAvailable: newest,
      })
    }
  }
})

// ---------------------------------------------------------------------------------------------------
// random streams

/**
 * dump() applied to an empty index reproduces the findMatches scores of the original for random
 * queries (with and without earlyExit). treeSizes are not compared between the two: the original
 * counts stale and unreachable hashes that dump() leaves out; the copy's treeSizes are checked to be
 * at most the original's. The copy's own dump() equals the original's.
 */
for (const [name, opts] of [
  ['same tokens under several hashes, removes in the middle of chains', { saltRate: 0.3, removeRate: 0.3, clearRate: 0.001 }],
  ['moves, re-stores and unknown parents', { moveRate: 0.05, restoreRate: 0.1, unknownParentRate: 0.05, branchWidth: 2 }],
] as const) {
  test(`${impl}: dump() applied to an empty index reproduces findMatches scores for 10,000 random queries (${name})`, (t) => {
    const gen = new EventGenerator(name.length * 31, { workers: 16, ...opts })
    const idx = new kv.RadixIndex()
    for (let k = 0; k < 20_000; k++) applyOp(idx, gen.next())
    const dump = idx.dump()
    const copy = new kv.RadixIndex()
    const outcomes = new Set(dump.map((e) => copy.applyEvent(e)))
    t.deepEqual([...outcomes], dump.length ? ['applied'] : [])
    t.true(dump.length > 1000, `a dump of ${dump.length} blocks`)
    t.true(idx.size() > dump.length, 'the stream left stale blocks')
    t.deepEqual(copy.dump(), dump)
    t.is(copy.size(), dump.length)
    let nonEmpty = 0
    let bad = 0
    for (let k = 0; k < 10_000; k++) {
      const q = gen.query()
      const earlyExit = k % 4 === 3
      const a = idx.findMatches(q, { earlyExit })
      const b = copy.findMatches(q, { earlyExit })
      if (a.scores.length) nonEmpty++
      if (!isEq(a.scores, b.scores) || b.treeSizes.some((x, i) => x.size > a.treeSizes[i]!.size)) {
        if (bad++ < 3) t.deepEqual(b.scores, a.scores, `query ${k}: ${Array.from(q).join(',')}`)
      }
    }
    t.is(bad, 0)
    t.true(nonEmpty > 5000, `${nonEmpty} queries matched something`)
  })
}

function isEq(a: unknown, b: unknown): boolean {
  return (
    JSON.stringify(a, (_, v) => (typeof v === 'bigint' ? `${v}n` : v)) ===
    JSON.stringify(b, (_, v) => (typeof v === 'bigint' ? `${v}n` : v))
  )
}

test(`${impl}: a random stream agrees with a naive reference model of the rules (outcomes, scores, treeSizes, dump, counters)`, (t) => {
  const gen = new EventGenerator(2024, {
    workers: 12,
    dpRanks: [0, 3],
    moveRate: 0.03,
    saltRate: 0.15,
    clearRate: 0.003,
    removeWorkerRate: 0.001,
    removeWorkerDpRankRate: 0.001,
  })
  const idx = new kv.RadixIndex()
  const model = new ReferenceIndex()
  let bad = 0
  const fail = (what: string, got: unknown, want: unknown) => {
    if (bad++ < 5) t.deepEqual(got, want, what)
  }
  for (let k = 0; k < 30_000; k++) {
    const op = gen.next()
    const got = applyOp(idx, op)
    const want = applyOp(model, op)
    if (got !== want) fail(`op ${k} outcome`, got, want)
    if (k % 10 === 0) {
      const q = gen.query()
      const earlyExit = k % 30 === 0
      const a = idx.findMatches(q, { earlyExit })
      const b = model.findMatches(q, earlyExit)
      if (!isEq(a, b)) fail(`op ${k} findMatches ${Array.from(q).join(',')}`, a, b)
    }
    if (k % 5000 === 4999) {
      if (idx.size() !== model.size()) fail(`op ${k} size`, idx.size(), model.size())
      if (!isEq(idx.workers(), model.workers())) fail(`op ${k} workers`, idx.workers(), model.workers())
      if (!isEq(idx.counters(), model.counters)) fail(`op ${k} counters`, idx.counters(), model.counters)
      if (!isEq(idx.dump(), model.dump())) fail(`op ${k} dump`, idx.dump(), model.dump())
    }
  }
  t.is(bad, 0)
})
