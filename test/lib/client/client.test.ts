import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { getEventListeners } from 'node:events';
import { after, before, describe, it } from 'node:test';
import { IsInt, Max, Min } from 'class-validator';
import { EventSource, type EventSourceInit } from 'eventsource';
import { MemoryBroker } from '../../../adapters/memory/memory.broker.js';
import type * as ClientLib from '../../../lib/client/index.mjs';
import type { JobHandle, JobUpdate } from '../../../lib/client/index.mjs';
import { NonRetryableError, OffloadError as ServerOffloadError } from '../../../lib/errors.js';
import {
  createServer,
  type Steps,
  stepsById,
  stepsTask,
  type TestServer,
  userOwner,
} from '../../helpers/create-server.js';
import { eventually, sleep } from '../../helpers/eventually.js';

type ClientModule = typeof ClientLib;

class StepsRequest {
  @IsInt()
  @Min(0)
  @Max(100)
  n!: number;
}

/**
 * What the EventSource a test hands the client did: every URL it asked for, how many stay open
 * (not closed yet), and how many times a connection opened.
 */
interface SourceLog {
  urls: string[];
  open: number;
  maxOpen: number;
  opened: number;
}

/**
 * An EventSource (the `eventsource` package, as a browser's behaves) that identifies as `user`
 * (a browser would send a cookie) and logs its connections; `blocked` answers the events URL
 * as a proxy that refuses it would: a network error, or a 502.
 */
function sourceAs(user: string, log: SourceLog, blocked?: 'network' | 502) {
  return class extends EventSource {
    private counted = true;

    constructor(url: string | URL, init?: EventSourceInit) {
      super(url, {
        ...init,
        fetch: async (input, i) => {
          log.urls.push(String(input));
          if (blocked === 'network') throw new TypeError('fetch failed');
          if (blocked === 502) return new Response('Bad Gateway', { status: 502 });
          return fetch(input, { ...i, headers: { ...i.headers, 'x-user': user } });
        },
      });
      log.maxOpen = Math.max(log.maxOpen, ++log.open);
      this.addEventListener('open', () => log.opened++);
    }

    override close(): void {
      if (this.counted) log.open--;
      this.counted = false;
      super.close();
    }
  };
}

const newLog = (): SourceLog => ({ urls: [], open: 0, maxOpen: 0, opened: 0 });

/** A `fetch` that records the job id of every status poll (`GET <base>/:id`) the client makes. */
function pollLog() {
  const ids: string[] = [];
  const logged: typeof fetch = (input, init) => {
    const poll = /\/jobs\/([0-9a-f-]{36})$/.exec(String(input));
    if (poll && (init?.method ?? 'GET') === 'GET') ids.push(poll[1]!);
    return fetch(input, init);
  };
  return { ids, fetch: logged };
}

/** The job ids a stream URL of the log carries. */
const idsOf = (url: string) =>
  new URL(url).searchParams
    .get('ids')!
    .split(',')
    .map((entry) => entry.split(':')[0]!);

