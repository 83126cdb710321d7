// XXH3-64 (seeded), written from the XXH3 specification, for the pure-TypeScript fallback.
//
// All 64-bit arithmetic runs on pairs of 32-bit halves held in plain numbers, because BigInt
// allocates on every operation. Low 32-bit products come from Math.imul; high halves of
// 32x32 products come from 16-bit splits, whose partial products stay exact in a double.
// 64-bit results flow through small Uint32Array scratch cells (stores there also wrap mod 2^32).
//
// Convention: every number passed to or returned from a helper is an int32 (`| 0`, the bit pattern
// of the u32 half). V8 keeps int32 values as Smis, while a u32 >= 2^31 crossing a call that was not
// inlined is boxed into a heap number, i.e. allocated. Values are made unsigned (`>>> 0`) only
// locally, where they are added.

// --- constants --------------------------------------------------------------------------------------

const PRIME32_1 = 0x9e3779b1
const PRIME32_2 = 0x85ebca77
const PRIME32_3 = 0xc2b2ae3d
// 64-bit primes as [lo, hi].
const PRIME64_1_LO = 0x85ebca87
const PRIME64_1_HI = 0x9e3779b1
const PRIME64_2_LO = 0x27d4eb4f
const PRIME64_2_HI = 0xc2b2ae3d
const PRIME64_3_LO = 0x9e3779f9
const PRIME64_3_HI = 0x165667b1
const PRIME64_4_LO = 0xc2b2ae63
const PRIME64_4_HI = 0x85ebca77
const PRIME64_5_LO = 0x165667c5
const PRIME64_5_HI = 0x27d4eb2f
const PRIME_MX1_LO = 0x9e3779f9
const PRIME_MX1_HI = 0x16566791
const PRIME_MX2_LO = 0x1e98df25
const PRIME_MX2_HI = 0x9fb21c65

const TWO_POW_32 = 4294967296

const SECRET_SIZE = 192
/** Only the first 136 bytes of the secret feed the 129..240 path (XXH3_SECRET_SIZE_MIN). */
const SECRET_SIZE_MIN = 136
const MIDSIZE_START_OFFSET = 3
const MIDSIZE_LAST_OFFSET = 17
const STRIPE_LEN = 64
const SECRET_CONSUME_RATE = 8
const STRIPES_PER_BLOCK = (SECRET_SIZE - STRIPE_LEN) / SECRET_CONSUME_RATE // 16
const BLOCK_LEN = STRIPE_LEN * STRIPES_PER_BLOCK // 1024
const SECRET_LASTACC_START = 7
const SECRET_MERGEACCS_START = 11

