// Dynamo 1.6.1's block-hash vectors (fixtures/dynamo-1.6/block-hashes-1.6.json) through the PUBLIC API,
// so the same file tests whichever implementation loads: CI runs it natively and again with
// DYNAMO_KV_FORCE_JS=1. Covers the Dynamo 1.4+ hash options (cacheSalt, eagle) of SPEC 4 and their checks.
import { readFileSync } from 'node:fs'
import test from 'ava'
import { xxh3 } from '@node-rs/xxhash'
import * as kv from '../ts/index.js'
import type { BlockExtraInfo, RouterEventValue } from '../ts/index.js'

interface Vector {
  name: string
  tokens: number[]
  kv_block_size: number
  lora_name: string | null
  cache_namespace: string | null
  is_eagle: boolean | null
  block_mm_infos: ({ mm_objects: { mm_hash: string; offsets: number[][] }[] } | null)[] | null
  expected: string[]
  xxh3_seed: string
}
interface SaltSeed {
  lora_name: string | null
  cache_namespace: string | null
  seed: string
}
interface Fixture {
  vectors: Vector[]
  salt_seeds: SaltSeed[]
}

const fixture = JSON.parse(readFileSync(new URL('./fixtures/dynamo-1.6/block-hashes-1.6.json', import.meta.url), 'utf8')) as Fixture
const impl = kv.implementation

function mmInfos(v: Vector): (BlockExtraInfo | null)[] | null {
  if (v.block_mm_infos === null) return null
  return v.block_mm_infos.map((b) =>
    b === null
      ? null
      : {
          mmObjects: b.mm_objects.map((o) => ({
            mmHash: BigInt(o.mm_hash),
            offsets: o.offsets.map((p): [number, number] => [p[0]!, p[1]!]),
          })),
        },
  )
}

function optionsOf(v: Vector): kv.BlockHashOptions {
  const opts: kv.BlockHashOptions = {}
  if (v.lora_name !== null) opts.loraName = v.lora_name
  if (v.cache_namespace !== null) opts.cacheSalt = v.cache_namespace
  if (v.block_mm_infos !== null) opts.blockMmInfos = mmInfos(v)
  if (v.is_eagle !== null) opts.eagle = v.is_eagle
  return opts
}

/** XXH3-64 of tokens[from, to) as u32 LE under `seed`, by the @node-rs/xxhash oracle. */
function oracle(tokens: number[], from: number, to: number, seed: bigint): bigint {
  const bytes = Buffer.alloc(4 * (to - from))
  for (let i = from; i < to; i++) bytes.writeUInt32LE(tokens[i]!, 4 * (i - from))
  return xxh3.xxh64(bytes, seed)
}

test('the fixture has the vectors this file is written for', (t) => {
  t.is(fixture.vectors.length, 21)
  t.is(fixture.salt_seeds.length, 5)
  t.true(fixture.vectors.some((v) => v.is_eagle === true))
  t.true(fixture.vectors.some((v) => v.cache_namespace !== null && v.cache_namespace !== ''))
  t.true(fixture.vectors.some((v) => v.block_mm_infos !== null))
})

for (const v of fixture.vectors) {
  test(`[${impl}] Dynamo 1.6.1 vector ${v.name}: computeBlockHashes and findMatchesForTokens`, (t) => {
    const opts = optionsOf(v)
    const want = v.expected.map(BigInt)
    t.deepEqual(Array.from(kv.computeBlockHashes(Uint32Array.from(v.tokens), v.kv_block_size, opts)), want)
    t.deepEqual(Array.from(kv.computeBlockHashes(v.tokens, v.kv_block_size, opts)), want)

    // the index hashes a token query with the same options: a worker holding these blocks matches all of them
    const idx = new kv.RadixIndex()
    const stored: RouterEventValue = {
      workerId: 5n,
      event: {
        eventId: 1n,
        dpRank: 0,
        data: {
          type: 'stored',
          parentHash: null,
          blocks: want.map((tokensHash, i) => ({ blockHash: BigInt(100 + i), tokensHash, mmExtraInfo: null })),
        },
      },
    }
    idx.applyEvent(stored)
    t.deepEqual(idx.findMatchesForTokens(v.tokens, v.kv_block_size, opts).scores, [{ workerId: 5n, dpRank: 0, score: want.length }])
  })
}

