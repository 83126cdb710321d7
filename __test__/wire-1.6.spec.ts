// Dynamo 1.6.1's router wire (fixtures/dynamo-1.6/router-wire-1.6.json) through the PUBLIC API of both
// implementations: RouterEvents with storage tiers, the array payload, envelopes and sequences from the
// dynamo-1.4 Ingestor, its coalescing, refcount dedup and envelope partitioning, ActiveLoad with
// kv_used_blocks, endpoint subjects, and the router-side decoders of both payload shapes.
import { readFileSync } from 'node:fs'
import test from 'ava'
import * as kv from '../ts/index.js'
import type { RouterEventValue } from '../ts/index.js'
import type { RawBinding } from '../ts/core/binding.js'
import { hex, NOW, readEnvelope } from './helpers/fixtures.js'
import { fallback, native } from './helpers/impls.js'

interface Fixture {
  router_events: {
    cases: { name: string; router_event_json: string; router_event_msgpack_hex: string }[]
    decode_checks: { name: string; input?: string; input_hex?: string; decoded: boolean }[]
  }
  event_plane_payload_batch_of_3: { events_json: string; msgpack_hex: string }
  batching: {
    demos: {
      name: string
      published?: { payload_json: string; payload_msgpack_hex: string }[]
      payload_shapes?: { blocks: number; event_id: number; parent_hash: number | null }[][]
      events_per_publish?: number[]
    }[]
  }
  active_load: { cases: { name: string; json?: string; msgpack_hex?: string; input_hex?: string; reencoded_json?: string }[] }
  subjects: {
    examples: {
      namespace: string
      component: string
      endpoint: string
      kv_events_subject: string
      kv_metrics_subject: string
      endpoint_subject_prefix: string
    }[]
  }
  envelope: {
    publisher_id: string
    payload_msgpack_hex: string
    envelope_seq0: { sequence: number; published_at: string; msgpack_hex: string }
    envelope_seq1: { sequence: number; published_at: string; msgpack_hex: string }
    kv_metrics_active_load: { publisher_id: string; payload_msgpack_hex: string; envelope_msgpack_hex: string }
    legacy_1_0_single_event_payload_in_1_6: { envelope_hex: string }
  }
}

const f = JSON.parse(readFileSync(new URL('./fixtures/dynamo-1.6/router-wire-1.6.json', import.meta.url), 'utf8')) as Fixture
const impls: [string, RawBinding][] = native
  ? [
      ['native', native],
      ['fallback', fallback],
    ]
  : [['fallback', fallback]]
const PUBLISHER = BigInt(f.envelope.publisher_id)
const demo = (name: string) => f.batching.demos.find((d) => d.name === name)!
const toHex = (b: Uint8Array): string => Buffer.from(b).toString('hex')

// ---------------------------------------------------------------------------------------------------
// engine batches, written by hand: [ts, events, dp_rank] with array-form events

function mpUint(v: number): number[] {
  if (v < 0x80) return [v]
  if (v < 0x10000) return [0xcd, v >> 8, v & 0xff]
  return [0xce, (v >>> 24) & 0xff, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff]
}
const mpStr = (s: string): number[] => [0xa0 | s.length, ...Buffer.from(s)]
const mpArr = (n: number): number[] => (n < 16 ? [0x90 | n] : [0xdc, n >> 8, n & 0xff])
/** ["BlockStored", hashes, parent, tokens, block_size, lora_id nil, medium] */
function store(hashes: number[], parent: number | null, tokens: number[], bs: number, medium = 'GPU'): number[] {
  return [
    0x97,
    ...mpStr('BlockStored'),
    ...mpArr(hashes.length),
    ...hashes.flatMap(mpUint),
    ...(parent === null ? [0xc0] : mpUint(parent)),
    ...mpArr(tokens.length),
    ...tokens.flatMap(mpUint),
    ...mpUint(bs),
    0xc0,
    ...mpStr(medium),
  ]
}
const remove = (hashes: number[]): number[] => [0x92, ...mpStr('BlockRemoved'), ...mpArr(hashes.length), ...hashes.flatMap(mpUint)]
const clear = (): number[] => [0x91, ...mpStr('AllBlocksCleared')]
const batch = (events: number[][], rank = 0): Buffer =>
  Buffer.from([0x93, 0x00, ...mpArr(events.length), ...events.flat(), ...mpUint(rank)])

const ingestor = (impl: RawBinding, bs: number, ranks: number[] = [0]) =>
  new kv.Ingestor(
    { kvBlockSize: bs, workerId: 7n, wire: 'dynamo-1.4', publisherIds: Object.fromEntries(ranks.map((r) => [r, PUBLISHER])) },
    impl,
  )

