// What the benchmarks share: how long to measure, and rates per second of wall time and of CPU time
// (the latter survives a busy shared machine: see BENCHMARKS.md).
import { readFileSync } from 'node:fs'
import { PerformanceObserver, constants as perfConstants } from 'node:perf_hooks'

/** Milliseconds per measurement (BENCH_MS) and rounds per figure, the best one kept (BENCH_ROUNDS). */
export const MS = Number(process.env.BENCH_MS ?? 2000)
export const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)

export interface Rate {
  wall: number
  /** per second of CPU time of the whole process (GC helper threads included) */
  cpu: number
  /** per second of CPU time of the main thread alone (Linux; 0 elsewhere) */
  thread: number
}

export const NO_RATE: Rate = { wall: 0, cpu: 0, thread: 0 }

/** Minor page faults of this process so far (Linux /proc; 0 when unavailable). */
export function minorFaults(): number {
  try {
    // the fields after the command name, whose own parentheses end at the last ')'
    const stat = readFileSync('/proc/self/stat', 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[7])
  } catch {
    return 0
  }
}

/** CPU nanoseconds of the calling thread (Linux /proc; 0 when unavailable). */
export function threadCpuNs(): number {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0])
  } catch {
    return 0
  }
}

function rates(units: number, elapsedMs: number, cpu: NodeJS.CpuUsage, threadNs: number): Rate {
  return {
    wall: units / (elapsedMs / 1000),
    cpu: units / ((cpu.user + cpu.system) / 1e6),
    thread: threadNs > 0 ? units / (threadNs / 1e9) : 0,
  }
}

/** A clock over the timed passes: wall, process CPU and thread CPU from the moment it starts. */
export function stopwatch(): { elapsedMs: () => number; rate: (units: number) => Rate } {
  const start = process.hrtime.bigint()
  const cpu0 = process.cpuUsage()
  const thread0 = threadCpuNs()
  const elapsedMs = () => Number(process.hrtime.bigint() - start) / 1e6
  return { elapsedMs, rate: (units) => rates(units, elapsedMs(), process.cpuUsage(cpu0), threadCpuNs() - thread0) }
}

/** Units (blocks) per second over repeated passes for `ms`, after one warm-up pass; at least 2 passes. */
export function rate(unitsPerPass: number, pass: () => void, ms = MS): Rate {
  pass()
  let passes = 0
  const clock = stopwatch()
  while (clock.elapsedMs() < ms || passes < 2) {
    pass()
    passes++
  }
  return clock.rate(unitsPerPass * passes)
}

/**
 * `rate` for passes that each build a native object and drop it: the event loop turns between passes
 * (as it does between messages in a real process), so that Node-API finalizers, which Node runs from
 * the event loop, free the dropped objects. A synchronous loop would keep every dropped index alive
 * and measure a process growing by the index's size on every pass.
 */
export async function rateAsync(unitsPerPass: number, pass: () => void): Promise<Rate> {
  const turn = () => new Promise<void>((resolve) => setImmediate(resolve))
  pass()
  await turn()
  let passes = 0
  const clock = stopwatch()
  while (clock.elapsedMs() < MS || passes < 2) {
    pass()
    await turn()
    passes++
  }
  return clock.rate(unitsPerPass * passes)
}

/** The better of two rounds, per clock. */
export const best = (a: Rate, b: Rate): Rate => ({
  wall: Math.max(a.wall, b.wall),
  cpu: Math.max(a.cpu, b.cpu),
  thread: Math.max(a.thread, b.thread),
})

/** 1.23 M / 456 k */
export const fmtRate = (x: number): string => (x >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : `${(x / 1e3).toFixed(0)} k`)

/**
 * Counts this process's major (mark-compact) collections from Node's gc performance entries, which arrive
 * once the event loop turns after they happen; `stop` ends the count.
 */
export function majorGcCounter(): { count: () => number; stop: () => void } {
  let n = 0
  const observer = new PerformanceObserver((list) => {
    for (const e of list.getEntries())
      if ((e as unknown as { detail?: { kind?: number } }).detail?.kind === perfConstants.NODE_PERFORMANCE_GC_MAJOR) n++
  })
  observer.observe({ entryTypes: ['gc'] })
  return { count: () => n, stop: () => observer.disconnect() }
}
