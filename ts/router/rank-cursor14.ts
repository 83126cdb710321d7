// Per (worker_id, dp_rank) event ordering on the Dynamo 1.4+ event plane, as a Dynamo 1.6.1 router applies
// it (SPEC 5b; the rules and runs recorded in discovery-1.6.json `router_acceptance`). Pure: the caller
// applies, clears, or recovers as each decision says.

/** What to do with one live event of a rank. */
export type RankDecision =
  /** Apply the event (the rank's cursor is now its id). */
  | { action: 'apply'; eventId: bigint }
  /** Drop the event: already admitted, or a recovery is running (the recovery covers it). */
  | { action: 'ignore' }
  /** A gap on a live-only source: clear the rank, then apply the event. */
  | { action: 'reset-degraded'; eventId: bigint }
  /** A domainless (Dynamo 1.0 style) cleared: applied outside the cursor's gap rule. */
  | { action: 'clear'; eventId: bigint }
  /** Ask the source's recovery target: from `startEventId` (null: a full tree dump); hold nothing else. */
  | { action: 'recover'; startEventId: bigint | null }

/**
 * A rank's cursor. `recoverable`: the rank's EventSource names a recovery target (else the source is
 * live-only). Event ids are u64 (bigint).
 */
export class RankCursor14 {
  /** The newest event id admitted (null: none yet). */
  lastAdmitted: bigint | null = null
  /** A recovery was asked for and has not been applied. */
  recovering = false

  constructor(readonly recoverable: boolean) {}

  /** The decision for a live event; `legacyCleared`: a cleared without residency_domain. */
  observe(eventId: bigint, legacyCleared = false): RankDecision {
    const last = this.lastAdmitted
    if (last !== null && eventId <= last) return { action: 'ignore' }
    if (legacyCleared) {
      this.lastAdmitted = eventId
      return { action: 'clear', eventId }
    }
    if (this.recovering) return { action: 'ignore' }
    if (last === null) {
      if (!this.recoverable) {
        this.lastAdmitted = eventId
        return { action: 'apply', eventId }
      }
      this.recovering = true
      return { action: 'recover', startEventId: null }
    }
    if (eventId === last + 1n) {
      this.lastAdmitted = eventId
      return { action: 'apply', eventId }
    }
    if (!this.recoverable) {
      this.lastAdmitted = eventId
      return { action: 'reset-degraded', eventId }
    }
    this.recovering = true
    return { action: 'recover', startEventId: last + 1n }
  }

  /** A recovery's answer was applied through `eventId` (null: it held nothing); live events are admitted after it. */
  recovered(eventId: bigint | null): void {
    this.recovering = false
    if (eventId !== null && (this.lastAdmitted === null || eventId > this.lastAdmitted)) this.lastAdmitted = eventId
  }

  /** A recovery failed: the next live event starts over (first sight). */
  recoveryFailed(): void {
    this.recovering = false
    this.lastAdmitted = null
  }
}
