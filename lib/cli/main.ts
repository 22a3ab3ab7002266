#!/usr/bin/env node
import { OffloadError } from '../errors.js';
import type { Command } from './command.js';
import { CliError, type CliIo, EXIT, processIo, UsageError } from './common.js';
import { jobsCommand } from './jobs.js';
import { runCommand } from './run.js';
import { workerCommand } from './worker.js';

export const COMMANDS: readonly Command[] = [workerCommand, runCommand, jobsCommand];

export const EXIT_CODES_HELP = `Exit codes:
  0    done: the job succeeded, the worker drained or stopped cleanly, the command did its work
  1    the job failed or was canceled; a job command found nothing to act on
  2    bad usage: unknown command or option, missing argument, invalid payload
  3    the broker could not be reached, or the entry module could not be loaded
  130  interrupted (SIGINT/SIGTERM) before a foreground run finished`;

function mainHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length));
  return `Usage: offload <command> [options]

Commands:
${COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`).join('\n')}

Run \`offload <command> --help\` for a command's options.
The broker is --broker <url> or BROKER_URL: memory:, redis://…, postgres://…, sqlite:path.

${EXIT_CODES_HELP}
`;
}

/** Run the CLI with `argv` (without node and the script); resolves to the exit code. */
export async function main(argv: string[], io: CliIo = processIo): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    io.out(mainHelp());
    return name === undefined ? EXIT.usage : EXIT.ok;
  }
  if (name === '--version' || name === '-v') {
    io.out(`${(require('../../../package.json') as { version: string }).version}\n`);
    return EXIT.ok;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    io.err(`offload: unknown command "${name}". Commands: ${COMMANDS.map((c) => c.name).join(', ')}.\n`);
    return EXIT.usage;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    io.out(command.helpFor?.(rest) ?? command.help);
    return EXIT.ok;
  }
  try {
    return await command.run(rest, io);
  } catch (err) {
    return report(err, io, command.name);
  }
}

/** Print an error the way a CLI should: one clear line, a stack only for the unexpected. */
export function report(err: unknown, io: CliIo, command: string): number {
  if (err instanceof UsageError) {
    io.err(`${err.message}\nRun \`offload ${command} --help\` for usage.\n`);
    return EXIT.usage;
  }
  if (err instanceof CliError) {
    io.err(`offload ${command}: ${err.message}\n`);
    return err.exitCode;
  }
  if (err instanceof OffloadError) {
    io.err(`offload ${command}: ${err.message}\n`);
    return err.status === 503 ? EXIT.unavailable : err.status >= 500 ? EXIT.failed : EXIT.usage;
  }
  io.err(`offload ${command}: ${(err as Error)?.stack ?? String(err)}\n`);
  return EXIT.failed;
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
      // A driver or a user's module that keeps a handle open must not keep a finished command alive.
      setTimeout(() => process.exit(code), 1000).unref();
    },
    (err) => {
      process.exitCode = report(err, processIo, 'offload');
    },
  );
}
