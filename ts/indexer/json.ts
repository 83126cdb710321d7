// Exact JSON for the indexer's HTTP bodies. Numbers keep their text (a u64 or i64 never passes through a JS
// number), every value knows where it ends in the body, and errors read like the ones Dynamo's indexer
// returns (serde_json's messages with `line L column C`), so clients see the same text from both.

/**
 * A parsed JSON value with `end`: how many characters of the body had been read when it ended (the
 * position serde reports). Containers also keep `open`, the same for their opening bracket.
 */
export type JsonNode =
  | { t: 'null'; end: number }
  | { t: 'bool'; v: boolean; end: number }
  | { t: 'num'; raw: string; end: number }
  | { t: 'str'; v: string; end: number }
  | { t: 'arr'; items: JsonNode[]; end: number; open: number }
  | { t: 'obj'; entries: [string, JsonNode][]; end: number; open: number }

/** serde's `line L column C` for the position after `consumed` characters of `text`. */
export function position(text: string, consumed: number): string {
  let line = 1
  let lastNl = -1
  for (let k = text.indexOf('\n'); k >= 0 && k < consumed; k = text.indexOf('\n', k + 1)) {
    line++
    lastNl = k
  }
  return `line ${line} column ${consumed - lastNl - 1}`
}

/** A body that is not JSON: the message names the problem and where it is. */
export class JsonSyntaxError extends Error {
  override name = 'JsonSyntaxError'
}

/**
 * JSON that does not have the shape a route expects (`path: problem`), found where `consumed` characters
 * had been read; {@link JsonShapeError.describe} adds serde's position.
 */
export class JsonShapeError extends Error {
  override name = 'JsonShapeError'
  constructor(
    message: string,
    readonly consumed: number,
  ) {
    super(message)
  }
  /** The message with ` at line L column C` for the body it was found in. */
  describe(text: string): string {
    return `${this.message} at ${position(text, this.consumed)}`
  }
}

const MAX_DEPTH = 128
const C_QUOTE = 0x22
const C_BACKSLASH = 0x5c
const C_0 = 0x30
const C_9 = 0x39

