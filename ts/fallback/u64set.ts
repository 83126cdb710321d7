// A set of u64 values held as u32 halves in typed arrays (open addressing, linear probing, backward-shift
// deletion): the per-rank live-block set of the ingestor, without a BigInt or an object per block.
import { HI, LO } from './msgpack.js'

export class U64Set {
  private his: Uint32Array
  private los: Uint32Array
  private used: Uint8Array
  private mask: number
  size = 0

  constructor(capacity = 64) {
    let cap = 16
    while (cap < capacity * 2) cap *= 2
    this.his = new Uint32Array(cap)
    this.los = new Uint32Array(cap)
    this.used = new Uint8Array(cap)
    this.mask = cap - 1
  }

  private slot(hi: number, lo: number): number {
    let h = Math.imul(lo ^ Math.imul(hi ^ 0x5bd1e995, 0x9e3779b1), 0x85ebca6b)
    h ^= h >>> 15
    h = Math.imul(h, 0xc2b2ae35)
    h ^= h >>> 13
    return h & this.mask
  }

  has(hi: number, lo: number): boolean {
    const mask = this.mask
    for (let i = this.slot(hi, lo); this.used[i] === 1; i = (i + 1) & mask) {
      if (this.los[i] === lo && this.his[i] === hi) return true
    }
    return false
  }

  add(hi: number, lo: number): void {
    if ((this.size + 1) * 2 > this.used.length) this.rehash(this.used.length * 2)
    const mask = this.mask
    let i = this.slot(hi, lo)
    while (this.used[i] === 1) {
      if (this.los[i] === lo && this.his[i] === hi) return
      i = (i + 1) & mask
    }
    this.used[i] = 1
    this.his[i] = hi
    this.los[i] = lo
    this.size++
  }

  delete(hi: number, lo: number): void {
    const mask = this.mask
    let i = this.slot(hi, lo)
    for (;;) {
      if (this.used[i] !== 1) return
      if (this.los[i] === lo && this.his[i] === hi) break
      i = (i + 1) & mask
    }
    // backward-shift: move later entries of the probe run into the hole when their home allows it
    let hole = i
    let j = (i + 1) & mask
    while (this.used[j] === 1) {
      const home = this.slot(this.his[j]!, this.los[j]!)
      // entry j may move to the hole iff its home is not within (hole, j] cyclically
      const inRange = hole <= j ? home > hole && home <= j : home > hole || home <= j
      if (!inRange) {
        this.his[hole] = this.his[j]!
        this.los[hole] = this.los[j]!
        hole = j
      }
      j = (j + 1) & mask
    }
    this.used[hole] = 0
    this.size--
  }

  clear(): void {
    if (this.size === 0) return
    if (this.used.length > 1024) {
      // drop big tables rather than keep their memory after a reset
      this.his = new Uint32Array(64)
      this.los = new Uint32Array(64)
      this.used = new Uint8Array(64)
      this.mask = 63
    } else {
      this.used.fill(0)
    }
    this.size = 0
  }

  /** Writes every value into out as u64 pairs (element k: [2k + LO], [2k + HI]), in table order. */
  exportTo(out: Uint32Array): void {
    let k = 0
    const used = this.used
    for (let i = 0; i < used.length; i++) {
      if (used[i] === 1) {
        out[2 * k + LO] = this.los[i]!
        out[2 * k + HI] = this.his[i]!
        k++
      }
    }
  }

  private rehash(cap: number): void {
    const his = this.his
    const los = this.los
    const used = this.used
    this.his = new Uint32Array(cap)
    this.los = new Uint32Array(cap)
    this.used = new Uint8Array(cap)
    this.mask = cap - 1
    this.size = 0
    for (let i = 0; i < used.length; i++) if (used[i] === 1) this.add(his[i]!, los[i]!)
  }
}
