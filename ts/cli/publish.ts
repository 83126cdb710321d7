// `dynamo-kv publish`: the sidecar next to an engine (publish-run.ts runs it). Its options and help, and
// the mapping of the engine and NATS flags to the library's options, which inspect shares.
import type { Command } from 'commander'
import type { NatsOptions } from '../transport/nats.js'
import type { CliCommand } from './commands.js'
import {
  addLogOptions,
  choiceOpt,
  endpointsArg,
  flagOpt,
  flagValue,
  fromCli,
  intArg,
  type LogOptions,
  nameArg,
  nonEmptyArg,
  opt,
  secondsArg,
  u64Arg,
  UsageError,
} from './common.js'
import { EVENT_PLANES, type Wire, WIRES } from './wire.js'

export interface EngineFlags {
  engineEndpoint?: string[]
  replayEndpoint?: string[]
  topic: string
  dpRanks: number
  onLoss: 'keep' | 'reset'
  replayTimeout: number
  engineSilence: number
}

export interface NatsFlags {
  natsServer?: string
  natsUser?: string
  natsPassword?: string
  natsToken?: string
  natsNkeySeed?: string
  natsCreds?: string
  natsTlsCa?: string
  natsConnectTimeout: number
}

export interface PublishFlags extends EngineFlags, NatsFlags, LogOptions {
  blockSize?: number
  namespace: string
  component: string
  endpoint: string
  workerId?: bigint
  wire: Wire
  mode: 'event-plane' | 'jetstream'
  eventPlane?: 'zmq' | 'nats'
  eventPlaneHost?: string
  zmqBindHost?: string
  zmqPort?: number
  zmqSettle?: number
  discoveryBackend?: string
  etcdEndpoints?: string
  discoveryDir?: string
  streamMaxAge?: number
  maxPending?: number
  closeTimeout: number
  metricsPort?: number
  metricsHost: string
}

/** The flags that only `--wire dynamo-1.4` takes: [option key, flag]. */
export const WIRE14_FLAGS = [
  ['endpoint', '--endpoint'],
  ['eventPlane', '--event-plane'],
  ['eventPlaneHost', '--event-plane-host'],
  ['zmqBindHost', '--zmq-bind-host'],
  ['zmqPort', '--zmq-port'],
  ['zmqSettle', '--zmq-settle'],
  ['discoveryBackend', '--discovery-backend'],
  ['etcdEndpoints', '--etcd-endpoints'],
  ['discoveryDir', '--discovery-dir'],
] as const

export const NATS_FLAGS = [
  'natsServer',
  'natsUser',
  'natsPassword',
  'natsToken',
  'natsNkeySeed',
  'natsCreds',
  'natsTls',
  'natsTlsCa',
] as const

/** The engine options (publish and inspect share them). */
export function addEngineOptions(cmd: Command): Command {
  return cmd
    .addOption(
      opt(
        '--engine-endpoint <url...>',
        "the engine's ZeroMQ KV-event PUB endpoint(s), e.g. tcp://127.0.0.1:5557 (repeat or comma-separate)",
        'DYNAMO_KV_ENGINE_ENDPOINT',
        endpointsArg,
      ),
    )
    .addOption(opt('--topic <prefix>', 'ZeroMQ topic prefix to subscribe to', 'DYNAMO_KV_TOPIC').default(''))
    .addOption(flagOpt('--bind', 'bind the SUB socket(s) and let the engine connect', 'DYNAMO_KV_BIND'))
    .addOption(
      opt(
        '--engine-silence <seconds>',
        'warn when the engine has sent nothing for this long (0: never)',
        'DYNAMO_KV_ENGINE_SILENCE',
        secondsArg(0, 86_400),
      ).default(5),
    )
}

