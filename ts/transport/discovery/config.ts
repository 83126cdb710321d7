// Discovery configuration as Dynamo 1.6 reads it (SPEC 5b, "Discovery"): every option defaults to the
// environment variable a Dynamo worker would read. A bad value fails here, with one message naming the
// option and the variable, before anything is connected or written.
import { tmpdir } from 'node:os'
import path from 'node:path'

export const DISCOVERY_BACKENDS = ['etcd', 'file', 'kubernetes', 'mem'] as const
export type DiscoveryBackendName = (typeof DISCOVERY_BACKENDS)[number]

/** Dynamo's default lease TTL for the etcd backend, in seconds. */
export const DEFAULT_ETCD_LEASE_TTL_S = 30
/** Dynamo's default bound on reaching etcd at start-up, in seconds. */
export const DEFAULT_ETCD_CONNECT_TIMEOUT_S = 120
/** Dynamo's default etcd endpoint. */
export const DEFAULT_ETCD_ENDPOINT = 'http://localhost:2379'
/** Dynamo's file-store TTL: a file not touched for this long is deleted by any Dynamo process. */
export const DEFAULT_FILE_TTL_MS = 10_000

export interface DiscoveryOptions {
  /** `etcd` (default), `file`; `kubernetes` and `mem` are refused. Default `$DYN_DISCOVERY_BACKEND`, else `etcd`. */
  backend?: string
  /** etcd endpoints (URLs). Default `$ETCD_ENDPOINTS` (comma-separated), else `http://localhost:2379`. */
  etcdEndpoints?: string | readonly string[]
  /** Lease TTL in whole seconds (≥ 1). Default `$ETCD_LEASE_TTL`, else 30. */
  etcdLeaseTtlSeconds?: number
  /** How long to try reaching etcd before failing, in ms. Default `$ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS`, else 120 s. */
  etcdConnectTimeoutMs?: number
  /** The file store's root. Default `$DYN_FILE_KV`, else `$TMPDIR/dynamo_store_kv`. */
  fileRoot?: string
  /** File-store TTL in ms (≥ 1000); the files are touched every max(ttl/3, 1 s). Default 10 s, as Dynamo. */
  fileTtlMs?: number
}

export type ResolvedDiscoveryConfig =
  | {
      backend: 'etcd'
      endpoints: string[]
      leaseTtlSeconds: number
      connectTimeoutMs: number
    }
  | { backend: 'file'; root: string; ttlMs: number }

/** A bad discovery configuration (backend, etcd, file store); the message names the option and the variable. */
export class DiscoveryConfigError extends Error {
  override name = 'DiscoveryConfigError'
}

function fail(msg: string): never {
  throw new DiscoveryConfigError(msg)
}

function positiveInt(value: unknown, what: string, min: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    fail(`${what} must be an integer ≥ ${min}, got ${JSON.stringify(value)}`)
  }
  return value
}

function envInt(env: NodeJS.ProcessEnv, name: string, option: string, min: number): number | undefined {
  const raw = env[name]
  if (raw === undefined || raw === '') return undefined
  if (!/^[0-9]+$/.test(raw.trim())) fail(`${name}=${JSON.stringify(raw)} (option ${option}) is not a whole number`)
  return positiveInt(Number(raw.trim()), `${name} (option ${option})`, min)
}

function endpointList(value: string | readonly string[], what: string): string[] {
  const list = (typeof value === 'string' ? value.split(',') : [...value]).map((s) => String(s).trim())
  if (list.length === 0 || list.some((s) => s === '')) fail(`${what} must list etcd URLs, got ${JSON.stringify(value)}`)
  for (const url of list) {
    let parsed: URL
    try {
      parsed = new URL(url)
    } catch {
      fail(`${what}: ${JSON.stringify(url)} is not a URL (expected e.g. http://127.0.0.1:2379)`)
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
      fail(`${what}: ${JSON.stringify(url)} must be an http:// or https:// URL`)
    }
  }
  return list
}

