// Tells the operator when the engine says nothing: once when no message has arrived `silenceMs` after
// start (the usual misconfiguration: a wrong endpoint, or KV events not enabled in the engine), and once
// per quiet period when messages stop for `silenceMs` (an idle engine also goes quiet, so this is a
// warning, not an error). Reads a counter of received messages; owns only a timer.
import type { Logger } from '../util/log.js'

export interface EngineWatchdogOptions {
  /** Messages received so far (any monotonic count). */
  received: () => bigint | number
  /** The endpoints listened to, named in the warnings. */
  endpoints: () => string[]
  silenceMs: number
  logger: Logger
  /** What the endpoints belong to, for the messages (default 'engine'). */
  what?: string
}

export class EngineWatchdog {
  readonly #opts: EngineWatchdogOptions
  readonly #timer: NodeJS.Timeout | null
  #last: bigint
  #lastChange = Date.now()
  #ever = false
  #warnedStart = false
  #quiet = false

  constructor(opts: EngineWatchdogOptions) {
    this.#opts = opts
    this.#last = BigInt(opts.received())
    this.#timer = opts.silenceMs > 0 ? setInterval(() => this.check(), Math.min(500, Math.max(50, opts.silenceMs / 10))) : null
    this.#timer?.unref()
  }

  /** Compares the counter with the last look; logs when a silence starts or ends. */
  check(): void {
    const now = Date.now()
    const n = BigInt(this.#opts.received())
    const what = this.#opts.what ?? 'engine'
    const endpoints = this.#opts.endpoints()
    if (n !== this.#last) {
      if (this.#quiet) this.#opts.logger.info({ endpoints }, `the ${what} is sending again`)
      else if (!this.#ever && this.#warnedStart) this.#opts.logger.info({ endpoints }, `first message from the ${what}`)
      this.#last = n
      this.#lastChange = now
      this.#ever = true
      this.#quiet = false
      return
    }
    if (now - this.#lastChange < this.#opts.silenceMs) return
    const silentS = this.#opts.silenceMs / 1000
    if (!this.#ever && !this.#warnedStart) {
      this.#warnedStart = true
      this.#opts.logger.warn(
        { endpoints, silentSeconds: silentS },
        `no message from the ${what} at ${endpoints.join(', ')} after ${silentS} s: is it running, with KV events enabled and publishing on this endpoint?`,
      )
    } else if (this.#ever && !this.#quiet) {
      this.#quiet = true
      this.#opts.logger.warn(
        { endpoints, silentSeconds: silentS },
        `the ${what} at ${endpoints.join(', ')} went quiet: no message for ${silentS} s (an idle engine sends nothing; a stopped one neither)`,
      )
    }
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer)
  }
}
