// Run the real `offload` bin (build/lib/cli/main.js) as a child process, as a user's shell or
// cron would, and the brokers the CLI tests run it against.
import { type ChildProcess, spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { postgresUrl, redisUrl, sqliteUrl } from './broker-urls.js';

export const BIN = resolve(__dirname, '../../lib/cli/main.js');
/** The compiled fixture app (test/fixtures/cli-app.fixture.ts). */
export const APP = resolve(__dirname, '../fixtures/cli-app.fixture.js');

export interface CliRun {
  child: ChildProcess;
  /** Resolves when the process exits, with its code and everything it printed. */
  done: Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
    ms: number;
  }>;
  stderr(): string;
}

/** Start `offload <args>` with `env` added to this process's environment (BROKER_URL removed). */
export function startCli(args: string[], env: Record<string, string> = {}, timeoutMs = 60_000): CliRun {
  const base = { ...process.env };
  delete base.BROKER_URL;
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...base, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const t0 = Date.now();
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const done = new Promise<{
    code: number | null;
    signal: NodeJS.Signals | null;
    stdout: string;
    stderr: string;
    ms: number;
  }>((resolveDone) => {
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolveDone({ code, signal, stdout, stderr, ms: Date.now() - t0 });
    });
  });
  return { child, done, stderr: () => stderr };
}

/** Run `offload <args>` to the end. */
export function cli(args: string[], env: Record<string, string> = {}, timeoutMs?: number) {
  return startCli(args, env, timeoutMs).done;
}

/** A broker the CLI tests run on: a URL unique to the test, and what removes its data. */
export interface CliBroker {
  name: 'sqlite' | 'redis' | 'postgres';
  url: string;
  cleanup(): Promise<void>;
}

/** A fresh broker of each kind for one test: a new SQLite file, Redis prefix, PostgreSQL schema. */
export const CLI_BROKERS: { name: CliBroker['name']; make(): CliBroker }[] = [
  { name: 'sqlite', make: () => ({ name: 'sqlite', ...sqliteUrl('cli') }) },
  { name: 'redis', make: () => ({ name: 'redis', ...redisUrl('cli') }) },
  { name: 'postgres', make: () => ({ name: 'postgres', ...postgresUrl('cli') }) },
];
