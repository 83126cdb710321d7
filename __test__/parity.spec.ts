// Native and fallback give identical bytes and counters: every fixture batch, and 10,000 generated
// batches fed to both Ingestors in the same order with the same clock (SPEC 1).
import { readFileSync } from 'node:fs'
import { isDeepStrictEqual } from 'node:util'
import type { RawIngestor } from '../ts/core/binding.js'
import { fallback, needNative, parityTest as test } from './helpers/impls.js'
import { BatchGenerator, type Rng } from './helpers/gen-batches.js'
import { arr, encode, map, type Mp, nil, s, u } from './helpers/mp.js'

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
  /** The dynamo-1.4 wire profile (SPEC 5b). */
  wire14?: boolean
}

const variants: Variant[] = [
  { name: 'event-plane', jetstream: false, maxDpRanks: 64, dpRanks: undefined, kvBlockSize: 4 },
  { name: 'jetstream', jetstream: true, maxDpRanks: 64, dpRanks: undefined, kvBlockSize: 4 },
  { name: 'event-plane, maxDpRanks 2', jetstream: false, maxDpRanks: 2, dpRanks: undefined, kvBlockSize: 4 },
  { name: 'jetstream, dpRanks [0]', jetstream: true, maxDpRanks: 64, dpRanks: Uint32Array.of(0), kvBlockSize: 4 },
  { name: 'dynamo-1.4', jetstream: false, maxDpRanks: 64, dpRanks: undefined, kvBlockSize: 4, wire14: true },
  { name: 'dynamo-1.4, maxDpRanks 2, local indexer', jetstream: false, maxDpRanks: 2, dpRanks: undefined, kvBlockSize: 4, wire14: true },
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
      localIndexerBufferSize: v.name.includes('local indexer') ? 16 : 0,
      wire14: v.wire14 === true,
      publisherIdRanks: [1],
      publisherIdValues: [77n],
      publisherSeed: 0x1234_5678_9abc_def0n,
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
        // every fourth one through ingestPacked, the call the public Ingestor makes
        const packed = k % 4 === 3
        const ra = packed ? a.ingestPacked(a.handle(), batch, now, arenaA, at) : a.ingestInto(batch, now, arenaA, at)
        const rb = packed ? b.ingestPacked(b.handle(), batch, now, arenaB, at) : b.ingestInto(batch, now, arenaB, at)
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
        // dynamo-1.4 also takes a cache salt and Eagle tokens
        const salt = v.wire14 && k % 3 === 0 ? 'tenant-x' : null
        const eagle = v.wire14 === true && k % 4 === 0
        const calls: [Buffer, Buffer][] = [
          [
            a.stored(tokens, hashes, v.kvBlockSize, null, k % 2 ? 'adapter-a' : null, null, rank, now, salt, eagle),
            b.stored(tokens, hashes, v.kvBlockSize, null, k % 2 ? 'adapter-a' : null, null, rank, now, salt, eagle),
          ],
          [a.removed(hashes.subarray(0, 1), rank, now), b.removed(hashes.subarray(0, 1), rank, now)],
        ]
        if (k % 5 === 0) calls.push([a.cleared(rank, now), b.cleared(rank, now)])
        for (const [p, q] of calls) if (!p.equals(q)) t.fail(`manual call at ${k}: ${p.toString('hex')} != ${q.toString('hex')}`)
      }
    }
    t.is(mismatches, 0)
    t.deepEqual(b.counters(), a.counters())
    for (const r of [0, 1, 2, 3]) {
      t.is(b.nextEventId(r), a.nextEventId(r))
      t.is(b.publisherId(r), a.publisherId(r))
    }
    const la = a.localIndexer()
    const lb = b.localIndexer()
    if (la !== null && lb !== null) {
      t.is(lb.size(), la.size())
      t.deepEqual(lb.dump(), la.dump())
    }
    // dynamo-1.4 packs a batch's events into one envelope where 1.0 writes one payload per event
    t.true(payloads > (v.wire14 ? 2_000 : 5_000), `the stream emitted ${payloads} payloads`)
  })
}