/** The events of a result's envelopes, one array per envelope. */
const eventsOf = (impl: RawBinding, res: kv.IngestResult): RouterEventValue[][] =>
  res.payloads.map((p) => impl.decodeRouterEvents(readEnvelope(p).payload, 1))

/** An event with its tokens hashes replaced through `map` (the demos' tokens hashes are synthetic). */
function withTokens(ev: RouterEventValue, map: Map<bigint, bigint>): RouterEventValue {
  const d = ev.event.data
  if (d.type !== 'stored') return ev
  return {
    ...ev,
    event: { ...ev.event, data: { ...d, blocks: d.blocks.map((b) => ({ ...b, tokensHash: map.get(b.tokensHash) ?? b.tokensHash })) } },
  }
}

for (const [name, impl] of impls) {
  test(`[${name}] RouterEvents encode and decode as Dynamo 1.6.1's (msgpack and JSON)`, (t) => {
    for (const c of f.router_events.cases) {
      const mp = hex(c.router_event_msgpack_hex)
      const ev = impl.decodeRouterEvent(mp, false)
      t.deepEqual(impl.decodeRouterEvent(Buffer.from(c.router_event_json), true), ev, c.name)
      t.deepEqual(impl.decodeRouterEvents(mp, 1), [ev], c.name)
      t.is(ev.storageTier !== undefined, true, c.name)
      if (c.router_event_json.includes('session_id')) continue // read past, never written (SPEC 5b)
      t.is(toHex(impl.encodeRouterEvent(ev, false)), c.router_event_msgpack_hex, c.name)
      t.is(impl.encodeRouterEvent(ev, true).toString(), c.router_event_json, c.name)
    }
  })

  test(`[${name}] the event-plane payload is an array: encodeRouterEvents reproduces the batch of 3`, (t) => {
    const want = f.event_plane_payload_batch_of_3
    const evs = impl.decodeRouterEvents(hex(want.msgpack_hex), 1)
    t.is(evs.length, 3)
    t.is(toHex(impl.encodeRouterEvents(evs, false)), want.msgpack_hex)
    t.is(impl.encodeRouterEvents(evs, true).toString(), want.events_json)
    t.deepEqual(impl.decodeRouterEvents(Buffer.from(want.events_json), 2), evs)
  })

  test(`[${name}] the dynamo-1.4 Ingestor writes Dynamo 1.6.1's envelope (seq 0), and seq 1 with its clock`, (t) => {
    const env = f.envelope
    const ing = ingestor(impl, 4)
    t.is(ing.publisherId(0), PUBLISHER)
    const b = batch([store([100], null, [1, 2, 3, 4], 4), remove([100]), clear()])
    const r0 = ing.ingest(b, Number(env.envelope_seq0.published_at))
    t.is(r0.payloads.length, 1)
    t.is(toHex(r0.payloads[0]!), env.envelope_seq0.msgpack_hex)
    t.is(r0.firstSequence, 0n)
    t.is(r0.firstEventId, 1n)
    t.is(r0.dpRank, 0)
    // the next call: sequence 1, ids continue per rank (4, 5, 6); the framing is Dynamo's
    const r1 = ing.ingest(b, Number(env.envelope_seq1.published_at))
    t.is(r1.firstSequence, 1n)
    t.is(r1.firstEventId, 4n)
    const e1 = readEnvelope(r1.payloads[0]!)
    t.is(e1.sequence, 1n)
    t.deepEqual(
      impl.decodeRouterEvents(e1.payload, 1).map((e) => e.event.eventId),
      [4n, 5n, 6n],
    )
    const seq1Payload = readEnvelope(hex(env.envelope_seq1.msgpack_hex)).payload
    t.is(
      toHex(
        kv.encodeEnvelope({
          publisherId: PUBLISHER,
          sequence: 1n,
          publishedAt: BigInt(env.envelope_seq1.published_at),
          topic: 'kv-events',
          payload: seq1Payload,
        }),
      ),
      env.envelope_seq1.msgpack_hex,
    )
    t.is(toHex(seq1Payload), env.payload_msgpack_hex)
  })

  test(`[${name}] coalescing, refcount dedup and renumbering as Dynamo 1.6.1's publisher`, (t) => {
    // store[1], store[2|parent 1], store[1] again, remove[1], remove[1,2], clear, in one engine batch
    const ing = ingestor(impl, 1)
    const res = ing.ingest(
      batch([store([1], null, [5], 1), store([2], 1, [6], 1), store([1], null, [5], 1), remove([1]), remove([1, 2]), clear()]),
      NOW,
    )
    t.is(res.payloads.length, 1)
    const [evs] = eventsOf(impl, res)
    // the demo's tokens hashes are synthetic (11, 12): map the real ones onto them, then compare bytes
    const [h5, h6] = kv.computeBlockHashes([5, 6], 1)
    const map = new Map([
      [h5!, 11n],
      [h6!, 12n],
    ])
    const want = demo('coalesce_dedup_renumber').published![0]!
    t.is(
      toHex(
        impl.encodeRouterEvents(
          evs!.map((e) => withTokens(e, map)),
          false,
        ),
      ),
      want.payload_msgpack_hex,
    )
    t.is(ing.counters().emitted_removed, 1n)
  })

  test(`[${name}] a tier boundary ends coalescing; each event carries its storage tier`, (t) => {
    const ing = ingestor(impl, 1)
    const res = ing.ingest(batch([store([1], null, [5], 1, 'GPU'), store([2], 1, [6], 1, 'CPU')]), NOW)
    const [h5, h6] = kv.computeBlockHashes([5, 6], 1)
    const map = new Map([
      [h5!, 11n],
      [h6!, 12n],
    ])
    const want = demo('tier_boundary').published![0]!
    t.is(
      toHex(
        impl.encodeRouterEvents(
          eventsOf(impl, res)[0]!.map((e) => withTokens(e, map)),
          false,
        ),
      ),
      want.payload_msgpack_hex,
    )
  })

  test(`[${name}] ids and sequences count per dp rank (one publisher per rank, unlike the demo's shared counter)`, (t) => {
    const ing = new kv.Ingestor({ kvBlockSize: 1, workerId: 7n, wire: 'dynamo-1.4', publisherIds: { 0: 11n, 1: 12n } }, impl)
    const a = ing.ingest(batch([store([1], null, [5], 1)], 0), NOW)
    const b = ing.ingest(batch([store([1], null, [5], 1)], 1), NOW)
    const c = ing.ingest(batch([remove([1])], 0), NOW)
    t.deepEqual(
      [a, b, c].map((r) => [r.firstEventId, r.firstSequence, readEnvelope(r.payloads[0]!).publisherId]),
      [
        [1n, 0n, 11n],
        [1n, 0n, 12n],
        [2n, 1n, 11n],
      ],
    )
    // the demo: Dynamo's single publisher numbers across ranks (1, 2, 3); the same three events here
    t.deepEqual(demo('two_dp_ranks_one_publisher_counter').published!.length, 3)
  })

  test(`[${name}] an empty remove publishes nothing; a remove held back by the refcount publishes nothing`, (t) => {
    const ing = ingestor(impl, 1)
    t.deepEqual(demo('empty_remove_dropped').published ?? [], [])
    const r = ing.ingest(batch([remove([])]), NOW)
    t.deepEqual(r.payloads, [])
    t.is(r.rejected.empty, 1)
    ing.ingest(batch([store([9], null, [5], 1), store([9], null, [5], 1)]), NOW)
    const held = ing.removed([9n])
    t.deepEqual([held.payloads, held.firstEventId, held.firstSequence], [[], null, null])
    t.is(eventsOf(impl, ing.removed([9n]))[0]![0]!.event.data.type, 'removed')
  })

  test(`[${name}] 200 chained one-block stores coalesce into 128 + 72 blocks`, (t) => {
    const ing = ingestor(impl, 1)
    const events = Array.from({ length: 200 }, (_, i) => store([1000 + i], i === 0 ? null : 999 + i, [5], 1))
    const got = eventsOf(impl, ing.ingest(batch(events), NOW))[0]!
    const shapes = demo('coalesce_cap_200_chained_single_block_stores').payload_shapes![0]!
    t.deepEqual(
      got.map((e) => {
        const d = e.event.data as Extract<kv.ConvertedEvent, { type: 'stored' }>
        return {
          blocks: d.blocks.length,
          event_id: Number(e.event.eventId),
          parent_hash: d.parentHash === null ? null : Number(d.parentHash),
        }
      }),
      shapes,
    )
  })

  test(`[${name}] envelopes hold at most 128 events and 8,192 blocks; one larger event goes alone`, (t) => {
    const sizes = (res: kv.IngestResult) => eventsOf(impl, res).map((e) => e.length)
    let ing = ingestor(impl, 1)
    const r300 = ing.ingest(batch(Array.from({ length: 300 }, (_, i) => store([5000 + i], null, [5], 1))), NOW)
    t.deepEqual(sizes(r300), demo('sink_partition_300_events').events_per_publish)
    t.is(r300.firstSequence, 0n)
    t.deepEqual(
      r300.payloads.map((p) => readEnvelope(p).sequence),
      [0n, 1n, 2n],
    )
    ing = ingestor(impl, 1)
    const big = (e: number, n: number) =>
      store(
        Array.from({ length: n }, (_, i) => 100_000 + 10_000 * e + i),
        null,
        Array.from({ length: n }, () => 5),
        1,
      )
    t.deepEqual(
      sizes(ing.ingest(batch([0, 1, 2, 3, 4].map((e) => big(e, 3000))), NOW)),
      demo('sink_partition_blocks_5x3000').events_per_publish,
    )
    ing = ingestor(impl, 1)
    t.deepEqual(
      sizes(ing.ingest(batch([big(9, 9000)]), NOW)),
      demo('sink_partition_single_event_9000_blocks_kept_intact').events_per_publish,
    )
  })

  test(`[${name}] a cleared is per rank: the index keeps the other ranks; non-device events are ignored`, (t) => {
    const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, wire: 'dynamo-1.4' }, impl)
    const index = new kv.RadixIndex(impl)
    for (const rank of [0, 1])
      for (const p of ing.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [100n], dpRank: rank }).payloads) index.applyEncoded(p, 'envelope')
    t.is(index.size(), 2)
    const cpu = ing.ingest(batch([store([200], null, [1, 2, 3, 4], 4, 'CPU')], 0), NOW)
    t.is(index.applyEncoded(cpu.payloads[0]!, 'envelope'), 'ignored')
    t.is(index.size(), 2)
    for (const p of ing.cleared(1).payloads) t.is(index.applyEncoded(p, 'envelope'), 'applied')
    t.is(index.size(), 1)
    t.deepEqual(
      index.findMatchesForTokens([1, 2, 3, 4], 4).scores.map((s) => s.dpRank),
      [0],
    )
    // a Dynamo 1.0 cleared (no residency domain) still clears every rank of the worker
    for (const p of ing.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [100n], dpRank: 1 }).payloads) index.applyEncoded(p, 'envelope')
    t.is(index.applyEvent({ workerId: 7n, event: { eventId: 99n, dpRank: 0, data: { type: 'cleared' } } }), 'applied')
    t.is(index.size(), 0)
    // an event value with a storage tier goes through the same rule
    t.is(
      index.applyEvent({
        workerId: 7n,
        storageTier: 'disk',
        event: { eventId: 1n, dpRank: 0, data: { type: 'removed', blockHashes: [1n] } },
      }),
      'ignored',
    )
  })

  test(`[${name}] the local indexer of a dynamo-1.4 Ingestor holds the device blocks`, (t) => {
    const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, wire: 'dynamo-1.4', localIndexer: true }, impl)
    ing.ingest(batch([store([100], null, [1, 2, 3, 4], 4), store([200], null, [1, 2, 3, 4], 4, 'DISK')]), NOW)
    t.is(ing.localIndexer!.size(), 1)
    ing.cleared(0)
    t.is(ing.localIndexer!.size(), 0)
  })
}

