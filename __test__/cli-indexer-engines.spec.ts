// `dynamo-kv indexer` through the real bin, fed by three simulated vLLM engines over real ZeroMQ sockets
// registered over HTTP: after the engines run, /dump holds exactly what each engine holds, and /query
// answers for 500 prompts equal what the engines' own state implies (the blocks' tokens read back from
// each engine's replay buffer, independently of the indexer's hashing). SIGTERM then exits 0.
import test from 'ava'
import { decode } from '@msgpack/msgpack'
import { Dealer } from 'zeromq'
import { EngineSimulator } from '../ts/sim/index.js'
import { needCli, startCli } from './helpers/cli.js'
import { http, postJson } from './helpers/http.js'
import { type JsonNode, parseJson } from '../ts/indexer/json.js'

const BS = 4
const MODEL = 'sim-model'

interface Recorded {
  /** `${parent}|${tokens}` → the engine's block hash */
  byContent: Map<string, bigint>
  /** block hash → parent and the block's tokens */
  blocks: Map<bigint, { parent: bigint | null; tokens: number[] }>
}

const big = (v: unknown): bigint => (typeof v === 'bigint' ? v : BigInt(v as number))

/** Every batch the engine published, read back from its replay buffer (seq 0 on). */
async function recorded(sim: EngineSimulator): Promise<Recorded> {
  const out: Recorded = { byContent: new Map(), blocks: new Map() }
  const d = new Dealer({ receiveTimeout: 5000, linger: 0 })
  d.connect(sim.replayEndpoint!)
  try {
    await d.send(['', Buffer.alloc(8)])
    for (;;) {
      const frames = await d.receive()
      const payload = frames[frames.length - 1]!
      const seq = frames[frames.length - 2]!
      if (payload.length === 0 && seq.equals(Buffer.alloc(8, 0xff))) break
      const batch = decode(payload, { useBigInt64: true }) as unknown[]
      for (const ev of batch[1] as Map<string, unknown>[] | Record<string, unknown>[]) {
        const e = ev instanceof Map ? Object.fromEntries(ev) : (ev as Record<string, unknown>)
        if (e.type !== 'BlockStored') continue
        let parent = e.parent_block_hash == null ? null : big(e.parent_block_hash)
        const tokens = (e.token_ids as unknown[]).map(Number)
        const hashes = (e.block_hashes as unknown[]).map(big)
        hashes.forEach((h, k) => {
          const blockTokens = tokens.slice(k * BS, (k + 1) * BS)
          out.blocks.set(h, { parent, tokens: blockTokens })
          out.byContent.set(`${parent}|${blockTokens.join(',')}`, h)
          parent = h
        })
      }
    }
  } finally {
    d.close()
  }
  return out
}

/** Tokens from the root to block h (inclusive). */
function path(rec: Recorded, h: bigint): number[] {
  const chain: number[][] = []
  for (let x: bigint | null = h; x !== null; ) {
    const b = rec.blocks.get(x)
    if (b === undefined) break
    chain.unshift(b.tokens)
    x = b.parent
  }
  return chain.flat()
}

/** Blocks of `tokens`, from the first, that the engine holds (its chain of its own block hashes). */
function expectedBlocks(rec: Recorded, held: Set<bigint>, tokens: number[]): number {
  let parent: bigint | null = null
  let n = 0
  for (let k = 0; (k + 1) * BS <= tokens.length; k++) {
    const h = rec.byContent.get(`${parent}|${tokens.slice(k * BS, (k + 1) * BS).join(',')}`)
    if (h === undefined || !held.has(h)) break
    n++
    parent = h
  }
  return n
}

/** worker → block hashes in the indexer's /dump. */
async function dumped(port: number): Promise<Map<string, Set<bigint>>> {
  const root = parseJson((await http(port, 'GET', '/dump')).body)
  const field = (v: JsonNode | undefined, k: string) => (v?.t === 'obj' ? v.entries.find(([key]) => key === k)?.[1] : undefined)
  const items = (v: JsonNode | undefined) => (v?.t === 'arr' ? v.items : [])
  const raw = (v: JsonNode | undefined) => (v?.t === 'num' ? v.raw : '')
  const out = new Map<string, Set<bigint>>()
  if (root.t !== 'obj') return out
  for (const [, part] of root.entries)
    for (const ev of items(field(part, 'events'))) {
      const w = raw(field(ev, 'worker_id'))
      const set = out.get(w) ?? new Set<bigint>()
      out.set(w, set)
      for (const b of items(field(field(field(field(ev, 'event'), 'data'), 'stored'), 'blocks')))
        set.add(BigInt(raw(field(b, 'block_hash'))))
    }
  return out
}

