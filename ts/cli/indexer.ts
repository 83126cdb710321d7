// `dynamo-kv indexer`: a standalone KV indexer HTTP service, a drop-in for Dynamo 1.6's
// (`python -m dynamo.indexer`): the same routes, bodies and status codes. Engines register their ZeroMQ
// KV-event streams (POST /register, or --engines FILE at start); clients ask for a prompt's overlap per
// worker (POST /query, /query_by_hash). This file holds the options; indexer-run.ts runs it.
import type { Command } from 'commander'
import type { CliCommand } from './commands.js'
import { addLogOptions, choiceOpt, intArg, type LogOptions, nonEmptyArg, opt, secondsArg } from './common.js'

export interface IndexerFlags extends LogOptions {
  host: string
  port: number
  engines?: string
  peers?: string
  engineSilence: number
  queryBodyLimit: number
  bodyLimit: number
  testEndpoints?: boolean
  http?: 'native' | 'node'
}

/** Dynamo's reading of a boolean variable: 1, true, yes or on (any case); anything else is off. */
function truthy(v: string): boolean {
  return ['1', 'true', 'yes', 'on'].includes(v.trim().toLowerCase())
}

function define(program: Command): Command {
  const cmd = program
    .command('indexer')
    .summary("a standalone KV indexer HTTP service with Dynamo 1.6's routes (/register, /query, ...)")
    .description(
      "Serves Dynamo 1.6's standalone indexer API: POST /register connects to an engine's ZeroMQ KV-event stream " +
        '(with replay), POST /query and /query_by_hash answer how many tokens of a prompt each worker and dp rank ' +
        'holds; also /unregister, /workers, /dump, /health, /metrics, /peers. Every option can also be set by the ' +
        'environment variable shown. SIGINT or SIGTERM stops it (exit 0).',
    )
    .addOption(opt('--host <address>', 'address to listen on', 'DYNAMO_KV_INDEXER_HOST', nonEmptyArg).default('127.0.0.1'))
    .addOption(opt('--port <port>', 'HTTP port (0: any free port, logged)', 'DYNAMO_KV_INDEXER_PORT', intArg(0, 65_535)).default(8090))
    .addOption(
      opt(
        '--engines <file>',
        'register these engines at start: a JSON array of /register bodies',
        'DYNAMO_KV_INDEXER_ENGINES',
        nonEmptyArg,
      ),
    )
    .addOption(
      opt(
        '--peers <urls>',
        'other indexers (comma-separated http://host:port): the first that answers gives its /dump at start',
        'DYNAMO_KV_INDEXER_PEERS',
        nonEmptyArg,
      ),
    )
    .addOption(
      opt(
        '--engine-silence <seconds>',
        'warn when a registered engine has sent nothing this long after registering (0: never)',
        'DYNAMO_KV_ENGINE_SILENCE',
        secondsArg(0, 86_400),
      ).default(5),
    )
    .addOption(
      opt(
        '--query-body-limit <bytes>',
        'largest /query and /query_by_hash body (413 above)',
        'DYNAMO_KV_INDEXER_QUERY_BODY_LIMIT',
        intArg(1024, 1 << 30),
      ).default(8 * 1024 * 1024),
    )
    .addOption(
      opt(
        '--body-limit <bytes>',
        'largest body of the other routes (413 above)',
        'DYNAMO_KV_INDEXER_BODY_LIMIT',
        intArg(1024, 1 << 30),
      ).default(2 * 1024 * 1024),
    )
    .addOption(
      choiceOpt(
        '--http <front>',
        'the HTTP front: native (hyper on a thread of its own, the JavaScript thread only computes the answers; ' +
          'the default when the native core is loaded) or node (node:http; the only one with the TypeScript fallback)',
        'DYNAMO_KV_INDEXER_HTTP',
        ['native', 'node'],
      ),
    )
    .addOption(
      opt(
        '--test-endpoints [on]',
        "serve the test-only routes /test/pause_listener and /test/resume_listener (Dynamo's variable: on " +
          'for 1, true, yes or on, any case)',
        'DYN_KV_INDEXER_TEST_ENDPOINTS',
        truthy,
      ),
    )
  addLogOptions(cmd)
  cmd.addHelpText(
    'after',
    '\nExample:\n' +
      '  dynamo-kv indexer --port 8090 &\n' +
      '  curl -s localhost:8090/register -H content-type:application/json \\\n' +
      '    -d \'{"instance_id":1,"endpoint":"tcp://127.0.0.1:5557","model_name":"m","block_size":16}\'\n' +
      '  curl -s localhost:8090/query -H content-type:application/json -d \'{"token_ids":[1,2,3],"model_name":"m"}\'',
  )
  return cmd
}

export const indexerCommand: CliCommand = {
  name: 'indexer',
  define,
  run: async (cmd) => (await import('./indexer-run.js')).run(cmd),
}
