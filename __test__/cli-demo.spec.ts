// `dynamo-kv demo`: the whole path on simulated engines, run as a user runs it. Its --json summary must
// show events flowing, the implementation this test run uses (the child inherits DYNAMO_KV_FORCE_JS), the
// deliberate gap repaired, and the router's index equal to what every engine holds; through a real
// nats-server with --nats as well.
import test from 'ava'
import { implementation } from '../ts/index.js'
import { needCli, runCli } from './helpers/cli.js'
import { type NatsServer, startNatsServer } from './helpers/nats-server.js'

test.before(() => needCli())

interface Summary {
  implementation: string
  transport: string
  workers: number
  batches: string
  events: string
  rejected: string
  lost: string
  gap: { detected: boolean; repaired: boolean; recovered: string }
  index: { matchesEngines: boolean; workers: { workerId: string; engineBlocks: number; routerBlocks: number }[] }
  routing: { promptBlocks: number; scores: { workerId: string; score: number }[]; chosen: string | null }[]
}

function check(t: import('ava').ExecutionContext, r: { code: number | null; stdout: string; stderr: string }, transport: string) {
  t.is(r.code, 0, r.stderr)
  const lines = r.stdout.trim().split('\n')
  t.is(lines.length, 1, 'one JSON line on stdout')
  const s = JSON.parse(lines[0]!) as Summary
  t.is(s.implementation, implementation)
  t.is(s.transport, transport)
  t.true(BigInt(s.events) > 0n)
  t.true(BigInt(s.batches) > 0n)
  t.is(s.rejected, '0')
  t.is(s.lost, '0')
  t.true(s.gap.repaired)
  t.true(BigInt(s.gap.recovered) >= 1n)
  t.true(s.index.matchesEngines)
  t.is(s.index.workers.length, s.workers)
  for (const w of s.index.workers) t.is(w.routerBlocks, w.engineBlocks)
  // each example prompt served by a worker is matched in full by the worker chosen; the unseen one by nobody
  const served = s.routing.slice(0, -1)
  t.true(served.length > 0)
  for (const r of served) t.is(r.scores.find((x) => x.workerId === r.chosen)?.score, r.promptBlocks)
  t.is(s.routing.at(-1)!.chosen, null)
}

test('demo --duration 3 --json prints a summary: events flowed, the implementation in use, the gap repaired', async (t) => {
  check(t, await runCli(['demo', '--duration', '3', '--json']), 'in-process')
})

test('demo --nats URL goes through a real NATS server with the same outcome', async (t) => {
  let nats: NatsServer | null = null
  try {
    nats = await startNatsServer()
    check(t, await runCli(['demo', '--json'], { DYNAMO_KV_DEMO_NATS: nats.url, DYNAMO_KV_DEMO_DURATION: '2' }), 'nats')
  } finally {
    await nats?.stop()
  }
})

test('demo without --json speaks plain words, and ends with what to try next', async (t) => {
  const r = await runCli(['demo', '--duration', '1', '--workers', '2'])
  t.is(r.code, 0, r.stderr)
  t.regex(r.stdout, /2 simulated vLLM engines/)
  t.regex(r.stdout, /dynamo-kv turned them into [\d,]+ Dynamo router events/)
  t.regex(r.stdout, /dropped on purpose: dynamo-kv saw the hole in the sequence numbers.*lost nothing/)
  t.regex(r.stdout, /The router's index matches what every engine holds/)
  t.regex(r.stdout, /→ worker \d, which skips prefill for \d+ of \d+ blocks/)
  t.regex(r.stdout, /dynamo-kv publish --help/)
})
