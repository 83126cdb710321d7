// Publishing without the engine's ZeroMQ stream (CommonJS): an engine integration that knows when blocks
// are stored and evicted calls the manual API itself. Each call becomes one Dynamo router event with the
// next event id of its dp rank, published on the event plane.
//
//   NATS_SERVER=nats://127.0.0.1:4222 node examples/manual-publish.cjs
//
// Prints one JSON line: the subject, the event ids and what was published.
const { computeBlockHashes, KvEventPublisher, silentLogger } = require('dynamo-kv')

async function main() {
  const kvBlockSize = 16
  const publisher = await KvEventPublisher.create({
    namespace: 'dynamo',
    component: 'backend',
    kvBlockSize,
    workerId: 7n,
    logger: silentLogger,
  })

  // Two complete blocks of a prompt were stored in the KV cache.
  const tokenIds = Array.from({ length: 32 }, (_, i) => 100 + i)
  const blockHashes = computeBlockHashes(tokenIds, kvBlockSize) // Dynamo's block hashes, as bigints
  const stored = await publisher.publishStored({ tokenIds, blockHashes, parentHash: null })
  // The second block was evicted.
  const removed = await publisher.publishRemoved([blockHashes[1]])
  // The engine dropped its whole cache.
  const cleared = await publisher.publishCleared()

  await publisher.flush() // resolves when everything accepted so far is sent
  const stats = publisher.stats()
  console.log(
    JSON.stringify({
      subject: publisher.subject,
      eventIds: [stored.firstEventId, removed.firstEventId, cleared.firstEventId].map(String),
      published: Number(stats.sink.published),
      emitted: { stored: Number(stats.emitted.stored), removed: Number(stats.emitted.removed), cleared: Number(stats.emitted.cleared) },
    }),
  )
  await publisher.close()
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
