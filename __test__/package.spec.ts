// The built package (dist/ + binding.cjs + the .node at the root), used the way a consumer uses it: a
// temporary project whose node_modules/dynamo-kv links to this repo (what `npm install /path/to/repo`
// makes), loading it with require() and import() in a fresh Node process and type-checking against it.
// Runs after `npm run build`; without dist/ (e.g. only `npm run build:debug` was run) it fails, saying so.
//
// Note: ESM cannot import a directory path (ERR_UNSUPPORTED_DIR_IMPORT), so import() goes through the
// package name and package.json "exports"; require() also works with the folder path.
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const built = ['index.js', 'index.cjs', 'index.d.ts', 'index.d.cts'].every((f) => existsSync(path.join(root, 'dist', f)))

/** Fails with the reason when the package was not built. */
function needBuilt(): void {
  if (!built) throw new Error('dist/ is missing: run `npm run build` before the tests')
}

let consumer = ''
test.before(() => {
  needBuilt()
  consumer = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-consumer-'))
  mkdirSync(path.join(consumer, 'node_modules'))
  symlinkSync(root, path.join(consumer, 'node_modules', 'dynamo-kv'), 'dir')
  writeFileSync(path.join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true }))
})
test.after.always(() => {
  if (consumer) rmSync(consumer, { recursive: true, force: true })
})

// Prints what a consumer sees: which implementation, and the type of each key export.
// `sub(name)` loads a subpath export the same way (dynamo-kv/raw, dynamo-kv/sim).
const probe = (load: string, sub: (name: string) => string) => `
  ;(async () => {
    const m = ${load}
    const rawEntry = ${sub('raw')}
    const simEntry = ${sub('sim')}
    const out = { implementation: m.implementation, loadError: m.nativeLoadError ? String(m.nativeLoadError) : null }
    for (const k of ['computeBlockHashes', 'decodeEngineBatch', 'Ingestor', 'KvDecodeError', 'KvEventPublisher', 'WorkerMetricsPublisher', 'ZmqSource']) out[k] = typeof m[k]
    // internals are not at the root, but behind their subpaths
    out.internalsAtRoot = ['raw', 'fallback', 'checkName', 'RECEIVE_BACKOFF_MS', 'EngineSimulator', 'Rng'].filter((k) => k in m)
    out.rawImplementation = rawEntry.implementation
    out.rawHashes = Array.from(rawEntry.raw.computeBlockHashes(new Uint32Array([1, 2, 3, 4]), 2, null, null), String)
    out.rootHashes = Array.from(m.computeBlockHashes([1, 2, 3, 4], 2), String)
    // zeromq (a native addon) is loaded on first use only, and then works from either build
    const { createRequire } = await import('node:module')
    const loaded = () => Object.keys(createRequire(process.cwd() + '/').cache).some((k) => k.includes('/zeromq/'))
    out.zeromqAtImport = loaded()
    const sim = await simEntry.EngineSimulator.create()
    out.simulator = sim.endpoint.startsWith('tcp://127.0.0.1:') && loaded()
    sim.close()
    console.log(JSON.stringify(out))
  })().catch((err) => { console.error(err); process.exit(1) })
`

function run(args: string[]): Record<string, unknown> {
  // The child inherits DYNAMO_KV_FORCE_JS, so it must pick the same implementation as this run.
  const stdout = execFileSync(process.execPath, args, { cwd: consumer, encoding: 'utf8' })
  return JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>
}

function check(t: import('ava').ExecutionContext, got: Record<string, unknown>) {
  t.log(JSON.stringify(got))
  if (process.env.DYNAMO_KV_FORCE_JS === '1') t.is(got.implementation, 'js')
  else if (process.env.DYNAMO_KV_EXPECT_NATIVE === '1') t.is(got.implementation, 'native', `load error: ${String(got.loadError)}`)
  else t.true(got.implementation === 'native' || got.implementation === 'js')
  t.is(got.computeBlockHashes, 'function')
  t.is(got.decodeEngineBatch, 'function')
  t.is(got.Ingestor, 'function')
  t.is(got.KvDecodeError, 'function')
  t.is(got.KvEventPublisher, 'function')
  t.is(got.WorkerMetricsPublisher, 'function')
  t.is(got.ZmqSource, 'function')
  t.deepEqual(got.internalsAtRoot, [])
  t.is(got.rawImplementation, got.implementation, 'dynamo-kv/raw uses the implementation the root uses')
  t.deepEqual(got.rawHashes, got.rootHashes)
  t.false(got.zeromqAtImport, 'zeromq is not loaded by importing the package')
  t.true(got.simulator)
}

test('require("dynamo-kv") gives the public API (CommonJS build)', (t) => {
  check(t, run(['-e', probe(`require('dynamo-kv')`, (n) => `require('dynamo-kv/${n}')`)]))
})

test('require() of the repo folder gives the public API', (t) => {
  check(t, run(['-e', probe(`require(${JSON.stringify(root)})`, (n) => `require(${JSON.stringify(`${root}/dist/${n}.cjs`)})`)]))
})

test('import("dynamo-kv") gives the public API (ESM build)', (t) => {
  check(t, run(['--input-type=module', '-e', probe(`await import('dynamo-kv')`, (n) => `await import('dynamo-kv/${n}')`)]))
})

test('the published types resolve for ESM and CommonJS consumers', (t) => {
  const use = (ns: string) => `
    export const hashes: BigUint64Array = ${ns}computeBlockHashes([1, 2, 3, 4], 2)
    export const ingestor: ${ns}Ingestor = new ${ns}Ingestor({ kvBlockSize: 16, workerId: 1n })
    export const which: 'native' | 'js' = ${ns}implementation
    export const options: ${ns}KvEventPublisherOptions = { namespace: 'ns', component: 'c', kvBlockSize: 16, zmq: { endpoint: 'tcp://127.0.0.1:5557' } }
    export const sim: Promise<EngineSimulator> = EngineSimulator.create()
    export const rawHashes: BigUint64Array = raw.computeBlockHashes(new Uint32Array([1, 2]), 2, null, null)
    export const create: Promise<${ns}KvEventPublisher> = ${ns}KvEventPublisher.create(options).catch(() => { throw new Error('not run') })
  `
  writeFileSync(
    path.join(consumer, 'esm.mts'),
    `import * as dk from 'dynamo-kv'\nimport { raw } from 'dynamo-kv/raw'\nimport { EngineSimulator } from 'dynamo-kv/sim'\n${use('dk.')}`,
  )
  writeFileSync(
    path.join(consumer, 'cjs.cts'),
    `import dk = require('dynamo-kv')\nimport { raw } from 'dynamo-kv/raw'\nimport { EngineSimulator } from 'dynamo-kv/sim'\n${use('dk.')}`,
  )
  writeFileSync(
    path.join(consumer, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        target: 'ES2022',
        strict: true,
        noEmit: true,
        typeRoots: [path.join(root, 'node_modules', '@types')],
        types: ['node'],
      },
      files: ['esm.mts', 'cjs.cts'],
    }),
  )
  const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc')
  try {
    execFileSync(process.execPath, [tsc, '-p', consumer], { cwd: consumer, encoding: 'utf8' })
    t.pass()
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string }
    t.fail(`tsc failed:\n${e.stdout ?? ''}${e.stderr ?? ''}`)
  }
})
