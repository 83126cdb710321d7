// NATS connection options (SPEC 5): explicit options, else the environment Dynamo reads, then one
// connect() that fails with an error saying where it tried to connect and why.
import { readFileSync } from 'node:fs'
import {
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
  type ConnectionOptions,
  type NatsConnection,
  type TlsOptions,
} from '@nats-io/transport-node'
import { describe, positiveInt } from '../util/args.js'

export type { NatsConnection } from '@nats-io/transport-node'

/** How to reach NATS. Every field is optional; absent ones come from the environment (SPEC 5). */
export interface NatsOptions {
  /** Server URL(s); default $NATS_SERVER, else nats://localhost:4222. */
  servers?: string | string[]
  /** Token auth (else $NATS_AUTH_TOKEN). */
  token?: string
  /** User/password auth (else $NATS_AUTH_USERNAME + $NATS_AUTH_PASSWORD). */
  user?: string
  pass?: string
  /** An nkey seed (`SU...`; else $NATS_AUTH_NKEY). */
  nkeySeed?: string
  /** A `.creds` file with a user JWT and nkey seed (else $NATS_AUTH_CREDENTIALS_FILE). */
  credentialsFile?: string
  /** TLS: `true` requires TLS with the system's CAs; an object is passed to the client (ca/cert/key files...). */
  tls?: boolean | TlsOptions
  /** Connection name shown by the server (default `dynamo-kv`). */
  name?: string
  /** Connect timeout in ms (default 5000). */
  timeoutMs?: number
  /** Wait between reconnect attempts in ms (default 250); reconnects never stop while the publisher is open. */
  reconnectTimeWaitMs?: number
}

/** Either options to connect with, or a connection the caller owns (it is not closed by close()). */
export type NatsOption = NatsOptions | NatsConnection

export class NatsConnectError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'NatsConnectError'
  }
}

export function isNatsConnection(v: unknown): v is NatsConnection {
  const c = v as NatsConnection
  return (
    typeof c === 'object' &&
    c !== null &&
    typeof c.publish === 'function' &&
    typeof c.close === 'function' &&
    typeof c.status === 'function'
  )
}

import type { Env } from '../util/env.js'

function str(option: string, v: unknown): string | undefined {
  if (v === undefined) return undefined
  if (typeof v !== 'string' || v.length === 0) throw new TypeError(`${option} must be a non-empty string, got ${describe(v)}`)
  return v
}

/** Resolved connection options plus a description safe to log (no secrets). */
export interface ResolvedNats {
  options: ConnectionOptions
  servers: string[]
  auth: 'none' | 'user/password' | 'token' | 'nkey' | 'credentials'
  authFrom: 'options' | 'environment' | 'none'
}

