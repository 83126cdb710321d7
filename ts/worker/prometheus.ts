// Prometheus metrics (prom-client) for publishers: every counter of stats(), read when the registry is
// scraped, labelled by worker, namespace and component, so several publishers can share one registry.
// Prometheus values are doubles: counts above 2^53 lose precision there, as they would in any exporter.
import { Counter, Gauge, register as globalRegistry, type Registry } from 'prom-client'
import type { KvEventPublisher } from './publisher.js'
import { ZMQ_SOURCE_COUNTERS } from '../transport/sources/zmq.js'

const ZMQ_GAUGES = new Set(['queue_depth', 'queue_bytes', 'held', 'replays_active'])
const LABELS = ['worker_id', 'namespace', 'component'] as const

interface Registered {
  publishers: Set<KvEventPublisher>
}

/** Per registry and prefix: the metrics exist once and read every publisher registered there. */
const byRegistry = new WeakMap<Registry, Map<string, Registered>>()

function labelsOf(p: KvEventPublisher) {
  return { worker_id: p.workerId.toString(), namespace: p.namespace, component: p.component }
}

/** The metrics, created once per registry; each collect() reads every publisher registered on it. */
function createMetrics(registry: Registry, prefix: string, state: Registered): void {
  const each = (f: (p: KvEventPublisher, s: ReturnType<KvEventPublisher['stats']>) => void) => {
    for (const p of state.publishers) f(p, p.stats())
  }
  const counter = (name: string, help: string, read: (s: ReturnType<KvEventPublisher['stats']>) => number | bigint) =>
    new Counter({
      name: `${prefix}${name}`,
      help,
      labelNames: LABELS,
      registers: [registry],
      collect() {
        this.reset()
        each((p, s) => this.inc(labelsOf(p), Number(read(s))))
      },
    })
  const byKey = (
    name: string,
    help: string,
    key: string,
    read: (s: ReturnType<KvEventPublisher['stats']>) => Record<string, bigint | number>,
  ) =>
    new Counter({
      name: `${prefix}${name}`,
      help,
      labelNames: [...LABELS, key],
      registers: [registry],
      collect() {
        this.reset()
        each((p, s) => {
          for (const [k, n] of Object.entries(read(s))) this.inc({ ...labelsOf(p), [key]: k }, Number(n))
        })
      },
    })
  byKey('events_emitted_total', 'Router events emitted, by type', 'type', (s) => s.emitted)
  byKey('events_rejected_total', 'Engine events (or batches: malformed, dp_rank) rejected, by reason', 'reason', (s) => s.rejected)
  counter('engine_batches_total', 'Engine batches ingested (ZMQ messages or ingest() calls)', (s) => s.ingest.batches)
  counter(
    'published_total',
    'Events the server confirmed: a flush answered after they were written (event plane), or a stream ack (JetStream)',
    (s) => s.sink.published,
  )
  counter(
    'publish_errors_total',
    'Publishes that failed and were not retried, or were still unconfirmed at close',
    (s) => s.sink.publishErrors,
  )
  counter(
    'undelivered_total',
    'Event-plane events accepted and never confirmed by the server (the sum over undelivered_by_reason_total)',
    (s) => s.sink.undelivered,
  )
  byKey(
    'undelivered_by_reason_total',
    'Event-plane undelivered events by reason: unconfirmed (written, the connection failed before the server confirmed them; may have arrived), dropped (never written: reconnect buffer full, or held at close), refused (the client refused the publish)',
    'reason',
    (s) => ({ ...s.sink.undeliveredByReason }),
  )
  byKey(
    'calls_rejected_total',
    'ingest()/publish calls rejected before acceptance: max_waiting (maxWaiting calls already waiting), close_timeout (still waiting when close() ran out of closeTimeoutMs)',
    'reason',
    (s) => ({ max_waiting: s.waitingRejected, close_timeout: s.droppedAtClose }),
  )
  counter('publish_retries_total', 'JetStream publishes retried with the same message id', (s) => s.sink.retries)
  counter('publish_duplicates_total', 'JetStream acks saying the stream already had the message', (s) => s.sink.duplicates)
  counter('republished_total', 'JetStream events re-published under new ids to repair an out-of-order landing', (s) => s.sink.republished)
  // dynamo-1.4 only (zero for dynamo-1.0): registration of the dp ranks in Dynamo's discovery store
  counter(
    'discovery_register_failures_total',
    'dynamo-1.4: dp-rank registrations in discovery that failed or timed out',
    (s) => s.discovery?.registerFailures ?? 0,
  )
  counter(
    'discovery_dropped_unregistered_total',
    'dynamo-1.4: events dropped because their dp rank could not register in discovery',
    (s) => s.discovery?.droppedUnregistered ?? 0,
  )
  new Gauge({
    name: `${prefix}discovery_held`,
    help: 'dynamo-1.4: events waiting for their dp rank to be registered in discovery (or for a first router to subscribe)',
    labelNames: LABELS,
    registers: [registry],
    collect() {
      this.reset()
      each((p, s) => this.set(labelsOf(p), s.discovery?.held ?? 0))
    },
  })
  new Gauge({
    name: `${prefix}discovery_ranks_registered`,
    help: 'dynamo-1.4: dp ranks whose records are written in discovery (their events flow to routers)',
    labelNames: LABELS,
    registers: [registry],
    collect() {
      this.reset()
      each((p, s) => this.set(labelsOf(p), s.discovery?.ranksRegistered ?? 0))
    },
  })
  new Gauge({
    name: `${prefix}calls_waiting`,
    help: 'ingest()/publish calls waiting to be accepted (bounded by maxWaiting)',
    labelNames: LABELS,
    registers: [registry],
    collect() {
      this.reset()
      each((p, s) => this.set(labelsOf(p), s.waiting))
    },
  })
  new Gauge({
    name: `${prefix}queue_depth`,
    help: 'Events accepted and not yet confirmed by the server',
    labelNames: LABELS,
    registers: [registry],
    collect() {
      this.reset()
      each((p, s) => this.set(labelsOf(p), s.sink.queueDepth))
    },
  })
  for (const name of ZMQ_SOURCE_COUNTERS) {
    const gauge = ZMQ_GAUGES.has(name)
    const config = {
      name: `${prefix}zmq_${name}${gauge ? '' : '_total'}`,
      help: `ZMQ source: ${name.replaceAll('_', ' ')}`,
      labelNames: LABELS,
      registers: [registry],
    }
    if (gauge)
      new Gauge({
        ...config,
        collect() {
          this.reset()
          each((p, s) => s.source && this.set(labelsOf(p), Number(s.source[name])))
        },
      })
    else
      new Counter({
        ...config,
        collect() {
          this.reset()
          each((p, s) => s.source && this.inc(labelsOf(p), Number(s.source[name])))
        },
      })
  }
}

/**
 * Exposes a publisher's counters on a prom-client registry (default: prom-client's global one, which
 * `register.metrics()` serves). Metric names start with `prefix` (default `dynamo_kv_`). Returns a
 * function that removes the publisher again (its series disappear at the next scrape).
 */
export function registerPublisherMetrics(publisher: KvEventPublisher, opts: { registry?: Registry; prefix?: string } = {}): () => void {
  const registry = opts.registry ?? globalRegistry
  const prefix = opts.prefix ?? 'dynamo_kv_'
  if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(prefix))
    throw new RangeError(`prefix must be a Prometheus metric name prefix, got ${JSON.stringify(prefix)}`)
  let prefixes = byRegistry.get(registry)
  if (!prefixes) {
    prefixes = new Map()
    byRegistry.set(registry, prefixes)
  }
  let state = prefixes.get(prefix)
  if (!state) {
    state = { publishers: new Set() }
    createMetrics(registry, prefix, state)
    prefixes.set(prefix, state)
  }
  state.publishers.add(publisher)
  const registered = state
  return () => void registered.publishers.delete(publisher)
}
