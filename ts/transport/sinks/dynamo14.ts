// The sink of the Dynamo 1.4+ wire (SPEC 5b, "Transport" and "Discovery"). Per dp rank (= per publisher id)
// it opens the rank's event-plane channel (a direct ZeroMQ socket, or the shared NATS subject), writes the
// rank's EventSource and EventChannel records to the discovery backend, and only then publishes the rank's
// envelopes. A router drops the events of a publisher id it has not discovered, so until the records are
// readable the rank's envelopes are held: they count against the publisher's maxPending (it waits when too
// many are held) and against registerTimeoutMs (a rank that cannot register drops what it held, counted,
// and tries again on its next events after a pause).
//
// Direct ZeroMQ: frames sent before a router subscribed are lost. After registering a rank, the sink holds
// its envelopes until the first subscriber joined its socket, or for at most settleMs (SPEC 5b).
import type { NatsConnection } from '@nats-io/transport-node'
import type { RateLimitedLog } from '../../util/log.js'
import type { DiscoveryBackend } from '../discovery/backend.js'
import { publisherRecords } from '../discovery/index.js'
import { ZmqPubChannel } from '../zmq-pub.js'
import { EventPlaneSink } from './event-plane.js'
import { emptySinkStats, IdleWaiters, type Sink, type SinkStats } from './types.js'

/** The topic of router events on the Dynamo 1.4+ event plane. */
const KV_EVENTS = 'kv-events'
/** Pause before a rank whose registration failed tries again. */
const RETRY_AFTER_MS = 1000

export type Dynamo14Transport =
  | {
      kind: 'zmq'
      /** Interface address the sockets bind (Dynamo: 0.0.0.0). */
      bindHost: string
      /** Rank r binds basePort + r; null: a free port per rank. */
      basePort: number | null
      /** Host written into the EventChannel records. */
      advertiseHost: string
      /** Longest hold, after a rank registered, waiting for its first subscriber (ms; 0: none). */
      settleMs: number
    }
  | {
      kind: 'nats'
      nc: NatsConnection
      /** `namespace.{ns}.component.{c}.endpoint.{e}.kv-events`, segments percent-encoded. */
      subject: string
      reconnectBufferBytes?: number
    }

export interface Dynamo14SinkOptions {
  namespace: string
  component: string
  endpoint: string
  workerId: bigint
  /** The rank's publisher id (the Ingestor's): every envelope of the rank carries it. */
  publisherId: (dpRank: number) => bigint
  discovery: DiscoveryBackend
  transport: Dynamo14Transport
  /** Bound on writing one rank's records (ms). */
  registerTimeoutMs: number
  log: RateLimitedLog
}

/** The discovery side of a Dynamo 1.4 publisher (null in PublisherStats for the 1.0 wire). */
export interface DiscoveryStats {
  /** Ranks whose records are written and whose events flow. */
  ranksRegistered: number
  /** Ranks registering right now. */
  ranksRegistering: number
  /** Registrations that failed or timed out (each logged). */
  registerFailures: number
  /** Envelopes held right now until their rank's records are written (or its first subscriber joined). */
  held: number
  /** Envelopes that ever had to wait for their rank's registration. */
  heldTotal: number
  /** Held envelopes dropped because their rank could not register (also in sink.undelivered, `dropped`). */
  droppedUnregistered: number
}

interface RankState {
  dpRank: number
  publisherId: bigint
  state: 'registering' | 'ready' | 'failed'
  held: Uint8Array[]
  channel: ZmqPubChannel | null
  retryAt: number
  /** The advertised endpoint or subject, for logs and tests. */
  where: string
  opened: Promise<void>
}

function withDeadline<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms)
  })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}

