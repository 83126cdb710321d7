// Peer recovery (Dynamo's --peers): `dynamo-kv indexer --peers URL` started next to an indexer that follows
// a simulated engine loads that indexer's /dump before it answers: the same /query answers, no listener
// (/workers is empty), the peer listed in /peers; an unreachable first peer is skipped.
import test from 'ava'
import { EngineSimulator } from '../ts/sim/index.js'
import { IndexerService } from '../ts/indexer/service.js'
import { needCli, startCli } from './helpers/cli.js'
import { http, postJson } from './helpers/http.js'
import { freePort } from './helpers/nats-server.js'
import { type JsonNode, parseJson } from '../ts/indexer/json.js'

/** Every block's chain of tokens hashes from the root, read exactly from a /dump body. */
function chainsOf(dump: string): bigint[][] {
  const field = (v: JsonNode | undefined, k: string) => (v?.t === 'obj' ? v.entries.find(([key]) => key === k)?.[1] : undefined)
  const items = (v: JsonNode | undefined) => (v?.t === 'arr' ? v.items : [])
  const big = (v: JsonNode | undefined) => (v?.t === 'num' ? BigInt(v.raw) : null)
  const blocks = new Map<bigint, { parent: bigint | null; tokensHash: bigint }>()
  const root = parseJson(dump)
  for (const [, part] of root.t === 'obj' ? root.entries : [])
    for (const ev of items(field(part, 'events'))) {
      const stored = field(field(field(ev, 'event'), 'data'), 'stored')
      let parent = big(field(stored, 'parent_hash'))
      for (const b of items(field(stored, 'blocks'))) {
        const h = big(field(b, 'block_hash'))!
        blocks.set(h, { parent, tokensHash: big(field(b, 'tokens_hash'))! })
        parent = h
      }
    }
  return [...blocks.keys()].map((h) => {
    const chain: bigint[] = []
    for (let x: bigint | null = h; x !== null; x = blocks.get(x)?.parent ?? null) chain.unshift(blocks.get(x)!.tokensHash)
    return chain
  })
}

test('an indexer started with --peers answers as its peer, with no listener of its own', async (t) => {
  needCli()
  const a = new IndexerService()
  const { port: portA } = await a.listen(0)
  const sim = await EngineSimulator.create({ kvBlockSize: 4, seed: 5, replayEndpoint: 'tcp://127.0.0.1:0', capacityBlocks: 150 })
  let b: ReturnType<typeof startCli> | null = null
  try {
    const reg = { instance_id: 9, endpoint: sim.endpoint, replay_endpoint: sim.replayEndpoint, model_name: 'p:m', block_size: 4 }
    t.is((await postJson(portA, '/register', JSON.stringify(reg))).status, 201)
    await sim.run(80)
    // settled: A's dump holds what the engine holds
    const blocksOf = async (port: number) => ((await http(port, 'GET', '/dump')).body.match(/"block_hash":/g) ?? []).length
    for (let k = 0; (await blocksOf(portA)) !== sim.held().size; k++) {
      if (k > 200) return t.fail('indexer A did not converge')
      await sim.heartbeat()
      await new Promise((r) => setTimeout(r, 50))
    }
    const dead = `http://127.0.0.1:${await freePort()}`
    const peerA = `http://127.0.0.1:${portA}`
    b = startCli(['indexer', '--port', '0', '--log-format', 'json', '--peers', `${dead},${peerA}`])
    const ready = await b.waitForLog((r) => r.msg === 'indexer listening')
    const portB = ready.port as number
    t.true(b.logs().some((r) => r.msg === 'peer recovery failed; trying the next peer' && r.peer === dead))
    t.true(b.logs().some((r) => r.msg === 'index recovered from a peer' && r.peer === peerA))
    t.is((await http(portB, 'GET', '/workers')).body, '[]')
    t.deepEqual(JSON.parse((await http(portB, 'GET', '/peers')).body).sort(), [dead, peerA].sort())
    t.is(await blocksOf(portB), sim.held().size)
    // the same answers for every chain A holds, asked by hash (the model name has a ':' of its own)
    const dumpA = (await http(portA, 'GET', '/dump')).body
    t.true(dumpA.startsWith('{"p:m:default":'))
    const chains = chainsOf(dumpA)
    t.true(chains.length >= 20, `${chains.length} chains`)
    for (const hashes of chains) {
      const q = `{"block_hashes":[${hashes.map((h) => BigInt.asIntN(64, h)).join(',')}],"model_name":"p:m"}`
      const ra = await postJson(portA, '/query_by_hash', q)
      const rb = await postJson(portB, '/query_by_hash', q)
      t.is(rb.status, 200)
      t.deepEqual(JSON.parse(rb.body), JSON.parse(ra.body))
      t.deepEqual(JSON.parse(ra.body).scores, { 9: { 0: 4 * hashes.length } })
    }
    b.child.kill('SIGTERM')
    t.is(await b.exit, 0)
  } finally {
    if (b !== null && b.child.exitCode === null) b.child.kill('SIGKILL')
    sim.close()
    await a.close()
  }
})
