// zeromq (a native addon) is loaded on first use, so the package imports, and everything but the ZMQ
// source and the engine simulator works, where that addon does not load.
import type * as Zmq from 'zeromq'

let loaded: typeof Zmq | null = null

export async function loadZeromq(): Promise<typeof Zmq> {
  if (loaded === null) {
    try {
      loaded = await import('zeromq')
    } catch (err) {
      throw new Error(
        `the ZMQ source and the engine simulator need the zeromq package (6.8.0) and its native addon: ${(err as Error).message}`,
        { cause: err },
      )
    }
  }
  return loaded
}

/** The module, once loadZeromq() has resolved. */
export function zeromq(): typeof Zmq {
  if (loaded === null) throw new Error('zeromq is not loaded yet (await loadZeromq() first)')
  return loaded
}
