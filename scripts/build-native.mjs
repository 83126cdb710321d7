// `npm run build:native`: the napi release build of crates/node into ./binding.cjs, ./binding.d.ts and
// ./dynamo-kv.<platform>.node. Extra arguments go to `napi build` (the release workflow passes --target).
// Without a Rust toolchain it skips the native build in one line and exits 0: the package then runs on
// its TypeScript fallback, which gives the same results.
import { spawnSync } from 'node:child_process'

const windows = process.platform === 'win32'
const cargo = spawnSync('cargo', ['--version'], { stdio: 'ignore', shell: windows })
if (cargo.error || cargo.status !== 0) {
  console.log(
    'dynamo-kv: cargo not found on PATH, native binary skipped: the TypeScript fallback will be used (install Rust from https://rustup.rs to build it)',
  )
  process.exit(0)
}

const args = [
  'build',
  '--platform',
  '--release',
  '--manifest-path',
  'crates/node/Cargo.toml',
  '-o',
  '.',
  '--js',
  'binding.cjs',
  '--dts',
  'binding.d.ts',
  ...process.argv.slice(2),
]
const napi = spawnSync('napi', args, { stdio: 'inherit', shell: windows })
if (napi.error) throw napi.error
process.exit(napi.status ?? 1)
