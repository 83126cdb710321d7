// `dynamo-kv inspect`: listens to an engine's ZeroMQ KV-event stream and prints every message as one JSON
// line on stdout (u64 values as decimal strings), decoded into the router events it becomes, with its
// rejections; sequence gaps and restarts get a line of their own. A passive listener: it never asks the
// engine to replay, so what it prints is what the live socket carried. inspect-run.ts runs it.
import type { Command } from 'commander'
import type { CliCommand } from './commands.js'
import { addLogOptions, intArg, type LogOptions, opt, secondsArg } from './common.js'
import { addEngineOptions } from './publish.js'

export interface InspectFlags extends LogOptions {
  engineEndpoint?: string[]
  topic: string
  engineSilence: number
  blockSize?: number
  count?: number
  timeout?: number
}

function define(program: Command): Command {
  const cmd = program
    .command('inspect')
    .summary("print an engine's ZeroMQ KV events as JSON lines, decoded, with rejections and seq gaps")
    .description(
      "Connects to an engine's ZeroMQ KV-event endpoint and prints every message as one JSON line on stdout, decoded into " +
        'the Dynamo router events it becomes; logs go to stderr. Every option can also be set by the environment variable shown.',
    )
  addEngineOptions(cmd)
    .addOption(
      opt(
        '--block-size <tokens>',
        "tokens per KV block: must be the engine's (the block hashes depend on it)",
        'DYNAMO_KV_BLOCK_SIZE',
        intArg(1, 65_536),
      ),
    )
    .addOption(opt('--count <n>', 'stop after this many engine messages', 'DYNAMO_KV_COUNT', intArg(1, Number.MAX_SAFE_INTEGER)))
    .addOption(
      opt(
        '--timeout <seconds>',
        'stop after this long (with --count: exit 1 if fewer messages came)',
        'DYNAMO_KV_TIMEOUT',
        secondsArg(0.001, 31_536_000),
      ),
    )
  addLogOptions(cmd)
  cmd.addHelpText(
    'after',
    '\nOutput lines (u64 values as decimal strings):\n' +
      '  {"endpoint","topic","seq","dp_rank","events":[...],"rejected":{"<reason>":n}}   a batch, decoded\n' +
      '  {"endpoint","topic","seq","error":"malformed","bytes":n}   a payload that is not a batch\n' +
      '  {"endpoint","topic","gap":{"expected","got","missing"}}   seqs that never arrived\n' +
      '  {"endpoint","topic","restart":{"last","got"}}   the seq went back (an engine restart)\n' +
      '  {"endpoint","error":"frames"|"seq_length",...}   a message that is not [topic, seq, payload]\n' +
      '\nExample:\n  dynamo-kv inspect --engine-endpoint tcp://127.0.0.1:5557 --block-size 16 --count 10',
  )
  return cmd
}

export const inspectCommand: CliCommand = {
  name: 'inspect',
  define,
  run: async (cmd) => (await import('./inspect-run.js')).run(cmd),
}
