// Router-side wire types and their exact encodings (SPEC 5, and 5b for Dynamo 1.4+) for the fallback: the RouterEvent as
// rmp-serde named msgpack and as compact JSON with exact u64, the event-plane envelope, ActiveLoad,
// RouterEvent decoding (generic, and the canonical layout read in place for the router's hot path), and
// the JetStream stream name.
//
// RouterEvents are written through `EventEncoder`, a set of primitive steps over a ByteWriter, so that
// the ingest hot path writes straight from its scratch arrays (u64 as u32 halves) and the public
// encodeRouterEvent writes from JS objects through the same code.
import type {
  BlockExtraInfo,
  ConvertedEvent,
  EncodedFormat,
  MmObject,
  ResidencyDomain,
  RouterEventValue,
  StorageTier,
} from '../core/binding.js'
import { encodeSegment } from './discovery.js'
import { asciiBytes, get, JsonError, NULL, OTHER, parseJson, writeBigDec, writeSafeDec, writeU64Dec, type Val } from './json.js'
import {
  arrayAt,
  ascii,
  binAt,
  type ByteWriter,
  bytesEq,
  HI,
  INT_NONNEG,
  intAt,
  keyBytes,
  LO,
  MAX_DEPTH,
  mapAt,
  lastRead,
  lastReadBig,
  skip,
  strAt,
  validate,
} from './msgpack.js'

/** The envelope topics of router events and of worker load. */
export const KV_EVENTS_TOPIC = 'kv-events'
export const KV_METRICS_TOPIC = 'kv_metrics'
/** The encodings of applyEncoded, by format code. */
export const ENCODED_FORMATS: EncodedFormat[] = ['envelope', 'msgpack', 'json']
/** Dynamo 1.4+'s storage tiers, by code. */
export const STORAGE_TIERS: StorageTier[] = ['device', 'host_pinned', 'disk', 'external']

// ---------------------------------------------------------------------------------------------------
// RouterEvent encoders

/** The steps of writing one RouterEvent; the msgpack and JSON encoders implement the same steps. */
export interface EventEncoder {
  /** Everything up to the value of `data`. */
  start(w: ByteWriter, workerHi: number, workerLo: number, idHi: number, idLo: number): void
  storedStart(w: ByteWriter, hasParent: boolean, parentHi: number, parentLo: number, blocks: number): void
  /** Block i (0-based) of the stored event. */
  block(w: ByteWriter, i: number, hashHi: number, hashLo: number, tokHi: number, tokLo: number, mm: BlockExtraInfo | null): void
  storedEnd(w: ByteWriter): void
  removedStart(w: ByteWriter, hashes: number): void
  /** Hash i (0-based) of the removed event. */
  hash(w: ByteWriter, i: number, hi: number, lo: number): void
  removedEnd(w: ByteWriter): void
  cleared(w: ByteWriter): void
  /** The dp rank and the closing of the event. */
  end(w: ByteWriter, dpRank: number): void
}

const MP_START = concat(new Uint8Array([0x82]), keyBytes('worker_id'))
const MP_EVENT = concat(keyBytes('event'), new Uint8Array([0x83]), keyBytes('event_id'))
const MP_DATA = keyBytes('data')
const MP_STORED = concat(new Uint8Array([0x81]), keyBytes('stored'), new Uint8Array([0x82]), keyBytes('parent_hash'))
const MP_BLOCKS = keyBytes('blocks')
const MP_BLOCK = concat(new Uint8Array([0x83]), keyBytes('block_hash'))
const MP_TOKENS_HASH = keyBytes('tokens_hash')
const MP_MM_INFO = keyBytes('mm_extra_info')
const MP_MM_OBJECTS = concat(new Uint8Array([0x81]), keyBytes('mm_objects'))
const MP_MM_HASH = concat(new Uint8Array([0x82]), keyBytes('mm_hash'))
const MP_OFFSETS = keyBytes('offsets')
const MP_REMOVED = concat(new Uint8Array([0x81]), keyBytes('removed'), new Uint8Array([0x81]), keyBytes('block_hashes'))
const MP_CLEARED = keyBytes('cleared')
const MP_DP_RANK = keyBytes('dp_rank')

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

function writeMmMsgpack(w: ByteWriter, mm: BlockExtraInfo): void {
  w.bytes(MP_MM_OBJECTS)
  w.arrayHeader(mm.mmObjects.length)
  for (const o of mm.mmObjects) {
    w.bytes(MP_MM_HASH)
    w.uintBig(o.mmHash)
    w.bytes(MP_OFFSETS)
    w.arrayHeader(o.offsets.length)
    for (const [a, b] of o.offsets) {
      w.byte(0x92)
      w.uint(0, a)
      w.uint(0, b)
    }
  }
}

