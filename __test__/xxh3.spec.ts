// XXH3-64 of the TypeScript fallback against known answers: a reference constant, the block-hash
// fixtures shared with the Rust core, and the @node-rs/xxhash native oracle across every length class.
import { readFileSync } from 'node:fs'
import test from 'ava'
import { xxh3 } from '@node-rs/xxhash'
import { xxh3_64, xxh3_64_into } from '../ts/fallback/xxh3.js'

const U64_MASK = (1n << 64n) - 1n
const BASE_SEED = 1337n

interface MmObject {
  mm_hash: string
  offsets: number[][]
}
interface Vector {
  name: string
  tokens: number[]
  kv_block_size: number
  lora_name: string | null
  block_mm_infos: ({ mm_objects: MmObject[] } | null)[] | null
  expected: string[]
}
interface Fixture {
  raw_hash: { input_utf8: string; seed: number; xxh3_64: string }
  vectors: Vector[]
}

const fixture = JSON.parse(readFileSync(new URL('./fixtures/block-hashes.json', import.meta.url), 'utf8')) as Fixture

/** Deterministic 64-bit generator (splitmix64) so failures reproduce. */
function splitmix64(state: bigint): () => bigint {
  return () => {
    state = (state + 0x9e3779b97f4a7c15n) & U64_MASK
    let z = state
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & U64_MASK
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & U64_MASK
    return z ^ (z >> 31n)
  }
}

function seedHalves(seed: bigint): [number, number] {
  return [Number(seed & 0xffffffffn), Number(seed >> 32n)]
}

function intoAsBigint(data: Uint8Array, offset: number, length: number, seed: bigint): bigint {
  const out = new Uint32Array(2)
  const [lo, hi] = seedHalves(seed)
  xxh3_64_into(data, offset, length, lo, hi, out)
  return (BigInt(out[1]!) << 32n) | BigInt(out[0]!)
}

/** The bytes Dynamo hashes for one block: tokens as u32 LE, then sorted MM hashes as u64 LE. */
function blockBytes(tokens: number[], mmHashes: bigint[]): Uint8Array {
  const bytes = new Uint8Array(tokens.length * 4 + mmHashes.length * 8)
  const view = new DataView(bytes.buffer)
  for (const [i, token] of tokens.entries()) view.setUint32(i * 4, token, true)
  const sorted = [...mmHashes].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
  for (const [i, h] of sorted.entries()) view.setBigUint64(tokens.length * 4 + i * 8, h, true)
  return bytes
}

function vectorSeed(loraName: string | null): bigint {
  if (!loraName) return BASE_SEED
  return (BASE_SEED + xxh3_64(new TextEncoder().encode(loraName), 0n)) & U64_MASK
}

test('reference: XXH3-64(seed 1337) of u32 LE [1, 2, 3, 4]', (t) => {
  const data = blockBytes([1, 2, 3, 4], [])
  t.is(xxh3_64(data, 1337n), 14643705804678351452n)
  t.is(intoAsBigint(data, 0, 16, 1337n), 14643705804678351452n)
})

test('fixture: raw_hash of a utf8 string', (t) => {
  const { input_utf8, seed, xxh3_64: expected } = fixture.raw_hash
  t.is(xxh3_64(new TextEncoder().encode(input_utf8), BigInt(seed)), BigInt(expected))
})

for (const vector of fixture.vectors) {
  test(`fixture block hashes: ${vector.name}`, (t) => {
    const seed = vectorSeed(vector.lora_name)
    const fullBlocks = Math.floor(vector.tokens.length / vector.kv_block_size) // a partial tail is dropped
    t.is(fullBlocks, vector.expected.length)
    for (let b = 0; b < fullBlocks; b++) {
      const tokens = vector.tokens.slice(b * vector.kv_block_size, (b + 1) * vector.kv_block_size)
      const mm = vector.block_mm_infos?.[b]?.mm_objects.map((o) => BigInt(o.mm_hash)) ?? []
      const bytes = blockBytes(tokens, mm)
      const expected = BigInt(vector.expected[b]!)
      t.is(xxh3_64(bytes, seed), expected, `block ${b}`)
      // Same block at an odd offset inside a larger buffer, through the allocation-free API.
      const padded = new Uint8Array(bytes.length + 11).fill(0xa5)
      padded.set(bytes, 5)
      t.is(intoAsBigint(padded, 5, bytes.length, seed), expected, `block ${b} at offset 5`)
    }
  })
}

