// Every program in examples/ runs to completion against a private nats-server, as a user runs it
// (`node examples/<file>`, importing the built package by its name), and its outcome is checked from the
// outside: the events it published are received on NATS, a worker is chosen, a signal stops it cleanly.
// Runs after `npm run build` (the examples load dist/ through the package's "exports").
import test from 'ava'
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync, readFileSync, readdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import { RadixIndex } from '../ts/index.js'
import { EngineSimulator } from '../ts/sim/index.js'
import { type NatsServer, startNatsServer } from './helpers/nats-server.js'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const examples = path.join(root, 'examples')
const SUBJECT = 'namespace.dynamo.component.backend.kv-events'
const COVERED = ['manual-publish.cjs', 'router.mjs', 'sidecar.mjs', 'worker-sim.mjs']

let nats: NatsServer
let nc: NatsConnection
test.before(async () => {
  if (!existsSync(path.join(root, 'dist', 'index.js'))) throw new Error('dist/ is missing: run `npm run build` before the tests')
  nats = await startNatsServer()
  nc = await connect({ servers: nats.url })
})
test.after.always(async () => {
  await nc?.close()
  await nats?.stop()
})

/** Follows the event plane into a RadixIndex, recording the index size after each event. */
async function follow() {
  const index = new RadixIndex()
  const sizes: number[] = []
  const sub = nc.subscribe(SUBJECT, {
    callback: (err, msg) => {
      if (err) return
      index.applyEncoded(msg.data, 'envelope')
      sizes.push(index.size())
    },
  })
  await nc.flush()
  return { index, sizes, stop: () => sub.unsubscribe() }
}

interface Run {
  child: ChildProcess
  lines: string[]
  stderr: () => string
  exit: Promise<number | null>
}

function start(file: string, env: Record<string, string> = {}): Run {
  const child = spawn(process.execPath, [path.join(examples, file)], {
    cwd: root,
    env: { ...process.env, NATS_SERVER: nats.url, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const lines: string[] = []
  let out = ''
  let err = ''
  child.stdout!.on('data', (d: Buffer) => {
    out += d
    const parts = out.split('\n')
    out = parts.pop()!
    lines.push(...parts.filter(Boolean))
  })
  child.stderr!.on('data', (d: Buffer) => {
    err += d
  })
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return { child, lines, stderr: () => err, exit }
}

/** Runs an example to completion; returns its last stdout line as JSON. */
async function runToEnd(t: import('ava').ExecutionContext, file: string): Promise<Record<string, unknown>> {
  const run = start(file)
  const timer = setTimeout(() => run.child.kill('SIGKILL'), 60_000)
  const code = await run.exit
  clearTimeout(timer)
  t.is(code, 0, `${file} exited with ${code}: ${run.stderr()}`)
  const last = run.lines.at(-1) ?? '{}'
  t.log(`${file}: ${last}`)
  return JSON.parse(last) as Record<string, unknown>
}

async function until(cond: () => boolean, ms = 60_000): Promise<void> {
  const end = Date.now() + ms
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out')
    await new Promise((r) => setTimeout(r, 20))
  }
}

test('every file in examples/ is run by this suite', (t) => {
  t.deepEqual(readdirSync(examples).sort(), COVERED)
})

test.serial('worker-sim.mjs: the simulated engine’s events are published, and an index of them ends as the engine’s blocks', async (t) => {
  const followed = await follow()
  const out = await runToEnd(t, 'worker-sim.mjs')
  await until(() => followed.sizes.length >= (out.published as number))
  followed.stop()
  t.is(out.subject, SUBJECT)
  t.true((out.published as number) > 0)
  t.is(followed.sizes.length, out.published as number)
  t.is(followed.index.size(), out.held as number, 'the router-side index holds what the engine holds')
  t.deepEqual(followed.index.workers(), [1n])
})

test.serial('sidecar.mjs: publishes the engine’s events until SIGTERM, then closes and exits 0', async (t) => {
  const engine = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', kvBlockSize: 16, seed: 3 })
  const followed = await follow()
  const run = start('sidecar.mjs', {
    ENGINE_ENDPOINT: engine.endpoint,
    ENGINE_REPLAY_ENDPOINT: engine.replayEndpoint!,
    WORKER_ID: '9',
    DYNAMO_KV_LOG_LEVEL: 'warn',
  })
  try {
    await until(() => run.lines.length > 0)
    t.like(JSON.parse(run.lines[0]!), { ready: true, subject: SUBJECT, workerId: '9' })
    await engine.run(50)
    await until(() => followed.sizes.length > 0)
    run.child.kill('SIGTERM')
    t.is(await run.exit, 0, run.stderr())
    const last = JSON.parse(run.lines.at(-1)!) as { stopped: string; published: number }
    t.is(last.stopped, 'SIGTERM')
    await until(() => followed.sizes.length >= last.published)
    t.true(last.published > 0)
    t.is(followed.sizes.length, last.published)
    t.deepEqual(followed.index.workers(), [9n])
  } finally {
    run.child.kill('SIGKILL')
    followed.stop()
    engine.close()
  }
})

test.serial('sidecar.mjs: SIGINT stops it the same way', async (t) => {
  const engine = await EngineSimulator.create({ replayEndpoint: 'tcp://127.0.0.1:0', kvBlockSize: 16 })
  const run = start('sidecar.mjs', { ENGINE_ENDPOINT: engine.endpoint, ENGINE_REPLAY_ENDPOINT: engine.replayEndpoint! })
  try {
    await until(() => run.lines.length > 0)
    run.child.kill('SIGINT')
    t.is(await run.exit, 0, run.stderr())
    t.like(JSON.parse(run.lines.at(-1)!), { stopped: 'SIGINT' })
  } finally {
    run.child.kill('SIGKILL')
    engine.close()
  }
})

test.serial('router.mjs: follows both workers’ events and chooses the one holding the request’s prefix', async (t) => {
  const out = await runToEnd(t, 'router.mjs')
  t.is(out.workers, 2)
  t.deepEqual(out.scores, [{ workerId: '1', dpRank: 0, score: 4 }])
  t.is(out.chosen, '1')
})

test.serial('manual-publish.cjs (CommonJS): stored, removed and cleared are published as events 0, 1, 2', async (t) => {
  const followed = await follow()
  const out = await runToEnd(t, 'manual-publish.cjs')
  await until(() => followed.sizes.length >= 3)
  followed.stop()
  t.deepEqual(out.eventIds, ['0', '1', '2'])
  t.is(out.published, 3)
  t.deepEqual(out.emitted, { stored: 1, removed: 1, cleared: 1 })
  t.deepEqual(followed.sizes, [2, 1, 0], 'a router applying them holds 2 blocks, then 1, then none')
})

test('the README’s snippets marked `<!-- from examples/FILE -->` are excerpts of those files', (t) => {
  const readme = readFileSync(path.join(root, 'README.md'), 'utf8')
  const blocks = [...readme.matchAll(/<!-- from examples\/(\S+) -->\n```js\n([\s\S]*?)```/g)]
  t.deepEqual([...new Set(blocks.map((m) => m[1]))].sort(), COVERED)
  for (const [, file, body] of blocks) {
    const source = readFileSync(path.join(examples, file!), 'utf8')
      .split('\n')
      .map((l) => l.trim())
    for (const line of body!.split('\n').map((l) => l.trim())) {
      if (line === '' || line.startsWith('// ...')) continue
      t.true(source.includes(line), `README line not in examples/${file}: ${line}`)
    }
  }
})
