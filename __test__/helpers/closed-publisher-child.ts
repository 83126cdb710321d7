// A process that creates a `dynamo-1.4` KvEventPublisher (direct ZeroMQ, file store under the directory in
// argv[2]), publishes one stored block, closes it, and prints the resources that would still keep Node
// running (process.getActiveResourcesInfo()) as one JSON line.
import { KvEventPublisher, silentLogger } from '../../ts/index.js'

const publisher = await KvEventPublisher.create(
  {
    wire: 'dynamo-1.4',
    namespace: 'dynamo',
    component: 'backend',
    kvBlockSize: 4,
    workerId: 7n,
    eventPlane: 'zmq',
    eventPlaneHost: '127.0.0.1',
    zmqBindHost: '127.0.0.1',
    zmqSettleMs: 0,
    discovery: { backend: 'file', fileRoot: process.argv[2]! },
    logger: silentLogger,
  },
  {},
)
await publisher.publishStored({ tokenIds: [1, 2, 3, 4], blockHashes: [11n] })
await publisher.close()
console.log(JSON.stringify(process.getActiveResourcesInfo()))
