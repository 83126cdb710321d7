// Where the time of one public Ingestor.ingest call goes, natively, on the standard workload: the call taken
// apart into steps, each step a side of its own, and the sides run in turns pass by pass in one process (a
// rotating order, INGEST_PAIRS passes each, default 60), so that all of them see the same machine and heap:
//   rust            the pure Rust core's loop inside this process (the bench-only benchIngestLoop): the yardstick
//   rawIngestInto   the raw ingestInto (a napi-rs method) into one reused buffer
//   rawReused       the raw ingestPacked (the plain Node-API callback the public API calls) into one reused buffer
//   rawReusedViews  the same, and each output's payload views built and read as the publisher reads them
//   rawFresh        the raw ingestPacked into fresh 64 KiB arenas as the public API writes (results keep their
//                   arena alive, so it is new memory until the collector frees old arenas)
//   rawFreshViews   the same, and the payload views built and read
//   public          the public call, each result read as the publisher reads it (`publishLike`)
// Prints each side's main-thread CPU per batch and the pure Rust loop's over it. The NATS modules are loaded as
// in `npm run bench` (their heap changes how often V8 collects).
// npx tsx bench/ingest-profile.ts   (SIDES=rust,public picks sides; run with node --cpu-prof for a profile)
import { createRequire } from 'node:module'
import { loadavg } from 'node:os'
import { Ingestor } from '../ts/core/api.js'
import { OUT_HEADER_BYTES, type RawBinding } from '../ts/core/binding.js'
import { RAW_OPTIONS, newTally, publishLike, rustLoop } from './ingest-common.js'
import { threadCpuNs } from './measure.js'
import { BLOCK_SIZE, batchViews, packBatches, standardWorkload } from './workload.js'
import './publish.js'

const require = createRequire(import.meta.url)
const native = require('../binding.cjs') as RawBinding
const PASSES = Math.max(10, Number(process.env.INGEST_PAIRS ?? 60))
const T = 1_700_000_000_000
const ARENA_BYTES = 1 << 16
const ARENA_MIN_ROOM = 1 << 13

const w = standardWorkload(4000)
const all = packBatches(w.batches)
// the Node loops read the batches where the Rust loop reads them, in the one packed buffer
const batches = batchViews(all)
const read = newTally()

/** Reads one packed output at `at` in `v` (over `ab` from `base`) as the public result's views and publishLike do. */
function readOutput(ab: ArrayBuffer, base: number, v: DataView, at: number, len: number): void {
  const n = v.getUint32(at, true)
  if (n === 0) return
  const views = new Array<Uint8Array>(n)
  let p = base + at + OUT_HEADER_BYTES
  const lensAt = at + len - 4 * n
  for (let i = 0; i < n; i++) {
    const plen = v.getUint32(lensAt + 4 * i, true)
    views[i] = new Uint8Array(ab, p, plen)
    p += plen
  }
  for (let i = 0; i < n; i++) read.bytes += views[i]!.length
  read.views += n
  read.ranks += v.getUint32(at + 4, true)
  const firstEventId = v.getUint32(at + 8, true) & 1 ? v.getBigUint64(at + 16, true) : null
  if (firstEventId === null) read.noId++
}

/** The raw ingestPacked into one reused buffer, its outputs read or not. */
function reusedSide(views: boolean): () => void {
  const ing = new native.RawIngestor(RAW_OPTIONS)
  const handle = ing.handle()
  const out = Buffer.allocUnsafeSlow(1 << 20)
  const ab = out.buffer as ArrayBuffer
  const v = new DataView(ab, out.byteOffset, out.byteLength)
  return () => {
    for (const b of batches) {
      const len = ing.ingestPacked(handle, b, T, out, 0) as number
      if (views) readOutput(ab, out.byteOffset, v, 0, len)
    }
  }
}

/** The raw ingestPacked into fresh arenas as the public API writes them, its outputs read or not. */
function freshSide(views: boolean): () => void {
  const ing = new native.RawIngestor(RAW_OPTIONS)
  const handle = ing.handle()
  let arena = Buffer.allocUnsafeSlow(ARENA_BYTES)
  let ab = arena.buffer as ArrayBuffer
  let v = new DataView(ab, arena.byteOffset, arena.byteLength)
  let used = 0
  return () => {
    for (const b of batches) {
      if (ARENA_BYTES - used < ARENA_MIN_ROOM) {
        arena = Buffer.allocUnsafeSlow(ARENA_BYTES)
        ab = arena.buffer as ArrayBuffer
        v = new DataView(ab, arena.byteOffset, arena.byteLength)
        used = 0
      }
      const at = used
      const len = ing.ingestPacked(handle, b, T, arena, at, true) as number
      used += len
      if (views) readOutput(ab, arena.byteOffset, v, at, len)
    }
  }
}

const rust = rustLoop(native, all)
const rawInto = new native.RawIngestor(RAW_OPTIONS)
const intoOut = Buffer.allocUnsafeSlow(1 << 20)
const api = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 7n }, native)
const sides: Record<string, () => void> = {
  rust: rust.pass,
  rawIngestInto: () => {
    for (const b of batches) rawInto.ingestInto(b, T, intoOut, 0)
  },
  rawReused: reusedSide(false),
  rawReusedViews: reusedSide(true),
  rawFresh: freshSide(false),
  rawFreshViews: freshSide(true),
  public: () => {
    for (const b of batches) publishLike(api.ingest(b, T), read)
  },
}
const names = process.env.SIDES ? process.env.SIDES.split(',') : Object.keys(sides)
for (const n of names) if (!(n in sides)) throw new Error(`unknown side ${n}; the sides: ${Object.keys(sides).join(', ')}`)
const ns = new Map(names.map((n) => [n, 0]))
for (let i = 0; i < 3; i++) for (const n of names) sides[n]!()
console.log(
  `load average at start: ${loadavg()
    .map((x) => x.toFixed(2))
    .join(', ')}; ${PASSES} passes of ${batches.length} batches per side`,
)
for (let i = 0; i < PASSES; i++)
  for (let j = 0; j < names.length; j++) {
    const n = names[(i + j) % names.length]!
    const t0 = threadCpuNs()
    sides[n]!()
    ns.set(n, ns.get(n)! + threadCpuNs() - t0)
  }
rust.close()
const rustNs = ns.get('rust')
for (const n of names) {
  const perBatch = (ns.get(n)! / PASSES / batches.length).toFixed(0)
  console.log(`${n}: ${perBatch} ns per batch${rustNs === undefined ? '' : `, pure Rust loop / this ${(rustNs / ns.get(n)!).toFixed(3)}`}`)
}
if (read.views === 0) throw new Error('no payload was read')
