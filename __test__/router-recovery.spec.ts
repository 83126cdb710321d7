// The workers' recovery endpoint (SPEC 7) on a real nats-server: request and response bodies equal
// Dynamo's JSON (router-wire.json, exact u64), replies come in chunks under the size asked for with a
// closing count, and malformed requests, other worker ids and unknown ranks get an Error body.
import test from 'ava'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { createInbox, headers as natsHeaders, type Msg } from '@nats-io/transport-node'
import * as kv from '../ts/index.js'
import { encodeRecoveryRequest, parseRangeResponse, parseRecoveryRequest, recoverySubject } from '../ts/router/wire.js'
import { Rng } from './helpers/gen-batches.js'
import { fallback, needNative, parityTest } from './helpers/impls.js'
import { manualOps, quiet, withNats } from './helpers/publishing.js'

const impl = kv.implementation
const shared = withNats(test)
const here = path.dirname(fileURLToPath(import.meta.url))
const wire = JSON.parse(readFileSync(path.join(here, 'fixtures', 'router-wire.json'), 'utf8')) as {
  recovery_json: { name: string; json: string }[]
}
const body = (name: string) => wire.recovery_json.find((r) => r.name === name)!.json

/** Sends a raw request and collects the reply: its chunks (with their headers) and the closing count. */
async function ask(subject: string, payload: Uint8Array): Promise<{ body: Buffer; chunks: Buffer[]; indexes: string[]; count: string }> {
  const nc = shared.nc
  const inbox = createInbox()
  const chunks: Buffer[] = []
  const indexes: string[] = []
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no reply')), 10_000)
    const sub = nc.subscribe(inbox, {
      callback: (_e, m: Msg) => {
        const idx = m.headers?.get('Kv-Chunk')
        if (idx) {
          indexes.push(idx)
          chunks.push(Buffer.from(m.data))
          return
        }
        clearTimeout(timer)
        sub.unsubscribe()
        resolve({ body: Buffer.concat(chunks), chunks, indexes, count: m.headers?.get('Kv-Chunks') ?? '' })
      },
    })
    nc.publish(subject, payload, { reply: inbox, headers: natsHeaders() })
  })
}

function removedEvent(workerId: bigint, dpRank: number, eventId: bigint): kv.RouterEventValue {
  return { workerId, event: { eventId, dpRank, data: { type: 'removed', blockHashes: [1n] } } }
}

test(`[${impl}] request bytes equal Dynamo's WorkerKvQueryRequest and parse back exactly`, (t) => {
  const req = { workerId: 7n, startEventId: 5n, endEventId: null }
  t.is(encodeRecoveryRequest(req).toString(), body('request'))
  t.deepEqual(parseRecoveryRequest(Buffer.from(body('request'))), req)
  const big = { workerId: 2n ** 64n - 1n, startEventId: 2n ** 53n + 1n, endEventId: 2n ** 63n }
  t.deepEqual(parseRecoveryRequest(encodeRecoveryRequest(big)), big)
  for (const bad of [
    '',
    '{',
    '[]',
    '{"worker_id":1.5}',
    '{"worker_id":-1}',
    '{"worker_id":18446744073709551616}',
    '{"x":1}',
    '{"worker_id":1,"worker_id":2}',
  ])
    t.throws(() => parseRecoveryRequest(Buffer.from(bad)), undefined, bad)
})

