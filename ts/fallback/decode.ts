// Engine batch decoding and conversion (SPEC 2.2-2.4 and 3) and block hashing (SPEC 4) for the fallback.
//
// A batch is first validated whole (`readBatchHead`: msgpack well-formedness, depth, trailing bytes,
// top-level shape), so that a malformed batch applies nothing. Each event is then read straight from the
// payload bytes by `EventParser`: hashes and tokens land in reusable typed scratch arrays (u64 as u32
// halves), string fields are compared as bytes, and nothing is allocated per block unless the event
// carries multimodal info. `convertEvent` applies the checks of SPEC 3 in order; `hashKept` computes the
// tokens hashes of the kept blocks.
import type { BlockExtraInfo, ConvertedEvent, MmObject, RawDecoded, RawPeek, StoredBlock } from '../core/binding.js'
import {
  arrayAt,
  ascii,
  be32,
  binAt,
  bytesEq,
  HI,
  intAt,
  INT_NONNEG,
  isUtf8,
  LITTLE_ENDIAN,
  LO,
  mapAt,
  NOT_INT,
  R,
  skip,
  strAt,
  TOP,
  validate,
} from './msgpack.js'
import { xxh3_64_into } from './xxh3.js'

// rejection reasons, indexed like REJECT_REASONS
export const OK = -1
export const REJ_MALFORMED = 0
export const REJ_INVALID = 1
export const REJ_UNKNOWN_TYPE = 2
export const REJ_FILTERED_TIER = 3
export const REJ_FILTERED_GROUP = 4
export const REJ_EMPTY = 5
export const REJ_SELF_REFERENCE = 6
export const REJ_BLOCK_SIZE = 7
export const REJ_DP_RANK = 8
export const REJECT_COUNT = 9

/** Learned KV groups per rank: at most this many. */
export const MAX_GROUPS_PER_RANK = 1024

export const BASE_SEED = 1337
const TWO32 = 4294967296

// ---------------------------------------------------------------------------------------------------
// the batch (SPEC 2.2)

/** The top level of a validated batch. */
export class BatchHead {
  dpRank = 0
  /** Position of the first event and the number of events. */
  eventsPos = 0
  eventsCount = 0
  /** Position of the bytes of a 16-byte bin 4th element (vLLM publisher id), else -1. */
  publisherIdPos = -1
}

const K_EVENTS = ascii('events')
const K_DATA_PARALLEL_RANK = ascii('data_parallel_rank')
const K_DP_RANK = ascii('dp_rank')

/** Sets head.dpRank from the value at p (nil = 0, an integer 0..2^32-1); false if it is neither. */
function rankAt(b: Uint8Array, p: number, head: BatchHead): boolean {
  if (b[p] === 0xc0) {
    head.dpRank = 0
    return true
  }
  if (intAt(b, p) !== INT_NONNEG || R.hi !== 0) return false
  head.dpRank = R.lo
  return true
}

/**
 * Validates the whole payload (well-formed msgpack within the depth limit, nothing after it) and its top
 * level (SPEC 2.2). false = malformed.
 */
export function readBatchHead(b: Uint8Array, head: BatchHead): boolean {
  if (b.length === 0 || validate(b, 0, b.length) !== b.length) return false
  head.publisherIdPos = -1
  let q = arrayAt(b, 0)
  if (q >= 0) {
    // [ts (not validated), events, dp_rank?, publisher_id?, ...]; TOP holds where they start
    const n = R.count
    if (n < 2) return false
    const ev = arrayAt(b, TOP[1]!)
    if (ev < 0) return false
    head.eventsPos = ev
    head.eventsCount = R.count
    if (n < 3) {
      head.dpRank = 0
      return true
    }
    if (!rankAt(b, TOP[2]!, head)) return false
    if (n >= 4) {
      const s = binAt(b, TOP[3]!)
      if (s >= 0 && R.len === 16) head.publisherIdPos = s
    }
    return true
  }
  q = mapAt(b, 0)
  if (q < 0) return false
  const n = R.count
  let events = -1
  let dpr = -1
  let rank = -1
  for (let i = 0; i < n; i++) {
    const s = strAt(b, q)
    if (s < 0) {
      q = skip(b, skip(b, q))
      continue
    }
    const len = R.len
    const v = s + len
    if (bytesEq(b, s, len, K_EVENTS)) events = v
    else if (bytesEq(b, s, len, K_DATA_PARALLEL_RANK)) dpr = v
    else if (bytesEq(b, s, len, K_DP_RANK)) rank = v
    // ts and unknown keys: skipped
    q = skip(b, v)
  }
  if (events < 0) return false
  const ev = arrayAt(b, events)
  if (ev < 0) return false
  head.eventsPos = ev
  head.eventsCount = R.count
  const at = dpr >= 0 && b[dpr] !== 0xc0 ? dpr : rank
  if (at < 0) {
    head.dpRank = 0
    return true
  }
  return rankAt(b, at, head)
}

