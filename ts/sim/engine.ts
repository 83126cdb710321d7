// A simulated inference engine that publishes KV-cache events the way vLLM's ZmqEventPublisher does
// (research/wire-and-peers.md 1.6): a PUB socket sending [topic, seq u64 BE, msgpack batch] from seq 0,
// and a ROUTER answering replay requests from a bounded buffer in either reply layout. A seeded
// workload (requests sharing prefixes, LRU evictions of leaf blocks, occasional clears) drives it, and
// it keeps the ground truth: the blocks the engine holds, and what a consumer that received every batch
// sent live would index. Knobs drop seqs, restart the engine, pause replies and send malformed messages.
// Shipped code (tests, benchmarks and the demo use it); no test-only dependencies.
import type { Publisher, Router } from 'zeromq'
import { loadZeromq, zeromq } from '../transport/zeromq.js'
import { intInRange } from '../util/args.js'
import { ByteWriter } from '../fallback/msgpack.js'
import { Rng } from './rng.js'

export type ReplayLayout = 'legacy' | 'topic'
export type EventEncoding = 'map' | 'array' | 'mixed'
export type MalformedKind = 'frames' | 'seq_length' | 'garbage' | 'junk'

export interface EngineSimulatorOptions {
  /** Live PUB endpoint. Default `tcp://127.0.0.1:0` (bound; read the chosen port from `endpoint`). */
  endpoint?: string
  /** Connect the PUB to `endpoint` (a source that binds) instead of binding it. Default false. */
  connect?: boolean
  /** Topic frame. Default '' (vLLM's default). */
  topic?: string
  /** SGLang snapshot mode: append `"\x00sgl-kv-epoch=<epoch>"` to the topic; a restart takes a new epoch. */
  topicEpoch?: boolean
  /** ROUTER replay endpoint to bind (`tcp://127.0.0.1:0` for a free port); default none. */
  replayEndpoint?: string | null
  /** Reply layout: 'legacy' `["", seq, payload]` (vLLM <= 0.25, SGLang) or 'topic' `["", topic, seq, payload]` (vLLM >= 0.26, TensorRT-LLM). Default 'topic'. */
  replayLayout?: ReplayLayout
  /** Batches kept for replay (vLLM's buffer_steps). Default 10000. */
  replayBufferSize?: number
  /** The dp rank written into every batch. Default 0. */
  dpRank?: number
  /** Tokens per block. Default 16. */
  kvBlockSize?: number
  /** Workload seed. Default 1. */
  seed?: number
  /** Event encoding: tagged maps (vLLM >= 0.26), tagged arrays (older), or both at random. Default 'map'. */
  encoding?: EventEncoding
  /** Append a 16-byte vLLM publisher_id as the batch's 4th element; a restart takes a new one. Default false. */
  publisherId?: boolean
  /** Blocks the engine can hold; beyond this it evicts least recently used leaf blocks. Default 512. */
  capacityBlocks?: number
  /** Shared prefixes ("documents") requests draw from. Default 32. */
  prefixes?: number
  /** Longest shared prefix, in blocks. Default 16. */
  maxPrefixBlocks?: number
  /** Most request-unique blocks after the shared prefix. Default 8. */
  maxUniqueBlocks?: number
  /** Most requests per step (one batch per step). Default 4. */
  maxRequestsPerStep?: number
  /** Probability that a step ends with AllBlocksCleared. Default 0.002. */
  clearRate?: number
  /** PUB send high-water mark (ZMQ drops beyond it). Default ZMQ's 1000. */
  sendHighWaterMark?: number
}

/** What one step published. */
export interface StepResult {
  seq: bigint
  events: number
  storedBlocks: number
  removedBlocks: number
  cleared: boolean
  /** Not sent on the live socket (a `drop` knob); still in the replay buffer unless dropped with `replay: false`. */
  dropped: boolean
}

interface Block {
  parent: bigint | null
  children: number
}

interface Doc {
  hashes: bigint[]
  tokens: Uint32Array
}

type StoredEvent = { t: 'stored'; parent: bigint | null; hashes: bigint[]; tokens: Uint32Array }
type SimEvent = StoredEvent | { t: 'removed'; hashes: bigint[] } | { t: 'cleared' }

