// dynamo-kv/sim: a simulated inference engine publishing KV-cache events over ZeroMQ as vLLM does, with
// ground truth, for demos, tests and benchmarks.
export {
  EngineSimulator,
  type EngineSimulatorOptions,
  type StepResult,
  type ReplayLayout,
  type EventEncoding,
  type MalformedKind,
} from './engine.js'
export { Rng } from './rng.js'
