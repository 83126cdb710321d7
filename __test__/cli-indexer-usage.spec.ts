// `dynamo-kv indexer` as a user runs it (the built bin): --engines FILE registers engines before the
// service answers; bad flags, variables and engines files exit 2 with one line naming them; a port in
// use exits 2; SIGINT stops it with exit 0.
import test from 'ava'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { needCli, runCli, startCli } from './helpers/cli.js'
import { http } from './helpers/http.js'
import { implementation } from '../ts/core/native.js'

test.before(() => needCli())

const dir = mkdtempSync(join(tmpdir(), 'dynamo-kv-indexer-'))
const file = (name: string, text: string) => {
  const f = join(dir, name)
  writeFileSync(f, text)
  return f
}

async function usageError(t: import('ava').ExecutionContext, args: string[], names: RegExp, env: Record<string, string> = {}) {
  const r = await runCli(['indexer', ...args], env)
  t.is(r.code, 2, `stdout: ${r.stdout}\nstderr: ${r.stderr}`)
  const lines = r.stderr.split('\n').filter(Boolean)
  t.is(lines.length, 1, r.stderr)
  t.regex(lines[0]!, names)
}

test.serial('--engines FILE registers the engines before the service answers; SIGINT exits 0', async (t) => {
  const engines = file(
    'engines.json',
    JSON.stringify([
      { instance_id: 1, endpoint: 'tcp://127.0.0.1:1', model_name: 'm', block_size: 16 },
      { instance_id: 1, endpoint: 'tcp://127.0.0.1:2', model_name: 'm', block_size: 16, dp_rank: 1 },
    ]).replace('"instance_id":1,"endpoint":"tcp://127.0.0.1:2"', '"instance_id":18446744073709551615,"endpoint":"tcp://127.0.0.1:2"'),
  )
  const run = startCli(['indexer', '--port', '0', '--log-format', 'json', '--engine-silence', '0.3'], {
    DYNAMO_KV_INDEXER_ENGINES: engines,
  })
  const ready = await run.waitForLog((r) => r.msg === 'indexer listening')
  t.is(ready.engines, 2)
  const w = await http(ready.port as number, 'GET', '/workers')
  t.is(w.status, 200)
  t.true(w.body.includes('"instance_id":18446744073709551615'), w.body)
  t.true(w.body.includes('"instance_id":1,'), w.body)
  // nothing listens on those ports: the listeners have heard nothing yet
  t.is((w.body.match(/"status":"pending"/g) ?? []).length, 4, w.body)
  t.false(w.body.includes('"active"'), w.body)
  // nothing publishes there: each listener is warned about, naming its endpoint
  for (const ep of ['tcp://127.0.0.1:1', 'tcp://127.0.0.1:2'])
    await run.waitForLog((r) => r.level === 40 && r.endpoint === ep && /no message from the engine/.test(String(r.msg)))
  run.child.kill('SIGINT')
  t.is(await run.exit, 0)
})

test.serial('bad flags, variables and engines files exit 2 naming them', async (t) => {
  await usageError(t, ['--port', '70000'], /--port.*'70000' is invalid/)
  await usageError(t, [], /DYNAMO_KV_INDEXER_PORT.*is invalid/, { DYNAMO_KV_INDEXER_PORT: 'x' })
  await usageError(t, ['--engines', join(dir, 'missing.json')], /--engines .*missing\.json.*ENOENT/)
  await usageError(t, ['--engines', file('bad.json', '[{')], /--engines .*EOF while parsing/)
  await usageError(t, ['--engines', file('obj.json', '{}')], /--engines .*a JSON array/)
  await usageError(
    t,
    ['--engines', file('type.json', '[{"instance_id":"1"}]')],
    /--engines .*entry 0: .*instance_id: invalid type: string "1", expected u64/,
  )
  await usageError(
    t,
    ['--engines', file('ep.json', '[{"instance_id":1,"endpoint":"udp://x:1","model_name":"m","block_size":4}]')],
    /entry 0: invalid ZMQ endpoint `udp:\/\/x:1`: unsupported scheme `udp`/,
  )
  await usageError(
    t,
    ['--engines', file('zero.json', '[{"instance_id":1,"endpoint":"tcp://h:1","model_name":"m","block_size":0}]')],
    /block_size must be at least 1/,
  )
})

test.serial('a port in use exits 2 naming it', async (t) => {
  const busy = createServer()
  await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r))
  const port = (busy.address() as { port: number }).port
  try {
    await usageError(t, ['--port', String(port)], new RegExp(`--port ${port}: .*EADDRINUSE`))
  } finally {
    busy.close()
  }
})

test.serial('the test-only listener routes are served with --test-endpoints or DYN_KV_INDEXER_TEST_ENDPOINTS, else 404', async (t) => {
  const body = '{"instance_id":70}'
  const headers = { 'content-type': 'application/json' }
  for (const [args, env, mounted] of [
    [[], {}, false],
    [[], { DYN_KV_INDEXER_TEST_ENDPOINTS: '0' }, false],
    [[], { DYN_KV_INDEXER_TEST_ENDPOINTS: 'true' }, true],
    [['--test-endpoints'], {}, true],
    [['--test-endpoints', 'no'], {}, false],
    [[], { DYN_KV_INDEXER_TEST_ENDPOINTS: 'On' }, true],
  ] as [string[], Record<string, string>, boolean][]) {
    const run = startCli(['indexer', '--port', '0', '--log-format', 'json', ...args], env)
    const ready = await run.waitForLog((r) => r.msg === 'indexer listening')
    for (const path of ['/test/pause_listener', '/test/resume_listener']) {
      const r = await http(ready.port as number, 'POST', path, body, headers)
      if (mounted) t.deepEqual([r.status, r.body], [404, '{"error":"instance 70 not found"}'], `${path} ${args} ${JSON.stringify(env)}`)
      else t.deepEqual([r.status, r.body], [404, ''], `${path} ${args} ${JSON.stringify(env)}`)
    }
    run.child.kill('SIGINT')
    t.is(await run.exit, 0)
  }
})

test.serial('--http picks the HTTP front (native by default with the native core); native without the core exits 2', async (t) => {
  await usageError(t, ['--http', 'uv'], /--http.*'uv' is invalid/)
  await usageError(t, ['--http', 'native'], /--http native: .*needs the native core/, { DYNAMO_KV_FORCE_JS: '1' })
  await usageError(t, [], /'uv' from env 'DYNAMO_KV_INDEXER_HTTP' is invalid/, { DYNAMO_KV_INDEXER_HTTP: 'uv' })
  const byDefault = implementation === 'native' ? 'native' : 'node'
  for (const [args, env, front] of [
    [[], { DYNAMO_KV_INDEXER_HTTP: undefined }, byDefault],
    [['--http', 'node'], {}, 'node'],
    [[], { DYNAMO_KV_INDEXER_HTTP: 'node' }, 'node'],
    ...(implementation === 'native' ? [[['--http', 'native'], {}, 'native']] : []),
  ] as [string[], Record<string, string | undefined>, string][]) {
    const run = startCli(['indexer', '--port', '0', '--log-format', 'json', ...args], env)
    const ready = await run.waitForLog((r) => r.msg === 'indexer listening')
    t.is(ready.http, front, `${args} ${JSON.stringify(env)}`)
    t.is((await http(ready.port as number, 'GET', '/health')).status, 200)
    run.child.kill('SIGINT')
    t.is(await run.exit, 0)
  }
})
