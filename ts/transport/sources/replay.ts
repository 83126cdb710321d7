// The replay client (SPEC 2.1): one round is a DEALER that sends `["", start_seq]` to the engine's ROUTER
// and reads replies, in either layout, until the end marker or silence. What the replies mean is the
// sequencer's business; this file only moves frames and keeps time.
import type { Dealer } from 'zeromq'
import { zeromq } from '../zeromq.js'

/** Silence that ends a round once replies have flowed: the engine's ROUTER dropped the rest. */
export const REPLAY_STALL_MS = 1000

const END_SEQ = (1n << 64n) - 1n
const EMPTY = Buffer.alloc(0)

/** What a round's reader says about each reply: go on (`applied` marks progress) or stop the round. */
export type ReplyVerdict = 'applied' | 'skipped' | 'stop'

export interface ReplayRoundHooks {
  /** One reply, in order; the round waits for it. */
  reply(seq: bigint, payload: Buffer): Promise<ReplyVerdict>
  /** A reply of neither layout. */
  unknown(): void
  /** A send or receive error (other than the timeout), for the log. */
  error(what: string, err: unknown): void
}

/** One replay round against `endpoint` from `from`; `cancel()` closes it from outside. */
export class ReplayRound {
  #dealer: Dealer | null = null
  #cancelled = false

  constructor(
    readonly endpoint: string,
    readonly from: bigint,
    readonly timeoutMs: number,
  ) {}

  get cancelled(): boolean {
    return this.#cancelled
  }

  cancel(): void {
    this.#cancelled = true
    this.#dealer?.close()
  }

  /**
   * Runs the round: `end` at the end marker, `silent` after `timeoutMs` without a reply (a DEALER never
   * reports a dead peer, so silence is the only signal; after the first applied reply the wait shortens
   * to REPLAY_STALL_MS), `stopped` when a reply said stop or the round was cancelled.
   */
  async run(hooks: ReplayRoundHooks): Promise<'end' | 'silent' | 'stopped'> {
    if (this.#cancelled) return 'stopped'
    const dealer = new (zeromq().Dealer)({ linger: 0, receiveTimeout: this.timeoutMs, sendTimeout: this.timeoutMs })
    this.#dealer = dealer
    try {
      dealer.connect(this.endpoint)
      const start = Buffer.allocUnsafe(8)
      start.writeBigUInt64BE(this.from)
      try {
        await dealer.send([EMPTY, start])
      } catch (e) {
        if (this.#cancelled) return 'stopped'
        // a send timeout: the receive below times out too, which is the signal that counts
        hooks.error('replay request not sent', e)
      }
      let progress = false
      for (;;) {
        let frames: Buffer[]
        try {
          frames = await dealer.receive()
        } catch (e) {
          if (this.#cancelled) return 'stopped'
          if ((e as { code?: string }).code !== 'EAGAIN') hooks.error('replay receive failed', e)
          return 'silent'
        }
        if (this.#cancelled) return 'stopped'
        const reply = parseReply(frames)
        if (reply === null) {
          hooks.unknown()
          continue
        }
        if (reply === 'end') return 'end'
        const verdict = await hooks.reply(reply.seq, reply.payload)
        if (verdict === 'stop' || this.#cancelled) return 'stopped'
        if (verdict === 'applied' && !progress) {
          // once replies flow, silence means the engine's ROUTER dropped the rest (end marker included)
          // at its high-water mark: retry soon rather than wait the full timeout
          progress = true
          dealer.receiveTimeout = Math.min(this.timeoutMs, REPLAY_STALL_MS)
        }
      }
    } finally {
      dealer.close()
      this.#dealer = null
    }
  }
}

/** A replay reply in either layout: `["", seq, payload]` or `["", topic, seq, payload]`; 'end' for END_SEQ. */
export function parseReply(frames: Buffer[]): { seq: bigint; payload: Buffer } | 'end' | null {
  if (frames[0]?.length !== 0) return null
  let seqFrame: Buffer
  let payload: Buffer
  if (frames.length === 3) [, seqFrame, payload] = frames as [Buffer, Buffer, Buffer]
  else if (frames.length === 4) [, , seqFrame, payload] = frames as [Buffer, Buffer, Buffer, Buffer]
  else return null
  if (seqFrame.length !== 8) return null
  const seq = seqFrame.readBigUInt64BE(0)
  return seq === END_SEQ ? 'end' : { seq, payload }
}
