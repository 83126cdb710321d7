// A small msgpack reader and writer for the fallback (SPEC 2.2 decoder rules, rmp-serde's minimal forms).
//
// Reader: the input is untrusted, so `validate` walks a whole value once, checking every header against
// the bytes that remain (never allocating from a claim), the reserved marker 0xc1 and the nesting depth.
// After a successful `validate` the other readers run over known-good bytes: they look at one value at a
// position and report through the shared `lastRead` object, so nothing is allocated per value.
//
// Writer: `ByteWriter` appends into one growing buffer that callers reuse across calls. u64 values are
// passed as two u32 halves (hi, lo) so the hot path never touches BigInt.

/** The batch (or any top-level value) is level 1; a value deeper than this is malformed. */
export const MAX_DEPTH = 64

/** Whether u32 words of a u64 in memory are [lo, hi] (little-endian host) or [hi, lo]. */
export const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1
/** Index of the low / high u32 half of element i in a Uint32Array view of a BigUint64Array: 2i + LO / 2i + HI. */
export const LO = LITTLE_ENDIAN ? 0 : 1
export const HI = LITTLE_ENDIAN ? 1 : 0

/** A Uint32Array view of a BigUint64Array (element i = pair [2i + LO], [2i + HI]). */
export function u64Pairs(a: BigUint64Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length * 2)
}

/** The capacity a reused scratch array grows to when it must hold `need` elements: doubling, at least 16. */
export function grownCapacity(cur: number, need: number): number {
  let n = Math.max(cur, 16)
  while (n < need) n *= 2
  return n
}

const TWO32 = 4294967296

// ---------------------------------------------------------------------------------------------------
// validation

const pendingChildren = new Float64Array(MAX_DEPTH + 2)

/**
 * After `validate`: where the first 4 child values of the top-level container start (-1 past its end), so
 * that a batch's dp rank is found without walking the events again.
 */
export const topChildAt = new Int32Array(4)

/**
 * Checks the value starting at `pos` whole: every header fits in `end`, no 0xc1, no value deeper than
 * MAX_DEPTH (the value at `pos` is level `level`). Returns the position after the value, or -1.
 */
export function validate(b: Uint8Array, pos: number, end: number, level = 1): number {
  // pendingChildren[k] = values still to read in the k-th open container; the next value is at level sp + level.
  let sp = 0
  let topTotal = 0
  topChildAt.fill(-1)
  if (level > MAX_DEPTH) return -1
  for (;;) {
    if (pos >= end) return -1
    if (sp === 1) {
      const k = topTotal - pendingChildren[0]!
      if (k < 4) topChildAt[k] = pos
    }
    const t = b[pos++]!
    let count = -1 // >= 0: a container with this many child values
    if (t < 0x80) {
      // positive fixint
    } else if (t < 0x90) {
      count = (t & 0x0f) * 2
    } else if (t < 0xa0) {
      count = t & 0x0f
    } else if (t < 0xc0) {
      pos += t & 0x1f
    } else if (t >= 0xe0) {
      // negative fixint
    } else {
      switch (t) {
        case 0xc0:
        case 0xc2:
        case 0xc3:
          break
        case 0xc1:
          return -1
        case 0xc4: // bin8
        case 0xd9: // str8
          if (pos + 1 > end) return -1
          pos += 1 + b[pos]!
          break
        case 0xc5:
        case 0xda:
          if (pos + 2 > end) return -1
          pos += 2 + ((b[pos]! << 8) | b[pos + 1]!)
          break
        case 0xc6:
        case 0xdb:
          if (pos + 4 > end) return -1
          pos += 4 + be32(b, pos)
          break
        case 0xc7: // ext8
          if (pos + 1 > end) return -1
          pos += 2 + b[pos]!
          break
        case 0xc8:
          if (pos + 2 > end) return -1
          pos += 3 + ((b[pos]! << 8) | b[pos + 1]!)
          break
        case 0xc9:
          if (pos + 4 > end) return -1
          pos += 5 + be32(b, pos)
          break
        case 0xca:
        case 0xce:
        case 0xd2:
          pos += 4
          break
        case 0xcb:
        case 0xcf:
        case 0xd3:
          pos += 8
          break
        case 0xcc:
        case 0xd0:
          pos += 1
          break
        case 0xcd:
        case 0xd1:
          pos += 2
          break
        case 0xd4:
          pos += 2
          break
        case 0xd5:
          pos += 3
          break
        case 0xd6:
          pos += 5
          break
        case 0xd7:
          pos += 9
          break
        case 0xd8:
          pos += 17
          break
        case 0xdc:
          if (pos + 2 > end) return -1
          count = (b[pos]! << 8) | b[pos + 1]!
          pos += 2
          break
        case 0xdd:
          if (pos + 4 > end) return -1
          count = be32(b, pos)
          pos += 4
          break
        case 0xde:
          if (pos + 2 > end) return -1
          count = ((b[pos]! << 8) | b[pos + 1]!) * 2
          pos += 2
          break
        case 0xdf:
          if (pos + 4 > end) return -1
          count = be32(b, pos) * 2
          pos += 4
          break
      }
    }
    if (pos > end) return -1
    if (count > 0) {
      // every child takes at least one byte: a larger claim is malformed before anything is believed
      if (count > end - pos) return -1
      if (sp + level + 1 > MAX_DEPTH) return -1
      if (sp === 0) topTotal = count
      pendingChildren[sp++] = count
      continue
    }
    // a complete value: close every container it completes
    while (sp > 0) {
      const left = pendingChildren[sp - 1]! - 1
      if (left > 0) {
        pendingChildren[sp - 1] = left
        break
      }
      sp--
    }
    if (sp === 0) return pos
  }
}

