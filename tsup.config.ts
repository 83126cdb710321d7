// Builds the public entry (ts/index.ts) into dist/: index.js (ESM), index.cjs (CJS), index.d.ts and
// index.d.cts. dist/ sits one level below the package root, like ts/, so ts/native.ts's
// `createRequire(import.meta.url)('../binding.cjs')` finds the napi loader from both. `shims: true`
// gives the CJS output a working `import.meta.url`.
import { defineConfig } from 'tsup'

export default defineConfig({
  entry: { index: 'ts/index.ts' },
  format: ['esm', 'cjs'],
  outDir: 'dist',
  platform: 'node',
  target: 'node20',
  dts: true,
  shims: true,
  sourcemap: true,
  clean: true,
  splitting: false,
  treeshake: false,
})
