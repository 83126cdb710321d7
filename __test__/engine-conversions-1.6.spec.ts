// The 70 engine batches of engine-batches.json as Dynamo 1.6.1's own pipeline publishes them
// (fixtures/dynamo-1.6/engine-conversions-1.6.json), through the PUBLIC Ingestor of both
// implementations: the dynamo-1.4 profile publishes exactly Dynamo 1.6.1's event-plane payloads, except
// the cases SPEC 5b lists as deliberate differences, where the package's own expectation holds; the
// dynamo-1.0 profile keeps the package's expectation for every case.
import { readFileSync } from 'node:fs'
import test from 'ava'
import { Ingestor, type RouterEventValue } from '../ts/index.js'
import type { RawBinding } from '../ts/core/binding.js'
import { hex, type JsonEvent, NOW, readEnvelope, toEvent } from './helpers/fixtures.js'
import { fallback, native } from './helpers/impls.js'

interface Case {
  name: string
  kv_block_size: number
  payload_hex: string
  package_expect: { error: 'malformed' } | { dp_rank: number; events: JsonEvent[] }
  dynamo_1_6_1: { 'published (event-plane payloads after batching/dedup, ids from 1)'?: { payload_msgpack_hex: string }[] }
}
interface Fixture {
  summary: { dynamo_1_6_1_differences_by_class: Record<string, string[]> }
  cases: Case[]
}

const fixture = JSON.parse(readFileSync(new URL('./fixtures/dynamo-1.6/engine-conversions-1.6.json', import.meta.url), 'utf8')) as Fixture
const spec = readFileSync(new URL('../docs/SPEC.md', import.meta.url), 'utf8')

/** Where the dynamo-1.4 profile deliberately publishes what the package expects instead (SPEC 5b). */
const DIFFERENCES = [
  // Dynamo rejects the whole batch; the package decodes per event or accepts the batch shape
  'batch_without_dp_rank',
  'bytes_block_hash',
  'unknown_event_type_skipped',
  'four_element_batch',
  'map_form_batch',
  'non_string_keys_ignored',
  'nesting_at_limit',
  'mm_offsets_nil_is_empty',
  'map_batch_nil_rank_falls_back',
  'negative_group_idx_is_absent',
  // the package is stricter
  'negative_dp_rank',
  'trailing_bytes',
  'mm_offsets_over_u32_invalid',
  // Dynamo publishes stores with zero blocks
  'block_size_mismatch',
  'offload_placeholder',
]

const impls: [string, RawBinding][] = native
  ? [
      ['native', native],
      ['fallback', fallback],
    ]
  : [['fallback', fallback]]

const published = (c: Case): string[] =>
  (c.dynamo_1_6_1['published (event-plane payloads after batching/dedup, ids from 1)'] ?? []).map((p) => p.payload_msgpack_hex)

test('the fixture holds the 70 cases this file is written for, and every difference class is decided', (t) => {
  t.is(fixture.cases.length, 70)
  const names = new Set(fixture.cases.map((c) => c.name))
  for (const n of DIFFERENCES) t.true(names.has(n), n)
  // every case Dynamo's generator classed as different is either followed (asserted below) or listed
  const classed = new Set(Object.values(fixture.summary.dynamo_1_6_1_differences_by_class).flat())
  for (const n of classed) t.true(names.has(n), n)
})

test('SPEC 5b lists every deliberate difference by its case name', (t) => {
  const at = spec.indexOf('## 5b.')
  const section = spec.slice(at, spec.indexOf('\n## ', at + 5))
  for (const n of DIFFERENCES) t.true(section.includes(`\`${n}\``), `SPEC 5b names ${n}`)
})

for (const [implName, impl] of impls) {
  test(`[${implName}] dynamo-1.4 publishes Dynamo 1.6.1's payloads, byte for byte, except the listed differences`, (t) => {
    let followed = 0
    for (const c of fixture.cases) {
      const ing = new Ingestor({ kvBlockSize: c.kv_block_size, workerId: 7n, wire: 'dynamo-1.4' }, impl)
      const res = ing.ingest(hex(c.payload_hex), NOW)
      const payloads = res.payloads.map((p) => readEnvelope(p))
      for (const [i, e] of payloads.entries()) {
        t.is(e.publisherId, ing.publisherId(res.dpRank ?? 0), c.name)
        t.is(e.sequence, BigInt(i), c.name)
        t.is(e.publishedAt, BigInt(NOW), c.name)
        t.is(e.topic, 'kv-events', c.name)
      }
      if (!DIFFERENCES.includes(c.name)) {
        t.deepEqual(
          payloads.map((e) => Buffer.from(e.payload).toString('hex')),
          published(c),
          c.name,
        )
        followed++
        continue
      }
      const expect = c.package_expect
      if ('error' in expect) {
        t.deepEqual(res.payloads, [], c.name)
        t.is(res.dpRank, null, c.name)
        continue
      }
      const got = payloads.flatMap((e) => impl.decodeRouterEvents(e.payload, 1))
      const want: RouterEventValue[] = expect.events.map((e, i) => ({
        workerId: 7n,
        storageTier: 'device',
        residencyDomain: 'worker',
        event: { eventId: BigInt(i + 1), dpRank: expect.dp_rank, data: toEvent(e) },
      }))
      t.deepEqual(got, want, c.name)
    }
    t.is(followed, 70 - DIFFERENCES.length)
  })

  test(`[${implName}] dynamo-1.0 (the default) still publishes the package's expectation for every case`, (t) => {
    for (const c of fixture.cases) {
      const ing = new Ingestor({ kvBlockSize: c.kv_block_size, workerId: 7n }, impl)
      const res = ing.ingest(hex(c.payload_hex), NOW)
      const expect = c.package_expect
      if ('error' in expect) {
        t.deepEqual(res.payloads, [], c.name)
        continue
      }
      const got = res.payloads.map((p) => impl.decodeRouterEvent(readEnvelope(p).payload, false))
      t.deepEqual(
        got,
        expect.events.map((e, i) => ({ workerId: 7n, event: { eventId: BigInt(i), dpRank: expect.dp_rank, data: toEvent(e) } })),
        c.name,
      )
    }
  })
}