// ---------------------------------------------------------------------------------------------------
// readers over validated bytes

/** What the readers below found, filled in place (one shared object: no allocation per value). */
export const lastRead = { count: 0, len: 0, hi: 0, lo: 0, next: 0 }

export function be32(b: Uint8Array, p: number): number {
  return ((b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!) >>> 0
}

/** Position after the (validated) value at p. */
export function skip(b: Uint8Array, p: number): number {
  let pending = 1
  while (pending > 0) {
    pending--
    const t = b[p++]!
    if (t < 0x80) continue
    if (t < 0x90) {
      pending += (t & 0x0f) * 2
      continue
    }
    if (t < 0xa0) {
      pending += t & 0x0f
      continue
    }
    if (t < 0xc0) {
      p += t & 0x1f
      continue
    }
    if (t >= 0xe0) continue
    switch (t) {
      case 0xc4:
      case 0xd9:
        p += 1 + b[p]!
        break
      case 0xc5:
      case 0xda:
        p += 2 + ((b[p]! << 8) | b[p + 1]!)
        break
      case 0xc6:
      case 0xdb:
        p += 4 + be32(b, p)
        break
      case 0xc7:
        p += 2 + b[p]!
        break
      case 0xc8:
        p += 3 + ((b[p]! << 8) | b[p + 1]!)
        break
      case 0xc9:
        p += 5 + be32(b, p)
        break
      case 0xca:
      case 0xce:
      case 0xd2:
        p += 4
        break
      case 0xcb:
      case 0xcf:
      case 0xd3:
        p += 8
        break
      case 0xcc:
      case 0xd0:
        p += 1
        break
      case 0xcd:
      case 0xd1:
        p += 2
        break
      case 0xd4:
        p += 2
        break
      case 0xd5:
        p += 3
        break
      case 0xd6:
        p += 5
        break
      case 0xd7:
        p += 9
        break
      case 0xd8:
        p += 17
        break
      case 0xdc:
        pending += (b[p]! << 8) | b[p + 1]!
        p += 2
        break
      case 0xdd:
        pending += be32(b, p)
        p += 4
        break
      case 0xde:
        pending += ((b[p]! << 8) | b[p + 1]!) * 2
        p += 2
        break
      case 0xdf:
        pending += be32(b, p) * 2
        p += 4
        break
      default: // c0 nil, c2/c3 bool (c1 never passes validate)
        break
    }
  }
  return p
}

/** If the value at p is an array: lastRead.count = its length; returns the position of its first element. Else -1. */
export function arrayAt(b: Uint8Array, p: number): number {
  const t = b[p]!
  if ((t & 0xf0) === 0x90) {
    lastRead.count = t & 0x0f
    return p + 1
  }
  if (t === 0xdc) {
    lastRead.count = (b[p + 1]! << 8) | b[p + 2]!
    return p + 3
  }
  if (t === 0xdd) {
    lastRead.count = be32(b, p + 1)
    return p + 5
  }
  return -1
}

/** If the value at p is a map: lastRead.count = its number of pairs; returns the position of its first key. Else -1. */
export function mapAt(b: Uint8Array, p: number): number {
  const t = b[p]!
  if ((t & 0xf0) === 0x80) {
    lastRead.count = t & 0x0f
    return p + 1
  }
  if (t === 0xde) {
    lastRead.count = (b[p + 1]! << 8) | b[p + 2]!
    return p + 3
  }
  if (t === 0xdf) {
    lastRead.count = be32(b, p + 1)
    return p + 5
  }
  return -1
}

/** If the value at p is a str: lastRead.len = its byte length; returns the position of its bytes. Else -1. */
export function strAt(b: Uint8Array, p: number): number {
  const t = b[p]!
  if ((t & 0xe0) === 0xa0) {
    lastRead.len = t & 0x1f
    return p + 1
  }
  if (t === 0xd9) {
    lastRead.len = b[p + 1]!
    return p + 2
  }
  if (t === 0xda) {
    lastRead.len = (b[p + 1]! << 8) | b[p + 2]!
    return p + 3
  }
  if (t === 0xdb) {
    lastRead.len = be32(b, p + 1)
    return p + 5
  }
  return -1
}

/** If the value at p is a bin: lastRead.len = its byte length; returns the position of its bytes. Else -1. */
export function binAt(b: Uint8Array, p: number): number {
  const t = b[p]!
  if (t === 0xc4) {
    lastRead.len = b[p + 1]!
    return p + 2
  }
  if (t === 0xc5) {
    lastRead.len = (b[p + 1]! << 8) | b[p + 2]!
    return p + 3
  }
  if (t === 0xc6) {
    lastRead.len = be32(b, p + 1)
    return p + 5
  }
  return -1
}

export const NOT_INT = 0
export const INT_NONNEG = 1
export const INT_NEG = 2

/**
 * If the value at p is a msgpack integer (any width or signedness; floats are never integers): returns
 * INT_NONNEG or INT_NEG with lastRead.hi/lastRead.lo = its u64 bits (two's complement for negatives) and lastRead.next = the
 * position after it. Else NOT_INT.
 */
export function intAt(b: Uint8Array, p: number): number {
  const t = b[p]!
  if (t < 0x80) {
    lastRead.hi = 0
    lastRead.lo = t
    lastRead.next = p + 1
    return INT_NONNEG
  }
  if (t >= 0xe0) {
    lastRead.hi = 0xffffffff
    lastRead.lo = (t | 0xffffff00) >>> 0
    lastRead.next = p + 1
    return INT_NEG
  }
  switch (t) {
    case 0xcc:
      lastRead.hi = 0
      lastRead.lo = b[p + 1]!
      lastRead.next = p + 2
      return INT_NONNEG
    case 0xcd:
      lastRead.hi = 0
      lastRead.lo = (b[p + 1]! << 8) | b[p + 2]!
      lastRead.next = p + 3
      return INT_NONNEG
    case 0xce:
      lastRead.hi = 0
      lastRead.lo = be32(b, p + 1)
      lastRead.next = p + 5
      return INT_NONNEG
    case 0xcf:
      lastRead.hi = be32(b, p + 1)
      lastRead.lo = be32(b, p + 5)
      lastRead.next = p + 9
      return INT_NONNEG
    case 0xd0: {
      const v = (b[p + 1]! << 24) >> 24
      lastRead.lo = v >>> 0
      lastRead.hi = v < 0 ? 0xffffffff : 0
      lastRead.next = p + 2
      return v < 0 ? INT_NEG : INT_NONNEG
    }
    case 0xd1: {
      const v = (((b[p + 1]! << 8) | b[p + 2]!) << 16) >> 16
      lastRead.lo = v >>> 0
      lastRead.hi = v < 0 ? 0xffffffff : 0
      lastRead.next = p + 3
      return v < 0 ? INT_NEG : INT_NONNEG
    }
    case 0xd2: {
      const v = be32(b, p + 1) | 0
      lastRead.lo = v >>> 0
      lastRead.hi = v < 0 ? 0xffffffff : 0
      lastRead.next = p + 5
      return v < 0 ? INT_NEG : INT_NONNEG
    }
    case 0xd3: {
      const hi = be32(b, p + 1)
      lastRead.hi = hi
      lastRead.lo = be32(b, p + 5)
      lastRead.next = p + 9
      return hi >= 0x80000000 ? INT_NEG : INT_NONNEG
    }
    default:
      return NOT_INT
  }
}

/** The u64 hi * 2^32 + lo as a bigint. */
export function bigFromHalves(hi: number, lo: number): bigint {
  return hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo)
}

