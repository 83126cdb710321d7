// The command registry. A command adds itself (options and help) to the program, and runs with the parsed
// options, resolving to its exit status; its running part is a module of its own (<command>-run.ts),
// imported only then, so help and usage errors load neither the core nor sockets. Commands that need the
// router side (an indexer service, a query tool) are added here the same way.
import type { Command } from 'commander'
import { demoCommand } from './demo.js'
import { inspectCommand } from './inspect.js'
import { publishCommand } from './publish.js'

export interface CliCommand {
  name: string
  /** Adds the command, its options and help to `program`; returns it. */
  define(program: Command): Command
  /**
   * Runs with the command's parsed options: resolves to the exit status (0, or 1 for a runtime failure);
   * throws a UsageError for bad usage or configuration (status 2).
   */
  run(cmd: Command): Promise<number>
}

export const COMMANDS: readonly CliCommand[] = [publishCommand, inspectCommand, demoCommand]
