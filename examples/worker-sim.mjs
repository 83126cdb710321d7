// A worker publishing its engine's KV-cache events to NATS, with the engine simulator (dynamo-kv/sim) as
// the engine: the simulator publishes over ZeroMQ as vLLM does (PUB + ROUTER replay), and the publisher
// reads that stream, converts each batch into Dynamo router events and publishes them on the event plane.
// With a real engine, point `zmq.endpoint` at the engine's `--kv-events-config` endpoint instead.
//
//   NATS_SERVER=nats://127.0.0.1:4222 node examples/worker-sim.mjs
//
// Prints one JSON line: the subject, the events published and the blocks the engine holds at the end.
import { KvEventPublisher, silentLogger } from 'dynamo-kv'
import { EngineSimulator } from 'dynamo-kv/sim'

const STEPS = Number(process.env.STEPS ?? 200)

const engine = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', kvBlockSize: 16, seed: 1 })
const publisher = await KvEventPublisher.create({
  namespace: 'dynamo',
  component: 'backend',
  kvBlockSize: 16, // must match the engine's block size
  workerId: 1n,
  logger: silentLogger,
  // nats: { servers: 'nats://127.0.0.1:4222' },  // default: $NATS_SERVER, else nats://localhost:4222
  zmq: { endpoint: engine.endpoint, replayEndpoint: engine.replayEndpoint },
})

await engine.run(STEPS)
// The source recovers what ZMQ's slow joiner lost through the replay socket; wait until it has applied
// the engine's last batch (a live engine keeps publishing, which is what reveals a trailing gap).
const last = engine.nextSeq - 1n
for (let i = 0; i < 500; i++) {
  const tracker = publisher.source.trackers()[0]
  if (tracker && tracker.lastApplied !== null && tracker.lastApplied >= last && !tracker.replaying) break
  await engine.heartbeat()
  await new Promise((resolve) => setTimeout(resolve, 10))
}

await publisher.flush()
const stats = publisher.stats()
console.log(JSON.stringify({ subject: publisher.subject, published: Number(stats.sink.published), held: engine.held().size }))
await publisher.close()
engine.close()
