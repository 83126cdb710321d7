// A test-only diagnostic of the fallback radix index (ts/fallback/index.ts): a full check of its internal
// invariants. It reads the index's private layout, which is declared here rather than exposed by the
// shipped class.
import {
  BIG_HOLDERS,
  type BigHolders,
  DETACHED,
  ENTRY_WORDS,
  type FallbackRadixIndex,
  HOLDER_HASH_HI,
  HOLDER_HASH_LO,
  HOLDER_WORDS,
  HOLDER_WORKER,
  NODE_FIRST_CHILD,
  NODE_HOLDER_COUNT,
  NODE_HOLDERS_AT,
  NODE_KEY_HI,
  NODE_KEY_LO,
  NODE_NEXT_SIBLING,
  NODE_PARENT,
  NODE_WORDS,
  ROOT,
  TOMB,
  type WorkerKey,
} from '../../ts/fallback/index.js'

/** The private fields and methods of FallbackRadixIndex that the checks read. */
interface IndexInternals {
  nodes: Uint32Array
  nodeTop: number
  freeNode: number
  holderClass: Uint8Array
  holders: Uint32Array
  bigHolders: Map<number, BigHolders>
  edges: Uint32Array
  edgeSize: number
  workerSlots: (WorkerKey | null)[]
  total: number
  edgeFind(parent: number, hi: number, lo: number): number
  findEntry(wk: WorkerKey, hi: number, lo: number): number
}

const internals = (index: FallbackRadixIndex): IndexInternals => index as unknown as IndexInternals

/** Checks the internal invariants of the index; throws on the first violation. */
export function checkIndexInvariants(index: FallbackRadixIndex): void {
  const ix = internals(index)
  const nodes = ix.nodes
  const holders = ix.holders
  const fail = (msg: string): never => {
    throw new Error(`index invariant: ${msg}`)
  }
  const free = new Set<number>()
  for (let n = ix.freeNode; n !== 0; n = nodes[n * NODE_WORDS + NODE_NEXT_SIBLING]!) {
    if (free.has(n)) fail('free-list cycle')
    free.add(n)
  }
  let attached = 0
  let holderCount = 0
  for (let c = 1; c < ix.nodeTop; c++) {
    if (free.has(c)) continue
    const b = c * NODE_WORDS
    const len = nodes[b + NODE_HOLDER_COUNT]!
    if (len > 1 << ix.holderClass[c]!) fail(`node ${c} holders overflow their block`)
    const big = ix.bigHolders.get(c)
    if (len >= BIG_HOLDERS && big === undefined) fail(`node ${c} has ${len} holders and no position map`)
    let live = 0
    const off = nodes[b + NODE_HOLDERS_AT]!
    for (let k = 0; k < len; k++) {
      const at = (off + k) * HOLDER_WORDS
      const w = holders[at + HOLDER_WORKER]!
      if (w === TOMB) {
        if (big === undefined) fail(`tomb in node ${c} without a position map`)
        continue
      }
      live++
      if (big !== undefined && big.find(holders, off, w, holders[at + HOLDER_HASH_HI]!, holders[at + HOLDER_HASH_LO]!) !== k)
        fail(`node ${c}: position map misses holder ${k}`)
    }
    if (live === 0) fail(`live node ${c} without holders`)
    if (big !== undefined && (big.live !== live || big.size() !== live))
      fail(`node ${c}: ${live} holders, map says ${big.live}/${big.size()}`)
    if (big !== undefined && len > 2 * live) fail(`node ${c}: more tombs than holders`)
    holderCount += live
    const parent = nodes[b + NODE_PARENT]!
    if (parent === DETACHED) continue
    attached++
    if (parent !== ROOT && (free.has(parent) || parent >= ix.nodeTop)) fail(`node ${c} has a dead parent`)
    if (ix.edgeFind(parent, nodes[b + NODE_KEY_HI]!, nodes[b + NODE_KEY_LO]!) !== c) fail(`edge of node ${c} not found`)
    let k = nodes[parent * NODE_WORDS + NODE_FIRST_CHILD]!
    while (k !== 0 && k !== c) k = nodes[k * NODE_WORDS + NODE_NEXT_SIBLING]!
    if (k !== c) fail(`node ${c} missing from its parent's child list`)
  }
  for (const n of ix.bigHolders.keys()) if (n >= ix.nodeTop || free.has(n)) fail(`position map of dead node ${n}`)
  const seen = new Set<number>()
  let slots = 0
  for (let i = 0; i < ix.edges.length; i += 2) {
    const c = ix.edges[i]!
    if (c === 0) continue
    slots++
    if (seen.has(c)) fail(`edge of node ${c} twice`)
    seen.add(c)
    if (ix.edges[i + 1] !== nodes[c * NODE_WORDS + NODE_KEY_LO]) fail(`edge tag of node ${c}`)
  }
  if (slots !== attached || slots !== ix.edgeSize) fail(`edges ${slots}, attached ${attached}, edgeSize ${ix.edgeSize}`)
  let total = 0
  for (const wk of ix.workerSlots) {
    if (wk === null) continue
    let n = 0
    const t = wk.table
    for (let k = 0; k < t.length; k += ENTRY_WORDS) {
      const node = t[k + 2]!
      if (node === 0) continue
      n++
      if (ix.findEntry(wk, t[k]!, t[k + 1]!) !== node) fail('worker table lookup')
      let on = 0
      for (
        let at = nodes[node * NODE_WORDS + NODE_HOLDERS_AT]! * HOLDER_WORDS,
          end = at + nodes[node * NODE_WORDS + NODE_HOLDER_COUNT]! * HOLDER_WORDS;
        at < end;
        at += HOLDER_WORDS
      ) {
        if (holders[at + HOLDER_WORKER] === wk.slot && holders[at + HOLDER_HASH_HI] === t[k] && holders[at + HOLDER_HASH_LO] === t[k + 1])
          on++
      }
      if (on !== 1) fail(`worker ${wk.slot} hash on its node ${on} times`)
    }
    if (n !== wk.size) fail('worker size')
    total += n
  }
  if (total !== ix.total || total !== holderCount) fail(`entries ${total}, total ${ix.total}, holders ${holderCount}`)
}
