// The radix index (SPEC 6) for the fallback: which worker (workerId, dpRank) holds which blocks, as a
// tree keyed by the tokens hashes of the path from the root. Mirrors crates/core/src/index.rs rule for
// rule; only the memory layout differs.
//
// Layout (no BigInt and no object per block on the hot paths; u64 values are u32 halves):
// - nodes: one Uint32Array arena, NS words per node: tokens-hash key, parent, first child and siblings
//   (a doubly-linked child list, for enumeration), and where its holders are;
// - holders: the (worker slot, block hash) pairs of a node, contiguous in insertion order (3 words
//   each) in a block of a shared pool; blocks come in power-of-two sizes with a free list per size;
// - edges: one open-addressing table (parent, key) -> child over the whole tree, 2 words per slot: the
//   child id and the low half of its key as a tag (the rest of the key is read from the node arena);
// - per worker key: an open-addressing table block hash -> node (3 words per slot).
//
// Rules that are easy to miss (same as the core):
// - a node that loses its last holder is removed from the tree and its children are detached: blocks
//   still held below it become unreachable (stale) but stay in their workers' maps until removed;
// - a block hash stored at a new place leaves its old node first;
// - `cleared` applies to every dp rank of the worker id (Dynamo semantics).
import type { BlockExtraInfo, RawRadixIndex, RouterEventValue } from '../core/binding.js'
import { INDEX_COUNTER_NAMES, MATCH_RECORD_BYTES } from '../core/binding.js'
import { hashBlocks, loraSeed, tokenBytesLE, u64Pairs } from './decode.js'
import { arrayAt, ascii, binAt, bytesEq, HI, INT_NONNEG, intAt, LO, mapAt, R, skip, strAt, validate } from './msgpack.js'
import { decodeRouterEvent } from './wire.js'

// outcome codes (APPLY_OUTCOMES order)
export const OUT_APPLIED = 0
export const OUT_PARENT_NOT_FOUND = 1
export const OUT_BLOCK_NOT_FOUND = 2
export const OUT_INVALID_SEQUENCE = 3

// counter indices (INDEX_COUNTER_NAMES order)
const C_STORED = 0
const C_REMOVED = 1
const C_CLEARED = 2
const C_PARENT_NOT_FOUND = 3
const C_BLOCK_NOT_FOUND = 4
const C_INVALID_SEQUENCE = 5
const C_BLOCKS_STORED = 6
const C_BLOCKS_REMOVED = 7

// node arena: NS words per node; node 0 is the root. Child/sibling links use 0 for "none" (the root is
// never a child); a detached node (and a free one) has parent DETACHED.
const NS = 8
const N_KHI = 0
const N_KLO = 1
const N_PAR = 2
const N_KID = 3
const N_NEXT = 4 // also the free-list link of a free node
const N_PREV = 5
const N_HOFF = 6 // first holder (in holder units) of the node's block; 0 = no block
const N_HLEN = 7 // number of holders
const ROOT = 0
const DETACHED = 0xffffffff

// holder pool: HS words per holder; unit 0 is never used (offset 0 = no block). A block of size class c
// holds 2^c holders; a free block links to the next free one of its class through its first word.
const HS = 3
const H_W = 0
const H_HI = 1
const H_LO = 2

// worker tables: WS words per slot (hash hi, hash lo, node); node 0 = empty slot (the root holds nothing)
const WS = 3

const TWO32 = 4294967296

function mix(hi: number, lo: number): number {
  let h = Math.imul(lo ^ Math.imul(hi ^ 0x5bd1e995, 0x9e3779b1), 0x85ebca6b)
  h ^= h >>> 15
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 13
  return h
}

function mix3(p: number, hi: number, lo: number): number {
  return mix(hi ^ Math.imul(p + 0x7f4a7c15, 0x27d4eb2f), lo)
}

/** u64 from halves. */
function big(hi: number, lo: number): bigint {
  return hi === 0 ? BigInt(lo) : (BigInt(hi) << 32n) | BigInt(lo)
}

/** a < b for u64 halves: -1, 0, 1. */
function cmp64(ahi: number, alo: number, bhi: number, blo: number): number {
  if (ahi !== bhi) return ahi < bhi ? -1 : 1
  if (alo !== blo) return alo < blo ? -1 : 1
  return 0
}

/** One worker key (workerId, dpRank): its block hash -> holder entry table and its last event id. */
class WorkerKey {
  /** (hash hi, hash lo, node) per slot, open addressing with linear probing. */
  table = new Uint32Array(8 * WS)
  mask = 7
  size = 0
  hasLast = false
  lastHi = 0
  lastLo = 0
  readonly workerId: bigint
  constructor(
    readonly slot: number,
    readonly idHi: number,
    readonly idLo: number,
    readonly rank: number,
  ) {
    this.workerId = big(idHi, idLo)
  }
}

const keyOf = (hi: number, lo: number, rank: number): string => `${hi}:${lo}:${rank}`

const PAYLOAD = ascii('payload')

// ---------------------------------------------------------------------------------------------------
// decoding the three encodings of applyEncoded

/** Where envelopePayload found the payload: bytes [at, at + len) of the envelope. */
const PAYLOAD_AT = { at: 0, len: 0 }

/**
 * Finds the RouterEvent bytes inside an event-plane envelope (a map of scalars whose `payload` is a bin)
 * into PAYLOAD_AT; throws on anything else. Mirrors wire.rs decode_router_event_envelope: the top value
 * must be a map of scalar keys and values with nothing after it; the last `"payload": bin` pair wins.
 */
