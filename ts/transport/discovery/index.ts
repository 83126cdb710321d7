// Dynamo 1.4+ discovery for a publisher (SPEC 5b, "Discovery"): which records it advertises, and the
// backend that writes them. A publisher calls, once per (worker_id, dp_rank) incarnation:
//
//   const discovery = await openDiscovery(options)                  // Dynamo's env vars as defaults
//   await discovery.register(publisherRecords({ ...endpoint, workerId, dpRank, publisherId, zmqEndpoint }))
//   ... publish events ...
//   await discovery.close()                                         // records removed
import { randomBytes } from 'node:crypto'
import { raw } from '../../core/native.js'
import type { DiscoveryBackend, DiscoveryErrorHandler, DiscoveryRecordBytes } from './backend.js'
import { type DiscoveryOptions, parseU64, resolveDiscoveryConfig, DiscoveryConfigError } from './config.js'
import { FileDiscovery } from './file.js'

export type { DiscoveryBackend, DiscoveryErrorHandler, DiscoveryRecordBytes } from './backend.js'
export { DiscoveryError } from './backend.js'
export {
  DEFAULT_ETCD_CONNECT_TIMEOUT_S,
  DEFAULT_ETCD_ENDPOINT,
  DEFAULT_ETCD_LEASE_TTL_S,
  DEFAULT_FILE_TTL_MS,
  DiscoveryConfigError,
  type DiscoveryOptions,
  parseU64,
  type ResolvedDiscoveryConfig,
  resolveDiscoveryConfig,
} from './config.js'
// etcd3 (and its gRPC stack) loads only when the etcd backend is opened.
export type { EtcdDiscovery } from './etcd.js'
export { FileDiscovery } from './file.js'

/** The largest publisher id the core accepts: a router reads it as a JSON number (2^53-1). */
const MAX_PUBLISHER_ID = (1n << 53n) - 1n

/** A fresh publisher id for one incarnation: uniform in 1..=2^53-1 (a router reads it as a JSON number). */
export function randomPublisherId(): bigint {
  for (;;) {
    const id = randomBytes(8).readBigUInt64BE() & MAX_PUBLISHER_ID
    if (id !== 0n) return id
  }
}

export interface PublisherRecordsOptions {
  namespace: string
  component: string
  /** The serving endpoint the worker's KV state belongs to (e.g. `generate`). */
  endpoint: string
  /** u64: the serving endpoint's instance id, as a bigint or a decimal string. */
  workerId: bigint | string
  dpRank: number
  /** u64 in 1..=2^53-1, as a bigint or a decimal string; see randomPublisherId(). */
  publisherId: bigint | string
  /** The bound ZeroMQ PUB endpoint, advertised as the `kv-events` EventChannel; null: no channel record. */
  zmqEndpoint?: string | null
  /** Advertise the NATS event plane as the `kv-events` EventChannel (DYN_EVENT_PLANE=nats) instead. */
  natsEventPlane?: boolean
}

/**
 * The records of one publisher: its EventSource, and the EventChannel of its event plane when one is given.
 * Throws DiscoveryConfigError naming the bad option.
 */
export function publisherRecords(o: PublisherRecordsOptions): DiscoveryRecordBytes[] {
  const workerId = parseU64(o.workerId, 'workerId')
  const publisherId = parseU64(o.publisherId, 'publisherId')
  if (!Number.isInteger(o.dpRank) || o.dpRank < 0 || o.dpRank > 0xffffffff) {
    throw new DiscoveryConfigError(`dpRank must be a u32, got ${JSON.stringify(o.dpRank)}`)
  }
  if (o.zmqEndpoint != null && o.natsEventPlane) {
    throw new DiscoveryConfigError('zmqEndpoint and natsEventPlane exclude each other: a publisher has one event plane')
  }
  const endpoint = { namespace: o.namespace, component: o.component, name: o.endpoint }
  const build = <T>(f: () => T): T => {
    try {
      return f()
    } catch (err) {
      throw new DiscoveryConfigError((err as Error).message)
    }
  }
  const records: DiscoveryRecordBytes[] = [build(() => raw.eventSourceRecord({ endpoint, workerId, dpRank: o.dpRank, publisherId }))]
  if (o.zmqEndpoint != null || o.natsEventPlane) {
    records.push(build(() => raw.eventChannelRecord({ endpoint, topic: 'kv-events', publisherId, zmqEndpoint: o.zmqEndpoint ?? null })))
  }
  return records
}

export interface ChannelRecordOptions {
  namespace: string
  component: string
  /** The serving endpoint the channel is scoped to (e.g. `generate`). */
  endpoint: string
  /** The channel's topic, e.g. `kv_metrics`. */
  topic: string
  /** u64 in 1..=2^53-1: the channel's publisher id (its records' instance id). */
  publisherId: bigint | string
  /** The bound ZeroMQ PUB endpoint; null: the NATS event plane. */
  zmqEndpoint: string | null
}

/** The EventChannel record of a publisher on another topic than `kv-events` (no EventSource: e.g. `kv_metrics`). */
export function channelRecord(o: ChannelRecordOptions): DiscoveryRecordBytes {
  const publisherId = parseU64(o.publisherId, 'publisherId')
  try {
    return raw.eventChannelRecord({
      endpoint: { namespace: o.namespace, component: o.component, name: o.endpoint },
      topic: o.topic,
      publisherId,
      zmqEndpoint: o.zmqEndpoint,
    })
  } catch (err) {
    throw new DiscoveryConfigError((err as Error).message)
  }
}

export interface OpenDiscoveryOptions extends DiscoveryOptions {
  /** Errors after start-up (a lost etcd lease, a failed file touch). Default: ignored. */
  onError?: DiscoveryErrorHandler
  /** Called once when etcd has stayed unreachable for 3 s and start-up keeps retrying (etcd backend only). */
  onRetry?: (message: string) => void
}

/** Resolves the configuration (options, else Dynamo's environment variables) and opens the backend. */
export async function openDiscovery(options: OpenDiscoveryOptions = {}, env: NodeJS.ProcessEnv = process.env): Promise<DiscoveryBackend> {
  const config = resolveDiscoveryConfig(options, env)
  if (config.backend === 'etcd') {
    const { EtcdDiscovery } = await import('./etcd.js')
    return EtcdDiscovery.open({
      endpoints: config.endpoints,
      leaseTtlSeconds: config.leaseTtlSeconds,
      connectTimeoutMs: config.connectTimeoutMs,
      onError: options.onError,
      onRetry: options.onRetry,
    })
  }
  return FileDiscovery.open({ root: config.root, ttlMs: config.ttlMs, onError: options.onError })
}
