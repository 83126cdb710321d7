// Which Dynamo wire the command publishes in, and the publisher options each one takes.
//
// `dynamo-1.0`: Dynamo 1.0-1.3 (one event per envelope on the NATS event plane, or JetStream).
// `dynamo-1.4`: Dynamo 1.4+ (arrays of events, endpoint subjects, discovery records). The command accepts
// and validates it; it is published only when this build's KvEventPublisher takes the `wire` option,
// which is what AVAILABLE_WIRES says.
import type { KvEventPublisherOptions } from '../worker/publisher.js'
import { UsageError } from './common.js'

export const WIRES = ['dynamo-1.0', 'dynamo-1.4'] as const
export type Wire = (typeof WIRES)[number]

/** The wires this build's KvEventPublisher publishes. */
export const AVAILABLE_WIRES: readonly Wire[] = ['dynamo-1.0']

/** Discovery settings for `dynamo-1.4` (absent ones: the library reads Dynamo's environment). */
export interface DiscoveryFlags {
  backend?: string
  etcdEndpoints?: string[]
  fileRoot?: string
}

/** The Dynamo 1.4 options of KvEventPublisher (named as the library names them). */
export interface Wire14Options {
  wire: 'dynamo-1.4'
  endpoint: string
  discovery?: DiscoveryFlags
}

/**
 * The publisher options for `wire`: none for dynamo-1.0 (the library's default), the endpoint and
 * discovery for dynamo-1.4. Throws a UsageError when this build cannot publish that wire.
 */
export function wireOptions(
  wire: Wire,
  mode: string,
  endpoint: string,
  discovery: DiscoveryFlags,
): Partial<KvEventPublisherOptions> | Wire14Options {
  if (!AVAILABLE_WIRES.includes(wire))
    throw new UsageError(`--wire ${wire} is not available in this build (available: ${AVAILABLE_WIRES.join(', ')})`)
  if (wire === 'dynamo-1.0') return {}
  if (mode === 'jetstream') throw new UsageError('--wire dynamo-1.4 publishes on the event plane: it cannot go with --mode jetstream')
  const d = Object.fromEntries(Object.entries(discovery).filter(([, v]) => v !== undefined)) as DiscoveryFlags
  return { wire, endpoint, ...(Object.keys(d).length > 0 ? { discovery: d } : {}) }
}
