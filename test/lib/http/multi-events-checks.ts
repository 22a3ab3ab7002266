import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http, { type ServerResponse } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { MAX_STREAM_JOBS } from '../../../lib/http/sse.js';
import type { Offload } from '../../../lib/offload.js';
import type { OffloadRequest, OwnerHook } from '../../../lib/options.js';
import {
  as,
  expectProblem,
  openSse,
  rawRequest,
  type SseEvent,
  type SseStream,
  Steps,
  stepsById,
  stepsTask,
  userOwner,
} from '../../helpers/create-server.js';
import { eventually, sleep } from '../../helpers/eventually.js';
import { stalledReader } from '../../helpers/stalled-reader.js';

export const RETRY_MS = 500;
export const HEARTBEAT_MS = 50;
const TERMINAL = new Set(['succeeded', 'failed', 'canceled']);

/** A running app with offload's job routes under `/jobs`, however it was built. */
export interface MultiEventsApp {
  /** `http://127.0.0.1:<port>`, no trailing slash. */
  baseUrl: string;
  core: Offload;
  close(): Promise<void>;
}

/** One job's events out of a multi-job stream, with their data parsed. */
function eventsOf(stream: SseStream, jobId: string): (SseEvent & { json: any })[] {
  return stream.events.map((e) => ({ ...e, json: JSON.parse(e.data) })).filter((e) => e.json.jobId === jobId);
}

/** The `id:` of an event of a multi-job stream: one cursor per job of the list. */
function cursorsOf(event: SseEvent): string[] {
  assert.notEqual(event.id, null, `event ${event.event} carries an id`);
  return event.id!.split(',');
}

/** Seqs rise by one from each event of a job to the next: nothing missing, nothing twice. */
function assertConsecutive(values: number[]): void {
  for (let i = 1; i < values.length; i++) {
    assert.equal(values[i], values[i - 1]! + 1, `seqs ${values.join(',')} are consecutive`);
  }
}

/**
 * `GET /jobs/events?ids=` as both frameworks answer it: the same requests get the same answers.
 * `start(owner)` builds an app with `heartbeat: HEARTBEAT_MS`, `sseRetry: RETRY_MS`, `owner` as
 * its owner hook (the `X-User` one, which holds requests sent with `X-Hold` until the test lets
 * them go) and `worker.progressInterval: 0`; the checks register their own tasks on its core.
 */
