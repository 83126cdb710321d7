// The pure-TypeScript implementation of the raw interface (ts/core/binding.ts), assembled from modules that
// mirror crates/core/src one for one (engine, convert, hash, wire, index, local, ingest, msgpack). It gives
// byte-identical output to the native core for the same inputs and clock.
import type { RawBinding } from '../core/binding.js'
import { decodeEngineBatch } from './convert.js'
import { peekBatch } from './engine.js'
import { computeBlockHashes } from './hash.js'
import { FallbackRadixIndex } from './index.js'
import { FallbackIngestor } from './ingest.js'
import { FallbackLocalIndexer } from './local.js'
import { ByteWriter } from './msgpack.js'
import {
  decodeRouterEvent,
  jetstreamStreamName,
  jsonEncoder,
  msgpackEncoder,
  writeActiveLoad,
  writeEnvelope,
  writeRouterEvent,
} from './wire.js'

const scratch = new ByteWriter(1 << 14)

export const fallback: RawBinding = {
  computeBlockHashes,
  decodeEngineBatch,
  peekBatch,
  encodeRouterEvent(ev, json) {
    scratch.reset()
    writeRouterEvent(scratch, json ? jsonEncoder : msgpackEncoder, ev)
    return scratch.toBuffer()
  },
  decodeRouterEvent,
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
  jetstreamStreamName,
  RawIngestor: FallbackIngestor,
  RawRadixIndex: FallbackRadixIndex,
  RawLocalIndexer: FallbackLocalIndexer,
}
