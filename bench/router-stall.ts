// Does a large apply stall lookups? A KvRouter (event plane) on a private nats-server meets a worker (a
// child process) already holding N blocks: its first sight asks for a dump, which the router splits and
// applies in slices. A timer asks findBestWorker every millisecond meanwhile; the longest wait between
// two lookups is the stall the router's lookups see. The worker's own cost of answering (its local
// indexer's dump as JSON, which its endpoint sends, and as objects) is timed in the child. Also: the live path's cost per event (the
// envelope peek, the core's apply, and the router's whole in-order path), and one answer's own time with
// nothing else running (min and percentiles over 20,000 calls).
//
//   npx tsx bench/router-stall.ts            (BLOCKS=20000,100000 to choose the sizes)
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import {
  computeBlockHashes,
  defaultSelector,
  encodeEnvelope,
  encodeRouterEvent,
  implementation,
  Ingestor,
  KvEventPublisher,
  KvRouter,
  RadixIndex,
  type RouterEventValue,
  silentLogger,
} from '../ts/index.js'
import { peekEnvelope } from '../ts/router/wire.js'
import { startNatsServer } from '../__test__/helpers/nats-server.js'

const BS = 16
const SIZES = (process.env.BLOCKS ?? '10000,50000,200000').split(',').map(Number)

/** Tokens of document d: 16 blocks of distinct tokens. */
const doc = (d: number) => Array.from({ length: 16 * BS }, (_, i) => d * 100_000 + i)

/** The child: a worker holding `blocks` blocks; on a line on stdin it publishes one more event. */
async function worker(servers: string, ns: string, blocks: number): Promise<void> {
  const p = await KvEventPublisher.create({
    namespace: ns,
    component: 'w',
    kvBlockSize: BS,
    workerId: 1n,
    nats: { servers },
    logger: silentLogger,
    recoveryEndpoint: true,
    localIndexer: { bufferSize: 16 },
  })
  for (let d = 0; d < blocks / 16; d++) {
    const t = doc(d)
    await p.publishStored({ tokenIds: t, blockHashes: computeBlockHashes(t, BS) })
  }
  await p.flush()
  let t0 = performance.now()
  p.localIndexer!.eventsInRange(0, null, null)
  const objectsMs = performance.now() - t0
  t0 = performance.now()
  const json = p.localIndexer!.eventsInRangeJson(0, null, null)
  const jsonMs = performance.now() - t0
  console.log(JSON.stringify({ ready: true, size: p.localIndexer!.size(), objectsMs, jsonMs, bytes: json.length }))
  for await (const _ of createInterface({ input: process.stdin })) {
    const t = doc(blocks / 16 + 1)
    await p.publishStored({ tokenIds: t, blockHashes: computeBlockHashes(t, BS) })
    await p.flush()
  }
  await p.close()
}

