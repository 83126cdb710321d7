// Dynamo 1.4+ discovery records (SPEC 5b, "Discovery") for the fallback, mirroring crates/core/src/discovery.rs:
// the EventSource record a router must find before it applies a publisher's KV events, the EventChannel
// record that advertises its event plane, and where each lives (etcd key, file-store path). Values are
// compact JSON with exact u64 (bigint in, decimal digits out; never a JS number), byte for byte as Dynamo
// 1.6.1 writes them.

import type { RawDiscoveryRecord, RawEndpoint, RawEventChannelSpec, RawEventSourceSpec, RawRecoveryTarget } from '../core/binding.js'

export const EVENT_SOURCES_BUCKET = 'v1/event_sources'
export const EVENT_CHANNELS_BUCKET = 'v1/event_channels'
/** A router applies events only from a publisher id a JSON number can hold exactly. */
export const MAX_PUBLISHER_ID = (1n << 53n) - 1n
const U64_MAX = (1n << 64n) - 1n
const KV_EVENTS_TOPIC = 'kv-events'

const HEX = '0123456789ABCDEF'

function pct(out: string[], b: number): void {
  out.push('%', HEX[b >> 4] as string, HEX[b & 15] as string)
}

function isAlnum(b: number): boolean {
  return (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
}

/** Bytes outside `[A-Za-z0-9_-]` become `%XX` (upper-case hex). */
export function encodeSegment(value: string): string {
  const out: string[] = []
  for (const b of Buffer.from(value, 'utf8')) {
    if (isAlnum(b) || b === 0x2d || b === 0x5f) out.push(String.fromCharCode(b))
    else pct(out, b)
  }
  return out.join('')
}

/** Bytes outside `[A-Za-z0-9]` become `%XX` (upper-case hex), `/` included: one key, one file. */
export function encodeFileName(key: string): string {
  const out: string[] = []
  for (const b of Buffer.from(key, 'utf8')) {
    if (isAlnum(b)) out.push(String.fromCharCode(b))
    else pct(out, b)
  }
  return out.join('')
}

export function endpointSubjectPrefix(e: RawEndpoint): string {
  return `namespace.${encodeSegment(e.namespace)}.component.${encodeSegment(e.component)}.endpoint.${encodeSegment(e.name)}`
}

export function recordKey(e: RawEndpoint, topic: string, publisherId: bigint): string {
  return `namespace/${encodeSegment(e.namespace)}/component/${encodeSegment(e.component)}/endpoint/${encodeSegment(e.name)}/topic/${encodeSegment(topic)}/${publisherId.toString(16)}`
}

// serde_json's string escaping: `"` and `\`, the short forms of \b \t \n \f \r, other control
// characters as \u00xx (lower-case hex); everything else as UTF-8.
function str(s: string): string {
  let out = '"'
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c === 0x22) out += '\\"'
    else if (c === 0x5c) out += '\\\\'
    else if (c >= 0x20) out += s[i]
    else if (c === 0x08) out += '\\b'
    else if (c === 0x09) out += '\\t'
    else if (c === 0x0a) out += '\\n'
    else if (c === 0x0c) out += '\\f'
    else if (c === 0x0d) out += '\\r'
    else out += `\\u00${c.toString(16).padStart(2, '0')}`
  }
  return `${out}"`
}

function endpointJson(e: RawEndpoint): string {
  return `{"namespace":${str(e.namespace)},"component":${str(e.component)},"name":${str(e.name)}}`
}

function scopeJson(e: RawEndpoint): string {
  return `"scope":{"kind":"endpoint","endpoint":${endpointJson(e)}}`
}

function u64(v: bigint, what: string): string {
  if (typeof v !== 'bigint' || v < 0n || v > U64_MAX) throw new Error(`${what} must be within 0..2^64-1`)
  return v.toString()
}

