// The recovery query's bytes (SPEC 7): subjects, the request JSON, the chunked response JSON, and the
// event-plane peeks the router needs before it applies an event (worker, rank, event id) or a load.
// u64 values never pass through a JS number: integers are read from the bytes into bigints, and the
// events inside a response are handed to the core's own JSON parser one by one (applyEncoded).
import { kvEventsSubject, type RouterEventValue } from '../core/api.js'
import { ascii, binAt, bytesEq, INT_NONNEG, intAt, lastRead, lastReadBig, mapAt, skip, strAt, validate } from '../fallback/msgpack.js'

/** The subject token of a rank's recovery endpoint, before the rank's decimal number. */
export const RECOVERY_TOKEN = 'worker_kv_indexer_query_dp'
/** The header each chunk of a response carries: its index from 0. */
export const CHUNK_HEADER = 'Kv-Chunk'
/** The header of the empty message that ends a response: the number of chunks sent. */
export const CHUNKS_HEADER = 'Kv-Chunks'

const U64_MAX = (1n << 64n) - 1n
const U32_MAX = 0xffffffff

/** `namespace.{ns}.component.{comp}.` — the prefix of the kv-events subject (the core's naming rules). */
export function componentPrefix(namespace: string, component: string): string {
  const s = kvEventsSubject(namespace, component)
  return s.slice(0, s.length - 'kv-events'.length)
}

/** The subject a worker's rank answers recovery queries on (SPEC 7). */
export function recoverySubject(namespace: string, component: string, dpRank: number, workerId: bigint): string {
  return `${componentPrefix(namespace, component)}${RECOVERY_TOKEN}${dpRank}.${workerId}`
}

// ---------------------------------------------------------------------------------------------------
// the request

export interface RecoveryRequest {
  workerId: bigint
  startEventId: bigint | null
  endEventId: bigint | null
}

/** `{"worker_id":W,"start_event_id":S|null,"end_event_id":E|null}`, as Dynamo's WorkerKvQueryRequest. */
export function encodeRecoveryRequest(r: RecoveryRequest): Buffer {
  const n = (v: bigint | null) => (v === null ? 'null' : v.toString())
  return Buffer.from(`{"worker_id":${r.workerId},"start_event_id":${n(r.startEventId)},"end_event_id":${n(r.endEventId)}}`)
}

/** Parses a request; throws an Error whose message says what is wrong. */
export function parseRecoveryRequest(bytes: Uint8Array): RecoveryRequest {
  const v = parseSmallJson(bytes)
  if (typeof v !== 'object' || v === null || Array.isArray(v) || typeof v === 'bigint') throw new Error('request must be a JSON object')
  const o = v as Record<string, JsonValue>
  for (const k of Object.keys(o))
    if (k !== 'worker_id' && k !== 'start_event_id' && k !== 'end_event_id') throw new Error(`unknown field ${JSON.stringify(k)}`)
  const id = (k: string, optional: boolean): bigint | null => {
    const x = o[k]
    if (x === undefined) {
      if (optional) return null
      throw new Error(`${k} missing`)
    }
    if (x === null && optional) return null
    if (typeof x !== 'bigint' || x < 0n || x > U64_MAX) throw new Error(`${k} must be a u64${optional ? ' or null' : ''}`)
    return x
  }
  return { workerId: id('worker_id', false)!, startEventId: id('start_event_id', true), endEventId: id('end_event_id', true) }
}

// ---------------------------------------------------------------------------------------------------
// the response

/** `{"Error":"..."}` */
export function errorBody(message: string): Buffer {
  return Buffer.from(`{"Error":${JSON.stringify(message)}}`)
}

/** A parsed response: event arrays stay as byte slices of the body, one per event, for applyEncoded. */
export type ParsedResponse =
  | { kind: 'Events' | 'TreeDump'; events: Buffer[] }
  | { kind: 'TooNew'; requestedStart: bigint; requestedEnd: bigint; newestAvailable: bigint }
  | { kind: 'InvalidRange'; startId: bigint; endId: bigint }
  | { kind: 'Error'; message: string }

