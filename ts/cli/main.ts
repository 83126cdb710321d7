#!/usr/bin/env node
// The `dynamo-kv` command. Exit statuses: 0 success, 2 bad usage or configuration (one line on stderr
// naming the problem), 1 a runtime failure.
import { Command, CommanderError } from 'commander'
import { createRequire } from 'node:module'
import { COMMANDS } from './commands.js'
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, oneLine, UsageError } from './common.js'

function version(): string {
  try {
    return (createRequire(import.meta.url)('../package.json') as { version: string }).version
  } catch {
    return 'unknown'
  }
}

/** Commander's error (and its "Did you mean" hint) as one line. */
function oneLineError(message: string, write: (s: string) => void): void {
  write(`${oneLine(message)}\n`)
}

/** The program with every registered command; `onStatus` receives the exit status of the command run. */
export function buildProgram(onStatus: (status: number) => void): Command {
  const program = new Command('dynamo-kv')
    .description("NVIDIA Dynamo KV-aware routing: an engine's KV-cache events to Dynamo router events")
    .version(version(), '-V, --version')
    .showSuggestionAfterError()
    .configureOutput({ outputError: oneLineError })
    .exitOverride()
    .addHelpText(
      'after',
      '\nRun `dynamo-kv demo` to see it work with no engine and no NATS server; `dynamo-kv <command> --help` for each command.',
    )
  for (const c of COMMANDS) {
    c.define(program)
      .exitOverride()
      .showSuggestionAfterError()
      .configureOutput({ outputError: oneLineError })
      .action(async (_opts: unknown, cmd: Command) => onStatus(await c.run(cmd)))
  }
  return program
}

async function main(argv: string[]): Promise<number> {
  // a reader that went away (`dynamo-kv inspect | head`) ends the command, quietly
  for (const stream of [process.stdout, process.stderr])
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(EXIT_OK)
      throw err
    })
  let status = EXIT_OK
  const program = buildProgram((s) => {
    status = s
  })
  try {
    await program.parseAsync(argv)
  } catch (err) {
    // commander printed its message (an unknown option, a bad value naming its flag or variable) or the help
    if (err instanceof CommanderError) return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE
    if (err instanceof UsageError) {
      const name = program.args[0] && COMMANDS.some((c) => c.name === program.args[0]) ? ` ${program.args[0]}` : ''
      process.stderr.write(`dynamo-kv${name}: error: ${oneLine(err.message)}\n`)
      return EXIT_USAGE
    }
    throw err
  }
  return status
}

main(process.argv).then(
  (status) => {
    process.exitCode = status
    // sockets and timers are closed by then; a handle a dependency leaves open must not keep the process
    setTimeout(() => process.exit(status), 2000).unref()
  },
  (err: unknown) => {
    process.stderr.write(`dynamo-kv: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
    process.exit(EXIT_FAILURE)
  },
)
