// RawIngestor.ingestPacked, the call behind the public Ingestor.ingest: it finds its ingestor by handle, so
// these check that a handle names exactly one live ingestor, that bad arguments throw instead of crashing,
// and that the output equals ingestInto's on a second ingestor fed the same batches.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { raw } from '../ts/core/native.js'
import { Ingestor, implementation } from '../ts/core/api.js'
import { OUT_HEADER_BYTES, type RawIngestorOptions } from '../ts/core/binding.js'
import { BatchGenerator } from './helpers/gen-batches.js'
import { needNative, parityTest } from './helpers/impls.js'

const impl = implementation
const opts: RawIngestorOptions = {
  kvBlockSize: 4,
  workerId: 5n,
  jetstream: false,
  maxDpRanks: 4,
  dpRanks: null,
  localIndexerBufferSize: 16,
}

test(`[${impl}] ingestPacked gives ingestInto's bytes and reaches only the ingestor its handle names`, (t) => {
  const a = new raw.RawIngestor(opts)
  const b = new raw.RawIngestor(opts)
  const other = new raw.RawIngestor({ ...opts, workerId: 6n })
  const gen = new BatchGenerator(5, { kvBlockSize: 4, ranks: [0, 1] })
  const outA = Buffer.alloc(1 << 16)
  const outB = Buffer.alloc(1 << 16)
  let payloads = 0
  for (let k = 0; k < 300; k++) {
    const batch = gen.next()
    // natively called on `other`: the handle, not the receiver, picks the ingestor (the fallback's
    // ingestPacked runs on its receiver)
    const ra = (impl === 'native' ? other : a).ingestPacked(a.handle(), batch, 1000 + k, outA, 3)
    const rb = b.ingestInto(batch, 1000 + k, outB, 3)
    t.is(typeof ra, 'number')
    t.is(ra, rb)
    t.true(outA.subarray(3, 3 + (ra as number)).equals(outB.subarray(3, 3 + (rb as number))), `batch ${k}`)
    payloads += outA.readUInt32LE(3)
  }
  t.true(payloads > 300)
  t.deepEqual(a.counters(), b.counters())
  t.is(other.counters()[0], 0n, 'the receiver converted nothing')
  // an output that does not fit comes back as a Buffer of its own
  const batch = gen.next()
  const small = Buffer.alloc(8)
  const own = a.ingestPacked(a.handle(), batch, 2000, small, 0)
  const ref = b.ingestInto(batch, 2000, small, 0)
  t.true(Buffer.isBuffer(own) && Buffer.isBuffer(ref) && own.equals(ref))
})

// The fallback's ingestPacked runs on its receiver (there is no native memory to reach), and its raw
// methods trust the public layer's checked arguments: these checks are of the native callback only, so
// they take the built binding directly and run in the fallback pass too (skipped only without a build).
parityTest('[native] ingestPacked on a closed ingestor, or with bad arguments, throws and changes nothing', (t) => {
  const bound = needNative()
  const a = new bound.RawIngestor(opts)
  const out = Buffer.alloc(1 << 12)
  const batch = new BatchGenerator(9, { kvBlockSize: 4 }).next()
  // the same slot's next generation, and values that are no handle at all
  for (const h of [a.handle() + 2 ** 21, -1, 0.5, Number.NaN, 2 ** 60]) {
    t.throws(() => a.ingestPacked(h, batch, 1, out, 0), { message: 'Ingestor is closed' }, `handle ${h}`)
  }
  t.throws(() => a.ingestPacked(a.handle(), 'x' as unknown as Uint8Array, 1, out, 0), { message: /payload must be a Uint8Array/ })
  t.throws(() => a.ingestPacked(a.handle(), new Uint16Array(4) as unknown as Uint8Array, 1, out, 0), { message: /payload must be/ })
  t.throws(() => a.ingestPacked(a.handle(), batch, 1, {} as Uint8Array, 0), { message: /out must be a Uint8Array/ })
  t.throws(() => (a.ingestPacked as (...x: unknown[]) => unknown)(a.handle(), batch), { message: /takes/ })
  t.throws(() => a.ingestPacked(a.handle(), batch, 1, out, 0, 1 as unknown as boolean), { message: /arena must be a boolean/ })
  t.is(a.counters()[0], 0n, 'no batch was converted')
  // a bad offset is only "does not fit": the output comes back as a Buffer of its own
  for (const at of [-1, 0.5, out.length + 1]) t.true(Buffer.isBuffer(a.ingestPacked(a.handle(), batch, 1, out, at)))
  // an explicit undefined is the flag's default (on an ingestor of its own: the others' states are compared below)
  const u = new bound.RawIngestor(opts)
  t.is(typeof u.ingestPacked(u.handle(), batch, 1, out, 0, undefined), 'number')
  // the payload's own memory as the output: read first, then overwritten
  const arena = Buffer.alloc(1 << 12)
  batch.copy(arena)
  const b = new bound.RawIngestor(opts)
  for (let k = 0; k < 3; k++) b.ingestInto(batch, 1, out, 0)
  const n = a.ingestPacked(a.handle(), arena.subarray(0, batch.length), 1, arena, 0)
  const m = b.ingestInto(batch, 1, out, 0)
  t.is(n, m)
  t.true(arena.subarray(0, n as number).equals(out.subarray(0, m as number)))
  const h = a.handle()
  a.close()
  t.throws(() => a.ingestPacked(h, batch, 3, out, 0), { message: 'Ingestor is closed' })
  // a new ingestor never answers to the closed one's handle
  const c = new bound.RawIngestor(opts)
  t.not(c.handle(), h)
  t.throws(() => c.ingestPacked(h, batch, 3, out, 0), { message: 'Ingestor is closed' })
})

