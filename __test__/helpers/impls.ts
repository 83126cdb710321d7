// Both implementations side by side, for the parity tests: the native binding (null when it did not
// load, with the reason) and the fallback.
import test from 'ava'
import { createRequire } from 'node:module'
import type { RawBinding } from '../../ts/core/binding.js'

export { fallback } from '../../ts/fallback/lib.js'

let loaded: RawBinding | null = null
let error: unknown = null
try {
  loaded = createRequire(import.meta.url)('../../binding.cjs') as RawBinding
} catch (e) {
  error = e
}

export const native = loaded
export const nativeLoadError = error

/** The native binding, or an error that says why it is missing (run npm run build). */
export function needNative(): RawBinding {
  if (!loaded) throw new Error(`native binding did not load (run npm run build): ${String(error)}`)
  return loaded
}

/**
 * ava's `test` for tests that compare both implementations. Where no native binding was built (a build
 * without Rust) and none is expected, they are registered as skipped, so the suite passes on the fallback
 * and says what it did not check; with DYNAMO_KV_EXPECT_NATIVE=1 (CI's native pass) they run and fail.
 */
export const parityTest = loaded || process.env.DYNAMO_KV_EXPECT_NATIVE === '1' ? test : test.skip
