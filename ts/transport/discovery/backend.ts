// What every discovery backend does with the records the core builds (SPEC 5b, "Discovery").

/** A record as written: the same bytes under an etcd key or in a file under the store's root. */
export interface DiscoveryRecordBytes {
  /** `v1/event_sources/namespace/{ns}/…/{publisher_id:x}` */
  readonly etcdKey: string
  /** Relative to the file store's root: the bucket directory, then the key percent-encoded as one name. */
  readonly filePath: string
  /** Compact JSON, exact u64. */
  readonly value: Buffer
}

export interface DiscoveryBackend {
  readonly kind: 'etcd' | 'file'
  /**
   * Writes the records, create-if-absent, and keeps them alive until close(). Resolves once every record
   * is readable by a router. A record already present with the same bytes is accepted; with other bytes
   * it is an error (a publisher id names one descriptor for its lifetime).
   */
  register(records: readonly DiscoveryRecordBytes[]): Promise<void>
  /** Removes every record this backend wrote and stops keeping them alive. Never throws; idempotent. */
  close(): Promise<void>
}

/** Errors that happen after register() resolved (a lost lease, a failed keep-alive). */
export type DiscoveryErrorHandler = (err: Error) => void

/** The discovery store failed: etcd unreachable, a lost lease, a record held by another descriptor, a file-store error. */
export class DiscoveryError extends Error {
  override name = 'DiscoveryError'
}
