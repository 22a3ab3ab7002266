import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Queue, Worker } from 'bullmq';
import { Redis } from 'ioredis';
import { Offload } from 'offload';
import { RedisBroker } from '../adapters/redis/index.js';
import { machineBusy, REPORT_REQUEST } from './compare.js';
import {
  alternate,
  type Consumer,
  type Contender,
  type CpuMeter,
  collectErrors,
  enqueueRound,
  httpTable,
  latencies,
  latencyRound,
  latencyRow,
  type PhaseResult,
  type Producer,
  pairedRatios,
  parseFlags,
  processRound,
  queueRounds,
  type RequestSpec,
  type RoundOutcome,
  type RoundQueue,
  rateRow,
  type ServerProcess,
  startServer,
  table,
} from './harness.js';
import { REDIS_ENV, redisTarget } from './servers/redis-target.js';

/**
 * offload's RedisBroker against BullMQ on the same Redis, in the same run, with a key prefix of
 * its own (deleted at the end). Four comparisons, each side alternating with the other:
 *
 * - enqueue: `jobs` adds from this process, `inflight` at a time (`core.enqueue` / `queue.add`);
 * - process: `jobs` no-op jobs enqueued beforehand, then the time until the last is recorded as
 *   finished, with a worker of `concurrency` in this process (offload's Worker / a BullMQ Worker);
 * - latency: one job every `latency-gap` ms to an idle worker; enqueue-to-start time, p50/p99;
 * - http: the same Express route, hand-wired to BullMQ or offload's `jobs.background` on Redis,
 *   each in its own server process whose in-process worker runs every job (autocannon).
 *
 * Both sides keep finished jobs in the first three (offload keeps results for `resultTtl`, BullMQ
 * keeps completed jobs unless told otherwise); both drop them after 5 s in the HTTP servers.
 * Prints tables, then one JSON line (the last line). Exit code 1 when the run had errors.
 */
