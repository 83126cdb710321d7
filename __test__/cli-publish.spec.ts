// `dynamo-kv publish` as a sidecar: the engine simulator's real ZeroMQ sockets in, a private nats-server
// out, stopped with SIGTERM. Everything it accepted reaches a NATS subscriber (counted, and the index
// built from it equals what the engine holds), its metrics endpoint answers while it runs, and pointed at
// a port where no engine listens it says so.
import test from 'ava'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { jetstreamManager } from '@nats-io/jetstream'
import { jetstreamStreamName, RadixIndex } from '../ts/index.js'
import { EngineSimulator } from '../ts/sim/index.js'
import { needCli, runCli, startCli } from './helpers/cli.js'
import { freePort, type NatsServer, startNatsServer } from './helpers/nats-server.js'

const SUBJECT = 'namespace.dynamo.component.backend.kv-events'
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

let nats: NatsServer
let nc: NatsConnection
test.before(async () => {
  needCli()
  nats = await startNatsServer()
  nc = await connect({ servers: nats.url })
})
test.after.always(async () => {
  await nc?.close()
  await nats?.stop()
})

/** The sum of a metric's samples (all label sets) in Prometheus text, or null when absent. */
function metric(text: string, name: string, labels = ''): number | null {
  let sum: number | null = null
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue
    if (labels && !line.includes(labels)) continue
    sum = (sum ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return sum
}

async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`)
  if (res.status !== 200) throw new Error(`metrics answered ${res.status}`)
  return res.text()
}

test('publish: engine → NATS until SIGTERM, exit 0, every accepted event published, metrics served meanwhile', async (t) => {
  const index = new RadixIndex()
  let received = 0
  const sub = nc.subscribe(SUBJECT, {
    callback: (err, msg) => {
      if (err) return
      received++
      index.applyEncoded(msg.data, 'envelope')
    },
  })
  await nc.flush()
  const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', kvBlockSize: 16, seed: 3 })
  const run = startCli(
    [
      'publish',
      '--engine-endpoint',
      sim.endpoint,
      '--replay-endpoint',
      sim.replayEndpoint!,
      '--worker-id',
      '18446744073709551557', // a u64 above 2^53: must stay exact end to end
      '--metrics-port',
      '0',
      '--metrics-host',
      '127.0.0.1',
    ],
    { NATS_SERVER: nats.url, DYNAMO_KV_BLOCK_SIZE: '16' }, // options from the environment work like flags
  )
  try {
    const { port } = (await run.waitForLog((r) => r.msg === 'serving Prometheus metrics')) as { port: number }
    await run.waitForLog((r) => typeof r.msg === 'string' && r.msg.startsWith('publishing'))
    await sim.run(200)
    // a live engine keeps publishing; the reader has everything once its batch count reaches the engine's seq
    const text = await caughtUp(sim, port)
    t.true(metric(text, 'dynamo_kv_events_emitted_total', 'type="stored"')! > 0)
    t.true(metric(text, 'dynamo_kv_zmq_received_total')! > 0)
    t.not(metric(text, 'dynamo_kv_queue_depth'), null)
    t.not(metric(text, 'dynamo_kv_zmq_queue_depth'), null)
    t.is(metric(text, 'dynamo_kv_ingest_seconds_count'), Number(sim.nextSeq))
    t.not(metric(text, 'dynamo_kv_publish_seconds_count'), null)
    t.true(text.includes('worker_id="18446744073709551557"'))
    t.not(metric(text, 'process_cpu_seconds_total'), null)

    run.child.kill('SIGTERM')
    t.is(await run.exit, 0, run.stderr())
    const stopped = run.logs().find((r) => r.msg === 'stopped') as {
      events: string
      published: number
      undelivered: number
      publishErrors: number
      lost: string
    }
    t.truthy(stopped, run.stderr())
    await nc.flush()
    // the event plane's `published` counts what the server confirmed: all of it, and nothing undelivered
    t.is(stopped.undelivered, 0)
    t.is(stopped.publishErrors, 0)
    t.is(String(stopped.published), stopped.events)
    t.is(String(received), stopped.events)
    t.is(stopped.lost, '0')
    // and what arrived is what the engine holds
    const blocks = new Set(index.dump().flatMap((e) => (e.event.data.type === 'stored' ? e.event.data.blocks.map((b) => b.blockHash) : [])))
    const held = sim.held()
    t.is(blocks.size, held.size)
    t.true([...held].every((h) => blocks.has(h)))
    t.deepEqual(index.workers(), [18446744073709551557n])
  } finally {
    run.child.kill('SIGKILL')
    sub.unsubscribe()
    sim.close()
    index.close()
  }
})

test('publish pointed at a port with no engine warns, naming the endpoint, then stops cleanly on SIGTERM', async (t) => {
  const endpoint = `tcp://127.0.0.1:${await freePort()}`
  const run = startCli(['publish', '--engine-endpoint', endpoint, '--block-size', '16', '--nats-server', nats.url])
  try {
    // the default silence is 5 s: the warning comes then (ava's timeout fails a test that never sees it)
    const warning = await run.waitForLog((r) => r.level === 40)
    t.regex(String(warning.msg), new RegExp(`no message from the engine at ${endpoint.replaceAll('.', '\\.')} after 5 s`))
    t.deepEqual(warning.endpoints, [endpoint])
    run.child.kill('SIGTERM')
    t.is(await run.exit, 0, run.stderr())
    t.is(run.logs().filter((r) => r.level === 40).length, 1, 'warned once')
  } finally {
    run.child.kill('SIGKILL')
  }
})

