// Conversion of parsed engine events into router events (SPEC 3) for the fallback: the checks in their
// order, the rejection reasons, KV-group learning, and the tokens hashes of the kept blocks.
//
// What happens to a BlockStored: `convertEvent` -> tier (`tierOk`) -> group (`groupKept`) -> `storeChecks`
// (empty, self_reference, block_size, truncation) -> `hashKept` computes the blocks' tokens hashes.
import type { ConvertedEvent, RawDecoded, RejectReason, StoredBlock } from '../core/binding.js'
import {
  BatchHead,
  EV_CLEARED,
  EV_REMOVED,
  EV_STORED,
  EventParser,
  PARSE_INVALID,
  PARSE_UNKNOWN_TYPE,
  PARSED,
  readBatchHead,
} from './engine.js'
import { addSaltFromBytes, BASE_SEED, blockCount, hashBlocks, loraSeedFromBytes, tokenBytesLE } from './hash.js'
import { ascii, bigFromHalves, bytesEq, grownCapacity, HI, LO, u64Pairs } from './msgpack.js'

/** Rejection reasons (the core's Reason names), indexed by the REJ_ codes below. */
export const REJECT_REASONS: RejectReason[] = [
  'malformed',
  'invalid',
  'unknown_type',
  'filtered_tier',
  'filtered_group',
  'empty',
  'self_reference',
  'block_size',
  'dp_rank',
  'ambiguous_salt',
]

// rejection codes, indexed like REJECT_REASONS
export const OK = PARSED
export const REJ_MALFORMED = 0
// an event the parser could not read is counted under what the parser said
export const REJ_INVALID = PARSE_INVALID
export const REJ_UNKNOWN_TYPE = PARSE_UNKNOWN_TYPE
export const REJ_FILTERED_TIER = 3
export const REJ_FILTERED_GROUP = 4
export const REJ_EMPTY = 5
export const REJ_SELF_REFERENCE = 6
export const REJ_BLOCK_SIZE = 7
export const REJ_DP_RANK = 8
export const REJ_AMBIGUOUS_SALT = 9
export const REJECT_COUNT = 10

/** Learned KV groups per rank: at most this many. */
export const MAX_GROUPS_PER_RANK = 1024

// ---------------------------------------------------------------------------------------------------
// the checks of SPEC 3

const MAIN_KINDS = [ascii('full_attention'), ascii('mla_attention'), ascii('sink_full_attention')]
const GPU = ascii('gpu')
const LOCAL = ascii('local')

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

// Dynamo 1.6.1's storage tiers of an engine medium (exact case), as codes of STORAGE_TIERS
export const TIER_DEVICE = 0
/** The last storage tier code that follows the cache-salt chain (device 0, host_pinned 1). */
const TIER_HOST_PINNED = 1
const MEDIUM_TIERS: [Uint8Array, number][] = [
  ['GPU', 0],
  ['DEVICE', 0],
  ['CPU', 1],
  ['CPU_PINNED', 1],
  ['CPU_TIER1', 1],
  ['CPU_TIER2', 2],
  ['DISK', 2],
  ['NVME', 2],
  ['STORAGE', 2],
  ['EXTERNAL', 3],
  ['NETWORK', 3],
  ['REMOTE', 3],
  ['SHARED', 3],
].map(([m, t]) => [ascii(m as string), t as number])
const LOCAL_EXACT = ascii('LOCAL')

/**
 * The tier step of the dynamo-1.4 profile (SPEC 5b): an ownership, a locality other than exactly LOCAL,
 * or a medium Dynamo 1.6.1 does not map filters the event (-1); otherwise its storage tier code.
 */
export function tier14(ev: EventParser): number {
  if (ev.ownership) return -1
  const at = ev.localityAt >= 0 ? ev.localityAt : ev.localityPosAt
  const len = ev.localityAt >= 0 ? ev.localityLen : ev.localityPosLen
  if (at >= 0 && !bytesEq(ev.b, at, len, LOCAL_EXACT)) return -1
  if (ev.mediumAt < 0 || ev.mediumLen === 0) return TIER_DEVICE
  for (const [m, t] of MEDIUM_TIERS) if (bytesEq(ev.b, ev.mediumAt, ev.mediumLen, m)) return t
  return -1
}

