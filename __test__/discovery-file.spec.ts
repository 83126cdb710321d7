// The file-store discovery backend against a real directory laid out as Dynamo's file store: records
// appear (Dynamo's paths and bytes) as soon as register() resolves, are touched while running past
// several TTLs, vanish on close(), and are swept after the registering process is SIGKILLed.
import test from 'ava'
import { mkdtempSync, promises as fs, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { spawn } from 'node:child_process'
import path from 'node:path'
import { DiscoveryError, type FileDiscovery, openDiscovery, publisherRecords } from '../ts/transport/discovery/index.js'
import { keyOfFile, readEventChannel, readEventSource } from './helpers/discovery-reader.js'
import { eventually, spawnRegisteringChild } from './helpers/discovery-process.js'
import { fixture } from './helpers/fixtures.js'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const fx = fixture<{
  records: {
    inputs: { worker_id: string; publisher_id: string }
    file_backend: { files: { path: string; content: string }[] }
  }
}>('dynamo-1.6/discovery-1.6.json')

const records = (publisherId: bigint | string, zmq = 'tcp://10.0.0.5:41234') =>
  publisherRecords({
    namespace: 'dynamo',
    component: 'backend',
    endpoint: 'generate',
    workerId: fx.records.inputs.worker_id,
    dpRank: 0,
    publisherId,
    zmqEndpoint: zmq,
  })

const roots: string[] = []
function newRoot(): string {
  const root = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-filekv-'))
  roots.push(root)
  return root
}
test.after.always(() => {
  for (const r of roots) rmSync(r, { recursive: true, force: true })
})

/** Every file under root/bucket (relative paths), as a router's file store would list them. */
async function listBucket(root: string, bucket: string): Promise<Record<string, Buffer>> {
  const dir = path.join(root, bucket)
  const out: Record<string, Buffer> = {}
  const names = await fs.readdir(dir).catch(() => [] as string[])
  for (const name of names) {
    // a sweep may remove a file between the listing and its read: it is then gone, not an error
    const bytes = await fs.readFile(path.join(dir, name)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return null
      throw err
    })
    if (bytes !== null) out[`${bucket}/${name}`] = bytes
  }
  return out
}

test('records appear as Dynamo lays them out, are touched past several TTLs, and vanish on close()', async (t) => {
  const root = newRoot()
  const discovery = (await openDiscovery({}, { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root })) as FileDiscovery
  t.is(discovery.kind, 'file')
  t.is(discovery.ttlMs, 10_000)
  await discovery.close()

  const short = (await openDiscovery({ backend: 'file', fileRoot: root, fileTtlMs: 3000 }, {})) as FileDiscovery
  t.is(short.keepAliveMs, 1000)
  await short.register(records(fx.records.inputs.publisher_id))

  // Present, complete, and exactly the fixture's files the moment register() resolves.
  const sources = await listBucket(root, 'v1/event_sources')
  const channels = await listBucket(root, 'v1/event_channels')
  const want = (p: string) => fx.records.file_backend.files.find((f) => f.path === p)?.content
  t.is(Object.keys(sources).length, 1)
  t.is(Object.keys(channels).length, 1)
  for (const [p, content] of Object.entries({ ...sources, ...channels })) {
    t.is<string | undefined, string | undefined>(content.toString(), want(p), p)
  }
  // A fixture-rules reader finds and parses them.
  const [srcPath, srcVal] = Object.entries(sources)[0] ?? []
  const src = readEventSource(keyOfFile('v1/event_sources', path.basename(srcPath as string)), srcVal as Buffer)
  t.is(src.workerId, 8468889610773921793n)
  t.is(src.dpRank, 0)
  const [chPath, chVal] = Object.entries(channels)[0] ?? []
  t.is(readEventChannel(keyOfFile('v1/event_channels', path.basename(chPath as string)), chVal as Buffer).instanceId, 548535317935783n)

  // Kept alive: the mtime advances, and after several TTLs (which another process's sweep would
  // enforce) the files are still fresh.
  const file = path.join(root, srcPath as string)
  const first = (await fs.stat(file)).mtimeMs
  t.true(await eventually(async () => (await fs.stat(file)).mtimeMs > first, 10_000))
  await sleep(7000)
  t.true(Date.now() - (await fs.stat(file)).mtimeMs < short.ttlMs, 'record older than its TTL')
  t.is(Object.keys(await listBucket(root, 'v1/event_sources')).length, 1)

  await short.close()
  t.deepEqual(await listBucket(root, 'v1/event_sources'), {})
  t.deepEqual(await listBucket(root, 'v1/event_channels'), {})
  await short.close()
})