function envelopePayload(b: Uint8Array): void {
  if (b.length === 0) throw new Error('invalid router event: envelope is not a map')
  const end = validate(b, 0, b.length)
  let p = end < 0 ? -1 : mapAt(b, 0)
  if (p < 0) {
    // a well-formed non-map, or malformed bytes: distinguish like the core's first header read
    if (end >= 0 || !((b[0]! & 0xf0) === 0x80 || b[0] === 0xde || b[0] === 0xdf))
      throw new Error('invalid router event: envelope is not a map')
    throw new Error('invalid router event: malformed envelope')
  }
  const n = R.count
  let payloadAt = -1
  let payloadLen = 0
  for (let i = 0; i < n; i++) {
    const kt = b[p]!
    const keyIsContainer = (kt & 0xe0) === 0x80 || kt === 0xdc || kt === 0xdd || kt === 0xde || kt === 0xdf
    const ks = strAt(b, p)
    const isPayloadKey = ks >= 0 && bytesEq(b, ks, R.len, PAYLOAD)
    const v = skip(b, p)
    const vt = b[v]!
    const valueIsContainer = (vt & 0xe0) === 0x80 || vt === 0xdc || vt === 0xdd || vt === 0xde || vt === 0xdf
    if (keyIsContainer || valueIsContainer) throw new Error('invalid router event: malformed envelope')
    if (isPayloadKey) {
      const q = binAt(b, v)
      if (q >= 0) {
        payloadAt = q
        payloadLen = R.len
      }
    }
    p = skip(b, v)
  }
  if (p !== b.length) throw new Error('invalid router event: trailing bytes after the envelope')
  if (payloadAt < 0) throw new Error('invalid router event: envelope without a bin payload')
  PAYLOAD_AT.at = payloadAt
  PAYLOAD_AT.len = payloadLen
}

/** The RouterEvent inside an event-plane envelope. */
export function decodeEnvelope(b: Uint8Array): RouterEventValue {
  envelopePayload(b)
  return decodeRouterEvent(b.subarray(PAYLOAD_AT.at, PAYLOAD_AT.at + PAYLOAD_AT.len), false)
}

/** format: 0 envelope, 1 msgpack RouterEvent, 2 JSON RouterEvent. */
export function decodeEncoded(payload: Uint8Array, format: number): RouterEventValue {
  if (format === 0) return decodeEnvelope(payload)
  return decodeRouterEvent(payload, format === 2)
}

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
  const q = mapAt(b, p)
  return q >= 0 && R.count === n ? q : -1
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
export class FastEvent {
  wHi = 0
  wLo = 0
  idHi = 0
  idLo = 0
  rank = 0
  kind = 0
  hasParent = false
  pHi = 0
  pLo = 0
  n = 0
  hashes = new Uint32Array(128)
  toks = new Uint32Array(128)

  private key(b: Uint8Array, p: number, k: Uint8Array): number {
    const s = strAt(b, p)
    return s >= 0 && bytesEq(b, s, R.len, k) ? s + R.len : -1
  }

  /** Parses b[p, end); false when the bytes are not exactly the canonical layout. */
  parse(b: Uint8Array, p: number, end: number): boolean {
    if (validate(b, p, end) !== end) return false
    let q = mapOf(b, p, 2)
    if (q < 0) return false
    if ((q = this.key(b, q, K_WORKER_ID)) < 0 || intAt(b, q) !== INT_NONNEG) return false
    this.wHi = R.hi
    this.wLo = R.lo
    if ((q = this.key(b, R.next, K_EVENT)) < 0) return false
    if ((q = mapOf(b, q, 3)) < 0) return false
    if ((q = this.key(b, q, K_EVENT_ID)) < 0 || intAt(b, q) !== INT_NONNEG) return false
    this.idHi = R.hi
    this.idLo = R.lo
    if ((q = this.key(b, R.next, K_DATA)) < 0) return false
    const s = strAt(b, q)
    if (s >= 0) {
      if (!bytesEq(b, s, R.len, K_CLEARED)) return false
      this.kind = KIND_CLEARED
      q = s + R.len
    } else {
      if ((q = mapOf(b, q, 1)) < 0) return false
      let r = this.key(b, q, K_STORED)
      if (r >= 0) {
        if ((q = mapOf(b, r, 2)) < 0) return false
        if ((q = this.key(b, q, K_PARENT_HASH)) < 0) return false
        if (b[q] === 0xc0) {
          this.hasParent = false
          this.pHi = 0
          this.pLo = 0
          q++
        } else {
          if (intAt(b, q) !== INT_NONNEG) return false
          this.hasParent = true
          this.pHi = R.hi
          this.pLo = R.lo
          q = R.next
        }
        if ((q = this.key(b, q, K_BLOCKS)) < 0 || (q = arrayAt(b, q)) < 0) return false
        const n = R.count
        this.room(n)
        const hs = this.hashes
        const ts = this.toks
        for (let i = 0; i < n; i++) {
          if ((q = mapOf(b, q, 3)) < 0) return false
          if ((q = this.key(b, q, K_BLOCK_HASH)) < 0 || intAt(b, q) !== INT_NONNEG) return false
          hs[2 * i + HI] = R.hi
          hs[2 * i + LO] = R.lo
          if ((q = this.key(b, R.next, K_TOKENS_HASH)) < 0 || intAt(b, q) !== INT_NONNEG) return false
          ts[2 * i + HI] = R.hi
          ts[2 * i + LO] = R.lo
          if ((q = this.key(b, R.next, K_MM_EXTRA_INFO)) < 0 || b[q] !== 0xc0) return false
          q++
        }
        this.n = n
        this.kind = KIND_STORED
      } else {
        if ((r = this.key(b, q, K_REMOVED)) < 0) return false
        if ((q = mapOf(b, r, 1)) < 0) return false
        if ((q = this.key(b, q, K_BLOCK_HASHES)) < 0 || (q = arrayAt(b, q)) < 0) return false
        const n = R.count
        this.room(n)
        const hs = this.hashes
        for (let i = 0; i < n; i++) {
          if (intAt(b, q) !== INT_NONNEG) return false
          hs[2 * i + HI] = R.hi
          hs[2 * i + LO] = R.lo
          q = R.next
        }
        this.n = n
        this.kind = KIND_REMOVED
      }
    }
    if ((q = this.key(b, q, K_DP_RANK)) < 0 || intAt(b, q) !== INT_NONNEG || R.hi !== 0) return false
    this.rank = R.lo
    return R.next === end
  }

  private room(n: number): void {
    if (this.hashes.length < 2 * n) {
      this.hashes = new Uint32Array(4 * n)
      this.toks = new Uint32Array(4 * n)
    }
  }
}

// ---------------------------------------------------------------------------------------------------