function checkPublisherId(id: bigint): void {
  if (typeof id !== 'bigint' || id < 1n || id > MAX_PUBLISHER_ID) {
    throw new Error(`publisher_id ${String(id)} is outside 1..=${MAX_PUBLISHER_ID} (2^53-1)`)
  }
}

function checkDpRank(r: number): void {
  if (!Number.isInteger(r) || r < 0 || r > 0xffffffff) throw new Error(`dp_rank ${String(r)} is not a u32`)
}

function checkEndpoint(e: RawEndpoint): void {
  for (const [what, v] of [
    ['namespace', e.namespace],
    ['component', e.component],
    ['endpoint name', e.name],
  ] as const) {
    if (v === '') throw new Error(`the ${what} must not be empty`)
  }
}

function recoveryTargetJson(t: RawRecoveryTarget): string {
  return `{"component":${str(t.component)},"endpoint":${str(t.endpoint)},"namespace":${str(t.namespace)},"instance_id":${u64(t.instanceId, 'instanceId')},"transport":{"tcp":${str(t.tcp)}},"request_plane_codec":"msgpack"}`
}

/** The KvEventSource metadata of an EventSource record. */
export function eventSourceMetadataJson(s: RawEventSourceSpec): string {
  const target = s.recoveryTarget ? `,"recovery_target":${recoveryTargetJson(s.recoveryTarget)}` : ''
  return `{"kv_state_endpoint":${endpointJson(s.endpoint)},"worker":{"worker_id":${u64(s.workerId, 'workerId')},"dp_rank":${s.dpRank}},"publisher_id":${s.publisherId}${target}}`
}

function record(bucket: string, key: string, json: string): RawDiscoveryRecord {
  return {
    bucket,
    key,
    etcdKey: `${bucket}/${key}`,
    filePath: `${bucket}/${encodeFileName(key)}`,
    value: Buffer.from(json, 'utf8'),
  }
}

/** The EventSource record of one (workerId, dpRank) publisher on topic `kv-events`. */
export function eventSourceRecord(s: RawEventSourceSpec): RawDiscoveryRecord {
  checkEndpoint(s.endpoint)
  checkPublisherId(s.publisherId)
  checkDpRank(s.dpRank)
  const t = s.recoveryTarget
  if (t) {
    if (t.namespace === '' || t.component === '' || t.endpoint === '') {
      throw new Error("the recovery target's namespace, component and endpoint must not be empty")
    }
    if (t.tcp === '') throw new Error("the recovery target's tcp address must not be empty")
  }
  const json = `{"type":"EventSource",${scopeJson(s.endpoint)},"topic":${str(KV_EVENTS_TOPIC)},"publisher_id":${s.publisherId},"metadata":${eventSourceMetadataJson(s)}}`
  return record(EVENT_SOURCES_BUCKET, recordKey(s.endpoint, KV_EVENTS_TOPIC, s.publisherId), json)
}

/** The EventChannel record of one publisher's event-plane channel. */
export function eventChannelRecord(c: RawEventChannelSpec): RawDiscoveryRecord {
  checkEndpoint(c.endpoint)
  checkPublisherId(c.publisherId)
  if (c.topic === '') throw new Error('the topic must not be empty')
  let transport: string
  if (c.zmqEndpoint === undefined || c.zmqEndpoint === null) {
    transport = `{"kind":"Nats","config":{"subject_prefix":${str(endpointSubjectPrefix(c.endpoint))}}}`
  } else {
    if (c.zmqEndpoint === '') throw new Error('the ZeroMQ endpoint must not be empty')
    transport = `{"kind":"Zmq","config":{"endpoint":${str(c.zmqEndpoint)}}}`
  }
  const json = `{"type":"EventChannel",${scopeJson(c.endpoint)},"topic":${str(c.topic)},"instance_id":${c.publisherId},"transport":${transport}}`
  return record(EVENT_CHANNELS_BUCKET, recordKey(c.endpoint, c.topic, c.publisherId), json)
}
