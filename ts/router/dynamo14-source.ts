// The router's `dynamo-1.4` source (SPEC 10): Dynamo 1.4+ publishers found through discovery. The
// EventSource and EventChannel records of one endpoint are listed from etcd or the file store (every
// pollMs, and with etcd at once when a watch reports a change),
// each rank's publisher is bound by its EventSource, its batches are read from the endpoint's NATS subject
// or from the ZeroMQ PUB socket its EventChannel advertises, and each event is ordered by a RankCursor14.
// The rules are Dynamo 1.6.1's, as discovery-1.6.json `router_acceptance` records them.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import type { Subscription } from '@nats-io/transport-node'
import type { Watcher } from 'etcd3'
import type { Subscriber } from 'zeromq'
import { decodeRouterEvents, endpointSubject, type RouterEventValue } from '../core/api.js'
import { DiscoveryError } from '../transport/discovery/backend.js'
import { type ResolvedDiscoveryConfig, resolveDiscoveryConfig, type DiscoveryOptions } from '../transport/discovery/config.js'
import type { NatsConnection } from '../transport/nats.js'
import { loadZeromq, zeromq } from '../transport/zeromq.js'
import type { RateLimitedLog } from '../util/log.js'
import { RankCursor14 } from './rank-cursor14.js'
import { envelopeIds, type JsonValue, parseSmallJson } from './wire.js'

import type { Env } from '../util/env.js'

/** What the follower asks of the router. */
export interface Dynamo14Sink {
  /** Applies one event to the index (counted by the router). */
  apply(ev: RouterEventValue): void
  /** Drops every block of one worker rank. */
  clearRank(workerId: bigint, dpRank: number): void
  /** The rank is alive (events or a binding). */
  touch(workerId: bigint, dpRank: number): void
}

export interface Dynamo14Stats {
  /** Batches dropped: an unbound or ambiguous publisher, events of another rank, bad bytes or frames. */
  droppedBatches: number
  /** Events the rank's cursor ignored (already admitted). */
  ignored: number
  /** Live-only gaps: the rank was cleared, then the event applied. */
  resets: number
  /** Ranks bound to exactly one publisher. */
  activeRanks: number
  /** Ranks advertised by more than one publisher (their events are dropped). */
  ambiguousRanks: number
  /** ZeroMQ channels connected. */
  zmqChannels: number
}

interface Source {
  publisherId: bigint
  workerId: bigint
  dpRank: number
  recoverable: boolean
}

interface Channel {
  publisherId: bigint
  kind: string
  endpoint: string | null
}

interface Binding {
  workerId: bigint
  dpRank: number
}

const enc = (s: string) => encodeURIComponent(s)
/** Batches held per unbound publisher until discovery binds it (its records are written just before its first batch). */
const MAX_UNBOUND = 4096

/** Reads the records of one endpoint: `v1/{event_sources|event_channels}/namespace/…/topic/kv-events/{id:x}`. */
interface Lister {
  list(): Promise<{ sources: [string, Uint8Array][]; channels: [string, Uint8Array][] }>
  close(): void
}

function fileLister(root: string, prefixes: readonly [string, string]): Lister {
  const read = async (bucket: string, prefix: string) => {
    const out: [string, Uint8Array][] = []
    const dir = path.join(root, bucket)
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      if (name.startsWith('.tmp_')) continue
      let key: string
      try {
        key = `${bucket}/${decodeURIComponent(name)}`
      } catch {
        continue
      }
      if (!key.startsWith(prefix)) continue
      const value = await fs.readFile(path.join(dir, name)).catch(() => null)
      if (value !== null) out.push([key, value])
    }
    return out
  }
  return {
    list: async () => ({ sources: await read('v1/event_sources', prefixes[0]), channels: await read('v1/event_channels', prefixes[1]) }),
    close() {},
  }
}

export class Dynamo14Follower {
  readonly #ns: string
  readonly #comp: string
  readonly #endpoint: string
  readonly #sink: Dynamo14Sink
  readonly #log: RateLimitedLog
  readonly #pollMs: number
  #lister: Lister | null = null
  #timer: NodeJS.Timeout | null = null
  #closed = false
  #polling: Promise<void> | null = null
  #again = false
  #natsSub: Subscription | null = null
  /** publisher id → the rank it is bound to (exactly one advertisement). */
  readonly #bound = new Map<bigint, Binding>()
  /** publisher ids of ranks with more than one advertisement. */
  readonly #ambiguous = new Set<bigint>()
  /** `${worker}:${rank}` → the bound publisher and its cursor. */
  readonly #cursors = new Map<string, { publisherId: bigint; cursor: RankCursor14 }>()
  readonly #zmq = new Map<bigint, { sub: Subscriber; endpoint: string }>()
  readonly #unbound = new Map<bigint, Uint8Array[]>()
  readonly #stats: Dynamo14Stats = { droppedBatches: 0, ignored: 0, resets: 0, activeRanks: 0, ambiguousRanks: 0, zmqChannels: 0 }

