// `dynamo-kv demo`: the whole job on an embedded default, with no engine and no NATS server.
//
// Several simulated vLLM engines (the same shared documents, different request streams) publish KV-cache
// events over real ZeroMQ sockets; dynamo-kv reads each stream (with gap replay), turns the batches into
// Dynamo router events and publishes them; a router follows them into a RadixIndex and picks workers by
// prefix overlap. Without --nats the events travel through an in-process event plane (the exact bytes a
// publisher sends to NATS); with --nats URL they go through KvEventPublishers and that server. One batch
// is dropped on purpose halfway and must come back through the engine's replay buffer; at the end the
// router's index must equal what every engine holds. This file holds the options; demo-run.ts runs it.
import type { Command } from 'commander'
import type { CliCommand } from './commands.js'
import { addLogOptions, flagOpt, intArg, type LogOptions, nonEmptyArg, opt, secondsArg } from './common.js'

export interface DemoFlags extends LogOptions {
  duration: number
  workers: number
  seed: number
  nats?: string
}

function define(program: Command): Command {
  const cmd = program
    .command('demo')
    .summary('see it work: simulated engines → dynamo-kv → a router choosing workers (no engine, no NATS needed)')
    .description(
      'Runs simulated vLLM engines publishing KV-cache events over real ZeroMQ sockets, dynamo-kv turning them into ' +
        "Dynamo router events, and a router following them to pick the worker that holds a request's prefix. One engine " +
        'batch is dropped on purpose and repaired by replay. Without --nats, events travel through an in-process event ' +
        'plane; with --nats URL, through that NATS server. Every option can also be set by the environment variable shown.',
    )
    .addOption(opt('--duration <seconds>', 'how long the engines run', 'DYNAMO_KV_DEMO_DURATION', secondsArg(0.5, 3600)).default(5))
    .addOption(opt('--workers <n>', 'simulated engines (one worker each)', 'DYNAMO_KV_DEMO_WORKERS', intArg(2, 8)).default(3))
    .addOption(opt('--seed <n>', 'workload seed', 'DYNAMO_KV_DEMO_SEED', intArg(1, 2 ** 31)).default(7))
    .addOption(flagOpt('--json', 'print one machine-readable JSON summary on stdout instead of text', 'DYNAMO_KV_DEMO_JSON'))
    .addOption(opt('--nats <url>', 'publish through this NATS server (e.g. nats://127.0.0.1:4222)', 'DYNAMO_KV_DEMO_NATS', nonEmptyArg))
  addLogOptions(cmd, 'warn')
  return cmd
}

export const demoCommand: CliCommand = {
  name: 'demo',
  define,
  run: async (cmd) => (await import('./demo-run.js')).run(cmd),
}
