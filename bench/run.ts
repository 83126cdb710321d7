// npm run bench: ingest throughput of the standard workload (bench/workload.ts) for the pure Rust core
// (crates/core/examples/bench_ingest.rs), the native binding from Node, and the TypeScript fallback,
// measured in one run so the ratios are comparable on a noisy shared machine. See BENCHMARKS.md.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import type { RawBinding } from '../ts/binding.js'
import { Ingestor } from '../ts/api.js'
import { fallback } from '../ts/fallback/index.js'
import { BLOCK_SIZE, packBatches, standardWorkload, type Workload } from './workload.js'

const require = createRequire(import.meta.url)
const native = require('../binding.cjs') as RawBinding
const MS = Number(process.env.BENCH_MS ?? 2000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)

function rate(w: Workload, run: () => void): number {
  run() // warm-up
  let passes = 0
  const start = process.hrtime.bigint()
  let elapsed = 0
  while (elapsed < MS) {
    run()
    passes++
    elapsed = Number(process.hrtime.bigint() - start) / 1e6
  }
  return (w.blocks * passes) / (elapsed / 1000)
}

function nodeRate(w: Workload, impl: RawBinding, api: boolean): number {
  return rate(w, () => {
    if (api) {
      const ing = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, impl)
      for (const b of w.batches) ing.ingest(b, 1_700_000_000_000)
    } else {
      const ing = new impl.RawIngestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n, jetstream: false, maxDpRanks: 64, dpRanks: null as unknown as Uint32Array })
      for (const b of w.batches) ing.ingest(b, 1_700_000_000_000)
    }
  })
}

function rustRate(file: string, w: Workload): number {
  const out = execFileSync(
    'cargo',
    ['run', '--quiet', '--release', '--example', 'bench_ingest', '-p', 'dynamo-kv-core', '--', file, String(w.blocks), String(MS)],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
  )
  return (JSON.parse(out.trim().split('\n').pop()!) as { blocks_per_s: number }).blocks_per_s
}

const fmt = (x: number) => (x >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : `${(x / 1e3).toFixed(0)} k`)

function main(): void {
  const w = standardWorkload(4000)
  const dir = mkdtempSync(join(tmpdir(), 'dynamo-kv-bench-'))
  const file = join(dir, 'batches.bin')
  writeFileSync(file, packBatches(w.batches))
  console.log(`workload: ${w.batches.length} batches, ${w.events} events, ${w.blocks} blocks, ${(w.bytes / 1e6).toFixed(2)} MB`)
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`)
  execFileSync('cargo', ['build', '--quiet', '--release', '--example', 'bench_ingest', '-p', 'dynamo-kv-core'], { stdio: 'inherit' })
  const best = { rust: 0, nativeApi: 0, nativeRaw: 0, jsApi: 0, jsRaw: 0 }
  for (let r = 0; r < ROUNDS; r++) {
    best.rust = Math.max(best.rust, rustRate(file, w))
    best.nativeRaw = Math.max(best.nativeRaw, nodeRate(w, native, false))
    best.nativeApi = Math.max(best.nativeApi, nodeRate(w, native, true))
    best.jsRaw = Math.max(best.jsRaw, nodeRate(w, fallback, false))
    best.jsApi = Math.max(best.jsApi, nodeRate(w, fallback, true))
  }
  console.log('\n| ingest, standard workload (event plane) | blocks/s |')
  console.log('|---|---|')
  console.log(`| pure Rust core (Ingestor::ingest) | ${fmt(best.rust)} |`)
  console.log(`| native from Node, raw binding | ${fmt(best.nativeRaw)} |`)
  console.log(`| native from Node, public Ingestor.ingest | ${fmt(best.nativeApi)} |`)
  console.log(`| fallback, raw | ${fmt(best.jsRaw)} |`)
  console.log(`| fallback, public Ingestor.ingest | ${fmt(best.jsApi)} |`)
  console.log('\n| ratio | value | target |')
  console.log('|---|---|---|')
  console.log(`| native (public API) / pure Rust | ${(best.nativeApi / best.rust).toFixed(2)} | >= 0.7 |`)
  console.log(`| native (public API) / fallback (public API) | ${(best.nativeApi / best.jsApi).toFixed(1)} | >= 20 |`)
  console.log(`\nbest of ${ROUNDS} rounds of ${MS} ms each`)
}

main()
