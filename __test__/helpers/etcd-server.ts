// Starts a private etcd for a test file, on free loopback ports and a fresh data directory. It never
// installs anything: the `etcd` binary must be on the machine (Debian package `etcd-server`; .ci/run
// installs it when missing). Set ETCD_BIN to use another binary.
//
//   const etcd = await startEtcd()
//   ... connect to etcd.url ...
//   await etcd.stop()   // also removes the data dir
import { type ChildProcess, spawn } from 'node:child_process'
import { accessSync, constants, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { freePort, listensOn } from './nats-server.js'

export interface EtcdServer {
  /** http://127.0.0.1:PORT */
  readonly url: string
  readonly dataDir: string
  output(): string
  stop(): Promise<void>
}

const OUTPUT_LIMIT = 64 * 1024
const running = new Set<ChildProcess>()
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL')
})

export function findEtcd(binary = process.env.ETCD_BIN): string {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter(Boolean)
  const candidates = binary
    ? [binary]
    : [...dirs.map((d) => path.join(d, 'etcd')), '/usr/bin/etcd', '/usr/local/bin/etcd', '/usr/sbin/etcd']
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK)
      return c
    } catch {
      // next
    }
  }
  throw new Error('etcd binary not found. Install it with `apt-get install -y etcd-server` (Debian), or set ETCD_BIN to its path.')
}

async function healthy(url: string): Promise<boolean> {
  try {
    const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1000) })
    const body = (await res.json()) as { health?: string }
    return res.ok && body.health === 'true'
  } catch {
    return false
  }
}

export async function startEtcd(startTimeoutMs = 20_000): Promise<EtcdServer> {
  const binary = findEtcd()
  for (let attempt = 1; ; attempt++) {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'dynamo-kv-etcd-'))
    const clientPort = await freePort()
    const peerPort = await freePort()
    const url = `http://127.0.0.1:${clientPort}`
    const peer = `http://127.0.0.1:${peerPort}`
    const args = [
      '--name=test',
      `--data-dir=${dataDir}`,
      `--listen-client-urls=${url}`,
      `--advertise-client-urls=${url}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=test=${peer}`,
      '--log-level=warn',
    ]
    const proc = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] })
    running.add(proc)
    let output = ''
    const append = (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-OUTPUT_LIMIT)
    }
    proc.stdout?.on('data', append)
    proc.stderr?.on('data', append)
    let exited = false
    const exit = new Promise<void>((resolve) =>
      proc.once('exit', () => {
        exited = true
        running.delete(proc)
        resolve()
      }),
    )
    const stop = async () => {
      if (!exited) {
        proc.kill('SIGTERM')
        const t = setTimeout(() => proc.kill('SIGKILL'), 5000)
        await exit
        clearTimeout(t)
      }
      rmSync(dataDir, { recursive: true, force: true })
    }
    const deadline = Date.now() + startTimeoutMs
    // healthy on our port AND listening from our process: another test's etcd may hold a port we picked
    const ours = async () => listensOn(proc.pid ?? 0, clientPort) && (await healthy(url))
    while (!exited && Date.now() < deadline && !(await ours())) {
      await new Promise((r) => setTimeout(r, 100))
    }
    if (!exited && (await ours())) {
      return { url, dataDir, output: () => output, stop }
    }
    await stop()
    if (attempt >= 3 || !/address already in use/i.test(output)) {
      throw new Error(`etcd did not become healthy: ${binary} ${args.join(' ')}\n${output}`)
    }
  }
}