export class FallbackRadixIndex implements RawRadixIndex {
  private N = new Uint32Array(NS * 1024)
  private nodeTop = 1 // next never-used node id
  private freeNode = 0
  /** Size class (log2 capacity) of each node's holder block. */
  private hcls = new Uint8Array(1024)
  private H = new Uint32Array(HS * 1024)
  private hTop = 1
  private readonly freeBlk = new Uint32Array(32)
  /** (parent, key) -> child: per slot [child id (0 = empty), low half of the key]. */
  private edges = new Uint32Array(2 * 1024)
  private edgeMask = 1023
  private edgeSize = 0

  private workerSlots: (WorkerKey | null)[] = []
  private freeSlots: number[] = []
  private byKey = new Map<string, WorkerKey>()
  private cached: WorkerKey | null = null
  /** Position of each slot in ascending (workerId, dpRank) order; recomputed when workers change. */
  private order = new Uint32Array(16)
  private orderLen = 0
  private orderDirty = true
  /** Per order position: (generation, result index), for placing results in order. */
  private byPos = new Uint32Array(32)
  private outBuf: Uint8Array | null = null
  private outView: DataView | null = null

  private readonly counts = new Float64Array(INDEX_COUNTER_NAMES.length)
  private total = 0

  // find_matches scratch
  private stamps = new Uint32Array(16)
  private gen = 0
  private active = new Uint32Array(16)
  private kept = new Uint32Array(16)
  private resW = new Uint32Array(16)
  private resS = new Uint32Array(16)
  // scratch for events given as values, and the repeat check
  private h64 = new BigUint64Array(64)
  private t64 = new BigUint64Array(64)
  private seen = new Uint32Array(64)
  private dropStack: number[] = []

  constructor() {
    this.N[N_PAR] = DETACHED
  }

  // --------------------------------------------------------------------------------------------
  // edges (parent, key) -> child

  private edgeFind(p: number, hi: number, lo: number): number {
    const edges = this.edges
    const mask = this.edgeMask
    const N = this.N
    let i = mix3(p, hi, lo) & mask
    for (;;) {
      const c = edges[2 * i]!
      if (c === 0) return 0
      if (edges[2 * i + 1] === lo) {
        const b = c * NS
        if (N[b + N_KHI] === hi && N[b + N_PAR] === p) return c
      }
      i = (i + 1) & mask
    }
  }

  private edgeHome(c: number): number {
    const b = c * NS
    const N = this.N
    return mix3(N[b + N_PAR]!, N[b + N_KHI]!, N[b + N_KLO]!) & this.edgeMask
  }

  /** Adds the edge of node c (its parent and key set). The table is at most half full, so there is room. */
  private edgeInsert(c: number): void {
    const edges = this.edges
    const mask = this.edgeMask
    let i = this.edgeHome(c)
    while (edges[2 * i] !== 0) i = (i + 1) & mask
    edges[2 * i] = c
    edges[2 * i + 1] = this.N[c * NS + N_KLO]!
    this.edgeSize++
    // the rebuild reads the arena, where c already is
    if (this.edgeSize * 2 > mask + 1) this.edgeRehash((mask + 1) * 2)
  }

  private edgeRehash(cap: number): void {
    this.edges = new Uint32Array(2 * cap)
    this.edgeMask = cap - 1
    const edges = this.edges
    const mask = this.edgeMask
    const N = this.N
    // every attached node has an edge (free and detached nodes have parent DETACHED): reading the arena
    // in order is cheaper than following the old table's ids
    for (let c = 1, top = this.nodeTop; c < top; c++) {
      const b = c * NS
      const parent = N[b + N_PAR]!
      if (parent === DETACHED) continue
      const lo = N[b + N_KLO]!
      let i = mix3(parent, N[b + N_KHI]!, lo) & mask
      while (edges[2 * i] !== 0) i = (i + 1) & mask
      edges[2 * i] = c
      edges[2 * i + 1] = lo
    }
  }

  /** Removes the edge of node c (its parent and key must still be set). */
  private edgeDelete(c: number): void {
    const edges = this.edges
    const mask = this.edgeMask
    let i = this.edgeHome(c)
    for (;;) {
      const d = edges[2 * i]!
      if (d === 0) return
      if (d === c) break
      i = (i + 1) & mask
    }
    let hole = i
    let j = (i + 1) & mask
    for (;;) {
      const d = edges[2 * j]!
      if (d === 0) break
      const home = this.edgeHome(d)
      const inRange = hole <= j ? home > hole && home <= j : home > hole || home <= j
      if (!inRange) {
        edges[2 * hole] = d
        edges[2 * hole + 1] = edges[2 * j + 1]!
        hole = j
      }
      j = (j + 1) & mask
    }
    edges[2 * hole] = 0
    this.edgeSize--
  }

  // --------------------------------------------------------------------------------------------
  // nodes

  private allocNode(parent: number, hi: number, lo: number): number {
    let id = this.freeNode
    if (id !== 0) {
      this.freeNode = this.N[id * NS + N_NEXT]!
    } else {
      id = this.nodeTop++
      if (id * NS + NS > this.N.length) {
        const next = new Uint32Array(grown(this.N.length, NS))
        next.set(this.N)
        this.N = next
        const cls = new Uint8Array(next.length / NS)
        cls.set(this.hcls)
        this.hcls = cls
      }
    }
    const N = this.N
    const b = id * NS
    N[b + N_KHI] = hi
    N[b + N_KLO] = lo
    N[b + N_PAR] = parent
    N[b + N_KID] = 0
    N[b + N_HOFF] = 0
    N[b + N_HLEN] = 0
    this.hcls[id] = 0
    // prepend to the parent's child list
    const pb = parent * NS
    const first = N[pb + N_KID]!
    N[b + N_NEXT] = first
    N[b + N_PREV] = 0
    if (first !== 0) N[first * NS + N_PREV] = id
    N[pb + N_KID] = id
    this.edgeInsert(id)
    return id
  }