/** `promise`, or a failure naming `what` if it has not settled within `ms`. */
function within<T>(promise: Promise<T>, what: string, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

describe('offload/client against a real server', () => {
  let server: TestServer;
  let lib: ClientModule;
  const stepsFor = stepsById();

  before(async () => {
    lib = await import('../../../lib/client/index.mjs');
    server = await createServer(
      {
        worker: { progressInterval: 0, concurrency: 100, cancelGrace: 1000 },
        maxPayloadBytes: 200,
        maxQueued: 200,
      },
      (app, jobs) => {
        app.post('/steps', jobs.background('steps', { validate: StepsRequest }, stepsTask(stepsFor)));
        app.post(
          '/fail',
          jobs.background('fail', async (_p, job) => {
            await stepsFor(job.id).next(job.signal);
            throw new NonRetryableError('the export exploded', 'ERR_EXPORT_BROKEN');
          }),
        );
      },
    );
  });

  after(() => server.close());

  /** A client for `user` over the test server, its EventSource logged into `log` (`false`: none). */
  function clientAs(
    user: string,
    log: SourceLog | false = newLog(),
    extra: Parameters<ClientModule['createClient']>[0] = {},
  ) {
    return lib.createClient({
      base: `${server.baseUrl}/jobs`,
      headers: { 'x-user': user },
      EventSource: log ? sourceAs(user, log) : false,
      ...extra,
    });
  }

  const gateOf = (job: JobHandle): Steps => stepsFor(job.id);
  const runs = (job: JobHandle) => eventually(() => gateOf(job).waiting === 1, `job ${job.id} to run`);

  it('submit: a handle with the id and status; progress and status callbacks; the result', async () => {
    const log = newLog();
    const client = clientAs('alice', log);
    const job = await client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 3 });
    assert.match(job.id, /^[0-9a-f-]{36}$/);
    assert.equal(job.status, 'queued');
    const progress: [number, string | undefined][] = [];
    const statuses: string[] = [];
    job.onProgress((p) => progress.push([p.percent, p.message]));
    const offStatus = job.onStatus((s) => statuses.push(s));
    await runs(job);
    await eventually(() => job.status === 'running', 'the stream to report running');
    for (let i = 1; i <= 3; i++) {
      gateOf(job).release();
      await eventually(() => progress.length === i, `progress ${i}`);
    }
    assert.deepEqual(await job.result, { steps: 3 });
    assert.equal(job.status, 'succeeded');
    assert.deepEqual(progress, [
      [33, 'step 1'],
      [67, 'step 2'],
      [100, 'step 3'],
    ]);
    assert.deepEqual(statuses, ['running', 'succeeded']);
    assert.deepEqual(job.document?.result, { steps: 3 });
    assert.equal(job.document?.id, job.id);
    assert.equal(log.urls.length, 1, 'one stream');
    assert.match(log.urls[0]!, new RegExp(`/jobs/events\\?ids=${job.id}$`));
    await eventually(() => log.open === 0, 'the stream to close once nothing is followed');
    offStatus();
  });

  it('async iteration yields progress and status updates until the terminal one', async () => {
    const client = clientAs('alice');
    const job = await client.submit(`${server.baseUrl}/steps`, { n: 2 });
    const updates: JobUpdate[] = [];
    const iterating = (async () => {
      for await (const update of job) updates.push(update);
    })();
    await runs(job);
    await eventually(() => job.status === 'running', 'the stream to report running');
    gateOf(job).release();
    await eventually(() => job.progress?.percent === 50, 'progress 1');
    gateOf(job).release();
    await iterating;
    assert.deepEqual(
      updates.map((u) => [u.type, u.status, u.progress?.percent ?? null]),
      [
        ['status', 'running', null],
        ['progress', 'running', 50],
        ['progress', 'running', 100],
        ['status', 'succeeded', 100],
      ],
    );
    // Iterating a finished job ends at once, without an error.
    for await (const _ of job) assert.fail('nothing left to yield');
  });

  it('ten jobs on one page share one EventSource, reopened with each job’s cursor as jobs join', async () => {
    const log = newLog();
    const client = clientAs('alice', log);
    const first = await client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 2 });
    await runs(first);
    gateOf(first).release();
    await eventually(() => first.progress?.percent === 50, 'the first job’s progress');
    const rest = await Promise.all(
      Array.from({ length: 9 }, () => client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 2 })),
    );
    const jobs = [first, ...rest];
    for (const job of rest) await runs(job);
    await eventually(() => jobs.every((j) => j.status === 'running'), 'every job to be seen running');
    for (const job of jobs) gateOf(job).release(2);
    const results = await Promise.all(jobs.map((j) => j.result));
    assert.deepEqual(
      results,
      jobs.map(() => ({ steps: 2 })),
    );
    assert.equal(log.maxOpen, 1, 'never more than one connection open');
    const last = new URL(log.urls.at(-1)!);
    const ids = last.searchParams.get('ids')!.split(',');
    assert.equal(ids.length, 10, 'the last stream carries all ten');
    assert.match(ids[0]!, new RegExp(`^${first.id}:\\d+$`), 'a job already heard of resumes from its seq');
    for (const job of jobs) assert.deepEqual(job.progress, { percent: 100, message: 'step 2' });
    await eventually(() => log.open === 0, 'the stream to close');
  });

  it('a failed job: result rejects with an OffloadError carrying the job’s message, code and document', async () => {
    const client = clientAs('alice');
    const job = await client.submit(`${server.baseUrl}/fail`, {});
    const updates: JobUpdate[] = [];
    const iterating = (async () => {
      for await (const update of job) updates.push(update);
    })();
    await runs(job);
    gateOf(job).release();
    const err = await job.result.then(
      () => assert.fail('the result must reject'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof lib.OffloadError);
    assert.equal(err.message, 'the export exploded');
    assert.equal(err.code, 'ERR_EXPORT_BROKEN');
    assert.equal(err.job?.status, 'failed');
    assert.equal(err.name, 'OffloadError');
    await iterating;
    assert.equal(updates.at(-1)?.status, 'failed', 'iteration ends on the failed status, without throwing');
  });

  it('cancel(): the job ends canceled and the result rejects with ERR_OFFLOAD_CANCELED; once finished, cancel() is quiet', async () => {
    const client = clientAs('alice');
    const job = await client.submit(`${server.baseUrl}/steps`, { n: 5 });
    await runs(job);
    await job.cancel();
    await assert.rejects(
      job.result,
      (e: any) => e instanceof lib.OffloadError && e.code === 'ERR_OFFLOAD_CANCELED',
    );
    assert.equal(job.status, 'canceled');
    await job.cancel();
    // Someone else's job: the server's 404 problem.
    const other = clientAs('bob').follow(job.id);
    await assert.rejects(
      other.cancel(),
      (e: any) => e.status === 404 && e.code === 'ERR_OFFLOAD_JOB_NOT_FOUND',
    );
    await assert.rejects(other.result, (e: any) => e.status === 404);
  });

  it('submit errors reject with the problem document: 400 with the fields, 413, and a non-problem 404', async () => {
    const log = newLog();
    const client = clientAs('alice', log);
    const invalid = await client.submit(`${server.baseUrl}/steps`, { n: 'many' }).catch((e: unknown) => e);
    assert.ok(invalid instanceof lib.OffloadError);
    assert.equal(invalid.status, 400);
    assert.equal(invalid.code, 'ERR_OFFLOAD_VALIDATION');
    assert.deepEqual(
      invalid.problem?.errors?.map((f) => f.field),
      ['n'],
    );
    assert.equal(invalid.message, invalid.problem?.detail);

    const big = await client
      .submit(`${server.baseUrl}/steps`, { n: 1, pad: 'x'.repeat(500) })
      .catch((e) => e);
    assert.equal(big.status, 413);
    assert.equal(big.code, 'ERR_OFFLOAD_PAYLOAD_TOO_LARGE');

    const nowhere = await client.submit(`${server.baseUrl}/nowhere`, {}).catch((e) => e);
    assert.ok(nowhere instanceof lib.OffloadError);
    assert.equal(nowhere.status, 404);
    assert.equal(nowhere.message, 'HTTP 404');
    assert.equal(log.urls.length, 0, 'nothing was followed');
  });

  it('idempotencyKey: the same key gives the same job, and the same handle', async () => {
    const client = clientAs('alice');
    const key = randomUUID();
    const a = await client.submit(`${server.baseUrl}/steps`, { n: 1 }, { idempotencyKey: key });
    const b = await client.submit(`${server.baseUrl}/steps`, { n: 1 }, { idempotencyKey: key });
    assert.equal(a.id, b.id);
    assert.equal(a, b);
    const conflict = await client
      .submit(`${server.baseUrl}/steps`, { n: 2 }, { idempotencyKey: key })
      .catch((e) => e);
    assert.equal(conflict.status, 422);
    await runs(a);
    gateOf(a).release();
    assert.deepEqual(await a.result, { steps: 1 });
    // Replayed once finished (another page): the handle still gets the result.
    const again = await clientAs('alice').submit(
      `${server.baseUrl}/steps`,
      { n: 1 },
      { idempotencyKey: key },
    );
    assert.equal(again.id, a.id);
    assert.deepEqual(await again.result, { steps: 1 });
    assert.equal(again.status, 'succeeded');
  });

  it('an AbortSignal stops following (the job runs on); the result rejects with its reason', async () => {
    const log = newLog();
    const client = clientAs('alice', log);
    const controller = new AbortController();
    const job = await client.submit(`${server.baseUrl}/steps`, { n: 1 }, { signal: controller.signal });
    await runs(job);
    await eventually(() => job.status === 'running', 'the stream to report running');
    const iterating = (async () => {
      for await (const _ of job);
    })();
    controller.abort();
    await assert.rejects(job.result, { name: 'AbortError' });
    await assert.rejects(iterating, { name: 'AbortError' }, 'iteration throws when following stops early');
    await eventually(() => log.open === 0, 'the stream to close');
    gateOf(job).release();
    await eventually(
      async () => (await server.jobs.core.get(job.id))?.status === 'succeeded',
      'the job to go on',
    );
    assert.equal(job.status, 'running', 'an aborted handle hears nothing more');

    // Aborted before the request: the submit itself rejects.
    const before = new AbortController();
    before.abort();
    await assert.rejects(client.submit(`${server.baseUrl}/steps`, { n: 1 }, { signal: before.signal }), {
      name: 'AbortError',
    });
    const reason = new Error('page closed');
    const gone = client.follow(job.id, { signal: AbortSignal.abort(reason) });
    await assert.rejects(gone.result, reason);
  });

  it('follow(id): a job the page already knows; the same handle per id; someone else’s or a malformed id rejects 404', async () => {
    const submitted = (await server.jobs.core.enqueue('steps', { n: 1 }, { owner: 'alice' })).job.id;
    const log = newLog();
    const client = clientAs('alice', log);
    const job = client.follow<{ steps: number }>(submitted);
    assert.equal(job.status, null, 'unknown until the server says');
    assert.equal(client.follow(submitted), job);
    const mine = await client.submit(`${server.baseUrl}/steps`, { n: 1 });
    const bobs = (await server.jobs.core.enqueue('steps', { n: 1 }, { owner: 'bob' })).job.id;
    const notMine = client.follow(bobs);
    await assert.rejects(
      notMine.result,
      (e: any) => e.status === 404 && e.code === 'ERR_OFFLOAD_JOB_NOT_FOUND',
    );
    assert.equal(notMine.status, null, 'nothing about the job leaks');
    const before = log.urls.length;
    const malformed = client.follow('../../admin');
    await assert.rejects(malformed.result, (e: any) => e.status === 404);
    assert.equal(log.urls.length, before, 'a malformed id never reaches the shared stream');
    await eventually(() => gateOf(job).waiting === 1 && gateOf(mine).waiting === 1, 'both to run');
    gateOf(job).release();
    gateOf(mine).release();
    assert.deepEqual(await job.result, { steps: 1 });
    await mine.result;
    stepsFor(bobs).release();
  });

  it('client.close() stops following every job: their results reject with an AbortError', async () => {
    const log = newLog();
    const client = clientAs('alice', log);
    const jobs = [
      await client.submit(`${server.baseUrl}/steps`, { n: 1 }),
      await client.submit(`${server.baseUrl}/steps`, { n: 1 }),
    ];
    await eventually(() => log.open === 1, 'the stream');
    client.close();
    for (const job of jobs) await assert.rejects(job.result, { name: 'AbortError' });
    assert.equal(log.open, 0);
    for (const job of jobs) {
      await runs(job);
      gateOf(job).release();
    }
  });

  it('more than 50 jobs: streams of at most 50 each', async () => {
    const log = newLog();
    const client = clientAs('alice', log);
    const jobs = await Promise.all(
      Array.from({ length: 51 }, () => client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 1 })),
    );
    await eventually(() => jobs.every((j) => gateOf(j).waiting === 1), 'every job to run', {
      timeoutMs: 5000,
    });
    await eventually(() => jobs.every((j) => j.status === 'running'), 'every job to be seen running');
    const sizes = log.urls.slice(-2).map((u) => new URL(u).searchParams.get('ids')!.split(',').length);
    assert.deepEqual(sizes, [50, 1]);
    for (const job of jobs) gateOf(job).release();
    await Promise.all(jobs.map((j) => j.result));
    await eventually(() => log.open === 0, 'the streams to close');
  });

  it('a purged or unknown job rejects with 404 and leaves the client on the stream for the other jobs', async () => {
    const log = newLog();
    const polls = pollLog();
    const client = clientAs('alice', log, { fetch: polls.fetch, pollInterval: 20 });
    const finished = (await server.jobs.core.enqueue('steps', { n: 0 }, { owner: 'alice' })).job.id;
    await eventually(
      async () => (await server.jobs.core.get(finished))?.status === 'succeeded',
      'the job to finish',
    );
    assert.ok((await server.jobs.core.broker.purge(Date.now() + 1000)) >= 1);
    // Alone on its stream, each gets the server's 404 (EventSource closes, not saying why): one
    // poll tells the client the job is gone, and the stream was not at fault.
    const unknown = randomUUID();
    for (const gone of [finished, unknown]) {
      await assert.rejects(
        within(client.follow(gone).result, 'the purged job'),
        (e: any) =>
          e instanceof lib.OffloadError && e.status === 404 && e.code === 'ERR_OFFLOAD_JOB_NOT_FOUND',
      );
    }
    assert.deepEqual(polls.ids, [finished, unknown], 'one poll each');
    assert.deepEqual(log.urls.map(idsOf), [[finished], [unknown]], 'one stream each, never retried');

    const job = await client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 2 });
    await runs(job);
    await eventually(() => job.status === 'running', 'the next job to be streamed');
    assert.equal(log.urls.length, 3);
    // A dead id joining a live job's stream gets `missing`; the live job goes on.
    const dead = client.follow(randomUUID());
    await assert.rejects(dead.result, (e: any) => e.status === 404);
    gateOf(job).release(2);
    assert.deepEqual(await job.result, { steps: 2 });
    assert.deepEqual(job.progress, { percent: 100, message: 'step 2' });
    assert.equal(polls.ids.length, 2, 'nothing was polled after the 404s');
    assert.match(log.urls.at(-1)!, new RegExp(`ids=${job.id}:\\d+,${dead.id}$`));
    await eventually(() => log.open === 0, 'the stream to close');
  });

  it('a listener that throws is reported and stops neither the other listeners nor the result', async () => {
    const reported: unknown[] = [];
    const global = globalThis as { reportError?: (err: unknown) => void };
    global.reportError = (err) => reported.push(err);
    try {
      const client = clientAs('alice');
      const job = await client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 1 });
      const heard: string[] = [];
      job.onStatus((status) => {
        throw new Error(`status listener: ${status}`);
      });
      job.onProgress(() => {
        throw new Error('progress listener');
      });
      job.onStatus((status) => heard.push(status));
      const consumer = (async () => {
        for await (const update of job) {
          if (update.status === 'running') throw new Error('the consumer gave up');
        }
      })().catch((e: Error) => e.message);
      await runs(job);
      await eventually(() => job.status === 'running', 'the stream to report running');
      gateOf(job).release();
      assert.deepEqual(await within(job.result, 'the result'), { steps: 1 });
      assert.equal(job.status, 'succeeded');
      assert.deepEqual(heard, ['running', 'succeeded']);
      assert.equal(await consumer, 'the consumer gave up');
      assert.deepEqual(
        reported.map((e) => (e as Error).message),
        ['status listener: running', 'progress listener', 'status listener: succeeded'],
      );
    } finally {
      delete global.reportError;
    }
  });

  it('once the job ends, its listener on the caller’s signal is removed', async () => {
    const client = clientAs('alice');
    const controller = new AbortController();
    const { id } = (await server.jobs.core.enqueue('steps', { n: 1 }, { owner: 'alice' })).job;
    const job = client.follow(id, { signal: controller.signal });
    assert.equal(getEventListeners(controller.signal, 'abort').length, 1);
    await runs(job);
    gateOf(job).release();
    await job.result;
    assert.equal(getEventListeners(controller.signal, 'abort').length, 0);
  });

  it('more than 50 jobs: a stream whose jobs have all finished closes; the other stream carries on', async () => {
    const log = newLog();
    const polls = pollLog();
    const client = clientAs('alice', log, { fetch: polls.fetch });
    const jobs = await Promise.all(
      Array.from({ length: 55 }, () => client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 2 })),
    );
    await eventually(() => jobs.every((j) => gateOf(j).waiting === 1), 'every job to run', {
      timeoutMs: 5000,
    });
    await eventually(() => jobs.every((j) => j.status === 'running'), 'every job to be seen running');
    const opened = log.urls.length;
    const [first, second] = log.urls.slice(-2).map(idsOf) as [string[], string[]];
    assert.deepEqual([first.length, second.length], [50, 5]);
    const byId = new Map(jobs.map((j) => [j.id, j]));
    for (const id of first) gateOf(byId.get(id)!).release(2);
    await Promise.all(first.map((id) => byId.get(id)!.result));
    await eventually(() => log.open === 1, 'the client to close the finished stream');
    // Past the server's end of that stream and EventSource's retry: the other stream is untouched.
    const rest = second.map((id) => byId.get(id)!);
    for (const job of rest) gateOf(job).release();
    await eventually(() => rest.every((j) => j.progress?.percent === 50), 'the rest to move on', {
      timeoutMs: 5000,
    });
    for (const job of rest) gateOf(job).release();
    for (const job of rest) assert.deepEqual(await job.result, { steps: 2 });
    assert.equal(log.urls.length, opened, 'no stream was reopened');
    assert.equal(log.maxOpen, 2);
    assert.deepEqual(polls.ids, [], 'nothing was polled');
    await eventually(() => log.open === 0, 'the streams to close');
  });

  it('at most three streams (150 jobs) at once: more jobs are polled', async () => {
    const log = newLog();
    const polls = pollLog();
    const client = clientAs('alice', log, { fetch: polls.fetch, pollInterval: 50 });
    const ids: string[] = [];
    for (let i = 0; i < 153; i++) {
      ids.push((await server.jobs.core.enqueue('steps', { n: 1 }, { owner: 'alice' })).job.id);
    }
    const jobs = ids.map((id) => client.follow<{ steps: number }>(id));
    await eventually(
      () => new Set(polls.ids).size === 3 && log.open === 3,
      'three streams and the rest polled',
    );
    const streamed = log.urls.flatMap(idsOf);
    assert.equal(log.urls.length, 3);
    assert.equal(streamed.length, 150);
    assert.deepEqual([...new Set(polls.ids)], ids.slice(150), 'the jobs past 150 are polled');
    for (const id of ids) stepsFor(id).release();
    const results = await within(Promise.all(jobs.map((j) => j.result)), 'every result', 15_000);
    assert.equal(results.length, 153);
    assert.equal(log.maxOpen, 3);
    await eventually(() => log.open === 0, 'the streams to close');
  });
});

