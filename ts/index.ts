// dynamo-kv: NVIDIA Dynamo KV-aware routing for TypeScript. The public API; see README.md.
// Internals live behind subpaths: `dynamo-kv/raw` (the raw interface both implementations provide) and
// `dynamo-kv/sim` (a simulated engine, for demos, tests and benchmarks).

// The core: decoding, hashing, router-wire encoding, the Ingestor and the indexes (ts/core/api.ts).
export {
  implementation,
  nativeLoadError,
  REJECT_REASONS,
  COUNTER_NAMES,
  APPLY_OUTCOMES,
  INDEX_COUNTER_NAMES,
  KvDecodeError,
  RouterEventError,
  type RouterEventErrorReason,
  computeBlockHashes,
  decodeEngineBatch,
  peekBatch,
  encodeRouterEvent,
  encodeRouterEvents,
  decodeRouterEvent,
  decodeRouterEvents,
  endpointSubject,
  endpointSubjectPrefix,
  STORAGE_TIERS,
  encodeEnvelope,
  encodeActiveLoad,
  jetstreamStreamName,
  Ingestor,
  RadixIndex,
  LocalIndexer,
  type ApplyOutcome,
  type IndexCounterName,
  type BlockExtraInfo,
  type BlockHashOptions,
  type ConvertedEvent,
  type CounterName,
  type MmObject,
  type RejectReason,
  type RouterEventValue,
  type StoredBlock,
  type DecodedBatch,
  type IngestMode,
  type WireProfile,
  type StorageTier,
  type ResidencyDomain,
  type IngestorOptions,
  type StoredArgs,
  type IngestResult,
  type WorkerScore,
  type WorkerTreeSize,
  type OverlapScores,
  type RangeResult,
} from './core/api.js'
export { silentLogger, type Logger } from './util/log.js'

// The worker side: publishing router events and load metrics.
export { KvEventPublisher, type KvEventPublisherOptions, type PublisherStats } from './worker/publisher.js'
export { WorkerMetricsPublisher, type WorkerMetricsPublisherOptions, type MetricsPublisherStats } from './worker/metrics-publisher.js'
export { registerPublisherMetrics } from './worker/prometheus.js'

// Transports: the NATS connection, the sinks' statistics, the engine's ZeroMQ source.
export { NatsConnectError, type NatsOptions, type NatsOption } from './transport/nats.js'
export type { SinkStats } from './transport/sinks/types.js'
export {
  ZmqSource,
  ZMQ_SOURCE_COUNTERS,
  type BatchConsumer,
  type ZmqEndpoint,
  type ZmqSourceOptions,
  type ZmqSourceCounter,
  type ZmqSourceStop,
  type ZmqSourceEvents,
  type ZmqTrackerState,
} from './transport/sources/zmq.js'
