// Every shared fixture through the PUBLIC API, so the same file tests whichever implementation loads:
// CI runs it natively and again with DYNAMO_KV_FORCE_JS=1 (the pure-TypeScript fallback).
//
// engine-batches.json -> decodeEngineBatch, peekBatch and Ingestor (event plane and JetStream);
// block-hashes.json -> computeBlockHashes; router-wire.json -> RouterEvent, envelope and ActiveLoad bytes,
// JetStream stream names. Plus the Ingestor rules of SPEC 3 (reset, splitting, ranks, ids, warnings)
// and the argument checks of the manual API.
import test from 'ava'
import { decode as mpDecode, encode as mpEncode } from '@msgpack/msgpack'
import * as kv from '../ts/index.js'
import type { BlockExtraInfo, ConvertedEvent } from '../ts/index.js'
import {
  engine,
  hashes,
  hex,
  mmInfo,
  NOW,
  readEnvelope,
  rejectedRecord,
  rev,
  routerEvents,
  sortU64,
  toEvent,
  wire,
} from './helpers/fixtures.js'

const impl = kv.implementation

// ---------------------------------------------------------------------------------------------------
// engine batches: decodeEngineBatch and peekBatch

for (const c of engine) {
  test(`[${impl}] engine batch ${c.name}: decodeEngineBatch and peekBatch`, (t) => {
    const payload = hex(c.hex)
    if ('error' in c.expect) {
      const err = t.throws(() => kv.decodeEngineBatch(payload, c.kv_block_size), { instanceOf: kv.KvDecodeError })
      t.is(err?.reason, 'malformed')
      t.is(kv.peekBatch(payload), null)
      return
    }
    const got = kv.decodeEngineBatch(payload, c.kv_block_size)
    t.is(got.dpRank, c.expect.dp_rank)
    t.deepEqual(got.events, c.expect.events.map(toEvent))
    t.deepEqual(got.rejected, rejectedRecord(c.expect.rejected))
    const peek = kv.peekBatch(payload)
    t.not(peek, null)
    t.is(peek!.dpRank, c.expect.dp_rank)
  })
}

test(`[${impl}] peekBatch returns the 16-byte vLLM publisher id of a 4-element batch`, (t) => {
  const c = engine.find((x) => x.name === 'four_element_batch')!
  const peek = kv.peekBatch(hex(c.hex))
  t.not(peek?.publisherId ?? null, null)
  t.is(peek!.publisherId!.length, 16)
  // the id is the 16 bytes of the bin that is the 4th element
  const decoded = mpDecode(hex(c.hex)) as unknown[]
  t.true(Buffer.from(peek!.publisherId!).equals(Buffer.from(decoded[3] as Uint8Array)))
  // a map batch and a 3-element batch have none
  t.is(kv.peekBatch(hex(engine.find((x) => x.name === 'map_form_batch')!.hex))!.publisherId, null)
  t.is(kv.peekBatch(hex(engine.find((x) => x.name === 'vllm_map_single_store')!.hex))!.publisherId, null)
})

test(`[${impl}] decodeEngineBatch rejects a bad kvBlockSize with a RangeError`, (t) => {
  const p = hex(engine[0]!.hex)
  t.throws(() => kv.decodeEngineBatch(p, 0), { instanceOf: RangeError, message: /kvBlockSize/ })
  t.throws(() => kv.decodeEngineBatch(p, 1.5), { instanceOf: RangeError, message: /kvBlockSize/ })
  t.throws(() => kv.decodeEngineBatch('x' as unknown as Uint8Array, 4), { instanceOf: TypeError, message: /payload/ })
})

// ---------------------------------------------------------------------------------------------------
// engine batches through an Ingestor

