// The Dynamo 1.4+ per-rank cursor (ts/router/rank-cursor14.ts) against the runs of Dynamo 1.6.1's own
// RankState recorded in fixtures/dynamo-1.6/discovery-1.6.json (router_acceptance.state_machine_runs):
// every input event id, in order, must give the recorded action and cursor.
import test from 'ava'
import { RankCursor14, type RankDecision } from '../ts/router/rank-cursor14.js'
import { fixture } from './helpers/fixtures.js'

interface Step {
  action?: 'Apply' | 'Ignore' | 'ResetDegraded' | 'Clear' | 'Recover'
  input_event_id?: number
  event_id?: number
  start_event_id?: number | null
  last_admitted_after?: number | null
  recovery_inflight_after?: boolean
  step?: 'recovery response applied'
  recovered_through?: number
}
interface Scenario {
  name: string
  recoverable_source: boolean
  input_event_ids: number[]
  actions: Step[]
}

const runs = fixture<{ router_acceptance: { state_machine_runs: { scenarios: Scenario[] } } }>('dynamo-1.6/discovery-1.6.json')
  .router_acceptance.state_machine_runs.scenarios

/** Inputs that are domainless (Dynamo 1.0 style) cleared events, by scenario: the scenario names say which. */
const LEGACY_CLEARED: Record<string, number[]> = {
  legacy_domainless_cleared_bypasses_cursor: [2],
  legacy_clear_with_stale_id_ignored: [1],
}

const NAMES: Record<RankDecision['action'], Step['action']> = {
  apply: 'Apply',
  ignore: 'Ignore',
  'reset-degraded': 'ResetDegraded',
  clear: 'Clear',
  recover: 'Recover',
}

test('the fixture has the runs this test replays', (t) => {
  t.true(runs.length >= 10, `${runs.length} scenarios`)
  t.true(runs.some((s) => s.recoverable_source) && runs.some((s) => !s.recoverable_source))
})

for (const s of runs)
  test(`Dynamo 1.6.1 RankState run: ${s.name}`, (t) => {
    const cursor = new RankCursor14(s.recoverable_source)
    let input = 0
    for (const step of s.actions) {
      if (step.step === 'recovery response applied') {
        cursor.recovered(step.recovered_through === undefined ? null : BigInt(step.recovered_through))
        t.is(cursor.lastAdmitted, BigInt(step.last_admitted_after!), 'cursor after the recovery')
        continue
      }
      const id = s.input_event_ids[input]!
      t.is(step.input_event_id, id, 'the run follows its inputs')
      const d = cursor.observe(BigInt(id), (LEGACY_CLEARED[s.name] ?? []).includes(input))
      input++
      t.is(NAMES[d.action], step.action, `input ${id}`)
      if ('eventId' in d) t.is(d.eventId, BigInt(step.event_id!))
      if (d.action === 'recover') t.is(d.startEventId, step.start_event_id == null ? null : BigInt(step.start_event_id))
      if (step.last_admitted_after !== undefined)
        t.is(cursor.lastAdmitted, step.last_admitted_after === null ? null : BigInt(step.last_admitted_after), `cursor after ${id}`)
      if (step.recovery_inflight_after !== undefined) t.is(cursor.recovering, step.recovery_inflight_after, `recovering after ${id}`)
    }
    t.is(input, s.input_event_ids.length, 'every input replayed')
  })
