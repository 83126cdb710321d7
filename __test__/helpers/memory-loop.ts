// A child program for __test__/memory.spec.ts: creates a fresh Ingestor with a local indexer per round,
// ingests one valid batch of 10 M tokens, closes it (or drops it), runs gc() and prints the process's
// memory, one JSON line per round. `close` and `drop` run synchronously, with no event-loop turn
// between rounds; `yield` drops it and lets one turn pass (where Node runs native finalizers).
// Usage: node --expose-gc --import tsx memory-loop.ts <rounds> <close|drop|yield>
import { Ingestor } from '../../ts/index.js'

const rounds = Number(process.argv[2] ?? 10)
const mode = process.argv[3] ?? 'close'
const TOKENS = 10_000_000
const BLOCK = 16

/** A vLLM batch [ts, [BlockStored], 0] of TOKENS tokens in full blocks, written directly. */
function batch(seed: number): Buffer {
  const blocks = TOKENS / BLOCK
  const buf = Buffer.allocUnsafe(64 + 9 * blocks + 5 * TOKENS)
  let p = 0
  buf[p++] = 0x93 // [ts, events, dp_rank]
  buf[p++] = 0x00
  buf[p++] = 0x91 // one event
  buf[p++] = 0x95 // ["BlockStored", hashes, parent, tokens, block_size]
  buf[p++] = 0xab
  p += buf.write('BlockStored', p, 'latin1')
  buf[p++] = 0xdd
  buf.writeUInt32BE(blocks, p)
  p += 4
  for (let i = 0; i < blocks; i++) {
    buf[p++] = 0xcf
    buf.writeUInt32BE((seed + 1) >>> 0, p)
    buf.writeUInt32BE(i >>> 0, p + 4)
    p += 8
  }
  buf[p++] = 0xc0
  buf[p++] = 0xdd
  buf.writeUInt32BE(TOKENS, p)
  p += 4
  for (let i = 0; i < TOKENS; i++) {
    buf[p++] = 0xce
    buf.writeUInt32BE(Math.imul(i + seed, 0x9e3779b1) >>> 0, p)
    p += 4
  }
  buf[p++] = BLOCK
  buf[p++] = 0x00
  return buf.subarray(0, p)
}

const gc = (globalThis as { gc?: () => void }).gc
if (!gc) throw new Error('run with --expose-gc')
for (let r = 0; r < rounds; r++) {
  const ing = new Ingestor({ kvBlockSize: BLOCK, workerId: 7n, localIndexer: true })
  const res = ing.ingest(batch(r), 1)
  if (res.rejected.malformed !== 0 || res.payloads.length === 0) throw new Error('the batch was not accepted')
  const peak = process.memoryUsage()
  if (mode === 'close') ing.close()
  if (mode === 'yield') await new Promise((resolve) => setImmediate(resolve))
  gc()
  const m = process.memoryUsage()
  console.log(
    JSON.stringify({ round: r, peakRss: peak.rss, peakExternal: peak.external, rss: m.rss, external: m.external, heapUsed: m.heapUsed }),
  )
}