const peekHead = new BatchHead()

export function peekBatch(payload: Uint8Array): RawPeek | null {
  if (!readBatchHead(payload, peekHead)) return null
  const p = peekHead.publisherIdPos
  return { dpRank: peekHead.dpRank, publisherId: p < 0 ? null : new Uint8Array(payload.subarray(p, p + 16)) }
}

// ---------------------------------------------------------------------------------------------------
// events (SPEC 2.3, 2.4)

export const EV_STORED = 1
export const EV_REMOVED = 2
export const EV_CLEARED = 3

const TAG_STORED = ascii('BlockStored')
const TAG_REMOVED = ascii('BlockRemoved')
const TAG_CLEARED = ascii('AllBlocksCleared')

// field slots, filled from map keys or array positions
const F_TYPE = 0
const F_HASHES = 1
const F_PARENT = 2
const F_TOKENS = 3
const F_BLOCK_SIZE = 4
const F_MEDIUM = 5
const F_LORA = 6
const F_EXTRA_KEYS = 7
const F_MM_INFOS = 8
const F_GROUP = 9
const F_KIND = 10
const F_LOCALITY = 11
const F_COUNT = 12

const FIELD_KEYS: [Uint8Array, number][] = [
  [ascii('type'), F_TYPE],
  [ascii('block_hashes'), F_HASHES],
  [ascii('parent_block_hash'), F_PARENT],
  [ascii('token_ids'), F_TOKENS],
  [ascii('block_size'), F_BLOCK_SIZE],
  [ascii('medium'), F_MEDIUM],
  [ascii('lora_name'), F_LORA],
  [ascii('extra_keys'), F_EXTRA_KEYS],
  [ascii('block_mm_infos'), F_MM_INFOS],
  [ascii('group_idx'), F_GROUP],
  [ascii('kv_cache_spec_kind'), F_KIND],
  [ascii('locality'), F_LOCALITY],
]

function fieldSlot(b: Uint8Array, s: number, len: number): number {
  for (let k = 0; k < FIELD_KEYS.length; k++) {
    const e = FIELD_KEYS[k]!
    if (bytesEq(b, s, len, e[0])) return e[1]
  }
  return -1
}

const MAIN_KINDS = [ascii('full_attention'), ascii('mla_attention'), ascii('sink_full_attention')]
const K_MM_OBJECTS = ascii('mm_objects')
const K_MM_HASH = ascii('mm_hash')
const K_OFFSETS = ascii('offsets')

const KIND_NONE = 0
const KIND_MAIN = 1
const KIND_OTHER = 2

/** ASCII case-insensitive comparison of b[s, s+len) with a lowercase ASCII word. */
function eqIgnoreCase(b: Uint8Array, s: number, len: number, lower: Uint8Array): boolean {
  if (len !== lower.length) return false
  for (let i = 0; i < len; i++) {
    const c = b[s + i]!
    const l = lower[i]!
    if (c !== l && !(l >= 0x61 && l <= 0x7a && c === l - 0x20)) return false
  }
  return true
}
const W_GPU = ascii('gpu')
const W_LOCAL = ascii('local')

const isHexDigit = (c: number): boolean => (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x66)

function hexVal(c: number): number {
  return c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x57
}

/** If the value at p is a string of exactly 64 ASCII hex digits: its first 16 digits as a u64 (R.hi/R.lo). */
function mmIdAt(b: Uint8Array, p: number): boolean {
  const s = strAt(b, p)
  if (s < 0 || R.len !== 64) return false
  for (let i = 0; i < 64; i++) if (!isHexDigit(b[s + i]!)) return false
  let hi = 0
  let lo = 0
  for (let i = 0; i < 8; i++) hi = hi * 16 + hexVal(b[s + i]!)
  for (let i = 8; i < 16; i++) lo = lo * 16 + hexVal(b[s + i]!)
  R.hi = hi
  R.lo = lo
  return true
}

const toBig = (hi: number, lo: number): bigint => (hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo))

/**
 * Reads one engine event from validated payload bytes. After `parse` returns OK, the fields below describe
 * the event; they are overwritten by the next `parse`.
 */
