// The file-store discovery backend (SPEC 5b, "Discovery"), laid out and written as Dynamo 1.6's file
// store does, so Dynamo processes sharing the root read, keep and expire these records like their own:
//   - one directory per bucket under the root (`v1/event_sources`, `v1/event_channels`), one file per
//     key, named by the key percent-encoded as a whole;
//   - mutations hold an exclusive flock(2) on the bucket directory (the lock Dynamo's writers and
//     expiry sweeps take), taken through util-linux `flock(1)` because Node has no flock;
//   - a record is written to a `.tmp_<16 hex>` file in the bucket, then hard-linked to its name
//     (create-if-absent; a watcher never reads half a record), then the temp file is removed;
//   - the TTL is the file's mtime: the owner touches its files every max(ttl/3, 1 s); any process
//     deletes files older than the TTL, so a crashed publisher's records disappear;
//   - close() deletes the files this backend wrote.
import { type ChildProcess, spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { constants, promises as fs } from 'node:fs'
import path from 'node:path'
import { type DiscoveryBackend, DiscoveryError, type DiscoveryErrorHandler, type DiscoveryRecordBytes } from './backend.js'

export interface FileDiscoveryOptions {
  root: string
  ttlMs: number
  onError?: DiscoveryErrorHandler
}

const TEMP_PREFIX = '.tmp_'
const MIN_KEEP_ALIVE_MS = 1000
const LOCK_WAIT_S = '2'

let flockMissing = false

/**
 * Runs fn while holding an exclusive flock on dir. `flock -w 2 DIR sh -c ...` locks the directory,
 * prints a line once it holds the lock, and keeps it until its stdin closes.
 */
async function withDirLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  if (flockMissing) return fn()
  let child: ChildProcess
  try {
    child = spawn('flock', ['-x', '-w', LOCK_WAIT_S, dir, 'sh', '-c', 'echo locked; exec cat >/dev/null'], {
      stdio: ['pipe', 'pipe', 'pipe'],
    })
  } catch {
    flockMissing = true
    return fn()
  }
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()))
  const locked = await new Promise<boolean>((resolve, reject) => {
    let err = ''
    child.stdout?.once('data', () => resolve(true))
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString()
    })
    child.once('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') {
        flockMissing = true
        resolve(false)
      } else reject(e)
    })
    child.once('exit', (code) => {
      if (code !== 0) reject(new DiscoveryError(`could not lock ${dir} (flock exit ${code}): ${err.trim()}`))
    })
  })
  if (!locked) return fn()
  try {
    return await fn()
  } finally {
    child.stdin?.end()
    await exited
  }
}

function isErrno(err: unknown, code: string): boolean {
  return (err as NodeJS.ErrnoException)?.code === code
}

export class FileDiscovery implements DiscoveryBackend {
  readonly kind = 'file'
  private readonly owned = new Map<string, Buffer>()
  private readonly dirs = new Set<string>()
  private timer: NodeJS.Timeout | null = null
  private closed = false
  private ticking: Promise<void> | null = null

  private constructor(
    readonly root: string,
    readonly ttlMs: number,
    private readonly onError?: DiscoveryErrorHandler,
  ) {}

  static async open(opts: FileDiscoveryOptions): Promise<FileDiscovery> {
    try {
      await fs.mkdir(opts.root, { recursive: true })
      await fs.access(opts.root, constants.W_OK)
    } catch (err) {
      throw new DiscoveryError(
        `the file store root ${opts.root} (DYN_FILE_KV, option fileRoot) is not a writable directory: ${(err as Error).message}`,
      )
    }
    return new FileDiscovery(opts.root, opts.ttlMs, opts.onError)
  }

  /** How often the files are touched: max(ttl/3, 1 s), as Dynamo. */
  get keepAliveMs(): number {
    return Math.max(Math.floor(this.ttlMs / 3), MIN_KEEP_ALIVE_MS)
  }

  async register(records: readonly DiscoveryRecordBytes[]): Promise<void> {
    if (this.closed) throw new DiscoveryError('register() after close()')
    for (const rec of records) {
      const full = path.join(this.root, rec.filePath)
      const dir = path.dirname(full)
      await fs.mkdir(dir, { recursive: true })
      this.dirs.add(dir)
      await withDirLock(dir, () => this.publish(full, rec.value))
      this.owned.set(full, rec.value)
    }
    this.timer ??= setInterval(() => this.tick(), this.keepAliveMs)
    // A publisher's sockets keep the process running; this timer alone must not.
    this.timer.unref()
  }

  /** Create-if-absent through a complete temp file and a hard link. */
  private async publish(full: string, value: Buffer): Promise<void> {
    const dir = path.dirname(full)
    let temp = ''
    for (let attempt = 0; ; attempt++) {
      temp = path.join(dir, `${TEMP_PREFIX}${randomBytes(8).toString('hex')}`)
      try {
        await fs.writeFile(temp, value, { flag: 'wx' })
        break
      } catch (err) {
        if (!isErrno(err, 'EEXIST') || attempt >= 15) throw err
      }
    }
    try {
      await fs.link(temp, full)
    } catch (err) {
      if (!isErrno(err, 'EEXIST')) throw err
      const existing = await fs.readFile(full).catch(() => null)
      if (existing === null || !existing.equals(value)) {
        throw new DiscoveryError(`${full} already holds another record: a publisher id cannot change its descriptor`)
      }
    } finally {
      await fs.rm(temp, { force: true })
    }
  }

  private tick(): void {
    if (this.ticking || this.closed) return
    this.ticking = this.keepAlive()
      .then(() => this.sweep())
      .catch((err: Error) => this.onError?.(new DiscoveryError(`file store keep-alive: ${err.message}`)))
      .finally(() => {
        this.ticking = null
      })
  }

  /** Touches the owned files; one removed by someone else (a stalled process's sweep) is written again. */
  private async keepAlive(): Promise<void> {
    const now = new Date()
    for (const [full, value] of this.owned) {
      if (this.closed) return
      try {
        await fs.utimes(full, now, now)
      } catch (err) {
        if (!isErrno(err, 'ENOENT')) throw err
        await withDirLock(path.dirname(full), () => this.publish(full, value))
      }
    }
  }

  /** Deletes files in our bucket directories not touched for longer than the TTL, as every Dynamo process does. */
  private async sweep(): Promise<void> {
    for (const dir of this.dirs) {
      if (this.closed) return
      await withDirLock(dir, async () => {
        const deadline = Date.now() - this.ttlMs
        for (const name of await fs.readdir(dir)) {
          const p = path.join(dir, name)
          const st = await fs.lstat(p).catch(() => null)
          if (st?.isFile() && st.mtimeMs < deadline && !this.owned.has(p)) await fs.rm(p, { force: true })
        }
      })
    }
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.timer) clearInterval(this.timer)
    this.timer = null
    await this.ticking
    const byDir = new Map<string, string[]>()
    for (const full of this.owned.keys()) {
      const dir = path.dirname(full)
      byDir.set(dir, [...(byDir.get(dir) ?? []), full])
    }
    this.owned.clear()
    for (const [dir, files] of byDir) {
      try {
        await withDirLock(dir, async () => {
          for (const f of files) await fs.rm(f, { force: true })
        })
      } catch (err) {
        // The lock could not be had: remove them anyway, a record must not outlive its publisher.
        for (const f of files) await fs.rm(f, { force: true }).catch(() => undefined)
        this.onError?.(new DiscoveryError(`file store close: ${(err as Error).message}`))
      }
    }
  }
}
