// ZMQ source throughput: a simulated engine in a child process publishes as fast as it can over
// ZeroMQ (PUB on loopback, ROUTER replay); this process runs a KvEventPublisher with the zmq option into
// core NATS (a private nats-server). Measured from the first batch sent to the last event confirmed by the
// server, and checked: nothing lost, every gap repaired, the local index equal to the engine's blocks.
import { fork } from 'node:child_process'
import { KvEventPublisher, silentLogger } from '../ts/index.js'
import { startNatsServer } from '../__test__/helpers/nats-server.js'
import { fmtRate, stopwatch } from './measure.js'

const STEPS = Number(process.env.BENCH_ZMQ_STEPS ?? 20_000)

type FromEngine =
  | { kind: 'ready'; endpoint: string; replayEndpoint: string }
  | { kind: 'beat'; nextSeq: string }
  | { kind: 'done'; events: number; secs: number; nextSeq: string; held: string[] }

export async function benchZmq(): Promise<void> {
  const nats = await startNatsServer()
  const engine = fork(new URL('./zmq-engine.ts', import.meta.url).pathname, [String(STEPS)], { execArgv: process.execArgv })
  const inbox: FromEngine[] = []
  const waiters: (() => void)[] = []
  engine.on('message', (m: FromEngine) => {
    inbox.push(m)
    for (const w of waiters.splice(0)) w()
  })
  const next = async <K extends FromEngine['kind']>(kind: K): Promise<Extract<FromEngine, { kind: K }>> => {
    for (;;) {
      const i = inbox.findIndex((m) => m.kind === kind)
      if (i >= 0) return inbox.splice(i, 1)[0] as Extract<FromEngine, { kind: K }>
      await new Promise<void>((r) => waiters.push(r))
    }
  }
  try {
    const ready = await next('ready')
    const p = await KvEventPublisher.create({
      namespace: 'bench',
      component: 'zmq',
      kvBlockSize: 16,
      workerId: 7n,
      nats: { servers: nats.url },
      logger: silentLogger,
      zmq: { endpoint: ready.endpoint, replayEndpoint: ready.replayEndpoint, receiveHighWaterMark: 100_000 },
    })
    const source = p.source!
    // the SUB must have joined before the clock starts (slow joiner)
    while (source.stats().received === 0n) {
      engine.send({ kind: 'heartbeat' })
      await next('beat')
      await new Promise((r) => setTimeout(r, 20))
    }
    const before = p.stats()
    const clock = stopwatch()
    engine.send({ kind: 'go' })
    const done = await next('done')
    const last = BigInt(done.nextSeq) - 1n
    const applied = () => source.trackers().some((t) => t.lastApplied !== null && t.lastApplied >= last && !t.replaying && t.held === 0)
    while (!applied()) {
      engine.send({ kind: 'heartbeat' }) // a dropped tail shows only when a later message arrives
      await next('beat')
      await new Promise((r) => setTimeout(r, 5))
    }
    if (!(await p.flush(60_000))) throw new Error('not everything was confirmed by the server')
    const after = p.stats()
    const eventsIn = Number(after.ingest.events_in - before.ingest.events_in)
    const rate = clock.rate(eventsIn)
    const emitted = Number(
      after.emitted.stored +
        after.emitted.removed +
        after.emitted.cleared -
        before.emitted.stored -
        before.emitted.removed -
        before.emitted.cleared,
    )
    const s = after.source!
    const held = new Set(done.held)
    const indexed = new Set(
      p.localIndexer!.dump().flatMap((e) => (e.event.data.type === 'stored' ? e.event.data.blocks.map((b) => String(b.blockHash)) : [])),
    )
    const equal = held.size === indexed.size && [...held].every((h) => indexed.has(h))
    await p.close()
    console.log(`\n## ZMQ source: simulated engine in a child process -> ZeroMQ -> KvEventPublisher -> core NATS`)
    console.log(
      `engine: ${STEPS} batches, ${done.events} engine events, sent in ${done.secs.toFixed(2)} s (${fmtRate(done.events / done.secs)} events/s)`,
    )
    console.log('\n| ZMQ -> ingest -> core NATS | value |')
    console.log('|---|---|')
    console.log(`| engine events/s (wall, first batch sent to last event confirmed) | ${fmtRate(rate.wall)} |`)
    console.log(`| engine events/s per CPU second of this process | ${fmtRate(rate.cpu)} |`)
    console.log(`| router events published | ${emitted} |`)
    console.log(`| gaps / replays / recovered / lost | ${s.gaps} / ${s.replays} / ${s.recovered} / ${s.lost} |`)
    console.log(`| local index equals the engine's blocks | ${equal ? 'yes' : 'NO'} (${held.size} blocks) |`)
    console.log(`| target | >= 100 k events/s, no loss, no gap left unrepaired |`)
    if (s.lost > 0n || !equal) process.exitCode = 1
  } finally {
    engine.send({ kind: 'exit' })
    await nats.stop()
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  benchZmq().catch((e) => {
    console.error(e)
    process.exitCode = 1
  })
}
