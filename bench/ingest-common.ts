// What the ingest benches share (bench/run.ts, bench/ingest-ab.ts, bench/ingest-profile.ts): how a result is
// read, the raw ingestor's options, and the pure Rust core's loop inside the Node process.
import type { RawBinding } from '../ts/core/binding.js'
import type { IngestResult } from '../ts/core/api.js'
import { BLOCK_SIZE } from './workload.js'

/** What a publisher-like consumer read of the results (kept so that no read is optimized away). */
export interface Tally {
  bytes: number
  views: number
  noId: number
  ranks: number
  warnings: number
}
export const newTally = (): Tally => ({ bytes: 0, views: 0, noId: 0, ranks: 0, warnings: 0 })

/**
 * Reads a result as KvEventPublisher does with an event-plane sink (ts/worker/publisher.ts `#run`,
 * ts/transport/sinks/event-plane.ts `send`): every payload view and its length, the dp rank, the first
 * event id, the warnings. So the public figure includes what publishing needs of each result; the pure
 * Rust side (crates/core/examples/bench_ingest.rs `consume`) reads each packed output the same way.
 */
export function publishLike(r: IngestResult, t: Tally): void {
  if (r.count > 0) {
    const views = r.views
    for (let i = 0; i < views.length; i++) t.bytes += views[i]!.length
    t.views += views.length
    t.ranks += r.dpRank!
    if (r.firstEventId === null) t.noId++
  }
  if (r.warnings !== undefined) t.warnings += r.warnings.length
}

/**
 * The bench-only native entry (crates/node/src/ingest_fast.rs `benchIngestLoop`, in no type declaration):
 * the pure Rust core's loop run inside this process, on an ingestor of the native binding.
 */
interface BenchBinding {
  benchIngestLoop: (handle: number, batches: Uint8Array, nowMs: number, passes: number, tally: Float64Array) => void
}

/** The raw ingestor of the benches: event plane, the standard workload's block size. */
export const RAW_OPTIONS = {
  kvBlockSize: BLOCK_SIZE,
  workerId: 7n,
  jetstream: false,
  maxDpRanks: 64,
  dpRanks: null as unknown as Uint32Array,
  localIndexerBufferSize: 0,
}

/** The pure Rust core's loop inside this process over the packed batches: one pass per call of `pass`. */
export function rustLoop(native: RawBinding, packed: Buffer): { pass: () => void; tally: Float64Array; close: () => void } {
  const loop = (native as unknown as BenchBinding).benchIngestLoop
  const ing = new native.RawIngestor(RAW_OPTIONS)
  const handle = ing.handle()
  const tally = new Float64Array(5)
  return { pass: () => loop(handle, packed, 1_700_000_000_000, 1, tally), tally, close: () => ing.close() }
}
