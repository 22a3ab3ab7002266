import { type ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
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

/** The table of an HTTP comparison: one row per server, its median rate and latency, CPU and counts. */
export function httpTable(servers: [title: string, summary: Summary][]): string {
  return table([
    ['server', 'req/s (median)', 'p50 ms', 'p99 ms', 'server cpu µs/req', 'ok', 'bad status', 'errors'],
    ...servers.map(([title, s]) => [
      title,
      String(Math.round(s.rps)),
      String(s.p50),
      String(s.p99),
      String(Math.round(s.cpuUsPerReq)),
      String(s.ok),
      String(s.unexpected),
      String(s.errors),
    ]),
  ]);
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

// In-process queue rounds (the `redis` and `postgres` benches): offload and another queue library
// enqueue and run the same no-op jobs from this process, the sides alternating round by round.

/** The enqueuing end of one side's queue, for one round. */
export interface Producer {
  add(data: Record<string, unknown>): Promise<unknown>;
  /** Jobs of the queue recorded as finished successfully. */
  succeeded(): Promise<number>;
  /**
   * Counting is a scan of the jobs (SQL): `processRound` counts only once the handler has run
   * every job, not every 5 ms from the start, which would load the very database it measures.
   */
  countWhenRan?: boolean;
  close(): Promise<void>;
}

export interface Consumer {
  start(): void;
  close(): Promise<void>;
}

/** This process's CPU time and the server's, per job, over a round. */
export interface CpuMeter {
  stop(jobs: number): Promise<{ nodeCpuUsPerJob: number; serverCpuUsPerJob: number }>;
}

/** One side's queue for one round: its two ends, and how to read what the round cost. */
export interface RoundQueue {
  /** Connected when it resolves. */
  producer(): Promise<Producer>;
  /** Connected, not yet running jobs until `start()`. */
  consumer(concurrency: number, handler: (data: any) => void): Promise<Consumer>;
  meter(): Promise<CpuMeter>;
}

/** One round of one side. */
export interface RoundOutcome {
  /** Jobs per second (enqueue, process); unused by latency. */
  rate: number;
  nodeCpuUsPerJob: number;
  serverCpuUsPerJob: number;
  /** Enqueue-to-start times, ms (latency). */
  samples?: number[];
  note?: string;
  error?: string;
}

export interface PhaseResult {
  /** Median jobs/s per side. */
  rates: Record<string, number>;
  /** First ÷ second of `ratioOf`, median of the paired rounds; null without both sides. */
  ratio: number | null;
  pairs: number[];
  nodeCpu: Record<string, number>;
  serverCpu: Record<string, number>;
  samples: Record<string, number[]>;
  errors: string[];
}

export interface RoundsSpec<S extends { label: string }> {
  sides: S[];
  count: number;
  /** Names the rounds' queues: `<phase>-w` (warm-up), `<phase>-1`, ... */
  phase: string;
  /** What the log lines call the server whose CPU the meter reads ('redis'). */
  server: string;
  /** The sides whose paired rounds give `ratio` (first ÷ second). */
  ratioOf: [string, string];
  /** Deletes a round's queue, after the round (also when it threw). */
  cleanup?: (side: S, queue: string) => Promise<void>;
}

/**
 * A warm-up round per side, then `count` rounds per side, the order swapped every round
 * (A B, B A, ...) so neither side always runs on the heels of the other's garbage. Every round
 * has a queue of its own.
 */
export async function queueRounds<S extends { label: string }>(
  spec: RoundsSpec<S>,
  run: (side: S, queue: string, warmUp: boolean) => Promise<RoundOutcome>,
): Promise<PhaseResult> {
  const { sides, count, phase } = spec;
  const results = new Map<string, RoundOutcome[]>(sides.map((s) => [s.label, []]));
  const errors: string[] = [];
  const once = async (side: S, r: number) => {
    const queue = `${phase}-${r === 0 ? 'w' : r}`;
    let outcome: RoundOutcome;
    try {
      outcome = await run(side, queue, r === 0);
    } finally {
      await spec.cleanup?.(side, queue);
    }
    const label = r === 0 ? 'warm-up ' : `round ${r} `;
    const rate = outcome.samples
      ? `p50 ${percentile(outcome.samples, 0.5).toFixed(2)} ms  p99 ${percentile(outcome.samples, 0.99).toFixed(2)} ms`
      : `${Math.round(outcome.rate).toString().padStart(6)} jobs/s`;
    console.log(
      `${label} ${side.label.padEnd(8)} ${rate}  node cpu ${Math.round(outcome.nodeCpuUsPerJob)} µs/job  ` +
        `${spec.server} cpu ${Math.round(outcome.serverCpuUsPerJob)} µs/job${outcome.note ? `  ${outcome.note}` : ''}` +
        `${outcome.error ? `  !! ${outcome.error}` : ''}`,
    );
    if (outcome.error) errors.push(`${side.label} ${label.trim()}: ${outcome.error}`);
    if (r > 0) results.get(side.label)!.push(outcome);
    await sleep(200);
  };
  for (const side of sides) await once(side, 0);
  for (let r = 1; r <= count; r++) {
    const order = r % 2 ? sides : [...sides].reverse();
    for (const side of order) await once(side, r);
  }
  const of = (label: string) => results.get(label) ?? [];
  const rates: Record<string, number> = {};
  const nodeCpu: Record<string, number> = {};
  const serverCpu: Record<string, number> = {};
  const samples: Record<string, number[]> = {};
  for (const side of sides) {
    const rs = of(side.label);
    rates[side.label] = Math.round(median(rs.map((x) => x.rate)));
    nodeCpu[side.label] = Math.round(median(rs.map((x) => x.nodeCpuUsPerJob)));
    serverCpu[side.label] = Math.round(median(rs.map((x) => x.serverCpuUsPerJob)));
    samples[side.label] = rs.flatMap((x) => x.samples ?? []);
  }
  const a = of(spec.ratioOf[0]);
  const b = of(spec.ratioOf[1]);
  const pairs = a.length && b.length ? a.map((o, i) => o.rate / b[i]!.rate) : [];
  const ratio = pairs.length ? Number(median(pairs).toFixed(3)) : null;
  return { rates, ratio, pairs, nodeCpu, serverCpu, samples, errors };
}

/** `n` adds, `inflight` at a time, from this process; stops launching at `capMs`. */
export async function enqueueRound(
  q: RoundQueue,
  n: number,
  inflight: number,
  capMs: number,
): Promise<RoundOutcome> {
  const producer = await q.producer();
  try {
    const meter = await q.meter();
    const { done, failed, firstError, ms } = await addMany(producer, n, inflight, capMs, (i) => ({
      month: '2026-10',
      i,
    }));
    const cost = await meter.stop(done);
    return {
      rate: (done / ms) * 1000,
      ...cost,
      note: done < n ? `(stopped at ${capMs / 1000} s: ${done} of ${n})` : undefined,
      error: failed ? `${failed} adds failed (${firstError})` : undefined,
    };
  } finally {
    await producer.close();
  }
}

/** `n` jobs enqueued (untimed), then a worker started: the time until the last is recorded done. */
export async function processRound(
  q: RoundQueue,
  n: number,
  inflight: number,
  concurrency: number,
  capMs: number,
): Promise<RoundOutcome> {
  const producer = await q.producer();
  let consumer: Consumer | undefined;
  try {
    const pre = await addMany(producer, n, inflight, capMs, (i) => ({ month: '2026-10', i }));
    if (pre.done < n)
      return { rate: 0, nodeCpuUsPerJob: 0, serverCpuUsPerJob: 0, error: 'enqueue fell short' };
    let ran = 0;
    consumer = await q.consumer(concurrency, () => {
      ran++;
    });
    const meter = await q.meter();
    const t0 = performance.now();
    consumer.start();
    let finished = 0;
    // Polled on the producer's connection, every 5 ms while the handler still runs jobs, every
    // 1 ms once it ran them all: the round then waits only for the last outcomes to be recorded,
    // and a 5 ms step would add a few percent to a round of a fifth of a second.
    while (finished < n && performance.now() - t0 < capMs) {
      await sleep(ran < n ? 5 : 1);
      if (producer.countWhenRan && ran < n) continue;
      finished = await producer.succeeded();
    }
    const ms = performance.now() - t0;
    const cost = await meter.stop(n);
    return {
      rate: (finished / ms) * 1000,
      ...cost,
      note: `(${ran} runs)`,
      error:
        finished < n
          ? `only ${finished} of ${n} jobs done within ${capMs / 1000} s`
          : ran !== n
            ? `${ran} handler runs for ${n} jobs`
            : undefined,
    };
  } finally {
    await consumer?.close();
    await producer.close();
  }
}

/** One job every `gapMs` to an idle worker; each job carries its enqueue time (same process clock). */
export async function latencyRound(
  q: RoundQueue,
  n: number,
  gapMs: number,
  concurrency: number,
): Promise<RoundOutcome> {
  const producer = await q.producer();
  const samples: number[] = [];
  const consumer = await q.consumer(concurrency, (data: { t: number }) => {
    samples.push(performance.now() - data.t);
  });
  try {
    consumer.start();
    // Time to subscribe or block on a wake-up: the worker is idle when jobs come.
    await sleep(300);
    const meter = await q.meter();
    const adds: Promise<unknown>[] = [];
    let failed = 0;
    for (let i = 0; i < n; i++) {
      adds.push(
        producer.add({ t: performance.now() }).catch(() => {
          failed++;
        }),
      );
      await sleep(gapMs);
    }
    await Promise.all(adds);
    const deadline = performance.now() + 5000;
    while (samples.length < n && performance.now() < deadline) await sleep(5);
    const cost = await meter.stop(n);
    return {
      rate: 0,
      ...cost,
      samples: [...samples],
      error:
        failed || samples.length < n
          ? `${failed} adds failed, ${samples.length} of ${n} jobs started`
          : undefined,
    };
  } finally {
    await consumer.close();
    await producer.close();
  }
}

export async function addMany(
  producer: Pick<Producer, 'add'>,
  n: number,
  inflight: number,
  capMs: number,
  data: (i: number) => Record<string, unknown>,
): Promise<{ done: number; failed: number; firstError: string | undefined; ms: number }> {
  let next = 0;
  let done = 0;
  let failed = 0;
  let firstError: string | undefined;
  const t0 = performance.now();
  const deadline = t0 + capMs;
  const lane = async () => {
    while (next < n && performance.now() < deadline) {
      const i = next++;
      try {
        await producer.add(data(i));
        done++;
      } catch (err) {
        failed++;
        firstError ??= err instanceof Error ? err.message : String(err);
      }
    }
  };
  await Promise.all(Array.from({ length: inflight }, lane));
  return { done, failed, firstError, ms: performance.now() - t0 };
}

export function collectErrors(r: PhaseResult, problems: string[], phase: string): void {
  for (const e of r.errors) problems.push(`${phase}: ${e}`);
}

/** Median jobs/s of two sides, their paired ratio with its range, and both CPU figures. */
export function rateRow(title: string, r: PhaseResult, [a, b]: [string, string]): string[] {
  const range = r.pairs.length
    ? ` (${Math.min(...r.pairs).toFixed(2)}-${Math.max(...r.pairs).toFixed(2)})`
    : '';
  return [
    title,
    String(r.rates[a] ?? '-'),
    String(r.rates[b] ?? '-'),
    r.ratio === null ? '-' : `${r.ratio}${range}`,
    `${r.nodeCpu[a] ?? '-'} | ${r.nodeCpu[b] ?? '-'}`,
    `${r.serverCpu[a] ?? '-'} | ${r.serverCpu[b] ?? '-'}`,
  ];
}

export type Latencies = Record<string, { p50: number; p99: number }>;

/** p50 and p99 per side over the samples of all its rounds, in ms. */
export function latencies(r: PhaseResult): Latencies {
  const out: Latencies = {};
  for (const [label, samples] of Object.entries(r.samples)) {
    out[label] = { p50: round2(percentile(samples, 0.5)), p99: round2(percentile(samples, 0.99)) };
  }
  return out;
}

export function latencyRow(
  title: string,
  latency: Latencies,
  which: 'p50' | 'p99',
  [a, b]: [string, string],
): string[] {
  return [title, String(latency[a]?.[which] ?? '-'), String(latency[b]?.[which] ?? '-'), '', '', ''];
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1)]!;
}

export function round2(x: number): number {
  return Math.round(x * 100) / 100;
}