export const msgpackEncoder: EventEncoder = {
  start(w, workerHi, workerLo, idHi, idLo) {
    w.bytes(MP_START)
    w.uint(workerHi, workerLo)
    w.bytes(MP_EVENT)
    w.uint(idHi, idLo)
    w.bytes(MP_DATA)
  },
  storedStart(w, hasParent, parentHi, parentLo, blocks) {
    w.bytes(MP_STORED)
    if (hasParent) w.uint(parentHi, parentLo)
    else w.nil()
    w.bytes(MP_BLOCKS)
    w.arrayHeader(blocks)
  },
  block(w, _i, hashHi, hashLo, tokHi, tokLo, mm) {
    w.bytes(MP_BLOCK)
    w.uint(hashHi, hashLo)
    w.bytes(MP_TOKENS_HASH)
    w.uint(tokHi, tokLo)
    w.bytes(MP_MM_INFO)
    if (mm === null) w.nil()
    else writeMmMsgpack(w, mm)
  },
  storedEnd() {},
  removedStart(w, hashes) {
    w.bytes(MP_REMOVED)
    w.arrayHeader(hashes)
  },
  hash(w, _i, hi, lo) {
    w.uint(hi, lo)
  },
  removedEnd() {},
  cleared(w) {
    w.bytes(MP_CLEARED)
  },
  end(w, dpRank) {
    w.bytes(MP_DP_RANK)
    w.uint(0, dpRank)
  },
}

const J_START = asciiBytes('{"worker_id":')
const J_EVENT = asciiBytes(',"event":{"event_id":')
const J_DATA = asciiBytes(',"data":')
const J_STORED = asciiBytes('{"stored":{"parent_hash":')
const J_BLOCKS = asciiBytes(',"blocks":[')
const J_BLOCK = asciiBytes('{"block_hash":')
const J_TOKENS_HASH = asciiBytes(',"tokens_hash":')
const J_MM_INFO = asciiBytes(',"mm_extra_info":')
const J_NULL = asciiBytes('null')
const J_MM_OBJECTS = asciiBytes('{"mm_objects":[')
const J_MM_HASH = asciiBytes('{"mm_hash":')
const J_OFFSETS = asciiBytes(',"offsets":[')
const J_CLOSE3 = asciiBytes(']}}')
const J_REMOVED = asciiBytes('{"removed":{"block_hashes":[')
const J_CLEARED = asciiBytes('"cleared"')
const J_DP_RANK = asciiBytes(',"dp_rank":')
const J_CLOSE2 = asciiBytes('}}')

function writeMmJson(w: ByteWriter, mm: BlockExtraInfo): void {
  w.bytes(J_MM_OBJECTS)
  mm.mmObjects.forEach((o, i) => {
    if (i > 0) w.byte(0x2c)
    w.bytes(J_MM_HASH)
    writeBigDec(w, o.mmHash)
    w.bytes(J_OFFSETS)
    o.offsets.forEach(([a, b], k) => {
      if (k > 0) w.byte(0x2c)
      w.byte(0x5b)
      writeSafeDec(w, a)
      w.byte(0x2c)
      writeSafeDec(w, b)
      w.byte(0x5d)
    })
    w.byte(0x5d)
    w.byte(0x7d)
  })
  w.byte(0x5d)
  w.byte(0x7d)
}

export const jsonEncoder: EventEncoder = {
  start(w, workerHi, workerLo, idHi, idLo) {
    w.bytes(J_START)
    writeU64Dec(w, workerHi, workerLo)
    w.bytes(J_EVENT)
    writeU64Dec(w, idHi, idLo)
    w.bytes(J_DATA)
  },
  storedStart(w, hasParent, parentHi, parentLo) {
    w.bytes(J_STORED)
    if (hasParent) writeU64Dec(w, parentHi, parentLo)
    else w.bytes(J_NULL)
    w.bytes(J_BLOCKS)
  },
  block(w, i, hashHi, hashLo, tokHi, tokLo, mm) {
    if (i > 0) w.byte(0x2c)
    w.bytes(J_BLOCK)
    writeU64Dec(w, hashHi, hashLo)
    w.bytes(J_TOKENS_HASH)
    writeU64Dec(w, tokHi, tokLo)
    w.bytes(J_MM_INFO)
    if (mm === null) w.bytes(J_NULL)
    else writeMmJson(w, mm)
    w.byte(0x7d)
  },
  storedEnd(w) {
    w.bytes(J_CLOSE3)
  },
  removedStart(w) {
    w.bytes(J_REMOVED)
  },
  hash(w, i, hi, lo) {
    if (i > 0) w.byte(0x2c)
    writeU64Dec(w, hi, lo)
  },
  removedEnd(w) {
    w.bytes(J_CLOSE3)
  },
  cleared(w) {
    w.bytes(J_CLEARED)
  },
  end(w, dpRank) {
    w.bytes(J_DP_RANK)
    writeSafeDec(w, dpRank)
    w.bytes(J_CLOSE2)
  },
}

