// Configuration of the Dynamo 1.4+ wire's transport (SPEC 5b, "Transport" and "Configuration"), read as a
// Dynamo 1.6.1 worker reads it: every option defaults to the environment variable Dynamo uses. A bad value
// fails here, before anything is bound, connected or written, with one message naming the option and the
// variable.
import { isIP } from 'node:net'
import { networkInterfaces } from 'node:os'
import { describe } from '../util/args.js'
import { detectAdvertiseHost } from './zmq-pub.js'

import type { Env } from '../util/env.js'

/** The event planes a Dynamo 1.6.1 KV publisher can use. */
export type EventPlaneKind = 'zmq' | 'nats'

/** The variable holding the worker id when the option is not given (Dynamo itself has none). */
export const WORKER_ID_ENV = 'DYNAMO_KV_WORKER_ID'

/** Dynamo's endpoint name for a worker's serving endpoint. */
export const DEFAULT_ENDPOINT = 'generate'

/** Default longest hold of a rank's first events, waiting for a router to subscribe (direct ZeroMQ). */
export const DEFAULT_ZMQ_SETTLE_MS = 1000

/** Default bound on writing one rank's discovery records. */
export const DEFAULT_REGISTER_TIMEOUT_MS = 30_000

/** A bad `dynamo-1.4` transport configuration; the message names the option and the environment variable. */
export class ConfigError extends RangeError {
  override name = 'ConfigError'
}

const U64_MAX = (1n << 64n) - 1n

/** The Dynamo instance id from the `workerId` option, else from DYNAMO_KV_WORKER_ID; required. */
export function resolveWorkerId(option: unknown, env: Env, what = 'workerId'): bigint {
  if (option !== undefined) {
    if (typeof option === 'bigint' && option >= 0n && option <= U64_MAX) return option
    if (typeof option === 'string' && /^[0-9]{1,20}$/.test(option) && BigInt(option) <= U64_MAX) return BigInt(option)
    throw new ConfigError(`option ${what} must be a u64 (a bigint or a decimal string), got ${describe(option)}`)
  }
  const raw = env[WORKER_ID_ENV]
  if (raw === undefined || raw === '')
    throw new ConfigError(
      `wire 'dynamo-1.4' needs the Dynamo instance id of the worker's serving endpoint: set option ${what} or ${WORKER_ID_ENV} ` +
        "(the instance_id in the worker's record under v1/instances/{namespace}/{component}/{endpoint}/ in the discovery store)",
    )
  const v = raw.trim()
  if (!/^[0-9]{1,20}$/.test(v) || BigInt(v) > U64_MAX)
    throw new ConfigError(`${WORKER_ID_ENV}=${JSON.stringify(raw)} (option ${what}) is not a u64 in decimal`)
  return BigInt(v)
}

/** `zmq` (default, as Dynamo 1.6.1 with every discovery backend) or `nats`, from the option or DYN_EVENT_PLANE. */
export function resolveEventPlane(option: unknown, env: Env): EventPlaneKind {
  if (option !== undefined) {
    if (option === 'zmq' || option === 'nats') return option
    throw new ConfigError(`option eventPlane must be 'zmq' or 'nats', got ${describe(option)}`)
  }
  const raw = env.DYN_EVENT_PLANE
  if (raw === undefined || raw.trim() === '') return 'zmq'
  const v = raw.trim().toLowerCase()
  if (v === 'zmq' || v === 'nats') return v
  throw new ConfigError(`DYN_EVENT_PLANE=${JSON.stringify(raw)} (option eventPlane) must be zmq or nats`)
}

/**
 * The host written into EventChannel records: the option, else DYN_EVENT_PLANE_HOST (an IP address or the
 * name of a network interface, whose first IPv4 address is used), else this host's first non-internal
 * address. An unspecified address (0.0.0.0, ::) cannot be advertised.
 */
export function resolveAdvertiseHost(option: unknown, env: Env): string {
  const fromOption = option !== undefined
  const raw = fromOption ? option : env.DYN_EVENT_PLANE_HOST
  if (raw === undefined || (!fromOption && raw === '')) return detectAdvertiseHost()
  const where = fromOption ? 'option eventPlaneHost' : `DYN_EVENT_PLANE_HOST=${JSON.stringify(raw)} (option eventPlaneHost)`
  if (typeof raw !== 'string' || raw.trim() === '') throw new ConfigError(`${where} must be an IP address or an interface name`)
  const host = raw.trim()
  if (isIP(host) !== 0) {
    if (host === '0.0.0.0' || host === '::' || /^0+(\.0+){3}$/.test(host))
      throw new ConfigError(`${where}: an unspecified address cannot be advertised; give the address routers reach this host at`)
    return host
  }
  const iface = networkInterfaces()[host]
  if (iface !== undefined && iface.length > 0) {
    const v4 = iface.find((a) => a.family === 'IPv4')
    return (v4 ?? iface[0])!.address
  }
  throw new ConfigError(`${where} is neither an IP address nor a network interface of this host`)
}

/** A TCP port (1..65535), or null when not given (a free port per rank). */
export function resolvePort(option: unknown, name = 'zmqPort'): number | null {
  if (option === undefined) return null
  if (typeof option !== 'number' || !Number.isInteger(option) || option < 1 || option > 65535)
    throw new ConfigError(`option ${name} must be a TCP port (1..65535), got ${describe(option)}`)
  return option
}

export function resolveBindHost(option: unknown): string {
  if (option === undefined) return '0.0.0.0'
  if (typeof option !== 'string' || isIP(option.trim()) === 0)
    throw new ConfigError(`option zmqBindHost must be an IP address of this host (or 0.0.0.0), got ${describe(option)}`)
  return option.trim()
}

export function resolveMs(option: unknown, name: string, dflt: number, min: number): number {
  if (option === undefined) return dflt
  if (typeof option !== 'number' || !Number.isSafeInteger(option) || option < min)
    throw new ConfigError(`option ${name} must be a whole number of milliseconds ≥ ${min}, got ${describe(option)}`)
  return option
}

/** A namespace, component or endpoint name of the 1.4 wire: any non-empty string (names are percent-encoded). */
export function resolveName14(name: string, v: unknown): string {
  if (typeof v !== 'string' || v === '') throw new ConfigError(`option ${name} must be a non-empty string, got ${describe(v)}`)
  return v
}
