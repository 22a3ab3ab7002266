import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { JobCanceledError, NonRetryableError } from '../../../lib/errors.js';
import {
  as,
  createServer,
  expectProblem,
  postJson,
  Steps,
  type TestServer,
} from '../../helpers/create-server.js';
import { eventually, sleep } from '../../helpers/eventually.js';

const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const DOC_FIELDS = [
  'attempts',
  'createdAt',
  'finishedAt',
  'id',
  'maxAttempts',
  'progress',
  'startedAt',
  'status',
  'task',
];

async function submit(server: TestServer, path: string, body: unknown, user?: string): Promise<string> {
  const res = await postJson(`${server.baseUrl}${path}`, body, { user });
  assert.equal(res.status, 202, await res.clone().text());
  return (await res.json()).id;
}

function getJob(server: TestServer, id: string, user?: string): Promise<Response> {
  return fetch(`${server.baseUrl}/jobs/${id}`, { headers: as(user) });
}

async function statusOf(server: TestServer, id: string, user?: string): Promise<any> {
  const res = await getJob(server, id, user);
  assert.equal(res.status, 200);
  return res.json();
}

function finished(server: TestServer, id: string, user?: string): Promise<any> {
  return eventually(async () => {
    const doc = await statusOf(server, id, user);
    return ['succeeded', 'failed', 'canceled'].includes(doc.status) ? doc : null;
  }, `job ${id} to finish`);
}

describe('job routes with queued jobs (no worker)', () => {
  let server: TestServer;

  before(async () => {
    server = await createServer({ worker: false }, (app, jobs) => {
      app.post(
        '/reports',
        jobs.background('report', async () => 'done'),
      );
    });
  });

  after(() => server.close());

  describe('GET /jobs/:id', () => {
    it('answers the status document with Retry-After while the job is not finished', async () => {
      const id = await submit(server, '/reports', { month: '2024-05' }, 'alice');
      const res = await getJob(server, id, 'alice');
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      assert.equal(res.headers.get('retry-after'), '1');
      assert.match(res.headers.get('cache-control') ?? '', /no-store/);
      const doc = await res.json();
      assert.deepEqual(Object.keys(doc).sort(), DOC_FIELDS);
      assert.equal(doc.id, id);
      assert.equal(doc.task, 'report');
      assert.equal(doc.status, 'queued');
      assert.equal(doc.progress, null);
      assert.equal(doc.attempts, 0);
      assert.equal(doc.maxAttempts, 3);
      assert.match(doc.createdAt, ISO);
      assert.ok(Math.abs(Date.parse(doc.createdAt) - Date.now()) < 5000);
      assert.equal(doc.startedAt, null);
      assert.equal(doc.finishedAt, null);
      // Nothing internal leaks: no payload, owner, lease, idempotency or seq.
      for (const key of ['payload', 'owner', 'idempotencyKey', 'payloadHash', 'logs', 'seq']) {
        assert.ok(!(key in doc), key);
      }
    });

    it('answers 404 for an unknown or malformed id, the same way each time', async () => {
      const unknown = await expectProblem(await getJob(server, randomUUID(), 'alice'), 404);
      assert.equal(unknown.code, 'ERR_OFFLOAD_JOB_NOT_FOUND');
      const real = await submit(server, '/reports', {}, 'alice');
      for (const id of [
        'not-a-uuid',
        "1'%20OR%20'1'%3D'1",
        "x';%20DROP%20TABLE%20jobs;--",
        'a'.repeat(4000),
        real.toUpperCase(),
        `${real}x`,
        real.slice(0, 35),
        'a3bb189e-8bf9-1888-9912-ace4e6543002', // a UUID, but v1
        `${real}/extra`,
        `${real}/events/more`,
        '%00',
      ]) {
        const problem = await expectProblem(await getJob(server, id, 'alice'), 404);
        assert.deepEqual(problem, unknown, id.slice(0, 60));
      }
    });

    it("answers 404, never 403, for another owner's job: indistinguishable from unknown", async () => {
      const id = await submit(server, '/reports', {}, 'alice');
      const unknown = await expectProblem(await getJob(server, randomUUID(), 'bob'), 404);
      const foreign = await expectProblem(await getJob(server, id, 'bob'), 404);
      assert.deepEqual(foreign, unknown);
      assert.equal((await getJob(server, id, 'alice')).status, 200);
    });

    it('keeps anonymous and identified callers apart', async () => {
      const anonymous = await submit(server, '/reports', {});
      const alices = await submit(server, '/reports', {}, 'alice');
      await expectProblem(await getJob(server, anonymous, 'alice'), 404);
      await expectProblem(await getJob(server, alices, undefined), 404);
      assert.equal((await getJob(server, anonymous, undefined)).status, 200);
    });
  });

  describe('DELETE /jobs/:id', () => {
    it('cancels a queued job at once: 200 with the canceled document', async () => {
      const id = await submit(server, '/reports', {}, 'alice');
      const res = await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('alice') });
      assert.equal(res.status, 200);
      const doc = await res.json();
      assert.equal(doc.id, id);
      assert.equal(doc.status, 'canceled');
      assert.match(doc.finishedAt, ISO);
      const after = await getJob(server, id, 'alice');
      assert.equal(after.headers.get('retry-after'), null);
      assert.equal((await after.json()).status, 'canceled');
      // Canceling again: it is finished now.
      const again = await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('alice') });
      assert.equal((await expectProblem(again, 409)).code, 'ERR_OFFLOAD_JOB_FINISHED');
    });

    it("answers 404 for another owner's job and leaves it alone", async () => {
      const id = await submit(server, '/reports', {}, 'alice');
      for (const user of ['bob', undefined]) {
        const res = await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as(user) });
        await expectProblem(res, 404);
      }
      assert.equal((await statusOf(server, id, 'alice')).status, 'queued');
    });

    it('answers 404 for an unknown or malformed id', async () => {
      for (const id of [randomUUID(), 'nope', "1'%20OR%201=1"]) {
        const res = await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('alice') });
        await expectProblem(res, 404);
      }
    });
  });

  it('answers other methods with 405 and Allow', async () => {
    const id = await submit(server, '/reports', {}, 'alice');
    for (const method of ['PUT', 'PATCH', 'POST']) {
      const res = await fetch(`${server.baseUrl}/jobs/${id}`, { method, headers: as('alice') });
      assert.equal((await expectProblem(res, 405)).code, 'ERR_OFFLOAD_METHOD_NOT_ALLOWED', method);
      assert.equal(res.headers.get('allow'), 'GET, DELETE');
    }
    const list = await fetch(`${server.baseUrl}/jobs`, { method: 'POST', headers: as('alice') });
    await expectProblem(list, 405);
    assert.equal(list.headers.get('allow'), 'GET');
    const events = await fetch(`${server.baseUrl}/jobs/${id}/events`, {
      method: 'DELETE',
      headers: as('alice'),
    });
    await expectProblem(events, 405);
    assert.equal(events.headers.get('allow'), 'GET');
    // The job was not touched.
    assert.equal((await statusOf(server, id, 'alice')).status, 'queued');
  });

  it('leaves routes outside the base path to the app', async () => {
    assert.equal((await fetch(`${server.baseUrl}/jobsx`)).status, 404);
    const other = await fetch(`${server.baseUrl}/jobsx`);
    assert.doesNotMatch(other.headers.get('content-type') ?? '', /problem/);
  });
});

