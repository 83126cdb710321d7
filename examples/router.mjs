// The router side: follow the workers' KV events on NATS into a RadixIndex, and send a request to the
// worker that already holds the longest prefix of its tokens.
//
//   NATS_SERVER=nats://127.0.0.1:4222 node examples/router.mjs
//
// To be complete on its own, this program also runs two workers (publishers using the manual API) that
// store different documents; a real router only subscribes. Prints one JSON line: the scores and the
// worker chosen for a request that starts with document A.
import { connect } from '@nats-io/transport-node'
import { computeBlockHashes, KvEventPublisher, RadixIndex, silentLogger } from 'dynamo-kv'

const KV_BLOCK_SIZE = 16
const servers = process.env.NATS_SERVER || 'nats://localhost:4222'
const subject = 'namespace.dynamo.component.backend.kv-events' // SPEC 5: namespace.{ns}.component.{c}.kv-events

// --- the router ------------------------------------------------------------------------------------
const index = new RadixIndex()
const nc = await connect({ servers })
let received = 0
const subscription = nc.subscribe(subject, {
  callback: (err, msg) => {
    if (err) return
    index.applyEncoded(msg.data, 'envelope') // failures (e.g. an unknown parent) are counted, never thrown
    received++
  },
})
await nc.flush() // the subscription is registered before the workers publish

/** The worker holding the longest prefix of `tokens`; null when no worker holds any of it. */
function chooseWorker(tokens) {
  const { scores } = index.findMatchesForTokens(tokens, KV_BLOCK_SIZE)
  const best = scores.reduce((a, b) => (b.score > a.score ? b : a), { workerId: null, dpRank: 0, score: 0 })
  return { best, scores }
}

// --- two workers, for the example ------------------------------------------------------------------
const tokens = (start, n) => Array.from({ length: n }, (_, i) => start + i)
const documentA = tokens(1000, 64) // 4 blocks
const documentB = tokens(5000, 64)
const workers = []
for (const [workerId, document] of [
  [1n, documentA],
  [2n, documentB],
]) {
  const publisher = await KvEventPublisher.create({
    namespace: 'dynamo',
    component: 'backend',
    kvBlockSize: KV_BLOCK_SIZE,
    workerId,
    nats: { servers },
    logger: silentLogger,
  })
  await publisher.publishStored({ tokenIds: document, blockHashes: computeBlockHashes(document, KV_BLOCK_SIZE) })
  await publisher.flush()
  workers.push(publisher)
}

// --- route a request ---------------------------------------------------------------------------------
const request = [...documentA, ...tokens(9000, 20)] // document A, then a question about it
for (let i = 0; i < 200 && received < workers.length; i++) await new Promise((resolve) => setTimeout(resolve, 10))
const { best, scores } = chooseWorker(request)
console.log(
  JSON.stringify({
    received,
    scores: scores.map((s) => ({ workerId: String(s.workerId), dpRank: s.dpRank, score: s.score })),
    chosen: best.workerId === null ? null : String(best.workerId),
  }),
)

for (const publisher of workers) await publisher.close()
subscription.unsubscribe()
await nc.drain()
