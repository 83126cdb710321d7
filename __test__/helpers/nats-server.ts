// Starts a private nats-server (with JetStream) for a test, on a free loopback port and a fresh store
// directory. It never installs anything: the `nats-server` binary must be on the machine (Debian package
// `nats-server`; .ci/run installs it when missing). Set NATS_SERVER_BIN to use another binary.
//
//   const nats = await startNatsServer()
//   ... connect to nats.url ...
//   await nats.restart()        // same port and store dir: JetStream state survives
//   await nats.kill('SIGKILL')  // a crash; restart() brings it back
//   await nats.stop()           // also removes the store dir if this helper created it
import { spawn, type ChildProcess } from 'node:child_process'
import { accessSync, constants, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'

export interface NatsServerOptions {
  /** Extra arguments appended to `-a 127.0.0.1 -p PORT -js -sd DIR`. */
  args?: string[]
  /** Port to listen on; default a free one. */
  port?: number
  /** JetStream store directory; default a new temporary one, removed by stop(). */
  storeDir?: string
  /** The binary; default $NATS_SERVER_BIN, else `nats-server` from PATH, /usr/sbin or /usr/local/bin. */
  binary?: string
  /** How long to wait for the server to accept connections (ms, default 15000). */
  startTimeoutMs?: number
}

export interface NatsServer {
  /** nats://127.0.0.1:PORT */
  readonly url: string
  readonly port: number
  readonly storeDir: string
  /** The running process id, or null between kill()/stop() and restart(). */
  readonly pid: number | null
  /** Everything the server printed (stdout and stderr, last 64 KiB), for diagnosing a failure. */
  output(): string
  /** Stops the server (SIGTERM, then SIGKILL after 5 s) and removes the store dir if this helper made it. */
  stop(): Promise<void>
  /** Sends a signal (default SIGKILL) and waits for the process to exit; the store dir is kept. */
  kill(signal?: NodeJS.Signals): Promise<void>
  /** Stops the server if it runs, then starts it again on the same port and store dir. */
  restart(): Promise<void>
}

const OUTPUT_LIMIT = 64 * 1024
const running = new Set<ChildProcess>()

// A test that forgets stop() (or fails before it) must not leave servers behind.
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

/** Finds the nats-server binary, or throws an Error saying how to get one. */
export function findNatsServer(binary = process.env.NATS_SERVER_BIN): string {
  const candidates = binary
    ? [binary]
    : [
        ...(process.env.PATH ?? '')
          .split(path.delimiter)
          .filter(Boolean)
          .map((dir) => path.join(dir, 'nats-server')),
        '/usr/sbin/nats-server',
        '/usr/local/bin/nats-server',
        '/usr/local/sbin/nats-server',
      ]
  for (const candidate of candidates) {
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // try the next one
    }
  }
  throw new Error(
    `nats-server binary not found (looked for ${binary ? JSON.stringify(binary) : 'nats-server on PATH, /usr/sbin, /usr/local/bin'}). ` +
      'Install it with `apt-get install -y nats-server` (Debian), or set NATS_SERVER_BIN to its path.',
  )
}

/** A port that was free a moment ago (the OS's pick for port 0 on 127.0.0.1). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.unref()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })
}

/**
 * Whether process `pid` holds the listening TCP socket of `port` on this machine (read from /proc; true
 * where there is no procfs to ask). A port picked as free can be taken by another test's server before
 * ours binds it: ours then exits with "address already in use", but a probe of the port is answered by
 * the other server, and the test would silently use (and freeze, and stop) the wrong one.
 */
export function listensOn(pid: number, port: number): boolean {
  const inodes = new Set<string>()
  try {
    for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
      for (const line of readFileSync(table, 'utf8').split('\n').slice(1)) {
        const f = line.trim().split(/\s+/)
        // local_address is HEXIP:HEXPORT; state 0A is LISTEN; field 9 is the socket inode
        if (f.length > 9 && f[3] === '0A' && Number.parseInt(f[1]!.split(':')[1]!, 16) === port) inodes.add(f[9]!)
      }
    }
  } catch {
    return true
  }
  if (inodes.size === 0) return false
  try {
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      let target = ''
      try {
        target = readlinkSync(`/proc/${pid}/fd/${fd}`)
      } catch {
        continue
      }
      const m = /^socket:\[(\d+)\]$/.exec(target)
      if (m && inodes.has(m[1]!)) return true
    }
  } catch {
    return false
  }
  return false
}

