// The demo: the worker-side job on an embedded default, no engine and no NATS needed.
//  1. A built-in vLLM engine batch (two stores, one with a LoRA adapter, then an eviction) decoded into the
//     Dynamo router events it becomes, and the bytes an Ingestor publishes for it in each mode.
//  2. A simulated engine publishing over real ZeroMQ sockets (PUB + ROUTER replay, as vLLM does), with one
//     batch lost on the live socket and the first ones lost to ZMQ's slow joiner: the ZMQ source replays
//     what it missed, and the local index ends equal to the blocks the engine holds. With `--nats nats://host:4222` the same run goes through a
//     KvEventPublisher to that server (event plane).
// Run: npm run demo [-- --nats URL] [-- <hex batch>]
import {
  decodeEngineBatch,
  decodeRouterEvent,
  implementation,
  Ingestor,
  KvEventPublisher,
  ZmqSource,
  type IngestMode,
  silentLogger,
} from '../index.js'
import { EngineSimulator } from '../sim/index.js'

const SAMPLE_BATCH_HEX =
  '93cb41da4a7b201000009388a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368657392cf1f2e3d4c5b6a7988cf8899aabbccddeeffb1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f696473dc0020cd03e8cd03e9cd03eacd03ebcd03eccd03edcd03eecd03efcd03f0cd03f1cd03f2cd03f3cd03f4cd03f5cd03f6cd03f7cd03f8cd03f9cd03facd03fbcd03fccd03fdcd03fecd03ffcd0400cd0401cd0402cd0403cd0404cd0405cd0406cd0407aa626c6f636b5f73697a6510a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c088a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368657391cf0123456789abcdefb1706172656e745f626c6f636b5f68617368cf8899aabbccddeeffa9746f6b656e5f696473dc0010cd07d0cd07d1cd07d2cd07d3cd07d4cd07d5cd07d6cd07d7cd07d8cd07d9cd07dacd07dbcd07dccd07ddcd07decd07dfaa626c6f636b5f73697a6510a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65ab73716c2d6164617074657283a474797065ac426c6f636b52656d6f766564ac626c6f636b5f68617368657391cf0123456789abcdefa66d656469756da347505500'

const KV_BLOCK_SIZE = 16
const show = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x), 2)

function oneBatch(hex: string): void {
  const batch = Buffer.from(hex, 'hex')
  console.log(`1. one engine batch: ${batch.length} bytes of msgpack, kv block size ${KV_BLOCK_SIZE}\n`)
  console.log('router events (decodeEngineBatch):')
  console.log(show(decodeEngineBatch(batch, KV_BLOCK_SIZE)))
  const modes: IngestMode[] = ['event-plane', 'jetstream']
  for (const mode of modes) {
    const ingestor = new Ingestor({ kvBlockSize: KV_BLOCK_SIZE, workerId: 7n, mode })
    const result = ingestor.ingest(batch, Date.UTC(2026, 0, 1))
    console.log(`\n${mode}: ${result.payloads.length} payloads, first event id ${result.firstEventId}`)
    for (const p of result.payloads) {
      if (mode === 'jetstream') console.log(`  ${p.toString('utf8')}`)
      else console.log(`  envelope, ${p.length} bytes: ${p.toString('hex').slice(0, 72)}...`)
    }
    if (mode === 'jetstream' && result.payloads[0]) {
      const ev = decodeRouterEvent(result.payloads[0], 'json')
      console.log(`  (decoded back: worker ${ev.workerId}, event ${ev.event.eventId}, ${ev.event.data.type})`)
    }
  }
}

async function engineOverZmq(natsUrl: string | null): Promise<void> {
  console.log(`\n2. a simulated engine over ZeroMQ${natsUrl ? `, published to ${natsUrl}` : ' (no NATS: into a local Ingestor)'}`)
  const sim = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', seed: 7, kvBlockSize: KV_BLOCK_SIZE, publisherId: true })
  const zmq = { endpoint: sim.endpoint, replayEndpoint: sim.replayEndpoint!, logger: silentLogger }
  console.log(`engine: PUB ${sim.endpoint}, replay ROUTER ${sim.replayEndpoint}`)
  let publisher: KvEventPublisher | null = null
  let ingestor: Ingestor | null = null
  let source: ZmqSource
  if (natsUrl) {
    publisher = await KvEventPublisher.create({
      namespace: 'demo',
      component: 'backend',
      kvBlockSize: KV_BLOCK_SIZE,
      workerId: 7n,
      nats: { servers: natsUrl },
      logger: silentLogger,
      zmq,
    })
    source = publisher.source!
  } else {
    const ing = new Ingestor({ kvBlockSize: KV_BLOCK_SIZE, workerId: 7n, localIndexer: true })
    ingestor = ing
    source = await ZmqSource.create(zmq, { ingest: async (p) => ing.ingest(p), resetRank: async (r) => ing.cleared(r) })
  }
  sim.drop(100) // lost on the live socket; still in the engine's replay buffer
  await sim.run(300)
  // a live engine keeps publishing; the gap after the last batch shows with the next one
  const last = sim.nextSeq
  for (let i = 0; i < 400; i++) {
    await sim.heartbeat()
    const t = source.trackers()[0]
    if (t && t.lastApplied !== null && t.lastApplied >= last && !t.replaying) break
    await new Promise((r) => setTimeout(r, 10))
  }
  await publisher?.flush()
  const s = source.stats()
  const index = publisher ? publisher.localIndexer! : ingestor!.localIndexer!
  const indexed = new Set(index.dump().flatMap((e) => (e.event.data.type === 'stored' ? e.event.data.blocks.map((b) => b.blockHash) : [])))
  const held = sim.held()
  const equal = held.size === indexed.size && [...held].every((h) => indexed.has(h))
  console.log(
    `batches received ${s.received}, ingested ${s.ingested}; gaps ${s.gaps}, replays ${s.replays}, recovered ${s.recovered}, lost ${s.lost}`,
  )
  const emitted = publisher ? publisher.stats().emitted : null
  if (emitted) console.log(`published: ${emitted.stored} stored, ${emitted.removed} removed, ${emitted.cleared} cleared events`)
  console.log(`local index: ${indexed.size} blocks; engine holds ${held.size}; equal: ${equal ? 'yes' : 'NO'}`)
  if (publisher) await publisher.close()
  else await source.close()
  sim.close()
  if (!equal) process.exitCode = 1
}

async function main(): Promise<void> {
  const args = process.argv.slice(2)
  const natsAt = args.indexOf('--nats')
  const natsUrl = natsAt >= 0 ? (args.splice(natsAt, 2)[1] ?? null) : null
  console.log(`dynamo-kv demo (implementation: ${implementation})\n`)
  oneBatch(args[0] ?? SAMPLE_BATCH_HEX)
  await engineOverZmq(natsUrl)
}

main().catch((err) => {
  console.error(err)
  process.exitCode = 1
})
