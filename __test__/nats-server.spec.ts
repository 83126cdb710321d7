// The test helper that starts a private nats-server: it must come up on a free port with JetStream,
// survive a restart on the same port, and clean up after itself.
import test from 'ava'
import { existsSync } from 'node:fs'
import net from 'node:net'
import { findNatsServer, startNatsServer } from './helpers/nats-server.js'

/** Connects a raw TCP socket and returns the first line the server sends (NATS sends `INFO {json}`). */
function readFirstLine(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port })
    let got = ''
    socket.setTimeout(5000, () => {
      socket.destroy()
      reject(new Error('no INFO line within 5 s'))
    })
    socket.once('error', reject)
    socket.on('data', (chunk) => {
      got += chunk.toString('utf8')
      const end = got.indexOf('\r\n')
      if (end >= 0) {
        socket.destroy()
        resolve(got.slice(0, end))
      }
    })
  })
}

function parseInfo(line: string): Record<string, unknown> {
  if (!line.startsWith('INFO ')) throw new Error(`expected an INFO line, got ${JSON.stringify(line)}`)
  return JSON.parse(line.slice('INFO '.length)) as Record<string, unknown>
}

test('starts nats-server with JetStream on a free port and stops it', async (t) => {
  const nats = await startNatsServer()
  try {
    t.regex(nats.url, /^nats:\/\/127\.0\.0\.1:\d+$/)
    t.not(nats.port, 4222, 'must not take the standard port')
    t.true(existsSync(nats.storeDir))
    const info = parseInfo(await readFirstLine(nats.port))
    t.is(info.jetstream, true)
    t.is(info.port, nats.port)
  } finally {
    await nats.stop()
  }
  t.is(nats.pid, null)
  t.false(existsSync(nats.storeDir), 'stop() removes the store dir it created')
  await t.throwsAsync(readFirstLine(nats.port), undefined, 'nothing listens after stop()')
})

test('restart() comes back on the same port and store dir; kill() then restart() recovers', async (t) => {
  const nats = await startNatsServer()
  try {
    const { port, storeDir } = nats
    const firstPid = nats.pid
    await nats.restart()
    t.is(nats.port, port)
    t.is(nats.storeDir, storeDir)
    t.not(nats.pid, firstPid)
    t.is(parseInfo(await readFirstLine(port)).jetstream, true)

    await nats.kill('SIGKILL')
    t.is(nats.pid, null)
    t.true(existsSync(storeDir), 'kill() keeps the store dir')
    await nats.restart()
    t.is(parseInfo(await readFirstLine(port)).jetstream, true)
  } finally {
    await nats.stop()
  }
})

test('two servers run side by side', async (t) => {
  const [a, b] = await Promise.all([startNatsServer(), startNatsServer()])
  try {
    t.not(a.port, b.port)
    t.not(a.storeDir, b.storeDir)
  } finally {
    await Promise.all([a.stop(), b.stop()])
  }
})

test('a missing binary gives a clear error', async (t) => {
  t.throws(() => findNatsServer('/nonexistent/nats-server'), { message: /nats-server binary not found.*apt-get install -y nats-server/s })
  await t.throwsAsync(startNatsServer({ binary: '/nonexistent/nats-server' }), { message: /nats-server binary not found/ })
})