/** Resolves once a TCP connection to the port is answered with an INFO line by the process `pid` itself. */
function waitForInfo(port: number, pid: number, deadline: number, exited: () => string | null): Promise<void> {
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const why = exited()
      if (why !== null) return reject(new Error(why))
      if (Date.now() > deadline) return reject(new Error(`nats-server did not accept connections on port ${port} in time`))
      const socket = net.connect({ host: '127.0.0.1', port })
      let got = ''
      const retry = () => {
        socket.destroy()
        setTimeout(attempt, 50)
      }
      socket.setTimeout(1000, retry)
      socket.once('error', retry)
      socket.on('data', (chunk) => {
        got += chunk.toString('latin1')
        if (got.includes('\n')) {
          socket.destroy()
          if (got.startsWith('INFO ') && listensOn(pid, port)) resolve()
          else retry()
        }
      })
    }
    attempt()
  })
}

function waitForExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => child.once('exit', () => resolve()))
}

export async function startNatsServer(opts: NatsServerOptions = {}): Promise<NatsServer> {
  const binary = findNatsServer(opts.binary)
  const ownsStoreDir = opts.storeDir === undefined
  const storeDir = opts.storeDir ?? mkdtempSync(path.join(tmpdir(), 'dynamo-kv-nats-'))
  const startTimeoutMs = opts.startTimeoutMs ?? 15_000
  let port = opts.port ?? (await freePort())
  let child: ChildProcess | null = null
  let output = ''

  const launch = async (): Promise<void> => {
    const args = ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir, ...(opts.args ?? [])]
    const proc = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    child = proc
    running.add(proc)
    let exitReason: string | null = null
    let spawnError: Error | null = null
    const append = (chunk: Buffer) => {
      output += chunk.toString('utf8')
      if (output.length > OUTPUT_LIMIT) output = output.slice(-OUTPUT_LIMIT)
    }
    proc.stdout!.on('data', append)
    proc.stderr!.on('data', append)
    proc.once('error', (err) => {
      spawnError = err
    })
    proc.once('exit', (code, signal) => {
      running.delete(proc)
      exitReason = `nats-server exited (${signal ?? `code ${code}`}) while starting: ${binary} ${args.join(' ')}\n${output}`
    })
    try {
      await waitForInfo(port, proc.pid ?? 0, Date.now() + startTimeoutMs, () =>
        spawnError ? `could not run ${binary}: ${spawnError.message}` : exitReason,
      )
    } catch (err) {
      proc.kill('SIGKILL')
      await waitForExit(proc)
      throw err
    }
  }

  const terminate = async (signal: NodeJS.Signals): Promise<void> => {
    const proc = child
    child = null
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return
    proc.kill(signal)
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5000)
    await waitForExit(proc)
    clearTimeout(timer)
  }

  // The port was free when picked but another process may grab it before the server binds: retry a
  // few times on a new port, unless the caller asked for a specific one.
  for (let attempt = 1; ; attempt++) {
    try {
      await launch()
      break
    } catch (err) {
      const busy = /address already in use/i.test(output)
      if (opts.port !== undefined || !busy || attempt >= 3) {
        if (ownsStoreDir) rmSync(storeDir, { recursive: true, force: true })
        throw err
      }
      output = ''
      port = await freePort()
    }
  }

  return {
    get url() {
      return `nats://127.0.0.1:${port}`
    },
    get port() {
      return port
    },
    storeDir,
    get pid() {
      const proc = child as ChildProcess | null
      return proc && proc.exitCode === null && proc.signalCode === null ? (proc.pid ?? null) : null
    },
    output: () => output,
    async stop() {
      await terminate('SIGTERM')
      if (ownsStoreDir) rmSync(storeDir, { recursive: true, force: true })
    },
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      await terminate(signal)
    },
    async restart() {
      await terminate('SIGTERM')
      await launch()
    },
  }
}

/**
 * SIGSTOPs a process and returns once the kernel reports it stopped (state `T` in /proc/PID/stat), so a test
 * never races a server that is still answering: kill() only queues the signal, and on a busy machine the
 * target may run on another core for a while before it stops.
 */
export function stopProcess(pid: number, timeoutMs = 5000): void {
  process.kill(pid, 'SIGSTOP')
  const deadline = Date.now() + timeoutMs
  for (;;) {
    let state = ''
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)
    } catch {
      return // no procfs: the signal was sent, nothing more to wait for
    }
    if (state === 'T' || state === 't') return
    if (Date.now() > deadline) throw new Error(`process ${pid} did not stop within ${timeoutMs} ms (state ${state})`)
  }
}
