// One direct ZeroMQ event-plane channel of the Dynamo 1.4+ wire (SPEC 5b, "Transport"), as Dynamo 1.6.1's
// ZmqPubTransport publishes: a socket bound on a TCP port, advertised in an EventChannel record, sending
// every envelope as 4 frames [topic, publisher_id u64 BE, sequence u64 BE, 0x01 + u32 BE length + envelope].
// A router connects only to the endpoints it discovered and checks that both ids in the frames equal the
// envelope's and the channel's publisher id; so each publisher id (each dp rank) has its own socket.
//
// The socket is an XPUB (a PUB that also reports subscriptions), so the channel can tell when the first
// subscriber has joined: frames sent before a subscriber connected are lost (ZeroMQ's slow joiner).
import { networkInterfaces } from 'node:os'
import type { XPublisher } from 'zeromq'
import { loadZeromq } from './zeromq.js'

/** Frame 3's version byte (Dynamo's FRAME_VERSION). */
export const ZMQ_FRAME_VERSION = 1
/** Frame 3's header: the version byte and the u32 BE length of the envelope. */
export const ZMQ_FRAME_HEADER_SIZE = 5
/** Dynamo's send high-water mark for event-plane PUB sockets (messages). */
export const ZMQ_EVENT_PLANE_SNDHWM = 100_000
/** How long a closed socket may still transmit what it holds. */
const CLOSE_LINGER_MS = 500

export class ZmqChannelError extends Error {
  override name = 'ZmqChannelError'
}

/** The publisher id and sequence at the head of an envelope written by the core (SPEC 5b). */
export interface EnvelopeIds {
  publisherId: bigint
  sequence: bigint
}

const PUBLISHER_ID_KEY = Buffer.from('\xacpublisher_id', 'latin1')
const SEQUENCE_KEY = Buffer.from('\xa8sequence', 'latin1')

/** Reads a msgpack unsigned integer at `at`; returns [value, next offset] or null. */
function readUint(b: Buffer, at: number): [bigint, number] | null {
  if (at >= b.length) return null
  const t = b[at] as number
  if (t <= 0x7f) return [BigInt(t), at + 1]
  if (t === 0xcc && at + 2 <= b.length) return [BigInt(b[at + 1] as number), at + 2]
  if (t === 0xcd && at + 3 <= b.length) return [BigInt(b.readUInt16BE(at + 1)), at + 3]
  if (t === 0xce && at + 5 <= b.length) return [BigInt(b.readUInt32BE(at + 1)), at + 5]
  if (t === 0xcf && at + 9 <= b.length) return [b.readBigUInt64BE(at + 1), at + 9]
  return null
}

/**
 * The ids frames 1 and 2 repeat, read from the envelope itself (as Dynamo's ZmqPubTransport decodes
 * them): a map of 5 whose first keys are `publisher_id` and `sequence`. Null for anything else.
 */
export function envelopeIds(envelope: Buffer): EnvelopeIds | null {
  if (envelope.length < 1 + PUBLISHER_ID_KEY.length || envelope[0] !== 0x85) return null
  if (!envelope.subarray(1, 1 + PUBLISHER_ID_KEY.length).equals(PUBLISHER_ID_KEY)) return null
  const p = readUint(envelope, 1 + PUBLISHER_ID_KEY.length)
  if (p === null) return null
  const at = p[1]
  if (!envelope.subarray(at, at + SEQUENCE_KEY.length).equals(SEQUENCE_KEY)) return null
  const s = readUint(envelope, at + SEQUENCE_KEY.length)
  if (s === null) return null
  return { publisherId: p[0], sequence: s[0] }
}