  /**
   * A non-root node lost its last holder: it leaves its parent and its children are detached; detached
   * children without holders go the same way.
   */
  private dropEmpty(start: number): void {
    const stack = this.dropStack
    stack.push(start)
    while (stack.length > 0) {
      const n = stack.pop()!
      if (n === ROOT) continue
      const N = this.N
      const b = n * NS
      const parent = N[b + N_PAR]!
      if (parent !== DETACHED) {
        this.edgeDelete(n)
        const prev = N[b + N_PREV]!
        const next = N[b + N_NEXT]!
        if (prev !== 0) N[prev * NS + N_NEXT] = next
        else N[parent * NS + N_KID] = next
        if (next !== 0) N[next * NS + N_PREV] = prev
      }
      let c = N[b + N_KID]!
      while (c !== 0) {
        const cb = c * NS
        const next = N[cb + N_NEXT]!
        this.edgeDelete(c)
        N[cb + N_PAR] = DETACHED
        N[cb + N_NEXT] = 0
        N[cb + N_PREV] = 0
        if (N[cb + N_HLEN] === 0) stack.push(c)
        c = next
      }
      if (N[b + N_HOFF] !== 0) this.freeBlock(N[b + N_HOFF]!, this.hcls[n]!)
      N[b + N_PAR] = DETACHED
      N[b + N_KID] = 0
      N[b + N_PREV] = 0
      N[b + N_HOFF] = 0
      N[b + N_HLEN] = 0
      N[b + N_NEXT] = this.freeNode
      this.freeNode = n
    }
  }

  // --------------------------------------------------------------------------------------------
  // holders

  /** A block of 2^cls holder units. */
  private allocBlock(cls: number): number {
    const off = this.freeBlk[cls]!
    if (off !== 0) {
      this.freeBlk[cls] = this.H[off * HS]!
      return off
    }
    const at = this.hTop
    this.hTop += 1 << cls
    if (this.hTop * HS > this.H.length) {
      const next = new Uint32Array(grown(Math.max(this.H.length, this.hTop * HS), HS))
      next.set(this.H)
      this.H = next
    }
    return at
  }

  private freeBlock(off: number, cls: number): void {
    this.H[off * HS] = this.freeBlk[cls]!
    this.freeBlk[cls] = off
  }

  /** Appends the holder (w, hash) to the node (the caller knows it is not there). */
  private addHolder(node: number, w: number, hi: number, lo: number): void {
    const N = this.N
    const b = node * NS
    const len = N[b + N_HLEN]!
    let off = N[b + N_HOFF]!
    if (off === 0) {
      off = this.allocBlock(0)
      this.hcls[node] = 0
      N[b + N_HOFF] = off
    } else {
      const cls = this.hcls[node]!
      if (len === 1 << cls) {
        const bigger = this.allocBlock(cls + 1)
        this.H.copyWithin(bigger * HS, off * HS, (off + len) * HS)
        this.freeBlock(off, cls)
        off = bigger
        this.hcls[node] = cls + 1
        N[b + N_HOFF] = off
      }
    }
    const H = this.H
    const at = (off + len) * HS
    H[at + H_W] = w
    H[at + H_HI] = hi
    H[at + H_LO] = lo
    N[b + N_HLEN] = len + 1
  }

  /** Removes the holder (w, hash) from the node (keeping the order of the others); drops the node when left empty. */
  private removeHolder(node: number, w: number, hi: number, lo: number): void {
    const N = this.N
    const H = this.H
    const b = node * NS
    const off = N[b + N_HOFF]!
    const len = N[b + N_HLEN]!
    for (let k = 0; k < len; k++) {
      const at = (off + k) * HS
      if (H[at + H_LO] === lo && H[at + H_W] === w && H[at + H_HI] === hi) {
        if (k + 1 < len) H.copyWithin(at, at + HS, (off + len) * HS)
        N[b + N_HLEN] = len - 1
        break
      }
    }
    if (N[b + N_HLEN] === 0 && node !== ROOT) this.dropEmpty(node)
  }

  // --------------------------------------------------------------------------------------------
  // per-worker tables: block hash -> node

  /** The node holding the worker's hash, or 0. */
  private wFind(wk: WorkerKey, hi: number, lo: number): number {
    const t = wk.table
    const mask = wk.mask
    let i = mix(hi, lo) & mask
    for (;;) {
      const at = i * WS
      const node = t[at + 2]!
      if (node === 0) return 0
      if (t[at + 1] === lo && t[at] === hi) return node
      i = (i + 1) & mask
    }
  }

  /** Adds hash -> node (the hash not in the table). */
  private wInsert(wk: WorkerKey, hi: number, lo: number, node: number): void {
    if ((wk.size + 1) * 4 > (wk.mask + 1) * 3) this.wRehash(wk, (wk.mask + 1) * 2)
    placeEntry(wk.table, wk.mask, hi, lo, node)
    wk.size++
    this.total++
  }

  private wRehash(wk: WorkerKey, cap: number): void {
    const old = wk.table
    wk.table = new Uint32Array(cap * WS)
    wk.mask = cap - 1
    for (let k = 0; k < old.length; k += WS) {
      const node = old[k + 2]!
      if (node !== 0) placeEntry(wk.table, wk.mask, old[k]!, old[k + 1]!, node)
    }
  }

  /** Removes the hash from the worker's table; returns the node it was on, or 0. */
  private wDelete(wk: WorkerKey, hi: number, lo: number): number {
    const t = wk.table
    const mask = wk.mask
    let i = mix(hi, lo) & mask
    let node: number
    for (;;) {
      const at = i * WS
      node = t[at + 2]!
      if (node === 0) return 0
      if (t[at + 1] === lo && t[at] === hi) break
      i = (i + 1) & mask
    }
    let hole = i
    let j = (i + 1) & mask
    for (;;) {
      const at = j * WS
      if (t[at + 2] === 0) break
      const home = mix(t[at]!, t[at + 1]!) & mask
      const inRange = hole <= j ? home > hole && home <= j : home > hole || home <= j
      if (!inRange) {
        const h = hole * WS
        t[h] = t[at]!
        t[h + 1] = t[at + 1]!
        t[h + 2] = t[at + 2]!
        hole = j
      }
      j = (j + 1) & mask
    }
    t[hole * WS + 2] = 0
    wk.size--
    this.total--
    return node
  }

  // --------------------------------------------------------------------------------------------
  // worker keys