/** Check 3: the index describes what this worker holds in its own GPU memory. */
export function tierOk(ev: EventParser): boolean {
  return (
    (ev.mediumAt < 0 || eqIgnoreCase(ev.b, ev.mediumAt, ev.mediumLen, GPU)) &&
    (ev.localityAt < 0 || eqIgnoreCase(ev.b, ev.localityAt, ev.localityLen, LOCAL))
  )
}

function isMainKind(b: Uint8Array, s: number, len: number): boolean {
  for (const k of MAIN_KINDS) if (bytesEq(b, s, len, k)) return true
  return false
}

/** Check 4: whether an event with this group information is kept; learns (rank, group) -> kind. */
export function groupKept(groups: Map<number, boolean>, ev: EventParser): boolean {
  const groupIdx = ev.groupIdx
  if (ev.specKindAt >= 0) {
    const main = isMainKind(ev.b, ev.specKindAt, ev.specKindLen)
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
  if (sortScratch.length < n) sortScratch = new BigUint64Array(grownCapacity(sortScratch.length, n))
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
  eagle = false,
): number {
  if (nHashes === 0) return -1 - REJ_EMPTY
  if (selfReference(hashes, nHashes, hasParent, parentHi, parentLo)) return -1 - REJ_SELF_REFERENCE
  if (blockSize !== kvBlockSize || nTokens < kvBlockSize + (eagle ? 1 : 0)) return -1 - REJ_BLOCK_SIZE
  return Math.min(nHashes, blockCount(nTokens, kvBlockSize, eagle))
}

/**
 * Checks 3-7 for a parsed stored or removed event (checks 1-2 are `parse`). Returns OK or a reason; for a
 * store that passes, `parser.kept` is the number of blocks kept.
 */
export function convertEvent(parser: EventParser, groups: Map<number, boolean>, kvBlockSize: number): number {
  // Eagle bigram token ids are Dynamo 1.4+ input: not a valid 1.0 store
  if (parser.kind === EV_STORED && parser.eagle) return REJ_INVALID
  if (!tierOk(parser)) return REJ_FILTERED_TIER
  if (!groupKept(groups, parser)) return REJ_FILTERED_GROUP
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

/**
 * convertEvent for the dynamo-1.4 profile: Dynamo 1.6.1's tier step (the tier lands in parser.tier),
 * then the same group and store checks, Eagle windows included.
 */
export function convertEvent14(parser: EventParser, groups: Map<number, boolean>, kvBlockSize: number, salts: SaltChain | null): number {
  const tier = tier14(parser)
  if (tier < 0) return REJ_FILTERED_TIER
  parser.tier = tier
  if (!groupKept(groups, parser)) return REJ_FILTERED_GROUP
  const chained = salts !== null && tier <= TIER_HOST_PINNED
  if (parser.kind === EV_REMOVED) {
    if (chained) salts.removed(parser)
    return parser.nHashes === 0 ? REJ_EMPTY : OK
  }
  // The chain runs before the store's own checks, as in Dynamo 1.6.1 (convert.rs convert_14).
  parser.salt = parser.saltAt >= 0 && parser.saltLen > 0 ? parser.b.subarray(parser.saltAt, parser.saltAt + parser.saltLen) : null
  if (chained && !salts.store(parser)) return REJ_AMBIGUOUS_SALT
  const n = storeChecks(
    parser.hashes,
    parser.nHashes,
    parser.hasParent,
    parser.parentHi,
    parser.parentLo,
    parser.blockSize,
    parser.nTokens,
    kvBlockSize,
    parser.eagle,
  )
  if (n < 0) return -1 - n
  parser.kept = n
  return OK
}

/**
 * The cache-salt chain of one rank in the dynamo-1.4 profile (convert.rs SaltChain, SPEC 5b): the salt each
 * device or host-pinned block hash was stored under (null: ambiguous), so that a store without a salt of
 * its own takes its parent's.
 */
export class SaltChain {
  private readonly byHash = new Map<bigint, Uint8Array | null>()

  /**
   * Sets parser.salt to the salt the store is hashed with and learns its blocks' salt; false when the
   * store has no salt and its parent is ambiguous (refused).
   */
  store(parser: EventParser): boolean {
    const own = parser.salt
    if (own === null && this.byHash.size === 0) return true
    const byHash = this.byHash
    const parentState = parser.hasParent ? byHash.get((BigInt(parser.parentHi) << 32n) | BigInt(parser.parentLo)) : undefined
    let salt: Uint8Array | null
    if (own !== null) {
      salt = parentState != null && bytesEq(parentState, 0, parentState.length, own) ? parentState : own.slice()
    } else if (parentState === undefined) {
      salt = null
    } else if (parentState === null) {
      return false
    } else {
      salt = parentState
    }
    const h = parser.hashes
    for (let i = 0; i < parser.nHashes; i++) {
      const key = (BigInt(h[2 * i + HI]!) << 32n) | BigInt(h[2 * i + LO]!)
      const known = byHash.get(key)
      if (salt === null) {
        if (known !== undefined) byHash.set(key, null)
      } else if (known === undefined) {
        byHash.set(key, salt)
      } else if (known !== null && !bytesEq(known, 0, known.length, salt)) {
        byHash.set(key, null)
      }
    }
    parser.salt = salt
    return true
  }

  /** A removal forgets a hash's salt, unless the hash is ambiguous. */
  removed(parser: EventParser): void {
    if (this.byHash.size === 0) return
    const h = parser.hashes
    for (let i = 0; i < parser.nHashes; i++) {
      const key = (BigInt(h[2 * i + HI]!) << 32n) | BigInt(h[2 * i + LO]!)
      if (this.byHash.get(key)) this.byHash.delete(key)
    }
  }

  /** AllBlocksCleared forgets every hash of the rank. */
  clear(): void {
    this.byHash.clear()
  }
}

const seed = { seedHi: 0, seedLo: BASE_SEED }

/** Resolves the mm info and computes the tokens hashes of the kept blocks of a converted store. */
export function hashKept(parser: EventParser, kvBlockSize: number): void {
  const n = parser.kept
  parser.resolveMm(n)
  if (parser.tokHashes.length < 2 * n) parser.tokHashes = new Uint32Array(grownCapacity(parser.tokHashes.length, 2 * n))
  seed.seedHi = 0
  seed.seedLo = BASE_SEED
  if (parser.loraAt >= 0) loraSeedFromBytes(parser.b, parser.loraAt, parser.loraLen, seed)
  hashBlocks(tokenBytesLE(parser.tokens, n * kvBlockSize), kvBlockSize, n, seed.seedHi, seed.seedLo, parser.mm, parser.tokHashes)
}

/** hashKept for the dynamo-1.4 profile: marker-only extra keys, the cache salt, Eagle windows. */
export function hashKept14(parser: EventParser, kvBlockSize: number): void {
  const n = parser.kept
  parser.resolveMm(n, true)
  if (parser.tokHashes.length < 2 * n) parser.tokHashes = new Uint32Array(grownCapacity(parser.tokHashes.length, 2 * n))
  seed.seedHi = 0
  seed.seedLo = BASE_SEED
  if (parser.loraAt >= 0) loraSeedFromBytes(parser.b, parser.loraAt, parser.loraLen, seed)
  const salt = parser.salt
  if (salt !== null) addSaltFromBytes(salt, 0, salt.length, seed)
  const used = n * kvBlockSize + (parser.eagle ? 1 : 0)
  hashBlocks(tokenBytesLE(parser.tokens, used), kvBlockSize, n, seed.seedHi, seed.seedLo, parser.mm, parser.tokHashes, parser.eagle)
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
      for (let i = 0; i < parser.nHashes; i++) blockHashes[i] = bigFromHalves(h[2 * i + HI]!, h[2 * i + LO]!)
      events.push({ type: 'removed', blockHashes })
      continue
    }
    hashKept(parser, kvBlockSize)
    const h = parser.hashes
    const t = parser.tokHashes
    const blocks: StoredBlock[] = new Array(parser.kept)
    for (let i = 0; i < parser.kept; i++) {
      blocks[i] = {
        blockHash: bigFromHalves(h[2 * i + HI]!, h[2 * i + LO]!),
        tokensHash: bigFromHalves(t[2 * i + HI]!, t[2 * i + LO]!),
        mmExtraInfo: parser.mm === null ? null : parser.mm[i]!,
      }
    }
    events.push({
      type: 'stored',
      parentHash: parser.hasParent ? bigFromHalves(parser.parentHi, parser.parentLo) : null,
      blocks,
    })
  }
  return { dpRank: decodeHead.dpRank, events, rejected }
}