export class EventParser {
  b: Uint8Array = new Uint8Array(0)
  kind = 0
  /** The position after the event last parsed. */
  end = 0
  private readonly slots = new Int32Array(F_COUNT)

  /** Block hashes as u64 pairs (element i: [2i + LO] low half, [2i + HI] high half). */
  hashes = new Uint32Array(64)
  nHashes = 0
  hasParent = false
  parentHi = 0
  parentLo = 0
  tokens = new Uint32Array(1024)
  nTokens = 0
  blockSize = 0
  tierOk = true
  groupIdx = -1
  specKind = KIND_NONE
  seedHi = 0
  seedLo = BASE_SEED
  /** Explicit block_mm_infos (validated whole), or null when absent or nil. */
  mmExplicit: (BlockExtraInfo | null)[] | null = null
  /** Position of an extra_keys array, or -1. */
  extraKeysPos = -1
  /** For a store that passed the checks: the number of blocks kept. */
  kept = 0
  /** Tokens hashes of the kept blocks (same pair layout as `hashes`), after `hashKept`. */
  tokHashes = new Uint32Array(64)
  /** Per kept block mm info, or null when no block has any; after `resolveMm`. */
  mm: (BlockExtraInfo | null)[] | null = null

  /**
   * Reads the event at p. Returns OK, REJ_INVALID or REJ_UNKNOWN_TYPE; `end` is the position after the
   * event either way. block_hashes and token_ids are decoded during the walk (each array is read once).
   */
  parse(b: Uint8Array, p: number): number {
    this.b = b
    const slots = this.slots
    slots.fill(-1)
    // 0 = absent, 1 = read and valid, 2 = present but not valid (the last occurrence decides)
    let hashState = 0
    let tokState = 0
    let q = mapAt(b, p)
    if (q >= 0) {
      const n = R.count
      for (let i = 0; i < n; i++) {
        const s = strAt(b, q)
        if (s < 0) {
          q = skip(b, skip(b, q)) // a non-string key is skipped with its value
          continue
        }
        const v = s + R.len
        const slot = fieldSlot(b, s, R.len)
        if (slot === F_HASHES) {
          const e = this.readHashes(v)
          hashState = e >= 0 ? 1 : 2
          q = e >= 0 ? e : skip(b, v)
        } else if (slot === F_TOKENS) {
          const e = this.readTokens(v)
          tokState = e >= 0 ? 1 : 2
          q = e >= 0 ? e : skip(b, v)
        } else {
          if (slot >= 0) slots[slot] = v // a repeated key: the last value wins
          q = skip(b, v)
        }
      }
      this.end = q
      if (slots[F_TYPE]! < 0) return REJ_INVALID
      const r = this.tag(slots[F_TYPE]!)
      if (r !== OK) return r
      if (this.kind === EV_REMOVED) {
        // a remove reads only block_hashes, medium, group_idx, kv_cache_spec_kind and locality
        slots[F_PARENT] = slots[F_BLOCK_SIZE] = slots[F_LORA] = slots[F_EXTRA_KEYS] = slots[F_MM_INFOS] = -1
        tokState = 0
      }
    } else {
      q = arrayAt(b, p)
      if (q < 0 || R.count === 0) {
        this.end = skip(b, p)
        return REJ_INVALID
      }
      const n = R.count
      const r = this.tag(q)
      let at = skip(b, q)
      if (r !== OK || this.kind === EV_CLEARED) {
        for (let i = 1; i < n; i++) at = skip(b, at)
        this.end = at
        return r
      }
      const stored = this.kind === EV_STORED
      // stored: [tag, hashes, parent, tokens, block_size, lora_id, medium, lora_name, extra_keys, 9, 10]
      // removed: [tag, hashes, medium, group_idx]
      let pos9Group = false
      for (let i = 1; i < n; i++) {
        let next = -1
        if (i === 1) {
          next = this.readHashes(at)
          hashState = next >= 0 ? 1 : 2
        } else if (stored) {
          switch (i) {
            case 2:
              slots[F_PARENT] = at
              break
            case 3:
              next = this.readTokens(at)
              tokState = next >= 0 ? 1 : 2
              break
            case 4:
              slots[F_BLOCK_SIZE] = at
              break
            case 6:
              slots[F_MEDIUM] = at
              break
            case 7:
              slots[F_LORA] = at
              break
            case 8:
              slots[F_EXTRA_KEYS] = at
              break
            case 9:
              // an array: Dynamo's block_mm_infos; an integer or nil: group_idx, and then 10 is the kind
              if (arrayAt(b, at) >= 0) slots[F_MM_INFOS] = at
              else if (b[at] === 0xc0 || intAt(b, at) !== NOT_INT) {
                slots[F_GROUP] = at
                pos9Group = true
              }
              break
            case 10:
              if (pos9Group) slots[F_KIND] = at
              break
          }
        } else if (i === 2) {
          slots[F_MEDIUM] = at
        } else if (i === 3) {
          slots[F_GROUP] = at
        }
        at = next >= 0 ? next : skip(b, at)
      }
      this.end = at
    }
    if (this.kind === EV_CLEARED) return OK
    if (hashState !== 1) return REJ_INVALID
    if (this.kind === EV_STORED && tokState !== 1) return REJ_INVALID
    return this.fields()
  }