/** Parses a whole response body; throws an Error on a body that is not a WorkerKvQueryResponse. */
export function parseRangeResponse(body: Buffer): ParsedResponse {
  const arr = responseArray(body)
  if (arr !== null) {
    const { items, end } = splitArray(body, arr.open)
    if (body.toString('latin1', end) !== '}') throw new Error('bad response: trailing bytes')
    return { kind: arr.kind, events: items }
  }
  const v = parseSmallJson(body)
  if (typeof v !== 'object' || v === null || typeof v === 'bigint' || Array.isArray(v)) throw new Error('bad response: not an object')
  const o = v as Record<string, JsonValue>
  const keys = Object.keys(o)
  if (keys.length !== 1) throw new Error('bad response: not one variant')
  const inner = o[keys[0]!]
  const u64 = (x: JsonValue | undefined, what: string): bigint => {
    if (typeof x !== 'bigint' || x < 0n || x > U64_MAX) throw new Error(`bad response: ${what} must be a u64`)
    return x
  }
  const obj = (x: JsonValue | undefined): Record<string, JsonValue> => {
    if (typeof x !== 'object' || x === null || typeof x === 'bigint' || Array.isArray(x)) throw new Error('bad response: not an object')
    return x as Record<string, JsonValue>
  }
  switch (keys[0]) {
    case 'TooNew': {
      const t = obj(inner)
      return {
        kind: 'TooNew',
        requestedStart: u64(t.requested_start, 'requested_start'),
        requestedEnd: u64(t.requested_end, 'requested_end'),
        newestAvailable: u64(t.newest_available, 'newest_available'),
      }
    }
    case 'InvalidRange': {
      const t = obj(inner)
      return { kind: 'InvalidRange', startId: u64(t.start_id, 'start_id'), endId: u64(t.end_id, 'end_id') }
    }
    case 'Error':
      if (typeof inner !== 'string') throw new Error('bad response: Error must be a string')
      return { kind: 'Error', message: inner }
    default:
      throw new Error(`bad response: unknown variant ${JSON.stringify(keys[0])}`)
  }
}

/**
 * Splits the JSON array starting at `open` (a `[`) into its elements' byte slices (strings and nesting
 * respected), resumably: step() scans a bounded number of bytes, so a caller can yield between steps.
 * The elements themselves are checked by whoever parses them (the core).
 */
export class ArraySplitter {
  readonly items: Buffer[] = []
  /** The position after the closing `]`, once done. */
  end = -1
  readonly #b: Buffer
  #p: number
  #start: number
  #depth = 0
  #inString = false