/** The XXH3 default secret (kSecret), 192 bytes. */
const K_SECRET = new Uint8Array([
  0xb8, 0xfe, 0x6c, 0x39, 0x23, 0xa4, 0x4b, 0xbe, 0x7c, 0x01, 0x81, 0x2c, 0xf7, 0x21, 0xad, 0x1c, 0xde, 0xd4, 0x6d, 0xe9, 0x83, 0x90, 0x97,
  0xdb, 0x72, 0x40, 0xa4, 0xa4, 0xb7, 0xb3, 0x67, 0x1f, 0xcb, 0x79, 0xe6, 0x4e, 0xcc, 0xc0, 0xe5, 0x78, 0x82, 0x5a, 0xd0, 0x7d, 0xcc, 0xff,
  0x72, 0x21, 0xb8, 0x08, 0x46, 0x74, 0xf7, 0x43, 0x24, 0x8e, 0xe0, 0x35, 0x90, 0xe6, 0x81, 0x3a, 0x26, 0x4c, 0x3c, 0x28, 0x52, 0xbb, 0x91,
  0xc3, 0x00, 0xcb, 0x88, 0xd0, 0x65, 0x8b, 0x1b, 0x53, 0x2e, 0xa3, 0x71, 0x64, 0x48, 0x97, 0xa2, 0x0d, 0xf9, 0x4e, 0x38, 0x19, 0xef, 0x46,
  0xa9, 0xde, 0xac, 0xd8, 0xa8, 0xfa, 0x76, 0x3f, 0xe3, 0x9c, 0x34, 0x3f, 0xf9, 0xdc, 0xbb, 0xc7, 0xc7, 0x0b, 0x4f, 0x1d, 0x8a, 0x51, 0xe0,
  0x4b, 0xcd, 0xb4, 0x59, 0x31, 0xc8, 0x9f, 0x7e, 0xc9, 0xd9, 0x78, 0x73, 0x64, 0xea, 0xc5, 0xac, 0x83, 0x34, 0xd3, 0xeb, 0xc3, 0xc5, 0x81,
  0xa0, 0xff, 0xfa, 0x13, 0x63, 0xeb, 0x17, 0x0d, 0xdd, 0x51, 0xb7, 0xf0, 0xda, 0x49, 0xd3, 0x16, 0x55, 0x26, 0x29, 0xd4, 0x68, 0x9e, 0x2b,
  0x16, 0xbe, 0x58, 0x7d, 0x47, 0xa1, 0xfc, 0x8f, 0xf8, 0xb8, 0xd1, 0x7a, 0xd0, 0x31, 0xce, 0x45, 0xcb, 0x3a, 0x8f, 0x95, 0x16, 0x04, 0x28,
  0xaf, 0xd7, 0xfb, 0xca, 0xbb, 0x4b, 0x40, 0x7e,
])

/**
 * Little-endian u32 of a secret at every byte offset. The algorithm reads the secret at unaligned
 * offsets (3 + 16k, 119, 121, 11 + 16k), so one table lookup replaces four byte loads and shifts.
 */
function secretWordTable(secret: Uint8Array, table: Uint32Array): Uint32Array {
  for (let i = 0; i + 4 <= secret.length; i++) {
    table[i] = secret[i]! | (secret[i + 1]! << 8) | (secret[i + 2]! << 16) | (secret[i + 3]! << 24)
  }
  return table
}

const DEFAULT_SECRET_WORDS = secretWordTable(K_SECRET, new Uint32Array(SECRET_SIZE - 3))

// The derived secret of the long path for the last non-zero seed: deriving costs a 192-byte pass,
// which repeated hashing of long inputs with one seed (the usual pattern) should pay once.
const customSecret = new Uint8Array(SECRET_SIZE)
const customSecretWords = new Uint32Array(SECRET_SIZE - 3)
let customSeedLo = 0
let customSeedHi = 0
let customSecretValid = false

// Scratch cells: H is the running 64-bit hash of the short/mid paths and of the merge step,
// ACC the eight 64-bit lanes of the long path as [lo0, hi0, lo1, hi1, ...].
const H = new Uint32Array(2)
const ACC = new Uint32Array(16)
const BIGINT_OUT = new Uint32Array(2)

// --- 32/64-bit helpers -------------------------------------------------------------------------------

/** Little-endian 32-bit word at data[p], as an int32. */
function read32(data: Uint8Array, p: number): number {
  return data[p]! | (data[p + 1]! << 8) | (data[p + 2]! << 16) | (data[p + 3]! << 24)
}

/** High 32 bits (as an int32) of the 64-bit product of two u32 given as int32 bit patterns. */
function mulHi32(a: number, b: number): number {
  const a0 = a & 0xffff
  const a1 = a >>> 16
  const b0 = b & 0xffff
  const b1 = b >>> 16
  // Each partial product is < 2^32, so exact; only the carries out of bit 32 matter.
  const cross1 = a1 * b0
  const cross2 = a0 * b1
  const mid = ((a0 * b0) >>> 16) + (cross1 & 0xffff) + (cross2 & 0xffff)
  return (a1 * b1 + (cross1 >>> 16) + (cross2 >>> 16) + (mid >>> 16)) | 0
}

function byteSwap32(x: number): number {
  return (x << 24) | ((x & 0xff00) << 8) | ((x >>> 8) & 0xff00) | (x >>> 24)
}