  /** Reads the tag at p into this.kind. */
  private tag(p: number): number {
    const b = this.b
    const s = strAt(b, p)
    if (s < 0) return REJ_INVALID
    const len = R.len
    if (bytesEq(b, s, len, TAG_STORED)) this.kind = EV_STORED
    else if (bytesEq(b, s, len, TAG_REMOVED)) this.kind = EV_REMOVED
    else if (bytesEq(b, s, len, TAG_CLEARED)) this.kind = EV_CLEARED
    else return REJ_UNKNOWN_TYPE
    return OK
  }

  /** Field validation (SPEC 2.3, check 2) and the optional fields. */
  private fields(): number {
    const b = this.b
    const slots = this.slots
    if (this.kind === EV_STORED) {
      const parent = slots[F_PARENT]!
      this.hasParent = false
      if (parent >= 0 && b[parent] !== 0xc0) {
        if (!hashAt(b, parent)) return REJ_INVALID
        this.hasParent = true
        this.parentHi = R.hi
        this.parentLo = R.lo
      }
      const bs = slots[F_BLOCK_SIZE]!
      if (bs < 0 || intAt(b, bs) !== INT_NONNEG) return REJ_INVALID
      this.blockSize = R.hi === 0 ? R.lo : R.hi * TWO32 + R.lo
      this.mmExplicit = null
      const mm = slots[F_MM_INFOS]!
      if (mm >= 0 && b[mm] !== 0xc0) {
        const infos = readMmInfos(b, mm)
        if (infos === null) return REJ_INVALID
        this.mmExplicit = infos
      }
      this.extraKeysPos = -1
      const ek = slots[F_EXTRA_KEYS]!
      if (this.mmExplicit === null && ek >= 0 && arrayAt(b, ek) >= 0) this.extraKeysPos = ek
      // lora_name: a valid UTF-8 string, else absent; "" is the base model
      this.seedHi = 0
      this.seedLo = BASE_SEED
      const lora = slots[F_LORA]!
      if (lora >= 0) {
        const s = strAt(b, lora)
        if (s >= 0 && R.len > 0 && isUtf8(b, s, s + R.len)) loraSeedFromBytes(b, s, R.len, this)
      }
    }
    // tier: medium / locality present (as strings) and not GPU / LOCAL
    this.tierOk = true
    const medium = slots[F_MEDIUM]!
    if (medium >= 0) {
      const s = strAt(b, medium)
      if (s >= 0 && !eqIgnoreCase(b, s, R.len, W_GPU)) this.tierOk = false
    }
    const locality = slots[F_LOCALITY]!
    if (locality >= 0) {
      const s = strAt(b, locality)
      if (s >= 0 && !eqIgnoreCase(b, s, R.len, W_LOCAL)) this.tierOk = false
    }
    // group: group_idx an integer 0..2^32-1 else absent; kind a string else absent
    this.groupIdx = -1
    const group = slots[F_GROUP]!
    if (group >= 0 && intAt(b, group) === INT_NONNEG && R.hi === 0) this.groupIdx = R.lo
    this.specKind = KIND_NONE
    const kind = slots[F_KIND]!
    if (kind >= 0) {
      const s = strAt(b, kind)
      if (s >= 0) {
        const len = R.len
        this.specKind = KIND_OTHER
        for (const k of MAIN_KINDS) if (bytesEq(b, s, len, k)) this.specKind = KIND_MAIN
      }
    }
    return OK
  }

  /** Reads an array of hashes into `hashes`; the position after it, or -1 if it is not one. */
  private readHashes(p: number): number {
    const b = this.b
    let q = arrayAt(b, p)
    if (q < 0) return -1
    const n = R.count
    if (this.hashes.length < 2 * n) this.hashes = new Uint32Array(grow(this.hashes.length, 2 * n))
    const h = this.hashes
    for (let i = 0; i < n; i++) {
      const t = b[q]!
      if (t < 0x80) {
        // the common small case inline
        h[2 * i + HI] = 0
        h[2 * i + LO] = t
        q++
        continue
      }
      if (t === 0xcf) {
        h[2 * i + HI] = be32(b, q + 1)
        h[2 * i + LO] = be32(b, q + 5)
        q += 9
        continue
      }
      if (!hashAt(b, q)) return -1
      h[2 * i + HI] = R.hi
      h[2 * i + LO] = R.lo
      q = R.next
    }
    this.nHashes = n
    return q
  }