  private constructor(ns: string, comp: string, endpoint: string, sink: Dynamo14Sink, log: RateLimitedLog, pollMs: number) {
    this.#ns = ns
    this.#comp = comp
    this.#endpoint = endpoint
    this.#sink = sink
    this.#log = log
    this.#pollMs = pollMs
  }

  /** Opens discovery (and subscribes on NATS when a connection is given), lists once, then polls. */
  static async start(o: {
    namespace: string
    component: string
    endpoint: string
    discovery: DiscoveryOptions | undefined
    env: Env
    nats: NatsConnection | null
    sink: Dynamo14Sink
    log: RateLimitedLog
    pollMs: number
  }): Promise<Dynamo14Follower> {
    const config: ResolvedDiscoveryConfig = resolveDiscoveryConfig(o.discovery ?? {}, o.env)
    const f = new Dynamo14Follower(o.namespace, o.component, o.endpoint, o.sink, o.log, o.pollMs)
    const scope = `namespace/${enc(o.namespace)}/component/${enc(o.component)}/endpoint/${enc(o.endpoint)}/topic/kv-events/`
    const prefixes = [`v1/event_sources/${scope}`, `v1/event_channels/${scope}`] as const
    let watch: (() => Promise<void>) | null = null
    if (config.backend === 'file') f.#lister = fileLister(config.root, prefixes)
    else {
      // loaded only when the etcd backend is used
      const { Etcd3 } = await import('etcd3')
      const client = new Etcd3({ hosts: [...config.endpoints], dialTimeout: Math.min(config.connectTimeoutMs, 5000) })
      const read = async (prefix: string) => {
        const res = await client.getAll().prefix(prefix).exec()
        return res.kvs.map((kv) => [kv.key.toString(), kv.value] as [string, Uint8Array])
      }
      const watchers: Watcher[] = []
      f.#lister = {
        list: async () => ({ sources: await read(prefixes[0]), channels: await read(prefixes[1]) }),
        close: () => {
          for (const w of watchers) void w.cancel().catch(() => {})
          client.close()
        },
      }
      // a change under either prefix lists at once (the periodic listing stays, should a watch fail)
      watch = async () => {
        for (const prefix of prefixes) {
          const w = await client.watch().prefix(prefix).create()
          watchers.push(w)
          w.on('put', () => f.#kick())
          w.on('delete', () => f.#kick())
          w.on('error', () => {})
        }
      }
    }
    try {
      if (o.nats !== null) {
        f.#natsSub = o.nats.subscribe(endpointSubject(o.namespace, o.component, o.endpoint, 'kv-events'), {
          callback: (err, msg) => void (err || f.#guard(() => f.#onBatch(msg.data, null))),
        })
        await o.nats.flush()
      }
      await loadZeromq()
      try {
        await f.#poll()
      } catch (e) {
        const where = config.backend === 'file' ? `the file store at ${config.root}` : `etcd at ${config.endpoints.join(', ')}`
        throw new DiscoveryError(`source.discovery: could not list the records in ${where}: ${(e as Error).message}`, { cause: e })
      }
      await watch?.()
    } catch (e) {
      await f.close()
      throw e
    }
    f.#schedule()
    return f
  }