/** H += lo64(a * b) ^ hi64(a * b) for 64-bit a, b: XXH3's mul128_fold64, accumulated. */
function addMulFold64(aLo: number, aHi: number, bLo: number, bHi: number): void {
  const llLo = Math.imul(aLo, bLo) >>> 0
  const llHi = mulHi32(aLo, bLo) >>> 0
  const lhLo = Math.imul(aLo, bHi) >>> 0
  const lhHi = mulHi32(aLo, bHi) >>> 0
  const hlLo = Math.imul(aHi, bLo) >>> 0
  const hlHi = mulHi32(aHi, bLo) >>> 0
  const hhLo = Math.imul(aHi, bHi) >>> 0
  const hhHi = mulHi32(aHi, bHi) >>> 0
  // 128-bit product as four u32 words w0..w3; sums stay below 2^34, exact in a double.
  const t1 = llHi + lhLo + hlLo
  const w1 = t1 >>> 0
  const t2 = lhHi + hlHi + hhLo + (t1 - w1) / TWO_POW_32
  const w2 = t2 >>> 0
  const w3 = (hhHi + (t2 - w2) / TWO_POW_32) >>> 0
  const sumLo = H[0]! + ((llLo ^ w2) >>> 0)
  H[0] = sumLo
  H[1] = H[1]! + ((w1 ^ w3) >>> 0) + (sumLo > 0xffffffff ? 1 : 0)
}

/**
 * H += mul128_fold64(input ^ (secret + seed), input+8 ^ (secret+8 - seed)): XXH3's mix16B.
 * `s` indexes the byte-offset word table of the secret.
 */
function mix16B(data: Uint8Array, p: number, sw: Uint32Array, s: number, seedLo: number, seedHi: number): void {
  const k0 = sw[s]! + (seedLo >>> 0)
  const k0Hi = sw[s + 4]! + (seedHi >>> 0) + (k0 > 0xffffffff ? 1 : 0)
  const k1 = sw[s + 8]! - (seedLo >>> 0)
  const k1Hi = sw[s + 12]! - (seedHi >>> 0) - (k1 < 0 ? 1 : 0)
  // XOR keeps only the low 32 bits of these sums, which is the wrap we want.
  addMulFold64(read32(data, p) ^ k0, read32(data, p + 4) ^ k0Hi, read32(data, p + 8) ^ k1, read32(data, p + 12) ^ k1Hi)
}

/** H = length * PRIME64_1 (length may exceed 2^32 in principle, so both halves are kept). */
function initLengthTimesPrime1(length: number): void {
  const lenLo = length >>> 0
  const lenHi = Math.floor(length / TWO_POW_32) >>> 0
  H[0] = Math.imul(lenLo, PRIME64_1_LO)
  H[1] = mulHi32(lenLo, PRIME64_1_LO) + Math.imul(lenLo, PRIME64_1_HI) + Math.imul(lenHi, PRIME64_1_LO)
}

/** XXH3_avalanche of (lo, hi) into dst[0], dst[1]. */
function xxh3Avalanche(lo: number, hi: number, dst: Uint32Array): void {
  lo ^= hi >>> 5 // h ^= h >> 37
  const mLo = Math.imul(lo, PRIME_MX1_LO) // h *= PRIME_MX1
  const mHi = mulHi32(lo, PRIME_MX1_LO) + Math.imul(lo, PRIME_MX1_HI) + Math.imul(hi, PRIME_MX1_LO)
  dst[0] = mLo ^ mHi // h ^= h >> 32
  dst[1] = mHi
}

