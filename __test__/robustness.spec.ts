// 100,000 random and mutated payloads through the public API of whichever implementation loads (CI
// runs the suite natively and with DYNAMO_KV_FORCE_JS=1): the only outcomes are a normal result or a
// KvDecodeError with reason 'malformed', and peekBatch says null exactly for the malformed ones.
import test from 'ava'
import { readFileSync } from 'node:fs'
import * as kv from '../ts/index.js'
import { decode as decodeMsgpack } from '@msgpack/msgpack'
import { BatchGenerator, Rng } from './helpers/gen-batches.js'

const fixtures = JSON.parse(readFileSync(new URL('./fixtures/engine-batches.json', import.meta.url), 'utf8')) as {
  cases: { hex: string }[]
}
const seeds = fixtures.cases.map((c) => Buffer.from(c.hex, 'hex'))

function mutate(rng: Rng, src: Buffer): Buffer {
  const b = Buffer.from(src)
  switch (rng.int(8)) {
    case 0: // flip bits
      for (let k = 0, n = 1 + rng.int(4); k < n && b.length; k++) {
        const at = rng.int(b.length)
        b[at] = b[at]! ^ (1 << rng.int(8))
      }
      return b
    case 1: // overwrite with a random byte
      for (let k = 0, n = 1 + rng.int(4); k < n && b.length; k++) b[rng.int(b.length)] = rng.int(256)
      return b
    case 2: // truncate
      return b.subarray(0, rng.int(b.length + 1))
    case 3: {
      // insert random bytes
      const at = rng.int(b.length + 1)
      const ins = Buffer.from(Array.from({ length: 1 + rng.int(8) }, () => rng.int(256)))
      return Buffer.concat([b.subarray(0, at), ins, b.subarray(at)])
    }
    case 4: {
      // delete a slice
      const at = rng.int(b.length + 1)
      return Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + rng.int(8))])
    }
    case 5: {
      // splice a header that claims ~4 billion elements or bytes
      const at = rng.int(b.length + 1)
      const h = Buffer.from([rng.pick([0xdd, 0xdf, 0xdb, 0xc6, 0xc9]), 0xff, 0xff, 0xff, 0xf0])
      return Buffer.concat([b.subarray(0, at), h, b.subarray(at)])
    }
    case 6: {
      // duplicate a slice
      const at = rng.int(b.length + 1)
      const len = rng.int(16)
      return Buffer.concat([b.subarray(0, at + len), b.subarray(at, at + len), b.subarray(at + len)])
    }
    default: // random bytes
      return Buffer.from(Array.from({ length: rng.int(200) }, () => rng.int(256)))
  }
}

function deep(levels: number): Buffer {
  // [ts, [[[ ... [] ... ]]], 0]: the events list is level 2
  return Buffer.concat([Buffer.from([0x93, 0xc0]), Buffer.alloc(levels - 1, 0x91), Buffer.from([0x90, 0x00])])
}

