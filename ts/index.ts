// dynamo-kv: NVIDIA Dynamo KV-aware routing for TypeScript. See README.md.
export * from './api.js'
export { KvEventPublisher, type KvEventPublisherOptions, type PublisherStats } from './publisher.js'
export { NatsConnectError, type NatsOptions, type NatsOption } from './nats.js'
export type { Logger } from './log.js'
export type { SinkStats } from './sinks/types.js'
export { WorkerMetricsPublisher, type WorkerMetricsPublisherOptions, type MetricsPublisherStats } from './metrics-publisher.js'
