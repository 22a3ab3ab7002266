// The scenarios the *-processes tests run alike on every broker that processes share, each a
// describe block of its own. What differs per broker (how a fixture process starts, where the
// test's gates and run counts live, the broker to read counts from) comes in a setup function,
// called inside the block as each test file's own code was.
// - `describeCrossProcessSse`: web-only processes serve SSE for `steps` jobs a worker process runs,
//   a client resumes on the other web process with Last-Event-ID, a real EventSource stops on 204.
// - `describeWorkerCrashes`: worker processes SIGKILLed repeatedly while 2,000 `crash` jobs run;
//   prints one JSON summary line (`<label> crash test: {...}`).
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EventSource, type FetchLike } from 'eventsource';
import type { Broker } from '../../lib/broker.js';
import type { JobRecord } from '../../lib/job.js';
import { silentLogger } from '../../lib/logger.js';
import { Offload } from '../../lib/offload.js';
import type { FixtureProcess } from '../fixtures/fixture-process.js';
import { openSse, postJson, type SseEvent, type SseStream } from './create-server.js';
import { eventually, sleep } from './eventually.js';

const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

/** Event ids as numbers; every event of these streams carries one. */
function ids(events: SseEvent[]): number[] {
  return events.map((e) => {
    assert.match(e.id ?? '', /^\d+$/, `event ${e.event} has a numeric id`);
    return Number(e.id);
  });
}

/**
 * What a client saw of one `steps` job, over one or more connections: one snapshot first, ids
 * rising by exactly one (nothing repeated, nothing missing), each step's progress once and in
 * order, and one terminal `succeeded` last, with the result the worker process returned.
 */
function assertWholeStory(events: SseEvent[], steps: number, workerPid: number): void {
  const seen = ids(events);
  for (let i = 1; i < seen.length; i++) {
    assert.equal(seen[i], seen[i - 1]! + 1, `ids rise by one: ${seen.join(',')}`);
  }
  assert.equal(events[0]?.event, 'snapshot', 'the first event is the snapshot');
  assert.equal(events.filter((e) => e.event === 'snapshot').length, 1, 'one snapshot in all');
  for (const e of events) {
    assert.ok(['snapshot', 'status', 'progress', 'succeeded'].includes(e.event), `unexpected ${e.event}`);
  }
  assert.deepEqual(
    events.filter((e) => e.event === 'progress').map((e) => JSON.parse(e.data).message),
    Array.from({ length: steps }, (_, i) => `step ${i + 1}`),
  );
  assert.equal(events.filter((e) => TERMINAL.has(e.event)).length, 1, 'one terminal event');
  const last = events.at(-1)!;
  assert.equal(last.event, 'succeeded');
  assert.deepEqual(JSON.parse(last.data).result, { steps, pid: workerPid });
}

export interface SseSetup {
  /** A web-only fixture process (`{"port":N}` once listening). */
  startWeb(name: string): FixtureProcess;
  /** The worker-only fixture process, with `env` (its `steps` task and concurrency) and the broker's own. */
  startWorker(name: string, env: Record<string, string>): FixtureProcess;
  /** Let the worker process run the job's steps up to `step` (its task polls this gate). */
  releaseUpTo(id: string, step: number): Promise<void> | void;
  /** How long (ms) a stream may take to end, and an EventSource to stop, after the last step. */
  endMs: number;
  before?(): Promise<void>;
  /** After the processes are killed: remove what the block made. */
  after(): Promise<void>;
  /** More checks on the stream that followed a job to its end. */
  checkFollowed?(stream: SseStream): void;
  /** More tests, run before the one that closes every process. */
  more?(t: SseContext): void;
}

/** The web processes' addresses and the helpers of a cross-process SSE block, for `SseSetup.more`. */
export interface SseContext {
  baseA: string;
  baseB: string;
  /** POST /steps on a web process; the job's id. */
  submit(base: string): Promise<string>;
  /** Release steps `from`..`to` one at a time, each once the previous one's progress event arrived. */
  stepThrough(id: string, from: number, to: number, seen: () => SseEvent[]): Promise<void>;
  /** GET /jobs/:id on a web process (200). */
  statusOn(base: string, id: string): Promise<any>;
}