/** Resolves options against the environment (Dynamo's variables); throws DiscoveryConfigError. */
export function resolveDiscoveryConfig(options: DiscoveryOptions = {}, env: NodeJS.ProcessEnv = process.env): ResolvedDiscoveryConfig {
  const fromEnv = options.backend === undefined
  const backend = (options.backend ?? env.DYN_DISCOVERY_BACKEND ?? 'etcd').trim()
  const where = fromEnv ? `DYN_DISCOVERY_BACKEND=${JSON.stringify(backend)}` : `option backend ${JSON.stringify(backend)}`
  switch (backend) {
    case 'etcd': {
      const endpoints =
        options.etcdEndpoints !== undefined
          ? endpointList(options.etcdEndpoints, 'option etcdEndpoints')
          : env.ETCD_ENDPOINTS !== undefined
            ? endpointList(env.ETCD_ENDPOINTS, 'ETCD_ENDPOINTS (option etcdEndpoints)')
            : [DEFAULT_ETCD_ENDPOINT]
      const leaseTtlSeconds =
        options.etcdLeaseTtlSeconds !== undefined
          ? positiveInt(options.etcdLeaseTtlSeconds, 'option etcdLeaseTtlSeconds', 1)
          : (envInt(env, 'ETCD_LEASE_TTL', 'etcdLeaseTtlSeconds', 1) ?? DEFAULT_ETCD_LEASE_TTL_S)
      const connectTimeoutMs =
        options.etcdConnectTimeoutMs !== undefined
          ? positiveInt(options.etcdConnectTimeoutMs, 'option etcdConnectTimeoutMs', 1)
          : (envInt(env, 'ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS', 'etcdConnectTimeoutMs', 1) ?? DEFAULT_ETCD_CONNECT_TIMEOUT_S) * 1000
      return { backend: 'etcd', endpoints, leaseTtlSeconds, connectTimeoutMs }
    }
    case 'file': {
      const root = options.fileRoot ?? env.DYN_FILE_KV ?? path.join(tmpdir(), 'dynamo_store_kv')
      if (root === '') fail(`${options.fileRoot !== undefined ? 'option fileRoot' : 'DYN_FILE_KV'} must not be empty`)
      const ttlMs = options.fileTtlMs !== undefined ? positiveInt(options.fileTtlMs, 'option fileTtlMs', 1000) : DEFAULT_FILE_TTL_MS
      return { backend: 'file', root: path.resolve(root), ttlMs }
    }
    case 'kubernetes':
      return fail(
        `${where}: the kubernetes discovery backend is not supported. Dynamo's kubernetes discovery has no ` +
          'key/value store: each pod server-side-applies one DynamoWorkerMetadata custom resource ' +
          '(nvidia.com/v1alpha1, owned by the pod) whose spec.data holds all its discovery records ' +
          '({endpoints, model_cards, event_channels, event_sources}, keyed like the etcd keys without their ' +
          "v1/<bucket>/ prefix). A sidecar would have to merge this publisher's EventSource (and EventChannel) " +
          "records into its pod's resource. Use DYN_DISCOVERY_BACKEND=etcd or file.",
      )
    case 'mem':
      return fail(`${where}: the mem discovery backend lives inside one Dynamo process; no router can read it. Use etcd or file.`)
    default:
      return fail(`${where} is not a discovery backend; valid values: etcd (default), file (kubernetes and mem are not supported)`)
  }
}

const U64_MAX = (1n << 64n) - 1n

/** A u64 from a bigint or a decimal string (never a JS number, which cannot hold every u64). */
export function parseU64(value: unknown, what: string): bigint {
  let v: bigint | undefined
  if (typeof value === 'bigint') v = value
  else if (typeof value === 'string' && /^[0-9]{1,20}$/.test(value)) v = BigInt(value)
  if (v === undefined || v < 0n || v > U64_MAX) {
    const shown = typeof value === 'bigint' ? `${value}n` : JSON.stringify(value)
    fail(`${what} must be a u64 given as a bigint or a decimal string, got ${shown ?? String(value)}`)
  }
  return v
}