/** Scrapes until the publisher has ingested every batch the engine sent (heartbeats keep it live). */
async function caughtUp(sim: EngineSimulator, port: number): Promise<string> {
  let text = await scrape(port)
  while (metric(text, 'dynamo_kv_engine_batches_total') !== Number(sim.nextSeq)) {
    await sim.heartbeat()
    await sleep(20)
    text = await scrape(port)
  }
  return text
}

test('publish --mode jetstream: every event lands in the stream, exit 0 on SIGINT', async (t) => {
  const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', kvBlockSize: 16, seed: 5 })
  const run = startCli([
    'publish',
    '--engine-endpoint',
    sim.endpoint,
    '--replay-endpoint',
    sim.replayEndpoint!,
    '--block-size',
    '16',
    '--mode',
    'jetstream',
    '--component',
    'cli-js',
    '--nats-server',
    nats.url,
    '--metrics-port',
    '0',
    '--metrics-host',
    '127.0.0.1',
  ])
  try {
    const { port } = (await run.waitForLog((r) => r.msg === 'serving Prometheus metrics')) as { port: number }
    await sim.run(50)
    await caughtUp(sim, port)
    run.child.kill('SIGINT')
    t.is(await run.exit, 0, run.stderr())
    const stopped = run.logs().find((r) => r.msg === 'stopped') as { events: string; published: number; publishErrors: number }
    t.true(Number(stopped.events) > 0)
    t.is(String(stopped.published), stopped.events)
    t.is(stopped.publishErrors, 0)
    const jsm = await jetstreamManager(nc)
    t.is(String((await jsm.streams.info(jetstreamStreamName('dynamo', 'cli-js'))).state.messages), stopped.events)
  } finally {
    run.child.kill('SIGKILL')
    sim.close()
  }
})