  /** The worker key (created when unknown). */
  protected workerKey(hi: number, lo: number, rank: number): WorkerKey {
    const c = this.cached
    if (c !== null && c.idLo === lo && c.idHi === hi && c.rank === rank) return c
    const key = keyOf(hi, lo, rank)
    let wk = this.byKey.get(key)
    if (wk === undefined) {
      const slot = this.freeSlots.length > 0 ? this.freeSlots.pop()! : this.workerSlots.length
      wk = new WorkerKey(slot, hi, lo, rank)
      if (slot === this.workerSlots.length) this.workerSlots.push(wk)
      else this.workerSlots[slot] = wk
      this.byKey.set(key, wk)
      this.orderDirty = true
    }
    this.cached = wk
    return wk
  }

  /** Drops every block of a worker key (it stays known). */
  private clearKey(wk: WorkerKey): void {
    if (wk.size === 0) return
    const t = wk.table
    wk.table = new Uint32Array(8 * WS)
    wk.mask = 7
    this.total -= wk.size
    wk.size = 0
    for (let k = 0; k < t.length; k += WS) {
      const node = t[k + 2]!
      if (node !== 0) this.removeHolder(node, wk.slot, t[k]!, t[k + 1]!)
    }
  }

  private keysOf(hi: number, lo: number): WorkerKey[] {
    const out: WorkerKey[] = []
    for (const wk of this.workerSlots) if (wk !== null && wk.idHi === hi && wk.idLo === lo) out.push(wk)
    return out
  }

  private forget(wk: WorkerKey): void {
    this.clearKey(wk)
    this.workerSlots[wk.slot] = null
    this.freeSlots.push(wk.slot)
    this.byKey.delete(keyOf(wk.idHi, wk.idLo, wk.rank))
    if (this.cached === wk) this.cached = null
    this.orderDirty = true
  }

  removeWorker(workerId: bigint): void {
    for (const wk of this.keysOf(Number(workerId >> 32n), Number(workerId & 0xffffffffn))) this.forget(wk)
  }

  removeWorkerDpRank(workerId: bigint, dpRank: number): void {
    const wk = this.byKey.get(keyOf(Number(workerId >> 32n), Number(workerId & 0xffffffffn), dpRank))
    if (wk !== undefined) this.forget(wk)
  }

  /** Known worker keys in ascending (workerId, dpRank). */
  private sortedKeys(): WorkerKey[] {
    const keys = this.workerSlots.filter((w): w is WorkerKey => w !== null)
    keys.sort((a, b) => cmp64(a.idHi, a.idLo, b.idHi, b.idLo) || a.rank - b.rank)
    return keys
  }

  private refreshOrder(): void {
    if (!this.orderDirty) return
    const cap = this.workerSlots.length * 2
    if (this.order.length < this.workerSlots.length) {
      this.order = new Uint32Array(cap)
      this.byPos = new Uint32Array(2 * cap)
    }
    const keys = this.sortedKeys()
    for (let i = 0; i < keys.length; i++) this.order[keys[i]!.slot] = i
    this.orderLen = keys.length
    this.orderDirty = false
  }

  /** A DataView on the caller's output buffer (cached: callers reuse one). */
  private viewOf(out: Uint8Array): DataView {
    if (this.outBuf !== out) {
      this.outBuf = out
      this.outView = new DataView(out.buffer, out.byteOffset, out.byteLength)
    }
    return this.outView!
  }

  // --------------------------------------------------------------------------------------------
  // events by parts (the ingest path applies its chunks straight from its scratch arrays)

  /**
   * A stored event: blocks [start, start + n) of `hashes` / `toks` (u64 pairs, element k at
   * [2k + HI], [2k + LO]).
   */
  applyStoredParts(
    wHi: number,
    wLo: number,
    rank: number,
    idHi: number,
    idLo: number,
    hasParent: boolean,
    pHi: number,
    pLo: number,
    hashes: Uint32Array,
    toks: Uint32Array,
    start: number,
    n: number,
  ): number {
    const wk = this.workerKey(wHi, wLo, rank)
    wk.hasLast = true
    wk.lastHi = idHi
    wk.lastLo = idLo
    if (this.repeats(hashes, start, n, hasParent, pHi, pLo)) {
      this.counts[C_INVALID_SEQUENCE]!++
      return OUT_INVALID_SEQUENCE
    }
    let cur = ROOT
    if (hasParent) {
      cur = this.wFind(wk, pHi, pLo)
      if (cur === 0) {
        this.counts[C_PARENT_NOT_FOUND]!++
        return OUT_PARENT_NOT_FOUND
      }
    }
    const w = wk.slot
    for (let k = start, end = start + n; k < end; k++) {
      const hi = hashes[2 * k + HI]!
      const lo = hashes[2 * k + LO]!
      const thi = toks[2 * k + HI]!
      const tlo = toks[2 * k + LO]!
      const existing = this.edgeFind(cur, thi, tlo)
      if (wk.size > 0) {
        const old = this.wFind(wk, hi, lo)
        if (old !== 0) {
          if (old === existing) {
            // already exactly there
            cur = existing
            continue
          }
          // the hash moves: it leaves its old node first
          this.wDelete(wk, hi, lo)
          this.removeHolder(old, w, hi, lo)
        }
      }
      // `existing` has holders other than this hash, so leaving `old` kept it (and its parent)
      let child = existing
      if (child === 0) child = this.allocNode(cur, thi, tlo)
      this.addHolder(child, w, hi, lo)
      this.wInsert(wk, hi, lo, child)
      cur = child
    }
    this.counts[C_STORED]!++
    this.counts[C_BLOCKS_STORED]! += n
    return OUT_APPLIED
  }

  /** A removed event: hashes [start, start + n) of `hashes` (u64 pairs). */
  applyRemovedParts(
    wHi: number,
    wLo: number,
    rank: number,
    idHi: number,
    idLo: number,
    hashes: Uint32Array,
    start: number,
    n: number,
  ): number {
    const wk = this.workerKey(wHi, wLo, rank)
    wk.hasLast = true
    wk.lastHi = idHi
    wk.lastLo = idLo
    let missing = 0
    const w = wk.slot
    for (let k = start, end = start + n; k < end; k++) {
      const hi = hashes[2 * k + HI]!
      const lo = hashes[2 * k + LO]!
      const node = this.wDelete(wk, hi, lo)
      if (node === 0) missing++
      else this.removeHolder(node, w, hi, lo)
    }
    this.counts[C_REMOVED]!++
    this.counts[C_BLOCK_NOT_FOUND]! += missing
    this.counts[C_BLOCKS_REMOVED]! += n - missing
    return missing > 0 ? OUT_BLOCK_NOT_FOUND : OUT_APPLIED
  }

