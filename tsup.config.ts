// Builds the package's entries into dist/, each as ESM (.js) and CJS (.cjs): index (the public API,
// `dynamo-kv`), raw (`dynamo-kv/raw`) and sim (`dynamo-kv/sim`) with their declarations, and cli (the
// `dynamo-kv` command: package.json "bin" is dist/cli.js; its shebang makes tsup mark it executable; the
// .cjs copy is unused). Code the entries share goes into shared chunks in both formats, so the loaded
// implementation and the classes are one copy whichever entries a program (or the command) imports.
// `shims: true` gives the CJS output a working `import.meta.url` (ts/core/native.ts finds binding.cjs
// from it).
import { defineConfig } from 'tsup'

export default defineConfig({
  entry: { index: 'ts/index.ts', raw: 'ts/raw.ts', sim: 'ts/sim/index.ts', cli: 'ts/cli/main.ts' },
  format: ['esm', 'cjs'],
  outDir: 'dist',
  platform: 'node',
  target: 'node20',
  dts: { entry: { index: 'ts/index.ts', raw: 'ts/raw.ts', sim: 'ts/sim/index.ts' } },
  shims: true,
  sourcemap: true,
  clean: true,
  splitting: true,
  treeshake: false,
})