describe('job routes with a worker', () => {
  let server: TestServer;
  const steps = new Steps();
  const started = new Set<string>();
  const abortReasons = new Map<string, unknown>();

  before(async () => {
    server = await createServer({ worker: { concurrency: 4, cancelGrace: 2000 } }, (app, jobs) => {
      app.post(
        '/ok',
        jobs.background('ok', async ({ n }: { n: number }) => ({ rows: n })),
      );
      app.post(
        '/fail',
        jobs.background('fail', { attempts: 1 }, async () => {
          throw new NonRetryableError('the month is closed', 'E_MONTH_CLOSED');
        }),
      );
      app.post(
        '/hold',
        jobs.background('hold', async (_p, job) => {
          started.add(job.id);
          job.signal.addEventListener('abort', () => abortReasons.set(job.id, job.signal.reason));
          await job.progress(50, 'half way');
          await steps.next(job.signal);
          return 'released';
        }),
      );
    });
  });

  after(() => server.close());

  it('a succeeded job: the result, start and finish times, and no Retry-After', async () => {
    const id = await submit(server, '/ok', { n: 7 }, 'alice');
    const doc = await finished(server, id, 'alice');
    const res = await getJob(server, id, 'alice');
    assert.equal(res.headers.get('retry-after'), null);
    assert.deepEqual(Object.keys(doc).sort(), [...DOC_FIELDS, 'result'].sort());
    assert.equal(doc.status, 'succeeded');
    assert.deepEqual(doc.result, { rows: 7 });
    assert.equal(doc.attempts, 1);
    assert.match(doc.startedAt, ISO);
    assert.match(doc.finishedAt, ISO);
    assert.ok(Date.parse(doc.createdAt) <= Date.parse(doc.startedAt));
    assert.ok(Date.parse(doc.startedAt) <= Date.parse(doc.finishedAt));
  });

  it('a failed job: error { message, code } and no stack', async () => {
    const id = await submit(server, '/fail', {}, 'alice');
    const doc = await finished(server, id, 'alice');
    assert.equal(doc.status, 'failed');
    assert.deepEqual(doc.error, { message: 'the month is closed', code: 'E_MONTH_CLOSED' });
    assert.ok(!('result' in doc));
    const text = await (await getJob(server, id, 'alice')).text();
    assert.doesNotMatch(text, /stack|\bat .*\.js/);
    // The stack stays on the server.
    const stored = await server.jobs.core.broker.get(id);
    assert.match(stored?.error?.stack ?? '', /the month is closed/);
  });

  it('a running job: Retry-After and its progress', async () => {
    const id = await submit(server, '/hold', {}, 'alice');
    const doc = await eventually(async () => {
      const d = await statusOf(server, id, 'alice');
      return d.progress ? d : null;
    }, 'progress');
    assert.equal(doc.status, 'running');
    assert.deepEqual(doc.progress, { percent: 50, message: 'half way' });
    assert.equal((await getJob(server, id, 'alice')).headers.get('retry-after'), '1');
    steps.release();
    assert.equal((await finished(server, id, 'alice')).status, 'succeeded');
  });

  it('cancels a running job: 202, the handler signal fires, the job ends canceled', async () => {
    const id = await submit(server, '/hold', {}, 'alice');
    await eventually(() => started.has(id), 'the handler to start');
    const res = await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('alice') });
    assert.equal(res.status, 202);
    assert.equal(res.headers.get('retry-after'), '1');
    const body = await res.json();
    assert.equal(body.id, id);
    assert.equal(body.status, 'running');
    assert.equal(body.cancelRequested, true);
    await eventually(() => abortReasons.has(id), 'the signal to fire');
    assert.ok(abortReasons.get(id) instanceof JobCanceledError);
    const doc = await finished(server, id, 'alice');
    assert.equal(doc.status, 'canceled');
    // A second DELETE of a canceled job: finished.
    const again = await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('alice') });
    await expectProblem(again, 409);
  });

  it('a running job of another owner: 404, and it keeps running', async () => {
    const id = await submit(server, '/hold', {}, 'alice');
    await eventually(() => started.has(id), 'the handler to start');
    const res = await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('bob') });
    await expectProblem(res, 404);
    await sleep(20);
    assert.equal(abortReasons.has(id), false);
    steps.release();
    assert.equal((await finished(server, id, 'alice')).status, 'succeeded');
  });

  it('a finished job cannot be canceled: 409, and it stays succeeded', async () => {
    const id = await submit(server, '/ok', { n: 1 }, 'alice');
    await finished(server, id, 'alice');
    const res = await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('alice') });
    const problem = await expectProblem(res, 409);
    assert.equal(problem.code, 'ERR_OFFLOAD_JOB_FINISHED');
    assert.equal((await statusOf(server, id, 'alice')).status, 'succeeded');
  });
});

