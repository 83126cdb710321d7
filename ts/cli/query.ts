// `dynamo-kv query`: asks one worker's recovery endpoint (SPEC 7, served over NATS by a publisher started
// with `recoveryEndpoint: true`) for a range of its events or a dump of its blocks, and prints the answer
// as JSON lines (u64 exact). This file holds the options; query-run.ts runs it.
import type { Command } from 'commander'
import type { CliCommand } from './commands.js'
import { addLogOptions, intArg, type LogOptions, nameArg, opt, secondsArg, u64Arg } from './common.js'
import { addNatsOptions, type NatsFlags } from './publish.js'

export interface QueryFlags extends LogOptions, NatsFlags {
  namespace: string
  component: string
  workerId?: bigint
  dpRank: number
  start?: bigint
  end?: bigint
  timeout: number
}

function define(program: Command): Command {
  const cmd = program
    .command('query')
    .summary("ask a worker's recovery endpoint (NATS) for a range of its KV events or a dump; print JSON lines")
    .description(
      "Sends Dynamo's WorkerKvQueryRequest to one worker rank's recovery endpoint over NATS request/reply and prints " +
        'the answer: one JSON line per event (Events: a range; TreeDump: every block the rank holds, without --start/--end), ' +
        'then a summary line. TooNew, InvalidRange and Error answers are printed as one line and exit 1. u64 values are ' +
        'written exactly. Every option can also be set by the environment variable shown.',
    )
    .addOption(opt('--namespace <name>', 'Dynamo namespace', 'DYN_NAMESPACE', nameArg).default('dynamo'))
    .addOption(opt('--component <name>', 'Dynamo component', 'DYN_COMPONENT', nameArg).default('backend'))
    .addOption(opt('--worker-id <id>', 'the worker to ask (u64, required)', 'DYNAMO_KV_WORKER_ID', u64Arg))
    .addOption(opt('--dp-rank <rank>', 'the dp rank to ask', 'DYNAMO_KV_DP_RANK', intArg(0, 0xffff_ffff)).default(0))
    .addOption(opt('--start <event-id>', 'first event id of the range (u64; none: from the oldest kept)', 'DYNAMO_KV_QUERY_START', u64Arg))
    .addOption(opt('--end <event-id>', 'last event id of the range (u64; none: to the newest)', 'DYNAMO_KV_QUERY_END', u64Arg))
    .addOption(
      opt('--timeout <seconds>', 'give up when no reply chunk comes for this long', 'DYNAMO_KV_TIMEOUT', secondsArg(0.001, 3600)).default(
        5,
      ),
    )
  addNatsOptions(cmd)
  addLogOptions(cmd, 'warn')
  cmd.addHelpText(
    'after',
    '\nWithout --start and --end the worker answers with a dump (TreeDump) of the rank.\n' +
      'Output: {"kind":"Events"|"TreeDump","event":{...}} per event, then {"kind":...,"events":n}.\n' +
      '\nExample:\n  dynamo-kv query --nats-server nats://127.0.0.1:4222 --worker-id 42 --start 100 --end 200',
  )
  return cmd
}

export const queryCommand: CliCommand = {
  name: 'query',
  define,
  run: async (cmd) => (await import('./query-run.js')).run(cmd),
}
