import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Offload, silentLogger } from 'offload';
import { Client, Pool } from 'pg';
import PgBoss from 'pg-boss';
import { MemoryBroker } from '../adapters/memory/memory.broker.js';
import { migrate, PostgresBroker } from '../adapters/postgres/index.js';
import type { Broker } from '../lib/broker.js';
import { machineBusy } from './compare.js';
import {
  type Consumer,
  type CpuMeter,
  collectErrors,
  enqueueRound,
  type Latencies,
  latencies,
  latencyRound,
  latencyRow,
  type PhaseResult,
  parseFlags,
  processRound,
  queueRounds,
  type RoundOutcome,
  type RoundQueue,
  rateRow,
  table,
} from './harness.js';

/**
 * offload's PostgresBroker against pg-boss on the same PostgreSQL, in the same run, each in a
 * schema of its own (dropped at the end). Three comparisons, the sides alternating round by round:
 *
 * - enqueue: `jobs` adds from this process, `inflight` at a time (`core.enqueue` / `boss.send`);
 * - process: `jobs` no-op jobs enqueued beforehand, then the time until the last is recorded as
 *   finished, with `concurrency` jobs in flight in this process (offload's Worker / pg-boss work());
 * - process at a deeper backlog: the same with `deep-backlog` jobs, offload and pg-boss only. A
 *   pg-boss fetch reads and sorts every queued job of its queue (its ORDER BY is not its index's
 *   order), so its rate falls as the backlog grows; offload's claim reads only what it takes.
 *   `process_ratio` is the ratio at `jobs`, the smaller backlog: the harder case for offload.
 * - latency: one job every `latency-gap` ms to an idle worker; enqueue-to-start time, p50/p99.
 *
 * The same rounds run offload on SQLite (a temporary file) and on the memory broker, which have
 * no anchor: absolute figures beside the PostgreSQL ones. The SQLite row is skipped while
 * adapters/sqlite is not built.
 *
 * Both PostgreSQL sides keep finished jobs (offload for `resultTtl`, pg-boss until its archive);
 * every round has a queue of its own: a pg-boss queue (its own partition, dropped after the
 * round), offload's tables emptied after the round. Prints tables, then one JSON line (the last
 * line). Exit code 1 when the run had errors.
 */
