// dynamo-kv: NVIDIA Dynamo KV-aware routing for TypeScript. See README.md.
export * from './api.js'
