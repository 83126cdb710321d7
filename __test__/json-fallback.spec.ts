// The JSON router-event readers on numbers at and past the u64 range: the fallback (ts/fallback/json.ts)
// gives the same accept and reject answers as always, and the same as the native reader for long digit
// runs, leading zeros, exponents, fractions and signs. (What rejecting a 10 MB number costs is measured
// in BENCHMARKS.md, not asserted here.)
import test from 'ava'
import type { RawBinding } from '../ts/core/binding.js'
import { fallback, needNative, parityTest } from './helpers/impls.js'
import { Rng } from '../ts/sim/rng.js'

const event = (workerId: string): Uint8Array => Buffer.from(`{"worker_id":${workerId},"event":{"event_id":1,"data":"cleared","dp_rank":0}}`)

test('worker_id at the u64 limit is read exactly; one past it, and leading zeros, are rejected', (t) => {
  t.is(fallback.decodeRouterEvent(event('18446744073709551615'), true).workerId, 18446744073709551615n)
  t.is(fallback.decodeRouterEvent(event('0'), true).workerId, 0n)
  t.throws(() => fallback.decodeRouterEvent(event('18446744073709551616'), true), {
    message: 'invalid router event: worker_id must be an unsigned integer',
  })
  t.throws(() => fallback.decodeRouterEvent(event('00'), true), { message: /^invalid router event: bad JSON: leading zero/ })
  t.throws(() => fallback.decodeRouterEvent(event('1e3'), true), { message: 'invalid router event: worker_id must be an unsigned integer' })
})

test('a worker_id of 10 MB of digits is rejected as out of range', (t) => {
  t.throws(() => fallback.decodeRouterEvent(event('9'.repeat(10_000_000)), true), {
    message: 'invalid router event: worker_id must be an unsigned integer',
  })
})

/** What an implementation answers for one input: the worker id read, or whether it was rejected. */
function outcome(impl: RawBinding, bytes: Uint8Array): string {
  try {
    return `ok ${impl.decodeRouterEvent(bytes, true).workerId}`
  } catch (e) {
    return (e as Error).message.startsWith('invalid router event') ? 'rejected' : `threw ${String(e)}`
  }
}

parityTest('both readers agree on long digit runs, leading zeros, exponents, fractions and signs', (t) => {
  const native = needNative()
  const rng = new Rng(7)
  const digits = (n: number) => Array.from({ length: n }, (_, i) => (i === 0 ? 1 + rng.int(9) : rng.int(10))).join('')
  const numbers: string[] = [
    '0',
    '-0',
    '1',
    '-1',
    '+1',
    '01',
    '00',
    '0.0',
    '1.0',
    '1e0',
    '1E3',
    '1e-3',
    '0x10',
    '18446744073709551615',
    '18446744073709551616',
  ]
  for (const n of [1, 19, 20, 21, 40, 1000, 100_000]) {
    const d = digits(n)
    numbers.push(d, `0${d}`, `-${d}`, `${d}.5`, `${d}e2`, `${d}E-2`, `${d}.`, `${d}e`, `${'0'.repeat(n)}`)
  }
  let rejected = 0
  for (const n of numbers) {
    const bytes = event(n)
    const want = outcome(native, bytes)
    t.is(outcome(fallback, bytes), want, `worker_id ${n.length > 40 ? `${n.slice(0, 20)}… (${n.length} chars)` : n}`)
    if (want === 'rejected') rejected++
  }
  t.true(rejected > numbers.length / 2, 'most of these numbers are not u64')
})
