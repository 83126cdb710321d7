// The public Ingestor.ingest in a Node process of its own, the counterpart of the pure Rust core's own
// process (crates/core/examples/bench_ingest.rs): it reads the same file of packed batches (u32-LE
// length-prefixed engine batches), feeds them as views into that one buffer, reads every result as the
// publisher does (`publishLike`), and measures its main thread after two warm-up passes, so that its heap
// holds what a sidecar's would (the package and the batches) and none of the bench process's own objects.
// Run by bench/run.ts once per round: `tsx bench/ingest-own-process.ts FILE BLOCKS_PER_PASS MS`; prints one
// line of JSON: the first pass's tally, the rates, and the major collections during the measurement.
import { createRequire } from 'node:module'
import { readFileSync } from 'node:fs'
import type { RawBinding } from '../ts/core/binding.js'
import { Ingestor } from '../ts/core/api.js'
import { newTally, publishLike } from './ingest-common.js'
import { majorGcCounter, rate } from './measure.js'
import { BLOCK_SIZE, batchViews } from './workload.js'

const [file, blocksArg, msArg] = process.argv.slice(2)
const blocks = Number(blocksArg)
const ms = Number(msArg)
if (file === undefined || !(blocks > 0) || !(ms > 0)) throw new Error('usage: ingest-own-process.ts FILE BLOCKS_PER_PASS MS')

const require = createRequire(import.meta.url)
const native = require('../binding.cjs') as RawBinding
const batches = batchViews(readFileSync(file))
const ing = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, native)
const now = 1_700_000_000_000
const firstPass = newTally()
for (const b of batches) publishLike(ing.ingest(b, now), firstPass)
const read = newTally()

const gcs = majorGcCounter()
const r = rate(
  blocks,
  () => {
    for (const b of batches) publishLike(ing.ingest(b, now), read)
  },
  ms,
)
// the gc entries arrive once the event loop turns
setTimeout(() => {
  gcs.stop()
  ing.close()
  if (read.views === 0) throw new Error('no payload was read')
  console.log(JSON.stringify({ firstPass, rate: r, majorGcs: gcs.count() }))
}, 20)
