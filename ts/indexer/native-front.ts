// The indexer's native HTTP front: crates/node/src/http_front.rs serves HTTP/1.1 (hyper on a thread of
// its own: the sockets, the parsing, the bodies up to their limit) and hands the requests over in batches,
// one callback per batch; each is answered here by the same request → reply function as the node:http
// front's (IndexerService.respond), and the answers go back eight per call (one call per answer that
// waited for a promise). The index stays on this thread.
import type { AddressInfo } from 'node:net'
import { implementation, raw } from '../core/native.js'

/** A request as an HTTP front reads it: the target as sent (path and query), the body's bytes. */
export interface FrontRequest {
  method: string
  url: string
  contentType: string | undefined
  body: Buffer
  /** The body went over the route's limit (and `body` is empty): the answer is the 413. */
  tooLarge: boolean
}

/** One HTTP answer: status, content type (null: none), extra headers and body. */
export interface FrontReply {
  status: number
  contentType: string | null
  body: string
  headers?: Record<string, string>
}

interface FrontHandle {
  readonly address: string
  readonly family: string
  readonly port: number
  respond(meta: Uint32Array, data: Buffer): void
  close(): void
  join(): void
}

type FrontClass = new (
  host: string,
  port: number,
  queryBodyLimit: number,
  bodyLimit: number,
  onBatch: (kind: number, meta: Uint32Array, data: Buffer) => void,
) => FrontHandle

/** The native front's class when the native core is loaded; null with the TypeScript fallback. */
export const NativeFrontClass: FrontClass | null =
  implementation === 'native' ? ((raw as unknown as { IndexerHttpFront?: FrontClass }).IndexerHttpFront ?? null) : null

const KIND_CLOSED = 1
const TOO_LARGE = 1
const HAS_CONTENT_TYPE = 2
const CONTENT_TYPE_JSON = 4
const METHOD_SHIFT = 3
const METHODS = [null, 'GET', 'POST', 'HEAD'] as const
const META_WORDS = 6
const ANSWER_WORDS = 4
/** A batch's answers go back this many at a time: the server writes them while the rest are computed. */
const FLUSH_EVERY = 8
const JSON_HEAD = 'content-type: application/json\r\n'

/** An answer's head lines (ASCII: content types and header values are the service's own). */
function headOf(r: FrontReply): string {
  let h = r.contentType === null ? '' : r.contentType === 'application/json' ? JSON_HEAD : `content-type: ${r.contentType}\r\n`
  if (r.headers !== undefined) for (const [k, v] of Object.entries(r.headers)) h += `${k}: ${v}\r\n`
  return h
}

export interface NativeFrontOptions {
  host: string
  port: number
  queryBodyLimit: number
  bodyLimit: number
  /** The request → reply function (sync, or a promise). */
  handler: (req: FrontRequest) => FrontReply | Promise<FrontReply>
  /** The answer when the handler throws or rejects (a 500 with the message). */
  failure: (e: unknown) => FrontReply
}

/** A running native front. */
export class NativeFront {
  readonly #handle: FrontHandle
  readonly #handler: NativeFrontOptions['handler']
  readonly #failure: NativeFrontOptions['failure']
  #closed: Promise<void> | null = null
  #onClosed: (() => void) | null = null

  /** Binds and serves (throws when the address cannot be bound); `address` says where. */
  constructor(o: NativeFrontOptions) {
    if (NativeFrontClass === null) throw new Error('the native HTTP front needs the native core, which is not loaded')
    this.#handler = o.handler
    this.#failure = o.failure
    this.#handle = new NativeFrontClass(o.host, o.port, o.queryBodyLimit, o.bodyLimit, (kind, meta, data) => this.#batch(kind, meta, data))
  }

