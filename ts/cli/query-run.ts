// `dynamo-kv query`, running: one recovery request over NATS, the chunked reply reassembled (SPEC 7:
// `Kv-Chunk: i` per chunk, then `Kv-Chunks: n`), the answer printed as JSON lines. Event bodies are
// printed as the worker sent them (no JSON.parse: u64 values stay exact).
import { createInbox, headers as natsHeaders, type Msg } from '@nats-io/transport-node'
import type { Command } from 'commander'
import { openNats } from '../transport/nats.js'
import {
  CHUNK_HEADER,
  CHUNKS_HEADER,
  encodeRecoveryRequest,
  parseRangeResponse,
  recoverySubject,
  responseArray,
  splitArray,
} from '../router/wire.js'
import { configuring, EXIT_FAILURE, EXIT_OK, loggerFrom, UsageError } from './common.js'
import { natsOptions } from './publish.js'
import type { QueryFlags } from './query.js'

export async function run(cmd: Command): Promise<number> {
  const o = cmd.opts<QueryFlags>()
  const log = loggerFrom(o, 'query')
  if (o.workerId === undefined) throw new UsageError('--worker-id (or DYNAMO_KV_WORKER_ID) is required: the worker to ask')
  if (o.start !== undefined && o.end !== undefined && o.start > o.end) throw new UsageError('--start must not be above --end')
  const { nc } = await configuring('NATS', () => openNats(natsOptions(cmd, o), process.env))
  const subject = recoverySubject(o.namespace, o.component, o.dpRank, o.workerId)
  const out = (line: string) => process.stdout.write(`${line}\n`)
  try {
    const body = await new Promise<Buffer>((resolve, reject) => {
      const chunks: Uint8Array[] = []
      let timer: NodeJS.Timeout | null = null
      const arm = () => {
        if (timer !== null) clearTimeout(timer)
        timer = setTimeout(() => done(new Error(`no reply from ${subject} within ${o.timeout} s`)), o.timeout * 1000)
      }
      const inbox = createInbox()
      const sub = nc.subscribe(inbox, {
        callback: (err, msg: Msg) => {
          if (err) return done(err)
          const h = msg.headers
          if (h?.hasError)
            return done(
              new Error(
                h.code === 503 ? `nothing serves ${subject} (no recovery endpoint for that worker rank)` : `${h.code} ${h.description}`,
              ),
            )
          const idx = h?.get(CHUNK_HEADER)
          const total = h?.get(CHUNKS_HEADER)
          if (idx) {
            // chunk 0 again: the worker started the reply over (its index changed during a dump)
            if (idx === '0') chunks.length = 0
            if (Number(idx) !== chunks.length) return done(new Error(`chunk ${idx} arrived when ${chunks.length} was due`))
            chunks.push(msg.data)
            arm()
          } else if (total) {
            if (Number(total) !== chunks.length) return done(new Error(`reply truncated: ${chunks.length} of ${total} chunks`))
            done(null, Buffer.concat(chunks))
          } else done(new Error('a reply without Kv-Chunk headers'))
        },
      })
      const done = (err: Error | null, b?: Buffer) => {
        if (timer !== null) clearTimeout(timer)
        sub.unsubscribe()
        if (err) reject(err)
        else resolve(b!)
      }
      arm()
      nc.publish(subject, encodeRecoveryRequest({ workerId: o.workerId!, startEventId: o.start ?? null, endEventId: o.end ?? null }), {
        reply: inbox,
        headers: natsHeaders(),
      })
    })
    const arr = responseArray(body)
    if (arr !== null) {
      const { items, end } = splitArray(body, arr.open)
      if (body.toString('latin1', end) !== '}') throw new Error('bad response: trailing bytes')
      for (const ev of items) out(`{"kind":"${arr.kind}","event":${ev.toString('utf8')}}`)
      out(`{"kind":"${arr.kind}","events":${items.length}}`)
      return EXIT_OK
    }
    const answer = parseRangeResponse(body)
    out(body.toString('utf8'))
    log.warn({ answer: answer.kind }, 'the worker did not return events')
    return EXIT_FAILURE
  } catch (e) {
    log.error({ err: (e as Error).message, subject }, 'query failed')
    process.stderr.write(`dynamo-kv query: ${(e as Error).message}\n`)
    return EXIT_FAILURE
  } finally {
    await nc.close()
  }
}
