// The router's one-call core paths (crates/core/src/select.rs, ts/fallback/select.ts): the default
// selector's pass and the rank gate give the same answers natively and in the fallback, and those
// answers are the documented ones — overlaps from a reference model of the index (SPEC 6), the cost
// rule of SPEC 10, and an event applied only when it is its armed rank's due event.
import type { RawBinding, RawRadixIndex } from '../ts/core/binding.js'
import { GATE_OTHER, GATE_PASS } from '../ts/core/binding.js'
import avaTest from 'ava'
import {
  defaultCost,
  encodeEnvelope,
  encodeRouterEvent,
  encodeRouterEvents,
  implementation,
  KvRouter,
  type KvRouterOptions,
  RadixIndex,
  type RouteCandidate,
  type RouteDecision,
  type RouterEventValue,
  silentLogger,
  type WorkerSelector,
} from '../ts/index.js'
import { applyOp, EventGenerator, ReferenceIndex, type Rng } from './helpers/gen-events.js'
import { fallback, needNative, parityTest as test } from './helpers/impls.js'

const KINDS = ['stored', 'removed', 'cleared'] as const

interface Side {
  name: string
  impl: RawBinding
  raw: RawRadixIndex
  index: RadixIndex
}

function sides(): Side[] {
  return [
    { name: 'native', impl: needNative() },
    { name: 'fallback', impl: fallback },
  ].map(({ name, impl }) => {
    const raw = new impl.RawRadixIndex()
    return { name, impl, raw, index: new RadixIndex(impl, raw) }
  })
}

const byKey = (a: { workerId: bigint; dpRank: number }, b: { workerId: bigint; dpRank: number }) =>
  a.workerId < b.workerId ? -1 : a.workerId > b.workerId ? 1 : a.dpRank - b.dpRank

/** Candidate ranks: most of the generator's ranks, some ranks the index never saw; ascending. */
function candidates(gen: EventGenerator, rng: Rng): { workerId: bigint; dpRank: number }[] {
  const list = gen.keys.filter(() => rng.chance(0.85)).map((k) => ({ workerId: k.workerId, dpRank: k.dpRank }))
  for (let i = 0; i < 4; i++) list.push({ workerId: rng.u64(), dpRank: rng.int(3) })
  list.push({ workerId: 0n, dpRank: 7 }, { workerId: (1n << 64n) - 1n, dpRank: 0xffff_ffff })
  const seen = new Set<string>()
  return list.sort(byKey).filter((c) => {
    const k = `${c.workerId}:${c.dpRank}`
    if (seen.has(k)) return false
    seen.add(k)
    return true
  })
}

