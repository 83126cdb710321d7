// The recovery body read in chunks (LocalIndexer.rangeReplyChunks / dumpChunks, SPEC 7): on random indexes of
// thousands of blocks over several worker ranks (nodes with several holders, and keys holding several hashes on
// one node), the chunks concatenate to eventsInRangeJson byte for byte, natively and on the fallback, with the
// same chunks on both; every chunk but the last has exactly maxBytes; a cursor fails cleanly once its index
// changed or was closed, in any call order.
import test from 'ava'
import { isDeepStrictEqual } from 'node:util'
import * as kv from '../ts/index.js'
import type { RawBinding } from '../ts/core/binding.js'
import { Rng } from './helpers/gen-batches.js'
import { fallback, needNative, parityTest } from './helpers/impls.js'

const impl = kv.implementation
const WORKERS = [7n, 2n ** 64n - 1n, 2n ** 60n + 3n]

/** The same random events applied to a new local indexer of each implementation given. */
function randomLocals(seed: number, events: number, impls: RawBinding[]): kv.LocalIndexer[] {
  const rng = new Rng(seed)
  const locals = impls.map((b) => new kv.LocalIndexer({ bufferSize: 64 }, b))
  const known: bigint[][] = Array.from({ length: 9 }, () => [])
  const big = () => (BigInt(rng.u32()) << 32n) | BigInt(rng.u32())
  for (let id = 0; id < events; id++) {
    const key = rng.int(9)
    const workerId = WORKERS[Math.floor(key / 3)]!
    const dpRank = key % 3
    const mine = known[key]!
    let data: kv.RouterEventValue['event']['data']
    if (mine.length > 0 && rng.chance(0.1)) {
      data = { type: 'removed', blockHashes: Array.from({ length: 1 + rng.int(3) }, () => rng.pick(mine)) }
    } else {
      const parentHash = mine.length === 0 || rng.chance(0.3) ? null : rng.pick(mine)
      const blocks = Array.from({ length: 1 + rng.int(12) }, () => ({
        blockHash: big(),
        tokensHash: BigInt(rng.int(3)),
        mmExtraInfo: null,
      }))
      for (const b of blocks) mine.push(b.blockHash)
      data = { type: 'stored', parentHash, blocks }
    }
    for (const l of locals) l.applyEvent({ workerId, event: { eventId: BigInt(id), dpRank, data } })
  }
  return locals
}

function readAll(t: import('ava').ExecutionContext, chunks: kv.ReplyChunks, max: number): Buffer[] {
  const out = [...chunks]
  const bad = out.findIndex((c, i) => (i < out.length - 1 ? c.length !== max : c.length < 1 || c.length > max))
  t.is(bad, -1, `chunk ${bad} of ${out.length}: ${out[bad]?.length} bytes, max ${max}`)
  t.true(chunks.next().done)
  return out
}

/** How many times some worker rank holds two hashes on one node (two dump events in a row with the same parent and tokens hash). */
function multiHash(local: kv.LocalIndexer): number {
  const d = local.dump()
  let n = 0
  for (let i = 1; i < d.length; i++) {
    const [a, b] = [d[i - 1]!, d[i]!]
    if (a.workerId !== b.workerId || a.event.dpRank !== b.event.dpRank) continue
    if (a.event.data.type !== 'stored' || b.event.data.type !== 'stored') continue
    if (a.event.data.parentHash === b.event.data.parentHash && a.event.data.blocks[0]!.tokensHash === b.event.data.blocks[0]!.tokensHash)
      n++
  }
  return n
}

