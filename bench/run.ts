// npm run bench: ingest throughput of the standard workload (bench/workload.ts) for the pure Rust core (in
// its own process, crates/core/examples/bench_ingest.rs, and its loop inside this Node process, the
// bench-only benchIngestLoop), the native binding from Node (the public call also in a Node process of its
// own, bench/ingest-own-process.ts), and the TypeScript fallback, in rounds with
// each round's ratio and their median; then the indexer (bench/indexer.ts), publishing to NATS
// (bench/publish.ts), the ZMQ source (bench/zmq.ts) and rejecting over-long JSON numbers
// (bench/long-numbers.ts). One run, so the ratios are comparable on a noisy shared machine. See BENCHMARKS.md.
import { execFileSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { cpus, loadavg, tmpdir, totalmem } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import type { RawBinding } from '../ts/core/binding.js'
import { Ingestor } from '../ts/core/api.js'
import { fallback } from '../ts/fallback/lib.js'
import { BLOCK_SIZE, batchViews, packBatches, standardWorkload, type Workload } from './workload.js'
import { RAW_OPTIONS, newTally, publishLike, rustLoop, type Tally } from './ingest-common.js'
import { MS, fmtRate, majorGcCounter, minorFaults, rate, threadCpuNs, type Rate } from './measure.js'
import { benchIndexer } from './indexer.js'
import { benchPublish } from './publish.js'
import { benchZmq } from './zmq.js'
import { benchLongNumbers } from './long-numbers.js'
import { benchIndexerHttp } from './indexer-http.js'
import { benchRouter } from './router.js'
import { benchMultiHash } from './index-multihash.js'

const require = createRequire(import.meta.url)
const native = require('../binding.cjs') as RawBinding

/** A full, synchronous collection of this process's heap (V8's `gc`, exposed here whatever started Node). */
const collectGarbage: () => void = (() => {
  setFlagsFromString('--expose-gc')
  return runInNewContext('gc') as () => void
})()

function nodeRate(w: Workload, batches: Buffer[], impl: RawBinding, api: boolean, packed = false, ms = MS): Rate {
  // one long-lived ingestor, as in a sidecar: its per-rank state stays warm across passes
  if (api) {
    const ing = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, impl)
    return rate(
      w.blocks,
      () => {
        for (const b of batches) publishLike(ing.ingest(b, 1_700_000_000_000), consumed)
      },
      ms,
    )
  }
  const ing = new impl.RawIngestor(RAW_OPTIONS)
  const out = Buffer.allocUnsafeSlow(1 << 20)
  if (packed) {
    // the raw call behind the public Ingestor.ingest
    const handle = ing.handle()
    return rate(
      w.blocks,
      () => {
        for (const b of batches) ing.ingestPacked(handle, b, 1_700_000_000_000, out, 0)
      },
      ms,
    )
  }
  return rate(
    w.blocks,
    () => {
      for (const b of batches) ing.ingestInto(b, 1_700_000_000_000, out, 0)
    },
    ms,
  )
}

const consumed = newTally()

/** The built pure-Rust bench binary (cargo's own record of where it put it). */
function buildRustBench(): string {
  const out = execFileSync(
    'cargo',
    ['build', '--quiet', '--release', '--example', 'bench_ingest', '-p', 'dynamo-kv-core', '--message-format=json'],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 << 20 },
  )
  for (const line of out.split('\n')) {
    if (!line.startsWith('{')) continue
    const m = JSON.parse(line) as { reason?: string; target?: { name?: string }; executable?: string | null }
    if (m.reason === 'compiler-artifact' && m.target?.name === 'bench_ingest' && m.executable) return m.executable
  }
  throw new Error('cargo did not report the bench_ingest executable')
}

/** One run of the pure-Rust bench process: its rates and what its first pass read. */
function rustRate(bin: string, file: string, w: Workload, ms: number): { rate: Rate; firstPass: Tally } {
  const out = execFileSync(bin, [file, String(w.blocks), String(ms)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] })
  const r = JSON.parse(out.trim().split('\n').pop()!) as { blocks_per_s: number; blocks_per_cpu_s: number; first_pass: Tally }
  return { rate: { wall: r.blocks_per_s, cpu: r.blocks_per_cpu_s, thread: r.blocks_per_cpu_s }, firstPass: r.first_pass }
}