export async function postgresBench(argv: string[]): Promise<number> {
  const flags = parseFlags(argv, {
    postgres: 'postgres://postgres@127.0.0.1:5432/test',
    /** Comma-separated subset of enqueue,process,deep,latency. */
    phases: 'enqueue,process,deep,latency',
    /** A subset of offload,pg-boss,sqlite,memory (e.g. one side alone, for profiling). */
    sides: 'offload,pg-boss,sqlite,memory',
    rounds: 3,
    jobs: 5000,
    inflight: 50,
    concurrency: 50,
    /** A round that takes longer stops there (enqueue) or counts as failed (process). */
    maxSeconds: 30,
    /** The backlog of the deep process phase (offload and pg-boss only). */
    deepBacklog: 20000,
    latencyJobs: 400,
    latencyGap: 5,
    /** pg-boss work() registrations sharing `concurrency`: batchSize = concurrency ÷ this. */
    bossWorkers: 1,
    /** `yes`: a pg-boss worker whose fetch came back full fetches again at once (notifyWorker). */
    bossRefetch: 'yes',
    /**
     * `yes`: a connection of its own follows offload's job events through the run, as a web
     * process with SSE clients would (offload's claims and settles then build and send events).
     */
    follow: 'no',
  });
  const phases = new Set(flags.phases.split(',').filter(Boolean));
  for (const p of phases) {
    if (!['enqueue', 'process', 'deep', 'latency'].includes(p)) throw new Error(`Unknown phase "${p}".`);
  }
  const wanted = flags.sides.split(',');
  for (const s of wanted) {
    if (!SIDES.some((side) => side.label === s)) throw new Error(`Unknown side "${s}".`);
  }
  if (!['yes', 'no'].includes(flags.bossRefetch)) throw new Error('--boss-refetch takes yes or no.');
  if (!['yes', 'no'].includes(flags.follow)) throw new Error('--follow takes yes or no.');
  if (flags.concurrency % flags.bossWorkers !== 0)
    throw new Error('--boss-workers must divide --concurrency (the same jobs in flight on both sides).');

  const sqlite = wanted.includes('sqlite') ? loadSqlite() : null;
  const sides = SIDES.filter((s) => wanted.includes(s.label) && (s.label !== 'sqlite' || sqlite));
  if (sides.length === 0) throw new Error('--sides names no side that can run.');

  // Unique per run: two runs (or a test on the same database) never share a schema.
  const tag = `${process.pid}_${Date.now().toString(36)}`;
  const admin = new Pool({ connectionString: flags.postgres, max: 2 });
  admin.on('error', () => {});
  const problems: string[] = [];
  const ctx: Ctx = {
    url: flags.postgres,
    admin,
    offloadSchema: `offload_bench_${tag}`,
    bossSchema: `pgboss_bench_${tag}`,
    bossAdmin: null,
    boss: {
      workers: flags.bossWorkers,
      batchSize: flags.concurrency / flags.bossWorkers,
      refetch: flags.bossRefetch === 'yes',
    },
    sqlite,
    sqliteDir: sqlite ? mkdtempSync(join(tmpdir(), 'offload-bench-')) : '',
    serverCpu: () => null,
    problems,
  };
  const out: Record<string, unknown> = { bench: 'postgres' };
  let follower: Client | null = null;
  try {
    const { rows } = await admin.query<{ v: string; pid: number }>(
      `SELECT current_setting('server_version') AS v, pg_backend_pid() AS pid`,
    );
    const postgresVersion = rows[0]!.v;
    ctx.serverCpu = postgresCpuReader(rows[0]!.pid);
    const bossVersion = (require('pg-boss/package.json') as { version: string }).version;
    if (sides.some((s) => s.label === 'offload')) await migrate(admin, ctx.offloadSchema);
    if (flags.follow === 'yes' && sides.some((s) => s.label === 'offload')) {
      // Received, not parsed: the server's side of following (building and sending the events).
      follower = new Client({ connectionString: flags.postgres });
      follower.on('error', () => {});
      await follower.connect();
      await follower.query(`LISTEN "${ctx.offloadSchema}:events"`);
      await follower.query(`SELECT "${ctx.offloadSchema}".follow()`);
    }
    if (sides.some((s) => s.label === 'pg-boss')) ctx.bossAdmin = await startBoss(ctx);

    const busy = await machineBusy(500);
    console.log(
      `bench postgres: offload PostgresBroker vs pg-boss ${bossVersion} on PostgreSQL ${postgresVersion} ` +
        `(${where(flags.postgres)}), node ${process.version}; schemas ${ctx.offloadSchema}, ${ctx.bossSchema}`,
    );
    console.log(
      `pg-boss: ${ctx.boss.workers} work() of batchSize ${ctx.boss.batchSize}, each batch run in parallel ` +
        `(${flags.concurrency} jobs in flight), pollingIntervalSeconds 0.5 (its minimum)` +
        (ctx.boss.refetch
          ? '; a full batch fetches again at once (notifyWorker), an idle worker waits for its poll'
          : '; every fetch waits for the poll (--boss-refetch no)'),
    );
    console.log(
      flags.follow === 'yes'
        ? 'offload: a connection follows job events (--follow yes): claims and settles build and send them'
        : 'offload: no process follows job events (no SSE client): claims and settles send none (--follow yes measures with one)',
    );
    if (wanted.includes('sqlite') && !sqlite)
      console.log('sqlite: skipped (adapters/sqlite is not built yet: no build/adapters/sqlite/index.js)');
    if (busy > 0.2) {
      console.log(
        `warning: the machine was ${Math.round(busy * 100)}% busy before the run (other processes): ` +
          'rates will be lower and noisier',
      );
    }
    console.log(
      ctx.serverCpu() === null
        ? 'postgres cpu: not readable (the server is not a process of this machine); shown as 0'
        : 'postgres cpu µs/job: all PostgreSQL server processes over the round (/proc): other clients of the same server count in it.',
    );

    const n = flags.jobs;
    const run = (
      phase: string,
      round: (q: RoundQueue, warm: boolean) => Promise<RoundOutcome>,
      only: Side[] = sides,
    ) =>
      queueRounds(
        { sides: only, count: flags.rounds, phase, server: 'postgres', ratioOf: PAIR },
        async (side, queue, warm) => {
          const q = await side.open(ctx, queue);
          try {
            return await round(q, warm);
          } finally {
            await q.dispose();
          }
        },
      );
    const results: Record<string, PhaseResult> = {};
    if (phases.has('enqueue')) {
      console.log(
        `\nenqueue: ${n} jobs, ${flags.inflight} in flight, ${flags.rounds} rounds per side (order alternates)`,
      );
      const r = await run('enq', (q, warm) =>
        enqueueRound(q, warm ? Math.ceil(n / 4) : n, flags.inflight, flags.maxSeconds * 1000),
      );
      collectErrors(r, problems, 'enqueue');
      results.enqueue = r;
      out.enqueue_ratio = r.ratio;
      out.enqueue_jobs_per_s = r.rates;
    }
    if (phases.has('process')) {
      console.log(
        `\nprocess: ${n} no-op jobs enqueued beforehand, ${flags.concurrency} in flight, ${flags.rounds} rounds per side`,
      );
      // A warm-up as large as a round: with a quarter, offload's first round still ran its
      // JavaScript half-optimized (16 µs of node CPU a job against 9 in later rounds).
      const r = await run('proc', (q) =>
        processRound(q, n, flags.inflight, flags.concurrency, flags.maxSeconds * 1000),
      );
      collectErrors(r, problems, 'process');
      results.process = r;
      out.process_ratio = r.ratio;
      out.process_jobs_per_s = r.rates;
    }
    const pair = sides.filter((s) => PAIR.includes(s.label));
    if (phases.has('deep') && pair.length > 0) {
      const deep = flags.deepBacklog;
      console.log(
        `\nprocess at a deeper backlog: ${deep} no-op jobs enqueued beforehand, ${flags.concurrency} in flight, ` +
          `${flags.rounds} rounds per side (offload and pg-boss only)`,
      );
      const r = await run(
        'deep',
        (q, warm) =>
          processRound(
            q,
            warm ? Math.ceil(deep / 4) : deep,
            flags.inflight,
            flags.concurrency,
            flags.maxSeconds * 1000,
          ),
        pair,
      );
      collectErrors(r, problems, 'process (deep backlog)');
      results.deep = r;
      out.process_deep_ratio = r.ratio;
      out.process_deep_jobs_per_s = r.rates;
      out.deep_backlog = deep;
    }
    let latency: Latencies | null = null;
    if (phases.has('latency')) {
      console.log(
        `\nlatency: ${flags.latencyJobs} jobs, one every ${flags.latencyGap} ms, to an idle worker ` +
          `(${flags.concurrency} in flight at most), ${flags.rounds} rounds per side; pg-boss polls every 0.5 s`,
      );
      const r = await run('lat', (q, warm) =>
        latencyRound(
          q,
          warm ? Math.ceil(flags.latencyJobs / 4) : flags.latencyJobs,
          flags.latencyGap,
          flags.concurrency,
        ),
      );
      collectErrors(r, problems, 'latency');
      latency = latencies(r);
      out.latency_ms = latency;
    }
    printTables(results, latency, n, flags.deepBacklog);
    const cpu = (pick: (r: PhaseResult) => Record<string, number>) =>
      Object.fromEntries(Object.entries(results).map(([phase, r]) => [phase, pick(r)]));
    out.postgres_cpu_us_per_job = cpu((r) => pickSides(r.serverCpu, PAIR));
    out.node_cpu_us_per_job = cpu((r) => r.nodeCpu);

    if (problems.length) console.log(`THIS RUN HAD ERRORS: ${problems.join('; ')}`);
    Object.assign(out, {
      jobs: n,
      inflight: flags.inflight,
      concurrency: flags.concurrency,
      rounds: flags.rounds,
      pgboss_setup: {
        workers: ctx.boss.workers,
        batch_size: ctx.boss.batchSize,
        polling_interval_s: 0.5,
        refetch_when_full: ctx.boss.refetch,
      },
      sqlite: sqlite ? 'run' : wanted.includes('sqlite') ? 'skipped (no adapter yet)' : 'not asked',
      events_followed: flags.follow === 'yes',
      node: process.version,
      pgboss: bossVersion,
      postgres: postgresVersion,
      errors: problems.length,
      machine_busy_before_pct: Math.round(busy * 100),
    });
    console.log(JSON.stringify(out));
    return problems.length ? 1 : 0;
  } finally {
    await follower?.end().catch(() => {});
    await ctx.bossAdmin?.stop({ graceful: false }).catch(() => {});
    for (const schema of [ctx.offloadSchema, ctx.bossSchema]) {
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch((err: Error) => {
        console.error(`could not drop schema ${schema}: ${err.message}`);
      });
    }
    await admin.end();
    if (ctx.sqliteDir) rmSync(ctx.sqliteDir, { recursive: true, force: true });
  }
}