  /** A cleared event: every dp rank of the worker id loses its blocks. */
  applyClearedParts(wHi: number, wLo: number, rank: number, idHi: number, idLo: number): number {
    const wk = this.workerKey(wHi, wLo, rank)
    wk.hasLast = true
    wk.lastHi = idHi
    wk.lastLo = idLo
    for (const k of this.keysOf(wHi, wLo)) this.clearKey(k)
    this.counts[C_CLEARED]!++
    return OUT_APPLIED
  }

  /** Whether a block hash repeats within [start, start + n) or equals the parent. */
  private repeats(h: Uint32Array, start: number, n: number, hasParent: boolean, pHi: number, pLo: number): boolean {
    const end = start + n
    if (hasParent) {
      for (let k = start; k < end; k++) if (h[2 * k + LO] === pLo && h[2 * k + HI] === pHi) return true
    }
    if (n <= 16) {
      for (let k = start + 1; k < end; k++) {
        const hi = h[2 * k + HI]!
        const lo = h[2 * k + LO]!
        for (let j = start; j < k; j++) if (h[2 * j + LO] === lo && h[2 * j + HI] === hi) return true
      }
      return false
    }
    let cap = 64
    while (cap < 2 * n) cap *= 2
    if (this.seen.length < cap) this.seen = new Uint32Array(cap)
    const seen = this.seen
    seen.fill(0, 0, cap)
    const mask = cap - 1
    for (let k = start; k < end; k++) {
      const hi = h[2 * k + HI]!
      const lo = h[2 * k + LO]!
      let i = mix(hi, lo) & mask
      for (;;) {
        const s = seen[i]!
        if (s === 0) {
          seen[i] = k + 1
          break
        }
        if (h[2 * (s - 1) + LO] === lo && h[2 * (s - 1) + HI] === hi) return true
        i = (i + 1) & mask
      }
    }
    return false
  }

  // --------------------------------------------------------------------------------------------
  // the raw interface

  /** Grows the BigUint64 scratch arrays of applyEvent to hold n values. */
  private ensureScratch(n: number): void {
    if (this.h64.length >= n) return
    let cap = this.h64.length
    while (cap < n) cap *= 2
    this.h64 = new BigUint64Array(cap)
    this.t64 = new BigUint64Array(cap)
  }

  applyEvent(ev: RouterEventValue): number {
    const wid = ev.workerId
    const wHi = Number(wid >> 32n)
    const wLo = Number(wid & 0xffffffffn)
    const id = ev.event.eventId
    const idHi = Number(id >> 32n)
    const idLo = Number(id & 0xffffffffn)
    const rank = ev.event.dpRank
    const data = ev.event.data
    switch (data.type) {
      case 'stored': {
        const blocks = data.blocks
        const n = blocks.length
        this.ensureScratch(n)
        const h64 = this.h64
        const t64 = this.t64
        for (let i = 0; i < n; i++) {
          const b = blocks[i]!
          h64[i] = b.blockHash
          t64[i] = b.tokensHash
        }
        const p = data.parentHash
        const hasParent = p !== null && p !== undefined
        return this.applyStoredParts(
          wHi,
          wLo,
          rank,
          idHi,
          idLo,
          hasParent,
          hasParent ? Number(p >> 32n) : 0,
          hasParent ? Number(p & 0xffffffffn) : 0,
          u64Pairs(h64),
          u64Pairs(t64),
          0,
          n,
        )
      }
      case 'removed': {
        const hs = data.blockHashes
        const n = hs.length
        this.ensureScratch(n)
        const h64 = this.h64
        for (let i = 0; i < n; i++) h64[i] = hs[i]!
        return this.applyRemovedParts(wHi, wLo, rank, idHi, idLo, u64Pairs(h64), 0, n)
      }
      case 'cleared':
        return this.applyClearedParts(wHi, wLo, rank, idHi, idLo)
    }
  }

  applyEncoded(payload: Uint8Array, format: number): number {
    const r = this.applyEncodedFast(payload, format)
    return r >= 0 ? r : this.applyEvent(decodeEncoded(payload, format))
  }

  protected readonly fast = new FastEvent()
  /** The msgpack RouterEvent bytes of the last applyEncodedFast call: [fastAt, fastEnd) of its payload. */
  protected fastAt = 0
  protected fastEnd = 0

  /**
   * applyEncoded for the canonical msgpack layout, straight from the bytes (this.fast keeps what was
   * read); -1 (nothing applied) when the generic decoder has to handle it. Throws for a bad envelope.
   */
  protected applyEncodedFast(payload: Uint8Array, format: number): number {
    if (format === 2) return -1
    let at = 0
    let end = payload.length
    if (format === 0) {
      envelopePayload(payload)
      at = PAYLOAD_AT.at
      end = at + PAYLOAD_AT.len
    }
    const f = this.fast
    if (!f.parse(payload, at, end)) return -1
    this.fastAt = at
    this.fastEnd = end
    if (f.kind === KIND_STORED) {
      return this.applyStoredParts(f.wHi, f.wLo, f.rank, f.idHi, f.idLo, f.hasParent, f.pHi, f.pLo, f.hashes, f.toks, 0, f.n)
    }
    if (f.kind === KIND_REMOVED) return this.applyRemovedParts(f.wHi, f.wLo, f.rank, f.idHi, f.idLo, f.hashes, 0, f.n)
    return this.applyClearedParts(f.wHi, f.wLo, f.rank, f.idHi, f.idLo)
  }

  findMatches(tokensHashes: BigUint64Array, earlyExit: boolean, out: Uint8Array): number {
    return this.matchPairs(u64Pairs(tokensHashes), tokensHashes.length, earlyExit, out)
  }

  private qScratch = new Uint32Array(128)
  private readonly seed = { seedHi: 0, seedLo: 0 }