const hi32 = (v: bigint): number => Number(v >> 32n)
const lo32 = (v: bigint): number => Number(v & 0xffffffffn)

/** Writes a RouterEvent given as JS values (the public encodeRouterEvent). */
export function writeRouterEvent(w: ByteWriter, enc: EventEncoder, ev: RouterEventValue): void {
  const { eventId, dpRank, data } = ev.event
  enc.start(w, hi32(ev.workerId), lo32(ev.workerId), hi32(eventId), lo32(eventId))
  if (data.type === 'stored') {
    const p = data.parentHash
    enc.storedStart(w, p !== null, p === null ? 0 : hi32(p), p === null ? 0 : lo32(p), data.blocks.length)
  }
  writeEventBody(w, enc, data, dpRank)
}

/** An event's data after its stored header (written by the caller): blocks, removed hashes or cleared; then the rank. */
function writeEventBody(w: ByteWriter, enc: EventEncoder, data: RouterEventValue['event']['data'], dpRank: number): void {
  switch (data.type) {
    case 'stored': {
      for (let i = 0; i < data.blocks.length; i++) {
        const b = data.blocks[i]!
        enc.block(w, i, hi32(b.blockHash), lo32(b.blockHash), hi32(b.tokensHash), lo32(b.tokensHash), b.mmExtraInfo)
      }
      enc.storedEnd(w)
      break
    }
    case 'removed':
      enc.removedStart(w, data.blockHashes.length)
      for (let i = 0; i < data.blockHashes.length; i++) {
        const h = data.blockHashes[i]!
        enc.hash(w, i, hi32(h), lo32(h))
      }
      enc.removedEnd(w)
      break
    case 'cleared':
      enc.cleared(w)
      break
  }
  enc.end(w, dpRank)
}

const K_WORKER_ID_KEY = keyBytes('worker_id')
const K_STORAGE_TIER = keyBytes('storage_tier')
const K_RESIDENCY = keyBytes('residency_domain')
const MP_EVENT_MAP = concat(keyBytes('event'), new Uint8Array([0x83]), keyBytes('event_id'))
const MP_STORED3 = concat(new Uint8Array([0x81]), keyBytes('stored'), new Uint8Array([0x83]), keyBytes('parent_hash'))
const MP_START_POSITION = concat(keyBytes('start_position'), new Uint8Array([0xc0]))
const J_START_POSITION = asciiBytes(',"start_position":null')

/**
 * Writes a RouterEvent given as JS values, in Dynamo 1.4+'s shape when it has a storageTier or a
 * residencyDomain (wire.rs write_event_msgpack_meta / write_event_json_meta): `storage_tier` and
 * `residency_domain` after `worker_id`, and `start_position: null` in a store when storageTier is there.
 */
export function writeRouterEventValue(w: ByteWriter, json: boolean, ev: RouterEventValue): void {
  const tier = ev.storageTier
  const domain = ev.residencyDomain
  if (tier === undefined && domain === undefined) {
    writeRouterEvent(w, json ? jsonEncoder : msgpackEncoder, ev)
    return
  }
  const enc = json ? jsonEncoder : msgpackEncoder
  const { eventId, dpRank, data } = ev.event
  if (json) {
    w.bytes(J_START)
    writeBigDec(w, ev.workerId)
    if (tier !== undefined) {
      w.bytes(asciiBytes(`,"storage_tier":"${tier}"`))
    }
    if (domain !== undefined) w.bytes(asciiBytes(`,"residency_domain":"${domain}"`))
    w.bytes(J_EVENT)
    writeBigDec(w, eventId)
    w.bytes(J_DATA)
  } else {
    w.mapHeader(2 + (tier !== undefined ? 1 : 0) + (domain !== undefined ? 1 : 0))
    w.bytes(K_WORKER_ID_KEY)
    w.uintBig(ev.workerId)
    if (tier !== undefined) {
      w.bytes(K_STORAGE_TIER)
      w.str(tier)
    }
    if (domain !== undefined) {
      w.bytes(K_RESIDENCY)
      w.str(domain)
    }
    w.bytes(MP_EVENT_MAP)
    w.uintBig(eventId)
    w.bytes(MP_DATA)
  }
  if (data.type === 'stored') {
    const p = data.parentHash
    if (tier === undefined) {
      enc.storedStart(w, p !== null, p === null ? 0 : hi32(p), p === null ? 0 : lo32(p), data.blocks.length)
    } else if (json) {
      w.bytes(J_STORED)
      if (p === null) w.bytes(J_NULL)
      else writeBigDec(w, p)
      w.bytes(J_START_POSITION)
      w.bytes(J_BLOCKS)
    } else {
      w.bytes(MP_STORED3)
      if (p === null) w.nil()
      else w.uintBig(p)
      w.bytes(MP_START_POSITION)
      w.bytes(MP_BLOCKS)
      w.arrayHeader(data.blocks.length)
    }
  }
  writeEventBody(w, enc, data, dpRank)
}

