import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EventSource, type FetchLike } from 'eventsource';
import {
  as,
  createServer,
  openSse,
  stepsById,
  stepsTask,
  type TestServer,
} from '../../helpers/create-server.js';
import { eventually } from '../../helpers/eventually.js';
import { HEARTBEAT_MS, multiEventsChecks, RETRY_MS } from './multi-events-checks.js';

multiEventsChecks('GET /jobs/events?ids= (Express)', async (owner) => {
  const server = await createServer({
    owner,
    heartbeat: HEARTBEAT_MS,
    sseRetry: RETRY_MS,
    worker: { progressInterval: 0, concurrency: 20 },
  });
  return { baseUrl: server.baseUrl, core: server.jobs.core, close: () => server.close() };
});

describe('an EventSource following several jobs on GET /jobs/events', () => {
  let server: TestServer;
  const stepsFor = stepsById();
  const STEPS = 4;

  before(async () => {
    // A short `retry:` so the client reconnects within the test's patience.
    server = await createServer({ sseRetry: 50, worker: { progressInterval: 0, concurrency: 20 } });
    server.jobs.core.task('steps', stepsTask(stepsFor));
  });

  after(() => server.close());

  it('reconnects after a dropped connection with the cursor list, loses and repeats nothing, and stops with a 204', async () => {
    const ids = await Promise.all(
      [1, 2, 3].map(
        async () => (await server.jobs.core.enqueue('steps', { n: STEPS }, { owner: 'alice' })).job.id,
      ),
    );
    const connections: { lastEventId: string | null; status: number }[] = [];
    const fetchAs: FetchLike = async (input, init) => {
      const headers: Record<string, string> = { ...init.headers, 'x-user': 'alice' };
      const res = await fetch(input, { ...init, headers });
      connections.push({ lastEventId: headers['Last-Event-ID'] ?? null, status: res.status });
      return res;
    };
    const source = new EventSource(`${server.baseUrl}/jobs/events?ids=${ids.join(',')}`, { fetch: fetchAs });
    const received: { type: string; jobId: string; seq?: number; data: any }[] = [];
    for (const type of ['snapshot', 'progress', 'status', 'succeeded', 'failed', 'canceled', 'missing']) {
      source.addEventListener(type, (e: MessageEvent) => {
        const data = JSON.parse(e.data);
        received.push({ type, jobId: data.jobId, seq: data.seq, data });
      });
    }
    try {
      await eventually(() => received.filter((r) => r.type === 'snapshot').length === 3, 'three snapshots');
      for (const id of ids) stepsFor(id).release(2);
      await eventually(() => received.filter((r) => r.type === 'progress').length === 6, 'two steps each');

      server.dropConnections();
      // Work goes on while the client is away.
      stepsFor(ids[1]!).release(STEPS - 2);
      stepsFor(ids[0]!).release();
      await eventually(() => connections.length >= 2, 'the client to reconnect');
      assert.equal(connections[1]!.status, 200);
      assert.equal(connections[1]!.lastEventId!.split(',').length, 3, 'the cursor list came back');

      for (const id of ids) stepsFor(id).release(STEPS);
      await eventually(() => source.readyState === source.CLOSED, 'the client to stop', { timeoutMs: 5000 });
      assert.equal(connections.at(-1)!.status, 204);

      for (const id of ids) {
        const story = received.filter((r) => r.jobId === id && r.type !== 'status');
        const seqs = received.filter((r) => r.jobId === id).map((r) => r.seq!);
        assert.equal(new Set(seqs).size, seqs.length, `no event of ${id} twice: ${seqs}`);
        for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1]! + 1, `no gap: ${seqs}`);
        assert.deepEqual(
          story.map((r) => r.type),
          ['snapshot', ...Array.from({ length: STEPS }, () => 'progress'), 'succeeded'],
          'one snapshot (no second one on resume), every step once, one terminal event',
        );
        assert.deepEqual(story.at(-1)!.data.result, { steps: STEPS });
      }
    } finally {
      source.close();
    }
  });
});

describe('GET /jobs/events when the app shuts down', () => {
  it('jobs.close() ends open streams, so the server can close', async () => {
    const server = await createServer({ worker: false });
    try {
      server.jobs.core.task('idle', async () => null);
      const { job } = await server.jobs.core.enqueue('idle', {}, { owner: 'alice' });
      const stream = await openSse(`${server.baseUrl}/jobs/events?ids=${job.id}`, as('alice'));
      await stream.until((s) => s.events.length >= 1, 'the snapshot');
      assert.equal(server.jobs.core.streams.size, 1);
      await server.jobs.close();
      await stream.untilEnded();
      assert.equal(server.jobs.core.streams.size, 0);
    } finally {
      await server.close();
    }
  });
});
