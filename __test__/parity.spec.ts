// Native and fallback give identical bytes and counters: every fixture batch, and 10,000 generated
// batches fed to both Ingestors in the same order with the same clock (SPEC 1).
import { readFileSync } from 'node:fs'
import { isDeepStrictEqual } from 'node:util'
import type { RawIngestor } from '../ts/core/binding.js'
import { fallback, needNative, parityTest as test } from './helpers/impls.js'
import { BatchGenerator } from './helpers/gen-batches.js'

// Both implementations are loaded explicitly, so these tests mean the same in either pass of the
// suite (native, and DYNAMO_KV_FORCE_JS=1); a missing native binding fails them.

const fixtures = JSON.parse(readFileSync(new URL('./fixtures/engine-batches.json', import.meta.url), 'utf8')) as {
  cases: { name: string; hex: string; kv_block_size: number }[]
}

const need = needNative

test('decodeEngineBatch and peekBatch agree on every fixture', (t) => {
  const n = need()
  for (const c of fixtures.cases) {
    const bytes = Buffer.from(c.hex, 'hex')
    t.deepEqual(fallback.decodeEngineBatch(bytes, c.kv_block_size), n.decodeEngineBatch(bytes, c.kv_block_size), c.name)
    t.deepEqual(fallback.peekBatch(bytes), n.peekBatch(bytes), c.name)
  }
})

interface Variant {
  name: string
  jetstream: boolean
  maxDpRanks: number
  dpRanks: Uint32Array | undefined
  kvBlockSize: number
}

const variants: Variant[] = [
  { name: 'event-plane', jetstream: false, maxDpRanks: 64, dpRanks: undefined, kvBlockSize: 4 },
  { name: 'jetstream', jetstream: true, maxDpRanks: 64, dpRanks: undefined, kvBlockSize: 4 },
  { name: 'event-plane, maxDpRanks 2', jetstream: false, maxDpRanks: 2, dpRanks: undefined, kvBlockSize: 4 },
  { name: 'jetstream, dpRanks [0]', jetstream: true, maxDpRanks: 64, dpRanks: Uint32Array.of(0), kvBlockSize: 4 },
]

for (const [vi, v] of variants.entries()) {
  test(`10,000 generated batches give identical output (${v.name})`, (t) => {
    const n = need()
    const opts = {
      kvBlockSize: v.kvBlockSize,
      workerId: 0xfedcba9876543210n,
      jetstream: v.jetstream,
      maxDpRanks: v.maxDpRanks,
      dpRanks: v.dpRanks as Uint32Array,
      localIndexerBufferSize: 0,
    }
    const a: RawIngestor = new n.RawIngestor(opts)
    const b: RawIngestor = new fallback.RawIngestor(opts)
    const gen = new BatchGenerator(1000 + vi, { kvBlockSize: v.kvBlockSize, ranks: [0, 1, 2] })
    let now = 1_700_000_000_000
    let mismatches = 0
    let payloads = 0
    for (let k = 0; k < 10_000; k++) {
      now += gen.rng.int(3)
      const batch = gen.next()
      let x: Buffer
      let y: Buffer
      if (k % 2 === 0) {
        x = a.ingest(batch, now)
        y = b.ingest(batch, now)
      } else {
        // the hot path: into a caller's arena at an offset (a small arena makes the call return the
        // output as a Buffer of its own)
        const arenaA = Buffer.alloc(k % 4 === 1 ? 64 : 1 << 16)
        const arenaB = Buffer.alloc(arenaA.length)
        const at = k % 7
        const ra = a.ingestInto(batch, now, arenaA, at)
        const rb = b.ingestInto(batch, now, arenaB, at)
        if (typeof ra !== typeof rb) t.fail(`batch ${k}: ingestInto returned a ${typeof ra} (native) and a ${typeof rb} (fallback)`)
        x = typeof ra === 'number' ? arenaA.subarray(at, at + ra) : ra
        y = typeof rb === 'number' ? arenaB.subarray(at, at + rb) : rb
      }
      payloads += x.readUInt32LE(0)
      if (!x.equals(y)) {
        if (mismatches++ < 3) t.fail(`batch ${k} (${batch.toString('hex')}): native ${x.toString('hex')} != fallback ${y.toString('hex')}`)
      }
      if (k % 97 === 0) {
        // the manual API shares the same state
        const rank = gen.rng.pick([0, 1])
        if (a.rankAllowed(rank) !== b.rankAllowed(rank)) t.fail(`rankAllowed(${rank}) differs`)
        if (!a.rankAllowed(rank)) continue
        const hashes = BigUint64Array.of(gen.rng.u64(), gen.rng.u64())
        const tokens = Uint32Array.from({ length: 2 * v.kvBlockSize }, () => gen.rng.u32())
        const calls: [Buffer, Buffer][] = [
          [
            a.stored(tokens, hashes, v.kvBlockSize, null, k % 2 ? 'adapter-a' : null, null, rank, now),
            b.stored(tokens, hashes, v.kvBlockSize, null, k % 2 ? 'adapter-a' : null, null, rank, now),
          ],
          [a.removed(hashes.subarray(0, 1), rank, now), b.removed(hashes.subarray(0, 1), rank, now)],
        ]
        if (k % 5 === 0) calls.push([a.cleared(rank, now), b.cleared(rank, now)])
        for (const [p, q] of calls) if (!p.equals(q)) t.fail(`manual call at ${k}: ${p.toString('hex')} != ${q.toString('hex')}`)
      }
    }
    t.is(mismatches, 0)
    t.deepEqual(b.counters(), a.counters())
    for (const r of [0, 1, 2, 3]) t.is(b.nextEventId(r), a.nextEventId(r))
    t.true(payloads > 5_000, `the stream emitted ${payloads} payloads`)
  })
}

test('decodeEngineBatch and peekBatch agree on 10,000 generated batches', (t) => {
  const n = need()
  const gen = new BatchGenerator(77, { kvBlockSize: 4 })
  let differ = 0
  for (let k = 0; k < 10_000; k++) {
    const batch = gen.next()
    const x = [n.decodeEngineBatch(batch, 4), n.peekBatch(batch)]
    const y = [fallback.decodeEngineBatch(batch, 4), fallback.peekBatch(batch)]
    if (!isDeepStrictEqual(x, y) && differ++ < 3) t.deepEqual(y, x, `batch ${k}: ${batch.toString('hex')}`)
  }
  t.is(differ, 0)
})
