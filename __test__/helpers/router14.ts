// The router side of Dynamo 1.4+'s event plane, built only from the rules in
// __test__/fixtures/dynamo-1.6/{router-wire-1.6.json,discovery-1.6.json} and sharing no code with the
// package: listing the discovery records (file store or etcd), a SUB socket on a discovered EventChannel
// that checks each message as a 1.6 router does (4 frames, exact topic, 8-byte big-endian ids equal to the
// discovered publisher id, frame version 1 and length, envelope ids equal to the frame ids), and the
// envelope decoded with a general msgpack library.
import { promises as fs } from 'node:fs'
import path from 'node:path'
import { decode } from '@msgpack/msgpack'
import type { Etcd3 } from 'etcd3'
import { Subscriber } from 'zeromq'
import { keyOfFile, type ReadEventChannel, type ReadEventSource, readEventChannel, readEventSource } from './discovery-reader.js'

export interface Discovered {
  sources: ReadEventSource[]
  channels: ReadEventChannel[]
}

/** Every record of both buckets in a file store. */
export async function listFileStore(root: string): Promise<Discovered> {
  const out: Discovered = { sources: [], channels: [] }
  for (const bucket of ['v1/event_sources', 'v1/event_channels'] as const) {
    const dir = path.join(root, bucket)
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      if (name.startsWith('.tmp_')) continue
      const value = await fs.readFile(path.join(dir, name)).catch(() => null)
      if (value === null) continue
      const key = keyOfFile(bucket, name)
      if (bucket === 'v1/event_sources') out.sources.push(readEventSource(key, value))
      else out.channels.push(readEventChannel(key, value))
    }
  }
  return out
}

/** Every record of both buckets in etcd. */
export async function listEtcd(client: Etcd3): Promise<Discovered> {
  const out: Discovered = { sources: [], channels: [] }
  for (const bucket of ['v1/event_sources/', 'v1/event_channels/']) {
    const res = await client.getAll().prefix(bucket).exec()
    for (const kv of res.kvs) {
      const key = kv.key.toString()
      if (bucket === 'v1/event_sources/') out.sources.push(readEventSource(key, kv.value))
      else out.channels.push(readEventChannel(key, kv.value))
    }
  }
  return out
}

export interface ReceivedEnvelope {
  publisherId: bigint
  sequence: bigint
  publishedAt: bigint
  topic: string
  /** The envelope's payload (msgpack bytes of the events, or of an ActiveLoad). */
  payload: Uint8Array
  /** The 4 frames as received. */
  frames: Buffer[]
  /** The envelope bytes (frame 3 without its 5-byte header). */
  envelope: Buffer
}

/** Decodes an event-plane envelope (a msgpack map of 5 with a bin payload), u64 kept exact. */
export function decodeEnvelope(bytes: Uint8Array): Omit<ReceivedEnvelope, 'frames' | 'envelope'> {
  const m = decode(bytes, { useBigInt64: true }) as Record<string, unknown>
  const keys = Object.keys(m)
  if (keys.join(',') !== 'publisher_id,sequence,published_at,topic,payload') throw new Error(`envelope keys ${keys}`)
  if (!(m.payload instanceof Uint8Array)) throw new Error('the payload is not msgpack bin')
  return {
    publisherId: BigInt(m.publisher_id as number | bigint),
    sequence: BigInt(m.sequence as number | bigint),
    publishedAt: BigInt(m.published_at as number | bigint),
    topic: m.topic as string,
    payload: m.payload,
  }
}

/** A SUB socket on one discovered direct-ZeroMQ EventChannel. */
export class ChannelSubscriber {
  readonly sub: Subscriber
  readonly channel: ReadEventChannel

  constructor(channel: ReadEventChannel) {
    if (channel.transport.kind !== 'Zmq') throw new Error(`not a ZeroMQ channel: ${channel.transport.kind}`)
    this.channel = channel
    this.sub = new Subscriber({ linger: 0, receiveTimeout: 30_000 })
    this.sub.connect(channel.transport.config.endpoint as string)
    this.sub.subscribe(channel.topic)
  }

  /** The next message, checked as a 1.6 router checks it; throws on any violation. */
  async receive(): Promise<ReceivedEnvelope> {
    const frames = await this.sub.receive()
    if (frames.length !== 4) throw new Error(`${frames.length} frames`)
    const [topic, pid, seq, frame] = frames as [Buffer, Buffer, Buffer, Buffer]
    if (topic.toString() !== this.channel.topic) throw new Error(`topic ${topic.toString()}`)
    if (pid.length !== 8 || seq.length !== 8) throw new Error('ids are not 8 bytes')
    const publisherId = pid.readBigUInt64BE()
    const sequence = seq.readBigUInt64BE()
    if (publisherId !== this.channel.instanceId)
      throw new Error(`frame publisher id ${publisherId} is not the channel's ${this.channel.instanceId}`)
    if (frame[0] !== 1) throw new Error(`frame version ${frame[0]}`)
    if (frame.readUInt32BE(1) !== frame.length - 5) throw new Error('frame length')
    const envelope = frame.subarray(5)
    const env = decodeEnvelope(envelope)
    if (env.publisherId !== publisherId || env.sequence !== sequence) throw new Error('envelope ids differ from the frame ids')
    if (env.topic !== this.channel.topic) throw new Error(`envelope topic ${env.topic}`)
    return { ...env, frames, envelope }
  }

  close(): void {
    this.sub.close()
  }
}

export const hex = (b: Uint8Array) => Buffer.from(b).toString('hex')
