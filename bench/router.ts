// The router from NATS (BENCH_ONLY=router; see BENCHMARKS.md "Router"):
// - apply rate: 256 simulated workers × 2 dp ranks (two child processes) send a burst of event-plane
//   envelopes as fast as they can; the router's rate is events (and blocks) applied per second of its wall time.
// - recovery: a real KvEventPublisher (recovery endpoint on) and a router cut off from NATS for 1,024 events
//   (a TCP proxy): the time from the event that shows the gap to the range applied.
// - scale: the same workers publish a shared-prefix workload at fixed rates while the router answers
//   findBestWorkerForHashes on every turn of its event loop; per rate, the lag (events sent, not yet applied),
//   and the answer latency (p50/p99/max of each call) and the longest wait between two answers; beside it,
//   the p50/p99 of a fixed computation timed the same way once per turn (the VM's own floor at that load).
//
// Workload per worker rank: 64 prefix chains of 8 blocks whose hashes every worker shares, stored first;
// then stores of 16 own blocks under one of the prefixes, each removed again 32 stores later (the index
// stays bounded). Envelopes are encoded once per rank as templates; a send copies one and writes its
// event id (a fixed-width msgpack uint64), so the children spend their time sending, not encoding.
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFileSync, mkdtempSync } from 'node:fs'
import { cpus, loadavg, tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import {
  computeBlockHashes,
  defaultSelector,
  encodeEnvelope,
  encodeRouterEvent,
  implementation,
  KvEventPublisher,
  KvRouter,
  type RouterEventValue,
  silentLogger,
} from '../ts/index.js'
import { kvEventsSubject } from '../ts/core/api.js'
import { startNatsServer } from '../__test__/helpers/nats-server.js'
import { startTcpProxy } from '../__test__/helpers/tcp-proxy.js'

const BS = 16
const PREFIXES = 64
const PREFIX_BLOCKS = 8
const SUFFIX_BLOCKS = 16
const LIVE = 32
const CYCLE = 64
const WORKERS = 256
const RANKS = 2
/** Event ids start here: every id is then a 9-byte msgpack uint64, patched in place. */
const ID_BASE = 1n << 40n
const MARK = 0xabcdef0123456789n

const prefixHash = (p: number, b: number) => BigInt(0x1000_0000 + p * 64 + b)
const suffixHash = (w: number, r: number, j: number, b: number) => (BigInt(w) << 32n) | (BigInt(r) << 28n) | BigInt(j * 64 + b + 1)

interface Template {
  bytes: Buffer
  /** Offset of the event id's 8 bytes (big endian). */
  at: number
  blocks: number
}

function template(ev: RouterEventValue): Template {
  ev.event.eventId = MARK
  const bytes = encodeEnvelope({
    publisherId: ev.workerId,
    sequence: 0n,
    publishedAt: 0,
    topic: 'kv-events',
    payload: encodeRouterEvent(ev),
  })
  const mark = Buffer.alloc(9)
  mark[0] = 0xcf
  mark.writeBigUInt64BE(MARK, 1)
  const at = bytes.indexOf(mark) + 1
  if (at <= 0) throw new Error('event id not found in the template')
  const data = ev.event.data
  return { bytes, at, blocks: data.type === 'stored' ? data.blocks.length : data.type === 'removed' ? data.blockHashes.length : 0 }
}

/** The rank's templates: its prefix stores, then one cycle of (store suffix j, remove suffix j - LIVE). */
function rankTemplates(w: number, r: number): { prefix: Template[]; cycle: Template[] } {
  const workerId = BigInt(w + 1)
  const ev = (data: RouterEventValue['event']['data']): RouterEventValue => ({ workerId, event: { eventId: 0n, dpRank: r, data } })
  const prefix: Template[] = []
  for (let p = 0; p < PREFIXES; p++)
    prefix.push(
      template(
        ev({
          type: 'stored',
          parentHash: null,
          blocks: Array.from({ length: PREFIX_BLOCKS }, (_, b) => ({
            blockHash: prefixHash(p, b),
            tokensHash: prefixHash(p, b),
            mmExtraInfo: null,
          })),
        }),
      ),
    )
  const cycle: Template[] = []
  for (let j = 0; j < CYCLE; j++) {
    const p = (w * 7 + r * 3 + j) % PREFIXES
    cycle.push(
      template(
        ev({
          type: 'stored',
          parentHash: prefixHash(p, PREFIX_BLOCKS - 1),
          blocks: Array.from({ length: SUFFIX_BLOCKS }, (_, b) => ({
            blockHash: suffixHash(w, r, j, b),
            tokensHash: suffixHash(w, r, j, b),
            mmExtraInfo: null,
          })),
        }),
      ),
    )
    const old = (j - LIVE + CYCLE) % CYCLE
    cycle.push(template(ev({ type: 'removed', blockHashes: Array.from({ length: SUFFIX_BLOCKS }, (_, b) => suffixHash(w, r, old, b)) })))
  }
  return { prefix, cycle }
}

// ---------------------------------------------------------------------------------------------------
// the child: a share of the workers

async function child(servers: string, subject: string, first: number, count: number): Promise<void> {
  const nc = await connect({ servers })
  const ranks: { prefix: Template[]; cycle: Template[]; next: number; id: bigint }[] = []
  for (let w = first; w < first + count; w++) for (let r = 0; r < RANKS; r++) ranks.push({ ...rankTemplates(w, r), next: 0, id: ID_BASE })
  let sent = 0
  let blocks = 0
  let rr = 0
  const sendOne = () => {
    const rank = ranks[rr]!
    rr = (rr + 1) % ranks.length
    const k = rank.next - rank.prefix.length
    // the first LIVE suffixes are only stored (their removes would name blocks never stored)
    const t = k < 0 ? rank.prefix[rank.next]! : k < LIVE ? rank.cycle[2 * k]! : rank.cycle[(2 * LIVE + k - LIVE) % (2 * CYCLE)]!
    rank.next++
    const b = Buffer.from(t.bytes)
    b.writeBigUInt64BE(rank.id++, t.at)
    nc.publish(subject, b)
    sent++
    blocks += t.blocks
  }
  console.log(JSON.stringify({ ready: true }))
  for await (const line of createInterface({ input: process.stdin })) {
    const cmd = JSON.parse(line) as { burst?: number; rate?: number; ms?: number }
    if (cmd.burst !== undefined) {
      // as fast as the connection takes them
      for (let i = 0; i < cmd.burst; i++) {
        sendOne()
        if ((i & 1023) === 1023) await nc.flush()
      }
      await nc.flush()
    } else {
      // `rate` events/s for `ms`, in 5 ms ticks
      const t0 = performance.now()
      let due = 0
      let lastReport = t0
      for (;;) {
        const now = performance.now()
        if (now - t0 >= cmd.ms!) break
        const target = Math.floor(((now - t0) / 1000) * cmd.rate!)
        while (due < target) {
          sendOne()
          due++
        }
        if (now - lastReport >= 100) {
          lastReport = now
          console.log(JSON.stringify({ sent, blocks }))
        }
        await nc.flush()
        await new Promise((r) => setTimeout(r, 5))
      }
      await nc.flush()
    }
    console.log(JSON.stringify({ done: true, sent, blocks }))
  }
  await nc.close()
}

// ---------------------------------------------------------------------------------------------------
// the parent

interface Child {
  proc: ChildProcess
  lines: AsyncIterator<string>
  sent: number
  blocks: number
}

async function children(servers: string, subject: string, n: number): Promise<Child[]> {
  const per = WORKERS / n
  const out: Child[] = []
  for (let i = 0; i < n; i++) {
    const proc = spawn(
      process.execPath,
      ['--import=tsx', fileURLToPath(import.meta.url), 'child', servers, subject, String(i * per), String(per)],
      { stdio: ['pipe', 'pipe', 'inherit'] },
    )
    const c: Child = { proc, lines: createInterface({ input: proc.stdout! })[Symbol.asyncIterator](), sent: 0, blocks: 0 }
    await c.lines.next() // ready
    out.push(c)
  }
  return out
}

/** Sends a command to every child; resolves with their final counts, updating sent/blocks on each progress line. */
async function command(cs: Child[], cmd: object): Promise<void> {
  for (const c of cs) c.proc.stdin!.write(`${JSON.stringify(cmd)}\n`)
  await Promise.all(
    cs.map(async (c) => {
      for (;;) {
        const l = await c.lines.next()
        if (l.done) throw new Error('a load child exited')
        const m = JSON.parse(l.value) as { sent: number; blocks: number; done?: boolean }
        c.sent = m.sent
        c.blocks = m.blocks
        if (m.done) return
      }
    }),
  )
}

const applied = (r: KvRouter) => {
  const s = r.stats()
  let n = s.invalid
  for (const byOutcome of Object.values(s.events)) for (const v of Object.values(byOutcome)) n += v
  return n
}
const sent = (cs: Child[]) => cs.reduce((n, c) => n + c.sent, 0)
const sentBlocks = (cs: Child[]) => cs.reduce((n, c) => n + c.blocks, 0)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const pct = (xs: Float64Array, n: number, p: number) => {
  const a = xs.slice(0, n).sort()
  return a[Math.min(n - 1, Math.floor((p / 100) * n))] ?? 0
}

/** The machine's floor for a call's time: a fixed computation of a few µs (no allocation, no native call). */
const FLOOR_VALUES = new Float64Array(4096).map((_, i) => i * 0.5)
let floorSink = 0
function floorWork(): void {
  let s = 0
  for (let i = 0; i < FLOOR_VALUES.length; i++) s += FLOOR_VALUES[i]! * 1.0000001
  floorSink += s
}

/**
 * Lookups on every turn of the event loop: each call's time and the waits between turns; once per turn,
 * the time of the fixed computation `floorWork` measured the same way (what the VM itself does to a
 * call's time at this load).
 */
function lookups(router: KvRouter) {
  const paths: BigUint64Array[] = []
  for (let p = 0; p < PREFIXES; p++)
    for (const w of [3, 100, 200])
      paths.push(
        BigUint64Array.from([
          ...Array.from({ length: PREFIX_BLOCKS }, (_, b) => prefixHash(p, b)),
          ...Array.from({ length: SUFFIX_BLOCKS }, (_, b) => suffixHash(w, 0, (p + 5) % CYCLE, b)),
        ]),
      )
  const calls = new Float64Array(4_000_000)
  const gaps = new Float64Array(4_000_000)
  const floor = new Float64Array(1_000_000)
  let n = 0
  let g = 0
  let f = 0
  let running = true
  let last = performance.now()
  let i = 0
  const turn = () => {
    if (!running) return
    const t0 = performance.now()
    if (g < gaps.length) gaps[g++] = t0 - last
    for (let k = 0; k < 4; k++) {
      const s = performance.now()
      router.findBestWorkerForHashes(paths[i++ % paths.length]!)
      if (n < calls.length) calls[n++] = performance.now() - s
    }
    const s = performance.now()
    floorWork()
    if (f < floor.length) floor[f++] = performance.now() - s
    last = performance.now()
    setImmediate(turn)
  }
  setImmediate(turn)
  return {
    reset() {
      n = 0
      g = 0
      f = 0
      last = performance.now()
    },
    summary() {
      return {
        answers: n,
        p50us: +(pct(calls, n, 50) * 1000).toFixed(1),
        p99us: +(pct(calls, n, 99) * 1000).toFixed(1),
        maxUs: +(pct(calls, n, 100) * 1000).toFixed(0),
        turnGapP99Ms: +pct(gaps, g, 99).toFixed(2),
        turnGapMaxMs: +pct(gaps, g, 100).toFixed(1),
        floorP50us: +(pct(floor, f, 50) * 1000).toFixed(1),
        floorP99us: +(pct(floor, f, 99) * 1000).toFixed(1),
      }
    },
    stop() {
      running = false
    },
  }
}

async function applyAndScale(servers: string): Promise<void> {
  const ns = 'bench'
  const subject = kvEventsSubject(ns, 'router')
  const router = await KvRouter.create({
    kvBlockSize: BS,
    source: { kind: 'event-plane', namespace: ns, component: 'router' },
    nats: { servers },
    logger: silentLogger,
    workerExpiryMs: 0,
  })
  const cs = await children(servers, subject, 2)
  try {
    // warm: every rank seen (its first sight asks for a recovery: nothing serves it), prefixes stored
    await command(cs, { burst: (WORKERS / 2) * RANKS * (PREFIXES + 2 * LIVE) })
    while (applied(router) < sent(cs) || !router.settled) await sleep(20)
    console.log(
      `router: ${router.stats().workerRanks} worker ranks, ${router.index.size()} blocks after warm-up, ${router.stats().recoveries.unavailable} first sights without an endpoint`,
    )

    // apply rate: a burst, timed from the command to the last event applied
    const burst = 100_000
    const a0 = applied(router)
    const b0 = sentBlocks(cs)
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const sending = command(cs, { burst: burst / 2 })
    await sending
    const sendMs = performance.now() - t0
    while (applied(router) - a0 < burst) await sleep(1)
    const ms = performance.now() - t0
    const cpu = process.cpuUsage(cpu0)
    const blocks = sentBlocks(cs) - b0
    console.log('\n| router apply from NATS (burst of 100,000 events, 2 sender processes) | value |')
    console.log('|---|---|')
    console.log(`| events/s (router wall time, first send to last applied) | ${Math.round(burst / (ms / 1000)).toLocaleString('en')} |`)
    console.log(`| blocks/s (stored + removed blocks carried) | ${Math.round(blocks / (ms / 1000)).toLocaleString('en')} |`)
    console.log(`| events/s per router CPU second | ${Math.round(burst / ((cpu.user + cpu.system) / 1e6)).toLocaleString('en')} |`)
    console.log(`| senders' own rate (events/s) | ${Math.round(burst / (sendMs / 1000)).toLocaleString('en')} |`)
    console.log(`| gaps seen (messages lost) | ${router.stats().gaps} |`)

    // scale: fixed rates with lookups on every turn
    const look = lookups(router)
    const rates = (process.env.ROUTER_RATES ?? '5000,20000,40000,60000,80000,120000').split(',').map(Number)
    console.log(
      '\n| offered events/s (blocks/s) | applied events/s | lag at end (events) | drained in (ms) | answers | p50 (µs) | p99 (µs) | max (µs) | turn gap p99 / max (ms) | fixed work p50 / p99 (µs) |',
    )
    console.log('|---|---|---|---|---|---|---|---|---|---|')
    for (const rate of rates) {
      const levelMs = Number(process.env.ROUTER_LEVEL_MS ?? 4000)
      const s0 = sent(cs)
      const bl0 = sentBlocks(cs)
      const ap0 = applied(router)
      look.reset()
      const l0 = performance.now()
      await command(cs, { rate: rate / 2, ms: levelMs })
      const levelWall = performance.now() - l0
      const lag = sent(cs) - applied(router)
      const appliedRate = (applied(router) - ap0) / (levelWall / 1000)
      const stats = look.summary()
      const d0 = performance.now()
      while (applied(router) < sent(cs)) await sleep(1)
      const drain = performance.now() - d0
      const blocksRate = (sentBlocks(cs) - bl0) / (levelWall / 1000)
      console.log(
        `| ${rate.toLocaleString('en')} (${Math.round(blocksRate).toLocaleString('en')}) | ${Math.round(appliedRate).toLocaleString('en')} | ${lag} | ${Math.round(drain)} | ${stats.answers} | ${stats.p50us} | ${stats.p99us} | ${stats.maxUs} | ${stats.turnGapP99Ms} / ${stats.turnGapMaxMs} | ${stats.floorP50us} / ${stats.floorP99us} |`,
      )
      void s0
    }
    look.stop()
    // lookups alone, nothing arriving
    const idle = lookups(router)
    await sleep(2000)
    const st = idle.summary()
    idle.stop()
    console.log(
      `\nanswers with no events arriving: ${st.answers} in 2 s, p50 ${st.p50us} µs, p99 ${st.p99us} µs, max ${st.maxUs} µs; the fixed work: p50 ${st.floorP50us} µs, p99 ${st.floorP99us} µs`,
    )
    // where an answer's time goes: the index lookup alone, and with the candidates and the selector
    const path = BigUint64Array.from([
      ...Array.from({ length: PREFIX_BLOCKS }, (_, b) => prefixHash(7, b)),
      ...Array.from({ length: SUFFIX_BLOCKS }, (_, b) => suffixHash(3, 0, 12, b)),
    ])
    const per = (f: () => void) => {
      let best = Number.POSITIVE_INFINITY
      for (let round = 0; round < 5; round++) {
        const t = performance.now()
        for (let k = 0; k < 2000; k++) f()
        best = Math.min(best, ((performance.now() - t) * 1000) / 2000)
      }
      return best.toFixed(1)
    }
    const m = router.findMatchesForHashes(path)
    // the work of the path with candidate objects: the decision's candidates built and the selector run in JS
    const js = defaultSelector()
    const objects = () => {
      const d = router.findBestWorkerForHashes(path)!
      js(d.candidates, { requestBlocks: path.length, blockHashes: path })
    }
    console.log(
      `one answer (best of 5 × 2,000, ${m.scores.length} ranks scored of ${router.stats().workerRanks}): index.findMatches ${per(() => router.findMatchesForHashes(path))} µs, findBestWorkerForHashes ${per(() => router.findBestWorkerForHashes(path))} µs, with the candidates built and the selector run over them in JS ${per(objects)} µs`,
    )
    console.log(`index: ${router.index.size()} blocks, ${router.stats().workerRanks} ranks; gaps ${router.stats().gaps}`)
    void floorSink
  } finally {
    for (const c of cs) c.proc.stdin!.end()
    await Promise.all(cs.map((c) => new Promise((r) => (c.proc.exitCode !== null ? r(null) : c.proc.on('exit', r)))))
    await router.close()
  }
}

/** A range recovery of 1,024 events: the router cut off from NATS (a TCP proxy) while the worker publishes. */
async function rangeRecovery(port: number): Promise<number> {
  const servers = `nats://127.0.0.1:${port}`
  const proxy = await startTcpProxy(port)
  const pub = await KvEventPublisher.create({
    namespace: 'rec',
    component: 'w',
    kvBlockSize: BS,
    workerId: 9n,
    nats: { servers },
    logger: silentLogger,
    recoveryEndpoint: true,
    localIndexer: { bufferSize: 4096 },
  })
  const nc: NatsConnection = await connect({ servers: `nats://127.0.0.1:${proxy.port}`, reconnectTimeWait: 20, maxReconnectAttempts: -1 })
  const router = await KvRouter.create({
    kvBlockSize: BS,
    source: { kind: 'event-plane', namespace: 'rec', component: 'w' },
    nats: nc,
    logger: silentLogger,
  })
  let d = 0
  const store = async () => {
    const t = Array.from({ length: 16 * BS }, (_, i) => d * 100_000 + i)
    d++
    await pub.publishStored({ tokenIds: t, blockHashes: computeBlockHashes(t, BS) })
  }
  try {
    await store()
    await pub.flush()
    while (!(router.settled && router.index.size() === 16)) await sleep(5)
    proxy.cut()
    for (let i = 0; i < 1024; i++) await store()
    await pub.flush()
    const reconnected = (async () => {
      for await (const s of nc.status()) if (s.type === 'reconnect') return
    })()
    proxy.resume()
    await reconnected
    await nc.flush()
    const t0 = performance.now()
    await store()
    await pub.flush()
    while (!(router.settled && router.index.size() === pub.localIndexer!.size())) await new Promise((r) => setImmediate(r))
    const ms = performance.now() - t0
    if (router.stats().recoveries.events !== 1) throw new Error(`expected one range recovery: ${JSON.stringify(router.stats().recoveries)}`)
    return ms
  } finally {
    await router.close()
    await nc.close()
    await pub.close()
    await proxy.close()
  }
}

export async function benchRouter(): Promise<void> {
  // a generous per-client pending limit: the burst may get ahead of the router
  const dir = mkdtempSync(join(tmpdir(), 'dynamo-kv-bench-nats-'))
  const conf = join(dir, 'nats.conf')
  writeFileSync(conf, 'max_pending: 1073741824\nmax_payload: 8388608\n')
  const nats = await startNatsServer({ args: ['-c', conf] })
  try {
    console.log(
      `\nrouter bench: ${implementation}, ${cpus().length} x ${cpus()[0]?.model}, load average ${loadavg()
        .map((x) => x.toFixed(1))
        .join(' ')} at start`,
    )
    const rec: number[] = []
    for (let i = 0; i < 3; i++) rec.push(await rangeRecovery(nats.port))
    console.log(`range recovery of 1,024 events (16 blocks each): ${rec.map((x) => x.toFixed(0)).join(', ')} ms (3 runs)`)
    await applyAndScale(nats.url)
    console.log(
      `load average at end: ${loadavg()
        .map((x) => x.toFixed(1))
        .join(' ')}`,
    )
  } finally {
    await nats.stop()
  }
}

if (process.argv[2] === 'child') {
  await child(process.argv[3]!, process.argv[4]!, Number(process.argv[5]), Number(process.argv[6]))
} else if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await benchRouter()
}