test('ActiveLoad with kv_used_blocks, and its kv_metrics envelope', (t) => {
  for (const c of f.active_load.cases) {
    if (c.msgpack_hex === undefined) continue
    const j = JSON.parse(c.json!) as Record<string, number | null>
    const opt = (v: number | null | undefined) => (v === null || v === undefined ? null : BigInt(v))
    const got = kv.encodeActiveLoad({
      workerId: BigInt(j.worker_id!),
      dpRank: j.dp_rank!,
      activeDecodeBlocks: opt(j.active_decode_blocks),
      activePrefillTokens: opt(j.active_prefill_tokens),
      kvUsedBlocks: opt(j.kv_used_blocks),
    })
    t.is(toHex(got), c.msgpack_hex, c.name)
  }
  const km = f.envelope.kv_metrics_active_load
  const load = kv.encodeActiveLoad({ workerId: 7n, dpRank: 0, activeDecodeBlocks: null, kvUsedBlocks: 12n })
  t.is(toHex(load), km.payload_msgpack_hex)
  t.is(
    toHex(
      kv.encodeEnvelope({
        publisherId: BigInt(km.publisher_id),
        sequence: 0n,
        publishedAt: BigInt(NOW),
        topic: 'kv_metrics',
        payload: load,
      }),
    ),
    km.envelope_msgpack_hex,
  )
  // without kvUsedBlocks the Dynamo 1.0 message is unchanged (4 keys)
  t.is(kv.encodeActiveLoad({ workerId: 7n, dpRank: 0, activeDecodeBlocks: 12n })[0], 0x84)
})

