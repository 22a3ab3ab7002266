// The broker contract as executable specification. Every adapter calls `brokerConformance` with
// its own factory; an adapter is "done" when this suite passes. It uses only the `Broker`
// interface and real time (leases of 100-300 ms), never an adapter's internals.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, it } from 'node:test';
import type { Broker, ClaimRequest, EnqueueInput, Lease, ListPage, RunOutcome } from '../../lib/broker.js';
import { BadRequestError, QueueFullError } from '../../lib/errors.js';
import { isJobId, JOB_STATUSES, type JobEvent, type JobRecord } from '../../lib/job.js';
import { eventually, sleep } from '../helpers/eventually.js';

export interface BrokerConformanceOptions {
  /** Runs after each test, before `close()`: empty the store a persistent adapter shares. */
  cleanup?: (broker: Broker) => Promise<void>;
}

/** A lease long enough for one test step and short enough not to slow the suite. */
const LEASE_MS = 300;
/** Brokers may stamp times with their own (database server) clock. */
const CLOCK_SKEW_MS = 250;
/** Long enough for an event or wake-up that should not come to have come. */
const QUIET_MS = 100;

const asJson = (value: unknown): unknown => JSON.parse(JSON.stringify(value));

/**
 * Registers the conformance suite for one adapter. `factory` must return a broker over an empty
 * store (or `cleanup` must leave the store empty), since counts and purge are asserted exactly.
 */
