import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { IsInt, IsString, Matches, Max, Min } from 'class-validator';
import express from 'express';
import { MemoryBroker } from '../../../adapters/memory/memory.broker.js';
import type { EnqueueInput, EnqueueResult, ListPage, ListQuery } from '../../../lib/broker.js';
import type { JobRecord, JobStatus } from '../../../lib/job.js';
import {
  createServer,
  expectProblem,
  postJson,
  rawRequest,
  type TestServer,
  UUID_V4,
  userOwner,
} from '../../helpers/create-server.js';

class ReportRequest {
  @IsString()
  @Matches(/^\d{4}-\d{2}$/)
  month!: string;

  @IsInt()
  @Min(1)
  @Max(100)
  count!: number;
}

const LIMIT = 1024;

function total(counts: Record<JobStatus, number>): number {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

async function storedJobs(server: TestServer): Promise<number> {
  return total(await server.jobs.core.broker.counts());
}

/** Assert the answer was refused and the broker holds exactly as many jobs as before. */
async function assertNothingPersisted(server: TestServer, before: number): Promise<void> {
  assert.equal(await storedJobs(server), before, 'nothing is persisted');
  const page = await server.jobs.core.broker.list({ limit: 100 });
  assert.equal(page.jobs.length, before);
}

describe('submit on a background route', () => {
  let server: TestServer;

  before(async () => {
    // No worker: jobs stay queued, so what was persisted can be read back as sent.
    server = await createServer(
      {
        worker: false,
        maxPayloadBytes: LIMIT,
        owner: (req) => {
          if (req.headers['x-user'] === 'boom')
            throw new Error('owner lookup failed: db password is hunter2');
          return userOwner(req);
        },
      },
      (app, jobs) => {
        app.post(
          '/reports',
          jobs.background('report', { validate: ReportRequest }, async () => 'done'),
        );
        app.post(
          '/extract',
          jobs.background('extract', { payload: (req) => ({ month: req.body.month }) }, async () => 'done'),
        );
        app.post(
          '/plain',
          jobs.background('plain', async () => 'done'),
        );
        // The app parses bodies itself: offload must take req.body and map the parser's errors.
        app.post(
          '/parsed',
          express.json({ limit: LIMIT }),
          jobs.background('parsed', async () => 'done'),
        );
        // A parser with a wider limit than offload's: offload still bounds the payload.
        app.post(
          '/parsed-wide',
          express.json(),
          jobs.background('parsed-wide', async () => 'done'),
        );
        app.post(
          '/extract-big',
          jobs.background(
            'extract-big',
            { payload: (req) => ({ copies: [req.body, req.body, req.body] }) },
            async () => 'done',
          ),
        );
        app.use(jobs.errorHandler());
      },
    );
  });

  after(() => server.close());

  it('answers 202 with Location, Retry-After, Vary: Prefer and the job urls', async () => {
    const res = await postJson(
      `${server.baseUrl}/reports`,
      { month: '2024-05', count: 3 },
      { user: 'alice' },
    );
    assert.equal(res.status, 202);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    const body = await res.json();
    assert.deepEqual(Object.keys(body).sort(), ['eventsUrl', 'id', 'status', 'statusUrl']);
    assert.match(body.id, UUID_V4);
    assert.equal(body.status, 'queued');
    assert.equal(body.statusUrl, `/jobs/${body.id}`);
    assert.equal(body.eventsUrl, `/jobs/${body.id}/events`);
    assert.equal(res.headers.get('location'), `/jobs/${body.id}`);
    assert.equal(res.headers.get('retry-after'), '1');
    assert.match(res.headers.get('vary') ?? '', /\bPrefer\b/);

    const job = await server.jobs.core.broker.get(body.id);
    assert.ok(job);
    assert.equal(job.task, 'report');
    assert.equal(job.status, 'queued');
    assert.equal(job.owner, 'alice');
    assert.deepEqual(job.payload, { month: '2024-05', count: 3 });
  });

  it('gives every job a fresh random UUID v4', async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 5; i++) {
      const res = await postJson(`${server.baseUrl}/plain`, { i }, { user: 'alice' });
      assert.equal(res.status, 202);
      const { id } = await res.json();
      assert.match(id, UUID_V4);
      ids.add(id);
    }
    assert.equal(ids.size, 5);
  });

  it('refuses an invalid DTO with 400, per-field errors, and persists nothing', async () => {
    const before = await storedJobs(server);
    const res = await postJson(`${server.baseUrl}/reports`, { month: 'May', count: 0 }, { user: 'alice' });
    const problem = await expectProblem(res, 400);
    assert.equal(problem.code, 'ERR_OFFLOAD_VALIDATION');
    assert.ok(Array.isArray(problem.errors));
    const fields = Object.fromEntries(problem.errors!.map((e) => [e.field, e.messages]));
    assert.deepEqual(Object.keys(fields).sort(), ['count', 'month']);
    for (const messages of Object.values(fields)) {
      assert.ok(messages.length > 0);
      for (const m of messages) assert.equal(typeof m, 'string');
    }
    await assertNothingPersisted(server, before);
  });

  it('refuses a missing field and a payload that is not an object, persisting nothing', async () => {
    const before = await storedJobs(server);
    const missing = await expectProblem(
      await postJson(`${server.baseUrl}/reports`, { month: '2024-05' }),
      400,
    );
    assert.deepEqual(
      missing.errors!.map((e) => e.field),
      ['count'],
    );
    for (const body of ['[1,2]', '"text"', '42', 'null']) {
      const problem = await expectProblem(await postJson(`${server.baseUrl}/reports`, body), 400);
      assert.ok(problem.errors && problem.errors.length > 0, `errors for ${body}`);
    }
    await assertNothingPersisted(server, before);
  });

  it('answers malformed JSON with a 400 problem and persists nothing', async () => {
    const before = await storedJobs(server);
    for (const body of ['{"month": "2024-05",', '{month: 1}', "{'a': 1}", '{"a":1}}']) {
      const problem = await expectProblem(
        await postJson(`${server.baseUrl}/plain`, body, { user: 'alice' }),
        400,
      );
      assert.equal(problem.code, 'ERR_OFFLOAD_BAD_JSON', body);
    }
    await assertNothingPersisted(server, before);
  });

  it('answers a body that is not JSON with 415 and persists nothing', async () => {
    const before = await storedJobs(server);
    for (const type of [
      'text/plain',
      'application/x-www-form-urlencoded',
      'application/jsonx',
      'text/json',
    ]) {
      const res = await fetch(`${server.baseUrl}/plain`, {
        method: 'POST',
        headers: { 'content-type': type },
        body: 'month=2024-05',
      });
      await expectProblem(res, 415);
    }
    // No content type at all, with a body.
    const untyped = await rawRequest(`${server.baseUrl}/plain`, {
      method: 'POST',
      headers: { 'content-length': '2' },
      chunks: ['{}'],
    });
    await expectProblem(untyped, 415);
    // A compressed body is not read either.
    const gzip = await rawRequest(`${server.baseUrl}/plain`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-encoding': 'gzip', 'content-length': '4' },
      chunks: ['abcd'],
    });
    await expectProblem(gzip, 415);
    await assertNothingPersisted(server, before);
  });

  it('accepts JSON types with parameters and +json suffixes', async () => {
    for (const type of ['application/json; charset=utf-8', 'application/vnd.api+json', 'APPLICATION/JSON']) {
      const res = await fetch(`${server.baseUrl}/plain`, {
        method: 'POST',
        headers: { 'content-type': type },
        body: '{"ok":true}',
      });
      assert.equal(res.status, 202, type);
      await res.arrayBuffer();
    }
  });

  it('answers 413 for a body over the limit announced by Content-Length', async () => {
    const before = await storedJobs(server);
    const body = JSON.stringify({ blob: 'x'.repeat(LIMIT * 2) });
    const res = await postJson(`${server.baseUrl}/plain`, body, { user: 'alice' });
    const problem = await expectProblem(res, 413);
    assert.equal(problem.code, 'ERR_OFFLOAD_PAYLOAD_TOO_LARGE');
    await assertNothingPersisted(server, before);
  });

  it('answers 413 for a chunked body that grows over the limit, without reading it all', async () => {
    const before = await storedJobs(server);
    const piece = `"${'x'.repeat(400)}",`;
    const chunks = ['{"blob":[', ...Array.from({ length: 20 }, () => piece), '"end"]}'];
    const res = await rawRequest(`${server.baseUrl}/plain`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
      chunks,
      chunkDelayMs: 20,
    });
    assert.equal(res.headers['transfer-encoding'], undefined);
    await expectProblem(res, 413);
    await assertNothingPersisted(server, before);
  });

  it('accepts a chunked body under the limit', async () => {
    const res = await rawRequest(`${server.baseUrl}/plain`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked', 'x-user': 'alice' },
      chunks: ['{"a":', '[1,2,', '3]}'],
    });
    assert.equal(res.status, 202, res.body);
    const job = await server.jobs.core.broker.get(JSON.parse(res.body).id);
    assert.deepEqual(job?.payload, { a: [1, 2, 3] });
  });

  it('refuses __proto__ and constructor.prototype keys with 400, and pollutes nothing', async () => {
    const before = await storedJobs(server);
    const bodies = [
      '{"__proto__": {"polluted": "yes"}}',
      '{"a": {"b": {"__proto__": {"polluted": "yes"}}}}',
      '{"list": [{"__proto__": {"polluted": "yes"}}]}',
      '{"constructor": {"prototype": {"polluted": "yes"}}}',
      '{"a": [{"constructor": {"prototype": {"polluted": "yes"}}}]}',
    ];
    for (const route of ['/plain', '/parsed']) {
      for (const body of bodies) {
        const problem = await expectProblem(await postJson(`${server.baseUrl}${route}`, body), 400);
        assert.equal(problem.code, 'ERR_OFFLOAD_FORBIDDEN_KEY', `${route} ${body}`);
      }
    }
    assert.equal(({} as any).polluted, undefined);
    assert.equal(Object.hasOwn(Object.prototype, 'polluted'), false);
    await assertNothingPersisted(server, before);
  });

  it('lets harmless look-alike keys through', async () => {
    const res = await postJson(`${server.baseUrl}/plain`, { prototype: 1, constructor: 'x', proto: {} });
    assert.equal(res.status, 202);
    const job = await server.jobs.core.broker.get((await res.json()).id);
    assert.deepEqual(job?.payload, { prototype: 1, constructor: 'x', proto: {} });
  });

  describe('behind express.json() with jobs.errorHandler()', () => {
    it('takes the parsed body as the payload', async () => {
      const res = await postJson(`${server.baseUrl}/parsed`, { month: '2024-06' }, { user: 'bob' });
      assert.equal(res.status, 202);
      const job = await server.jobs.core.broker.get((await res.json()).id);
      assert.equal(job?.owner, 'bob');
      assert.deepEqual(job?.payload, { month: '2024-06' });
    });

    it('turns the parser errors into problem+json: bad JSON → 400, too large → 413', async () => {
      const before = await storedJobs(server);
      const bad = await expectProblem(await postJson(`${server.baseUrl}/parsed`, '{"month":'), 400);
      assert.equal(bad.code, 'ERR_OFFLOAD_BAD_JSON');
      const big = await expectProblem(
        await postJson(`${server.baseUrl}/parsed`, { blob: 'x'.repeat(LIMIT * 2) }),
        413,
      );
      assert.equal(big.code, 'ERR_OFFLOAD_PAYLOAD_TOO_LARGE');
      const chunked = await rawRequest(`${server.baseUrl}/parsed`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
        chunks: ['{"blob":"', 'x'.repeat(700), 'x'.repeat(700), '"}'],
      });
      await expectProblem(chunked, 413);
      await assertNothingPersisted(server, before);
    });

    it('bounds the payload itself when the parser allows more: 413', async () => {
      const before = await storedJobs(server);
      const res = await postJson(`${server.baseUrl}/parsed-wide`, { blob: 'x'.repeat(LIMIT * 2) });
      assert.equal((await expectProblem(res, 413)).code, 'ERR_OFFLOAD_PAYLOAD_TOO_LARGE');
      await assertNothingPersisted(server, before);
    });

    it('still refuses a body that is not JSON with 415', async () => {
      const res = await fetch(`${server.baseUrl}/parsed`, {
        method: 'POST',
        headers: { 'content-type': 'text/plain' },
        body: 'hello',
      });
      await expectProblem(res, 415);
    });
  });

  it('persists what the payload extractor returns, not the body', async () => {
    const res = await postJson(
      `${server.baseUrl}/extract`,
      { month: '2024-07', password: 'secret', nested: { big: true } },
      { user: 'alice' },
    );
    assert.equal(res.status, 202);
    const job = await server.jobs.core.broker.get((await res.json()).id);
    assert.deepEqual(job?.payload, { month: '2024-07' });
  });

  it('answers 413 when the extracted payload is over the limit, though the body was not', async () => {
    const before = await storedJobs(server);
    const body = { blob: 'x'.repeat(Math.floor(LIMIT / 2)) };
    const res = await postJson(`${server.baseUrl}/extract-big`, body, { user: 'alice' });
    await expectProblem(res, 413);
    await assertNothingPersisted(server, before);
  });

  it('strips properties the DTO does not declare from the persisted payload', async () => {
    const res = await postJson(
      `${server.baseUrl}/reports`,
      { month: '2024-08', count: 2, isAdmin: true, extra: { deep: 1 } },
      { user: 'alice' },
    );
    assert.equal(res.status, 202);
    const job = await server.jobs.core.broker.get((await res.json()).id);
    assert.deepEqual(job?.payload, { month: '2024-08', count: 2 });
  });

  it('answers an exception in the owner hook with a generic 500 that leaks nothing', async () => {
    const before = await storedJobs(server);
    const res = await postJson(`${server.baseUrl}/plain`, { a: 1 }, { user: 'boom' });
    const text = await res.clone().text();
    const problem = await expectProblem(res, 500);
    assert.equal(problem.detail, 'An unexpected error occurred.');
    assert.doesNotMatch(text, /hunter2|owner lookup/);
    await assertNothingPersisted(server, before);

    // The same hook guards the job routes.
    const { id } = await (await postJson(`${server.baseUrl}/plain`, { a: 1 }, { user: 'alice' })).json();
    const status = await fetch(`${server.baseUrl}/jobs/${id}`, { headers: { 'x-user': 'boom' } });
    const text2 = await status.clone().text();
    assert.equal((await expectProblem(status, 500)).detail, 'An unexpected error occurred.');
    assert.doesNotMatch(text2, /hunter2/);
  });
});

