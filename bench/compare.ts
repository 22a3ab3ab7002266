import { cpus } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  alternate,
  type Contender,
  httpTable,
  pairedRatios,
  parseFlags,
  type RequestSpec,
  type ServerProcess,
  startServer,
} from './harness.js';

/** One side of a comparison: a compiled server module and the status that counts as success. */
/** The request every benchmark sends: the same body on both sides. */
export const REPORT_REQUEST: Omit<RequestSpec, 'expectStatus'> = {
  method: 'POST',
  path: '/reports',
  headers: { 'content-type': 'application/json' },
  body: JSON.stringify({ month: '2026-10' }),
};

export interface Side {
  /** Short name, for the log lines and `--cpu-prof <label>`. */
  label: string;
  /** What the table calls it. */
  title: string;
  /** Path of the compiled server module (`join(__dirname, 'servers/x.server.js')`). */
  file: string;
  status: number;
}

/** An anchor against offload, same request to both. */
export interface Comparison {
  /** The benchmark's name, as given to `npm run bench --` (and `bench` in the JSON line). */
  name: string;
  /** The request, without its expected status (that is each side's). */
  request: Omit<RequestSpec, 'expectStatus'>;
  anchor: Side;
  /**
   * Its server reports `ran` (jobs run), the broker's counts (`queued`, `running`, `succeeded`,
   * `failed`, `canceled`) and `resultTtlMs` in its stats.
   */
  offload: Side;
}

/**
 * The anchor against the same route with offload, whose in-process worker also runs every job.
 * Warm-up then alternating rounds (see `alternate`); after each offload round, waits until every
 * accepted job has run. Prints a table, then one JSON line (the last line). Exit code 1 when the
 * run had errors.
 */
