// dynamo-kv: NVIDIA Dynamo KV-aware routing for TypeScript. See README.md.
export * from './api.js'
export { KvEventPublisher, type KvEventPublisherOptions, type PublisherStats } from './publisher.js'
export { NatsConnectError, type NatsOptions, type NatsOption } from './nats.js'
export { silentLogger, type Logger } from './log.js'
export type { SinkStats } from './sinks/types.js'
export { WorkerMetricsPublisher, type WorkerMetricsPublisherOptions, type MetricsPublisherStats } from './metrics-publisher.js'

// --- ZeroMQ engine source and engine simulator (issue 5) ---
export {
  ZmqSource,
  ZMQ_SOURCE_COUNTERS,
  RECEIVE_BACKOFF_MS,
  type BatchConsumer,
  type ZmqEndpoint,
  type ZmqSourceOptions,
  type ZmqSourceCounter,
  type ZmqSourceStop,
  type ZmqSourceEvents,
  type ZmqTrackerState,
} from './sources/zmq.js'
export {
  EngineSimulator,
  type EngineSimulatorOptions,
  type StepResult,
  type ReplayLayout,
  type EventEncoding,
  type MalformedKind,
} from './sim/engine.js'
export { registerPublisherMetrics } from './prometheus.js'