  /** Reads an array of u32 tokens into `tokens`; the position after it, or -1 if it is not one. */
  private readTokens(p: number): number {
    const b = this.b
    let q = arrayAt(b, p)
    if (q < 0) return -1
    const n = R.count
    if (this.tokens.length < n) this.tokens = new Uint32Array(grow(this.tokens.length, n))
    const tok = this.tokens
    for (let i = 0; i < n; i++) {
      const t = b[q]!
      if (t < 0x80) {
        tok[i] = t
        q++
      } else if (t === 0xcd) {
        tok[i] = (b[q + 1]! << 8) | b[q + 2]!
        q += 3
      } else if (t === 0xce) {
        tok[i] = be32(b, q + 1)
        q += 5
      } else if (t === 0xcc) {
        tok[i] = b[q + 1]!
        q += 2
      } else {
        if (intAt(b, q) !== INT_NONNEG || R.hi !== 0) return -1
        tok[i] = R.lo
        q = R.next
      }
    }
    this.nTokens = n
    return q
  }

  /** mm info of the first `n` blocks (explicit block_mm_infos, else extra_keys); sets this.mm. */
  resolveMm(n: number): void {
    this.mm = null
    if (this.mmExplicit !== null) {
      let any = false
      const out: (BlockExtraInfo | null)[] = new Array(n)
      for (let i = 0; i < n; i++) {
        const info = i < this.mmExplicit.length ? this.mmExplicit[i]! : null
        out[i] = info
        if (info !== null) any = true
      }
      if (any) this.mm = out
      return
    }
    if (this.extraKeysPos < 0) return
    const b = this.b
    let q = arrayAt(b, this.extraKeysPos)
    const count = Math.min(R.count, n)
    let out: (BlockExtraInfo | null)[] | null = null
    for (let i = 0; i < count; i++) {
      const next = skip(b, q)
      let kq = arrayAt(b, q)
      if (kq >= 0) {
        const keys = R.count
        let objs: MmObject[] | null = null
        for (let k = 0; k < keys; k++) {
          const knext = skip(b, kq)
          let id = mmIdAt(b, kq)
          if (!id) {
            // vLLM >= 0.18: an (identifier, offset) tuple
            const first = arrayAt(b, kq)
            if (first >= 0 && R.count > 0) id = mmIdAt(b, first)
          }
          if (id) (objs ??= []).push({ mmHash: toBig(R.hi, R.lo), offsets: [] })
          kq = knext
        }
        if (objs !== null) {
          out ??= new Array<BlockExtraInfo | null>(n).fill(null)
          out[i] = { mmObjects: objs }
        }
      }
      q = next
    }
    this.mm = out
  }
}

function grow(cur: number, need: number): number {
  let n = Math.max(cur, 16)
  while (n < need) n *= 2
  return n
}

/** A hash (SPEC 2.3) at p into R.hi/R.lo, R.next = the position after it. */
function hashAt(b: Uint8Array, p: number): boolean {
  if (intAt(b, p) !== NOT_INT) return true // uint as is; negative int as its two's complement bits
  const s = binAt(b, p)
  if (s < 0 || R.len === 0) return false
  const len = R.len
  if (len >= 8) {
    R.hi = be32(b, s + len - 8)
    R.lo = be32(b, s + len - 4)
  } else {
    let hi = 0
    let lo = 0
    for (let i = 0; i < len; i++) {
      hi = ((hi << 8) | (lo >>> 24)) >>> 0
      lo = ((lo << 8) | b[s + i]!) >>> 0
    }
    R.hi = hi
    R.lo = lo
  }
  R.next = s + len
  return true
}

