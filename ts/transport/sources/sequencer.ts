// The ZeroMQ source's sequencing decisions (SPEC 2.1), with no sockets and no timers: what to apply, hold,
// replay, count as lost or drop, and when an engine restarted. It is driven by events (a live message, a
// replayed batch, the end or silence of a replay round, a disconnect or reconnect of an endpoint) and
// answers each with the actions the I/O side performs in order (ingest a payload, reset a rank, start or
// cancel a replay round, count and log). Its state is updated as it answers, so the I/O side must perform
// the actions before it feeds the next event (the source does both inside one lock).
//
// Streams are per (endpoint, dp rank of the batch); endpoints are numbered by their position in the options.

/** The batch header the I/O side reads before asking (`peekBatch`); null for a malformed payload. */
export interface BatchHeader {
  dpRank: number
  /** vLLM's publisher id (4th batch element, 16 bytes): a new one means a new engine incarnation. */
  publisherId: Uint8Array | null
}

export type ReplayKind = 'initial' | 'restart' | 'gap'
export type RestartSignal = 'seq' | 'publisher_id' | 'topic_epoch' | 'reconnect'

/** What the I/O side does, in order. `endpoint` is the endpoint's index, `dpRank` the stream's rank. */
export type SequencerAction =
  /** Feed the payload to the consumer (`replayed`: it came from a replay). */
  | { type: 'ingest'; endpoint: number; dpRank: number; seq: bigint; payload: Uint8Array; replayed: boolean }
  /** Reset the rank in the consumer (SPEC 3's reset rule). */
  | { type: 'reset'; endpoint: number; dpRank: number }
  /**
   * Start a replay round: request `from` on the endpoint's replay socket and report its replies with
   * `replayed(replay, ...)` and its end or silence with `replayEnded(replay, ...)`. The same `replay` id
   * comes again for each further round of one replay.
   */
  | { type: 'replay'; endpoint: number; dpRank: number; replay: number; kind: ReplayKind; from: bigint }
  /** Abandon the replay (close its socket); its later replies and end are ignored. */
  | { type: 'cancel_replay'; endpoint: number; dpRank: number; replay: number }
  /** `count` seqs will never be applied: count and log them. */
  | { type: 'lost'; endpoint: number; dpRank: number; count: bigint; why: string }
  /**
   * A message not applied: `malformed` payload (dpRank null when it could not be placed in a stream),
   * `rank` beyond the stream limit, `replay` reply of another dp rank.
   */
  | { type: 'drop'; reason: 'malformed' | 'rank' | 'replay'; endpoint: number; dpRank: number | null; seq: bigint }
  /** A live batch a replay already applied (or a held one already covered): skipped. */
  | { type: 'duplicate'; endpoint: number; dpRank: number; seq: bigint }
  /** Live seqs `from..to` did not arrive; `replaying`: a replay follows, else they are lost. */
  | { type: 'gap'; endpoint: number; dpRank: number; from: bigint; to: bigint; replaying: boolean }
  /** The engine behind the stream restarted (a reset follows). */
  | { type: 'restart'; endpoint: number; dpRank: number; why: RestartSignal }
  /** A live message not held during a replay (bounded): a later round fetches it again, or it is lost. */
  | { type: 'overflow'; endpoint: number; dpRank: number; seq: bigint }
  /** A replay round got no reply at all: what it was to bring is lost. */
  | { type: 'replay_timeout'; endpoint: number; dpRank: number; replay: number; from: bigint }
  /** A replay round went silent after some replies: another round follows from what is missing. */
  | { type: 'replay_stall'; endpoint: number; dpRank: number; replay: number; from: bigint }

/**
 * How a replayed batch was taken: `applied` (the round makes progress), `skipped` (already applied, or
 * another rank's), `hole` (a seq is missing in the middle: this round is over and, if needed, the next
 * one is among the actions), `cancelled` (the replay is no longer current: stop reading it).
 */
export type ReplayVerdict = 'applied' | 'skipped' | 'hole' | 'cancelled'

export interface SequencerOptions {
  /** Per endpoint, in order: whether it has a replay endpoint. */
  endpoints: readonly { replay: boolean }[]
  /** Bound SUB sockets: several engines may connect to one, so a reconnect says nothing about a restart. */
  bind: boolean
  onLoss: 'keep' | 'reset'
  /** Live messages held per stream while its replay runs. */
  maxHeld: number
  /** Payload bytes held per stream while its replay runs. */
  maxHeldBytes: number
  /** Streams tracked, so input cannot grow the state without bound (SPEC 8). Default MAX_STREAMS. */
  maxStreams?: number
}