function addNatsOptions(cmd: Command): Command {
  return cmd
    .addOption(
      opt('--nats-server <urls>', 'NATS server URL(s), comma-separated (default nats://localhost:4222)', 'NATS_SERVER', nonEmptyArg),
    )
    .addOption(opt('--nats-user <user>', 'NATS user (with --nats-password)', 'NATS_AUTH_USERNAME', nonEmptyArg))
    .addOption(opt('--nats-password <password>', 'NATS password', 'NATS_AUTH_PASSWORD', nonEmptyArg))
    .addOption(opt('--nats-token <token>', 'NATS token', 'NATS_AUTH_TOKEN', nonEmptyArg))
    .addOption(opt('--nats-nkey-seed <seed>', 'NATS nkey seed (SU...)', 'NATS_AUTH_NKEY', nonEmptyArg))
    .addOption(opt('--nats-creds <file>', 'NATS credentials (.creds) file', 'NATS_AUTH_CREDENTIALS_FILE', nonEmptyArg))
    .addOption(flagOpt('--nats-tls', 'require TLS to NATS (system CAs unless --nats-tls-ca)', 'DYNAMO_KV_NATS_TLS'))
    .addOption(opt('--nats-tls-ca <file>', 'CA certificate file for NATS TLS (implies --nats-tls)', 'DYNAMO_KV_NATS_TLS_CA', nonEmptyArg))
    .addOption(
      opt('--nats-connect-timeout <ms>', 'NATS connect timeout', 'DYNAMO_KV_NATS_CONNECT_TIMEOUT', intArg(1, 600_000)).default(5000),
    )
}

/**
 * NATS options for the library. Auth given by flags replaces the environment's entirely (flags win);
 * without auth flags the library reads NATS_AUTH_* itself and names those variables in its errors.
 */
export function natsOptions(cmd: Command, o: NatsFlags): NatsOptions {
  const nats: NatsOptions = { timeoutMs: o.natsConnectTimeout }
  if (o.natsServer !== undefined)
    nats.servers = o.natsServer
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean)
  const auth = ['natsUser', 'natsPassword', 'natsToken', 'natsNkeySeed', 'natsCreds'].filter((k) => fromCli(cmd, k))
  if (auth.length > 0) {
    if (fromCli(cmd, 'natsUser') || fromCli(cmd, 'natsPassword')) {
      nats.user = o.natsUser
      nats.pass = o.natsPassword
      if (nats.user === undefined || nats.pass === undefined) throw new UsageError('--nats-user and --nats-password go together')
    }
    if (fromCli(cmd, 'natsToken')) nats.token = o.natsToken
    if (fromCli(cmd, 'natsNkeySeed')) nats.nkeySeed = o.natsNkeySeed
    if (fromCli(cmd, 'natsCreds')) nats.credentialsFile = o.natsCreds
  }
  const tls = flagValue(cmd, 'natsTls', 'DYNAMO_KV_NATS_TLS')
  if (o.natsTlsCa !== undefined) nats.tls = { caFile: o.natsTlsCa }
  else if (tls) nats.tls = true
  return nats
}