  get address(): AddressInfo {
    return { address: this.#handle.address, family: this.#handle.family, port: this.#handle.port }
  }

  /** Stops accepting, lets the requests in flight finish, then ends the server's thread. */
  close(): Promise<void> {
    if (this.#closed === null) {
      this.#closed = new Promise<void>((resolve) => {
        this.#onClosed = resolve
      })
      this.#handle.close()
    }
    return this.#closed
  }

  /** The answers' bytes (head lines, then body, one answer after the other), reused from batch to batch. */
  #out = Buffer.allocUnsafeSlow(1 << 16)
  #outLen = 0

  /** Appends an answer to #out; its head and body byte lengths go to meta at word `at`. */
  #put(r: FrontReply, meta: Uint32Array, at: number): void {
    const head = headOf(r)
    const body = r.body
    // the head is ASCII; a body's UTF-8 takes at most 3 bytes per UTF-16 unit
    const need = this.#outLen + head.length + 3 * body.length
    if (need > this.#out.length) {
      const grown = Buffer.allocUnsafeSlow(Math.max(need, 2 * this.#out.length))
      this.#out.copy(grown, 0, 0, this.#outLen)
      this.#out = grown
    }
    if (head.length > 0) this.#out.write(head, this.#outLen, 'latin1')
    this.#outLen += head.length
    const n = body.length === 0 ? 0 : this.#out.write(body, this.#outLen)
    this.#outLen += n
    meta[at + 2] = head.length
    meta[at + 3] = n
  }

  #batch(kind: number, meta: Uint32Array, data: Buffer): void {
    if (kind === KIND_CLOSED) {
      this.#handle.join()
      this.#onClosed?.()
      return
    }
    const n = meta.length / META_WORDS
    const out = new Uint32Array(n * ANSWER_WORDS)
    let answered = 0
    let flushed = 0
    let start = 0
    let i = 0
    this.#outLen = 0
    try {
      for (; i < n; i++) {
        const o = i * META_WORDS
        const id = meta[o]!
        const flags = meta[o + 1]!
        const mEnd = meta[o + 2]!
        const tEnd = meta[o + 3]!
        const cEnd = meta[o + 4]!
        const bEnd = meta[o + 5]!
        const req: FrontRequest = {
          method: METHODS[(flags >>> METHOD_SHIFT) & 3] ?? data.toString('latin1', start, mEnd),
          url: data.toString('latin1', mEnd, tEnd),
          contentType:
            (flags & CONTENT_TYPE_JSON) !== 0
              ? 'application/json'
              : (flags & HAS_CONTENT_TYPE) !== 0
                ? data.toString('latin1', tEnd, cEnd)
                : undefined,
          body: data.subarray(cEnd, bEnd),
          tooLarge: (flags & TOO_LARGE) !== 0,
        }
        start = bEnd
        let r: FrontReply | Promise<FrontReply>
        try {
          r = this.#handler(req)
        } catch (e) {
          r = this.#failure(e)
        }
        if (r instanceof Promise) {
          r.then(
            (x) => this.#one(id, x),
            (e) => this.#one(id, this.#failure(e)),
          )
          continue
        }
        const at = answered * ANSWER_WORDS
        out[at] = id
        out[at + 1] = r.status
        this.#put(r, out, at)
        answered++
        if (answered - flushed === FLUSH_EVERY && i + 1 < n) {
          this.#send(out.subarray(flushed * ANSWER_WORDS, answered * ANSWER_WORDS))
          flushed = answered
          this.#outLen = 0
        }
      }
    } catch (e) {
      // a fault outside the handler (the batch itself): every request not yet answered gets the 500
      const fail = this.#failure(e)
      for (; i < n; i++) {
        const at = answered * ANSWER_WORDS
        out[at] = meta[i * META_WORDS]!
        out[at + 1] = fail.status
        this.#put(fail, out, at)
        answered++
      }
    }
    if (answered > flushed) this.#send(out.subarray(flushed * ANSWER_WORDS, answered * ANSWER_WORDS))
  }

  /** Hands answers to the server; nothing escapes this callback (an exception there would end the process). */
  #send(meta: Uint32Array): void {
    try {
      this.#handle.respond(meta, this.#out)
    } catch (e) {
      this.#failure(e)
    }
  }

  /** One answer that waited for a promise. */
  #one(id: number, r: FrontReply): void {
    const meta = new Uint32Array(ANSWER_WORDS)
    meta[0] = id
    this.#outLen = 0
    try {
      meta[1] = r.status
      this.#put(r, meta, 0)
    } catch (e) {
      const fail = this.#failure(e)
      this.#outLen = 0
      meta[1] = fail.status
      this.#put(fail, meta, 0)
    }
    this.#send(meta)
  }
}
