// Two builds of the native addon in one process, through the public Ingestor.ingest on the standard workload:
// each pass runs the 4,000 batches through one side (the first build's pure Rust loop inside this process,
// the yardstick; the public call on the first build; the public call on the second), the sides taking turns
// in a rotating order, so that all three see the same machine and the same process history. Both public
// sides read every result as the publisher does (`publishLike`) and feed the batches as views into the packed
// buffer the Rust loop reads. Reports each build's public / pure Rust ratio (main-thread CPU over all passes)
// and the second build's speed over the first's; a build against itself shows the noise (0.96-1.05 here).
// Run: `BENCH_AB=/path/a.node,/path/b.node npx tsx bench/ingest-ab.ts` (INGEST_PAIRS passes per side, default 60).
import { createRequire } from 'node:module'
import { loadavg } from 'node:os'
import type { RawBinding } from '../ts/core/binding.js'
import { Ingestor } from '../ts/core/api.js'
import { newTally, publishLike, rustLoop } from './ingest-common.js'
import { threadCpuNs } from './measure.js'
import { BLOCK_SIZE, batchViews, packBatches, standardWorkload } from './workload.js'
// the publisher's NATS modules, loaded as in `npm run bench` (their heap changes how often V8 collects)
import './publish.js'

const paths = (process.env.BENCH_AB ?? '').split(',').filter((p) => p.length > 0)
if (paths.length !== 2) throw new Error('BENCH_AB must name two .node files, comma-separated')
const PASSES = Math.max(10, Number(process.env.INGEST_PAIRS ?? 60))
const require = createRequire(import.meta.url)
const [a, b] = paths.map((p) => require(p) as RawBinding) as [RawBinding, RawBinding]

const w = standardWorkload(4000)
const packed = packBatches(w.batches)
const batches = batchViews(packed)
const rust = rustLoop(a, packed)
const tally = newTally()
const publicSide = (impl: RawBinding) => {
  const ing = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, impl)
  return () => {
    for (const batch of batches) publishLike(ing.ingest(batch, 1_700_000_000_000), tally)
  }
}
const sides = [rust.pass, publicSide(a), publicSide(b)]
const ns = [0, 0, 0]
for (let i = 0; i < 3; i++) for (const side of sides) side()
console.log(
  `load average at start: ${loadavg()
    .map((x) => x.toFixed(2))
    .join(', ')}`,
)
for (let i = 0; i < PASSES; i++)
  for (let j = 0; j < 3; j++) {
    const k = (i + j) % 3
    const t0 = threadCpuNs()
    sides[k]!()
    ns[k]! += threadCpuNs() - t0
  }
rust.close()
const [rustNs, aNs, bNs] = ns as [number, number, number]
for (const [i, p] of paths.entries()) {
  const own = ns[i + 1]!
  console.log(`${p}: public / pure Rust ${(rustNs / own).toFixed(3)}, ${(own / PASSES / batches.length).toFixed(0)} ns per batch`)
}
console.log(
  `second / first, speed: ${(aNs / bNs).toFixed(3)} (pure Rust loop ${(rustNs / PASSES / batches.length).toFixed(0)} ns per batch)`,
)
if (tally.views === 0) throw new Error('no payload was read')
