// What every command shares: the exit-code contract, option parsers that fail with commander's "invalid
// argument" (so a bad flag or environment variable is one line naming it, exit 2), the logging options,
// and the wait for SIGINT/SIGTERM.
import { type Command, InvalidArgumentError, Option } from 'commander'
import { DiscoveryError } from '../transport/discovery/backend.js'
import { NatsConnectError } from '../transport/nats.js'
import { createCliLogger, LOG_FORMATS, LOG_LEVELS, type CliLogger, type LogFormat, type LogLevel } from './log.js'

/** Exit statuses: 0 success, 1 runtime failure, 2 bad usage or configuration. */
export const EXIT_OK = 0
export const EXIT_FAILURE = 1
export const EXIT_USAGE = 2

/** Bad usage or configuration: reported in one line, exit status 2. */
export class UsageError extends Error {
  override name = 'UsageError'
}

/**
 * Runs a step that validates configuration or connects (creating a publisher, opening sockets): the
 * library's TypeError/RangeError (a bad option, named), NatsConnectError (a server that cannot be
 * reached) and DiscoveryError (a discovery store that cannot be opened, e.g. etcd not reachable within its
 * start-up timeout) become UsageErrors; anything else stays a runtime failure, unless `allErrors` (a step that
 * only opens sockets, where any failure is the address's: in use, not permitted...).
 */
export async function configuring<T>(what: string, step: () => Promise<T>, allErrors = false): Promise<T> {
  try {
    return await step()
  } catch (err) {
    if (
      err instanceof TypeError ||
      err instanceof RangeError ||
      err instanceof NatsConnectError ||
      err instanceof DiscoveryError ||
      (allErrors && err instanceof Error)
    )
      throw new UsageError(`${what}: ${oneLine(err.message)}`, { cause: err })
    throw err
  }
}

export function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ').trim()
}

// ---------------------------------------------------------------------------------------------------
// option parsers (commander calls them for flag and environment values alike)

export function intArg(min: number, max: number): (v: string) => number {
  return (v) => {
    const s = v.trim()
    if (!/^\d+$/.test(s) || Number(s) < min || Number(s) > max)
      throw new InvalidArgumentError(`Expected a whole number within ${min}..${max}.`)
    return Number(s)
  }
}

/** Seconds, fractions allowed (`0.5`), within min..max. */
export function secondsArg(min: number, max: number): (v: string) => number {
  return (v) => {
    const s = v.trim()
    const n = Number(s)
    if (!/^\d+(\.\d+)?$/.test(s) || n < min || n > max) throw new InvalidArgumentError(`Expected seconds within ${min}..${max}.`)
    return n
  }
}

const U64_MAX = (1n << 64n) - 1n

/** A u64 in decimal; kept a bigint (never a JS number). */
export function u64Arg(v: string): bigint {
  const s = v.trim()
  if (!/^\d{1,20}$/.test(s) || BigInt(s) > U64_MAX) throw new InvalidArgumentError('Expected an unsigned 64-bit integer in decimal.')
  return BigInt(s)
}

const ZMQ_ENDPOINT = /^(tcp:\/\/[^\s:/]+:\d{1,5}|tcp:\/\/\*:\d{1,5}|ipc:\/\/\S+|inproc:\/\/\S+)$/u

/** ZeroMQ endpoints, repeatable and comma-separated (`tcp://host:port`, `ipc://path`). */
export function endpointsArg(v: string, previous: string[] | undefined): string[] {
  const list = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
  if (list.length === 0) throw new InvalidArgumentError('Expected a ZeroMQ endpoint such as tcp://127.0.0.1:5557.')
  for (const e of list) {
    if (!ZMQ_ENDPOINT.test(e) || (e.startsWith('tcp://') && Number(e.slice(e.lastIndexOf(':') + 1)) > 65535))
      throw new InvalidArgumentError(`${JSON.stringify(e)} is not a ZeroMQ endpoint: expected tcp://host:port or ipc://path.`)
  }
  return [...(previous ?? []), ...list]
}

