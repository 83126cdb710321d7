// The `dynamo-kv` command's usage contract, run as a user runs it (the built dist/cli.js in a child
// process): every --help prints help and exits 0; bad usage or configuration exits 2 with one line on
// stderr naming the flag or variable at fault. Serial: each spawns several short-lived processes.
import test from 'ava'
import { readFileSync, statSync } from 'node:fs'
import { freePort } from './helpers/nats-server.js'
import { CLI, needCli, runCli, startCli } from './helpers/cli.js'
import { wireOptions } from '../ts/cli/wire.js'

test.before(() => needCli())

const HELP: [string[], string][] = [
  [['--help'], 'Usage: dynamo-kv [options] [command]'],
  [['help'], 'Usage: dynamo-kv [options] [command]'],
  [['publish', '--help'], 'Usage: dynamo-kv publish [options]'],
  [['help', 'publish'], 'Usage: dynamo-kv publish [options]'],
  [['inspect', '--help'], 'Usage: dynamo-kv inspect [options]'],
  [['demo', '--help'], 'Usage: dynamo-kv demo [options]'],
  [['demo', '-h'], 'Usage: dynamo-kv demo [options]'],
]

for (const [args, usage] of HELP) {
  test.serial(`\`dynamo-kv ${args.join(' ')}\` prints help and exits 0`, async (t) => {
    const r = await runCli(args)
    t.is(r.code, 0, r.stderr)
    t.true(r.stdout.startsWith(usage), r.stdout.slice(0, 200))
    t.is(r.stderr, '')
  })
}

test.serial('every command lists its options with their environment variables, and the program lists every command', async (t) => {
  const top = await runCli(['--help'])
  for (const c of ['publish', 'inspect', 'demo']) t.regex(top.stdout, new RegExp(`^  ${c} \\[options\\]`, 'm'))
  const publish = (await runCli(['publish', '--help'])).stdout
  for (const env of [
    'DYNAMO_KV_ENGINE_ENDPOINT',
    'DYNAMO_KV_BLOCK_SIZE',
    'DYNAMO_KV_WIRE',
    'DYNAMO_KV_MODE',
    'NATS_SERVER',
    'DYNAMO_KV_METRICS_PORT',
    'DYNAMO_KV_LOG_LEVEL',
  ])
    t.true(publish.replace(/\s+/g, ' ').includes(`env: ${env}`), env)
  // every flag has a variable: each option's help entry names one (help excepted)
  for (const args of [['publish'], ['inspect'], ['demo']]) {
    const help = (await runCli([...args, '--help'])).stdout
    const entries = help.split(/\n(?= {2}-)/).filter((e) => e.startsWith('  --'))
    t.true(entries.length > 3)
    for (const e of entries) t.regex(e.replace(/\s+/g, ' '), /env: [A-Z_]+/, e)
  }
})

test.serial('`dynamo-kv --version` prints the package version', async (t) => {
  const r = await runCli(['--version'])
  t.is(r.code, 0)
  t.regex(r.stdout.trim(), /^\d+\.\d+\.\d+/)
})

/** Runs a bad invocation: exit 2, nothing on stdout, one stderr line that matches `names`. */
async function usageError(t: import('ava').ExecutionContext, args: string[], names: RegExp, env: Record<string, string | undefined> = {}) {
  const r = await runCli(args, env)
  t.is(r.code, 2, `stdout: ${r.stdout}\nstderr: ${r.stderr}`)
  const lines = r.stderr.split('\n').filter(Boolean)
  t.is(lines.length, 1, r.stderr)
  t.regex(lines[0]!, names)
  t.is(r.stdout, '')
}

const PUBLISH = ['publish', '--engine-endpoint', 'tcp://127.0.0.1:5557', '--block-size', '16']

test.serial('a block size of 0 is refused, naming the flag or the variable', async (t) => {
  await usageError(t, ['publish', '--engine-endpoint', 'tcp://127.0.0.1:5557', '--block-size', '0'], /--block-size.*'0' is invalid/)
  await usageError(t, ['publish', '--engine-endpoint', 'tcp://127.0.0.1:5557'], /DYNAMO_KV_BLOCK_SIZE.*is invalid/, {
    DYNAMO_KV_BLOCK_SIZE: '0',
  })
  await usageError(t, ['inspect', '--engine-endpoint', 'tcp://127.0.0.1:5557', '--block-size', '0'], /--block-size.*'0' is invalid/)
})

test.serial('a missing block size or engine endpoint is refused, saying what it is', async (t) => {
  await usageError(t, ['publish', '--engine-endpoint', 'tcp://127.0.0.1:5557'], /--block-size \(or DYNAMO_KV_BLOCK_SIZE\) is required/)
  await usageError(t, ['publish', '--block-size', '16'], /--engine-endpoint \(or DYNAMO_KV_ENGINE_ENDPOINT\) is required/)
})