describe('job routes with exposeStack', () => {
  let server: TestServer;

  before(async () => {
    server = await createServer({ exposeStack: true }, (app, jobs) => {
      app.post(
        '/fail',
        jobs.background('fail', { attempts: 1 }, async () => {
          throw new NonRetryableError('the month is closed', 'E_MONTH_CLOSED');
        }),
      );
    });
  });

  after(() => server.close());

  it('includes the error stack when the app opted in', async () => {
    const id = await submit(server, '/fail', {}, 'alice');
    const doc = await finished(server, id, 'alice');
    assert.equal(doc.error.message, 'the month is closed');
    assert.equal(doc.error.code, 'E_MONTH_CLOSED');
    assert.equal(typeof doc.error.stack, 'string');
    assert.match(doc.error.stack, /NonRetryableError: the month is closed\n\s+at /);
  });
});

describe('GET /jobs (list)', () => {
  let server: TestServer;
  /** Alice's jobs in submission order. */
  const alices: { id: string; task: string }[] = [];

  before(async () => {
    server = await createServer({ worker: false }, (app, jobs) => {
      app.post(
        '/a',
        jobs.background('task-a', async () => 'a'),
      );
      app.post(
        '/b',
        jobs.background('task-b', async () => 'b'),
      );
    });
    for (const task of ['task-a', 'task-b', 'task-a', 'task-b', 'task-a']) {
      alices.push({ id: await submit(server, task === 'task-a' ? '/a' : '/b', {}, 'alice'), task });
      // Distinct creation times, so "newest first" is the reverse of submission order.
      await sleep(3);
    }
    await submit(server, '/a', {}, 'bob');
    await submit(server, '/b', {}, 'bob');
    await submit(server, '/a', {});
  });

  after(() => server.close());

  async function list(query: string, user?: string): Promise<{ jobs: any[]; nextCursor: string | null }> {
    const res = await fetch(`${server.baseUrl}/jobs${query}`, { headers: as(user) });
    assert.equal(res.status, 200, await res.clone().text());
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    return res.json();
  }

  it("answers only the caller's jobs, newest first, as status documents", async () => {
    const page = await list('', 'alice');
    assert.deepEqual(
      page.jobs.map((j) => j.id),
      alices.map((j) => j.id).reverse(),
    );
    assert.equal(page.nextCursor, null);
    for (const doc of page.jobs) assert.deepEqual(Object.keys(doc).sort(), DOC_FIELDS);
    assert.equal((await list('', 'bob')).jobs.length, 2);
    const anonymous = await list('');
    assert.equal(anonymous.jobs.length, 1);
    assert.equal((await list('', 'nobody')).jobs.length, 0);
  });

  it('filters by task and by status', async () => {
    const b = await list('?task=task-b', 'alice');
    assert.deepEqual(
      b.jobs.map((j) => j.id),
      alices
        .filter((j) => j.task === 'task-b')
        .map((j) => j.id)
        .reverse(),
    );
    assert.ok(b.jobs.every((j) => j.task === 'task-b'));
    assert.equal((await list('?task=unknown-task', 'alice')).jobs.length, 0);

    const victim = alices[1]!.id;
    const del = await fetch(`${server.baseUrl}/jobs/${victim}`, { method: 'DELETE', headers: as('alice') });
    assert.equal(del.status, 200);
    const canceled = await list('?status=canceled', 'alice');
    assert.deepEqual(
      canceled.jobs.map((j) => j.id),
      [victim],
    );
    const queued = await list('?status=queued', 'alice');
    assert.equal(queued.jobs.length, 4);
    assert.ok(queued.jobs.every((j) => j.status === 'queued'));
    assert.equal((await list('?status=queued&task=task-b', 'alice')).jobs.length, 1);
    assert.equal((await list('?status=succeeded', 'alice')).jobs.length, 0);
  });

  it('pages with a cursor: limit=2 over 5 jobs is 2 + 2 + 1, no repeats, same order', async () => {
    const seen: string[] = [];
    const sizes: number[] = [];
    let cursor: string | null = null;
    do {
      const page: { jobs: any[]; nextCursor: string | null } = await list(
        `?limit=2${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`,
        'alice',
      );
      sizes.push(page.jobs.length);
      seen.push(...page.jobs.map((j) => j.id));
      cursor = page.nextCursor;
    } while (cursor && sizes.length < 10);
    assert.deepEqual(sizes, [2, 2, 1]);
    assert.deepEqual(seen, alices.map((j) => j.id).reverse());
  });

  it('a cursor does not widen the caller: bob cannot page into alice', async () => {
    const first = await list('?limit=1', 'alice');
    assert.ok(first.nextCursor);
    const bobs = await list(`?cursor=${encodeURIComponent(first.nextCursor)}`, 'bob');
    assert.ok(bobs.jobs.every((j) => !alices.some((a) => a.id === j.id)));
  });

  it('refuses a bad status, limit or cursor with a 400 problem', async () => {
    for (const query of [
      '?status=bogus',
      '?status=QUEUED',
      '?limit=0',
      '?limit=101',
      '?limit=abc',
      '?limit=2.5',
      '?limit=-1',
      '?cursor=garbage',
      `?cursor=${Buffer.from('nope').toString('base64url')}`,
      `?cursor=${Buffer.from("1.'; DROP TABLE jobs; --").toString('base64url')}`,
    ]) {
      const res = await fetch(`${server.baseUrl}/jobs${query}`, { headers: as('alice') });
      await expectProblem(res, 400);
    }
  });
});
