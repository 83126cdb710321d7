// Both implementations reject the same router-event bytes with the same error (SPEC 8): for each of
// msgpack RouterEvents, their JSON and event-plane envelopes, 100,000 generated inputs (valid events
// mutated by truncation, bit flips, inserted and deleted bytes, wrong types, huge length headers, long
// digit runs and deep nesting) through RadixIndex.applyEncoded of each (the public API: the same
// outcome, or a RouterEventError of the same reason and message) and the raw decodeRouterEvent of
// each (the same value, or the same message, from which the public layer takes the reason).
import type { ExecutionContext } from 'ava'
import * as kv from '../ts/index.js'
import type { RawBinding, RouterEventValue } from '../ts/core/binding.js'
import { Rng } from './helpers/gen-batches.js'
import { fallback, needNative, parityTest as test } from './helpers/impls.js'

const INPUTS = 100_000

function event(rng: Rng): RouterEventValue {
  const workerId = rng.chance(0.5) ? BigInt(rng.int(4)) : rng.u64()
  const eventId = BigInt(rng.int(1000))
  const dpRank = rng.chance(0.8) ? 0 : rng.u32()
  const hash = (): bigint => (rng.chance(0.5) ? BigInt(rng.int(300)) : rng.u64())
  switch (rng.int(3)) {
    case 0: {
      const blocks = Array.from({ length: 1 + rng.int(4) }, () => ({
        blockHash: hash(),
        tokensHash: hash(),
        mmExtraInfo: rng.chance(0.15)
          ? { mmObjects: [{ mmHash: hash(), offsets: [[rng.int(9), rng.int(99)] as [number, number]] }] }
          : null,
      }))
      return { workerId, event: { eventId, dpRank, data: { type: 'stored', parentHash: rng.chance(0.5) ? null : hash(), blocks } } }
    }
    case 1:
      return { workerId, event: { eventId, dpRank, data: { type: 'removed', blockHashes: Array.from({ length: rng.int(4) }, hash) } } }
    default:
      return { workerId, event: { eventId, dpRank, data: { type: 'cleared' } } }
  }
}

const splice = (b: Uint8Array, at: number, del: number, ins: Uint8Array | string): Buffer =>
  Buffer.concat([b.subarray(0, at), typeof ins === 'string' ? Buffer.from(ins) : ins, b.subarray(at + del)])

