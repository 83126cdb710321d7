// A publisher process for crash tests: opens discovery from its environment (Dynamo's variables),
// registers one EventSource and one EventChannel, prints `registered`, and runs until killed.
import { openDiscovery, publisherRecords } from '../../ts/transport/discovery/index.js'

const fileTtlMs = process.env.TEST_FILE_TTL_MS ? Number(process.env.TEST_FILE_TTL_MS) : undefined
const discovery = await openDiscovery({ fileTtlMs, onError: (err) => console.error(err.message) })
await discovery.register(
  publisherRecords({
    namespace: 'dynamo',
    component: 'backend',
    endpoint: 'generate',
    workerId: process.env.TEST_WORKER_ID ?? '1',
    dpRank: 0,
    publisherId: process.env.TEST_PUBLISHER_ID ?? '1',
    zmqEndpoint: 'tcp://127.0.0.1:5557',
  }),
)
console.log('registered')
setInterval(() => undefined, 1 << 30)