/** Reads and validates a Dynamo-format block_mm_infos array; null = invalid. */
function readMmInfos(b: Uint8Array, p: number): (BlockExtraInfo | null)[] | null {
  let q = arrayAt(b, p)
  if (q < 0) return null
  const n = R.count
  const out: (BlockExtraInfo | null)[] = []
  for (let i = 0; i < n; i++) {
    const next = skip(b, q)
    if (b[q] === 0xc0) {
      out.push(null)
    } else {
      const objsPos = mapValue(b, q, K_MM_OBJECTS)
      if (objsPos === -2 || objsPos === -1) return null // not a map, or no mm_objects
      let oq = arrayAt(b, objsPos)
      if (oq < 0) return null
      const m = R.count
      const objs: MmObject[] = []
      for (let k = 0; k < m; k++) {
        const onext = skip(b, oq)
        const obj = readMmObject(b, oq)
        if (obj === null) return null
        objs.push(obj)
        oq = onext
      }
      out.push({ mmObjects: objs })
    }
    q = next
  }
  return out
}

function readMmObject(b: Uint8Array, p: number): MmObject | null {
  let q = mapAt(b, p)
  if (q < 0) return null
  const n = R.count
  let hashPos = -1
  let offPos = -1
  for (let i = 0; i < n; i++) {
    const s = strAt(b, q)
    if (s < 0) {
      q = skip(b, skip(b, q))
      continue
    }
    const v = s + R.len
    if (bytesEq(b, s, R.len, K_MM_HASH)) hashPos = v
    else if (bytesEq(b, s, R.len, K_OFFSETS)) offPos = v
    q = skip(b, v)
  }
  if (hashPos < 0 || intAt(b, hashPos) !== INT_NONNEG) return null
  const mmHash = toBig(R.hi, R.lo)
  const offsets: [number, number][] = []
  if (offPos >= 0 && b[offPos] !== 0xc0) {
    let aq = arrayAt(b, offPos)
    if (aq < 0) return null
    const m = R.count
    for (let k = 0; k < m; k++) {
      const pq = arrayAt(b, aq)
      if (pq < 0 || R.count !== 2) return null
      if (intAt(b, pq) !== INT_NONNEG || R.hi !== 0) return null
      const start = R.lo
      if (intAt(b, R.next) !== INT_NONNEG || R.hi !== 0) return null
      offsets.push([start, R.lo])
      aq = R.next
    }
  }
  return { mmHash, offsets }
}

/** The position of the (last) value of `key` in the map at p; -1 if absent, -2 if p is not a map. */
function mapValue(b: Uint8Array, p: number, key: Uint8Array): number {
  let q = mapAt(b, p)
  if (q < 0) return -2
  const n = R.count
  let found = -1
  for (let i = 0; i < n; i++) {
    const s = strAt(b, q)
    if (s < 0) {
      q = skip(b, skip(b, q))
      continue
    }
    const v = s + R.len
    if (bytesEq(b, s, R.len, key)) found = v
    q = skip(b, v)
  }
  return found
}

// ---------------------------------------------------------------------------------------------------
// seeds and hashing (SPEC 4)

const HASH_OUT = new Uint32Array(2)

/** seed = 1337 + xxh3_64(name bytes, 0), wrapping; into target.seedHi/seedLo. */
function loraSeedFromBytes(b: Uint8Array, s: number, len: number, target: { seedHi: number; seedLo: number }): void {
  xxh3_64_into(b, s, len, 0, 0, HASH_OUT)
  const lo = HASH_OUT[0]! + BASE_SEED
  target.seedLo = lo >>> 0
  target.seedHi = (HASH_OUT[1]! + (lo >= TWO32 ? 1 : 0)) >>> 0
}

const utf8 = new TextEncoder()

/** The seed for a LoRA name given as a string (null or "" = base model). */
export function loraSeed(name: string | null, target: { seedHi: number; seedLo: number }): void {
  target.seedHi = 0
  target.seedLo = BASE_SEED
  if (name === null || name.length === 0) return
  const bytes = utf8.encode(name)
  loraSeedFromBytes(bytes, 0, bytes.length, target)
}

let leScratch = new Uint8Array(1024)
let mmScratch = new Uint8Array(1024)

/** The bytes of tokens[0, n) as u32 little-endian (a view on little-endian hosts). */
export function tokenBytesLE(tokens: Uint32Array, n: number): Uint8Array {
  if (LITTLE_ENDIAN) return new Uint8Array(tokens.buffer, tokens.byteOffset, n * 4)
  if (leScratch.length < n * 4) leScratch = new Uint8Array(grow(leScratch.length, n * 4))
  for (let i = 0; i < n; i++) {
    const v = tokens[i]!
    leScratch[4 * i] = v & 0xff
    leScratch[4 * i + 1] = (v >>> 8) & 0xff
    leScratch[4 * i + 2] = (v >>> 16) & 0xff
    leScratch[4 * i + 3] = v >>> 24
  }
  return leScratch
}