for (const mode of ['event-plane', 'jetstream'] as const) {
  for (const c of engine) {
    test(`[${impl}] ${mode} Ingestor, fresh per batch: ${c.name}`, (t) => {
      const ing = new kv.Ingestor({ kvBlockSize: c.kv_block_size, workerId: 7n, mode })
      const res = ing.ingest(hex(c.hex), NOW)
      if ('error' in c.expect) {
        t.is(res.dpRank, null)
        t.is(res.payloads.length, 0)
        t.is(res.firstEventId, null)
        t.deepEqual(res.rejected, rejectedRecord({ malformed: 1 }))
        t.is(ing.counters().rejected_malformed, 1n)
        return
      }
      const rank = c.expect.dp_rank
      t.is(res.dpRank, rank)
      t.deepEqual(res.rejected, rejectedRecord(c.expect.rejected))
      // a publisher that only saw this rank shows an engine clear as `cleared`
      const want = c.expect.events.map((e, i) => rev(7n, BigInt(i), rank, toEvent(e)))
      t.deepEqual(routerEvents(res, mode), want)
      t.is(res.firstEventId, want.length > 0 ? 0n : null)
      t.is(ing.nextEventId(rank), BigInt(want.length))
      if (mode === 'event-plane') {
        res.payloads.forEach((p, i) => {
          const env = readEnvelope(p)
          t.is(env.publisherId, 7n)
          t.is(env.sequence, BigInt(i))
          t.is(env.publishedAt, BigInt(NOW))
          t.is(env.topic, 'kv-events')
          // the envelope is exactly what encodeEnvelope writes around exactly what encodeRouterEvent writes
          t.true(Buffer.from(env.payload).equals(kv.encodeRouterEvent(want[i]!)))
          t.true(p.equals(kv.encodeEnvelope(env)))
        })
      } else {
        for (const [i, p] of res.payloads.entries()) t.true(p.equals(kv.encodeRouterEvent(want[i]!, 'json')))
      }
    })
  }

  test(`[${impl}] ${mode} Ingestor, all block-size-4 batches in order into one publisher`, (t) => {
    // One publisher sees every rank of the fixtures, so an engine clear becomes removes of that rank's
    // live blocks (SPEC 3, reset rule); ids run per rank from 0 and the envelope sequence per publisher.
    const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, mode })
    const seen = new Set<number>()
    const live = new Map<number, Set<bigint>>()
    const nextId = new Map<number, bigint>()
    let sequence = 0n
    let now = NOW
    for (const c of engine.filter((x) => x.kv_block_size === 4)) {
      now += 1
      const res = ing.ingest(hex(c.hex), now)
      if ('error' in c.expect) {
        t.is(res.dpRank, null, c.name)
        t.is(res.payloads.length, 0, c.name)
        continue
      }
      const rank = c.expect.dp_rank
      seen.add(rank)
      const mine = live.get(rank) ?? new Set<bigint>()
      live.set(rank, mine)
      const want: ConvertedEvent[] = []
      for (const e of c.expect.events.map(toEvent)) {
        if (e.type === 'stored') {
          for (const b of e.blocks) mine.add(b.blockHash)
          want.push(e)
        } else if (e.type === 'removed') {
          for (const h of e.blockHashes) mine.delete(h)
          want.push(e)
        } else if (seen.size === 1) {
          want.push(e)
          mine.clear()
        } else {
          const all = sortU64(mine)
          for (let i = 0; i < all.length; i += 4096) want.push({ type: 'removed', blockHashes: all.slice(i, i + 4096) })
          mine.clear()
        }
      }
      const first = nextId.get(rank) ?? 0n
      nextId.set(rank, first + BigInt(want.length))
      t.is(res.dpRank, rank, c.name)
      t.deepEqual(res.rejected, rejectedRecord(c.expect.rejected), c.name)
      t.deepEqual(
        routerEvents(res, mode),
        want.map((e, i) => rev(7n, first + BigInt(i), rank, e)),
        c.name,
      )
      t.is(res.firstEventId, want.length > 0 ? first : null, c.name)
      if (mode === 'event-plane') {
        for (const p of res.payloads) {
          const env = readEnvelope(p)
          t.is(env.sequence, sequence++, c.name)
          t.is(env.publishedAt, BigInt(now), c.name)
        }
      }
    }
    for (const [rank, id] of nextId) t.is(ing.nextEventId(rank), id)
    const counters = ing.counters()
    t.is(counters.batches, BigInt(engine.filter((x) => x.kv_block_size === 4).length))
    t.is(counters.rejected_malformed, BigInt(engine.filter((x) => 'error' in x.expect).length))
  })
}

