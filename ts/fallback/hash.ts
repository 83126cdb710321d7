// Dynamo's LocalBlockHash (SPEC 4) for the fallback: XXH3-64 over a block's tokens as u32 little-endian,
// followed by the block's multimodal object hashes sorted ascending as u64 little-endian. The seed carries
// the LoRA adapter and the cache salt; Eagle hashes overlapping windows of kvBlockSize + 1 tokens. Hashes
// are written as u64 pairs (u32 halves) into caller-owned arrays, so the hot path allocates nothing.
import type { BlockExtraInfo } from '../core/binding.js'
import { grownCapacity, HI, LITTLE_ENDIAN, LO, u64Pairs } from './msgpack.js'
import { xxh3_64_into } from './xxh3.js'

export const BASE_SEED = 1337
const TWO32 = 4294967296

const HASH_OUT = new Uint32Array(2)

/** seed = 1337 + xxh3_64(name bytes, 0), wrapping; into target.seedHi/seedLo. */
export function loraSeedFromBytes(b: Uint8Array, s: number, len: number, target: { seedHi: number; seedLo: number }): void {
  xxh3_64_into(b, s, len, 0, 0, HASH_OUT)
  const lo = HASH_OUT[0]! + BASE_SEED
  target.seedLo = lo >>> 0
  target.seedHi = (HASH_OUT[1]! + (lo >= TWO32 ? 1 : 0)) >>> 0
}

const utf8 = new TextEncoder()

/** The seed for a LoRA name given as a string (null or "" = base model). */
export function loraSeed(name: string | null, target: { seedHi: number; seedLo: number }): void {
  target.seedHi = 0
  target.seedLo = BASE_SEED
  if (name === null || name.length === 0) return
  const bytes = utf8.encode(name)
  loraSeedFromBytes(bytes, 0, bytes.length, target)
}

/**
 * The seed for a LoRA name and a cache salt (Dynamo 1.4+): 1337 + xxh3_64(lora, 0) + xxh3_64(salt, 1),
 * wrapping; null or "" leaves a term out, so with no salt this is loraSeed.
 */
export function saltSeed(loraName: string | null, cacheSalt: string | null, target: { seedHi: number; seedLo: number }): void {
  loraSeed(loraName, target)
  if (cacheSalt === null || cacheSalt.length === 0) return
  const bytes = utf8.encode(cacheSalt)
  xxh3_64_into(bytes, 0, bytes.length, 1, 0, HASH_OUT)
  const lo = HASH_OUT[0]! + target.seedLo
  target.seedLo = lo >>> 0
  target.seedHi = (HASH_OUT[1]! + target.seedHi + (lo >= TWO32 ? 1 : 0)) >>> 0
}

/** Adds a cache salt's term, xxh3_64(salt bytes, 1), to the seed in target (wrapping); "" adds none. */
export function addSaltFromBytes(b: Uint8Array, s: number, len: number, target: { seedHi: number; seedLo: number }): void {
  if (len === 0) return
  xxh3_64_into(b, s, len, 1, 0, HASH_OUT)
  const lo = HASH_OUT[0]! + target.seedLo
  target.seedLo = lo >>> 0
  target.seedHi = (HASH_OUT[1]! + target.seedHi + (lo >= TWO32 ? 1 : 0)) >>> 0
}

/** How many blocks `tokensLen` tokens make (an Eagle block needs kvBlockSize + 1 tokens). */
export function blockCount(tokensLen: number, kvBlockSize: number, eagle: boolean): number {
  return Math.floor((eagle ? Math.max(tokensLen - 1, 0) : tokensLen) / kvBlockSize)
}

let leScratch = new Uint8Array(1024)
let mmScratch = new Uint8Array(1024)

/** The bytes of tokens[0, n) as u32 little-endian (a view on little-endian hosts). */
export function tokenBytesLE(tokens: Uint32Array, n: number): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(tokens.buffer, tokens.byteOffset, n * 4)
  if (leScratch.length < n * 4) leScratch = new Uint8Array(grownCapacity(leScratch.length, n * 4))
  for (let i = 0; i < n; i++) {
    const v = tokens[i]!
    leScratch[4 * i] = v & 0xff
    leScratch[4 * i + 1] = (v >>> 8) & 0xff
    leScratch[4 * i + 2] = (v >>> 16) & 0xff
    leScratch[4 * i + 3] = v >>> 24
  }
  return leScratch
}

/**
 * The tokens hash of blocks 0..n-1 (block i = bytes [i*bs*4, (i+1)*bs*4) of `tokBytes`, or with `eagle`
 * [i*bs*4, (i+1)*bs*4 + 4), then its mm hashes sorted ascending as u64 LE) into `out` as u64 pairs.
 */
export function hashBlocks(
  tokBytes: Uint8Array,
  bs: number,
  n: number,
  seedHi: number,
  seedLo: number,
  mm: (BlockExtraInfo | null)[] | null,
  out: Uint32Array,
  eagle = false,
): void {
  const stride = bs * 4
  const window = eagle ? stride + 4 : stride
  for (let i = 0; i < n; i++) {
    const info = mm === null ? null : (mm[i] ?? null)
    if (info === null || info.mmObjects.length === 0) {
      xxh3_64_into(tokBytes, i * stride, window, seedLo, seedHi, HASH_OUT)
    } else {
      const hashes = info.mmObjects.map((o) => o.mmHash).sort((a, c) => (a < c ? -1 : a > c ? 1 : 0))
      const len = window + 8 * hashes.length
      if (mmScratch.length < len) mmScratch = new Uint8Array(grownCapacity(mmScratch.length, len))
      mmScratch.set(tokBytes.subarray(i * stride, i * stride + window))
      let at = window
      for (const h of hashes) {
        let lo = Number(h & 0xffffffffn)
        let hi = Number(h >> 32n)
        for (let k = 0; k < 4; k++, lo >>>= 8) mmScratch[at++] = lo & 0xff
        for (let k = 0; k < 4; k++, hi >>>= 8) mmScratch[at++] = hi & 0xff
      }
      xxh3_64_into(mmScratch, 0, len, seedLo, seedHi, HASH_OUT)
    }
    out[2 * i + LO] = HASH_OUT[0]!
    out[2 * i + HI] = HASH_OUT[1]!
  }
}

const seedCell = { seedHi: 0, seedLo: BASE_SEED }

export function computeBlockHashes(
  tokens: Uint32Array,
  kvBlockSize: number,
  loraName: string | null,
  blockMmInfos: (BlockExtraInfo | null)[] | null,
  cacheSalt: string | null = null,
  eagle = false,
): BigUint64Array {
  const n = blockCount(tokens.length, kvBlockSize, eagle)
  const out = new BigUint64Array(n)
  if (n === 0) return out
  saltSeed(loraName, cacheSalt, seedCell)
  const used = n * kvBlockSize + (eagle ? 1 : 0)
  hashBlocks(tokenBytesLE(tokens, used), kvBlockSize, n, seedCell.seedHi, seedCell.seedLo, blockMmInfos, u64Pairs(out), eagle)
  return out
}