describe('offload/client polling', () => {
  let server: TestServer;
  let lib: ClientModule;
  const stepsFor = stepsById();

  before(async () => {
    lib = await import('../../../lib/client/index.mjs');
    server = await createServer(
      {
        retryAfter: 1,
        worker: { progressInterval: 0 },
        // A session that expires answers 401, as an auth layer in front of the routes would.
        owner: (req) => {
          if (req.headers['x-user'] === 'expired') {
            throw new ServerOffloadError('Sign in again.', 'ERR_SESSION_EXPIRED', 401);
          }
          return userOwner(req);
        },
      },
      (app, jobs) => {
        app.post('/steps', jobs.background('steps', stepsTask(stepsFor)));
      },
    );
  });

  after(() => server.close());

  /** A client whose fetch logs when each status poll was made. */
  function pollingClient(EventSourceImpl: ReturnType<typeof sourceAs> | false) {
    const polls: number[] = [];
    const client = lib.createClient({
      base: `${server.baseUrl}/jobs/`,
      headers: () => ({ 'x-user': 'alice' }),
      EventSource: EventSourceImpl,
      pollInterval: 20,
      fetch: (input, init) => {
        if (/\/jobs\/[0-9a-f-]{36}$/.test(String(input)) && (init?.method ?? 'GET') === 'GET')
          polls.push(Date.now());
        return fetch(input, init);
      },
    });
    return { client, polls };
  }

  it('without an EventSource (Node 20 has none), polls GET /jobs/:id as often as Retry-After says', async () => {
    assert.equal(typeof (globalThis as { EventSource?: unknown }).EventSource, 'undefined');
    const polls: number[] = [];
    const client = lib.createClient({
      base: `${server.baseUrl}/jobs`,
      headers: { 'x-user': 'alice' },
      pollInterval: 20,
      fetch: (input, init) => {
        polls.push(Date.now());
        return fetch(input, init);
      },
    });
    const job = await client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 2 });
    polls.length = 0;
    const progress: number[] = [];
    job.onProgress((p) => progress.push(p.percent));
    await eventually(() => stepsFor(job.id).waiting === 1, 'the job to run');
    await eventually(() => job.status === 'running', 'a poll to see it running', { timeoutMs: 3000 });
    stepsFor(job.id).release();
    await eventually(() => job.progress?.percent === 50, 'a poll to see step 1', { timeoutMs: 3000 });
    stepsFor(job.id).release();
    assert.deepEqual(await job.result, { steps: 2 });
    assert.deepEqual(progress, [50, 100]);
    for (let i = 1; i < polls.length; i++) {
      assert.ok(
        polls[i]! - polls[i - 1]! >= 900,
        `polls ${i - 1} and ${i} are Retry-After (1 s) apart, not 20 ms`,
      );
    }
    assert.ok(polls.length >= 2);
  });

  for (const blocked of ['network', 502] as const) {
    it(`falls back to polling when the events URL fails (${blocked === 'network' ? 'a network error' : 'a 502'})`, async () => {
      const log = newLog();
      const { client, polls } = pollingClient(sourceAs('alice', log, blocked));
      const job = await client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 1 });
      // Each failed try is followed by one poll of the job, which the server answers: the stream
      // is what fails, so after the second try the client polls.
      await eventually(() => polls.length >= 3, 'polling to take over', { timeoutMs: 3000 });
      assert.equal(log.urls.length, 2, 'two tries of the stream, then polling');
      assert.match(log.urls[0]!, /\/jobs\/events\?ids=/);
      assert.equal(log.open, 0, 'no stream left open');
      await eventually(() => stepsFor(job.id).waiting === 1, 'the job to run');
      stepsFor(job.id).release();
      assert.deepEqual(await job.result, { steps: 1 });

      // Once blocked, the client polls for its lifetime: a new job opens no stream.
      const next = await client.submit(`${server.baseUrl}/steps`, { n: 1 });
      await eventually(() => stepsFor(next.id).waiting === 1, 'the job to run');
      stepsFor(next.id).release();
      await next.result;
      assert.equal(log.urls.length, 2);
    });
  }

  it('polling someone else’s job rejects with the 404 problem; a job that polling sees finished resolves', async () => {
    const { client } = pollingClient(false);
    const bobs = (await server.jobs.core.enqueue('steps', { n: 1 }, { owner: 'bob' })).job.id;
    await assert.rejects(
      client.follow(bobs).result,
      (e: any) => e.status === 404 && e.problem?.status === 404,
    );
    stepsFor(bobs).release();
    const done = (await server.jobs.core.enqueue('steps', { n: 0 }, { owner: 'alice' })).job.id;
    await eventually(async () => (await server.jobs.core.get(done))?.status === 'succeeded', 'the job');
    assert.deepEqual(await client.follow(done).result, { steps: 0 });
  });

  it('a 401 while polling (the session expired) rejects the result with the problem, and polling stops', async () => {
    let user = 'alice';
    const polls: number[] = [];
    const client = lib.createClient({
      base: `${server.baseUrl}/jobs`,
      headers: () => ({ 'x-user': user }),
      EventSource: false,
      pollInterval: 20,
      fetch: (input, init) => {
        polls.push(Date.now());
        return fetch(input, init);
      },
    });
    const job = await client.submit(`${server.baseUrl}/steps`, { n: 1 });
    await eventually(() => stepsFor(job.id).waiting === 1, 'the job to run');
    await eventually(() => job.status === 'running', 'a poll to see it running', { timeoutMs: 3000 });
    user = 'expired';
    const err = await within(job.result, 'the result', 4000).then(
      () => assert.fail('the result must reject'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof lib.OffloadError);
    assert.equal(err.status, 401);
    assert.equal(err.code, 'ERR_SESSION_EXPIRED');
    assert.equal(err.message, 'Sign in again.');
    assert.equal(err.problem?.status, 401);
    const count = polls.length;
    await sleep(300);
    assert.equal(polls.length, count, 'no poll after the 401');
    stepsFor(job.id).release();
    await eventually(
      async () => (await server.jobs.core.get(job.id))?.status === 'succeeded',
      'the job to go on',
    );
  });

  it('keeps polling through server errors, backing off, until the job finishes', async () => {
    let failing = 3;
    const attempts: number[] = [];
    const client = lib.createClient({
      base: `${server.baseUrl}/jobs`,
      headers: { 'x-user': 'alice' },
      EventSource: false,
      pollInterval: 20,
      fetch: async (input, init) => {
        attempts.push(Date.now());
        if (failing-- > 0) throw new TypeError('fetch failed');
        return fetch(input, init);
      },
    });
    const id = (await server.jobs.core.enqueue('steps', { n: 0 }, { owner: 'alice' })).job.id;
    const job = client.follow(id);
    assert.deepEqual(await job.result, { steps: 0 });
    assert.equal(attempts.length, 4);
    const gaps = [1, 2, 3].map((i) => attempts[i]! - attempts[i - 1]!);
    assert.ok(gaps[0]! >= 35, `the first retry waits twice the interval: ${gaps}`);
    assert.ok(gaps[2]! >= 150, `each retry waits twice as long: ${gaps}`);
  });
});