/** The 4 frames of one envelope on the direct ZeroMQ event plane. */
export function zmqFrames(topic: string, ids: EnvelopeIds, envelope: Buffer): [Buffer, Buffer, Buffer, Buffer] {
  const pid = Buffer.allocUnsafe(8)
  pid.writeBigUInt64BE(ids.publisherId)
  const seq = Buffer.allocUnsafe(8)
  seq.writeBigUInt64BE(ids.sequence)
  const header = Buffer.allocUnsafe(ZMQ_FRAME_HEADER_SIZE)
  header.writeUInt8(ZMQ_FRAME_VERSION, 0)
  header.writeUInt32BE(envelope.length, 1)
  return [Buffer.from(topic, 'utf8'), pid, seq, Buffer.concat([header, envelope])]
}

/**
 * The address a direct ZeroMQ channel advertises when DYN_EVENT_PLANE_HOST is not set: the first
 * non-internal IPv4 address of this host, else the first non-internal IPv6 one, else 127.0.0.1.
 */
export function detectAdvertiseHost(): string {
  const ifaces = networkInterfaces()
  let v6: string | null = null
  for (const addrs of Object.values(ifaces)) {
    for (const a of addrs ?? []) {
      if (a.internal) continue
      if (a.family === 'IPv4') return a.address
      if (v6 === null && !a.address.startsWith('fe80:')) v6 = a.address
    }
  }
  return v6 ?? '127.0.0.1'
}

/** `tcp://host:port`, IPv6 literals in brackets. */
export function tcpEndpoint(host: string, port: number): string {
  return host.includes(':') ? `tcp://[${host}]:${port}` : `tcp://${host}:${port}`
}

export interface ZmqPubChannelOptions {
  /** Frame 0 (`kv-events` or `kv_metrics`). */
  topic: string
  /** The channel's publisher id: every envelope sent must carry it. */
  publisherId: bigint
  /** Interface address to bind (default `0.0.0.0`, as Dynamo). */
  bindHost: string
  /** TCP port; 0 picks a free one. */
  port: number
  /** Host or IP written into the EventChannel record. */
  advertiseHost: string
}

export interface ZmqPubChannelStats {
  /** Envelopes handed to the socket (ZeroMQ PUB never confirms delivery; above the HWM it drops). */
  sent: number
  /** Envelopes not sent: the socket failed, or the envelope's ids did not match the channel. */
  failed: number
  /**
   * Subscriptions the socket reported: an XPUB reports a topic when its first subscriber subscribes, and
   * again after every subscriber had left (a router that reconnects alone).
   */
  subscriptions: number
}

/** A bound XPUB socket for one publisher id, sending in order through one writer loop. */
export class ZmqPubChannel {
  readonly topic: string
  readonly publisherId: bigint
  /** What a router connects to, e.g. `tcp://10.0.0.5:41234`. */
  readonly advertisedEndpoint: string
  /** What the socket is bound to, e.g. `tcp://0.0.0.0:41234`. */
  readonly boundEndpoint: string
  readonly #sock: XPublisher
  readonly #stats: ZmqPubChannelStats = { sent: 0, failed: 0, subscriptions: 0 }
  #queue: Buffer[][] = []
  #writing: Promise<void> | null = null
  #closed = false
  #subscribed: Promise<void>
  #onSubscribed!: () => void
  /** Called after each envelope left the queue (sent or failed). */
  onProgress: (n: number) => void = () => {}
  /** Called when a send fails (rate-limited by the caller). */
  onError: (err: Error) => void = () => {}

