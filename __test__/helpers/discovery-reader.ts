// A router-side reader of discovery records built only from the rules in
// __test__/fixtures/dynamo-1.6/discovery-1.6.json: the key layout
// `v1/{event_sources|event_channels}/namespace/{ns}/component/{c}/endpoint/{e}/topic/{topic}/{id:x}`,
// file names = the key percent-encoded as a whole, and the record JSON (u64 kept exact). It shares no
// code with the package.

export interface ReadEventSource {
  key: string
  namespace: string
  component: string
  endpoint: string
  publisherId: bigint
  workerId: bigint
  dpRank: number
  recoverable: boolean
}

export interface ReadEventChannel {
  key: string
  topic: string
  instanceId: bigint
  transport: { kind: string; config: Record<string, string> }
}

const KEY = /^v1\/(event_sources|event_channels)\/namespace\/([^/]+)\/component\/([^/]+)\/endpoint\/([^/]+)\/topic\/([^/]+)\/([0-9a-f]+)$/

/** JSON.parse with every integer of 16+ digits kept as a bigint (a JS number would round it). */
function parseExact(text: string): Record<string, unknown> {
  const quoted = text.replace(/([:,[])(-?\d{16,})(?=[,}\]])/g, '$1"#big:$2"')
  return JSON.parse(quoted, (_k, v) => (typeof v === 'string' && v.startsWith('#big:') ? BigInt(v.slice(5)) : v))
}

const big = (v: unknown): bigint => (typeof v === 'bigint' ? v : BigInt(v as number))
const dec = (s: string) => decodeURIComponent(s)

/** The key a file stands for: the file name percent-decoded, under its bucket directory. */
export function keyOfFile(bucket: string, fileName: string): string {
  return `${bucket}/${decodeURIComponent(fileName)}`
}

/** Parses an EventSource the way a 1.6 router accepts it, or throws saying which rule it breaks. */
export function readEventSource(key: string, value: Buffer | string): ReadEventSource {
  const m = KEY.exec(key)
  if (m?.[1] !== 'event_sources') throw new Error(`not an event source key: ${key}`)
  const [, , ns, comp, ep, topic, hex] = m as unknown as string[]
  if (topic !== 'kv-events') throw new Error(`topic ${topic}`)
  const r = parseExact(value.toString()) as {
    type: string
    scope: { kind: string; endpoint: { namespace: string; component: string; name: string } }
    topic: string
    publisher_id: unknown
    metadata: {
      kv_state_endpoint: { namespace: string; component: string; name: string }
      worker: { worker_id: unknown; dp_rank: number }
      publisher_id: unknown
      recovery_target?: unknown
    }
  }
  if (r.type !== 'EventSource' || r.scope.kind !== 'endpoint' || r.topic !== 'kv-events') throw new Error('shape')
  const scope = r.scope.endpoint
  const meta = r.metadata
  if (scope.namespace !== dec(ns as string) || scope.component !== dec(comp as string) || scope.name !== dec(ep as string)) {
    throw new Error('key and scope differ')
  }
  if (JSON.stringify(meta.kv_state_endpoint) !== JSON.stringify(scope)) throw new Error('kv_state_endpoint != scope')
  const publisherId = big(r.publisher_id)
  if (big(meta.publisher_id) !== publisherId || publisherId !== BigInt(`0x${hex}`)) throw new Error('publisher ids differ')
  return {
    key,
    namespace: scope.namespace,
    component: scope.component,
    endpoint: scope.name,
    publisherId,
    workerId: big(meta.worker.worker_id),
    dpRank: meta.worker.dp_rank,
    recoverable: meta.recovery_target !== undefined,
  }
}

export function readEventChannel(key: string, value: Buffer | string): ReadEventChannel {
  const m = KEY.exec(key)
  if (m?.[1] !== 'event_channels' || m[5] === undefined) throw new Error(`not an event channel key: ${key}`)
  const r = parseExact(value.toString()) as {
    type: string
    topic: string
    instance_id: unknown
    transport: { kind: string; config: Record<string, string> }
  }
  if (r.type !== 'EventChannel' || r.topic !== dec(m[5] as string)) throw new Error('shape')
  const instanceId = big(r.instance_id)
  if (instanceId !== BigInt(`0x${m[6]}`)) throw new Error('instance id and key differ')
  return { key, topic: r.topic, instanceId, transport: r.transport }
}