test('selectBest: native and fallback write the same overlaps, tree sizes and costs and choose the documented rank', (t) => {
  const both = sides()
  const model = new ReferenceIndex()
  const gen = new EventGenerator(21, { workers: 24, dpRanks: [0, 1, 2] })
  let checked = 0
  let notFirst = 0
  let scored = 0
  for (let step = 0; step < 40; step++) {
    for (let i = 0; i < 400; i++) {
      const op = gen.next()
      applyOp(model, op)
      for (const s of both) applyOp(s.index, op)
    }
    const cands = candidates(gen, gen.rng)
    const n = cands.length
    const workerIds = BigUint64Array.from(cands.map((c) => c.workerId))
    const dpRanks = Uint32Array.from(cands.map((c) => c.dpRank))
    for (let q = 0; q < 25; q++) {
      const rng = gen.rng
      const hashes = gen.query()
      const requestBlocks = rng.chance(0.2) ? rng.int(4) : hashes.length + rng.int(6)
      const weight = rng.pick([0, 1, 1.5, 0.3, rng.next() * 4])
      const decode = Float64Array.from(cands, () => (rng.chance(0.5) ? 0 : rng.int(rng.chance(0.1) ? 1_000_000 : 40)))
      const offset = rng.int(5)
      const spare = rng.int(3)
      const got = both.map((s) => {
        const out = new Float64Array(offset + 3 * n + spare).fill(-1)
        const best = s.impl.selectBest(s.raw, hashes, requestBlocks, weight, workerIds, dpRanks, decode, n, out, offset)
        return { best, out }
      })
      t.deepEqual(got[1], got[0], `step ${step} query ${q}: the fallback equals the native core`)
      // the documented rule, from the reference model
      const m = model.findMatches(hashes)
      const overlap = cands.map((c) => m.scores.find((s) => s.workerId === c.workerId && s.dpRank === c.dpRank)?.score ?? 0)
      const tree = cands.map((c) => m.treeSizes.find((s) => s.workerId === c.workerId && s.dpRank === c.dpRank)?.size ?? 0)
      const cost = cands.map((_, i) => weight * Math.max(0, requestBlocks - overlap[i]!) + decode[i]!)
      let best = 0
      for (let i = 1; i < n; i++) if (cost[i]! < cost[best]!) best = i
      const { out } = got[0]!
      t.deepEqual(
        {
          best: got[0]!.best,
          overlap: Array.from(out.subarray(offset, offset + n)),
          tree: Array.from(out.subarray(offset + n, offset + 2 * n)),
          cost: Array.from(out.subarray(offset + 2 * n, offset + 3 * n)),
        },
        { best, overlap, tree, cost },
      )
      t.true(
        out.subarray(0, offset).every((v) => v === -1) && out.subarray(offset + 3 * n).every((v) => v === -1),
        'nothing written outside',
      )
      checked++
      if (best > 0) notFirst++
      if (overlap.some((o) => o > 0)) scored++
    }
  }
  t.true(notFirst > 300 && scored > 400, `${checked} selections, ${notFirst} not the first candidate, ${scored} with an overlap`)
  for (const s of both) {
    /** n candidates (columns of n, or of `short` for dpRanks) into `outLen` values */
    const call = (n: number, short: number, outLen: number) =>
      s.impl.selectBest(
        s.raw,
        new BigUint64Array(0),
        3,
        1,
        new BigUint64Array(n),
        new Uint32Array(short),
        new Float64Array(n),
        n,
        new Float64Array(outLen),
        0,
      )
    t.is(call(0, 0, 0), -1)
    t.throws(() => call(2, 2, 5), { message: /out is shorter than the candidates/ })
    t.throws(() => call(2, 1, 6), { message: /dpRanks is shorter than the candidates/ })
    s.index.close()
    s.raw.close()
  }
})

/** An envelope around one event, or (kind 'batch') around a Dynamo 1.4+ array of them. */
function envelope(ev: RouterEventValue, batch = false): Buffer {
  return encodeEnvelope({
    publisherId: ev.workerId,
    sequence: 0n,
    publishedAt: 0,
    topic: 'kv-events',
    payload: batch ? encodeRouterEvents([ev]) : encodeRouterEvent(ev),
  })
}

