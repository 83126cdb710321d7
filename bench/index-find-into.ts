// findMatches from JavaScript when most of 64 workers match a whole 64-block prompt: the public
// findMatches (result objects), the raw binding into a reused buffer, and the public findMatchesInto
// (reused typed arrays), alternated per round in one process, for the native binding and the fallback.
// 64 workers each store the same 200 chains of 64 blocks (every eighth worker skips half of them);
// queries are those chains. Run: `npx tsx bench/index-find-into.ts` (BENCH_ROUNDS, default 5).
import { loadavg } from 'node:os'
import { createRequire } from 'node:module'
import type { RawBinding, RawRadixIndex } from '../ts/core/binding.js'
import { fallback } from '../ts/fallback/lib.js'
import { fullMatchIndex } from './indexer.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 5)
const QUERIES = 20_000
const native = createRequire(import.meta.url)('../binding.cjs') as RawBinding

function percentiles(f: (q: BigUint64Array) => unknown, queries: BigUint64Array[]): [number, number] {
  for (let k = 0; k < 2000; k++) f(queries[k]!)
  const ns = new Float64Array(queries.length)
  for (let k = 0; k < queries.length; k++) {
    const t0 = process.hrtime.bigint()
    f(queries[k]!)
    ns[k] = Number(process.hrtime.bigint() - t0)
  }
  ns.sort()
  return [ns[ns.length >> 1]! / 1000, ns[Math.floor(ns.length * 0.99)]! / 1000]
}

function main(): void {
  console.log(
    `load average at start: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(', ')}`,
  )
  console.log('\n| 64 workers, full 64-block matches | p50 median (min) | p99 median (min) |')
  console.log('|---|---|---|')
  for (const [name, impl] of [
    ['native', native],
    ['fallback', fallback],
  ] as const) {
    const { ix, queries } = fullMatchIndex(impl, QUERIES)
    const raw = (ix as unknown as { raw: RawRadixIndex }).raw
    const out = Buffer.alloc(4 + 24 * 4096)
    const w = new BigUint64Array(4096)
    const r = new Uint32Array(4096)
    const s = new Uint32Array(4096)
    let scored = 0
    for (const q of queries.slice(0, 1000)) scored += ix.findMatchesInto(q, w, r, s)
    const forms: [string, (q: BigUint64Array) => unknown][] = [
      ['RadixIndex.findMatches (result objects)', (q) => ix.findMatches(q)],
      ['raw findMatches into a reused buffer', (q) => raw.findMatches(q, false, out)],
      ['RadixIndex.findMatchesInto (reused typed arrays)', (q) => ix.findMatchesInto(q, w, r, s)],
    ]
    const got = forms.map(() => [] as [number, number][])
    for (let round = 0; round < ROUNDS; round++)
      forms.forEach(([, f], i) => {
        got[i]!.push(percentiles(f, queries))
      })
    const med = (v: number[]) => [...v].sort((a, b) => a - b)[v.length >> 1]!
    const cell = (v: number[]) => `${med(v).toFixed(2)} µs (${Math.min(...v).toFixed(2)})`
    forms.forEach(([form], i) => {
      const g = got[i]!
      console.log(`| ${name}, ${form} | ${cell(g.map((x) => x[0]))} | ${cell(g.map((x) => x[1]))} |`)
    })
    console.log(`| ${name}: ${ix.size()} entries, ${(scored / 1000).toFixed(1)} workers scored per query | | |`)
  }
  console.log(
    `\n${ROUNDS} rounds of ${QUERIES} queries each after 2,000 warm-up; load average at the end: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(', ')}`,
  )
}

main()
