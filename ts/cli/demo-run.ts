// `dynamo-kv demo`, running (see demo.ts): engines, readers, the event plane, the router, the summary.
// Loaded only when the command runs.
import type { Command } from 'commander'
import { type CounterName, implementation, Ingestor, type IngestResult, type RadixIndex, type WorkerScore } from '../core/api.js'
import { KvRouter, type RouteDecision } from '../router/router.js'
import { EngineSimulator } from '../sim/engine.js'
import { ZmqSource } from '../transport/sources/zmq.js'
import type { Logger } from '../util/log.js'
import { KvEventPublisher } from '../worker/publisher.js'
import { configuring, EXIT_FAILURE, EXIT_OK, flagValue, loggerFrom, sleep, toJson, untilSignal } from './common.js'
import type { DemoFlags } from './demo.js'

const KV_BLOCK_SIZE = 16
const NAMESPACE = 'demo'
const COMPONENT = 'backend'

/** A simulated engine and the dynamo-kv pipeline reading it. */
interface DemoWorker {
  id: bigint
  sim: EngineSimulator
  source: ZmqSource
  counters(): Record<CounterName, bigint>
  flush(): Promise<void>
  close(): Promise<void>
}

/** The router's side of the event plane: every payload published reaches `deliver`, in order. */
type Deliver = (payload: Uint8Array) => void

/** An engine simulator: every worker draws from the same documents (same seed), with its own request stream. */
function engine(i: number, seed: number): Promise<EngineSimulator> {
  return EngineSimulator.create({
    replayEndpoint: 'tcp://127.0.0.1:0',
    seed,
    kvBlockSize: KV_BLOCK_SIZE,
    publisherId: true,
    capacityBlocks: 192 + 96 * i,
    maxRequestsPerStep: 2 + i,
    prefixes: 12,
    maxPrefixBlocks: 12,
    maxUniqueBlocks: 4,
  })
}

/** In-process: each worker's Ingestor output goes straight to the router (the bytes NATS would carry). */
async function inProcessWorker(i: number, seed: number, deliver: Deliver, logger: Logger): Promise<DemoWorker> {
  const sim = await engine(i, seed)
  const id = BigInt(i + 1)
  const ingestor = new Ingestor({ kvBlockSize: KV_BLOCK_SIZE, workerId: id })
  const publish = (r: IngestResult) => {
    for (const p of r.views) deliver(p)
    return r
  }
  const source = await ZmqSource.create(
    { endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint!, logger },
    {
      ingest: async (payload) => publish(ingestor.ingest(payload)),
      resetRank: async (rank) => publish(ingestor.cleared(rank)),
    },
  )
  return {
    id,
    sim,
    source,
    counters: () => ingestor.counters(),
    flush: async () => {},
    close: async () => {
      await source.close()
      ingestor.close()
      sim.close()
    },
  }
}

/** Through NATS: a KvEventPublisher per worker, reading its engine. */
async function natsWorker(i: number, seed: number, url: string, logger: Logger): Promise<DemoWorker> {
  const sim = await engine(i, seed)
  const id = BigInt(i + 1)
  let publisher: KvEventPublisher
  try {
    publisher = await KvEventPublisher.create({
      namespace: NAMESPACE,
      component: COMPONENT,
      kvBlockSize: KV_BLOCK_SIZE,
      workerId: id,
      nats: { servers: url },
      logger,
      zmq: { endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint! },
    })
  } catch (err) {
    sim.close()
    throw err
  }
  return {
    id,
    sim,
    source: publisher.source!,
    counters: () => publisher.stats().ingest,
    flush: async () => {
      await publisher.flush()
    },
    close: async () => {
      await publisher.close()
      sim.close()
    },
  }
}

interface Gap {
  worker: bigint
  seq: bigint
  /** The source's gap and replay counts when the batch was dropped. */
  gapsBefore: bigint
  replaysBefore: bigint
  detected: boolean
  repaired: boolean
}

interface Routing {
  promptBlocks: number
  scores: WorkerScore[]
  /** The worker findBestWorker chose when it holds some of the prompt, else null (chosen by load). */
  chosen: bigint | null
  /** The worker findBestWorker chose. */
  routedTo: bigint
  note: string
}

