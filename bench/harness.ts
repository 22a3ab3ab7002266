import { type ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import autocannon from 'autocannon';
import type { ChildMessage, ParentMessage } from './servers/serve.js';

/** A benchmark server running in its own child process (see servers/serve.ts for its side). */
export interface ServerProcess {
  readonly label: string;
  readonly port: number;
  /** Figures the server reports between rounds (never during one). */
  stats(): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

const children = new Set<ChildProcess>();
let cleanupInstalled = false;

/** Whatever happens to the parent, no server is left running. */
function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  process.on('exit', () => {
    for (const child of children) child.kill('SIGKILL');
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      for (const child of children) child.kill('SIGKILL');
      process.exit(130);
    });
  }
}

/** Fork `file` (a compiled server module) and wait until it listens. */
export async function startServer(
  label: string,
  file: string,
  execArgv: string[] = [],
): Promise<ServerProcess> {
  installCleanup();
  const child = fork(file, [], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  children.add(child);
  child.once('exit', () => children.delete(child));

  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(
      () => fail(new Error(`${label}: the server did not start within 15 s.`)),
      15_000,
    );
    const onMessage = (message: ChildMessage) => {
      if (message.type !== 'ready') return;
      clearTimeout(timer);
      child.off('exit', onExit);
      resolve(message.port);
    };
    const onExit = (code: number | null, signal: string | null) =>
      fail(new Error(`${label}: the server exited before listening (code ${code}, signal ${signal}).`));
    const fail = (err: Error) => {
      clearTimeout(timer);
      child.off('message', onMessage);
      child.kill('SIGKILL');
      reject(err);
    };
    child.on('message', onMessage);
    child.once('exit', onExit);
  });

  let nextId = 0;
  const send = (message: ParentMessage) => child.send(message);
  return {
    label,
    port,
    stats() {
      const id = ++nextId;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => done(new Error(`${label}: no stats within 5 s.`)), 5000);
        const onMessage = (message: ChildMessage) => {
          if (message.type === 'stats' && message.id === id) done(null, message.stats);
        };
        const onExit = () => done(new Error(`${label}: the server exited.`));
        const done = (err: Error | null, stats?: Record<string, unknown>) => {
          clearTimeout(timer);
          child.off('message', onMessage);
          child.off('exit', onExit);
          if (err) reject(err);
          else resolve(stats!);
        };
        child.on('message', onMessage);
        child.once('exit', onExit);
        send({ type: 'stats', id });
      });
    },
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      send({ type: 'stop' });
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** One kind of request, and the status that counts as a success for it. */
export interface RequestSpec {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string;
  expectStatus: number;
}

export interface LoadSettings {
  connections: number;
  pipelining: number;
  durationS: number;
}

export interface RoundResult {
  /** Responses with the expected status, per second. */
  rps: number;
  p50: number;
  p99: number;
  /** Responses with the expected status. */
  ok: number;
  /** Responses with any other status. */
  unexpected: number;
  /** Connection errors and time-outs. */
  errors: number;
  statusCodes: Record<string, number>;
  /**
   * Server CPU time (user + system) per response, in µs, from just before the round to after
   * `afterRound`: unlike req/s, it hardly moves when something else loads the machine.
   */
  cpuUsPerReq: number;
}

/** Load one server from this process (loopback) for `durationS` seconds. */
export async function load(
  server: ServerProcess,
  spec: RequestSpec,
  settings: LoadSettings,
): Promise<RoundResult> {
  const result = await autocannon({
    url: `http://127.0.0.1:${server.port}${spec.path}`,
    method: spec.method,
    headers: spec.headers,
    body: spec.body,
    connections: settings.connections,
    pipelining: settings.pipelining,
    duration: settings.durationS,
    timeout: 10,
  });
  const statusCodes: Record<string, number> = {};
  let responses = 0;
  for (const [code, { count }] of Object.entries(result.statusCodeStats)) {
    statusCodes[code] = count;
    responses += count;
  }
  const ok = statusCodes[spec.expectStatus] ?? 0;
  return {
    rps: ok / result.duration,
    p50: result.latency.p50,
    p99: result.latency.p99,
    ok,
    unexpected: responses - ok,
    errors: result.errors + result.timeouts,
    statusCodes,
    cpuUsPerReq: 0,
  };
}

/** `load`, plus the server CPU it cost (measured across `after` too, which is part of the work). */
async function measure(
  c: Contender,
  settings: LoadSettings,
  warmUp: boolean,
): Promise<{ result: RoundResult; note: string | undefined }> {
  const before = await c.server.stats();
  const result = await load(c.server, c.request, settings);
  const note = await c.afterRound?.(result, warmUp);
  const after = await c.server.stats();
  const responses = result.ok + result.unexpected;
  if (responses > 0) result.cpuUsPerReq = ((after.cpuUs as number) - (before.cpuUs as number)) / responses;
  return { result, note };
}