interface Ctx {
  url: string;
  /** Schema set-up and tear-down, pg-boss's finished counts: never used by a side's jobs. */
  admin: Pool;
  offloadSchema: string;
  bossSchema: string;
  /** Creates and deletes pg-boss's per-round queues. */
  bossAdmin: PgBoss | null;
  boss: { workers: number; batchSize: number; refetch: boolean };
  sqlite: SqliteModule | null;
  sqliteDir: string;
  /** The PostgreSQL server's CPU time so far, µs; null when it cannot be read. */
  serverCpu: () => number | null;
  problems: string[];
}

/** One side's queue for one round, and what deletes it afterwards. */
interface OpenQueue extends RoundQueue {
  dispose(): Promise<void>;
}

interface Side {
  label: 'offload' | 'pg-boss' | 'sqlite' | 'memory';
  open(ctx: Ctx, queue: string): Promise<OpenQueue>;
}

interface SqliteModule {
  SqliteBroker: new (options: { path: string }) => Broker;
}

const TASK = 'noop';

/** The ratio's sides: offload ÷ pg-boss. */
const PAIR: [string, string] = ['offload', 'pg-boss'];

const SIDES: Side[] = [
  {
    label: 'offload',
    async open(ctx) {
      // One queue per schema in offload: the rounds share the run's schema, emptied after each.
      const broker = async () => {
        const b = new PostgresBroker({ connection: ctx.url, schema: ctx.offloadSchema });
        await warmPool((sql) => b.pool.query(sql));
        // Its schema check (the migration lock and version read of a first call) before the
        // measured time, as pg-boss's start() is: both sides start timed with a ready client.
        await b.counts();
        return b;
      };
      return {
        async producer() {
          const b = await broker();
          const core = new Offload({ broker: b, worker: false, logger: silentLogger });
          core.task(TASK, () => {});
          return {
            add: (data) => core.enqueue(TASK, data as Record<string, string>),
            // One count on the table, as the pg-boss side asks its table (counts() groups every
            // status of every job).
            succeeded: async () =>
              (
                await ctx.admin.query<{ n: number }>(
                  `SELECT count(*)::integer AS n FROM "${ctx.offloadSchema}".job WHERE status = 'succeeded'`,
                )
              ).rows[0]!.n,
            countWhenRan: true,
            close: async () => {
              await core.close();
              await b.close();
            },
          };
        },
        async consumer(concurrency, handler) {
          const b = await broker();
          let core: Offload | null = null;
          return {
            start() {
              core = new Offload({ broker: b, worker: { concurrency }, logger: silentLogger });
              // Registering the first task starts the in-process worker.
              core.task(TASK, (payload) => {
                handler(payload);
              });
            },
            close: async () => {
              await core?.close();
              await b.close();
            },
          };
        },
        meter: () => startMeter(ctx),
        dispose: async () => {
          await ctx.admin.query(`TRUNCATE "${ctx.offloadSchema}".job, "${ctx.offloadSchema}".event`);
        },
      };
    },
  },
  {
    label: 'pg-boss',
    async open(ctx, queue) {
      await ctx.bossAdmin!.createQueue(queue);
      return {
        async producer() {
          const boss = await startBoss(ctx);
          return {
            add: (data) => boss.send(queue, data),
            // pg-boss counts only the jobs below a state (getQueueSize): ask its table instead.
            succeeded: async () =>
              (
                await ctx.admin.query<{ n: number }>(
                  `SELECT count(*)::integer AS n FROM "${ctx.bossSchema}".job WHERE name = $1 AND state = 'completed'`,
                  [queue],
                )
              ).rows[0]!.n,
            countWhenRan: true,
            close: () => boss.stop({ graceful: false }),
          };
        },
        async consumer(concurrency, handler) {
          const boss = await startBoss(ctx);
          return bossConsumer(ctx, boss, queue, concurrency, handler);
        },
        meter: () => startMeter(ctx),
        dispose: async () => {
          // deleteQueue() of pg-boss 10 fails while the queue has jobs (its foreign key is ON
          // DELETE RESTRICT, checked at once though declared deferrable).
          await ctx.admin.query(`DELETE FROM "${ctx.bossSchema}".job WHERE name = $1`, [queue]);
          await ctx.bossAdmin!.deleteQueue(queue);
        },
      };
    },
  },
  {
    label: 'sqlite',
    async open(ctx, queue) {
      const path = join(ctx.sqliteDir, `${queue}.db`);
      const broker = new ctx.sqlite!.SqliteBroker({ path });
      return inProcess(ctx, broker, () => {
        for (const suffix of ['', '-wal', '-shm', '-journal']) rmSync(`${path}${suffix}`, { force: true });
      });
    },
  },
  {
    label: 'memory',
    async open(ctx) {
      return inProcess(ctx, new MemoryBroker(), () => {});
    },
  },
];

