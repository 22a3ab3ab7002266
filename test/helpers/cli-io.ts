// Runs the `offload` CLI in this process with buffered streams, as a test would read a terminal.
import type { CliIo } from '../../lib/cli/common.js';
import { main } from '../../lib/cli/main.js';

export interface BufferedIo extends CliIo {
  /** Everything written to stdout so far. */
  readonly stdout: string;
  /** Everything written to stderr so far. */
  readonly stderr: string;
}

export interface BufferedIoOptions {
  /** The CLI's environment: empty by default, so a BROKER_URL of the test run does not leak in. */
  env?: NodeJS.ProcessEnv;
  /** Pretend stdout is a terminal. @defaultValue false */
  isTTY?: boolean;
}

export function bufferedIo(options: BufferedIoOptions = {}): BufferedIo {
  let stdout = '';
  let stderr = '';
  return {
    out: (text) => {
      stdout += text;
    },
    err: (text) => {
      stderr += text;
    },
    isTTY: options.isTTY ?? false,
    env: options.env ?? {},
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
  };
}

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
  /** How long `main` took, in ms. */
  ms: number;
}

/** `offload <args…>` through `main()`, with its exit code and output. */
export async function runCli(args: string[], options: BufferedIoOptions = {}): Promise<CliRun> {
  const io = bufferedIo(options);
  const started = performance.now();
  const code = await main(args, io);
  return { code, stdout: io.stdout, stderr: io.stderr, ms: performance.now() - started };
}

/** `stdout` parsed as the one JSON document a `--json` command prints. */
export function jsonOf<T = any>(run: CliRun): T {
  try {
    return JSON.parse(run.stdout) as T;
  } catch {
    throw new Error(
      `stdout is not one JSON document (exit ${run.code}):\n${run.stdout}\nstderr:\n${run.stderr}`,
    );
  }
}
