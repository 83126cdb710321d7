// What a publisher hands its sink: one ingest result's payloads at a time, in emission order.

/** Counters every sink keeps (monotonic, except queueDepth). */
export interface SinkStats {
  /** Payloads handed to NATS (event plane) or acknowledged by the stream (JetStream). */
  published: number
  /** Core publishes the client refused (event plane), or publishes given up at close (JetStream). */
  publishErrors: number
  /** Event plane: payloads dropped while disconnected because the reconnect buffer was full. */
  undelivered: number
  /** JetStream: publish attempts repeated after a failure or timeout (same message id). */
  retries: number
  /** JetStream: acks saying the stream already had the message (a retry of one that had landed). */
  duplicates: number
  /** JetStream: events published again under new message ids to repair an out-of-order landing. */
  republished: number
  /** JetStream: repairs started. */
  repairs: number
  /** Payloads accepted but not yet confirmed (flushed to the server, or acknowledged). */
  queueDepth: number
}

export interface Sink {
  /** Takes the payloads of one ingest result; event `firstEventId + i` is payload i, all of `dpRank`. */
  send(payloads: Buffer[], dpRank: number, firstEventId: bigint): void
  /** Payloads accepted and not yet confirmed; the publisher stops accepting work above its maxPending. */
  readonly pending: number
  /** Called (by the sink) whenever pending went down. */
  onProgress: () => void
  /** Resolves when everything sent so far is confirmed, or after timeoutMs (then false). */
  flush(timeoutMs: number): Promise<boolean>
  /** Flushes (bounded by timeoutMs), then stops timers; whatever is still unconfirmed is counted in publishErrors. */
  close(timeoutMs: number): Promise<void>
  stats(): SinkStats
}

export function emptySinkStats(): SinkStats {
  return { published: 0, publishErrors: 0, undelivered: 0, retries: 0, duplicates: 0, republished: 0, repairs: 0, queueDepth: 0 }
}

/** Callers of flush() waiting for a sink to have nothing unconfirmed. */
export class IdleWaiters {
  #waiters: (() => void)[] = []

  /** Resolves true once notify() finds the sink idle, or false after timeoutMs. */
  wait(timeoutMs: number): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs)
      this.#waiters.push(() => {
        clearTimeout(timer)
        resolve(true)
      })
    })
  }

  /** Call whenever pending went down: wakes everyone if the sink is idle. */
  notify(pending: number): void {
    if (pending === 0) for (const w of this.#waiters.splice(0)) w()
  }
}
