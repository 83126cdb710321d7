// What a publisher hands its sink: one ingest result's payloads at a time, in emission order.

/** Why an accepted event-plane event was not confirmed (SPEC 8). */
export interface UndeliveredByReason {
  /** Written to a connection that failed before the server confirmed them, or still unconfirmed at close: may have arrived. */
  unconfirmed: number
  /** Never written: the reconnect buffer was full while disconnected, or they were still held at close. */
  dropped: number
  /** The client refused the publish (also counted in publishErrors): never written. */
  refused: number
}

export const UNDELIVERED_REASONS = ['unconfirmed', 'dropped', 'refused'] as const satisfies readonly (keyof UndeliveredByReason)[]

/** Counters every sink keeps (monotonic, except queueDepth). */
export interface SinkStats {
  /**
   * Events the server confirmed: a flush (PING/PONG) answered after they were written (event plane), or
   * an ack from the stream (JetStream).
   */
  published: number
  /** Core publishes the client refused (event plane), or publishes given up at close (JetStream). */
  publishErrors: number
  /** Event plane: accepted events that will never count as published (the sum of undeliveredByReason). */
  undelivered: number
  /** Event plane: undelivered by reason (SPEC 8). */
  undeliveredByReason: UndeliveredByReason
  /** JetStream: publish attempts repeated after a failure or timeout (same message id). */
  retries: number
  /** JetStream: acks saying the stream already had the message (a retry of one that had landed). */
  duplicates: number
  /** JetStream: events published again under new message ids to repair an out-of-order landing. */
  republished: number
  /** JetStream: repairs started. */
  repairs: number
  /** Payloads accepted and neither confirmed nor counted undelivered yet. */
  queueDepth: number
}

export interface Sink {
  /**
   * Takes the payloads of one ingest result (its `views`); event `firstEventId + i` is payload i, all of
   * `dpRank`. A sink keeps the views as they are (they stay valid and unchanged) and never changes the list.
   */
  send(payloads: readonly Uint8Array[], dpRank: number, firstEventId: bigint): void
  /** Payloads accepted and not yet confirmed that count against the publisher's maxPending (it waits above it). */
  readonly pending: number
  /** Called (by the sink) whenever pending went down. */
  onProgress: () => void
  /** Resolves when everything sent so far is confirmed, or after timeoutMs (then false). */
  flush(timeoutMs: number): Promise<boolean>
  /**
   * Flushes (bounded by timeoutMs), then stops timers; whatever is still unconfirmed is counted (JetStream:
   * publishErrors; event plane: undelivered).
   */
  close(timeoutMs: number): Promise<void>
  stats(): SinkStats
}

export function emptySinkStats(): SinkStats {
  return {
    published: 0,
    publishErrors: 0,
    undelivered: 0,
    undeliveredByReason: { unconfirmed: 0, dropped: 0, refused: 0 },
    retries: 0,
    duplicates: 0,
    republished: 0,
    repairs: 0,
    queueDepth: 0,
  }
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