test(`[${impl}] IngestResult: views and payloads are the same bytes, kept intact by later calls`, (t) => {
  const ing = new Ingestor({ kvBlockSize: 4, workerId: 5n })
  const twin = new raw.RawIngestor(opts)
  const gen = new BatchGenerator(11, { kvBlockSize: 4, ranks: [0, 1] })
  const kept: { views: readonly Uint8Array[]; bytes: Buffer[] }[] = []
  const scratch = Buffer.alloc(1 << 16)
  let withPayloads = 0
  for (let k = 0; k < 2000; k++) {
    const batch = gen.next()
    const r = ing.ingest(batch, 1000 + k)
    // the same conversion through the raw call on a twin ingestor (no local indexer: same payloads)
    const n = twin.ingestInto(batch, 1000 + k, scratch, 0) as number
    t.is(r.count, scratch.readUInt32LE(0))
    t.is(r.views.length, r.count)
    t.is(r.views, r.views, 'built once')
    t.is(r.payloads.length, r.count)
    let at = OUT_HEADER_BYTES
    for (let i = 0; i < r.count; i++) {
      const v = r.views[i]!
      t.false(Buffer.isBuffer(v))
      t.true(Buffer.isBuffer(r.payloads[i]))
      const len = scratch.readUInt32LE(n - 4 * r.count + 4 * i)
      t.true(Buffer.from(v).equals(scratch.subarray(at, at + len)))
      t.true(r.payloads[i]!.equals(v))
      at += len
    }
    if (r.count === 0) {
      t.true(Object.isFrozen(r.views))
      t.is(r.firstEventId, null)
    } else withPayloads++
    if (!Object.values(r.rejected).some((c) => c > 0)) t.true(Object.isFrozen(r.rejected))
    if (k % 50 === 0) kept.push({ views: r.views, bytes: r.views.map((v) => Buffer.from(v)) })
  }
  t.true(withPayloads > 1000)
  for (const { views, bytes } of kept) for (let i = 0; i < views.length; i++) t.true(Buffer.from(views[i]!).equals(bytes[i]!))
})

