// Native and fallback indexers give identical answers (SPEC 1, SPEC 6): a seeded stream of 200,000
// random router events over 32 workers x 2 dp ranks with 10,000 interleaved queries; local indexers'
// eventsInRange at checkpoints; and Ingestors with a local indexer fed generated engine batches.
import type { ExecutionContext } from 'ava'
import { isDeepStrictEqual } from 'node:util'
import * as kv from '../ts/index.js'
import { fallback, needNative, parityTest as test } from './helpers/impls.js'
import { BatchGenerator } from './helpers/gen-batches.js'
import { EventGenerator, applyOp, type IndexOp } from './helpers/gen-events.js'

// Both implementations are loaded explicitly, so these tests mean the same in either pass of the
// suite (native, and DYNAMO_KV_FORCE_JS=1); a missing native binding fails them.

const need = needNative

/** Compares cheaply; on a difference reports the first few with a diff, and counts them all. */
class Checker {
  mismatches = 0
  constructor(readonly t: ExecutionContext) {}
  same(a: unknown, b: unknown, what: string): void {
    if (isDeepStrictEqual(a, b)) return
    if (this.mismatches++ < 5) this.t.deepEqual(a, b, what)
  }
}

/** Both sides of one operation; every encoded delivery goes through applyEncoded on both. */
function applyBoth(a: kv.RadixIndex, b: kv.RadixIndex, op: IndexOp, k: number): [string | null, string | null] {
  if (op.op === 'event' && k % 5 === 0) {
    const format = k % 10 === 0 ? 'json' : 'msgpack'
    const bytes = kv.encodeRouterEvent(op.ev, format)
    return [a.applyEncoded(bytes, format), b.applyEncoded(bytes, format)]
  }
  return [applyOp(a, op), applyOp(b, op)]
}

function compareState(c: Checker, a: kv.RadixIndex, b: kv.RadixIndex, at: string): void {
  c.same(a.size(), b.size(), `${at}: size()`)
  c.same(a.workers(), b.workers(), `${at}: workers()`)
  c.same(a.counters(), b.counters(), `${at}: counters()`)
  c.same(a.dump(), b.dump(), `${at}: dump()`)
}

test('200,000 random events over 32 workers x 2 dp ranks with 10,000 interleaved queries: identical outcomes, matches, dump, workers, size, counters', (t) => {
  const n = need()
  const a = new kv.RadixIndex(n)
  const b = new kv.RadixIndex(fallback)
  const gen = new EventGenerator(20_260_301, { workers: 32, dpRanks: [0, 1] })
  const c = new Checker(t)
  const outcomes: Record<string, number> = {}
  let events = 0
  let queries = 0
  let matched = 0
  for (let k = 0; events < 200_000; k++) {
    const op = gen.next()
    if (op.op === 'event') events++
    const [x, y] = applyBoth(a, b, op, k)
    if (x !== y) c.same(x, y, `op ${k}: outcome of ${JSON.stringify(op, (_, v) => (typeof v === 'bigint' ? String(v) : v))}`)
    if (x) outcomes[x] = (outcomes[x] ?? 0) + 1
    if (op.op === 'event' && events % 20 === 0) {
      const q = gen.query()
      const earlyExit = queries % 5 === 4
      const ma = a.findMatches(q, { earlyExit })
      const mb = b.findMatches(q, { earlyExit })
      c.same(
        { scores: ma.scores, treeSizes: ma.treeSizes },
        { scores: mb.scores, treeSizes: mb.treeSizes },
        `query ${queries} (earlyExit ${earlyExit}): ${Array.from(q).join(',')}`,
      )
      if (ma.scores.length) matched++
      queries++
    }
    if (op.op === 'event' && events % 50_000 === 0) compareState(c, a, b, `after ${events} events`)
  }
  compareState(c, a, b, 'at the end')
  // the stream is what it claims to be
  t.is(queries, 10_000)
  t.true(matched > 5_000, `${matched} queries matched`)
  t.true(
    (outcomes.applied ?? 0) > 150_000 &&
      (outcomes.parent_not_found ?? 0) > 100 &&
      (outcomes.block_not_found ?? 0) > 100 &&
      (outcomes.invalid_block_sequence ?? 0) > 100,
    JSON.stringify(outcomes),
  )
  t.true(a.workers().length === 32 || a.workers().length > 24)
  t.log(`outcomes ${JSON.stringify(outcomes)}; generated ${JSON.stringify(gen.stats)}; final size ${a.size()}, dump ${a.dump().length}`)
  t.is(c.mismatches, 0)
})

