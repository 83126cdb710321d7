// A single-pass reader of the common /query body, straight from the request bytes: the token ids land in
// a reused Uint32Array, the strings are ASCII slices. It accepts only a plainly valid body of the known
// fields (JSON whitespace, each field once, unsigned integer token ids below 2^32, strings of printable
// ASCII without escapes, null for the nullable ones); anything else (an unknown field, an escape, a
// float, a non-ASCII byte, a syntax error) is left to the exact reader, whose answer is serde's.

/** A /query body read by scanQuery. `tokens` is a view of a buffer the next scan overwrites. */
export interface ScannedQuery {
  tokens: Uint32Array
  model: string
  group: string | undefined
  lora: string | null | undefined
  salt: string | null | undefined
}

const QUOTE = 0x22
const COMMA = 0x2c
const COLON = 0x3a
const LBRACKET = 0x5b
const RBRACKET = 0x5d
const LBRACE = 0x7b
const RBRACE = 0x7d
const ZERO = 0x30
const U32_MAX = 0xffff_ffff

let scratch = new Uint32Array(4096)

const isWs = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09

function skipWs(b: Uint8Array, i: number): number {
  while (i < b.length && isWs(b[i]!)) i++
  return i
}

/** End (exclusive, the closing quote's index) of a plain ASCII string whose opening quote is at i - 1; -1 otherwise. */
function stringEnd(b: Uint8Array, i: number): number {
  for (; i < b.length; i++) {
    const c = b[i]!
    if (c === QUOTE) return i
    if (c < 0x20 || c > 0x7e || c === 0x5c) return -1
  }
  return -1
}

// field bits: token_ids, model_name, routing_group, lora_name, cache_salt, tenant_id
const F_TOKENS = 1
const F_MODEL = 2
const F_GROUP = 4
const F_LORA = 8
const F_SALT = 16
const F_TENANT = 32

function fieldOf(b: Uint8Array, start: number, end: number): number {
  switch (end - start) {
    case 9:
      if (is(b, start, 'token_ids')) return F_TOKENS
      if (is(b, start, 'lora_name')) return F_LORA
      if (is(b, start, 'tenant_id')) return F_TENANT
      return 0
    case 10:
      if (is(b, start, 'model_name')) return F_MODEL
      if (is(b, start, 'cache_salt')) return F_SALT
      return 0
    case 13:
      return is(b, start, 'routing_group') ? F_GROUP : 0
    default:
      return 0
  }
}

function is(b: Uint8Array, at: number, s: string): boolean {
  for (let k = 0; k < s.length; k++) if (b[at + k] !== s.charCodeAt(k)) return false
  return true
}

/**
 * Reads a /query body of the common shape; null when the body is anything else (the exact reader then
 * answers, errors included).
 */
export function scanQuery(b: Buffer): ScannedQuery | null {
  let i = skipWs(b, 0)
  if (b[i] !== LBRACE) return null
  i = skipWs(b, i + 1)
  let seen = 0
  let n = 0
  let model = ''
  let group: string | undefined
  let lora: string | null | undefined
  let salt: string | null | undefined
  if (b[i] === RBRACE) return null
  for (;;) {
    if (b[i] !== QUOTE) return null
    const ke = stringEnd(b, i + 1)
    if (ke < 0) return null
    const f = fieldOf(b, i + 1, ke)
    if (f === 0 || (seen & f) !== 0) return null
    seen |= f
    i = skipWs(b, ke + 1)
    if (b[i] !== COLON) return null
    i = skipWs(b, i + 1)
    if (f === F_TOKENS) {
      if (b[i] !== LBRACKET) return null
      i = skipWs(b, i + 1)
      if (b[i] === RBRACKET) i++
      else {
        const len = b.length
        let out = scratch
        for (;;) {
          // one token id: digits without a leading zero, at most 10 of them (then exact in a double)
          const first = i
          let v = 0
          let c = 0
          for (; i < len; i++) {
            c = b[i]!
            const d = c - ZERO
            if (d >>> 0 > 9) break
            v = v * 10 + d
          }
          const digits = i - first
          if (digits === 0 || digits > 10 || v > U32_MAX || (digits > 1 && b[first] === ZERO)) return null
          if (n === out.length) {
            const grown = new Uint32Array(out.length * 2)
            grown.set(out)
            scratch = out = grown
          }
          out[n++] = v
          if (c === COMMA && i < len) {
            i++
            if (isWs(b[i]!)) i = skipWs(b, i)
            continue
          }
          i = skipWs(b, i)
          c = b[i]!
          if (c === COMMA) i = skipWs(b, i + 1)
          else if (c === RBRACKET) {
            i++
            break
          } else return null
        }
      }
    } else {
      let s: string | null
      if (b[i] === QUOTE) {
        const e = stringEnd(b, i + 1)
        if (e < 0) return null
        s = b.toString('latin1', i + 1, e)
        i = e + 1
      } else if ((f === F_LORA || f === F_SALT) && b[i] === 0x6e && is(b, i, 'null')) {
        s = null
        i += 4
      } else return null
      if (f === F_MODEL) model = s!
      else if (f === F_GROUP) group = s!
      else if (f === F_LORA) lora = s
      else if (f === F_SALT) salt = s
    }
    i = skipWs(b, i)
    const c = b[i]
    if (c === COMMA) i = skipWs(b, i + 1)
    else if (c === RBRACE) break
    else return null
  }
  if (skipWs(b, i + 1) !== b.length) return null
  if ((seen & (F_TOKENS | F_MODEL)) !== (F_TOKENS | F_MODEL)) return null
  return { tokens: scratch.subarray(0, n), model, group, lora, salt }
}
