// RadixIndex.findMatches from JavaScript, the current path against the previous one, alternated round by
// round in one process (so both see the same machine load), on two workloads:
//  - lookup: the indexer bench's lookup index (bench/indexer.ts: 1,000,000 entries over 64 workers,
//    64-block queries continuing live chains; about 60 workers scored per query);
//  - full: 64 workers each storing the same 200 chains of 64 blocks (every eighth worker skips half of
//    them), queried with those chains: about 60 workers scored per query, each at 64 blocks.
// Forms: the previous findMatches (the napi-rs method into a scratch buffer, then both lists built at
// once: its code is kept below), the current findMatches (the call only, as the indexer bench times it;
// then with its scores read, and with both lists read, inside the timed region), the raw napi-rs
// method alone, the plain Node-API call behind findMatches (findMatchesPacked) alone, and
// findMatchesInto. BENCH_IMPLS=native,fallback adds the fallback. Per form: p50 and p99 of 20,000 timed calls after 2,000 warm-up
// ones, median and best of BENCH_ROUNDS rounds (default 5).
// Run: `npx tsx bench/index-find-matches.ts` (BENCH_ENTRIES: lookup index size, default 1,000,000).
import { createRequire } from 'node:module'
import { loadavg } from 'node:os'
import type { RawBinding, RawRadixIndex } from '../ts/core/binding.js'
import { RadixIndex, type OverlapScores, type WorkerScore, type WorkerTreeSize, workerIdOf } from '../ts/core/api.js'
import { fallback } from '../ts/fallback/lib.js'
import { hashesArg } from '../ts/util/args.js'
import { fullMatchIndex, lookupEvents } from './indexer.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const QUERIES = 20_000
const ENTRIES = Number(process.env.BENCH_ENTRIES ?? 1_000_000)
const native = createRequire(import.meta.url)('../binding.cjs') as RawBinding

// ---------------------------------------------------------------------------------------------------
// the previous RadixIndex.findMatches (ts/core/api.ts before the arena): the napi-rs method into one
// shared scratch buffer, then both lists built at once, worker ids from the same id cache

let scratch = Buffer.allocUnsafeSlow(4 + 24 * 256)
let scratchView = new DataView(scratch.buffer, scratch.byteOffset, scratch.byteLength)
function previousFindMatches(raw: RawRadixIndex, tokensHashes: BigUint64Array | bigint[], earlyExit = false): OverlapScores {
  const hashes = hashesArg('tokensHashes', tokensHashes)
  const len = raw.findMatches(hashes, earlyExit, scratch)
  if (len < 0) {
    scratch = Buffer.allocUnsafeSlow(Math.max(-len, 2 * scratch.length))
    scratchView = new DataView(scratch.buffer, scratch.byteOffset, scratch.byteLength)
    raw.findMatches(hashes, earlyExit, scratch)
  }
  const v = scratchView
  const n = v.getUint32(0, true)
  const scores: WorkerScore[] = new Array(n)
  const treeSizes: WorkerTreeSize[] = new Array(n)
  for (let i = 0, at = 4; i < n; i++, at += 24) {
    const workerId = workerIdOf(v.getUint32(at, true), v.getUint32(at + 4, true))
    const dpRank = v.getUint32(at + 8, true)
    scores[i] = { workerId, dpRank, score: v.getUint32(at + 12, true) }
    treeSizes[i] = { workerId, dpRank, size: v.getUint32(at + 16, true) + v.getUint32(at + 20, true) * 4294967296 }
  }
  return { scores, treeSizes }
}

// ---------------------------------------------------------------------------------------------------
// workloads

function lookupIndex(impl: RawBinding): { ix: RadixIndex; queries: BigUint64Array[] } {
  const look = lookupEvents(ENTRIES)
  const ix = new RadixIndex(impl)
  for (const ev of look.events) ix.applyEvent(ev)
  return { ix, queries: Array.from({ length: QUERIES }, () => look.gen.deepQuery(64)) }
}

// ---------------------------------------------------------------------------------------------------

let sink = 0

/** p50 and p99 of `f`; `after` (untimed) gets each call's value. */
function percentiles(f: (q: BigUint64Array) => unknown, queries: BigUint64Array[], after?: (x: unknown) => void): [number, number] {
  for (let k = 0; k < 2000; k++) after?.(f(queries[k]!))
  const ns = new Float64Array(queries.length)
  for (let k = 0; k < queries.length; k++) {
    const t0 = process.hrtime.bigint()
    const x = f(queries[k]!)
    ns[k] = Number(process.hrtime.bigint() - t0)
    after?.(x)
  }
  ns.sort()
  return [ns[ns.length >> 1]! / 1000, ns[Math.floor(ns.length * 0.99)]! / 1000]
}