/** The pure Rust core's loop over the packed batches inside this process: its rate, and what its first pass read. */
function rustInProcessRate(packed: Buffer, w: Workload, ms: number): { rate: Rate; firstPass: Tally } {
  const rust = rustLoop(native, packed)
  rust.pass()
  const t = rust.tally
  const firstPass = { bytes: t[0]!, views: t[1]!, noId: t[2]!, ranks: t[3]!, warnings: t[4]! }
  const r = rate(w.blocks, rust.pass, ms)
  rust.close()
  return { rate: r, firstPass }
}

/**
 * The public Ingestor.ingest in a Node process of its own (bench/ingest-own-process.ts), over the file the Rust
 * example reads: its rate, its first pass, and the major collections during its measurement.
 */
function publicOwnProcessRate(file: string, w: Workload, ms: number): { rate: Rate; firstPass: Tally; majorGcs: number } {
  const script = fileURLToPath(new URL('./ingest-own-process.ts', import.meta.url))
  const out = execFileSync(process.execPath, ['--import', 'tsx', script, file, String(w.blocks), String(ms)], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
    cwd: fileURLToPath(new URL('..', import.meta.url)),
  })
  return JSON.parse(out.trim().split('\n').pop()!) as { rate: Rate; firstPass: Tally; majorGcs: number }
}

/** What the public Ingestor.ingest's first pass over the workload reads, from a fresh ingestor (as the Rust side's). */
function publicFirstPass(batches: Buffer[], impl: RawBinding): Tally {
  const t = newTally()
  const ing = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, impl)
  for (const b of batches) publishLike(ing.ingest(b, 1_700_000_000_000), t)
  ing.close()
  return t
}

/**
 * BENCH_ONLY=ingest|indexer|publish|zmq|numbers|indexer-http|router|multihash|index-dynamo (comma-separated) runs
 * only those parts; default all but multihash and index-dynamo.
 */
const only = new Set((process.env.BENCH_ONLY ?? 'ingest,indexer,publish,zmq,numbers,indexer-http,router').split(',').map((x) => x.trim()))

async function main(): Promise<void> {
  if (only.has('ingest')) await benchIngest()
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

/** Rounds of the ingest comparison (INGEST_ROUNDS, at least 5) and milliseconds per measurement (INGEST_MS). */
const INGEST_ROUNDS = Math.max(5, Number(process.env.INGEST_ROUNDS ?? 7))
const INGEST_MS = Number(process.env.INGEST_MS ?? Math.max(200, MS / 2))
/** Pairs of passes in the alternated comparison (INGEST_PAIRS, at least 10). */
const INGEST_PAIRS = Math.max(10, Number(process.env.INGEST_PAIRS ?? 60))

/**
 * The public Ingestor.ingest and the pure Rust core's loop inside this process, alternated pass by pass
 * (one pass: the 4,000 batches, a few tens of milliseconds): on a host whose speed drifts within
 * seconds, the two sides of each pair run in the same moment. Main-thread CPU per pass, and the
 * process's minor page faults during the public passes.
 */
function alternatedIngest(packed: Buffer, batches: Buffer[]): { rust: number[]; api: number[]; faults: number } {
  const rust = rustLoop(native, packed)
  const ing = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, native)
  const sides = {
    rust: rust.pass,
    api: () => {
      for (const b of batches) publishLike(ing.ingest(b, 1_700_000_000_000), consumed)
    },
  }
  sides.rust()
  sides.api()
  const out = { rust: [] as number[], api: [] as number[], faults: 0 }
  for (let i = 0; i < INGEST_PAIRS; i++)
    for (const k of i % 2 === 0 ? (['rust', 'api'] as const) : (['api', 'rust'] as const)) {
      const f0 = minorFaults()
      const c0 = threadCpuNs()
      sides[k]()
      out[k].push(threadCpuNs() - c0)
      if (k === 'api') out.faults += minorFaults() - f0
    }
  rust.close()
  ing.close()
  return out
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2
}

