// The shared fixtures (copied unchanged from the project's reference set into __test__/fixtures/) and
// readers for them: the JSON shapes, conversions to the public API's values, and an independent
// envelope decoder.
import { decode as mpDecode } from '@msgpack/msgpack'
import { readFileSync } from 'node:fs'
import * as kv from '../../ts/index.js'
import type { BlockExtraInfo, ConvertedEvent, RejectReason, RouterEventValue } from '../../ts/index.js'

export const fixture = <T>(name: string): T => JSON.parse(readFileSync(new URL(`../fixtures/${name}`, import.meta.url), 'utf8')) as T

// ---------------------------------------------------------------------------------------------------
// fixture shapes and conversions

export interface JsonMm {
  mm_objects: { mm_hash: string; offsets: [number, number][] }[]
}
export type JsonEvent =
  | { type: 'stored'; parent_hash: string | null; blocks: { block_hash: string; tokens_hash: string; mm_extra_info: JsonMm | null }[] }
  | { type: 'removed'; block_hashes: string[] }
  | { type: 'cleared' }
export interface EngineCase {
  name: string
  note: string
  kv_block_size: number
  hex: string
  expect: { error: 'malformed' } | { dp_rank: number; events: JsonEvent[]; rejected: Partial<Record<RejectReason, number>> }
}

export const engine = fixture<{ cases: EngineCase[] }>('engine-batches.json').cases
export const hashes = fixture<{
  raw_hash: { input_utf8: string; seed: number; xxh3_64: string }
  vectors: {
    name: string
    tokens: number[]
    kv_block_size: number
    lora_name: string | null
    block_mm_infos: (JsonMm | null)[] | null
    expected: string[]
  }[]
}>('block-hashes.json')
export const wire = fixture<{
  router_events: { name: string; router_event_json: string; router_event_msgpack_hex: string }[]
  envelopes: {
    name: string
    publisher_id: string
    sequence: string
    published_at: string
    topic: string
    payload_hex: string
    envelope_msgpack_hex: string
  }[]
  active_load: {
    value: { worker_id: string; dp_rank: number; active_decode_blocks: string; active_prefill_tokens: string | null }
    msgpack_hex: string
  }
  jetstream_stream_names: { namespace: string; component: string; stream: string }[]
}>('router-wire.json')

export const mmInfo = (m: JsonMm | null): BlockExtraInfo | null =>
  m === null ? null : { mmObjects: m.mm_objects.map((o) => ({ mmHash: BigInt(o.mm_hash), offsets: o.offsets })) }

export function toEvent(e: JsonEvent): ConvertedEvent {
  switch (e.type) {
    case 'stored':
      return {
        type: 'stored',
        parentHash: e.parent_hash === null ? null : BigInt(e.parent_hash),
        blocks: e.blocks.map((b) => ({
          blockHash: BigInt(b.block_hash),
          tokensHash: BigInt(b.tokens_hash),
          mmExtraInfo: mmInfo(b.mm_extra_info),
        })),
      }
    case 'removed':
      return { type: 'removed', blockHashes: e.block_hashes.map(BigInt) }
    case 'cleared':
      return { type: 'cleared' }
  }
}

export function rejectedRecord(partial: Partial<Record<RejectReason, number>>): Record<RejectReason, number> {
  const out = {} as Record<RejectReason, number>
  for (const r of kv.REJECT_REASONS) out[r] = partial[r] ?? 0
  return out
}

export const hex = (s: string): Buffer => Buffer.from(s, 'hex')
export const NOW = 1_700_000_000_000

export interface Envelope {
  publisherId: bigint
  sequence: bigint
  publishedAt: bigint
  topic: string
  payload: Uint8Array
}

/** Reads an event-plane envelope with an independent decoder. */
export function readEnvelope(bytes: Uint8Array): Envelope {
  const m = mpDecode(bytes, { useBigInt64: true }) as Record<string, unknown>
  return {
    publisherId: BigInt(m.publisher_id as number | bigint),
    sequence: BigInt(m.sequence as number | bigint),
    publishedAt: BigInt(m.published_at as number | bigint),
    topic: m.topic as string,
    payload: m.payload as Uint8Array,
  }
}

/** The RouterEvents of an ingest result, in either mode (envelopes checked for shape on the way). */
export function routerEvents(res: kv.IngestResult, mode: kv.IngestMode): RouterEventValue[] {
  return res.payloads.map((p) => (mode === 'jetstream' ? kv.decodeRouterEvent(p, 'json') : kv.decodeRouterEvent(readEnvelope(p).payload)))
}

export const rev = (workerId: bigint, eventId: bigint, dpRank: number, data: ConvertedEvent): RouterEventValue => ({
  workerId,
  event: { eventId, dpRank, data },
})

export const sortU64 = (xs: Iterable<bigint>): bigint[] => [...xs].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0))