/** XXH64's avalanche, used by the 0..3-byte paths. */
function xxh64Avalanche(lo: number, hi: number, dst: Uint32Array): void {
  lo ^= hi >>> 1 // h ^= h >> 33
  let mLo = Math.imul(lo, PRIME64_2_LO) // h *= PRIME64_2
  let mHi = (mulHi32(lo, PRIME64_2_LO) + Math.imul(lo, PRIME64_2_HI) + Math.imul(hi, PRIME64_2_LO)) | 0
  lo = mLo ^ ((mLo >>> 29) | (mHi << 3)) // h ^= h >> 29
  hi = mHi ^ (mHi >>> 29)
  mLo = Math.imul(lo, PRIME64_3_LO) // h *= PRIME64_3
  mHi = mulHi32(lo, PRIME64_3_LO) + Math.imul(lo, PRIME64_3_HI) + Math.imul(hi, PRIME64_3_LO)
  dst[0] = mLo ^ mHi // h ^= h >> 32
  dst[1] = mHi
}

/** XXH3's rrmxmx finalizer of the 4..8-byte path. */
function rrmxmx(lo: number, hi: number, length: number, dst: Uint32Array): void {
  // h ^= rotl64(h, 49) ^ rotl64(h, 24)
  const r49Lo = (hi << 17) | (lo >>> 15)
  const r49Hi = (lo << 17) | (hi >>> 15)
  const r24Lo = (lo << 24) | (hi >>> 8)
  const r24Hi = (hi << 24) | (lo >>> 8)
  lo ^= r49Lo ^ r24Lo
  hi ^= r49Hi ^ r24Hi
  let mLo = Math.imul(lo, PRIME_MX2_LO) // h *= PRIME_MX2
  let mHi = (mulHi32(lo, PRIME_MX2_LO) + Math.imul(lo, PRIME_MX2_HI) + Math.imul(hi, PRIME_MX2_LO)) | 0
  lo = mLo ^ ((mHi >>> 3) + length) // h ^= (h >> 35) + len; cannot carry: < 2^29 + 8
  hi = mHi
  mLo = Math.imul(lo, PRIME_MX2_LO) // h *= PRIME_MX2
  mHi = (mulHi32(lo, PRIME_MX2_LO) + Math.imul(lo, PRIME_MX2_HI) + Math.imul(hi, PRIME_MX2_LO)) | 0
  dst[0] = mLo ^ ((mLo >>> 28) | (mHi << 4)) // h ^= h >> 28
  dst[1] = mHi ^ (mHi >>> 28)
}

// --- length classes ----------------------------------------------------------------------------------

function hashLen0(seedLo: number, seedHi: number, out: Uint32Array): void {
  const sw = DEFAULT_SECRET_WORDS
  xxh64Avalanche(seedLo ^ sw[56]! ^ sw[64]!, seedHi ^ sw[60]! ^ sw[68]!, out)
}

function hashLen1To3(data: Uint8Array, p: number, length: number, seedLo: number, seedHi: number, out: Uint32Array): void {
  const sw = DEFAULT_SECRET_WORDS
  const c1 = data[p]!
  const c2 = data[p + (length >>> 1)]!
  const c3 = data[p + length - 1]!
  const combined = ((c1 << 16) | (c2 << 24) | c3 | (length << 8)) >>> 0
  const flipLo = ((sw[0]! ^ sw[4]!) >>> 0) + (seedLo >>> 0) // bitflip = (u64)(secret32 ^ secret32+4) + seed
  const flipHi = (seedHi + (flipLo > 0xffffffff ? 1 : 0)) | 0
  xxh64Avalanche(combined ^ flipLo, flipHi, out)
}

function hashLen4To8(data: Uint8Array, p: number, length: number, seedLo: number, seedHi: number, out: Uint32Array): void {
  const sw = DEFAULT_SECRET_WORDS
  const sHi = (seedHi ^ byteSwap32(seedLo)) >>> 0 // seed ^= (u64)swap32((u32)seed) << 32
  const flip = ((sw[8]! ^ sw[16]!) >>> 0) - (seedLo >>> 0) // bitflip = (secret64+8 ^ secret64+16) - seed
  const flipHi = ((sw[12]! ^ sw[20]!) >>> 0) - sHi - (flip < 0 ? 1 : 0)
  // input64 = last4 + (first4 << 32)
  rrmxmx(read32(data, p + length - 4) ^ flip, read32(data, p) ^ flipHi, length, out)
}

