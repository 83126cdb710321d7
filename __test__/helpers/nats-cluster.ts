// Starts a private cluster of nats-server processes (JetStream clustered) for a test: each node on free
// loopback ports (client, cluster route, HTTP monitor) with its own temporary store directory, routes
// to every other node. Resolves once every node has its routes and the JetStream meta group has a leader.
// Uses startNatsServer (./nats-server.ts), so the same binary rules apply.
//
//   const cluster = await startNatsCluster(3)
//   cluster.nodes[0].url, cluster.urls          // client URLs
//   await cluster.nodes[0].kill('SIGKILL')      // a node crashes; the others keep the cluster
//   await cluster.stop()                        // every node, store dirs removed
import { freePort, startNatsServer, type NatsServer } from './nats-server.js'

export interface ClusterNode extends NatsServer {
  /** The node's server_name (`n0`, `n1`, ...). */
  readonly name: string
  /** The node's HTTP monitoring port (/routez, /jsz, /connz). */
  readonly monitorPort: number
}

export interface NatsCluster {
  readonly nodes: ClusterNode[]
  /** Every node's client URL, in node order. */
  readonly urls: string[]
  /** Stops every node still running and removes their store dirs. */
  stop(): Promise<void>
}

async function monitor(port: number, path: string): Promise<Record<string, unknown> | null> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(2000) })
    return res.ok ? ((await res.json()) as Record<string, unknown>) : null
  } catch {
    return null
  }
}

/** Whether the node has routes to `peers` others and JetStream's meta group has a leader. */
async function nodeReady(node: ClusterNode, peers: number): Promise<boolean> {
  const routes = await monitor(node.monitorPort, '/routez')
  if (routes === null || (routes.num_routes as number) < peers) return false
  const jsz = await monitor(node.monitorPort, '/jsz')
  const meta = jsz?.meta_cluster as { leader?: string; cluster_size?: number } | undefined
  return typeof meta?.leader === 'string' && meta.leader.length > 0
}

/** `size` nodes, fully routed, JetStream ready. Waits up to `readyTimeoutMs` (default 60 s) for readiness. */
export async function startNatsCluster(size = 3, readyTimeoutMs = 60_000): Promise<NatsCluster> {
  const clusterPorts: number[] = []
  for (let i = 0; i < size; i++) clusterPorts.push(await freePort())
  const nodes: ClusterNode[] = []
  const name = `kv${process.pid}`
  try {
    for (let i = 0; i < size; i++) {
      // a port picked as free may be taken before the node binds it: then new ports for this node (the
      // nodes after it route to its new cluster port; the ones before are reached by its own routes)
      for (let attempt = 1; ; attempt++) {
        const monitorPort = await freePort()
        const routes = clusterPorts.filter((_, j) => j !== i).map((p) => `nats://127.0.0.1:${p}`)
        try {
          const server = await startNatsServer({
            args: [
              '-m',
              String(monitorPort),
              '--server_name',
              `n${i}`,
              '--cluster_name',
              name,
              '--cluster',
              `nats://127.0.0.1:${clusterPorts[i]}`,
              '--routes',
              routes.join(','),
            ],
            startTimeoutMs: 30_000,
          })
          nodes.push(Object.assign(Object.create(server) as NatsServer, { name: `n${i}`, monitorPort }) as ClusterNode)
          break
        } catch (err) {
          if (attempt >= 3 || !/address already in use/i.test(String((err as Error).message))) throw err
          clusterPorts[i] = await freePort()
        }
      }
    }
    const deadline = Date.now() + readyTimeoutMs
    for (;;) {
      const ready = await Promise.all(nodes.map((n) => nodeReady(n, size - 1)))
      if (ready.every(Boolean)) break
      if (Date.now() > deadline)
        throw new Error(
          `the NATS cluster did not form in ${readyTimeoutMs} ms (ready: ${ready.join(', ')})\n${nodes.map((n) => `--- ${n.name}\n${n.output()}`).join('\n')}`,
        )
      await new Promise((r) => setTimeout(r, 200))
    }
  } catch (err) {
    await Promise.all(nodes.map((n) => n.stop()))
    throw err
  }
  return {
    nodes,
    urls: nodes.map((n) => n.url),
    async stop() {
      await Promise.all(nodes.map((n) => n.stop()))
    },
  }
}