export class Dynamo14Sink implements Sink {
  onProgress: () => void = () => {}
  readonly #o: Dynamo14SinkOptions
  readonly #ranks = new Map<number, RankState>()
  readonly #nats: EventPlaneSink | null
  readonly #stats: SinkStats = emptySinkStats()
  readonly #discoveryStats: DiscoveryStats = {
    ranksRegistered: 0,
    ranksRegistering: 0,
    registerFailures: 0,
    held: 0,
    heldTotal: 0,
    droppedUnregistered: 0,
  }
  readonly #idle = new IdleWaiters()
  #zmqPending = 0
  #closed = false

  constructor(o: Dynamo14SinkOptions) {
    this.#o = o
    if (o.transport.kind === 'nats') {
      this.#nats = new EventPlaneSink(o.transport.nc, o.transport.subject, o.log, {
        reconnectBufferBytes: o.transport.reconnectBufferBytes,
      })
      this.#nats.onProgress = () => this.#progress()
    } else this.#nats = null
  }

  get pending(): number {
    return this.#discoveryStats.held + this.#zmqPending + (this.#nats?.pending ?? 0)
  }

  send(payloads: readonly Uint8Array[], dpRank: number): void {
    if (payloads.length === 0) return
    let rank = this.#ranks.get(dpRank)
    if (rank === undefined || (rank.state === 'failed' && performance.now() >= rank.retryAt))
      rank = this.#open(dpRank, rank?.channel ?? null)
    if (rank.state === 'ready') this.#deliver(rank, payloads)
    else if (rank.state === 'registering') {
      for (const p of payloads) rank.held.push(p)
      this.#discoveryStats.held += payloads.length
      this.#discoveryStats.heldTotal += payloads.length
    } else this.#dropUnregistered(rank, payloads.length)
  }

  /** Starts registering a rank (its channel, then its records); its envelopes are held meanwhile. */
  #open(dpRank: number, channel: ZmqPubChannel | null): RankState {
    const rank: RankState = {
      dpRank,
      publisherId: this.#o.publisherId(dpRank),
      state: 'registering',
      held: [],
      // a retry keeps the socket (and port) of the failed attempt
      channel,
      retryAt: 0,
      where: '',
      opened: Promise.resolve(),
    }
    this.#ranks.set(dpRank, rank)
    this.#discoveryStats.ranksRegistering++
    rank.opened = this.#register(rank)
    return rank
  }

  async #register(rank: RankState): Promise<void> {
    const o = this.#o
    const t = o.transport
    try {
      await withDeadline(
        (async () => {
          let zmqEndpoint: string | null = null
          if (t.kind === 'zmq') {
            // A previous attempt's socket is reused: its port is the one advertised if the record was written.
            rank.channel ??= await ZmqPubChannel.bind({
              topic: KV_EVENTS,
              publisherId: rank.publisherId,
              bindHost: t.bindHost,
              port: t.basePort === null ? 0 : t.basePort + rank.dpRank,
              advertiseHost: t.advertiseHost,
            })
            this.#watchChannel(rank.channel)
            zmqEndpoint = rank.channel.advertisedEndpoint
            rank.where = zmqEndpoint
          } else rank.where = t.subject
          const records = publisherRecords({
            namespace: o.namespace,
            component: o.component,
            endpoint: o.endpoint,
            workerId: o.workerId,
            dpRank: rank.dpRank,
            publisherId: rank.publisherId,
            zmqEndpoint,
            natsEventPlane: t.kind === 'nats',
          })
          await o.discovery.register(records)
        })(),
        o.registerTimeoutMs,
        `registering dp rank ${rank.dpRank} in discovery (registerTimeoutMs)`,
      )
      if (t.kind === 'zmq' && t.settleMs > 0 && rank.channel !== null) {
        let timer: NodeJS.Timeout | undefined
        await Promise.race([rank.channel.subscribed(), new Promise<void>((r) => (timer = setTimeout(r, t.settleMs)))])
        clearTimeout(timer)
      }
    } catch (err) {
      this.#discoveryStats.ranksRegistering--
      this.#discoveryStats.registerFailures++
      rank.state = 'failed'
      rank.retryAt = performance.now() + RETRY_AFTER_MS
      const held = rank.held
      rank.held = []
      this.#discoveryStats.held -= held.length
      this.#dropUnregistered(rank, held.length)
      o.log.log(
        'error',
        `register-${rank.dpRank}`,
        { dpRank: rank.dpRank, publisherId: rank.publisherId.toString(), dropped: held.length, err: (err as Error).message },
        'a dp rank could not register its discovery records: its events are dropped (a Dynamo router would ignore them) until a later attempt succeeds',
      )
      this.#progress()
      return
    }
    this.#discoveryStats.ranksRegistering--
    if (this.#closed) return
    this.#discoveryStats.ranksRegistered++
    rank.state = 'ready'
    const held = rank.held
    rank.held = []
    this.#discoveryStats.held -= held.length
    o.log.log(
      'info',
      `registered-${rank.dpRank}`,
      { dpRank: rank.dpRank, publisherId: rank.publisherId.toString(), eventChannel: rank.where, held: held.length },
      'dp rank registered in discovery: publishing its events',
    )
    if (held.length > 0) this.#deliver(rank, held)
    this.#progress()
  }

  #watchChannel(ch: ZmqPubChannel): void {
    ch.onProgress = (n) => {
      this.#zmqPending -= n
      this.#progress()
    }
    ch.onError = (err) => {
      this.#o.log.log('error', 'zmq-send', { publisherId: ch.publisherId.toString(), err: err.message }, 'ZeroMQ event-plane send failed')
    }
  }

  #deliver(rank: RankState, payloads: readonly Uint8Array[]): void {
    if (rank.channel !== null) {
      // envelopes the channel refuses (closed, or another publisher id) are counted in its `failed`
      const rejected = rank.channel.send(asBuffers(payloads))
      this.#zmqPending += payloads.length - rejected
      if (rejected > 0) this.#progress()
    } else this.#nats?.send(payloads)
  }

  #dropUnregistered(_rank: RankState, n: number): void {
    if (n === 0) return
    this.#discoveryStats.droppedUnregistered += n
    this.#undelivered('dropped', n)
  }

  #undelivered(reason: keyof SinkStats['undeliveredByReason'], n: number): void {
    this.#stats.undelivered += n
    this.#stats.undeliveredByReason[reason] += n
  }

  #progress(): void {
    this.#idle.notify(this.pending)
    this.onProgress()
  }

  /** The advertised ZeroMQ endpoint (or NATS subject) of each registered rank. */
  channels(): { dpRank: number; publisherId: bigint; eventChannel: string; registered: boolean }[] {
    return [...this.#ranks.values()].map((r) => ({
      dpRank: r.dpRank,
      publisherId: r.publisherId,
      eventChannel: r.where,
      registered: r.state === 'ready',
    }))
  }

  discoveryStats(): DiscoveryStats {
    return { ...this.#discoveryStats }
  }

  async flush(timeoutMs: number): Promise<boolean> {
    if (this.#nats !== null && !(await this.#nats.flush(timeoutMs))) return false
    if (this.pending === 0) return true
    return await this.#idle.wait(timeoutMs)
  }

  /**
   * Flushes within timeoutMs (ranks still registering are waited for within the same bound), closes the
   * sockets, then removes every record this publisher wrote (the backend is closed here).
   */
  async close(timeoutMs: number): Promise<void> {
    if (this.#closed) return
    const deadline = performance.now() + timeoutMs
    await this.flush(timeoutMs)
    this.#closed = true
    for (const rank of this.#ranks.values()) {
      if (rank.held.length > 0) {
        this.#discoveryStats.held -= rank.held.length
        this.#dropUnregistered(rank, rank.held.length)
        rank.held = []
      }
    }
    const left = () => Math.max(0, deadline - performance.now())
    await Promise.all(
      [...this.#ranks.values()].map(async (r) => {
        if (r.channel !== null) await r.channel.close(left())
      }),
    )
    this.#zmqPending = 0
    if (this.#nats !== null) await this.#nats.close(left())
    // Registrations still in flight finish (or fail) before the records are removed.
    let timer: NodeJS.Timeout | undefined
    await Promise.race([
      Promise.all([...this.#ranks.values()].map((r) => r.opened)),
      new Promise((r) => {
        timer = setTimeout(r, left())
      }),
    ])
    clearTimeout(timer)
    await this.#o.discovery.close()
    this.#progress()
  }

  stats(): SinkStats {
    let sent = 0
    let failed = 0
    for (const r of this.#ranks.values()) {
      const c = r.channel?.stats()
      sent += c?.sent ?? 0
      failed += c?.failed ?? 0
    }
    const nats = this.#nats?.stats()
    const s: SinkStats = {
      ...this.#stats,
      undeliveredByReason: { ...this.#stats.undeliveredByReason },
      queueDepth: this.pending,
    }
    // ZeroMQ: sent = handed to the socket (a PUB socket never confirms); failed = refused or never sent
    s.published = sent + (nats?.published ?? 0)
    s.publishErrors += failed
    s.undelivered += failed
    s.undeliveredByReason.refused += failed
    if (nats !== undefined) {
      s.publishErrors += nats.publishErrors
      s.undelivered += nats.undelivered
      for (const k of ['unconfirmed', 'dropped', 'refused'] as const) s.undeliveredByReason[k] += nats.undeliveredByReason[k]
      s.queueDepth = this.#discoveryStats.held + this.#zmqPending + nats.queueDepth
    }
    return s
  }
}

/** The ZeroMQ channel reads envelopes with Buffer methods: Buffers over the same bytes (no copy). */
function asBuffers(payloads: readonly Uint8Array[]): Buffer[] {
  const out = new Array<Buffer>(payloads.length)
  for (let i = 0; i < payloads.length; i++) {
    const p = payloads[i]!
    out[i] = Buffer.isBuffer(p) ? p : Buffer.from(p.buffer, p.byteOffset, p.byteLength)
  }
  return out
}
