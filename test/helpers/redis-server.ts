// Throwaway `redis-server` processes for the tests that kill, restart or cluster Redis: each on its
// own free loopback port and temp dir, never the machine's shared Redis on 6379.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Redis } from 'ioredis';

export interface RedisServerOptions {
  /** AOF persistence, so data survives `kill()` + `restart()`. @defaultValue false */
  appendonly?: boolean;
  /** `always` replies only after the write is fsynced. @defaultValue 'everysec' */
  appendfsync?: 'always' | 'everysec' | 'no';
  /** `--cluster-enabled yes` (the node also needs its port + 10000 free). @defaultValue false */
  cluster?: boolean;
  /** Extra `--name value` pairs for redis-server. */
  extraArgs?: string[];
}

export interface RedisServer {
  port: number;
  /** `redis://127.0.0.1:<port>` */
  url: string;
  /** The server's working dir (AOF, cluster config, log). */
  dir: string;
  /** The server's pid, or null while it is down. */
  readonly pid: number | null;
  /** SIGTERM (SIGKILL after 3 s), then remove the dir. Final; safe to call twice. */
  stop(): Promise<void>;
  /** SIGKILL, as a crash: nothing is flushed. The dir stays for `restart()`. */
  kill(): Promise<void>;
  /** Start again on the same port and dir (the AOF is replayed) and wait until it answers. */
  restart(): Promise<void>;
  /** The server's log so far (for failure messages). */
  log(): string;
}

/** Every process these helpers started and have not seen exit: killed on exit whatever happens. */
const live = new Set<ChildProcess>();

function killAllNow(): void {
  for (const child of live) {
    try {
      child.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
  live.clear();
}

let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', killAllNow);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      killAllNow();
      process.kill(process.pid, signal);
    });
  }
}

/** Kill every server these helpers started (for an `after` hook that wants to be sure). */
export function killAllRedisServers(): void {
  killAllNow();
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A loopback port that is free now, and whose cluster bus port (+10000) is free too when asked.
 * Random in 20000-29999 so the bus port stays in range; redis-server failing with EADDRINUSE
 * anyway (a race) is retried by the caller.
 */
async function freePort(withBus: boolean): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * 10_000);
    if ((await canListen(port)) && (!withBus || (await canListen(port + 10_000)))) return port;
  }
  throw new Error('No free loopback port found for redis-server.');
}

export function redisCli(port: number, ...args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('redis-cli', ['-h', '127.0.0.1', '-p', String(port), ...args], { timeout: 5000 }, (err, out) =>
      err ? reject(err) : resolve(String(out)),
    );
  });
}

function readLog(dir: string): string {
  try {
    return readFileSync(join(dir, 'redis.log'), 'utf8');
  } catch {
    return '';
  }
}

/** Spawn redis-server and wait until `redis-cli ping` answers; rejects if it exits first. */
async function launch(port: number, dir: string, options: RedisServerOptions): Promise<ChildProcess> {
  const args = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--dir',
    dir,
    '--logfile',
    join(dir, 'redis.log'),
    '--save',
    '',
    '--daemonize',
    'no',
    '--appendonly',
    options.appendonly ? 'yes' : 'no',
    '--appendfsync',
    options.appendfsync ?? 'everysec',
  ];
  if (options.cluster) {
    args.push('--cluster-enabled', 'yes', '--cluster-config-file', join(dir, 'nodes.conf'));
  }
  args.push(...(options.extraArgs ?? []));
  hookExit();
  const child = spawn('redis-server', args, { stdio: 'ignore' });
  live.add(child);
  let exited = false;
  child.once('exit', () => {
    exited = true;
    live.delete(child);
  });
  child.once('error', () => {
    exited = true;
    live.delete(child);
  });
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (exited)
      throw new Error(`redis-server on port ${port} exited at start:\n${readLog(dir).slice(-2000)}`);
    try {
      if ((await redisCli(port, 'ping')).trim() === 'PONG') return child;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`redis-server on port ${port} did not answer ping within 10 s:\n${readLog(dir)}`);
    }
    await sleep(50);
  }
}

