// The common /query body read straight from the request bytes by the core (scanQueryBody: the native
// core's crates/core/src/query.rs, or its fallback twin): the token ids land in a reused Uint32Array, the
// strings are ASCII ranges of the body. Only a plainly valid body of the known fields is taken; anything
// else (an unknown field, an escape, a float, a non-ASCII byte, a syntax error) is left to the exact
// reader, whose answer is serde's.
import { raw } from '../core/native.js'

/** A /query body read by scanQuery. `tokens` is a view of a buffer the next scan overwrites. */
export interface ScannedQuery {
  tokens: Uint32Array
  model: string
  group: string | undefined
  lora: string | null | undefined
  salt: string | null | undefined
}

const ABSENT = 0xffff_ffff
const NULL = 0xffff_fffe

let scratch = new Uint32Array(4096)
const fields = new Uint32Array(8)

function field(b: Buffer, k: number): string | null | undefined {
  const start = fields[2 * k]!
  return start === ABSENT ? undefined : start === NULL ? null : b.toString('latin1', start, fields[2 * k + 1]!)
}

/**
 * Reads a /query body of the common shape; null when the body is anything else (the exact reader then
 * answers, errors included).
 */
export function scanQuery(b: Buffer): ScannedQuery | null {
  let n = raw.scanQueryBody(b, scratch, fields)
  if (n < -1) {
    scratch = new Uint32Array(Math.max(-2 - n, 2 * scratch.length))
    n = raw.scanQueryBody(b, scratch, fields)
  }
  if (n < 0) return null
  return {
    tokens: scratch.subarray(0, n),
    model: field(b, 0)!,
    group: field(b, 1) ?? undefined,
    lora: field(b, 2),
    salt: field(b, 3),
  }
}