/** The integer last read (lastRead.hi/lastRead.lo) as a bigint (u64 bits). */
export function lastReadBig(): bigint {
  return bigFromHalves(lastRead.hi, lastRead.lo)
}

/** Whether b[p, p+len) equals the ASCII string `s`. */
export function bytesEq(b: Uint8Array, p: number, len: number, s: Uint8Array): boolean {
  if (len !== s.length) return false
  for (let i = 0; i < len; i++) if (b[p + i] !== s[i]) return false
  return true
}

/** Strict UTF-8 check of b[p, end) (as Rust's from_utf8: no overlongs, no surrogates, <= U+10FFFF). */
export function isUtf8(b: Uint8Array, p: number, end: number): boolean {
  while (p < end) {
    const c = b[p]!
    if (c < 0x80) {
      p++
      continue
    }
    if (c >= 0xc2 && c <= 0xdf) {
      if (p + 1 >= end || (b[p + 1]! & 0xc0) !== 0x80) return false
      p += 2
    } else if (c >= 0xe0 && c <= 0xef) {
      if (p + 2 >= end) return false
      const c1 = b[p + 1]!
      if ((c1 & 0xc0) !== 0x80 || (b[p + 2]! & 0xc0) !== 0x80) return false
      if (c === 0xe0 && c1 < 0xa0) return false // overlong
      if (c === 0xed && c1 >= 0xa0) return false // surrogate
      p += 3
    } else if (c >= 0xf0 && c <= 0xf4) {
      if (p + 3 >= end) return false
      const c1 = b[p + 1]!
      if ((c1 & 0xc0) !== 0x80 || (b[p + 2]! & 0xc0) !== 0x80 || (b[p + 3]! & 0xc0) !== 0x80) return false
      if (c === 0xf0 && c1 < 0x90) return false // overlong
      if (c === 0xf4 && c1 >= 0x90) return false // > U+10FFFF
      p += 4
    } else {
      return false
    }
  }
  return true
}