async function stall(servers: string, blocks: number) {
  const ns = `stall${blocks}`
  const child = spawn(process.execPath, ['--import=tsx', fileURLToPath(import.meta.url), 'worker', servers, ns, String(blocks)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
  const ready = JSON.parse((await lines.next()).value as string) as { size: number; objectsMs: number; jsonMs: number; bytes: number }
  const router = await KvRouter.create({
    kvBlockSize: BS,
    source: { kind: 'event-plane', namespace: ns, component: 'w' },
    nats: { servers },
    logger: silentLogger,
  })
  const query = doc(3)
  let maxGap = 0
  let lookups = 0
  let last = performance.now()
  const timer = setInterval(() => {
    const now = performance.now()
    maxGap = Math.max(maxGap, now - last)
    last = now
    router.findBestWorker(query)
    lookups++
  }, 1)
  const t0 = performance.now()
  child.stdin!.write('go\n')
  const want = ready.size + 16
  while (!(router.settled && router.index.size() === want)) await new Promise((r) => setTimeout(r, 1))
  const recoveryMs = performance.now() - t0
  clearInterval(timer)
  child.stdin!.end()
  await new Promise((r) => child.on('exit', r))
  await router.close()
  return {
    blocks,
    workerDumpObjectsMs: Math.round(ready.objectsMs),
    workerDumpJsonMs: Math.round(ready.jsonMs),
    replyBytes: ready.bytes,
    recoveryMs: Math.round(recoveryMs),
    routerMaxLookupGapMs: Math.round(maxGap),
    lookupsDuringRecovery: lookups,
  }
}

async function livePath() {
  const ing = new Ingestor({ kvBlockSize: BS, workerId: 5n })
  const envs: Buffer[] = []
  for (let d = 0; d < 2000; d++) {
    const t = doc(d)
    for (const pl of ing.stored({ tokenIds: t, blockHashes: computeBlockHashes(t, BS) }, 1).payloads) envs.push(Buffer.from(pl))
  }
  let peekNs = Number.POSITIVE_INFINITY
  let applyNs = Number.POSITIVE_INFINITY
  for (let round = 0; round < 4; round++) {
    let t0 = performance.now()
    for (const e of envs) peekEnvelope(e)
    peekNs = Math.min(peekNs, ((performance.now() - t0) * 1e6) / envs.length)
    const index = new RadixIndex()
    t0 = performance.now()
    for (const e of envs) index.applyEncoded(e, 'envelope')
    applyNs = Math.min(applyNs, ((performance.now() - t0) * 1e6) / envs.length)
    index.close()
  }
  // the router's whole path for an envelope in order (manual source: no NATS; the core's gate reads,
  // checks and applies it in one call) against the peek and applyEncoded the object path ran, event by
  // event alternately, so that both see the same machine
  const rounds: { routerNs: number; peekApplyNs: number }[] = []
  for (let round = 0; round < 8; round++) {
    const router = await KvRouter.create({ kvBlockSize: BS, source: { kind: 'manual' }, logger: silentLogger })
    const index = new RadixIndex()
    router.applyEnvelope(envs[0]!)
    index.applyEncoded(envs[0]!, 'envelope')
    let tRouter = 0
    let tOld = 0
    for (let i = 1; i < envs.length; i++) {
      let t0 = performance.now()
      router.applyEnvelope(envs[i]!)
      tRouter += performance.now() - t0
      t0 = performance.now()
      peekEnvelope(envs[i]!)
      index.applyEncoded(envs[i]!, 'envelope')
      tOld += performance.now() - t0
    }
    if (router.stats().events.stored.applied !== envs.length || router.index.size() !== index.size())
      throw new Error('not every event was applied')
    rounds.push({ routerNs: (tRouter * 1e6) / (envs.length - 1), peekApplyNs: (tOld * 1e6) / (envs.length - 1) })
    index.close()
    await router.close()
  }
  const summary = (k: 'routerNs' | 'peekApplyNs') => {
    const v = rounds.map((r) => r[k]).sort((a, b) => a - b)
    return { min: Math.round(v[0]!), median: Math.round(v[v.length >> 1]!) }
  }
  return {
    events: envs.length,
    blocksPerEvent: 16,
    bytesPerEvent: envs[0]!.length,
    peekNs: Math.round(peekNs),
    applyNs: Math.round(applyNs),
    alternately: { routerApplyEnvelopeNs: summary('routerNs'), peekThenApplyEncodedNs: summary('peekApplyNs') },
  }
}

/**
 * One answer's own time, no NATS and nothing else running in the process: a manual-source router holding
 * the router bench's workload (256 workers × 2 ranks, 64 shared prefix chains of 8 blocks, 32 stores of
 * 16 own blocks per rank), 20,000 calls per variant, 3 rounds; min and percentiles of each call.
 */
async function answerPath() {
  const prefixHash = (p: number, b: number) => BigInt(0x1000_0000 + p * 64 + b)
  const suffixHash = (w: number, r: number, j: number, b: number) => (BigInt(w) << 32n) | (BigInt(r) << 28n) | BigInt(j * 64 + b + 1)
  const router = await KvRouter.create({ kvBlockSize: 16, source: { kind: 'manual' }, logger: silentLogger })
  const blocks = (hash: (b: number) => bigint, n: number) =>
    Array.from({ length: n }, (_, b) => ({ blockHash: hash(b), tokensHash: hash(b), mmExtraInfo: null }))
  for (let w = 0; w < 256; w++)
    for (let r = 0; r < 2; r++) {
      let eventId = 0n
      const send = (data: RouterEventValue['event']['data']) =>
        router.applyEnvelope(
          encodeEnvelope({
            publisherId: 1n,
            sequence: 0n,
            publishedAt: 0,
            topic: 'kv-events',
            payload: encodeRouterEvent({ workerId: BigInt(w + 1), event: { eventId: eventId++, dpRank: r, data } }),
          }),
        )
      for (let p = 0; p < 64; p++) send({ type: 'stored', parentHash: null, blocks: blocks((b) => prefixHash(p, b), 8) })
      for (let j = 0; j < 32; j++)
        send({ type: 'stored', parentHash: prefixHash(j % 64, 7), blocks: blocks((b) => suffixHash(w, r, j, b), 16) })
    }
  const path = BigUint64Array.from([
    ...Array.from({ length: 8 }, (_, b) => prefixHash(7, b)),
    ...Array.from({ length: 16 }, (_, b) => suffixHash(3, 0, 12, b)),
  ])
  const js = defaultSelector()
  const variants: Record<string, () => void> = {
    findMatches: () => router.findMatchesForHashes(path),
    findBestWorkerForHashes: () => router.findBestWorkerForHashes(path),
    // the work of the object path: the decision's candidates built and the selector run over them in JS
    withCandidatesAndJsSelector: () => {
      const d = router.findBestWorkerForHashes(path)!
      js(d.candidates, { requestBlocks: path.length, blockHashes: path })
    },
  }
  const out: Record<string, { minUs: number; p50Us: number; p99Us: number }> = {}
  const N = 20_000
  const t = new Float64Array(N)
  for (let round = 0; round < 3; round++)
    for (const [name, f] of Object.entries(variants)) {
      for (let i = 0; i < N; i++) {
        const a = performance.now()
        f()
        t[i] = performance.now() - a
      }
      t.sort()
      const us = (x: number) => Math.round(x * 10_000) / 10
      const prev = out[name]
      const now = { minUs: us(t[0]!), p50Us: us(t[N / 2]!), p99Us: us(t[Math.floor(N * 0.99)]!) }
      // the best round of three (the least disturbed by other processes)
      if (prev === undefined || now.p99Us < prev.p99Us) out[name] = now
    }
  await router.close()
  return { ranks: 512, ...out }
}

if (process.argv[2] === 'worker') {
  await worker(process.argv[3]!, process.argv[4]!, Number(process.argv[5]))
} else {
  const nats = await startNatsServer()
  try {
    console.log(JSON.stringify({ implementation, live: await livePath() }))
    console.log(JSON.stringify({ answer: await answerPath() }))
    for (const n of SIZES) console.log(JSON.stringify(await stall(nats.url, n)))
  } finally {
    await nats.stop()
  }
}
