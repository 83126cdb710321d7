// The demo: decodes a built-in vLLM engine batch (what vLLM's ZMQ publisher sends: two stores, one
// with a LoRA adapter, then an eviction) and prints the Dynamo router events it becomes, then the
// bytes an Ingestor would publish in each mode. No engine, no NATS. Run: npm run demo [-- <hex batch>]
import { Ingestor, decodeEngineBatch, decodeRouterEvent, implementation, type IngestMode } from './index.js'

const SAMPLE_BATCH_HEX =
  '93cb41da4a7b201000009388a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368657392cf1f2e3d4c5b6a7988cf8899aabbccddeeffb1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f696473dc0020cd03e8cd03e9cd03eacd03ebcd03eccd03edcd03eecd03efcd03f0cd03f1cd03f2cd03f3cd03f4cd03f5cd03f6cd03f7cd03f8cd03f9cd03facd03fbcd03fccd03fdcd03fecd03ffcd0400cd0401cd0402cd0403cd0404cd0405cd0406cd0407aa626c6f636b5f73697a6510a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c088a474797065ab426c6f636b53746f726564ac626c6f636b5f68617368657391cf0123456789abcdefb1706172656e745f626c6f636b5f68617368cf8899aabbccddeeffa9746f6b656e5f696473dc0010cd07d0cd07d1cd07d2cd07d3cd07d4cd07d5cd07d6cd07d7cd07d8cd07d9cd07dacd07dbcd07dccd07ddcd07decd07dfaa626c6f636b5f73697a6510a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65ab73716c2d6164617074657283a474797065ac426c6f636b52656d6f766564ac626c6f636b5f68617368657391cf0123456789abcdefa66d656469756da347505500'

const KV_BLOCK_SIZE = 16

const show = (v: unknown) => JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x), 2)

function main(): void {
  const hex = process.argv[2] ?? SAMPLE_BATCH_HEX
  const batch = Buffer.from(hex, 'hex')
  console.log(`dynamo-kv demo (implementation: ${implementation})`)
  console.log(`engine batch: ${batch.length} bytes of msgpack, kv block size ${KV_BLOCK_SIZE}\n`)

  const decoded = decodeEngineBatch(batch, KV_BLOCK_SIZE)
  console.log('router events (decodeEngineBatch):')
  console.log(show(decoded))

  const workerId = 7n
  const modes: IngestMode[] = ['event-plane', 'jetstream']
  for (const mode of modes) {
    const ingestor = new Ingestor({ kvBlockSize: KV_BLOCK_SIZE, workerId, mode })
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

main()
