// The Ingestor through the public API, on whichever implementation loads: dp ranks up to 2^32-1,
// option errors that name the option, manual-API argument errors, and results that do not alias.
import test from 'ava'
import * as kv from '../ts/index.js'
import { arr, encode, f64, map, nil, s, u } from './helpers/mp.js'

const impl = kv.implementation

function store(hashes: bigint[], tokens: number[], rank: number | bigint, bs = 4): Buffer {
  return encode(
    arr(
      f64(1.5),
      arr(
        map({
          type: s('BlockStored'),
          block_hashes: arr(...hashes.map((h) => u(h))),
          parent_block_hash: nil,
          token_ids: arr(...tokens.map((t) => u(t))),
          block_size: u(bs),
        }),
      ),
      u(rank),
    ),
  )
}

test(`${impl}: dp ranks above 2^31 are kept exactly`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 5n, mode: 'jetstream' })
  const r = ing.ingest(store([11n], [1, 2, 3, 4], 3_000_000_000), 1)
  t.is(r.dpRank, 3_000_000_000)
  t.is(r.firstEventId, 0n)
  t.is(kv.decodeRouterEvent(r.payloads[0]!, 'json').event.dpRank, 3_000_000_000)
  t.is(kv.peekBatch(store([11n], [1, 2, 3, 4], 4294967295))?.dpRank, 4294967295)
  // a rank beyond u32 is a malformed batch
  t.is(ing.ingest(store([11n], [1, 2, 3, 4], 4294967296n), 1).dpRank, null)
})

test(`${impl}: options are checked at construction, naming the option`, (t) => {
  t.throws(() => new kv.Ingestor({ kvBlockSize: 0, workerId: 1n }), { instanceOf: RangeError, message: /kvBlockSize/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4.5, workerId: 1n }), { instanceOf: RangeError, message: /kvBlockSize/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 1 as unknown as bigint }), { instanceOf: TypeError, message: /workerId/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: -1n }), { instanceOf: RangeError, message: /workerId/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 1n << 64n }), { instanceOf: RangeError, message: /workerId/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, mode: 'nats' as kv.IngestMode }), {
    instanceOf: RangeError,
    message: /mode/,
  })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, maxDpRanks: 0 }), { instanceOf: RangeError, message: /maxDpRanks/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, dpRanks: [] }), { instanceOf: TypeError, message: /dpRanks/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, dpRanks: [0, 0] }), { instanceOf: RangeError, message: /dpRanks/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, dpRanks: [-1] }), { instanceOf: RangeError, message: /dpRanks\[0\]/ })
})

test(`${impl}: manual API arguments are checked, naming the argument`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, dpRanks: [0, 1] })
  const ok = { tokenIds: [1, 2, 3, 4], blockHashes: [9n] }
  t.throws(() => ing.stored({ ...ok, tokenIds: [1, 2, 3, -4] }), { instanceOf: RangeError, message: /tokenIds\[3\]/ })
  t.throws(() => ing.stored({ ...ok, tokenIds: [1, 2, 3, 2 ** 32] }), { instanceOf: RangeError, message: /tokenIds\[3\]/ })
  t.throws(() => ing.stored({ ...ok, tokenIds: [1, 2, 3, 0.5] }), { instanceOf: RangeError, message: /tokenIds\[3\]/ })
  t.throws(() => ing.stored({ ...ok, blockHashes: [9] as unknown as bigint[] }), { instanceOf: TypeError, message: /blockHashes\[0\]/ })
  t.throws(() => ing.stored({ ...ok, blockHashes: [1n << 64n] }), { instanceOf: RangeError, message: /blockHashes\[0\]/ })
  t.throws(() => ing.stored({ ...ok, parentHash: 3 as unknown as bigint }), { instanceOf: TypeError, message: /parentHash/ })
  t.throws(() => ing.stored({ ...ok, dpRank: 2 }), { instanceOf: RangeError, message: /dpRank 2/ })
  t.throws(() => ing.stored({ ...ok, loraName: 5 as unknown as string }), { instanceOf: TypeError, message: /loraName/ })
  t.throws(() => ing.stored({ ...ok, blockMmInfos: [{ mmObjects: [{ mmHash: 1, offsets: [] }] }] as unknown as kv.BlockExtraInfo[] }), {
    instanceOf: TypeError,
    message: /blockMmInfos\[0\]\.mmObjects\[0\]\.mmHash/,
  })
  t.throws(() => ing.removed('x' as unknown as bigint[]), { instanceOf: TypeError, message: /blockHashes/ })
  t.throws(() => ing.cleared(7), { instanceOf: RangeError, message: /dpRank 7/ })
  t.throws(() => ing.ingest('x' as unknown as Uint8Array), { instanceOf: TypeError, message: /payload/ })
  t.throws(() => ing.ingest(Buffer.alloc(1), -1), { instanceOf: RangeError, message: /nowMs/ })
  // nothing was emitted by the failed calls
  t.is(ing.nextEventId(0), 0n)
  t.is(ing.stored(ok).firstEventId, 0n)
  t.is(ing.nextEventId(0), 1n)
})

test(`${impl}: results own their bytes (the output scratch is reused)`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, mode: 'jetstream' })
  const a = ing.ingest(store([1n], [1, 2, 3, 4], 0), 1)
  const first = Buffer.from(a.payloads[0]!)
  for (let k = 0; k < 10; k++) ing.ingest(store([BigInt(100 + k)], [5, 6, 7, 8], 0), 1)
  t.deepEqual(a.payloads[0], first)
  t.is(kv.decodeRouterEvent(a.payloads[0]!, 'json').event.eventId, 0n)
})

test(`${impl}: a batch larger than the output scratch comes out whole`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 1, workerId: 1n, mode: 'jetstream' })
  const n = 10_000 // ~90 bytes of JSON per block: ~0.9 MB of output, over the 256 KiB scratch
  const hashes = Array.from({ length: n }, (_, i) => (BigInt(i + 1) * 0x9e3779b97f4a7c15n) % (1n << 64n))
  const r = ing.ingest(
    store(
      hashes,
      Array.from({ length: n }, (_, i) => i),
      0,
      1,
    ),
    1,
  )
  t.is(r.payloads.length, Math.ceil(n / 1024))
  const blocks = r.payloads.map((p) => kv.decodeRouterEvent(p, 'json').event.data).flatMap((d) => (d.type === 'stored' ? d.blocks : []))
  t.deepEqual(
    blocks.map((b) => b.blockHash),
    hashes,
  )
})