/** msgpack values of other types (and headers claiming ~4 billion elements or bytes) to splice in. */
const MSGPACK_PIECES = [
  [0xc0],
  [0xc2],
  [0xc3],
  [0xc1],
  [0xff],
  [0xd0, 0x80],
  [0xcb, 0x40, 0x10, 0, 0, 0, 0, 0, 0],
  [0xca, 0x40, 0x80, 0, 0],
  [0xa0],
  [0xa3, 0x61, 0x62, 0x63],
  [0xa7, ...Buffer.from('cleared')],
  [0xc4, 0x01, 0x00],
  [0x90],
  [0x80],
  [0x91, 0x91, 0x91, 0x90],
  [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
  [0xce, 0xff, 0xff, 0xff, 0xff],
  [0xdd, 0xff, 0xff, 0xff, 0xf0],
  [0xdf, 0xff, 0xff, 0xff, 0xf0],
  [0xdb, 0xff, 0xff, 0xff, 0xf0],
  [0xc6, 0xff, 0xff, 0xff, 0xf0],
  [0xd4, 0x01, 0x02],
].map((p) => Uint8Array.from(p))

/** JSON pieces of other types, long digit runs and nesting to splice in. */
const JSON_PIECES = [
  'null',
  'true',
  'false',
  '-1',
  '-0',
  '1.5',
  '1e400',
  '4.0',
  '0',
  '00',
  '"x"',
  '"cleared"',
  '"\\ud800"',
  '"\\udc00"',
  '"\\u12"',
  '"\\q"',
  '"\u0001"',
  '[]',
  '{}',
  '[[[]]]',
  '18446744073709551615',
  '18446744073709551616',
  '9'.repeat(40),
  '1'.repeat(400),
  `1.${'0'.repeat(300)}`,
  `1e${'9'.repeat(50)}`,
  '['.repeat(70),
  '{"a":'.repeat(70),
  `${'['.repeat(63)}1${']'.repeat(63)}`,
  ',',
  ':',
  '}',
  ']',
  ' ',
  '\ufeff',
]

function mutate(rng: Rng, src: Buffer, json: boolean): Buffer {
  const b = Buffer.from(src)
  const at = rng.int(b.length + 1)
  switch (rng.int(json ? 9 : 8)) {
    case 0: // flip bits
      for (let k = 0, n = 1 + rng.int(3); k < n && b.length; k++) {
        const i = rng.int(b.length)
        b[i] = b[i]! ^ (1 << rng.int(8))
      }
      return b
    case 1: // truncate
      return b.subarray(0, rng.int(b.length))
    case 2: // insert random bytes
      return splice(
        b,
        at,
        0,
        Uint8Array.from({ length: 1 + rng.int(6) }, () => rng.int(256)),
      )
    case 3: // delete a slice
      return splice(b, at, 1 + rng.int(6), '')
    case 4: // replace a slice with a value of another type, a huge header or deep nesting
    case 5: {
      const piece = json ? rng.pick(JSON_PIECES) : rng.pick(MSGPACK_PIECES)
      return splice(b, at, rng.int(10), piece)
    }
    case 6: // duplicate a slice
      return splice(b, at, 0, b.subarray(at, at + rng.int(16)))
    case 7: // trailing bytes
      return Buffer.concat([b, Uint8Array.from({ length: 1 + rng.int(3) }, () => rng.int(256))])
    default: {
      // JSON: a digit run replacing a number's digits
      const m = /[0-9]+/g
      const text = b.toString('latin1')
      const runs = [...text.matchAll(m)]
      if (runs.length === 0) return b
      const r = rng.pick(runs)
      return splice(b, r.index, r[0].length, (rng.chance(0.5) ? '-' : '') + '7'.repeat(1 + rng.int(60)))
    }
  }
}

type Outcome = string

/** What one implementation does with the bytes: the outcome, or the error's class, reason and message. */
function attempt(f: () => unknown): Outcome {
  try {
    return `ok ${JSON.stringify(f(), (_k, v) => (typeof v === 'bigint' ? `${v}n` : v))}`
  } catch (e) {
    if (e instanceof kv.RouterEventError) return `${e.name} ${e.reason} ${e.message}`
    if (e instanceof Error && e.constructor === Error && e.message.startsWith('invalid router event: ')) return `raw ${e.message}`
    return `unexpected ${e instanceof Error ? `${e.constructor.name}: ${e.message}` : String(e)}`
  }
}

const TIERS = ['device', 'host_pinned', 'disk', 'external'] as const

/** A Dynamo 1.4+ payload value: 0 to 3 events, mostly with a storage tier and the worker domain. */
function events14(rng: Rng): RouterEventValue[] {
  return Array.from({ length: rng.int(4) }, () => {
    const ev = event(rng)
    if (rng.chance(0.9)) ev.storageTier = TIERS[rng.int(4)]!
    if (rng.chance(0.8)) ev.residencyDomain = rng.chance(0.9) ? 'worker' : 'cache_owner'
    return ev
  })
}

function run(t: ExecutionContext, format: 'msgpack' | 'json' | 'envelope', seed: number, wire14 = false, inputs = INPUTS): void {
  // 100,000 inputs through both implementations take about a minute on a loaded 2-core machine
  t.timeout(5 * 60_000)
  const impls: [string, RawBinding][] = [
    ['native', needNative()],
    ['fallback', fallback],
  ]
  const indexes = impls.map(([, impl]) => new kv.RadixIndex(impl))
  const rng = new Rng(seed)
  const reasons = new Map<string, number>()
  let mismatches = 0
  let unexpected = 0
  for (let k = 0; k < inputs; k++) {
    const inner = wire14
      ? kv.encodeRouterEvents(events14(rng), format === 'json' ? 'json' : 'msgpack')
      : kv.encodeRouterEvent(event(rng), format === 'json' ? 'json' : 'msgpack')
    let src = inner
    if (format === 'envelope') {
      const payload = rng.chance(0.3) ? mutate(rng, inner, false) : inner
      src = kv.encodeEnvelope({ publisherId: 1n, sequence: BigInt(k), publishedAt: 1n, topic: 'kv-events', payload })
    }
    const bytes = rng.chance(0.9) ? mutate(rng, rng.chance(0.1) ? mutate(rng, src, format === 'json') : src, format === 'json') : src
    const applied = indexes.map((ix) => attempt(() => ix.applyEncoded(bytes, format)))
    // the raw decoders: the same message (from which the public layer takes the reason)
    const code = ['envelope', 'msgpack', 'json'].indexOf(format)
    const decoded = wire14
      ? impls.map(([, impl]) => attempt(() => impl.decodeRouterEvents(bytes, code)))
      : format === 'envelope'
        ? ['', '']
        : impls.map(([, impl]) => attempt(() => impl.decodeRouterEvent(bytes, format === 'json')))
    for (const o of [...applied, ...decoded]) if (o.startsWith('unexpected')) unexpected++
    if (applied[0] !== applied[1] || decoded[0] !== decoded[1]) {
      if (mismatches++ < 5)
        t.fail(
          `${format} input ${Buffer.from(bytes).toString('hex')}:\n native   ${applied[0]} | ${decoded[0]}\n fallback ${applied[1]} | ${decoded[1]}`,
        )
    }
    const reason = applied[0]!.startsWith('RouterEventError') ? applied[0]!.split(' ')[1]! : 'ok'
    reasons.set(reason, (reasons.get(reason) ?? 0) + 1)
  }
  t.log(`${format}: ${[...reasons].map(([r, n]) => `${r} ${n}`).join(', ')}`)
  t.is(mismatches, 0, `${mismatches} of ${inputs} inputs differ`)
  t.is(unexpected, 0)
  // the generator reaches every reason of its format
  for (const r of format === 'envelope' ? ['ok', 'envelope', 'malformed', 'invalid'] : ['ok', 'malformed', 'invalid'])
    t.true((reasons.get(r) ?? 0) > 100, `reason ${r}: ${reasons.get(r) ?? 0}`)
}

for (const [format, seed] of [
  ['msgpack', 11],
  ['json', 12],
  ['envelope', 13],
] as const) {
  test(`${format}: 100,000 mutated router events give the same outcome or RouterEventError (reason, message) natively and in the fallback`, (t) => {
    run(t, format, seed)
  })
  test(`${format}: 30,000 mutated Dynamo 1.4 event arrays give the same outcome or RouterEventError natively and in the fallback`, (t) => {
    run(t, format, seed + 100, true, 30_000)
  })
}
