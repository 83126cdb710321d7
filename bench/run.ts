// npm run bench: ingest throughput of the standard workload (bench/workload.ts) for the pure Rust core
// (crates/core/examples/bench_ingest.rs), the native binding from Node, and the TypeScript fallback; then
// the indexer (bench/indexer.ts), publishing to NATS (bench/publish.ts), the ZMQ source (bench/zmq.ts) and
// rejecting over-long JSON numbers (bench/long-numbers.ts).
// One run, so the ratios are comparable on a noisy shared machine. See BENCHMARKS.md.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { cpus, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import type { RawBinding } from '../ts/core/binding.js'
import { Ingestor, type IngestResult } from '../ts/core/api.js'
import { fallback } from '../ts/fallback/lib.js'
import { BLOCK_SIZE, packBatches, standardWorkload, type Workload } from './workload.js'
import { MS, NO_RATE, ROUNDS, best, fmtRate, rate, type Rate } from './measure.js'
import { benchIndexer } from './indexer.js'
import { benchPublish } from './publish.js'
import { benchZmq } from './zmq.js'
import { benchLongNumbers } from './long-numbers.js'
import { benchIndexerHttp } from './indexer-http.js'
import { benchRouter } from './router.js'
import { benchMultiHash } from './index-multihash.js'

const require = createRequire(import.meta.url)
const native = require('../binding.cjs') as RawBinding
function nodeRate(w: Workload, impl: RawBinding, api: boolean, packed = false): Rate {
  // one long-lived ingestor, as in a sidecar: its per-rank state stays warm across passes
  if (api) {
    const ing = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, impl)
    return rate(w.blocks, () => {
      for (const b of w.batches) publishLike(ing.ingest(b, 1_700_000_000_000))
    })
  }
  const ing = new impl.RawIngestor({
    kvBlockSize: BLOCK_SIZE,
    workerId: 7n,
    jetstream: false,
    maxDpRanks: 64,
    dpRanks: null as unknown as Uint32Array,
    localIndexerBufferSize: 0,
  })
  const out = Buffer.allocUnsafeSlow(1 << 20)
  if (packed) {
    // the raw call behind the public Ingestor.ingest
    const handle = ing.handle()
    return rate(w.blocks, () => {
      for (const b of w.batches) ing.ingestPacked(handle, b, 1_700_000_000_000, out, 0)
    })
  }
  return rate(w.blocks, () => {
    for (const b of w.batches) ing.ingestInto(b, 1_700_000_000_000, out, 0)
  })
}

/** What the bench's publisher-like consumer saw (kept so that no read is optimized away). */
const consumed = { bytes: 0, views: 0, noId: 0, ranks: 0, warnings: 0 }

/**
 * Reads a result as KvEventPublisher does with an event-plane sink (ts/worker/publisher.ts `#run`,
 * ts/transport/sinks/event-plane.ts `send`): every payload view and its length, the dp rank, the first
 * event id, the warnings. So the public figure includes what publishing needs of each result.
 */
function publishLike(r: IngestResult): void {
  if (r.count > 0) {
    const views = r.views
    for (let i = 0; i < views.length; i++) consumed.bytes += views[i]!.length
    consumed.views += views.length
    consumed.ranks += r.dpRank!
    if (r.firstEventId === null) consumed.noId++
  }
  if (r.warnings !== undefined) consumed.warnings += r.warnings.length
}

function rustRate(file: string, w: Workload): Rate {
  const out = execFileSync(
    'cargo',
    ['run', '--quiet', '--release', '--example', 'bench_ingest', '-p', 'dynamo-kv-core', '--', file, String(w.blocks), String(MS)],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] },
  )
  const r = JSON.parse(out.trim().split('\n').pop()!) as { blocks_per_s: number; blocks_per_cpu_s: number }
  return { wall: r.blocks_per_s, cpu: r.blocks_per_cpu_s, thread: r.blocks_per_cpu_s }
}

/**
 * BENCH_ONLY=ingest|indexer|publish|zmq|numbers|indexer-http|router|multihash|index-dynamo (comma-separated) runs
 * only those parts; default all but multihash and index-dynamo.
 */
const only = new Set((process.env.BENCH_ONLY ?? 'ingest,indexer,publish,zmq,numbers,indexer-http,router').split(',').map((x) => x.trim()))

