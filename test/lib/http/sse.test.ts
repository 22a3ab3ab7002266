import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { MemoryBroker } from '../../../adapters/memory/memory.broker.js';
import {
  as,
  createServer,
  expectProblem,
  openSse,
  postJson,
  rawRequest,
  type SseStream,
  Steps,
  stepsById,
  stepsTask,
  type TestServer,
} from '../../helpers/create-server.js';
import { eventually, sleep } from '../../helpers/eventually.js';

const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);
const RETRY_MS = 500;
const HEARTBEAT_MS = 50;

/** Event ids as numbers; every event must carry one. */
function ids(stream: SseStream): number[] {
  return stream.events.map((e) => {
    assert.match(e.id ?? '', /^\d+$/, `event ${e.event} has a numeric id`);
    return Number(e.id);
  });
}

function progressCount(stream: SseStream): number {
  return stream.events.filter((e) => e.event === 'progress').length;
}

/** Ids rise by exactly one from each event to the next: nothing missing, nothing twice. */
function assertConsecutive(values: number[]): void {
  for (let i = 1; i < values.length; i++) {
    assert.equal(values[i], values[i - 1]! + 1, `ids ${values.join(',')} are consecutive`);
  }
}

describe('GET /jobs/:id/events', () => {
  let server: TestServer;
  const stepsFor = stepsById();

  before(async () => {
    server = await createServer(
      { heartbeat: HEARTBEAT_MS, sseRetry: RETRY_MS, worker: { progressInterval: 0, cancelGrace: 1000 } },
      (app, jobs) => {
        app.post('/steps', jobs.background('steps', stepsTask(stepsFor)));
        app.post(
          '/fail',
          jobs.background('fail', { attempts: 1 }, async (_p, job) => {
            await stepsFor(job.id).next(job.signal);
            throw new Error('the export exploded');
          }),
        );
      },
    );
  });

  after(() => server.close());

  async function submit(path: string, body: unknown, user = 'alice'): Promise<string> {
    const res = await postJson(`${server.baseUrl}${path}`, body, { user });
    assert.equal(res.status, 202);
    return (await res.json()).id;
  }

  const eventsUrl = (id: string) => `${server.baseUrl}/jobs/${id}/events`;

  /** Run a job of `n` steps to success without watching it; returns its final seq. */
  async function finishedJob(n = 1): Promise<{ id: string; seq: number }> {
    const id = await submit('/steps', { n });
    stepsFor(id).release(n);
    const job = await eventually(async () => {
      const j = await server.jobs.core.broker.get(id);
      return j?.status === 'succeeded' ? j : null;
    }, 'the job to succeed');
    return { id, seq: job.seq };
  }

  it('streams snapshot, progress and one terminal event with rising ids, then ends', async () => {
    const id = await submit('/steps', { n: 3 });
    const s = await openSse(eventsUrl(id), as('alice'));
    assert.equal(s.status, 200);
    assert.match(s.headers['content-type'] ?? '', /^text\/event-stream/);
    assert.equal(s.headers['cache-control'], 'no-cache, no-transform');
    assert.equal(s.headers['x-accel-buffering'], 'no');

    await s.until((x) => x.events.length >= 1, 'the snapshot');
    assert.ok(s.raw.startsWith(`retry: ${RETRY_MS}\n\n`), 'retry: comes first');
    assert.equal(s.retry, RETRY_MS);
    assert.equal(s.events[0]!.event, 'snapshot');
    const snapshot = s.data(0);
    assert.equal(snapshot.id, id);
    assert.equal(snapshot.task, 'steps');
    assert.ok(['queued', 'running'].includes(snapshot.status));

    for (let i = 1; i <= 3; i++) {
      stepsFor(id).release();
      await s.until((x) => progressCount(x) === i, `progress ${i}`);
    }
    await s.untilEnded();

    const types = s.events.map((e) => e.event);
    assert.deepEqual(
      types.filter((t) => t !== 'status'),
      ['snapshot', 'progress', 'progress', 'progress', 'succeeded'],
    );
    assert.equal(types.filter((t) => TERMINAL.has(t)).length, 1, 'one terminal event');
    assert.equal(types.at(-1), 'succeeded', 'the terminal event is the last');
    assert.deepEqual(
      s.events.filter((e) => e.event === 'progress').map((e) => JSON.parse(e.data)),
      [
        { percent: 33, message: 'step 1' },
        { percent: 67, message: 'step 2' },
        { percent: 100, message: 'step 3' },
      ],
    );
    const terminal = JSON.parse(s.events.at(-1)!.data);
    assert.equal(terminal.status, 'succeeded');
    assert.deepEqual(terminal.result, { steps: 3 });

    const seqs = ids(s);
    assertConsecutive(seqs);
    const job = await server.jobs.core.broker.get(id);
    assert.equal(seqs.at(-1), job!.seq, 'the terminal id is the job seq');
  });

  it('sends comment heartbeats, and a canceled terminal event when the job is canceled', async () => {
    const id = await submit('/steps', { n: 1 });
    const s = await openSse(eventsUrl(id), as('alice'));
    await s.until((x) => x.comments.filter((c) => c === 'heartbeat').length >= 3, 'three heartbeats', 2000);
    assert.match(s.raw, /\n\n: heartbeat\n\n/);
    assert.equal(s.ended, false);

    const del = await fetch(`${server.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('alice') });
    assert.equal(del.status, 202);
    await s.untilEnded();
    assert.equal(s.events.at(-1)!.event, 'canceled');
    assert.equal(JSON.parse(s.events.at(-1)!.data).status, 'canceled');
    assert.equal(s.events.filter((e) => TERMINAL.has(e.event)).length, 1);
  });

  it('streams a failure as a failed event with the error, and no stack', async () => {
    const id = await submit('/fail', {});
    const s = await openSse(eventsUrl(id), as('alice'));
    await s.until((x) => x.events.length >= 1, 'the snapshot');
    stepsFor(id).release();
    await s.untilEnded();
    const last = s.events.at(-1)!;
    assert.equal(last.event, 'failed');
    assert.deepEqual(JSON.parse(last.data).error, { message: 'the export exploded' });
    assert.doesNotMatch(s.raw, /stack|\bat .*\.js/);
  });

  it('a finished job: an unnumbered snapshot, the terminal event at its seq, then the end', async () => {
    const { id, seq } = await finishedJob(2);
    const s = await openSse(eventsUrl(id), as('alice'));
    assert.equal(s.status, 200);
    await s.untilEnded();
    assert.deepEqual(
      s.events.map((e) => e.event),
      ['snapshot', 'succeeded'],
    );
    // No id on the snapshot keeps ids strictly increasing; the terminal event holds the seq.
    assert.deepEqual(
      s.events.map((e) => e.id),
      [null, String(seq)],
    );
    assert.deepEqual(s.data(1).result, { steps: 2 });
  });

  it('resumes from Last-Event-ID with exactly the events the client lacks', async () => {
    const id = await submit('/steps', { n: 4 });
    const first = await openSse(eventsUrl(id), as('alice'));
    await first.until((x) => x.events.length >= 1, 'the snapshot');
    stepsFor(id).release();
    await first.until((x) => progressCount(x) === 1, 'progress 1');
    const held = ids(first).at(-1)!;
    first.close();

    // Step 2 happens while nobody listens.
    stepsFor(id).release();
    await eventually(async () => (await server.jobs.core.broker.get(id))?.progress?.percent === 50, 'step 2');

    const second = await openSse(eventsUrl(id), as('alice', { 'last-event-id': String(held) }));
    assert.equal(second.status, 200);
    await second.until((x) => x.events.length >= 1, 'the missed event');
    assert.equal(second.events[0]!.event, 'progress', 'no snapshot on resume');
    assert.deepEqual(second.data(0), { percent: 50, message: 'step 2' });
    stepsFor(id).release(2);
    await second.untilEnded();

    const resumed = ids(second);
    assert.ok(
      resumed.every((n) => n > held),
      `nothing the client had is sent again (held ${held}, got ${resumed})`,
    );
    assert.equal(resumed[0], held + 1);
    assertConsecutive(resumed);
    assert.deepEqual(
      second.events.map((e) => e.event),
      ['progress', 'progress', 'progress', 'succeeded'],
    );
    assert.equal(second.events.filter((e) => e.event === 'snapshot').length, 0);
  });

  it('resuming with nothing new sends nothing until something happens', async () => {
    const id = await submit('/steps', { n: 1 });
    await eventually(() => stepsFor(id).waiting === 1, 'the job to run');
    const first = await openSse(eventsUrl(id), as('alice'));
    await first.until((x) => x.events.length >= 1, 'the snapshot');
    assert.equal(first.data(0).status, 'running');
    const held = ids(first).at(-1)!;
    first.close();
    const second = await openSse(eventsUrl(id), as('alice', { 'last-event-id': String(held) }));
    await second.until((x) => x.comments.length >= 2, 'two heartbeats');
    assert.equal(second.events.length, 0, 'nothing was sent again');
    stepsFor(id).release();
    await second.untilEnded();
    assert.deepEqual(
      second.events.map((e) => e.event),
      ['progress', 'succeeded'],
    );
    assert.equal(Number(second.events[0]!.id), held + 1);
  });

  it('answers 204 to a client that already holds the terminal event', async () => {
    const { id, seq } = await finishedJob();
    const res = await rawRequest(eventsUrl(id), { headers: as('alice', { 'last-event-id': String(seq) }) });
    assert.equal(res.status, 204);
    assert.equal(res.body, '');
    // One short of it: only the terminal event, then the end.
    const s = await openSse(eventsUrl(id), as('alice', { 'last-event-id': String(seq - 1) }));
    assert.equal(s.status, 200);
    await s.untilEnded();
    assert.deepEqual(
      s.events.map((e) => [e.event, Number(e.id)]),
      [['succeeded', seq]],
    );
  });

  it('treats a garbage, negative or future Last-Event-ID as a fresh connection', async () => {
    const { id, seq } = await finishedJob();
    for (const lastId of [
      'abc',
      '-1',
      '1.5',
      ' ',
      String(seq + 1),
      String(seq + 1000),
      '9'.repeat(30),
      '0x10',
    ]) {
      const s = await openSse(eventsUrl(id), as('alice', { 'last-event-id': lastId }));
      assert.equal(s.status, 200, `Last-Event-ID ${JSON.stringify(lastId)}`);
      await s.untilEnded();
      assert.deepEqual(
        s.events.map((e) => e.event),
        ['snapshot', 'succeeded'],
        `Last-Event-ID ${JSON.stringify(lastId)}`,
      );
    }
    // The same on a running job: a snapshot, not silence.
    const running = await submit('/steps', { n: 1 });
    const s = await openSse(eventsUrl(running), as('alice', { 'last-event-id': '999' }));
    await s.until((x) => x.events.length >= 1, 'the snapshot');
    assert.equal(s.events[0]!.event, 'snapshot');
    stepsFor(running).release();
    await s.untilEnded();
  });

  it("answers 404 for another owner's, an anonymous caller's, an unknown or a malformed id", async () => {
    const id = await submit('/steps', { n: 1 });
    for (const [jobId, user] of [
      [id, 'bob'],
      [id, undefined],
      [randomUUID(), 'alice'],
      ['not-a-uuid', 'alice'],
      ["1'%20OR%20'1'='1", 'alice'],
    ] as const) {
      const res = await fetch(eventsUrl(jobId), { headers: as(user, { accept: 'text/event-stream' }) });
      const problem = await expectProblem(res, 404);
      assert.equal(problem.code, 'ERR_OFFLOAD_JOB_NOT_FOUND');
    }
    stepsFor(id).release();
  });

  it('lets go of its listener when the client goes away', async () => {
    const id = await submit('/steps', { n: 1 });
    await eventually(() => stepsFor(id).waiting === 1, 'the job to run');
    const base = server.jobs.core.events.listenerCount;
    const s = await openSse(eventsUrl(id), as('alice'));
    await s.until((x) => x.events.length >= 1, 'the snapshot');
    assert.equal(server.jobs.core.events.listenerCount, base + 1);
    s.close();
    await eventually(() => server.jobs.core.events.listenerCount === base, 'the listener to go');
    stepsFor(id).release();
  });
});

describe('GET /jobs/:id/events when the broker history no longer reaches back', () => {
  let server: TestServer;
  const steps = new Steps();
  const broker = new MemoryBroker({ historyLimit: 2 });

  before(async () => {
    server = await createServer({ broker, worker: { progressInterval: 0 } }, (app, jobs) => {
      app.post(
        '/steps',
        jobs.background(
          'steps',
          stepsTask(() => steps),
        ),
      );
    });
  });

  after(async () => {
    await server.close();
    await broker.close();
  });

  it('resumes with a fresh snapshot instead of a gap', async () => {
    const res = await postJson(`${server.baseUrl}/steps`, { n: 6 }, { user: 'alice' });
    const { id } = await res.json();
    const url = `${server.baseUrl}/jobs/${id}/events`;
    const first = await openSse(url, as('alice'));
    await first.until((x) => x.events.length >= 1, 'the snapshot');
    steps.release();
    await first.until((x) => progressCount(x) === 1, 'progress 1');
    const held = ids(first).at(-1)!;
    first.close();

    steps.release(3);
    await eventually(async () => (await broker.get(id))?.progress?.message === 'step 4', 'step 4');

    const second = await openSse(url, as('alice', { 'last-event-id': String(held) }));
    await second.until((x) => x.events.length >= 1, 'the snapshot');
    assert.equal(second.events[0]!.event, 'snapshot');
    assert.deepEqual(second.data(0).progress, { percent: 67, message: 'step 4' });
    steps.release(2);
    await second.untilEnded();
    const resumed = ids(second);
    assert.ok(resumed[0]! > held + 1, 'the snapshot stands for the events history lost');
    assertConsecutive(resumed);
    assert.deepEqual(
      second.events.map((e) => e.event),
      ['snapshot', 'progress', 'progress', 'succeeded'],
    );
  });
});

/** A MemoryBroker that reads slowly while `slow` is set, so events happen while a stream sets up. */
class SlowReadBroker extends MemoryBroker {
  slow = false;

  override async get(jobId: string): ReturnType<MemoryBroker['get']> {
    if (this.slow) await sleep(60);
    return super.get(jobId);
  }

  override async history(jobId: string, afterSeq: number): ReturnType<MemoryBroker['history']> {
    if (this.slow) await sleep(60);
    return super.history(jobId, afterSeq);
  }
}

describe('GET /jobs/:id/events with events arriving while the stream sets up', () => {
  let server: TestServer;
  const steps = new Steps();
  const broker = new SlowReadBroker();

  before(async () => {
    server = await createServer({ broker, worker: { progressInterval: 0 } }, (app, jobs) => {
      app.post(
        '/steps',
        jobs.background(
          'steps',
          stepsTask(() => steps),
        ),
      );
    });
  });

  after(async () => {
    broker.slow = false;
    await server.close();
    await broker.close();
  });

  /** Open a stream and let `n` steps run once it listens but before its read of the job returns. */
  async function openDuringSetup(
    url: string,
    n: number,
    headers: Record<string, string>,
  ): Promise<SseStream> {
    const base = server.jobs.core.events.listenerCount;
    broker.slow = true;
    const opening = openSse(url, headers);
    await eventually(() => server.jobs.core.events.listenerCount === base + 1, 'the stream to listen');
    steps.release(n);
    const stream = await opening;
    await stream.until((x) => x.events.length >= 1, 'the first event');
    broker.slow = false;
    return stream;
  }

  it('a fresh stream neither loses nor repeats them', async () => {
    const { id } = await (await postJson(`${server.baseUrl}/steps`, { n: 5 }, { user: 'alice' })).json();
    await eventually(() => steps.waiting === 1, 'the job to run');
    const s = await openDuringSetup(`${server.baseUrl}/jobs/${id}/events`, 2, as('alice'));
    steps.release(3);
    await s.untilEnded();
    const seqs = ids(s);
    assert.equal(new Set(seqs).size, seqs.length, `no id twice: ${seqs}`);
    assertConsecutive(seqs);
    assert.equal(s.events[0]!.event, 'snapshot');
    assert.equal(s.events.at(-1)!.event, 'succeeded');
    const seen = [
      s.data(0).progress?.message,
      ...s.events.filter((e) => e.event === 'progress').map((e) => JSON.parse(e.data).message),
    ];
    assert.equal(seen.at(-1), 'step 5');
  });

  it('a resumed stream neither loses nor repeats them', async () => {
    const { id } = await (await postJson(`${server.baseUrl}/steps`, { n: 5 }, { user: 'alice' })).json();
    const url = `${server.baseUrl}/jobs/${id}/events`;
    const first = await openSse(url, as('alice'));
    await first.until((x) => x.events.length >= 1, 'the snapshot');
    steps.release();
    await first.until((x) => progressCount(x) === 1, 'progress 1');
    const held = ids(first).at(-1)!;
    first.close();
    await eventually(() => steps.waiting === 1, 'step 2 to wait');
    // No listener is left once the server saw the first stream go (workers hear cancels from
    // the broker, not through these listeners).
    await eventually(() => server.jobs.core.events.listenerCount === 0, 'the first stream to let go');

    const s = await openDuringSetup(url, 2, as('alice', { 'last-event-id': String(held) }));
    steps.release(2);
    await s.untilEnded();
    const seqs = ids(s);
    assert.equal(seqs[0], held + 1);
    assertConsecutive(seqs);
    assert.deepEqual(
      s.events.map((e) => e.event),
      ['progress', 'progress', 'progress', 'progress', 'succeeded'],
    );
  });
});

/** A MemoryBroker whose reads fail while `failGet` is set: a broker hiccup at the worst moment. */
class FlakyReadBroker extends MemoryBroker {
  failGet = false;

  override async get(jobId: string): ReturnType<MemoryBroker['get']> {
    if (this.failGet) throw new Error('read ETIMEDOUT');
    return super.get(jobId);
  }
}

describe('GET /jobs/:id/events when the broker cannot read the finished job', () => {
  let server: TestServer;
  const steps = new Steps();
  const broker = new FlakyReadBroker();

  before(async () => {
    server = await createServer({ broker, worker: { progressInterval: 0 } }, (app, jobs) => {
      app.post(
        '/steps',
        jobs.background('steps', async (_p, job) => {
          await steps.next(job.signal);
          return { steps: 1 };
        }),
      );
    });
  });

  after(async () => {
    broker.failGet = false;
    await server.close();
    await broker.close();
  });

  it('still names the outcome the event carried, never a made-up failure', async () => {
    const { id } = await (await postJson(`${server.baseUrl}/steps`, {}, { user: 'alice' })).json();
    await eventually(() => steps.waiting === 1, 'the job to run');
    const s = await openSse(`${server.baseUrl}/jobs/${id}/events`, as('alice'));
    await s.until((x) => x.events.length >= 1, 'the snapshot');
    broker.failGet = true;
    steps.release();
    await s.untilEnded();
    broker.failGet = false;
    const last = s.events.at(-1)!;
    assert.equal(last.event, 'succeeded');
    const doc = JSON.parse(last.data);
    assert.equal(doc.id, id);
    assert.equal(doc.status, 'succeeded');
    assert.deepEqual(doc.result, { steps: 1 });
    assert.equal((await server.jobs.core.broker.get(id))?.status, 'succeeded');
  });
});

describe('GET /jobs/:id/events when the app shuts down', () => {
  it('jobs.close() ends open streams, so the server can close', async () => {
    const server = await createServer({ worker: false }, (app, jobs) => {
      app.post(
        '/idle',
        jobs.background('idle', async () => null),
      );
    });
    try {
      const id = (await (await postJson(`${server.baseUrl}/idle`, {}, { user: 'alice' })).json())
        .id as string;
      const stream = await openSse(`${server.baseUrl}/jobs/${id}/events`, as('alice'));
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