/**
 * pg-boss v10 has no per-job concurrency: work() is a loop that fetches up to `batchSize` jobs,
 * hands them to the handler as one array, completes them (without waiting) and then sleeps
 * until its polling interval has passed since the fetch, full batch or not (src/worker.js); the
 * interval is at least 0.5 s. So `concurrency` jobs in flight are `workers` work() loops of
 * `concurrency / workers` jobs, each batch run in parallel. Left at that, a loop takes at most a
 * batch per 0.5 s (100 jobs/s for 50 in flight). `notifyWorker(id)`, pg-boss's documented way "to
 * bypass the polling interval", is called when a fetch came back full: more jobs are likely
 * waiting, so the loop fetches again at once; an idle worker still waits for its poll, which is
 * what the latency part measures.
 */
function bossConsumer(
  ctx: Ctx,
  boss: PgBoss,
  queue: string,
  concurrency: number,
  handler: (data: any) => void,
): Consumer {
  const { workers, batchSize, refetch } = ctx.boss;
  if (workers * batchSize !== concurrency) throw new Error('pg-boss: workers × batchSize ≠ concurrency.');
  return {
    start() {
      for (let w = 0; w < workers; w++) {
        let id: string | undefined;
        boss
          .work(queue, { batchSize, pollingIntervalSeconds: 0.5 }, async (jobs) => {
            await Promise.all(jobs.map(async (job) => handler(job.data)));
            if (refetch && id && jobs.length === batchSize) boss.notifyWorker(id);
          })
          .then(
            (workerId) => {
              id = workerId;
            },
            (err: Error) => ctx.problems.push(`pg-boss work(): ${err.message}`),
          );
      }
    },
    close: () => boss.stop({ graceful: true, timeout: 5000 }),
  };
}