test.serial('an unknown wire or mode is refused, listing the choices', async (t) => {
  await usageError(t, [...PUBLISH, '--wire', 'dynamo-2.0'], /--wire.*'dynamo-2\.0' is invalid.*dynamo-1\.0, dynamo-1\.4/)
  await usageError(t, [...PUBLISH, '--mode', 'kafka'], /--mode.*'kafka' is invalid.*event-plane, jetstream/)
  await usageError(t, PUBLISH, /DYNAMO_KV_MODE.*is invalid/, { DYNAMO_KV_MODE: 'kafka' })
})

test.serial(
  '--wire dynamo-1.4: its flags are refused with dynamo-1.0, and its configuration errors name the flag or variable',
  async (t) => {
    await usageError(t, [...PUBLISH, '--wire', 'dynamo-1.4', '--mode', 'jetstream'], /--wire dynamo-1\.4 .*cannot go with --mode jetstream/)
    await usageError(
      t,
      [...PUBLISH, '--endpoint', 'generate', '--zmq-port', '7000', '--zmq-settle', '0'],
      /--endpoint, --zmq-port, --zmq-settle: for --wire dynamo-1\.4 only/,
    )
    await usageError(
      t,
      [...PUBLISH, '--wire', 'dynamo-1.4', '--nats-server', 'nats://127.0.0.1:4222'],
      /--nats-\* options apply to --event-plane nats/,
    )
    // the worker id is the Dynamo instance id: required on this wire, named with its variable
    await usageError(t, [...PUBLISH, '--wire', 'dynamo-1.4'], /dynamo-1\.4 publisher: .*DYNAMO_KV_WORKER_ID/, {
      DYNAMO_KV_WORKER_ID: undefined,
    })
    await usageError(
      t,
      [...PUBLISH, '--wire', 'dynamo-1.4', '--worker-id', '42'],
      /'kubernetes' from env 'DYN_DISCOVERY_BACKEND' is invalid.*etcd, file/,
      {
        DYN_DISCOVERY_BACKEND: 'kubernetes',
      },
    )
    await usageError(t, [...PUBLISH, '--wire', 'dynamo-1.4', '--worker-id', '42', '--zmq-settle', '-1'], /--zmq-settle.*'-1' is invalid/)
    await usageError(
      t,
      [...PUBLISH, '--wire', 'dynamo-1.4', '--worker-id', '42', '--event-plane', 'kafka'],
      /--event-plane.*'kafka' is invalid/,
    )
  },
)

test.serial('the dynamo-1.4 publisher options: endpoint, event plane, discovery; NATS options only on a NATS event plane', (t) => {
  const nats = { servers: ['nats://127.0.0.1:4222'] }
  const flags = { endpoint: 'generate', discovery: { backend: 'file', fileRoot: '/tmp/d', etcdEndpoints: undefined } }
  t.deepEqual(wireOptions('dynamo-1.0', 'event-plane', nats, true, flags), { nats })
  t.deepEqual(wireOptions('dynamo-1.4', 'event-plane', nats, false, { ...flags, zmqPort: 7000, zmqSettleMs: 0 }), {
    wire: 'dynamo-1.4',
    endpoint: 'generate',
    zmqPort: 7000,
    zmqSettleMs: 0,
    discovery: { backend: 'file', fileRoot: '/tmp/d' },
  } as never)
  t.deepEqual(wireOptions('dynamo-1.4', 'event-plane', nats, true, { ...flags, eventPlane: 'nats', zmqPort: 7000 }), {
    wire: 'dynamo-1.4',
    endpoint: 'generate',
    eventPlane: 'nats',
    nats,
    discovery: { backend: 'file', fileRoot: '/tmp/d' },
  } as never)
  t.throws(() => wireOptions('dynamo-1.4', 'event-plane', nats, true, flags), {
    message: /--nats-\* options apply to --event-plane nats/,
  })
  t.throws(() => wireOptions('dynamo-1.4', 'jetstream', nats, false, flags), { message: /cannot go with --mode jetstream/ })
})

test.serial('a malformed engine endpoint is refused', async (t) => {
  await usageError(
    t,
    ['publish', '--engine-endpoint', '127.0.0.1:5557', '--block-size', '16'],
    /--engine-endpoint.*"127\.0\.0\.1:5557" is not a ZeroMQ endpoint/,
  )
  await usageError(t, ['inspect', '--engine-endpoint', 'tcp://host', '--block-size', '16'], /--engine-endpoint.*not a ZeroMQ endpoint/)
  await usageError(t, ['publish', '--block-size', '16'], /DYNAMO_KV_ENGINE_ENDPOINT.*is invalid/, { DYNAMO_KV_ENGINE_ENDPOINT: 'http://x' })
  await usageError(
    t,
    [...PUBLISH, '--replay-endpoint', 'tcp://127.0.0.1:5558', '--replay-endpoint', 'tcp://127.0.0.1:5559'],
    /--replay-endpoint: give one per --engine-endpoint/,
  )
})