test('dynamo-1.4: the Dynamo 1.6 conversion and extra-key fixtures and 30,000 mutations of them give identical output', (t) => {
  const n = need()
  const cases = (
    JSON.parse(readFileSync(new URL('./fixtures/dynamo-1.6/engine-conversions-1.6.json', import.meta.url), 'utf8')) as {
      cases: { payload_hex: string }[]
    }
  ).cases.map((c) => Buffer.from(c.payload_hex, 'hex'))
  // vLLM extra keys with markers and dynamo-cache-salt: tags (block-hashes-1.6.json)
  const extraKeys = (
    JSON.parse(readFileSync(new URL('./fixtures/dynamo-1.6/block-hashes-1.6.json', import.meta.url), 'utf8')) as {
      vllm_extra_keys_through_1_6_converter: { cases: { payload_hex: string }[] }
    }
  ).vllm_extra_keys_through_1_6_converter.cases
  for (const c of extraKeys) cases.push(Buffer.from(c.payload_hex, 'hex'))
  const opts = {
    kvBlockSize: 4,
    workerId: 7n,
    jetstream: false,
    maxDpRanks: 8,
    dpRanks: null,
    localIndexerBufferSize: 8,
    wire14: true,
    publisherSeed: 3n,
  }
  const a: RawIngestor = new n.RawIngestor(opts)
  const b: RawIngestor = new fallback.RawIngestor(opts)
  const rng = new BatchGenerator(77, { kvBlockSize: 4 }).rng
  let mismatches = 0
  for (let k = 0; k < 30_000 + cases.length; k++) {
    let input = cases[k % cases.length]!
    if (k >= cases.length) {
      input = Buffer.from(input)
      for (let m = 0, times = 1 + rng.int(3); m < times; m++) {
        const at = rng.int(input.length + 1)
        const op = rng.int(4)
        if (op === 0 && at < input.length) input[at] = rng.int(256)
        else if (op === 1) input = Buffer.concat([input.subarray(0, at), Buffer.from([rng.int(256)]), input.subarray(at)])
        else if (op === 2) input = Buffer.concat([input.subarray(0, at), input.subarray(at + 1)])
        else input = input.subarray(0, at)
      }
    }
    const x = a.ingest(input, 1_700_000_000_000 + k)
    const y = b.ingest(input, 1_700_000_000_000 + k)
    if (!x.equals(y) && mismatches++ < 3) t.fail(`${input.toString('hex')}: native ${x.toString('hex')} != fallback ${y.toString('hex')}`)
  }
  t.is(mismatches, 0)
  t.deepEqual(b.counters(), a.counters())
  t.deepEqual(b.localIndexer()!.dump(), a.localIndexer()!.dump())
})

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

/** A batch of events using what the dynamo-1.4 profile reads: media of every tier (and unknown or lower-case
 * ones), locality and ownership (map keys and array positions 12-13), cache salts (key, position-7 map,
 * tagged extra keys), Eagle pairs, marker and plain 64-hex extra keys, chained stores to coalesce, removes. */