/** SQLite and memory: producer and worker share the broker, as in the one process they serve. */
function inProcess(ctx: Ctx, broker: Broker, removeFiles: () => void): OpenQueue {
  return {
    async producer() {
      const core = new Offload({ broker, worker: false, logger: silentLogger });
      core.task(TASK, () => {});
      return {
        add: (data) => core.enqueue(TASK, data as Record<string, string>),
        succeeded: async () => (await broker.counts()).succeeded,
        // A count in this process takes the event loop from the worker it measures.
        countWhenRan: true,
        close: () => core.close().then(() => {}),
      };
    },
    async consumer(concurrency, handler) {
      let core: Offload | null = null;
      return {
        start() {
          core = new Offload({ broker, worker: { concurrency }, logger: silentLogger });
          core.task(TASK, (payload) => {
            handler(payload);
          });
        },
        close: async () => {
          await core?.close();
        },
      };
    },
    meter: () => startMeter(ctx),
    dispose: async () => {
      await broker.close();
      removeFiles();
    },
  };
}

async function startBoss(ctx: Ctx): Promise<PgBoss> {
  // No cron here: `schedule` would add a clock-skew query and a worker polling every 5 s.
  const boss = new PgBoss({ connectionString: ctx.url, schema: ctx.bossSchema, schedule: false });
  boss.on('error', (err: Error) => ctx.problems.push(`pg-boss: ${err.message}`));
  await boss.start();
  const db = boss.getDb();
  await warmPool((sql) => db.executeSql(sql, []));
  return boss;
}

/**
 * Open the pool's connections (pg's default, 10, on both sides) before the round: otherwise
 * the first round pays the server's connection start-up inside the measured time.
 */
async function warmPool(query: (sql: string) => Promise<unknown>): Promise<void> {
  await Promise.all(Array.from({ length: 10 }, () => query('SELECT pg_sleep(0.01)')));
}

