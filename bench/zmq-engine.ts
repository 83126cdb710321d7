// Child process of bench/zmq.ts: one simulated engine (PUB + ROUTER replay, both bound), driven as fast
// as it can publish once the parent says go (the batches are generated before, then sent back to back, so
// generating them does not pace the engine); it then reports its ground truth.
import { EngineSimulator } from '../ts/sim/engine.js'

const steps = Number(process.argv[2] ?? 20_000)
const sim = await EngineSimulator.create({
  replayEndpoint: 'tcp://127.0.0.1:0',
  seed: 5,
  maxRequestsPerStep: 8,
  capacityBlocks: 4096,
  replayBufferSize: 20_000,
  sendHighWaterMark: 100_000, // vLLM's default hwm
})
const prepared = sim.prepare(steps)
process.send!({ kind: 'ready', endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint })
process.on('message', async (m: { kind: string }) => {
  if (m.kind === 'heartbeat') {
    await sim.heartbeat()
    process.send!({ kind: 'beat', nextSeq: String(sim.nextSeq) })
  } else if (m.kind === 'go') {
    const t0 = process.hrtime.bigint()
    await prepared.send()
    const events = prepared.events
    const secs = Number(process.hrtime.bigint() - t0) / 1e9
    process.send!({ kind: 'done', events, secs, nextSeq: String(sim.nextSeq), held: [...sim.held()].map(String) })
  } else if (m.kind === 'exit') {
    sim.close()
    process.exit(0)
  }
})
