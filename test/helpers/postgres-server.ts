// Throwaway PostgreSQL servers for the tests that kill, freeze or restart the database: each a fresh
// `initdb` cluster in its own temp dir on a free loopback port, never the machine's shared server
// on 5432. PostgreSQL refuses to run as root: a root test process starts it as the `postgres` OS
// user (spawn's uid/gid, so the child's pid is the postmaster's own, not a wrapper's).
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import {
  chownSync,
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';

export interface PostgresServer {
  port: number;
  /** `postgres://postgres@127.0.0.1:<port>/postgres` (trust auth) */
  url: string;
  /** The temp dir: the cluster in `data/`, the server's log, its Unix socket. */
  dir: string;
  /** The postmaster's pid, or null while it is down. */
  readonly pid: number | null;
  /** Fast shutdown (SIGINT; SIGKILL after 5 s), then remove the dir. Final; safe to call twice. */
  stop(): Promise<void>;
  /**
   * SIGKILL the postmaster and every process it forked, as a crash: no shutdown checkpoint, no
   * goodbye to the clients, no statement finished after it. The dir stays for `restart()`.
   */
  kill(): Promise<void>;
  /**
   * SIGSTOP the postmaster and every process it forked: the server still holds its port (the
   * kernel completes new TCP handshakes) but answers nothing, as a hung host or a network
   * partition looks to a client. `thaw()` resumes exactly those processes.
   */
  freeze(): void;
  thaw(): void;
  /** Start again on the same port and cluster (crash recovery replays the WAL); wait until it answers. */
  restart(): Promise<void>;
  /** The server's log so far (for failure messages). */
  log(): string;
}

/** The newest installed server's bin dir (Debian layout), or OFFLOAD_TEST_PG_BIN. */
function binDir(): string {
  if (process.env.OFFLOAD_TEST_PG_BIN) return process.env.OFFLOAD_TEST_PG_BIN;
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'postgres')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (!versions[0]) throw new Error(`No PostgreSQL server under ${root}; set OFFLOAD_TEST_PG_BIN.`);
  return join(root, versions[0], 'bin');
}

/** Who the server runs as: the `postgres` OS user when this process is root, else this process's user. */
function serverUser(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  const id = (flag: string) => Number(execFileSync('id', [flag, 'postgres'], { encoding: 'utf8' }).trim());
  return { uid: id('-u'), gid: id('-g') };
}

/** Every postmaster these helpers started and have not seen exit: crashed on exit whatever happens. */
const live = new Set<ChildProcess>();

/** The postmaster's children (backends, checkpointer, WAL writer...): [] without /proc. */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

function signal(pids: number[], name: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, name);
    } catch {
      // Exited meanwhile.
    }
  }
}

/**
 * SIGKILL the postmaster and its children as one crash. Each child leads its own process group
 * (PostgreSQL calls setsid() in them), so no group kill reaches them; the postmaster is stopped
 * first so it can neither fork nor restart one meanwhile. Killed alone, it would leave backends
 * running their statements (and committing) on their own. Synchronous, for the exit hook.
 */
function crash(child: ChildProcess): void {
  const pid = child.pid!;
  try {
    process.kill(pid, 'SIGSTOP');
  } catch {
    return; // Already gone.
  }
  // Without /proc the backends notice the postmaster's death on their own, a moment later.
  signal([...childrenOf(pid), pid], 'SIGKILL');
}

let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  const killAll = () => {
    for (const child of live) crash(child);
    live.clear();
  };
  process.on('exit', killAll);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      killAll();
      process.kill(process.pid, signal);
    });
  }
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

async function freePort(): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    if (await canListen(port)) return port;
  }
  throw new Error('No free loopback port found for postgres.');
}

function readLog(dir: string): string {
  try {
    return readFileSync(join(dir, 'postgres.log'), 'utf8');
  } catch {
    return '';
  }
}

/** Whether a new connection gets an answer (not refused, not "the database system is starting up"). */
async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
  client.on('error', () => {});
  try {
    await client.connect();
    await client.query('SELECT 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => {});
  }
}