/** A MemoryBroker whose enqueue fails the way a lost connection does: it rejects, or never answers. */
class FailingBroker extends MemoryBroker {
  mode: 'ok' | 'reject' | 'hang' = 'ok';

  private failing<T>(op: () => Promise<T>): Promise<T> {
    if (this.mode === 'reject') return Promise.reject(new Error('connect ECONNREFUSED 10.0.0.7:6379'));
    if (this.mode === 'hang') return new Promise(() => {});
    return op();
  }

  override enqueue(input: EnqueueInput): Promise<EnqueueResult> {
    return this.failing(() => super.enqueue(input));
  }

  override get(jobId: string): Promise<JobRecord | null> {
    return this.failing(() => super.get(jobId));
  }

  override list(query: ListQuery): Promise<ListPage> {
    return this.failing(() => super.list(query));
  }

  override cancel(jobId: string, owner?: string | null): ReturnType<MemoryBroker['cancel']> {
    return this.failing(() => super.cancel(jobId, owner));
  }
}

describe('submit when the broker fails', () => {
  const BROKER_TIMEOUT = 200;
  let broker: FailingBroker;
  let server: TestServer;

  before(async () => {
    broker = new FailingBroker();
    server = await createServer(
      { broker, worker: false, brokerTimeout: BROKER_TIMEOUT, maxQueued: 2 },
      (app, jobs) => {
        app.post(
          '/work',
          jobs.background('work', async () => 'done'),
        );
      },
    );
  });

  after(async () => {
    await server.close();
    await broker.close();
  });

  it('answers 503 with Retry-After when enqueue rejects, without driver details', async () => {
    broker.mode = 'reject';
    try {
      const started = Date.now();
      const res = await postJson(`${server.baseUrl}/work`, { a: 1 });
      const elapsed = Date.now() - started;
      const text = await res.clone().text();
      const problem = await expectProblem(res, 503);
      assert.equal(problem.code, 'ERR_OFFLOAD_BROKER_UNAVAILABLE');
      assert.match(res.headers.get('retry-after') ?? '', /^\d+$/);
      assert.doesNotMatch(text, /ECONNREFUSED|10\.0\.0\.7/);
      assert.ok(elapsed < BROKER_TIMEOUT + 500, `answered in ${elapsed} ms`);
    } finally {
      broker.mode = 'ok';
    }
  });

  it('answers 503 with Retry-After within brokerTimeout when enqueue never answers', async () => {
    broker.mode = 'hang';
    try {
      const started = Date.now();
      const res = await postJson(`${server.baseUrl}/work`, { a: 1 });
      const elapsed = Date.now() - started;
      const problem = await expectProblem(res, 503);
      assert.equal(problem.code, 'ERR_OFFLOAD_BROKER_UNAVAILABLE');
      assert.match(res.headers.get('retry-after') ?? '', /^\d+$/);
      assert.ok(elapsed >= BROKER_TIMEOUT - 20, `waited for the broker (${elapsed} ms)`);
      assert.ok(elapsed < BROKER_TIMEOUT + 500, `answered in ${elapsed} ms, bound ${BROKER_TIMEOUT + 500}`);
    } finally {
      broker.mode = 'ok';
    }
  });

  it('answers the job routes with 503 within brokerTimeout too, never a hang', async () => {
    const id = (await (await postJson(`${server.baseUrl}/work`, { a: 1 })).json()).id as string;
    try {
      for (const mode of ['reject', 'hang'] as const) {
        broker.mode = mode;
        for (const [method, path] of [
          ['GET', `/jobs/${id}`],
          ['GET', `/jobs/${id}/events`],
          ['DELETE', `/jobs/${id}`],
          ['GET', '/jobs'],
        ]) {
          const started = Date.now();
          const res = await fetch(`${server.baseUrl}${path}`, { method });
          const elapsed = Date.now() - started;
          await expectProblem(res, 503);
          assert.match(res.headers.get('retry-after') ?? '', /^\d+$/);
          assert.ok(elapsed < BROKER_TIMEOUT + 500, `${mode} ${method} ${path}: ${elapsed} ms`);
        }
      }
    } finally {
      broker.mode = 'ok';
    }
    await broker.cancel(id);
  });

  it('answers 503 with Retry-After once maxQueued jobs wait, and persists nothing more', async () => {
    const queued = (await broker.counts()).queued;
    for (let i = queued; i < 2; i++) {
      assert.equal((await postJson(`${server.baseUrl}/work`, { i })).status, 202);
    }
    const res = await postJson(`${server.baseUrl}/work`, { i: 'one too many' });
    const problem = await expectProblem(res, 503);
    assert.equal(problem.code, 'ERR_OFFLOAD_QUEUE_FULL');
    assert.match(res.headers.get('retry-after') ?? '', /^\d+$/);
    assert.equal((await broker.counts()).queued, 2);

    // Room again once one is canceled.
    const { jobs } = await broker.list({ limit: 1 });
    await broker.cancel(jobs[0]!.id);
    assert.equal((await postJson(`${server.baseUrl}/work`, { i: 'fits again' })).status, 202);
  });
});
