import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { IsInt, Max, Min } from 'class-validator';
import { MemoryBroker } from '../../adapters/memory/memory.broker.js';
import type { Broker } from '../../lib/broker.js';
import {
  JobCanceledError,
  JobTimeoutError,
  LeaseLostError,
  NonRetryableError,
  WorkerStoppingError,
} from '../../lib/errors.js';
import { isTerminal, type JobEvent, type JobRecord } from '../../lib/job.js';
import { silentLogger } from '../../lib/logger.js';
import { Offload } from '../../lib/offload.js';
import type { WorkerOptions } from '../../lib/options.js';
import { backoffDelay, type Job } from '../../lib/task.js';
import { eventually, sleep } from '../helpers/eventually.js';

/** Small settings so a test runs in tens of milliseconds. */
const FAST: WorkerOptions = {
  concurrency: 2,
  leaseTime: 300,
  pollInterval: 50,
  gracePeriod: 200,
  progressInterval: 50,
  cancelGrace: 100,
};

const apps: Offload[] = [];

afterEach(async () => {
  await Promise.all(apps.splice(0).map((app) => app.close()));
});

function create(worker: WorkerOptions = {}, broker: Broker = new MemoryBroker()): Offload {
  const app = new Offload({ broker, worker: { ...FAST, ...worker }, logger: silentLogger });
  apps.push(app);
  return app;
}

async function settled(app: Offload, id: string, ms = 3000): Promise<JobRecord> {
  const job = await app.waitFor(id, ms);
  assert.ok(job, `job ${id} finished within ${ms} ms`);
  assert.ok(isTerminal(job.status));
  return job;
}

function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Resolves when the signal fires, with its reason; for handlers that stop when told. */
function aborted(signal: AbortSignal): Promise<unknown> {
  return new Promise((resolve) => {
    if (signal.aborted) resolve(signal.reason);
    else signal.addEventListener('abort', () => resolve(signal.reason), { once: true });
  });
}

