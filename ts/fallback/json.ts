// Compact JSON for the fallback: a writer of exact u64 integers (from u32 halves, no BigInt on the hot
// path) and a small parser that keeps integers exact (as bigint), for decodeRouterEvent.
//
// The parser mirrors crates/core/src/json.rs (what serde_json accepts into a `Value`, with the same
// messages in both implementations).
import type { ByteWriter } from './msgpack.js'

const TWO32 = 4294967296

/** Writes the decimal digits of a safe non-negative integer. */
export function writeSafeDec(w: ByteWriter, v: number): void {
  if (v < 10) {
    w.byte(0x30 + v)
    return
  }
  w.ensure(16)
  const buf = w.buf
  // count digits, then fill from the right
  let n = 1
  for (let x = v; x >= 10; x = Math.floor(x / 10)) n++
  let p = w.pos + n
  w.pos = p
  let x = v
  while (x >= 10) {
    const q = Math.floor(x / 10)
    buf[--p] = 0x30 + (x - q * 10)
    x = q
  }
  buf[--p] = 0x30 + x
}

/** Writes the decimal digits of the u64 hi * 2^32 + lo exactly. */
export function writeU64Dec(w: ByteWriter, hi: number, lo: number): void {
  if (hi < 0x200000) {
    writeSafeDec(w, hi * TWO32 + lo)
    return
  }
  // v = hi * 2^32 + lo = (hiQ * 1e6 + hiR) * 2^32 + lo; x = hiR * 2^32 + lo < 2^53;
  // v = (hiQ * 2^32 + floor(x / 1e6)) * 1e6 + x % 1e6, with every intermediate exact in a double.
  const hiQ = Math.floor(hi / 1e6)
  const hiR = hi - hiQ * 1e6
  const x = hiR * TWO32 + lo
  const xq = Math.floor(x / 1e6)
  const xr = x - xq * 1e6
  writeSafeDec(w, hiQ * TWO32 + xq) // > 0 here since v >= 2^53
  w.ensure(6)
  const buf = w.buf
  let p = w.pos + 6
  w.pos = p
  let r = xr
  for (let i = 0; i < 6; i++) {
    const q = Math.floor(r / 10)
    buf[--p] = 0x30 + (r - q * 10)
    r = q
  }
}

/** Writes a bigint u64 in decimal. */
export function writeBigDec(w: ByteWriter, v: bigint): void {
  writeU64Dec(w, Number(v >> 32n), Number(v & 0xffffffffn))
}

/** Writes ASCII text as is (for keys and punctuation). */
export function asciiBytes(s: string): Uint8Array {
  const out = new Uint8Array(s.length)
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i)
  return out
}

// ---------------------------------------------------------------------------------------------------
// parsing into a generic value (shared with the msgpack side of decodeRouterEvent)

/** A decoded generic value. Objects keep their string-keyed entries in order; `get` finds the last. */
export type Val =
  | { k: 'null' }
  | { k: 'u64'; v: bigint }
  | { k: 'other' }
  | { k: 'str'; v: string }
  | { k: 'arr'; v: Val[] }
  | { k: 'obj'; v: [string, Val][] }

export const NULL: Val = { k: 'null' }
export const OTHER: Val = { k: 'other' }

export function get(v: Val, key: string): Val | undefined {
  if (v.k !== 'obj') return undefined
  const e = v.v
  for (let i = e.length - 1; i >= 0; i--) if (e[i]![0] === key) return e[i]![1]
  return undefined
}

export class JsonError extends Error {}

const U64_MAX = (1n << 64n) - 1n
const U64_MAX_DIGITS = 20

// serde_json accepts no byte-order mark, so keep it in the text (where the parser rejects it)
const fatalUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })
const utf8 = new TextDecoder('utf-8', { ignoreBOM: true })
const WORDS: [Uint8Array, Val][] = [
  [new Uint8Array([0x6e, 0x75, 0x6c, 0x6c]), NULL],
  [new Uint8Array([0x74, 0x72, 0x75, 0x65]), OTHER],
  [new Uint8Array([0x66, 0x61, 0x6c, 0x73, 0x65]), OTHER],
]

/**
 * Parses JSON bytes into a Val, mirroring crates/core/src/json.rs (same acceptance, same messages,
 * `<what> at byte <offset>`). `maxDepth` bounds nesting (the top value is level 1). Throws JsonError.
 */
