// dynamo-kv/raw: the raw interface that both implementations provide (the napi binding over the Rust
// core, and the pure-TypeScript fallback), for tools and benchmarks that need to reach below the
// validated public API. Arguments are not checked here: see ts/core/binding.ts for each method's contract.
export { raw, implementation, nativeLoadError } from './core/native.js'
export { fallback } from './fallback/lib.js'
export * from './core/binding.js'