/** eventsInRange for every outcome around the ring of `rank`. */
function rangeProbes(li: kv.LocalIndexer, rank: number, bufferSize: number, extra: bigint[]): [bigint | null, bigint | null][] {
  const r = li.eventsInRange(rank, 1n << 62n)
  const newest = r.kind === 'TooNew' ? r.newestAvailable : 0n
  const probes: [bigint | null, bigint | null][] = [
    [null, null],
    [null, newest],
    [newest, null],
    [newest + 1n, null],
    [newest + 5n, newest + 9n],
    [newest - 3n, newest - 7n],
    [newest - 10n, null],
    [newest - 10n, newest - 2n],
    [newest - BigInt(bufferSize) + 1n, null],
    [newest - BigInt(bufferSize), null],
    [newest - BigInt(bufferSize) - 1n, newest],
    [0n, 0n],
  ]
  for (const s of extra) probes.push([s, null], [s, s + 3n])
  return probes.map(([s, e]) => [s !== null && s < 0n ? 0n : s, e !== null && e < 0n ? 0n : e])
}

test('local indexers answer eventsInRange identically at checkpoints (one worker, 2 dp ranks)', (t) => {
  const n = need()
  const bufferSize = 200
  const a = new kv.LocalIndexer({ bufferSize }, n)
  const b = new kv.LocalIndexer({ bufferSize }, fallback)
  const gen = new EventGenerator(7_001, {
    workerIds: [0xfedcba9876543210n],
    dpRanks: [0, 1],
    maxLivePerKey: 2000,
    removeWorkerRate: 0,
    removeWorkerDpRankRate: 0,
  })
  const c = new Checker(t)
  let probes = 0
  for (let k = 0; k < 40_000; k++) {
    const op = gen.next()
    const [x, y] = applyBoth(a, b, op, k)
    c.same(x, y, `op ${k}: outcome`)
    if (k % 4_000 === 3_999 || k === 10) {
      for (const rank of [0, 1, 2]) {
        const extra = [BigInt(gen.rng.int(k + 1)), BigInt(gen.rng.int(k + 1))]
        for (const [s, e] of rangeProbes(a, rank, bufferSize, extra)) {
          c.same(a.eventsInRange(rank, s, e), b.eventsInRange(rank, s, e), `op ${k}: eventsInRange(${rank}, ${s}, ${e})`)
          probes++
        }
      }
      compareState(c, a, b, `op ${k}`)
    }
  }
  const kinds = new Set(rangeProbes(a, 0, bufferSize, []).map(([s, e]) => a.eventsInRange(0, s, e).kind))
  t.deepEqual([...kinds].sort(), ['Events', 'InvalidRange', 'TooNew', 'TreeDump'])
  t.log(`${probes} eventsInRange probes`)
  t.is(c.mismatches, 0)
})

for (const [vi, mode] of (['event-plane', 'jetstream'] as const).entries()) {
  test(`Ingestors with a local indexer fed 10,000 generated batches: identical payloads, local dumps and eventsInRange (${mode})`, (t) => {
    const n = need()
    const bufferSize = 128
    const opts: kv.IngestorOptions = { kvBlockSize: 4, workerId: 0xfedcba9876543210n, mode, localIndexer: { bufferSize } }
    const ia = new kv.Ingestor(opts, n)
    const ib = new kv.Ingestor(opts, fallback)
    const la = ia.localIndexer!
    const lb = ib.localIndexer!
    t.truthy(la)
    t.truthy(lb)
    const gen = new BatchGenerator(4_242 + vi, { kvBlockSize: 4, ranks: [0, 1, 2] })
    const c = new Checker(t)
    let now = 1_700_000_000_000
    let payloads = 0
    for (let k = 0; k < 10_000; k++) {
      now += gen.rng.int(3)
      const batch = gen.next()
      const ra = ia.ingest(batch, now)
      const rb = ib.ingest(batch, now)
      payloads += ra.payloads.length
      c.same(
        ra.payloads.map((p) => Buffer.from(p).toString('hex')),
        rb.payloads.map((p) => Buffer.from(p).toString('hex')),
        `batch ${k}: payloads`,
      )
      if (k % 2_500 === 2_499) {
        compareState(c, la, lb, `batch ${k}`)
        for (const rank of [0, 1, 2, 3]) {
          const extra = [BigInt(gen.rng.int(k + 1)), BigInt(gen.rng.int(k + 1))]
          for (const [s, e] of rangeProbes(la, rank, bufferSize, extra))
            c.same(la.eventsInRange(rank, s, e), lb.eventsInRange(rank, s, e), `batch ${k}: eventsInRange(${rank}, ${s}, ${e})`)
        }
      }
    }
    t.true(payloads > 10_000, `${payloads} payloads`)
    t.true(la.size() > 0)
    t.is(c.mismatches, 0)
  })
}