function define(program: Command): Command {
  const cmd = program
    .command('publish')
    .summary("the sidecar next to an engine: its ZeroMQ KV events to Dynamo router events on Dynamo's event plane")
    .description(
      "Reads an engine's ZeroMQ KV-event stream (vLLM, SGLang, TensorRT-LLM) and publishes Dynamo router events until " +
        'SIGINT/SIGTERM: for Dynamo 1.0-1.3 (--wire dynamo-1.0) on NATS (event plane or JetStream); for Dynamo 1.4+ ' +
        '(--wire dynamo-1.4) on a direct ZeroMQ socket per dp rank (or NATS), registered in the discovery store. ' +
        'Then it stops reading, publishes what it accepted, closes (removing its discovery records) and exits 0. ' +
        'Every option can also be set by the environment variable shown; a flag wins over its variable.',
    )
  cmd.optionsGroup('Engine (ZeroMQ):')
  addEngineOptions(cmd)
    .addOption(
      opt(
        '--replay-endpoint <url...>',
        "the engine's ZeroMQ replay (ROUTER) endpoint(s), one per --engine-endpoint; without one, gaps are lost",
        'DYNAMO_KV_REPLAY_ENDPOINT',
        endpointsArg,
      ),
    )
    .addOption(
      opt(
        '--dp-ranks <n>',
        'data-parallel ranks of one engine: rank r on port + r (both endpoints)',
        'DYNAMO_KV_DP_RANKS',
        intArg(1, 1024),
      ).default(1),
    )
    .addOption(
      choiceOpt(
        '--on-loss <policy>',
        'after batches are lost: keep the index, or reset the rank',
        'DYNAMO_KV_ON_LOSS',
        ['keep', 'reset'],
        'keep',
      ),
    )
    .addOption(
      opt(
        '--replay-timeout <ms>',
        'abandon a replay that stays silent this long',
        'DYNAMO_KV_REPLAY_TIMEOUT',
        intArg(1, 3_600_000),
      ).default(5000),
    )
    .addOption(
      opt(
        '--block-size <tokens>',
        "tokens per KV block: must be the engine's (vLLM --block-size)",
        'DYNAMO_KV_BLOCK_SIZE',
        intArg(1, 65_536),
      ),
    )
    .optionsGroup('Dynamo:')
    .addOption(opt('--namespace <name>', 'Dynamo namespace', 'DYN_NAMESPACE', nameArg).default('dynamo'))
    .addOption(opt('--component <name>', 'Dynamo component', 'DYN_COMPONENT', nameArg).default('backend'))
    .addOption(opt('--endpoint <name>', 'Dynamo endpoint (--wire dynamo-1.4)', 'DYN_ENDPOINT', nameArg).default('generate'))
    .addOption(opt('--worker-id <id>', 'the worker id routers know this worker by (u64; default random)', 'DYNAMO_KV_WORKER_ID', u64Arg))
    .addOption(choiceOpt('--wire <wire>', 'Dynamo wire: 1.0-1.3 or 1.4+', 'DYNAMO_KV_WIRE', WIRES, 'dynamo-1.0'))
    .addOption(
      choiceOpt(
        '--mode <mode>',
        'core NATS event plane, or a durable JetStream stream',
        'DYNAMO_KV_MODE',
        ['event-plane', 'jetstream'],
        'event-plane',
      ),
    )
    .addOption(
      choiceOpt('--event-plane <plane>', 'direct ZeroMQ sockets (default) or NATS (--wire dynamo-1.4)', 'DYN_EVENT_PLANE', EVENT_PLANES),
    )
    .addOption(
      opt(
        '--event-plane-host <host>',
        'address routers connect to, written in discovery (--wire dynamo-1.4)',
        'DYN_EVENT_PLANE_HOST',
        nonEmptyArg,
      ),
    )
    .addOption(
      opt('--zmq-bind-host <host>', 'address the ZeroMQ event sockets bind (--wire dynamo-1.4)', 'DYNAMO_KV_ZMQ_BIND_HOST', nonEmptyArg),
    )
    .addOption(
      opt('--zmq-port <port>', 'dp rank r binds port + r (default: free ports; --wire dynamo-1.4)', 'DYNAMO_KV_ZMQ_PORT', intArg(1, 65535)),
    )
    .addOption(
      opt(
        '--zmq-settle <ms>',
        "longest hold of a dp rank's first events until a router subscribes (0: none; default 1000; --wire dynamo-1.4)",
        'DYNAMO_KV_ZMQ_SETTLE',
        intArg(0, 600_000),
      ),
    )
    .addOption(choiceOpt('--discovery-backend <backend>', 'discovery store (--wire dynamo-1.4)', 'DYN_DISCOVERY_BACKEND', ['etcd', 'file']))
    .addOption(opt('--etcd-endpoints <urls>', 'etcd URL(s), comma-separated (--wire dynamo-1.4)', 'ETCD_ENDPOINTS', nonEmptyArg))
    .addOption(opt('--discovery-dir <dir>', 'file-store discovery directory (--wire dynamo-1.4)', 'DYN_FILE_KV', nonEmptyArg))
  cmd.optionsGroup('NATS:')
  addNatsOptions(cmd)
    .addOption(
      opt('--stream-max-age <seconds>', 'JetStream stream max age when creating it', 'DYN_NATS_STREAM_MAX_AGE', intArg(1, 2 ** 31)),
    )
    .optionsGroup('Publishing:')
    .addOption(
      opt('--max-pending <events>', 'events accepted and unconfirmed before reading waits', 'DYNAMO_KV_MAX_PENDING', intArg(1, 1 << 24)),
    )
    .addOption(
      opt(
        '--close-timeout <ms>',
        'how long shutting down may take to publish what was accepted',
        'DYNAMO_KV_CLOSE_TIMEOUT',
        intArg(1, 600_000),
      ).default(10_000),
    )
    .optionsGroup('Metrics:')
    .addOption(
      opt(
        '--metrics-port <port>',
        'serve Prometheus metrics on http://host:port/metrics (0: any free port)',
        'DYNAMO_KV_METRICS_PORT',
        intArg(0, 65535),
      ),
    )
    .addOption(
      opt('--metrics-host <host>', 'address the metrics server listens on', 'DYNAMO_KV_METRICS_HOST', nonEmptyArg).default('0.0.0.0'),
    )
  cmd.optionsGroup('Logging:')
  addLogOptions(cmd)
  cmd.addHelpText(
    'after',
    '\nExample (vLLM started with --kv-events-config \'{"enable_kv_cache_events": true, "publisher": "zmq",\n' +
      '  "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558"}\'):\n' +
      '  dynamo-kv publish --engine-endpoint tcp://127.0.0.1:5557 --replay-endpoint tcp://127.0.0.1:5558 \\\n' +
      '    --block-size 16 --worker-id 42 --nats-server nats://127.0.0.1:4222 --metrics-port 9090\n' +
      "\nThe same for a Dynamo 1.4+ deployment, its discovery store and event-plane address in Dynamo's variables (42: the\n" +
      "worker's instance id):\n" +
      '  DYN_DISCOVERY_BACKEND=etcd ETCD_ENDPOINTS=http://127.0.0.1:2379 DYN_EVENT_PLANE=zmq DYN_EVENT_PLANE_HOST=10.0.0.5 \\\n' +
      '  dynamo-kv publish --wire dynamo-1.4 --engine-endpoint tcp://127.0.0.1:5557 --block-size 16 --worker-id 42',
  )
  return cmd
}