/** Parses `text` exactly (numbers kept as text). Throws JsonSyntaxError. */
export function parseJson(text: string): JsonNode {
  let i = 0
  const n = text.length
  const fail = (msg: string): never => {
    throw new JsonSyntaxError(`${msg} at ${position(text, i)}`)
  }
  const isDigit = (c: number) => c >= C_0 && c <= C_9
  const skipWs = () => {
    while (i < n) {
      const c = text.charCodeAt(i)
      if (c === 0x20 || c === 0x0a || c === 0x09 || c === 0x0d) i++
      else break
    }
  }
  const ident = (word: string) => {
    for (let k = 1; k < word.length; k++) {
      if (i >= n) fail('EOF while parsing a value')
      if (text[i++] !== word[k]) fail('expected ident')
    }
  }
  const hex4 = (): number => {
    let v = 0
    for (let k = 0; k < 4; k++) {
      if (i >= n) fail('EOF while parsing a string')
      const c = text[i++]!
      if (!/[0-9a-fA-F]/.test(c)) fail('invalid escape')
      v = v * 16 + Number.parseInt(c, 16)
    }
    return v
  }
  const str = (): string => {
    // fast path: no escapes
    const start = i
    for (; i < n; i++) {
      const c = text.charCodeAt(i)
      if (c === C_QUOTE) return text.slice(start, i++)
      if (c === C_BACKSLASH || c < 0x20) break
    }
    let out = text.slice(start, i)
    for (;;) {
      if (i >= n) fail('EOF while parsing a string')
      const c = text[i++]!
      if (c === '"') return out
      if (c === '\\') {
        if (i >= n) fail('EOF while parsing a string')
        const e = text[i++]!
        switch (e) {
          case '"':
          case '\\':
          case '/':
            out += e
            break
          case 'b':
            out += '\b'
            break
          case 'f':
            out += '\f'
            break
          case 'n':
            out += '\n'
            break
          case 'r':
            out += '\r'
            break
          case 't':
            out += '\t'
            break
          case 'u': {
            const u = hex4()
            if (u >= 0xd800 && u < 0xdc00) {
              if (text[i] !== '\\' || text[i + 1] !== 'u') fail('lone leading surrogate in hex escape')
              i += 2
              const lo = hex4()
              if (lo < 0xdc00 || lo > 0xdfff) fail('lone leading surrogate in hex escape')
              out += String.fromCharCode(u, lo)
            } else if (u >= 0xdc00 && u <= 0xdfff) fail('lone leading surrogate in hex escape')
            else out += String.fromCharCode(u)
            break
          }
          default:
            fail('invalid escape')
        }
      } else if (c < ' ') fail('control character (\\u0000-\\u001F) found while parsing a string')
      else out += c
    }
  }
  const num = (): string => {
    const start = i - 1
    let c = text.charCodeAt(start)
    if (c === 0x2d) {
      if (i >= n) fail('EOF while parsing a value')
      c = text.charCodeAt(i++)
      if (!isDigit(c)) fail('invalid number')
    }
    if (c === C_0) {
      if (i < n && isDigit(text.charCodeAt(i))) {
        i++
        fail('invalid number')
      }
    } else while (i < n && isDigit(text.charCodeAt(i))) i++
    if (i < n && text.charCodeAt(i) === 0x2e) {
      i++
      if (i >= n) fail('EOF while parsing a value')
      if (!isDigit(text.charCodeAt(i))) {
        i++
        fail('invalid number')
      }
      while (i < n && isDigit(text.charCodeAt(i))) i++
    }
    if (i < n && (text[i] === 'e' || text[i] === 'E')) {
      i++
      if (i < n && (text[i] === '+' || text[i] === '-')) i++
      if (i >= n) fail('EOF while parsing a value')
      if (!isDigit(text.charCodeAt(i))) {
        i++
        fail('invalid number')
      }
      while (i < n && isDigit(text.charCodeAt(i))) i++
    }
    return text.slice(start, i)
  }
  const value = (depth: number): JsonNode => {
    skipWs()
    if (i >= n) fail('EOF while parsing a value')
    const c = text[i++]!
    switch (c) {
      case 'n':
        ident('null')
        return { t: 'null', end: i }
      case 't':
        ident('true')
        return { t: 'bool', v: true, end: i }
      case 'f':
        ident('false')
        return { t: 'bool', v: false, end: i }
      case '"': {
        const v = str()
        return { t: 'str', v, end: i }
      }
      case '[': {
        if (depth >= MAX_DEPTH) fail('recursion limit exceeded')
        const open = i
        const items: JsonNode[] = []
        skipWs()
        if (i >= n) fail('EOF while parsing a list')
        if (text[i] === ']') {
          i++
          return { t: 'arr', items, end: i, open }
        }
        for (;;) {
          items.push(value(depth + 1))
          skipWs()
          if (i >= n) fail('EOF while parsing a list')
          const d = text[i++]
          if (d === ']') return { t: 'arr', items, end: i, open }
          if (d !== ',') fail('expected `,` or `]`')
          skipWs()
          if (text[i] === ']') {
            i++
            fail('trailing comma')
          }
        }
      }
      case '{': {
        if (depth >= MAX_DEPTH) fail('recursion limit exceeded')
        const open = i
        const entries: [string, JsonNode][] = []
        skipWs()
        if (i >= n) fail('EOF while parsing an object')
        if (text[i] === '}') {
          i++
          return { t: 'obj', entries, end: i, open }
        }
        for (let first = true; ; first = false) {
          skipWs()
          if (i >= n) fail(first ? 'EOF while parsing an object' : 'EOF while parsing a value')
          if (text[i++] !== '"') fail('key must be a string')
          const k = str()
          skipWs()
          if (i >= n) fail('EOF while parsing an object')
          if (text[i++] !== ':') fail('expected `:`')
          entries.push([k, value(depth + 1)])
          skipWs()
          if (i >= n) fail('EOF while parsing an object')
          const d = text[i++]
          if (d === '}') return { t: 'obj', entries, end: i, open }
          if (d !== ',') fail('expected `,` or `}`')
          skipWs()
          if (text[i] === '}') {
            i++
            fail('trailing comma')
          }
        }
      }
      default:
        if (c === '-' || (c >= '0' && c <= '9')) {
          const raw = num()
          return { t: 'num', raw, end: i }
        }
        return fail('expected value')
    }
  }
  const v = value(0)
  skipWs()
  if (i < n) {
    i++
    fail('trailing characters')
  }
  return v
}

// ---------------------------------------------------------------------------------------------------
// typed reading, with serde's wording

const U64_MAX = (1n << 64n) - 1n
const I64_MIN = -(1n << 63n)
const I64_MAX = (1n << 63n) - 1n
const U32_MAX = 0xffff_ffffn

function isInteger(raw: string): boolean {
  return /^-?\d+$/.test(raw)
}

/** Rust's Display of an f64 (close enough for messages: integral values keep a `.0`). */
function floatText(raw: string): string {
  const x = Number(raw)
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf'
  if (Number.isInteger(x) && Math.abs(x) < 1e16) return `${x}.0`
  return String(x)
}

/** How serde names an unexpected value. */
function unexpected(v: JsonNode): string {
  switch (v.t) {
    case 'null':
      return 'null'
    case 'bool':
      return `boolean \`${v.v}\``
    case 'str':
      return `string ${JSON.stringify(v.v)}`
    case 'arr':
      return 'sequence'
    case 'obj':
      return 'map'
    case 'num':
      if (isInteger(v.raw)) {
        const b = BigInt(v.raw)
        if (b >= I64_MIN && b <= U64_MAX) return `integer \`${b}\``
      }
      return `floating point \`${floatText(v.raw)}\``
  }
}

/** Where serde reports a problem with this value: its end (the opening bracket for containers). */
const at = (v: JsonNode): number => (v.t === 'arr' || v.t === 'obj' ? v.open : v.end)

function shapeError(path: string, msg: string, v: JsonNode): never {
  throw new JsonShapeError(`${path ? `${path}: ` : ''}${msg}`, at(v))
}