export async function compare(argv: string[], c: Comparison): Promise<number> {
  const flags = parseFlags(argv, {
    rounds: 5,
    duration: 4,
    warmup: 3,
    connections: 50,
    pipelining: 1,
    /** `--cpu-prof <label>` (anchor's or `offload`): write a V8 CPU profile of that server to bench-profiles/. */
    cpuProf: '',
  });
  if (flags.cpuProf && flags.cpuProf !== c.anchor.label && flags.cpuProf !== c.offload.label)
    throw new Error(`--cpu-prof takes ${c.anchor.label} or ${c.offload.label}; got "${flags.cpuProf}".`);
  const plan = {
    rounds: flags.rounds,
    durationS: flags.duration,
    warmupS: flags.warmup,
    connections: flags.connections,
    pipelining: flags.pipelining,
  };
  const prof = (label: string) =>
    flags.cpuProf === label ? ['--cpu-prof', `--cpu-prof-dir=${join(process.cwd(), 'bench-profiles')}`] : [];
  const request = (expectStatus: number): RequestSpec => ({ ...c.request, expectStatus });

  const busy = await machineBusy(500);
  if (busy > 0.2) {
    console.log(
      `warning: the machine was ${Math.round(busy * 100)}% busy before the run (other processes): ` +
        'req/s will be lower and noisier; the cpu µs/req figures are less affected',
    );
  }

  const servers: ServerProcess[] = [];
  try {
    const baseline = await startServer(c.anchor.label, c.anchor.file, prof(c.anchor.label));
    servers.push(baseline);
    const offload = await startServer(c.offload.label, c.offload.file, prof(c.offload.label));
    servers.push(offload);

    let accepted = 0;
    let drainFailures = 0;
    let peakStored = 0;
    let last: Record<string, number> = {};
    const contenders: Contender[] = [
      { server: baseline, request: request(c.anchor.status) },
      {
        server: offload,
        request: request(c.offload.status),
        // Every accepted job must have run before the next round: a backlog would keep the CPU
        // busy during the anchor's round, and a worker that cannot keep up must show.
        afterRound: async (round) => {
          accepted += round.ok;
          const started = Date.now();
          let stored = 0;
          for (;;) {
            last = (await offload.stats()) as Record<string, number>;
            stored = last.queued! + last.running! + last.succeeded! + last.failed! + last.canceled!;
            peakStored = Math.max(peakStored, stored);
            if (last.queued === 0 && last.running === 0) break;
            if (Date.now() - started > 15_000) {
              drainFailures++;
              break;
            }
            await new Promise((r) => setTimeout(r, 50));
          }
          const backlog = last.queued! + last.running!;
          return `(jobs run ${last.ran}; ${backlog ? `${backlog} STILL QUEUED` : `drained in ${Date.now() - started} ms`}; ${stored} jobs stored)`;
        },
      },
    ];

    const { method, path, body } = c.request;
    console.log(
      `bench ${c.name}: ${method} ${path}${body === undefined ? '' : ` ${body}`}, ${plan.connections} connections, pipelining ${plan.pipelining}, ` +
        `${plan.rounds} rounds of ${plan.durationS} s per server after a ${plan.warmupS} s warm-up, node ${process.version}`,
    );
    const [a, b] = await alternate(contenders, plan);
    const base = a!;
    const off = b!;

    const { pairs, ratio, cpuRatio, range, cpuRange } = pairedRatios(base, off);
    console.log('');
    console.log(
      httpTable([
        [c.anchor.title, base],
        [c.offload.title, off],
      ]),
    );
    console.log('');
    console.log(
      `ratio ${c.offload.label}/${c.anchor.label}: ${ratio}  (median of the ${pairs.length} round pairs, ${range}; ` +
        '1.0 = offload costs nothing; the target is >= 0.9)',
    );
    console.log(
      `cpu ratio ${c.anchor.label}/${c.offload.label}: ${cpuRatio}  (${cpuRange}; the same comparison from the ` +
        "servers' CPU time per request; it holds even when something else loads the machine)",
    );
    console.log(
      `offload: resultTtl ${last.resultTtlMs} ms (finished jobs purged after it); ${last.ran} jobs run for ` +
        `${accepted} ${c.offload.status} responses counted; at most ${peakStored} jobs stored; heap ${last.heapUsedMb} MB, rss ${last.rssMb} MB`,
    );

    const problems: string[] = [];
    for (const s of [base, off]) {
      if (s.unexpected || s.errors)
        problems.push(`${s.label}: ${s.unexpected} unexpected statuses, ${s.errors} errors`);
    }
    // A response autocannon dropped when a round ended still ran its job: ran >= accepted.
    if (last.ran! < accepted) problems.push(`offload: only ${last.ran} jobs run for ${accepted} accepted`);
    if (drainFailures)
      problems.push(`offload: the worker did not drain its queue within 15 s (${drainFailures} times)`);
    if (problems.length) console.log(`THIS RUN HAD ERRORS: ${problems.join('; ')}`);

    console.log(
      JSON.stringify({
        bench: c.name,
        baseline_rps: Math.round(base.rps),
        offload_rps: Math.round(off.rps),
        ratio,
        cpu_ratio: cpuRatio,
        baseline_latency_ms: { p50: base.p50, p99: base.p99 },
        offload_latency_ms: { p50: off.p50, p99: off.p99 },
        rounds: plan.rounds,
        connections: plan.connections,
        duration_s: plan.durationS,
        node: process.version,
        cpu_us_per_req: { baseline: Math.round(base.cpuUsPerReq), offload: Math.round(off.cpuUsPerReq) },
        errors: problems.length,
        machine_busy_before_pct: Math.round(busy * 100),
      }),
    );
    return problems.length ? 1 : 0;
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
}

/** Share of all cores' time spent busy over `ms` (before any server runs: someone else's load). */
export async function machineBusy(ms: number): Promise<number> {
  const sample = () =>
    cpus().reduce(
      (acc, { times }) => {
        acc.idle += times.idle;
        acc.total += times.user + times.nice + times.sys + times.irq + times.idle;
        return acc;
      },
      { idle: 0, total: 0 },
    );
  const a = sample();
  await sleep(ms);
  const b = sample();
  const total = b.total - a.total;
  return total > 0 ? 1 - (b.idle - a.idle) / total : 0;
}
