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

/**
 * Dynamo's default selector. cost = overlapWeight × prefillBlocks + decodeBlocks. Temperature 0: the
 * lowest cost wins, ties to the lowest (workerId, dpRank) (candidates come in that order). Temperature
 * t > 0: costs are normalised to [0, 1] by (cost − min) / (max − min) (all 0 when equal), and rank i is
 * drawn with probability ∝ exp(−normalised_i / t).
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
  return (candidates) => {
    const costs = candidates.map((c) => defaultCost(c, weight))
    let best = 0
    for (let i = 1; i < costs.length; i++) if (costs[i]! < costs[best]!) best = i
    if (temperature === 0) return best
    const min = costs[best]!
    const max = Math.max(...costs)
    const range = max - min
    const weights = costs.map((c) => Math.exp(-(range === 0 ? 0 : (c - min) / range) / temperature))
    const total = weights.reduce((a, b) => a + b, 0)
    let r = random() * total
    for (let i = 0; i < weights.length; i++) {
      r -= weights[i]!
      if (r < 0) return i
    }
    return weights.length - 1
  }
}
