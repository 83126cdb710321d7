// Tolerant decoding of engine KV-event batches (SPEC 2.2-2.4) for the fallback: vLLM (array and map eras),
// SGLang and TensorRT-LLM shapes.
//
// A batch is first validated whole (`readBatchHead`: msgpack well-formedness, depth, trailing bytes,
// top-level shape), so that a malformed batch applies nothing. Each event is then read straight from the
// payload bytes by `EventParser`: hashes and tokens land in reusable typed scratch arrays (u64 as u32
// halves), string fields are kept as byte ranges of the payload, and nothing is allocated per block unless
// the event carries multimodal info. What the fields mean for the router (SPEC 3) is decided in convert.ts.
import type { BlockExtraInfo, MmObject, RawPeek } from '../core/binding.js'
import {
  arrayAt,
  ascii,
  be32,
  bigFromHalves,
  binAt,
  bytesEq,
  grownCapacity,
  HI,
  intAt,
  INT_NONNEG,
  isUtf8,
  LO,
  mapAt,
  NOT_INT,
  lastRead,
  skip,
  strAt,
  topChildAt,
  validate,
} from './msgpack.js'

// what `EventParser.parse` returns (the reasons share convert.ts's REJ_* numbering)
export const PARSED = -1
export const PARSE_INVALID = 1
export const PARSE_UNKNOWN_TYPE = 2

const TWO32 = 4294967296

export const EV_STORED = 1
export const EV_REMOVED = 2
export const EV_CLEARED = 3

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
  if (intAt(b, p) !== INT_NONNEG || lastRead.hi !== 0) return false
  head.dpRank = lastRead.lo
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
    // [ts (not validated), events, dp_rank?, publisher_id?, ...]; topChildAt holds where they start
    const n = lastRead.count
    if (n < 2) return false
    const ev = arrayAt(b, topChildAt[1]!)
    if (ev < 0) return false
    head.eventsPos = ev
    head.eventsCount = lastRead.count
    if (n < 3) {
      head.dpRank = 0
      return true
    }
    if (!rankAt(b, topChildAt[2]!, head)) return false
    if (n >= 4) {
      const s = binAt(b, topChildAt[3]!)
      if (s >= 0 && lastRead.len === 16) head.publisherIdPos = s
    }
    return true
  }
  q = mapAt(b, 0)
  if (q < 0) return false
  const n = lastRead.count
  let events = -1
  let dpr = -1
  let rank = -1
  for (let i = 0; i < n; i++) {
    const s = strAt(b, q)
    if (s < 0) {
      q = skip(b, skip(b, q))
      continue
    }
    const len = lastRead.len
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
  head.eventsCount = lastRead.count
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
// Dynamo 1.4+ reads (the dynamo-1.4 profile): the cache_salt key, ownership (key or array position 13),
// locality at array position 12
const F_CACHE_SALT = 12
const F_OWNERSHIP = 13
const F_LOCALITY_POS = 14
const F_COUNT = 15

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
  [ascii('cache_salt'), F_CACHE_SALT],
  [ascii('ownership'), F_OWNERSHIP],
]

function fieldSlot(b: Uint8Array, s: number, len: number): number {
  for (let k = 0; k < FIELD_KEYS.length; k++) {
    const e = FIELD_KEYS[k]!
    if (bytesEq(b, s, len, e[0])) return e[1]
  }
  return -1
}

const K_MM_OBJECTS = ascii('mm_objects')
const K_CACHE_SALT = ascii('cache_salt')
/** The tag a producer puts before a cache salt in block 0's extra keys. */
const CACHE_SALT_PREFIX = ascii('dynamo-cache-salt:')
/** At most this many salt-tagged keys of block 0 are looked at (the first usable one wins). */
const MAX_SALT_KEYS = 4
const K_MM_HASH = ascii('mm_hash')
const K_OFFSETS = ascii('offsets')

const isHexDigit = (c: number): boolean => (c >= 0x30 && c <= 0x39) || ((c | 0x20) >= 0x61 && (c | 0x20) <= 0x66)

function hexVal(c: number): number {
  return c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x57
}

/** Whether the last mmIdAt that returned true read a Dynamo 1.5+ marker: 16 hex digits, then 48 '0'. */
let mmIdMarker = false

