// The SQLite broker shared by separate processes on one file: a worker killed mid-run, a web-only
// process serving SSE for a worker process's job (test/helpers/process-scenarios.ts, plus a cancel
// across processes), and the latency of what crosses processes (wake-ups, events, cancels), which
// the broker finds by polling `PRAGMA data_version`. The fixtures are
// test/fixtures/sqlite-{web,worker}.fixture.ts; each describe block has its own temp directory.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SqliteBroker } from '../../adapters/sqlite/sqlite.broker.js';
import type { JobEvent, JobRecord } from '../../lib/job.js';
import { FixtureProcess, killAllFixtures } from '../fixtures/fixture-process.js';
import { openSse } from '../helpers/create-server.js';
import { eventually, sleep } from '../helpers/eventually.js';
import { describeCrossProcessSse } from '../helpers/process-scenarios.js';

/** What a progress bar tolerates between a change in one process and its sight in another. */
const CROSS_PROCESS_MS = 250;

after(killAllFixtures);

/** A fresh directory per describe block, for the database file and the test's own files. */
function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'offload-sqlite-proc-'));
}

/**
 * A describe block's database file (in a fresh directory, with a runs log next to it), the worker
 * processes it starts, and this process's broker on the file; its `after` kills the workers still
 * running, closes the broker and removes the directory.
 */