function hashLen9To16(data: Uint8Array, p: number, length: number, seedLo: number, seedHi: number, out: Uint32Array): void {
  const sw = DEFAULT_SECRET_WORDS
  const f1 = ((sw[24]! ^ sw[32]!) >>> 0) + (seedLo >>> 0) // bitflip1 = (secret64+24 ^ secret64+32) + seed
  const f1Hi = ((sw[28]! ^ sw[36]!) >>> 0) + (seedHi >>> 0) + (f1 > 0xffffffff ? 1 : 0)
  const f2 = ((sw[40]! ^ sw[48]!) >>> 0) - (seedLo >>> 0) // bitflip2 = (secret64+40 ^ secret64+48) - seed
  const f2Hi = ((sw[44]! ^ sw[52]!) >>> 0) - (seedHi >>> 0) - (f2 < 0 ? 1 : 0)
  const inLoLo = read32(data, p) ^ f1
  const inLoHi = read32(data, p + 4) ^ f1Hi
  const inHiLo = read32(data, p + length - 8) ^ f2
  const inHiHi = read32(data, p + length - 4) ^ f2Hi
  // acc = len + swap64(inputLo) + inputHi + mul128_fold64(inputLo, inputHi)
  const sLo = length + (byteSwap32(inLoHi) >>> 0) + (inHiLo >>> 0) // < 2^34, exact
  const sLoWrapped = sLo >>> 0
  H[0] = sLoWrapped
  H[1] = byteSwap32(inLoLo) + inHiHi + (sLo - sLoWrapped) / TWO_POW_32
  addMulFold64(inLoLo, inLoHi, inHiLo, inHiHi)
  xxh3Avalanche(H[0]! | 0, H[1]! | 0, out)
}

function hashLen17To128(data: Uint8Array, p: number, length: number, seedLo: number, seedHi: number, out: Uint32Array): void {
  const sw = DEFAULT_SECRET_WORDS
  initLengthTimesPrime1(length)
  // Pair i mixes the i-th 16 bytes from the front and from the back with secret[32i] and
  // secret[32i + 16]: 1 pair up to 32 bytes, 2 up to 64, 3 up to 96, 4 up to 128. A loop rather
  // than the unrolled form keeps two call sites, so V8 inlines them instead of running out of budget.
  const pairs = ((length - 1) >>> 5) + 1
  const end = p + length
  for (let i = 0; i < pairs; i++) {
    mix16B(data, p + 16 * i, sw, 32 * i, seedLo, seedHi)
    mix16B(data, end - 16 - 16 * i, sw, 32 * i + 16, seedLo, seedHi)
  }
  xxh3Avalanche(H[0]! | 0, H[1]! | 0, out)
}

function hashLen129To240(data: Uint8Array, p: number, length: number, seedLo: number, seedHi: number, out: Uint32Array): void {
  const sw = DEFAULT_SECRET_WORDS
  initLengthTimesPrime1(length)
  for (let i = 0; i < 8; i++) mix16B(data, p + 16 * i, sw, 16 * i, seedLo, seedHi)
  xxh3Avalanche(H[0]! | 0, H[1]! | 0, H)
  // Rounds 8.. restart at secret[3] (XXH3_MIDSIZE_STARTOFFSET), after an intermediate avalanche.
  const rounds = length >>> 4
  for (let i = 8; i < rounds; i++) {
    mix16B(data, p + 16 * i, sw, 16 * (i - 8) + MIDSIZE_START_OFFSET, seedLo, seedHi)
  }
  mix16B(data, p + length - 16, sw, SECRET_SIZE_MIN - MIDSIZE_LAST_OFFSET, seedLo, seedHi)
  xxh3Avalanche(H[0]! | 0, H[1]! | 0, out)
}