function intOf(path: string, v: JsonNode, kind: 'u64' | 'i64' | 'u32', min: bigint, max: bigint): bigint {
  if (v.t !== 'num' || !isInteger(v.raw)) return shapeError(path, `invalid type: ${unexpected(v)}, expected ${kind}`, v)
  const b = BigInt(v.raw)
  // serde_json reads integers beyond i64/u64 as floats
  if (b < I64_MIN || b > U64_MAX) return shapeError(path, `invalid type: ${unexpected(v)}, expected ${kind}`, v)
  if (b < min || b > max) return shapeError(path, `invalid value: integer \`${b}\`, expected ${kind}`, v)
  return b
}

export const readU64 = (path: string, v: JsonNode): bigint => intOf(path, v, 'u64', 0n, U64_MAX)
export const readI64 = (path: string, v: JsonNode): bigint => intOf(path, v, 'i64', I64_MIN, I64_MAX)
export function readU32(path: string, v: JsonNode): number {
  // the common case (a plain non-negative integer of at most 9 digits) without a bigint
  if (v.t === 'num' && v.raw.length <= 9 && /^\d+$/.test(v.raw)) return Number(v.raw)
  return Number(intOf(path, v, 'u32', 0n, U32_MAX))
}

export function readString(path: string, v: JsonNode): string {
  if (v.t !== 'str') return shapeError(path, `invalid type: ${unexpected(v)}, expected a string`, v)
  return v.v
}

export function readSeq<T>(path: string, v: JsonNode, each: (path: string, v: JsonNode) => T): T[] {
  if (v.t !== 'arr') return shapeError(path, `invalid type: ${unexpected(v)}, expected a sequence`, v)
  return v.items.map((x, k) => each(`${path}[${k}]`, x))
}

/** `null` (or absent) → null, else read. */
export function nullable<T>(read: (path: string, v: JsonNode) => T): (path: string, v: JsonNode) => T | null {
  return (path, v) => (v.t === 'null' ? null : read(path, v))
}

/** A struct field: its reader, and whether it may be absent. */
export interface FieldSpec {
  read: (path: string, v: JsonNode) => unknown
  optional?: boolean
}

/**
 * Reads an object body as serde derives it: fields in document order (the first bad one is reported),
 * unknown keys ignored, a repeated key refused, missing required fields reported at the object's end.
 * `aliases` maps another key to a field.
 */
export function readStruct(
  name: string,
  v: JsonNode,
  fields: Record<string, FieldSpec>,
  aliases: Record<string, string> = {},
): Record<string, unknown> {
  const count = Object.keys(fields).length
  if (v.t === 'arr') {
    // serde accepts a struct as a sequence of its fields; an empty or short one is refused by length
    throw new JsonShapeError(`invalid length ${v.items.length}, expected struct ${name} with ${count} elements`, v.end)
  }
  if (v.t !== 'obj') throw new JsonShapeError(`invalid type: ${unexpected(v)}, expected struct ${name}`, v.end)
  const out: Record<string, unknown> = {}
  for (const [k0, x] of v.entries) {
    // own keys only: a body key such as `constructor` or `__proto__` is just an unknown field
    const k = Object.hasOwn(aliases, k0) ? aliases[k0]! : k0
    if (!Object.hasOwn(fields, k)) continue
    const spec = fields[k]!
    if (Object.hasOwn(out, k)) throw new JsonShapeError(`duplicate field \`${k}\``, x.end)
    out[k] = spec.read(k, x)
  }
  for (const [k, spec] of Object.entries(fields))
    if (!spec.optional && !Object.hasOwn(out, k)) throw new JsonShapeError(`missing field \`${k}\``, v.end)
  return out
}

// ---------------------------------------------------------------------------------------------------
// writing

/** JSON text for a value whose integers are bigints (written exactly) or safe JS numbers. */
export function stringifyExact(v: unknown): string {
  if (v === null || v === undefined) return 'null'
  if (typeof v === 'bigint') return v.toString()
  if (typeof v === 'number' || typeof v === 'boolean') return String(v)
  if (typeof v === 'string') return JSON.stringify(v)
  if (Array.isArray(v)) return `[${v.map(stringifyExact).join(',')}]`
  if (v instanceof Map) return `{${[...v].map(([k, x]) => `${JSON.stringify(String(k))}:${stringifyExact(x)}`).join(',')}}`
  return `{${Object.entries(v as Record<string, unknown>)
    .filter(([, x]) => x !== undefined)
    .map(([k, x]) => `${JSON.stringify(k)}:${stringifyExact(x)}`)
    .join(',')}}`
}

/** The plain value of a node: integers as bigints, other numbers as JS numbers. */
export function toPlain(v: JsonNode): unknown {
  switch (v.t) {
    case 'null':
      return null
    case 'bool':
    case 'str':
      return v.v
    case 'num':
      return isInteger(v.raw) ? BigInt(v.raw) : Number(v.raw)
    case 'arr':
      return v.items.map(toPlain)
    case 'obj':
      return Object.fromEntries(v.entries.map(([k, x]) => [k, toPlain(x)]))
  }
}