/** One stream as the sequencer tracks it (inspection). */
export interface SequencerStream {
  endpoint: number
  dpRank: number
  /** Last seq received live (null: none yet, or reset). */
  lastLive: bigint | null
  /** Last seq applied (live or replayed); -1n after a restart before anything was applied. */
  lastApplied: bigint | null
  replaying: boolean
  held: number
}

/** Default stream limit: a dp rank is a u32 the engine picks. */
export const MAX_STREAMS = 4096

const EPOCH_MARK = Buffer.from('\x00sgl-kv-epoch=', 'latin1')

interface Endpoint {
  replay: boolean
  /** Stream of the last well-formed batch seen here: a malformed payload belongs to it. */
  last: Stream | null
  streams: Set<Stream>
}

interface Held {
  seq: bigint
  payload: Uint8Array | null // null: malformed payload (advances the cursor, applies nothing)
}

interface Stream {
  endpoint: number
  ep: Endpoint
  dpRank: number
  lastLive: bigint | null
  /** null: fresh (the first seq seen is taken as the start); otherwise the last applied seq (-1n: none). */
  lastApplied: bigint | null
  publisherId: Uint8Array | null
  epoch: string | null
  replay: Replay | null
  held: Held[]
  heldBytes: number
  /** Set by a restart detected between a disconnect and the reconnect, which then need not reset again. */
  restartedSinceDisconnect: boolean
}

interface Replay {
  id: number
  stream: Stream
  kind: ReplayKind
  /** The current round: where it started, whether a reply came yet, how many it applied. */
  from: bigint
  firstReply: boolean
  progress: number
}

export class Sequencer {
  readonly #opts: Required<SequencerOptions>
  readonly #endpoints: Endpoint[]
  readonly #streams = new Map<string, Stream>()
  readonly #replays = new Map<number, Replay>()
  #nextReplay = 1
  #out: SequencerAction[] = []

  constructor(opts: SequencerOptions) {
    this.#opts = { maxStreams: MAX_STREAMS, ...opts }
    this.#endpoints = opts.endpoints.map((e) => ({ replay: e.replay, last: null, streams: new Set() }))
  }

  /** A live message of endpoint `endpoint` (already checked: 3 frames, an 8-byte seq). */
  live(endpoint: number, topic: Uint8Array, seq: bigint, header: BatchHeader | null, payload: Uint8Array): SequencerAction[] {
    this.#onLive(endpoint, topic, seq, header, payload)
    return this.#flush()
  }