/** The plain Node-API call behind findMatches, alone (where the raw index has it). */
function packedForm(impl: RawBinding, raw: RawRadixIndex, out: Buffer): [string, (q: BigUint64Array) => unknown][] {
  const f = raw.findMatchesPacked?.bind(raw) ?? impl.findMatchesPackedFunction?.()
  if (!f || !raw.handle) return []
  const h = raw.handle()
  return [['raw findMatchesPacked into a reused buffer (the call behind findMatches)', (q) => f(h, q, false, out, 0)]]
}

function run(name: string, impl: RawBinding, ix: RadixIndex, queries: BigUint64Array[]): void {
  const raw = (ix as unknown as { raw: RawRadixIndex }).raw
  const out = Buffer.alloc(4 + 24 * 4096)
  const w = new BigUint64Array(4096)
  const r = new Uint32Array(4096)
  const s = new Uint32Array(4096)
  // both paths give the same answers
  let scored = 0
  for (const q of queries.slice(0, 500)) {
    const a = ix.findMatches(q)
    const b = previousFindMatches(raw, q)
    const big = (_k: string, v: unknown) => (typeof v === 'bigint' ? String(v) : v)
    if (JSON.stringify(a, big) !== JSON.stringify(b, big)) throw new Error(`${name}: the two paths disagree`)
    scored += b.scores.length
  }
  const readScores = (x: unknown) => {
    sink += (x as OverlapScores).scores.length
  }
  const forms: [string, (q: BigUint64Array) => unknown, ((x: unknown) => void)?][] = [
    ['previous findMatches (napi-rs method, both lists built)', (q) => previousFindMatches(raw, q), readScores],
    ['findMatches, the call, its scores read after it (as bench/indexer.ts times it)', (q) => ix.findMatches(q), readScores],
    ['findMatches, the call, its result never read', (q) => ix.findMatches(q)],
    ['findMatches, the call and its scores read', (q) => (sink += ix.findMatches(q).scores.length)],
    [
      'findMatches, the call and both lists read',
      (q) => {
        const m = ix.findMatches(q)
        sink += m.scores.length + m.treeSizes.length
      },
    ],
    ['raw napi-rs findMatches into a reused buffer', (q) => raw.findMatches(q, false, out)],
    ...packedForm(impl, raw, out),
    ['findMatchesInto (reused typed arrays)', (q) => ix.findMatchesInto(q, w, r, s)],
  ]
  const got = forms.map(() => [] as [number, number][])
  for (let round = 0; round < ROUNDS; round++)
    forms.forEach(([, f, after], i) => {
      got[i]!.push(percentiles(f, queries, after))
    })
  const med = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1]!
  const cell = (v: number[]) => `${med(v).toFixed(2)} µs (${Math.min(...v).toFixed(2)})`
  forms.forEach(([form], i) => {
    const g = got[i]!
    console.log(`| ${name}, ${form} | ${cell(g.map((x) => x[0]))} | ${cell(g.map((x) => x[1]))} |`)
  })
  const p = (i: number, k: 0 | 1) => med(got[i]!.map((x) => x[k]))
  console.log(
    `| ${name}: ${ix.size()} entries, ${(scored / 500).toFixed(1)} workers scored per query; previous / current call: p50 ${(p(0, 0) / p(1, 0)).toFixed(2)}x, p99 ${(p(0, 1) / p(1, 1)).toFixed(2)}x | | |`,
  )
}

function main(): void {
  const load = () =>
    loadavg()
      .map((x) => x.toFixed(2))
      .join(', ')
  console.log(`load average at start: ${load()}`)
  console.log('\n| findMatches from JavaScript | p50 median (best) | p99 median (best) |')
  console.log('|---|---|---|')
  const which = (process.env.BENCH_IMPLS ?? 'native').split(',')
  for (const [implName, impl] of [
    ['native', native],
    ['fallback', fallback],
  ] as const) {
    if (!which.includes(implName)) continue
    {
      const { ix, queries } = fullMatchIndex(impl)
      run(`${implName}, full 64-block matches`, impl, ix, queries)
    }
    {
      const { ix, queries } = lookupIndex(impl)
      run(`${implName}, lookup index`, impl, ix, queries)
    }
  }
  console.log(`\n${ROUNDS} rounds of ${QUERIES} timed queries per form, forms alternated in each round; load average at the end: ${load()}`)
  if (sink < 0) console.log(sink)
}

main()
