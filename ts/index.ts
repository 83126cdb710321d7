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
  IndexChangedError,
  ReplyChunks,
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
export {
  KvEventPublisher,
  type KvEventPublisherOptions,
  type PublisherStats,
  type DynamoWire,
  type EventChannelInfo,
} from './worker/publisher.js'
export { WorkerMetricsPublisher, type WorkerMetricsPublisherOptions, type MetricsPublisherStats } from './worker/metrics-publisher.js'
export { registerPublisherMetrics } from './worker/prometheus.js'

// Transports: the NATS connection, the sinks' statistics, the engine's ZeroMQ source.
export { NatsConnectError, type NatsOptions, type NatsOption } from './transport/nats.js'
export type { SinkStats, UndeliveredByReason } from './transport/sinks/types.js'
export type { Env } from './util/env.js'

// The Dynamo 1.4+ wire's transport configuration and discovery (SPEC 5b): its errors, the discovery
// options (Dynamo's variables as defaults) and what the publishers report about their ranks.
export { ConfigError, type EventPlaneKind, WORKER_ID_ENV } from './transport/dynamo14-config.js'
export { DiscoveryConfigError, DiscoveryError, type DiscoveryOptions } from './transport/discovery/index.js'
export type { DiscoveryStats } from './transport/sinks/dynamo14.js'
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

// The router side: following the workers' events into one index and choosing a worker per request;
// and the workers' recovery endpoint it asks after a gap (SPEC 7, 10).
export {
  KvRouter,
  type KvRouterOptions,
  type KvRouterStats,
  type RouterSource,
  type EventPlaneSource,
  type EnginesSource,
  type JetStreamSource,
  type Dynamo14Source,
  type ManualSource,
  type RouterEngine,
  type RouteDecision,
  type FindBestWorkerOptions,
  type RecoveryOutcome,
} from './router/router.js'
export type { Dynamo14Stats } from './router/dynamo14-source.js'
export type { TierMatch } from './router/tiers.js'
export {
  defaultSelector,
  defaultCost,
  type RouteCandidate,
  type RouteRequest,
  type WorkerSelector,
  type DefaultSelectorOptions,
} from './router/selector.js'
export { RecoveryEndpoint, type RecoveryEndpointOptions, type RecoveryEndpointStats } from './router/recovery-endpoint.js'
export type { EventKind } from './router/wire.js'

// The standalone indexer service: Dynamo 1.6's HTTP API (`dynamo-kv indexer`) over KvRouter (SPEC 11).
export {
  IndexerService,
  HttpError as IndexerHttpError,
  type IndexerServiceOptions,
  type IndexerReply,
  type RegisterRequest as IndexerRegisterRequest,
} from './indexer/service.js'