/** A Dynamo 1.4+ payload: the events as one msgpack array, or one JSON array. */
export function writeRouterEvents(w: ByteWriter, json: boolean, evs: RouterEventValue[]): void {
  if (json) w.byte(0x5b)
  else w.arrayHeader(evs.length)
  evs.forEach((ev, i) => {
    if (json && i > 0) w.byte(0x2c)
    writeRouterEventValue(w, json, ev)
  })
  if (json) w.byte(0x5d)
}

// ---------------------------------------------------------------------------------------------------
// envelope and ActiveLoad

const ENV_PUBLISHER_ID = concat(new Uint8Array([0x85]), keyBytes('publisher_id'))
const ENV_SEQUENCE = keyBytes('sequence')
const ENV_PUBLISHED_AT = keyBytes('published_at')
const ENV_TOPIC = keyBytes('topic')
const ENV_PAYLOAD = keyBytes('payload')
/** `topic: "kv-events"` as written by every ingest envelope. */
export const ENV_TOPIC_KV_EVENTS = concat(ENV_TOPIC, keyBytes(KV_EVENTS_TOPIC))

/** The envelope up to (not including) the topic key: publisher_id, sequence, published_at. */
export function writeEnvelopeHead(
  w: ByteWriter,
  pubHi: number,
  pubLo: number,
  seqHi: number,
  seqLo: number,
  atHi: number,
  atLo: number,
): void {
  w.bytes(ENV_PUBLISHER_ID)
  w.uint(pubHi, pubLo)
  w.bytes(ENV_SEQUENCE)
  w.uint(seqHi, seqLo)
  w.bytes(ENV_PUBLISHED_AT)
  w.uint(atHi, atLo)
}

export function writeEnvelope(
  w: ByteWriter,
  publisherId: bigint,
  sequence: bigint,
  publishedAt: bigint,
  topic: string,
  payload: Uint8Array,
): void {
  writeEnvelopeHead(w, hi32(publisherId), lo32(publisherId), hi32(sequence), lo32(sequence), hi32(publishedAt), lo32(publishedAt))
  w.bytes(ENV_TOPIC)
  w.str(topic)
  w.bytes(ENV_PAYLOAD)
  w.bin(payload)
}

/** `payload` key bytes, for the ingest path that writes the envelope's bin itself. */
export const ENV_PAYLOAD_KEY = ENV_PAYLOAD

const AL_WORKER_ID = concat(new Uint8Array([0x84]), keyBytes('worker_id'))
const AL_DP_RANK = keyBytes('dp_rank')
const AL_DECODE = keyBytes('active_decode_blocks')
const AL_PREFILL = keyBytes('active_prefill_tokens')

export function writeActiveLoad(
  w: ByteWriter,
  workerId: bigint,
  dpRank: number,
  activeDecodeBlocks: bigint,
  activePrefillTokens: bigint | null,
): void {
  w.bytes(AL_WORKER_ID)
  w.uintBig(workerId)
  w.bytes(AL_DP_RANK)
  w.uint(0, dpRank)
  w.bytes(AL_DECODE)
  w.uintBig(activeDecodeBlocks)
  w.bytes(AL_PREFILL)
  if (activePrefillTokens === null) w.nil()
  else w.uintBig(activePrefillTokens)
}

const AL14_WORKER_ID = concat(new Uint8Array([0x85]), keyBytes('worker_id'))
const AL_USED = keyBytes('kv_used_blocks')

/** Dynamo 1.4+'s ActiveLoad: kv_used_blocks after the 1.0 fields, each value nil when null. */
export function writeActiveLoad14(
  w: ByteWriter,
  workerId: bigint,
  dpRank: number,
  activeDecodeBlocks: bigint | null,
  activePrefillTokens: bigint | null,
  kvUsedBlocks: bigint | null,
): void {
  const opt = (v: bigint | null): void => (v === null ? w.nil() : w.uintBig(v))
  w.bytes(AL14_WORKER_ID)
  w.uintBig(workerId)
  w.bytes(AL_DP_RANK)
  w.uint(0, dpRank)
  w.bytes(AL_DECODE)
  opt(activeDecodeBlocks)
  w.bytes(AL_PREFILL)
  opt(activePrefillTokens)
  w.bytes(AL_USED)
  opt(kvUsedBlocks)
}

// ---------------------------------------------------------------------------------------------------
// decoding RouterEvents: by key name, unknown keys ignored, any key order

/** The raw layer's error for bytes that are not a RouterEvent: a plain Error, as the binding's (wire.rs WireError). */
function fail(msg: string): never {
  throw new Error(`invalid router event: ${msg}`)
}

const lossy = new TextDecoder('utf-8')

