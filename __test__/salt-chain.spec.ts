// The dynamo-1.4 cache-salt chain (SPEC 5b): a store without a salt of its own takes its parent's, per
// rank. The expected outcomes are those of Dynamo 1.6.1's own engine-event normalizer on the same steps
// (crates/compat-dynamo-1.6, `a_store_without_a_salt_takes_its_parents_salt_as_in_dynamo_1_6_1`); here
// the native core and the fallback give the same bytes, and an inherited store hashes as the same store
// sent with its parent's salt.
import test from 'ava'
import { decodeRouterEvents, Ingestor } from '../ts/core/api.js'
import type { RawBinding } from '../ts/core/binding.js'
import { fallback, native, parityTest } from './helpers/impls.js'
import { arr, encode, f64, map, nil, s, u } from './helpers/mp.js'

const BS = 4

type Step = { what: string; ev: ReturnType<typeof map> | ReturnType<typeof arr> }

function store(hashes: number[], parent: number | null, salt: string | null, medium: string | null = null) {
  const tokens = hashes.flatMap((h) => Array.from({ length: BS }, (_, i) => u(h * 100 + i)))
  const fields: Record<string, ReturnType<typeof u>> = {
    type: s('BlockStored'),
    block_hashes: arr(...hashes.map((h) => u(h))),
    parent_block_hash: parent === null ? nil : u(parent),
    token_ids: arr(...tokens),
    block_size: u(BS),
    lora_id: nil,
    medium: medium === null ? nil : s(medium),
  }
  if (salt !== null) fields.cache_salt = s(salt)
  return map(fields)
}
const removed = (hashes: number[]) => map({ type: s('BlockRemoved'), block_hashes: arr(...hashes.map((h) => u(h))), medium: nil })

const STEPS: Step[] = [
  { what: 'a salted chain', ev: store([1, 2], null, 's1') },
  { what: 'its unsalted child inherits', ev: store([3], 2, null) },
  { what: 'an empty salt is none: inherits', ev: store([4], 3, '') },
  { what: 'an unknown parent: unsalted', ev: store([5], 99, null) },
  { what: 'a salted hash stored unsalted becomes ambiguous', ev: store([2], null, null) },
  { what: 'a child of an ambiguous parent is refused', ev: store([6], 2, null) },
  { what: 'an own salt beats the parent one', ev: store([7], 3, 's2') },
  { what: 'a remove forgets the salt', ev: removed([3]) },
  { what: 'so the child is unsalted', ev: store([8], 3, null) },
  { what: 'an ambiguous hash survives its remove', ev: removed([2]) },
  { what: 'still refused', ev: store([9], 2, null) },
  { what: 'host-pinned follows the chain', ev: store([10], 7, null, 'CPU') },
  { what: 'disk bypasses it', ev: store([11], 7, null, 'DISK') },
  { what: 'a clear forgets the rank', ev: map({ type: s('AllBlocksCleared') }) },
  { what: 'so the child is unsalted', ev: store([12], 7, null) },
]
const batch = (ev: Step['ev']) => encode(arr(f64(1.7e9), arr(ev), u(0)))

function rawIngestor(b: RawBinding) {
  return new b.RawIngestor({
    kvBlockSize: BS,
    workerId: 7n,
    jetstream: false,
    maxDpRanks: 1,
    dpRanks: null,
    localIndexerBufferSize: 0,
    wire14: true,
    publisherSeed: 99n,
  })
}

parityTest('native and fallback give the same bytes for every step of the salt chain', (t) => {
  const a = rawIngestor(native!)
  const b = rawIngestor(fallback)
  for (const [i, step] of STEPS.entries()) {
    const bytes = batch(step.ev)
    t.deepEqual(Buffer.from(a.ingest(bytes, 1000 + i)), Buffer.from(b.ingest(bytes, 1000 + i)), `step ${i}: ${step.what}`)
  }
  t.deepEqual(a.counters(), b.counters())
})

/** The tokens hashes of the stores a result carries. */
function storedTokensHashes(payloads: readonly Uint8Array[]): bigint[] {
  return payloads.flatMap((p) =>
    decodeRouterEvents(p, 'envelope').flatMap((e) => (e.event.data.type === 'stored' ? e.event.data.blocks.map((x) => x.tokensHash) : [])),
  )
}

test('an unsalted child is hashed with its parent salt; a child of an ambiguous parent is refused as ambiguous_salt', (t) => {
  const ing = new Ingestor({ kvBlockSize: BS, workerId: 7n, wire: 'dynamo-1.4' })
  const results = STEPS.map((step, i) => ing.ingest(batch(step.ev), 1000 + i))
  const hashesOf = (ev: Step['ev']) =>
    storedTokensHashes(new Ingestor({ kvBlockSize: BS, workerId: 8n, wire: 'dynamo-1.4' }).ingest(batch(ev)).views)
  // step 1 equals block 3 stored with s1 itself, and differs from it stored unsalted
  t.deepEqual(storedTokensHashes(results[1]!.views), hashesOf(store([3], 2, 's1')))
  t.notDeepEqual(storedTokensHashes(results[1]!.views), hashesOf(store([3], 2, null)))
  t.deepEqual(storedTokensHashes(results[2]!.views), hashesOf(store([4], 3, 's1')))
  t.deepEqual(storedTokensHashes(results[11]!.views), hashesOf(store([10], 7, 's2', 'CPU')))
  // unsalted where the chain says so
  for (const i of [3, 8, 12, 14]) {
    const ev = STEPS[i]!.ev
    t.deepEqual(storedTokensHashes(results[i]!.views), hashesOf(ev), `step ${i}: ${STEPS[i]!.what}`)
  }
  const refused = results.flatMap((r, i) => (r.rejected.ambiguous_salt > 0 ? [i] : []))
  t.deepEqual(refused, [5, 10])
  t.is(results[5]!.count, 0)
  t.is(ing.counters().rejected_ambiguous_salt, 2n)
})

test('the dynamo-1.0 wire keeps each store to its own salt', (t) => {
  const ing = new Ingestor({ kvBlockSize: BS, workerId: 7n })
  const results = STEPS.map((step, i) => ing.ingest(batch(step.ev), 1000 + i))
  t.deepEqual(
    results.map((r) => r.rejected.ambiguous_salt),
    STEPS.map(() => 0),
  )
})