test('create-if-absent: the same record is accepted, another record under its name is refused, no temp file stays', async (t) => {
  const root = newRoot()
  const a = await openDiscovery({ backend: 'file', fileRoot: root }, {})
  const b = await openDiscovery({ backend: 'file', fileRoot: root }, {})
  await a.register(records(5n))
  await b.register(records(5n))
  const err = await t.throwsAsync(b.register(records(5n, 'tcp://10.0.0.9:1')), { instanceOf: DiscoveryError })
  t.regex(err?.message ?? '', /event_channels.*already holds another record/)
  const names = [...Object.keys(await listBucket(root, 'v1/event_sources')), ...Object.keys(await listBucket(root, 'v1/event_channels'))]
  t.is(names.length, 2)
  t.false(names.some((n) => path.basename(n).startsWith('.tmp_')))
  await a.close()
  await b.close()
})

test("writes wait for the bucket directory's flock, the lock Dynamo's file store takes", async (t) => {
  const root = newRoot()
  const bucket = path.join(root, 'v1/event_sources')
  await fs.mkdir(bucket, { recursive: true })
  // Another writer (a Dynamo process, here flock(1)) holds the bucket's lock and does not let go.
  const holder = spawn('flock', ['-x', bucket, 'sh', '-c', 'echo held; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] })
  const held = new Promise((r) => holder.stdout?.once('data', r))
  const gone = new Promise((r) => holder.once('exit', r))
  await held
  const d = await openDiscovery({ backend: 'file', fileRoot: root }, {})
  try {
    const err = await t.throwsAsync(d.register(records(8n)), { instanceOf: DiscoveryError })
    t.regex(err?.message ?? '', /could not lock .*v1\/event_sources/)
    t.deepEqual(await listBucket(root, 'v1/event_sources'), {})
  } finally {
    holder.stdin?.end()
    await gone
  }
  // Released: the same write goes through.
  await d.register(records(8n))
  t.is(Object.keys(await listBucket(root, 'v1/event_sources')).length, 1)
  await d.close()
})

test('an unwritable root fails naming DYN_FILE_KV', async (t) => {
  const root = newRoot()
  const blocker = path.join(root, 'a-file')
  await fs.writeFile(blocker, 'x')
  const err = await t.throwsAsync(openDiscovery({}, { DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: path.join(blocker, 'kv') }), {
    instanceOf: DiscoveryError,
  })
  t.regex(err?.message ?? '', /DYN_FILE_KV, option fileRoot/)
})

test("a SIGKILLed publisher's files stop being touched and are swept after the TTL", async (t) => {
  const root = newRoot()
  const child = spawnRegisteringChild({ DYN_DISCOVERY_BACKEND: 'file', DYN_FILE_KV: root, TEST_FILE_TTL_MS: '3000' })
  // Another publisher on the same store: like every Dynamo process, it sweeps expired files.
  const neighbour = await openDiscovery({ backend: 'file', fileRoot: root, fileTtlMs: 3000 }, {})
  await neighbour.register(records(6n))
  let childFile = ''
  try {
    t.true(await child.registered(), child.output())
    const sources = await listBucket(root, 'v1/event_sources')
    const entry = Object.entries(sources).find(([p]) => p.endsWith('%2F1fffffffffffff'))
    t.truthy(entry, Object.keys(sources).join(','))
    const src = readEventSource(keyOfFile('v1/event_sources', path.basename(entry?.[0] as string)), entry?.[1] as Buffer)
    t.is(src.workerId, 18446744073709551615n)
    childFile = path.join(root, entry?.[0] as string)
    // The child keeps it alive past its TTL, in spite of the neighbour's sweeps.
    const first = (await fs.stat(childFile)).mtimeMs
    t.true(await eventually(async () => (await fs.stat(childFile)).mtimeMs > first, 10_000))
    await sleep(6500)
    await t.notThrowsAsync(fs.stat(childFile))
  } finally {
    await child.kill()
  }
  t.true(
    await eventually(
      async () => (await listBucket(root, 'v1/event_sources'))[`v1/event_sources/${path.basename(childFile)}`] === undefined,
    ),
    'crashed publisher record was not swept',
  )
  // the sweep removes one file at a time: the channel may go a moment after the source
  t.true(
    await eventually(async () => Object.keys(await listBucket(root, 'v1/event_channels')).length === 1),
    "only the neighbour's channel remains",
  )
  await neighbour.close()
  t.deepEqual(await listBucket(root, 'v1/event_sources'), {})
})
