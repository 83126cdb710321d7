// Stages what a release publishes, as `napi prepublish -t npm` would, without publishing it:
//   <out>/dynamo-kv/             the root package (from `npm pack`), with optionalDependencies on every
//                                platform package of package.json `napi.targets`, at exactly its version
//   <out>/dynamo-kv-<platform>/  npm/<platform> with its binary, for each binary built on this machine
//                                (./dynamo-kv.<platform>.node or npm/<platform>/dynamo-kv.<platform>.node)
// The release workflow runs `napi prepublish` itself; .ci/registry-install uses this to publish the same
// packages to a local registry from a machine that builds one target only.
// Usage: node scripts/stage-packages.mjs <out-dir>   (prints the staged directories as JSON)
import { execFileSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const out = path.resolve(process.argv[2] ?? '')
if (!process.argv[2]) throw new Error('usage: node scripts/stage-packages.mjs <out-dir>')
mkdirSync(out, { recursive: true })

const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8'))
const binaryName = pkg.napi.binaryName
const prefix = pkg.napi.packageName ?? pkg.name

// The platform directories under npm/ are the targets napi knows about; their package.json names the package.
const platforms = readdirSync(path.join(root, 'npm')).filter((d) => existsSync(path.join(root, 'npm', d, 'package.json')))
if (platforms.length !== pkg.napi.targets.length) {
  throw new Error(`npm/ holds ${platforms.length} platform packages for ${pkg.napi.targets.length} napi.targets`)
}

// The root package, exactly as `npm pack` makes it, then its manifest completed the way napi prepublish does.
const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--pack-destination', out], { cwd: root, encoding: 'utf8' }))[0]
const rootDir = path.join(out, pkg.name)
rmSync(rootDir, { recursive: true, force: true })
mkdirSync(rootDir)
execFileSync('tar', ['-xzf', path.join(out, packed.filename), '-C', rootDir, '--strip-components=1'])
rmSync(path.join(out, packed.filename))
const manifest = JSON.parse(readFileSync(path.join(rootDir, 'package.json'), 'utf8'))
manifest.optionalDependencies = {}
for (const platform of platforms) {
  const platformPkg = JSON.parse(readFileSync(path.join(root, 'npm', platform, 'package.json'), 'utf8'))
  if (platformPkg.name !== `${prefix}-${platform}`)
    throw new Error(`npm/${platform} is named ${platformPkg.name}, not ${prefix}-${platform}`)
  if (platformPkg.version !== pkg.version)
    throw new Error(`npm/${platform} is at ${platformPkg.version}, not ${pkg.version}: run \`napi version\``)
  manifest.optionalDependencies[platformPkg.name] = pkg.version
}
// prepublishOnly runs napi prepublish, which needs every target's binary; the staged packages are published as they are.
delete manifest.scripts?.prepublishOnly
writeFileSync(path.join(rootDir, 'package.json'), `${JSON.stringify(manifest, null, 2)}\n`)

const staged = { root: rootDir, platforms: {} }
for (const platform of platforms) {
  const file = `${binaryName}.${platform}.node`
  const binary = [path.join(root, 'npm', platform, file), path.join(root, file)].find((f) => existsSync(f))
  if (!binary) continue
  const dir = path.join(out, `${prefix}-${platform}`)
  rmSync(dir, { recursive: true, force: true })
  cpSync(path.join(root, 'npm', platform), dir, { recursive: true })
  copyFileSync(binary, path.join(dir, file))
  staged.platforms[platform] = dir
}
console.log(JSON.stringify(staged))