/** A validated msgpack value as a Val (string-keyed map entries in order, repeats kept). */
function msgpackVal(b: Uint8Array, p: number): [Val, number] {
  const ia = intAt(b, p)
  if (ia !== 0) return [ia === INT_NONNEG ? { k: 'u64', v: lastReadBig() } : OTHER, lastRead.next]
  const t = b[p]!
  if (t === 0xc0) return [NULL, p + 1]
  let q = strAt(b, p)
  if (q >= 0) return [{ k: 'str', v: lossy.decode(b.subarray(q, q + lastRead.len)) }, q + lastRead.len]
  q = arrayAt(b, p)
  if (q >= 0) {
    const n = lastRead.count
    const items: Val[] = []
    for (let i = 0; i < n; i++) {
      const [v, next] = msgpackVal(b, q)
      items.push(v)
      q = next
    }
    return [{ k: 'arr', v: items }, q]
  }
  q = mapAt(b, p)
  if (q >= 0) {
    const n = lastRead.count
    const entries: [string, Val][] = []
    for (let i = 0; i < n; i++) {
      const s = strAt(b, q)
      if (s >= 0) {
        const key = lossy.decode(b.subarray(s, s + lastRead.len))
        const [v, next] = msgpackVal(b, s + lastRead.len)
        entries.push([key, v])
        q = next
      } else {
        q = skip(b, skip(b, q)) // non-string key: skipped with its value
      }
    }
    return [{ k: 'obj', v: entries }, q]
  }
  return [OTHER, skip(b, p)] // bool, float, bin, ext
}

function u64Of(v: Val | undefined, what: string): bigint {
  if (v !== undefined && v.k === 'u64') return v.v
  return fail(`${what} must be an unsigned integer`)
}

function u32Of(v: Val | undefined, what: string): number {
  const x = u64Of(v, what)
  if (x > 0xffffffffn) fail(`${what} must fit in 32 bits`)
  return Number(x)
}

function arrOf(v: Val | undefined, what: string): Val[] {
  if (v !== undefined && v.k === 'arr') return v.v
  return fail(`${what} must be an array`)
}

function extraInfoOf(v: Val): BlockExtraInfo {
  const mmObjects = arrOf(get(v, 'mm_objects'), 'mm_objects').map((o): MmObject => {
    const off = get(o, 'offsets')
    let offsets: [number, number][] = []
    if (off !== undefined && off.k !== 'null') {
      if (off.k !== 'arr') fail('offsets must be an array')
      offsets = off.v.map((p): [number, number] => {
        if (p.k !== 'arr' || p.v.length !== 2) fail('offsets must be [start, end] pairs')
        return [u32Of(p.v[0], 'offset'), u32Of(p.v[1], 'offset')]
      })
    }
    return { mmHash: u64Of(get(o, 'mm_hash'), 'mm_hash'), offsets }
  })
  return { mmObjects }
}

function routerEventOf(v: Val): RouterEventValue {
  if (v.k !== 'obj') fail('not a map')
  const workerId = u64Of(get(v, 'worker_id'), 'worker_id')
  const t = get(v, 'storage_tier')
  let storageTier: StorageTier | undefined
  if (t !== undefined) {
    if (t.k !== 'str' || !(STORAGE_TIERS as string[]).includes(t.v)) fail('storage_tier must be device, host_pinned, disk or external')
    storageTier = t.v as StorageTier
  }
  const r = get(v, 'residency_domain')
  let residencyDomain: ResidencyDomain | undefined
  if (r !== undefined) {
    if (r.k !== 'str' || (r.v !== 'worker' && r.v !== 'cache_owner')) fail('residency_domain must be worker or cache_owner')
    residencyDomain = r.v as ResidencyDomain
  }
  const event = get(v, 'event')
  if (event === undefined || event.k !== 'obj') fail('event must be a map')
  const eventId = u64Of(get(event, 'event_id'), 'event_id')
  const rank = get(event, 'dp_rank')
  if (rank === undefined) fail('dp_rank missing')
  const dpRank = u32Of(rank, 'dp_rank')
  const d = get(event, 'data')
  let data: ConvertedEvent
  if (d !== undefined && d.k === 'str' && d.v === 'cleared') {
    data = { type: 'cleared' }
  } else if (d !== undefined && d.k === 'obj' && d.v.length === 1) {
    const s = get(d, 'stored')
    const r = get(d, 'removed')
    if (s !== undefined) {
      const p = get(s, 'parent_hash')
      const parentHash = p === undefined || p.k === 'null' ? null : u64Of(p, 'parent_hash')
      const sp = get(s, 'start_position')
      if (sp !== undefined && sp.k !== 'null') u32Of(sp, 'start_position')
      const blocks = arrOf(get(s, 'blocks'), 'blocks').map((b) => {
        const mm = get(b, 'mm_extra_info')
        return {
          blockHash: u64Of(get(b, 'block_hash'), 'block_hash'),
          tokensHash: u64Of(get(b, 'tokens_hash'), 'tokens_hash'),
          mmExtraInfo: mm === undefined || mm.k === 'null' ? null : extraInfoOf(mm),
        }
      })
      data = { type: 'stored', parentHash, blocks }
    } else if (r !== undefined) {
      data = { type: 'removed', blockHashes: arrOf(get(r, 'block_hashes'), 'block_hashes').map((h) => u64Of(h, 'block hash')) }
    } else {
      fail('data must be stored, removed or cleared')
    }
  } else {
    fail('data must be stored, removed or cleared')
  }
  // keys in the native binding's order: workerId, storageTier?, residencyDomain?, event
  const out = { workerId } as RouterEventValue
  if (storageTier !== undefined) out.storageTier = storageTier
  if (residencyDomain !== undefined) out.residencyDomain = residencyDomain
  out.event = { eventId, dpRank, data }
  return out
}