/**
 * The ingest rows, measured in rounds: each round measures every row once, the pure Rust core (its own
 * process, started per round) and the public `Ingestor.ingest` back to back, alternating which of the
 * two goes first, so that each round's ratio compares two measurements of the same few seconds. Both
 * read every output the same way (`publishLike` and the Rust example's `consume`), and their first
 * passes over the batches must read the same totals, or the bench fails.
 */
async function benchIngest(): Promise<void> {
  const w = standardWorkload(4000)
  const dir = mkdtempSync(join(tmpdir(), 'dynamo-kv-bench-'))
  const file = join(dir, 'batches.bin')
  writeFileSync(file, packBatches(w.batches))
  console.log(`workload: ${w.batches.length} batches, ${w.events} events, ${w.blocks} blocks, ${(w.bytes / 1e6).toFixed(2)} MB`)
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}`)
  const bin = buildRustBench()
  const packed = packBatches(w.batches)
  // the Node side reads the batches where the Rust loop reads them, in the one packed buffer
  const batches = batchViews(packed)
  const rustFirst = rustRate(bin, file, w, 1).firstPass
  const inProcessFirst = rustInProcessRate(packed, w, 1).firstPass
  if (JSON.stringify(inProcessFirst) !== JSON.stringify(rustFirst))
    throw new Error(
      `the pure Rust loop in this process read ${JSON.stringify(inProcessFirst)}, the Rust example ${JSON.stringify(rustFirst)}`,
    )
  const ownFirst = publicOwnProcessRate(file, w, 1).firstPass
  if (JSON.stringify(ownFirst) !== JSON.stringify(rustFirst))
    throw new Error(
      `the public Ingestor.ingest in its own process read ${JSON.stringify(ownFirst)}, the Rust example ${JSON.stringify(rustFirst)}`,
    )
  for (const [name, impl] of [
    ['native', native],
    ['fallback', fallback],
  ] as const) {
    const t = publicFirstPass(batches, impl)
    if (JSON.stringify(t) !== JSON.stringify(rustFirst))
      throw new Error(`the public Ingestor.ingest (${name}) read ${JSON.stringify(t)}, the pure Rust core ${JSON.stringify(rustFirst)}`)
  }
  console.log(`first pass, read alike by both sides: ${JSON.stringify(rustFirst)}`)
  const load0 = loadavg()
  const rows = [
    'rust',
    'rustInProcess',
    'nativeApi',
    'nativeApiOwn',
    'nativePacked',
    'nativeApiScattered',
    'nativeRaw',
    'jsRaw',
    'jsApi',
  ] as const
  const all: Record<(typeof rows)[number], Rate[]> = {
    rust: [],
    rustInProcess: [],
    nativeApi: [],
    nativeApiOwn: [],
    nativePacked: [],
    nativeApiScattered: [],
    nativeRaw: [],
    jsRaw: [],
    jsApi: [],
  }
  // the major collections of the public call's own process, which it counts itself
  const ownMajors: number[] = []
  const measure: Record<(typeof rows)[number], () => Rate> = {
    rust: () => rustRate(bin, file, w, INGEST_MS).rate,
    nativeApiOwn: () => {
      const r = publicOwnProcessRate(file, w, INGEST_MS)
      ownMajors.push(r.majorGcs)
      return r.rate
    },
    rustInProcess: () => rustInProcessRate(packed, w, INGEST_MS).rate,
    nativeApi: () => nodeRate(w, batches, native, true, false, INGEST_MS),
    nativePacked: () => nodeRate(w, batches, native, false, true, INGEST_MS),
    // the same public call over the workload's own Buffers, one per batch, wherever the heap put them
    nativeApiScattered: () => nodeRate(w, w.batches, native, true, false, INGEST_MS),
    nativeRaw: () => nodeRate(w, batches, native, false, false, INGEST_MS),
    jsRaw: () => nodeRate(w, batches, fallback, false, false, INGEST_MS),
    jsApi: () => nodeRate(w, batches, fallback, true, false, INGEST_MS),
  }
  // Before each measurement the heap is collected in full and the process idles a moment, so that no
  // measurement pays for another's garbage: without it a row inherited V8's unfinished work on the previous
  // rows' garbage (the fallback rows make the most), which it then did on its own main thread as soon as it
  // allocated, and V8's helper threads competed with the next measurement, in this process or in the Rust
  // example's (BENCHMARKS.md).
  const settle = () => {
    collectGarbage()
    return new Promise<void>((resolve) => setTimeout(resolve, 200))
  }
  // an untimed round first, so that every round measures the steady state of a long-running process
  // (optimized code, grown heap); the processes of their own warm up with a pass or two each
  for (const k of rows)
    if (k !== 'rust' && k !== 'nativeApiOwn') {
      await settle()
      measure[k]()
    }
  // Major (mark-compact) collections per measurement, from Node's gc performance entries, which arrive
  // once the event loop turns after the measurement. Results that keep fresh arenas alive can make V8
  // collect the old generation several times a second (BENCHMARKS.md).
  const gcs = majorGcCounter()
  const majors = Object.fromEntries(rows.map((k) => [k, [] as number[]])) as Record<(typeof rows)[number], number[]>
  for (let r = 0; r < INGEST_ROUNDS; r++) {
    const order = r % 2 === 0 ? rows : (['nativeApiOwn', 'nativeApi', 'rustInProcess', 'rust', ...rows.slice(4)] as const)
    for (const k of order) {
      await settle()
      const before = gcs.count()
      all[k].push(measure[k]())
      await new Promise<void>((resolve) => setTimeout(resolve, 20))
      majors[k].push(gcs.count() - before)
    }
  }
  gcs.stop()
  await settle()
  const pairs = alternatedIngest(packed, batches)
  const load1 = loadavg()
  rmSync(dir, { recursive: true, force: true })
  // The Rust example measures its own thread (schedstat); for Node both the process (GC helper threads
  // included) and the main thread alone are shown, the latter being the like-for-like comparison.
  const row = (name: string, rs: Rate[], gc: number[] | null) => {
    const t = rs.map((x) => x.thread)
    console.log(
      `| ${name} | ${fmtRate(median(rs.map((x) => x.wall)))} | ${fmtRate(median(rs.map((x) => x.cpu)))} | ${fmtRate(median(t))} (${fmtRate(Math.min(...t))}-${fmtRate(Math.max(...t))}) | ${gc === null ? '-' : median(gc)} |`,
    )
  }
  console.log(
    `\n| ingest, standard workload (event plane), median of rounds | blocks/s (wall) | blocks/s (process CPU) | blocks/s (main-thread CPU, range) | major GCs per ${INGEST_MS} ms measurement |`,
  )
  console.log('|---|---|---|---|---|')
  row('pure Rust core (Ingestor::ingest_packed), its own process', all.rust, null)
  row('pure Rust core (Ingestor::ingest_packed), its loop inside this Node process', all.rustInProcess, majors.rustInProcess)
  row('native from Node, raw binding', all.nativeRaw, majors.nativeRaw)
  row('native from Node, raw ingestPacked (the call behind the public API)', all.nativePacked, majors.nativePacked)
  row('native from Node, public Ingestor.ingest', all.nativeApi, majors.nativeApi)
  row('native from Node, public Ingestor.ingest, its own process', all.nativeApiOwn, ownMajors)
  row('native from Node, public Ingestor.ingest, batches in Buffers of their own', all.nativeApiScattered, majors.nativeApiScattered)
  row('fallback, raw', all.jsRaw, majors.jsRaw)
  row('fallback, public Ingestor.ingest', all.jsApi, majors.jsApi)
  const ratio = (a: Rate[], b: Rate[], k: keyof Rate) => a.map((x, i) => x[k] / b[i]![k])
  const apiRust = ratio(all.nativeApi, all.rust, 'thread')
  const apiRustCpu = ratio(all.nativeApi, all.rust, 'cpu')
  const apiIn = ratio(all.nativeApi, all.rustInProcess, 'thread')
  const apiInCpu = ratio(all.nativeApi, all.rustInProcess, 'cpu')
  const packedRust = ratio(all.nativePacked, all.rust, 'thread')
  const packedIn = ratio(all.nativePacked, all.rustInProcess, 'thread')
  const inRust = ratio(all.rustInProcess, all.rust, 'thread')
  const scatteredRust = ratio(all.nativeApiScattered, all.rust, 'thread')
  const scatteredIn = ratio(all.nativeApiScattered, all.rustInProcess, 'thread')
  const ownRust = ratio(all.nativeApiOwn, all.rust, 'thread')
  const ownRustCpu = ratio(all.nativeApiOwn, all.rust, 'cpu')
  console.log(
    '\n| round (first of the four) | pure Rust, own process | pure Rust, in Node | public Ingestor.ingest | public, own process | public / pure Rust own process (process CPU) | public / pure Rust in Node (process CPU) | public own process / pure Rust own process (process CPU) |',
  )
  console.log('|---|---|---|---|---|---|---|---|')
  for (let r = 0; r < INGEST_ROUNDS; r++)
    console.log(
      `| ${r + 1} (${r % 2 === 0 ? 'Rust' : 'public'}) | ${fmtRate(all.rust[r]!.thread)} | ${fmtRate(all.rustInProcess[r]!.thread)} | ${fmtRate(all.nativeApi[r]!.thread)} | ${fmtRate(all.nativeApiOwn[r]!.thread)} | ${apiRust[r]!.toFixed(2)} (${apiRustCpu[r]!.toFixed(2)}) | ${apiIn[r]!.toFixed(2)} (${apiInCpu[r]!.toFixed(2)}) | ${ownRust[r]!.toFixed(2)} (${ownRustCpu[r]!.toFixed(2)}) |`,
    )
  console.log('\n| ratio, median of the rounds (main-thread CPU time; process CPU time in brackets) | value | target |')
  console.log('|---|---|---|')
  console.log(
    `| native (public API) / pure Rust, own process | ${median(apiRust).toFixed(2)} (${median(apiRustCpu).toFixed(2)}) | >= 0.8 |`,
  )
  console.log(
    `| native (public API) / pure Rust, in this process | ${median(apiIn).toFixed(2)} (${median(apiInCpu).toFixed(2)}) | >= 0.8 |`,
  )
  console.log(
    `| native (public API), its own process / pure Rust, its own process | ${median(ownRust).toFixed(2)} (${median(ownRustCpu).toFixed(2)}) | >= 0.8 |`,
  )
  console.log(
    `| native, raw ingestPacked / pure Rust, own process / in this process | ${median(packedRust).toFixed(2)} / ${median(packedIn).toFixed(2)} | - |`,
  )
  console.log(
    `| native (public API), batches in Buffers of their own / pure Rust, own process / in this process | ${median(scatteredRust).toFixed(2)} / ${median(scatteredIn).toFixed(2)} | - |`,
  )
  console.log(`| pure Rust in this process / pure Rust, own process | ${median(inRust).toFixed(2)} | - |`)
  const apiJs = ratio(all.nativeApi, all.jsApi, 'thread')
  const apiJsCpu = ratio(all.nativeApi, all.jsApi, 'cpu')
  console.log(`| native (public API) / fallback (public API) | ${median(apiJs).toFixed(1)} (${median(apiJsCpu).toFixed(1)}) | >= 20 |`)
  const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0)
  const perSec = (ns: number[]) => (w.blocks * ns.length) / (sum(ns) / 1e9)
  const pairRatios = pairs.api.map((ns, i) => pairs.rust[i]! / ns)
  console.log(
    `\n| alternated pass by pass, ${INGEST_PAIRS} pairs (main-thread CPU) | pure Rust in this process | public Ingestor.ingest | public / pure Rust: all passes (median pair, range) | minor page faults per batch, public |`,
  )
  console.log('|---|---|---|---|---|')
  console.log(
    `| standard workload | ${fmtRate(perSec(pairs.rust))} | ${fmtRate(perSec(pairs.api))} | ${(sum(pairs.rust) / sum(pairs.api)).toFixed(2)} (${median(pairRatios).toFixed(2)}, ${Math.min(...pairRatios).toFixed(2)}-${Math.max(...pairRatios).toFixed(2)}) | ${(pairs.faults / (INGEST_PAIRS * w.batches.length)).toFixed(3)} |`,
  )
  const fmtLoad = (l: number[]) => l.map((x) => x.toFixed(2)).join(' / ')
  console.log(`\n${INGEST_ROUNDS} rounds of ${INGEST_MS} ms per row; load average ${fmtLoad(load0)} before, ${fmtLoad(load1)} after`)
}

main().catch((e) => {
  console.error(e)
  process.exitCode = 1
})
