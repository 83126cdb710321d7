// The common body of the indexer service's POST /query read in one pass from the request bytes; the twin
// of crates/core/src/query.rs (same bodies taken, same token ids and field ranges, same refusals). It takes
// only a plainly valid body of the known fields (JSON whitespace, each field once, unsigned integer token
// ids below 2^32 without a leading zero, strings of printable ASCII without escapes, null for lora_name
// and cache_salt); anything else is refused and the service's exact reader answers it.

/** fields[2k], fields[2k + 1] of a field that is absent. */
export const FIELD_ABSENT = 0xffff_ffff
/** fields[2k] of a field given as null (lora_name, cache_salt). */
export const FIELD_NULL = 0xffff_fffe
/** Field order in `fields`: model_name, routing_group, lora_name, cache_salt. */
export const FIELD_COUNT = 4

const QUOTE = 0x22
const COMMA = 0x2c
const COLON = 0x3a
const LBRACKET = 0x5b
const RBRACKET = 0x5d
const LBRACE = 0x7b
const RBRACE = 0x7d
const ZERO = 0x30
const U32_MAX = 0xffff_ffff

const isWs = (c: number) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09

function skipWs(b: Uint8Array, i: number): number {
  while (i < b.length && isWs(b[i]!)) i++
  return i
}

/** The closing quote's index of a plain printable-ASCII string starting at i; -1 otherwise. */
function stringEnd(b: Uint8Array, i: number): number {
  for (; i < b.length; i++) {
    const c = b[i]!
    if (c === QUOTE) return i
    if (c < 0x20 || c > 0x7e || c === 0x5c) return -1
  }
  return -1
}

const F_TOKENS = 1
const F_MODEL = 2
const F_GROUP = 4
const F_LORA = 8
const F_SALT = 16
const F_TENANT = 32

function is(b: Uint8Array, at: number, s: string): boolean {
  for (let k = 0; k < s.length; k++) if (b[at + k] !== s.charCodeAt(k)) return false
  return true
}

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

const SLOT: Record<number, number> = { [F_MODEL]: 0, [F_GROUP]: 1, [F_LORA]: 2, [F_SALT]: 3 }

/**
 * Reads a /query body of the common shape: its token ids into `tokens` (as many as fit) and the byte ranges
 * [start, end) of model_name, routing_group, lora_name and cache_salt into `fields` (8 values; FIELD_ABSENT
 * twice for a field not given, FIELD_NULL for null). Returns the number of token ids (all written), -1 for
 * any other body, or -(2 + n) when its n token ids do not fit.
 */
export function scanQueryBody(b: Uint8Array, tokens: Uint32Array, fields: Uint32Array): number {
  if (fields.length < 2 * FIELD_COUNT) throw new Error('fields must hold 8 values')
  const n = scan(b, tokens, fields)
  return n < 0 ? -1 : n > tokens.length ? -2 - n : n
}

function scan(b: Uint8Array, tokens: Uint32Array, fields: Uint32Array): number {
  if (b.length >= FIELD_NULL) return -1
  fields.fill(FIELD_ABSENT, 0, 2 * FIELD_COUNT)
  const len = b.length
  const cap = tokens.length
  let i = skipWs(b, 0)
  if (b[i] !== LBRACE) return -1
  i = skipWs(b, i + 1)
  if (i >= len || b[i] === RBRACE) return -1
  let seen = 0
  let n = 0
  for (;;) {
    if (b[i] !== QUOTE) return -1
    const ke = stringEnd(b, i + 1)
    if (ke < 0) return -1
    const f = fieldOf(b, i + 1, ke)
    if (f === 0 || (seen & f) !== 0) return -1
    seen |= f
    i = skipWs(b, ke + 1)
    if (b[i] !== COLON) return -1
    i = skipWs(b, i + 1)
    if (f === F_TOKENS) {
      if (b[i] !== LBRACKET) return -1
      i = skipWs(b, i + 1)
      if (i >= len) return -1
      if (b[i] === RBRACKET) i++
      else {
        for (;;) {
          // one token id: digits without a leading zero, at most 10 of them (then exact in a double)
          const first = i
          let v = 0
          for (; i < len; i++) {
            const d = b[i]! - ZERO
            if (d >>> 0 > 9) break
            v = v * 10 + d
            if (i + 1 - first > 10) return -1
          }
          const digits = i - first
          if (digits === 0 || v > U32_MAX || (digits > 1 && b[first] === ZERO)) return -1
          if (n < cap) tokens[n] = v
          n++
          i = skipWs(b, i)
          const c = b[i]
          if (c === COMMA) i = skipWs(b, i + 1)
          else if (c === RBRACKET) {
            i++
            break
          } else return -1
        }
      }
    } else {
      const slot = SLOT[f]
      if (b[i] === QUOTE) {
        const e = stringEnd(b, i + 1)
        if (e < 0) return -1
        if (slot !== undefined) {
          fields[2 * slot] = i + 1
          fields[2 * slot + 1] = e
        }
        i = e + 1
      } else if ((f === F_LORA || f === F_SALT) && is(b, i, 'null')) {
        if (slot !== undefined) {
          fields[2 * slot] = FIELD_NULL
          fields[2 * slot + 1] = FIELD_NULL
        }
        i += 4
      } else return -1
    }
    i = skipWs(b, i)
    const c = b[i]
    if (c === COMMA) i = skipWs(b, i + 1)
    else if (c === RBRACE) break
    else return -1
  }
  if (skipWs(b, i + 1) !== len) return -1
  if ((seen & (F_TOKENS | F_MODEL)) !== (F_TOKENS | F_MODEL)) return -1
  return n
}