  private constructor(o: ZmqPubChannelOptions, sock: XPublisher, port: number) {
    this.topic = o.topic
    this.publisherId = o.publisherId
    this.#sock = sock
    this.boundEndpoint = tcpEndpoint(o.bindHost, port)
    this.advertisedEndpoint = tcpEndpoint(o.advertiseHost, port)
    this.#subscribed = new Promise((resolve) => {
      this.#onSubscribed = resolve
    })
    void this.#watchSubscriptions()
  }

  /** Binds the socket; a port in use or an address not on this host fails with a ZmqChannelError. */
  static async bind(o: ZmqPubChannelOptions): Promise<ZmqPubChannel> {
    const zmq = await loadZeromq()
    const sock = new zmq.XPublisher({ linger: CLOSE_LINGER_MS, sendHighWaterMark: ZMQ_EVENT_PLANE_SNDHWM })
    const endpoint = tcpEndpoint(o.bindHost, o.port)
    try {
      await sock.bind(endpoint)
    } catch (err) {
      sock.close()
      throw new ZmqChannelError(`binding the ZeroMQ event-plane socket on ${endpoint} failed: ${(err as Error).message}`)
    }
    const last = sock.lastEndpoint ?? endpoint
    const port = Number(/:(\d+)$/.exec(last)?.[1] ?? o.port)
    return new ZmqPubChannel(o, sock, port)
  }

  /** Resolves once a subscriber has subscribed to this channel's topic (never rejects). */
  subscribed(): Promise<void> {
    return this.#subscribed
  }

  async #watchSubscriptions(): Promise<void> {
    const topic = Buffer.from(this.topic, 'utf8')
    try {
      for (;;) {
        const [msg] = await this.#sock.receive()
        // 0x01 + prefix: subscribe; 0x00 + prefix: unsubscribe. A prefix of our topic (the empty one too) matches.
        if (msg === undefined || msg[0] !== 1) continue
        const prefix = msg.subarray(1)
        if (prefix.length <= topic.length && topic.subarray(0, prefix.length).equals(prefix)) {
          this.#stats.subscriptions++
          this.#onSubscribed()
        }
      }
    } catch {
      // the socket was closed
    }
  }

  /** Envelopes queued and not yet handed to the socket. */
  get pending(): number {
    return this.#queue.length
  }

  /**
   * Queues envelopes (all of this channel's publisher id), in order. An envelope whose ids cannot be read
   * or name another publisher is never sent: counted `failed`, and false is returned for it.
   */
  send(envelopes: readonly Buffer[]): number {
    let rejected = 0
    for (const env of envelopes) {
      const ids = envelopeIds(env)
      if (this.#closed || ids === null || ids.publisherId !== this.publisherId) {
        rejected++
        continue
      }
      this.#queue.push(zmqFrames(this.topic, ids, env))
    }
    if (rejected > 0) {
      this.#stats.failed += rejected
      this.onError(
        new ZmqChannelError(
          this.#closed
            ? 'the ZeroMQ channel is closed'
            : `${rejected} envelopes do not carry this channel's publisher id ${this.publisherId}: not sent`,
        ),
      )
    }
    this.#writing ??= this.#write()
    return rejected
  }

  async #write(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue
        this.#queue = []
        let done = 0
        for (const frames of batch) {
          try {
            await this.#sock.send(frames)
            this.#stats.sent++
          } catch (err) {
            this.#stats.failed++
            this.onError(new ZmqChannelError(`ZeroMQ send failed: ${(err as Error).message}`))
          }
          done++
          if ((done & 255) === 0) {
            this.onProgress(done)
            done = 0
          }
        }
        if (done > 0) this.onProgress(done)
      }
    } finally {
      this.#writing = null
    }
  }

  /** Resolves once every queued envelope was handed to the socket. */
  async drained(): Promise<void> {
    while (this.#writing !== null) await this.#writing
  }

  stats(): ZmqPubChannelStats {
    return { ...this.#stats }
  }

  /** Sends what is queued (bounded by timeoutMs), then closes the socket; the rest is counted failed. */
  async close(timeoutMs = 1000): Promise<void> {
    if (this.#closed) return
    let timer: NodeJS.Timeout | undefined
    await Promise.race([this.drained(), new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))])
    clearTimeout(timer)
    this.#closed = true
    const left = this.#queue.length
    this.#queue = []
    this.#stats.failed += left
    if (left > 0) this.onProgress(left)
    this.#onSubscribed()
    this.#sock.close()
  }
}
