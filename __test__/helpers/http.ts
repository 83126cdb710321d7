// A plain HTTP client for the indexer tests: sends exactly the headers given (fetch would add a
// content-type of its own), returns status, headers and body text.
import { request } from 'node:http'
import { type JsonNode, parseJson } from '../../ts/indexer/json.js'

export interface HttpAnswer {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: string
}

export function http(
  port: number,
  method: string,
  path: string,
  body: string | Buffer | null = null,
  headers: Record<string, string> = {},
): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, method, path, headers, agent: false }, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }))
      res.on('error', reject)
    })
    // a server that answers 413 early may close before the whole body is sent
    req.on('error', (e: NodeJS.ErrnoException) => (e.code === 'EPIPE' || e.code === 'ECONNRESET' ? undefined : reject(e)))
    if (body !== null) req.end(body)
    else req.end()
  })
}

export const postJson = (port: number, path: string, body: string) => http(port, 'POST', path, body, { 'content-type': 'application/json' })

/** Python's json.dumps of an exact node (", " and ": " separators, ASCII escapes): the capture's bodies. */
export function pyDumps(v: JsonNode): string {
  switch (v.t) {
    case 'null':
      return 'null'
    case 'bool':
      return v.v ? 'true' : 'false'
    case 'num':
      return v.raw
    case 'str':
      return JSON.stringify(v.v).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)
    case 'arr':
      return `[${v.items.map(pyDumps).join(', ')}]`
    case 'obj':
      return `{${v.entries.map(([k, x]) => `${pyDumps({ t: 'str', v: k, end: 0 })}: ${pyDumps(x)}`).join(', ')}}`
  }
}

/** A JSON value in canonical form for comparison: integers exact, object keys sorted. */
export function canonical(v: JsonNode, sortArrays = false): unknown {
  switch (v.t) {
    case 'null':
      return null
    case 'bool':
    case 'str':
      return v.v
    case 'num':
      return /^-?\d+$/.test(v.raw) ? `#${BigInt(v.raw)}` : `#${Number(v.raw)}`
    case 'arr': {
      const items = v.items.map((x) => canonical(x, sortArrays))
      return sortArrays ? items.sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1)) : items
    }
    case 'obj':
      return Object.fromEntries(
        v.entries.map(([k, x]) => [k, canonical(x, sortArrays)] as const).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
      )
  }
}

export const canonicalText = (s: string, sortArrays = false) => canonical(parseJson(s), sortArrays)