const random = splitmix64(0x0dd5eedn)
const SEEDS = [0n, 1n, 1337n, U64_MASK, 0x0123456789abcdefn, 0xffffffffn, 1n << 32n, random(), random(), random()]
const LENGTHS = [...Array.from({ length: 601 }, (_, i) => i), 1023, 1024, 1025, 2047, 2048, 4096, 5000, 70000]
const OFFSETS = [0, 1, 7, 61]
const pool = new Uint8Array(70000 + 64)
for (let i = 0; i < pool.length; i += 8) {
  const word = random()
  for (let j = 0; j < 8 && i + j < pool.length; j++) pool[i + j] = Number((word >> BigInt(8 * j)) & 0xffn)
}

for (const seed of SEEDS) {
  test(`oracle @node-rs/xxhash: lengths 0..600 and long, offsets ${OFFSETS.join('/')}, seed ${seed}`, (t) => {
    const mismatches: string[] = []
    for (const length of LENGTHS) {
      for (const offset of OFFSETS) {
        const slice = pool.subarray(offset, offset + length)
        const expected = xxh3.xxh64(Buffer.from(slice.buffer, slice.byteOffset, slice.byteLength), seed)
        const viaBigint = xxh3_64(slice, seed)
        const viaInto = intoAsBigint(pool, offset, length, seed)
        if (viaBigint !== expected || viaInto !== expected) {
          mismatches.push(`len ${length} offset ${offset}: bigint ${viaBigint} into ${viaInto} expected ${expected}`)
        }
      }
    }
    t.deepEqual(mismatches.slice(0, 10), [], `${mismatches.length} of ${LENGTHS.length * OFFSETS.length} differ`)
  })
}

test('long inputs: the cached seed-derived secret follows seed changes', (t) => {
  const data = pool.subarray(3, 3 + 3000)
  const buffer = Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  // Alternate seeds, including back to 0 (default secret) and seeds differing only in one half.
  for (const seed of [5n, 6n, 5n, 0n, 5n, 5n | (1n << 40n), 5n, U64_MASK, 5n]) {
    t.is(xxh3_64(data, seed), xxh3.xxh64(buffer, seed), `seed ${seed}`)
  }
})

test('xxh3_64_into writes only out[0..1] and does not read outside the range', (t) => {
  const data = pool.slice(0, 300)
  const out = new Uint32Array([1, 2, 3, 4])
  const expected = xxh3.xxh64(Buffer.from(data.subarray(20, 270)), 99n)
  // Poison the bytes around the range: the result must not change.
  data.fill(0xff, 0, 20)
  data.fill(0xff, 270)
  xxh3_64_into(data, 20, 250, 99, 0, out)
  t.is((BigInt(out[1]!) << 32n) | BigInt(out[0]!), expected)
  t.deepEqual([out[2], out[3]], [3, 4])
})

test('xxh3_64 rejects seeds outside u64', (t) => {
  const data = new Uint8Array(4)
  t.throws(() => xxh3_64(data, -1n), { instanceOf: RangeError })
  t.throws(() => xxh3_64(data, 1n << 64n), { instanceOf: RangeError })
  t.throws(() => xxh3_64(data, 1 as unknown as bigint), { instanceOf: TypeError })
  t.is(xxh3_64(data), xxh3.xxh64(Buffer.from(data), 0n))
})