test(`${kv.implementation}: 100,000 random and mutated payloads give a result or KvDecodeError`, (t) => {
  const rng = new Rng(4242)
  const gen = new BatchGenerator(99, { malformedRate: 0.1 })
  const ingestor = new kv.Ingestor({ kvBlockSize: 4, workerId: 1n })
  const js = new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, mode: 'jetstream', maxDpRanks: 4 })
  const v14 = new kv.Ingestor({ kvBlockSize: 4, workerId: 1n, wire: 'dynamo-1.4', maxDpRanks: 4, localIndexer: true })
  const next14 = new Map<number, bigint>()
  let malformed = 0
  let wrong = 0
  const inputs: Buffer[] = [deep(63), deep(64), Buffer.alloc(0), Buffer.from([0xc1])]
  for (let k = 0; inputs.length < 100_000; k++) {
    const base = k % 3 === 0 ? gen.next() : seeds[rng.int(seeds.length)]!
    inputs.push(k % 5 === 0 ? base : mutate(rng, base))
  }
  for (const p of inputs) {
    let decodeMalformed = false
    try {
      const d = kv.decodeEngineBatch(p, 4)
      if (!Number.isInteger(d.dpRank) || !Array.isArray(d.events)) wrong++
    } catch (e) {
      if (!(e instanceof kv.KvDecodeError) || e.reason !== 'malformed') {
        if (wrong++ < 3) t.fail(`unexpected error ${String(e)} for ${p.toString('hex')}`)
      }
      decodeMalformed = true
    }
    const peek = kv.peekBatch(p)
    const r = ingestor.ingest(p, 1)
    const r2 = js.ingest(p, 1)
    if (
      (peek === null) !== decodeMalformed ||
      (r.dpRank === null) !== decodeMalformed ||
      r.rejected.malformed !== (decodeMalformed ? 1 : 0)
    ) {
      if (wrong++ < 3) t.fail(`inconsistent outcome for ${p.toString('hex')}`)
    }
    if (r2.rejected.malformed !== (decodeMalformed ? 1 : 0)) wrong++
    // dynamo-1.4: the same verdict; payloads are envelopes of event arrays numbered on per rank
    const r3 = v14.ingest(p, 1)
    if (r3.rejected.malformed !== (decodeMalformed ? 1 : 0)) wrong++
    if (r3.dpRank !== null && r3.payloads.length > 0) {
      let id = next14.get(r3.dpRank) ?? 1n
      if (r3.firstEventId !== id) wrong++
      for (const env of r3.payloads) {
        for (const ev of kv.decodeRouterEvents(env, 'envelope')) {
          if (ev.event.eventId !== id++ || ev.event.dpRank !== r3.dpRank || ev.storageTier === undefined) wrong++
        }
      }
      next14.set(r3.dpRank, id)
    }
    if (decodeMalformed) malformed++
  }
  t.is(wrong, 0)
  t.true(malformed > 10_000 && malformed < 90_000, `${malformed} of ${inputs.length} were malformed`)
  t.is(kv.peekBatch(deep(63))?.dpRank, 0) // deepest value at level 64
  t.is(kv.peekBatch(deep(64)), null) // level 65
  t.is(ingestor.counters().batches, BigInt(inputs.length))
  t.is(ingestor.counters().rejected_malformed, BigInt(malformed))
})

test(`${kv.implementation}: 30,000 mutated router events give an outcome or 'invalid router event'`, (t) => {
  const rng = new Rng(777)
  const gen = new BatchGenerator(5, { malformedRate: 0 })
  const ing = new kv.Ingestor({ kvBlockSize: 4, workerId: 3n })
  const js = new kv.Ingestor({ kvBlockSize: 4, workerId: 3n, mode: 'jetstream' })
  const v14 = new kv.Ingestor({ kvBlockSize: 4, workerId: 3n, wire: 'dynamo-1.4' })
  const index = new kv.RadixIndex()
  const local = new kv.LocalIndexer({ bufferSize: 8 })
  const formats = ['envelope', 'json', 'msgpack'] as const
  let wrong = 0
  let applied = 0
  let payloads: [Buffer, (typeof formats)[number]][] = []
  for (let k = 0; payloads.length < 30_000 && k < 100_000; k++) {
    const batch = gen.next()
    for (const p of ing.ingest(batch, 1).payloads) {
      payloads.push([p, 'envelope'])
      payloads.push([kv.encodeRouterEvent(envelopeEvent(p)), 'msgpack'])
    }
    for (const p of js.ingest(batch, 1).payloads) payloads.push([p, 'json'])
    // dynamo-1.4 envelopes of event arrays, and the arrays alone
    for (const p of v14.ingest(batch, 1).payloads) {
      payloads.push([p, 'envelope'])
      payloads.push([kv.encodeRouterEvents(kv.decodeRouterEvents(p, 'envelope')), 'msgpack'])
    }
  }
  payloads = payloads.slice(0, 30_000)
  for (const [p, format] of payloads) {
    const input = rng.chance(0.7) ? mutate(rng, p) : p
    for (const target of [index, local]) {
      try {
        target.applyEncoded(input, format)
        applied++
      } catch (e) {
        if (!(e instanceof Error) || !e.message.startsWith('invalid router event')) {
          if (wrong++ < 3) t.fail(`${format} ${input.toString('hex')}: ${String(e)}`)
        }
      }
    }
    // a format that does not match the bytes is just undecodable
    try {
      index.applyEncoded(input, formats[rng.int(3)]!)
    } catch (e) {
      if (!(e instanceof Error) || !e.message.startsWith('invalid router event')) wrong++
    }
  }
  t.is(wrong, 0)
  t.true(applied > 10_000, `${applied} applied`)
})

/** The RouterEvent inside an event-plane envelope, read with a general msgpack decoder. */
function envelopeEvent(env: Buffer): kv.RouterEventValue {
  const m = decodeMsgpack(env, { useBigInt64: true } as never) as { payload: Uint8Array }
  return kv.decodeRouterEvent(Buffer.from(m.payload))
}
