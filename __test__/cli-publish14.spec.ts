// `dynamo-kv publish --wire dynamo-1.4` as a sidecar, run as a user runs it: the engine simulator's real
// ZeroMQ sockets in, Dynamo 1.4+'s event plane out (direct ZeroMQ, or a private nats-server), the file
// discovery store in a temp dir configured by Dynamo's own variables, stopped with SIGTERM. A router built
// only from the fixtures' rules (helpers/router14.ts) finds the rank's records while the command runs,
// subscribes, and receives every payload a reference Ingestor makes of the engine's batches (tapped off the
// engine's PUB socket by a second SUB); the index built from them holds what the engine holds; the command's
// `stopped` counts agree; its metrics report the discovery series; the records are gone after exit.
import test, { type ExecutionContext } from 'ava'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { connect } from '@nats-io/transport-node'
import { Subscriber } from 'zeromq'
import { decodeRouterEvents, endpointSubject, Ingestor, RadixIndex } from '../ts/index.js'
import { EngineSimulator } from '../ts/sim/index.js'
import { type CliRun, needCli, startCli } from './helpers/cli.js'
import { eventually } from './helpers/discovery-process.js'
import { startNatsServer } from './helpers/nats-server.js'
import { ChannelSubscriber, type Discovered, decodeEnvelope, hex, listFileStore } from './helpers/router14.js'

const WORKER = 18446744073709551557n // a u64 above 2^53: must stay exact end to end
const BS = 16
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const roots: string[] = []
function newRoot(): string {
  const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-cli14-'))
  roots.push(root)
  return root
}
test.before(() => needCli())
test.after.always(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true })
})

