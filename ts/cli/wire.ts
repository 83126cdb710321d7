// Which Dynamo wire the command publishes in, and the publisher options each one takes.
//
// `dynamo-1.0`: Dynamo 1.0-1.3 (one event per envelope on the NATS event plane, or JetStream).
// `dynamo-1.4`: Dynamo 1.4+ (batched envelopes on endpoint subjects, discovery records, a direct ZeroMQ or
// a NATS event plane).
import type { NatsOptions } from '../transport/nats.js'
import type { KvEventPublisherOptions } from '../worker/publisher.js'
import { UsageError } from './common.js'

export const WIRES = ['dynamo-1.0', 'dynamo-1.4'] as const
export type Wire = (typeof WIRES)[number]

export const EVENT_PLANES = ['zmq', 'nats'] as const

/** The `dynamo-1.4` settings (absent ones: the library reads Dynamo's environment variables itself). */
export interface Wire14Flags {
  endpoint: string
  eventPlane?: (typeof EVENT_PLANES)[number]
  eventPlaneHost?: string
  zmqBindHost?: string
  zmqPort?: number
  zmqSettleMs?: number
  discovery: { backend?: string; etcdEndpoints?: string[]; fileRoot?: string }
}

/** KvEventPublisher's `dynamo-1.4` options, as the library names them. */
interface Wire14Options extends Omit<Wire14Flags, 'discovery'> {
  wire: 'dynamo-1.4'
  discovery?: Wire14Flags['discovery']
  nats?: NatsOptions
}

const defined = <T extends object>(o: T): Partial<T> =>
  Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>

/**
 * The publisher options that depend on the wire: for dynamo-1.0 the NATS options; for dynamo-1.4 the
 * endpoint, event plane and discovery, and the NATS options only on a NATS event plane. Throws a
 * UsageError when a flag does not go with the wire (`natsFlagsGiven`: NATS flags were given on the command
 * line).
 */
export function wireOptions(
  wire: Wire,
  mode: string,
  nats: NatsOptions,
  natsFlagsGiven: boolean,
  flags: Wire14Flags,
): Partial<KvEventPublisherOptions> {
  if (wire === 'dynamo-1.0') return { nats }
  if (mode === 'jetstream') throw new UsageError('--wire dynamo-1.4 publishes on an event plane: it cannot go with --mode jetstream')
  const plane = flags.eventPlane ?? 'zmq'
  if (plane === 'zmq' && natsFlagsGiven)
    throw new UsageError('the --nats-* options apply to --event-plane nats; --wire dynamo-1.4 publishes on direct ZeroMQ by default')
  const discovery = defined(flags.discovery)
  const options: Wire14Options = {
    wire,
    endpoint: flags.endpoint,
    ...defined({ eventPlane: flags.eventPlane }),
    ...(plane === 'nats'
      ? { nats }
      : defined({
          eventPlaneHost: flags.eventPlaneHost,
          zmqBindHost: flags.zmqBindHost,
          zmqPort: flags.zmqPort,
          zmqSettleMs: flags.zmqSettleMs,
        })),
    ...(Object.keys(discovery).length > 0 ? { discovery } : {}),
  }
  return options as Partial<KvEventPublisherOptions>
}
