// What the discovery tests share: polling for a condition, and a child process that registers one
// publisher's records (helpers/discovery-child.ts) and is then SIGKILLed, as a crashed publisher would be.
import { type ChildProcess, spawn } from 'node:child_process'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Polls cond until it holds, for at most limitMs; returns whether it did. */
export async function eventually(cond: () => Promise<boolean>, limitMs = 20_000): Promise<boolean> {
  const deadline = Date.now() + limitMs
  for (;;) {
    if (await cond()) return true
    if (Date.now() > deadline) return false
    await sleep(100)
  }
}

export interface RegisteringChild {
  /** Everything the child wrote to stdout and stderr so far. */
  output(): string
  /** Waits until the child says it registered (false after 30 s). */
  registered(): Promise<boolean>
  /** SIGKILLs the child and waits for it to exit. */
  kill(): Promise<void>
}

/**
 * Starts helpers/discovery-child.ts with the discovery configuration in `env` (on top of this process's
 * environment), registering worker u64::MAX with publisher id 2^53 - 1.
 */
export function spawnRegisteringChild(env: Record<string, string>): RegisteringChild {
  const child: ChildProcess = spawn(process.execPath, ['--import=tsx', 'helpers/discovery-child.ts'], {
    cwd: new URL('..', import.meta.url).pathname,
    env: { ...process.env, ...env, TEST_WORKER_ID: '18446744073709551615', TEST_PUBLISHER_ID: '9007199254740991' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let out = ''
  const collect = (d: Buffer) => {
    out += d.toString()
  }
  child.stdout?.on('data', collect)
  child.stderr?.on('data', collect)
  const exited = new Promise((r) => child.once('exit', r))
  return {
    output: () => out,
    registered: () => eventually(async () => out.includes('registered'), 30_000),
    kill: async () => {
      child.kill('SIGKILL')
      await exited
    },
  }
}
