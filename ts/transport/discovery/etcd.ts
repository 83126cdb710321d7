// The etcd discovery backend (SPEC 5b, "Discovery"), as a Dynamo 1.6 worker uses etcd: one lease per
// backend with the configured TTL, kept alive by the client; every record written with a create-if-absent
// transaction (key version == 0) attached to that lease; close() revokes the lease, which removes the
// records at once. After a crash nobody keeps the lease alive and etcd drops the records within one TTL.
import { Etcd3, type Lease } from 'etcd3'
import { noop } from 'cockatiel'
import { type DiscoveryBackend, DiscoveryError, type DiscoveryErrorHandler, type DiscoveryRecordBytes } from './backend.js'

export interface EtcdDiscoveryOptions {
  endpoints: readonly string[]
  leaseTtlSeconds: number
  /** How long to keep trying to reach etcd before open() fails. */
  connectTimeoutMs: number
  onError?: DiscoveryErrorHandler
  /**
   * Called once when etcd has stayed unreachable for RETRY_NOTICE_MS while open() keeps retrying until its
   * deadline (a start-up that fails sooner reports only its error).
   */
  onRetry?: (message: string) => void
}

/** How long start-up waits for etcd before saying that it is still trying. */
export const RETRY_NOTICE_MS = 3000

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms)
  })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}

export class EtcdDiscovery implements DiscoveryBackend {
  readonly kind = 'etcd'
  /** The lease id in decimal (etcd's int64), for diagnostics. */
  readonly leaseId: string
  private closed = false
  private readonly written: string[] = []

  private constructor(
    private readonly client: Etcd3,
    private readonly lease: Lease,
    leaseId: string,
    private readonly endpoints: readonly string[],
  ) {
    this.leaseId = leaseId
  }

  /**
   * Connects to etcd (retrying until connectTimeoutMs), grants the lease and starts its keep-alive.
   * Fails with a DiscoveryError naming ETCD_ENDPOINTS when etcd cannot be reached in time.
   */
  static async open(opts: EtcdDiscoveryOptions): Promise<EtcdDiscovery> {
    const deadline = Date.now() + opts.connectTimeoutMs
    const client = new Etcd3({
      hosts: [...opts.endpoints],
      dialTimeout: Math.min(opts.connectTimeoutMs, 5000),
      // This backend bounds and retries its own start-up; after that, the lease's keep-alive stream
      // reconnects by itself.
      faultHandling: { host: () => noop, global: noop },
    })
    const started = Date.now()
    let noticed = false
    let backoff = 100
    for (;;) {
      const remaining = deadline - Date.now()
      try {
        await withDeadline(client.maintenance.status(), Math.max(remaining, 1), 'etcd status')
        break
      } catch (err) {
        if (Date.now() + backoff >= deadline) {
          client.close()
          throw new DiscoveryError(
            `etcd is not reachable at ${opts.endpoints.join(',')} (ETCD_ENDPOINTS, option etcdEndpoints) ` +
              `within ${opts.connectTimeoutMs} ms (ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS, option etcdConnectTimeoutMs): ${(err as Error).message}`,
          )
        }
        if (!noticed && Date.now() - started >= RETRY_NOTICE_MS) {
          noticed = true
          opts.onRetry?.(
            `etcd is not reachable at ${opts.endpoints.join(',')} after ${Math.round((Date.now() - started) / 1000)} s (${(err as Error).message}); still retrying for up to ${Math.ceil((deadline - Date.now()) / 1000)} s (ETCD_STARTUP_CONNECT_TIMEOUT_SECONDS)`,
          )
        }
        await sleep(backoff)
        backoff = Math.min(backoff * 2, 2000)
      }
    }
    const lease = client.lease(opts.leaseTtlSeconds, { autoKeepAlive: true })
    let leaseId: string
    try {
      leaseId = await withDeadline(lease.grant(), Math.max(deadline - Date.now(), 1000), 'etcd lease grant')
    } catch (err) {
      lease.release()
      client.close()
      throw new DiscoveryError(`etcd at ${opts.endpoints.join(',')} did not grant a lease: ${(err as Error).message}`)
    }
    const backend = new EtcdDiscovery(client, lease, leaseId, opts.endpoints)
    lease.on('lost', (err) => {
      if (backend.closed) return
      opts.onError?.(
        new DiscoveryError(
          `etcd lease ${leaseId} was lost (${err.message}): the discovery records are gone and a Dynamo router will drop this publisher's events`,
        ),
      )
    })
    return backend
  }

  async register(records: readonly DiscoveryRecordBytes[]): Promise<void> {
    if (this.closed) throw new DiscoveryError('register() after close()')
    for (const rec of records) {
      const res = await this.client
        .if(rec.etcdKey, 'Version', '==', 0)
        .then(this.client.put(rec.etcdKey).value(rec.value).lease(this.leaseId))
        .commit()
      if (!res.succeeded) {
        const existing = await this.client.get(rec.etcdKey).buffer()
        if (existing === null || !existing.equals(rec.value)) {
          throw new DiscoveryError(`etcd key ${rec.etcdKey} already holds another record: a publisher id cannot change its descriptor`)
        }
      }
      this.written.push(rec.etcdKey)
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    try {
      // Revoking the lease deletes every key attached to it in one step.
      await withDeadline(this.lease.revoke(), 5000, 'etcd lease revoke')
    } catch {
      // etcd is unreachable: the records expire with the lease's TTL.
      this.lease.release()
    }
    this.client.close()
  }

  toString(): string {
    return `etcd discovery at ${this.endpoints.join(',')} (lease ${this.leaseId}, ${this.written.length} records)`
  }
}
