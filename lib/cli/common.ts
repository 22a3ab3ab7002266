import { type ParseArgsConfig, parseArgs } from 'node:util';

/**
 * Exit codes of the `offload` command, the same for every subcommand (documented in the README
 * and in `offload --help`).
 */
export const EXIT = {
  /** Done: the job succeeded, the worker drained or stopped cleanly, the command did its work. */
  ok: 0,
  /** The job failed or was canceled; a job command found nothing to act on (`show` of an unknown id). */
  failed: 1,
  /** Bad usage: unknown command or option, missing argument, a payload that is not valid JSON or fails validation. */
  usage: 2,
  /** The broker could not be reached, or the entry module could not be loaded. */
  unavailable: 3,
  /** Interrupted (SIGINT/SIGTERM) before a foreground run finished. */
  interrupted: 130,
} as const;

/** What a command writes to: the process's streams, or buffers in tests. */
export interface CliIo {
  out(text: string): void;
  err(text: string): void;
  /** stdout is a terminal: progress bars and colour-free tables with padding. */
  readonly isTTY: boolean;
  /** stderr is a terminal (where `offload run` draws its progress bar); `isTTY` when not given. */
  readonly errIsTTY?: boolean;
  readonly env: NodeJS.ProcessEnv;
}

export const processIo: CliIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  get isTTY() {
    return process.stdout.isTTY === true;
  },
  get errIsTTY() {
    return process.stderr.isTTY === true;
  },
  env: process.env,
};

/** A usage mistake: printed with the command's help hint, exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** A failure with a message meant for the user and its exit code (no stack trace printed). */
export class CliError extends Error {
  override name = 'CliError';
  constructor(
    message: string,
    readonly exitCode: number,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

type Options = NonNullable<ParseArgsConfig['options']>;

/**
 * `node:util` parseArgs in strict mode, its errors turned into UsageErrors that name the
 * command (`offload jobs list: unknown option --fo`).
 */
export function parse<O extends Options>(
  command: string,
  args: string[],
  options: O,
  positionals = true,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const { values, positionals: rest } = parseArgs({
      args,
      options,
      allowPositionals: positionals,
      strict: true,
    });
    return { values: values as Record<string, string | boolean | undefined>, positionals: rest };
  } catch (err) {
    throw new UsageError(`offload ${command}: ${(err as Error).message}`);
  }
}

/** The broker URL from `--broker`, else `BROKER_URL`; `required` makes its absence a usage error. */
export function brokerUrl(command: string, flag: string | undefined, io: CliIo, required: true): string;
export function brokerUrl(
  command: string,
  flag: string | undefined,
  io: CliIo,
  required: false,
): string | undefined;
export function brokerUrl(command: string, flag: string | undefined, io: CliIo, required: boolean) {
  const url = flag ?? (io.env.BROKER_URL || undefined);
  if (required && !url) {
    throw new UsageError(
      `offload ${command}: no broker: pass --broker <url> or set BROKER_URL (redis://…, postgres://…, sqlite:path).`,
    );
  }
  return url;
}

/** A whole number ≥ min from an option value, or a usage error naming the option. */
export function intOption(
  command: string,
  name: string,
  value: string | undefined,
  min: number,
): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < min) {
    throw new UsageError(
      `offload ${command}: --${name} takes a whole number ≥ ${min}; got ${JSON.stringify(value)}.`,
    );
  }
  return n;
}

/** Seconds (decimals allowed) from an option value, as ms. */
export function secondsOption(command: string, name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) {
    throw new UsageError(
      `offload ${command}: --${name} takes seconds (a number ≥ 0); got ${JSON.stringify(value)}.`,
    );
  }
  return Math.round(n * 1000);
}