async function signalAndWait(child: ChildProcess, signal: NodeJS.Signals, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true;
  const gone = new Promise<true>((resolve) => child.once('exit', () => resolve(true)));
  child.kill(signal);
  return Promise.race([gone, sleep(ms).then(() => false)]);
}

/** Start one throwaway redis-server on a free 127.0.0.1 port in a fresh temp dir. */
export async function startRedisServer(options: RedisServerOptions = {}): Promise<RedisServer> {
  const dir = mkdtempSync(join(tmpdir(), 'offload-redis-'));
  let port = 0;
  let child: ChildProcess | null = null;
  for (let attempt = 0; ; attempt++) {
    port = await freePort(options.cluster === true);
    try {
      child = await launch(port, dir, options);
      break;
    } catch (err) {
      // Someone took the port between the check and redis-server's bind: try another one.
      if (attempt < 5 && /Address already in use|EADDRINUSE/i.test(readLog(dir))) {
        rmSync(join(dir, 'redis.log'), { force: true });
        continue;
      }
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }
  let stopped = false;
  const server: RedisServer = {
    port,
    url: `redis://127.0.0.1:${port}`,
    dir,
    get pid() {
      return child && child.exitCode === null && child.signalCode === null ? (child.pid ?? null) : null;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child && !(await signalAndWait(child, 'SIGTERM', 3000)))
        await signalAndWait(child, 'SIGKILL', 3000);
      child = null;
      rmSync(dir, { recursive: true, force: true });
    },
    async kill() {
      if (child) await signalAndWait(child, 'SIGKILL', 3000);
      child = null;
    },
    async restart() {
      if (stopped) throw new Error('restart() after stop()');
      if (child) await signalAndWait(child, 'SIGKILL', 3000);
      child = await launch(port, dir, options);
    },
    log: () => readLog(dir),
  };
  return server;
}

export interface RedisCluster {
  nodes: RedisServer[];
  /** `{ host, port }` of every node, for `new Cluster(...)`. */
  startupNodes: { host: string; port: number }[];
  stop(): Promise<void>;
}

/**
 * `count` masters with `--cluster-enabled yes`, joined by `redis-cli --cluster create` with no
 * replicas, ready once every node says `cluster_state:ok`.
 */
export async function startCluster(count = 3): Promise<RedisCluster> {
  const nodes: RedisServer[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((n) => n.stop()));
  };
  try {
    for (let i = 0; i < count; i++) nodes.push(await startRedisServer({ cluster: true }));
    await new Promise<void>((resolve, reject) => {
      execFile(
        'redis-cli',
        [
          '--cluster',
          'create',
          ...nodes.map((n) => `127.0.0.1:${n.port}`),
          '--cluster-replicas',
          '0',
          '--cluster-yes',
        ],
        { timeout: 30_000 },
        (err, stdout, stderr) =>
          err
            ? reject(new Error(`redis-cli --cluster create failed: ${err.message}\n${stdout}\n${stderr}`))
            : resolve(),
      );
    });
    const deadline = Date.now() + 20_000;
    for (;;) {
      const infos = await Promise.all(nodes.map((n) => redisCli(n.port, 'cluster', 'info').catch(() => '')));
      if (infos.every((info) => /cluster_state:ok/.test(info))) break;
      if (Date.now() > deadline)
        throw new Error(`The cluster did not reach cluster_state:ok:\n${infos.join('\n')}`);
      await sleep(100);
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodes, startupNodes: nodes.map((n) => ({ host: '127.0.0.1', port: n.port })), stop };
}

/** Delete every key under `prefix` (a test's own keys on a shared Redis). */
export async function deletePrefix(client: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await client.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await client.del(...keys);
  } while (cursor !== '0');
}