const END_SEQ = Buffer.alloc(8, 0xff)
const EMPTY = Buffer.alloc(0)
const KEY = (s: string): Uint8Array => Buffer.from(s, 'latin1')
const K_TYPE = KEY('type')
const K_HASHES = KEY('block_hashes')
const K_PARENT = KEY('parent_block_hash')
const K_TOKENS = KEY('token_ids')
const K_BS = KEY('block_size')
const K_LORA_ID = KEY('lora_id')
const K_MEDIUM = KEY('medium')
const K_LORA_NAME = KEY('lora_name')

function seqBytes(seq: bigint): Buffer {
  const b = Buffer.allocUnsafe(8)
  b.writeBigUInt64BE(seq)
  return b
}

/**
 * One engine (one dp rank). Create with `EngineSimulator.create(opts)`; `step()` publishes one batch;
 * `close()` releases the sockets.
 */
export class EngineSimulator {
  readonly dpRank: number
  readonly kvBlockSize: number
  readonly replayLayout: ReplayLayout
  readonly replayBufferSize: number
  readonly #opts: Required<Omit<EngineSimulatorOptions, 'replayEndpoint' | 'sendHighWaterMark'>> & {
    sendHighWaterMark: number | undefined
  }
  readonly #rng: Rng
  #pub: Publisher
  #router: Router | null = null
  #endpoint = ''
  #replayEndpoint: string | null = null
  #closed = false

  #seq = 0n
  #topic: Buffer
  #publisherId: Buffer | null = null
  #epoch = 0
  #incarnation = 0
  /** Replay ring: (seq, payload) of the last replayBufferSize batches. */
  #ring: { seq: bigint; payload: Buffer }[] = []
  #ringHead = 0
  #drop = new Map<bigint, boolean>() // seq -> also keep out of the replay buffer
  #delay = new Set<bigint>()
  #delayed: Buffer[][] = []
  #replayPaused = false
  #pendingRequests: [Buffer, bigint][] = []
  #replayLoop: Promise<void> | null = null
  #answering: Promise<void> = Promise.resolve()

  // engine state (ground truth)
  #docs: Doc[] = []
  #blocks = new Map<bigint, Block>()
  /** Leaf blocks in least-recently-used-first order. */
  #leaves = new Map<bigint, true>()
  // what a consumer of every live-sent batch would index (the index's rules: unknown parent rejects a store,
  // a removed block takes its descendants)
  #view = new Map<bigint, { parent: bigint | null; children: Set<bigint> }>()
  #w = new ByteWriter(1 << 14)

  private constructor(opts: EngineSimulatorOptions) {
    this.#opts = {
      endpoint: opts.endpoint ?? 'tcp://127.0.0.1:0',
      connect: opts.connect ?? false,
      topic: opts.topic ?? '',
      topicEpoch: opts.topicEpoch ?? false,
      replayLayout: opts.replayLayout ?? 'topic',
      replayBufferSize: intInRange('replayBufferSize', opts.replayBufferSize ?? 10000, 1, 1 << 24),
      dpRank: intInRange('dpRank', opts.dpRank ?? 0, 0, 0xffff_ffff),
      kvBlockSize: intInRange('kvBlockSize', opts.kvBlockSize ?? 16, 1, 1 << 16),
      seed: opts.seed ?? 1,
      encoding: opts.encoding ?? 'map',
      publisherId: opts.publisherId ?? false,
      capacityBlocks: intInRange('capacityBlocks', opts.capacityBlocks ?? 512, 1, 1 << 24),
      prefixes: intInRange('prefixes', opts.prefixes ?? 32, 1, 1 << 16),
      maxPrefixBlocks: intInRange('maxPrefixBlocks', opts.maxPrefixBlocks ?? 16, 1, 1024),
      maxUniqueBlocks: intInRange('maxUniqueBlocks', opts.maxUniqueBlocks ?? 8, 0, 1024),
      maxRequestsPerStep: intInRange('maxRequestsPerStep', opts.maxRequestsPerStep ?? 4, 1, 1024),
      clearRate: opts.clearRate ?? 0.002,
      sendHighWaterMark: opts.sendHighWaterMark,
    }
    if (this.#opts.replayLayout !== 'legacy' && this.#opts.replayLayout !== 'topic')
      throw new RangeError(`replayLayout must be 'legacy' or 'topic', got ${String(this.#opts.replayLayout)}`)
    if (!['map', 'array', 'mixed'].includes(this.#opts.encoding))
      throw new RangeError(`encoding must be 'map', 'array' or 'mixed', got ${String(this.#opts.encoding)}`)
    this.dpRank = this.#opts.dpRank
    this.kvBlockSize = this.#opts.kvBlockSize
    this.replayLayout = this.#opts.replayLayout
    this.replayBufferSize = this.#opts.replayBufferSize
    this.#rng = new Rng(this.#opts.seed)
    this.#pub = this.#newPub()
    this.#topic = Buffer.alloc(0)
    this.#newIncarnation()
    for (let d = 0; d < this.#opts.prefixes; d++) {
      const n = 1 + this.#rng.int(this.#opts.maxPrefixBlocks)
      const tokens = new Uint32Array(n * this.kvBlockSize)
      for (let k = 0; k < tokens.length; k++) tokens[k] = this.#rng.int(150_000)
      this.#docs.push({ hashes: Array.from({ length: n }, () => this.#rng.u64()), tokens })
    }
  }

  static async create(opts: EngineSimulatorOptions = {}): Promise<EngineSimulator> {
    await loadZeromq()
    const sim = new EngineSimulator(opts)
    try {
      await sim.#open(opts.replayEndpoint ?? null)
    } catch (e) {
      sim.close()
      throw e
    }
    return sim
  }

  /** The live endpoint (the bound one, with its real port, when binding). */
  get endpoint(): string {
    return this.#endpoint
  }
  /** The bound ROUTER endpoint, or null without replay. */
  get replayEndpoint(): string | null {
    return this.#replayEndpoint
  }
  /** The seq the next batch will get. */
  get nextSeq(): bigint {
    return this.#seq
  }
  /** The live topic frame (with the epoch suffix in topicEpoch mode). */
  get topic(): Buffer {
    return this.#topic
  }
  get publisherId(): Buffer | null {
    return this.#publisherId
  }
  /** How many times restart() was called. */
  get incarnation(): number {
    return this.#incarnation
  }

  /** Block hashes the engine holds now (ground truth). */
  held(): Set<bigint> {
    return new Set(this.#blocks.keys())
  }

  /**
   * Block hashes a consumer that applied every batch sent on the live socket (and nothing else) would
   * index, under the index's rules. Blocks in `held() ∩ announced()` survive any loss with onLoss 'keep'.
   */
  announced(): Set<bigint> {
    return new Set(this.#view.keys())
  }

  /** Drops the given seqs on the live socket; `replay: false` also keeps them out of the replay buffer
   *  (vLLM consumes a seq without buffering when a send fails). */
  drop(seqs: (bigint | number)[] | bigint | number, opts: { replay?: boolean } = {}): void {
    for (const s of Array.isArray(seqs) ? seqs : [seqs]) this.#drop.set(BigInt(s), opts.replay === false)
  }

  /** Holds the given seqs back on the live socket (buffered for replay as usual) until sendDelayed(). */
  delay(seqs: (bigint | number)[] | bigint | number): void {
    for (const s of Array.isArray(seqs) ? seqs : [seqs]) this.#delay.add(BigInt(s))
  }

  /** Sends the live messages held back by delay(), in seq order (late delivery). */
  async sendDelayed(): Promise<void> {
    const delayed = this.#delayed
    this.#delayed = []
    for (const frames of delayed) await this.#pub.send(frames)
  }

  /** Replay requests wait (as when the engine thread is busy) until resumeReplay(). */
  pauseReplay(): void {
    this.#replayPaused = true
  }
  resumeReplay(): void {
    this.#replayPaused = false
    const pending = this.#pendingRequests
    this.#pendingRequests = []
    for (const [id, start] of pending) this.#queueAnswer(id, start)
  }

  /** Publishes `n` workload steps (one batch each). */
  async run(n: number): Promise<void> {
    for (let i = 0; i < n; i++) await this.step()
  }

  /** One engine step with events: a few requests (stores, evictions), maybe a clear; one batch. */
  async step(): Promise<StepResult> {
    const { events, storedBlocks, removedBlocks, cleared } = this.#stepEvents()
    const { seq, dropped } = await this.#publishEvents(events)
    return { seq, events: events.length, storedBlocks, removedBlocks, cleared, dropped }
  }

  /**
   * Generates `n` steps first, then sends their batches back to back: for benchmarks, where generating
   * the workload would otherwise pace the engine (not meant to be combined with the drop knobs: it counts
   * every batch as announced). Returns the number of events sent.
   */
  async burst(n: number): Promise<number> {
    const prepared = this.prepare(n)
    await prepared.send()
    return prepared.events
  }

  /** The first half of burst(): generates `n` steps (ground truth included); `send()` publishes them. */
  prepare(n: number): { events: number; send: () => Promise<void> } {
    const batches: Buffer[] = []
    let events = 0
    for (let i = 0; i < n; i++) {
      const step = this.#stepEvents()
      events += step.events.length
      batches.push(this.#encode(step.events))
      for (const e of step.events) this.#applyView(e)
    }
    return {
      events,
      send: async () => {
        for (const payload of batches.splice(0)) await this.#publish(payload)
      },
    }
  }

  #stepEvents(): { events: SimEvent[]; storedBlocks: number; removedBlocks: number; cleared: boolean } {
    const events: SimEvent[] = []
    let storedBlocks = 0
    let removedBlocks = 0
    const requests = 1 + this.#rng.int(this.#opts.maxRequestsPerStep)
    for (let r = 0; r < requests; r++) {
      const stored = this.#request()
      if (stored) {
        events.push(stored)
        storedBlocks += stored.hashes.length
      }
      const evicted = this.#evict()
      if (evicted.length > 0) {
        events.push({ t: 'removed', hashes: evicted })
        removedBlocks += evicted.length
      }
    }
    let cleared = false
    if (this.#rng.next() < this.#opts.clearRate) {
      events.push({ t: 'cleared' })
      this.#forgetBlocks()
      cleared = true
    }
    return { events, storedBlocks, removedBlocks, cleared }
  }

  /** A batch with no events (an idle engine's heartbeat); it takes a seq. */
  async heartbeat(): Promise<bigint> {
    return (await this.#publishEvents([])).seq
  }

  /** Publishes an arbitrary payload with the next seq (kept for replay); ground truth is not touched. */
  async sendPayload(payload: Uint8Array): Promise<bigint> {
    return this.#publish(Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength))
  }

  /**
   * Sends a bad message: 'frames' (2 frames), 'seq_length' (a 7-byte seq), 'garbage' (a short payload
   * that is not msgpack) or 'junk' (`junkBytes`, default 10 MiB, of junk behind an array header claiming
   * 2^32-1 elements). The last two take a seq like any batch; the first two take none.
   */
  async sendMalformed(kind: MalformedKind, junkBytes = 10 << 20): Promise<void> {
    switch (kind) {
      case 'frames':
        return this.#pub.send([this.#topic, seqBytes(this.#seq)])
      case 'seq_length':
        return this.#pub.send([this.#topic, Buffer.alloc(7), Buffer.from([0x90])])
      case 'garbage':
        await this.#publish(Buffer.from([0xc1, 0x93, 0xff, 0x00, 0x12]))
        return
      case 'junk': {
        const junk = Buffer.alloc(Math.max(5, junkBytes), 0xc1)
        junk.set([0xdd, 0xff, 0xff, 0xff, 0xff])
        await this.#publish(junk)
        return
      }
      default:
        throw new RangeError(`unknown malformed kind ${String(kind)}`)
    }
  }

  /**
   * The engine restarts: seq back to 0, a new publisher id and topic epoch, an empty replay buffer, and
   * no blocks held (a restarted engine holds nothing). With `sockets: true` the PUB and ROUTER are
   * closed and bound again on the same endpoints, so connected subscribers see a disconnect.
   */
  async restart(opts: { sockets?: boolean } = {}): Promise<void> {
    this.#seq = 0n
    this.#ring = []
    this.#ringHead = 0
    this.#drop.clear()
    this.#delay.clear()
    this.#delayed = []
    this.#pendingRequests = []
    this.#forgetBlocks()
    this.#newIncarnation()
    this.#incarnation++
    if (opts.sockets) {
      const replay = this.#replayEndpoint
      this.#pub.close()
      this.#router?.close()
      await this.#replayLoop
      this.#router = null
      this.#pub = this.#newPub()
      await this.#open(replay, this.#endpoint)
    }
  }

  close(): void {
    if (this.#closed) return
    this.#closed = true
    this.#pub.close()
    this.#router?.close()
  }

  // ---------------------------------------------------------------------------------------------------

  #newPub(): Publisher {
    const pub = new (zeromq().Publisher)({ linger: 0 })
    if (this.#opts.sendHighWaterMark !== undefined) pub.sendHighWaterMark = this.#opts.sendHighWaterMark
    return pub
  }

  async #open(replayEndpoint: string | null, endpoint = this.#opts.endpoint): Promise<void> {
    if (this.#opts.connect) {
      this.#pub.connect(endpoint)
      this.#endpoint = endpoint
    } else {
      await bindRetrying(this.#pub, endpoint)
      this.#endpoint = this.#pub.lastEndpoint ?? endpoint
    }
    if (replayEndpoint !== null) {
      const router = new (zeromq().Router)({ linger: 0, sendTimeout: 0 })
      await bindRetrying(router, replayEndpoint)
      this.#router = router
      this.#replayEndpoint = router.lastEndpoint ?? replayEndpoint
      this.#replayLoop = this.#serveReplay(router)
    }
  }

  #newIncarnation(): void {
    if (this.#opts.publisherId) {
      const id = Buffer.allocUnsafe(16)
      for (let i = 0; i < 16; i += 4) id.writeUInt32BE(this.#rng.u32(), i)
      this.#publisherId = id
    }
    let topic = Buffer.from(this.#opts.topic, 'utf8')
    if (this.#opts.topicEpoch) {
      this.#epoch = this.#rng.u32()
      topic = Buffer.concat([topic, Buffer.from(`\x00sgl-kv-epoch=${this.#epoch.toString(16)}`, 'latin1')])
    }
    this.#topic = topic
  }

  async #serveReplay(router: Router): Promise<void> {
    try {
      for (;;) {
        const msg = await router.receive()
        // vLLM's ROUTER accepts exactly [identity, "", start_seq (8 bytes)] and ignores anything else
        if (msg.length !== 3 || msg[1]!.length !== 0 || msg[2]!.length !== 8) continue
        const start = msg[2]!.readBigUInt64BE(0)
        if (this.#replayPaused) this.#pendingRequests.push([msg[0]!, start])
        else this.#queueAnswer(msg[0]!, start)
      }
    } catch {
      // closed
    }
  }

  /** Requests are answered one at a time, in order, as vLLM's publisher thread does. */
  #queueAnswer(identity: Buffer, start: bigint): void {
    this.#answering = this.#answering.then(() => this.#answer(identity, start))
  }

  async #answer(identity: Buffer, start: bigint): Promise<void> {
    const router = this.#router
    if (!router || this.#closed) return
    const legacy = this.replayLayout === 'legacy'
    // like vLLM's ROUTER, never wait: beyond the high-water mark a reply is dropped (sendTimeout 0)
    const send = (frames: Buffer[]): Promise<void> => router.send(frames).catch(() => undefined)
    const ring = this.#ring
    for (let i = this.#ringHead; i < ring.length; i++) {
      const { seq, payload } = ring[i]!
      if (seq < start) continue
      await send(legacy ? [identity, EMPTY, seqBytes(seq), payload] : [identity, EMPTY, this.#topic, seqBytes(seq), payload])
    }
    await send(legacy ? [identity, EMPTY, END_SEQ, EMPTY] : [identity, EMPTY, EMPTY, END_SEQ, EMPTY])
  }

  /** Assigns the next seq, buffers for replay and sends live (unless a drop knob says otherwise). */
  async #publish(payload: Buffer): Promise<bigint> {
    const seq = this.#seq++
    const drop = this.#drop.get(seq)
    if (drop !== true && this.#router !== null) {
      this.#ring.push({ seq, payload })
      if (this.#ring.length - this.#ringHead > this.replayBufferSize) {
        this.#ringHead++
        if (this.#ringHead > 4096 && this.#ringHead * 2 > this.#ring.length) {
          this.#ring = this.#ring.slice(this.#ringHead)
          this.#ringHead = 0
        }
      }
    }
    if (drop !== undefined) this.#drop.delete(seq)
    else if (this.#delay.delete(seq)) this.#delayed.push([this.#topic, seqBytes(seq), payload])
    else await this.#pub.send([this.#topic, seqBytes(seq), payload])
    return seq
  }

  async #publishEvents(events: SimEvent[]): Promise<{ seq: bigint; dropped: boolean }> {
    const payload = this.#encode(events)
    const dropped = this.#drop.has(this.#seq)
    if (!dropped) for (const e of events) this.#applyView(e)
    return { seq: await this.#publish(payload), dropped }
  }

  // --- workload -------------------------------------------------------------------------------------

  /** One request: a shared prefix plus unique blocks; stores the blocks the engine does not hold. */
  #request(): StoredEvent | null {
    const rng = this.#rng
    const bs = this.kvBlockSize
    // skewed popularity: low doc indexes are hot
    const doc = this.#docs[Math.floor(rng.next() * rng.next() * this.#docs.length)]!
    const prefix = 1 + rng.int(doc.hashes.length)
    const unique = rng.int(this.#opts.maxUniqueBlocks + 1)
    let parent: bigint | null = null
    let i = 0
    for (; i < prefix && this.#blocks.has(doc.hashes[i]!); i++) {
      parent = doc.hashes[i]!
      this.#touch(parent)
    }
    const n = prefix - i + unique
    if (n === 0) return null
    const hashes: bigint[] = new Array(n)
    const tokens = new Uint32Array(n * bs)
    tokens.set(doc.tokens.subarray(i * bs, prefix * bs))
    for (let k = (prefix - i) * bs; k < tokens.length; k++) tokens[k] = rng.int(150_000)
    for (let k = 0; k < n; k++) hashes[k] = i + k < prefix ? doc.hashes[i + k]! : rng.u64()
    let p = parent
    for (const h of hashes) {
      this.#hold(h, p)
      p = h
    }
    return { t: 'stored', parent, hashes, tokens }
  }

  #hold(h: bigint, parent: bigint | null): void {
    this.#blocks.set(h, { parent, children: 0 })
    this.#leaves.set(h, true)
    if (parent !== null) {
      const pb = this.#blocks.get(parent)!
      if (pb.children++ === 0) this.#leaves.delete(parent)
    }
  }

  #touch(h: bigint): void {
    if (this.#leaves.delete(h)) this.#leaves.set(h, true)
  }

  /** Evicts least recently used leaves (a parent goes only after its children) down to capacity. */
  #evict(): bigint[] {
    const out: bigint[] = []
    while (this.#blocks.size > this.#opts.capacityBlocks) {
      const h = this.#leaves.keys().next().value as bigint
      this.#leaves.delete(h)
      const b = this.#blocks.get(h)!
      this.#blocks.delete(h)
      if (b.parent !== null) {
        const pb = this.#blocks.get(b.parent)!
        if (--pb.children === 0) this.#leaves.set(b.parent, true)
      }
      out.push(h)
    }
    return out
  }

  #forgetBlocks(): void {
    this.#blocks.clear()
    this.#leaves.clear()
  }

  #applyView(e: SimEvent): void {
    const view = this.#view
    if (e.t === 'cleared') {
      view.clear()
      return
    }
    if (e.t === 'removed') {
      for (const h of e.hashes) this.#unview(h)
      return
    }
    if (e.parent !== null && !view.has(e.parent)) return // parent_not_found: nothing applied
    let parent = e.parent
    for (const h of e.hashes) {
      if (!view.has(h)) view.set(h, { parent, children: new Set() })
      if (parent !== null) view.get(parent)!.children.add(h)
      parent = h
    }
  }

  #unview(h: bigint): void {
    const v = this.#view.get(h)
    if (!v) return
    this.#view.delete(h)
    if (v.parent !== null) this.#view.get(v.parent)?.children.delete(h)
    for (const c of v.children) this.#unview(c)
  }

  // --- encoding -------------------------------------------------------------------------------------

  #encode(events: SimEvent[]): Buffer {
    const w = this.#w
    w.reset()
    w.arrayHeader(this.#publisherId ? 4 : 3)
    w.ensure(9)
    w.buf[w.pos++] = 0xcb
    new DataView(w.buf.buffer, w.buf.byteOffset).setFloat64(w.pos, Date.now() / 1000)
    w.pos += 8
    w.arrayHeader(events.length)
    for (const e of events) {
      const asMap = this.#opts.encoding === 'map' || (this.#opts.encoding === 'mixed' && this.#rng.next() < 0.5)
      if (e.t === 'stored') this.#writeStored(e, asMap)
      else if (e.t === 'removed') this.#writeRemoved(e.hashes, asMap)
      else if (asMap) {
        w.mapHeader(1)
        w.bytes(fix(K_TYPE))
        w.str('AllBlocksCleared')
      } else {
        w.arrayHeader(1)
        w.str('AllBlocksCleared')
      }
    }
    w.uintNum(this.dpRank)
    if (this.#publisherId) w.bin(this.#publisherId)
    return w.toBuffer()
  }

  #writeStored(e: { parent: bigint | null; hashes: bigint[]; tokens: Uint32Array }, asMap: boolean): void {
    const w = this.#w
    const key = (k: Uint8Array): void => w.bytes(fix(k))
    if (asMap) {
      w.mapHeader(8)
      key(K_TYPE)
      w.str('BlockStored')
      key(K_HASHES)
    } else {
      // vLLM v0.11-era positional layout: [tag, hashes, parent, tokens, block_size, lora_id, medium, lora_name]
      w.arrayHeader(8)
      w.str('BlockStored')
    }
    w.arrayHeader(e.hashes.length)
    for (const h of e.hashes) w.uintBig(h)
    if (asMap) key(K_PARENT)
    if (e.parent === null) w.nil()
    else w.uintBig(e.parent)
    if (asMap) key(K_TOKENS)
    w.arrayHeader(e.tokens.length)
    for (let k = 0; k < e.tokens.length; k++) w.uint(0, e.tokens[k]!)
    if (asMap) key(K_BS)
    w.uintNum(this.kvBlockSize)
    if (asMap) key(K_LORA_ID)
    w.nil()
    if (asMap) key(K_MEDIUM)
    w.str('GPU')
    if (asMap) key(K_LORA_NAME)
    w.nil()
  }

  #writeRemoved(hashes: bigint[], asMap: boolean): void {
    const w = this.#w
    if (asMap) {
      w.mapHeader(3)
      w.bytes(fix(K_TYPE))
      w.str('BlockRemoved')
      w.bytes(fix(K_HASHES))
    } else {
      w.arrayHeader(3)
      w.str('BlockRemoved')
    }
    w.arrayHeader(hashes.length)
    for (const h of hashes) w.uintBig(h)
    if (asMap) w.bytes(fix(K_MEDIUM))
    w.str('GPU')
  }
}

const FIX = new Map<Uint8Array, Uint8Array>()
/** A key as a msgpack fixstr (cached per key). */
function fix(k: Uint8Array): Uint8Array {
  let out = FIX.get(k)
  if (!out) {
    out = new Uint8Array(1 + k.length)
    out[0] = 0xa0 | k.length
    out.set(k, 1)
    FIX.set(k, out)
  }
  return out
}

/** Binding a port just released by a closed socket can fail for a moment (ZMQ closes asynchronously). */
async function bindRetrying(sock: Publisher | Router, endpoint: string): Promise<void> {
  for (let attempt = 0; ; attempt++) {
    try {
      await sock.bind(endpoint)
      return
    } catch (e) {
      if (attempt >= 50 || (e as { code?: string }).code !== 'EADDRINUSE') throw e
      await new Promise((r) => setTimeout(r, 20))
    }
  }
}