/** The events of a value: one map (Dynamo 1.0's payload) or an array of them (Dynamo 1.4+'s). */
function routerEventsOf(v: Val): RouterEventValue[] {
  if (v.k === 'arr' && v.v.length === 0) fail('an empty batch') // a publisher never sends one
  return v.k === 'arr' ? v.v.map(routerEventOf) : [routerEventOf(v)]
}

/** The single event of a decoded payload (a Dynamo 1.0 map, or a Dynamo 1.4 array of one). */
function one(list: RouterEventValue[]): RouterEventValue {
  if (list.length === 1) return list[0]!
  return fail(`a batch of ${list.length} events where one was expected (decodeRouterEvents reads batches)`)
}

export function decodeRouterEvent(bytes: Uint8Array, json: boolean): RouterEventValue {
  return one(decodeRouterEventList(bytes, json))
}

/** The RouterEvents of msgpack or JSON bytes: one event, or a Dynamo 1.4+ array. */
export function decodeRouterEventList(bytes: Uint8Array, json: boolean): RouterEventValue[] {
  let v: Val
  if (json) {
    try {
      v = parseJson(bytes, MAX_DEPTH)
    } catch (e) {
      if (e instanceof JsonError) return fail(`bad JSON: ${e.message}`)
      throw e
    }
  } else {
    const end = validate(bytes, 0, bytes.length)
    if (end < 0) fail('malformed msgpack')
    if (end !== bytes.length) fail('trailing bytes')
    v = msgpackVal(bytes, 0)[0]
  }
  return routerEventsOf(v)
}

// ---------------------------------------------------------------------------------------------------
// the router's hot path: the canonical msgpack RouterEvent read in place

const K_PAYLOAD = ascii('payload')
const K_WORKER_ID = ascii('worker_id')
const K_EVENT = ascii('event')
const K_EVENT_ID = ascii('event_id')
const K_DATA = ascii('data')
const K_DP_RANK = ascii('dp_rank')
const K_CLEARED = ascii('cleared')
const K_STORED = ascii('stored')
const K_REMOVED = ascii('removed')
const K_PARENT_HASH = ascii('parent_hash')
const K_BLOCKS = ascii('blocks')
const K_BLOCK_HASH = ascii('block_hash')
const K_TOKENS_HASH = ascii('tokens_hash')
const K_MM_EXTRA_INFO = ascii('mm_extra_info')
const K_BLOCK_HASHES = ascii('block_hashes')

/** The position of the first key of the map at p when it has exactly n pairs, else -1. */
function mapOf(b: Uint8Array, p: number, n: number): number {
  if (p < 0) return -1
  const q = mapAt(b, p)
  return q >= 0 && lastRead.count === n ? q : -1
}

/** The position of the value after the string key `key` at p, else -1. */
function valueOfKey(b: Uint8Array, p: number, key: Uint8Array): number {
  if (p < 0) return -1
  const s = strAt(b, p)
  return s >= 0 && bytesEq(b, s, lastRead.len, key) ? s + lastRead.len : -1
}

/** The position of the unsigned integer after the key `key` at p (its value in lastRead.hi/lastRead.lo), else -1. */
function uintOfKey(b: Uint8Array, p: number, key: Uint8Array): number {
  const v = valueOfKey(b, p, key)
  return v >= 0 && intAt(b, v) === INT_NONNEG ? v : -1
}

export const KIND_STORED = 1
export const KIND_REMOVED = 2
export const KIND_CLEARED = 3

/**
 * A msgpack RouterEvent read straight into u32 halves, without objects or BigInt: only the exact layout
 * the encoders write (rmp-serde named maps, keys in declaration order, no extra keys, no mm_extra_info).
 * Anything else is left to the generic decoder (decodeRouterEvent), which gives the same values for
 * this layout, so the fast path never changes a result.
 */