export function resolveNatsOptions(opts: NatsOptions = {}, env: Env = process.env): ResolvedNats {
  if (typeof opts !== 'object' || opts === null) throw new TypeError(`nats must be an object or a NatsConnection, got ${describe(opts)}`)
  const known = new Set([
    'servers',
    'token',
    'user',
    'pass',
    'nkeySeed',
    'credentialsFile',
    'tls',
    'name',
    'timeoutMs',
    'reconnectTimeWaitMs',
  ])
  for (const k of Object.keys(opts)) if (!known.has(k)) throw new TypeError(`nats.${k} is not an option (known: ${[...known].join(', ')})`)

  let servers: string[]
  if (opts.servers !== undefined) {
    const list = Array.isArray(opts.servers) ? opts.servers : [opts.servers]
    if (list.length === 0) throw new TypeError('nats.servers must not be empty')
    servers = list.map((s, i) => str(`nats.servers${Array.isArray(opts.servers) ? `[${i}]` : ''}`, s)!)
  } else {
    servers = (env.NATS_SERVER || 'nats://localhost:4222')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
  }

  const explicit = {
    userPass: opts.user !== undefined || opts.pass !== undefined,
    token: opts.token !== undefined,
    nkey: opts.nkeySeed !== undefined,
    creds: opts.credentialsFile !== undefined,
  }
  const kinds = Object.entries(explicit)
    .filter(([, on]) => on)
    .map(([k]) => k)
  if (kinds.length > 1) throw new TypeError(`nats: give one kind of auth, got ${kinds.join(' and ')}`)

  const options: ConnectionOptions = {
    servers,
    name: str('nats.name', opts.name) ?? 'dynamo-kv',
    timeout: opts.timeoutMs === undefined ? 5000 : positiveInt('nats.timeoutMs', opts.timeoutMs),
    reconnect: true,
    maxReconnectAttempts: -1,
    // nats.js otherwise builds two Error objects (stack traces included) per request, in case it times
    // out: with JetStream publishes that was a third of the publisher's CPU time.
    noAsyncTraces: true,
    reconnectTimeWait: opts.reconnectTimeWaitMs === undefined ? 250 : positiveInt('nats.reconnectTimeWaitMs', opts.reconnectTimeWaitMs),
  }
  // nats.js writes its outbound buffer to the socket whenever it holds 32 KiB; the event-plane sink
  // follows each coalesced write (up to 64 KiB) with a flush, which writes it too, so a larger limit lets
  // one socket write carry a whole coalesced write and its PING. (A hidden option of nats.js: ignored if
  // it goes away.)
  ;(options as { pendingLimit?: number }).pendingLimit = 128 * 1024
  if (opts.tls !== undefined && opts.tls !== false) {
    if (opts.tls !== true && (typeof opts.tls !== 'object' || opts.tls === null))
      throw new TypeError('nats.tls must be a boolean or TLS options')
    options.tls = opts.tls === true ? {} : opts.tls
  }

  const from = kinds.length > 0 ? 'options' : 'environment'
  const src =
    kinds.length > 0
      ? { user: opts.user, pass: opts.pass, token: opts.token, nkey: opts.nkeySeed, creds: opts.credentialsFile }
      : {
          user: env.NATS_AUTH_USERNAME,
          pass: env.NATS_AUTH_PASSWORD,
          token: env.NATS_AUTH_TOKEN,
          nkey: env.NATS_AUTH_NKEY,
          creds: env.NATS_AUTH_CREDENTIALS_FILE,
        }
  const name = (opt: string, envName: string) => (from === 'options' ? `nats.${opt}` : `$NATS_AUTH_${envName}`)
  let auth: ResolvedNats['auth'] = 'none'
  // Dynamo's order of precedence: user+password, token, nkey, credentials file.
  if (src.user || src.pass) {
    if (!src.user || !src.pass) throw new TypeError(`${name('user', 'USERNAME')} and ${name('pass', 'PASSWORD')} must be given together`)
    options.user = str(name('user', 'USERNAME'), src.user)
    options.pass = str(name('pass', 'PASSWORD'), src.pass)
    auth = 'user/password'
  } else if (src.token) {
    options.token = str(name('token', 'TOKEN'), src.token)
    auth = 'token'
  } else if (src.nkey) {
    const seed = str(name('nkeySeed', 'NKEY'), src.nkey)!
    options.authenticator = nkeyAuthenticator(new TextEncoder().encode(seed.trim()))
    auth = 'nkey'
  } else if (src.creds) {
    const file = str(name('credentialsFile', 'CREDENTIALS_FILE'), src.creds)!
    let bytes: Uint8Array
    try {
      bytes = readFileSync(file)
    } catch (err) {
      throw new NatsConnectError(
        `cannot read the NATS credentials file ${file} (${name('credentialsFile', 'CREDENTIALS_FILE')}): ${(err as Error).message}`,
        { cause: err },
      )
    }
    options.authenticator = credsAuthenticator(bytes)
    auth = 'credentials'
  }
  return { options, servers, auth, authFrom: auth === 'none' ? 'none' : from }
}

/** Connects, or throws a NatsConnectError naming the servers, the auth used and the server's reason. */
export async function connectNats(resolved: ResolvedNats): Promise<NatsConnection> {
  try {
    return await connect(resolved.options)
  } catch (err) {
    const why = (err as Error)?.message ?? String(err)
    const auth = resolved.auth === 'none' ? 'no auth' : `${resolved.auth} auth from ${resolved.authFrom}`
    throw new NatsConnectError(`could not connect to NATS at ${resolved.servers.join(', ')} (${auth}): ${why}`, { cause: err })
  }
}

/** The connection a publisher uses: the caller's (left open at close), or a new one from options and env. */
export async function openNats(option: NatsOption | undefined, env: Env): Promise<{ nc: NatsConnection; owned: boolean }> {
  if (isNatsConnection(option)) return { nc: option, owned: false }
  return { nc: await connectNats(resolveNatsOptions(option, env)), owned: true }
}
