import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { EventSource, type FetchLike } from 'eventsource';
import {
  createServer,
  postJson,
  stepsById,
  stepsTask,
  type TestServer,
} from '../../helpers/create-server.js';
import { eventually } from '../../helpers/eventually.js';

const EVENT_TYPES = ['snapshot', 'progress', 'status', 'succeeded', 'failed', 'canceled'];
const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);
const STEPS = 6;

interface Received {
  type: string;
  id: number;
  data: any;
}

interface Connection {
  lastEventId: string | null;
  status: number;
}

/**
 * A real EventSource (the `eventsource` package, as a browser behaves) that identifies as
 * `user`, records every event, and every connection it makes with the Last-Event-ID it sent.
 * `startFrom` plays a new page that remembered the last id it saw.
 */
function follow(url: string, user: string, startFrom?: number) {
  const received: Received[] = [];
  const connections: Connection[] = [];
  const fetchAs: FetchLike = async (input, init) => {
    const headers: Record<string, string> = { ...init.headers, 'x-user': user };
    if (startFrom !== undefined && headers['Last-Event-ID'] === undefined) {
      headers['Last-Event-ID'] = String(startFrom);
    }
    const res = await fetch(input, { ...init, headers });
    connections.push({ lastEventId: headers['Last-Event-ID'] ?? null, status: res.status });
    return res;
  };
  const source = new EventSource(url, { fetch: fetchAs });
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (event: MessageEvent) => {
      received.push({ type, id: Number(event.lastEventId), data: JSON.parse(event.data) });
    });
  }
  return { source, received, connections };
}

/** The union of what the client saw: no id twice, no gap, every step once, one terminal event last. */
function assertWholeStory(received: Received[]): void {
  const ids = received.map((r) => r.id);
  assert.equal(new Set(ids).size, ids.length, `no duplicate ids: ${ids}`);
  for (let i = 1; i < ids.length; i++) assert.equal(ids[i], ids[i - 1]! + 1, `no gap: ${ids}`);
  assert.equal(received[0]!.type, 'snapshot');
  assert.equal(received.filter((r) => r.type === 'snapshot').length, 1, 'resume sent no second snapshot');
  assert.deepEqual(
    received.filter((r) => r.type === 'progress').map((r) => r.data.message),
    Array.from({ length: STEPS }, (_, i) => `step ${i + 1}`),
  );
  assert.equal(received.filter((r) => TERMINAL.has(r.type)).length, 1);
  const last = received.at(-1)!;
  assert.equal(last.type, 'succeeded');
  assert.deepEqual(last.data.result, { steps: STEPS });
}

describe('an EventSource client following a job', () => {
  let server: TestServer;
  const stepsFor = stepsById();
  const sources: EventSource[] = [];

  before(async () => {
    // A short `retry:` so the client reconnects within the test's patience.
    server = await createServer({ sseRetry: 50, worker: { progressInterval: 0 } }, (app, jobs) => {
      app.post('/steps', jobs.background('steps', stepsTask(stepsFor)));
    });
  });

  after(async () => {
    for (const s of sources) s.close();
    await server.close();
  });

  async function submit(): Promise<string> {
    const res = await postJson(`${server.baseUrl}/steps`, { n: STEPS }, { user: 'alice' });
    assert.equal(res.status, 202);
    return (await res.json()).id;
  }

  const progressCount = (received: Received[]) => received.filter((r) => r.type === 'progress').length;

  it('resumes after the server drops the connection mid-job, and stops at the end (204)', async () => {
    const id = await submit();
    const client = follow(`${server.baseUrl}/jobs/${id}/events`, 'alice');
    sources.push(client.source);
    await eventually(() => client.received.length >= 1, 'the snapshot');
    stepsFor(id).release(2);
    await eventually(() => progressCount(client.received) === 2, 'two progress events');

    const heldBeforeDrop = client.received.at(-1)!.id;
    server.dropConnections();
    // Work goes on while the client is away.
    stepsFor(id).release();
    await eventually(() => client.connections.length >= 2, 'the client to reconnect');
    assert.equal(client.connections[1]!.lastEventId, String(heldBeforeDrop));
    assert.equal(client.connections[1]!.status, 200);
    await eventually(() => progressCount(client.received) === 3, 'the step done while away');

    stepsFor(id).release(STEPS - 3);
    await eventually(() => client.received.some((r) => TERMINAL.has(r.type)), 'the terminal event');
    // The server ends the stream; the client reconnects once, gets 204, and gives up for good.
    await eventually(() => client.source.readyState === client.source.CLOSED, 'the client to stop');
    const last = client.connections.at(-1)!;
    assert.equal(last.status, 204);
    assert.equal(last.lastEventId, String(client.received.at(-1)!.id));
    assert.deepEqual(
      client.connections.map((c) => c.status),
      [200, 200, 204],
    );
    assertWholeStory(client.received);
  });

  it('resumes in a new client that sends the last id it saw', async () => {
    const id = await submit();
    const url = `${server.baseUrl}/jobs/${id}/events`;
    const first = follow(url, 'alice');
    sources.push(first.source);
    await eventually(() => first.received.length >= 1, 'the snapshot');
    stepsFor(id).release(2);
    await eventually(() => progressCount(first.received) === 2, 'two progress events');
    first.source.close();
    const held = first.received.at(-1)!.id;

    stepsFor(id).release();
    await eventually(
      async () => (await server.jobs.core.broker.get(id))?.progress?.message === 'step 3',
      'step 3',
    );

    const second = follow(url, 'alice', held);
    sources.push(second.source);
    await eventually(() => second.received.length >= 1, 'the missed event');
    assert.equal(second.received[0]!.type, 'progress');
    assert.equal(second.received[0]!.id, held + 1);
    stepsFor(id).release(STEPS - 3);
    await eventually(() => second.source.readyState === second.source.CLOSED, 'the second client to stop');
    assert.equal(second.connections.at(-1)!.status, 204);
    assertWholeStory([...first.received, ...second.received]);
  });

  it('a finished job: snapshot and result, then the client stops instead of reconnecting forever', async () => {
    const id = await submit();
    stepsFor(id).release(STEPS);
    await eventually(async () => (await server.jobs.core.broker.get(id))?.status === 'succeeded', 'the job');
    const client = follow(`${server.baseUrl}/jobs/${id}/events`, 'alice');
    sources.push(client.source);
    await eventually(() => client.source.readyState === client.source.CLOSED, 'the client to stop');
    assert.deepEqual(
      client.received.map((r) => r.type),
      ['snapshot', 'succeeded'],
    );
    assert.deepEqual(
      client.connections.map((c) => c.status),
      [200, 204],
    );
  });

  it("another owner's EventSource gets a 404 and does not retry", async () => {
    const id = await submit();
    const client = follow(`${server.baseUrl}/jobs/${id}/events`, 'bob');
    sources.push(client.source);
    const error = await new Promise<{ code?: number }>((resolve) => {
      client.source.addEventListener('error', (e) => resolve(e as { code?: number }));
    });
    assert.equal(error.code, 404);
    assert.equal(client.source.readyState, client.source.CLOSED);
    assert.equal(client.received.length, 0);
    stepsFor(id).release(STEPS);
  });
});