export function describeCrossProcessSse(brokerName: string, makeSetup: () => SseSetup): void {
  describe(`${brokerName}: a web-only process serves SSE for a job a worker process runs`, () => {
    const setup = makeSetup();
    const STEPS = 6;
    let webA: FixtureProcess;
    let webB: FixtureProcess;
    let worker: FixtureProcess;
    const sources: EventSource[] = [];

    const t: SseContext = {
      baseA: '',
      baseB: '',

      async submit(base) {
        const res = await postJson(`${base}/steps`, { n: STEPS });
        const body = await res.text();
        assert.equal(res.status, 202, body);
        return JSON.parse(body).id;
      },

      // Progress writes are coalesced (the last value wins): steps released all at once could reach
      // the broker as one write.
      async stepThrough(id, from, to, seen) {
        for (let step = from; step <= to; step++) {
          await setup.releaseUpTo(id, step);
          await eventually(
            () => seen().some((e) => e.event === 'progress' && JSON.parse(e.data).message === `step ${step}`),
            `the progress event of step ${step}`,
            { timeoutMs: 5000 },
          );
        }
      },

      async statusOn(base, id) {
        const res = await fetch(`${base}/jobs/${id}`);
        assert.equal(res.status, 200);
        return res.json();
      },
    };

    before(async () => {
      await setup.before?.();
      webA = setup.startWeb('web A');
      webB = setup.startWeb('web B');
      worker = setup.startWorker('worker', { TASK: 'steps', CONCURRENCY: '2' });
      const [portA, portB] = await Promise.all([
        webA.line(/^\{"port":(\d+)\}$/),
        webB.line(/^\{"port":(\d+)\}$/),
        worker.line(/^ready$/),
      ]);
      t.baseA = `http://127.0.0.1:${portA[1]}`;
      t.baseB = `http://127.0.0.1:${portB[1]}`;
    });

    after(async () => {
      for (const s of sources) s.close();
      await Promise.all([webA, webB, worker].map((c) => c?.kill('SIGKILL')));
      await setup.after();
    });

    it('follows the job to its end: snapshot, progress, terminal event, then the stream ends', async () => {
      const id = await t.submit(t.baseA);
      const stream = await openSse(`${t.baseA}/jobs/${id}/events`);
      assert.equal(stream.status, 200);
      await stream.until((s) => s.events.length >= 1, 'the snapshot', 5000);
      await t.stepThrough(id, 1, STEPS, () => stream.events);
      await stream.untilEnded(setup.endMs);
      assertWholeStory(stream.events, STEPS, worker.pid);
      setup.checkFollowed?.(stream);

      const job = await t.statusOn(t.baseA, id);
      assert.equal(job.status, 'succeeded');
      assert.deepEqual(job.result, { steps: STEPS, pid: worker.pid });
    });

    it('resumes with Last-Event-ID on another web process: nothing repeated, nothing missing', async () => {
      const id = await t.submit(t.baseA);
      const first = await openSse(`${t.baseA}/jobs/${id}/events`);
      await first.until((s) => s.events.length >= 1, 'the snapshot', 5000);
      await t.stepThrough(id, 1, 2, () => first.events);
      first.close();
      const held = ids(first.events).at(-1)!;

      // Work goes on while the client is away.
      for (const step of [3, 4]) {
        await setup.releaseUpTo(id, step);
        await eventually(
          async () => (await t.statusOn(t.baseB, id)).progress?.message === `step ${step}`,
          `step ${step}`,
          { timeoutMs: 5000 },
        );
      }

      const second = await openSse(`${t.baseB}/jobs/${id}/events`, { 'last-event-id': String(held) });
      assert.equal(second.status, 200);
      await second.until((s) => s.events.length >= 2, 'the two missed steps', 5000);
      assert.equal(second.events[0]!.event, 'progress', 'a resume starts with what was missed, no snapshot');
      assert.equal(Number(second.events[0]!.id), held + 1);
      assert.equal(JSON.parse(second.events[0]!.data).message, 'step 3');

      await t.stepThrough(id, 5, STEPS, () => second.events);
      await second.untilEnded(setup.endMs);
      assertWholeStory([...first.events, ...second.events], STEPS, worker.pid);
    });

    it('a real EventSource follows the job to its end, then stops (204 on its reconnect)', async () => {
      const id = await t.submit(t.baseB);
      const received: SseEvent[] = [];
      const connections: { lastEventId: string | null; status: number }[] = [];
      const recording: FetchLike = async (input, init) => {
        const res = await fetch(input, init);
        connections.push({ lastEventId: init.headers['Last-Event-ID'] ?? null, status: res.status });
        return res;
      };
      const source = new EventSource(`${t.baseB}/jobs/${id}/events`, { fetch: recording });
      sources.push(source);
      for (const type of ['snapshot', 'status', 'progress', 'succeeded', 'failed', 'canceled']) {
        source.addEventListener(type, (event: MessageEvent) => {
          received.push({ id: event.lastEventId, event: type, data: event.data });
        });
      }
      await eventually(() => received.length >= 1, 'the snapshot', { timeoutMs: 5000 });
      await t.stepThrough(id, 1, STEPS, () => received);
      await eventually(() => source.readyState === source.CLOSED, 'the client to stop', {
        timeoutMs: setup.endMs,
      });
      assertWholeStory(received, STEPS, worker.pid);
      assert.deepEqual(
        connections.map((c) => c.status),
        [200, 204],
      );
      assert.equal(connections[1]!.lastEventId, received.at(-1)!.id);
    });

    setup.more?.(t);

    it('every process exits cleanly (code 0) on SIGTERM', async () => {
      const exits = await Promise.all([webA, webB, worker].map((c) => c.terminate()));
      for (const [i, c] of [webA, webB, worker].entries()) {
        assert.deepEqual(exits[i], { code: 0, signal: null }, `${c.name}: ${c.stderr}`);
      }
    });
  });
}