export async function redisBench(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, {
    redis: 'redis://127.0.0.1:6379',
    /** Comma-separated subset of enqueue,process,latency,http. */
    phases: 'enqueue,process,latency,http',
    /** `offload` or `bullmq` alone (for profiling one side); both by default. */
    sides: 'offload,bullmq',
    rounds: 3,
    jobs: 20_000,
    inflight: 50,
    concurrency: 50,
    /** A round that takes longer stops there (enqueue) or counts as failed (process). */
    maxSeconds: 30,
    latencyJobs: 400,
    latencyGap: 5,
    httpRounds: 5,
    duration: 4,
    warmup: 3,
    connections: 50,
    pipelining: 1,
    /** `--cpu-prof offload|bullmq`: a V8 CPU profile of that HTTP server, in bench-profiles/. */
    cpuProf: '',
  });
  const phases = new Set(flags.phases.split(',').filter(Boolean));
  for (const p of phases) {
    if (!['enqueue', 'process', 'latency', 'http'].includes(p)) throw new Error(`Unknown phase "${p}".`);
  }
  const sides = SIDES.filter((s) => flags.sides.split(',').includes(s.label));
  if (sides.length === 0) throw new Error('--sides takes offload, bullmq or both.');
  if (flags.cpuProf && !['offload', 'bullmq'].includes(flags.cpuProf))
    throw new Error(`--cpu-prof takes offload or bullmq; got "${flags.cpuProf}".`);

  const target = redisTarget(flags.redis);
  const admin = new Redis(flags.redis);
  // Unique per run: two runs (or a test on the same Redis) never share a key.
  const base = `offload-bench-${process.pid}-${Date.now().toString(36)}`;
  const ctx: Ctx = { admin, url: flags.redis, connection: target.connection, base };
  const problems: string[] = [];
  const out: Record<string, unknown> = { bench: 'redis' };
  try {
    const redisVersion = /redis_version:(\S+)/.exec(await admin.info('server'))?.[1];
    const bullmqVersion = (
      JSON.parse(readFileSync(join(dirname(require.resolve('bullmq')), '../../package.json'), 'utf8')) as {
        version: string;
      }
    ).version;
    const busy = await machineBusy(500);
    console.log(
      `bench redis: offload RedisBroker vs BullMQ ${bullmqVersion} on Redis ${redisVersion} (${flags.redis}), ` +
        `node ${process.version}; keys under ${base}-*`,
    );
    if (busy > 0.2) {
      console.log(
        `warning: the machine was ${Math.round(busy * 100)}% busy before the run (other processes): ` +
          'rates will be lower and noisier',
      );
    }
    console.log(
      'redis cpu µs/job is the Redis server process time over the round: other clients of the same Redis count in it.',
    );

    const n = flags.jobs;
    const rows: string[][] = [];
    if (phases.has('enqueue')) {
      console.log(
        `\nenqueue: ${n} jobs, ${flags.inflight} in flight, ${flags.rounds} rounds per side (order alternates)`,
      );
      const r = await rounds(ctx, sides, flags.rounds, 'enq', (side, queue, warm) =>
        enqueueRound(
          roundQueue(ctx, side, queue),
          warm ? Math.ceil(n / 4) : n,
          flags.inflight,
          flags.maxSeconds * 1000,
        ),
      );
      collectErrors(r, problems, 'enqueue');
      rows.push(rateRow('enqueue (jobs/s)', r, PAIR));
      out.enqueue_ratio = r.ratio;
      out.enqueue_jobs_per_s = r.rates;
    }
    if (phases.has('process')) {
      console.log(
        `\nprocess: ${n} no-op jobs enqueued beforehand, worker concurrency ${flags.concurrency}, ${flags.rounds} rounds per side`,
      );
      const r = await rounds(ctx, sides, flags.rounds, 'proc', (side, queue, warm) =>
        processRound(
          roundQueue(ctx, side, queue),
          warm ? Math.ceil(n / 4) : n,
          flags.inflight,
          flags.concurrency,
          flags.maxSeconds * 1000,
        ),
      );
      collectErrors(r, problems, 'process');
      rows.push(rateRow('process (jobs/s)', r, PAIR));
      out.process_ratio = r.ratio;
      out.process_jobs_per_s = r.rates;
    }
    if (phases.has('latency')) {
      console.log(
        `\nlatency: ${flags.latencyJobs} jobs, one every ${flags.latencyGap} ms, to an idle worker (concurrency ${flags.concurrency}), ${flags.rounds} rounds per side`,
      );
      const r = await rounds(ctx, sides, flags.rounds, 'lat', (side, queue, warm) =>
        latencyRound(
          roundQueue(ctx, side, queue),
          warm ? Math.ceil(flags.latencyJobs / 4) : flags.latencyJobs,
          flags.latencyGap,
          flags.concurrency,
        ),
      );
      collectErrors(r, problems, 'latency');
      const latency = latencies(r);
      rows.push(
        latencyRow('start latency p50 (ms)', latency, 'p50', PAIR),
        latencyRow('start latency p99 (ms)', latency, 'p99', PAIR),
      );
      out.latency_ms = latency;
    }
    if (rows.length) {
      console.log('');
      console.log(
        table([
          [
            `in-process (${n} jobs)`,
            'offload',
            'bullmq',
            'offload/bullmq',
            'node cpu µs/job off | bull',
            'redis cpu µs/job off | bull',
          ],
          ...rows,
        ]),
      );
      console.log(
        '(rates: median of the rounds; ratio: median of the paired rounds, higher is better for offload)',
      );
    }

    if (phases.has('http')) {
      const http = await httpPhase(ctx, flags, problems);
      out.http_ratio = http.ratio;
      out.http_cpu_ratio = http.cpuRatio;
      out.http_rps = http.rps;
      out.http_latency_ms = http.latency;
    }

    if (problems.length) console.log(`THIS RUN HAD ERRORS: ${problems.join('; ')}`);
    Object.assign(out, {
      jobs: n,
      inflight: flags.inflight,
      concurrency: flags.concurrency,
      rounds: flags.rounds,
      http_rounds: flags.httpRounds,
      connections: flags.connections,
      duration_s: flags.duration,
      node: process.version,
      bullmq: bullmqVersion,
      redis: redisVersion,
      errors: problems.length,
      machine_busy_before_pct: Math.round(busy * 100),
    });
    console.log(JSON.stringify(out));
    return problems.length ? 1 : 0;
  } finally {
    await deleteKeys(admin, `${base}-*`);
    await admin.quit();
  }
}

interface Ctx {
  admin: Redis;
  url: string;
  connection: { host: string; port: number };
  base: string;
}

/** What a phase needs from a queue library, so both sides run the very same measuring code. */
interface Side {
  label: 'offload' | 'bullmq';
  /** Connected when it resolves. */
  producer(ctx: Ctx, queue: string): Promise<Producer>;
  /** Connected, not yet running jobs until `start()`. */
  consumer(ctx: Ctx, queue: string, concurrency: number, handler: (data: any) => void): Promise<Consumer>;
  /** The SCAN pattern of every key of `queue`. */
  keys(ctx: Ctx, queue: string): string;
}

const TASK = 'noop';

