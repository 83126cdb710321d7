// The standard ingest workload (BENCHMARKS.md): vLLM map-era batches [ts, events, dp_rank] of 1-4
// events; stores of 1-32 blocks of 16 tokens chained to earlier stores; 20% of events are removes of
// 1-8 earlier blocks; 10% of stores carry a LoRA name. Deterministic for a seed.
import { arr, encode, f64, map, nil, s, u, type Mp } from '../__test__/helpers/mp.js'
import { Rng } from '../__test__/helpers/gen-batches.js'

export const BLOCK_SIZE = 16

export interface Workload {
  batches: Buffer[]
  /** stored blocks + removed hashes over all batches */
  blocks: number
  events: number
  bytes: number
}

export function standardWorkload(nBatches: number, seed = 1): Workload {
  const rng = new Rng(seed)
  const live: bigint[] = []
  let blocks = 0
  let events = 0
  let bytes = 0
  const batches: Buffer[] = []
  for (let b = 0; b < nBatches; b++) {
    const evs: Mp[] = []
    for (let e = 0, n = 1 + rng.int(4); e < n; e++) {
      events++
      if (rng.chance(0.2) && live.length > 0) {
        const k = 1 + rng.int(8)
        const hashes: Mp[] = []
        for (let j = 0; j < k && live.length; j++) hashes.push(u(live.splice(rng.int(live.length), 1)[0]!))
        blocks += hashes.length
        evs.push(map({ type: s('BlockRemoved'), block_hashes: arr(...hashes), medium: s('GPU') }))
        continue
      }
      const nb = 1 + rng.int(32)
      const hashes: bigint[] = Array.from({ length: nb }, () => rng.u64())
      const tokens: Mp[] = Array.from({ length: nb * BLOCK_SIZE }, () => u(rng.int(128000)))
      const parent = live.length && rng.chance(0.7) ? u(live[live.length - 1]!) : nil
      blocks += nb
      evs.push(
        map({
          type: s('BlockStored'),
          block_hashes: arr(...hashes.map((h) => u(h))),
          parent_block_hash: parent,
          token_ids: arr(...tokens),
          block_size: u(BLOCK_SIZE),
          lora_id: nil,
          medium: s('GPU'),
          lora_name: rng.chance(0.1) ? s(`adapter-${rng.int(4)}`) : nil,
        }),
      )
      live.push(...hashes)
      if (live.length > 20000) live.splice(0, live.length - 20000)
    }
    const batch = encode(arr(f64(1764355200 + b / 1000), arr(...evs), u(0)))
    bytes += batch.length
    batches.push(batch)
  }
  return { batches, blocks, events, bytes }
}

/** Length-prefixed (u32 LE) concatenation, the input format of the Rust bench example. */
export function packBatches(batches: Buffer[]): Buffer {
  const parts: Buffer[] = []
  for (const b of batches) {
    const len = Buffer.alloc(4)
    len.writeUInt32LE(b.length)
    parts.push(len, b)
  }
  return Buffer.concat(parts)
}

/**
 * The batches of a `packBatches` buffer as views into it, in order. The ingest bench feeds these to the Node
 * side, so that it reads the same bytes at the same addresses as the pure Rust loop (one contiguous buffer,
 * read front to back), rather than 4,000 Buffers scattered over the heap.
 */
export function batchViews(packed: Buffer): Buffer[] {
  const views: Buffer[] = []
  let at = 0
  while (at + 4 <= packed.length) {
    const len = packed.readUInt32LE(at)
    views.push(packed.subarray(at + 4, at + 4 + len))
    at += 4 + len
  }
  return views
}
