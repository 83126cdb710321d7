// `dynamo-kv inspect` against the engine simulator's real PUB socket: the fixture batches
// (engine-batches.json) sent as engine messages come out as JSON lines equal to the fixture's expected
// router events (u64 values as decimal strings), malformed ones as `error: malformed`, and a dropped seq
// as a gap line.
import test from 'ava'
import { EngineSimulator } from '../ts/sim/index.js'
import { type CliRun, needCli, runCli, startCli } from './helpers/cli.js'
import { engine as cases } from './helpers/fixtures.js'

test.before(() => needCli())

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Sends heartbeats until the subscriber has joined (ZeroMQ drops what a PUB sends before that). */
async function joined(sim: EngineSimulator, run: CliRun): Promise<void> {
  while (run.lines.length === 0) {
    await sim.heartbeat()
    await sleep(20)
    if (run.child.exitCode !== null) throw new Error(`inspect exited early: ${run.stderr()}`)
  }
}

const parsed = (run: CliRun) => run.lines.map((l) => JSON.parse(l) as Record<string, unknown>)

test('inspect prints every fixture batch as its expected router events, and a dropped seq as a gap', async (t) => {
  const sim = await EngineSimulator.create({ kvBlockSize: 4 })
  const run = startCli(['inspect', '--engine-endpoint', sim.endpoint, '--block-size', '4'])
  try {
    await joined(sim, run)
    // every case decoded at block size 4 (the one case of another block size has its own expectation)
    const sent = cases.filter((c) => c.kv_block_size === 4)
    const first = sim.nextSeq
    for (const c of sent) await sim.sendPayload(Buffer.from(c.hex, 'hex'))
    const dropped = sim.nextSeq
    sim.drop(dropped)
    await sim.heartbeat() // takes the dropped seq: never sent
    const last = await sim.heartbeat()
    while (!parsed(run).some((l) => l.seq === last.toString())) {
      if (run.child.exitCode !== null) throw new Error(`inspect exited early: ${run.stderr()}`)
      await sleep(20)
    }
    run.child.kill('SIGTERM')
    t.is(await run.exit, 0, run.stderr())

    const lines = parsed(run)
    const bySeq = new Map(lines.filter((l) => typeof l.seq === 'string').map((l) => [l.seq as string, l]))
    sent.forEach((c, i) => {
      const line = bySeq.get((first + BigInt(i)).toString())
      t.truthy(line, c.name)
      t.is(line!.endpoint, sim.endpoint)
      t.is(line!.topic, '')
      if ('error' in c.expect) t.like(line, { error: 'malformed', bytes: c.hex.length / 2 }, c.name)
      else t.deepEqual({ dp_rank: line!.dp_rank, events: line!.events, rejected: line!.rejected }, c.expect, c.name)
    })
    t.deepEqual(
      lines.filter((l) => 'gap' in l),
      [{ endpoint: sim.endpoint, topic: '', gap: { expected: dropped.toString(), got: (dropped + 1n).toString(), missing: '1' } }],
    )
    // u64 values are strings in the raw text too (never JSON numbers that lose precision)
    t.true(run.stdout().includes('"block_hash":"16045690984503111693"'))
  } finally {
    run.child.kill('SIGKILL')
    sim.close()
  }
})

test('inspect --count stops after that many messages and exits 0', async (t) => {
  const sim = await EngineSimulator.create({ kvBlockSize: 16 })
  const run = startCli(['inspect', '--engine-endpoint', sim.endpoint, '--block-size', '16', '--count', '3'])
  try {
    const sending = (async () => {
      while (run.child.exitCode === null) {
        await sim.step()
        await sleep(10)
      }
    })()
    t.is(await run.exit, 0, run.stderr())
    await sending
    const lines = parsed(run)
    t.is(lines.length, 3)
    for (const l of lines) t.true(Array.isArray(l.events) && typeof l.seq === 'string')
  } finally {
    run.child.kill('SIGKILL')
    sim.close()
  }
})

test('inspect --timeout with --count exits 1 when fewer messages came, saying how many', async (t) => {
  const r = await runCli(['inspect', '--engine-endpoint', 'tcp://127.0.0.1:9', '--block-size', '16', '--count', '2', '--timeout', '0.3'])
  t.is(r.code, 1)
  t.is(r.stdout, '')
  t.regex(r.stderr, /only 0 of 2 engine messages within 0\.3 s/)
})