export class CanonicalRouterEvent {
  workerHi = 0
  workerLo = 0
  eventIdHi = 0
  eventIdLo = 0
  dpRank = 0
  kind = 0
  hasParent = false
  parentHi = 0
  parentLo = 0
  /** Blocks (stored) or hashes (removed) read. */
  count = 0
  /** u64 pairs (element i at [2i + HI], [2i + LO]): block hashes, and for a store the tokens hashes. */
  blockHashes = new Uint32Array(128)
  tokensHashes = new Uint32Array(128)

  /** Parses b[p, end); false when the bytes are not exactly the canonical layout. */
  parse(b: Uint8Array, p: number, end: number): boolean {
    if (validate(b, p, end) !== end) return false
    let q = mapOf(b, p, 2)
    if (q < 0) return false
    q = uintOfKey(b, q, K_WORKER_ID)
    if (q < 0) return false
    this.workerHi = lastRead.hi
    this.workerLo = lastRead.lo
    q = mapOf(b, valueOfKey(b, lastRead.next, K_EVENT), 3)
    if (q < 0) return false
    q = uintOfKey(b, q, K_EVENT_ID)
    if (q < 0) return false
    this.eventIdHi = lastRead.hi
    this.eventIdLo = lastRead.lo
    q = valueOfKey(b, lastRead.next, K_DATA)
    if (q < 0) return false
    const s = strAt(b, q)
    if (s >= 0) {
      if (!bytesEq(b, s, lastRead.len, K_CLEARED)) return false
      this.kind = KIND_CLEARED
      q = s + lastRead.len
    } else {
      q = mapOf(b, q, 1)
      if (q < 0) return false
      const stored = valueOfKey(b, q, K_STORED)
      q = stored >= 0 ? this.readStored(b, stored) : this.readRemoved(b, valueOfKey(b, q, K_REMOVED))
      if (q < 0) return false
    }
    q = uintOfKey(b, q, K_DP_RANK)
    if (q < 0 || lastRead.hi !== 0) return false
    this.dpRank = lastRead.lo
    return lastRead.next === end
  }

  /** `{parent_hash, blocks}` at p (-1 = not this layout); returns the position after it. */
  private readStored(b: Uint8Array, p: number): number {
    let q = valueOfKey(b, mapOf(b, p, 2), K_PARENT_HASH)
    if (q < 0) return -1
    if (b[q] === 0xc0) {
      this.hasParent = false
      this.parentHi = 0
      this.parentLo = 0
      q++
    } else {
      if (intAt(b, q) !== INT_NONNEG) return -1
      this.hasParent = true
      this.parentHi = lastRead.hi
      this.parentLo = lastRead.lo
      q = lastRead.next
    }
    q = valueOfKey(b, q, K_BLOCKS)
    if (q < 0) return -1
    q = arrayAt(b, q)
    if (q < 0) return -1
    const n = lastRead.count
    this.room(n)
    const hashes = this.blockHashes
    const tokens = this.tokensHashes
    for (let i = 0; i < n; i++) {
      q = uintOfKey(b, mapOf(b, q, 3), K_BLOCK_HASH)
      if (q < 0) return -1
      hashes[2 * i + HI] = lastRead.hi
      hashes[2 * i + LO] = lastRead.lo
      q = uintOfKey(b, lastRead.next, K_TOKENS_HASH)
      if (q < 0) return -1
      tokens[2 * i + HI] = lastRead.hi
      tokens[2 * i + LO] = lastRead.lo
      q = valueOfKey(b, lastRead.next, K_MM_EXTRA_INFO)
      if (q < 0 || b[q] !== 0xc0) return -1
      q++
    }
    this.count = n
    this.kind = KIND_STORED
    return q
  }

  /** `{block_hashes}` at p (-1 = not this layout); returns the position after it. */
  private readRemoved(b: Uint8Array, p: number): number {
    let q = valueOfKey(b, mapOf(b, p, 1), K_BLOCK_HASHES)
    if (q < 0) return -1
    q = arrayAt(b, q)
    if (q < 0) return -1
    const n = lastRead.count
    this.room(n)
    const hashes = this.blockHashes
    for (let i = 0; i < n; i++) {
      if (intAt(b, q) !== INT_NONNEG) return -1
      hashes[2 * i + HI] = lastRead.hi
      hashes[2 * i + LO] = lastRead.lo
      q = lastRead.next
    }
    this.count = n
    this.kind = KIND_REMOVED
    return q
  }

