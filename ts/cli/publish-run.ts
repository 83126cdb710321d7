// `dynamo-kv publish`, running: a ZMQ source feeding a KvEventPublisher until SIGINT/SIGTERM, then stop
// reading, publish what was accepted, close, exit 0. Loaded only when the command runs, so `--help` and
// usage errors load neither the core nor the sockets.
import type { Command } from 'commander'
import { ZmqSource } from '../transport/sources/zmq.js'
import { KvEventPublisher, type KvEventPublisherOptions } from '../worker/publisher.js'
import { configuring, EXIT_FAILURE, EXIT_OK, flagValue, fromCli, loggerFrom, untilSignal, UsageError } from './common.js'
import { LatencyTracker, publisherRegistry, serveMetrics, type MetricsServer, type MetricsSubject } from './metrics.js'
import { NATS_FLAGS, natsOptions, type PublishFlags, WIRE14_FLAGS, zmqOptions } from './publish.js'
import { EngineWatchdog } from './watchdog.js'
import { wireOptions } from './wire.js'

export async function run(cmd: Command): Promise<number> {
  const o = cmd.opts<PublishFlags>()
  const log = loggerFrom(o, 'publish')
  const bind = flagValue(cmd, 'bind', 'DYNAMO_KV_BIND')
  const zmq = zmqOptions(o, bind)
  if (o.blockSize === undefined)
    throw new UsageError("--block-size (or DYNAMO_KV_BLOCK_SIZE) is required: the engine's tokens per KV block (vLLM's --block-size)")
  if (o.wire === 'dynamo-1.0') {
    const only14 = WIRE14_FLAGS.filter(([key]) => fromCli(cmd, key)).map(([, flag]) => flag)
    if (only14.length > 0) throw new UsageError(`${only14.join(', ')}: for --wire dynamo-1.4 only`)
  }
  if (o.mode !== 'jetstream' && fromCli(cmd, 'streamMaxAge')) throw new UsageError('--stream-max-age applies to --mode jetstream only')
  // Dynamo's own variables (DYN_*, ETCD_ENDPOINTS) are read by the library; only flags are passed on
  const cli = <K extends keyof PublishFlags>(key: K) => (fromCli(cmd, key) ? o[key] : undefined)
  const wire = wireOptions(
    o.wire,
    o.mode,
    natsOptions(cmd, o),
    NATS_FLAGS.some((k) => fromCli(cmd, k)),
    {
      endpoint: o.endpoint,
      eventPlane: o.eventPlane,
      eventPlaneHost: cli('eventPlaneHost'),
      zmqBindHost: o.zmqBindHost,
      zmqPort: o.zmqPort,
      zmqSettleMs: o.zmqSettle,
      discovery: {
        backend: cli('discoveryBackend'),
        etcdEndpoints: cli('etcdEndpoints')
          ?.split(',')
          .map((s) => s.trim()),
        fileRoot: cli('discoveryDir'),
      },
    },
  )
  const options: KvEventPublisherOptions = {
    namespace: o.namespace,
    component: o.component,
    kvBlockSize: o.blockSize,
    mode: o.mode,
    logger: log,
    closeTimeoutMs: o.closeTimeout,
    ...(o.workerId !== undefined ? { workerId: o.workerId } : {}),
    ...(o.maxPending !== undefined ? { maxPending: o.maxPending } : {}),
    ...(o.streamMaxAge !== undefined && fromCli(cmd, 'streamMaxAge') ? { jetstream: { maxAgeSeconds: o.streamMaxAge } } : {}),
    ...wire,
  }

  const publisher = await configuring(o.wire === 'dynamo-1.0' ? 'NATS publisher' : 'dynamo-1.4 publisher', () =>
    KvEventPublisher.create(options),
  )
  const tracker = new LatencyTracker(null, () => publisher.stats().sink.queueDepth)
  let source: ZmqSource
  try {
    source = await configuring(
      `engine endpoint ${(o.engineEndpoint ?? []).join(', ')}`,
      () =>
        ZmqSource.create(
          { ...zmq, logger: log },
          {
            ingest: (payload) => tracker.time(() => publisher.ingest(payload)),
            // a rank outside the allowed ones had every batch rejected (dp_rank): there is nothing to reset
            resetRank: (dpRank) =>
              tracker.time(
                () => publisher.publishCleared(dpRank).catch((err: unknown) => (err instanceof RangeError ? null : Promise.reject(err))),
                false,
              ),
          },
        ),
      true,
    )
  } catch (err) {
    await publisher.close()
    throw err
  }

  const subject: MetricsSubject = {
    workerId: publisher.workerId,
    namespace: publisher.namespace,
    component: publisher.component,
    stats: () => ({ ...publisher.stats(), source: source.stats() }),
  }
  let metrics: MetricsServer | null = null
  if (o.metricsPort !== undefined) {
    const registry = publisherRegistry(subject)
    registry.registerMetric(tracker.ingest)
    registry.registerMetric(tracker.publish)
    try {
      metrics = await serveMetrics(registry, o.metricsHost, o.metricsPort)
    } catch (err) {
      await source.close()
      await publisher.close()
      throw new UsageError(`--metrics-port ${o.metricsPort}: cannot listen on ${o.metricsHost}: ${(err as Error).message}`)
    }
    log.info({ url: `http://${o.metricsHost}:${metrics.port}/metrics`, port: metrics.port }, 'serving Prometheus metrics')
  }

  const signals = untilSignal(log)
  let status = EXIT_OK
  source.on('stopped', (why) => {
    if (why.reason === 'closed') return
    status = EXIT_FAILURE
    signals.stop(`engine source stopped (${why.reason})`)
  })
  const watchdog = new EngineWatchdog({
    received: () => source.stats().received,
    endpoints: () => source.endpoints,
    silenceMs: o.engineSilence * 1000,
    logger: log,
  })
  log.info(
    { workerId: publisher.workerId.toString(), subject: publisher.subject, engine: source.endpoints, wire: o.wire, mode: o.mode },
    'publishing: stop with SIGINT or SIGTERM',
  )

  const why = await signals.stopped
  log.info({ why }, 'stopping: no more engine messages are read; publishing what was accepted')
  watchdog.stop()
  await source.close()
  await publisher.close()
  tracker.stop()
  await metrics?.close()
  signals.dispose()
  const s = publisher.stats()
  const src = source.stats()
  log.info(
    {
      batches: s.ingest.batches.toString(),
      events: (s.emitted.stored + s.emitted.removed + s.emitted.cleared).toString(),
      rejected: Object.values(s.rejected)
        .reduce((a, b) => a + b, 0n)
        .toString(),
      published: s.sink.published,
      undelivered: s.sink.undelivered,
      publishErrors: s.sink.publishErrors,
      gaps: src.gaps.toString(),
      recovered: src.recovered.toString(),
      lost: src.lost.toString(),
    },
    'stopped',
  )
  return status
}