export function multiEventsChecks(name: string, start: (owner: OwnerHook) => Promise<MultiEventsApp>): void {
  describe(name, () => {
    let app: MultiEventsApp;
    const stepsFor = stepsById();
    /** Requests the owner hook holds, in arrival order, and the gate they wait at. */
    const held: OffloadRequest[] = [];
    const hold = new Steps();
    let flooding = true;

    before(async () => {
      app = await start(async (req: OffloadRequest) => {
        if (req.headers['x-hold']) {
          held.push(req);
          await hold.next();
        }
        return userOwner(req);
      });
      app.core.task('multi-steps', stepsTask(stepsFor), { attempts: 1 });
      // Progress as fast as the broker takes it, 16 KiB a time, until the test says stop.
      app.core.task(
        'multi-flood',
        async (_p, job) => {
          await stepsFor(job.id).next(job.signal);
          const message = 'x'.repeat(16 * 1024);
          for (let i = 0; flooding && i < 4000; i++) {
            await job.progress(i % 100, message);
            await new Promise((r) => setImmediate(r));
          }
          return null;
        },
        { attempts: 1 },
      );
      app.core.task(
        'multi-fail',
        async (_p, job) => {
          await stepsFor(job.id).next(job.signal);
          throw new Error('the import exploded');
        },
        { attempts: 1 },
      );
    });

    after(() => app.close());

    const submit = async (n: number, owner: string | null = 'alice', task = 'multi-steps') =>
      (await app.core.enqueue(task, { n }, { owner })).job.id;
    const url = (ids: string) => `${app.baseUrl}/jobs/events?ids=${ids}`;
    const runs = (id: string) => eventually(() => stepsFor(id).waiting === 1, `job ${id} to run`);
    const finished = async (n = 1) => {
      const id = await submit(n);
      stepsFor(id).release(n);
      const job = await eventually(async () => {
        const j = await app.core.broker.get(id);
        return j && TERMINAL.has(j.status) ? j : null;
      }, 'the job to finish');
      return { id, seq: job.seq };
    };

    it('follows several jobs on one stream: each its snapshot, progress and one terminal event, then the end', async () => {
      const [a, b, c] = [await submit(2), await submit(2), await submit(1, 'alice', 'multi-fail')];
      const s = await openSse(url(`${a},${b},${c}`), as('alice'));
      assert.equal(s.status, 200);
      assert.match(s.headers['content-type'] ?? '', /^text\/event-stream/);
      assert.equal(s.headers['cache-control'], 'no-cache, no-transform');
      assert.equal(s.headers['x-accel-buffering'], 'no');
      await s.until((x) => x.events.filter((e) => e.event === 'snapshot').length === 3, 'three snapshots');
      assert.ok(s.raw.startsWith(`retry: ${RETRY_MS}\n\n`), 'retry: comes first');

      // Interleaved steps: each job's story must still come in its own order.
      for (const id of [b, a, c, a, b]) {
        await runs(id);
        stepsFor(id).release();
      }
      await s.untilEnded();

      const list = [a, b, c];
      for (const [index, id] of list.entries()) {
        const events = eventsOf(s, id!);
        const types = events.map((e) => e.event).filter((t) => t !== 'status');
        const terminal = id === c ? 'failed' : 'succeeded';
        assert.deepEqual(
          types,
          id === c ? ['snapshot', terminal] : ['snapshot', 'progress', 'progress', terminal],
        );
        assert.equal(events.filter((e) => TERMINAL.has(e.event)).length, 1, 'one terminal event');
        const seqs = events.map((e) => e.json.seq as number);
        assertConsecutive(seqs);
        // The event id lists every job's cursor; this job's entry is this event's seq.
        for (const e of events) {
          assert.equal(cursorsOf(e).length, 3);
          assert.equal(cursorsOf(e)[index], String(e.json.seq));
        }
        const job = await app.core.broker.get(id!);
        assert.equal(seqs.at(-1), job!.seq, 'the terminal seq is the job seq');
        assert.equal(events.at(-1)!.json.id, id, 'the terminal event carries the status document');
      }
      assert.deepEqual(
        eventsOf(s, a!)
          .filter((e) => e.event === 'progress')
          .map((e) => [e.json.percent, e.json.message]),
        [
          [50, 'step 1'],
          [100, 'step 2'],
        ],
      );
      assert.deepEqual(eventsOf(s, a!).at(-1)!.json.result, { steps: 2 });
      assert.deepEqual(eventsOf(s, c!).at(-1)!.json.error, { message: 'the import exploded' });
      assert.ok(TERMINAL.has(s.events.at(-1)!.event), 'the stream ends on a terminal event');
      // Each entry of the cursor list only grows.
      const lists = s.events.map(cursorsOf).map((l) => l.map((v) => (v === '' ? -1 : Number(v))));
      for (let i = 1; i < lists.length; i++) {
        for (let j = 0; j < 3; j++) assert.ok(lists[i]![j]! >= lists[i - 1]![j]!, `cursor ${j} only grows`);
      }
    });

    it('a finished job gets an unnumbered snapshot and its terminal event; all finished, the stream ends', async () => {
      const done = await finished(1);
      const running = await submit(1);
      const s = await openSse(url(`${running},${done.id}`), as('alice'));
      await s.until((x) => eventsOf(x, done.id).length === 2, 'the finished job');
      const [snapshot, terminal] = eventsOf(s, done.id);
      assert.equal(snapshot!.event, 'snapshot');
      assert.equal(snapshot!.id, null, 'no id: the terminal event that follows carries the seq');
      assert.equal(snapshot!.json.seq, undefined);
      assert.equal(snapshot!.json.status, 'succeeded');
      assert.equal(terminal!.event, 'succeeded');
      assert.equal(terminal!.json.seq, done.seq);
      assert.equal(cursorsOf(terminal!)[1], String(done.seq));
      assert.equal(s.ended, false, 'the running job holds the stream open');
      await runs(running);
      stepsFor(running).release();
      await s.untilEnded();

      const only = await openSse(url(done.id), as('alice'));
      await only.untilEnded();
      assert.deepEqual(
        only.events.map((e) => e.event),
        ['snapshot', 'succeeded'],
      );
    });

    it("another owner's or an unknown job gets one missing event; none visible is a 404", async () => {
      const mine = await submit(1);
      const bobs = await submit(1, 'bob');
      const unknown = randomUUID();
      const s = await openSse(url(`${bobs},${mine},${unknown}`), as('alice'));
      assert.equal(s.status, 200);
      await s.until((x) => x.events.some((e) => e.event === 'snapshot'), 'the snapshot');
      const missing = s.events.filter((e) => e.event === 'missing');
      assert.deepEqual(
        missing.map((e) => JSON.parse(e.data)),
        [{ jobId: bobs }, { jobId: unknown }],
        'a missing event says no more than the id the client sent',
      );
      assert.deepEqual(cursorsOf(missing[1]!), ['x', '', 'x']);
      assert.equal(eventsOf(s, bobs).length, 1, 'nothing of bob’s job but the missing event');
      await runs(mine);
      stepsFor(mine).release();
      await s.untilEnded();
      assert.equal(eventsOf(s, mine).at(-1)!.event, 'succeeded');
      assert.equal(eventsOf(s, bobs).length, 1);

      for (const [ids, user] of [
        [`${bobs}`, 'alice'],
        [`${bobs},${unknown}`, 'alice'],
        [`${mine}`, undefined],
        [`${mine}`, 'bob'],
      ] as const) {
        const res = await fetch(url(ids), { headers: as(user, { accept: 'text/event-stream' }) });
        assert.equal((await expectProblem(res, 404)).code, 'ERR_OFFLOAD_JOB_NOT_FOUND', `${ids} as ${user}`);
      }
      stepsFor(bobs).release();
    });

    it('resumes each job from its query cursor; a job whose terminal event the client holds is skipped; all held is a 204', async () => {
      const a = await submit(3);
      const b = await submit(1);
      const first = await openSse(url(`${a},${b}`), as('alice'));
      await first.until((x) => x.events.filter((e) => e.event === 'snapshot').length === 2, 'the snapshots');
      await runs(a);
      stepsFor(a).release();
      await first.until((x) => eventsOf(x, a).some((e) => e.event === 'progress'), 'progress 1 of a');
      await runs(b);
      stepsFor(b).release();
      await first.until((x) => eventsOf(x, b).some((e) => e.event === 'succeeded'), 'b to finish');
      const heldA = eventsOf(first, a).at(-1)!.json.seq as number;
      const heldB = eventsOf(first, b).at(-1)!.json.seq as number;
      first.close();

      // Step 2 of a happens while nobody listens.
      await runs(a);
      stepsFor(a).release();
      await eventually(async () => (await app.core.broker.get(a))?.progress?.message === 'step 2', 'step 2');

      const second = await openSse(url(`${a}:${heldA},${b}:${heldB}`), as('alice'));
      assert.equal(second.status, 200);
      await second.until((x) => x.events.length >= 1, 'the missed event');
      assert.equal(second.events[0]!.event, 'progress', 'no snapshot on resume');
      assert.equal(JSON.parse(second.events[0]!.data).message, 'step 2');
      await runs(a);
      stepsFor(a).release();
      await second.untilEnded();
      assert.equal(eventsOf(second, b).length, 0, 'nothing of b: the client holds its terminal event');
      const resumed = eventsOf(second, a);
      assert.equal(resumed[0]!.json.seq, heldA + 1);
      assertConsecutive(resumed.map((e) => e.json.seq));
      assert.equal(resumed.filter((e) => e.event === 'snapshot').length, 0);
      assert.equal(resumed.at(-1)!.event, 'succeeded');
      // The cursor list starts from the query's cursors.
      assert.equal(cursorsOf(resumed[0]!)[1], String(heldB));

      const seqA = resumed.at(-1)!.json.seq as number;
      const res = await rawRequest(url(`${a}:${seqA},${b}:${heldB}`), { headers: as('alice') });
      assert.equal(res.status, 204, 'the client holds every terminal event');
      assert.equal(res.body, '');

      // A cursor ahead of the job is no cursor: a fresh snapshot, as on the single route.
      const ahead = await openSse(url(`${a}:${seqA + 100}`), as('alice'));
      await ahead.untilEnded();
      assert.deepEqual(
        ahead.events.map((e) => e.event),
        ['snapshot', 'succeeded'],
      );
    });

    it('resumes from a Last-Event-ID cursor list (what EventSource sends back), which wins over the query', async () => {
      const a = await submit(2);
      const done = await finished(1);
      const bobs = await submit(1, 'bob');
      const first = await openSse(url(`${a},${done.id},${bobs}`), as('alice'));
      await first.until((x) => eventsOf(x, a).length >= 1, 'the snapshot of a');
      await runs(a);
      stepsFor(a).release();
      await first.until((x) => eventsOf(x, a).some((e) => e.event === 'progress'), 'progress 1');
      await first.until(
        (x) => eventsOf(x, done.id).length === 2 && eventsOf(x, bobs).length === 1,
        'the others',
      );
      const lastId = first.events.filter((e) => e.id !== null).at(-1)!.id!;
      first.close();
      const [heldA, heldDone, told] = lastId.split(',');
      assert.equal(heldDone, String(done.seq));
      assert.equal(told, 'x');

      // The same URL as before (no cursors), as EventSource reconnects: the header decides.
      const second = await openSse(url(`${a},${done.id},${bobs}`), as('alice', { 'last-event-id': lastId }));
      assert.equal(second.status, 200);
      await runs(a);
      stepsFor(a).release();
      await second.untilEnded();
      assert.deepEqual(
        second.events.map((e) => [e.event, JSON.parse(e.data).jobId]),
        [
          ['progress', a],
          ['succeeded', a],
        ],
        'only what the client lacks: nothing of the finished job, no second missing event',
      );
      assert.equal(JSON.parse(second.events[0]!.data).seq, Number(heldA) + 1);

      const final = second.events.at(-1)!.id!;
      const res = await rawRequest(url(`${a},${done.id},${bobs}`), {
        headers: as('alice', { 'last-event-id': final }),
      });
      assert.equal(res.status, 204, 'everything held or told: EventSource stops for good');

      // A list that does not fit the ids (another stream's) is ignored: the query decides.
      const other = await openSse(url(`${a},${done.id}`), as('alice', { 'last-event-id': final }));
      await other.untilEnded();
      assert.deepEqual(
        other.events.map((e) => e.event),
        ['snapshot', 'succeeded', 'snapshot', 'succeeded'],
      );
      stepsFor(bobs).release();
    });

    it('rejects a malformed list with a 400 problem naming the entry', async () => {
      const id = await submit(1);
      for (const [query, pattern] of [
        ['', /ids must list/],
        ['ids=', /ids must list/],
        ['ids=not-a-uuid', /ids\[0\] is not a job id/],
        [`ids=${id},${id.toUpperCase()}`, /ids\[1\] is not a job id/],
        [`ids=${id},`, /ids\[1\] is not a job id/],
        [`ids=${id}:-1`, /ids\[0\] has a seq/],
        [`ids=${id}:1.5`, /ids\[0\] has a seq/],
        [`ids=${id}:`, /ids\[0\] has a seq/],
        [`ids=${id},${id}:3`, /ids\[1\] names a job listed before/],
        [
          `ids=${Array.from({ length: MAX_STREAM_JOBS + 1 }, () => randomUUID()).join(',')}`,
          /at most 50 jobs, not 51/,
        ],
      ] as const) {
        const res = await fetch(`${app.baseUrl}/jobs/events?${query}`, { headers: as('alice') });
        const problem = await expectProblem(res, 400);
        assert.equal(problem.code, 'ERR_OFFLOAD_BAD_QUERY', query);
        assert.match(problem.detail, pattern, query);
      }
      // Fifty is fine (and repeated ids= parameters add up); the 49 unknown ones are missing.
      const others = Array.from({ length: MAX_STREAM_JOBS - 1 }, () => randomUUID());
      const s = await openSse(`${url(others.join(','))}&ids=${id}`, as('alice'));
      assert.equal(s.status, 200);
      await s.until((x) => eventsOf(x, id).length >= 1, 'the snapshot');
      assert.equal(s.events.filter((e) => e.event === 'missing').length, MAX_STREAM_JOBS - 1);
      await runs(id);
      stepsFor(id).release();
      await s.untilEnded();
    });

    it('answers other methods with 405 and Allow; HEAD with the stream headers', async () => {
      const id = await submit(1);
      for (const method of ['POST', 'DELETE', 'PUT']) {
        const res = await fetch(url(id), { method, headers: as('alice') });
        assert.equal((await expectProblem(res, 405)).code, 'ERR_OFFLOAD_METHOD_NOT_ALLOWED', method);
        assert.equal(res.headers.get('allow'), 'GET', method);
      }
      const head = await fetch(url(id), { method: 'HEAD', headers: as('alice') });
      assert.equal(head.status, 200);
      assert.match(head.headers.get('content-type') ?? '', /^text\/event-stream/);
      assert.equal((await fetch(url(id), { method: 'HEAD', headers: as('bob') })).status, 404);
      // 'events' is not taken for a job id by the single-job routes either.
      await expectProblem(await fetch(`${app.baseUrl}/jobs/events/events`, { headers: as('alice') }), 404);
      stepsFor(id).release();
    });

    it('lets go of a job’s listener when its terminal event is sent, and of all when the client leaves', async () => {
      const a = await submit(1);
      const b = await submit(1);
      await runs(a);
      await runs(b);
      const base = app.core.events.listenerCount;
      const streams = app.core.streams.size;
      const s = await openSse(url(`${a},${b}`), as('alice'));
      await s.until((x) => x.events.filter((e) => e.event === 'snapshot').length === 2, 'the snapshots');
      assert.equal(app.core.events.listenerCount, base + 2);
      assert.equal(app.core.streams.size, streams + 1, 'one stream for both jobs');
      stepsFor(a).release();
      await s.until((x) => eventsOf(x, a).some((e) => e.event === 'succeeded'), 'a to finish');
      await eventually(() => app.core.events.listenerCount === base + 1, 'a’s listener to go');
      s.close();
      await eventually(() => app.core.events.listenerCount === base, 'b’s listener to go');
      await eventually(() => app.core.streams.size === streams, 'the stream to go');
      stepsFor(b).release();
    });

    it('sets nothing up for a client that left while its request was being checked (either route)', async () => {
      const id = await submit(1);
      await runs(id);
      for (const path of [`/jobs/events?ids=${id}`, `/jobs/${id}/events`]) {
        const listeners = app.core.events.listenerCount;
        const streams = app.core.streams.size;
        const client = http.request(`${app.baseUrl}${path}`, { headers: as('alice', { 'x-hold': '1' }) });
        client.on('error', () => {});
        client.end();
        const req = await eventually(
          () => held.length > 0 && held.pop(),
          `${path}: the owner hook to hold it`,
        );
        const res = (req as unknown as { res: ServerResponse }).res;
        client.destroy();
        await eventually(() => res.destroyed, `${path}: the server to see the client go`);
        hold.release();
        // The route goes on (reads the job) and would open the stream now; give it some heartbeats.
        await sleep(HEARTBEAT_MS * 5);
        assert.equal(res.headersSent, false, `${path}: nothing written to a client that is gone`);
        assert.equal(app.core.streams.size, streams, `${path}: no stream left open`);
        assert.equal(app.core.events.listenerCount, listeners, `${path}: no listener left on the job`);
      }
      // The same wait with the client still there: the stream opens once the hook answers.
      const listeners = app.core.events.listenerCount;
      const opening = openSse(url(id), as('alice', { 'x-hold': '1' }));
      await eventually(() => held.length > 0 && held.pop(), 'the owner hook to hold it');
      hold.release();
      const s = await opening;
      await s.until((x) => x.events.some((e) => e.event === 'snapshot'), 'the snapshot');
      assert.equal(app.core.events.listenerCount, listeners + 1);
      s.close();
      await eventually(() => app.core.events.listenerCount === listeners, 'the listener to go');
      stepsFor(id).release();
    });

    it('drops a stream whose reader stopped reading, and keeps the one that reads', async () => {
      const id = await submit(1, 'alice', 'multi-flood');
      await runs(id);
      const streams = app.core.streams.size;
      const listeners = app.core.events.listenerCount;
      const reading = await openSse(url(id), as('alice'));
      await reading.until((x) => x.events.some((e) => e.event === 'snapshot'), 'the snapshot');
      const stalled = await stalledReader(url(id), 'event: snapshot', as('alice'));
      assert.equal(app.core.streams.size, streams + 2);
      flooding = true;
      stepsFor(id).release();
      try {
        await eventually(() => app.core.streams.size === streams + 1, 'the stalled stream to be dropped', {
          timeoutMs: 30_000,
        });
        // Dropped for falling behind, not ended by the job's end.
        assert.equal((await app.core.get(id))?.status, 'running');
      } finally {
        flooding = false;
      }
      assert.equal(app.core.events.listenerCount, listeners + 1, 'its listener went with it');
      // Read again, the stalled client finds its connection over: EventSource would reconnect.
      await stalled.drainToEnd();
      await reading.until(
        (x) => x.events.some((e) => e.event === 'succeeded'),
        'the reading client to see the end',
        30_000,
      );
      const seqs = eventsOf(reading, id).map((e) => e.json.seq as number);
      assertConsecutive(seqs);
      assert.ok(seqs.length > 64, `the reader took every event of the flood (${seqs.length})`);
      await reading.untilEnded();
    });
  });
}