  stats(): Dynamo14Stats {
    return { ...this.#stats, zmqChannels: this.#zmq.size }
  }

  #schedule(): void {
    if (this.#closed) return
    this.#timer = setTimeout(() => this.#run(), this.#pollMs)
  }

  /** Lists now, then schedules the next listing (or lists again at once when kicked meanwhile). */
  #run(): void {
    this.#timer = null
    if (this.#closed) return
    this.#polling = this.#poll()
      .catch((e) => this.#log.log('warn', 'discovery14', { err: String(e) }, 'listing the discovery records failed'))
      .finally(() => {
        this.#polling = null
        if (this.#again) {
          this.#again = false
          this.#run()
        } else this.#schedule()
      })
  }

  /** A record changed (etcd watch): list as soon as possible. */
  #kick(): void {
    if (this.#closed) return
    if (this.#polling !== null) {
      this.#again = true
      return
    }
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#run()
  }

  async #poll(): Promise<void> {
    const { sources, channels } = await this.#lister!.list()
    if (this.#closed) return
    const valid: Source[] = []
    for (const [k, v] of sources) {
      const s = this.#readSource(k, v)
      if (s !== null) valid.push(s)
    }
    // membership: one advertisement per (worker, rank) is Active; more are Ambiguous
    const byRank = new Map<string, Source[]>()
    for (const s of valid) {
      const k = `${s.workerId}:${s.dpRank}`
      const list = byRank.get(k) ?? []
      list.push(s)
      byRank.set(k, list)
    }
    this.#bound.clear()
    this.#ambiguous.clear()
    let active = 0
    let ambiguous = 0
    for (const [k, list] of byRank) {
      if (list.length > 1) {
        ambiguous++
        for (const s of list) this.#ambiguous.add(s.publisherId)
        continue
      }
      const s = list[0]!
      active++
      this.#bound.set(s.publisherId, { workerId: s.workerId, dpRank: s.dpRank })
      const c = this.#cursors.get(k)
      if (c === undefined || c.publisherId !== s.publisherId) {
        // a new publisher for the rank (a new incarnation numbers its events from 1 again)
        if (c !== undefined) this.#sink.clearRank(s.workerId, s.dpRank)
        // a recovery over Dynamo's request plane is not asked: every source is followed live only
        this.#cursors.set(k, { publisherId: s.publisherId, cursor: new RankCursor14(false) })
      }
      this.#sink.touch(s.workerId, s.dpRank)
    }
    this.#stats.activeRanks = active
    this.#stats.ambiguousRanks = ambiguous
    // ZeroMQ channels of bound publishers
    const wanted = new Map<bigint, Channel>()
    for (const [k, v] of channels) {
      const c = this.#readChannel(k, v)
      if (c !== null && c.kind === 'Zmq' && c.endpoint !== null && this.#bound.has(c.publisherId)) wanted.set(c.publisherId, c)
    }
    for (const [id, z] of this.#zmq)
      if (wanted.get(id)?.endpoint !== z.endpoint) {
        z.sub.close()
        this.#zmq.delete(id)
      }
    for (const [id, c] of wanted) if (!this.#zmq.has(id)) this.#connect(id, c.endpoint!)
    // batches that arrived before their publisher was bound
    for (const [id, held] of this.#unbound)
      if (this.#bound.has(id) || this.#ambiguous.has(id)) {
        this.#unbound.delete(id)
        for (const b of held) this.#onBatch(b, null)
      }
  }

  #readSource(key: string, value: Uint8Array): Source | null {
    try {
      const hex = /\/([0-9a-f]{1,16})$/.exec(key)?.[1]
      const r = obj(parseSmallJson(value))
      const scope = obj(r.scope)
      const ep = obj(scope.endpoint)
      const meta = obj(r.metadata)
      const worker = obj(meta.worker)
      const kse = obj(meta.kv_state_endpoint)
      const same = (e: Record<string, JsonValue>) => e.namespace === this.#ns && e.component === this.#comp && e.name === this.#endpoint
      if (r.type !== 'EventSource' || scope.kind !== 'endpoint' || r.topic !== 'kv-events' || !same(ep) || !same(kse)) return null
      const publisherId = r.publisher_id
      if (typeof publisherId !== 'bigint' || meta.publisher_id !== publisherId || hex === undefined || BigInt(`0x${hex}`) !== publisherId)
        return null
      if (typeof worker.worker_id !== 'bigint' || typeof worker.dp_rank !== 'bigint' || worker.dp_rank > 0xffffffffn) return null
      return { publisherId, workerId: worker.worker_id, dpRank: Number(worker.dp_rank), recoverable: meta.recovery_target != null }
    } catch {
      this.#log.log('warn', 'record14', { key }, 'skipped an EventSource record that is not one')
      return null
    }
  }

  #readChannel(key: string, value: Uint8Array): Channel | null {
    try {
      const r = obj(parseSmallJson(value))
      const t = obj(r.transport)
      const config = obj(t.config)
      if (r.type !== 'EventChannel' || r.topic !== 'kv-events' || typeof r.instance_id !== 'bigint') return null
      return { publisherId: r.instance_id, kind: String(t.kind), endpoint: typeof config.endpoint === 'string' ? config.endpoint : null }
    } catch {
      this.#log.log('warn', 'channel14', { key }, 'skipped an EventChannel record that is not one')
      return null
    }
  }

  #connect(publisherId: bigint, endpoint: string): void {
    const zmq = zeromq()
    const sub = new zmq.Subscriber({ linger: 0 })
    try {
      sub.connect(endpoint)
      sub.subscribe('kv-events')
    } catch (e) {
      sub.close()
      this.#log.log('warn', `zmq14-${publisherId}`, { endpoint, err: String(e) }, 'could not connect to an advertised ZeroMQ channel')
      return
    }
    this.#zmq.set(publisherId, { sub, endpoint })
    void (async () => {
      for await (const frames of sub) {
        if (this.#closed) return
        this.#guard(() => this.#onFrames(publisherId, frames as Buffer[]))
      }
    })().catch(() => {
      // closed
    })
  }

  /** Frames `[kv-events, publisher_id BE8, sequence BE8, 0x01 + u32 BE length + envelope]`, checked as a 1.6 router does. */
  #onFrames(publisherId: bigint, frames: Buffer[]): undefined {
    if (frames.length !== 4) return this.#drop('frames', { count: frames.length })
    const [topic, pid, seq, frame] = frames as [Buffer, Buffer, Buffer, Buffer]
    if (topic.toString('latin1') !== 'kv-events' || pid.length !== 8 || seq.length !== 8) return this.#drop('frame ids', {})
    if (pid.readBigUInt64BE() !== publisherId) return this.#drop('frame publisher id', {})
    if (frame.length < 5 || frame[0] !== 1 || frame.readUInt32BE(1) !== frame.length - 5) return this.#drop('frame header', {})
    const envelope = frame.subarray(5)
    const ids = envelopeIds(envelope)
    if (ids === null || ids.publisherId !== publisherId || ids.sequence !== seq.readBigUInt64BE()) return this.#drop('envelope ids', {})
    this.#onBatch(envelope, ids.publisherId)
  }

  /** Runs a batch's handling; an unexpected error is counted and logged, never thrown into the socket or NATS loop. */
  #guard(f: () => void): void {
    try {
      f()
    } catch (e) {
      this.#drop('error', { err: String(e) })
    }
  }

  #drop(why: string, detail: object): undefined {
    this.#stats.droppedBatches++
    this.#log.log('warn', `drop14-${why}`, { why, ...detail }, 'dropped a Dynamo 1.4 batch')
  }

  /** One envelope: the publisher must be bound, every event of its rank; then each event through the rank's cursor. */
  #onBatch(envelope: Uint8Array, knownPublisher: bigint | null): undefined {
    if (this.#closed) return
    const publisherId = knownPublisher ?? envelopeIds(envelope)?.publisherId ?? null
    if (publisherId === null) return this.#drop('envelope', { bytes: envelope.length })
    if (this.#ambiguous.has(publisherId)) return this.#drop('ambiguous rank', { publisherId: publisherId.toString() })
    const b = this.#bound.get(publisherId)
    if (b === undefined) {
      // its records may not be listed yet: held until the next poll binds it
      const held = this.#unbound.get(publisherId) ?? []
      if (held.length >= MAX_UNBOUND) return this.#drop('unbound publisher', { publisherId: publisherId.toString() })
      held.push(envelope)
      this.#unbound.set(publisherId, held)
      return
    }
    let events: RouterEventValue[]
    try {
      events = decodeRouterEvents(envelope, 'envelope')
    } catch (e) {
      return this.#drop('events', { err: (e as Error).message })
    }
    if (events.length === 0) return
    for (const ev of events) if (ev.workerId !== b.workerId || ev.event.dpRank !== b.dpRank) return this.#drop('another rank', {})
    const c = this.#cursors.get(`${b.workerId}:${b.dpRank}`)
    if (c === undefined || c.publisherId !== publisherId) return this.#drop('unbound publisher', {})
    this.#sink.touch(b.workerId, b.dpRank)
    for (const ev of events) {
      const legacy = ev.event.data.type === 'cleared' && ev.residencyDomain === undefined
      const d = c.cursor.observe(ev.event.eventId, legacy)
      if (d.action === 'ignore') this.#stats.ignored++
      else if (d.action === 'reset-degraded') {
        this.#stats.resets++
        this.#sink.clearRank(b.workerId, b.dpRank)
        this.#sink.apply(ev)
      } else if (d.action === 'apply' || d.action === 'clear') this.#sink.apply(ev)
    }
  }

  async close(): Promise<void> {
    this.#closed = true
    if (this.#timer !== null) clearTimeout(this.#timer)
    await this.#polling?.catch(() => {})
    try {
      this.#natsSub?.unsubscribe()
    } catch {
      // closed connection
    }
    for (const z of this.#zmq.values()) z.sub.close()
    this.#zmq.clear()
    this.#lister?.close()
    this.#unbound.clear()
  }
}

function obj(v: JsonValue | undefined): Record<string, JsonValue> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object')
  return v
}