  constructor(b: Buffer, open: number) {
    this.#b = b
    this.#p = open + 1
    this.#start = this.#p
    if (b[this.#p] === 0x5d) this.end = this.#p + 1
  }

  /** Scans up to `budget` bytes; true once the array is complete. Throws on an unbalanced or truncated array. */
  step(budget: number): boolean {
    if (this.end >= 0) return true
    const b = this.#b
    const stop = Math.min(b.length, this.#p + budget)
    let p = this.#p
    let depth = this.#depth
    let inString = this.#inString
    for (; p < stop; p++) {
      const c = b[p]!
      if (inString) {
        if (c === 0x5c) p++
        else if (c === 0x22) inString = false
        continue
      }
      if (c === 0x22) inString = true
      else if (c === 0x7b || c === 0x5b) depth++
      else if (c === 0x7d || c === 0x5d) {
        if (depth === 0) {
          if (c !== 0x5d) throw new Error('bad response: unbalanced array')
          this.items.push(b.subarray(this.#start, p))
          this.end = p + 1
          return true
        }
        depth--
      } else if (c === 0x2c && depth === 0) {
        this.items.push(b.subarray(this.#start, p))
        this.#start = p + 1
      }
    }
    this.#p = p
    this.#depth = depth
    this.#inString = inString
    if (p >= b.length) throw new Error('bad response: truncated array')
    return false
  }
}

/** The array variant of a response body (`Events` / `TreeDump`) and the position of its `[`, else null. */
export function responseArray(body: Buffer): { kind: 'Events' | 'TreeDump'; open: number } | null {
  for (const kind of ['Events', 'TreeDump'] as const) {
    const head = `{"${kind}":[`
    if (body.length >= head.length && body.toString('latin1', 0, head.length) === head) return { kind, open: head.length - 1 }
  }
  return null
}

/** The whole array at `open`, split at once. */
export function splitArray(b: Buffer, open: number): { items: Buffer[]; end: number } {
  const s = new ArraySplitter(b, open)
  s.step(Number.POSITIVE_INFINITY)
  return { items: s.items, end: s.end }
}

const EVENT_ID_KEY = Buffer.from('"event_id":')

/** The `event_id` of one event's JSON (the first `event_id` key: it precedes `data` in the wire's key order). */
export function eventIdOfJson(ev: Buffer): bigint | null {
  const at = ev.indexOf(EVENT_ID_KEY)
  if (at < 0) return null
  let p = at + EVENT_ID_KEY.length
  const start = p
  while (p < ev.length && ev[p]! >= 0x30 && ev[p]! <= 0x39) p++
  if (p === start || p - start > 20) return null
  const v = BigInt(ev.toString('latin1', start, p))
  return v > U64_MAX ? null : v
}

// ---------------------------------------------------------------------------------------------------
// a small JSON reader for requests and short responses: integers become bigints (exact), other
// numbers are refused

export type JsonValue = null | boolean | bigint | string | JsonValue[] | { [k: string]: JsonValue }

/** Parses small JSON documents (requests, TooNew/InvalidRange/Error bodies); throws on anything else. */
export function parseSmallJson(bytes: Uint8Array): JsonValue {
  if (bytes.length > 1 << 16) throw new Error('malformed JSON: too long')
  let text: string
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes)
  } catch {
    throw new Error('malformed JSON: invalid UTF-8')
  }
  let p = 0
  const ws = () => {
    while (p < text.length && (text[p] === ' ' || text[p] === '\n' || text[p] === '\r' || text[p] === '\t')) p++
  }
  const fail = (what: string): never => {
    throw new Error(`malformed JSON: ${what} at byte ${p}`)
  }
  const value = (depth: number): JsonValue => {
    if (depth > 16) fail('nesting too deep')
    ws()
    const c = text[p]
    if (c === '{') {
      p++
      const o: Record<string, JsonValue> = {}
      ws()
      if (text[p] === '}') {
        p++
        return o
      }
      for (;;) {
        ws()
        if (text[p] !== '"') fail('expected a key')
        const k = str()
        ws()
        if (text[p++] !== ':') fail("expected ':'")
        if (Object.hasOwn(o, k)) fail(`duplicate key ${JSON.stringify(k)}`)
        o[k] = value(depth + 1)
        ws()
        if (text[p] === ',') {
          p++
          continue
        }
        if (text[p] === '}') {
          p++
          return o
        }
        fail("expected ',' or '}'")
      }
    }
    if (c === '[') {
      p++
      const a: JsonValue[] = []
      ws()
      if (text[p] === ']') {
        p++
        return a
      }
      for (;;) {
        a.push(value(depth + 1))
        ws()
        if (text[p] === ',') {
          p++
          continue
        }
        if (text[p] === ']') {
          p++
          return a
        }
        fail("expected ',' or ']'")
      }
    }
    if (c === '"') return str()
    if (text.startsWith('null', p)) {
      p += 4
      return null
    }
    if (text.startsWith('true', p)) {
      p += 4
      return true
    }
    if (text.startsWith('false', p)) {
      p += 5
      return false
    }
    const m = /^-?(0|[1-9][0-9]*)([.eE][-+0-9.eE]*)?/.exec(text.slice(p, p + 400))
    if (!m) return fail('unexpected character')
    if (m[2] !== undefined) fail('a number that is not an integer')
    p += m[0].length
    return BigInt(m[0])
  }
  const str = (): string => {
    const start = p
    p++
    let escaped = false
    for (; p < text.length; p++) {
      const ch = text[p]
      if (escaped) escaped = false
      else if (ch === '\\') escaped = true
      else if (ch === '"') break
      else if (ch! < ' ') fail('control character in a string')
    }
    if (p >= text.length) fail('unterminated string')
    p++
    try {
      return JSON.parse(text.slice(start, p)) as string
    } catch {
      return fail('bad string escape')
    }
  }
  const v = value(0)
  ws()
  if (p !== text.length) fail('trailing characters')
  return v
}

// ---------------------------------------------------------------------------------------------------
// event-plane peeks (msgpack): what the router needs before applying, without decoding the event

const K_PAYLOAD = ascii('payload')
const K_PUBLISHER_ID = ascii('publisher_id')
const K_SEQUENCE = ascii('sequence')
const K_WORKER_ID = ascii('worker_id')
const K_EVENT = ascii('event')
const K_EVENT_ID = ascii('event_id')
const K_DATA = ascii('data')
const K_DP_RANK = ascii('dp_rank')
const K_STORED = ascii('stored')
const K_REMOVED = ascii('removed')
const K_CLEARED = ascii('cleared')
const K_ACTIVE_DECODE = ascii('active_decode_blocks')

/** The type of a router event's data. */
export type EventKind = 'stored' | 'removed' | 'cleared'

/** What peekEnvelope found (one shared object, refilled by every call). */
export const peeked = { workerId: 0n, eventId: 0n, dpRank: 0, kind: 'stored' as EventKind }

/** The bin payload of a validated envelope at [0, end): sets lastRead.len, returns its position or -1. */
function envelopePayload(b: Uint8Array): number {
  if (validate(b, 0, b.length) !== b.length) return -1
  let p = mapAt(b, 0)
  if (p < 0) return -1
  const n = lastRead.count
  for (let i = 0; i < n; i++) {
    const k = strAt(b, p)
    if (k < 0) return -1
    const klen = lastRead.len
    const v = k + klen
    if (bytesEq(b, k, klen, K_PAYLOAD)) {
      const q = binAt(b, v)
      if (q < 0) return -1
      return q
    }
    p = skip(b, v)
  }
  return -1
}

/** An envelope's publisher_id and sequence (u64), or null when the bytes are not a valid msgpack map with both. */
export function envelopeIds(b: Uint8Array): { publisherId: bigint; sequence: bigint } | null {
  if (validate(b, 0, b.length) !== b.length) return null
  let p = mapAt(b, 0)
  if (p < 0) return null
  const n = lastRead.count
  let publisherId: bigint | null = null
  let sequence: bigint | null = null
  for (let i = 0; i < n; i++) {
    const k = strAt(b, p)
    if (k < 0) return null
    const klen = lastRead.len
    const v = k + klen
    if (bytesEq(b, k, klen, K_PUBLISHER_ID) || bytesEq(b, k, klen, K_SEQUENCE)) {
      if (intAt(b, v) !== INT_NONNEG) return null
      if (bytesEq(b, k, klen, K_PUBLISHER_ID)) publisherId = lastReadBig()
      else sequence = lastReadBig()
      p = lastRead.next
    } else p = skip(b, v)
  }
  return publisherId === null || sequence === null ? null : { publisherId, sequence }
}

/**
 * Reads worker id, dp rank, event id and the data's kind of the RouterEvent inside an event-plane
 * envelope into `peeked`. false when the bytes are not one (the router then lets applyEncoded say why).
 */
export function peekEnvelope(b: Uint8Array): boolean {
  const at = envelopePayload(b)
  if (at < 0) return false
  const end = at + lastRead.len
  if (validate(b, at, end) !== end) return false
  let p = mapAt(b, at)
  if (p < 0) return false
  const n = lastRead.count
  let haveWorker = false
  let haveId = false
  let haveRank = false
  let haveKind = false
  for (let i = 0; i < n; i++) {
    const k = strAt(b, p)
    if (k < 0) return false
    const klen = lastRead.len
    const v = k + klen
    if (bytesEq(b, k, klen, K_WORKER_ID)) {
      if (intAt(b, v) !== INT_NONNEG) return false
      peeked.workerId = lastReadBig()
      haveWorker = true
      p = lastRead.next
    } else if (bytesEq(b, k, klen, K_EVENT)) {
      let q = mapAt(b, v)
      if (q < 0) return false
      const m = lastRead.count
      for (let j = 0; j < m; j++) {
        const k2 = strAt(b, q)
        if (k2 < 0) return false
        const k2len = lastRead.len
        const v2 = k2 + k2len
        if (bytesEq(b, k2, k2len, K_EVENT_ID)) {
          if (intAt(b, v2) !== INT_NONNEG) return false
          peeked.eventId = lastReadBig()
          haveId = true
          q = lastRead.next
        } else if (bytesEq(b, k2, k2len, K_DP_RANK)) {
          if (intAt(b, v2) !== INT_NONNEG || lastRead.hi !== 0 || lastRead.lo > U32_MAX) return false
          peeked.dpRank = lastRead.lo
          haveRank = true
          q = lastRead.next
        } else if (bytesEq(b, k2, k2len, K_DATA)) {
          const s = strAt(b, v2)
          if (s >= 0) {
            if (!bytesEq(b, s, lastRead.len, K_CLEARED)) return false
            peeked.kind = 'cleared'
          } else {
            const d = mapAt(b, v2)
            if (d < 0 || lastRead.count !== 1) return false
            const dk = strAt(b, d)
            if (dk < 0) return false
            if (bytesEq(b, dk, lastRead.len, K_STORED)) peeked.kind = 'stored'
            else if (bytesEq(b, dk, lastRead.len, K_REMOVED)) peeked.kind = 'removed'
            else return false
          }
          haveKind = true
          q = skip(b, v2)
        } else q = skip(b, v2)
      }
      p = q
    } else p = skip(b, v)
  }
  return haveWorker && haveId && haveRank && haveKind
}

/** A worker's load as the router reads it from a kv_metrics envelope. */
export interface ActiveLoadValue {
  workerId: bigint
  dpRank: number
  activeDecodeBlocks: bigint
}

/** Decodes Dynamo's ActiveLoad inside a kv_metrics envelope; null when the bytes are not one. */
export function decodeActiveLoadEnvelope(b: Uint8Array): ActiveLoadValue | null {
  const at = envelopePayload(b)
  if (at < 0) return null
  const end = at + lastRead.len
  if (validate(b, at, end) !== end) return null
  let p = mapAt(b, at)
  if (p < 0) return null
  const n = lastRead.count
  let workerId: bigint | null = null
  let dpRank: number | null = null
  let blocks: bigint | null = null
  for (let i = 0; i < n; i++) {
    const k = strAt(b, p)
    if (k < 0) return null
    const klen = lastRead.len
    const v = k + klen
    if (bytesEq(b, k, klen, K_WORKER_ID) || bytesEq(b, k, klen, K_ACTIVE_DECODE)) {
      if (intAt(b, v) !== INT_NONNEG) return null
      if (bytesEq(b, k, klen, K_WORKER_ID)) workerId = lastReadBig()
      else blocks = lastReadBig()
      p = lastRead.next
    } else if (bytesEq(b, k, klen, K_DP_RANK)) {
      if (intAt(b, v) !== INT_NONNEG || lastRead.hi !== 0) return null
      dpRank = lastRead.lo
      p = lastRead.next
    } else p = skip(b, v)
  }
  if (workerId === null || dpRank === null || blocks === null) return null
  return { workerId, dpRank, activeDecodeBlocks: blocks }
}

export type { RouterEventValue }
