// A sidecar next to an inference engine: it reads the engine's KV-event stream over ZeroMQ and publishes
// Dynamo router events to NATS until it is told to stop. SIGINT or SIGTERM (Ctrl-C, `docker stop`,
// Kubernetes) closes the publisher, which publishes what it already accepted, and exits with status 0.
//
// Start vLLM with --kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq",
//   "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}', then:
//   NATS_SERVER=nats://127.0.0.1:4222 ENGINE_ENDPOINT=tcp://127.0.0.1:5557 ENGINE_REPLAY_ENDPOINT=tcp://127.0.0.1:5558 \
//     WORKER_ID=42 node examples/sidecar.mjs
import { KvEventPublisher } from 'dynamo-kv'

const publisher = await KvEventPublisher.create({
  namespace: process.env.DYN_NAMESPACE ?? 'dynamo',
  component: process.env.DYN_COMPONENT ?? 'backend',
  kvBlockSize: Number(process.env.KV_BLOCK_SIZE ?? 16),
  workerId: BigInt(process.env.WORKER_ID ?? 42),
  zmq: {
    endpoint: process.env.ENGINE_ENDPOINT ?? 'tcp://127.0.0.1:5557',
    replayEndpoint: process.env.ENGINE_REPLAY_ENDPOINT ?? 'tcp://127.0.0.1:5558',
  },
})
// The source retries on its own; it stops only after repeated receive errors. Then so does the sidecar.
publisher.source.on('stopped', (why) => {
  console.error('engine source stopped:', why)
  shutdown('source stopped', 1)
})

let stopping = false
async function shutdown(reason, status = 0) {
  if (stopping) return
  stopping = true
  await publisher.close() // stops the source, publishes what was accepted, closes the NATS connection
  const stats = publisher.stats()
  console.log(JSON.stringify({ stopped: reason, published: Number(stats.sink.published) }))
  process.exit(status)
}
process.once('SIGINT', () => shutdown('SIGINT'))
process.once('SIGTERM', () => shutdown('SIGTERM'))

console.log(JSON.stringify({ ready: true, subject: publisher.subject, workerId: String(publisher.workerId) }))