  /** One reply of replay `replay`'s current round, in the order received. */
  replayed(
    replay: number,
    seq: bigint,
    header: BatchHeader | null,
    payload: Uint8Array,
  ): { verdict: ReplayVerdict; actions: SequencerAction[] } {
    const rep = this.#replays.get(replay)
    if (rep === undefined) return { verdict: 'cancelled', actions: [] }
    const verdict = this.#onReplayed(rep, seq, header, payload)
    rep.firstReply = false
    if (verdict === 'applied') rep.progress++
    // the engine has this seq: the next round goes on from what is still missing before it
    else if (verdict === 'hole') this.#endRound(rep, 'hole', seq)
    return { verdict, actions: this.#flush() }
  }

  /**
   * Replay `replay`'s current round is over: `end` (its end marker came) or `silent` (no reply for the
   * I/O side's timeout: without any reply before, a timeout; after some, a stall).
   */
  replayEnded(replay: number, outcome: 'end' | 'silent'): SequencerAction[] {
    const rep = this.#replays.get(replay)
    if (rep !== undefined) this.#endRound(rep, outcome, null)
    return this.#flush()
  }

  /** The endpoint's connection dropped (connect mode). */
  disconnected(endpoint: number): SequencerAction[] {
    if (this.#opts.bind) return []
    for (const t of this.#endpoints[endpoint]!.streams) t.restartedSinceDisconnect = false
    return []
  }

  /**
   * The endpoint connected again after a disconnect (connect mode): what its engines did meanwhile is
   * unknown, so each of its streams restarts, unless a restart was already seen since the disconnect.
   * Bound sockets ignore it: one peer's reconnect says nothing about the other engines on that endpoint.
   */
  reconnected(endpoint: number): SequencerAction[] {
    if (this.#opts.bind) return []
    for (const t of this.#endpoints[endpoint]!.streams) {
      if (t.restartedSinceDisconnect) continue
      this.#restart(t, 'reconnect', null)
    }
    return this.#flush()
  }

  /** Every tracked stream. */
  streams(): SequencerStream[] {
    return [...this.#streams.values()].map((t) => ({
      endpoint: t.endpoint,
      dpRank: t.dpRank,
      lastLive: t.lastLive,
      lastApplied: t.lastApplied,
      replaying: t.replay !== null,
      held: t.held.length,
    }))
  }

  /** Live messages held, over all streams. */
  held(): number {
    let n = 0
    for (const t of this.#streams.values()) n += t.held.length
    return n
  }

  /** Replays in progress. */
  replaysActive(): number {
    return this.#replays.size
  }

  // ---------------------------------------------------------------------------------------------------
  // live messages

  #onLive(e: number, topic: Uint8Array, seq: bigint, header: BatchHeader | null, payload: Uint8Array): void {
    const ep = this.#endpoints[e]!
    let t: Stream
    if (header === null) {
      // A malformed payload still takes its seq: it advances the stream of the endpoint's last rank when
      // it is that stream's next seq (so it is never replayed in a loop); otherwise there is no telling
      // which stream it belongs to, and touching one could fake a restart.
      const last = ep.last
      if (last === null || last.lastLive === null || seq !== last.lastLive + 1n) {
        this.#emit({ type: 'drop', reason: 'malformed', endpoint: e, dpRank: null, seq })
        return
      }
      t = last
    } else {
      const found = this.#stream(e, header.dpRank)
      if (found === null) {
        this.#emit({ type: 'drop', reason: 'rank', endpoint: e, dpRank: header.dpRank, seq })
        return
      }
      t = found
      ep.last = t
    }
    const msg: Held = { seq, payload: header === null ? null : payload }
    const epoch = topicEpoch(topic)
    const publisherId = header?.publisherId ?? null

    if (t.lastLive !== null) {
      const why: RestartSignal | null =
        seq <= t.lastLive
          ? 'seq'
          : publisherId !== null && t.publisherId !== null && !bytesEqual(publisherId, t.publisherId)
            ? 'publisher_id'
            : epoch !== null && t.epoch !== null && epoch !== t.epoch
              ? 'topic_epoch'
              : null
      if (why !== null) {
        if (publisherId !== null) t.publisherId = publisherId
        if (epoch !== null) t.epoch = epoch
        this.#restart(t, why, msg)
        return
      }
    }
    if (publisherId !== null) t.publisherId = publisherId
    if (epoch !== null) t.epoch = epoch

    const first = t.lastLive === null && t.lastApplied === null
    t.lastLive = seq
    if (t.replay !== null) {
      this.#hold(t, msg)
      return
    }
    if (first) {
      // first contact: with a replay endpoint, fetch what the engine still buffers, from seq 0
      if (ep.replay) {
        this.#hold(t, msg)
        this.#startReplay(t, 'initial', 0n)
      } else this.#apply(t, msg)
      return
    }
    const last = t.lastApplied ?? seq - 1n
    if (seq <= last) {
      this.#emit({ type: 'duplicate', endpoint: t.endpoint, dpRank: t.dpRank, seq })
      return
    }
    if (seq === last + 1n) {
      this.#apply(t, msg)
      return
    }
    this.#emit({ type: 'gap', endpoint: t.endpoint, dpRank: t.dpRank, from: last + 1n, to: seq - 1n, replaying: ep.replay })
    if (ep.replay) {
      this.#hold(t, msg)
      this.#startReplay(t, 'gap', last + 1n)
      return
    }
    this.#lose(t, seq - last - 1n, 'gap without a replay endpoint')
    this.#apply(t, msg)
  }

  /** The stream of (endpoint, dp rank); null past the stream limit. */
  #stream(e: number, dpRank: number): Stream | null {
    const key = `${e}:${dpRank}`
    let t = this.#streams.get(key)
    if (!t) {
      if (this.#streams.size >= this.#opts.maxStreams) return null
      const ep = this.#endpoints[e]!
      t = {
        endpoint: e,
        ep,
        dpRank,
        lastLive: null,
        lastApplied: null,
        publisherId: null,
        epoch: null,
        replay: null,
        held: [],
        heldBytes: 0,
        restartedSinceDisconnect: false,
      }
      this.#streams.set(key, t)
      ep.streams.add(t)
    }
    return t
  }

  /** The engine behind a stream restarted: reset the rank, then read the new incarnation from seq 0. */
  #restart(t: Stream, why: RestartSignal, msg: Held | null): void {
    this.#emit({ type: 'restart', endpoint: t.endpoint, dpRank: t.dpRank, why })
    t.restartedSinceDisconnect = true
    this.#cancelReplay(t)
    // what is held belongs to the old incarnation, which the reset drops anyway
    t.held = []
    t.heldBytes = 0
    this.#reset(t)
    t.lastApplied = -1n
    t.lastLive = msg?.seq ?? null
    if (t.ep.replay) {
      if (msg) this.#hold(t, msg)
      this.#startReplay(t, 'restart', 0n)
      return
    }
    if (msg === null) {
      t.lastApplied = null // no replay: whatever comes next is the start
      return
    }
    // without replay the stream continues from this message; earlier seqs of the new incarnation were missed
    if (msg.seq > 0n) this.#lost(t, msg.seq, 'start of a restarted engine missed')
    this.#apply(t, msg)
  }

  #hold(t: Stream, msg: Held): void {
    const size = msg.payload?.length ?? 0
    if (t.held.length >= this.#opts.maxHeld || t.heldBytes + size > this.#opts.maxHeldBytes) {
      // not held: the replay rounds after this one fetch it again, or count it lost
      this.#emit({ type: 'overflow', endpoint: t.endpoint, dpRank: t.dpRank, seq: msg.seq })
      return
    }
    t.held.push(msg)
    t.heldBytes += size
  }

