import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { JobStatus } from '../../../lib/job.js';
import {
  createServer,
  expectProblem,
  postJson,
  rawRequest,
  type TestServer,
} from '../../helpers/create-server.js';

function total(counts: Record<JobStatus, number>): number {
  return Object.values(counts).reduce((a, b) => a + b, 0);
}

describe('Idempotency-Key on submit', () => {
  let server: TestServer;
  const stored = async () => total(await server.jobs.core.broker.counts());

  before(async () => {
    server = await createServer({ worker: false }, (app, jobs) => {
      app.post(
        '/reports',
        jobs.background('report', async () => 'done'),
      );
      app.post(
        '/exports',
        jobs.background('export', async () => 'done'),
      );
    });
  });

  after(() => server.close());

  const submit = (body: unknown, user: string | undefined, key: string, path = '/reports') =>
    postJson(`${server.baseUrl}${path}`, body, { user, headers: { 'idempotency-key': key } });

  it('the same key from the same owner returns the same job, and creates no second one', async () => {
    const key = randomUUID();
    const first = await submit({ month: '2024-05' }, 'alice', key);
    assert.equal(first.status, 202);
    assert.equal(first.headers.get('idempotent-replayed'), null);
    const a = await first.json();
    const before = await stored();

    const second = await submit({ month: '2024-05' }, 'alice', key);
    assert.equal(second.status, 202);
    assert.equal(second.headers.get('idempotent-replayed'), 'true');
    assert.equal(second.headers.get('location'), `/jobs/${a.id}`);
    const b = await second.json();
    assert.equal(b.id, a.id);
    assert.deepEqual(b, a);
    assert.equal(await stored(), before, 'no second job');
  });

  it('compares payloads regardless of key order', async () => {
    const key = randomUUID();
    const a = await (await submit({ x: 1, y: { p: 1, q: 2 } }, 'alice', key)).json();
    const replay = await submit({ y: { q: 2, p: 1 }, x: 1 }, 'alice', key);
    assert.equal(replay.status, 202);
    assert.equal((await replay.json()).id, a.id);
  });

  it('the same key with a different payload: 422 problem, nothing new persisted', async () => {
    const key = randomUUID();
    const first = await submit({ month: '2024-05' }, 'alice', key);
    assert.equal(first.status, 202);
    const before = await stored();
    const problem = await expectProblem(await submit({ month: '2024-06' }, 'alice', key), 422);
    assert.equal(problem.code, 'ERR_OFFLOAD_IDEMPOTENCY_CONFLICT');
    assert.equal(await stored(), before);
  });

  it('the same key from another owner (or anonymous) is another job', async () => {
    const key = randomUUID();
    const alice = await (await submit({ n: 1 }, 'alice', key)).json();
    const bobRes = await submit({ n: 1 }, 'bob', key);
    assert.equal(bobRes.status, 202);
    assert.equal(bobRes.headers.get('idempotent-replayed'), null);
    const bob = await bobRes.json();
    const anon = await (await submit({ n: 1 }, undefined, key)).json();
    assert.equal(new Set([alice.id, bob.id, anon.id]).size, 3);
    // And a different payload under bob's key is bob's own conflict, not alice's.
    await expectProblem(await submit({ n: 2 }, 'bob', key), 422);
  });

  it('the same key on another task is another job', async () => {
    const key = randomUUID();
    const report = await (await submit({ n: 1 }, 'alice', key)).json();
    const exp = await (await submit({ n: 1 }, 'alice', key, '/exports')).json();
    assert.notEqual(report.id, exp.id);
  });

  it('refuses an invalid key with 400 and persists nothing', async () => {
    const before = await stored();
    const tooLong = await submit({ n: 1 }, 'alice', 'k'.repeat(256));
    assert.equal((await expectProblem(tooLong, 400)).code, 'ERR_OFFLOAD_BAD_IDEMPOTENCY_KEY');
    // Characters fetch will not even send: go through node:http.
    for (const key of ['has space', 'tab\there', 'caf\u00e9']) {
      const res = await rawRequest(`${server.baseUrl}/reports`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'idempotency-key': key, 'content-length': '7' },
        chunks: ['{"n":1}'],
      });
      assert.equal(
        (await expectProblem(res, 400)).code,
        'ERR_OFFLOAD_BAD_IDEMPOTENCY_KEY',
        JSON.stringify(key),
      );
    }
    assert.equal(await stored(), before);
    // 255 visible characters is the longest key that works.
    assert.equal((await submit({ n: 1 }, 'alice', 'k'.repeat(255))).status, 202);
  });
});