test.serial(`[${impl}] the endpoint answers Events, TooNew, InvalidRange and Error bodies byte for byte as Dynamo`, async (t) => {
  // worker 2^64-1, rank 1: the fixture's event (u64 values above 2^53)
  const events = body('events')
  const inner = Buffer.from(events.slice('{"Events":['.length, events.length - 2))
  const bigWorker = 2n ** 64n - 1n
  const local = new kv.LocalIndexer()
  local.applyEvent(kv.decodeRouterEvent(inner, 'json'))
  const ep = kv.RecoveryEndpoint.start({
    nats: shared.nc,
    namespace: 'rec',
    component: 'a',
    workerId: bigWorker,
    localIndexer: local,
    logger: quiet,
  })
  // worker 7, rank 0: ids 0..9
  const local7 = new kv.LocalIndexer()
  for (let id = 0n; id < 10n; id++) local7.applyEvent(removedEvent(7n, 0, id))
  const ep7 = kv.RecoveryEndpoint.start({
    nats: shared.nc,
    namespace: 'rec',
    component: 'a',
    workerId: 7n,
    localIndexer: local7,
    logger: quiet,
  })
  await shared.nc.flush()
  try {
    const id = 9007199254740993n
    let r = await ask(
      recoverySubject('rec', 'a', 1, bigWorker),
      encodeRecoveryRequest({ workerId: bigWorker, startEventId: id, endEventId: id }),
    )
    t.is(r.body.toString(), events)
    t.is(r.count, String(r.chunks.length))
    const s7 = (rank: number) => recoverySubject('rec', 'a', rank, 7n)
    r = await ask(s7(0), encodeRecoveryRequest({ workerId: 7n, startEventId: 15n, endEventId: null }))
    t.is(r.body.toString(), body('too_new_end_defaulted'))
    r = await ask(s7(0), encodeRecoveryRequest({ workerId: 7n, startEventId: 5n, endEventId: 3n }))
    t.is(r.body.toString(), body('invalid_range'))
    r = await ask(s7(0), encodeRecoveryRequest({ workerId: 8n, startEventId: 5n, endEventId: null }))
    t.is(r.body.toString(), body('error'))
    t.deepEqual(parseRangeResponse(r.body), { kind: 'Error', message: 'worker_id mismatch: asked 8, this is 7' })
    for (const bad of ['not json', '{"worker_id":7.0}', '{"worker_id":"7"}', '']) {
      r = await ask(s7(0), Buffer.from(bad))
      const parsed = parseRangeResponse(r.body)
      t.is(parsed.kind, 'Error', bad)
      t.regex((parsed as { message: string }).message, /^malformed request: /)
    }
    // a rank this worker never saw
    r = await ask(s7(3), encodeRecoveryRequest({ workerId: 7n, startEventId: null, endEventId: null }))
    t.is(parseRangeResponse(r.body).kind, 'Error')
    // ids 2..4, exact
    r = await ask(s7(0), encodeRecoveryRequest({ workerId: 7n, startEventId: 2n, endEventId: 4n }))
    const p = parseRangeResponse(r.body)
    t.is(p.kind, 'Events')
    t.deepEqual(
      (p as { events: Buffer[] }).events.map((e) => kv.decodeRouterEvent(e, 'json')),
      [2n, 3n, 4n].map((id) => removedEvent(7n, 0, id)),
    )
    t.is(ep7.stats().errors, 6, 'one worker mismatch, four malformed, one unknown rank')
    t.true(ep.stats().answered === 1)
  } finally {
    await ep.close()
    await ep7.close()
  }
})

test.serial(`[${impl}] a large dump comes in chunks of at most maxChunkBytes, indexed from 0, and reassembles exactly`, async (t) => {
  const local = new kv.LocalIndexer({ bufferSize: 16 })
  const workerId = 2n ** 60n + 3n
  // 3,000 stored blocks in chains of 10 (hashes above 2^53)
  let id = 0n
  for (let c = 0; c < 300; c++) {
    let parent: bigint | null = null
    for (let b = 0; b < 10; b++) {
      const h = (BigInt(c) << 40n) + BigInt(b) + 2n ** 62n
      local.applyEvent({
        workerId,
        event: {
          eventId: id++,
          dpRank: 2,
          data: { type: 'stored', parentHash: parent, blocks: [{ blockHash: h, tokensHash: h ^ 5n, mmExtraInfo: null }] },
        },
      })
      parent = h
    }
  }
  const ep = kv.RecoveryEndpoint.start({
    nats: shared.nc,
    namespace: 'rec',
    component: 'big',
    workerId,
    localIndexer: local,
    maxChunkBytes: 4096,
    logger: quiet,
  })
  await shared.nc.flush()
  try {
    // start older than the ring (16 events): a TreeDump
    const r = await ask(recoverySubject('rec', 'big', 2, workerId), encodeRecoveryRequest({ workerId, startEventId: 0n, endEventId: null }))
    t.true(r.chunks.length > 10, `${r.chunks.length} chunks`)
    t.true(r.chunks.every((c) => c.length <= 4096))
    t.deepEqual(
      r.indexes,
      r.chunks.map((_, i) => String(i)),
    )
    t.is(r.count, String(r.chunks.length))
    const p = parseRangeResponse(r.body)
    t.is(p.kind, 'TreeDump')
    const dumped = (p as { events: Buffer[] }).events.map((e) => kv.decodeRouterEvent(e, 'json'))
    t.deepEqual(dumped, local.dump())
    t.is(dumped.length, 3000)
  } finally {
    await ep.close()
  }
})