export function parseJson(b: Uint8Array, maxDepth: number): Val {
  try {
    fatalUtf8.decode(b)
  } catch {
    throw new JsonError('invalid UTF-8')
  }
  let i = 0
  const n = b.length

  const fail = (what: string): never => {
    throw new JsonError(`${what} at byte ${i}`)
  }
  const ws = (): void => {
    while (i < n) {
      const c = b[i]!
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) i++
      else break
    }
  }

  // The text is valid UTF-8 and a segment ends only at an ASCII byte, so each segment is too.
  const parseString = (): string => {
    // at the opening quote
    i++
    let out = ''
    let start = i
    for (;;) {
      if (i >= n) fail('unterminated string')
      const c = b[i]!
      if (c === 0x22) {
        out += utf8.decode(b.subarray(start, i))
        i++
        return out
      }
      if (c < 0x20) fail('control character in string')
      if (c !== 0x5c) {
        i++
        continue
      }
      out += utf8.decode(b.subarray(start, i))
      i++
      if (i >= n) fail('unterminated escape')
      const e = b[i++]!
      switch (e) {
        case 0x22:
          out += '"'
          break
        case 0x5c:
          out += '\\'
          break
        case 0x2f:
          out += '/'
          break
        case 0x62:
          out += '\b'
          break
        case 0x66:
          out += '\f'
          break
        case 0x6e:
          out += '\n'
          break
        case 0x72:
          out += '\r'
          break
        case 0x74:
          out += '\t'
          break
        case 0x75: {
          const u = hex4()
          if (u >= 0xd800 && u <= 0xdbff) {
            if (b[i] !== 0x5c || b[i + 1] !== 0x75) fail('lone leading surrogate')
            i += 2
            const l = hex4()
            if (l < 0xdc00 || l > 0xdfff) fail('invalid trailing surrogate')
            out += String.fromCharCode(u, l)
          } else if (u >= 0xdc00 && u <= 0xdfff) {
            fail('lone trailing surrogate')
          } else {
            out += String.fromCharCode(u)
          }
          break
        }
        default:
          fail('invalid escape')
      }
      start = i
    }
  }

  const hex4 = (): number => {
    if (i + 4 > n) fail('short \\u escape')
    let v = 0
    for (let k = 0; k < 4; k++) {
      const c = b[i++]!
      let d: number
      if (c >= 0x30 && c <= 0x39) d = c - 0x30
      else if (c >= 0x41 && c <= 0x46) d = c - 0x37
      else if (c >= 0x61 && c <= 0x66) d = c - 0x57
      else return fail('invalid \\u escape')
      v = v * 16 + d
    }
    return v
  }

  const digits = (): number => {
    const s = i
    while (i < n) {
      const c = b[i]!
      if (c < 0x30 || c > 0x39) break
      i++
    }
    return i - s
  }

  const parseNumber = (): Val => {
    const s = i
    const neg = b[i] === 0x2d
    if (neg) i++
    const intStart = i
    const nd = digits()
    if (nd === 0) fail('invalid number')
    if (nd > 1 && b[intStart] === 0x30) fail('leading zero')
    let integer = true
    if (b[i] === 0x2e) {
      i++
      if (digits() === 0) fail('invalid fraction')
      integer = false
    }
    const c = b[i]
    if (c === 0x65 || c === 0x45) {
      i++
      const sgn = b[i]
      if (sgn === 0x2b || sgn === 0x2d) i++
      if (digits() === 0) fail('invalid exponent')
      integer = false
    }
    if (!integer || neg) return OTHER // negative integers (and -0) are not u64
    // without leading zeros, more digits than u64::MAX's 20 cannot fit: no BigInt of an untrusted length
    if (nd > U64_MAX_DIGITS) return OTHER
    let text = ''
    for (let k = s; k < i; k++) text += String.fromCharCode(b[k]!)
    const v = BigInt(text)
    return v > U64_MAX ? OTHER : { k: 'u64', v }
  }

  const value = (level: number): Val => {
    if (level > maxDepth) fail('nested too deeply')
    ws()
    if (i >= n) fail('unexpected end')
    const c = b[i]!
    if (c === 0x7b) {
      i++
      const entries: [string, Val][] = []
      const index = new Map<string, number>()
      ws()
      if (b[i] === 0x7d) {
        i++
        return { k: 'obj', v: entries }
      }
      for (;;) {
        ws()
        if (b[i] !== 0x22) fail('expected a key')
        const key = parseString()
        ws()
        if (b[i] !== 0x3a) fail("expected ':'")
        i++
        const v = value(level + 1)
        // a repeated key replaces the earlier value (serde_json's map)
        const at = index.get(key)
        if (at === undefined) {
          index.set(key, entries.length)
          entries.push([key, v])
        } else {
          entries[at] = [key, v]
        }
        ws()
        const d = b[i]
        if (d === 0x2c) {
          i++
          continue
        }
        if (d === 0x7d) {
          i++
          return { k: 'obj', v: entries }
        }
        fail("expected ',' or '}'")
      }
    }
    if (c === 0x5b) {
      i++
      const items: Val[] = []
      ws()
      if (b[i] === 0x5d) {
        i++
        return { k: 'arr', v: items }
      }
      for (;;) {
        items.push(value(level + 1))
        ws()
        const d = b[i]
        if (d === 0x2c) {
          i++
          continue
        }
        if (d === 0x5d) {
          i++
          return { k: 'arr', v: items }
        }
        fail("expected ',' or ']'")
      }
    }
    if (c === 0x22) return { k: 'str', v: parseString() }
    if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return parseNumber()
    for (const [word, v] of WORDS) {
      let k = 0
      while (k < word.length && b[i + k] === word[k]) k++
      if (k === word.length) {
        i += k
        return v
      }
    }
    return fail('unexpected character')
  }

  const v = value(1)
  ws()
  if (i !== n) fail('trailing characters')
  return v
}