export interface CrashSetup {
  /** The broker the test enqueues through and reads counts and records from. */
  broker: Broker;
  /** A worker-only fixture process, with `env` (its `crash` task, concurrency, lease, job time). */
  startWorker(name: string, env: Record<string, string>): FixtureProcess;
  /** How many times each job ran (its id to the count the fixture's task kept). */
  runs(): Promise<Map<string, number>>;
  before?(): Promise<void>;
  /** After the workers are killed and the broker closed: remove what the block made. */
  after(): Promise<void>;
}

/** `label` starts the summary line (`<label> crash test: {...}`). */
export function describeWorkerCrashes(brokerName: string, label: string, makeSetup: () => CrashSetup): void {
  describe(`${brokerName}: worker processes SIGKILLed repeatedly while 2,000 jobs run`, () => {
    const setup = makeSetup();
    const { broker } = setup;
    const JOBS = 2000;
    const WORKERS = 3;
    const workerEnv = { TASK: 'crash', CONCURRENCY: '4', LEASE_MS: '1500', JOB_MS: '15' };
    // The producer: this process enqueues, runs nothing.
    const core = new Offload({ broker, worker: false, logger: silentLogger });
    core.task(
      'crash',
      () => {
        throw new Error('the test process must not run jobs');
      },
      // A killed run counts as an attempt; enough of them that a job killed repeatedly still runs.
      { attempts: 10 },
    );
    const workers: FixtureProcess[] = [];

    if (setup.before) before(() => setup.before!());

    after(async () => {
      await Promise.all(workers.map((w) => w.kill('SIGKILL')));
      await core.close();
      await broker.close();
      await setup.after();
    });

    it('every job succeeds, none is lost; prints how many ran twice', { timeout: 90_000 }, async () => {
      const started = Date.now();
      const deadline = started + 75_000;
      let spawned = 0;
      const ready = new Set<FixtureProcess>();
      const spawnWorker = () => {
        const w = setup.startWorker(`worker #${++spawned}`, workerEnv);
        workers.push(w);
        w.line(/^ready$/, 30_000).then(
          () => ready.add(w),
          () => {},
        );
        return w;
      };
      const first = Array.from({ length: WORKERS }, spawnWorker);
      await Promise.all(first.map((w) => w.line(/^ready$/)));

      // Jobs are submitted while the workers already run (and get killed).
      const ids: string[] = [];
      let enqueueMs = 0;
      const enqueued = (async () => {
        for (let i = 0; i < JOBS; i += 100) {
          const batch = await Promise.all(
            Array.from({ length: Math.min(100, JOBS - i) }, (_, j) => core.enqueue('crash', { i: i + j })),
          );
          for (const { job, created } of batch) {
            assert.ok(created);
            ids.push(job.id);
          }
        }
        enqueueMs = Date.now() - started;
      })();
      let enqueueFailed: unknown = null;
      enqueued.catch((err) => {
        enqueueFailed = err;
      });

      // Every 300-500 ms, SIGKILL a random worker that is up (so it holds leases) and start a
      // replacement; until every job is finished.
      let kills = 0;
      let nextKill = Date.now() + 300 + Math.random() * 200;
      for (;;) {
        if (enqueueFailed) throw enqueueFailed;
        const counts = await broker.counts();
        const finished = counts.succeeded + counts.failed + counts.canceled;
        if (finished >= JOBS) break;
        if (Date.now() > deadline) {
          assert.fail(
            `only ${finished} of ${JOBS} jobs finished within 75 s (${kills} kills): ${JSON.stringify(counts)}\n` +
              workers.map((w) => `${w.name}: ${w.stderr.slice(-2000)}`).join('\n'),
          );
        }
        if (Date.now() >= nextKill) {
          const up = workers.filter((w) => ready.has(w) && w.alive);
          if (up.length > 0) {
            const victim = up[Math.floor(Math.random() * up.length)]!;
            ready.delete(victim);
            victim.proc.kill('SIGKILL');
            kills++;
            spawnWorker();
          }
          nextKill = Date.now() + 300 + Math.random() * 200;
        }
        await sleep(25);
      }
      await enqueued;
      const doneMs = Date.now() - started;

      // The survivors close gracefully: nothing is running any more. A replacement still starting
      // has no SIGTERM handler yet, so each is let finish starting first.
      const survivors = workers.filter((w) => w.alive);
      await Promise.all(survivors.map((w) => w.line(/^ready$/)));
      const exits = await Promise.all(survivors.map((w) => w.terminate()));
      for (const [i, w] of survivors.entries()) {
        assert.deepEqual(
          exits[i],
          { code: 0, signal: null },
          `${w.name} on SIGTERM: ${w.stderr.slice(-2000)}`,
        );
      }

      const counts = await broker.counts();
      assert.deepEqual(
        counts,
        { queued: 0, running: 0, succeeded: JOBS, failed: 0, canceled: 0 },
        'every job succeeded, none is left queued or running',
      );
      const runs = await setup.runs();
      const jobs = await Promise.all(ids.map((id) => broker.get(id)));
      const byRuns = new Map<number, number>();
      let retried = 0;
      let claimedNotRun = 0;
      for (const [i, job] of jobs.entries()) {
        const id = ids[i]!;
        assert.ok(job, `job ${id} exists`);
        const record = job as JobRecord;
        assert.equal(record.status, 'succeeded', `job ${id}: ${JSON.stringify(record)}`);
        const ran = runs.get(id) ?? 0;
        assert.ok(ran >= 1, `job ${id} ran`);
        // Each run follows a claim, and each claim counts an attempt.
        assert.ok(ran <= record.attempts, `job ${id} ran ${ran} times in ${record.attempts} attempts`);
        const result = record.result as { runs: number; pid: number };
        assert.ok(result.runs >= 1 && result.runs <= ran, `job ${id}: result ${JSON.stringify(result)}`);
        byRuns.set(ran, (byRuns.get(ran) ?? 0) + 1);
        if (record.attempts > 1) retried++;
        if (record.attempts > ran) claimedNotRun++;
      }
      const ranTwice = byRuns.get(2) ?? 0;
      const ranMore = [...byRuns].filter(([n]) => n > 2).reduce((sum, [, c]) => sum + c, 0);
      const warnings: Record<string, number> = {};
      for (const w of workers) {
        for (const [message, n] of w.warnings) warnings[message] = (warnings[message] ?? 0) + n;
      }
      const summary = {
        jobs: JOBS,
        workers: WORKERS,
        kills,
        workerProcesses: spawned,
        ranOnce: byRuns.get(1) ?? 0,
        ranTwice,
        ranMoreThanTwice: ranMore,
        retriedAfterLostLease: retried,
        claimedButKilledBeforeRunning: claimedNotRun,
        enqueueMs,
        allFinishedMs: doneMs,
        workerWarnings: warnings,
      };
      console.log(`${label} crash test: ${JSON.stringify(summary)}`);

      // The test proves nothing unless it actually killed workers holding leases.
      assert.ok(kills >= 5, `only ${kills} kills: the jobs finished too fast to exercise crashes`);
      assert.ok(retried > 0, 'no job was recovered after a kill: the crash path was not exercised');
    });
  });
}
