// The pure-TypeScript implementation of the raw interface (ts/core/binding.ts), assembled from modules that
// mirror crates/core/src one for one (engine, convert, hash, wire, index, local, ingest, msgpack). It gives
// byte-identical output to the native core for the same inputs and clock.
import type { RawBinding } from '../core/binding.js'
import { decodeEngineBatch, REJECT_REASONS } from './convert.js'
import { eventChannelRecord, eventSourceRecord } from './discovery.js'
import { peekBatch } from './engine.js'
import { computeBlockHashes } from './hash.js'
import { APPLY_OUTCOMES, FallbackRadixIndex, INDEX_COUNTER_NAMES } from './index.js'
import { COUNTER_NAMES, FallbackIngestor } from './ingest.js'
import { FallbackLocalIndexer } from './local.js'
import { FallbackRankGate, selectBest } from './select.js'
import { ByteWriter } from './msgpack.js'
import { scanQueryBody } from './query.js'
import {
  decodeEncodedList,
  decodeRouterEvent,
  ENCODED_FORMATS,
  endpointSubject,
  endpointSubjectPrefix,
  STORAGE_TIERS,
  writeActiveLoad14,
  writeRouterEvents,
  writeRouterEventValue,
  jetstreamStreamName,
  jetstreamSubject,
  KV_EVENTS_TOPIC,
  KV_METRICS_TOPIC,
  kvEventsSubject,
  kvMetricsSubject,
  writeActiveLoad,
  writeEnvelope,
} from './wire.js'

const scratch = new ByteWriter(1 << 14)

export const fallback: RawBinding = {
  computeBlockHashes,
  decodeEngineBatch,
  peekBatch,
  encodeRouterEvent(ev, json) {
    scratch.reset()
    writeRouterEventValue(scratch, json, ev)
    return scratch.toBuffer()
  },
  encodeRouterEvents(evs, json) {
    scratch.reset()
    writeRouterEvents(scratch, json, evs)
    return scratch.toBuffer()
  },
  decodeRouterEvent,
  decodeRouterEvents: decodeEncodedList,
  encodeEnvelope(publisherId, sequence, publishedAt, topic, payload) {
    scratch.reset()
    writeEnvelope(scratch, publisherId, sequence, publishedAt, topic, payload)
    return scratch.toBuffer()
  },
  encodeActiveLoad(workerId, dpRank, activeDecodeBlocks, activePrefillTokens) {
    scratch.reset()
    writeActiveLoad(scratch, workerId, dpRank, activeDecodeBlocks, activePrefillTokens)
    return scratch.toBuffer()
  },
  encodeActiveLoad14(workerId, dpRank, activeDecodeBlocks, activePrefillTokens, kvUsedBlocks) {
    scratch.reset()
    writeActiveLoad14(scratch, workerId, dpRank, activeDecodeBlocks, activePrefillTokens, kvUsedBlocks)
    return scratch.toBuffer()
  },
  endpointSubject,
  endpointSubjectPrefix,
  jetstreamStreamName,
  kvEventsSubject,
  kvMetricsSubject,
  jetstreamSubject,
  names() {
    return {
      kvEventsTopic: KV_EVENTS_TOPIC,
      kvMetricsTopic: KV_METRICS_TOPIC,
      rejectReasons: [...REJECT_REASONS],
      counterNames: [...COUNTER_NAMES],
      indexCounterNames: [...INDEX_COUNTER_NAMES],
      applyOutcomes: [...APPLY_OUTCOMES],
      encodedFormats: [...ENCODED_FORMATS],
      storageTiers: [...STORAGE_TIERS],
    }
  },
  eventSourceRecord,
  eventChannelRecord,
  scanQueryBody,
  RawIngestor: FallbackIngestor,
  RawRadixIndex: FallbackRadixIndex,
  RawLocalIndexer: FallbackLocalIndexer,
  selectBest,
  RawRankGate: FallbackRankGate,
}