function rng(seed: number) {
  let s = seed >>> 0
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0
    return s / 2 ** 32
  }
}

test('three simulated engines registered over HTTP: /query equals the engines’ ground truth for 500 prompts', async (t) => {
  needCli()
  const cli = startCli(['indexer', '--port', '0', '--log-format', 'json', '--log-level', 'info'])
  const sims: EngineSimulator[] = []
  try {
    const ready = await cli.waitForLog((r) => r.msg === 'indexer listening')
    const port = ready.port as number
    for (let k = 0; k < 3; k++)
      sims.push(
        await EngineSimulator.create({
          kvBlockSize: BS,
          seed: 100 + k,
          replayEndpoint: 'tcp://127.0.0.1:0',
          capacityBlocks: 200,
          prefixes: 12,
          maxPrefixBlocks: 10,
          clearRate: 0.001,
        }),
      )
    for (const [k, sim] of sims.entries()) {
      const r = await postJson(
        port,
        '/register',
        JSON.stringify({
          instance_id: k + 1,
          endpoint: sim.endpoint,
          replay_endpoint: sim.replayEndpoint,
          model_name: MODEL,
          block_size: BS,
        }),
      )
      t.is(r.status, 201, r.body)
    }
    for (let round = 0; round < 4; round++) for (const sim of sims) await sim.run(60)
    // settled: the index holds exactly what every engine holds (heartbeats let the listener see a lost tail)
    const deadline = Date.now() + 60_000
    for (;;) {
      const d = await dumped(port)
      const same = sims.every((sim, k) => {
        const got = d.get(String(k + 1)) ?? new Set()
        const held = sim.held()
        return got.size === held.size && [...held].every((h) => got.has(h))
      })
      if (same) break
      if (Date.now() > deadline) {
        t.fail('the indexer did not converge to the engines’ state')
        return
      }
      for (const sim of sims) await sim.heartbeat()
      await new Promise((r) => setTimeout(r, 100))
    }
    const recs = await Promise.all(sims.map(recorded))
    const helds = sims.map((s) => s.held())
    const rand = rng(42)
    let matchedSomewhere = 0
    for (let q = 0; q < 500; q++) {
      let tokens: number[]
      const kind = rand()
      if (kind < 0.1) tokens = Array.from({ length: 1 + Math.floor(rand() * 40) }, () => Math.floor(rand() * 150_000))
      else {
        const k = Math.floor(rand() * 3)
        const keys = [...(kind < 0.7 ? helds[k]! : recs[k]!.blocks.keys())]
        tokens = path(recs[k]!, keys[Math.floor(rand() * keys.length)]!)
        if (rand() < 0.3) tokens = tokens.slice(0, Math.floor(rand() * (tokens.length + 1)))
        if (rand() < 0.3) tokens.push(...Array.from({ length: Math.floor(rand() * 9) }, () => Math.floor(rand() * 150_000)))
      }
      const expected: Record<string, Record<string, number>> = {}
      for (const [k, rec] of recs.entries()) {
        const n = expectedBlocks(rec, helds[k]!, tokens)
        if (n > 0) expected[String(k + 1)] = { 0: n * BS }
      }
      if (Object.keys(expected).length > 0) matchedSomewhere++
      const r = await postJson(port, '/query', JSON.stringify({ token_ids: tokens, model_name: MODEL }))
      t.is(r.status, 200)
      const body = JSON.parse(r.body) as { scores: unknown; instances: Record<string, { gpu: number }> }
      t.deepEqual(body.scores, expected, `prompt ${q} (${tokens.length} tokens)`)
      for (const [w, per] of Object.entries(expected)) t.is(body.instances[w]?.gpu, Math.max(...Object.values(per)))
    }
    const workers = JSON.parse((await http(port, 'GET', '/workers')).body) as { status: string }[]
    t.deepEqual(
      workers.map((w) => w.status),
      ['active', 'active', 'active'],
    )
    t.true(matchedSomewhere > 250, `prompts that some engine holds: ${matchedSomewhere}`)
    cli.child.kill('SIGTERM')
    t.is(await cli.exit, 0)
  } finally {
    for (const s of sims) s.close()
    if (cli.child.exitCode === null) cli.child.kill('SIGKILL')
  }
})