/** The ratio's sides: offload ÷ BullMQ. */
const PAIR: [string, string] = ['offload', 'bullmq'];

const SIDES: Side[] = [
  {
    label: 'offload',
    async producer(ctx, queue) {
      const broker = new RedisBroker({ connection: ctx.url, prefix: `${ctx.base}-o`, queue });
      const core = new Offload({ broker, worker: false });
      core.task(TASK, () => {});
      await broker.client.ping();
      return {
        add: (data) => core.enqueue(TASK, data as Record<string, string>),
        succeeded: async () => (await broker.counts()).succeeded,
        close: async () => {
          await core.close();
          await broker.close();
        },
      };
    },
    async consumer(ctx, queue, concurrency, handler) {
      const broker = new RedisBroker({ connection: ctx.url, prefix: `${ctx.base}-o`, queue });
      await broker.client.ping();
      let core: Offload | null = null;
      return {
        start() {
          core = new Offload({ broker, worker: { concurrency } });
          // Registering the first task starts the in-process worker.
          core.task(TASK, (payload) => {
            handler(payload);
          });
        },
        close: async () => {
          await core?.close();
          await broker.close();
        },
      };
    },
    keys: (ctx, queue) => `${ctx.base}-o:{${queue}}:*`,
  },
  {
    label: 'bullmq',
    async producer(ctx, queue) {
      const q = new Queue(queue, { connection: ctx.connection, prefix: `${ctx.base}-b` });
      await q.waitUntilReady();
      return {
        add: (data) => q.add(TASK, data),
        succeeded: () => q.getCompletedCount(),
        close: () => q.close(),
      };
    },
    async consumer(ctx, queue, concurrency, handler) {
      const worker = new Worker(
        queue,
        async (job) => {
          handler(job.data);
        },
        { connection: ctx.connection, prefix: `${ctx.base}-b`, concurrency, autorun: false },
      );
      worker.on('error', (err) => console.error(`bullmq worker: ${err.message}`));
      await worker.waitUntilReady();
      return {
        start() {
          worker.run().catch((err: Error) => console.error(`bullmq worker: ${err.message}`));
        },
        close: () => worker.close(),
      };
    },
    keys: (ctx, queue) => `${ctx.base}-b:${queue}:*`,
  },
];

/** One round of `side` on the queue `queue` (its keys are deleted after the round). */
function roundQueue(ctx: Ctx, side: Side, queue: string): RoundQueue {
  return {
    producer: () => side.producer(ctx, queue),
    consumer: (concurrency, handler) => side.consumer(ctx, queue, concurrency, handler),
    meter: () => startMeter(ctx.admin),
  };
}

/** `queueRounds` over Redis: each round's keys are deleted right after it. */
function rounds(
  ctx: Ctx,
  sides: Side[],
  count: number,
  phase: string,
  run: (side: Side, queue: string, warmUp: boolean) => Promise<RoundOutcome>,
): Promise<PhaseResult> {
  return queueRounds(
    {
      sides,
      count,
      phase,
      server: 'redis',
      ratioOf: PAIR,
      cleanup: (side, queue) => deleteKeys(ctx.admin, side.keys(ctx, queue)),
    },
    run,
  );
}

/** This process's CPU time and the Redis server's, per job, over a round. */
async function startMeter(admin: Redis): Promise<CpuMeter> {
  const redis0 = await redisCpuUs(admin);
  const node0 = process.cpuUsage();
  return {
    async stop(jobs: number) {
      const node = process.cpuUsage(node0);
      const redis = (await redisCpuUs(admin)) - redis0;
      return {
        nodeCpuUsPerJob: jobs ? (node.user + node.system) / jobs : 0,
        serverCpuUsPerJob: jobs ? redis / jobs : 0,
      };
    },
  };
}

async function redisCpuUs(admin: Redis): Promise<number> {
  const info = await admin.info('cpu');
  const field = (name: string) => Number(new RegExp(`${name}:([\\d.]+)`).exec(info)?.[1] ?? 0);
  return (field('used_cpu_user') + field('used_cpu_sys')) * 1e6;
}

/** UNLINK every key matching `pattern` (SCAN, never KEYS: the Redis is shared). */
async function deleteKeys(admin: Redis, pattern: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    cursor = next;
    if (keys.length) await admin.unlink(...keys);
  } while (cursor !== '0');
}

interface HttpOutcome {
  ratio: number | null;
  cpuRatio: number | null;
  rps: Record<string, number>;
  latency: Record<string, { p50: number; p99: number }>;
}