/** A server under test, its request, and what to do after each of its rounds. */
export interface Contender {
  server: ServerProcess;
  request: RequestSpec;
  /**
   * Runs after each round and after the warm-up, outside the measured time (e.g. wait until the
   * server is idle again); may return a note for the log line.
   */
  afterRound?: (round: RoundResult, warmUp: boolean) => Promise<string | undefined>;
}

export interface Plan extends LoadSettings {
  rounds: number;
  warmupS: number;
}

export interface Summary {
  label: string;
  rounds: RoundResult[];
  rps: number;
  p50: number;
  p99: number;
  cpuUsPerReq: number;
  ok: number;
  unexpected: number;
  errors: number;
}

/**
 * Each round of `off` against the `base` round just before it: the machine's speed drifts (other
 * tenants, CPU steal) more between rounds far apart than between neighbours, so the median of
 * these paired ratios is steadier than a ratio of two medians. `cpuRatio` is base ÷ off.
 */
export function pairedRatios(base: Summary, off: Summary) {
  const pairs = base.rounds.map((r, i) => off.rounds[i]!.rps / r.rps);
  const cpuPairs = base.rounds.map((r, i) => r.cpuUsPerReq / off.rounds[i]!.cpuUsPerReq);
  const range = (xs: number[]) => `${Math.min(...xs).toFixed(3)} to ${Math.max(...xs).toFixed(3)}`;
  return {
    pairs,
    ratio: Number(median(pairs).toFixed(3)),
    cpuRatio: Number(median(cpuPairs).toFixed(3)),
    range: range(pairs),
    cpuRange: range(cpuPairs),
  };
}

/**
 * A warm-up per contender, then rounds that alternate A, B, A, B, ... so drift (thermal,
 * other load, GC state) hits every side alike; each figure is the median of its rounds.
 */
export async function alternate(contenders: Contender[], plan: Plan, log = console.log): Promise<Summary[]> {
  for (const c of contenders) {
    const { result, note } = await measure(c, { ...plan, durationS: plan.warmupS }, true);
    log(`warm-up  ${c.server.label.padEnd(10)} ${formatRound(result)}${note ? `  ${note}` : ''}`);
  }
  const rounds: RoundResult[][] = contenders.map(() => []);
  for (let r = 1; r <= plan.rounds; r++) {
    for (const [i, c] of contenders.entries()) {
      const { result, note } = await measure(c, plan, false);
      rounds[i]!.push(result);
      log(`round ${r}  ${c.server.label.padEnd(10)} ${formatRound(result)}${note ? `  ${note}` : ''}`);
    }
  }
  return contenders.map((c, i) => {
    const rs = rounds[i]!;
    return {
      label: c.server.label,
      rounds: rs,
      rps: median(rs.map((x) => x.rps)),
      p50: median(rs.map((x) => x.p50)),
      p99: median(rs.map((x) => x.p99)),
      cpuUsPerReq: median(rs.map((x) => x.cpuUsPerReq)),
      ok: sum(rs.map((x) => x.ok)),
      unexpected: sum(rs.map((x) => x.unexpected)),
      errors: sum(rs.map((x) => x.errors)),
    };
  });
}

function formatRound(r: RoundResult): string {
  const bad = r.unexpected || r.errors ? `  !! ${r.unexpected} unexpected status, ${r.errors} errors` : '';
  const rps = Math.round(r.rps).toString().padStart(6);
  return `${rps} req/s  p50 ${r.p50} ms  p99 ${r.p99} ms  cpu ${Math.round(r.cpuUsPerReq)} µs/req${bad}`;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function sum(values: number[]): number {
  return values.reduce((a, b) => a + b, 0);
}

/** A plain text table: first row is the header. */
export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, col) => Math.max(...rows.map((row) => row[col]!.length)));
  const line = (row: string[]) =>
    row.map((cell, col) => (col === 0 ? cell.padEnd(widths[col]!) : cell.padStart(widths[col]!))).join('  ');
  return [line(rows[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)].join('\n');
}

/**
 * `--name value` / `--name=value` flags over numeric defaults; an unknown flag is an error
 * rather than a silently ignored typo.
 */
export function parseFlags<T extends Record<string, number | string>>(argv: string[], defaults: T): T {
  const out: Record<string, number | string> = { ...defaults };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const m = /^--([\w-]+)(?:=(.*))?$/.exec(arg);
    if (!m) throw new Error(`Unexpected argument "${arg}".`);
    const name = m[1]!.replace(/-(\w)/g, (_, c: string) => c.toUpperCase());
    if (!Object.hasOwn(defaults, name))
      throw new Error(`Unknown option --${m[1]}; known: ${Object.keys(defaults).map(kebab).join(', ')}.`);
    const raw = m[2] ?? argv[++i];
    if (raw === undefined) throw new Error(`--${m[1]} needs a value.`);
    if (typeof defaults[name] === 'number') {
      const n = Number(raw);
      if (!Number.isFinite(n) || n <= 0)
        throw new Error(`--${m[1]} must be a positive number; got "${raw}".`);
      out[name] = n;
    } else out[name] = raw;
  }
  return out as T;
}

function kebab(name: string): string {
  return `--${name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}