/** A Dynamo namespace, component or endpoint name (SPEC 5: no whitespace, '*' or '>'). */
export function nameArg(v: string): string {
  if (v.length === 0 || /[\s*>]/u.test(v)) throw new InvalidArgumentError("Expected a non-empty name without whitespace, '*' or '>'.")
  return v
}

export function nonEmptyArg(v: string): string {
  if (v.trim() === '') throw new InvalidArgumentError('Expected a non-empty value.')
  return v
}

/** An option whose value may also come from an environment variable (the flag wins). */
export function opt(flags: string, description: string, env: string | null, parse?: (v: string, prev: never) => unknown): Option {
  const o = new Option(flags, description)
  if (env) o.env(env)
  if (parse) o.argParser(parse as (v: string, prev: unknown) => unknown)
  return o
}

/** An option limited to `choices`. */
export function choiceOpt(flags: string, description: string, env: string, choices: readonly string[], dflt?: string): Option {
  const o = new Option(flags, description).env(env).choices(choices)
  if (dflt !== undefined) o.default(dflt)
  return o
}

const TRUE = new Set(['1', 'true', 'yes', 'on'])
const FALSE = new Set(['0', 'false', 'no', 'off', ''])

/**
 * A boolean flag with an environment variable read as 1/true/yes/on or 0/false/no/off (commander would
 * take any value, "false" included, as true). Read it with {@link flagValue}.
 */
export function flagOpt(flags: string, description: string, env: string): Option {
  return new Option(flags, `${description} (env: ${env}=1)`)
}

export function flagValue(cmd: Command, key: string, env: string): boolean {
  if (cmd.getOptionValueSource(key) === 'cli') return cmd.getOptionValue(key) === true
  const raw = process.env[env]
  if (raw === undefined) return false
  const v = raw.trim().toLowerCase()
  if (TRUE.has(v)) return true
  if (FALSE.has(v)) return false
  throw new UsageError(`environment variable ${env}=${JSON.stringify(raw)} is not a boolean (expected 1/true/yes/on or 0/false/no/off)`)
}

/** True when the value was given on the command line (not taken from the environment or a default). */
export function fromCli(cmd: Command, key: string): boolean {
  return cmd.getOptionValueSource(key) === 'cli'
}

// ---------------------------------------------------------------------------------------------------
// logging options, on every command

export interface LogOptions {
  logLevel: LogLevel
  logFormat: LogFormat
}

export function addLogOptions(cmd: Command, level: LogLevel = 'info'): Command {
  return cmd
    .addOption(choiceOpt('--log-level <level>', 'log level (logs go to stderr)', 'DYNAMO_KV_LOG_LEVEL', LOG_LEVELS, level))
    .addOption(
      choiceOpt(
        '--log-format <format>',
        'pretty lines, JSON lines, or auto: pretty on a terminal',
        'DYNAMO_KV_LOG_FORMAT',
        LOG_FORMATS,
        'auto',
      ),
    )
}

export function loggerFrom(o: LogOptions, component: string): CliLogger {
  return createCliLogger({ level: o.logLevel, format: o.logFormat, name: `dynamo-kv ${component}` })
}

// ---------------------------------------------------------------------------------------------------
// lifecycle

/**
 * Resolves with the first SIGINT or SIGTERM (or when `stop` is called). A second signal while the
 * command is still shutting down exits at once with status 1.
 */
export function untilSignal(log: CliLogger): { stopped: Promise<string>; stop: (why: string) => void; dispose: () => void } {
  let resolve!: (why: string) => void
  const stopped = new Promise<string>((r) => {
    resolve = r
  })
  let signalled = false
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) {
      log.error({ signal: sig }, 'second signal while shutting down: exiting now')
      process.exit(EXIT_FAILURE)
    }
    signalled = true
    resolve(sig)
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  return {
    stopped,
    stop: (why) => resolve(why),
    dispose: () => {
      process.off('SIGINT', onSignal)
      process.off('SIGTERM', onSignal)
    },
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** JSON with bigints as decimal strings (u64 values never pass through a JS number). */
export function toJson(v: unknown, space?: number): string {
  return JSON.stringify(v, (_k, x) => (typeof x === 'bigint' ? x.toString() : x), space)
}
