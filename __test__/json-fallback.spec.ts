// The fallback's JSON reader (ts/fallback/json.ts) on numbers at and past the u64 range: the same accept and
// reject answers as always, and an over-long integer rejected without converting it whole.
import test from 'ava'
import { fallback } from '../ts/fallback/lib.js'

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

test('a worker_id of 10 MB of digits is rejected quickly', (t) => {
  const start = performance.now()
  t.throws(() => fallback.decodeRouterEvent(event('9'.repeat(10_000_000)), true), {
    message: 'invalid router event: worker_id must be an unsigned integer',
  })
  t.true(performance.now() - start < 1000, `took ${(performance.now() - start).toFixed(0)} ms`)
})
