// Which implementation the suite runs against. .ci/run sets DYNAMO_KV_EXPECT_NATIVE=1 for its native
// pass so that a binding that silently failed to load (and fell back to TypeScript) fails the run
// instead of testing the fallback twice.
import test from 'ava'
import { implementation, nativeLoadError } from '../ts/index.js'

test('implementation is the one this run expects', (t) => {
  t.log(`implementation: ${implementation}`)
  if (process.env.DYNAMO_KV_FORCE_JS === '1') {
    t.is(implementation, 'js', 'DYNAMO_KV_FORCE_JS=1 must select the TypeScript fallback')
  } else if (process.env.DYNAMO_KV_EXPECT_NATIVE === '1') {
    t.is(implementation, 'native', `the native binding did not load: ${String(nativeLoadError)}`)
    t.is(nativeLoadError, null)
  } else {
    t.true(implementation === 'native' || implementation === 'js')
  }
})
