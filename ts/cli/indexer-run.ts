// `dynamo-kv indexer`, running: the HTTP service until SIGINT/SIGTERM, then close the listeners and exit 0.
import type { Command } from 'commander'
import { readFileSync } from 'node:fs'
import { parseJson } from '../indexer/json.js'
import { IndexerService, parseRegister, resolveHttpFront } from '../indexer/service.js'
import { EXIT_OK, loggerFrom, oneLine, untilSignal, UsageError } from './common.js'
import type { IndexerFlags } from './indexer.js'

/** The entries of an engines file: each a /register body, checked as the route checks it. */
export function readEngines(file: string): ReturnType<typeof parseRegister>[] {
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (e) {
    throw new UsageError(`--engines ${file}: ${e instanceof Error ? e.message : String(e)}`)
  }
  let root: ReturnType<typeof parseJson>
  try {
    root = parseJson(text)
  } catch (e) {
    throw new UsageError(`--engines ${file}: ${(e as Error).message}`)
  }
  if (root.t !== 'arr') throw new UsageError(`--engines ${file}: expected a JSON array of /register bodies`)
  return root.items.map((item, i) => {
    try {
      // each entry is checked as the route checks a body (positions are within the entry)
      return parseRegister(entryText(item))
    } catch (e) {
      throw new UsageError(`--engines ${file}: entry ${i}: ${oneLine((e as Error).message)}`)
    }
  })
}

function entryText(v: ReturnType<typeof parseJson>): string {
  switch (v.t) {
    case 'null':
      return 'null'
    case 'bool':
      return String(v.v)
    case 'num':
      return v.raw
    case 'str':
      return JSON.stringify(v.v)
    case 'arr':
      return `[${v.items.map(entryText).join(',')}]`
    case 'obj':
      return `{${v.entries.map(([k, x]) => `${JSON.stringify(k)}:${entryText(x)}`).join(',')}}`
  }
}

export async function run(cmd: Command): Promise<number> {
  const o = cmd.opts<IndexerFlags>()
  const log = loggerFrom(o, 'indexer')
  const engines = o.engines !== undefined ? readEngines(o.engines) : []
  let http: ReturnType<typeof resolveHttpFront>
  try {
    http = resolveHttpFront(o.http)
  } catch (e) {
    throw new UsageError(`--http ${o.http ?? process.env.DYNAMO_KV_INDEXER_HTTP}: ${oneLine((e as Error).message)}`)
  }
  const svc = new IndexerService({
    http,
    logger: log,
    queryBodyLimit: o.queryBodyLimit,
    bodyLimit: o.bodyLimit,
    engineSilenceMs: o.engineSilence * 1000,
    testEndpoints: o.testEndpoints === true,
  })
  const signals = untilSignal(log)
  try {
    for (const [i, e] of engines.entries()) {
      try {
        await svc.register(e)
      } catch (err) {
        throw new UsageError(`--engines ${o.engines}: entry ${i}: ${oneLine((err as Error).message)}`)
      }
    }
    const peers = (o.peers ?? '')
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean)
    for (const peer of peers) {
      if (!/^https?:\/\/\S+$/.test(peer)) throw new UsageError(`--peers: ${JSON.stringify(peer)} is not an http:// or https:// URL`)
      svc.addPeer(peer)
    }
    // like Dynamo's --peers: the first peer that answers gives its index; listeners are not recovered
    for (const peer of peers) {
      try {
        const events = await svc.recoverFrom(peer)
        log.info({ peer, events }, 'index recovered from a peer')
        break
      } catch (err) {
        log.warn({ peer, err: oneLine((err as Error).message) }, 'peer recovery failed; trying the next peer')
      }
    }
    let address: { address: string; port: number }
    try {
      address = await svc.listen(o.port, o.host)
    } catch (err) {
      throw new UsageError(`--host ${o.host} --port ${o.port}: ${oneLine((err as Error).message)}`)
    }
    log.info({ host: address.address, port: address.port, engines: engines.length, http }, 'indexer listening')
    const why = await signals.stopped
    log.info({ signal: why }, 'stopping')
  } finally {
    await svc.close()
    signals.dispose()
  }
  log.info({}, 'stopped')
  return EXIT_OK
}