/** Per worker, the blocks the router's index holds (block hash → parent, tokens hash). */
function routerView(index: RadixIndex): Map<bigint, Map<bigint, { parent: bigint | null; tokensHash: bigint }>> {
  const out = new Map<bigint, Map<bigint, { parent: bigint | null; tokensHash: bigint }>>()
  for (const e of index.dump()) {
    if (e.event.data.type !== 'stored') continue
    let blocks = out.get(e.workerId)
    if (!blocks) {
      blocks = new Map()
      out.set(e.workerId, blocks)
    }
    let parent = e.event.data.parentHash
    for (const b of e.event.data.blocks) {
      blocks.set(b.blockHash, { parent, tokensHash: b.tokensHash })
      parent = b.blockHash
    }
  }
  return out
}

/**
 * Example requests: the longest prompts the workers served (their chains of block hashes in the router's
 * index, one per distinct first block), and a prompt nobody has seen.
 */
function routingExamples(router: KvRouter, workers: bigint[], seed: number): Routing[] {
  const view = routerView(router.index)
  const prompts: bigint[][] = []
  const roots = new Set<bigint>()
  for (const w of workers) {
    const blocks = view.get(w)
    if (!blocks) continue
    const chain = (h: bigint): bigint[] => {
      const out: bigint[] = []
      for (let b = blocks.get(h); b; b = b.parent === null ? undefined : blocks.get(b.parent)) out.push(b.tokensHash)
      return out.reverse()
    }
    const leaves = [...blocks.keys()].map(chain).sort((a, b) => b.length - a.length)
    const pick = leaves.find((c) => c.length > 0 && !roots.has(c[0]!))
    if (pick) {
      roots.add(pick[0]!)
      prompts.push(pick)
    }
    if (prompts.length === 3) break
  }
  const out: (Routing | null)[] = prompts.map((p) => decide(router.findBestWorkerForHashes(p), p.length))
  const fresh = Uint32Array.from({ length: 6 * KV_BLOCK_SIZE }, (_, i) => (seed * 7919 + i * 104729) % 150_000)
  out.push(decide(router.findBestWorker(fresh), 6, 'a prompt no worker has seen'))
  return out.filter((r): r is Routing => r !== null)
}

/** The router's decision as the summary shows it: the candidates holding some of the prompt, and the choice. */
function decide(d: RouteDecision | null, promptBlocks: number, note = ''): Routing | null {
  if (d === null) return null
  const scores = d.candidates
    .filter((c) => c.overlapBlocks > 0)
    .map((c) => ({ workerId: c.workerId, dpRank: c.dpRank, score: c.overlapBlocks }))
  return { promptBlocks, scores, chosen: d.overlapBlocks > 0 ? d.workerId : null, routedTo: d.workerId, note }
}

const fmt = (n: bigint | number) => Number(n).toLocaleString('en-US')
const rate = (n: number) => (n >= 10_000 ? `${(n / 1000).toFixed(1)}k` : `${Math.round(n)}`)

