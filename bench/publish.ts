// Publishing throughput (issue 4): events/s from raw engine batches (the standard workload) through a
// KvEventPublisher into core NATS and into JetStream, and the same JetStream payloads published the naive
// way, one at a time with each ack awaited, all against one private nats-server started for the run.
// Rates are wall-clock: the server shares the machine, and the time until the last ack is what counts.
import { jetstream } from '@nats-io/jetstream'
import { connect } from '@nats-io/transport-node'
import { Ingestor, KvEventPublisher, silentLogger, type IngestMode } from '../ts/index.js'
import { jetstreamSubject } from '../ts/core/api.js'
import { startNatsServer } from '../__test__/helpers/nats-server.js'
import { BLOCK_SIZE, standardWorkload, type Workload } from './workload.js'
import { MS, ROUNDS, fmtRate, stopwatch, type Rate } from './measure.js'

interface Result {
  events: number
  rate: Rate
}

async function throughPublisher(url: string, w: Workload, mode: IngestMode, component: string): Promise<Result> {
  const p = await KvEventPublisher.create({
    namespace: 'bench',
    component,
    kvBlockSize: BLOCK_SIZE,
    workerId: 7n,
    mode,
    nats: { servers: url },
    logger: silentLogger,
  })
  const clock = stopwatch()
  const until = Date.now() + MS
  let events = 0
  while (Date.now() < until) {
    for (const b of w.batches) events += (await p.ingest(b)).payloads.length
  }
  if (!(await p.flush(120_000))) throw new Error(`${mode}: not everything was confirmed`)
  const r = { events, rate: clock.rate(events) }
  const s = p.stats().sink
  if (s.publishErrors + s.undelivered > 0) throw new Error(`${mode}: ${s.publishErrors} publish errors, ${s.undelivered} undelivered`)
  await p.close()
  return r
}

async function oneAtATime(url: string, w: Workload, stream: string): Promise<Result> {
  // the same JSON payloads and message ids as the JetStream sink, but each ack awaited before the next
  const ing = new Ingestor({ kvBlockSize: BLOCK_SIZE, workerId: 8n, mode: 'jetstream' })
  const payloads: { data: Buffer; msgID: string }[] = []
  for (const b of w.batches) {
    const r = ing.ingest(b)
    r.payloads.forEach((data, i) => payloads.push({ data: Buffer.from(data), msgID: `8.${r.dpRank}.naive.${r.firstEventId! + BigInt(i)}` }))
  }
  const nc = await connect({ servers: url })
  const js = jetstream(nc)
  const subject = jetstreamSubject(stream)
  const clock = stopwatch()
  const until = Date.now() + MS
  let events = 0
  let pass = 0
  while (Date.now() < until) {
    pass++
    for (const p of payloads) {
      await js.publish(subject, p.data, { msgID: `${p.msgID}.${pass}` })
      events++
      if ((events & 255) === 0 && Date.now() >= until) break
    }
  }
  const r = { events, rate: clock.rate(events) }
  await nc.close()
  return r
}

export async function benchPublish(): Promise<void> {
  const w = standardWorkload(4000)
  const nats = await startNatsServer()
  try {
    console.log(
      `\n## Publishing (issue 4): ${w.batches.length} batches, ${w.events} engine events per pass, private nats-server ${nats.url}`,
    )
    const best = { core: null as Result | null, js: null as Result | null, naive: null as Result | null }
    const better = (a: Result | null, b: Result) => (a === null || b.rate.wall > a.rate.wall ? b : a)
    for (let r = 0; r < ROUNDS; r++) {
      best.core = better(best.core, await throughPublisher(nats.url, w, 'event-plane', `core${r}`))
      const js = await throughPublisher(nats.url, w, 'jetstream', `js${r}`)
      best.js = better(best.js, js)
      best.naive = better(best.naive, await oneAtATime(nats.url, w, `namespace-bench-component-js${r}-kv-events`))
    }
    const row = (name: string, x: Result) => console.log(`| ${name} | ${fmtRate(x.rate.wall)} | ${fmtRate(x.rate.cpu)} | ${x.events} |`)
    console.log('\n| publishing from raw engine batches | events/s (wall) | events/s (CPU of this process) | events |')
    console.log('|---|---|---|---|')
    row('KvEventPublisher, event plane (core NATS, local indexer on)', best.core!)
    row('KvEventPublisher, JetStream (window 1024)', best.js!)
    row('JetStream one at a time, each ack awaited', best.naive!)
    console.log('\n| target (wall) | value | target |')
    console.log('|---|---|---|')
    console.log(`| core NATS events/s | ${fmtRate(best.core!.rate.wall)} | >= 100 k |`)
    console.log(`| JetStream events/s | ${fmtRate(best.js!.rate.wall)} | >= 30 k |`)
    console.log(`| JetStream / one at a time | ${(best.js!.rate.wall / best.naive!.rate.wall).toFixed(1)} | >= 5 |`)
  } finally {
    await nats.stop()
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  benchPublish().catch((e) => {
    console.error(e)
    process.exitCode = 1
  })
}