test('RankGate: native and fallback apply exactly the due events of armed ranks and report the same headers', (t) => {
  const both = sides()
  const gates = both.map((s) => new s.impl.RawRankGate())
  const outs = both.map(() => new BigUint64Array(6))
  const gen = new EventGenerator(5, { workers: 6, dpRanks: [0, 1], invalidRate: 0, clearRate: 0.01 })
  const rng = gen.rng
  /** the test's own books: per armed rank, the id due */
  const armed = new Map<string, bigint>()
  const model = new ReferenceIndex()
  const counts = { applied: 0, pass: 0, other: 0 }
  const recent: RouterEventValue[] = []
  for (let i = 0; i < 6000; i++) {
    const op = gen.next()
    if (op.op !== 'event') continue
    let ev = op.ev
    const x = rng.next()
    if (x < 0.1 && recent.length > 0) ev = rng.pick(recent) // an old event again
    recent.push(ev)
    if (recent.length > 50) recent.shift()
    const k = `${ev.workerId}:${ev.event.dpRank}`
    const y = rng.next()
    if (y < 0.05) {
      for (const g of gates) g.disarm(ev.workerId, ev.event.dpRank)
      armed.delete(k)
    } else if (y < 0.15 || (!armed.has(k) && y < 0.5)) {
      const next = rng.chance(0.8) ? ev.event.eventId : ev.event.eventId + 1n
      for (const g of gates) g.arm(ev.workerId, ev.event.dpRank, next)
      armed.set(k, next)
    }
    const bad = rng.chance(0.03)
    const batch = !bad && rng.chance(0.03)
    let bytes = envelope(ev, batch)
    if (bad) bytes = bytes.subarray(0, rng.int(bytes.length))
    const codes = gates.map((g, j) => g.apply(both[j]!.raw, bytes, outs[j]!))
    t.is(codes[1], codes[0], `event ${i}: same code`)
    const due = armed.get(k)
    if (bad || batch) {
      t.is(codes[0], GATE_OTHER, `event ${i}: not one event map`)
      counts.other++
      continue
    }
    const kind = KINDS.indexOf(ev.event.data.type)
    t.deepEqual(Array.from(outs[0]!), [
      ev.workerId,
      ev.event.eventId,
      BigInt(ev.event.dpRank),
      BigInt(kind),
      due === undefined ? 0n : 1n,
      due ?? 0n,
    ])
    t.deepEqual(outs[1], outs[0])
    if (due === ev.event.eventId) {
      const outcome = model.applyEvent(ev)
      t.is(codes[0], ['applied', 'parent_not_found', 'block_not_found', 'invalid_block_sequence'].indexOf(outcome) + 5 * kind, `event ${i}`)
      armed.set(k, due + 1n)
      counts.applied++
    } else {
      t.is(codes[0], GATE_PASS, `event ${i}`)
      counts.pass++
    }
  }
  t.true(counts.applied > 1000 && counts.pass > 300 && counts.other > 100, JSON.stringify(counts))
  // both indexes hold what the model holds
  t.deepEqual(both[0]!.index.dump(), model.dump())
  t.deepEqual(both[1]!.index.dump(), model.dump())
  const seen = gates.map((g) => Array.from(g.takeSeen()))
  t.deepEqual(seen[1], seen[0])
  t.true(seen[0]!.length > 0)
  t.deepEqual(
    gates.map((g) => g.takeSeen().length),
    [0, 0],
  )
  const [w] = [...armed.keys()].map((k) => BigInt(k.split(':')[0]!))
  for (const g of gates) g.removeWorker(w!)
  t.deepEqual(
    gates.map((g) => [0, 1].map((r) => g.disarm(w!, r))),
    [
      [null, null],
      [null, null],
    ],
  )
  for (const [j, g] of gates.entries())
    t.throws(() => g.apply(both[j]!.raw, envelope(recent[0]!), new BigUint64Array(5)), { message: /6 values/ })
  for (const s of both) {
    s.index.close()
    s.raw.close()
  }
})

// The default selector's decisions (chosen in the core, candidates built when read) against a custom
// selector given the candidate objects before it chooses by the same documented rule: equal choices,
// and every decision's candidates, read only after all requests were routed and some finished, equal
// what the custom selector was given at the time.
avaTest(`[${implementation}] default-selector decisions equal a custom selector's view of the same requests, read late`, async (t) => {
  const weight = 1.5
  const given: (readonly RouteCandidate[])[] = []
  const byRule: WorkerSelector = (cs) => {
    given.push(cs)
    let best = 0
    for (let i = 1; i < cs.length; i++) if (defaultCost(cs[i]!, weight) < defaultCost(cs[best]!, weight)) best = i
    return best
  }
  const fast = await KvRouter.create({
    kvBlockSize: 4,
    source: { kind: 'manual' },
    logger: silentLogger,
    selector: { overlapWeight: weight },
  })
  const objects = await KvRouter.create({ kvBlockSize: 4, source: { kind: 'manual' }, logger: silentLogger, selector: byRule })
  try {
    const gen = new EventGenerator(8, { workers: 5, dpRanks: [0, 1], removeWorkerRate: 0, removeWorkerDpRankRate: 0 })
    const rng = gen.rng
    const decisions: RouteDecision[] = []
    const active: string[] = []
    for (let i = 0; i < 600; i++) {
      for (let e = 0; e < 5; e++) {
        const op = gen.next()
        if (op.op !== 'event') continue
        const bytes = envelope(op.ev)
        fast.applyEnvelope(bytes)
        objects.applyEnvelope(bytes)
      }
      const hashes = gen.query(24)
      const requestId = rng.chance(0.6) ? `r${i}` : undefined
      const requestBlocks = hashes.length + rng.int(4)
      const d = fast.findBestWorkerForHashes(hashes, { requestId, requestBlocks })!
      const o = objects.findBestWorkerForHashes(hashes, { requestId, requestBlocks })!
      t.deepEqual([d.workerId, d.dpRank, d.overlapBlocks], [o.workerId, o.dpRank, o.overlapBlocks], `request ${i}`)
      decisions.push(d)
      if (requestId !== undefined) active.push(requestId)
      if (active.length > 0 && rng.chance(0.4)) {
        const id = active.splice(rng.int(active.length), 1)[0]!
        t.true(fast.markFinished(id))
        t.true(objects.markFinished(id))
      }
    }
    t.is(given.length, decisions.length)
    for (const [i, d] of decisions.entries()) t.deepEqual(d.candidates, given[i], `request ${i}'s candidates`)
    t.true(
      given.some((cs) => cs.some((c) => c.routedBlocks > 0)),
      'some candidates carry routed blocks',
    )
    t.true(
      decisions.some((d) => d.overlapBlocks > 0),
      'some choices hold an overlap',
    )
    t.is(fast.stats().events.stored.applied, objects.stats().events.stored.applied)
    t.true(fast.stats().events.stored.applied > 1000)
  } finally {
    await fast.close()
    await objects.close()
  }
  t.throws(() => fast.findBestWorkerForHashes([1n]), { message: 'RadixIndex is closed' })
})

