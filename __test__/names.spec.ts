// Every name on the wire and every counter name comes from the core (crates/core) or its mirror
// (ts/fallback) through names() and the subject functions: both give the same answers, which are the
// names SPEC 5 and Dynamo use, and the lists agree with the counts they label.
import test from 'ava'
import type { RawBinding } from '../ts/core/binding.js'
import * as kv from '../ts/index.js'
import { fallback, needNative, parityTest } from './helpers/impls.js'

// native cases are registered like the parity tests: skipped on a build without the native binding
const impls: [string, () => RawBinding, typeof parityTest][] = [
  ['native', needNative, parityTest],
  ['fallback', () => fallback, test],
]

for (const [name, get, test] of impls) {
  test(`${name}: topics and subjects are Dynamo's`, (t) => {
    const b = get()
    const n = b.names()
    t.is(n.kvEventsTopic, 'kv-events')
    t.is(n.kvMetricsTopic, 'kv_metrics')
    t.is(b.kvEventsSubject('dynamo', 'backend'), 'namespace.dynamo.component.backend.kv-events')
    t.is(b.kvMetricsSubject('dynamo'), 'namespace.dynamo.kv_metrics')
    const stream = b.jetstreamStreamName('dynamo', 'backend')
    t.is(stream, 'namespace-dynamo-component-backend-kv-events')
    t.is(b.jetstreamSubject(stream), 'namespace-dynamo-component-backend-kv-events.kv-events')
  })

  test(`${name}: the name lists label the counts they go with`, (t) => {
    const b = get()
    const n = b.names()
    t.is(n.rejectReasons.length, 10)
    t.is(n.rejectReasons[0], 'malformed', 'code 0 is the malformed batch')
    // the ingestor's counters end with one per rejection reason, in the same order
    const ing = new b.RawIngestor({
      kvBlockSize: 4,
      workerId: 1n,
      jetstream: false,
      maxDpRanks: 1,
      dpRanks: null,
      localIndexerBufferSize: 0,
    })
    t.is(ing.counters().length, n.counterNames.length)
    t.deepEqual(
      n.counterNames.slice(-n.rejectReasons.length),
      n.rejectReasons.map((r) => `rejected_${r}`),
    )
    ing.ingest(Buffer.from([0xc1]), 0)
    t.is(ing.counters()[n.counterNames.indexOf('rejected_malformed')], 1n)
    t.is(ing.counters()[n.counterNames.indexOf('batches')], 1n)
    // index outcomes and counters
    const ix = new b.RawRadixIndex()
    t.is(ix.counters().length, n.indexCounterNames.length)
    const head = BigUint64Array.of(5n, 0n, 99n)
    const one = BigUint64Array.of(1n)
    t.is(n.applyOutcomes[ix.applyStored(head, 0, true, one, one, 1, null)], 'parent_not_found')
    t.is(n.applyOutcomes[ix.applyStored(head, 0, false, one, one, 1, null)], 'applied')
    t.is(n.applyOutcomes[ix.applyRemoved(head, 0, BigUint64Array.of(7n), 1)], 'block_not_found')
    t.is(ix.counters()[n.indexCounterNames.indexOf('parent_not_found')], 1n)
    t.is(ix.counters()[n.indexCounterNames.indexOf('blocks_stored')], 1n)
    t.deepEqual(n.encodedFormats, ['envelope', 'msgpack', 'json'])
  })
}

parityTest('native and fallback give the same names', (t) => {
  t.deepEqual(fallback.names(), needNative().names())
})

test('the public API exports the loaded core names', (t) => {
  const n = fallback.names()
  t.deepEqual([...kv.REJECT_REASONS], n.rejectReasons)
  t.deepEqual([...kv.COUNTER_NAMES], n.counterNames)
  t.deepEqual([...kv.APPLY_OUTCOMES], n.applyOutcomes)
  t.deepEqual([...kv.INDEX_COUNTER_NAMES], n.indexCounterNames)
})
