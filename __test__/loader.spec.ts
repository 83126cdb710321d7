// The loader when the native binary is missing or broken, on a copy of the built package (package.json,
// binding.cjs, dist/) without the binary: the fallback is used, one line on stderr per process names the
// platform and the reason (never the generated loader's npm-bug text), and nativeLoadError says the same.
// DYNAMO_KV_FORCE_JS=1 selects the fallback silently. Runs after `npm run build`.
import test from 'ava'
import { spawnSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { napiPlatform } from '../ts/core/native.js'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const platform = napiPlatform()
let copy = ''

test.before(() => {
  if (!existsSync(path.join(root, 'dist', 'index.js'))) throw new Error('dist/ is missing: run `npm run build` before the tests')
  // inside node_modules/, so the copy's dependencies resolve to the repo's
  copy = mkdtempSync(path.join(root, 'node_modules', '.dynamo-kv-loader-'))
  copyFileSync(path.join(root, 'package.json'), path.join(copy, 'package.json'))
  copyFileSync(path.join(root, 'binding.cjs'), path.join(copy, 'binding.cjs'))
  cpSync(path.join(root, 'dist'), path.join(copy, 'dist'), { recursive: true })
})
test.after.always(() => {
  if (copy) rmSync(copy, { recursive: true, force: true })
})

/** Loads the copy from CommonJS and ESM in one process; returns both implementations, the error and stderr. */
function load(env: Record<string, string | undefined>) {
  const code = `
    const m = require(${JSON.stringify(copy)})
    import(${JSON.stringify(`${copy}/dist/index.js`)}).then((e) =>
      console.log(JSON.stringify({ cjs: m.implementation, esm: e.implementation, error: m.nativeLoadError && m.nativeLoadError.message, isError: m.nativeLoadError instanceof Error })))`
  const r = spawnSync(process.execPath, ['-e', code], {
    encoding: 'utf8',
    env: {
      ...process.env,
      DYNAMO_KV_FORCE_JS: undefined,
      DYNAMO_KV_EXPECT_NATIVE: undefined,
      NAPI_RS_NATIVE_LIBRARY_PATH: undefined,
      ...env,
    },
  })
  if (r.status !== 0) throw new Error(r.stderr)
  return { ...(JSON.parse(r.stdout) as { cjs: string; esm: string; error: string | null; isError: boolean }), stderr: r.stderr }
}

test.serial('no binary: the fallback, and one warning line naming the platform and the missing package', (t) => {
  const got = load({})
  t.log(got.stderr.trim())
  t.is(got.cjs, 'js')
  t.is(got.esm, 'js')
  t.true(got.isError)
  t.is(
    got.error,
    `dynamo-kv: native core not loaded: the optional dependency dynamo-kv-${platform} is not installed (installed with --omit=optional, or from a lockfile made on another platform)`,
  )
  const lines = got.stderr.split('\n').filter(Boolean)
  t.is(lines.length, 1, 'one line per process, though both builds were loaded')
  t.true(lines[0]!.startsWith(`${got.error}; using the TypeScript fallback`))
  t.notRegex(got.stderr, /npm has a bug/)
})

test.serial('a binary that does not load: the fallback, and the loader’s reason', (t) => {
  const file = path.join(copy, `dynamo-kv.${platform}.node`)
  writeFileSync(file, 'not a shared library')
  try {
    const got = load({})
    t.log(got.stderr.trim())
    t.is(got.cjs, 'js')
    t.regex(got.error!, new RegExp(`^dynamo-kv: native core not loaded: the binary for ${platform} failed to load: .+`))
    t.is(got.stderr.split('\n').filter(Boolean).length, 1)
  } finally {
    rmSync(file)
  }
})

test.serial('DYNAMO_KV_FORCE_JS=1: the fallback, silently', (t) => {
  const got = load({ DYNAMO_KV_FORCE_JS: '1' })
  t.is(got.cjs, 'js')
  t.is(got.esm, 'js')
  t.is(got.stderr, '')
})