/** The sum of a metric's samples (all label sets) in Prometheus text, or null when absent. */
function metric(text: string, name: string): number | null {
  let sum: number | null = null
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue
    sum = (sum ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return sum
}

async function scrape(port: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}/metrics`)
  if (res.status !== 200) throw new Error(`metrics answered ${res.status}`)
  return res.text()
}

/** Scrapes until the command has ingested every batch the engine sent (heartbeats keep it live). */
async function caughtUp(sim: EngineSimulator, port: number): Promise<string> {
  let text = await scrape(port)
  while (metric(text, 'dynamo_kv_engine_batches_total') !== Number(sim.nextSeq)) {
    await sim.heartbeat()
    await sleep(20)
    text = await scrape(port)
  }
  return text
}

/** A second SUB on the engine's PUB socket: every batch payload by seq, as the command reads them. */
async function tapEngine(sim: EngineSimulator): Promise<{ batches: Map<bigint, Buffer>; close: () => void }> {
  const sub = new Subscriber({ linger: 0 })
  sub.connect(sim.endpoint)
  sub.subscribe()
  const batches = new Map<bigint, Buffer>()
  void (async () => {
    try {
      for await (const [, seq, payload] of sub) batches.set(seq!.readBigUInt64BE(), payload!)
    } catch {
      // closed
    }
  })()
  // connected once a heartbeat arrives: the workload goes out only after that
  while (batches.size === 0) {
    await sim.heartbeat()
    await sleep(20)
  }
  return { batches, close: () => sub.close() }
}

/** Waits until the tap has the engine's last batch (ZeroMQ delivers in order, so then every batch since it connected). */
async function tapCaughtUp(tap: { batches: Map<bigint, Buffer> }, sim: EngineSimulator): Promise<void> {
  while (!tap.batches.has(sim.nextSeq - 1n)) await sleep(5)
}

/** The payloads (hex) a reference Ingestor makes of the tapped batches, in seq order, and their event count. */
function reference(batches: Map<bigint, Buffer>): { payloads: string[]; events: number } {
  const ing = new Ingestor({ kvBlockSize: BS, workerId: WORKER, wire: 'dynamo-1.4' })
  const payloads: string[] = []
  let events = 0
  try {
    for (const seq of [...batches.keys()].sort((a, b) => (a < b ? -1 : 1))) {
      for (const env of ing.ingest(batches.get(seq)!).payloads) {
        const payload = decodeEnvelope(env).payload
        payloads.push(hex(payload))
        events += decodeRouterEvents(payload).length
      }
    }
  } finally {
    ing.close()
  }
  return { payloads, events }
}

/** The rank's records as a 1.6 router reads them: one EventSource (worker, rank 0, live only) and its EventChannel. */
function checkRecords(t: ExecutionContext, found: Discovered, kind: 'Zmq' | 'Nats'): void {
  t.is(found.sources.length, 1)
  t.is(found.channels.length, 1)
  const [source] = found.sources
  t.is(source?.workerId, WORKER)
  t.is(source?.dpRank, 0)
  t.false(source?.recoverable, 'live only: no recovery_target')
  t.is(found.channels[0]?.instanceId, source?.publisherId)
  t.is(found.channels[0]?.transport.kind, kind)
}

interface Stopped {
  events: string
  published: number
  undelivered: number
  publishErrors: number
  lost: string
}

/** SIGTERM: exit 0 and the `stopped` record. */
async function stop(t: ExecutionContext, run: CliRun): Promise<Stopped> {
  run.child.kill('SIGTERM')
  t.is(await run.exit, 0, run.stderr())
  const stopped = run.logs().find((r) => r.msg === 'stopped') as Stopped | undefined
  if (!stopped) throw new Error(`no stopped record: ${run.stderr()}`)
  return stopped
}

/** Checks the index built from what the router received against what the engine holds. */
function checkIndex(t: ExecutionContext, index: RadixIndex, sim: EngineSimulator): void {
  const blocks = new Set(index.dump().flatMap((e) => (e.event.data.type === 'stored' ? e.event.data.blocks.map((b) => b.blockHash) : [])))
  const held = sim.held()
  t.true(held.size > 0)
  t.is(blocks.size, held.size)
  t.true([...held].every((h) => blocks.has(h)))
  t.deepEqual(index.workers(), [WORKER])
}

const COMMON = (sim: EngineSimulator) => [
  'publish',
  '--wire',
  'dynamo-1.4',
  '--engine-endpoint',
  sim.endpoint,
  '--replay-endpoint',
  sim.replayEndpoint!,
  '--block-size',
  String(BS),
  '--worker-id',
  WORKER.toString(),
  '--metrics-port',
  '0',
  '--metrics-host',
  '127.0.0.1',
]

test('publish --wire dynamo-1.4, direct ZeroMQ + file store: records while it runs, every payload to a router, gone after SIGTERM', async (t) => {
  const root = newRoot()
  const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', kvBlockSize: BS, seed: 14 })
  const tap = await tapEngine(sim)
  const index = new RadixIndex()
  // Dynamo's variables choose the store and the advertised address; the hold until a router subscribes is
  // long, so nothing is sent before this router has found the records and connected
  const run = startCli([...COMMON(sim), '--zmq-bind-host', '127.0.0.1', '--zmq-settle', '120000'], {
    DYN_DISCOVERY_BACKEND: 'file',
    DYN_FILE_KV: root,
    DYN_EVENT_PLANE: 'zmq',
    DYN_EVENT_PLANE_HOST: '127.0.0.1',
  })
  let router: ChannelSubscriber | null = null
  try {
    const { port } = (await run.waitForLog((r) => r.msg === 'serving Prometheus metrics')) as { port: number }
    await run.waitForLog((r) => typeof r.msg === 'string' && r.msg.startsWith('publishing'))
    t.is(metric(await caughtUp(sim, port), 'dynamo_kv_discovery_ranks_registered'), 0)
    t.deepEqual(await listFileStore(root), { sources: [], channels: [] }, 'nothing is registered before the rank has an event')

    await sim.run(100)
    let text = await caughtUp(sim, port)
    await tapCaughtUp(tap, sim)
    const want = reference(tap.batches)
    t.true(want.payloads.length > 0)
    t.true(await eventually(async () => (await listFileStore(root)).channels.length === 1))
    const found = await listFileStore(root)
    checkRecords(t, found, 'Zmq')
    const channel = found.channels[0]!
    t.regex(String(channel.transport.config.endpoint), /^tcp:\/\/127\.0\.0\.1:\d+$/)
    // records written, the rank waits for its first router (not counted registered until then): none sent
    text = await scrape(port)
    t.is(metric(text, 'dynamo_kv_discovery_ranks_registered'), 0)
    t.is(metric(text, 'dynamo_kv_published_total'), 0)
    t.is(metric(text, 'dynamo_kv_discovery_held'), want.payloads.length)

    router = new ChannelSubscriber(channel)
    const got: string[] = []
    let events = 0
    for (let seq = 0n; got.length < want.payloads.length; seq++) {
      const m = await router.receive()
      t.is(m.sequence, seq)
      const decoded = decodeRouterEvents(m.payload)
      t.true(decoded.every((e) => e.workerId === WORKER && e.event.dpRank === 0))
      events += decoded.length
      got.push(hex(m.payload))
      index.applyEncoded(m.envelope, 'envelope')
    }
    t.deepEqual(got, want.payloads)
    t.is(events, want.events)
    checkIndex(t, index, sim)

    text = await scrape(port)
    t.is(metric(text, 'dynamo_kv_discovery_ranks_registered'), 1)
    t.is(metric(text, 'dynamo_kv_discovery_held'), 0)
    t.is(metric(text, 'dynamo_kv_discovery_register_failures_total'), 0)
    t.is(metric(text, 'dynamo_kv_discovery_dropped_unregistered_total'), 0)
    t.is(metric(text, 'dynamo_kv_published_total'), want.payloads.length)
    t.true(text.includes(`worker_id="${WORKER}"`))

    const stopped = await stop(t, run)
    t.is(stopped.events, String(want.events))
    t.is(stopped.published, want.payloads.length)
    t.is(stopped.undelivered, 0)
    t.is(stopped.publishErrors, 0)
    t.is(stopped.lost, '0')
    t.deepEqual(await listFileStore(root), { sources: [], channels: [] }, 'the records are removed on exit')
  } finally {
    run.child.kill('SIGKILL')
    router?.close()
    tap.close()
    sim.close()
    index.close()
  }
})

test('publish --wire dynamo-1.4 on a NATS event plane: every payload on the endpoint subject, the Nats channel registered meanwhile', async (t) => {
  const root = newRoot()
  const server = await startNatsServer()
  const nc = await connect({ servers: server.url })
  const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', kvBlockSize: BS, seed: 15 })
  const tap = await tapEngine(sim)
  const index = new RadixIndex()
  const got: string[] = []
  let events = 0
  const sub = nc.subscribe(endpointSubject('dynamo', 'kv14', 'generate', 'kv-events'), {
    callback: (err, msg) => {
      if (err) return
      const env = decodeEnvelope(msg.data)
      events += decodeRouterEvents(env.payload).length
      got.push(hex(env.payload))
      index.applyEncoded(msg.data, 'envelope')
    },
  })
  await nc.flush()
  const run = startCli([...COMMON(sim), '--component', 'kv14'], {
    DYN_DISCOVERY_BACKEND: 'file',
    DYN_FILE_KV: root,
    DYN_EVENT_PLANE: 'nats',
    NATS_SERVER: server.url,
  })
  try {
    const { port } = (await run.waitForLog((r) => r.msg === 'serving Prometheus metrics')) as { port: number }
    await run.waitForLog((r) => typeof r.msg === 'string' && r.msg.startsWith('publishing'))
    await sim.run(60)
    await caughtUp(sim, port)
    await tapCaughtUp(tap, sim)
    const want = reference(tap.batches)
    t.true(want.payloads.length > 0)
    t.true(await eventually(async () => got.length >= want.payloads.length))
    checkRecords(t, await listFileStore(root), 'Nats')
    const text = await scrape(port)
    t.is(metric(text, 'dynamo_kv_discovery_ranks_registered'), 1)
    t.is(metric(text, 'dynamo_kv_discovery_held'), 0)
    t.is(metric(text, 'dynamo_kv_discovery_register_failures_total'), 0)

    const stopped = await stop(t, run)
    await nc.flush()
    t.deepEqual(got, want.payloads)
    t.is(events, want.events)
    t.is(stopped.events, String(want.events))
    t.is(stopped.published, want.payloads.length)
    t.is(stopped.undelivered, 0)
    checkIndex(t, index, sim)
    t.deepEqual(await listFileStore(root), { sources: [], channels: [] }, 'the records are removed on exit')
  } finally {
    run.child.kill('SIGKILL')
    sub.unsubscribe()
    await nc.close()
    await server.stop()
    tap.close()
    sim.close()
    index.close()
  }
})