function batch14(r: Rng): Buffer {
  const pick = <T>(xs: readonly T[]): T => xs[r.int(xs.length)]!
  const media = ['GPU', 'gpu', 'DEVICE', 'CPU', 'CPU_PINNED', 'CPU_TIER2', 'DISK', 'NVME', 'EXTERNAL', 'SHARED', 'FS', '']
  const hex = (marker: boolean) => Array.from({ length: 64 }, (_, k) => (marker && k >= 16 ? '0' : '0123456789abcdef'[r.int(16)]!)).join('')
  const events: Mp[] = []
  let last = 0
  for (let e = 0, n = 1 + r.int(12); e < n; e++) {
    const kind = r.int(10)
    const h = () => 1 + r.int(60)
    if (kind === 0) {
      events.push(arr(s('AllBlocksCleared')))
      continue
    }
    if (kind <= 2) {
      const hashes = Array.from({ length: 1 + r.int(3) }, h)
      const m: Record<string, Mp> = { type: s('BlockRemoved'), block_hashes: arr(...hashes.map((x) => u(x))) }
      if (r.chance(0.6)) m.medium = s(pick(media))
      if (r.chance(0.2)) m.locality = s(pick(['LOCAL', 'local', 'REMOTE']))
      if (r.chance(0.1)) m.ownership = r.chance(0.5) ? nil : s('x')
      events.push(map(m))
      continue
    }
    const blocks = 1 + r.int(3)
    const hashes = Array.from({ length: blocks }, h)
    const eagle = r.chance(0.2)
    const nTok = blocks * 4 + (eagle ? 0 : r.int(2)) - (r.chance(0.1) ? 1 : 0)
    const toks = Array.from({ length: Math.max(nTok, 0) }, () => r.int(50_000))
    const tokens = eagle ? arr(...toks.map((t, k) => arr(u(t), u(toks[k + 1] ?? r.int(9))))) : arr(...toks.map((t) => u(t)))
    const parent = r.chance(0.5) && last > 0 ? u(last) : nil
    last = hashes[hashes.length - 1]!
    const extra = r.chance(0.3)
      ? arr(
          ...hashes.map(() =>
            r.chance(0.5)
              ? nil
              : arr(
                  ...Array.from({ length: 1 + r.int(2) }, () =>
                    pick([
                      s(hex(true)),
                      s(hex(false)),
                      s('dynamo-cache-salt:t1'),
                      s('dynamo-cache-salt:'),
                      arr(s(hex(true)), u(3)),
                      s('lora-a'),
                    ]),
                  ),
                ),
          ),
        )
      : nil
    const lora = r.chance(0.2) ? s('lora-a') : nil
    if (r.chance(0.6)) {
      const m: Record<string, Mp> = {
        type: s('BlockStored'),
        block_hashes: arr(...hashes.map((x) => u(x))),
        parent_block_hash: parent,
        token_ids: tokens,
        block_size: u(4),
      }
      if (r.chance(0.7)) m.medium = s(pick(media))
      if (r.chance(0.2)) m.locality = s(pick(['LOCAL', 'local', 'REMOTE']))
      if (r.chance(0.1)) m.ownership = r.chance(0.5) ? nil : s('x')
      if (r.chance(0.2)) m.cache_salt = s(pick(['t1', '', 'tenant-x']))
      m.lora_name = lora
      m.extra_keys = extra
      events.push(map(m))
    } else {
      const pos7 = r.chance(0.3) ? map({ cache_salt: s(pick(['t1', 'tenant-x'])) }) : lora
      const fields: Mp[] = [s('BlockStored'), arr(...hashes.map((x) => u(x))), parent, tokens, u(4), nil, s(pick(media)), pos7, extra]
      if (r.chance(0.5)) fields.push(u(0), s('full_attention'), nil, s(pick(['LOCAL', 'REMOTE', 'local'])), r.chance(0.3) ? s('o') : nil)
      events.push(arr(...fields))
    }
  }
  return Buffer.from(encode(arr(u(1), arr(...events), u(r.int(3)))))
}

test('dynamo-1.4: 20,000 generated batches using every 1.4 input feature give identical output', (t) => {
  const n = need()
  const opts = {
    kvBlockSize: 4,
    workerId: 9n,
    jetstream: false,
    maxDpRanks: 8,
    dpRanks: null,
    localIndexerBufferSize: 32,
    wire14: true,
    publisherSeed: 11n,
  }
  const a: RawIngestor = new n.RawIngestor(opts)
  const b: RawIngestor = new fallback.RawIngestor(opts)
  const r = new BatchGenerator(5, { kvBlockSize: 4 }).rng
  let mismatches = 0
  let payloads = 0
  for (let k = 0; k < 20_000; k++) {
    const input = batch14(r)
    const x = a.ingest(input, 1_700_000_000_000 + k)
    const y = b.ingest(input, 1_700_000_000_000 + k)
    payloads += x.readUInt32LE(0)
    if (!x.equals(y) && mismatches++ < 3) t.fail(`${input.toString('hex')}: native ${x.toString('hex')} != fallback ${y.toString('hex')}`)
  }
  t.is(mismatches, 0)
  t.deepEqual(b.counters(), a.counters())
  t.deepEqual(b.localIndexer()!.dump(), a.localIndexer()!.dump())
  t.true(payloads > 10_000, `${payloads} payloads`)
  const c = a.counters()
  // the stream reaches the 1.4 rules: filtered tiers, Eagle stores (fine hashes), held-back removes
  t.true(c[14]! > 1000n && c[2]! > 1000n, `rejected_filtered_tier ${c[14]}, emitted_stored ${c[2]}`)
})
