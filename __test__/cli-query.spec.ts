// `dynamo-kv query` through the real bin against a publisher with `recoveryEndpoint: true` on a private
// nats-server: a range comes back as one JSON line per event with u64 values exact (a worker id and block
// hashes above 2^53), a dump as the rank's blocks; TooNew and a worker without an endpoint exit 1; a
// missing --worker-id exits 2.
import test from 'ava'
import * as kv from '../ts/index.js'
import { needCli, startCli } from './helpers/cli.js'
import { quiet, withNats } from './helpers/publishing.js'

const shared = withNats(test)
const WORKER = 2n ** 64n - 5n
const H1 = 2n ** 63n + 12_345n
const H2 = 2n ** 60n + 1n

async function query(args: string[]) {
  const run = startCli(['query', '--nats-server', shared.server.url, '--namespace', 'qns', '--component', 'qc', ...args])
  const status = await run.exit
  return { status, lines: run.lines, stderr: run.stderr() }
}

test.serial('query prints a range and a dump as JSON lines with exact u64; refusals exit 1 or 2', async (t) => {
  needCli()
  const p = await kv.KvEventPublisher.create({
    namespace: 'qns',
    component: 'qc',
    kvBlockSize: 4,
    workerId: WORKER,
    nats: shared.nc,
    logger: quiet,
    recoveryEndpoint: true,
  })
  try {
    await p.publishStored({ tokenIds: [1, 2, 3, 4, 5, 6, 7, 8], blockHashes: [H1, H2], dpRank: 0 })
    await p.publishRemoved([H2], 0)
    await p.flush()
    await shared.nc.flush()

    const range = await query(['--worker-id', WORKER.toString(), '--start', '0', '--end', '1'])
    t.is(range.status, 0, range.stderr)
    t.is(range.lines.length, 3)
    t.regex(range.lines[0]!, new RegExp(`^\\{"kind":"Events","event":\\{"worker_id":${WORKER},`))
    t.true(range.lines[0]!.includes(`"block_hash":${H1}`), range.lines[0])
    t.true(range.lines[0]!.includes(`"block_hash":${H2}`), range.lines[0])
    t.regex(range.lines[1]!, /"event_id":1,/)
    t.true(range.lines[1]!.includes(`"removed":{"block_hashes":[${H2}]}`), range.lines[1])
    t.is(range.lines[2], '{"kind":"Events","events":2}')

    const dump = await query(['--worker-id', WORKER.toString()])
    t.is(dump.status, 0, dump.stderr)
    t.is(dump.lines.at(-1), '{"kind":"TreeDump","events":1}')
    t.true(dump.lines[0]!.includes(`"block_hash":${H1}`))
    t.false(dump.lines[0]!.includes(`${H2}`), 'the removed block is not in the dump')

    const tooNew = await query(['--worker-id', WORKER.toString(), '--start', '50', '--end', '60'])
    t.is(tooNew.status, 1)
    t.regex(tooNew.lines[0] ?? '', /^\{"(TooNew|InvalidRange)":/)

    const nobody = await query(['--worker-id', '7', '--timeout', '2'])
    t.is(nobody.status, 1)
    t.regex(nobody.stderr, /nothing serves .*worker_kv_indexer_query_dp0\.7/)

    const usage = await query([])
    t.is(usage.status, 2)
    t.regex(usage.stderr, /--worker-id/)
  } finally {
    await p.close()
  }
})