test(`[${impl}] chunks concatenate to eventsInRangeJson byte for byte, each exactly maxBytes but the last`, (t) => {
  for (const seed of [1, 2]) {
    const [local] = randomLocals(seed, 900, [kv.implementation === 'native' ? needNative() : fallback])
    t.true(local!.size() > 2000, `${local!.size()} blocks`)
    t.true(multiHash(local!) > 0)
    let allBefore = Buffer.alloc(0)
    for (const max of [61, 333, 4096, 1 << 20]) {
      for (const rank of [0, 1, 2, 3]) {
        const probes: [bigint | null, bigint | null][] = [
          [null, null],
          [0n, null],
          [890n, null],
          [895n, 897n],
          [5n, 4n],
          [2n ** 64n - 1n, null],
        ]
        for (const [s, e] of probes) {
          const whole = local!.eventsInRangeJson(rank, s, e)
          const got = Buffer.concat(readAll(t, local!.rangeReplyChunks(rank, s, e, max), max))
          t.true(got.equals(whole), `rank ${rank} [${s}, ${e}] max ${max}`)
        }
        if (rank < 3) t.true(Buffer.concat(readAll(t, local!.dumpChunks(max, rank), max)).equals(local!.eventsInRangeJson(rank)))
      }
      // every rank: the TreeDump of dump()
      const all = Buffer.concat(readAll(t, local!.dumpChunks(max), max))
      if (max === 61) {
        const parsed = kv.decodeRouterEvents(Buffer.from(all.subarray('{"TreeDump":'.length, all.length - 1)), 'json')
        t.true(isDeepStrictEqual(parsed, local!.dump()), 'every rank: dump() as JSON')
      } else t.true(all.equals(allBefore))
      allBefore = all
    }
    // one byte at a time (a short answer)
    t.deepEqual(Buffer.concat(readAll(t, local!.rangeReplyChunks(0, 895n, 896n, 1), 1)), local!.eventsInRangeJson(0, 895n, 896n))
    local!.close()
  }
})

parityTest('native and fallback write the same chunks', (t) => {
  const [a, b] = randomLocals(3, 700, [needNative(), fallback])
  for (const max of [13, 4096]) {
    for (const rank of [0, 1, 2]) {
      const x = [...a!.rangeReplyChunks(rank, null, null, max)]
      const y = [...b!.rangeReplyChunks(rank, null, null, max)]
      t.true(x.length > 1)
      t.true(x.length === y.length && x.every((c, i) => c.equals(y[i]!)), `rank ${rank} max ${max}`)
    }
    t.true(Buffer.concat([...a!.dumpChunks(max)]).equals(Buffer.concat([...b!.dumpChunks(max)])))
  }
})

test(`[${impl}] a cursor fails cleanly once its index changed or closed, in any order`, (t) => {
  const [local] = randomLocals(4, 300, [kv.implementation === 'native' ? needNative() : fallback])
  const l = local!
  const open = l.dumpChunks(64, 0)
  t.is(open.next().value?.length, 64)
  const events = l.rangeReplyChunks(0, 295n, null, 64) // an Events answer: written at once, never stale
  const first = events.next().value!
  const eventsBefore = l.eventsInRangeJson(0, 295n, null)
  t.true(eventsBefore.subarray(0, 10).toString() === '{"Events":' && eventsBefore.length > 64)
  const read = l.dumpChunks(1 << 20) // read to the end before the change
  const whole = [...read]
  t.is(whole.length, 1)
  l.applyEvent({ workerId: 7n, event: { eventId: 1000n, dpRank: 0, data: { type: 'removed', blockHashes: [1n] } } })
  t.throws(() => open.next(), { instanceOf: kv.IndexChangedError, message: 'LocalIndexer: the index changed since the dump was opened' })
  t.true(open.next().done, 'closed after the error')
  t.true(read.next().done)
  t.deepEqual(Buffer.concat([first, ...events]), eventsBefore, 'an Events answer as of its opening')
  // removing workers, clearing a rank: each makes an open dump stale
  for (const change of [
    () => l.removeWorkerDpRank(WORKERS[1]!, 2),
    () => l.removeWorker(12345n),
    () => l.applyEvent({ workerId: 7n, event: { eventId: 1001n, dpRank: 1, data: { type: 'cleared' } } }),
  ]) {
    const c = l.dumpChunks(100)
    c.next()
    change()
    t.throws(() => c.next(), { instanceOf: kv.IndexChangedError })
  }
  // close and return are idempotent; a closed cursor reads nothing
  const c = l.dumpChunks(100)
  c.close()
  c.close()
  t.true(c.next().done)
  t.true(c.return().done)
  // bad sizes are refused naming the option
  t.throws(() => l.dumpChunks(0), { message: /maxBytes/ })
  t.throws(() => l.rangeReplyChunks(0, null, null, 1.5), { message: /maxBytes/ })
  // at most 1024 open cursors; closing frees them
  const many = Array.from({ length: 1024 }, () => l.dumpChunks(100))
  t.throws(() => l.dumpChunks(100), { message: 'LocalIndexer: 1024 reply cursors are open (close them)' })
  for (const m of many) m.close()
  const after = l.dumpChunks(100)
  // the local indexer closed under an open cursor
  l.close()
  t.throws(() => after.next(), { message: 'LocalIndexer is closed' })
  after.close()
  t.throws(() => l.dumpChunks(100), { message: 'LocalIndexer is closed' })
})
