// Where the time of one public Ingestor.ingest call goes, natively: the raw call alone, the call plus
// the result object, and the full public call, on the standard workload (per batch, main-thread CPU).
// npx tsx bench/ingest-profile.ts   (run with node --cpu-prof for a profile)
import { createRequire } from 'node:module'
import type { RawBinding } from '../ts/core/binding.js'
import { Ingestor } from '../ts/core/api.js'
import { BLOCK_SIZE, standardWorkload } from './workload.js'
import { MS, rate } from './measure.js'

const require = createRequire(import.meta.url)
const native = require('../binding.cjs') as RawBinding
const w = standardWorkload(4000)
const perBatch = (blocksPerSec: number) => ((w.blocks / w.batches.length / blocksPerSec) * 1e9).toFixed(0)

const raw = new native.RawIngestor({
  kvBlockSize: BLOCK_SIZE,
  workerId: 7n,
  jetstream: false,
  maxDpRanks: 64,
  dpRanks: null,
  localIndexerBufferSize: 0,
})
const out = Buffer.allocUnsafeSlow(1 << 20)
const api = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, native)
for (let round = 0; round < 2; round++) {
  const r1 = rate(w.blocks, () => {
    for (const b of w.batches) raw.ingestInto(b, 1_700_000_000_000, out, 0)
  })
  const r2 = rate(w.blocks, () => {
    for (const b of w.batches) api.ingest(b, 1_700_000_000_000)
  })
  console.log(`raw ingestInto: ${perBatch(r1.thread)} ns/batch; public ingest: ${perBatch(r2.thread)} ns/batch (${MS} ms each)`)
}