// ---------------------------------------------------------------------------------------------------
// block hashes

for (const v of hashes.vectors) {
  test(`[${impl}] computeBlockHashes ${v.name}`, (t) => {
    const got = kv.computeBlockHashes(v.tokens, v.kv_block_size, {
      loraName: v.lora_name,
      blockMmInfos: v.block_mm_infos?.map(mmInfo) ?? null,
    })
    t.deepEqual(Array.from(got), v.expected.map(BigInt))
    t.deepEqual(
      Array.from(
        kv.computeBlockHashes(Uint32Array.from(v.tokens), v.kv_block_size, {
          loraName: v.lora_name,
          blockMmInfos: v.block_mm_infos?.map(mmInfo) ?? null,
        }),
      ),
      v.expected.map(BigInt),
    )
  })
}
// raw_hash (xxh3_64("test data", 1337)) is not reachable through the public API (9 bytes are not whole
// u32 tokens); the XXH3 suite checks it.

test(`[${impl}] computeBlockHashes argument errors name the argument`, (t) => {
  t.throws(() => kv.computeBlockHashes([1, -1], 1), { instanceOf: RangeError, message: /tokens\[1\]/ })
  t.throws(() => kv.computeBlockHashes([1, 2], 0), { instanceOf: RangeError, message: /kvBlockSize/ })
  t.throws(() => kv.computeBlockHashes([1, 2], 1, { loraName: 5 as unknown as string }), { instanceOf: TypeError, message: /loraName/ })
})

// ---------------------------------------------------------------------------------------------------
// router wire

for (const r of wire.router_events) {
  test(`[${impl}] RouterEvent ${r.name}: msgpack and JSON bytes, both ways`, (t) => {
    const fromMsgpack = kv.decodeRouterEvent(hex(r.router_event_msgpack_hex))
    const fromJson = kv.decodeRouterEvent(Buffer.from(r.router_event_json), 'json')
    t.deepEqual(fromMsgpack, fromJson)
    t.is(kv.encodeRouterEvent(fromMsgpack).toString('hex'), r.router_event_msgpack_hex)
    t.is(kv.encodeRouterEvent(fromJson, 'json').toString(), r.router_event_json)
    t.is(kv.encodeRouterEvent(fromJson, 'msgpack').toString('hex'), r.router_event_msgpack_hex)
  })
}

test(`[${impl}] decodeRouterEvent: any key order, unknown keys, wider integers; errors say "invalid router event"`, (t) => {
  const want = kv.decodeRouterEvent(hex(wire.router_events.find((r) => r.name === 'removed')!.router_event_msgpack_hex))
  const shuffled = mpEncode(
    { extra: [1, 2], event: { dp_rank: 0, data: { removed: { block_hashes: [100n, 101n] } }, event_id: 3n, x: null }, worker_id: 7n },
    { useBigInt64: true },
  )
  t.deepEqual(kv.decodeRouterEvent(shuffled), want)
  const json = ' {"event":{"dp_rank":0,"data":{"removed":{"block_hashes":[100,101]}},"event_id":3},"worker_id":7,"x":[{}]} '
  t.deepEqual(kv.decodeRouterEvent(Buffer.from(json), 'json'), want)
  const bad = [
    Buffer.from([0xc1]),
    Buffer.from([0x80, 0x00]),
    mpEncode({ worker_id: 7, event: { event_id: 1, data: 'stored', dp_rank: 0 } }),
    mpEncode({ worker_id: -7, event: { event_id: 1, data: 'cleared', dp_rank: 0 } }),
    mpEncode({ worker_id: 7, event: { event_id: 1.5, data: 'cleared', dp_rank: 0 } }),
  ]
  for (const b of bad) t.throws(() => kv.decodeRouterEvent(b), { message: /^invalid router event/ })
  for (const j of [
    '',
    '{',
    '{"worker_id":7.0,"event":{"event_id":1,"data":"cleared","dp_rank":0}}',
    '{"worker_id":-0,"event":{"event_id":1,"data":"cleared","dp_rank":0}}',
    '[1]',
  ]) {
    t.throws(() => kv.decodeRouterEvent(Buffer.from(j), 'json'), { message: /^invalid router event/ }, j)
  }
  t.deepEqual(
    kv.decodeRouterEvent(
      Buffer.from('{"worker_id":18446744073709551615,"event":{"event_id":9007199254740993,"data":"cleared","dp_rank":4294967295}}'),
      'json',
    ),
    {
      workerId: 18446744073709551615n,
      event: { eventId: 9007199254740993n, dpRank: 4294967295, data: { type: 'cleared' } },
    },
  )
})