/** The ZeroMQ source options from the engine flags. */
export function zmqOptions(o: EngineFlags, bind: boolean) {
  const engines = o.engineEndpoint ?? []
  if (engines.length === 0)
    throw new UsageError("--engine-endpoint (or DYNAMO_KV_ENGINE_ENDPOINT) is required: the engine's KV-event endpoint")
  const replays = o.replayEndpoint ?? []
  if (replays.length > 0 && replays.length !== engines.length)
    throw new UsageError(`--replay-endpoint: give one per --engine-endpoint (${engines.length}), got ${replays.length}`)
  if (o.dpRanks > 1 && engines.length > 1)
    throw new UsageError('--dp-ranks goes with a single --engine-endpoint (rank r on port + r); with several, list every endpoint')
  if (o.dpRanks > 1 && !engines[0]!.startsWith('tcp://'))
    throw new UsageError('--dp-ranks needs a tcp://host:port --engine-endpoint (rank r listens on port + r)')
  const common = { topic: o.topic, bind, onLoss: o.onLoss, replayTimeoutMs: o.replayTimeout }
  if (engines.length === 1)
    return { endpoint: engines[0]!, ...(replays[0] ? { replayEndpoint: replays[0] } : {}), dpRanks: o.dpRanks, ...common }
  return { endpoints: engines.map((endpoint, i) => (replays[i] ? { endpoint, replayEndpoint: replays[i] } : endpoint)), ...common }
}

export const publishCommand: CliCommand = {
  name: 'publish',
  define,
  run: async (cmd) => (await import('./publish-run.js')).run(cmd),
}