/** One 64-byte stripe into the eight lanes: XXH3's accumulate_512 (scalar form). */
function accumulateStripe(data: Uint8Array, p: number, sw: Uint32Array, s: number): void {
  for (let i = 0; i < 8; i++) {
    const dLo = read32(data, p + 8 * i)
    const dHi = read32(data, p + 8 * i + 4)
    const kLo = dLo ^ sw[s + 8 * i]!
    const kHi = dHi ^ sw[s + 8 * i + 4]!
    // acc[i ^ 1] += data: the swap keeps input bits in the lanes even if the product is zero.
    const j = (i ^ 1) << 1
    const aLo = ACC[j]! + (dLo >>> 0)
    ACC[j] = aLo
    ACC[j + 1] = ACC[j + 1]! + dHi + (aLo > 0xffffffff ? 1 : 0)
    // acc[i] += lo32(key) * hi32(key), a full 32x32->64 product.
    const k = i << 1
    const bLo = ACC[k]! + (Math.imul(kLo, kHi) >>> 0)
    ACC[k] = bLo
    ACC[k + 1] = ACC[k + 1]! + (mulHi32(kLo, kHi) >>> 0) + (bLo > 0xffffffff ? 1 : 0)
  }
}

/** XXH3's scrambleAcc: acc = (acc ^ (acc >> 47) ^ secret) * PRIME32_1 on every lane. */
function scrambleAccumulators(sw: Uint32Array, s: number): void {
  for (let i = 0; i < 8; i++) {
    const k = i << 1
    const hi = ACC[k + 1]!
    const lo = ACC[k]! ^ (hi >>> 15) ^ sw[s + 8 * i]!
    const xHi = hi ^ sw[s + 8 * i + 4]!
    ACC[k] = Math.imul(lo, PRIME32_1)
    ACC[k + 1] = mulHi32(lo, PRIME32_1) + Math.imul(xHi, PRIME32_1)
  }
}

/** The seed-derived secret: each 16-byte pair of kSecret gets (+seed, -seed). Cached per last seed. */
function derivedSecretWords(seedLo: number, seedHi: number): Uint32Array {
  if (customSecretValid && customSeedLo === seedLo && customSeedHi === seedHi) return customSecretWords
  const base = DEFAULT_SECRET_WORDS
  for (let i = 0; i < SECRET_SIZE; i += 16) {
    const a = base[i]! + (seedLo >>> 0)
    const aHi = base[i + 4]! + (seedHi >>> 0) + (a > 0xffffffff ? 1 : 0)
    const b = base[i + 8]! - (seedLo >>> 0)
    const bHi = base[i + 12]! - (seedHi >>> 0) - (b < 0 ? 1 : 0)
    writeLE32(customSecret, i, a)
    writeLE32(customSecret, i + 4, aHi)
    writeLE32(customSecret, i + 8, b)
    writeLE32(customSecret, i + 12, bHi)
  }
  secretWordTable(customSecret, customSecretWords)
  customSeedLo = seedLo
  customSeedHi = seedHi
  customSecretValid = true
  return customSecretWords
}

function writeLE32(bytes: Uint8Array, p: number, v: number): void {
  bytes[p] = v
  bytes[p + 1] = v >>> 8
  bytes[p + 2] = v >>> 16
  bytes[p + 3] = v >>> 24
}