test('endpoint-scoped subjects, each name percent-encoded per UTF-8 byte', (t) => {
  for (const e of f.subjects.examples) {
    t.is(kv.endpointSubject(e.namespace, e.component, e.endpoint), e.kv_events_subject)
    t.is(kv.endpointSubject(e.namespace, e.component, e.endpoint, 'kv_metrics'), e.kv_metrics_subject)
    t.is(kv.endpointSubjectPrefix(e.namespace, e.component, e.endpoint), e.endpoint_subject_prefix)
  }
  t.throws(() => kv.endpointSubject('', 'c', 'e'), { instanceOf: TypeError, message: /namespace/ })
})

test('decoders read both payload shapes and refuse what Dynamo 1.6 cannot apply', (t) => {
  const checks = f.router_events.decode_checks
  const dec = (c: (typeof checks)[number]) =>
    c.input !== undefined ? kv.decodeRouterEvents(Buffer.from(c.input), 'json') : kv.decodeRouterEvents(hex(c.input_hex!), 'msgpack')
  for (const c of checks) {
    if (c.name === 'json_residency_domain_null')
      t.throws(() => dec(c), { instanceOf: kv.RouterEventError, message: /residency_domain must be worker or cache_owner/ })
    else if (c.name === 'json_unknown_storage_tier')
      t.throws(() => dec(c), { instanceOf: kv.RouterEventError, message: /storage_tier must be device, host_pinned, disk or external/ })
    else t.is(dec(c).length, 1, c.name)
  }
  // a Dynamo 1.0 envelope (one map) and a 1.4 one (an array) both decode
  t.is(kv.decodeRouterEvents(hex(f.envelope.legacy_1_0_single_event_payload_in_1_6.envelope_hex), 'envelope').length, 1)
  t.is(kv.decodeRouterEvents(hex(f.envelope.envelope_seq0.msgpack_hex), 'envelope').length, 3)
  const err = t.throws(() => kv.decodeRouterEvent(hex(f.event_plane_payload_batch_of_3.msgpack_hex)), { instanceOf: kv.RouterEventError })
  t.is(err?.reason, 'invalid')
  t.regex(err?.message ?? '', /a batch of 3 events where one was expected/)
  t.throws(() => kv.decodeRouterEvents(Buffer.from([0x90])), { instanceOf: kv.RouterEventError, message: /an empty batch/ })
})

