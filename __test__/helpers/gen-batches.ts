// A seeded generator of engine batches for parity and robustness tests: map- and array-encoded events
// in one batch, unsigned / signed / bin hashes, LoRA names, extra_keys and block_mm_infos, tiers and
// localities, KV groups and kinds, several dp ranks, engine clears, short token lists, and bad events
// of every rejection reason. Deterministic for a given seed.
import { Rng } from '../../ts/sim/rng.js'
import { arr, bin, encode, f64, i, map, nil, s, u, type Mp } from './mp.js'

export { Rng }

const HEX = '0123456789abcdef'

export interface GenOptions {
  kvBlockSize: number
  ranks: number[]
  /** probability that an event is deliberately bad */
  badRate: number
  /** probability that a whole batch is malformed */
  malformedRate: number
}

/** Generates batches while keeping, per rank, recently stored hashes to chain and remove. */
export class BatchGenerator {
  readonly rng: Rng
  readonly opts: GenOptions
  #recent = new Map<number, bigint[]>()

  constructor(seed: number, opts: Partial<GenOptions> = {}) {
    this.rng = new Rng(seed)
    this.opts = { kvBlockSize: 4, ranks: [0, 1, 2], badRate: 0.15, malformedRate: 0.02, ...opts }
  }

  #pool(rank: number): bigint[] {
    let p = this.#recent.get(rank)
    if (!p) {
      p = []
      this.#recent.set(rank, p)
    }
    return p
  }

  /** A hash value in one of the wire forms engines use. */
  #hashMp(h: bigint): Mp {
    const r = this.rng
    const form = r.int(10)
    if (form < 6) return u(h, r.chance(0.2) ? 8 : undefined)
    if (form < 8) return i(BigInt.asIntN(64, h)) // SGLang: signed int64
    const b = Buffer.alloc(form === 8 ? 8 : 32)
    for (let k = 0; k < b.length; k++) b[k] = r.int(256)
    b.writeBigUInt64BE(h, b.length - 8)
    return bin(b)
  }

  #freshHash(): bigint {
    // mostly random u64, sometimes small or above 2^63 on purpose
    const r = this.rng
    const k = r.int(10)
    if (k === 0) return BigInt(r.int(1000))
    if (k === 1) return (1n << 63n) | r.u64()
    return r.u64()
  }

  #mmHex(): string {
    let out = ''
    for (let k = 0; k < 64; k++) out += HEX[this.rng.int(16)]
    return this.rng.chance(0.2) ? out.toUpperCase() : out
  }

  #stored(rank: number, bad: boolean): Mp {
    const r = this.rng
    const bs = this.opts.kvBlockSize
    const pool = this.#pool(rank)
    const nBlocks = 1 + (r.chance(0.05) ? r.int(40) : r.int(6))
    const hashes: bigint[] = []
    for (let k = 0; k < nBlocks; k++) hashes.push(this.#freshHash())
    const parent = pool.length && r.chance(0.5) ? pool[pool.length - 1]! : null
    let nTokens = nBlocks * bs + (r.chance(0.2) ? r.int(bs) : 0)
    if (r.chance(0.05)) nTokens = Math.max(0, nTokens - bs * (1 + r.int(2))) // short token_ids: truncation
    const tokens: Mp[] = []
    for (let k = 0; k < nTokens; k++) tokens.push(u(r.chance(0.7) ? r.int(50000) : r.u32()))
    let blockSize: Mp = u(bs)
    let hashesMp: Mp[] = hashes.map((h) => this.#hashMp(h))
    let tokensMp: Mp = arr(...tokens)
    let parentMp: Mp = parent === null ? nil : this.#hashMp(parent)
    const lora: Mp = r.chance(0.1) ? s(r.pick(['adapter-a', 'lörä-日本', 'x'])) : r.chance(0.05) ? s('') : nil
    let medium: Mp = r.chance(0.85) ? s(r.pick(['GPU', 'gpu', 'GPU'])) : r.chance(0.5) ? s('CPU') : nil
    let extraKeys: Mp = nil
    let mmInfos: Mp | undefined
    if (r.chance(0.1)) {
      extraKeys = arr(
        ...hashes.map(() =>
          r.chance(0.5)
            ? nil
            : arr(...[0, 1].map(() => (r.chance(0.5) ? s(this.#mmHex()) : r.chance(0.5) ? arr(s(this.#mmHex()), u(r.int(9))) : s('salt')))),
        ),
      )
    } else if (r.chance(0.08)) {
      mmInfos = arr(
        ...hashes.map(() =>
          r.chance(0.4)
            ? nil
            : map({
                mm_objects: arr(
                  ...[0, 1]
                    .slice(0, 1 + r.int(2))
                    .map(() => map({ mm_hash: u(r.u64()), offsets: r.chance(0.3) ? nil : arr(arr(u(r.int(9)), u(9 + r.int(9)))) })),
                ),
              }),
        ),
      )
    }
    let groupIdx: Mp | undefined
    let kind: Mp | undefined
    if (r.chance(0.15)) {
      groupIdx = u(r.int(3))
      kind = r.chance(0.7) ? s(r.pick(['full_attention', 'sliding_window', 'mla_attention'])) : undefined
    }
    let locality: Mp | undefined = r.chance(0.05) ? s(r.pick(['LOCAL', 'REMOTE', 'local'])) : undefined
    if (bad) {
      switch (r.int(8)) {
        case 0:
          tokensMp = arr(...tokens.slice(0, 2), f64(1)) // float token
          break
        case 1:
          blockSize = f64(bs) // 4.0 is not an integer
          break
        case 2:
          blockSize = u(bs * 2) // block_size mismatch
          break
        case 3:
          hashesMp = [...hashesMp, hashesMp[0]!] // self reference
          break
        case 4:
          hashesMp = [] // empty
          break
        case 5:
          parentMp = s('nope') // invalid parent
          break
        case 6:
          medium = s('DISK') // filtered tier
          break
        case 7:
          mmInfos = arr(map({ mm_objects: arr(map({ mm_hash: i(-1) })) })) // invalid mm
          break
      }
      if (r.chance(0.1)) locality = s('REMOTE')
    }
    for (const h of hashes) pool.push(h)
    if (pool.length > 200) pool.splice(0, pool.length - 200)
    if (r.chance(0.5)) {
      const m: Record<string, Mp> = {
        type: s('BlockStored'),
        block_hashes: arr(...hashesMp),
        parent_block_hash: parentMp,
        token_ids: tokensMp,
        block_size: blockSize,
        lora_id: nil,
        medium,
        lora_name: lora,
        extra_keys: extraKeys,
      }
      if (mmInfos) m.block_mm_infos = mmInfos
      if (groupIdx) m.group_idx = groupIdx
      if (kind) m.kv_cache_spec_kind = kind
      if (locality) m.locality = locality
      const entries: [Mp, Mp][] = Object.entries(m).map(([k, x]) => [s(k), x])
      if (r.chance(0.05)) entries.push([s('__proto__'), u(1)]) // an ordinary unknown key
      if (r.chance(0.05)) entries.push([u(7), s('non-string key')])
      if (r.chance(0.05)) entries.push([s('block_size'), blockSize]) // repeated key: last wins
      return map(entries)
    }
    // array era: 6, 7, 9, 10 or 12 positions
    const pos9: Mp = mmInfos ?? groupIdx ?? nil
    const full = [s('BlockStored'), arr(...hashesMp), parentMp, tokensMp, blockSize, nil, medium, lora, extraKeys, pos9, kind ?? nil, nil]
    return arr(...full.slice(0, r.pick([6, 7, 9, 10, 11, 12])))
  }

  #removed(rank: number, bad: boolean): Mp {
    const r = this.rng
    const pool = this.#pool(rank)
    const n = bad && r.chance(0.3) ? 0 : 1 + r.int(4)
    const hashes: bigint[] = []
    for (let k = 0; k < n; k++) hashes.push(pool.length && r.chance(0.8) ? pool[r.int(pool.length)]! : this.#freshHash())
    const medium = bad && r.chance(0.5) ? s('CPU') : r.chance(0.7) ? s('GPU') : nil
    if (r.chance(0.5)) {
      const m: Record<string, Mp> = { type: s('BlockRemoved'), block_hashes: arr(...hashes.map((h) => this.#hashMp(h))), medium }
      if (r.chance(0.1)) m.group_idx = u(r.int(3))
      if (r.chance(0.05)) m.kv_cache_spec_kind = s(r.pick(['full_attention', 'sliding_window']))
      return map(m)
    }
    return arr(...[s('BlockRemoved'), arr(...hashes.map((h) => this.#hashMp(h))), medium, u(r.int(2))].slice(0, 2 + r.int(3)))
  }

  #badShape(): Mp {
    const r = this.rng
    return r.pick<Mp>([
      u(5),
      arr(),
      arr(u(1), u(2)),
      map({ block_hashes: arr(u(1)) }),
      map({ type: u(3) }),
      arr(s('BlockMoved'), arr(u(1))),
      map({ type: s('Unknown') }),
      arr(s('BlockStored')), // missing fields
    ])
  }

  #event(rank: number): Mp {
    const r = this.rng
    const bad = r.chance(this.opts.badRate)
    const k = r.next()
    if (bad && r.chance(0.3)) return this.#badShape()
    if (k < 0.7) return this.#stored(rank, bad)
    if (k < 0.95) return this.#removed(rank, bad)
    this.#pool(rank).length = 0
    return r.chance(0.5) ? arr(s('AllBlocksCleared')) : map({ type: s('AllBlocksCleared') })
  }

  /** The next batch, msgpack-encoded. */
  next(): Buffer {
    const r = this.rng
    const rank = r.pick(this.opts.ranks)
    const events: Mp[] = []
    const n = r.int(5)
    for (let k = 0; k < n; k++) events.push(this.#event(rank))
    const ts = f64(1700000000 + r.next())
    let batch: Mp
    const shape = r.int(20)
    if (shape === 0)
      batch = map({ ts, events: arr(...events), data_parallel_rank: rank === 0 && r.chance(0.5) ? nil : u(rank), dp_rank: u(rank) })
    else if (shape === 1 && rank === 0) batch = arr(ts, arr(...events))
    else if (shape === 2) batch = arr(ts, arr(...events), u(rank), bin(Buffer.alloc(16, 7)))
    else batch = arr(ts, arr(...events), rank === 0 && r.chance(0.2) ? nil : u(rank))
    const bytes = encode(batch)
    if (r.chance(this.opts.malformedRate)) {
      // truncated, or trailing garbage
      return r.chance(0.5) ? bytes.subarray(0, r.int(bytes.length)) : Buffer.concat([bytes, Buffer.from([r.int(256)])])
    }
    return bytes
  }
}