  /** Applies one batch (the stream's next seq). */
  #apply(t: Stream, msg: Held, replayed = false): void {
    t.lastApplied = msg.seq
    if (msg.payload === null) this.#emit({ type: 'drop', reason: 'malformed', endpoint: t.endpoint, dpRank: t.dpRank, seq: msg.seq })
    else this.#emit({ type: 'ingest', endpoint: t.endpoint, dpRank: t.dpRank, seq: msg.seq, payload: msg.payload, replayed })
  }

  #reset(t: Stream): void {
    this.#emit({ type: 'reset', endpoint: t.endpoint, dpRank: t.dpRank })
  }

  /** `n` seqs that will never be applied. */
  #lost(t: Stream, n: bigint, why: string): void {
    this.#emit({ type: 'lost', endpoint: t.endpoint, dpRank: t.dpRank, count: n, why })
  }

  /** A loss: counted, and with onLoss 'reset' the rank is reset. */
  #lose(t: Stream, n: bigint, why: string): void {
    if (n <= 0n) return
    this.#lost(t, n, why)
    if (this.#opts.onLoss === 'reset') this.#reset(t)
  }

  // ---------------------------------------------------------------------------------------------------
  // replay

  #startReplay(t: Stream, kind: ReplayKind, from: bigint): void {
    const rep: Replay = { id: this.#nextReplay++, stream: t, kind, from, firstReply: true, progress: 0 }
    t.replay = rep
    this.#replays.set(rep.id, rep)
    this.#emit({ type: 'replay', endpoint: t.endpoint, dpRank: t.dpRank, replay: rep.id, kind, from })
  }

  #cancelReplay(t: Stream): void {
    const rep = t.replay
    if (!rep) return
    this.#emit({ type: 'cancel_replay', endpoint: t.endpoint, dpRank: t.dpRank, replay: rep.id })
    this.#replays.delete(rep.id)
    t.replay = null
  }

  /**
   * One replayed batch, merged in seq order with the held live messages. A round that starts later than
   * asked (the engine's buffer rolled over) or skips seqs before its first progress loses them; a hole
   * after some progress (ZMQ dropped replies at a high-water mark) ends the round for another one.
   */
  #onReplayed(rep: Replay, seq: bigint, header: BatchHeader | null, payload: Uint8Array): ReplayVerdict {
    const t = rep.stream
    if (header !== null && header.dpRank !== t.dpRank) {
      this.#emit({ type: 'drop', reason: 'replay', endpoint: t.endpoint, dpRank: header.dpRank, seq })
      return 'skipped'
    }
    this.#applyHeld(t, seq, rep.kind === 'initial', false)
    const msg: Held = { seq, payload: header === null ? null : payload }
    if (t.lastApplied === null) {
      // first contact: the replay starts where the engine's buffer does
      this.#apply(t, msg, true)
      return 'applied'
    }
    if (seq > t.lastApplied + 1n) {
      if (!rep.firstReply && rep.progress > 0) return 'hole'
      // the replay started late (the engine's buffer rolled over) or skipped seqs: what neither it nor
      // the held live messages have is lost
      this.#applyHeld(t, seq, false, true)
      if (seq > t.lastApplied + 1n)
        this.#lose(t, seq - t.lastApplied - 1n, rep.firstReply ? 'replay started after the requested seq' : 'replay skipped seqs')
    }
    if (seq <= t.lastApplied) return 'skipped' // already applied (a live copy, or an earlier round)
    this.#apply(t, msg, true)
    return 'applied'
  }

  /**
   * Applies the held live messages before `seq` that are next in line, so a reply never overtakes them
   * (on first contact the earliest one is the start). With `losing`, also those after a hole, which is lost.
   */
  #applyHeld(t: Stream, seq: bigint, firstContact: boolean, losing: boolean): void {
    while (t.held.length > 0 && t.held[0]!.seq < seq) {
      const h = t.held[0]!
      if (t.lastApplied === null) {
        if (!firstContact) return
      } else if (h.seq <= t.lastApplied) {
        this.#shiftHeld(t)
        this.#emit({ type: 'duplicate', endpoint: t.endpoint, dpRank: t.dpRank, seq: h.seq })
        continue
      } else if (h.seq !== t.lastApplied + 1n) {
        if (!losing) return
        this.#lose(t, h.seq - t.lastApplied - 1n, 'replay started after the requested seq')
      }
      this.#shiftHeld(t)
      this.#apply(t, h)
    }
  }

  /**
   * The end of a round: apply what is held, then either start another round from what is still missing
   * (only after a round that made progress: the engine published it after answering) or lose it.
   */
  #endRound(rep: Replay, outcome: 'end' | 'silent' | 'hole', holeAt: bigint | null): void {
    const t = rep.stream
    if (outcome === 'silent') {
      const type = rep.progress === 0 ? 'replay_timeout' : 'replay_stall'
      this.#emit({ type, endpoint: t.endpoint, dpRank: t.dpRank, replay: rep.id, from: rep.from })
    }
    let again = this.#drainHeld(t, rep.progress > 0)
    if (again === null && holeAt !== null && t.lastApplied !== null && t.lastApplied < holeAt) again = t.lastApplied + 1n
    if (again === null) {
      t.replay = null
      this.#replays.delete(rep.id)
      return
    }
    rep.from = again
    rep.firstReply = true
    rep.progress = 0
    this.#emit({ type: 'replay', endpoint: t.endpoint, dpRank: t.dpRank, replay: rep.id, kind: rep.kind, from: again })
  }

  /**
   * After a round: apply the held messages in seq order. Returns the seq to start another round from when
   * something is missing and `retry`, else null, losing what is missing.
   */
  #drainHeld(t: Stream, retry: boolean): bigint | null {
    while (t.held.length > 0) {
      const h = t.held[0]!
      if (t.lastApplied === null) {
        // first contact and the replay gave nothing: the first live message is the start
        this.#shiftHeld(t)
        this.#apply(t, h)
        continue
      }
      if (h.seq <= t.lastApplied) {
        this.#shiftHeld(t)
        this.#emit({ type: 'duplicate', endpoint: t.endpoint, dpRank: t.dpRank, seq: h.seq })
        continue
      }
      if (h.seq !== t.lastApplied + 1n) {
        if (retry) return t.lastApplied + 1n
        this.#lose(t, h.seq - t.lastApplied - 1n, 'replay did not fill the gap')
      }
      this.#shiftHeld(t)
      this.#apply(t, h)
    }
    // live messages dropped by an overflow after the last one held
    if (t.lastLive !== null && t.lastApplied !== null && t.lastLive > t.lastApplied) {
      if (retry) return t.lastApplied + 1n
      this.#lose(t, t.lastLive - t.lastApplied, 'replay did not fill the gap')
      t.lastApplied = t.lastLive
    }
    return null
  }

  #shiftHeld(t: Stream): void {
    const h = t.held.shift()!
    t.heldBytes -= h.payload?.length ?? 0
  }

  #emit(a: SequencerAction): void {
    this.#out.push(a)
  }

  #flush(): SequencerAction[] {
    const out = this.#out
    this.#out = []
    return out
  }
}

/** SGLang's epoch suffix of a topic (`"\x00sgl-kv-epoch=<epoch>"`, up to the next NUL), or null. */
export function topicEpoch(topic: Uint8Array): string | null {
  const b = Buffer.from(topic.buffer, topic.byteOffset, topic.byteLength)
  const at = b.indexOf(EPOCH_MARK)
  if (at < 0) return null
  const from = at + EPOCH_MARK.length
  const end = b.indexOf(0, from)
  return b.toString('latin1', from, end < 0 ? b.length : end)
}

function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i])
}
