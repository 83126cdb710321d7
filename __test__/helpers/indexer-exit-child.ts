// Starts the indexer service on the front named by INDEXER_FRONT, answers one request, closes it and
// returns without process.exit: the process must then end by itself (the spec waits for its exit).
import { IndexerService } from '../../ts/indexer/service.js'
import { http } from './http.js'

const front = process.env.INDEXER_FRONT === 'native' ? 'native' : 'node'
const svc = new IndexerService({ http: front, engineSilenceMs: 0 })
const { port } = await svc.listen(0)
const r = await http(port, 'GET', '/health')
await svc.close()
process.stdout.write(`${front} ${r.status} closed\n`)