function oneFile() {
  const dir = tempDir();
  let broker: SqliteBroker | undefined;
  const file = {
    dbPath: join(dir, 'offload.db'),
    runsLog: join(dir, 'runs.log'),
    workers: [] as FixtureProcess[],
    /** This process's broker on the file. */
    open: () => {
      broker = new SqliteBroker({ path: file.dbPath });
      return broker;
    },
  };
  after(async () => {
    await Promise.all(file.workers.map((w) => w.kill('SIGKILL')));
    await broker?.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return file;
}

const startWorker = (name: string, env: Record<string, string>) =>
  new FixtureProcess(name, 'sqlite-worker.fixture.js', env);
const startWeb = (name: string, dbPath: string) =>
  new FixtureProcess(name, 'sqlite-web.fixture.js', { DB_PATH: dbPath, SSE_RETRY: '100' });

/** How many times each job id appears in a runs log (one line per run). */
function runsIn(file: string): Map<string, number> {
  const runs = new Map<string, number>();
  for (const id of readFileSync(file, 'utf8').split('\n').filter(Boolean))
    runs.set(id, (runs.get(id) ?? 0) + 1);
  return runs;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

describe('SQLite: a worker process SIGKILLed while it holds running and queued jobs', () => {
  const { dbPath, runsLog, workers, open } = oneFile();
  const JOBS = 30;
  const workerEnv = { TASK: 'slow', DB_PATH: dbPath, RUNS_LOG: runsLog, CONCURRENCY: '4', JOB_MS: '300' };

  it('a new process on the file finishes every job; none is lost', { timeout: 60_000 }, async () => {
    writeFileSync(runsLog, '');
    // The first process accepts the jobs itself (as an app with an in-process worker does) and
    // starts running them.
    // Its leases are short, so the ones the kill leaves behind expire soon.
    const first = startWorker('worker #1', { ...workerEnv, LEASE_MS: '1000', ENQUEUE: String(JOBS) });
    workers.push(first);
    await first.line(new RegExp(`^enqueued ${JOBS}$`));
    const b = open();
    await eventually(
      async () => {
        const c = await b.counts();
        return c.succeeded >= 4 && c.running >= 1 && c.queued >= 1;
      },
      'the first worker to be mid-way',
      { timeoutMs: 10_000 },
    );
    // Jobs start in batches as the previous ones end: into the batch's 300 ms, so the kill cuts
    // runs short rather than claims that have not started their task yet.
    await sleep(100);
    assert.deepEqual(await first.kill('SIGKILL'), { code: null, signal: 'SIGKILL' });

    const atKill = await b.counts();
    const held = (await b.list({ status: 'running', limit: 100 })).jobs.map((j) => j.id);
    assert.ok(atKill.running >= 1, `the killed process held running jobs: ${JSON.stringify(atKill)}`);
    assert.ok(atKill.queued >= 1, `and queued ones: ${JSON.stringify(atKill)}`);
    assert.equal(held.length, atKill.running);

    // Leases long enough that a stall of this busy machine cannot cost one of its own runs.
    const second = startWorker('worker #2', { ...workerEnv, LEASE_MS: '3000' });
    workers.push(second);
    await second.line(/^ready$/);
    const started = Date.now();
    await eventually(async () => (await b.counts()).succeeded === JOBS, 'every job to succeed', {
      timeoutMs: 30_000,
    });
    const recoveredMs = Date.now() - started;
    assert.deepEqual(await b.counts(), { queued: 0, running: 0, succeeded: JOBS, failed: 0, canceled: 0 });

    const jobs = (await b.list({ limit: 100 })).jobs;
    assert.equal(jobs.length, JOBS);
    const runs = runsIn(runsLog);
    for (const job of jobs) {
      const ran = runs.get(job.id) ?? 0;
      assert.ok(ran >= 1, `job ${job.id} ran`);
      assert.ok(ran <= job.attempts, `job ${job.id} ran ${ran} times in ${job.attempts} attempts`);
    }
    // The runs the kill cut short: their leases expired, recover() put them back (the attempt
    // counted), and the second process ran them to the end. Every other job ran once.
    for (const job of jobs) {
      if (held.includes(job.id)) {
        assert.equal(job.attempts, 2, `held job ${job.id}: ${JSON.stringify(job)}`);
        assert.deepEqual(job.result, { pid: second.pid });
      } else {
        assert.equal(runs.get(job.id), 1, `job ${job.id}, not running at the kill, ran once`);
      }
    }
    const ranTwice = [...runs.values()].filter((n) => n === 2).length;
    console.log(
      `sqlite restart test: ${JSON.stringify({
        jobs: JOBS,
        atKill,
        ranOnce: [...runs.values()].filter((n) => n === 1).length,
        ranTwice,
        claimedButKilledBeforeRunning: held.filter((id) => runs.get(id) === 1).length,
        ranMoreThanTwice: [...runs.values()].filter((n) => n > 2).length,
        finishedAfterRestartMs: recoveredMs,
      })}`,
    );

    assert.deepEqual(await second.terminate(), { code: 0, signal: null }, second.stderr);
  });
});

describe('SQLite: two worker processes on one file', () => {
  const { dbPath, runsLog, workers, open } = oneFile();
  const JOBS = 300;

  it('run every job exactly once between them', { timeout: 60_000 }, async () => {
    writeFileSync(runsLog, '');
    const b = open();
    const env = {
      TASK: 'slow',
      DB_PATH: dbPath,
      RUNS_LOG: runsLog,
      CONCURRENCY: '4',
      JOB_MS: '2',
      LEASE_MS: '30000',
    };
    workers.push(startWorker('worker A', env), startWorker('worker B', env));
    await Promise.all(workers.map((w) => w.line(/^ready$/)));
    const ids: string[] = [];
    for (let i = 0; i < JOBS; i++) {
      ids.push((await b.enqueue({ task: 'slow', payload: { i }, owner: null, maxAttempts: 5 })).job.id);
      if (i % 25 === 0) await sleep(5);
    }
    await eventually(async () => (await b.counts()).succeeded === JOBS, 'every job to succeed', {
      timeoutMs: 30_000,
    });
    const runs = runsIn(runsLog);
    assert.equal(runs.size, JOBS);
    for (const id of ids) assert.equal(runs.get(id), 1, `job ${id} ran once`);
    const byPid = new Map<number, number>();
    for (const id of ids) {
      const { pid } = (await b.get(id))!.result as { pid: number };
      byPid.set(pid, (byPid.get(pid) ?? 0) + 1);
    }
    assert.deepEqual(
      [...byPid.keys()].sort(),
      workers.map((w) => w.pid).sort(),
      `both workers ran jobs: ${JSON.stringify([...byPid])}`,
    );
    const exits = await Promise.all(workers.map((w) => w.terminate()));
    for (const [i, w] of workers.entries()) assert.deepEqual(exits[i], { code: 0, signal: null }, w.stderr);
  });
});

describeCrossProcessSse('SQLite', () => {
  const dir = tempDir();
  const dbPath = join(dir, 'offload.db');
  return {
    // All three open the new file at once: the schema is made once, in one transaction.
    startWeb: (name) => startWeb(name, dbPath),
    startWorker: (name, env) =>
      startWorker(name, {
        ...env,
        DB_PATH: dbPath,
        GATE_DIR: dir,
        // Long leases: a cancel must reach the worker through the broker, not through lease renewal.
        LEASE_MS: '30000',
      }),
    // Its task polls this file.
    releaseUpTo: (id, step) => writeFileSync(join(dir, id), String(step)),
    endMs: 5000,
    after: async () => rmSync(dir, { recursive: true, force: true }),
    checkFollowed: (stream) =>
      assert.deepEqual(
        stream.events.filter((e) => e.event === 'status').map((e) => JSON.parse(e.data).status),
        stream.data(0).status === 'queued' ? ['running'] : [],
        'the running status, unless the snapshot already had it',
      ),
    more: (t) => {
      it('a cancel on the web process stops the run in the worker process', async () => {
        const id = await t.submit(t.baseA);
        const stream = await openSse(`${t.baseA}/jobs/${id}/events`);
        await t.stepThrough(id, 1, 1, () => stream.events);
        const asked = Date.now();
        const res = await fetch(`${t.baseA}/jobs/${id}`, { method: 'DELETE' });
        assert.equal(res.status, 202);
        await stream.untilEnded(5000);
        assert.equal(stream.events.at(-1)?.event, 'canceled');
        const job = await t.statusOn(t.baseB, id);
        assert.equal(job.status, 'canceled');
        // The worker holds a 30 s lease: only the broker's cancel signal can have stopped it this soon.
        const took = Date.parse(job.finishedAt) - asked;
        assert.ok(took <= CROSS_PROCESS_MS, `canceled ${took} ms after the request`);
      });
    },
  };
});

describe('SQLite: what crosses processes arrives within 250 ms', () => {
  const { dbPath, workers, open } = oneFile();

  it('wake-ups, job events and cancels (p50 and max over 50 jobs)', { timeout: 60_000 }, async () => {
    const b = open();
    // The worker's own poll is 5 s and its lease 30 s: neither can stand in for the broker's signals.
    const worker = startWorker('worker', {
      TASK: 'noop,hold',
      DB_PATH: dbPath,
      CONCURRENCY: '4',
      POLL_MS: '5000',
      LEASE_MS: '30000',
    });
    workers.push(worker);
    await worker.line(/^ready$/);
    const runningSeen = new Map<string, number>();
    const off = await b.subscribe((e: JobEvent) => {
      if (e.type === 'status' && e.status === 'running') runningSeen.set(e.jobId, Date.now() - e.at);
    });

    const JOBS = 50;
    const ids: string[] = [];
    for (let i = 0; i < JOBS; i++) {
      // Irregular gaps, so enqueues land anywhere in the other process's poll interval.
      await sleep(20 + Math.floor(Math.random() * 60));
      ids.push((await b.enqueue({ task: 'noop', payload: { i }, owner: null, maxAttempts: 1 })).job.id);
    }
    await eventually(async () => (await b.counts()).succeeded === JOBS, 'every job to succeed', {
      timeoutMs: 10_000,
    });
    await eventually(() => runningSeen.size === JOBS, 'every running event', { timeoutMs: 2000 });
    off();
    const jobs = (await Promise.all(ids.map((id) => b.get(id)))) as JobRecord[];
    // Enqueued here (createdAt), claimed there (startedAt): one machine, one clock.
    const wake = jobs.map((j) => j.startedAt! - j.createdAt);
    const events = ids.map((id) => runningSeen.get(id)!);

    const cancels: number[] = [];
    for (let i = 0; i < 10; i++) {
      const { job } = await b.enqueue({ task: 'hold', payload: {}, owner: null, maxAttempts: 1 });
      await eventually(async () => (await b.get(job.id))?.status === 'running', 'the hold job to run');
      await sleep(Math.floor(Math.random() * 50));
      const asked = Date.now();
      assert.equal((await b.cancel(job.id)).outcome, 'requested');
      const done = await eventually(
        async () => {
          const j = await b.get(job.id);
          return j?.status === 'canceled' ? j : null;
        },
        'the run to stop',
        { timeoutMs: 5000 },
      );
      cancels.push(done.finishedAt! - asked);
    }

    const summary = (values: number[]) => ({ p50: percentile(values, 50), max: Math.max(...values) });
    console.log(
      `sqlite cross-process latency (ms): ${JSON.stringify({
        wakeUp: summary(wake),
        runningEvent: summary(events),
        cancel: summary(cancels),
      })}`,
    );
    for (const [what, values] of [
      ['enqueue to start', wake],
      ['event to listener', events],
      ['cancel to stop', cancels],
    ] as const) {
      assert.ok(Math.max(...values) <= CROSS_PROCESS_MS, `${what}: ${values.join(', ')} ms`);
    }
    assert.deepEqual(await worker.terminate(), { code: 0, signal: null }, worker.stderr);
  });
});
