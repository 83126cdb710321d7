// Helpers for the ZeroMQ tests: a consumer that is a real Ingestor (with its local indexer) recording what it
// emitted, the index's blocks per dp rank, waiting for a source to catch up with engines, free port ranges.
import { createServer } from 'node:net'
import * as kv from '../../ts/index.js'
import type { EngineSimulator } from '../../ts/sim/engine.js'
import type { BatchConsumer, ZmqSource } from '../../ts/transport/sources/zmq.js'
import { sortU64 } from './fixtures.js'
import { blocksOf, waitFor } from './publishing.js'

export interface Emitted {
  dpRank: number
  firstEventId: bigint
  count: number
}

/** A BatchConsumer over a real Ingestor; `emitted` lists every result that emitted events, in order. */
export class IngestorConsumer implements BatchConsumer {
  readonly ingestor: kv.Ingestor
  readonly emitted: Emitted[] = []
  readonly resets: number[] = []
  /** While set, ingest() waits for it (a slow consumer). */
  gate: Promise<void> | null = null
  inFlight = 0

  constructor(opts: Partial<kv.IngestorOptions> = {}) {
    this.ingestor = new kv.Ingestor({ kvBlockSize: 16, workerId: 7n, localIndexer: { bufferSize: 64 }, ...opts })
  }

  async ingest(payload: Uint8Array): Promise<void> {
    this.inFlight++
    try {
      if (this.gate) await this.gate
      this.#record(this.ingestor.ingest(payload))
    } finally {
      this.inFlight--
    }
  }

  async resetRank(dpRank: number): Promise<void> {
    this.resets.push(dpRank)
    this.#record(this.ingestor.cleared(dpRank))
  }

  #record(r: kv.IngestResult): void {
    if (r.firstEventId !== null && r.dpRank !== null)
      this.emitted.push({ dpRank: r.dpRank, firstEventId: r.firstEventId, count: r.payloads.length })
  }

  /** Block hashes the local index holds for the dp rank. */
  blocks(dpRank = 0): bigint[] {
    return blocksOf(this.ingestor.localIndexer!, null, dpRank)
  }
}

/** Ascending u64 order (the fixtures' helper, under the name these tests use). */
export const sorted = sortU64

/** Whether the source has applied everything `sim` published (its tracker is idle at the last seq). */
export function caughtUp(source: ZmqSource, sim: EngineSimulator): boolean {
  const last = sim.nextSeq - 1n
  const t = source.trackers().find((x) => x.dpRank === sim.dpRank && (x.endpoint === sim.endpoint || source.endpoints.length === 1))
  return t !== undefined && !t.replaying && t.lastApplied === last && t.held === 0 && source.stats().queue_depth === 0n
}

export async function waitCaughtUp(source: ZmqSource, ...sims: EngineSimulator[]): Promise<void> {
  const deadline = Date.now() + 45_000
  while (!sims.every((s) => caughtUp(source, s))) {
    if (Date.now() > deadline) throw stuck(source, sims)
    await new Promise((r) => setTimeout(r, 5))
  }
}

/**
 * Keeps the engines publishing heartbeats until the source has applied everything: a tail that ZMQ
 * dropped at a high-water mark shows only when a later message arrives (a live engine keeps publishing).
 */
export async function driveCaughtUp(source: ZmqSource, ...sims: EngineSimulator[]): Promise<void> {
  const deadline = Date.now() + 45_000
  while (!sims.every((s) => caughtUp(source, s))) {
    if (Date.now() > deadline) throw stuck(source, sims)
    for (const s of sims) await s.heartbeat()
    await new Promise((r) => setTimeout(r, 50))
  }
}

/**
 * Caught up, and the live stream too: a heartbeat is read live, so every earlier live copy of a batch a
 * replay already applied has been read (ZMQ keeps order) and counted.
 */
export async function settle(source: ZmqSource, sim: EngineSimulator): Promise<void> {
  await sim.heartbeat()
  await driveCaughtUp(source, sim)
  const last = sim.nextSeq - 1n
  await waitFor(
    () => source.trackers().some((t) => t.dpRank === sim.dpRank && t.lastLive === last) && caughtUp(source, sim),
    'the live stream to settle',
  )
}

/** An error saying where the source stood. */
function stuck(source: ZmqSource, sims: EngineSimulator[]): Error {
  const state = JSON.stringify({ trackers: source.trackers(), stats: source.stats() }, (_, v) => (typeof v === 'bigint' ? String(v) : v))
  return new Error(`timed out waiting for the source to apply seqs up to ${sims.map((s) => s.nextSeq - 1n).join(', ')}: ${state}`)
}

/**
 * ZMQ's slow joiner: a PUB drops what it sends before the subscription arrives. Sends heartbeats until
 * the source has received one from each simulator.
 */
export async function warmUp(source: ZmqSource, ...sims: EngineSimulator[]): Promise<void> {
  const deadline = Date.now() + 20_000
  for (;;) {
    const seen = source.trackers()
    if (sims.every((s) => seen.some((t) => t.dpRank === s.dpRank && t.lastLive !== null))) return
    if (Date.now() > deadline) throw new Error('no heartbeat reached the source')
    for (const s of sims) await s.heartbeat()
    await new Promise((r) => setTimeout(r, 10))
  }
}

/** n consecutive free TCP ports on 127.0.0.1 (checked free now; a race with other processes is unlikely). */
export async function freePorts(n: number): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 30_000)
    const servers: ReturnType<typeof createServer>[] = []
    let ok = true
    for (let i = 0; i < n && ok; i++) {
      const srv = createServer()
      ok = await new Promise<boolean>((resolve) => {
        srv.once('error', () => resolve(false))
        srv.listen(base + i, '127.0.0.1', () => resolve(true))
      })
      if (ok) servers.push(srv)
    }
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))))
    if (ok) return base
  }
  throw new Error('no free port range found')
}