export const ascii = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0))

// ---------------------------------------------------------------------------------------------------
// writer

const utf8Encoder = new TextEncoder()

/** Appends bytes into one growing buffer; `reset()` and reuse it across calls. */
export class ByteWriter {
  buf: Uint8Array
  pos = 0

  constructor(capacity = 4096) {
    this.buf = new Uint8Array(capacity)
  }

  reset(): void {
    this.pos = 0
  }

  /** Makes room for n more bytes. */
  ensure(n: number): void {
    if (this.pos + n > this.buf.length) this.grow(n)
  }

  private grow(n: number): void {
    let cap = this.buf.length * 2
    while (cap < this.pos + n) cap *= 2
    const next = new Uint8Array(cap)
    next.set(this.buf.subarray(0, this.pos))
    this.buf = next
  }

  /** A copy of what was written, as a Buffer. */
  toBuffer(): Buffer {
    const out = Buffer.allocUnsafe(this.pos)
    out.set(this.buf.subarray(0, this.pos))
    return out
  }

  byte(v: number): void {
    if (this.pos >= this.buf.length) this.grow(1)
    this.buf[this.pos++] = v
  }

  bytes(src: Uint8Array, start = 0, end = src.length): void {
    const n = end - start
    if (this.pos + n > this.buf.length) this.grow(n)
    const buf = this.buf
    let p = this.pos
    if (n <= 32) {
      for (let i = start; i < end; i++) buf[p++] = src[i]!
    } else {
      buf.set(src.subarray(start, end), p)
      p += n
    }
    this.pos = p
  }

  be16(v: number): void {
    this.ensure(2)
    const buf = this.buf
    buf[this.pos++] = v >>> 8
    buf[this.pos++] = v & 0xff
  }

