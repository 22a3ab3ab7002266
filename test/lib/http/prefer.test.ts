import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MemoryBroker } from '../../../adapters/memory/memory.broker.js';
import type { Unsubscribe } from '../../../lib/broker.js';
import {
  createServer,
  expectProblem,
  postJson,
  sleepUnlessAborted,
  type TestServer,
} from '../../helpers/create-server.js';
import { eventually, sleep } from '../../helpers/eventually.js';

/** Tasks shared by both servers: one fast, one slow (stops when told), one that fails. */
function tasks(app: TestServer['app'], jobs: TestServer['jobs']): void {
  app.post(
    '/add',
    jobs.background('add', async ({ a, b }: { a: number; b: number }) => ({ sum: a + b })),
  );
  app.post(
    '/slow',
    jobs.background('slow', async (_p, job) => {
      await sleepUnlessAborted(10_000, job.signal);
      return 'late';
    }),
  );
  app.post(
    '/boom',
    jobs.background('boom', { attempts: 1 }, async () => {
      throw new Error('the export exploded');
    }),
  );
}

describe('Prefer on submit', () => {
  let server: TestServer;

  before(async () => {
    server = await createServer({ worker: { concurrency: 4, cancelGrace: 100 } }, tasks);
  });

  after(() => server.close());

  it('respond-async: 202 at once, with Preference-Applied and Vary: Prefer', async () => {
    const res = await postJson(
      `${server.baseUrl}/add`,
      { a: 1, b: 2 },
      { headers: { prefer: 'respond-async' } },
    );
    assert.equal(res.status, 202);
    assert.equal(res.headers.get('preference-applied'), 'respond-async');
    assert.match(res.headers.get('vary') ?? '', /\bPrefer\b/);
    const body = await res.json();
    assert.equal(body.status, 'queued');
    assert.equal(res.headers.get('location'), `/jobs/${body.id}`);
  });

  it('wait=N with a fast task: 200 with the result, Preference-Applied and Content-Location', async () => {
    const res = await postJson(`${server.baseUrl}/add`, { a: 2, b: 40 }, { headers: { prefer: 'wait=5' } });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { sum: 42 });
    assert.equal(res.headers.get('preference-applied'), 'wait=5');
    assert.match(res.headers.get('vary') ?? '', /\bPrefer\b/);
    const location = res.headers.get('content-location') ?? '';
    assert.match(location, /^\/jobs\/[0-9a-f-]{36}$/);
    // Content-Location names the finished job.
    const status = await (await fetch(`${server.baseUrl}${location}`)).json();
    assert.equal(status.status, 'succeeded');
    assert.deepEqual(status.result, { sum: 42 });
  });

  it('wait=1 with a slow task: 202 after about a second', async () => {
    const started = Date.now();
    const res = await postJson(`${server.baseUrl}/slow`, {}, { headers: { prefer: 'wait=1' } });
    const elapsed = Date.now() - started;
    assert.equal(res.status, 202);
    assert.match(res.headers.get('vary') ?? '', /\bPrefer\b/);
    const body = await res.json();
    assert.match(res.headers.get('location') ?? '', new RegExp(`/jobs/${body.id}$`));
    assert.ok(elapsed >= 950, `waited ${elapsed} ms`);
    assert.ok(elapsed < 2000, `waited ${elapsed} ms`);
    await fetch(`${server.baseUrl}/jobs/${body.id}`, { method: 'DELETE' });
  });

  it('a task that fails within the wait: the failure as a 500 problem, its message, no stack', async () => {
    const res = await postJson(`${server.baseUrl}/boom`, {}, { headers: { prefer: 'wait=5' } });
    assert.equal(res.headers.get('preference-applied'), 'wait=5');
    assert.match(res.headers.get('content-location') ?? '', /^\/jobs\/[0-9a-f-]{36}$/);
    const problem = await expectProblem(res, 500);
    assert.equal(problem.detail, 'the export exploded');
    assert.equal(problem.code, 'ERR_OFFLOAD_JOB_FAILED');
    assert.match(String(problem.jobId), /^[0-9a-f-]{36}$/);
  });

  it('a job canceled within the wait: a 409 problem', async () => {
    const pending = postJson(`${server.baseUrl}/slow`, {}, { user: 'carol', headers: { prefer: 'wait=5' } });
    const running = await eventually(async () => {
      const page = await server.jobs.core.list({ owner: 'carol', status: 'running', limit: 1 });
      return page.jobs[0];
    }, 'the slow job to run');
    const cancel = await fetch(`${server.baseUrl}/jobs/${running.id}`, {
      method: 'DELETE',
      headers: { 'x-user': 'carol' },
    });
    assert.equal(cancel.status, 202);
    const problem = await expectProblem(await pending, 409);
    assert.equal(problem.code, 'ERR_OFFLOAD_CANCELED');
  });

  it('ignores Prefer values it cannot use: 202 at once, nothing applied', async () => {
    for (const prefer of [
      'wait=abc',
      'wait=-1',
      'wait=1.5',
      'wait=',
      'wait=99999999999',
      'respond-asyncish, wait = soon',
      ';;, =, ,',
      'handling=lenient',
    ]) {
      const started = Date.now();
      const res = await postJson(`${server.baseUrl}/slow`, {}, { headers: { prefer } });
      const elapsed = Date.now() - started;
      assert.equal(res.status, 202, prefer);
      assert.equal(res.headers.get('preference-applied'), null, prefer);
      assert.ok(elapsed < 500, `${prefer}: answered in ${elapsed} ms`);
      const { id } = await res.json();
      await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE' });
    }
  });
});