  findMatchesForTokens(
    tokens: Uint32Array,
    kvBlockSize: number,
    loraName: string | null,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
    earlyExit: boolean,
    out: Uint8Array,
  ): number {
    const n = Math.floor(tokens.length / kvBlockSize)
    if (n === 0) return this.matchPairs(this.qScratch, 0, earlyExit, out)
    if (this.qScratch.length < 2 * n) this.qScratch = new Uint32Array(4 * n)
    loraSeed(loraName, this.seed)
    hashBlocks(tokenBytesLE(tokens, n * kvBlockSize), kvBlockSize, n, this.seed.seedHi, this.seed.seedLo, blockMmInfos, this.qScratch)
    return this.matchPairs(this.qScratch, n, earlyExit, out)
  }

  private nextGen(): number {
    this.gen = (this.gen + 1) >>> 0
    if (this.gen === 0) {
      this.stamps.fill(0)
      this.byPos.fill(0)
      this.gen = 1
    }
    return this.gen
  }

  /**
   * SPEC 6 find_matches over a query given as u64 pairs, written into `out` (ts/core/binding.ts layout):
   * returns the bytes written, or minus the bytes needed (nothing written) when `out` is too small.
   */
  private matchPairs(q: Uint32Array, qn: number, earlyExit: boolean, out: Uint8Array): number {
    if (qn === 0) return noMatches(out)
    let node = this.edgeFind(ROOT, q[HI]!, q[LO]!)
    if (node === 0) return noMatches(out)
    const nw = this.workerSlots.length
    if (this.stamps.length < nw) {
      const cap = nw * 2
      this.stamps = new Uint32Array(cap)
      this.active = new Uint32Array(cap)
      this.kept = new Uint32Array(cap)
      this.resW = new Uint32Array(cap)
      this.resS = new Uint32Array(cap)
    }
    const stamps = this.stamps
    const H = this.H
    const N = this.N
    let active = this.active
    let kept = this.kept
    const resW = this.resW
    const resS = this.resS
    let nres = 0
    let na = 0
    let g = this.nextGen()
    for (let at = N[node * NS + N_HOFF]! * HS, end = at + N[node * NS + N_HLEN]! * HS; at < end; at += HS) {
      const w = H[at]!
      if (stamps[w] !== g) {
        stamps[w] = g
        active[na++] = w
      }
    }
    let depth = 1
    for (let i = 1; i < qn; i++) {
      if (earlyExit && na === 1) break
      const child = this.edgeFind(node, q[2 * i + HI]!, q[2 * i + LO]!)
      if (child === 0) break
      g = this.nextGen()
      for (let at = N[child * NS + N_HOFF]! * HS, end = at + N[child * NS + N_HLEN]! * HS; at < end; at += HS) stamps[H[at]!] = g
      let nk = 0
      for (let k = 0; k < na; k++) {
        const w = active[k]!
        if (stamps[w] === g) {
          kept[nk++] = w
        } else {
          resW[nres] = w
          resS[nres++] = depth
        }
      }
      const t = active
      active = kept
      kept = t
      na = nk
      if (na === 0) break
      depth = i + 1
      node = child
    }
    for (let k = 0; k < na; k++) {
      resW[nres] = active[k]!
      resS[nres++] = depth
    }
    this.active = active
    this.kept = kept
    const need = 4 + MATCH_RECORD_BYTES * nres
    if (out.length < need) return -need
    // ascending (workerId, dpRank), by the precomputed order of the worker slots
    this.refreshOrder()
    const order = this.order
    if (nres * 8 >= this.orderLen) {
      // many results: place them by order, then read them back in order
      const g2 = this.nextGen()
      const byPos = this.byPos
      for (let i = 0; i < nres; i++) {
        const pos = order[resW[i]!]!
        byPos[2 * pos] = g2
        byPos[2 * pos + 1] = i
      }
      const sortedW = this.kept
      const sortedS = this.active
      let k = 0
      for (let pos = 0, len = this.orderLen; pos < len; pos++) {
        if (byPos[2 * pos] !== g2) continue
        const i = byPos[2 * pos + 1]!
        sortedW[k] = resW[i]!
        sortedS[k++] = resS[i]!
      }
      resW.set(sortedW.subarray(0, nres))
      resS.set(sortedS.subarray(0, nres))
    } else {
      for (let i = 1; i < nres; i++) {
        const w = resW[i]!
        const s = resS[i]!
        const o = order[w]!
        let j = i - 1
        while (j >= 0 && order[resW[j]!]! > o) {
          resW[j + 1] = resW[j]!
          resS[j + 1] = resS[j]!
          j--
        }
        resW[j + 1] = w
        resS[j + 1] = s
      }
    }
    const v = this.viewOf(out)
    v.setUint32(0, nres, true)
    const slots = this.workerSlots
    for (let i = 0, at = 4; i < nres; i++, at += MATCH_RECORD_BYTES) {
      const wk = slots[resW[i]!]!
      v.setUint32(at, wk.idLo, true)
      v.setUint32(at + 4, wk.idHi, true)
      v.setUint32(at + 8, wk.rank, true)
      v.setUint32(at + 12, resS[i]!, true)
      const size = wk.size
      v.setUint32(at + 16, size >>> 0, true)
      v.setUint32(at + 20, size > 0xffffffff ? Math.floor(size / TWO32) : 0, true)
    }
    return need
  }

  dump(): RouterEventValue[] {
    return this.dumpKeys(this.sortedKeys())
  }

  /** dump() restricted to the worker keys of one dp rank. */
  dumpRank(rank: number): RouterEventValue[] {
    return this.dumpKeys(this.sortedKeys().filter((k) => k.rank === rank))
  }