// A selector's random() (or a custom selector) may ask the same router for another decision while one is
// being made: both decisions equal those of a twin router asked one after the other.
avaTest(`[${implementation}] a decision asked for from within a selector leaves the outer one intact`, async (t) => {
  const make = (selector: KvRouterOptions['selector']) =>
    KvRouter.create({ kvBlockSize: 4, source: { kind: 'manual' }, logger: silentLogger, selector })
  // the path to decide from within the next decision, and what that gave
  const ask: { hashes: BigUint64Array | null; inner: RouteDecision | null } = { hashes: null, inner: null }
  const fromWithin = (router: KvRouter) => {
    if (ask.hashes === null) return
    const h = ask.hashes
    ask.hashes = null
    ask.inner = router.findBestWorkerForHashes(h)
  }
  const nestedRandom = () => {
    fromWithin(nested)
    return 0.37
  }
  const nested = await make({ temperature: 0.5, random: nestedRandom })
  const twin = await make({ temperature: 0.5, random: () => 0.37 })
  const custom = await KvRouter.create({
    kvBlockSize: 4,
    source: { kind: 'manual' },
    logger: silentLogger,
    selector: (cs) => {
      fromWithin(custom)
      let best = 0
      for (let i = 1; i < cs.length; i++) if (defaultCost(cs[i]!, 1) < defaultCost(cs[best]!, 1)) best = i
      return best
    },
  })
  const greedy = await make({})
  try {
    const gen = new EventGenerator(21, { workers: 4, dpRanks: [0, 1], removeWorkerRate: 0, removeWorkerDpRankRate: 0 })
    for (let i = 0; i < 2000; i++) {
      const op = gen.next()
      if (op.op !== 'event') continue
      const bytes = envelope(op.ev)
      for (const r of [nested, twin, custom, greedy]) r.applyEnvelope(bytes)
    }
    let overlaps = 0
    const view = (d: RouteDecision | null) =>
      d && { workerId: d.workerId, dpRank: d.dpRank, overlapBlocks: d.overlapBlocks, candidates: d.candidates }
    for (let q = 0; q < 50; q++) {
      const outerHashes = gen.query(24)
      const otherHashes = gen.query(24)
      ask.hashes = otherHashes
      const outer = nested.findBestWorkerForHashes(outerHashes)
      t.true(ask.hashes === null, 'the inner decision was asked for')
      const wantOuter = twin.findBestWorkerForHashes(outerHashes)
      const wantInner = twin.findBestWorkerForHashes(otherHashes)
      t.deepEqual(view(outer), view(wantOuter), `query ${q}: the outer decision`)
      t.deepEqual(view(ask.inner), view(wantInner), `query ${q}: the inner decision`)
      ask.hashes = otherHashes
      const outerCustom = custom.findBestWorkerForHashes(outerHashes)
      t.deepEqual(view(outerCustom), view(greedy.findBestWorkerForHashes(outerHashes)), `query ${q}: the custom selector's decision`)
      t.deepEqual(view(ask.inner), view(greedy.findBestWorkerForHashes(otherHashes)), `query ${q}: the decision from within it`)
      if (wantOuter!.overlapBlocks > 0) overlaps++
    }
    t.true(overlaps > 10, `${overlaps} outer decisions with an overlap`)
  } finally {
    for (const r of [nested, twin, custom, greedy]) await r.close()
  }
})