test('publish warns once when the engine goes quiet, and says when it is back', async (t) => {
  const sim = await EngineSimulator.create({ kvBlockSize: 16 })
  const run = startCli([
    'publish',
    '--engine-endpoint',
    sim.endpoint,
    '--block-size',
    '16',
    '--nats-server',
    nats.url,
    '--engine-silence',
    '0.5',
    '--metrics-port',
    '0',
    '--metrics-host',
    '127.0.0.1',
  ])
  try {
    const { port } = (await run.waitForLog((r) => r.msg === 'serving Prometheus metrics')) as { port: number }
    while (!metric(await scrape(port), 'dynamo_kv_zmq_received_total')) {
      await sim.heartbeat()
      await sleep(20)
    }
    const quiet = await run.waitForLog((r) => r.level === 40 && /went quiet/.test(String(r.msg)))
    t.regex(String(quiet.msg), new RegExp(`the engine at ${sim.endpoint.replaceAll('.', '\\.')} went quiet: no message for 0\\.5 s`))
    await sim.heartbeat()
    const back = await run.waitForLog((r) => r.level === 30 && r.msg === 'the engine is sending again')
    // one warning for that quiet period (a later one may start before the signal: the engine is idle again)
    const logs = run.logs()
    t.is(
      logs
        .slice(
          0,
          logs.findIndex((r) => r.time === back.time && r.msg === back.msg),
        )
        .filter((r) => /went quiet/.test(String(r.msg))).length,
      1,
    )
    run.child.kill('SIGTERM')
    t.is(await run.exit, 0, run.stderr())
  } finally {
    run.child.kill('SIGKILL')
    sim.close()
  }
})

test('publish reads several engines (one per dp rank), listed in DYNAMO_KV_ENGINE_ENDPOINT, each with its replay endpoint', async (t) => {
  const sims = [
    await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', kvBlockSize: 16, seed: 11, dpRank: 0 }),
    await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', kvBlockSize: 16, seed: 12, dpRank: 1 }),
  ]
  let received = 0
  const sub = nc.subscribe('namespace.dynamo.component.multi.kv-events', { callback: (err) => void (err || received++) })
  await nc.flush()
  const run = startCli(
    [
      'publish',
      ...sims.flatMap((s) => ['--replay-endpoint', s.replayEndpoint!]),
      '--block-size',
      '16',
      '--component',
      'multi',
      '--nats-server',
      nats.url,
      '--metrics-port',
      '0',
      '--metrics-host',
      '127.0.0.1',
    ],
    { DYNAMO_KV_ENGINE_ENDPOINT: sims.map((s) => s.endpoint).join(',') },
  )
  try {
    const { port } = (await run.waitForLog((r) => r.msg === 'serving Prometheus metrics')) as { port: number }
    for (const s of sims) await s.run(40)
    let text = await scrape(port)
    while (metric(text, 'dynamo_kv_engine_batches_total') !== Number(sims[0]!.nextSeq + sims[1]!.nextSeq)) {
      for (const s of sims) await s.heartbeat()
      await sleep(20)
      text = await scrape(port)
    }
    run.child.kill('SIGTERM')
    t.is(await run.exit, 0, run.stderr())
    const stopped = run.logs().find((r) => r.msg === 'stopped') as { events: string; published: number; lost: string }
    await nc.flush()
    t.true(Number(stopped.events) > 0)
    t.is(String(stopped.published), stopped.events)
    t.is(String(received), stopped.events)
    t.is(stopped.lost, '0')
  } finally {
    run.child.kill('SIGKILL')
    sub.unsubscribe()
    for (const s of sims) s.close()
  }
})

test('publish --bind on an address already in use exits 2 with one line naming the endpoint', async (t) => {
  const sim = await EngineSimulator.create({ kvBlockSize: 16 }) // its PUB holds the port
  try {
    const r = await runCli([
      'publish',
      '--engine-endpoint',
      sim.endpoint,
      '--bind',
      '--block-size',
      '16',
      '--nats-server',
      nats.url,
      '--log-level',
      'warn',
    ])
    t.is(r.code, 2, r.stderr)
    t.deepEqual(r.stderr.split('\n').filter(Boolean), [`dynamo-kv publish: error: engine endpoint ${sim.endpoint}: Address already in use`])
  } finally {
    sim.close()
  }
})
