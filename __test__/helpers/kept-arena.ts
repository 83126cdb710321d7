// A child program for __test__/ingest-packed.spec.ts: converts one batch into each of 12 fresh 64 KiB
// outputs through the native ingestPacked, with `arena` true or false, drops every output, runs gc()
// and prints how many of them are still alive (a WeakRef each) and whether the bytes written into each
// equalled the plain call's. Usage: node --expose-gc --import tsx kept-arena.ts <true|false>
import { createRequire } from 'node:module'
import type { RawBinding } from '../../ts/core/binding.js'
import { BatchGenerator } from './gen-batches.js'

const arena = process.argv[2] === 'true'
const bound = createRequire(import.meta.url)('../../binding.cjs') as RawBinding
const opts = { kvBlockSize: 4, workerId: 5n, jetstream: false, maxDpRanks: 4, dpRanks: null, localIndexerBufferSize: 0 }
const a = new bound.RawIngestor(opts)
const twin = new bound.RawIngestor(opts)
const gen = new BatchGenerator(11, { kvBlockSize: 4 })
const refs: WeakRef<Buffer>[] = []
const scratch = Buffer.alloc(1 << 16)
let same = 0
/** One batch into a fresh output; only a WeakRef to the output outlives the call. */
function convert(k: number): void {
  const out = Buffer.allocUnsafeSlow(1 << 16)
  const batch = gen.next()
  const n = a.ingestPacked(a.handle(), batch, 1000 + k, out, 8, arena)
  const m = twin.ingestInto(batch, 1000 + k, scratch, 0)
  if (typeof n === 'number' && n === m && out.subarray(8, 8 + n).equals(scratch.subarray(0, m))) same++
  refs.push(new WeakRef(out))
}
for (let k = 0; k < 12; k++) convert(k)
const turn = () => new Promise((resolve) => setImmediate(resolve))
// WeakRefs made in this job keep their targets until it ends
await turn()
const gc = (globalThis as { gc?: () => void }).gc
if (gc === undefined) throw new Error('run with --expose-gc')
gc()
await turn()
gc()
console.log(JSON.stringify({ alive: refs.filter((r) => r.deref() !== undefined).length, same }))