test.serial('an unreachable NATS server is a configuration error naming the server', async (t) => {
  const url = `nats://127.0.0.1:${await freePort()}`
  await usageError(t, [...PUBLISH, '--nats-server', url], new RegExp(`could not connect to NATS at ${url.replaceAll('.', '\\.')}`))
  await usageError(t, PUBLISH, new RegExp(`could not connect to NATS at ${url.replaceAll('.', '\\.')}`), { NATS_SERVER: url })
  await usageError(t, ['demo', '--nats', url], /could not connect to NATS/)
})

test.serial('--wire dynamo-1.4 with an unreachable etcd is a configuration error naming the variables', async (t) => {
  const url = `http://127.0.0.1:${await freePort()}`
  await usageError(
    t,
    [...PUBLISH, '--wire', 'dynamo-1.4', '--worker-id', '42'],
    new RegExp(`dynamo-1\\.4 publisher: etcd is not reachable at ${url.replaceAll('.', '\\.')} \\(ETCD_ENDPOINTS.*within 1000 ms`),
    { DYN_DISCOVERY_BACKEND: 'etcd', ETCD_ENDPOINTS: url, ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS: '1' },
  )
})

test.serial('an unknown log level is refused, from the flag or from DYNAMO_KV_LOG_LEVEL', async (t) => {
  await usageError(t, [...PUBLISH, '--log-level', 'loud'], /--log-level.*'loud' is invalid/)
  await usageError(t, ['demo'], /'loud' from env 'DYNAMO_KV_LOG_LEVEL' is invalid.*fatal, error, warn, info, debug, trace, silent/, {
    DYNAMO_KV_LOG_LEVEL: 'loud',
  })
})

test.serial('demo --nats without a URL, unknown options and commands, and no command at all are usage errors', async (t) => {
  await usageError(t, ['demo', '--nats'], /--nats <url>' argument missing/)
  await usageError(t, ['demo', '--durration', '3'], /unknown option '--durration' \(Did you mean --duration\?\)/)
  await usageError(t, ['publsh'], /unknown command 'publsh'/)
  await usageError(t, ['demo'], /DYNAMO_KV_DEMO_JSON="maybe" is not a boolean/, { DYNAMO_KV_DEMO_JSON: 'maybe' })
  const bare = await runCli([])
  t.is(bare.code, 2)
  t.regex(bare.stderr, /Usage: dynamo-kv/)
})

test.serial("the README's command-line examples use only options their command has", async (t) => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8')
  const section = readme.slice(readme.indexOf('## Command line'), readme.indexOf('\n## ', readme.indexOf('## Command line') + 5))
  const commands = section.replace(/\\\n\s*/g, ' ').match(/npx dynamo-kv \w+[^\n]*/g) ?? []
  t.true(commands.length >= 3)
  for (const line of commands) {
    const [, name] = /npx dynamo-kv (\w+)/.exec(line)!
    if (name === undefined || name.startsWith('-')) continue
    const help = (await runCli([name, '--help'])).stdout
    for (const flag of line.match(/--[a-z][a-z0-9-]*/g) ?? []) t.true(help.includes(`${flag} `), `${name} ${flag}`)
  }
})

test.serial('the package ships the command as its bin: dist/cli.js, ESM, executable, with a shebang; npm run demo runs it', (t) => {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
    type: string
    bin: Record<string, string>
    files: string[]
    scripts: Record<string, string>
    dependencies: Record<string, string>
  }
  t.deepEqual(pkg.bin, { 'dynamo-kv': './dist/cli.js' })
  t.is(pkg.type, 'module')
  t.true(pkg.files.includes('dist'))
  t.is(pkg.scripts.demo, 'node dist/cli.js demo')
  t.regex(pkg.dependencies.commander!, /^\d+\.\d+\.\d+$/, 'the argument parser is pinned')
  t.true(readFileSync(CLI, 'utf8').startsWith('#!/usr/bin/env node\n'))
  t.truthy(statSync(CLI).mode & 0o111, 'executable')
})

test('help and usage errors do not load the core: no word about a missing native binary until a command runs', async (t) => {
  // a native binary that cannot load: the core says so in one line when it is loaded
  const env = { DYNAMO_KV_FORCE_JS: undefined, NAPI_RS_NATIVE_LIBRARY_PATH: '/nonexistent/dynamo-kv.node' }
  const raw = async (args: string[]) => {
    const run = startCli(args, env)
    return { code: await run.exit, stderr: run.stderr() }
  }
  t.deepEqual(await raw(['publish', '--help']), { code: 0, stderr: '' })
  const bad = await raw(['inspect', '--engine-endpoint', 'tcp://127.0.0.1:5557', '--block-size', '0'])
  t.is(bad.code, 2)
  t.notRegex(bad.stderr, /native core not loaded/)
  const ran = await raw(['inspect', '--engine-endpoint', 'tcp://127.0.0.1:9', '--block-size', '16', '--timeout', '0.1'])
  t.is(ran.code, 0)
  t.regex(ran.stderr, /native core not loaded/)
})
