// A TCP proxy on a free loopback port, to cut one client's connection to a server while others keep
// theirs: cut() closes every proxied connection and refuses new ones until resume().
import net from 'node:net'

export interface TcpProxy {
  /** The port clients connect to. */
  readonly port: number
  /** Closes every proxied connection and refuses new ones. */
  cut(): void
  /** Accepts (and proxies) connections again. */
  resume(): void
  close(): Promise<void>
}

export async function startTcpProxy(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>()
  let open = true
  const server = net.createServer((client) => {
    if (!open) {
      client.destroy()
      return
    }
    const upstream = net.connect(targetPort, targetHost)
    sockets.add(client)
    sockets.add(upstream)
    const end = () => {
      client.destroy()
      upstream.destroy()
      sockets.delete(client)
      sockets.delete(upstream)
    }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
    client.pipe(upstream)
    upstream.pipe(client)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const port = (server.address() as net.AddressInfo).port
  return {
    port,
    cut() {
      open = false
      for (const s of sockets) s.destroy()
      sockets.clear()
    },
    resume() {
      open = true
    },
    close() {
      open = false
      for (const s of sockets) s.destroy()
      return new Promise((resolve) => server.close(() => resolve()))
    },
  }
}