test.serial(`[${impl}] a dump whose index changes during a flush starts over from chunk 0 and then completes`, async (t) => {
  const local = new kv.LocalIndexer({ bufferSize: 16 })
  const workerId = 11n
  for (let c = 0n; c < 1000n; c++) {
    const h = (c << 20n) + 2n ** 62n
    local.applyEvent({
      workerId,
      event: {
        eventId: c,
        dpRank: 0,
        data: { type: 'stored', parentHash: null, blocks: [{ blockHash: h, tokensHash: h ^ 9n, mmExtraInfo: null }] },
      },
    })
  }
  // a flush after every chunk: the event loop runs between chunks
  const ep = kv.RecoveryEndpoint.start({
    nats: shared.nc,
    namespace: 'rec',
    component: 'restart',
    workerId,
    localIndexer: local,
    maxChunkBytes: 4096,
    flushBytes: 4096,
    logger: quiet,
  })
  await shared.nc.flush()
  try {
    const nc = shared.nc
    const inbox = createInbox()
    const indexes: string[] = []
    let chunks: Buffer[] = []
    const count = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no reply')), 10_000)
      const sub = nc.subscribe(inbox, {
        callback: (_e, m: Msg) => {
          const idx = m.headers?.get('Kv-Chunk')
          if (idx) {
            indexes.push(idx)
            if (idx === '0') chunks = []
            chunks.push(Buffer.from(m.data))
            // the first chunk arrives before the endpoint's flush is answered (same connection): an event
            // applied now lands between two chunks
            if (indexes.length === 1) local.applyEvent(removedEvent(workerId, 0, 5000n))
            return
          }
          clearTimeout(timer)
          sub.unsubscribe()
          resolve(m.headers?.get('Kv-Chunks') ?? '')
        },
      })
      nc.publish(
        recoverySubject('rec', 'restart', 0, workerId),
        encodeRecoveryRequest({ workerId, startEventId: null, endEventId: null }),
        {
          reply: inbox,
          headers: natsHeaders(),
        },
      )
    })
    t.is(indexes[0], '0')
    t.is(indexes[1], '0', 'started over after the first chunk')
    t.deepEqual(
      indexes.slice(1),
      chunks.map((_, i) => String(i)),
    )
    t.is(count, String(chunks.length))
    // the dump as of the restart: every block, with the event id of the event applied in between
    t.true(Buffer.concat(chunks).equals(local.eventsInRangeJson(0)))
    t.true(Buffer.concat(chunks).includes('"event_id":5000'))
    t.is(ep.stats().restarts, 1)
    t.is(ep.stats().answered, 1)
  } finally {
    await ep.close()
  }
})

test.serial(`[${impl}] the publisher's recoveryEndpoint option serves its local indexer; it needs the local indexer`, async (t) => {
  const p = await kv.KvEventPublisher.create({
    namespace: 'rec',
    component: 'pub',
    kvBlockSize: 4,
    workerId: 42n,
    nats: shared.nc,
    logger: quiet,
    recoveryEndpoint: true,
  })
  try {
    await p.publishStored({ tokenIds: [1, 2, 3, 4, 5, 6, 7, 8], blockHashes: [11n, 12n], dpRank: 0 })
    await p.publishRemoved([12n], 0)
    await p.flush()
    await shared.nc.flush()
    const r = await ask(recoverySubject('rec', 'pub', 0, 42n), encodeRecoveryRequest({ workerId: 42n, startEventId: 1n, endEventId: null }))
    const parsed = parseRangeResponse(r.body)
    t.is(parsed.kind, 'Events')
    t.deepEqual(
      (parsed as { events: Buffer[] }).events.map((e) => kv.decodeRouterEvent(e, 'json')),
      [{ workerId: 42n, event: { eventId: 1n, dpRank: 0, data: { type: 'removed', blockHashes: [12n] } } }],
    )
  } finally {
    await p.close()
  }
  await t.throwsAsync(
    kv.KvEventPublisher.create({
      namespace: 'rec',
      component: 'pub',
      kvBlockSize: 4,
      nats: shared.nc,
      logger: quiet,
      localIndexer: false,
      recoveryEndpoint: true,
    }),
    { message: /recoveryEndpoint needs the local indexer/ },
  )
})

parityTest(
  'eventsInRangeJson: native and fallback write the same bytes, equal to the answer of eventsInRange encoded event by event',
  (t) => {
    const impls = [needNative(), fallback]
    const ingestors = impls.map(
      (impl) => new kv.Ingestor({ kvBlockSize: 4, workerId: 2n ** 63n + 9n, localIndexer: { bufferSize: 40 } }, impl),
    )
    let i = 0
    for (const op of manualOps(77, 300, 4, 3, 97)) {
      for (const ing of ingestors) {
        if (op.kind === 'stored')
          ing.stored({ tokenIds: op.tokenIds, blockHashes: op.blockHashes, parentHash: op.parentHash, dpRank: op.dpRank }, 1000 + i)
        else if (op.kind === 'removed') ing.removed(op.blockHashes, op.dpRank, 1000 + i)
        else ing.cleared(op.dpRank, 1000 + i)
      }
      i++
    }
    const rng = new Rng(5)
    const kinds = new Set<string>()
    for (let q = 0; q < 400; q++) {
      const rank = rng.int(4) // rank 3 was never seen: Error
      const start = rng.chance(0.2) ? null : BigInt(rng.int(140))
      const end = rng.chance(0.5) ? null : BigInt(rng.int(140))
      const [a, b] = ingestors.map((ing) => ing.localIndexer!.eventsInRangeJson(rank, start, end))
      t.true(a!.equals(b!), `rank ${rank} [${start}, ${end}]`)
      const r = ingestors[0]!.localIndexer!.eventsInRange(rank, start, end)
      kinds.add(r.kind)
      if (r.kind === 'Events' || r.kind === 'TreeDump')
        t.is(a!.toString(), `{"${r.kind}":[${r.events.map((e) => kv.encodeRouterEvent(e, 'json').toString()).join(',')}]}`)
      else t.deepEqual(parseRangeResponse(a!), r.kind === 'Error' ? { kind: 'Error', message: r.message } : { ...r })
    }
    t.deepEqual([...kinds].sort(), ['Error', 'Events', 'InvalidRange', 'TooNew', 'TreeDump'])
    for (const ing of ingestors) ing.close()
  },
)
