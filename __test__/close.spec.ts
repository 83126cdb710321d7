// close() and [Symbol.dispose] on Ingestor, RadixIndex and LocalIndexer (SPEC 8), in both implementations:
// the same error for every later call, idempotent, and an Ingestor's local indexer closed with it.
import test from 'ava'
import * as kv from '../ts/index.js'
import { fallback, native } from './helpers/impls.js'
import type { RawBinding } from '../ts/core/binding.js'

const impls: [string, RawBinding][] = [['fallback', fallback]]
if (native) impls.push(['native', native])

const stored = (id: bigint): kv.RouterEventValue => ({
  workerId: 1n,
  event: {
    eventId: id,
    dpRank: 0,
    data: { type: 'stored', parentHash: null, blocks: [{ blockHash: id, tokensHash: id, mmExtraInfo: null }] },
  },
})

for (const [name, impl] of impls) {
  test(`${name}: a closed Ingestor and its local indexer refuse every call`, (t) => {
    const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, localIndexer: true }, impl)
    const res = ing.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [10n] })
    t.is(res.payloads.length, 1)
    t.is(ing.localIndexer!.size(), 1)
    ing.close()
    const closed = { message: 'Ingestor is closed' }
    t.throws(() => ing.ingest(Buffer.from([0x90])), closed)
    t.throws(() => ing.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [11n] }), closed)
    t.throws(() => ing.counters(), closed)
    t.throws(() => ing.nextEventId(0), closed)
    t.throws(() => ing.localIndexer!.size(), { message: 'LocalIndexer is closed' })
    t.throws(() => ing.localIndexer!.eventsInRange(0), { message: 'LocalIndexer is closed' })
    t.notThrows(() => ing.close())
  })

  test(`${name}: closing an Ingestor's local indexer detaches it; the Ingestor goes on`, (t) => {
    const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, localIndexer: true }, impl)
    ing.localIndexer!.close()
    t.throws(() => ing.localIndexer!.dump(), { message: 'LocalIndexer is closed' })
    t.is(ing.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [10n] }).firstEventId, 0n)
    t.is(ing.stored({ tokenIds: [5, 6, 7, 8], blockHashes: [11n], parentHash: 10n }).firstEventId, 1n)
  })

  test(`${name}: RadixIndex and LocalIndexer close, also through [Symbol.dispose]`, (t) => {
    const idx = new kv.RadixIndex(impl)
    t.is(idx.applyEvent(stored(1n)), 'applied')
    const local = new kv.LocalIndexer({ bufferSize: 4 }, impl)
    t.is(local.applyEvent(stored(2n)), 'applied')
    idx.close()
    t.throws(() => idx.findMatches([1n]), { message: 'RadixIndex is closed' })
    t.throws(() => idx.applyEvent(stored(3n)), { message: 'RadixIndex is closed' })
    t.notThrows(() => idx.close())
    local[Symbol.dispose]()
    t.throws(() => local.size(), { message: 'LocalIndexer is closed' })
    t.throws(() => local.eventsInRange(0), { message: 'LocalIndexer is closed' })
  })
}
