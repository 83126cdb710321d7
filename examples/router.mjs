// The router side: a KvRouter follows the workers' KV events on NATS into one index (asking a worker's
// recovery endpoint for anything it missed) and chooses the worker for each request by prefix overlap
// and load.
//
//   NATS_SERVER=nats://127.0.0.1:4222 node examples/router.mjs
//
// To be complete on its own, this program also runs two workers (publishers using the manual API) that
// store different documents; a real router only listens. Prints one JSON line: the scores and the
// worker chosen for a request that starts with document A.
import { computeBlockHashes, KvEventPublisher, KvRouter, silentLogger } from 'dynamo-kv'

const KV_BLOCK_SIZE = 16
const servers = process.env.NATS_SERVER || 'nats://localhost:4222'

// --- the router ------------------------------------------------------------------------------------
const router = await KvRouter.create({
  kvBlockSize: KV_BLOCK_SIZE,
  source: { kind: 'event-plane', namespace: 'dynamo', component: 'backend' }, // namespace.dynamo.component.backend.kv-events
  nats: { servers },
  logger: silentLogger,
})

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
    recoveryEndpoint: true, // lets the router recover events it missed
  })
  await publisher.publishStored({ tokenIds: document, blockHashes: computeBlockHashes(document, KV_BLOCK_SIZE) })
  await publisher.flush()
  workers.push(publisher)
}

// --- route a request ---------------------------------------------------------------------------------
const request = [...documentA, ...tokens(9000, 20)] // document A, then a question about it
for (let i = 0; i < 200 && !(router.settled && router.workers().length === 2); i++) await new Promise((r) => setTimeout(r, 10))
const { scores } = router.findMatches(request)
const choice = router.findBestWorker(request, { requestId: 'request-1' }) // counted against the worker...
router.markFinished('request-1') // ...until it finishes
console.log(
  JSON.stringify({
    workers: router.workers().length,
    scores: scores.map((s) => ({ workerId: String(s.workerId), dpRank: s.dpRank, score: s.score })),
    chosen: choice === null ? null : String(choice.workerId),
  }),
)

for (const publisher of workers) await publisher.close()
await router.close()