describe('Prefer: wait above maxWait', () => {
  let server: TestServer;

  before(async () => {
    server = await createServer({ maxWait: '1s', worker: { concurrency: 2, cancelGrace: 100 } }, tasks);
  });

  after(() => server.close());

  it('is capped to maxWait: wait=30 answers 202 after about a second', async () => {
    const started = Date.now();
    const res = await postJson(`${server.baseUrl}/slow`, {}, { headers: { prefer: 'wait=30' } });
    const elapsed = Date.now() - started;
    assert.equal(res.status, 202);
    assert.ok(elapsed >= 950, `waited ${elapsed} ms`);
    assert.ok(elapsed < 2000, `waited ${elapsed} ms, maxWait is 1 s`);
    const { id } = await res.json();
    await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE' });
  });

  it('says which wait it applied when the job finishes in time', async () => {
    const res = await postJson(`${server.baseUrl}/add`, { a: 1, b: 1 }, { headers: { prefer: 'wait=30' } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('preference-applied'), 'wait=1');
    assert.deepEqual(await res.json(), { sum: 2 });
  });
});

/** A MemoryBroker whose event subscription does not come up until `reconnect()`, as a pub/sub link that is down. */
class DeafBroker extends MemoryBroker {
  private pending: (() => void)[] = [];

  override subscribe(listener: Parameters<MemoryBroker['subscribe']>[0]): Promise<Unsubscribe> {
    return new Promise((resolve) => {
      this.pending.push(() => resolve(super.subscribe(listener)));
    });
  }

  reconnect(): void {
    for (const go of this.pending.splice(0)) go();
  }
}

describe('Prefer: wait when the broker cannot deliver events', () => {
  let server: TestServer;
  const broker = new DeafBroker();

  before(async () => {
    server = await createServer({ broker, worker: false, brokerTimeout: 200 }, tasks);
  });

  after(async () => {
    // offload's close waits for a subscription still being set up.
    broker.reconnect();
    await server.close();
    await broker.close();
  });

  it('still answers within the wait plus brokerTimeout, with 202: the job was accepted', async () => {
    const started = Date.now();
    const res = await Promise.race([
      postJson(`${server.baseUrl}/add`, { a: 1, b: 1 }, { headers: { prefer: 'wait=1' } }),
      sleep(5000).then(() => null),
    ]);
    const elapsed = Date.now() - started;
    assert.ok(res, `no answer after ${elapsed} ms`);
    assert.equal(res.status, 202, await res.clone().text());
    assert.ok(elapsed < 1000 + 200 + 500, `answered in ${elapsed} ms`);
    const { id } = await res.json();
    assert.equal((await broker.get(id))?.status, 'queued', 'the job is persisted');
  });
});