  be32(v: number): void {
    this.ensure(4)
    const buf = this.buf
    let p = this.pos
    buf[p++] = v >>> 24
    buf[p++] = (v >>> 16) & 0xff
    buf[p++] = (v >>> 8) & 0xff
    buf[p++] = v & 0xff
    this.pos = p
  }

  le32(v: number): void {
    this.ensure(4)
    const buf = this.buf
    let p = this.pos
    buf[p++] = v & 0xff
    buf[p++] = (v >>> 8) & 0xff
    buf[p++] = (v >>> 16) & 0xff
    buf[p++] = v >>> 24
    this.pos = p
  }

  // --- msgpack, minimal forms as rmp-serde writes them ---

  /** An unsigned integer given as u32 halves, in its smallest unsigned form. */
  uint(hi: number, lo: number): void {
    if (this.pos + 9 > this.buf.length) this.grow(9)
    const buf = this.buf
    let p = this.pos
    if (hi === 0) {
      if (lo < 0x80) {
        buf[p++] = lo
      } else if (lo <= 0xff) {
        buf[p++] = 0xcc
        buf[p++] = lo
      } else if (lo <= 0xffff) {
        buf[p++] = 0xcd
        buf[p++] = lo >>> 8
        buf[p++] = lo & 0xff
      } else {
        buf[p++] = 0xce
        buf[p++] = lo >>> 24
        buf[p++] = (lo >>> 16) & 0xff
        buf[p++] = (lo >>> 8) & 0xff
        buf[p++] = lo & 0xff
      }
    } else {
      buf[p++] = 0xcf
      buf[p++] = hi >>> 24
      buf[p++] = (hi >>> 16) & 0xff
      buf[p++] = (hi >>> 8) & 0xff
      buf[p++] = hi & 0xff
      buf[p++] = lo >>> 24
      buf[p++] = (lo >>> 16) & 0xff
      buf[p++] = (lo >>> 8) & 0xff
      buf[p++] = lo & 0xff
    }
    this.pos = p
  }

  /** An unsigned integer 0..2^53-1 given as a number. */
  uintNum(v: number): void {
    if (v < TWO32) this.uint(0, v)
    else this.uint(Math.floor(v / TWO32), v % TWO32)
  }

  /** A u64 given as a bigint 0..2^64-1. */
  uintBig(v: bigint): void {
    this.uint(Number(v >> 32n), Number(v & 0xffffffffn))
  }

  nil(): void {
    this.byte(0xc0)
  }

  strHeader(n: number): void {
    if (n < 32) this.byte(0xa0 | n)
    else if (n <= 0xff) {
      this.byte(0xd9)
      this.byte(n)
    } else if (n <= 0xffff) {
      this.byte(0xda)
      this.be16(n)
    } else {
      this.byte(0xdb)
      this.be32(n)
    }
  }

  /** A string (UTF-8). */
  str(s: string): void {
    const bytes = utf8Encoder.encode(s)
    this.strHeader(bytes.length)
    this.bytes(bytes)
  }

  binHeader(n: number): void {
    if (n <= 0xff) {
      this.ensure(2)
      this.buf[this.pos++] = 0xc4
      this.buf[this.pos++] = n
    } else if (n <= 0xffff) {
      this.byte(0xc5)
      this.be16(n)
    } else {
      this.byte(0xc6)
      this.be32(n)
    }
  }

  bin(data: Uint8Array, start = 0, end = data.length): void {
    this.binHeader(end - start)
    this.bytes(data, start, end)
  }

  arrayHeader(n: number): void {
    if (n < 16) this.byte(0x90 | n)
    else if (n <= 0xffff) {
      this.byte(0xdc)
      this.be16(n)
    } else {
      this.byte(0xdd)
      this.be32(n)
    }
  }

  mapHeader(n: number): void {
    if (n < 16) this.byte(0x80 | n)
    else if (n <= 0xffff) {
      this.byte(0xde)
      this.be16(n)
    } else {
      this.byte(0xdf)
      this.be32(n)
    }
  }
}

/** The msgpack bytes of a fixstr key (header + ASCII), for writing known keys with one copy. */
export function keyBytes(s: string): Uint8Array {
  if (s.length >= 32) throw new Error('keyBytes: fixstr only')
  const out = new Uint8Array(1 + s.length)
  out[0] = 0xa0 | s.length
  for (let i = 0; i < s.length; i++) out[1 + i] = s.charCodeAt(i)
  return out
}
