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
import { benchIndexer } from './indexer.js'

const require = createRequire(import.meta.url)
const native = require('../binding.cjs') as RawBinding
const MS = Number(process.env.BENCH_MS ?? 2000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)

/** Blocks per second of wall time and of CPU time (the latter survives a busy shared machine). */
interface Rate {
  wall: number
  cpu: number
}

function rate(w: Workload, run: () => void): Rate {
  run() // warm-up
  let passes = 0
  const start = process.hrtime.bigint()
  const cpu0 = process.cpuUsage()
  let elapsed = 0
  while (elapsed < MS) {
    run()
    passes++
    elapsed = Number(process.hrtime.bigint() - start) / 1e6
  }
  const cpu = process.cpuUsage(cpu0)
  const blocks = w.blocks * passes
  return { wall: blocks / (elapsed / 1000), cpu: blocks / ((cpu.user + cpu.system) / 1e6) }
}

function nodeRate(w: Workload, impl: RawBinding, api: boolean): Rate {
  // one long-lived ingestor, as in a sidecar: its per-rank state stays warm across passes
  if (api) {
    const ing = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, impl)
    return rate(w, () => {
      for (const b of w.batches) ing.ingest(b, 1_700_000_000_000)
    })
  }
  const ing = new impl.RawIngestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n, jetstream: false, maxDpRanks: 64, dpRanks: null as unknown as Uint32Array, localIndexerBufferSize: 0 })
  const out = Buffer.allocUnsafeSlow(1 << 20)
  return rate(w, () => {
    for (const b of w.batches) ing.ingestInto(b, 1_700_000_000_000, out, 0)
  })
}

function rustRate(file: string, w: Workload): Rate {
  const out = execFileSync(
    'cargo',
    ['run', '--quiet', '--release', '--example', 'bench_ingest', '-p', 'dynamo-kv-core', '--', file, String(w.blocks), String(MS)],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
  )
  const r = JSON.parse(out.trim().split('\n').pop()!) as { blocks_per_s: number; blocks_per_cpu_s: number }
  return { wall: r.blocks_per_s, cpu: r.blocks_per_cpu_s }
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
  const none: Rate = { wall: 0, cpu: 0 }
  const best = { rust: none, nativeRaw: none, nativeApi: none, jsRaw: none, jsApi: none }
  const keep = (a: Rate, b: Rate): Rate => ({ wall: Math.max(a.wall, b.wall), cpu: Math.max(a.cpu, b.cpu) })
  for (let r = 0; r < ROUNDS; r++) {
    best.rust = keep(best.rust, rustRate(file, w))
    best.nativeRaw = keep(best.nativeRaw, nodeRate(w, native, false))
    best.nativeApi = keep(best.nativeApi, nodeRate(w, native, true))
    best.jsRaw = keep(best.jsRaw, nodeRate(w, fallback, false))
    best.jsApi = keep(best.jsApi, nodeRate(w, fallback, true))
  }
  const row = (name: string, r: Rate) => console.log(`| ${name} | ${fmt(r.wall)} | ${fmt(r.cpu)} |`)
  console.log('\n| ingest, standard workload (event plane) | blocks/s (wall) | blocks/s (CPU time) |')
  console.log('|---|---|---|')
  row('pure Rust core (Ingestor::ingest)', best.rust)
  row('native from Node, raw binding', best.nativeRaw)
  row('native from Node, public Ingestor.ingest', best.nativeApi)
  row('fallback, raw', best.jsRaw)
  row('fallback, public Ingestor.ingest', best.jsApi)
  console.log('\n| ratio (CPU time) | value | target |')
  console.log('|---|---|---|')
  console.log(`| native (public API) / pure Rust | ${(best.nativeApi.cpu / best.rust.cpu).toFixed(2)} | >= 0.7 |`)
  console.log(`| native (public API) / fallback (public API) | ${(best.nativeApi.cpu / best.jsApi.cpu).toFixed(1)} | >= 20 |`)
  console.log(`\nbest of ${ROUNDS} rounds of ${MS} ms each`)
  benchIndexer().catch((e) => {
    console.error(e)
    process.exitCode = 1
  })
}

main()