for (const e of wire.envelopes) {
  test(`[${impl}] envelope ${e.name}`, (t) => {
    const got = kv.encodeEnvelope({
      publisherId: BigInt(e.publisher_id),
      sequence: BigInt(e.sequence),
      publishedAt: BigInt(e.published_at),
      topic: e.topic,
      payload: hex(e.payload_hex),
    })
    t.is(got.toString('hex'), e.envelope_msgpack_hex)
    // publishedAt may also be a number of ms
    t.is(
      kv
        .encodeEnvelope({
          publisherId: BigInt(e.publisher_id),
          sequence: BigInt(e.sequence),
          publishedAt: Number(e.published_at),
          topic: e.topic,
          payload: hex(e.payload_hex),
        })
        .toString('hex'),
      e.envelope_msgpack_hex,
    )
  })
}

test(`[${impl}] ActiveLoad bytes`, (t) => {
  const v = wire.active_load.value
  const got = kv.encodeActiveLoad({
    workerId: BigInt(v.worker_id),
    dpRank: v.dp_rank,
    activeDecodeBlocks: BigInt(v.active_decode_blocks),
    activePrefillTokens: v.active_prefill_tokens === null ? null : BigInt(v.active_prefill_tokens),
  })
  t.is(got.toString('hex'), wire.active_load.msgpack_hex)
  const envelope = wire.envelopes.find((e) => e.name === 'active_load_envelope')!
  t.is(envelope.payload_hex, wire.active_load.msgpack_hex)
})

for (const s of wire.jetstream_stream_names) {
  test(`[${impl}] jetstreamStreamName(${JSON.stringify(s.namespace)}, ${JSON.stringify(s.component)})`, (t) => {
    t.is(kv.jetstreamStreamName(s.namespace, s.component), s.stream)
  })
}

// ---------------------------------------------------------------------------------------------------
// Ingestor rules (SPEC 3)

/** An array-form engine batch: [ts, events, dpRank]. */
const batch = (events: unknown[], dpRank = 0): Uint8Array => mpEncode([1.5, events, dpRank], { useBigInt64: true })
const storedEv = (hashes: (number | bigint)[], tokens: number[], bs = 4, parent: number | bigint | null = null): unknown[] => [
  'BlockStored',
  hashes,
  parent,
  tokens,
  bs,
  null,
  'GPU',
  null,
]
const tokensFor = (blocks: number, bs = 4): number[] => Array.from({ length: blocks * bs }, (_, i) => i % 50_000)