async function main(): Promise<void> {
  if (only.has('ingest')) benchIngest()
  if (only.has('indexer')) await benchIndexer()
  if (only.has('publish')) await benchPublish()
  if (only.has('zmq')) await benchZmq()
  if (only.has('numbers'))
    benchLongNumbers([
      { name: 'native', raw: native },
      { name: 'fallback', raw: fallback },
    ])
  if (only.has('indexer-http')) await benchIndexerHttp()
  if (only.has('router')) await benchRouter()
  if (only.has('multihash')) await benchMultiHash()
  if (only.has('index-dynamo')) benchIndexDynamo()
}

/**
 * This core's index side by side with Dynamo 1.6.1's (crates/bench-dynamo-1.6, its own workspace: a cold
 * build fetches and compiles about 110 crates, hence not in the default run). Prints markdown tables.
 */
function benchIndexDynamo(): void {
  execFileSync('cargo', ['run', '--quiet', '--release', '--manifest-path', 'crates/bench-dynamo-1.6/Cargo.toml'], {
    stdio: 'inherit',
    env: { ...process.env, CARGO_TARGET_DIR: join(process.cwd(), 'target', 'compat') },
  })
}

function benchIngest(): void {
  const w = standardWorkload(4000)
  const dir = mkdtempSync(join(tmpdir(), 'dynamo-kv-bench-'))
  const file = join(dir, 'batches.bin')
  writeFileSync(file, packBatches(w.batches))
  console.log(`workload: ${w.batches.length} batches, ${w.events} events, ${w.blocks} blocks, ${(w.bytes / 1e6).toFixed(2)} MB`)
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`)
  execFileSync('cargo', ['build', '--quiet', '--release', '--example', 'bench_ingest', '-p', 'dynamo-kv-core'], { stdio: 'inherit' })
  const top = { rust: NO_RATE, nativeRaw: NO_RATE, nativePacked: NO_RATE, nativeApi: NO_RATE, jsRaw: NO_RATE, jsApi: NO_RATE }
  for (let r = 0; r < ROUNDS; r++) {
    top.rust = best(top.rust, rustRate(file, w))
    top.nativeRaw = best(top.nativeRaw, nodeRate(w, native, false))
    top.nativePacked = best(top.nativePacked, nodeRate(w, native, false, true))
    top.nativeApi = best(top.nativeApi, nodeRate(w, native, true))
    top.jsRaw = best(top.jsRaw, nodeRate(w, fallback, false))
    top.jsApi = best(top.jsApi, nodeRate(w, fallback, true))
  }
  // The Rust example measures its own thread (schedstat); for Node both the process (GC helper threads
  // included) and the main thread alone are shown, the latter being the like-for-like comparison.
  const row = (name: string, r: Rate) =>
    console.log(`| ${name} | ${fmtRate(r.wall)} | ${fmtRate(r.cpu)} | ${r.thread ? fmtRate(r.thread) : '-'} |`)
  console.log('\n| ingest, standard workload (event plane) | blocks/s (wall) | blocks/s (process CPU) | blocks/s (main-thread CPU) |')
  console.log('|---|---|---|---|')
  row('pure Rust core (Ingestor::ingest)', top.rust)
  row('native from Node, raw binding', top.nativeRaw)
  row('native from Node, raw ingestPacked (the call behind the public API)', top.nativePacked)
  row('native from Node, public Ingestor.ingest', top.nativeApi)
  row('fallback, raw', top.jsRaw)
  row('fallback, public Ingestor.ingest', top.jsApi)
  console.log('\n| ratio (main-thread CPU time; process CPU time in brackets) | value | target |')
  console.log('|---|---|---|')
  console.log(
    `| native (public API) / pure Rust | ${(top.nativeApi.thread / top.rust.thread).toFixed(2)} (${(top.nativeApi.cpu / top.rust.cpu).toFixed(2)}) | >= 0.8 |`,
  )
  console.log(
    `| native (public API) / fallback (public API) | ${(top.nativeApi.thread / top.jsApi.thread).toFixed(1)} (${(top.nativeApi.cpu / top.jsApi.cpu).toFixed(1)}) | >= 20 |`,
  )
  console.log(`\nbest of ${ROUNDS} rounds of ${MS} ms each`)
}

main().catch((e) => {
  console.error(e)
  process.exitCode = 1
})