export function brokerConformance(
  name: string,
  factory: () => Promise<Broker> | Broker,
  options: BrokerConformanceOptions = {},
): void {
  describe(`${name} conforms to the broker contract`, () => {
    let broker: Broker;
    const unsubscribes: (() => void)[] = [];

    beforeEach(async () => {
      broker = await factory();
    });

    afterEach(async () => {
      for (const off of unsubscribes.splice(0)) off();
      await options.cleanup?.(broker);
      await broker.close();
    });

    const input = (over: Partial<EnqueueInput> = {}): EnqueueInput => ({
      task: 'alpha',
      payload: { n: 1 },
      owner: null,
      maxAttempts: 3,
      ...over,
    });

    const add = async (over: Partial<EnqueueInput> = {}): Promise<JobRecord> => {
      const { job, created } = await broker.enqueue(input(over));
      assert.equal(created, true);
      return job;
    };

    const claim = (tasks: string[] = ['alpha'], limit = 1, leaseMs = LEASE_MS): Promise<Lease[]> =>
      broker.claim({ tasks, limit, leaseMs, workerId: 'conformance' });

    const claimOne = async (task = 'alpha', leaseMs = LEASE_MS): Promise<Lease> => {
      const [lease, extra] = await claim([task], 1, leaseMs);
      assert.ok(lease, `a due "${task}" job to claim`);
      assert.equal(extra, undefined);
      return lease;
    };

    /** Claims until something is handed out: for jobs that come due later. */
    const claimWhenDue = (what: string): Promise<Lease[]> =>
      eventually(async () => {
        const leases = await claim();
        return leases.length ? leases : null;
      }, what);

    const mustGet = async (id: string): Promise<JobRecord> => {
      const job = await broker.get(id);
      assert.ok(job, `job ${id} exists`);
      return job;
    };

    const record = async (): Promise<JobEvent[]> => {
      const events: JobEvent[] = [];
      unsubscribes.push(await broker.subscribe((event) => events.push(event)));
      return events;
    };

    const eventsOf = (events: JobEvent[], jobId: string) => events.filter((e) => e.jobId === jobId);

    /** Every write a run makes, with a token that is not (or no longer) the current lease. */
    const assertRefused = async (jobId: string, token: string): Promise<void> => {
      const before = await broker.get(jobId);
      assert.equal(await broker.renew(jobId, token, LEASE_MS), null, 'renew');
      assert.equal(await broker.progress(jobId, token, { percent: 99, message: 'late' }), false, 'progress');
      assert.equal(await broker.log(jobId, token, 'late line'), false, 'log');
      assert.equal(await broker.complete(jobId, token, 'late result'), false, 'complete');
      assert.equal(await broker.fail(jobId, token, { message: 'late failure' }), false, 'fail');
      assert.equal(
        await broker.fail(jobId, token, { message: 'late retry' }, Date.now()),
        false,
        'fail+retry',
      );
      assert.equal(await broker.release(jobId, token), false, 'release');
      assert.equal(await broker.acknowledgeCancel(jobId, token), false, 'acknowledgeCancel');
      assert.deepEqual(await broker.get(jobId), before, 'a refused write changes nothing');
    };

    const assertNewestFirst = (jobs: JobRecord[]): void => {
      for (let i = 1; i < jobs.length; i++) {
        const a = jobs[i - 1]!;
        const b = jobs[i]!;
        assert.ok(
          a.createdAt > b.createdAt || (a.createdAt === b.createdAt && a.id > b.id),
          `job ${i - 1} (${a.createdAt}, ${a.id}) lists before job ${i} (${b.createdAt}, ${b.id})`,
        );
      }
    };

    describe('enqueue', () => {
      it('persists a queued job with seq 1 and a random UUID v4 id', async () => {
        const before = Date.now();
        const { job, created } = await broker.enqueue(
          input({
            payload: { month: '2024-05', ids: [1, 2], nested: { ok: true, none: null } },
            owner: 'alice',
          }),
        );
        const after = Date.now();
        assert.equal(created, true);
        assert.ok(isJobId(job.id), `${job.id} is a canonical UUID v4 or v7`);
        assert.equal(job.status, 'queued');
        assert.equal(job.seq, 1);
        assert.equal(job.task, 'alpha');
        assert.deepEqual(job.payload, { month: '2024-05', ids: [1, 2], nested: { ok: true, none: null } });
        assert.equal(job.owner, 'alice');
        assert.equal(job.attempts, 0);
        assert.equal(job.maxAttempts, 3);
        assert.equal(job.progress, null);
        assert.equal(job.result, null);
        assert.equal(job.error, null);
        assert.equal(job.startedAt, null);
        assert.equal(job.finishedAt, null);
        assert.equal(job.cancelRequested, false);
        assert.deepEqual(job.logs, []);
        assert.ok(job.createdAt >= before - CLOCK_SKEW_MS && job.createdAt <= after + CLOCK_SKEW_MS);
        assert.ok(
          job.runAt >= before - CLOCK_SKEW_MS && job.runAt <= after + CLOCK_SKEW_MS,
          'runAt defaults to now',
        );
        assert.deepEqual(await broker.get(job.id), job);
      });

      it('keeps the optional fields it is given', async () => {
        const runAt = Date.now() + 60_000;
        const job = await add({
          runAt,
          expireAt: runAt + 1000,
          timeoutMs: 1234,
          idempotencyKey: 'key-1',
          payloadHash: 'hash-1',
          maxAttempts: 7,
        });
        assert.equal(job.runAt, runAt);
        assert.equal(job.expireAt, runAt + 1000);
        assert.equal(job.timeoutMs, 1234);
        assert.equal(job.idempotencyKey, 'key-1');
        assert.equal(job.payloadHash, 'hash-1');
        assert.equal(job.maxAttempts, 7);
        const plain = await add();
        assert.equal(plain.expireAt, null);
        assert.equal(plain.timeoutMs, null);
        assert.equal(plain.idempotencyKey, null);
        assert.equal(plain.payloadHash, null);
      });

      it('gives every job a different id', async () => {
        const jobs = await Promise.all(Array.from({ length: 30 }, (_, i) => add({ payload: { i } })));
        const ids = new Set(jobs.map((j) => j.id));
        assert.equal(ids.size, 30);
        for (const id of ids) assert.ok(isJobId(id));
      });

      it('emits a queued status event with seq 1', async () => {
        const events = await record();
        const job = await add();
        await eventually(() => eventsOf(events, job.id).length > 0, 'the queued event');
        const [event] = eventsOf(events, job.id);
        assert.equal(event!.type, 'status');
        assert.equal(event!.status, 'queued');
        assert.equal(event!.seq, 1);
        assert.equal(typeof event!.at, 'number');
      });
    });

    describe('idempotency keys', () => {
      it('return the existing job for the same owner, task and key, persisting nothing', async () => {
        const first = await broker.enqueue(input({ owner: 'alice', idempotencyKey: 'k', payloadHash: 'h1' }));
        const again = await broker.enqueue(
          input({ owner: 'alice', idempotencyKey: 'k', payloadHash: 'h2', payload: { other: true } }),
        );
        assert.equal(first.created, true);
        assert.equal(again.created, false);
        assert.equal(again.job.id, first.job.id);
        // The caller compares hashes to detect a key reused with another payload.
        assert.equal(again.job.payloadHash, 'h1');
        assert.deepEqual(again.job.payload, { n: 1 });
        assert.equal((await broker.counts()).queued, 1);
      });

      it('are scoped to owner and task', async () => {
        const base = await add({ owner: 'alice', idempotencyKey: 'k' });
        const otherOwner = await add({ owner: 'bob', idempotencyKey: 'k' });
        const anonymous = await add({ owner: null, idempotencyKey: 'k' });
        const otherTask = await add({ owner: 'alice', task: 'beta', idempotencyKey: 'k' });
        const otherKey = await add({ owner: 'alice', idempotencyKey: 'k2' });
        const ids = new Set([base.id, otherOwner.id, anonymous.id, otherTask.id, otherKey.id]);
        assert.equal(ids.size, 5);
        const anonAgain = await broker.enqueue(input({ owner: null, idempotencyKey: 'k' }));
        assert.equal(anonAgain.created, false);
        assert.equal(anonAgain.job.id, anonymous.id);
      });

      it('keep matching after the job finished, until it is purged', async () => {
        const job = await add({ owner: 'alice', idempotencyKey: 'k' });
        const lease = await claimOne();
        assert.ok(await broker.complete(lease.job.id, lease.token, { ok: 1 }));
        const replay = await broker.enqueue(input({ owner: 'alice', idempotencyKey: 'k' }));
        assert.equal(replay.created, false);
        assert.equal(replay.job.id, job.id);
        assert.equal(replay.job.status, 'succeeded');

        assert.equal(await broker.purge(Date.now() + 1000), 1);
        const fresh = await broker.enqueue(input({ owner: 'alice', idempotencyKey: 'k' }));
        assert.equal(fresh.created, true);
        assert.notEqual(fresh.job.id, job.id);
      });

      it('dedupe concurrent enqueues: exactly one job is created', async () => {
        const results = await Promise.all(
          Array.from({ length: 10 }, () => broker.enqueue(input({ owner: 'alice', idempotencyKey: 'race' }))),
        );
        assert.equal(results.filter((r) => r.created).length, 1);
        assert.equal(new Set(results.map((r) => r.job.id)).size, 1);
        assert.equal((await broker.counts()).queued, 1);
      });
    });

    describe('maxQueued', () => {
      it('refuses a new job with QueueFullError once that many jobs are queued', async () => {
        await add({ maxQueued: 2 });
        await add({ maxQueued: 2 });
        await assert.rejects(broker.enqueue(input({ maxQueued: 2 })), (err: unknown) => {
          assert.ok(err instanceof QueueFullError);
          assert.equal(err.code, 'ERR_OFFLOAD_QUEUE_FULL');
          return true;
        });
        assert.equal((await broker.counts()).queued, 2, 'nothing persisted');
        // A job without the bound is not refused.
        await add();
      });

      it('counts queued jobs only, not running or finished ones', async () => {
        await add();
        await add();
        const lease = await claimOne();
        await add({ maxQueued: 2 });
        assert.ok(await broker.complete(lease.job.id, lease.token, null));
        await assert.rejects(broker.enqueue(input({ maxQueued: 2 })), QueueFullError);
      });
    });

    describe('claim', () => {
      it('hands out a lease: running, attempts + 1, startedAt set, a token', async () => {
        const job = await add();
        const events = await record();
        const before = Date.now();
        const lease = await claimOne();
        assert.equal(lease.job.id, job.id);
        assert.equal(typeof lease.token, 'string');
        assert.ok(lease.token.length > 0);
        assert.equal(lease.job.status, 'running');
        assert.equal(lease.job.attempts, 1);
        assert.equal(lease.job.seq, 2);
        assert.ok(lease.job.startedAt !== null && lease.job.startedAt >= before - CLOCK_SKEW_MS);
        assert.deepEqual(lease.job.payload, job.payload);
        assert.deepEqual(await broker.get(job.id), lease.job);
        // Events from before the subscription (the queued one, seq 1) may still arrive: the
        // contract orders events, it does not promise a clean cut at subscribe (Redis Cluster
        // relays PUBLISH between nodes and may deliver it after a later SUBSCRIBE).
        const since = (e: JobEvent) => e.seq > job.seq;
        await eventually(() => eventsOf(events, job.id).some(since), 'the running event');
        assert.deepEqual(
          eventsOf(events, job.id)
            .filter(since)
            .map((e) => [e.type, e.status, e.seq, e.attempts]),
          [['status', 'running', 2, 1]],
        );
      });

      it('returns the oldest due jobs first, across tasks', async () => {
        const a1 = await add({ task: 'alpha' });
        const b1 = await add({ task: 'beta' });
        const a2 = await add({ task: 'alpha' });
        const b2 = await add({ task: 'beta' });
        const order: string[] = [];
        for (let i = 0; i < 4; i++) {
          const [lease] = await claim(['alpha', 'beta']);
          assert.ok(lease);
          order.push(lease.job.id);
        }
        assert.deepEqual(order, [a1.id, b1.id, a2.id, b2.id]);
        assert.deepEqual(await claim(['alpha', 'beta']), []);
      });

      it('hands out jobs of the named tasks only', async () => {
        const beta = await add({ task: 'beta' });
        assert.deepEqual(await claim(['alpha']), []);
        assert.deepEqual(await claim(['gamma', 'delta'], 5), []);
        assert.equal((await mustGet(beta.id)).status, 'queued');
        const [lease] = await claim(['alpha', 'beta']);
        assert.equal(lease?.job.id, beta.id);
      });

      it('hands out at most `limit` jobs', async () => {
        const jobs: JobRecord[] = [];
        for (let i = 0; i < 5; i++) jobs.push(await add({ payload: { i } }));
        const first = await claim(['alpha'], 2);
        assert.deepEqual(
          first.map((l) => l.job.id),
          jobs.slice(0, 2).map((j) => j.id),
        );
        const rest = await claim(['alpha'], 10);
        assert.deepEqual(
          rest.map((l) => l.job.id),
          jobs.slice(2).map((j) => j.id),
        );
        assert.deepEqual(await claim(['alpha'], 10), []);
        assert.equal(new Set([...first, ...rest].map((l) => l.token)).size, 5, 'one token per lease');
      });

      it('does not hand out a delayed job before its runAt', async () => {
        const runAt = Date.now() + 200;
        const delayed = await add({ runAt });
        const due = await add();
        const [lease] = await claim(['alpha'], 5);
        assert.equal(lease?.job.id, due.id, 'a due job is not held up by a delayed one');
        assert.deepEqual(await claim(), []);
        const [late] = await claimWhenDue('the delayed job to come due');
        assert.equal(late?.job.id, delayed.id);
        assert.ok(Date.now() >= runAt - CLOCK_SKEW_MS);
      });

      it('never gives one job to two workers, however many claim at once', async () => {
        const total = 60;
        await Promise.all(Array.from({ length: total }, (_, i) => broker.enqueue(input({ payload: { i } }))));
        const claims = new Map<string, number>();
        const tokens = new Set<string>();
        await Promise.all(
          Array.from({ length: 8 }, async (_, w) => {
            for (;;) {
              const leases = await broker.claim({
                tasks: ['alpha'],
                limit: 1 + (w % 3),
                leaseMs: 10_000,
                workerId: `worker-${w}`,
              });
              if (leases.length === 0) return;
              for (const lease of leases) {
                claims.set(lease.job.id, (claims.get(lease.job.id) ?? 0) + 1);
                tokens.add(lease.token);
              }
            }
          }),
        );
        assert.equal(claims.size, total, 'every job claimed');
        for (const [id, times] of claims) assert.equal(times, 1, `job ${id} claimed once`);
        assert.equal(tokens.size, total);
        const counts = await broker.counts();
        assert.equal(counts.running, total);
        assert.equal(counts.queued, 0);
      });

      it('does not expire a job that already started once (a retry past the age limit runs)', async () => {
        const job = await add({ expireAt: Date.now() + 150 });
        const first = await claimOne();
        assert.ok(await broker.fail(job.id, first.token, { message: 'try again' }, Date.now()));
        await sleep(200);
        const retry = await claimOne();
        assert.equal(retry.job.id, job.id);
        assert.equal(retry.job.attempts, 2);
      });

      it('fails a job past its age limit instead of handing it out', async () => {
        const events = await record();
        const stale = await add({ expireAt: Date.now() + 50 });
        const fresh = await add({ expireAt: Date.now() + 60_000 });
        await sleep(100);
        const leases = await claim(['alpha'], 5);
        assert.deepEqual(
          leases.map((l) => l.job.id),
          [fresh.id],
        );
        const expired = await mustGet(stale.id);
        assert.equal(expired.status, 'failed');
        assert.equal(expired.error?.code, 'ERR_OFFLOAD_EXPIRED');
        assert.equal(typeof expired.error?.message, 'string');
        assert.ok(expired.finishedAt !== null);
        await eventually(
          () => eventsOf(events, stale.id).some((e) => e.type === 'status' && e.status === 'failed'),
          'the failed event',
        );
      });
    });

    describe('leases', () => {
      it('renew keeps a lease alive; recover leaves live leases alone', async () => {
        const job = await add();
        const lease = await claimOne('alpha', 300);
        for (let i = 0; i < 6; i++) {
          await sleep(100);
          assert.deepEqual(await broker.renew(job.id, lease.token, 300), { cancelRequested: false });
          assert.equal(await broker.recover(), 0);
        }
        const still = await mustGet(job.id);
        assert.equal(still.status, 'running');
        assert.equal(still.attempts, 1);
        assert.ok(await broker.progress(job.id, lease.token, { percent: 5 }), 'the token is still current');
      });

      it('recover re-queues a job whose lease expired, the attempt counted', async () => {
        const events = await record();
        const job = await add();
        const first = await claimOne('alpha', 100);
        await eventually(async () => (await broker.recover()) === 1, 'the lease to expire');
        const requeued = await mustGet(job.id);
        assert.equal(requeued.status, 'queued');
        assert.equal(requeued.attempts, 1);
        await eventually(
          () =>
            eventsOf(events, job.id).some((e) => e.type === 'status' && e.status === 'queued' && e.seq === 3),
          'the queued event',
        );
        assert.equal(await broker.recover(), 0, 'nothing left to recover');
        const second = await claimOne();
        assert.equal(second.job.id, job.id);
        assert.equal(second.job.attempts, 2);
        assert.notEqual(second.token, first.token);
      });

      it('recover fails a job whose lease expired on its last attempt', async () => {
        const job = await add({ maxAttempts: 1 });
        await claimOne('alpha', 100);
        await eventually(async () => (await broker.recover()) === 1, 'the lease to expire');
        const failed = await mustGet(job.id);
        assert.equal(failed.status, 'failed');
        assert.equal(failed.attempts, 1);
        assert.equal(failed.error?.code, 'ERR_OFFLOAD_LEASE_EXPIRED');
        assert.ok(failed.finishedAt !== null);
        assert.deepEqual(await claim(), []);
      });

      it('refuses every write from a worker that lost its lease, also after another worker claimed the job', async () => {
        const job = await add();
        const old = await claimOne('alpha', 100);
        await eventually(async () => (await broker.recover()) === 1, 'the lease to expire');
        await assertRefused(job.id, old.token);
        assert.equal((await mustGet(job.id)).status, 'queued');

        const current = await claimOne();
        await assertRefused(job.id, old.token);
        const running = await mustGet(job.id);
        assert.equal(running.status, 'running');
        assert.equal(running.attempts, 2);
        assert.equal(running.progress, null);
        assert.deepEqual(running.logs, []);

        // The new holder's writes still go through.
        assert.ok(await broker.progress(job.id, current.token, { percent: 50 }));
        assert.ok(await broker.complete(job.id, current.token, 'fresh'));
        const done = await mustGet(job.id);
        assert.equal(done.status, 'succeeded');
        assert.equal(done.result, 'fresh');
      });

      it('refuses writes with a token that never held the lease, or for an unknown job', async () => {
        const job = await add();
        await claimOne();
        await assertRefused(job.id, 'not-a-token');
        await assertRefused(job.id, randomUUID());
        const unknown = randomUUID();
        assert.equal(await broker.renew(unknown, 'x', LEASE_MS), null);
        assert.equal(await broker.progress(unknown, 'x', { percent: 1 }), false);
        assert.equal(await broker.log(unknown, 'x', 'line'), false);
        assert.equal(await broker.complete(unknown, 'x', null), false);
        assert.equal(await broker.fail(unknown, 'x', { message: 'no' }), false);
        assert.equal(await broker.release(unknown, 'x'), false);
        assert.equal(await broker.acknowledgeCancel(unknown, 'x'), false);
      });

      it('refuses a write on a queued job', async () => {
        const job = await add();
        const lease = await claimOne();
        assert.ok(await broker.release(job.id, lease.token));
        await assertRefused(job.id, lease.token);
      });
    });

    describe('a run', () => {
      it('records progress (last value wins) with a progress event', async () => {
        const events = await record();
        const job = await add();
        const lease = await claimOne();
        assert.ok(await broker.progress(job.id, lease.token, { percent: 10, message: 'loading' }));
        assert.ok(
          await broker.progress(job.id, lease.token, {
            percent: 60,
            message: 'rendering',
            data: { page: 3 },
          }),
        );
        const running = await mustGet(job.id);
        assert.deepEqual(running.progress, { percent: 60, message: 'rendering', data: { page: 3 } });
        assert.equal(running.seq, 4);
        await eventually(() => eventsOf(events, job.id).length === 4, 'four events');
        const progress = eventsOf(events, job.id).filter((e) => e.type === 'progress');
        assert.deepEqual(
          progress.map((e) => [e.seq, e.progress]),
          [
            [3, { percent: 10, message: 'loading' }],
            [4, { percent: 60, message: 'rendering', data: { page: 3 } }],
          ],
        );
      });

      it('appends log lines in order', async () => {
        const job = await add();
        const lease = await claimOne();
        assert.ok(await broker.log(job.id, lease.token, 'first'));
        assert.ok(await broker.log(job.id, lease.token, 'second'));
        assert.deepEqual((await mustGet(job.id)).logs, ['first', 'second']);
      });

      it('complete stores the result and ends succeeded', async () => {
        const events = await record();
        const job = await add();
        const lease = await claimOne();
        const result = { url: '/files/1.csv', rows: 42, tags: ['a', 'ü'], empty: null };
        assert.ok(await broker.complete(job.id, lease.token, result));
        const done = await mustGet(job.id);
        assert.equal(done.status, 'succeeded');
        assert.deepEqual(done.result, result);
        assert.equal(done.error, null);
        assert.ok(done.finishedAt !== null && done.finishedAt >= done.startedAt!);
        await eventually(() => eventsOf(events, job.id).length === 3, 'the terminal event');
        const terminal = eventsOf(events, job.id)[2]!;
        assert.equal(terminal.type, 'status');
        assert.equal(terminal.status, 'succeeded');
        assert.equal(terminal.seq, 3);
        assert.deepEqual(terminal.result, result);
      });

      it('complete accepts a null result', async () => {
        const job = await add();
        const lease = await claimOne();
        assert.ok(await broker.complete(job.id, lease.token, null));
        const done = await mustGet(job.id);
        assert.equal(done.status, 'succeeded');
        assert.equal(done.result, null);
      });

      it('fail without retryAt ends failed with the error', async () => {
        const events = await record();
        const job = await add();
        const lease = await claimOne();
        assert.ok(await broker.fail(job.id, lease.token, { message: 'boom', code: 'E_BOOM' }));
        const failed = await mustGet(job.id);
        assert.equal(failed.status, 'failed');
        assert.equal(failed.error?.message, 'boom');
        assert.equal(failed.error?.code, 'E_BOOM');
        assert.equal(failed.attempts, 1);
        assert.ok(failed.finishedAt !== null);
        await eventually(() => eventsOf(events, job.id).length === 3, 'the terminal event');
        const terminal = eventsOf(events, job.id)[2]!;
        assert.equal(terminal.status, 'failed');
        assert.equal(terminal.error?.message, 'boom');
      });

      it('fail with retryAt puts the job back for then, the attempt kept', async () => {
        const job = await add();
        const lease = await claimOne();
        const retryAt = Date.now() + 200;
        assert.ok(await broker.fail(job.id, lease.token, { message: 'flaky' }, retryAt));
        const queued = await mustGet(job.id);
        assert.equal(queued.status, 'queued');
        assert.equal(queued.attempts, 1);
        assert.equal(queued.runAt, retryAt);
        assert.equal(queued.finishedAt, null);
        assert.deepEqual(await claim(), [], 'not before retryAt');
        const [again] = await claimWhenDue('the retry to come due');
        assert.ok(Date.now() >= retryAt - CLOCK_SKEW_MS);
        assert.equal(again?.job.id, job.id);
        assert.equal(again?.job.attempts, 2);
      });

      it('release hands the job back at once without counting the attempt', async () => {
        const events = await record();
        const job = await add();
        const lease = await claimOne();
        assert.ok(await broker.release(job.id, lease.token));
        const queued = await mustGet(job.id);
        assert.equal(queued.status, 'queued');
        assert.equal(queued.attempts, 0);
        assert.equal(queued.finishedAt, null);
        await eventually(() => eventsOf(events, job.id).length === 3, 'the queued event');
        assert.deepEqual(
          eventsOf(events, job.id).map((e) => [e.seq, e.status]),
          [
            [1, 'queued'],
            [2, 'running'],
            [3, 'queued'],
          ],
        );
        const again = await claimOne();
        assert.equal(again.job.id, job.id);
        assert.equal(again.job.attempts, 1);
        assert.notEqual(again.token, lease.token);
      });
    });

    describe('settle (a run ends and the slot is claimed again, in one call)', () => {
      const next = (tasks: string[] = ['alpha'], limit = 1): ClaimRequest => ({
        tasks,
        limit,
        leaseMs: LEASE_MS,
        workerId: 'conformance',
      });
      /** One run's settle: `accepted` as a boolean. */
      const settleOne = async (jobId: string, token: string, outcome: RunOutcome, request: ClaimRequest) => {
        const { accepted, leases } = await broker.settle([{ jobId, token, outcome }], request);
        assert.equal(accepted.length, 1);
        return { accepted: accepted[0]!, leases };
      };

      it('completes the run, then hands out the next due job', async () => {
        const events = await record();
        const first = await add({ payload: { i: 1 } });
        const second = await add({ payload: { i: 2 } });
        const lease = await claimOne();
        const { accepted, leases } = await settleOne(
          first.id,
          lease.token,
          { type: 'complete', result: { rows: 3 } },
          next(),
        );
        assert.equal(accepted, true);
        const done = await mustGet(first.id);
        assert.equal(done.status, 'succeeded');
        assert.deepEqual(done.result, { rows: 3 });
        assert.equal(leases.length, 1);
        const [lease2] = leases;
        assert.equal(lease2!.job.id, second.id);
        assert.equal(lease2!.job.status, 'running');
        assert.equal(lease2!.job.attempts, 1);
        assert.deepEqual(lease2!.job.payload, { i: 2 });
        assert.notEqual(lease2!.token, lease.token);
        assert.equal((await mustGet(second.id)).status, 'running');
        await eventually(
          () => eventsOf(events, first.id).length === 3 && eventsOf(events, second.id).length === 2,
          'the succeeded and the running events',
        );
        assert.deepEqual(
          eventsOf(events, second.id).map((e) => [e.seq, e.status]),
          [
            [1, 'queued'],
            [2, 'running'],
          ],
        );
        assert.ok(await broker.complete(second.id, lease2!.token, null), 'the new lease holds');
        assert.deepEqual(await claim(), []);
      });

      it('fails, retries or acknowledges a cancel as fail and acknowledgeCancel do', async () => {
        const failed = await add({ maxAttempts: 1 });
        const lease = await claimOne();
        const r1 = await settleOne(
          failed.id,
          lease.token,
          { type: 'fail', error: { message: 'no' } },
          next(),
        );
        assert.equal(r1.accepted, true);
        assert.deepEqual(r1.leases, []);
        assert.equal((await mustGet(failed.id)).status, 'failed');
        assert.deepEqual((await mustGet(failed.id)).error, { message: 'no' });

        // A retry due at once is claimed again by the same call.
        const retried = await add();
        const lease2 = await claimOne();
        const r2 = await settleOne(
          retried.id,
          lease2.token,
          { type: 'fail', error: { message: 'flaky' }, retryAt: Date.now() - 1000 },
          next(),
        );
        assert.equal(r2.accepted, true);
        assert.equal(r2.leases.length, 1);
        assert.equal(r2.leases[0]!.job.id, retried.id);
        assert.equal(r2.leases[0]!.job.attempts, 2);
        assert.deepEqual(r2.leases[0]!.job.error, { message: 'flaky' });

        assert.equal((await broker.cancel(retried.id)).outcome, 'requested');
        const r3 = await settleOne(retried.id, r2.leases[0]!.token, { type: 'cancel' }, next());
        assert.equal(r3.accepted, true);
        assert.equal((await mustGet(retried.id)).status, 'canceled');
      });

      it('ends a cancel-requested run canceled, whatever the outcome', async () => {
        const job = await add();
        const lease = await claimOne();
        await broker.cancel(job.id);
        const { accepted } = await settleOne(job.id, lease.token, { type: 'complete', result: 1 }, next());
        assert.equal(accepted, true);
        const canceled = await mustGet(job.id);
        assert.equal(canceled.status, 'canceled');
        assert.equal(canceled.result, null);
      });

      it('claims even when the token is not current; claims nothing with limit 0', async () => {
        const job = await add();
        const lease = await claimOne();
        const waiting = await add();
        const before = await mustGet(job.id);
        const none = await settleOne(
          job.id,
          'not-a-token',
          { type: 'complete', result: 1 },
          next(['alpha'], 0),
        );
        assert.deepEqual(none, { accepted: false, leases: [] });
        assert.deepEqual(await mustGet(job.id), before, 'a refused settle changes nothing');
        assert.equal((await mustGet(waiting.id)).status, 'queued');

        const refused = await settleOne(job.id, 'not-a-token', { type: 'complete', result: 1 }, next());
        assert.equal(refused.accepted, false);
        assert.deepEqual(
          refused.leases.map((l) => l.job.id),
          [waiting.id],
        );
        assert.equal((await mustGet(job.id)).status, 'running');
        assert.ok(await broker.complete(job.id, lease.token, 1), 'the real holder still holds');
      });

      it('ends several runs in one call, each judged by its own token, and claims for all', async () => {
        const events = await record();
        const jobs: JobRecord[] = [];
        for (let i = 0; i < 5; i++) jobs.push(await add({ payload: { i } }));
        const [l0, l1, l2] = await claim(['alpha'], 3);
        const { accepted, leases } = await broker.settle(
          [
            { jobId: l0!.job.id, token: l0!.token, outcome: { type: 'complete', result: 'zero' } },
            { jobId: l1!.job.id, token: 'stale', outcome: { type: 'complete', result: 'forged' } },
            { jobId: l2!.job.id, token: l2!.token, outcome: { type: 'fail', error: { message: 'two' } } },
          ],
          next(['alpha'], 3),
        );
        assert.deepEqual(accepted, [true, false, true]);
        assert.equal((await mustGet(jobs[0]!.id)).result, 'zero');
        assert.equal((await mustGet(jobs[1]!.id)).status, 'running', 'the stale write changed nothing');
        const failed = await mustGet(jobs[2]!.id);
        assert.equal(failed.status, 'failed', 'no retryAt: final');
        assert.deepEqual(failed.error, { message: 'two' });
        assert.deepEqual(
          leases.map((l) => l.job.id),
          [jobs[3]!.id, jobs[4]!.id],
          'as many as asked for, if due',
        );
        assert.equal(new Set(leases.map((l) => l.token)).size, 2);
        await eventually(() => eventsOf(events, jobs[4]!.id).length === 2, 'the running events');
        assert.deepEqual(
          eventsOf(events, jobs[0]!.id).map((e) => e.status),
          ['queued', 'running', 'succeeded'],
        );
      });

      it('claims the oldest due job of the named tasks', async () => {
        const a = await add({ task: 'alpha' });
        const b = await add({ task: 'beta' });
        const c = await add({ task: 'gamma' });
        const lease = await claimOne('alpha');
        assert.equal(lease.job.id, a.id);
        const r1 = await settleOne(
          a.id,
          lease.token,
          { type: 'complete', result: null },
          next(['gamma', 'beta']),
        );
        assert.deepEqual(
          r1.leases.map((l) => l.job.id),
          [b.id],
        );
        const r2 = await settleOne(
          b.id,
          r1.leases[0]!.token,
          { type: 'complete', result: null },
          next(['alpha', 'beta'], 5),
        );
        assert.deepEqual(r2.leases, [], 'gamma is not asked for');
        assert.equal((await mustGet(c.id)).status, 'queued');
      });
    });

    describe('onCancel', () => {
      it('tells listeners the id of a running job whose cancel was requested, once', async () => {
        const heard: string[] = [];
        const off = broker.onCancel((id) => heard.push(id));
        unsubscribes.push(off);
        const queued = await add();
        const running = await add();
        const [lease] = await claim(['alpha'], 2);
        assert.equal(lease?.job.id, queued.id);
        // Let a broker that subscribes over the network come up (a hint may be missed before).
        await sleep(QUIET_MS);
        await broker.release(queued.id, lease!.token);
        assert.equal((await broker.cancel(queued.id)).outcome, 'canceled');
        assert.equal((await broker.cancel(running.id)).outcome, 'requested');
        await eventually(() => heard.includes(running.id), 'the cancel of the running job');
        assert.equal((await broker.cancel(running.id)).outcome, 'requested');
        await sleep(QUIET_MS);
        assert.deepEqual(heard, [running.id], 'not for a queued job, nor for a second request');
        off();
        const other = await add();
        await claimOne();
        await broker.cancel(other.id);
        await sleep(QUIET_MS);
        assert.deepEqual(heard, [running.id], 'nothing after unsubscribing');
      });
    });

    describe('cancel', () => {
      it('cancels a queued job at once', async () => {
        const events = await record();
        const job = await add({ owner: 'alice' });
        const { outcome, job: canceled } = await broker.cancel(job.id, 'alice');
        assert.equal(outcome, 'canceled');
        assert.equal(canceled?.status, 'canceled');
        const stored = await mustGet(job.id);
        assert.equal(stored.status, 'canceled');
        assert.ok(stored.finishedAt !== null);
        assert.deepEqual(await claim(), [], 'a canceled job is never claimed');
        await eventually(() => eventsOf(events, job.id).length === 2, 'the canceled event');
        const event = eventsOf(events, job.id)[1]!;
        assert.equal(event.type, 'status');
        assert.equal(event.status, 'canceled');
        assert.equal(event.seq, 2);
      });

      it('cancels a queued delayed job, which then never comes due', async () => {
        const job = await add({ runAt: Date.now() + 100 });
        assert.equal((await broker.cancel(job.id)).outcome, 'canceled');
        await sleep(150);
        assert.deepEqual(await claim(), []);
        assert.equal((await mustGet(job.id)).status, 'canceled');
      });

      it('asks the worker of a running job to stop: a cancel event, and renew reports it', async () => {
        const events = await record();
        const job = await add();
        const lease = await claimOne();
        assert.deepEqual(await broker.renew(job.id, lease.token, LEASE_MS), { cancelRequested: false });
        const { outcome, job: flagged } = await broker.cancel(job.id);
        assert.equal(outcome, 'requested');
        assert.equal(flagged?.status, 'running');
        await eventually(() => eventsOf(events, job.id).some((e) => e.type === 'cancel'), 'the cancel event');
        assert.deepEqual(await broker.renew(job.id, lease.token, LEASE_MS), { cancelRequested: true });
        const stored = await mustGet(job.id);
        assert.equal(stored.status, 'running', 'running until the worker stops');
        assert.equal(stored.cancelRequested, true);
        assert.equal((await broker.cancel(job.id)).outcome, 'requested', 'asking twice is harmless');
        assert.ok(await broker.acknowledgeCancel(job.id, lease.token));
        const canceled = await mustGet(job.id);
        assert.equal(canceled.status, 'canceled');
        assert.ok(canceled.finishedAt !== null);
        await eventually(
          () => eventsOf(events, job.id).some((e) => e.type === 'status' && e.status === 'canceled'),
          'the canceled event',
        );
      });

      it('ends a cancel-requested job canceled whatever the worker reports', async () => {
        const endings: [string, (id: string, token: string) => Promise<boolean>][] = [
          ['complete', (id, token) => broker.complete(id, token, { done: true })],
          ['fail', (id, token) => broker.fail(id, token, { message: 'stopped' })],
          ['fail with retryAt', (id, token) => broker.fail(id, token, { message: 'stopped' }, Date.now())],
          ['acknowledgeCancel', (id, token) => broker.acknowledgeCancel(id, token)],
        ];
        for (const [name, end] of endings) {
          const job = await add();
          const lease = await claimOne();
          assert.equal((await broker.cancel(job.id)).outcome, 'requested');
          assert.equal(await end(job.id, lease.token), true, name);
          assert.equal((await mustGet(job.id)).status, 'canceled', `${name} after a cancel`);
          await assertRefused(job.id, lease.token);
        }
        assert.deepEqual(await claim(['alpha'], 10), []);
      });

      it('leaves a finished job alone', async () => {
        const job = await add();
        const lease = await claimOne();
        assert.ok(await broker.complete(job.id, lease.token, 1));
        const { outcome, job: finished } = await broker.cancel(job.id);
        assert.equal(outcome, 'finished');
        assert.equal(finished?.status, 'succeeded');
        assert.equal((await mustGet(job.id)).status, 'succeeded');
      });

      it("does not find another owner's job, an anonymous caller's job, or an unknown one", async () => {
        const alices = await add({ owner: 'alice' });
        const anonymous = await add({ owner: null });
        assert.deepEqual(await broker.cancel(alices.id, 'bob'), { outcome: 'not-found', job: null });
        assert.deepEqual(await broker.cancel(alices.id, null), { outcome: 'not-found', job: null });
        assert.deepEqual(await broker.cancel(anonymous.id, 'alice'), { outcome: 'not-found', job: null });
        assert.deepEqual(await broker.cancel(randomUUID()), { outcome: 'not-found', job: null });
        assert.equal((await mustGet(alices.id)).status, 'queued');
        assert.equal((await mustGet(anonymous.id)).status, 'queued');
        assert.equal((await broker.cancel(anonymous.id, null)).outcome, 'canceled');
        assert.equal((await broker.cancel(alices.id)).outcome, 'canceled', 'no owner given: no owner check');
      });

      it('is atomic with claim: each job is either claimed or canceled, never both', async () => {
        const jobs = await Promise.all(Array.from({ length: 30 }, (_, i) => add({ payload: { i } })));
        const claimed = new Set<string>();
        const claimLoop = async () => {
          for (;;) {
            const leases = await claim(['alpha'], 2, 10_000);
            if (leases.length === 0) return;
            for (const l of leases) claimed.add(l.job.id);
          }
        };
        const [outcomes] = await Promise.all([
          Promise.all(jobs.map((j) => broker.cancel(j.id))),
          claimLoop(),
          claimLoop(),
        ]);
        for (const [i, job] of jobs.entries()) {
          const stored = await mustGet(job.id);
          if (claimed.has(job.id)) {
            assert.equal(outcomes[i]!.outcome, 'requested', `claimed job ${i}`);
            assert.equal(stored.status, 'running');
            assert.equal(stored.cancelRequested, true);
          } else {
            assert.equal(outcomes[i]!.outcome, 'canceled', `unclaimed job ${i}`);
            assert.equal(stored.status, 'canceled');
          }
        }
      });
    });

    describe('terminal states never change', () => {
      it('a succeeded job', async () => {
        const job = await add({ maxAttempts: 1 });
        const lease = await claimOne();
        assert.ok(await broker.complete(job.id, lease.token, 'first'));
        const done = await mustGet(job.id);
        await assertRefused(job.id, lease.token);
        assert.equal((await broker.cancel(job.id)).outcome, 'finished');
        assert.equal(await broker.retry(job.id), null, 'only failed or canceled jobs are retried');
        assert.deepEqual(await claim(), []);
        assert.equal(await broker.recover(), 0);
        assert.deepEqual(await broker.get(job.id), done);
      });

      it('a failed job', async () => {
        const job = await add({ maxAttempts: 1 });
        const lease = await claimOne();
        assert.ok(await broker.fail(job.id, lease.token, { message: 'no' }));
        const failed = await mustGet(job.id);
        await assertRefused(job.id, lease.token);
        assert.equal((await broker.cancel(job.id)).outcome, 'finished');
        assert.deepEqual(await claim(), []);
        assert.deepEqual(await broker.get(job.id), failed);
      });

      it('a canceled job', async () => {
        const queued = await add();
        assert.equal((await broker.cancel(queued.id)).outcome, 'canceled');
        const canceled = await mustGet(queued.id);
        assert.equal((await broker.cancel(queued.id)).outcome, 'finished');
        assert.deepEqual(await claim(), []);
        assert.deepEqual(await broker.get(queued.id), canceled);

        const running = await add();
        const lease = await claimOne();
        await broker.cancel(running.id);
        assert.ok(await broker.acknowledgeCancel(running.id, lease.token));
        await assertRefused(running.id, lease.token);
        assert.equal((await broker.cancel(running.id)).outcome, 'finished');
        assert.equal((await mustGet(running.id)).status, 'canceled');
      });
    });

    describe('retry', () => {
      it('re-queues a failed job as a fresh run', async () => {
        const job = await add({ maxAttempts: 1 });
        const lease = await claimOne();
        assert.ok(await broker.fail(job.id, lease.token, { message: 'boom' }));
        const retried = await broker.retry(job.id);
        assert.equal(retried?.id, job.id);
        assert.equal(retried?.status, 'queued');
        assert.equal(retried?.attempts, 0);
        assert.equal(retried?.finishedAt, null);
        assert.ok(retried!.seq > 3, 'a client-visible change bumps seq');
        assert.deepEqual(await broker.get(job.id), retried);
        await assertRefused(job.id, lease.token);
        const again = await claimOne();
        assert.equal(again.job.id, job.id);
        assert.equal(again.job.attempts, 1);
        assert.ok(await broker.complete(job.id, again.token, 'second time lucky'));
        assert.equal((await mustGet(job.id)).status, 'succeeded');
      });

      it('re-queues a canceled job', async () => {
        const job = await add();
        await broker.cancel(job.id);
        const retried = await broker.retry(job.id);
        assert.equal(retried?.status, 'queued');
        assert.equal((await claimOne()).job.id, job.id);
      });

      it('refuses queued, running, succeeded and unknown jobs', async () => {
        const queued = await add();
        assert.equal(await broker.retry(queued.id), null);
        const lease = await claimOne();
        assert.equal(await broker.retry(queued.id), null);
        assert.equal((await mustGet(queued.id)).status, 'running');
        assert.ok(await broker.complete(queued.id, lease.token, null));
        assert.equal(await broker.retry(queued.id), null);
        assert.equal(await broker.retry(randomUUID()), null);
      });
    });

    describe('get', () => {
      it('returns copies: mutating them does not change the store', async () => {
        const payload = { nested: { list: [1, 2] }, name: 'x' };
        const { job: enqueued } = await broker.enqueue(input({ payload }));
        const lease = await claimOne();
        assert.ok(await broker.progress(enqueued.id, lease.token, { percent: 5, data: { step: [1] } }));
        assert.ok(await broker.log(enqueued.id, lease.token, 'line'));
        const snapshot = await mustGet(enqueued.id);

        const mutate = (job: JobRecord) => {
          job.status = 'succeeded';
          job.attempts = 99;
          job.logs.push('forged');
          (job.payload as any).name = 'forged';
          (job.payload as any).nested.list.push(3);
          if (job.progress) {
            job.progress.percent = 100;
            (job.progress.data as any)?.step?.push(2);
          }
        };
        mutate(enqueued);
        mutate(lease.job);
        mutate(await mustGet(enqueued.id));
        const [listed] = (await broker.list({ limit: 10 })).jobs;
        mutate(listed!);

        assert.deepEqual(await broker.get(enqueued.id), snapshot);
        assert.deepEqual(snapshot.payload, { nested: { list: [1, 2] }, name: 'x' });
        assert.deepEqual(snapshot.progress, { percent: 5, data: { step: [1] } });
      });

      it('returns null for an unknown job', async () => {
        assert.equal(await broker.get(randomUUID()), null);
      });
    });

    describe('list', () => {
      it('filters by owner, status and task', async () => {
        const a1 = await add({ owner: 'alice' });
        const a2 = await add({ owner: 'alice', task: 'beta' });
        const b1 = await add({ owner: 'bob' });
        const n1 = await add({ owner: null });
        const lease = await claimOne('beta');
        assert.equal(lease.job.id, a2.id);

        const ids = async (query: Parameters<Broker['list']>[0]) =>
          new Set((await broker.list(query)).jobs.map((j) => j.id));
        assert.deepEqual(await ids({ owner: 'alice', limit: 10 }), new Set([a1.id, a2.id]));
        assert.deepEqual(await ids({ owner: 'bob', limit: 10 }), new Set([b1.id]));
        assert.deepEqual(await ids({ owner: null, limit: 10 }), new Set([n1.id]));
        assert.deepEqual(await ids({ owner: 'carol', limit: 10 }), new Set());
        assert.deepEqual(await ids({ limit: 10 }), new Set([a1.id, a2.id, b1.id, n1.id]));
        assert.deepEqual(await ids({ status: 'running', limit: 10 }), new Set([a2.id]));
        assert.deepEqual(await ids({ owner: 'alice', status: 'queued', limit: 10 }), new Set([a1.id]));
        assert.deepEqual(await ids({ task: 'beta', limit: 10 }), new Set([a2.id]));
        assert.deepEqual(await ids({ owner: 'bob', task: 'beta', limit: 10 }), new Set());
        assert.deepEqual(await ids({ status: 'failed', limit: 10 }), new Set());
      });

      it('lists newest first', async () => {
        const jobs: JobRecord[] = [];
        for (let i = 0; i < 5; i++) {
          jobs.push(await add({ owner: 'alice', payload: { i } }));
          await sleep(3);
        }
        const page = await broker.list({ owner: 'alice', limit: 10 });
        assert.deepEqual(
          page.jobs.map((j) => j.id),
          jobs.map((j) => j.id).reverse(),
        );
        assert.equal(page.nextCursor, null);
      });

      it('pages with a cursor: every job exactly once, newest first', async () => {
        // Many jobs share a millisecond here, so the id tie-break is exercised.
        const jobs = await Promise.all(
          Array.from({ length: 25 }, (_, i) => add({ owner: 'alice', payload: { i } })),
        );
        await add({ owner: 'bob' });
        const seen: JobRecord[] = [];
        const sizes: number[] = [];
        let cursor: string | null = null;
        do {
          const page: ListPage = await broker.list({ owner: 'alice', limit: 10, cursor });
          sizes.push(page.jobs.length);
          seen.push(...page.jobs);
          cursor = page.nextCursor;
          assert.ok(sizes.length <= 3, 'no more than three pages');
        } while (cursor);
        assert.deepEqual(sizes, [10, 10, 5]);
        assert.equal(new Set(seen.map((j) => j.id)).size, 25);
        assert.deepEqual(new Set(seen.map((j) => j.id)), new Set(jobs.map((j) => j.id)));
        assertNewestFirst(seen);
      });

      it('ends with a null cursor when the last page is full', async () => {
        for (let i = 0; i < 4; i++) await add();
        const first = await broker.list({ limit: 2 });
        assert.ok(first.nextCursor);
        const last = await broker.list({ limit: 2, cursor: first.nextCursor });
        assert.equal(last.jobs.length, 2);
        assert.equal(last.nextCursor, null);
      });

      it('pages through a filtered listing', async () => {
        const failed: string[] = [];
        for (let i = 0; i < 7; i++) {
          const job = await add({ owner: 'alice', maxAttempts: 1 });
          if (i % 2 === 0) {
            const lease = await claimOne();
            assert.ok(await broker.fail(job.id, lease.token, { message: 'no' }));
            failed.push(job.id);
          } else {
            await broker.cancel(job.id);
          }
        }
        const seen: string[] = [];
        let cursor: string | null = null;
        for (let pages = 0; pages < 5; pages++) {
          const page: ListPage = await broker.list({
            owner: 'alice',
            status: 'failed',
            limit: 3,
            cursor,
          });
          seen.push(...page.jobs.map((j) => j.id));
          for (const j of page.jobs) assert.equal(j.status, 'failed');
          cursor = page.nextCursor;
          if (!cursor) break;
        }
        assert.deepEqual(new Set(seen), new Set(failed));
        assert.equal(seen.length, failed.length);
      });

      it('rejects a cursor it did not make with BadRequestError', async () => {
        await add();
        for (const cursor of ['not a cursor', 'bm9wZQ', Buffer.from('123.xyz').toString('base64url')]) {
          await assert.rejects(broker.list({ limit: 10, cursor }), (err: unknown) => {
            assert.ok(err instanceof BadRequestError, `cursor ${JSON.stringify(cursor)}`);
            assert.equal(err.status, 400);
            return true;
          });
        }
      });
    });

    describe('events', () => {
      it('history returns exactly the events after a seq, in order; [] when up to date', async () => {
        const job = await add();
        const lease = await claimOne();
        assert.ok(await broker.progress(job.id, lease.token, { percent: 30 }));
        assert.ok(await broker.progress(job.id, lease.token, { percent: 70 }));
        assert.ok(await broker.complete(job.id, lease.token, { ok: true }));

        const all = await broker.history(job.id, 0);
        assert.ok(all);
        assert.deepEqual(
          all.map((e) => [e.seq, e.type, e.status ?? e.progress?.percent]),
          [
            [1, 'status', 'queued'],
            [2, 'status', 'running'],
            [3, 'progress', 30],
            [4, 'progress', 70],
            [5, 'status', 'succeeded'],
          ],
        );
        for (const e of all) assert.equal(e.jobId, job.id);
        assert.deepEqual(all[4]!.result, { ok: true });
        assert.equal((await mustGet(job.id)).seq, 5, 'seq is the last event');

        const tail = await broker.history(job.id, 2);
        assert.deepEqual(
          tail?.map((e) => e.seq),
          [3, 4, 5],
        );
        assert.deepEqual(tail, all.slice(2));
        assert.deepEqual(await broker.history(job.id, 4), all.slice(4));
        assert.deepEqual(await broker.history(job.id, 5), []);
        assert.deepEqual(await broker.history(job.id, 9), []);
        assert.equal(await broker.history(randomUUID(), 0), null, 'unknown job');
      });

      it('history holds no cancel events (they are not shown to clients)', async () => {
        const job = await add();
        const lease = await claimOne();
        await broker.cancel(job.id);
        assert.ok(await broker.acknowledgeCancel(job.id, lease.token));
        const all = await broker.history(job.id, 0);
        assert.deepEqual(
          all?.map((e) => [e.seq, e.type, e.status]),
          [
            [1, 'status', 'queued'],
            [2, 'status', 'running'],
            [3, 'status', 'canceled'],
          ],
        );
      });

      it('delivers the events of each job in seq order, with no gap', async () => {
        const events = await record();
        const jobs = await Promise.all(Array.from({ length: 5 }, (_, i) => add({ payload: { i } })));
        const leases = await claim(['alpha'], 5);
        assert.equal(leases.length, 5);
        // All runs write at once, so the events of different jobs interleave.
        await Promise.all(
          leases.map(async ({ job, token }) => {
            for (let p = 10; p <= 100; p += 10)
              assert.ok(await broker.progress(job.id, token, { percent: p }));
            assert.ok(await broker.complete(job.id, token, { id: job.id }));
          }),
        );
        await eventually(
          () => jobs.every((j) => eventsOf(events, j.id).some((e) => e.status === 'succeeded')),
          'every terminal event',
        );
        for (const job of jobs) {
          const mine = eventsOf(events, job.id).filter((e) => e.type !== 'cancel');
          assert.deepEqual(
            mine.map((e) => e.seq),
            Array.from({ length: 13 }, (_, i) => i + 1),
            `events of ${job.id}`,
          );
          assert.deepEqual(
            mine.filter((e) => e.type === 'progress').map((e) => e.progress?.percent),
            [10, 20, 30, 40, 50, 60, 70, 80, 90, 100],
          );
          assert.equal(mine.at(-1)?.status, 'succeeded');
          assert.deepEqual(mine.at(-1)?.result, { id: job.id });
          // Live events and history are the same events (compared as they would travel, as JSON).
          assert.deepEqual(asJson(await broker.history(job.id, 0)), asJson(mine));
        }
      });

      it('stops delivering to a listener that unsubscribed', async () => {
        const kept: JobEvent[] = [];
        const dropped: JobEvent[] = [];
        unsubscribes.push(await broker.subscribe((e) => kept.push(e)));
        const off = await broker.subscribe((e) => dropped.push(e));
        const first = await add();
        await eventually(
          () => dropped.some((e) => e.jobId === first.id) && kept.length === 1,
          'the first event',
        );
        off();
        const second = await add();
        await eventually(() => kept.some((e) => e.jobId === second.id), 'the second event');
        await sleep(QUIET_MS);
        assert.equal(
          dropped.some((e) => e.jobId === second.id),
          false,
        );
      });
    });

    describe('onWork', () => {
      it('wakes listeners when a job is enqueued', async () => {
        let calls = 0;
        const off = broker.onWork(() => calls++);
        unsubscribes.push(off);
        await add();
        await eventually(() => calls > 0, 'a wake-up');
        off();
        const seen = calls;
        await add();
        await sleep(QUIET_MS);
        assert.equal(calls, seen, 'no wake-up after unsubscribing');
      });

      it('wakes listeners when a delayed job comes due', async () => {
        const calls: number[] = [];
        unsubscribes.push(broker.onWork(() => calls.push(Date.now())));
        const runAt = Date.now() + 250;
        await add({ runAt });
        await eventually(() => calls.some((t) => t >= runAt - 20), 'a wake-up when the job is due');
        // A wake-up is a hint: the claim that follows may be a moment early.
        assert.equal((await claimWhenDue('the delayed job')).length, 1);
      });

      it('does not wake listeners again and again for a job due in more than 24.8 days', async () => {
        // setTimeout turns a delay past 2^31 - 1 ms into 1 ms.
        let calls = 0;
        unsubscribes.push(broker.onWork(() => calls++));
        await add({ runAt: Date.now() + 30 * 24 * 3600 * 1000 });
        assert.deepEqual(await claim(), []);
        await sleep(QUIET_MS);
        assert.ok(calls <= 2, `${calls} wake-ups`);
      });

      it('wakes listeners when a retry comes due', async () => {
        await add();
        const lease = await claimOne();
        const calls: number[] = [];
        unsubscribes.push(broker.onWork(() => calls.push(Date.now())));
        const retryAt = Date.now() + 250;
        assert.ok(await broker.fail(lease.job.id, lease.token, { message: 'again' }, retryAt));
        await eventually(() => calls.some((t) => t >= retryAt - 20), 'a wake-up when the retry is due');
        assert.equal((await claimWhenDue('the retry')).length, 1);
      });
    });

    describe('purge', () => {
      it('deletes finished jobs that finished before `before`, with their events and keys', async () => {
        const succeeded = await add({ idempotencyKey: 'k-succeeded' });
        const failed = await add({ maxAttempts: 1 });
        const canceled = await add();
        const l1 = await claimOne();
        const l2 = await claimOne();
        assert.ok(await broker.complete(succeeded.id, l1.token, null));
        assert.ok(await broker.fail(failed.id, l2.token, { message: 'no' }));
        await broker.cancel(canceled.id);
        await sleep(20);
        const cutoff = Date.now();
        await sleep(20);
        const recent = await add({ idempotencyKey: 'k-recent' });
        const l3 = await claimOne();
        assert.ok(await broker.complete(recent.id, l3.token, null));
        const running = await add();
        assert.equal((await claimOne()).job.id, running.id);
        const queued = await add();

        assert.equal(await broker.purge(cutoff), 3);
        for (const job of [succeeded, failed, canceled]) {
          assert.equal(await broker.get(job.id), null);
          assert.equal(await broker.history(job.id, 0), null);
        }
        for (const job of [recent, queued, running]) assert.ok(await broker.get(job.id));
        assert.equal((await broker.enqueue(input({ idempotencyKey: 'k-succeeded' }))).created, true);
        assert.equal((await broker.enqueue(input({ idempotencyKey: 'k-recent' }))).created, false);
        assert.equal(await broker.purge(cutoff), 0, 'purge is idempotent');
        const counts = await broker.counts();
        assert.equal(counts.succeeded + counts.failed + counts.canceled, 1);
      });

      it('judges a retried job by when it finished last', async () => {
        const retried = await add({ maxAttempts: 1 });
        let lease = await claimOne();
        assert.ok(await broker.fail(retried.id, lease.token, { message: 'first run' }));
        assert.ok(await broker.retry(retried.id));
        const other = await add();
        lease = await claimOne();
        assert.equal(lease.job.id, retried.id);
        const otherLease = await claimOne();
        assert.ok(await broker.complete(other.id, otherLease.token, null));
        await sleep(20);
        const cutoff = Date.now();
        await sleep(20);
        assert.ok(await broker.complete(retried.id, lease.token, null));

        assert.equal(await broker.purge(cutoff), 1);
        assert.equal(await broker.get(other.id), null);
        assert.equal((await mustGet(retried.id)).status, 'succeeded');
        assert.equal(await broker.purge(Date.now() + 1000), 1);
        assert.equal(await broker.get(retried.id), null);
      });
    });

    it('counts jobs per status', async () => {
      const empty = await broker.counts();
      assert.deepEqual(Object.keys(empty).sort(), [...JOB_STATUSES].sort());
      for (const status of JOB_STATUSES) assert.equal(empty[status], 0);

      const jobs = await Promise.all(Array.from({ length: 6 }, () => add({ maxAttempts: 1 })));
      const [l1, l2, l3] = await claim(['alpha'], 3);
      assert.ok(await broker.complete(l1!.job.id, l1!.token, null));
      assert.ok(await broker.fail(l2!.job.id, l2!.token, { message: 'no' }));
      // Enqueued concurrently: which three were claimed depends on the broker. Cancel a queued one.
      const claimed = new Set([l1, l2, l3].map((l) => l!.job.id));
      assert.equal((await broker.cancel(jobs.find((j) => !claimed.has(j.id))!.id)).outcome, 'canceled');
      assert.deepEqual(await broker.counts(), {
        queued: 2,
        running: 1,
        succeeded: 1,
        failed: 1,
        canceled: 1,
      });
    });

    describe('a pending cancel wins over putting the job back', () => {
      it('release of a job whose cancel was requested ends it canceled', async () => {
        const job = await add();
        const lease = await claimOne();
        assert.equal((await broker.cancel(job.id)).outcome, 'requested');
        assert.ok(await broker.release(job.id, lease.token));
        assert.equal((await mustGet(job.id)).status, 'canceled');
        assert.deepEqual(await claim(), []);
      });

      it('recover of an expired lease whose cancel was requested ends it canceled', async () => {
        const job = await add();
        await claimOne('alpha', 100);
        assert.equal((await broker.cancel(job.id)).outcome, 'requested');
        await sleep(100 + CLOCK_SKEW_MS);
        assert.equal(await broker.recover(), 1);
        assert.equal((await mustGet(job.id)).status, 'canceled');
        assert.deepEqual(await claim(), []);
      });
    });

    it('answers an idempotent replay even when the queue is at maxQueued', async () => {
      const first = await add({ idempotencyKey: 'k-full', maxQueued: 1 });
      await assert.rejects(broker.enqueue(input({ maxQueued: 1 })), QueueFullError);
      const replay = await broker.enqueue(input({ idempotencyKey: 'k-full', maxQueued: 1 }));
      assert.equal(replay.created, false);
      assert.equal(replay.job.id, first.id);
    });

    it('close() is idempotent', async () => {
      const other = await factory();
      await other.close();
      await other.close();
    });
  });
}
