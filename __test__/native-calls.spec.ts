// The native boundary is crossed once per engine message (DESIGN.md, SPEC 1): a simulated engine feeds a
// KvEventPublisher over real ZeroMQ sockets, with dropped seqs (so gaps are replayed) and truncated stores
// (so the core raises warnings), while every method of the loaded implementation's RawIngestor, and its
// peekBatch, counts its calls.
import test from 'ava'
import * as kv from '../ts/index.js'
import type { RawBinding } from '../ts/core/binding.js'
import { raw } from '../ts/core/native.js'
import { EngineSimulator } from '../ts/sim/engine.js'
import { arr, encode, map, nil, s, u } from './helpers/mp.js'
import { blocksOf, withNats } from './helpers/publishing.js'
import { settle, sorted } from './helpers/zmq.js'

const impl = kv.implementation
const shared = withNats(test)

/** Wraps every prototype method of RawIngestor, and peekBatch, with counters of the calls made into them. */
function countCalls(binding: RawBinding): { ingestor: Map<string, number>; peekBatch: () => number; restore: () => void } {
  const proto = binding.RawIngestor.prototype as Record<string, unknown>
  const ingestor = new Map<string, number>()
  let depth = 0
  const restore: (() => void)[] = []
  for (const name of Object.getOwnPropertyNames(proto)) {
    const f = proto[name]
    if (name === 'constructor' || typeof f !== 'function') continue
    proto[name] = function (this: unknown, ...args: unknown[]) {
      // only calls from outside count: the fallback's methods call each other
      if (depth === 0) ingestor.set(name, (ingestor.get(name) ?? 0) + 1)
      depth++
      try {
        return (f as (...a: unknown[]) => unknown).apply(this, args)
      } finally {
        depth--
      }
    }
    restore.push(() => {
      proto[name] = f
    })
  }
  const peek = binding.peekBatch
  let peeks = 0
  binding.peekBatch = (payload) => {
    peeks++
    return peek.call(binding, payload)
  }
  restore.push(() => {
    binding.peekBatch = peek
  })
  return {
    ingestor,
    peekBatch: () => peeks,
    restore: () => {
      for (const r of restore) r()
    },
  }
}

/** A store whose token_ids cover only the first of its two blocks: the core truncates it and warns. */
function truncatedStore(hashes: [bigint, bigint]): Buffer {
  const tokens = Array.from({ length: 16 }, (_, i) => u(i + 1))
  const store = map({
    type: s('BlockStored'),
    block_hashes: arr(u(hashes[0]), u(hashes[1])),
    parent_block_hash: nil,
    token_ids: arr(...tokens),
    block_size: u(16),
    lora_id: nil,
  })
  return encode(arr(u(1), arr(store), u(0)))
}

test.serial(`[${impl}] one call into the core per engine message, replays and warnings included`, async (t) => {
  const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', seed: 61, encoding: 'mixed' })
  const warnings: string[] = []
  const logger = { ...kv.silentLogger, warn: (_o: object, msg?: string) => void warnings.push(msg ?? '') }
  const p = await kv.KvEventPublisher.create({
    namespace: 'calls',
    component: 'count',
    kvBlockSize: sim.kvBlockSize,
    workerId: 21n,
    nats: shared.nc,
    logger,
    zmq: { endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint! },
  })
  const counts = countCalls(raw)
  try {
    await sim.run(20)
    await settle(p.source!, sim)
    for (let k = 0; k < 10; k++) {
      // a dropped seq is a gap: the source replays it from the engine's buffer
      sim.drop(sim.nextSeq + 3n)
      await sim.run(80)
      await sim.sendPayload(truncatedStore([0xfeed0000n + BigInt(2 * k), 0xfeed0001n + BigInt(2 * k)]))
      await sim.run(16)
      await settle(p.source!, sim)
    }
    // read before stats() below, which asks the ingestor for its counters
    const perMethod = new Map(counts.ingestor)
    const peeks = counts.peekBatch()
    const messages = Number(sim.nextSeq)
    const s = p.stats().source!
    t.true(messages >= 1000, `${messages} engine messages`)
    t.is(s.ingested, sim.nextSeq, 'every engine message ingested once')
    t.true(s.replays >= 10n, `${s.replays} replays`)
    const injected = (h: bigint) => h >> 16n === 0xfeedn
    t.deepEqual(
      blocksOf(p.localIndexer!, 21n, 0).filter((h) => !injected(h)),
      sorted(sim.held()),
      "the local index holds the engine's blocks",
    )
    t.is(warnings.filter((w) => w.includes('truncated')).length, 3, 'the core warns 3 times per publisher, through ingest')

    const calls = [...perMethod.values()].reduce((a, b) => a + b, 0)
    const detail = JSON.stringify(Object.fromEntries(perMethod))
    const counted = messages
    t.true(calls <= counted, `${calls} RawIngestor calls for ${counted} engine messages: ${detail}`)
    t.is(perMethod.get('ingestPacked'), counted, `one ingestPacked per message: ${detail}`)
    // a peekBatch of the fallback costs no crossing; a native one does
    if (impl === 'native')
      t.true(
        calls + peeks <= counted,
        `${peeks} native peekBatch calls from the ZMQ source besides ${calls} RawIngestor calls for ${counted} engine messages ` +
          '(the source is to read the batch header with the TypeScript peekBatch, not through the loaded binding)',
      )
  } finally {
    counts.restore()
    await p.close()
    sim.close()
  }
})

test.serial(`[${impl}] dynamo-1.4: one call into the core per engine message`, (t) => {
  const ing = new kv.Ingestor({ kvBlockSize: 16, workerId: 22n, wire: 'dynamo-1.4' })
  const counted = countCalls(raw)
  try {
    const batches = Array.from({ length: 50 }, (_, i) => truncatedStore([BigInt(2 * i + 1), BigInt(2 * i + 2)]))
    let payloads = 0
    for (const b of batches) payloads += ing.ingest(b).count
    t.is(payloads, batches.length)
    t.deepEqual([...counted.ingestor.entries()], [['ingestPacked', batches.length]])
  } finally {
    counted.restore()
  }
})