/** If the value at p is a string of exactly 64 ASCII hex digits: its first 16 digits as a u64 (lastRead.hi/lastRead.lo). */
function mmIdAt(b: Uint8Array, p: number): boolean {
  const s = strAt(b, p)
  if (s < 0 || lastRead.len !== 64) return false
  for (let i = 0; i < 64; i++) if (!isHexDigit(b[s + i]!)) return false
  mmIdMarker = true
  for (let i = 16; i < 64; i++) if (b[s + i] !== 0x30) mmIdMarker = false
  let hi = 0
  let lo = 0
  for (let i = 0; i < 8; i++) hi = hi * 16 + hexVal(b[s + i]!)
  for (let i = 8; i < 16; i++) lo = lo * 16 + hexVal(b[s + i]!)
  lastRead.hi = hi
  lastRead.lo = lo
  return true
}

/**
 * Reads one engine event from validated payload bytes. After `parse` returns PARSED, the fields below describe
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
  /** medium, locality, kv_cache_spec_kind: where their string bytes start in `b`, or -1 when absent or not a string. */
  mediumAt = -1
  mediumLen = 0
  localityAt = -1
  localityLen = 0
  specKindAt = -1
  specKindLen = 0
  /** group_idx when an integer 0..2^32-1, else -1 (absent). */
  groupIdx = -1
  /** lora_name when a non-empty valid UTF-8 string: its bytes in `b`, else loraAt = -1 (the base model). */
  loraAt = -1
  loraLen = 0
  /** Explicit block_mm_infos (validated whole), or null when absent or nil. */
  mmExplicit: (BlockExtraInfo | null)[] | null = null
  /** Position of an extra_keys array, or -1. */
  extraKeysPos = -1
  /** token_ids came as Eagle bigram pairs (tokens holds a, b, c, ... of [[a, b], [b, c], ...]). */
  eagle = false
  /**
   * The cache salt (the cache_salt key, SGLang's position-7 {cache_salt} map, or a dynamo-cache-salt:
   * extra key of block 0): its UTF-8 bytes in `b`, else saltAt = -1. Used by the dynamo-1.4 profile.
   */
  saltAt = -1
  saltLen = 0
  /** The salt a converted dynamo-1.4 store is hashed with (its own, or its parent's through the chain); null: none. */
  salt: Uint8Array | null = null
  /** The storage tier code of a converted event (dynamo-1.4 profile, convert.ts convertEvent14). */
  tier = 0
  /** An ownership present and not nil; locality at array position 12 (dynamo-1.4 profile). */
  ownership = false
  localityPosAt = -1
  localityPosLen = 0
  /** For a store that passed the checks: the number of blocks kept. */
  kept = 0
  /** Tokens hashes of the kept blocks (same pair layout as `hashes`), after `hashKept`. */
  tokHashes = new Uint32Array(64)
  /** Per kept block mm info, or null when no block has any; after `resolveMm`. */
  mm: (BlockExtraInfo | null)[] | null = null

  /**
   * Reads the event at p. Returns PARSED, PARSE_INVALID or PARSE_UNKNOWN_TYPE; `end` is the position after the
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
      const n = lastRead.count
      for (let i = 0; i < n; i++) {
        const s = strAt(b, q)
        if (s < 0) {
          q = skip(b, skip(b, q)) // a non-string key is skipped with its value
          continue
        }
        const v = s + lastRead.len
        const slot = fieldSlot(b, s, lastRead.len)
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
      if (slots[F_TYPE]! < 0) return PARSE_INVALID
      const r = this.tag(slots[F_TYPE]!)
      if (r !== PARSED) return r
      if (this.kind === EV_REMOVED) {
        // a remove reads only block_hashes, medium, group_idx, kv_cache_spec_kind and locality
        slots[F_PARENT] = slots[F_BLOCK_SIZE] = slots[F_LORA] = slots[F_EXTRA_KEYS] = slots[F_MM_INFOS] = -1
        tokState = 0
      }
    } else {
      q = arrayAt(b, p)
      if (q < 0 || lastRead.count === 0) {
        this.end = skip(b, p)
        return PARSE_INVALID
      }
      const n = lastRead.count
      const r = this.tag(q)
      let at = skip(b, q)
      if (r !== PARSED || this.kind === EV_CLEARED) {
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
            case 12:
              slots[F_LOCALITY_POS] = at
              break
            case 13:
              slots[F_OWNERSHIP] = at
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
    if (this.kind === EV_CLEARED) return PARSED
    if (hashState !== 1) return PARSE_INVALID
    if (this.kind === EV_STORED && tokState !== 1) return PARSE_INVALID
    return this.fields()
  }

  /** Reads the tag at p into this.kind. */
  private tag(p: number): number {
    const b = this.b
    const s = strAt(b, p)
    if (s < 0) return PARSE_INVALID
    const len = lastRead.len
    if (bytesEq(b, s, len, TAG_STORED)) this.kind = EV_STORED
    else if (bytesEq(b, s, len, TAG_REMOVED)) this.kind = EV_REMOVED
    else if (bytesEq(b, s, len, TAG_CLEARED)) this.kind = EV_CLEARED
    else return PARSE_UNKNOWN_TYPE
    return PARSED
  }

  /** Field validation (SPEC 2.3, check 2) and the optional fields. */
  private fields(): number {
    const b = this.b
    const slots = this.slots
    if (this.kind === EV_STORED) {
      const parent = slots[F_PARENT]!
      this.hasParent = false
      if (parent >= 0 && b[parent] !== 0xc0) {
        if (!hashAt(b, parent)) return PARSE_INVALID
        this.hasParent = true
        this.parentHi = lastRead.hi
        this.parentLo = lastRead.lo
      }
      const bs = slots[F_BLOCK_SIZE]!
      if (bs < 0 || intAt(b, bs) !== INT_NONNEG) return PARSE_INVALID
      this.blockSize = lastRead.hi === 0 ? lastRead.lo : lastRead.hi * TWO32 + lastRead.lo
      this.mmExplicit = null
      const mm = slots[F_MM_INFOS]!
      if (mm >= 0 && b[mm] !== 0xc0) {
        const infos = readMmInfos(b, mm)
        if (infos === null) return PARSE_INVALID
        this.mmExplicit = infos
      }
      this.extraKeysPos = -1
      const ek = slots[F_EXTRA_KEYS]!
      if (this.mmExplicit === null && ek >= 0 && arrayAt(b, ek) >= 0) this.extraKeysPos = ek
      // lora_name: a valid UTF-8 string, else absent; "" is the base model
      this.loraAt = -1
      const lora = slots[F_LORA]!
      if (lora >= 0) {
        const s = strAt(b, lora)
        if (s >= 0 && lastRead.len > 0 && isUtf8(b, s, s + lastRead.len)) {
          this.loraAt = s
          this.loraLen = lastRead.len
        }
      }
      // the cache salt: the key, or SGLang's {cache_salt} map at position 7, else a tagged extra key
      this.saltAt = -1
      let salt = slots[F_CACHE_SALT]!
      if (lora >= 0 && mapAt(b, lora) >= 0) salt = mapValue(b, lora, K_CACHE_SALT)
      if (!(salt >= 0 && this.setSalt(salt)) && ek >= 0 && arrayAt(b, ek) >= 0) this.saltFromExtraKeys(ek)
    }
    // the filters (SPEC 3 steps 3-4): strings else absent; group_idx an integer 0..2^32-1 else absent
    const medium = slots[F_MEDIUM]!
    this.mediumAt = medium >= 0 ? strAt(b, medium) : -1
    this.mediumLen = this.mediumAt >= 0 ? lastRead.len : 0
    const locality = slots[F_LOCALITY]!
    this.localityAt = locality >= 0 ? strAt(b, locality) : -1
    this.localityLen = this.localityAt >= 0 ? lastRead.len : 0
    const kind = slots[F_KIND]!
    this.specKindAt = kind >= 0 ? strAt(b, kind) : -1
    this.specKindLen = this.specKindAt >= 0 ? lastRead.len : 0
    this.groupIdx = -1
    const group = slots[F_GROUP]!
    if (group >= 0 && intAt(b, group) === INT_NONNEG && lastRead.hi === 0) this.groupIdx = lastRead.lo
    const own = slots[F_OWNERSHIP]!
    this.ownership = own >= 0 && b[own] !== 0xc0
    const lp = slots[F_LOCALITY_POS]!
    this.localityPosAt = lp >= 0 ? strAt(b, lp) : -1
    this.localityPosLen = this.localityPosAt >= 0 ? lastRead.len : 0
    return PARSED
  }

  /** The salt at p when it is a valid UTF-8 string (even ""); false when it is not one. */
  private setSalt(p: number): boolean {
    const s = strAt(this.b, p)
    if (s < 0 || !isUtf8(this.b, s, s + lastRead.len)) return false
    this.saltAt = s
    this.saltLen = lastRead.len
    return true
  }

  /**
   * The first usable `dynamo-cache-salt:<salt>` string among block 0's extra keys (the first
   * MAX_SALT_KEYS tagged ones; one equal to the LoRA name is that name, once; an empty or invalid
   * UTF-8 salt is skipped).
   */
  private saltFromExtraKeys(ek: number): void {
    const b = this.b
    let q = arrayAt(b, ek)
    if (lastRead.count === 0) return
    q = arrayAt(b, q)
    if (q < 0) return
    const keys = lastRead.count
    let loraUnmatched = this.loraAt >= 0
    let seen = 0
    for (let k = 0; k < keys && seen < MAX_SALT_KEYS; k++) {
      const next = skip(b, q)
      const s = strAt(b, q)
      const len = lastRead.len
      if (s >= 0 && len >= CACHE_SALT_PREFIX.length && bytesEq(b, s, CACHE_SALT_PREFIX.length, CACHE_SALT_PREFIX)) {
        seen++
        if (loraUnmatched && len === this.loraLen && bytesEq(b, s, len, b.subarray(this.loraAt, this.loraAt + this.loraLen))) {
          loraUnmatched = false
        } else {
          const ns = s + CACHE_SALT_PREFIX.length
          const nsLen = len - CACHE_SALT_PREFIX.length
          if (nsLen > 0 && isUtf8(b, ns, ns + nsLen)) {
            this.saltAt = ns
            this.saltLen = nsLen
            return
          }
        }
      }
      q = next
    }
  }

  /** Reads an array of hashes into `hashes`; the position after it, or -1 if it is not one. */
  private readHashes(p: number): number {
    const b = this.b
    let q = arrayAt(b, p)
    if (q < 0) return -1
    const n = lastRead.count
    if (this.hashes.length < 2 * n) this.hashes = new Uint32Array(grownCapacity(this.hashes.length, 2 * n))
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
      h[2 * i + HI] = lastRead.hi
      h[2 * i + LO] = lastRead.lo
      q = lastRead.next
    }
    this.nHashes = n
    return q
  }

  /**
   * Reads an array of u32 tokens into `tokens`, or Eagle bigram pairs [[a, b], [b, c], ...] as a, b, c, ...
   * (setting `eagle`; a mix of both forms is invalid); the position after it, or -1 if it is not one.
   */
  private readTokens(p: number): number {
    const b = this.b
    let q = arrayAt(b, p)
    this.eagle = false
    if (q < 0) return -1
    const n = lastRead.count
    if (this.tokens.length < n + 1) this.tokens = new Uint32Array(grownCapacity(this.tokens.length, n + 1))
    const tok = this.tokens
    let pairs = 0
    let last = 0
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
      } else if ((t & 0xf0) === 0x90 || t === 0xdc || t === 0xdd) {
        // an Eagle pair [a, b]
        const e = arrayAt(b, q)
        if (lastRead.count !== 2 || intAt(b, e) !== INT_NONNEG || lastRead.hi !== 0) return -1
        tok[i] = lastRead.lo
        if (intAt(b, lastRead.next) !== INT_NONNEG || lastRead.hi !== 0) return -1
        last = lastRead.lo
        q = lastRead.next
        pairs++
      } else {
        if (intAt(b, q) !== INT_NONNEG || lastRead.hi !== 0) return -1
        tok[i] = lastRead.lo
        q = lastRead.next
      }
    }
    this.nTokens = n
    if (pairs > 0) {
      if (pairs !== n) return -1
      tok[n] = last
      this.nTokens = n + 1
      this.eagle = true
    }
    return q
  }

  /**
   * mm info of the first `n` blocks (explicit block_mm_infos, else extra_keys; with `markersOnly`, Dynamo
   * 1.5+'s rule: only marker keys); sets this.mm.
   */
  resolveMm(n: number, markersOnly = false): void {
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
    const count = Math.min(lastRead.count, n)
    let out: (BlockExtraInfo | null)[] | null = null
    for (let i = 0; i < count; i++) {
      const next = skip(b, q)
      let kq = arrayAt(b, q)
      if (kq >= 0) {
        const keys = lastRead.count
        let objs: MmObject[] | null = null
        for (let k = 0; k < keys; k++) {
          const knext = skip(b, kq)
          let id = mmIdAt(b, kq)
          if (!id) {
            // vLLM >= 0.18: an (identifier, offset) tuple
            const first = arrayAt(b, kq)
            if (first >= 0 && lastRead.count > 0) id = mmIdAt(b, first)
          }
          if (id && (!markersOnly || mmIdMarker)) {
            objs ??= []
            objs.push({ mmHash: bigFromHalves(lastRead.hi, lastRead.lo), offsets: [] })
          }
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

/** A hash (SPEC 2.3) at p into lastRead.hi/lastRead.lo, lastRead.next = the position after it. */
function hashAt(b: Uint8Array, p: number): boolean {
  if (intAt(b, p) !== NOT_INT) return true // uint as is; negative int as its two's complement bits
  const s = binAt(b, p)
  if (s < 0 || lastRead.len === 0) return false
  const len = lastRead.len
  if (len >= 8) {
    lastRead.hi = be32(b, s + len - 8)
    lastRead.lo = be32(b, s + len - 4)
  } else {
    let hi = 0
    let lo = 0
    for (let i = 0; i < len; i++) {
      hi = ((hi << 8) | (lo >>> 24)) >>> 0
      lo = ((lo << 8) | b[s + i]!) >>> 0
    }
    lastRead.hi = hi
    lastRead.lo = lo
  }
  lastRead.next = s + len
  return true
}

/** Reads and validates a Dynamo-format block_mm_infos array; null = invalid. */
function readMmInfos(b: Uint8Array, p: number): (BlockExtraInfo | null)[] | null {
  let q = arrayAt(b, p)
  if (q < 0) return null
  const n = lastRead.count
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
      const m = lastRead.count
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
  const n = lastRead.count
  let hashPos = -1
  let offPos = -1
  for (let i = 0; i < n; i++) {
    const s = strAt(b, q)
    if (s < 0) {
      q = skip(b, skip(b, q))
      continue
    }
    const v = s + lastRead.len
    if (bytesEq(b, s, lastRead.len, K_MM_HASH)) hashPos = v
    else if (bytesEq(b, s, lastRead.len, K_OFFSETS)) offPos = v
    q = skip(b, v)
  }
  if (hashPos < 0 || intAt(b, hashPos) !== INT_NONNEG) return null
  const mmHash = bigFromHalves(lastRead.hi, lastRead.lo)
  const offsets: [number, number][] = []
  if (offPos >= 0 && b[offPos] !== 0xc0) {
    let aq = arrayAt(b, offPos)
    if (aq < 0) return null
    const m = lastRead.count
    for (let k = 0; k < m; k++) {
      const pq = arrayAt(b, aq)
      if (pq < 0 || lastRead.count !== 2) return null
      if (intAt(b, pq) !== INT_NONNEG || lastRead.hi !== 0) return null
      const start = lastRead.lo
      if (intAt(b, lastRead.next) !== INT_NONNEG || lastRead.hi !== 0) return null
      offsets.push([start, lastRead.lo])
      aq = lastRead.next
    }
  }
  return { mmHash, offsets }
}

/** The position of the (last) value of `key` in the map at p; -1 if absent, -2 if p is not a map. */
function mapValue(b: Uint8Array, p: number, key: Uint8Array): number {
  let q = mapAt(b, p)
  if (q < 0) return -2
  const n = lastRead.count
  let found = -1
  for (let i = 0; i < n; i++) {
    const s = strAt(b, q)
    if (s < 0) {
      q = skip(b, skip(b, q))
      continue
    }
    const v = s + lastRead.len
    if (bytesEq(b, s, lastRead.len, key)) found = v
    q = skip(b, v)
  }
  return found
}