/**
 * The tokens hash of blocks 0..n-1 (block i = bytes [i*bs*4, (i+1)*bs*4) of `tokBytes`, then its mm
 * hashes sorted ascending as u64 LE) into `out` as u64 pairs.
 */
export function hashBlocks(
  tokBytes: Uint8Array,
  bs: number,
  n: number,
  seedHi: number,
  seedLo: number,
  mm: (BlockExtraInfo | null)[] | null,
  out: Uint32Array,
): void {
  const stride = bs * 4
  for (let i = 0; i < n; i++) {
    const info = mm === null ? null : (mm[i] ?? null)
    if (info === null || info.mmObjects.length === 0) {
      xxh3_64_into(tokBytes, i * stride, stride, seedLo, seedHi, HASH_OUT)
    } else {
      const hashes = info.mmObjects.map((o) => o.mmHash).sort((a, c) => (a < c ? -1 : a > c ? 1 : 0))
      const len = stride + 8 * hashes.length
      if (mmScratch.length < len) mmScratch = new Uint8Array(grow(mmScratch.length, len))
      mmScratch.set(tokBytes.subarray(i * stride, (i + 1) * stride))
      let at = stride
      for (const h of hashes) {
        let lo = Number(h & 0xffffffffn)
        let hi = Number(h >> 32n)
        for (let k = 0; k < 4; k++, lo >>>= 8) mmScratch[at++] = lo & 0xff
        for (let k = 0; k < 4; k++, hi >>>= 8) mmScratch[at++] = hi & 0xff
      }
      xxh3_64_into(mmScratch, 0, len, seedLo, seedHi, HASH_OUT)
    }
    out[2 * i + LO] = HASH_OUT[0]!
    out[2 * i + HI] = HASH_OUT[1]!
  }
}

const seedCell = { seedHi: 0, seedLo: BASE_SEED }

export function computeBlockHashes(
  tokens: Uint32Array,
  kvBlockSize: number,
  loraName: string | null,
  blockMmInfos: (BlockExtraInfo | null)[] | null,
): BigUint64Array {
  const n = Math.floor(tokens.length / kvBlockSize)
  const out = new BigUint64Array(n)
  if (n === 0) return out
  loraSeed(loraName, seedCell)
  hashBlocks(tokenBytesLE(tokens, n * kvBlockSize), kvBlockSize, n, seedCell.seedHi, seedCell.seedLo, blockMmInfos, u64Pairs(out))
  return out
}

/** A Uint32Array view of a BigUint64Array (element i = pair [2i + LO], [2i + HI]). */
export function u64Pairs(a: BigUint64Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length * 2)
}

// ---------------------------------------------------------------------------------------------------
// the checks of SPEC 3

/** Check 4: whether an event with this group information is kept; learns (rank, group) -> kind. */
export function groupKept(groups: Map<number, boolean>, groupIdx: number, specKind: number): boolean {
  if (specKind !== KIND_NONE) {
    const main = specKind === KIND_MAIN
    if (groupIdx >= 0 && (groups.size < MAX_GROUPS_PER_RANK || groups.has(groupIdx))) groups.set(groupIdx, main)
    return main
  }
  if (groupIdx >= 0) {
    const learned = groups.get(groupIdx)
    return learned === undefined ? groupIdx === 0 : learned
  }
  return true
}

let sortScratch = new BigUint64Array(64)

/** Check 6: a hash repeated among hashes[0, n), or equal to the parent. */
export function selfReference(hashes: Uint32Array, n: number, hasParent: boolean, parentHi: number, parentLo: number): boolean {
  if (hasParent) {
    for (let i = 0; i < n; i++) if (hashes[2 * i + LO] === parentLo && hashes[2 * i + HI] === parentHi) return true
  }
  if (n <= 24) {
    for (let i = 1; i < n; i++) {
      const lo = hashes[2 * i + LO]
      const hi = hashes[2 * i + HI]
      for (let j = 0; j < i; j++) if (hashes[2 * j + LO] === lo && hashes[2 * j + HI] === hi) return true
    }
    return false
  }
  if (sortScratch.length < n) sortScratch = new BigUint64Array(grow(sortScratch.length, n))
  const pairs = u64Pairs(sortScratch)
  pairs.set(hashes.subarray(0, 2 * n))
  const sorted = sortScratch.subarray(0, n).sort() // native numeric sort of the u64 values
  const sp = new Uint32Array(sorted.buffer, sorted.byteOffset, 2 * n)
  for (let i = 1; i < n; i++) if (sp[2 * i] === sp[2 * i - 2] && sp[2 * i + 1] === sp[2 * i - 1]) return true
  return false
}

/**
 * Checks 5-7 for a store: returns the number of blocks kept (>= 1), or -1 - reason.
 */
