// The radix index (SPEC 6) for the fallback: which worker (workerId, dpRank) holds which blocks, as a
// tree keyed by the tokens hashes of the path from the root. Mirrors crates/core/src/index.rs rule for
// rule; only the memory layout differs.
//
// Layout (no BigInt and no object per block on the hot paths; u64 values are u32 halves):
// - nodes: one Uint32Array arena, NODE_WORDS words per node: tokens-hash key, parent, first child and siblings
//   (a doubly-linked child list, for enumeration), and where its holders are;
// - holders: the (worker slot, block hash) pairs of a node, contiguous in insertion order (3 words
//   each) in a block of a shared pool; blocks come in power-of-two sizes with a free list per size.
//   A node that reached BIG_HOLDERS pairs (one worker holding many hashes for the same tokens) also
//   has a map pair -> position, and a removal leaves a tomb (worker TOMB) until tombs outnumber pairs;
// - edges: one open-addressing table (parent, key) -> child over the whole tree, 2 words per slot: the
//   child id and the low half of its key as a tag (the rest of the key is read from the node arena);
// - per worker key: an open-addressing table block hash -> node (3 words per slot).
//
// Rules that are easy to miss (same as the core):
// - a node that loses its last holder is removed from the tree and its children are detached: blocks
//   still held below it become unreachable (stale) but stay in their workers' maps until removed;
// - a block hash stored at a new place leaves its old node first;
// - `cleared` applies to every dp rank of the worker id (Dynamo semantics).
import type { ApplyOutcome, BlockExtraInfo, IndexCounterName, RawRadixIndex, RouterEventValue } from '../core/binding.js'
import { MATCH_RECORD_BYTES } from '../core/binding.js'
import { blockCount, hashBlocks, saltSeed, tokenBytesLE } from './hash.js'
import { bigFromHalves, HI, LO, u64Pairs } from './msgpack.js'
import { CanonicalRouterEvent, decodeEncodedList, envelopePayload, KIND_REMOVED, KIND_STORED, PAYLOAD_AT } from './wire.js'

/** Apply outcome names (the core's APPLY_OUTCOMES), indexed by the OUTCOME_ codes below. */
export const APPLY_OUTCOMES: ApplyOutcome[] = ['applied', 'parent_not_found', 'block_not_found', 'invalid_block_sequence', 'ignored']

/** Index counter names (the core's INDEX_COUNTER_NAMES), in the order of counters(). */
export const INDEX_COUNTER_NAMES: IndexCounterName[] = [
  'applied_stored',
  'applied_removed',
  'applied_cleared',
  'parent_not_found',
  'block_not_found',
  'invalid_block_sequence',
  'blocks_stored',
  'blocks_removed',
]

// outcome codes (APPLY_OUTCOMES order)
export const OUTCOME_APPLIED = 0
export const OUTCOME_PARENT_NOT_FOUND = 1
export const OUTCOME_BLOCK_NOT_FOUND = 2
export const OUTCOME_INVALID_SEQUENCE = 3
export const OUTCOME_IGNORED = 4

/**
 * Whether a (Dynamo 1.4+) event describes the worker's GPU memory: device tier (absent = device) and
 * worker domain (absent = worker). wire.rs EventMeta::targets_gpu_index.
 */
export function targetsGpuIndex(ev: RouterEventValue): boolean {
  return (ev.storageTier === undefined || ev.storageTier === 'device') && ev.residencyDomain !== 'cache_owner'
}

// counter indices (INDEX_COUNTER_NAMES order)
const C_STORED = 0
const C_REMOVED = 1
const C_CLEARED = 2
const C_PARENT_NOT_FOUND = 3
const C_BLOCK_NOT_FOUND = 4
const C_INVALID_SEQUENCE = 5
const C_BLOCKS_STORED = 6
const C_BLOCKS_REMOVED = 7

// node arena: NODE_WORDS words per node; node 0 is the root. Child/sibling links use 0 for "none" (the root is
// never a child); a detached node (and a free one) has parent DETACHED.
export const NODE_WORDS = 8
export const NODE_KEY_HI = 0
export const NODE_KEY_LO = 1
export const NODE_PARENT = 2
export const NODE_FIRST_CHILD = 3
export const NODE_NEXT_SIBLING = 4 // also the free-list link of a free node
export const NODE_PREV_SIBLING = 5
export const NODE_HOLDERS_AT = 6 // first holder (in holder units) of the node's block; 0 = no block
export const NODE_HOLDER_COUNT = 7 // number of holders
export const ROOT = 0
export const DETACHED = 0xffffffff

// holder pool: HOLDER_WORDS words per holder; unit 0 is never used (offset 0 = no block). A block of size class c
// holds 2^c holders; a free block links to the next free one of its class through its first word.
export const HOLDER_WORDS = 3
export const HOLDER_WORKER = 0
export const HOLDER_HASH_HI = 1
export const HOLDER_HASH_LO = 2
/** A node with this many holders gets a `BigHolders` (below it, scanning the block is cheaper). */
export const BIG_HOLDERS = 128
/** The size class of a block that can hold BIG_HOLDERS. */
const BIG_CLASS = 7
/** HOLDER_WORKER of a removed pair still in a big node's block (until compaction). */
export const TOMB = 0xffffffff

/** A 30-bit mix of a (worker, block hash) pair: a small integer key, cheap for a Map. */
const pairMix = (w: number, hi: number, lo: number): number =>
  (Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b) ^ Math.imul(w + 1, 0xc2b2ae35)) >>> 2
const pairKey = (w: number, hi: number, lo: number): string => `${w}:${hi}:${lo}`

/**
 * Where each pair of a big node is in its block (positions in holder units from the block's start):
 * keyed by the pair's mix and checked against the block; the rare pair whose mix is taken by another
 * live pair goes to `spill`, keyed by the whole pair.
 */
