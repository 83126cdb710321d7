// Runs the built `dynamo-kv` command (dist/cli.js, the package's "bin") as a child process, the way a user
// does. The child inherits the environment, so DYNAMO_KV_FORCE_JS=1 (the fallback run) reaches it too.
import { type ChildProcess, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const CLI = path.join(root, 'dist', 'cli.js')

export function needCli(): void {
  if (!existsSync(CLI)) throw new Error('dist/cli.js is missing: run `npm run build` before the tests')
}

export interface CliRun {
  child: ChildProcess
  /** stdout lines so far (complete lines only). */
  lines: string[]
  stdout: () => string
  stderr: () => string
  /** stderr JSON log records so far (non-JSON lines skipped). */
  logs: () => Record<string, unknown>[]
  /** Resolves with the exit status (null when killed by a signal). */
  exit: Promise<number | null>
  /** Resolves with the first log record `match` accepts (rejects if the process exits first). */
  waitForLog: (match: (rec: Record<string, unknown>) => boolean) => Promise<Record<string, unknown>>
}

export function startCli(args: string[], env: Record<string, string | undefined> = {}): CliRun {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: root,
    // a log level or format inherited from the test's own environment would change what the tests read
    env: { ...process.env, DYNAMO_KV_LOG_LEVEL: undefined, DYNAMO_KV_LOG_FORMAT: undefined, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  const lines: string[] = []
  let out = ''
  let partial = ''
  let err = ''
  const watchers = new Set<() => void>()
  child.stdout!.on('data', (d: Buffer) => {
    out += d
    partial += d
    const parts = partial.split('\n')
    partial = parts.pop()!
    lines.push(...parts.filter(Boolean))
  })
  child.stderr!.on('data', (d: Buffer) => {
    err += d
    for (const w of watchers) w()
  })
  // 'close', not 'exit': by then stdout and stderr have been read to their end
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)))
  const logs = () =>
    err
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>]
        } catch {
          return []
        }
      })
  const waitForLog = (match: (rec: Record<string, unknown>) => boolean) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const check = () => {
        const found = logs().find(match)
        if (found) {
          watchers.delete(check)
          resolve(found)
        }
      }
      watchers.add(check)
      check()
      void exit.then((code) => {
        if (!watchers.has(check)) return
        watchers.delete(check)
        reject(new Error(`dynamo-kv exited (${code}) before the expected log line; stderr:\n${err}`))
      })
    })
  return { child, lines, stdout: () => out, stderr: () => err, logs, exit, waitForLog }
}

/**
 * stderr without the loader's one line about a missing native binary (a build without Rust runs the
 * command on the fallback and says so once; the tests count the command's own lines).
 */
export function ownStderr(stderr: string): string {
  return stderr
    .split('\n')
    .filter((l) => !l.startsWith('dynamo-kv: native core not loaded'))
    .join('\n')
}

/**
 * Runs the command to its end; kills it after `timeoutMs` (the test then fails on the status). `stderr`
 * is {@link ownStderr}.
 */
export async function runCli(
  args: string[],
  env: Record<string, string | undefined> = {},
  timeoutMs = 20_000,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const run = startCli(args, env)
  const timer = setTimeout(() => run.child.kill('SIGKILL'), timeoutMs)
  const code = await run.exit
  clearTimeout(timer)
  return { code, stdout: run.stdout(), stderr: ownStderr(run.stderr()) }
}
