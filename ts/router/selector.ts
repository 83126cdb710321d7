// Worker selection (SPEC 10): Dynamo's default cost rule over every candidate worker rank.

/** One worker rank the router may send a request to, with what selection weighs. */
export interface RouteCandidate {
  workerId: bigint
  dpRank: number
  /** Blocks of the request's prefix this rank already holds (the index's overlap score). */
  overlapBlocks: number
  /** Block hashes this rank holds in the router's index when it scored (overlapBlocks > 0), else 0. */
  treeSize: number
  /** Blocks of the request still to prefill here: `requestBlocks − overlapBlocks`. */
  prefillBlocks: number
  /** The rank's active decode blocks from its last ActiveLoad (0 when none arrived). */
  reportedDecodeBlocks: number
  /** Blocks of requests this router sent to the rank and not yet marked finished. */
  routedBlocks: number
  /** `reportedDecodeBlocks + routedBlocks`. */
  decodeBlocks: number
}

/** What a selector is asked to choose for. */
export interface RouteRequest {
  /** The request's blocks: ⌈tokens / kvBlockSize⌉. */
  requestBlocks: number
  /** The request's complete-block hashes (tokens hashes). */
  blockHashes: BigUint64Array
}

/** A custom selector: returns the index into `candidates` of the chosen rank (there is always at least one). */
export type WorkerSelector = (candidates: readonly RouteCandidate[], request: RouteRequest) => number

export interface DefaultSelectorOptions {
  /** Weight of the blocks still to prefill against the decode blocks (Dynamo's overlap_score_weight; default 1). */
  overlapWeight?: number
  /** 0 (default): the lowest cost wins. Above 0: sample by softmax of the normalised costs. */
  temperature?: number
  /** Uniform random numbers in [0, 1) for sampling (default Math.random). */
  random?: () => number
}

/** The cost of a candidate under the default rule. */
export function defaultCost(c: RouteCandidate, overlapWeight: number): number {
  return overlapWeight * c.prefillBlocks + c.decodeBlocks
}

/** The options of a selector made by defaultSelector, checked (the router's fast path reads them). */
export interface DefaultRule {
  overlapWeight: number
  temperature: number
  random: () => number
}

const RULE = Symbol('dynamo-kv.defaultRule')

/** The rule of a selector made by defaultSelector; null for any other function. */
export function defaultRuleOf(selector: WorkerSelector): DefaultRule | null {
  return (selector as WorkerSelector & { [RULE]?: DefaultRule })[RULE] ?? null
}

/**
 * The temperature draw of the default rule over `costs[from .. from + n)`, `best` (relative to `from`)
 * being the lowest cost's index: costs normalised to [0, 1] by (cost − min) / (max − min) (all 0 when
 * equal), index i drawn with probability ∝ exp(−normalised_i / temperature).
 */
export function sampleByCost(
  costs: ArrayLike<number>,
  from: number,
  n: number,
  best: number,
  temperature: number,
  random: () => number,
): number {
  const min = costs[from + best]!
  let max = costs[from]!
  for (let i = 1; i < n; i++) if (costs[from + i]! > max) max = costs[from + i]!
  const range = max - min
  const weight = (c: number) => Math.exp(-(range === 0 ? 0 : (c - min) / range) / temperature)
  let total = 0
  for (let i = 0; i < n; i++) total += weight(costs[from + i]!)
  let r = random() * total
  for (let i = 0; i < n; i++) {
    r -= weight(costs[from + i]!)
    if (r < 0) return i
  }
  return n - 1
}

/**
 * Dynamo's default selector. cost = overlapWeight × prefillBlocks + decodeBlocks. Temperature 0: the
 * lowest cost wins, ties to the lowest (workerId, dpRank) (candidates come in that order). Temperature
 * t > 0: costs are normalised to [0, 1] by (cost − min) / (max − min) (all 0 when equal), and rank i is
 * drawn with probability ∝ exp(−normalised_i / t). A router given this selector computes the same rule
 * in the core without building the candidates (they are built when its decision's `candidates` is read).
 */
export function defaultSelector(opts: DefaultSelectorOptions = {}): WorkerSelector {
  const weight = opts.overlapWeight ?? 1
  const temperature = opts.temperature ?? 0
  const random = opts.random ?? Math.random
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight < 0)
    throw new RangeError(`selector.overlapWeight must be a finite number >= 0, got ${String(weight)}`)
  if (typeof temperature !== 'number' || !Number.isFinite(temperature) || temperature < 0)
    throw new RangeError(`selector.temperature must be a finite number >= 0, got ${String(temperature)}`)
  if (typeof random !== 'function') throw new TypeError('selector.random must be a function returning numbers in [0, 1)')
  const select: WorkerSelector = (candidates) => {
    const costs = candidates.map((c) => defaultCost(c, weight))
    let best = 0
    for (let i = 1; i < costs.length; i++) if (costs[i]! < costs[best]!) best = i
    if (temperature === 0) return best
    return sampleByCost(costs, 0, costs.length, best, temperature, random)
  }
  const rule: DefaultRule = { overlapWeight: weight, temperature, random }
  return Object.defineProperty(select, RULE, { value: rule })
}