/** Spawn the postmaster and wait until it answers; rejects if it exits first. */
async function launch(
  port: number,
  dir: string,
  user: { uid: number; gid: number } | null,
): Promise<ChildProcess> {
  const args = [
    '-D',
    join(dir, 'data'),
    '-p',
    String(port),
    '-k',
    dir,
    '-c',
    'listen_addresses=127.0.0.1',
    // No fsync, no full-page images: the tests kill processes, not the machine; the page cache
    // (and every write the server made before the kill) survives that.
    '-c',
    'fsync=off',
    '-c',
    'full_page_writes=off',
    '-c',
    'max_connections=100',
  ];
  hookExit();
  const log = openSync(join(dir, 'postgres.log'), 'a');
  let child: ChildProcess;
  try {
    child = spawn(join(binDir(), 'postgres'), args, {
      stdio: ['ignore', log, log],
      ...(user ?? {}),
    });
  } finally {
    closeSync(log);
  }
  live.add(child);
  let exited = false;
  const gone = () => {
    exited = true;
    live.delete(child);
  };
  child.once('exit', gone);
  child.once('error', gone);
  const url = `postgres://postgres@127.0.0.1:${port}/postgres`;
  // Crash recovery after a kill takes a moment; a cold start less.
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) throw new Error(`postgres on port ${port} exited at start:\n${readLog(dir).slice(-2000)}`);
    if (await answers(url)) return child;
    if (Date.now() > deadline) {
      crash(child);
      throw new Error(`postgres on port ${port} did not answer within 30 s:\n${readLog(dir).slice(-2000)}`);
    }
    await sleep(50);
  }
}

async function signalAndWait(child: ChildProcess, kill: () => void, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  const gone = new Promise<true>((resolve) => child.once('exit', () => resolve(true)));
  kill();
  return Promise.race([gone, sleep(ms).then(() => false)]);
}

/** `initdb` a fresh cluster in a temp dir and start one server on a free 127.0.0.1 port. */
export async function startPostgresServer(): Promise<PostgresServer> {
  const user = serverUser();
  const dir = mkdtempSync(join(tmpdir(), 'offload-pg-'));
  try {
    if (user) chownSync(dir, user.uid, user.gid);
    execFileSync(
      join(binDir(), 'initdb'),
      ['-D', join(dir, 'data'), '-A', 'trust', '-U', 'postgres', '-E', 'UTF8', '--locale=C', '--no-sync'],
      { stdio: ['ignore', 'ignore', 'pipe'], timeout: 60_000, ...(user ?? {}) },
    );
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`initdb failed: ${(err as { stderr?: Buffer }).stderr?.toString() ?? String(err)}`);
  }
  let port = 0;
  let child: ChildProcess | null = null;
  for (let attempt = 0; ; attempt++) {
    port = await freePort();
    try {
      child = await launch(port, dir, user);
      break;
    } catch (err) {
      // Someone took the port between the check and the server's bind: try another one.
      if (attempt < 5 && /could not bind|Address already in use/i.test(readLog(dir))) {
        rmSync(join(dir, 'postgres.log'), { force: true });
        continue;
      }
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }
  let stopped = false;
  let frozen: number[] = [];
  return {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    dir,
    get pid() {
      return child && child.exitCode === null && child.signalCode === null ? (child.pid ?? null) : null;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      // A stopped postmaster would act on SIGINT only once continued.
      signal([...frozen].reverse(), 'SIGCONT');
      frozen = [];
      if (child && !(await signalAndWait(child, () => child!.kill('SIGINT'), 5000))) {
        await signalAndWait(child, () => crash(child!), 3000);
      }
      child = null;
      rmSync(dir, { recursive: true, force: true });
    },
    freeze() {
      if (!child?.pid || frozen.length) return;
      // The postmaster first: stopped, it cannot fork a backend the list below would miss.
      signal([child.pid], 'SIGSTOP');
      frozen = [child.pid, ...childrenOf(child.pid)];
      signal(frozen.slice(1), 'SIGSTOP');
    },
    thaw() {
      signal([...frozen].reverse(), 'SIGCONT');
      frozen = [];
    },
    async kill() {
      if (child) await signalAndWait(child, () => crash(child!), 3000);
      child = null;
      frozen = [];
    },
    async restart() {
      if (stopped) throw new Error('restart() after stop()');
      if (child) await signalAndWait(child, () => crash(child!), 3000);
      child = await launch(port, dir, user);
    },
    log: () => readLog(dir),
  };
}
