// The command's logger: pino on stderr (stdout carries data: inspect's JSON lines, demo's summary), as
// readable lines on a terminal and as JSON lines otherwise (for log collectors). Writes are synchronous,
// so nothing is lost when the command exits.
import { writeSync } from 'node:fs'
import { styleText } from 'node:util'
import { pino } from 'pino'
import type { Logger } from '../util/log.js'

export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const
export type LogLevel = (typeof LOG_LEVELS)[number]
export const LOG_FORMATS = ['auto', 'pretty', 'json'] as const
export type LogFormat = (typeof LOG_FORMATS)[number]

export type CliLogger = Logger & { level: string }

const LEVEL_NAMES: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' }
const LEVEL_STYLE: Record<number, Parameters<typeof styleText>[0]> = {
  10: 'gray',
  20: 'gray',
  30: 'green',
  40: 'yellow',
  50: 'red',
  60: 'red',
}
const HIDDEN = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name'])

/** One pino JSON line as `12:34:56.789 WARN  message  key=value ...`. */
export function prettyLine(line: string, color: boolean): string {
  let rec: Record<string, unknown>
  try {
    rec = JSON.parse(line) as Record<string, unknown>
  } catch {
    return line
  }
  const level = typeof rec.level === 'number' ? rec.level : 30
  const time = typeof rec.time === 'number' ? new Date(rec.time).toISOString().slice(11, 23) : ''
  const name = (LEVEL_NAMES[level] ?? String(level)).padEnd(5)
  const fields = Object.entries(rec)
    .filter(([k]) => !HIDDEN.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' ? (/[\s"=]/.test(v) || v === '' ? JSON.stringify(v) : v) : JSON.stringify(v)}`)
    .join(' ')
  const paint = (style: Parameters<typeof styleText>[0], s: string) => (color ? styleText(style, s) : s)
  return `${paint('gray', time)} ${paint(LEVEL_STYLE[level] ?? 'white', name)} ${String(rec.msg ?? '')}${fields ? `  ${paint('gray', fields)}` : ''}\n`
}

export function createCliLogger(opts: { level: LogLevel; format: LogFormat; name: string }): CliLogger {
  const pretty = opts.format === 'pretty' || (opts.format === 'auto' && process.stderr.isTTY === true)
  const color = pretty && process.stderr.isTTY === true && !process.env.NO_COLOR
  const destination = pretty
    ? {
        write(line: string) {
          writeSync(2, prettyLine(line, color))
        },
      }
    : pino.destination({ fd: 2, sync: true })
  return pino({ name: opts.name, level: opts.level }, destination)
}