// benchIngestLoop: the bench's pure Rust loop inside the Node process (bench/run.ts), on the native binding
// only and in no type declaration. Its tally must be what reading the same outputs gives, and no bytes or
// arguments may crash it.
parityTest('[native] benchIngestLoop converts each length-prefixed batch as ingestInto does and tallies its outputs', (t) => {
  const bound = needNative()
  type Loop = (handle: number, batches: Uint8Array, nowMs: number, passes: number, tally: Float64Array) => void
  const loop = (bound as unknown as { benchIngestLoop: Loop }).benchIngestLoop
  const a = new bound.RawIngestor(opts)
  const b = new bound.RawIngestor(opts)
  const gen = new BatchGenerator(17, { kvBlockSize: 4, ranks: [0, 1] })
  const batches = Array.from({ length: 200 }, () => gen.next())
  const parts: Buffer[] = []
  for (const x of batches) {
    const len = Buffer.alloc(4)
    len.writeUInt32LE(x.length)
    parts.push(len, x)
  }
  const packed = Buffer.concat(parts)
  // what the bench's publisher-like consumer reads of each output, from ingestInto on the twin
  const want = [0, 0, 0, 0, 0]
  const out = Buffer.alloc(1 << 16)
  for (let pass = 0; pass < 2; pass++)
    for (const x of batches) {
      const n = b.ingestInto(x, 7, out, 0) as number
      const count = out.readUInt32LE(0)
      const flags = out.readUInt32LE(8)
      let payloads = 0
      for (let i = 0; i < count; i++) payloads += out.readUInt32LE(n - 4 * count + 4 * i)
      if (count > 0) {
        want[0]! += payloads
        want[1]! += count
        want[2]! += flags & 1 ? 0 : 1
        want[3]! += out.readUInt32LE(4)
      }
      if (flags & 2) {
        let at = OUT_HEADER_BYTES + payloads
        const end = at + out.readUInt32LE(12)
        while (at < end) {
          want[4]!++
          at += 4 + out.readUInt32LE(at)
        }
      }
    }
  const tally = new Float64Array(5)
  loop(a.handle(), packed, 7, 2, tally)
  t.deepEqual([...tally], want)
  t.true(want[1]! > 200 && want[3]! > 0, 'payloads on both ranks')
  t.deepEqual(a.counters(), b.counters())
  // a length prefix past the end stops the pass; a prefix cut short, nothing, or garbage converts nothing
  const before = a.counters()[0]!
  const cut = Buffer.concat([packed.subarray(0, 4 + batches[0]!.length), Buffer.from([255, 255, 255, 127, 1, 2])])
  loop(a.handle(), cut, 7, 1, tally)
  t.is(a.counters()[0], before + 1n)
  for (const bytes of [Buffer.alloc(0), Buffer.from([1, 2, 3]), Buffer.from([0, 0, 0, 0, 0, 0, 0])]) loop(a.handle(), bytes, 7, 3, tally)
  t.true(a.counters()[0]! >= before + 1n)
  t.throws(() => loop(a.handle(), packed, 7, 1, new Float64Array(4)), { message: /tally must be a Float64Array of 5/ })
  t.throws(() => loop(a.handle(), packed, 7, 1, new Uint8Array(40) as unknown as Float64Array), { message: /tally must be/ })
  t.throws(() => loop(a.handle(), 'x' as unknown as Uint8Array, 7, 1, tally), { message: /batches must be a Uint8Array/ })
  for (const passes of [Number.POSITIVE_INFINITY, Number.NaN, -1, 2e6])
    t.throws(() => loop(a.handle(), packed, 7, passes, tally), { message: /passes must be in/ }, `passes ${passes}`)
  t.throws(() => (loop as (...x: unknown[]) => unknown)(a.handle(), packed), { message: /takes/ })
  const h = a.handle()
  a.close()
  t.throws(() => loop(h, packed, 7, 1, tally), { message: 'Ingestor is closed' })
})

// The optional `arena` flag: the native call keeps the output at the highest address it has seen
// referenced (so that the allocator reuses the arenas V8 frees below it), and changes no byte written.
// Run in a child process with gc() exposed; 12 dropped outputs, then a full collection.
function keptArenas(arena: boolean): { alive: number; same: number } {
  const script = fileURLToPath(new URL('./helpers/kept-arena.ts', import.meta.url))
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', script, String(arena)], { encoding: 'utf8', env: process.env })
  if (r.status !== 0) throw new Error(`kept-arena child failed: ${r.stderr}`)
  return JSON.parse(r.stdout.trim().split('\n').pop()!) as { alive: number; same: number }
}

parityTest('[native] ingestPacked keeps exactly one arena alive when told its output is an arena, none otherwise', (t) => {
  needNative()
  const kept = keptArenas(true)
  const plain = keptArenas(false)
  t.is(kept.same, 12, 'the bytes written into each arena equal the plain call')
  t.is(plain.same, 12)
  t.is(kept.alive, 1, 'the highest arena is kept')
  t.is(plain.alive, 0, 'without the flag every dropped output is collected')
})