export async function run(cmd: Command): Promise<number> {
  const o = cmd.opts<DemoFlags>()
  const json = flagValue(cmd, 'json', 'DYNAMO_KV_DEMO_JSON')
  const log = loggerFrom(o, 'demo')
  const tty = !json && process.stdout.isTTY === true
  const say = (line: string) => {
    if (json) return
    if (tty) process.stdout.write('\r\x1b[K')
    process.stdout.write(`${line}\n`)
  }
  const transport = o.nats ? `NATS at ${o.nats}` : 'an in-process event plane'
  const impl = implementation === 'native' ? 'native Rust core' : 'TypeScript fallback'

  // the router: a KvRouter following every worker's events, fed by the in-process event plane (manual
  // source) or subscribed to NATS (event-plane source)
  let router: KvRouter | null = null
  const deliver: Deliver = (payload) => router!.applyEnvelope(payload) // bad bytes are counted, never thrown
  const workers: DemoWorker[] = []
  const closeAll = async () => {
    for (const w of workers) await w.close()
    await router?.close()
  }
  try {
    const url = o.nats
    router = await configuring(url ? '--nats' : 'demo', () =>
      KvRouter.create(
        {
          kvBlockSize: KV_BLOCK_SIZE,
          source: url ? { kind: 'event-plane', namespace: NAMESPACE, component: COMPONENT } : { kind: 'manual' },
          nats: url ? { servers: url } : undefined,
          logger: log,
        },
        {},
      ).catch((err: unknown) => {
        throw url ? new RangeError(`could not connect to NATS at ${url}: ${(err as Error).message}`) : err
      }),
    )
    for (let i = 0; i < o.workers; i++)
      workers.push(
        await configuring('demo', () => (o.nats ? natsWorker(i, o.seed, o.nats, log) : inProcessWorker(i, o.seed, deliver, log))),
      )
  } catch (err) {
    await closeAll()
    throw err
  }

  say(`dynamo-kv demo: ${o.workers} simulated vLLM engines → ZeroMQ → dynamo-kv (${impl}) → ${transport} → a router`)
  const total = (name: CounterName) => workers.reduce((a, w) => a + w.counters()[name], 0n)
  const emitted = () => total('emitted_stored') + total('emitted_removed') + total('emitted_cleared')
  const rejected = () => {
    let n = 0n
    for (const w of workers) for (const [k, v] of Object.entries(w.counters())) if (k.startsWith('rejected_')) n += v
    return n
  }

  const signals = untilSignal(log)
  let interrupted = false
  void signals.stopped.then(() => {
    interrupted = true
  })
  const started = performance.now()
  const durationMs = o.duration * 1000
  const gapWorker = workers[1]!
  let gap: Gap | null = null

  // the dropped batch can only come back through a replay: a gap seen live, or a replay already running
  // (after a gap of the engine's own making: the high-water mark) that covers it
  const detected = (g: Gap) => {
    const s = gapWorker.source.stats()
    return s.gaps > g.gapsBefore || s.replays > g.replaysBefore
  }
  const status = () => {
    const elapsed = (performance.now() - started) / 1000
    const line =
      `${implementation} · ${fmt(total('batches'))} batches · ${fmt(emitted())} events · ${fmt(total('blocks_stored'))} blocks · ` +
      `${fmt(rejected())} rejected · ${rate(Number(emitted()) / Math.max(elapsed, 0.001))} events/s · ${elapsed.toFixed(1)} s`
    // one terminal line, or the carriage return could not rewrite it
    if (tty) process.stdout.write(`\r\x1b[K${line.slice(0, Math.max(20, (process.stdout.columns || 80) - 1))}`)
    if (gap && !gap.detected && detected(gap)) {
      gap.detected = true
      say(`  ↳ worker ${gap.worker}: batch seq ${gap.seq} never arrived: gap seen, asking the engine to replay it`)
    }
    const t = gapWorker.source.trackers()[0]
    if (gap?.detected && !gap.repaired && t && t.lastApplied !== null && t.lastApplied >= gap.seq && !t.replaying) {
      gap.repaired = true
      say(`  ↳ worker ${gap.worker}: seq ${gap.seq} replayed from the engine's buffer and applied: nothing lost`)
    }
  }
  const ticker = setInterval(status, tty ? 200 : 50)

  // drive the engines, keeping each at most a few hundred batches ahead of its reader
  while (!interrupted && performance.now() - started < durationMs) {
    for (const w of workers) {
      const applied = w.source.trackers()[0]?.lastApplied ?? -1n
      if (w.sim.nextSeq - 1n - applied < 256n) for (let k = 0; k < 4; k++) await w.sim.step()
    }
    if (!gap && performance.now() - started >= durationMs * 0.4) {
      const seq = gapWorker.sim.nextSeq
      gapWorker.sim.drop(seq) // not sent live; still in the engine's replay buffer
      const before = gapWorker.source.stats()
      gap = { worker: gapWorker.id, seq, gapsBefore: before.gaps, replaysBefore: before.replays, detected: false, repaired: false }
      say(`  ↳ dropping worker ${gap.worker}'s batch seq ${seq} on the way, on purpose`)
    }
    await sleep(1)
  }
  const elapsedS = (performance.now() - started) / 1000

  // let every reader catch up (a live engine keeps publishing: a lost last batch shows with the next one)
  const caughtUp = (w: DemoWorker) => {
    const t = w.source.trackers()[0]
    return t !== undefined && t.lastApplied !== null && t.lastApplied >= w.sim.nextSeq - 1n && !t.replaying
  }
  for (let i = 0; i < 300 && !workers.every(caughtUp); i++) {
    for (const w of workers) if (!caughtUp(w)) await w.sim.heartbeat()
    await sleep(10)
  }
  for (const w of workers) await w.flush()
  // compare the router's view with each engine's ground truth (through NATS: once the router has caught up)
  const compare = () => {
    const view = routerView(router!.index)
    return workers.map((w) => {
      const held = w.sim.held()
      const seen = view.get(w.id) ?? new Map()
      const equal = held.size === seen.size && [...held].every((h) => seen.has(h))
      return { workerId: w.id, engineBlocks: held.size, routerBlocks: seen.size, equal }
    })
  }
  let perWorker = compare()
  for (let i = 0; i < 300 && !(router!.settled && perWorker.every((w) => w.equal)); i++) {
    await sleep(10)
    perWorker = compare()
  }
  clearInterval(ticker)
  status()
  if (tty) process.stdout.write('\r\x1b[K')

  const rs = router!.stats()
  const routerEvents = Object.values(rs.events).reduce((a, byOutcome) => a + Object.values(byOutcome).reduce((b, n) => b + n, 0), 0)
  const routing = routingExamples(
    router!,
    workers.map((w) => w.id),
    o.seed,
  )
  const src = workers.map((w) => w.source.stats())
  const lost = src.reduce((a, s) => a + s.lost, 0n)
  const gapStats = gapWorker.source.stats()
  const matches = perWorker.every((w) => w.equal)
  // every seq up to the last applied one was applied, except those counted lost
  const repaired = gap !== null && caughtUp(gapWorker) && gapStats.lost === 0n
  const summary = {
    implementation,
    transport: o.nats ? 'nats' : 'in-process',
    durationSeconds: Math.round(elapsedS * 100) / 100,
    workers: workers.length,
    batches: total('batches'),
    engineEvents: total('events_in'),
    events: emitted(),
    emitted: { stored: total('emitted_stored'), removed: total('emitted_removed'), cleared: total('emitted_cleared') },
    blocks: { stored: total('blocks_stored'), removed: total('blocks_removed') },
    rejected: rejected(),
    eventsPerSecond: Math.round(Number(emitted()) / Math.max(elapsedS, 0.001)),
    routerEvents,
    routerGaps: rs.gaps,
    gap: gap && {
      worker: gap.worker,
      seq: gap.seq,
      detected: detected(gap),
      repaired,
      replays: gapStats.replays,
      recovered: gapStats.recovered,
    },
    lost,
    index: { matchesEngines: matches, workers: perWorker },
    routing: routing.map((r) => ({ promptBlocks: r.promptBlocks, scores: r.scores, chosen: r.chosen })),
  }
  await closeAll()
  signals.dispose()

  if (json) process.stdout.write(`${toJson(summary)}\n`)
  else {
    const byType = summary.emitted
    say('')
    say(`What happened in ${elapsedS.toFixed(1)} s:`)
    say(`  • The engines published ${fmt(summary.batches)} batches holding ${fmt(summary.engineEvents)} KV-cache events.`)
    say(
      `  • dynamo-kv turned them into ${fmt(summary.events)} Dynamo router events (${fmt(byType.stored)} stores of ` +
        `${fmt(summary.blocks.stored)} blocks, ${fmt(byType.removed)} evictions, ${fmt(byType.cleared)} cache clears); ` +
        `${fmt(summary.rejected)} rejected.`,
    )
    say(`  • About ${fmt(summary.eventsPerSecond)} events/s, paced by the simulated engines (a demo, not a benchmark: see BENCHMARKS.md).`)
    if (gap)
      say(
        summary.gap?.repaired
          ? `  • Worker ${gap.worker}'s batch seq ${gap.seq} was dropped on purpose: dynamo-kv saw the hole in the sequence numbers, fetched the batch again from the engine's replay buffer, and lost nothing.`
          : `  • Worker ${gap.worker}'s batch seq ${gap.seq} was dropped on purpose, and was NOT repaired.`,
      )
    say(
      matches
        ? `  • The router's index matches what every engine holds (${perWorker.map((w) => `worker ${w.workerId}: ${fmt(w.routerBlocks)} blocks`).join(', ')}).`
        : `  • The router's index does NOT match the engines: ${perWorker.map((w) => `worker ${w.workerId}: router ${w.routerBlocks}, engine ${w.engineBlocks}`).join('; ')}.`,
    )
    say('')
    say('Routing a few requests (overlap = the leading blocks of the prompt a worker already holds in its KV cache):')
    for (const r of routing) {
      const scores = workers.map((w) => `worker ${w.id}: ${r.scores.find((s) => s.workerId === w.id)?.score ?? 0}`).join(', ')
      const what = r.note || `a prompt of ${r.promptBlocks} blocks`
      const choice =
        r.chosen === null
          ? `no worker holds any of it: worker ${r.routedTo}, by load`
          : `worker ${r.chosen}, which skips prefill for ${r.scores.find((s) => s.workerId === r.chosen)!.score} of ${r.promptBlocks} blocks`
      say(`  ${what}: ${scores} → ${choice}`)
    }
    say('')
    say('Next: `dynamo-kv publish --help` runs this next to a real engine; `dynamo-kv demo --nats nats://HOST:4222` goes through NATS.')
  }
  const ok = matches && lost === 0n && (summary.gap === null || summary.gap.repaired)
  if (!ok) log.error({ matches, lost: lost.toString() }, 'the router did not end with what the engines hold')
  return ok ? EXIT_OK : EXIT_FAILURE
}