  private room(n: number): void {
    if (this.blockHashes.length < 2 * n) {
      this.blockHashes = new Uint32Array(4 * n)
      this.tokensHashes = new Uint32Array(4 * n)
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// the event-plane envelope, read (router side)

/** Where envelopePayload found the payload: bytes [at, at + len) of the envelope. */
export const PAYLOAD_AT = { at: 0, len: 0 }

/**
 * Finds the RouterEvent bytes inside an event-plane envelope (a map of scalars whose `payload` is a bin)
 * into PAYLOAD_AT; throws on anything else. Mirrors wire.rs decode_router_event_envelope: the top value
 * must be a map of scalar keys and values with nothing after it; the last `"payload": bin` pair wins.
 */
export function envelopePayload(b: Uint8Array): void {
  if (b.length === 0) fail('envelope is not a map')
  const end = validate(b, 0, b.length)
  let p = end < 0 ? -1 : mapAt(b, 0)
  if (p < 0) {
    // a well-formed non-map is not an envelope; malformed bytes under a map marker are a malformed one
    if (end >= 0 || !((b[0]! & 0xf0) === 0x80 || b[0] === 0xde || b[0] === 0xdf)) fail('envelope is not a map')
    fail('malformed envelope')
  }
  const n = lastRead.count
  let payloadAt = -1
  let payloadLen = 0
  for (let i = 0; i < n; i++) {
    const kt = b[p]!
    const keyIsContainer = (kt & 0xe0) === 0x80 || kt === 0xdc || kt === 0xdd || kt === 0xde || kt === 0xdf
    const ks = strAt(b, p)
    const isPayloadKey = ks >= 0 && bytesEq(b, ks, lastRead.len, K_PAYLOAD)
    const v = skip(b, p)
    const vt = b[v]!
    const valueIsContainer = (vt & 0xe0) === 0x80 || vt === 0xdc || vt === 0xdd || vt === 0xde || vt === 0xdf
    if (keyIsContainer || valueIsContainer) fail('malformed envelope')
    if (isPayloadKey) {
      const q = binAt(b, v)
      if (q >= 0) {
        payloadAt = q
        payloadLen = lastRead.len
      }
    }
    p = skip(b, v)
  }
  if (p !== b.length) fail('trailing bytes after the envelope')
  if (payloadAt < 0) fail('envelope without a bin payload')
  PAYLOAD_AT.at = payloadAt
  PAYLOAD_AT.len = payloadLen
}

/** The RouterEvent inside an event-plane envelope. */
export function decodeEnvelope(b: Uint8Array): RouterEventValue {
  return one(decodeEnvelopeList(b))
}

/** The RouterEvents inside an event-plane envelope (one, or a Dynamo 1.4+ array). */
export function decodeEnvelopeList(b: Uint8Array): RouterEventValue[] {
  envelopePayload(b)
  return decodeRouterEventList(b.subarray(PAYLOAD_AT.at, PAYLOAD_AT.at + PAYLOAD_AT.len), false)
}

/** format: 0 envelope, 1 msgpack RouterEvent, 2 JSON RouterEvent. */
export function decodeEncoded(payload: Uint8Array, format: number): RouterEventValue {
  return one(decodeEncodedList(payload, format))
}

/** Every RouterEvent of a payload in `format` (0 envelope, 1 msgpack, 2 JSON): one, or a Dynamo 1.4+ array. */
export function decodeEncodedList(payload: Uint8Array, format: number): RouterEventValue[] {
  if (format === 0) return decodeEnvelopeList(payload)
  return decodeRouterEventList(payload, format === 2)
}

// ---------------------------------------------------------------------------------------------------
// names: the JetStream stream name (SPEC 5)

/** The event-plane subject a Dynamo 1.0 router subscribes to. */
export function kvEventsSubject(namespace: string, component: string): string {
  return `namespace.${namespace}.component.${component}.${KV_EVENTS_TOPIC}`
}

/** The subject a Dynamo 1.0 router reads worker load from. */
export function kvMetricsSubject(namespace: string): string {
  return `namespace.${namespace}.${KV_METRICS_TOPIC}`
}

/** Dynamo 1.4+'s `namespace.{ns}.component.{c}.endpoint.{e}`, each segment percent-encoded. */
export function endpointSubjectPrefix(namespace: string, component: string, endpoint: string): string {
  return `namespace.${encodeSegment(namespace)}.component.${encodeSegment(component)}.endpoint.${encodeSegment(endpoint)}`
}

/** Dynamo 1.4+'s subject of `topic` for one serving endpoint. */
export function endpointSubject(namespace: string, component: string, endpoint: string, topic: string): string {
  return `${endpointSubjectPrefix(namespace, component, endpoint)}.${topic}`
}

/** The subject events are published to in a JetStream stream. */
export function jetstreamSubject(streamName: string): string {
  return `${streamName}.${KV_EVENTS_TOPIC}`
}

export function jetstreamStreamName(namespace: string, component: string): string {
  const lowered = kvEventsSubject(namespace, component).toLowerCase()
  let slug = ''
  for (const ch of lowered) {
    // iterating a string yields code points: an astral character becomes ONE '_'
    const c = ch.length === 1 ? ch.charCodeAt(0) : -1
    const keep = (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2d || c === 0x5f
    slug += keep ? ch : '_'
  }
  let start = 0
  while (start < slug.length && slug.charCodeAt(start) === 0x5f) start++
  return slug.slice(start).replaceAll('_', '-')
}