export function storeChecks(
  hashes: Uint32Array,
  nHashes: number,
  hasParent: boolean,
  parentHi: number,
  parentLo: number,
  blockSize: number,
  nTokens: number,
  kvBlockSize: number,
): number {
  if (nHashes === 0) return -1 - REJ_EMPTY
  if (selfReference(hashes, nHashes, hasParent, parentHi, parentLo)) return -1 - REJ_SELF_REFERENCE
  if (blockSize !== kvBlockSize || nTokens < kvBlockSize) return -1 - REJ_BLOCK_SIZE
  return Math.min(nHashes, Math.floor(nTokens / kvBlockSize))
}

/**
 * Checks 3-7 for a parsed stored or removed event (checks 1-2 are `parse`). Returns OK or a reason; for a
 * store that passes, `parser.kept` is the number of blocks kept.
 */
export function convertEvent(parser: EventParser, groups: Map<number, boolean>, kvBlockSize: number): number {
  if (!parser.tierOk) return REJ_FILTERED_TIER
  if (!groupKept(groups, parser.groupIdx, parser.specKind)) return REJ_FILTERED_GROUP
  if (parser.kind === EV_REMOVED) return parser.nHashes === 0 ? REJ_EMPTY : OK
  const n = storeChecks(
    parser.hashes,
    parser.nHashes,
    parser.hasParent,
    parser.parentHi,
    parser.parentLo,
    parser.blockSize,
    parser.nTokens,
    kvBlockSize,
  )
  if (n < 0) return -1 - n
  parser.kept = n
  return OK
}

/** Resolves the mm info and computes the tokens hashes of the kept blocks of a converted store. */
export function hashKept(parser: EventParser, kvBlockSize: number): void {
  const n = parser.kept
  parser.resolveMm(n)
  if (parser.tokHashes.length < 2 * n) parser.tokHashes = new Uint32Array(grow(parser.tokHashes.length, 2 * n))
  hashBlocks(tokenBytesLE(parser.tokens, n * kvBlockSize), kvBlockSize, n, parser.seedHi, parser.seedLo, parser.mm, parser.tokHashes)
}

/** The exact text of the truncation warning (both implementations give the same). */
export function truncationWarning(dpRank: number, tokens: number, kept: number, hashes: number, bs: number): string {
  return `store truncated on dp rank ${dpRank}: ${tokens} token_ids cover ${kept} of ${hashes} blocks of ${bs}`
}

// ---------------------------------------------------------------------------------------------------
// decodeEngineBatch (inspection: builds objects, keeps no state)

const decodeHead = new BatchHead()
const decodeParser = new EventParser()

export function decodeEngineBatch(payload: Uint8Array, kvBlockSize: number): RawDecoded | null {
  const b = payload
  if (!readBatchHead(b, decodeHead)) return null
  const parser = decodeParser
  const groups = new Map<number, boolean>()
  const rejected = new Uint32Array(REJECT_COUNT)
  const events: ConvertedEvent[] = []
  let q = decodeHead.eventsPos
  for (let e = 0; e < decodeHead.eventsCount; e++) {
    let r = parser.parse(b, q)
    q = parser.end
    if (r === OK && parser.kind === EV_CLEARED) {
      events.push({ type: 'cleared' })
      continue
    }
    if (r === OK) r = convertEvent(parser, groups, kvBlockSize)
    if (r !== OK) {
      rejected[r]!++
      continue
    }
    if (parser.kind === EV_REMOVED) {
      const h = parser.hashes
      const blockHashes: bigint[] = new Array(parser.nHashes)
      for (let i = 0; i < parser.nHashes; i++) blockHashes[i] = toBig(h[2 * i + HI]!, h[2 * i + LO]!)
      events.push({ type: 'removed', blockHashes })
      continue
    }
    hashKept(parser, kvBlockSize)
    const h = parser.hashes
    const t = parser.tokHashes
    const blocks: StoredBlock[] = new Array(parser.kept)
    for (let i = 0; i < parser.kept; i++) {
      blocks[i] = {
        blockHash: toBig(h[2 * i + HI]!, h[2 * i + LO]!),
        tokensHash: toBig(t[2 * i + HI]!, t[2 * i + LO]!),
        mmExtraInfo: parser.mm === null ? null : parser.mm[i]!,
      }
    }
    events.push({
      type: 'stored',
      parentHash: parser.hasParent ? toBig(parser.parentHi, parser.parentLo) : null,
      blocks,
    })
  }
  return { dpRank: decodeHead.dpRank, events, rejected }
}