export class BigHolders {
  private readonly at = new Map<number, number>()
  private spill: Map<string, number> | null = null
  /** Pairs in the block that are not tombs. */
  live = 0

  /** The position of the pair in the block at `off`, or -1. */
  find(holders: Uint32Array, off: number, w: number, hi: number, lo: number): number {
    const k = this.at.get(pairMix(w, hi, lo))
    if (k !== undefined) {
      const a = (off + k) * HOLDER_WORDS
      if (holders[a + HOLDER_HASH_LO] === lo && holders[a + HOLDER_WORKER] === w && holders[a + HOLDER_HASH_HI] === hi) return k
    }
    return this.spill?.get(pairKey(w, hi, lo)) ?? -1
  }

  /** Records a pair that is not here, at position k. */
  add(w: number, hi: number, lo: number, k: number): void {
    const m = pairMix(w, hi, lo)
    if (!this.at.has(m)) {
      this.at.set(m, k)
      return
    }
    if (this.spill === null) this.spill = new Map()
    this.spill.set(pairKey(w, hi, lo), k)
  }

  /** Forgets a pair found at position k. */
  delete(w: number, hi: number, lo: number, k: number): void {
    const m = pairMix(w, hi, lo)
    if (this.at.get(m) === k) this.at.delete(m)
    else this.spill?.delete(pairKey(w, hi, lo))
  }

  /** Records the pairs of a block of `len` units (tombs skipped) and counts them. */
  rebuild(holders: Uint32Array, off: number, len: number): void {
    this.at.clear()
    this.spill = null
    this.live = 0
    for (let k = 0; k < len; k++) {
      const a = (off + k) * HOLDER_WORDS
      const w = holders[a + HOLDER_WORKER]!
      if (w === TOMB) continue
      this.add(w, holders[a + HOLDER_HASH_HI]!, holders[a + HOLDER_HASH_LO]!, k)
      this.live++
    }
  }

  /** Pairs recorded. */
  size(): number {
    return this.at.size + (this.spill?.size ?? 0)
  }
}

// worker tables: ENTRY_WORDS words per slot (hash hi, hash lo, node); node 0 = empty slot (the root holds nothing)
export const ENTRY_WORDS = 3

const TWO32 = 4294967296

function mixHash(hi: number, lo: number): number {
  let h = Math.imul(lo ^ Math.imul(hi ^ 0x5bd1e995, 0x9e3779b1), 0x85ebca6b)
  h ^= h >>> 15
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 13
  return h
}

function mixEdge(p: number, hi: number, lo: number): number {
  return mixHash(hi ^ Math.imul(p + 0x7f4a7c15, 0x27d4eb2f), lo)
}

/** a < b for u64 halves: -1, 0, 1. */
function cmp64(ahi: number, alo: number, bhi: number, blo: number): number {
  if (ahi !== bhi) return ahi < bhi ? -1 : 1
  if (alo !== blo) return alo < blo ? -1 : 1
  return 0
}

/** A position in a dump (FallbackRadixIndex.dumpCursor / dumpNext). */
export interface FallbackDumpCursor {
  readonly epoch: object
  readonly version: number
  readonly keys: WorkerKey[]
  nextKey: number
  key: WorkerKey | null
  kids: Map<number, number[]>
  stack: number[]
  parents: (bigint | null)[]
  /** the current node's events still to return, last first */
  pending: RouterEventValue[]
}

/** One worker key (workerId, dpRank): its block hash -> holder entry table and its last event id. */
export class WorkerKey {
  /** (hash hi, hash lo, node) per slot, open addressing with linear probing. */
  table = new Uint32Array(8 * ENTRY_WORDS)
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
    this.workerId = bigFromHalves(idHi, idLo)
  }
}

const keyOf = (hi: number, lo: number, rank: number): string => `${hi}:${lo}:${rank}`

// ---------------------------------------------------------------------------------------------------

export class FallbackRadixIndex implements RawRadixIndex {
  private nodes = new Uint32Array(NODE_WORDS * 1024)
  private nodeTop = 1 // next never-used node id
  private freeNode = 0
  /** Size class (log2 capacity) of each node's holder block. */
  private holderClass = new Uint8Array(1024)
  private holders = new Uint32Array(HOLDER_WORDS * 1024)
  private holderTop = 1
  private readonly freeHolderBlocks = new Uint32Array(32)
  /** The nodes whose holders reached BIG_HOLDERS (their class is BIG_CLASS or more). */
  private bigHolders = new Map<number, BigHolders>()
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
  private byOrderPos = new Uint32Array(32)
  private outBuf: Uint8Array | null = null
  private outView: DataView | null = null

  private readonly counts = new Float64Array(INDEX_COUNTER_NAMES.length)
  private total = 0

  // find_matches scratch
  private stamps = new Uint32Array(16)
  private gen = 0
  private active = new Uint32Array(16)
  private kept = new Uint32Array(16)
  private resultSlots = new Uint32Array(16)
  private resultDepths = new Uint32Array(16)
  // scratch for events given as values, and the repeat check
  private hashScratch = new BigUint64Array(64)
  private tokensScratch = new BigUint64Array(64)
  private seen = new Uint32Array(64)
  private dropStack: number[] = []
  /** Changes with every mutation, and a new object per index (close() replaces it): a dump cursor's staleness check. */
  private version = 0
  private epoch: object = {}

  constructor() {
    this.nodes[NODE_PARENT] = DETACHED
  }

  // --------------------------------------------------------------------------------------------
  // edges (parent, key) -> child

  private edgeFind(p: number, hi: number, lo: number): number {
    const edges = this.edges
    const mask = this.edgeMask
    const nodes = this.nodes
    let i = mixEdge(p, hi, lo) & mask
    for (;;) {
      const c = edges[2 * i]!
      if (c === 0) return 0
      if (edges[2 * i + 1] === lo) {
        const b = c * NODE_WORDS
        if (nodes[b + NODE_KEY_HI] === hi && nodes[b + NODE_PARENT] === p) return c
      }
      i = (i + 1) & mask
    }
  }