test(`[${impl}] reset rule: with two ranks a clear lists the rank's live blocks ascending, 4096 per event`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 1, workerId: 9n })
  // rank 0: 5000 live blocks stored in descending order, 100 of them removed again
  const n = 5000
  const hs = Array.from({ length: n }, (_, i) => BigInt(n - i) * 1_000_003n + (i % 3 === 0 ? 1n << 63n : 0n))
  let r = ing.stored({ tokenIds: tokensFor(n, 1), blockHashes: hs, blockSize: 1 }, NOW)
  t.is(r.payloads.length, 5) // 1024 * 4 + 904
  r = ing.removed(hs.slice(0, 100), 0, NOW)
  t.is(r.payloads.length, 1)
  r = ing.stored({ tokenIds: [1, 2], blockHashes: [1n, 2n], blockSize: 1, dpRank: 1 }, NOW)
  t.is(r.firstEventId, 0n)
  // engine clear on rank 0, through ingest
  const before = ing.nextEventId(0)
  r = ing.ingest(batch([['AllBlocksCleared']], 0), NOW)
  const expectLive = sortU64(hs.slice(100))
  const evs = routerEvents(r, 'event-plane')
  t.deepEqual(
    evs.map((e) => e.event.data),
    [
      { type: 'removed', blockHashes: expectLive.slice(0, 4096) },
      { type: 'removed', blockHashes: expectLive.slice(4096) },
    ],
  )
  t.deepEqual(
    evs.map((e) => e.event.eventId),
    [before, before + 1n],
  )
  t.is(r.firstEventId, before)
  // nothing live any more: a second clear emits nothing and takes no id
  r = ing.cleared(0, NOW)
  t.is(r.payloads.length, 0)
  t.is(r.firstEventId, null)
  t.is(ing.nextEventId(0), before + 2n)
  // rank 1 was not touched
  r = ing.cleared(1, NOW)
  t.deepEqual(
    routerEvents(r, 'event-plane').map((e) => e.event.data),
    [{ type: 'removed', blockHashes: [1n, 2n] }],
  )
  const c = ing.counters()
  t.is(c.resets, 3n)
  t.is(c.emitted_cleared, 0n)
  t.is(c.blocks_removed, 100n + 4900n + 2n)
  t.is(c.emitted_removed, 1n + 2n + 1n)
})

test(`[${impl}] reset rule: a publisher that only saw one rank emits cleared, even with no live blocks`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, mode: 'jetstream' })
  let r = ing.cleared(0, NOW)
  t.deepEqual(routerEvents(r, 'jetstream'), [rev(7n, 0n, 0, { type: 'cleared' })])
  t.is(r.payloads[0]!.toString(), '{"worker_id":7,"event":{"event_id":0,"data":"cleared","dp_rank":0}}')
  ing.stored({ tokenIds: tokensFor(2), blockHashes: [5n, 6n] }, NOW)
  r = ing.ingest(batch([['AllBlocksCleared']], 0), NOW)
  t.deepEqual(routerEvents(r, 'jetstream'), [rev(7n, 2n, 0, { type: 'cleared' })])
  t.is(ing.counters().emitted_cleared, 2n)
  // configured ranks count even before they are seen: with dpRanks [0, 1] a clear of rank 0 is removes
  const two = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, dpRanks: [0, 1] })
  two.stored({ tokenIds: tokensFor(2), blockHashes: [6n, 5n] }, NOW)
  t.deepEqual(
    routerEvents(two.cleared(0, NOW), 'event-plane').map((e) => e.event.data),
    [{ type: 'removed', blockHashes: [5n, 6n] }],
  )
  t.is(two.cleared(0, NOW).payloads.length, 0)
})

test(`[${impl}] a store of more than 1024 blocks becomes chained events of at most 1024`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n })
  const n = 2500
  const hs = Array.from({ length: n }, (_, i) => 10_000 + i)
  const r = ing.ingest(batch([storedEv(hs, tokensFor(n), 4, 42)]), NOW)
  const evs = routerEvents(r, 'event-plane')
  t.is(evs.length, 3)
  const tokensHashes = kv.computeBlockHashes(tokensFor(n), 4)
  const sizes = [1024, 1024, 452]
  let at = 0
  for (const [k, e] of evs.entries()) {
    t.is(e.event.eventId, BigInt(k))
    const d = e.event.data
    if (d.type !== 'stored') {
      t.fail()
      continue
    }
    t.is(d.blocks.length, sizes[k]!)
    t.is(d.parentHash, k === 0 ? 42n : BigInt(hs[at - 1]!))
    d.blocks.forEach((b, i) => {
      t.is(b.blockHash, BigInt(hs[at + i]!))
      t.is(b.tokensHash, tokensHashes[at + i]!)
    })
    at += d.blocks.length
  }
  t.is(r.firstEventId, 0n)
  const c = ing.counters()
  t.is(c.emitted_stored, 3n)
  t.is(c.blocks_stored, 2500n)
  t.is(c.events_in, 1n)
  // a remove of more than 4096 hashes likewise, in order
  const rm = ing.ingest(batch([['BlockRemoved', Array.from({ length: 5000 }, (_, i) => 7 + i)]]), NOW)
  const rms = routerEvents(rm, 'event-plane').map((e) => e.event.data)
  t.deepEqual(rms, [
    { type: 'removed', blockHashes: Array.from({ length: 4096 }, (_, i) => BigInt(7 + i)) },
    { type: 'removed', blockHashes: Array.from({ length: 904 }, (_, i) => BigInt(7 + 4096 + i)) },
  ])
  t.is(rm.firstEventId, 3n)
})

