// `dynamo-kv inspect`, running: a SUB socket per endpoint, each message printed as one JSON line. Loaded
// only when the command runs.
import type { Command } from 'commander'
import type { Subscriber } from 'zeromq'
import { type ConvertedEvent, decodeEngineBatch, KvDecodeError, peekBatch } from '../core/api.js'
import { loadZeromq } from '../transport/zeromq.js'
import { configuring, EXIT_FAILURE, EXIT_OK, flagValue, loggerFrom, toJson, untilSignal, UsageError } from './common.js'
import type { InspectFlags } from './inspect.js'
import { EngineWatchdog } from './watchdog.js'

/** One converted event in the shape of the project's fixtures: snake_case, u64 as decimal strings. */
export function eventJson(e: ConvertedEvent): Record<string, unknown> {
  switch (e.type) {
    case 'stored':
      return {
        type: 'stored',
        parent_hash: e.parentHash === null ? null : e.parentHash.toString(),
        blocks: e.blocks.map((b) => ({
          block_hash: b.blockHash.toString(),
          tokens_hash: b.tokensHash.toString(),
          mm_extra_info:
            b.mmExtraInfo === null
              ? null
              : { mm_objects: b.mmExtraInfo.mmObjects.map((m) => ({ mm_hash: m.mmHash.toString(), offsets: m.offsets })) },
        })),
      }
    case 'removed':
      return { type: 'removed', block_hashes: e.blockHashes.map((h) => h.toString()) }
    case 'cleared':
      return { type: 'cleared' }
  }
}

/** One engine payload as the line inspect prints for it (without endpoint, topic and seq). */
export function batchJson(payload: Uint8Array, kvBlockSize: number): Record<string, unknown> {
  let decoded: ReturnType<typeof decodeEngineBatch>
  try {
    decoded = decodeEngineBatch(payload, kvBlockSize)
  } catch (err) {
    if (err instanceof KvDecodeError) return { error: 'malformed', bytes: payload.length }
    throw err
  }
  const rejected = Object.fromEntries(Object.entries(decoded.rejected).filter(([, n]) => n > 0))
  const publisherId = peekBatch(payload)?.publisherId
  return {
    dp_rank: decoded.dpRank,
    ...(publisherId ? { publisher_id: Buffer.from(publisherId).toString('hex') } : {}),
    events: decoded.events.map(eventJson),
    rejected,
  }
}

export async function run(cmd: Command): Promise<number> {
  const o = cmd.opts<InspectFlags>()
  const log = loggerFrom(o, 'inspect')
  const endpoints = o.engineEndpoint ?? []
  if (endpoints.length === 0)
    throw new UsageError("--engine-endpoint (or DYNAMO_KV_ENGINE_ENDPOINT) is required: the engine's KV-event endpoint")
  if (o.blockSize === undefined)
    throw new UsageError("--block-size (or DYNAMO_KV_BLOCK_SIZE) is required: the engine's tokens per KV block (vLLM's --block-size)")
  const blockSize = o.blockSize
  const bind = flagValue(cmd, 'bind', 'DYNAMO_KV_BIND')
  const zmq = await configuring('zeromq', () => loadZeromq())

  const sockets: { endpoint: string; sock: Subscriber }[] = []
  const closeAll = () => {
    for (const s of sockets) s.sock.close()
  }
  await configuring('engine endpoint', async () => {
    try {
      for (const endpoint of endpoints) {
        const sock = new zmq.Subscriber()
        sockets.push({ endpoint, sock })
        sock.subscribe(o.topic)
        if (bind) {
          await sock.bind(endpoint)
          sockets.at(-1)!.endpoint = sock.lastEndpoint ?? endpoint
        } else sock.connect(endpoint)
      }
    } catch (err) {
      closeAll()
      throw err instanceof Error && !(err instanceof TypeError) ? new RangeError(err.message) : err
    }
  })

  const signals = untilSignal(log)
  let received = 0
  let printed = 0
  let done = false
  void signals.stopped.then(() => {
    done = true
  })
  const last = new Map<string, bigint>()
  const out = (line: Record<string, unknown>) => process.stdout.write(`${toJson(line)}\n`)
  const watchdog = new EngineWatchdog({
    received: () => received,
    endpoints: () => sockets.map((s) => s.endpoint),
    silenceMs: o.engineSilence * 1000,
    logger: log,
  })
  const timer = o.timeout === undefined ? null : setTimeout(() => signals.stop('timeout'), o.timeout * 1000)

  const read = async ({ endpoint, sock }: { endpoint: string; sock: Subscriber }) => {
    for (;;) {
      let frames: Buffer[]
      try {
        frames = await sock.receive()
      } catch (err) {
        if (sock.closed) return
        log.warn({ endpoint, err: String(err) }, 'receive failed')
        continue
      }
      if (done) return
      received++
      if (frames.length !== 3) {
        out({ endpoint, error: 'frames', frames: frames.length })
        continue
      }
      const topic = frames[0]!.toString('utf8')
      if (frames[1]!.length !== 8) {
        out({ endpoint, topic, error: 'seq_length', bytes: frames[1]!.length })
        continue
      }
      const seq = frames[1]!.readBigUInt64BE()
      const key = `${endpoint}\0${topic}`
      const prev = last.get(key)
      if (prev !== undefined && seq > prev + 1n) out({ endpoint, topic, gap: { expected: prev + 1n, got: seq, missing: seq - prev - 1n } })
      else if (prev !== undefined && seq <= prev) out({ endpoint, topic, restart: { last: prev, got: seq } })
      last.set(key, seq)
      out({ endpoint, topic, seq, ...batchJson(frames[2]!, blockSize) })
      printed++
      if (o.count !== undefined && printed >= o.count) {
        done = true
        signals.stop('count')
      }
    }
  }
  const readers = sockets.map((s) => read(s))
  log.info({ endpoints: sockets.map((s) => s.endpoint), topic: o.topic, bind }, 'listening: stop with SIGINT or SIGTERM')

  const why = await signals.stopped
  if (timer) clearTimeout(timer)
  watchdog.stop()
  closeAll()
  await Promise.allSettled(readers)
  signals.dispose()
  if (why === 'timeout' && o.count !== undefined && printed < o.count) {
    log.error({ printed, count: o.count, timeoutSeconds: o.timeout }, `only ${printed} of ${o.count} engine messages within ${o.timeout} s`)
    return EXIT_FAILURE
  }
  log.debug({ printed, why }, 'stopped')
  return EXIT_OK
}
