// Argument checks shared by the public classes: each throws a TypeError or RangeError that names the
// argument (or option), so both implementations fail the same way before the raw layer sees a value.
import type { BlockExtraInfo } from '../core/binding.js'

export const U64_MAX = (1n << 64n) - 1n
export const U32_MAX = 0xffff_ffff

export function u64(name: string, v: unknown): bigint {
  if (typeof v !== 'bigint') throw new TypeError(`${name} must be a bigint, got ${describe(v)}`)
  if (v < 0n || v > U64_MAX) throw new RangeError(`${name} must be within 0..2^64-1, got ${v}`)
  return v
}

export function u32(name: string, v: unknown): number {
  if (typeof v !== 'number') throw new TypeError(`${name} must be a number, got ${describe(v)}`)
  if (!Number.isInteger(v) || v < 0 || v > U32_MAX) throw new RangeError(`${name} must be an integer within 0..2^32-1, got ${v}`)
  return v
}

/** An integer within min..max: TypeError for a non-number, RangeError otherwise. */
export function intInRange(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== 'number') throw new TypeError(`${name} must be a number, got ${describe(v)}`)
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${name} must be an integer within ${min}..${max}, got ${v}`)
  return v
}

export function positiveInt(name: string, v: unknown, max = U32_MAX): number {
  return intInRange(name, v, 1, max)
}

export function nowArg(v: unknown): number {
  if (v === undefined) return Date.now()
  if (typeof v !== 'number') throw new TypeError(`nowMs must be a number, got ${describe(v)}`)
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`nowMs must be a non-negative safe integer, got ${v}`)
  return v
}

export function bytesArg(name: string, v: unknown): Uint8Array {
  if (!(v instanceof Uint8Array)) throw new TypeError(`${name} must be a Uint8Array or Buffer, got ${describe(v)}`)
  return v
}

export function tokensArg(name: string, v: unknown): Uint32Array {
  if (v instanceof Uint32Array) return v
  if (!Array.isArray(v)) throw new TypeError(`${name} must be a Uint32Array or an array of numbers, got ${describe(v)}`)
  const out = new Uint32Array(v.length)
  for (let i = 0; i < v.length; i++) out[i] = u32(`${name}[${i}]`, v[i])
  return out
}

export function hashesArg(name: string, v: unknown): BigUint64Array {
  if (v instanceof BigUint64Array) return v
  if (!Array.isArray(v)) throw new TypeError(`${name} must be a BigUint64Array or an array of bigints, got ${describe(v)}`)
  const out = new BigUint64Array(v.length)
  for (let i = 0; i < v.length; i++) out[i] = u64(`${name}[${i}]`, v[i])
  return out
}

export function mmInfosArg(name: string, v: unknown): (BlockExtraInfo | null)[] | null {
  if (v === undefined || v === null) return null
  if (!Array.isArray(v)) throw new TypeError(`${name} must be an array, got ${describe(v)}`)
  return v.map((info, i) => {
    if (info === null || info === undefined) return null
    const at = `${name}[${i}]`
    if (typeof info !== 'object' || !Array.isArray((info as BlockExtraInfo).mmObjects))
      throw new TypeError(`${at} must be null or { mmObjects: [...] }, got ${describe(info)}`)
    return {
      mmObjects: (info as BlockExtraInfo).mmObjects.map((o, j) => {
        const ot = `${at}.mmObjects[${j}]`
        if (typeof o !== 'object' || o === null) throw new TypeError(`${ot} must be an object, got ${describe(o)}`)
        const offsets = o.offsets ?? []
        if (!Array.isArray(offsets)) throw new TypeError(`${ot}.offsets must be an array of [start, end] pairs`)
        return {
          mmHash: u64(`${ot}.mmHash`, o.mmHash),
          offsets: offsets.map((p, k): [number, number] => {
            if (!Array.isArray(p) || p.length !== 2) throw new TypeError(`${ot}.offsets[${k}] must be a [start, end] pair`)
            return [u32(`${ot}.offsets[${k}][0]`, p[0]), u32(`${ot}.offsets[${k}][1]`, p[1])]
          }),
        }
      }),
    }
  })
}

export function loraArg(v: unknown): string | null {
  if (v === undefined || v === null) return null
  if (typeof v !== 'string') throw new TypeError(`loraName must be a string, got ${describe(v)}`)
  return v
}

/** An optional string option (undefined or null = absent). */
export function optStringArg(name: string, v: unknown): string | null {
  if (v === undefined || v === null) return null
  if (typeof v !== 'string') throw new TypeError(`${name} must be a string, got ${describe(v)}`)
  return v
}

/** An optional boolean option (undefined = false). */
export function optBoolArg(name: string, v: unknown): boolean {
  if (v === undefined) return false
  if (typeof v !== 'boolean') throw new TypeError(`${name} must be a boolean, got ${describe(v)}`)
  return v
}

export function describe(v: unknown): string {
  if (v === null) return 'null'
  if (Array.isArray(v)) return 'an array'
  if (typeof v === 'object') return (v as object).constructor?.name ?? 'an object'
  return `${typeof v} ${String(v).slice(0, 40)}`
}

/** Checks a Dynamo namespace or component name (SPEC 5); throws a RangeError naming the option. */
export function checkName(option: string, v: unknown): string {
  if (typeof v !== 'string') throw new TypeError(`${option} must be a string, got ${describe(v)}`)
  if (v.length === 0 || /[\s*>]/u.test(v))
    throw new RangeError(`${option} must be non-empty without whitespace, '*' or '>', got ${JSON.stringify(v)}`)
  return v
}