for (const s of fixture.salt_seeds) {
  test(`[${impl}] Dynamo 1.6.1 salt seed lora=${JSON.stringify(s.lora_name)} salt=${JSON.stringify(s.cache_namespace)}`, (t) => {
    const tokens = [0, 1, 2, 3, 4, 5, 6, 7]
    const got = kv.computeBlockHashes(tokens, 4, { loraName: s.lora_name, cacheSalt: s.cache_namespace })
    const seed = BigInt(s.seed)
    t.deepEqual(Array.from(got), [oracle(tokens, 0, 4, seed), oracle(tokens, 4, 8, seed)])
  })
}

test(`[${impl}] eagle hashes windows of kvBlockSize + 1 tokens with stride kvBlockSize`, (t) => {
  const tokens = Array.from({ length: 3 * 8 + 1 }, (_, i) => (i * 7919) % 100000)
  const salted = { loraName: 'adapter-a', cacheSalt: 'tenant-x' }
  const seed = BigInt(fixture.salt_seeds.find((s) => s.lora_name === 'adapter-a' && s.cache_namespace === 'tenant-x')!.seed)
  const got = kv.computeBlockHashes(tokens, 8, { ...salted, eagle: true })
  t.deepEqual(
    Array.from(got),
    [0, 1, 2].map((i) => oracle(tokens, 8 * i, 8 * i + 9, seed)),
  )
  // one token short of the last window drops that block; fewer than kvBlockSize + 1 tokens give none
  t.is(kv.computeBlockHashes(tokens.slice(0, 24), 8, { eagle: true }).length, 2)
  t.is(kv.computeBlockHashes(tokens.slice(0, 8), 8, { eagle: true }).length, 0)
  t.is(kv.computeBlockHashes([], 8, { eagle: true }).length, 0)
  // eagle: false and no options are Dynamo 1.0's hash
  t.deepEqual(kv.computeBlockHashes(tokens, 8, { eagle: false }), kv.computeBlockHashes(tokens, 8))
})

test(`[${impl}] an Eagle block's mm hashes follow its kvBlockSize + 1 tokens`, (t) => {
  const tokens = [1, 2, 3, 4, 5, 6, 7, 8, 9]
  const mm: (BlockExtraInfo | null)[] = [null, { mmObjects: [{ mmHash: 7n, offsets: [] }] }]
  const got = kv.computeBlockHashes(tokens, 4, { eagle: true, blockMmInfos: mm })
  const window = Buffer.alloc(5 * 4 + 8)
  for (let i = 0; i < 5; i++) window.writeUInt32LE(tokens[4 + i]!, 4 * i)
  window.writeBigUInt64LE(7n, 20)
  t.deepEqual(Array.from(got), [oracle(tokens, 0, 5, 1337n), xxh3.xxh64(window, 1337n)])
})

test(`[${impl}] the hash options are checked, naming the option`, (t) => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ cacheSalt: 7 }, /^cacheSalt must be a string, got number 7$/],
    [{ cacheSalt: ['x'] }, /^cacheSalt must be a string/],
    [{ eagle: 1 }, /^eagle must be a boolean, got number 1$/],
    [{ eagle: 'true' }, /^eagle must be a boolean/],
    [{ eagle: null }, /^eagle must be a boolean, got null$/],
  ]
  const idx = new kv.RadixIndex()
  for (const [opts, message] of bad) {
    t.throws(() => kv.computeBlockHashes([1, 2, 3, 4], 4, opts as kv.BlockHashOptions), { instanceOf: TypeError, message })
    t.throws(() => idx.findMatchesForTokens([1, 2, 3, 4], 4, opts as kv.BlockHashOptions), { instanceOf: TypeError, message })
  }
  // null and undefined salts are absent, like ""
  const plain = kv.computeBlockHashes([1, 2, 3, 4], 4)
  for (const cacheSalt of [null, undefined, '']) t.deepEqual(kv.computeBlockHashes([1, 2, 3, 4], 4, { cacheSalt }), plain)
})