test('Ingestor options of the dynamo-1.4 profile are checked, naming the option', (t) => {
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, wire: 'dynamo-1.4', mode: 'jetstream' }), {
    instanceOf: RangeError,
    message: /wire.*jetstream/,
  })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, wire: 'dynamo-2' as 'dynamo-1.4' }), {
    instanceOf: RangeError,
    message: /wire/,
  })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, publisherIds: { 0: 5n } }), {
    instanceOf: RangeError,
    message: /publisherIds/,
  })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, wire: 'dynamo-1.4', publisherIds: { 0: 1n << 53n } }), {
    instanceOf: RangeError,
    message: /publisherIds\[0\]/,
  })
  const v10 = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n })
  t.is(v10.wire, 'dynamo-1.0')
  t.is(v10.publisherId(3), 7n)
  t.throws(() => v10.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [1n], cacheSalt: 's' }), {
    instanceOf: RangeError,
    message: /cacheSalt/,
  })
  const a = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, wire: 'dynamo-1.4' })
  const b = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, wire: 'dynamo-1.4' })
  const id = a.publisherId(0)
  t.true(id >= 1n && id < 1n << 53n)
  t.is(a.publisherId(0), id, 'stable')
  t.not(a.publisherId(1), id, 'one per rank')
  t.not(b.publisherId(0), id, 'random per Ingestor')
  t.is(a.nextEventId(0), 1n)
})

test('stored() takes a cache salt and Eagle tokens in dynamo-1.4 (hashes as computeBlockHashes)', (t) => {
  for (const [name, impl] of impls) {
    const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, wire: 'dynamo-1.4' }, impl)
    const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    const res = ing.stored({ tokenIds: tokens, blockHashes: [1n, 2n], cacheSalt: 'tenant-x', eagle: true })
    const d = impl.decodeRouterEvents(readEnvelope(res.payloads[0]!).payload, 1)[0]!.event.data
    t.deepEqual(
      d.type === 'stored' ? d.blocks.map((b) => b.tokensHash) : [],
      Array.from(kv.computeBlockHashes(tokens, 4, { cacheSalt: 'tenant-x', eagle: true })),
      name,
    )
  }
})
