// Many block hashes of one worker on one radix node (SPEC 6, multi-hash nodes): a local indexer gets N
// stored events of one block each, all with the same tokens hash from the root but N different block
// hashes (so they all land on one node), then N removed events of one hash each. The control stores the
// same N hashes under N distinct tokens hashes (N nodes of one holder each). Reports apply calls per
// second of main-thread CPU time (and of wall time), native raw binding and fallback, for each N.
// Run alone: `npx tsx bench/index-multihash.ts` (or `BENCH_ONLY=multihash npx tsx bench/run.ts`);
// BENCH_MULTIHASH_N=1000,10000 sets the sizes.
import { cpus, loadavg } from 'node:os'
import { createRequire } from 'node:module'
import type { RawBinding } from '../ts/core/binding.js'
import { fallback } from '../ts/fallback/lib.js'
import { MS, NO_RATE, ROUNDS, best, fmtRate, rateAsync, type Rate } from './measure.js'

const require = createRequire(import.meta.url)
const SIZES = (process.env.BENCH_MULTIHASH_N ?? '1000,10000').split(',').map((x) => Number(x.trim()))
const TOKENS = 0x5eed_0000_0000_0001n

/** One pass: N stores then N removes on a fresh local indexer; returns the apply calls made (2N). */
function pass(raw: RawBinding, n: number, sameNode: boolean): number {
  const ix = new raw.RawLocalIndexer(1024)
  const head = new BigUint64Array([7n, 0n, 0n])
  const hashes = new BigUint64Array(1)
  const toks = new BigUint64Array(1)
  let calls = 0
  for (let i = 0; i < n; i++) {
    head[1] = BigInt(calls++)
    hashes[0] = 0x1000_0000n + BigInt(i)
    toks[0] = sameNode ? TOKENS : TOKENS + BigInt(i)
    ix.applyStored(head, 0, false, hashes, toks, 1, null)
  }
  if (ix.size() !== n) throw new Error(`expected ${n} entries, got ${ix.size()}`)
  for (let i = 0; i < n; i++) {
    head[1] = BigInt(calls++)
    hashes[0] = 0x1000_0000n + BigInt(i)
    ix.applyRemoved(head, 0, hashes, 1)
  }
  if (ix.size() !== 0) throw new Error(`expected an empty index, got ${ix.size()}`)
  ix.close()
  return calls
}

export async function benchMultiHash(): Promise<void> {
  let native: RawBinding | null = null
  try {
    native = require('../binding.cjs') as RawBinding
  } catch {
    console.log('native binding not built: fallback only')
  }
  const impls: [string, RawBinding][] = native
    ? [
        ['native', native],
        ['fallback', fallback],
      ]
    : [['fallback', fallback]]
  console.log(
    `machine: ${cpus().length} x ${cpus()[0]?.model}, load ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}, node ${process.version}`,
  )
  console.log(
    '\n| one worker, N hashes | impl | calls/s, one node (main-thread CPU) | calls/s, N nodes (main-thread CPU) | one node (wall) |',
  )
  console.log('|---|---|---|---|---|')
  for (const n of SIZES) {
    for (const [name, raw] of impls) {
      let same: Rate = NO_RATE
      let distinct: Rate = NO_RATE
      for (let r = 0; r < ROUNDS; r++) {
        same = best(same, await rateAsync(2 * n, () => pass(raw, n, true)))
        distinct = best(distinct, await rateAsync(2 * n, () => pass(raw, n, false)))
      }
      console.log(
        `| N = ${n} | ${name} | ${fmtRate(same.thread || same.cpu)} | ${fmtRate(distinct.thread || distinct.cpu)} | ${fmtRate(same.wall)} |`,
      )
    }
  }
  console.log(
    `\nbest of ${ROUNDS} rounds of ${MS} ms each; load after: ${loadavg()
      .map((x) => x.toFixed(2))
      .join(' ')}`,
  )
}

if (process.argv[1] && /index-multihash\.ts$/.test(process.argv[1])) {
  benchMultiHash().catch((e) => {
    console.error(e)
    process.exitCode = 1
  })
}