test(`[${impl}] an ingest output larger than the shared scratch arrives whole`, (t) => {
  // 6000 blocks of 64-bit hashes: about 450 KB of envelopes, more than the API's 256 KiB scratch
  const n = 6000
  const ing = new kv.Ingestor({ kvBlockSize: 1, workerId: 0xfedcba9876543210n })
  const hs = Array.from({ length: n }, (_, i) => ((0x8000_0000_0000_0000n | BigInt(i)) * 3n) % (1n << 64n))
  const tokens = tokensFor(n, 1)
  const r = ing.ingest(batch([storedEv(hs, tokens, 1)]), NOW)
  t.is(r.payloads.length, 6)
  t.true(r.payloads.reduce((s, p) => s + p.length, 0) > 1 << 18)
  const blocks = routerEvents(r, 'event-plane').flatMap((e) => (e.event.data.type === 'stored' ? e.event.data.blocks : []))
  t.deepEqual(
    blocks.map((b) => b.blockHash),
    hs,
  )
  t.deepEqual(
    blocks.map((b) => b.tokensHash),
    Array.from(kv.computeBlockHashes(tokens, 1)),
  )
  t.deepEqual(
    r.payloads.map((p) => readEnvelope(p).sequence),
    [0n, 1n, 2n, 3n, 4n, 5n],
  )
  // and the next (small) call is whole too
  const next = ing.ingest(batch([['BlockRemoved', [hs[0]!]]]), NOW)
  t.deepEqual(
    routerEvents(next, 'event-plane').map((e) => e.event),
    [{ eventId: 6n, dpRank: 0, data: { type: 'removed', blockHashes: [hs[0]!] } }],
  )
})

test(`[${impl}] dp rank limit: a further rank is rejected dp_rank, per batch`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, maxDpRanks: 2 })
  const store = (h: number) => storedEv([h], tokensFor(1))
  t.is(ing.ingest(batch([store(1)], 0), NOW).payloads.length, 1)
  t.is(ing.ingest(batch([store(2)], 1), NOW).payloads.length, 1)
  const r = ing.ingest(batch([store(3), store(4)], 2), NOW)
  t.is(r.dpRank, 2)
  t.is(r.payloads.length, 0)
  t.deepEqual(r.rejected, rejectedRecord({ dp_rank: 1 }))
  t.is(ing.counters().rejected_dp_rank, 1n)
  t.is(ing.counters().events_in, 2n) // the rejected batch's events were not looked at
  t.is(ing.nextEventId(2), 0n)
  t.throws(() => ing.cleared(2, NOW), { instanceOf: RangeError, message: /dpRank 2/ })
  t.throws(() => ing.removed([1n], 5, NOW), { instanceOf: RangeError, message: /dpRank 5/ })
  // seen ranks stay allowed
  t.is(ing.ingest(batch([store(5)], 1), NOW).payloads.length, 1)
  // configured ranks: exactly these
  const only = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, dpRanks: [5] })
  t.deepEqual(only.ingest(batch([store(1)], 0), NOW).rejected, rejectedRecord({ dp_rank: 1 }))
  t.is(only.ingest(batch([store(1)], 5), NOW).payloads.length, 1)
  t.throws(() => only.stored({ tokenIds: tokensFor(1), blockHashes: [1n] }), { instanceOf: RangeError, message: /dpRank 0/ })
  t.true(only.allowsRank(5))
  t.false(only.allowsRank(0))
})

