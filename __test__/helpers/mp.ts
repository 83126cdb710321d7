// A test-only msgpack encoder that writes exactly the forms asked for (a given integer width, signed
// markers for non-negative values, floats, bins, str8 for short strings...), so generated batches cover
// what real engines send rather than one library's choices. Independent of both implementations.

export type Mp =
  | { t: 'nil' }
  | { t: 'bool'; v: boolean }
  | { t: 'uint'; v: bigint; w?: 0 | 1 | 2 | 4 | 8 } // w = forced width in bytes (0 = fixint)
  | { t: 'int'; v: bigint; w?: 0 | 1 | 2 | 4 | 8 } // signed markers (d0..d3) or negative fixint
  | { t: 'f64'; v: number }
  | { t: 'f32'; v: number }
  | { t: 'str'; v: string | Uint8Array; w?: 'fix' | 8 | 16 | 32 }
  | { t: 'bin'; v: Uint8Array }
  | { t: 'arr'; v: Mp[]; w?: 'fix' | 16 | 32 }
  | { t: 'map'; v: [Mp, Mp][]; w?: 'fix' | 16 | 32 }
  | { t: 'ext'; type: number; v: Uint8Array }
  | { t: 'raw'; v: Uint8Array }

export const nil: Mp = { t: 'nil' }
export const u = (v: bigint | number, w?: 0 | 1 | 2 | 4 | 8): Mp => ({ t: 'uint', v: BigInt(v), w })
export const i = (v: bigint | number, w?: 0 | 1 | 2 | 4 | 8): Mp => ({ t: 'int', v: BigInt(v), w })
export const s = (v: string | Uint8Array, w?: 'fix' | 8 | 16 | 32): Mp => ({ t: 'str', v, w })
export const bin = (v: Uint8Array): Mp => ({ t: 'bin', v })
export const arr = (...v: Mp[]): Mp => ({ t: 'arr', v })
export const map = (entries: Record<string, Mp> | [Mp, Mp][]): Mp =>
  Array.isArray(entries) ? { t: 'map', v: entries } : { t: 'map', v: Object.entries(entries).map(([k, x]) => [s(k), x]) }
export const f64 = (v: number): Mp => ({ t: 'f64', v })

class Out {
  bytes: number[] = []
  push(...b: number[]) {
    for (const x of b) this.bytes.push(x & 0xff)
  }
  be(v: bigint, n: number) {
    for (let k = n - 1; k >= 0; k--) this.bytes.push(Number((v >> BigInt(8 * k)) & 0xffn))
  }
  raw(b: Uint8Array) {
    for (const x of b) this.bytes.push(x)
  }
}

function minUintWidth(v: bigint): 0 | 1 | 2 | 4 | 8 {
  if (v < 128n) return 0
  if (v < 256n) return 1
  if (v < 65536n) return 2
  if (v < 4294967296n) return 4
  return 8
}

function write(o: Out, m: Mp): void {
  switch (m.t) {
    case 'nil':
      o.push(0xc0)
      return
    case 'bool':
      o.push(m.v ? 0xc3 : 0xc2)
      return
    case 'uint': {
      const w = m.w ?? minUintWidth(m.v)
      if (w === 0) {
        o.push(Number(m.v))
        return
      }
      o.push({ 1: 0xcc, 2: 0xcd, 4: 0xce, 8: 0xcf }[w])
      o.be(BigInt.asUintN(w * 8, m.v), w)
      return
    }
    case 'int': {
      if (m.w === 0 || (m.w === undefined && m.v >= -32n && m.v < 0n)) {
        o.push(Number(BigInt.asUintN(8, m.v)))
        return
      }
      const w =
        m.w ?? (m.v >= -128n && m.v < 128n ? 1 : m.v >= -32768n && m.v < 32768n ? 2 : m.v >= -(2n ** 31n) && m.v < 2n ** 31n ? 4 : 8)
      o.push({ 1: 0xd0, 2: 0xd1, 4: 0xd2, 8: 0xd3 }[w])
      o.be(BigInt.asUintN(w * 8, m.v), w)
      return
    }
    case 'f64': {
      const b = Buffer.alloc(8)
      b.writeDoubleBE(m.v)
      o.push(0xcb)
      o.raw(b)
      return
    }
    case 'f32': {
      const b = Buffer.alloc(4)
      b.writeFloatBE(m.v)
      o.push(0xca)
      o.raw(b)
      return
    }
    case 'str': {
      const b = typeof m.v === 'string' ? Buffer.from(m.v, 'utf8') : m.v
      const w = m.w ?? (b.length < 32 ? 'fix' : b.length < 256 ? 8 : b.length < 65536 ? 16 : 32)
      if (w === 'fix') o.push(0xa0 | b.length)
      else if (w === 8) o.push(0xd9, b.length)
      else if (w === 16) {
        o.push(0xda)
        o.be(BigInt(b.length), 2)
      } else {
        o.push(0xdb)
        o.be(BigInt(b.length), 4)
      }
      o.raw(b)
      return
    }
    case 'bin': {
      const n = m.v.length
      if (n < 256) o.push(0xc4, n)
      else if (n < 65536) {
        o.push(0xc5)
        o.be(BigInt(n), 2)
      } else {
        o.push(0xc6)
        o.be(BigInt(n), 4)
      }
      o.raw(m.v)
      return
    }
    case 'arr':
    case 'map': {
      const n = m.v.length
      const w = m.w ?? (n < 16 ? 'fix' : n < 65536 ? 16 : 32)
      const [fix, m16, m32] = m.t === 'arr' ? [0x90, 0xdc, 0xdd] : [0x80, 0xde, 0xdf]
      if (w === 'fix') o.push(fix | n)
      else if (w === 16) {
        o.push(m16)
        o.be(BigInt(n), 2)
      } else {
        o.push(m32)
        o.be(BigInt(n), 4)
      }
      if (m.t === 'arr') for (const x of m.v) write(o, x)
      else
        for (const [k, x] of m.v) {
          write(o, k)
          write(o, x)
        }
      return
    }
    case 'ext': {
      o.push(0xc7, m.v.length, m.type)
      o.raw(m.v)
      return
    }
    case 'raw':
      o.raw(m.v)
      return
  }
}

export function encode(m: Mp): Buffer {
  const o = new Out()
  write(o, m)
  return Buffer.from(o.bytes)
}
