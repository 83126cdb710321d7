// Where the time of one public Ingestor.ingest call goes, natively, on the standard workload (per batch,
// main-thread CPU): the pure Rust core's loop inside this process (the bench-only benchIngestLoop, no call
// per batch), the raw ingestInto (a napi-rs method), the raw ingestPacked (the plain Node-API callback the
// public API calls) into one reused buffer and into fresh 64 KiB arenas as the public API writes (results
// keep their arena alive, so it is new memory until the collector frees old arenas), and the public call with what the publisher reads of each result (every payload view,
// the dp rank, the first event id, the warnings), each pass after the other.
// npx tsx bench/ingest-profile.ts   (run with node --cpu-prof for a profile)
import { createRequire } from 'node:module'
import type { RawBinding } from '../ts/core/binding.js'
import { Ingestor } from '../ts/core/api.js'
import { BLOCK_SIZE, batchViews, packBatches, standardWorkload } from './workload.js'
import { MS, rate } from './measure.js'
import { RAW_OPTIONS, newTally, publishLike, rustLoop } from './ingest-common.js'

const require = createRequire(import.meta.url)
const native = require('../binding.cjs') as RawBinding
const w = standardWorkload(4000)
const perBatch = (blocksPerSec: number) => ((w.blocks / w.batches.length / blocksPerSec) * 1e9).toFixed(0)
const T = 1_700_000_000_000

const raw = new native.RawIngestor(RAW_OPTIONS)
const packed = new native.RawIngestor(RAW_OPTIONS)
const handle = packed.handle()
const fresh = new native.RawIngestor(RAW_OPTIONS)
const freshHandle = fresh.handle()
let arena = Buffer.allocUnsafeSlow(1 << 16)
let arenaUsed = 0
const out = Buffer.allocUnsafeSlow(1 << 20)
const api = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, native)
const all = packBatches(w.batches)
const inProcess = rustLoop(native, all)
// the Node loops read the batches where the Rust loop reads them, in the one packed buffer
const batches = batchViews(all)
const read = newTally()
for (let round = 0; round < 2; round++) {
  const r0 = rate(w.blocks, inProcess.pass)
  const r1 = rate(w.blocks, () => {
    for (const b of batches) raw.ingestInto(b, T, out, 0)
  })
  const r2 = rate(w.blocks, () => {
    for (const b of batches) packed.ingestPacked(handle, b, T, out, 0)
  })
  const r2a = rate(w.blocks, () => {
    for (const b of batches) {
      if (arena.length - arenaUsed < 1 << 13) {
        arena = Buffer.allocUnsafeSlow(1 << 16)
        arenaUsed = 0
      }
      arenaUsed += fresh.ingestPacked(freshHandle, b, T, arena, arenaUsed) as number
    }
  })
  const r3 = rate(w.blocks, () => {
    for (const b of batches) publishLike(api.ingest(b, T), read)
  })
  console.log(
    `pure Rust loop in this process: ${perBatch(r0.thread)} ns/batch; raw ingestInto: ${perBatch(r1.thread)} ns/batch; raw ingestPacked: ${perBatch(r2.thread)} ns/batch; ` +
      `raw ingestPacked into fresh arenas: ${perBatch(r2a.thread)} ns/batch; ` +
      `public ingest, views read: ${perBatch(r3.thread)} ns/batch (${MS} ms each)`,
  )
}
if (read.views === 0) console.log('nothing was read')