test(`[${impl}] nextEventId is a peek; ids are per rank and shared by ingest and the manual API`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n })
  t.is(ing.nextEventId(), 0n)
  t.is(ing.nextEventId(), 0n)
  t.is(ing.nextEventId(3), 0n)
  ing.ingest(batch([storedEv([1], tokensFor(1)), storedEv([2], tokensFor(1), 4, 1)], 0), NOW)
  t.is(ing.nextEventId(0), 2n)
  t.is(ing.nextEventId(0), 2n)
  const r = ing.removed([1n, 2n], 0, NOW)
  t.is(r.firstEventId, 2n)
  t.is(ing.nextEventId(0), 3n)
  t.is(ing.stored({ tokenIds: tokensFor(1), blockHashes: [9n], dpRank: 3 }, NOW).firstEventId, 0n)
  t.is(ing.nextEventId(3), 1n)
  // rejections take no id
  t.deepEqual(ing.removed([], 0, NOW).rejected, rejectedRecord({ empty: 1 }))
  t.deepEqual(ing.stored({ tokenIds: tokensFor(2), blockHashes: [4n, 4n] }, NOW).rejected, rejectedRecord({ self_reference: 1 }))
  t.deepEqual(
    ing.stored({ tokenIds: tokensFor(2), blockHashes: [4n, 5n], parentHash: 5n }, NOW).rejected,
    rejectedRecord({ self_reference: 1 }),
  )
  t.deepEqual(ing.stored({ tokenIds: tokensFor(2), blockHashes: [4n], blockSize: 16 }, NOW).rejected, rejectedRecord({ block_size: 1 }))
  t.deepEqual(ing.stored({ tokenIds: [1, 2, 3], blockHashes: [4n] }, NOW).rejected, rejectedRecord({ block_size: 1 }))
  t.is(ing.nextEventId(0), 3n)
})

test(`[${impl}] manual stored: LoRA, explicit mm infos, truncation warnings (at most 3)`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n })
  const mm: BlockExtraInfo = {
    mmObjects: [
      { mmHash: 2459565876494606882n, offsets: [[0, 4]] },
      { mmHash: 1229782938247303441n, offsets: [] },
    ],
  }
  const r = ing.stored(
    { tokenIds: [0, 1, 2, 3, 4, 5, 6, 7], blockHashes: [1n, 2n], loraName: 'adapter-a', blockMmInfos: [null, mm, null] },
    NOW,
  )
  const want = kv.computeBlockHashes([0, 1, 2, 3, 4, 5, 6, 7], 4, { loraName: 'adapter-a', blockMmInfos: [null, mm] })
  t.deepEqual(
    routerEvents(r, 'event-plane').map((e) => e.event.data),
    [
      {
        type: 'stored',
        parentHash: null,
        blocks: [
          { blockHash: 1n, tokensHash: want[0]!, mmExtraInfo: null },
          { blockHash: 2n, tokensHash: want[1]!, mmExtraInfo: mm },
        ],
      },
    ],
  )
  t.is(r.warnings, undefined)
  for (let k = 0; k < 4; k++) {
    const tr = ing.stored({ tokenIds: tokensFor(2), blockHashes: [10n + BigInt(k), 20n + BigInt(k), 30n + BigInt(k)], dpRank: 0 }, NOW)
    const data = routerEvents(tr, 'event-plane')[0]!.event.data
    t.is(data.type === 'stored' ? data.blocks.length : -1, 2)
    if (k < 3) t.deepEqual(tr.warnings, ['store truncated on dp rank 0: 8 token_ids cover 2 of 3 blocks of 4'])
    else t.is(tr.warnings, undefined)
  }
  t.is(ing.counters().truncated_stores, 4n)
})