/** A MemoryBroker whose reads fail while `down` is set: the server answers 503 on every job route. */
class DownBroker extends MemoryBroker {
  down = false;

  override async get(jobId: string): ReturnType<MemoryBroker['get']> {
    if (this.down) throw new Error('connect ECONNREFUSED 10.0.0.7:6379');
    return super.get(jobId);
  }
}

describe('offload/client while the broker is down for a moment', () => {
  let server: TestServer;
  let lib: ClientModule;
  const stepsFor = stepsById();
  const broker = new DownBroker();

  before(async () => {
    lib = await import('../../../lib/client/index.mjs');
    server = await createServer({ broker, sseRetry: 50, worker: { progressInterval: 0 } }, (app, jobs) => {
      app.post('/steps', jobs.background('steps', stepsTask(stepsFor)));
    });
  });

  after(async () => {
    broker.down = false;
    await server.close();
    await broker.close();
  });

  function streamingClient() {
    const log = newLog();
    const polls = pollLog();
    const client = lib.createClient({
      base: `${server.baseUrl}/jobs`,
      headers: { 'x-user': 'alice' },
      EventSource: sourceAs('alice', log),
      fetch: polls.fetch,
      pollInterval: 20,
    });
    return { client, log, polls };
  }

  it('503s on the stream are retried with backoff, never a switch to polling', async () => {
    const { client, log, polls } = streamingClient();
    broker.down = true;
    const job = await client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 2 });
    const probe = await fetch(`${server.baseUrl}/jobs/events?ids=${job.id}`, {
      headers: { 'x-user': 'alice' },
    });
    assert.equal(probe.status, 503, 'the events route answers 503 while the broker is down');
    await probe.body?.cancel();
    // Each refused stream is followed by one poll (also 503), then a later try.
    await eventually(() => log.urls.length >= 4, 'the stream to be retried', { timeoutMs: 3000 });
    broker.down = false;
    await eventually(() => log.opened === 1, 'a stream to open', { timeoutMs: 3000 });
    const tries = log.urls.length;
    assert.equal(polls.ids.length, tries - 1, 'one poll per failed try');
    await eventually(() => stepsFor(job.id).waiting === 1, 'the job to run');
    stepsFor(job.id).release();
    await eventually(() => job.progress?.percent === 50, 'the stream to report progress');
    stepsFor(job.id).release();
    assert.deepEqual(await within(job.result, 'the result'), { steps: 2 });
    const polled = polls.ids.length;

    // The next job is streamed too.
    const next = await client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 1 });
    await eventually(() => stepsFor(next.id).waiting === 1, 'the next job to run');
    stepsFor(next.id).release();
    assert.deepEqual(await within(next.result, 'the next result'), { steps: 1 });
    assert.equal(log.urls.length, tries + 1, 'one more stream');
    assert.equal(polls.ids.length, polled, 'and no poll');
    await eventually(() => log.open === 0, 'the stream to close');
  });

  it('a stream that opened and then gets 503 on reconnecting resumes once the broker is back', async () => {
    const { client, log, polls } = streamingClient();
    const job = await client.submit<{ steps: number }>(`${server.baseUrl}/steps`, { n: 2 });
    await eventually(() => stepsFor(job.id).waiting === 1, 'the job to run');
    await eventually(() => job.status === 'running', 'the stream to report running');
    broker.down = true;
    server.dropConnections();
    await eventually(() => polls.ids.length >= 2 && log.urls.length >= 3, 'reconnects and polls to fail', {
      timeoutMs: 3000,
    });
    stepsFor(job.id).release();
    broker.down = false;
    await eventually(() => job.progress?.percent === 50, 'the stream to resume', { timeoutMs: 3000 });
    stepsFor(job.id).release();
    assert.deepEqual(await within(job.result, 'the result'), { steps: 2 });
    const polled = polls.ids.length;
    const next = await client.submit(`${server.baseUrl}/steps`, { n: 0 });
    await next.result;
    assert.equal(polls.ids.length, polled, 'the next job is streamed, not polled');
    assert.equal(log.open, 0);
  });
});