  private edgeHome(c: number): number {
    const b = c * NODE_WORDS
    const nodes = this.nodes
    return mixEdge(nodes[b + NODE_PARENT]!, nodes[b + NODE_KEY_HI]!, nodes[b + NODE_KEY_LO]!) & this.edgeMask
  }

  /** Adds the edge of node c (its parent and key set). The table is at most half full, so there is room. */
  private edgeInsert(c: number): void {
    const edges = this.edges
    const mask = this.edgeMask
    let i = this.edgeHome(c)
    while (edges[2 * i] !== 0) i = (i + 1) & mask
    edges[2 * i] = c
    edges[2 * i + 1] = this.nodes[c * NODE_WORDS + NODE_KEY_LO]!
    this.edgeSize++
    // the rebuild reads the arena, where c already is
    if (this.edgeSize * 2 > mask + 1) this.edgeRehash((mask + 1) * 2)
  }

  private edgeRehash(cap: number): void {
    this.edges = new Uint32Array(2 * cap)
    this.edgeMask = cap - 1
    const edges = this.edges
    const mask = this.edgeMask
    const nodes = this.nodes
    // every attached node has an edge (free and detached nodes have parent DETACHED): reading the arena
    // in order is cheaper than following the old table's ids
    for (let c = 1, top = this.nodeTop; c < top; c++) {
      const b = c * NODE_WORDS
      const parent = nodes[b + NODE_PARENT]!
      if (parent === DETACHED) continue
      const lo = nodes[b + NODE_KEY_LO]!
      let i = mixEdge(parent, nodes[b + NODE_KEY_HI]!, lo) & mask
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
      this.freeNode = this.nodes[id * NODE_WORDS + NODE_NEXT_SIBLING]!
    } else {
      id = this.nodeTop++
      if (id * NODE_WORDS + NODE_WORDS > this.nodes.length) {
        const next = new Uint32Array(grown(this.nodes.length, NODE_WORDS))
        next.set(this.nodes)
        this.nodes = next
        const cls = new Uint8Array(next.length / NODE_WORDS)
        cls.set(this.holderClass)
        this.holderClass = cls
      }
    }
    const nodes = this.nodes
    const b = id * NODE_WORDS
    nodes[b + NODE_KEY_HI] = hi
    nodes[b + NODE_KEY_LO] = lo
    nodes[b + NODE_PARENT] = parent
    nodes[b + NODE_FIRST_CHILD] = 0
    nodes[b + NODE_HOLDERS_AT] = 0
    nodes[b + NODE_HOLDER_COUNT] = 0
    this.holderClass[id] = 0
    // prepend to the parent's child list
    const pb = parent * NODE_WORDS
    const first = nodes[pb + NODE_FIRST_CHILD]!
    nodes[b + NODE_NEXT_SIBLING] = first
    nodes[b + NODE_PREV_SIBLING] = 0
    if (first !== 0) nodes[first * NODE_WORDS + NODE_PREV_SIBLING] = id
    nodes[pb + NODE_FIRST_CHILD] = id
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
      const nodes = this.nodes
      const b = n * NODE_WORDS
      const parent = nodes[b + NODE_PARENT]!
      if (parent !== DETACHED) {
        this.edgeDelete(n)
        const prev = nodes[b + NODE_PREV_SIBLING]!
        const next = nodes[b + NODE_NEXT_SIBLING]!
        if (prev !== 0) nodes[prev * NODE_WORDS + NODE_NEXT_SIBLING] = next
        else nodes[parent * NODE_WORDS + NODE_FIRST_CHILD] = next
        if (next !== 0) nodes[next * NODE_WORDS + NODE_PREV_SIBLING] = prev
      }
      let c = nodes[b + NODE_FIRST_CHILD]!
      while (c !== 0) {
        const cb = c * NODE_WORDS
        const next = nodes[cb + NODE_NEXT_SIBLING]!
        this.edgeDelete(c)
        nodes[cb + NODE_PARENT] = DETACHED
        nodes[cb + NODE_NEXT_SIBLING] = 0
        nodes[cb + NODE_PREV_SIBLING] = 0
        if (nodes[cb + NODE_HOLDER_COUNT] === 0) stack.push(c)
        c = next
      }
      if (nodes[b + NODE_HOLDERS_AT] !== 0) this.freeBlock(nodes[b + NODE_HOLDERS_AT]!, this.holderClass[n]!)
      if (this.holderClass[n]! >= BIG_CLASS) this.bigHolders.delete(n)
      nodes[b + NODE_PARENT] = DETACHED
      nodes[b + NODE_FIRST_CHILD] = 0
      nodes[b + NODE_PREV_SIBLING] = 0
      nodes[b + NODE_HOLDERS_AT] = 0
      nodes[b + NODE_HOLDER_COUNT] = 0
      nodes[b + NODE_NEXT_SIBLING] = this.freeNode
      this.freeNode = n
    }
  }

  // --------------------------------------------------------------------------------------------
  // holders

  /** A block of 2^cls holder units. */
  private allocBlock(cls: number): number {
    const off = this.freeHolderBlocks[cls]!
    if (off !== 0) {
      this.freeHolderBlocks[cls] = this.holders[off * HOLDER_WORDS]!
      return off
    }
    const at = this.holderTop
    this.holderTop += 1 << cls
    if (this.holderTop * HOLDER_WORDS > this.holders.length) {
      const next = new Uint32Array(grown(Math.max(this.holders.length, this.holderTop * HOLDER_WORDS), HOLDER_WORDS))
      next.set(this.holders)
      this.holders = next
    }
    return at
  }

  private freeBlock(off: number, cls: number): void {
    this.holders[off * HOLDER_WORDS] = this.freeHolderBlocks[cls]!
    this.freeHolderBlocks[cls] = off
  }

  /** Appends the holder (w, hash) to the node (the caller knows it is not there). */
  private addHolder(node: number, w: number, hi: number, lo: number): void {
    const nodes = this.nodes
    const b = node * NODE_WORDS
    const len = nodes[b + NODE_HOLDER_COUNT]!
    let off = nodes[b + NODE_HOLDERS_AT]!
    if (off === 0) {
      off = this.allocBlock(0)
      this.holderClass[node] = 0
      nodes[b + NODE_HOLDERS_AT] = off
    } else {
      const cls = this.holderClass[node]!
      if (len === 1 << cls) {
        const bigger = this.allocBlock(cls + 1)
        this.holders.copyWithin(bigger * HOLDER_WORDS, off * HOLDER_WORDS, (off + len) * HOLDER_WORDS)
        this.freeBlock(off, cls)
        off = bigger
        this.holderClass[node] = cls + 1
        nodes[b + NODE_HOLDERS_AT] = off
      }
    }
    const holders = this.holders
    const at = (off + len) * HOLDER_WORDS
    holders[at + HOLDER_WORKER] = w
    holders[at + HOLDER_HASH_HI] = hi
    holders[at + HOLDER_HASH_LO] = lo
    nodes[b + NODE_HOLDER_COUNT] = len + 1
    // a big node keeps its map (and its block class) when compaction takes it below BIG_HOLDERS
    const big = this.holderClass[node]! >= BIG_CLASS ? this.bigHolders.get(node) : undefined
    if (big !== undefined) {
      big.add(w, hi, lo, len)
      big.live++
    } else if (len + 1 >= BIG_HOLDERS) {
      const fresh = new BigHolders()
      fresh.rebuild(holders, off, len + 1)
      this.bigHolders.set(node, fresh)
    }
  }

  /** removeHolder for a big node: the pair becomes a tomb, compacted once tombs outnumber pairs. */
  private removeBigHolder(node: number, big: BigHolders, w: number, hi: number, lo: number): void {
    const nodes = this.nodes
    const holders = this.holders
    const b = node * NODE_WORDS
    const off = nodes[b + NODE_HOLDERS_AT]!
    const k = big.find(holders, off, w, hi, lo)
    if (k < 0) return
    big.delete(w, hi, lo, k)
    holders[(off + k) * HOLDER_WORDS + HOLDER_WORKER] = TOMB
    big.live--
    if (big.live === 0) {
      this.bigHolders.delete(node)
      nodes[b + NODE_HOLDER_COUNT] = 0
      if (node !== ROOT) this.dropEmpty(node)
      return
    }
    const len = nodes[b + NODE_HOLDER_COUNT]!
    if (len <= 2 * big.live) return
    // compact in place, keeping the order; amortized O(1) per removal
    let n = 0
    for (let j = 0; j < len; j++) {
      const from = (off + j) * HOLDER_WORDS
      const hw = holders[from + HOLDER_WORKER]!
      if (hw === TOMB) continue
      if (n !== j) holders.copyWithin((off + n) * HOLDER_WORDS, from, from + HOLDER_WORDS)
      n++
    }
    nodes[b + NODE_HOLDER_COUNT] = n
    big.rebuild(holders, off, n)
  }

  /** Removes the holder (w, hash) from the node (keeping the order of the others); drops the node when left empty. */
  private removeHolder(node: number, w: number, hi: number, lo: number): void {
    if (this.holderClass[node]! >= BIG_CLASS) {
      const big = this.bigHolders.get(node)
      if (big !== undefined) {
        this.removeBigHolder(node, big, w, hi, lo)
        return
      }
    }
    const nodes = this.nodes
    const holders = this.holders
    const b = node * NODE_WORDS
    const off = nodes[b + NODE_HOLDERS_AT]!
    const len = nodes[b + NODE_HOLDER_COUNT]!
    for (let k = 0; k < len; k++) {
      const at = (off + k) * HOLDER_WORDS
      if (holders[at + HOLDER_HASH_LO] === lo && holders[at + HOLDER_WORKER] === w && holders[at + HOLDER_HASH_HI] === hi) {
        if (k + 1 < len) holders.copyWithin(at, at + HOLDER_WORDS, (off + len) * HOLDER_WORDS)
        nodes[b + NODE_HOLDER_COUNT] = len - 1
        break
      }
    }
    if (nodes[b + NODE_HOLDER_COUNT] === 0 && node !== ROOT) this.dropEmpty(node)
  }

  // --------------------------------------------------------------------------------------------
  // per-worker tables: block hash -> node

  /** The node holding the worker's hash, or 0. */
  private findEntry(wk: WorkerKey, hi: number, lo: number): number {
    const t = wk.table
    const mask = wk.mask
    let i = mixHash(hi, lo) & mask
    for (;;) {
      const at = i * ENTRY_WORDS
      const node = t[at + 2]!
      if (node === 0) return 0
      if (t[at + 1] === lo && t[at] === hi) return node
      i = (i + 1) & mask
    }
  }

  /** Adds hash -> node (the hash not in the table). */
  private insertEntry(wk: WorkerKey, hi: number, lo: number, node: number): void {
    if ((wk.size + 1) * 4 > (wk.mask + 1) * 3) this.rehashEntries(wk, (wk.mask + 1) * 2)
    placeEntry(wk.table, wk.mask, hi, lo, node)
    wk.size++
    this.total++
  }

  private rehashEntries(wk: WorkerKey, cap: number): void {
    const old = wk.table
    wk.table = new Uint32Array(cap * ENTRY_WORDS)
    wk.mask = cap - 1
    for (let k = 0; k < old.length; k += ENTRY_WORDS) {
      const node = old[k + 2]!
      if (node !== 0) placeEntry(wk.table, wk.mask, old[k]!, old[k + 1]!, node)
    }
  }

  /** Removes the hash from the worker's table; returns the node it was on, or 0. */
  private deleteEntry(wk: WorkerKey, hi: number, lo: number): number {
    const t = wk.table
    const mask = wk.mask
    let i = mixHash(hi, lo) & mask
    let node: number
    for (;;) {
      const at = i * ENTRY_WORDS
      node = t[at + 2]!
      if (node === 0) return 0
      if (t[at + 1] === lo && t[at] === hi) break
      i = (i + 1) & mask
    }
    let hole = i
    let j = (i + 1) & mask
    for (;;) {
      const at = j * ENTRY_WORDS
      if (t[at + 2] === 0) break
      const home = mixHash(t[at]!, t[at + 1]!) & mask
      const inRange = hole <= j ? home > hole && home <= j : home > hole || home <= j
      if (!inRange) {
        const h = hole * ENTRY_WORDS
        t[h] = t[at]!
        t[h + 1] = t[at + 1]!
        t[h + 2] = t[at + 2]!
        hole = j
      }
      j = (j + 1) & mask
    }
    t[hole * ENTRY_WORDS + 2] = 0
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
    wk.table = new Uint32Array(8 * ENTRY_WORDS)
    wk.mask = 7
    this.total -= wk.size
    wk.size = 0
    for (let k = 0; k < t.length; k += ENTRY_WORDS) {
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
    this.version++
    for (const wk of this.keysOf(Number(workerId >> 32n), Number(workerId & 0xffffffffn))) this.forget(wk)
  }

  removeWorkerDpRank(workerId: bigint, dpRank: number): void {
    this.version++
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
      this.byOrderPos = new Uint32Array(2 * cap)
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
    this.version++
    wk.hasLast = true
    wk.lastHi = idHi
    wk.lastLo = idLo
    if (this.repeats(hashes, start, n, hasParent, pHi, pLo)) {
      this.counts[C_INVALID_SEQUENCE]!++
      return OUTCOME_INVALID_SEQUENCE
    }
    let cur = ROOT
    if (hasParent) {
      cur = this.findEntry(wk, pHi, pLo)
      if (cur === 0) {
        this.counts[C_PARENT_NOT_FOUND]!++
        return OUTCOME_PARENT_NOT_FOUND
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
        const old = this.findEntry(wk, hi, lo)
        if (old !== 0) {
          if (old === existing) {
            // already exactly there
            cur = existing
            continue
          }
          // the hash moves: it leaves its old node first
          this.deleteEntry(wk, hi, lo)
          this.removeHolder(old, w, hi, lo)
        }
      }
      // `existing` has holders other than this hash, so leaving `old` kept it (and its parent)
      let child = existing
      if (child === 0) child = this.allocNode(cur, thi, tlo)
      this.addHolder(child, w, hi, lo)
      this.insertEntry(wk, hi, lo, child)
      cur = child
    }
    this.counts[C_STORED]!++
    this.counts[C_BLOCKS_STORED]! += n
    return OUTCOME_APPLIED
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
    this.version++
    wk.hasLast = true
    wk.lastHi = idHi
    wk.lastLo = idLo
    let missing = 0
    const w = wk.slot
    for (let k = start, end = start + n; k < end; k++) {
      const hi = hashes[2 * k + HI]!
      const lo = hashes[2 * k + LO]!
      const node = this.deleteEntry(wk, hi, lo)
      if (node === 0) missing++
      else this.removeHolder(node, w, hi, lo)
    }
    this.counts[C_REMOVED]!++
    this.counts[C_BLOCK_NOT_FOUND]! += missing
    this.counts[C_BLOCKS_REMOVED]! += n - missing
    return missing > 0 ? OUTCOME_BLOCK_NOT_FOUND : OUTCOME_APPLIED
  }

  /** A Dynamo 1.4+ cleared event: only this dp rank of the worker loses its blocks. */
  applyRankClearParts(wHi: number, wLo: number, rank: number, idHi: number, idLo: number): number {
    const wk = this.workerKey(wHi, wLo, rank)
    this.version++
    wk.hasLast = true
    wk.lastHi = idHi
    wk.lastLo = idLo
    this.clearKey(wk)
    this.counts[C_CLEARED]!++
    return OUTCOME_APPLIED
  }

  /** A cleared event: every dp rank of the worker id loses its blocks. */
  applyClearedParts(wHi: number, wLo: number, rank: number, idHi: number, idLo: number): number {
    const wk = this.workerKey(wHi, wLo, rank)
    this.version++
    wk.hasLast = true
    wk.lastHi = idHi
    wk.lastLo = idLo
    for (const k of this.keysOf(wHi, wLo)) this.clearKey(k)
    this.counts[C_CLEARED]!++
    return OUTCOME_APPLIED
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
      let i = mixHash(hi, lo) & mask
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
    if (this.hashScratch.length >= n) return
    let cap = this.hashScratch.length
    while (cap < n) cap *= 2
    this.hashScratch = new BigUint64Array(cap)
    this.tokensScratch = new BigUint64Array(cap)
  }

  /**
   * SPEC 6 for an event with its Dynamo 1.4+ fields: another storage tier than the device, or the
   * cache-owner domain, is ignored; a cleared naming its residency domain clears only its dp rank.
   */
  applyEvent(ev: RouterEventValue): number {
    if (!targetsGpuIndex(ev)) return OUTCOME_IGNORED
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
        const hashScratch = this.hashScratch
        const tokensScratch = this.tokensScratch
        for (let i = 0; i < n; i++) {
          const b = blocks[i]!
          hashScratch[i] = b.blockHash
          tokensScratch[i] = b.tokensHash
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
          u64Pairs(hashScratch),
          u64Pairs(tokensScratch),
          0,
          n,
        )
      }
      case 'removed': {
        const hs = data.blockHashes
        const n = hs.length
        this.ensureScratch(n)
        const hashScratch = this.hashScratch
        for (let i = 0; i < n; i++) hashScratch[i] = hs[i]!
        return this.applyRemovedParts(wHi, wLo, rank, idHi, idLo, u64Pairs(hashScratch), 0, n)
      }
      case 'cleared':
        if (ev.residencyDomain !== undefined) return this.applyRankClearParts(wHi, wLo, rank, idHi, idLo)
        return this.applyClearedParts(wHi, wLo, rank, idHi, idLo)
    }
  }

  // The flat forms of the raw interface: head = [workerId, eventId, parentHash], read as 32-bit halves.
  applyStored(
    head: BigUint64Array,
    dpRank: number,
    hasParent: boolean,
    blockHashes: BigUint64Array,
    tokensHashes: BigUint64Array,
    n: number,
    _blockMmInfos: (BlockExtraInfo | null)[] | null,
  ): number {
    const h = u64Pairs(head)
    return this.applyStoredParts(
      h[HI]!,
      h[LO]!,
      dpRank,
      h[2 + HI]!,
      h[2 + LO]!,
      hasParent,
      hasParent ? h[4 + HI]! : 0,
      hasParent ? h[4 + LO]! : 0,
      u64Pairs(blockHashes),
      u64Pairs(tokensHashes),
      0,
      n,
    )
  }

  applyRemoved(head: BigUint64Array, dpRank: number, blockHashes: BigUint64Array, n: number): number {
    const h = u64Pairs(head)
    return this.applyRemovedParts(h[HI]!, h[LO]!, dpRank, h[2 + HI]!, h[2 + LO]!, u64Pairs(blockHashes), 0, n)
  }

  applyCleared(head: BigUint64Array, dpRank: number): number {
    const h = u64Pairs(head)
    return this.applyClearedParts(h[HI]!, h[LO]!, dpRank, h[2 + HI]!, h[2 + LO]!)
  }

  applyEncoded(payload: Uint8Array, format: number): number {
    const r = this.applyCanonical(payload, format)
    return r >= 0 ? r : this.applyList(decodeEncodedList(payload, format))
  }

  /**
   * Applies decoded events in order: the first outcome that is neither applied nor ignored, else applied
   * when any event was applied, else ignored (index.rs apply_encoded).
   */
  protected applyList(evs: RouterEventValue[]): number {
    let problem = -1
    let applied = false
    for (const ev of evs) {
      const o = this.applyEvent(ev)
      if (o === OUTCOME_IGNORED) continue
      applied = true
      if (o !== OUTCOME_APPLIED && problem < 0) problem = o
    }
    return problem >= 0 ? problem : applied ? OUTCOME_APPLIED : OUTCOME_IGNORED
  }

  /** What the last applyCanonical call read, and where: bytes [canonicalAt, canonicalEnd) of its payload. */
  protected readonly canonical = new CanonicalRouterEvent()
  protected canonicalAt = 0
  protected canonicalEnd = 0

  /**
   * applyEncoded for the canonical msgpack layout, straight from the bytes (this.canonical keeps what was
   * read); -1 (nothing applied) when the generic decoder has to handle it. Throws for a bad envelope.
   */
  protected applyCanonical(payload: Uint8Array, format: number): number {
    if (format === 2) return -1
    let at = 0
    let end = payload.length
    if (format === 0) {
      envelopePayload(payload)
      at = PAYLOAD_AT.at
      end = at + PAYLOAD_AT.len
    }
    const ev = this.canonical
    if (!ev.parse(payload, at, end)) return -1
    this.canonicalAt = at
    this.canonicalEnd = end
    const { workerHi, workerLo, dpRank, eventIdHi, eventIdLo } = ev
    if (ev.kind === KIND_STORED) {
      return this.applyStoredParts(
        workerHi,
        workerLo,
        dpRank,
        eventIdHi,
        eventIdLo,
        ev.hasParent,
        ev.parentHi,
        ev.parentLo,
        ev.blockHashes,
        ev.tokensHashes,
        0,
        ev.count,
      )
    }
    if (ev.kind === KIND_REMOVED)
      return this.applyRemovedParts(workerHi, workerLo, dpRank, eventIdHi, eventIdLo, ev.blockHashes, 0, ev.count)
    return this.applyClearedParts(workerHi, workerLo, dpRank, eventIdHi, eventIdLo)
  }

  findMatches(tokensHashes: BigUint64Array, earlyExit: boolean, out: Uint8Array): number {
    return this.matchQuery(u64Pairs(tokensHashes), tokensHashes.length, earlyExit, out, 0)
  }

  /** findMatches written at byte `offset` of `out` (the handle names this index: it is not used). */
  findMatchesPacked(_handle: number, tokensHashes: BigUint64Array, earlyExit: boolean, out: Uint8Array, offset: number): number {
    return this.matchQuery(u64Pairs(tokensHashes), tokensHashes.length, earlyExit, out, offset)
  }

  handle(): number {
    return 0
  }

  private queryScratch = new Uint32Array(128)
  private readonly seed = { seedHi: 0, seedLo: 0 }

  findMatchesForTokens(
    tokens: Uint32Array,
    kvBlockSize: number,
    loraName: string | null,
    blockMmInfos: (BlockExtraInfo | null)[] | null,
    earlyExit: boolean,
    out: Uint8Array,
    cacheSalt: string | null = null,
    eagle = false,
  ): number {
    const n = blockCount(tokens.length, kvBlockSize, eagle)
    if (n === 0) return this.matchQuery(this.queryScratch, 0, earlyExit, out, 0)
    if (this.queryScratch.length < 2 * n) this.queryScratch = new Uint32Array(4 * n)
    saltSeed(loraName, cacheSalt, this.seed)
    const used = n * kvBlockSize + (eagle ? 1 : 0)
    hashBlocks(tokenBytesLE(tokens, used), kvBlockSize, n, this.seed.seedHi, this.seed.seedLo, blockMmInfos, this.queryScratch, eagle)
    return this.matchQuery(this.queryScratch, n, earlyExit, out, 0)
  }

  private nextGen(): number {
    this.gen = (this.gen + 1) >>> 0
    if (this.gen === 0) {
      this.stamps.fill(0)
      this.byOrderPos.fill(0)
      this.gen = 1
    }
    return this.gen
  }

  /**
   * SPEC 6 find_matches over a query given as u64 pairs, written at byte `base` of `out` (ts/core/binding.ts
   * layout): returns the bytes written, or minus the bytes needed (nothing written) when they do not fit.
   */
  private matchQuery(q: Uint32Array, qn: number, earlyExit: boolean, out: Uint8Array, base: number): number {
    if (!(base >= 0 && base <= out.length && Number.isInteger(base))) throw new RangeError('offset must be an integer within out')
    if (qn === 0) return noMatches(out, base)
    let node = this.edgeFind(ROOT, q[HI]!, q[LO]!)
    if (node === 0) return noMatches(out, base)
    const nw = this.workerSlots.length
    if (this.stamps.length < nw) {
      const cap = nw * 2
      this.stamps = new Uint32Array(cap)
      this.active = new Uint32Array(cap)
      this.kept = new Uint32Array(cap)
      this.resultSlots = new Uint32Array(cap)
      this.resultDepths = new Uint32Array(cap)
    }
    const stamps = this.stamps
    const holders = this.holders
    const nodes = this.nodes
    let active = this.active
    let kept = this.kept
    const resultSlots = this.resultSlots
    const resultDepths = this.resultDepths
    let nres = 0
    let na = 0
    let g = this.nextGen()
    for (
      let at = nodes[node * NODE_WORDS + NODE_HOLDERS_AT]! * HOLDER_WORDS,
        end = at + nodes[node * NODE_WORDS + NODE_HOLDER_COUNT]! * HOLDER_WORDS;
      at < end;
      at += HOLDER_WORDS
    ) {
      const w = holders[at]!
      if (w !== TOMB && stamps[w] !== g) {
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
      for (
        let at = nodes[child * NODE_WORDS + NODE_HOLDERS_AT]! * HOLDER_WORDS,
          end = at + nodes[child * NODE_WORDS + NODE_HOLDER_COUNT]! * HOLDER_WORDS;
        at < end;
        at += HOLDER_WORDS
      )
        stamps[holders[at]!] = g // a TOMB is past the end: the write does nothing
      let nk = 0
      for (let k = 0; k < na; k++) {
        const w = active[k]!
        if (stamps[w] === g) {
          kept[nk++] = w
        } else {
          resultSlots[nres] = w
          resultDepths[nres++] = depth
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
      resultSlots[nres] = active[k]!
      resultDepths[nres++] = depth
    }
    this.active = active
    this.kept = kept
    const need = 4 + MATCH_RECORD_BYTES * nres
    if (out.length - base < need) return -need
    // ascending (workerId, dpRank), by the precomputed order of the worker slots
    this.refreshOrder()
    const order = this.order
    if (nres * 8 >= this.orderLen) {
      // many results: place them by order, then read them back in order
      const g2 = this.nextGen()
      const byOrderPos = this.byOrderPos
      for (let i = 0; i < nres; i++) {
        const pos = order[resultSlots[i]!]!
        byOrderPos[2 * pos] = g2
        byOrderPos[2 * pos + 1] = i
      }
      const sortedW = this.kept
      const sortedS = this.active
      let k = 0
      for (let pos = 0, len = this.orderLen; pos < len; pos++) {
        if (byOrderPos[2 * pos] !== g2) continue
        const i = byOrderPos[2 * pos + 1]!
        sortedW[k] = resultSlots[i]!
        sortedS[k++] = resultDepths[i]!
      }
      resultSlots.set(sortedW.subarray(0, nres))
      resultDepths.set(sortedS.subarray(0, nres))
    } else {
      for (let i = 1; i < nres; i++) {
        const w = resultSlots[i]!
        const s = resultDepths[i]!
        const o = order[w]!
        let j = i - 1
        while (j >= 0 && order[resultSlots[j]!]! > o) {
          resultSlots[j + 1] = resultSlots[j]!
          resultDepths[j + 1] = resultDepths[j]!
          j--
        }
        resultSlots[j + 1] = w
        resultDepths[j + 1] = s
      }
    }
    const v = this.viewOf(out)
    v.setUint32(base, nres, true)
    const slots = this.workerSlots
    for (let i = 0, at = base + 4; i < nres; i++, at += MATCH_RECORD_BYTES) {
      const wk = slots[resultSlots[i]!]!
      v.setUint32(at, wk.idLo, true)
      v.setUint32(at + 4, wk.idHi, true)
      v.setUint32(at + 8, wk.rank, true)
      v.setUint32(at + 12, resultDepths[i]!, true)
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
    const nodes = this.nodes
    const holders = this.holders
    const byKeyDesc = (a: number, b: number): number =>
      cmp64(
        nodes[b * NODE_WORDS + NODE_KEY_HI]!,
        nodes[b * NODE_WORDS + NODE_KEY_LO]!,
        nodes[a * NODE_WORDS + NODE_KEY_HI]!,
        nodes[a * NODE_WORDS + NODE_KEY_LO]!,
      )
    for (const wk of keys) {
      const eventId = wk.hasLast ? bigFromHalves(wk.lastHi, wk.lastLo) : 0n
      // the worker's nodes, grouped by parent: a DFS from the root through them reaches exactly the
      // nodes whose whole path holds the worker
      const kids = this.kidsOf(wk)
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
        const tokensHash = bigFromHalves(nodes[node * NODE_WORDS + NODE_KEY_HI]!, nodes[node * NODE_WORDS + NODE_KEY_LO]!)
        let first: bigint | null = null
        for (
          let at = nodes[node * NODE_WORDS + NODE_HOLDERS_AT]! * HOLDER_WORDS,
            end = at + nodes[node * NODE_WORDS + NODE_HOLDER_COUNT]! * HOLDER_WORDS;
          at < end;
          at += HOLDER_WORDS
        ) {
          if (holders[at + HOLDER_WORKER] !== wk.slot) continue
          const blockHash = bigFromHalves(holders[at + HOLDER_HASH_HI]!, holders[at + HOLDER_HASH_LO]!)
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

  /** Opens a cursor over dump() (all ranks) or dumpRank(rank): see dumpNext. */
  dumpCursor(rank: number | null): FallbackDumpCursor {
    const keys = this.sortedKeys().filter((k) => rank === null || k.rank === rank)
    return { epoch: this.epoch, version: this.version, keys, nextKey: 0, key: null, kids: new Map(), stack: [], parents: [], pending: [] }
  }

  /**
   * The next event of the dump the cursor was opened on (the events of dumpKeys, in the same order), null at
   * the end, 'stale' once this index changed since (index.rs dump_next). Memory: the current worker key's
   * nodes grouped by parent, and the depth-first stack.
   */
  dumpNext(c: FallbackDumpCursor): RouterEventValue | null | 'stale' {
    if (!this.dumpValid(c)) return 'stale'
    const nodes = this.nodes
    for (;;) {
      const ev = c.pending.pop()
      if (ev !== undefined) return ev
      const wk = c.key
      if (wk !== null && c.stack.length > 0) {
        const node = c.stack.pop()!
        const parentHash = c.parents.pop()!
        const tokensHash = bigFromHalves(nodes[node * NODE_WORDS + NODE_KEY_HI]!, nodes[node * NODE_WORDS + NODE_KEY_LO]!)
        const eventId = wk.hasLast ? bigFromHalves(wk.lastHi, wk.lastLo) : 0n
        let first: bigint | null = null
        const holders = this.holders
        for (
          let at = nodes[node * NODE_WORDS + NODE_HOLDERS_AT]! * HOLDER_WORDS,
            end = at + nodes[node * NODE_WORDS + NODE_HOLDER_COUNT]! * HOLDER_WORDS;
          at < end;
          at += HOLDER_WORDS
        ) {
          if (holders[at + HOLDER_WORKER] !== wk.slot) continue
          const blockHash = bigFromHalves(holders[at + HOLDER_HASH_HI]!, holders[at + HOLDER_HASH_LO]!)
          if (first === null) first = blockHash
          c.pending.push({
            workerId: wk.workerId,
            event: {
              eventId,
              dpRank: wk.rank,
              data: { type: 'stored', parentHash, blocks: [{ blockHash, tokensHash, mmExtraInfo: null }] },
            },
          })
        }
        c.pending.reverse()
        this.pushDumpKids(c, node, first)
        continue
      }
      const next = c.keys[c.nextKey]
      if (next === undefined) return null
      c.nextKey++
      c.key = next
      c.kids = this.kidsOf(next)
      this.pushDumpKids(c, ROOT, null)
    }
  }

  /** Whether the cursor's index is unchanged since it was opened. */
  dumpValid(c: FallbackDumpCursor): boolean {
    return c.epoch === this.epoch && c.version === this.version
  }

  /** The worker key's nodes grouped by parent: a DFS from the root through them reaches exactly the nodes whose whole path holds the key. */
  private kidsOf(wk: WorkerKey): Map<number, number[]> {
    const nodes = this.nodes
    const kids = new Map<number, number[]>()
    const seen = new Set<number>()
    const t = wk.table
    for (let k = 0; k < t.length; k += ENTRY_WORDS) {
      const node = t[k + 2]!
      if (node === 0 || seen.has(node)) continue
      seen.add(node)
      const parent = nodes[node * NODE_WORDS + NODE_PARENT]!
      if (parent === DETACHED) continue
      const list = kids.get(parent)
      if (list === undefined) kids.set(parent, [node])
      else list.push(node)
    }
    return kids
  }

  /** Pushes the children of `node` so that they pop in ascending key order. */
  private pushDumpKids(c: FallbackDumpCursor, node: number, parentHash: bigint | null): void {
    const list = c.kids.get(node)
    if (list === undefined) return
    const nodes = this.nodes
    list.sort((a, b) =>
      cmp64(
        nodes[b * NODE_WORDS + NODE_KEY_HI]!,
        nodes[b * NODE_WORDS + NODE_KEY_LO]!,
        nodes[a * NODE_WORDS + NODE_KEY_HI]!,
        nodes[a * NODE_WORDS + NODE_KEY_LO]!,
      ),
    )
    for (const k of list) {
      c.stack.push(k)
      c.parents.push(parentHash)
    }
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

  /** Drops every typed array and map for the small ones of an empty index (SPEC 8). */
  close(): void {
    Object.assign(this, this.fresh())
  }

  /** An empty index of this class (close() takes its fields). */
  protected fresh(): FallbackRadixIndex {
    return new FallbackRadixIndex()
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

function noMatches(out: Uint8Array, base: number): number {
  if (out.length - base < 4) return -4
  put32(out, base, 0)
  return 4
}

/** Puts hash -> node into the first free slot of its probe run (linear probing; node 0 = empty). */
function placeEntry(t: Uint32Array, mask: number, hi: number, lo: number, node: number): void {
  let i = mixHash(hi, lo) & mask
  while (t[i * ENTRY_WORDS + 2] !== 0) i = (i + 1) & mask
  const at = i * ENTRY_WORDS
  t[at] = hi
  t[at + 1] = lo
  t[at + 2] = node
}
