import type { CliIo } from './common.js';

/** One `offload <name>` subcommand. */
export interface Command {
  name: string;
  /** One line for `offload --help`. */
  summary: string;
  /** The full text of `offload <name> --help`. */
  help: string;
  /** The help for `offload <name> <args…> --help` when it differs by sub-command (`offload jobs list --help`). */
  helpFor?(args: string[]): string;
  /** Runs with the arguments after the command name; resolves to the exit code. */
  run(args: string[], io: CliIo): Promise<number>;
}
