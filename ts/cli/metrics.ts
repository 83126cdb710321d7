// `publish --metrics-port`: Prometheus text on GET /metrics (prom-client): every publisher counter
// (registerPublisherMetrics: events, rejections, publishing, queue depth, the ZMQ source), the process's
// default metrics, and two latency histograms measured here:
//   dynamo_kv_ingest_seconds   an engine batch handed to the publisher until it is accepted (converted and
//                              queued; includes waiting while the queue is full)
//   dynamo_kv_publish_seconds  accepted until the server confirmed the batch's events (event plane: a flush
//                              answered; JetStream: acks), or they were counted undelivered
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { collectDefaultMetrics, Histogram, Registry } from 'prom-client'
import type { KvEventPublisher, PublisherStats } from '../worker/publisher.js'
import { registerPublisherMetrics } from '../worker/prometheus.js'

const BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/**
 * What the metrics read from a publisher: registerPublisherMetrics uses its labels and stats() only. The
 * command owns the ZMQ source (to time each batch), so its stats() adds the source's counters.
 */
export type MetricsSubject = Pick<KvEventPublisher, 'workerId' | 'namespace' | 'component'> & { stats(): PublisherStats }

/**
 * Times each engine batch through the publisher. `accepted(payloads)` is called as each batch is accepted
 * (sequentially: the source feeds one batch at a time); a batch is confirmed once the sink's settled
 * payloads (accepted so far minus queue depth) reach the running total at its acceptance. Checked every
 * few milliseconds while anything is outstanding, so the publish histogram has that resolution.
 */
export class LatencyTracker {
  readonly ingest: Histogram
  readonly publish: Histogram
  readonly #queueDepth: () => number
  /** Payloads accepted so far, and per outstanding batch: [running total at acceptance, accepted at]. */
  #accepted = 0
  #outstanding: [number, number][] = []
  #head = 0
  #timer: NodeJS.Timeout | null = null

  constructor(registry: Registry | null, queueDepth: () => number, prefix = 'dynamo_kv_') {
    const registers = registry ? [registry] : []
    this.ingest = new Histogram({
      name: `${prefix}ingest_seconds`,
      help: 'Engine batch handed to the publisher until accepted (converted and queued; includes waiting while the queue is full)',
      buckets: BUCKETS,
      registers,
    })
    this.publish = new Histogram({
      name: `${prefix}publish_seconds`,
      help: 'Engine batch accepted until the server confirmed its events (or they were counted undelivered); resolution about 2 ms',
      buckets: BUCKETS,
      registers,
    })
    this.#queueDepth = queueDepth
  }

  /**
   * Wraps one call that queues payloads (an ingest, or a rank reset with `engineBatch` false): times its
   * acceptance, then follows its payloads until they are settled.
   */
  async time<T extends { count: number } | null>(work: () => Promise<T>, engineBatch = true): Promise<T> {
    const t0 = performance.now()
    const result = await work()
    const t1 = performance.now()
    if (engineBatch) this.ingest.observe((t1 - t0) / 1000)
    const n = result?.count ?? 0
    if (n > 0) {
      this.#accepted += n
      this.#outstanding.push([this.#accepted, t1])
      this.#timer ??= setInterval(() => this.check(), 2)
    }
    return result
  }

  check(): void {
    const settled = this.#accepted - this.#queueDepth()
    const now = performance.now()
    while (this.#head < this.#outstanding.length && this.#outstanding[this.#head]![0] <= settled) {
      this.publish.observe((now - this.#outstanding[this.#head]![1]) / 1000)
      this.#head++
    }
    if (this.#head === this.#outstanding.length) {
      this.#outstanding = []
      this.#head = 0
      if (this.#timer) clearInterval(this.#timer)
      this.#timer = null
    }
  }

  stop(): void {
    this.check()
    if (this.#timer) clearInterval(this.#timer)
    this.#timer = null
  }
}

export interface MetricsServer {
  readonly registry: Registry
  /** The bound port (the real one when 0 was asked for). */
  readonly port: number
  close(): Promise<void>
}

/** Serves `registry` on http://host:port/metrics (and /healthz). Rejects when the port cannot be bound. */
export async function serveMetrics(registry: Registry, host: string, port: number): Promise<MetricsServer> {
  const server: Server = createServer((req, res) => {
    const url = (req.url ?? '/').split('?')[0]
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end()
      return
    }
    if (url === '/metrics') {
      registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(req.method === 'HEAD' ? undefined : text),
        (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(String(err)),
      )
    } else if (url === '/healthz') res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n')
    else res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n')
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
  return {
    registry,
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
      }),
  }
}

/** A registry with the process's default metrics and the publisher's counters. */
export function publisherRegistry(subject: MetricsSubject): Registry {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  registerPublisherMetrics(subject as KvEventPublisher, { registry })
  return registry
}
