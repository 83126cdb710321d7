// `dynamo-kv inspect`: listens to an engine's ZeroMQ KV-event stream and prints every message as one JSON
// line on stdout (u64 values as decimal strings), decoded into the router events it becomes, with its
// rejections; sequence gaps and restarts get a line of their own. A passive listener: it never asks the
// engine to replay, so what it prints is what the live socket carried.
import type { Command } from 'commander'
import type { Subscriber } from 'zeromq'
import { type ConvertedEvent, decodeEngineBatch, KvDecodeError, peekBatch } from '../core/api.js'
import { loadZeromq } from '../transport/zeromq.js'
import type { CliCommand } from './commands.js'
import {
  addLogOptions,
  configuring,
  EXIT_FAILURE,
  EXIT_OK,
  flagValue,
  intArg,
  type LogOptions,
  loggerFrom,
  opt,
  secondsArg,
  toJson,
  untilSignal,
  UsageError,
} from './common.js'
import { addEngineOptions } from './publish.js'
import { EngineWatchdog } from './watchdog.js'

interface InspectFlags extends LogOptions {
  engineEndpoint?: string[]
  topic: string
  engineSilence: number
  blockSize?: number
  count?: number
  timeout?: number
}

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

function define(program: Command): Command {
  const cmd = program
    .command('inspect')
    .summary("print an engine's ZeroMQ KV events as JSON lines, decoded, with rejections and seq gaps")
    .description(
      "Connects to an engine's ZeroMQ KV-event endpoint and prints every message as one JSON line on stdout, decoded into " +
        'the Dynamo router events it becomes; logs go to stderr. Every option can also be set by the environment variable shown.',
    )
  addEngineOptions(cmd)
    .addOption(
      opt(
        '--block-size <tokens>',
        "tokens per KV block: must be the engine's (the block hashes depend on it)",
        'DYNAMO_KV_BLOCK_SIZE',
        intArg(1, 65_536),
      ),
    )
    .addOption(opt('--count <n>', 'stop after this many engine messages', 'DYNAMO_KV_COUNT', intArg(1, Number.MAX_SAFE_INTEGER)))
    .addOption(
      opt(
        '--timeout <seconds>',
        'stop after this long (with --count: exit 1 if fewer messages came)',
        'DYNAMO_KV_TIMEOUT',
        secondsArg(0.001, 31_536_000),
      ),
    )
  addLogOptions(cmd)
  cmd.addHelpText(
    'after',
    '\nOutput lines (u64 values as decimal strings):\n' +
      '  {"endpoint","topic","seq","dp_rank","events":[...],"rejected":{"<reason>":n}}   a batch, decoded\n' +
      '  {"endpoint","topic","seq","error":"malformed","bytes":n}   a payload that is not a batch\n' +
      '  {"endpoint","topic","gap":{"expected","got","missing"}}   seqs that never arrived\n' +
      '  {"endpoint","topic","restart":{"last","got"}}   the seq went back (an engine restart)\n' +
      '  {"endpoint","error":"frames"|"seq_length",...}   a message that is not [topic, seq, payload]\n' +
      '\nExample:\n  dynamo-kv inspect --engine-endpoint tcp://127.0.0.1:5557 --block-size 16 --count 10',
  )
  return cmd
}

async function run(cmd: Command): Promise<number> {
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

export const inspectCommand: CliCommand = { name: 'inspect', define, run }