function hashLong(data: Uint8Array, p: number, length: number, seedLo: number, seedHi: number, out: Uint32Array): void {
  // Seed 0 would derive kSecret itself, so it skips the derivation.
  const sw = seedLo === 0 && seedHi === 0 ? DEFAULT_SECRET_WORDS : derivedSecretWords(seedLo, seedHi)
  ACC[0] = PRIME32_3
  ACC[1] = 0
  ACC[2] = PRIME64_1_LO
  ACC[3] = PRIME64_1_HI
  ACC[4] = PRIME64_2_LO
  ACC[5] = PRIME64_2_HI
  ACC[6] = PRIME64_3_LO
  ACC[7] = PRIME64_3_HI
  ACC[8] = PRIME64_4_LO
  ACC[9] = PRIME64_4_HI
  ACC[10] = PRIME32_2
  ACC[11] = 0
  ACC[12] = PRIME64_5_LO
  ACC[13] = PRIME64_5_HI
  ACC[14] = PRIME32_1
  ACC[15] = 0

  // Full blocks, each followed by a scramble; the last byte always belongs to the final partial block.
  const blocks = Math.floor((length - 1) / BLOCK_LEN)
  for (let b = 0; b < blocks; b++) {
    const blockStart = p + b * BLOCK_LEN
    for (let n = 0; n < STRIPES_PER_BLOCK; n++) {
      accumulateStripe(data, blockStart + n * STRIPE_LEN, sw, n * SECRET_CONSUME_RATE)
    }
    scrambleAccumulators(sw, SECRET_SIZE - STRIPE_LEN)
  }
  const tailStart = p + blocks * BLOCK_LEN
  const tailStripes = Math.floor((length - 1 - blocks * BLOCK_LEN) / STRIPE_LEN)
  for (let n = 0; n < tailStripes; n++) {
    accumulateStripe(data, tailStart + n * STRIPE_LEN, sw, n * SECRET_CONSUME_RATE)
  }
  // The last 64 bytes, overlapping the previous stripe when the length is not a multiple of 64.
  accumulateStripe(data, p + length - STRIPE_LEN, sw, SECRET_SIZE - STRIPE_LEN - SECRET_LASTACC_START)

  // mergeAccs: start = len * PRIME64_1, add four mul128_fold64 of lane pairs, then avalanche.
  initLengthTimesPrime1(length)
  for (let i = 0; i < 4; i++) {
    const s = SECRET_MERGEACCS_START + 16 * i
    const k = i << 2
    addMulFold64(ACC[k]! ^ sw[s]!, ACC[k + 1]! ^ sw[s + 4]!, ACC[k + 2]! ^ sw[s + 8]!, ACC[k + 3]! ^ sw[s + 12]!)
  }
  xxh3Avalanche(H[0]! | 0, H[1]! | 0, out)
}

// --- API ---------------------------------------------------------------------------------------------

/**
 * XXH3-64 of data[offset, offset+length) with a u64 seed given as two u32 halves; writes [lo, hi]
 * (u32 each) into out[0], out[1]. No allocation per call on the common paths (<= 240 bytes); long
 * inputs with a non-zero seed may cache the derived secret for the last seed used.
 */
export function xxh3_64_into(data: Uint8Array, offset: number, length: number, seedLo: number, seedHi: number, out: Uint32Array): void {
  seedLo |= 0
  seedHi |= 0
  if (length <= 16) {
    if (length > 8) hashLen9To16(data, offset, length, seedLo, seedHi, out)
    else if (length >= 4) hashLen4To8(data, offset, length, seedLo, seedHi, out)
    else if (length > 0) hashLen1To3(data, offset, length, seedLo, seedHi, out)
    else hashLen0(seedLo, seedHi, out)
  } else if (length <= 128) {
    hashLen17To128(data, offset, length, seedLo, seedHi, out)
  } else if (length <= 240) {
    hashLen129To240(data, offset, length, seedLo, seedHi, out)
  } else {
    hashLong(data, offset, length, seedLo, seedHi, out)
  }
}

const U64_MAX = (1n << 64n) - 1n

/** Convenience: XXH3-64 as a bigint; seed is a bigint 0..2^64-1 (default 0n). */
export function xxh3_64(data: Uint8Array, seed: bigint = 0n): bigint {
  if (typeof seed !== 'bigint') throw new TypeError(`seed must be a bigint, got ${typeof seed}`)
  if (seed < 0n || seed > U64_MAX) throw new RangeError(`seed must be within 0..2^64-1, got ${seed}`)
  xxh3_64_into(data, 0, data.length, Number(seed & 0xffffffffn), Number(seed >> 32n), BIGINT_OUT)
  return (BigInt(BIGINT_OUT[1]!) << 32n) | BigInt(BIGINT_OUT[0]!)
}