test(`[${impl}] counters`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n })
  let bytes = 0n
  const add = (r: kv.IngestResult): void => {
    for (const p of r.payloads) bytes += BigInt(p.length)
  }
  add(ing.ingest(batch([storedEv([1, 2], tokensFor(2)), ['BlockRemoved', [1]], ['Nope'], ['BlockRemoved', []]]), NOW))
  add(ing.ingest(Buffer.from([0xc1]), NOW))
  add(ing.cleared(0, NOW))
  const c = ing.counters()
  t.deepEqual(Object.keys(c), [...kv.COUNTER_NAMES])
  t.like(c, {
    batches: 2n,
    events_in: 4n,
    emitted_stored: 1n,
    emitted_removed: 1n,
    emitted_cleared: 1n,
    blocks_stored: 2n,
    blocks_removed: 1n,
    truncated_stores: 0n,
    resets: 1n,
    payload_bytes: bytes,
    rejected_malformed: 1n,
    rejected_unknown_type: 1n,
    rejected_empty: 1n,
  })
})

test(`[${impl}] manual API and constructor argument errors name the argument`, (t) => {
  t.throws(() => new kv.Ingestor({ kvBlockSize: 0, workerId: 7n }), { instanceOf: RangeError, message: /kvBlockSize/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 7 as unknown as bigint }), { instanceOf: TypeError, message: /workerId/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: -1n }), { instanceOf: RangeError, message: /workerId/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, mode: 'x' as kv.IngestMode }), { instanceOf: RangeError, message: /mode/ })
  t.throws(() => new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, dpRanks: [1, 1] }), { instanceOf: RangeError, message: /dpRanks/ })
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n })
  t.throws(() => ing.stored({ tokenIds: [1, 2, 3, -4], blockHashes: [1n] }), { instanceOf: RangeError, message: /tokenIds\[3\]/ })
  t.throws(() => ing.stored({ tokenIds: [1, 2, 3, 4.5], blockHashes: [1n] }), { instanceOf: RangeError, message: /tokenIds\[3\]/ })
  t.throws(() => ing.stored({ tokenIds: 'abcd' as unknown as number[], blockHashes: [1n] }), { instanceOf: TypeError, message: /tokenIds/ })
  t.throws(() => ing.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [1] as unknown as bigint[] }), {
    instanceOf: TypeError,
    message: /blockHashes\[0\]/,
  })
  t.throws(() => ing.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [1n << 64n] }), { instanceOf: RangeError, message: /blockHashes\[0\]/ })
  t.throws(() => ing.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [1n], parentHash: 1 as unknown as bigint }), {
    instanceOf: TypeError,
    message: /parentHash/,
  })
  t.throws(() => ing.stored({ tokenIds: [1, 2, 3, 4], blockHashes: [1n], dpRank: -1 }), { instanceOf: RangeError, message: /dpRank/ })
  t.throws(() => ing.removed('x' as unknown as bigint[]), { instanceOf: TypeError, message: /blockHashes/ })
  t.throws(() => ing.cleared(1.5), { instanceOf: RangeError, message: /dpRank/ })
  t.throws(() => ing.nextEventId(-1), { instanceOf: RangeError, message: /dpRank/ })
  t.throws(() => ing.ingest('x' as unknown as Uint8Array), { instanceOf: TypeError, message: /payload/ })
  t.throws(() => ing.ingest(new Uint8Array(1), -1), { instanceOf: RangeError, message: /nowMs/ })
  // nothing above registered a rank or consumed an id
  t.is(ing.nextEventId(0), 0n)
})

test(`[${impl}] ingest and peekBatch never throw, and agree on what is malformed`, (t) => {
  // every fixture batch cut at every length, and with single bytes flipped
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 7n, maxDpRanks: 65536 })
  let n = 0
  for (const c of engine) {
    const full = hex(c.hex)
    const variants: Uint8Array[] = []
    for (let len = 0; len < full.length; len++) variants.push(full.subarray(0, len))
    for (let i = 0; i < full.length; i += 3) {
      const v = Buffer.from(full)
      v[i] = v[i]! ^ 0x5a
      variants.push(v)
    }
    for (const v of variants) {
      const peek = kv.peekBatch(v)
      const r = ing.ingest(v, NOW)
      if ((peek === null) !== (r.rejected.malformed === 1))
        t.fail(`${c.name}: peekBatch and ingest disagree on ${Buffer.from(v).toString('hex')}`)
      if (peek !== null && r.dpRank !== peek.dpRank) t.fail(`${c.name}: dp rank differs`)
      n++
    }
  }
  t.true(n > 1000)
})