/**
 * Each route in its own server process, loaded alternately (harness `alternate`); after every
 * round of either side, waits until its worker has run every accepted job, so neither side's
 * backlog steals CPU from the other's next round.
 */
async function httpPhase(
  ctx: Ctx,
  flags: {
    httpRounds: number;
    duration: number;
    warmup: number;
    connections: number;
    pipelining: number;
    concurrency: number;
    cpuProf: string;
  },
  problems: string[],
): Promise<HttpOutcome> {
  const plan = {
    rounds: flags.httpRounds,
    durationS: flags.duration,
    warmupS: flags.warmup,
    connections: flags.connections,
    pipelining: flags.pipelining,
  };
  const prof = (label: string) =>
    flags.cpuProf === label ? ['--cpu-prof', `--cpu-prof-dir=${join(process.cwd(), 'bench-profiles')}`] : [];
  // fork() passes the environment as it is now.
  process.env[REDIS_ENV.url] = ctx.url;
  process.env[REDIS_ENV.prefix] = ctx.base;
  process.env[REDIS_ENV.concurrency] = String(flags.concurrency);
  const request = (expectStatus: number): RequestSpec => ({ ...REPORT_REQUEST, expectStatus });

  const servers: ServerProcess[] = [];
  try {
    const bull = await startServer(
      'bullmq',
      join(__dirname, 'servers/express-bullmq.server.js'),
      prof('bullmq'),
    );
    servers.push(bull);
    const off = await startServer(
      'offload',
      join(__dirname, 'servers/express-offload-redis.server.js'),
      prof('offload'),
    );
    servers.push(off);

    const accepted = new Map<string, number>();
    const ranLast = new Map<string, number>();
    const contender = (server: ServerProcess): Contender => ({
      server,
      request: request(202),
      afterRound: async (round) => {
        accepted.set(server.label, (accepted.get(server.label) ?? 0) + round.ok);
        const started = Date.now();
        let last: Record<string, number> = {};
        for (;;) {
          last = (await server.stats()) as Record<string, number>;
          if (last.queued === 0 && last.running === 0) break;
          if (Date.now() - started > 15_000) {
            problems.push(`http ${server.label}: the worker did not drain its queue within 15 s`);
            break;
          }
          await sleep(50);
        }
        ranLast.set(server.label, last.ran!);
        const stored = last.queued! + last.running! + last.succeeded! + last.failed!;
        const backlog = last.queued! + last.running!;
        return `(jobs run ${last.ran}; ${backlog ? `${backlog} STILL QUEUED` : `drained in ${Date.now() - started} ms`}; ${stored} jobs stored)`;
      },
    });

    console.log(
      `\nhttp: ${REPORT_REQUEST.method} ${REPORT_REQUEST.path} ${REPORT_REQUEST.body}, ${plan.connections} connections, ` +
        `pipelining ${plan.pipelining}, ${plan.rounds} rounds of ${plan.durationS} s per server after a ${plan.warmupS} s warm-up; ` +
        `worker concurrency ${flags.concurrency} in each server`,
    );
    const [b, o] = await alternate([contender(bull), contender(off)], plan);
    const base = b!;
    const offl = o!;
    const { pairs, ratio, cpuRatio, range, cpuRange } = pairedRatios(base, offl);
    console.log('');
    console.log(
      httpTable([
        ['express + bullmq (queue.add, 202 + job run)', base],
        ['express + offload redis (202 + job run)', offl],
      ]),
    );
    console.log('');
    console.log(`http ratio offload/bullmq: ${ratio}  (median of the ${pairs.length} round pairs, ${range})`);
    console.log(
      `http cpu ratio bullmq/offload: ${cpuRatio}  (${cpuRange}; server CPU per request, job run included)`,
    );
    for (const s of [base, offl]) {
      if (s.unexpected || s.errors)
        problems.push(`http ${s.label}: ${s.unexpected} unexpected statuses, ${s.errors} errors`);
      const ran = ranLast.get(s.label) ?? 0;
      const acc = accepted.get(s.label) ?? 0;
      // A response autocannon dropped when a round ended still ran its job: ran >= accepted.
      if (ran < acc) problems.push(`http ${s.label}: only ${ran} jobs run for ${acc} accepted`);
    }
    return {
      ratio,
      cpuRatio,
      rps: { offload: Math.round(offl.rps), bullmq: Math.round(base.rps) },
      latency: { offload: { p50: offl.p50, p99: offl.p99 }, bullmq: { p50: base.p50, p99: base.p99 } },
    };
  } finally {
    await Promise.all(servers.map((s) => s.stop()));
  }
}
