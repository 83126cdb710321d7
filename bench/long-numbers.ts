// The cost of rejecting a router event whose JSON `worker_id` is a very long run of digits (a hostile or
// broken producer), in each implementation, against the cost of scanning the same bytes once: the
// readers must reject an over-long number without a step proportional to its length beyond that scan.
// `BENCH_ONLY=numbers npm run bench`.
import type { RawBinding } from '../ts/core/binding.js'
import { stopwatch } from './measure.js'

const SIZES = [100_000, 1_000_000, 4_000_000, 10_000_000]

/** Best of 3: milliseconds of main-thread CPU for one call of `f`. */
function cpuMs(f: () => void): number {
  let best = Number.POSITIVE_INFINITY
  for (let i = 0; i < 3; i++) {
    const clock = stopwatch()
    f()
    const r = clock.rate(1)
    best = Math.min(best, 1000 / (r.thread || r.cpu))
  }
  return best
}

export function benchLongNumbers(impls: { name: string; raw: RawBinding }[]): void {
  console.log('\n## Rejecting an over-long JSON number\n')
  console.log(`| digits of worker_id | scan once (ms) | ${impls.map((i) => `${i.name} reject (ms) | ${i.name} / scan`).join(' | ')} |`)
  console.log(`|---|---|${impls.map(() => '---|---').join('|')}|`)
  for (const n of SIZES) {
    const bytes = Buffer.from(`{"worker_id":${'9'.repeat(n)},"event":{"event_id":1,"data":"cleared","dp_rank":0}}`)
    // the floor: looking at every byte once, as any reader must to find where the number ends
    let sink = 0
    const scan = cpuMs(() => {
      let digits = 0
      for (let i = 0; i < bytes.length; i++) if (bytes[i]! >= 0x30 && bytes[i]! <= 0x39) digits++
      sink += digits
    })
    const cells = impls.map(({ raw }) => {
      const ms = cpuMs(() => {
        try {
          raw.decodeRouterEvent(bytes, true)
          throw new Error('accepted an over-long worker_id')
        } catch (e) {
          if (!(e as Error).message.startsWith('invalid router event')) throw e
        }
      })
      return `${ms.toFixed(2)} | ${(ms / scan).toFixed(1)}`
    })
    console.log(`| ${n.toLocaleString('en-US')} | ${scan.toFixed(2)} | ${cells.join(' | ')} |`)
    if (sink < 0) console.log(sink)
  }
}
