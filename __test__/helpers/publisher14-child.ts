// A dynamo-1.4 KvEventPublisher in its own process, for crash tests: its configuration comes from the
// environment (Dynamo's variables and DYNAMO_KV_WORKER_ID), it publishes one stored event on dp rank 0,
// prints `published` once that event was sent, and runs until killed.
import { KvEventPublisher, silentLogger } from '../../ts/index.js'

const publisher = await KvEventPublisher.create({
  wire: 'dynamo-1.4',
  namespace: 'dynamo',
  component: 'backend',
  kvBlockSize: 4,
  eventPlaneHost: '127.0.0.1',
  zmqSettleMs: 0,
  logger: silentLogger,
})
await publisher.publishStored({ tokenIds: [1, 2, 3, 4], blockHashes: [100n] })
while (publisher.stats().sink.published < 1) await new Promise((r) => setTimeout(r, 10))
console.log('published')
setInterval(() => undefined, 1 << 30)
