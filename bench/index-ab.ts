// Two builds of the native addon in one process, on the indexer bench's lookup index (bench/indexer.ts:
// 1,000,000 entries over 64 workers, 64-block queries continuing live chains): the same index is built
// in each, then RadixIndex.findMatches is timed by bench/indexer.ts's own `latency` (the call; its scores read
// after it), the builds taking turns round by round, so that both see the same machine and the same
// process history. Reports each build's p50 per round, their medians, and in how many rounds the second
// build was faster.
// Run: `BENCH_AB=/path/a.node,/path/b.node npx tsx bench/index-ab.ts` (BENCH_ROUNDS, default 10).
import { createRequire } from 'node:module'
import { loadavg } from 'node:os'
import type { RawBinding } from '../ts/core/binding.js'
import { RadixIndex } from '../ts/core/api.js'
import { latency, lookupEvents } from './indexer.js'

const paths = (process.env.BENCH_AB ?? '').split(',').filter((p) => p.length > 0)
if (paths.length !== 2) throw new Error('BENCH_AB must name two .node files, comma-separated')
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 10)
const require = createRequire(import.meta.url)
const impls = paths.map((p) => require(p) as RawBinding)

const look = lookupEvents(1_000_000)
const indexes = impls.map((b) => new RadixIndex(b))
for (const ev of look.events) for (const ix of indexes) ix.applyEvent(ev)
if (indexes[0]!.size() !== indexes[1]!.size()) throw new Error('the two builds hold different indexes')
const queries = Array.from({ length: 20_000 }, () => look.gen.deepQuery(64))

console.log(
  `load average at start: ${loadavg()
    .map((x) => x.toFixed(2))
    .join(', ')}`,
)
const res: number[][] = [[], []]
for (let r = 0; r < ROUNDS; r++) {
  for (const v of r % 2 === 0 ? [0, 1] : [1, 0]) res[v]!.push(latency(indexes[v]!, queries).p50)
}
const median = (a: number[]) => [...a].sort((x, y) => x - y)[a.length >> 1]!
for (const [i, p] of paths.entries())
  console.log(`${p}: p50 median ${median(res[i]!).toFixed(3)} µs; by round ${res[i]!.map((x) => x.toFixed(2)).join(' ')}`)
const wins = res[0]!.filter((x, r) => res[1]![r]! < x).length
console.log(`second / first, medians: ${(median(res[1]!) / median(res[0]!)).toFixed(3)}; the second faster in ${wins} of ${ROUNDS} rounds`)
console.log(
  `load average at the end: ${loadavg()
    .map((x) => x.toFixed(2))
    .join(', ')}`,
)
