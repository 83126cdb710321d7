// Native memory is given back (SPEC 8): a fresh Ingestor with a local indexer per round, one valid
// 10 M-token batch each, 10 rounds in a child process (`node --expose-gc`, gc() between rounds), the
// RSS after the last round against the first round's peak. Closed explicitly, the loop is flat with
// no event-loop turn at all; dropped, it is flat once the event loop turns between rounds (Node runs
// native finalizers only then).
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { fileURLToPath } from 'node:url'

const script = fileURLToPath(new URL('./helpers/memory-loop.ts', import.meta.url))

interface Round {
  round: number
  peakRss: number
  rss: number
}

function loop(mode: 'close' | 'yield'): Round[] {
  const r = spawnSync(process.execPath, ['--expose-gc', '--import', 'tsx', script, '10', mode], {
    encoding: 'utf8',
    env: process.env,
    maxBuffer: 1 << 20,
  })
  if (r.status !== 0) throw new Error(`memory loop (${mode}) failed: ${r.stderr}`)
  return r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Round)
}

// One round holds ~100 MB of native index, ring buffer and live set, plus the 60 MB batch: ten rounds
// kept would be ~5x the first round's peak; 2x leaves room for RSS noise and allocator slack but not
// for a second round's memory kept.
for (const mode of ['close', 'yield'] as const) {
  test.serial(`10 rounds of a 10M-token batch with a fresh Ingestor (${mode}) keep RSS under 2x one round's peak`, (t) => {
    const rounds = loop(mode)
    t.is(rounds.length, 10)
    const first = rounds[0]!.peakRss
    const last = rounds[9]!.rss
    t.log(`${mode}: first round peak ${(first / 1e6).toFixed(0)} MB, after 10 rounds ${(last / 1e6).toFixed(0)} MB`)
    t.true(last < 2 * first, `RSS ${last} after 10 rounds vs ${first} at the first round's peak`)
  })
}