/** This process's CPU time and the PostgreSQL server's, per job, over a round. */
async function startMeter(ctx: Ctx): Promise<CpuMeter> {
  const server0 = ctx.serverCpu();
  const node0 = process.cpuUsage();
  return {
    async stop(jobs: number) {
      const node = process.cpuUsage(node0);
      const server = server0 === null ? 0 : (ctx.serverCpu() ?? server0) - server0;
      return {
        nodeCpuUsPerJob: jobs ? (node.user + node.system) / jobs : 0,
        serverCpuUsPerJob: jobs ? server / jobs : 0,
      };
    },
  };
}

/**
 * The CPU time of every process of the PostgreSQL server that runs `backendPid` (its backends,
 * background workers and the postmaster), ended ones included: the postmaster's children's
 * time covers the backends it has reaped. Null when the server is not a process here.
 */
function postgresCpuReader(backendPid: number): () => number | null {
  const stat = (pid: number | string) => {
    try {
      const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // After the command name (in parentheses, which may hold spaces): state, ppid, ...
      const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
      return {
        ppid: Number(f[1]),
        self: Number(f[11]) + Number(f[12]),
        children: Number(f[13]) + Number(f[14]),
      };
    } catch {
      return null;
    }
  };
  const postmaster = stat(backendPid)?.ppid;
  const comm = (pid: number) => {
    try {
      return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      return '';
    }
  };
  if (!postmaster || !comm(postmaster).startsWith('postgres')) return () => null;
  let ticksPerS = 100;
  try {
    ticksPerS = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' })) || 100;
  } catch {
    // Linux's USER_HZ is 100 nearly everywhere.
  }
  return () => {
    const main = stat(postmaster);
    if (!main) return null;
    let ticks = main.self + main.children;
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const s = stat(entry);
      if (s && s.ppid === postmaster) ticks += s.self;
    }
    return (ticks / ticksPerS) * 1e6;
  };
}

function printTables(
  results: Record<string, PhaseResult>,
  latency: Latencies | null,
  n: number,
  deep: number,
): void {
  const rows: string[][] = [];
  const titles: Record<string, string> = {
    enqueue: 'enqueue (jobs/s)',
    process: 'process (jobs/s)',
    deep: `process, ${deep} backlog`,
  };
  for (const [phase, r] of Object.entries(results)) rows.push(rateRow(titles[phase]!, r, PAIR));
  if (latency) {
    rows.push(
      latencyRow('start latency p50 (ms)', latency, 'p50', PAIR),
      latencyRow('start latency p99 (ms)', latency, 'p99', PAIR),
    );
  }
  if (rows.length === 0) return;
  console.log('');
  console.log(
    table([
      [
        `in-process (${n} jobs)`,
        'offload',
        'pg-boss',
        'offload/pg-boss',
        'node cpu µs/job off | boss',
        'postgres cpu µs/job off | boss',
      ],
      ...rows,
    ]),
  );
  console.log(
    '(rates: median of the rounds; ratio: median of the paired rounds, higher is better for offload)',
  );

  // Absolute figures of the embedded stores, no anchor: the same rounds, offload on each.
  const own = ['sqlite', 'memory'].filter(
    (label) => Object.values(results).some((r) => label in r.rates) || (latency && label in latency),
  );
  if (own.length === 0) return;
  const cell = (x: number | undefined) => (x === undefined ? '-' : String(x));
  const local: string[][] = [];
  for (const [phase, r] of Object.entries(results)) {
    if (phase === 'deep') continue;
    local.push([
      titles[phase]!,
      ...own.map((label) => cell(r.rates[label])),
      own.map((label) => cell(r.nodeCpu[label])).join(' | '),
    ]);
  }
  if (latency) {
    for (const which of ['p50', 'p99'] as const) {
      local.push([`start latency ${which} (ms)`, ...own.map((label) => cell(latency[label]?.[which])), '']);
    }
  }
  console.log('');
  console.log(table([['offload, embedded stores', ...own, `node cpu µs/job ${own.join(' | ')}`], ...local]));
}

function pickSides(values: Record<string, number>, labels: string[]): Record<string, number> {
  return Object.fromEntries(labels.filter((l) => l in values).map((l) => [l, values[l]!]));
}

/** adapters/sqlite, if it is there yet (another change builds it): loaded only when asked for. */
function loadSqlite(): SqliteModule | null {
  const file = join(__dirname, '../adapters/sqlite/index.js');
  try {
    return require(file) as SqliteModule;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'MODULE_NOT_FOUND' && e.message.includes(file)) return null;
    throw err;
  }
}

/** Host and database of a connection string: never its credentials. */
function where(url: string): string {
  const u = new URL(url);
  return `${u.host}${u.pathname}`;
}
