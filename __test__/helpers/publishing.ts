// Helpers for the publishing tests: loggers, waiting for conditions, reading a JetStream stream, and a
// seeded stream of manual-API calls (stores chained to earlier stores, removes, clears).
import type { ExecutionContext, TestFn } from 'ava'
import { jetstream, jetstreamManager } from '@nats-io/jetstream'
import { connect, type NatsConnection } from '@nats-io/transport-node'
import type { Logger, RouterEventValue } from '../../ts/index.js'
import { sortU64 } from './fixtures.js'
import { Rng } from './gen-batches.js'
import { startNatsServer, type NatsServer } from './nats-server.js'

/** One private nats-server and a connection to it for a whole test file (started before, stopped after). */
export function withNats(test: TestFn): { readonly server: NatsServer; readonly nc: NatsConnection } {
  const shared = {} as { server: NatsServer; nc: NatsConnection }
  test.before(async () => {
    shared.server = await startNatsServer()
    shared.nc = await connect({ servers: shared.server.url })
  })
  test.after.always(async () => {
    await shared.nc?.close()
    await shared.server?.stop()
  })
  return shared
}

export { silentLogger as quiet } from '../../ts/util/log.js'

/** A logger that keeps every line, for asserting on warnings. */
export function capture(): Logger & { lines: { level: string; obj: object; msg?: string }[] } {
  const lines: { level: string; obj: object; msg?: string }[] = []
  const at = (level: string) => (obj: object, msg?: string) => void lines.push({ level, obj, msg })
  return { lines, error: at('error'), warn: at('warn'), info: at('info'), debug: at('debug') }
}

/** Polls `cond` every 5 ms until it holds; throws with `what` after `timeoutMs`. */
export async function waitFor(cond: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export interface StoredMessage {
  seq: number
  subject: string
  data: Uint8Array
  msgId: string | undefined
}

/** Every message of a stream, in stream order (an ordered consumer from the first sequence). */
export async function readStream(nc: NatsConnection, stream: string): Promise<StoredMessage[]> {
  const jsm = await jetstreamManager(nc)
  const info = await jsm.streams.info(stream)
  const last = info.state.last_seq
  const out: StoredMessage[] = []
  if (info.state.messages === 0) return out
  const consumer = await jetstream(nc).consumers.get(stream)
  const messages = await consumer.consume()
  for await (const m of messages) {
    out.push({ seq: m.seq, subject: m.subject, data: m.data, msgId: m.headers?.get('Nats-Msg-Id') })
    if (m.seq >= last) break
  }
  await messages.close()
  return out
}

export type ManualOp =
  | { kind: 'stored'; tokenIds: Uint32Array; blockHashes: bigint[]; parentHash: bigint | null; dpRank: number }
  | { kind: 'removed'; blockHashes: bigint[]; dpRank: number }
  | { kind: 'cleared'; dpRank: number }

/**
 * A seeded stream of manual-API calls over `ranks` dp ranks: stores of 1-6 blocks chained to a live block
 * of the rank half the time, removes of 1-3 live blocks (20%), and a clear every `clearEvery` calls.
 * Block hashes are random u64 (most above 2^53).
 */
export function* manualOps(seed: number, count: number, kvBlockSize: number, ranks = 1, clearEvery = 0): Generator<ManualOp> {
  const rng = new Rng(seed)
  const live: bigint[][] = Array.from({ length: ranks }, () => [])
  for (let i = 0; i < count; i++) {
    const dpRank = rng.int(ranks)
    const mine = live[dpRank]!
    if (clearEvery > 0 && i > 0 && i % clearEvery === 0) {
      mine.length = 0
      yield { kind: 'cleared', dpRank }
    } else if (mine.length > 0 && rng.next() < 0.2) {
      const n = Math.min(mine.length, 1 + rng.int(3))
      const gone: bigint[] = []
      for (let k = 0; k < n; k++) gone.push(mine.splice(rng.int(mine.length), 1)[0]!)
      yield { kind: 'removed', blockHashes: gone, dpRank }
    } else {
      const n = 1 + rng.int(6)
      const parentHash = mine.length > 0 && rng.next() < 0.5 ? mine[rng.int(mine.length)]! : null
      const blockHashes = Array.from({ length: n }, () => rng.u64())
      const tokenIds = Uint32Array.from({ length: n * kvBlockSize }, () => rng.int(128_000))
      mine.push(...blockHashes)
      yield { kind: 'stored', tokenIds, blockHashes, parentHash, dpRank }
    }
  }
}

/** The block hashes an index holds for one dp rank (of one worker, or of all when workerId is null), ascending. */
export function blocksOf(index: { dump(): RouterEventValue[] }, workerId: bigint | null, dpRank: number): bigint[] {
  return sortU64(
    index
      .dump()
      .filter((e) => (workerId === null || e.workerId === workerId) && e.event.dpRank === dpRank)
      .flatMap((e) => (e.event.data.type === 'stored' ? e.event.data.blocks.map((b) => b.blockHash) : [])),
  )
}

/** A comparable form of an index dump: per (worker, rank), the sorted block hashes it holds. */
export function holdings(
  dump: { workerId: bigint; event: { dpRank: number; data: { type: string; blocks?: { blockHash: bigint }[] } } }[],
): Record<string, string[]> {
  const out: Record<string, Set<bigint>> = {}
  for (const ev of dump) {
    if (ev.event.data.type !== 'stored') continue
    const key = `${ev.workerId}/${ev.event.dpRank}`
    out[key] ??= new Set()
    const set = out[key]
    for (const b of ev.event.data.blocks!) set.add(b.blockHash)
  }
  const sorted: Record<string, string[]> = {}
  for (const [k, set] of Object.entries(out)) sorted[k] = sortU64(set).map(String)
  return sorted
}

export function assertHoldingsEqual(
  t: ExecutionContext,
  got: Record<string, string[]>,
  want: Record<string, string[]>,
  what: string,
): void {
  const keys = new Set([...Object.keys(got), ...Object.keys(want)])
  let blocks = 0
  for (const k of keys) {
    t.deepEqual(got[k] ?? [], want[k] ?? [], `${what}: ${k}`)
    blocks += (want[k] ?? []).length
  }
  t.log(`${what}: ${keys.size} worker ranks, ${blocks} blocks`)
}