/** A broker that forwards to `inner` except where a test simulates a failing or slow call. */
function wrap(inner: Broker, overrides: Partial<Broker>): Broker {
  return new Proxy(inner, {
    get(target, prop) {
      if (Object.hasOwn(overrides, prop)) return overrides[prop as keyof Broker];
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

async function statusOf(app: Offload, id: string): Promise<string | undefined> {
  return (await app.get(id))?.status;
}

describe('Worker', () => {
  it('runs a job and stores its result', async () => {
    const app = create();
    const handles: Job[] = [];
    app.task('add', async (payload: { a: number; b: number }, job) => {
      handles.push(job);
      return { sum: payload.a + payload.b };
    });
    const { job } = await app.enqueue('add', { a: 2, b: 3 }, { owner: 'alice' });
    const done = await settled(app, job.id);
    assert.equal(done.status, 'succeeded');
    assert.deepEqual(done.result, { sum: 5 });
    assert.equal(done.attempts, 1);
    assert.equal(done.error, null);
    const [handle] = handles;
    assert.equal(handle?.id, job.id);
    assert.equal(handle?.task, 'add');
    assert.equal(handle?.attempt, 1);
    assert.equal(handle?.maxAttempts, 3);
    assert.equal(handle?.owner, 'alice');
    assert.deepEqual(handle?.payload, { a: 2, b: 3 });
    assert.equal(handle?.signal.aborted, false);
  });

  it('stores null for a handler that returns nothing, and JSON for a Date', async () => {
    const app = create();
    app.task('void', async () => {});
    app.task('date', async () => ({ at: new Date(0) }));
    const a = await app.enqueue('void', {});
    const b = await app.enqueue('date', {});
    assert.equal((await settled(app, a.job.id)).result, null);
    assert.deepEqual((await settled(app, b.job.id)).result, { at: '1970-01-01T00:00:00.000Z' });
  });

  it('never runs more handlers at once than its concurrency', async () => {
    const app = create({ concurrency: 2 });
    let active = 0;
    let peak = 0;
    app.task('slow', async () => {
      active++;
      peak = Math.max(peak, active);
      await sleep(40);
      active--;
    });
    const jobs = await Promise.all(Array.from({ length: 6 }, (_, i) => app.enqueue('slow', { i })));
    for (const { job } of jobs) assert.equal((await settled(app, job.id)).status, 'succeeded');
    assert.equal(peak, 2);
  });

  it('runs the same handler for jobs enqueued before the worker started', async () => {
    const broker = new MemoryBroker();
    await broker.enqueue({ task: 'early', payload: { n: 1 }, owner: null, maxAttempts: 1 });
    const app = create({}, broker);
    app.task('early', async (payload: { n: number }) => payload.n * 10);
    const [job] = (await app.list({ limit: 1 })).jobs;
    assert.equal((await settled(app, job!.id)).result, 10);
  });

  describe('time limit', () => {
    it('fires the signal with JobTimeoutError and fails the job with ERR_OFFLOAD_TIMEOUT', async () => {
      const app = create();
      let reason: unknown;
      app.task(
        'hang',
        async (_payload, job) => {
          reason = await aborted(job.signal);
          throw reason;
        },
        { timeout: 100, attempts: 1 },
      );
      const started = Date.now();
      const { job } = await app.enqueue('hang', {});
      const done = await settled(app, job.id);
      assert.ok(reason instanceof JobTimeoutError);
      assert.equal(done.status, 'failed');
      assert.equal(done.error?.code, 'ERR_OFFLOAD_TIMEOUT');
      assert.equal(done.attempts, 1);
      assert.ok(Date.now() - started >= 100);
    });

    it('frees the slot even if the handler ignores its signal', async () => {
      const app = create({ concurrency: 1 });
      const stuck = gate();
      let lateReturn = false;
      app.task(
        'stubborn',
        async () => {
          await stuck.promise;
          lateReturn = true;
          return 'too late';
        },
        { timeout: 100, attempts: 1 },
      );
      app.task('quick', async () => 'quick');
      const slow = await app.enqueue('stubborn', {});
      const quick = await app.enqueue('quick', {});
      const failed = await settled(app, slow.job.id);
      assert.equal(failed.error?.code, 'ERR_OFFLOAD_TIMEOUT');
      assert.equal((await settled(app, quick.job.id)).result, 'quick');
      stuck.open();
      await eventually(() => lateReturn, 'the stubborn handler to return');
      await sleep(20);
      const after = await app.get(slow.job.id);
      assert.equal(after?.status, 'failed', 'a late return does not overwrite the outcome');
      assert.equal(after?.result, null);
    });

    it('retries a run that timed out while attempts remain', async () => {
      const app = create();
      const reasons: unknown[] = [];
      app.task(
        'flaky',
        async (_payload, job) => {
          if (job.attempt === 1) {
            reasons.push(await aborted(job.signal));
            throw job.signal.reason;
          }
          return `attempt ${job.attempt}`;
        },
        { timeout: 100, attempts: 2, backoff: 10 },
      );
      const { job } = await app.enqueue('flaky', {});
      const done = await settled(app, job.id);
      assert.equal(done.status, 'succeeded');
      assert.equal(done.result, 'attempt 2');
      assert.equal(done.attempts, 2);
      assert.equal(reasons.length, 1);
      assert.ok(reasons[0] instanceof JobTimeoutError);
    });
  });

  describe('retries', () => {
    it('backoffDelay grows exponentially, is capped, and jitters within [half, full]', () => {
      const def = { delay: 100, factor: 2, max: 1000 };
      assert.equal(backoffDelay(def, 1, 0), 50);
      assert.equal(backoffDelay(def, 1, 1), 100);
      assert.equal(backoffDelay(def, 1, 0.5), 75);
      assert.equal(backoffDelay(def, 2, 0), 100);
      assert.equal(backoffDelay(def, 2, 1), 200);
      assert.equal(backoffDelay(def, 3, 0), 200);
      assert.equal(backoffDelay(def, 3, 1), 400);
      assert.equal(backoffDelay(def, 4, 1), 800);
      assert.equal(backoffDelay(def, 5, 0), 500, 'capped at max');
      assert.equal(backoffDelay(def, 5, 1), 1000);
      assert.equal(backoffDelay(def, 1000, 1), 1000, 'a huge attempt count stays capped');
      assert.equal(backoffDelay(def, 0, 1), 100, 'attempt 0 counts as the first');
      assert.equal(backoffDelay({ delay: 100, factor: 1, max: 1000 }, 7, 1), 100, 'factor 1 is constant');
      for (let i = 0; i < 100; i++) {
        const d = backoffDelay(def, 3);
        assert.ok(d >= 200 && d <= 400, `${d} within [200, 400]`);
      }
    });

    it('waits longer before each retry', async () => {
      const app = create();
      const starts: number[] = [];
      app.task(
        'always-fails',
        async () => {
          starts.push(Date.now());
          throw new Error(`failure ${starts.length}`);
        },
        { attempts: 4, backoff: { delay: 80, factor: 2 } },
      );
      const { job } = await app.enqueue('always-fails', {});
      const done = await settled(app, job.id, 5000);
      assert.equal(done.status, 'failed');
      assert.equal(done.attempts, 4);
      assert.equal(done.error?.message, 'failure 4');
      assert.equal(starts.length, 4);
      const gaps = starts.slice(1).map((t, i) => t - starts[i]!);
      // Equal jitter: each delay is within [exp / 2, exp] for exp = 80, 160, 320; plus scheduling.
      const slack = 150;
      for (const [i, exp] of [80, 160, 320].entries()) {
        assert.ok(gaps[i]! >= exp / 2 - 2, `gap ${i + 1} (${gaps[i]} ms) >= ${exp / 2}`);
        assert.ok(gaps[i]! <= exp + slack, `gap ${i + 1} (${gaps[i]} ms) <= ${exp} + slack`);
      }
    });

    it('fails at once on NonRetryableError, whatever attempts remain', async () => {
      const app = create();
      let calls = 0;
      app.task(
        'doomed',
        async () => {
          calls++;
          throw new NonRetryableError('The account was deleted.', 'ERR_ACCOUNT_GONE');
        },
        { attempts: 5, backoff: 10 },
      );
      app.task(
        'doomed-default',
        async () => {
          throw new NonRetryableError('no');
        },
        { attempts: 5, backoff: 10 },
      );
      const a = await app.enqueue('doomed', {});
      const b = await app.enqueue('doomed-default', {});
      const done = await settled(app, a.job.id);
      assert.equal(done.status, 'failed');
      assert.equal(done.attempts, 1);
      assert.deepEqual(
        { message: done.error?.message, code: done.error?.code },
        { message: 'The account was deleted.', code: 'ERR_ACCOUNT_GONE' },
      );
      assert.equal(calls, 1);
      assert.equal((await settled(app, b.job.id)).error?.code, 'ERR_OFFLOAD_NON_RETRYABLE');
    });

    it('records what a task throws when it is not an Error', async () => {
      const app = create();
      const thrown: Record<string, unknown> = {
        text: 'plain string',
        object: { code: 42 },
        nothing: undefined,
      };
      for (const [name, value] of Object.entries(thrown)) {
        app.task(
          `throws-${name}`,
          async () => {
            throw value;
          },
          { attempts: 1 },
        );
      }
      app.task(
        'throws-coded',
        async () => {
          throw Object.assign(new Error(''), { code: 'E_CODED' });
        },
        { attempts: 1 },
      );
      const run = async (task: string) => settled(app, (await app.enqueue(task, {})).job.id);
      const text = await run('throws-text');
      assert.equal(text.status, 'failed');
      assert.equal(text.error?.message, 'plain string');
      assert.equal((await run('throws-object')).error?.message, 'The task failed.');
      assert.equal((await run('throws-nothing')).error?.message, 'The task failed.');
      const coded = await run('throws-coded');
      assert.equal(coded.error?.message, 'Error', 'an empty message falls back to the name');
      assert.equal(coded.error?.code, 'E_CODED');
      assert.ok(app.worker?.isRunning, 'the worker survives');
    });
  });

  it('expires a job not started within its age limit', async () => {
    const app = create({ concurrency: 1 });
    const busy = gate();
    let freshCalls = 0;
    app.task('block', async () => busy.promise);
    app.task(
      'fresh',
      async () => {
        freshCalls++;
        return 'ran';
      },
      { ageLimit: 50 },
    );
    const blocker = await app.enqueue('block', {});
    await eventually(async () => (await statusOf(app, blocker.job.id)) === 'running', 'the blocker to run');
    const stale = await app.enqueue('fresh', {});
    assert.ok(stale.job.expireAt !== null && stale.job.expireAt <= Date.now() + 50);
    await sleep(100);
    busy.open();
    const expired = await settled(app, stale.job.id);
    assert.equal(expired.status, 'failed');
    assert.equal(expired.error?.code, 'ERR_OFFLOAD_EXPIRED');
    assert.equal(freshCalls, 0);
    // One that is picked up in time runs normally.
    const inTime = await app.enqueue('fresh', {});
    assert.equal((await settled(app, inTime.job.id)).result, 'ran');
  });

  describe('progress and logs', () => {
    it('coalesces progress: 10,000 reports make few writes, and the last value is kept', async () => {
      const app = create({ progressInterval: 50 });
      const events: JobEvent[] = [];
      await app.broker.subscribe((e) => events.push(e));
      app.task('chatty', async (_payload, job) => {
        for (let i = 1; i <= 10_000; i++) {
          await job.progress(i / 100, `step ${i}`, { i });
          if (i % 1000 === 0) await sleep(20);
        }
        return 'done';
      });
      const started = Date.now();
      const { job } = await app.enqueue('chatty', {});
      const done = await settled(app, job.id);
      const elapsed = Date.now() - started;
      assert.equal(done.status, 'succeeded');
      assert.deepEqual(done.progress, { percent: 100, message: 'step 10000', data: { i: 10_000 } });
      const mine = events.filter((e) => e.jobId === job.id);
      const writes = mine.filter((e) => e.type === 'progress');
      assert.ok(writes.length >= 2, `${writes.length} progress writes`);
      // At most one write per interval, plus the first and the final one.
      assert.ok(writes.length <= Math.ceil(elapsed / 50) + 2, `${writes.length} writes in ${elapsed} ms`);
      assert.equal(writes.at(-1)?.progress?.percent, 100);
      assert.equal(mine.at(-1)?.status, 'succeeded', 'the last progress is written before the outcome');
    });

    it('clamps percent to 0..100 and rejects a non-number', async () => {
      const app = create();
      const rejections: unknown[] = [];
      app.task('odd', async (_payload, job) => {
        await job.progress(250);
        await job.progress(Number.NaN).catch((err) => rejections.push(err));
        await job.progress('50' as unknown as number).catch((err) => rejections.push(err));
      });
      app.task('negative', async (_payload, job) => {
        await job.progress(-5);
      });
      const a = await app.enqueue('odd', {});
      const b = await app.enqueue('negative', {});
      assert.equal((await settled(app, a.job.id)).progress?.percent, 100);
      assert.equal((await settled(app, b.job.id)).progress?.percent, 0);
      assert.equal(rejections.length, 2);
      for (const err of rejections) assert.ok(err instanceof TypeError);
    });

    it('writes the last progress before the outcome even when the broker is slow', async () => {
      const inner = new MemoryBroker();
      const broker = wrap(inner, {
        progress: async (...args) => {
          await sleep(80);
          return inner.progress(...args);
        },
      });
      const app = create({ progressInterval: 50 }, broker);
      app.task('report', async (_payload, job) => {
        await job.progress(10, 'started');
        await sleep(10);
        await job.progress(100, 'finished');
        return 'ok';
      });
      const { job } = await app.enqueue('report', {});
      const done = await settled(app, job.id);
      assert.equal(done.status, 'succeeded');
      assert.deepEqual(done.progress, { percent: 100, message: 'finished' });
    });

    it('a failed progress write does not turn a finished run into a failure or leak the driver error', async () => {
      const inner = new MemoryBroker();
      let progressCalls = 0;
      const broker = wrap(inner, {
        progress: async () => {
          progressCalls++;
          throw new Error('connect ECONNREFUSED 10.0.0.7:6379');
        },
      });
      // A long interval: the second report is still pending when the handler returns, so only
      // the final flush writes it.
      const app = create({ progressInterval: 10_000 }, broker);
      app.task(
        'report',
        async (_payload, job) => {
          await job.progress(10, 'started');
          await job.progress(100, 'finished');
          return 'ok';
        },
        { attempts: 1 },
      );
      const { job } = await app.enqueue('report', {});
      const done = await settled(app, job.id);
      assert.equal(progressCalls, 2, 'the first report and the final flush were both tried');
      assert.equal(done.status, 'succeeded');
      assert.equal(done.result, 'ok');
      assert.equal(done.error, null);
    });

    it('a failed log write does not fail the task with the driver error', async () => {
      const broker = wrap(new MemoryBroker(), {
        log: async () => {
          throw new Error('connect ECONNREFUSED 10.0.0.7:6379');
        },
      });
      const app = create({}, broker);
      app.task(
        'chatty',
        async (_payload, job) => {
          await job.log('one line');
          return 'ok';
        },
        { attempts: 1 },
      );
      const { job } = await app.enqueue('chatty', {});
      const done = await settled(app, job.id);
      assert.equal(done.status, 'succeeded');
      assert.equal(done.result, 'ok');
    });

    it('stores job.log lines in order', async () => {
      const app = create();
      app.task('chronicle', async (_payload, job) => {
        await job.log('loading 3 rows');
        await job.log('rendering');
        return null;
      });
      const { job } = await app.enqueue('chronicle', {});
      assert.deepEqual((await settled(app, job.id)).logs, ['loading 3 rows', 'rendering']);
    });
  });

  describe('cancel', () => {
    it('fires job.signal with JobCanceledError; the job ends canceled', async () => {
      const app = create();
      let reason: unknown;
      app.task('long', async (_payload, job) => {
        reason = await aborted(job.signal);
        throw reason;
      });
      const { job } = await app.enqueue('long', {});
      await eventually(async () => (await statusOf(app, job.id)) === 'running', 'the job to run');
      const { outcome } = await app.cancel(job.id);
      assert.equal(outcome, 'requested');
      const done = await settled(app, job.id);
      assert.equal(done.status, 'canceled');
      assert.ok(reason instanceof JobCanceledError);
      assert.equal(done.attempts, 1, 'a canceled run is not retried');
    });

    it('ends canceled even if the handler returns normally after the signal', async () => {
      const app = create();
      app.task('cooperative', async (_payload, job) => {
        await aborted(job.signal);
        return 'partial';
      });
      const { job } = await app.enqueue('cooperative', {});
      await eventually(async () => (await statusOf(app, job.id)) === 'running', 'the job to run');
      await app.cancel(job.id);
      const done = await settled(app, job.id);
      assert.equal(done.status, 'canceled');
      assert.equal(done.result, null);
    });

    it('marks a handler that ignores the cancel canceled after cancelGrace, freeing its slot', async () => {
      const app = create({ concurrency: 1, cancelGrace: 100 });
      const stuck = gate();
      app.task('deaf', async () => {
        await stuck.promise;
        return 'finished anyway';
      });
      app.task('next', async () => 'next ran');
      const { job } = await app.enqueue('deaf', {});
      await eventually(async () => (await statusOf(app, job.id)) === 'running', 'the job to run');
      const next = await app.enqueue('next', {});
      const canceledAt = Date.now();
      await app.cancel(job.id);
      const done = await settled(app, job.id);
      assert.equal(done.status, 'canceled');
      assert.ok(Date.now() - canceledAt >= 100, 'not before cancelGrace');
      assert.equal((await settled(app, next.job.id)).result, 'next ran');
      stuck.open();
      await sleep(20);
      assert.equal(await statusOf(app, job.id), 'canceled');
    });
  });

  describe('graceful stop', () => {
    it('ends within a bounded time when the broker stops answering, and still signals its runs', async () => {
      const inner = new MemoryBroker();
      let hang = false;
      const never = new Promise<never>(() => {});
      const late = gate();
      const broker = wrap(inner, {
        claim: (request) => (hang ? late.promise.then(() => inner.claim(request)) : inner.claim(request)),
        release: (...args) => (hang ? never : inner.release(...args)),
      });
      // Not in `apps`: if close() hangs, afterEach must not hang with it.
      const app = new Offload({ broker, worker: { ...FAST, gracePeriod: 100 }, logger: silentLogger });
      let reason: unknown;
      app.task('hold', async (_payload, job) => {
        reason = await aborted(job.signal);
        throw reason;
      });
      await app.enqueue('hold', {});
      await eventually(async () => (await inner.counts()).running === 1, 'the job to run');
      hang = true;
      // A second job wakes the idle worker into a claim that never answers.
      const second = await inner.enqueue({ task: 'hold', payload: {}, owner: null, maxAttempts: 1 });
      await sleep(20);
      const started = Date.now();
      const outcome = await Promise.race([app.close().then(() => 'closed'), sleep(2000).then(() => 'hung')]);
      assert.equal(outcome, 'closed', 'close() returned');
      assert.ok(Date.now() - started < 1000, `closed in ${Date.now() - started} ms`);
      assert.ok(reason instanceof WorkerStoppingError, 'the running handler was told to stop');
      // The claim answers at last, after stop() gave up on it: its lease goes straight back.
      hang = false;
      late.open();
      // Its events: queued (1), running (2), queued again (3) when handed back.
      await eventually(
        async () => (await inner.get(second.job.id))?.seq === 3,
        'the late claim and its hand-back',
      );
      const handedBack = await inner.get(second.job.id);
      assert.equal(handedBack?.status, 'queued');
      assert.equal(handedBack?.attempts, 0);
      await inner.close();
    });

    it('lets jobs finish within the grace period and hands the rest back', async () => {
      const broker = new MemoryBroker();
      const first = create({ gracePeriod: 200 }, broker);
      let stuckReason: unknown;
      first.task('quick', async () => {
        await sleep(100);
        return 'quick done';
      });
      first.task('stuck', async (_payload, job) => {
        stuckReason = await aborted(job.signal);
        throw stuckReason;
      });
      const quick = await first.enqueue('quick', {});
      const stuck = await first.enqueue('stuck', {});
      await eventually(async () => (await broker.counts()).running === 2, 'both jobs to run');

      const stopStarted = Date.now();
      const report = await first.close();
      assert.deepEqual(report, { finished: 1, handedBack: 1 });
      assert.ok(Date.now() - stopStarted >= 190, 'the grace period was given');
      assert.ok(stuckReason instanceof WorkerStoppingError);
      const quickJob = await broker.get(quick.job.id);
      assert.equal(quickJob?.status, 'succeeded');
      assert.equal(quickJob?.result, 'quick done');
      const handedBack = await broker.get(stuck.job.id);
      assert.equal(handedBack?.status, 'queued');
      assert.equal(handedBack?.attempts, 0, 'the interrupted attempt is not counted');

      // Nothing is claimed by a closed instance.
      await sleep(100);
      assert.equal((await broker.get(stuck.job.id))?.status, 'queued');

      const second = create({}, broker);
      second.task('stuck', async (_payload, job) => `run ${job.attempt} on the second worker`);
      const done = await settled(second, stuck.job.id);
      assert.equal(done.status, 'succeeded');
      assert.equal(done.result, 'run 1 on the second worker');
      assert.equal(done.attempts, 1);
    });

    it('reports nothing when idle, and the same report when closed twice', async () => {
      const app = create();
      app.task('noop', async () => null);
      const first = await app.close();
      assert.deepEqual(first, { finished: 0, handedBack: 0 });
      assert.deepEqual(await app.close(), first);
    });
  });

  describe('final writes', () => {
    it('writes runs that end together in shared calls of at most a quarter of the slots, which refill them', async () => {
      const inner = new MemoryBroker();
      const settleSizes: number[] = [];
      const claimsAsked: number[] = [];
      let claimCalls = 0;
      const broker = wrap(inner, {
        claim: (request) => {
          claimCalls++;
          return inner.claim(request);
        },
        settle: (runs, next) => {
          settleSizes.push(runs.length);
          claimsAsked.push(next.limit);
          return inner.settle(runs, next);
        },
      });
      const app = create({ concurrency: 8 }, broker);
      const open = gate();
      let running = 0;
      let most = 0;
      app.task('wave', async (payload: { i: number }) => {
        running++;
        most = Math.max(most, running);
        if (payload.i < 8) await open.promise;
        running--;
        return payload.i;
      });
      const ids: string[] = [];
      for (let i = 0; i < 8; i++) ids.push((await app.enqueue('wave', { i })).job.id);
      await eventually(() => running === 8, 'the first wave to run');
      for (let i = 8; i < 16; i++) ids.push((await app.enqueue('wave', { i })).job.id);
      const claimsBefore = claimCalls;
      open.open();
      for (const [i, id] of ids.entries()) assert.equal((await settled(app, id)).result, i);

      assert.equal(most, 8, 'never more than concurrency');
      // The first wave ends in one turn: 8 runs, in calls of at most 8 / 4.
      assert.deepEqual(settleSizes.slice(0, 4), [2, 2, 2, 2]);
      assert.ok(
        settleSizes.every((n) => n <= 2),
        `every call at most 2 runs: ${settleSizes}`,
      );
      assert.deepEqual(claimsAsked, settleSizes, 'each call claims as many jobs as runs it ends');
      assert.equal(claimCalls, claimsBefore, 'the second wave came from the writes, not from claim()');
    });
  });

  describe('a lost lease', () => {
    it('abandons the old run: its late writes are refused and the worker keeps going', async () => {
      const inner = new MemoryBroker();
      let renewDown = false;
      const broker = wrap(inner, {
        // This worker cannot reach the broker to renew: its lease runs out.
        renew: (...args) =>
          renewDown ? Promise.reject(new Error('connection reset')) : inner.renew(...args),
      });
      const app = create({ leaseTime: 150, concurrency: 2 }, broker);
      const stale = gate();
      let oldSignal: AbortSignal | undefined;
      let lateWritesDone = false;
      app.task('sync', async (_payload, job) => {
        if (job.attempt === 1) {
          oldSignal = job.signal;
          renewDown = true;
          await stale.promise;
          await job.progress(99, 'stale');
          await job.log('stale line');
          lateWritesDone = true;
          return 'stale result';
        }
        return 'fresh result';
      });
      const { job } = await app.enqueue('sync', {});
      const done = await settled(app, job.id);
      assert.equal(done.status, 'succeeded');
      assert.equal(done.result, 'fresh result');
      assert.equal(done.attempts, 2, 'the lost run counted as an attempt');

      renewDown = false;
      await eventually(() => oldSignal?.aborted, 'the old run to learn its lease is lost');
      assert.ok(oldSignal?.reason instanceof LeaseLostError);
      stale.open();
      await eventually(() => lateWritesDone, 'the old handler to return');
      await sleep(50);
      const after = await inner.get(job.id);
      assert.equal(after?.status, 'succeeded');
      assert.equal(after?.result, 'fresh result');
      assert.notEqual(after?.progress?.message, 'stale');
      assert.ok(!after?.logs.includes('stale line'));

      app.task('later', async () => 'still working');
      const later = await app.enqueue('later', {});
      assert.equal((await settled(app, later.job.id)).result, 'still working');
    });

    it('counts a run it has not yet found lost against concurrency, even when it claims the job again', async () => {
      const inner = new MemoryBroker();
      let renewDown = false;
      const broker = wrap(inner, {
        renew: (...args) =>
          renewDown ? Promise.reject(new Error('connection reset')) : inner.renew(...args),
      });
      const app = create({ leaseTime: 150, concurrency: 2 }, broker);
      const zombie = gate();
      const second = gate();
      let secondStarted = false;
      let otherStarted = false;
      app.task('sync', async (_payload, job) => {
        if (job.attempt === 1) {
          renewDown = true;
          await zombie.promise;
          return 'stale';
        }
        secondStarted = true;
        await second.promise;
        return 'fresh';
      });
      app.task('other', async () => {
        otherStarted = true;
      });
      const { job } = await app.enqueue('sync', {});
      await eventually(() => secondStarted, 'the job to be claimed again');
      const other = await app.enqueue('other', {});
      await sleep(150);
      assert.equal(otherStarted, false, 'two handlers already run: the old one and the new one');
      assert.equal(app.worker?.activeCount, 2);

      renewDown = false;
      await eventually(() => otherStarted, 'the slot of the lost run to be freed');
      await settled(app, other.job.id);
      second.open();
      assert.equal((await settled(app, job.id)).result, 'fresh');
      zombie.open();
      await eventually(() => app.worker?.activeCount === 0, 'every run to end');
      // The worker hears cancels from the broker (`onCancel`), not through job-event listeners.
      assert.equal(app.events.listenerCount, 0, 'no run leaves a listener behind');
    });

    it('survives a broker that refuses or fails the final write', async () => {
      const inner = new MemoryBroker();
      let completeCalls = 0;
      const broker = wrap(inner, {
        settle: async (runs, next) => {
          if (runs[0]?.outcome.type === 'complete') {
            completeCalls++;
            if (completeCalls === 1) return { accepted: [false], leases: [] };
            if (completeCalls === 2) throw new Error('connection reset');
          }
          return inner.settle(runs, next);
        },
      });
      const app = create({ leaseTime: 150 }, broker);
      app.task('once', async (_payload, job) => `attempt ${job.attempt}`);
      const a = await app.enqueue('once', {});
      // The refused and the failed write leave the job running until its lease expires and
      // recovery re-queues it: at-least-once, never lost.
      const done = await settled(app, a.job.id, 5000);
      assert.equal(done.status, 'succeeded');
      assert.equal(done.result, 'attempt 3');
      assert.equal(completeCalls, 3);
    });
  });

  describe('validation in the worker', () => {
    class MonthDto {
      @IsInt()
      @Min(1)
      @Max(12)
      month!: number;
    }

    it('fails a job whose stored payload is invalid with ERR_OFFLOAD_VALIDATION, without retry', async () => {
      const app = create();
      let calls = 0;
      app.task(
        'report',
        async () => {
          calls++;
        },
        { validate: MonthDto, attempts: 3, backoff: 10 },
      );
      // Written by an older version, or by hand: the worker checks again before running.
      const { job } = await app.broker.enqueue({
        task: 'report',
        payload: { month: 'May' },
        owner: null,
        maxAttempts: 3,
      });
      const done = await settled(app, job.id);
      assert.equal(done.status, 'failed');
      assert.equal(done.attempts, 1);
      assert.equal(done.error?.code, 'ERR_OFFLOAD_VALIDATION');
      assert.match(done.error?.message ?? '', /month/);
      assert.equal(calls, 0);
    });

    it('hands a valid payload to the task as a DTO instance', async () => {
      const app = create();
      let received: unknown;
      app.task(
        'report',
        async (payload: MonthDto) => {
          received = payload;
          return payload.month;
        },
        { validate: MonthDto },
      );
      const { job } = await app.broker.enqueue({
        task: 'report',
        payload: { month: 5 },
        owner: null,
        maxAttempts: 1,
      });
      assert.equal((await settled(app, job.id)).result, 5);
      assert.ok(received instanceof MonthDto);
    });
  });
});