  private dumpKeys(keys: WorkerKey[]): RouterEventValue[] {
    const out: RouterEventValue[] = []
    const N = this.N
    const H = this.H
    const byKeyDesc = (a: number, b: number): number =>
      cmp64(N[b * NS + N_KHI]!, N[b * NS + N_KLO]!, N[a * NS + N_KHI]!, N[a * NS + N_KLO]!)
    for (const wk of keys) {
      const eventId = wk.hasLast ? big(wk.lastHi, wk.lastLo) : 0n
      // the worker's nodes, grouped by parent: a DFS from the root through them reaches exactly the
      // nodes whose whole path holds the worker
      const kids = new Map<number, number[]>()
      const seen = new Set<number>()
      const t = wk.table
      for (let k = 0; k < t.length; k += WS) {
        const node = t[k + 2]!
        if (node === 0 || seen.has(node)) continue
        seen.add(node)
        const parent = N[node * NS + N_PAR]!
        if (parent === DETACHED) continue
        let list = kids.get(parent)
        if (list === undefined) kids.set(parent, (list = []))
        list.push(node)
      }
      // stack of (node, parent hash or null)
      const stack: number[] = []
      const parents: (bigint | null)[] = []
      const pushKids = (node: number, parentHash: bigint | null): void => {
        const list = kids.get(node)
        if (list === undefined) return
        list.sort(byKeyDesc)
        for (const c of list) {
          stack.push(c)
          parents.push(parentHash)
        }
      }
      pushKids(ROOT, null)
      while (stack.length > 0) {
        const node = stack.pop()!
        const parentHash = parents.pop()!
        const tokensHash = big(N[node * NS + N_KHI]!, N[node * NS + N_KLO]!)
        let first: bigint | null = null
        for (let at = N[node * NS + N_HOFF]! * HS, end = at + N[node * NS + N_HLEN]! * HS; at < end; at += HS) {
          if (H[at + H_W] !== wk.slot) continue
          const blockHash = big(H[at + H_HI]!, H[at + H_LO]!)
          if (first === null) first = blockHash
          out.push({
            workerId: wk.workerId,
            event: {
              eventId,
              dpRank: wk.rank,
              data: { type: 'stored', parentHash, blocks: [{ blockHash, tokensHash, mmExtraInfo: null }] },
            },
          })
        }
        pushKids(node, first)
      }
    }
    return out
  }

  workers(): BigUint64Array {
    const ids = this.sortedKeys().map((k) => k.workerId)
    const out: bigint[] = []
    for (const id of ids) if (out.length === 0 || out[out.length - 1] !== id) out.push(id)
    return BigUint64Array.from(out)
  }

  size(): number {
    return this.total
  }

  counters(): BigUint64Array {
    const out = new BigUint64Array(this.counts.length)
    for (let i = 0; i < this.counts.length; i++) out[i] = BigInt(this.counts[i]!)
    return out
  }

  /** Checks the internal invariants (for tests); throws on the first violation. */
  selfCheck(): void {
    const N = this.N
    const H = this.H
    const fail = (msg: string): never => {
      throw new Error(`index invariant: ${msg}`)
    }
    const free = new Set<number>()
    for (let n = this.freeNode; n !== 0; n = N[n * NS + N_NEXT]!) {
      if (free.has(n)) fail('free-list cycle')
      free.add(n)
    }
    let attached = 0
    let holders = 0
    for (let c = 1; c < this.nodeTop; c++) {
      if (free.has(c)) continue
      const b = c * NS
      const len = N[b + N_HLEN]!
      if (len === 0) fail(`live node ${c} without holders`)
      if (len > 1 << this.hcls[c]!) fail(`node ${c} holders overflow their block`)
      holders += len
      const parent = N[b + N_PAR]!
      if (parent === DETACHED) continue
      attached++
      if (parent !== ROOT && (free.has(parent) || parent >= this.nodeTop)) fail(`node ${c} has a dead parent`)
      if (this.edgeFind(parent, N[b + N_KHI]!, N[b + N_KLO]!) !== c) fail(`edge of node ${c} not found`)
      let k = N[parent * NS + N_KID]!
      while (k !== 0 && k !== c) k = N[k * NS + N_NEXT]!
      if (k !== c) fail(`node ${c} missing from its parent's child list`)
    }
    const seen = new Set<number>()
    let slots = 0
    for (let i = 0; i < this.edges.length; i += 2) {
      const c = this.edges[i]!
      if (c === 0) continue
      slots++
      if (seen.has(c)) fail(`edge of node ${c} twice`)
      seen.add(c)
      if (this.edges[i + 1] !== N[c * NS + N_KLO]) fail(`edge tag of node ${c}`)
    }
    if (slots !== attached || slots !== this.edgeSize) fail(`edges ${slots}, attached ${attached}, edgeSize ${this.edgeSize}`)
    let total = 0
    for (const wk of this.workerSlots) {
      if (wk === null) continue
      let n = 0
      const t = wk.table
      for (let k = 0; k < t.length; k += WS) {
        const node = t[k + 2]!
        if (node === 0) continue
        n++
        if (this.wFind(wk, t[k]!, t[k + 1]!) !== node) fail('worker table lookup')
        let on = 0
        for (let at = N[node * NS + N_HOFF]! * HS, end = at + N[node * NS + N_HLEN]! * HS; at < end; at += HS) {
          if (H[at + H_W] === wk.slot && H[at + H_HI] === t[k] && H[at + H_LO] === t[k + 1]) on++
        }
        if (on !== 1) fail(`worker ${wk.slot} hash on its node ${on} times`)
      }
      if (n !== wk.size) fail('worker size')
      total += n
    }
    if (total !== this.total || total !== holders) fail(`entries ${total}, total ${this.total}, holders ${holders}`)
  }

  /** Approximate bytes held by the typed arrays of the index (for benchmarks). */
  heapBytes(): number {
    let bytes = this.N.byteLength + this.hcls.byteLength + this.H.byteLength + this.edges.byteLength
    for (const wk of this.workerSlots) if (wk !== null) bytes += wk.table.byteLength
    return bytes
  }
}

/** The next length of a growing arena (about 1.5x, a multiple of the record size). */
function grown(len: number, stride: number): number {
  const records = Math.ceil(len / stride)
  return (records + (records >> 1) + 16) * stride
}

function put32(b: Uint8Array, at: number, v: number): void {
  b[at] = v & 0xff
  b[at + 1] = (v >>> 8) & 0xff
  b[at + 2] = (v >>> 16) & 0xff
  b[at + 3] = v >>> 24
}

function noMatches(out: Uint8Array): number {
  if (out.length < 4) return -4
  put32(out, 0, 0)
  return 4
}

/** Puts hash -> node into the first free slot of its probe run (linear probing; node 0 = empty). */
function placeEntry(t: Uint32Array, mask: number, hi: number, lo: number, node: number): void {
  let i = mix(hi, lo) & mask
  while (t[i * WS + 2] !== 0) i = (i + 1) & mask
  const at = i * WS
  t[at] = hi
  t[at + 1] = lo
  t[at + 2] = node
}
