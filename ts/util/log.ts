// Logging: any pino-compatible logger (pino itself, or anything with the four methods below). The default
// is pino on stderr (stdout may carry a CLI's data) at DYNAMO_KV_LOG_LEVEL, default 'info'.
import { pino } from 'pino'

export interface Logger {
  error(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  info(obj: object, msg?: string): void
  debug(obj: object, msg?: string): void
}

/** A logger that drops everything (for tests, benchmarks and the demo's inner parts). */
export const silentLogger: Logger = { error() {}, warn() {}, info() {}, debug() {} }

let defaultLogger: Logger | null = null

export function getDefaultLogger(): Logger {
  defaultLogger ??= pino({ name: 'dynamo-kv', level: process.env.DYNAMO_KV_LOG_LEVEL || 'info' }, pino.destination(2))
  return defaultLogger
}

export function loggerOption(v: unknown): Logger {
  if (v === undefined) return getDefaultLogger()
  const l = v as Logger
  if (typeof l !== 'object' || l === null || !['error', 'warn', 'info', 'debug'].every((m) => typeof (l as never)[m] === 'function'))
    throw new TypeError('logger must be a pino-compatible logger (with error, warn, info and debug methods)')
  return l
}

/**
 * Logs a recurring condition at most once per interval per key, with how many occurrences were not
 * logged, so bad input or a flapping server cannot flood the log.
 */
export class RateLimitedLog {
  readonly #last = new Map<string, { at: number; suppressed: number }>()
  constructor(
    readonly logger: Logger,
    readonly intervalMs = 10_000,
  ) {}

  log(level: 'error' | 'warn' | 'info', key: string, obj: object, msg: string): void {
    const now = Date.now()
    const seen = this.#last.get(key)
    if (seen && now - seen.at < this.intervalMs) {
      seen.suppressed++
      return
    }
    const suppressed = seen?.suppressed ?? 0
    this.#last.set(key, { at: now, suppressed: 0 })
    this.logger[level](suppressed > 0 ? { ...obj, suppressed } : obj, msg)
  }
}
