// What the benchmarks share: how long to measure, and rates per second of wall time and of CPU time
// (the latter survives a busy shared machine: see BENCHMARKS.md).

/** Milliseconds per measurement (BENCH_MS) and rounds per figure, the best one kept (BENCH_ROUNDS). */
export const MS = Number(process.env.BENCH_MS ?? 2000)
export const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2)

export interface Rate {
  wall: number
  cpu: number
}

export const NO_RATE: Rate = { wall: 0, cpu: 0 }

/** Units (blocks) per second over repeated passes, after one warm-up pass; at least 2 passes. */
export function rate(unitsPerPass: number, pass: () => void): Rate {
  pass()
  let passes = 0
  const start = process.hrtime.bigint()
  const cpu0 = process.cpuUsage()
  let elapsed = 0
  while (elapsed < MS || passes < 2) {
    pass()
    passes++
    elapsed = Number(process.hrtime.bigint() - start) / 1e6
  }
  const cpu = process.cpuUsage(cpu0)
  const units = unitsPerPass * passes
  return { wall: units / (elapsed / 1000), cpu: units / ((cpu.user + cpu.system) / 1e6) }
}

/** The better of two rounds, per clock. */
export const best = (a: Rate, b: Rate): Rate => ({ wall: Math.max(a.wall, b.wall), cpu: Math.max(a.cpu, b.cpu) })

/** 1.23 M / 456 k */
export const fmtRate = (x: number): string => (x >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : `${(x / 1e3).toFixed(0)} k`)
