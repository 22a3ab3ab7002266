// The dashboard's JSON API, page and event stream as a specification, run against the Express
// handler (test/lib/http/dashboard.test.ts) and the Nest controller (test/lib/nest/dashboard.test.ts)
// on several brokers. Each harness mounts the dashboard at `/admin/jobs` behind an admin check that
// answers 401 without an `X-User` and 403 for anyone but `admin`.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { NonRetryableError } from '../../lib/errors.js';
import type { Offload } from '../../lib/offload.js';
import { redisUrl, sqliteUrl, type TestBrokerUrl } from './broker-urls.js';
import { expectProblem, openSse, rawRequest, stepsById, stepsTask } from './create-server.js';
import { eventually } from './eventually.js';

/** A broker URL for one harness, and how to remove what it left behind. */
export type DashboardBroker = TestBrokerUrl;

/** The brokers the dashboard runs on in the tests: in memory, a SQLite file, Redis under a fresh prefix. */
export const DASHBOARD_BROKERS: { name: string; make(): DashboardBroker }[] = [
  { name: 'memory', make: () => ({ url: 'memory:', cleanup: async () => {} }) },
  { name: 'SQLite file', make: () => sqliteUrl('dashboard') },
  { name: 'Redis', make: () => redisUrl('dash') },
];

/** What the tasks of the suite let a test drive. */
export interface DashboardTasks {
  /** The `steps` task's gates, per job. */
  gate: ReturnType<typeof stepsById>;
}

/**
 * The suite's tasks, registered on the core the harness built: `steps` (gated, progress after
 * each step), `report` (logs, progress, a result), `flaky` (fails its first run, succeeds after).
 */
export function registerDashboardTasks(core: Offload): DashboardTasks {
  const gate = stepsById();
  core.task('steps', stepsTask(gate));
  core.task('report', async ({ month }: { month: string }, job) => {
    await job.log('loading rows');
    await job.progress(50, 'half way', { rows: 2 });
    await job.log('writing file');
    return { month, rows: 3 };
  });
  const failedOnce = new Set<string>();
  core.task(
    'flaky',
    async (_payload: unknown, job) => {
      if (!failedOnce.has(job.id)) {
        failedOnce.add(job.id);
        throw new NonRetryableError('upstream said no', 'ERR_UPSTREAM');
      }
      return 'second time lucky';
    },
    { attempts: 1 },
  );
  return { gate };
}

export interface DashboardApp {
  /** `http://127.0.0.1:<port>`. */
  baseUrl: string;
  /** Where the dashboard is mounted, as the browser sees it: `/admin/jobs` (or under a global prefix). */
  mount: string;
  core: Offload;
  tasks: DashboardTasks;
  close(): Promise<void>;
}

const ADMIN = { 'x-user': 'admin' };
const ACT = { ...ADMIN, 'x-offload-dashboard': '1' };
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const SUMMARY_FIELDS = [
  'attempts',
  'cancelRequested',
  'createdAt',
  'finishedAt',
  'id',
  'maxAttempts',
  'owner',
  'progress',
  'runAt',
  'seq',
  'startedAt',
  'status',
  'task',
];
const DETAIL_FIELDS = [
  ...SUMMARY_FIELDS,
  'expireAt',
  'idempotencyKey',
  'logs',
  'payload',
  'result',
  'timeoutMs',
].sort();

/** A fresh owner per test: lists filtered by it see that test's jobs only. */
const someone = () => `u-${randomUUID().slice(0, 8)}`;

export function describeDashboardApi(title: string, start: () => Promise<DashboardApp>): void {
  describe(title, () => {
    let t: DashboardApp;
    let root: string;
    const get = (path: string, headers: Record<string, string> = ADMIN) =>
      fetch(`${root}${path}`, { headers });
    const post = (path: string, headers: Record<string, string> = ACT) =>
      fetch(`${root}${path}`, { method: 'POST', headers });
    const json = async (res: Response, status = 200) => {
      const text = await res.text();
      assert.equal(res.status, status, text);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      return JSON.parse(text);
    };
    /** A job that stays queued for the test's duration (due in an hour). */
    const parked = async (owner: string, task = 'report') =>
      (await t.core.enqueue(task, task === 'steps' ? { n: 2 } : { month: '2026-01' }, { owner, delay: '1h' }))
        .job.id;
    /** The ids in the server's order: newest first, jobs made in the same millisecond by id, descending. */
    const newestFirst = async (ids: string[]) => {
      const jobs = await Promise.all(ids.map(async (id) => (await t.core.get(id))!));
      return jobs.sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1)).map((j) => j.id);
    };
    const statusOf = async (id: string) => (await t.core.get(id))?.status;
    const settled = (id: string, status: string) =>
      eventually(async () => (await statusOf(id)) === status, `job ${id} to be ${status}`, {
        timeoutMs: 5000,
      });

    before(async () => {
      t = await start();
      root = `${t.baseUrl}${t.mount}`;
    });
    after(() => t.close());

    describe('behind the app’s admin check', () => {
      it('answers 401 and 403 from the check itself: nothing reaches the page, the API or the stream', async () => {
        const id = await parked(someone());
        for (const path of ['', '/', '/assets/dashboard.js', '/api/jobs', '/api/counts', `/api/jobs/${id}`]) {
          assert.equal((await get(path, {})).status, 401, `${path} without a user`);
          assert.equal((await get(path, { 'x-user': 'bob' })).status, 403, `${path} as bob`);
        }
        const stream = await rawRequest(`${root}/api/events`, { headers: { 'x-user': 'bob' } });
        assert.equal(stream.status, 403);
        assert.doesNotMatch(stream.headers['content-type'] ?? '', /event-stream/);
        for (const action of ['cancel', 'retry']) {
          const res = await post(`/api/jobs/${id}/${action}`, {
            'x-user': 'bob',
            'x-offload-dashboard': '1',
          });
          assert.equal(res.status, 403, action);
        }
        assert.equal(await statusOf(id), 'queued', 'the refused cancel never ran');
      });
    });

    describe('the page and its assets', () => {
      it('serves the page with links under the mount, a strict CSP, and the registered tasks', async () => {
        for (const path of ['', '/']) {
          const res = await get(path);
          assert.equal(res.status, 200);
          assert.match(res.headers.get('content-type') ?? '', /^text\/html; charset=utf-8/);
          assert.match(
            res.headers.get('content-security-policy') ?? '',
            /default-src 'none'; script-src 'self'/,
          );
          assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
          assert.equal(res.headers.get('cache-control'), 'no-store');
          const html = await res.text();
          assert.match(
            html,
            new RegExp(`<script type="module" src="${t.mount}/assets/dashboard.js"></script>`),
          );
          assert.match(html, new RegExp(`<link rel="stylesheet" href="${t.mount}/assets/dashboard.css">`));
          assert.match(html, new RegExp(`<body data-base="${t.mount}">`));
          for (const id of [
            'job-rows',
            'filter-status',
            'filter-task',
            'filter-owner',
            'detail',
            'count-total',
          ]) {
            assert.match(html, new RegExp(`id="${id}"`), id);
          }
          for (const task of ['steps', 'report', 'flaky'])
            assert.match(html, new RegExp(`<option value="${task}">`));
          assert.doesNotMatch(
            html,
            /<script>|<style|\son[a-z]+="|style="/,
            'nothing inline for the CSP to refuse',
          );
        }
        const head = await fetch(root, { method: 'HEAD', headers: ADMIN });
        assert.equal(head.status, 200);
        assert.equal(await head.text(), '');
      });

      it('serves the script and stylesheet with their types, revalidated by ETag', async () => {
        const js = await get('/assets/dashboard.js');
        assert.equal(js.status, 200);
        assert.equal(js.headers.get('content-type'), 'text/javascript; charset=utf-8');
        assert.equal(js.headers.get('x-content-type-options'), 'nosniff');
        const script = await js.text();
        assert.match(script, /new EventSource\(/);
        assert.doesNotMatch(script, /sourceMappingURL|require\(|exports\./, 'browser code, not CommonJS');
        const css = await get('/assets/dashboard.css');
        assert.equal(css.headers.get('content-type'), 'text/css; charset=utf-8');
        assert.match(await css.text(), /prefers-color-scheme: dark/);
        const etag = js.headers.get('etag')!;
        assert.match(etag, /^"[\w-]+"$/);
        const again = await get('/assets/dashboard.js', { ...ADMIN, 'if-none-match': etag });
        assert.equal(again.status, 304);
        assert.equal(await again.text(), '');
        await expectProblem(await get('/assets/nope.js'), 404);
      });
    });

    describe('GET api/jobs', () => {
      it('lists every owner’s jobs, newest first, with the owner, filtered by status, task and owner', async () => {
        const [ann, bob] = [someone(), someone()];
        const a1 = await parked(ann, 'report');
        const b1 = await parked(bob, 'report');
        const a2 = await parked(ann, 'steps');
        const mine = await json(await get(`/api/jobs?owner=${ann}`));
        assert.deepEqual(
          mine.jobs.map((j: any) => j.id),
          await newestFirst([a1, a2]),
        );
        assert.equal(mine.nextCursor, null);
        const doc = mine.jobs.find((j: any) => j.id === a1);
        assert.deepEqual(Object.keys(doc).sort(), SUMMARY_FIELDS);
        assert.equal(doc.owner, ann);
        assert.equal(doc.status, 'queued');
        assert.equal(doc.task, 'report');
        assert.match(doc.createdAt, ISO);
        assert.ok(Date.parse(doc.runAt) > Date.parse(doc.createdAt) + 3_000_000, 'due in an hour');
        assert.equal(doc.startedAt, null);
        assert.ok(!('payload' in doc), 'the list leaves payloads to the detail');

        const all = await json(await get('/api/jobs?limit=200'));
        const ids = all.jobs.map((j: any) => j.id);
        for (const id of [a1, b1, a2]) assert.ok(ids.includes(id), 'every owner’s jobs');
        const reports = await json(await get(`/api/jobs?owner=${ann}&task=report`));
        assert.deepEqual(
          reports.jobs.map((j: any) => j.id),
          [a1],
        );
        const queued = await json(await get(`/api/jobs?owner=${bob}&status=queued`));
        assert.deepEqual(
          queued.jobs.map((j: any) => j.id),
          [b1],
        );
        const none = await json(await get(`/api/jobs?owner=${bob}&status=running`));
        assert.deepEqual(none.jobs, []);
        assert.match((await get('/api/jobs')).headers.get('cache-control') ?? '', /no-store/);
      });

      it('pages with a cursor: every job once, in order', async () => {
        const owner = someone();
        const made: string[] = [];
        for (let i = 0; i < 5; i++) made.push(await parked(owner));
        const expected = await newestFirst(made);
        const seen: string[] = [];
        let cursor: string | null = null;
        let pages = 0;
        do {
          const q: string = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
          const page: any = await json(await get(`/api/jobs?owner=${owner}&limit=2${q}`));
          assert.ok(page.jobs.length <= 2);
          seen.push(...page.jobs.map((j: any) => j.id));
          cursor = page.nextCursor;
          pages++;
        } while (cursor && pages < 10);
        assert.deepEqual(seen, expected);
        assert.equal(pages, 3);
      });

      it('refuses a bad status, limit or cursor with a 400 problem', async () => {
        for (const q of ['status=nope', 'limit=0', 'limit=201', 'limit=2.5', 'limit=x', 'cursor=garbage']) {
          const problem = await expectProblem(await get(`/api/jobs?${q}`), 400);
          assert.match(problem.code!, /^ERR_OFFLOAD_BAD_(QUERY|CURSOR)$/, q);
        }
      });
    });

    describe('GET api/counts', () => {
      it('counts the jobs in each status, every owner’s', async () => {
        const before = await json(await get('/api/counts'));
        assert.deepEqual(Object.keys(before).sort(), [
          'canceled',
          'failed',
          'queued',
          'running',
          'succeeded',
        ]);
        for (const n of Object.values(before)) assert.ok(Number.isInteger(n) && (n as number) >= 0);
        const owner = someone();
        await parked(owner);
        await parked(someone());
        const id = (await t.core.enqueue('report', { month: '2026-02' }, { owner })).job.id;
        await settled(id, 'succeeded');
        const afterCounts = await eventually(async () => {
          const c = await json(await get('/api/counts'));
          return c.queued === before.queued + 2 && c.succeeded === before.succeeded + 1 ? c : null;
        }, 'the counts to move');
        assert.equal(afterCounts.failed, before.failed);
      });
    });

    describe('GET api/jobs/:id', () => {
      it('shows a finished job in full: payload, progress, logs, attempts, result, timings', async () => {
        const owner = someone();
        const id = (await t.core.enqueue('report', { month: '2026-03' }, { owner })).job.id;
        await settled(id, 'succeeded');
        const doc = await json(await get(`/api/jobs/${id}`));
        assert.deepEqual(Object.keys(doc).sort(), DETAIL_FIELDS);
        assert.equal(doc.id, id);
        assert.equal(doc.owner, owner);
        assert.deepEqual(doc.payload, { month: '2026-03' });
        assert.deepEqual(doc.progress, { percent: 50, message: 'half way', data: { rows: 2 } });
        assert.deepEqual(doc.logs, ['loading rows', 'writing file']);
        assert.deepEqual(doc.result, { month: '2026-03', rows: 3 });
        assert.equal(doc.attempts, 1);
        assert.equal(doc.maxAttempts, 3);
        for (const key of ['createdAt', 'startedAt', 'finishedAt']) assert.match(doc[key], ISO, key);
        assert.ok(Date.parse(doc.startedAt) >= Date.parse(doc.createdAt));
        assert.ok(Date.parse(doc.finishedAt) >= Date.parse(doc.startedAt));
        assert.ok(!('error' in doc));
        assert.ok(doc.seq > 1);
      });

      it('shows a failed job’s error, without a stack', async () => {
        const id = (await t.core.enqueue('flaky', {}, { owner: someone() })).job.id;
        await settled(id, 'failed');
        const doc = await json(await get(`/api/jobs/${id}`));
        assert.deepEqual(doc.error, { message: 'upstream said no', code: 'ERR_UPSTREAM' });
        assert.equal(doc.result, null);
        assert.notEqual(doc.finishedAt, null);
      });

      it('answers 404 for an unknown or malformed id', async () => {
        await expectProblem(await get(`/api/jobs/${randomUUID()}`), 404);
        await expectProblem(await get('/api/jobs/not-a-job'), 404);
      });
    });

    describe('POST api/jobs/:id/cancel', () => {
      it('cancels a queued job at once (200), a running one through its signal (202), and refuses a finished one (409)', async () => {
        const queued = await parked(someone());
        const now = await json(await post(`/api/jobs/${queued}/cancel`));
        assert.equal(now.outcome, 'canceled');
        assert.equal(now.job.status, 'canceled');
        assert.deepEqual(Object.keys(now.job).sort(), DETAIL_FIELDS);

        const running = (await t.core.enqueue('steps', { n: 3 }, { owner: someone() })).job.id;
        await settled(running, 'running');
        const asked = await json(await post(`/api/jobs/${running}/cancel`), 202);
        assert.equal(asked.outcome, 'requested');
        assert.equal(asked.job.cancelRequested, true);
        await settled(running, 'canceled');

        const finished = await expectProblem(await post(`/api/jobs/${running}/cancel`), 409);
        assert.equal(finished.code, 'ERR_OFFLOAD_JOB_FINISHED');
        await expectProblem(await post(`/api/jobs/${randomUUID()}/cancel`), 404);
        await expectProblem(await post('/api/jobs/nope/cancel'), 404);
      });

      it('refuses an action without the dashboard’s header (a cross-site form) and a GET', async () => {
        const id = await parked(someone());
        const problem = await expectProblem(await post(`/api/jobs/${id}/cancel`, ADMIN), 403);
        assert.equal(problem.code, 'ERR_OFFLOAD_CROSS_SITE');
        const wrong = await get(`/api/jobs/${id}/cancel`);
        await expectProblem(wrong, 405);
        assert.equal(wrong.headers.get('allow'), 'POST');
        assert.equal(await statusOf(id), 'queued');
      });

      it('refuses an action the browser says came from another site or origin, even with the header', async () => {
        const id = await parked(someone());
        const host = new URL(t.baseUrl).host;
        const act = (headers: Record<string, string>, job = id) =>
          rawRequest(`${root}/api/jobs/${job}/cancel`, { method: 'POST', headers: { ...ACT, ...headers } });
        const refused: Record<string, string>[] = [
          { 'sec-fetch-site': 'cross-site' },
          { 'sec-fetch-site': 'same-site' },
          { origin: 'https://evil.example' },
          { origin: `http://${host.replace('127.0.0.1', 'localhost')}` },
          { origin: `http://127.0.0.1:1` },
          { origin: 'null' },
          { origin: 'not a url' },
          // A forwarded host vouches only for its own origin.
          { origin: 'https://evil.example', 'x-forwarded-host': 'jobs.example.com' },
          { origin: `http://${host}`, 'sec-fetch-site': 'cross-site' },
        ];
        for (const headers of refused) {
          const problem = await expectProblem(await act(headers), 403);
          assert.equal(problem.code, 'ERR_OFFLOAD_CROSS_SITE', JSON.stringify(headers));
          assert.equal(await statusOf(id), 'queued', JSON.stringify(headers));
        }
        // What the page's own fetch sends, and the same behind a proxy that rewrites Host.
        const proxied = await act({
          origin: 'https://jobs.example.com',
          'x-forwarded-host': 'jobs.example.com',
          'sec-fetch-site': 'same-origin',
        });
        assert.equal(proxied.status, 200, proxied.body);
        assert.equal(JSON.parse(proxied.body).outcome, 'canceled');
        const other = await parked(someone());
        const same = await act({ origin: `http://${host}`, 'sec-fetch-site': 'same-origin' }, other);
        assert.equal(same.status, 200, same.body);
        assert.equal(JSON.parse(same.body).outcome, 'canceled');
      });
    });

    describe('POST api/jobs/:id/retry', () => {
      it('queues a failed job again as a fresh run, which then succeeds', async () => {
        const id = (await t.core.enqueue('flaky', {}, { owner: someone() })).job.id;
        await settled(id, 'failed');
        const answer = await json(await post(`/api/jobs/${id}/retry`));
        assert.equal(answer.outcome, 'retried');
        assert.equal(answer.job.id, id);
        assert.equal(answer.job.attempts, 0);
        assert.ok(['queued', 'running', 'succeeded'].includes(answer.job.status), answer.job.status);
        await settled(id, 'succeeded');
        assert.equal((await t.core.get(id))!.result, 'second time lucky');
      });

      it('retries a canceled job, and refuses a succeeded one (409) or an unknown one (404)', async () => {
        const id = await parked(someone());
        await json(await post(`/api/jobs/${id}/cancel`));
        const again = await json(await post(`/api/jobs/${id}/retry`));
        assert.equal(again.job.status, 'queued');

        const done = (await t.core.enqueue('report', { month: '2026-04' }, { owner: someone() })).job.id;
        await settled(done, 'succeeded');
        const problem = await expectProblem(await post(`/api/jobs/${done}/retry`), 409);
        assert.equal(problem.code, 'ERR_OFFLOAD_NOT_RETRYABLE');
        await expectProblem(await post(`/api/jobs/${randomUUID()}/retry`), 404);
        await expectProblem(await post(`/api/jobs/${id}/retry`, ADMIN), 403);
      });
    });

    describe('GET api/events', () => {
      it('streams every job’s status and progress, after a ready event', async () => {
        const stream = await openSse(`${root}/api/events`, ADMIN);
        try {
          assert.equal(stream.status, 200);
          assert.equal(stream.headers['content-type'], 'text/event-stream; charset=utf-8');
          assert.equal(stream.headers['cache-control'], 'no-cache, no-transform');
          assert.equal(stream.headers['x-accel-buffering'], 'no');
          await stream.until((s) => s.events.some((e) => e.event === 'ready'), 'the ready event');
          assert.equal(typeof stream.retry, 'number');

          const [ann, bob] = [someone(), someone()];
          const id = (await t.core.enqueue('steps', { n: 2 }, { owner: ann })).job.id;
          const other = (await t.core.enqueue('report', { month: '2026-05' }, { owner: bob })).job.id;
          const of = (jobId: string) =>
            stream.events
              .filter((e) => e.event !== 'ready' && JSON.parse(e.data).id === jobId)
              .map((e) => ({
                event: e.event,
                ...JSON.parse(e.data),
              }));
          await stream.until(() => of(id).some((e) => e.status === 'running'), 'the steps job running');
          t.tasks.gate(id).release();
          await stream.until(
            () => of(id).some((e) => e.event === 'progress' && e.progress.percent === 50),
            '50 %',
          );
          t.tasks.gate(id).release();
          await stream.until(
            () => of(id).some((e) => e.status === 'succeeded'),
            'the steps job finished',
            5000,
          );
          await stream.until(
            () => of(other).some((e) => e.status === 'succeeded'),
            'bob’s job finished',
            5000,
          );

          const events = of(id);
          assert.deepEqual(
            events.filter((e) => e.event === 'status').map((e) => e.status),
            ['queued', 'running', 'succeeded'],
          );
          assert.deepEqual(
            events.filter((e) => e.event === 'progress').map((e) => e.progress.percent),
            [50, 100],
          );
          const seqs = events.map((e) => e.seq);
          assert.deepEqual(
            seqs,
            [...seqs].sort((a, b) => a - b),
            'in seq order',
          );
          for (const e of events) assert.match(e.at, ISO);
          assert.equal(events.at(-1)!.attempts, 1);
          assert.ok(
            of(other).some((e) => e.event === 'progress' && e.progress.message === 'half way'),
            'another owner’s job on the same stream',
          );
          assert.ok(!stream.ended, 'the stream stays open');
        } finally {
          stream.close();
        }
      });

      it('carries a failure’s error on its status event', async () => {
        const stream = await openSse(`${root}/api/events`, ADMIN);
        try {
          await stream.until((s) => s.events.some((e) => e.event === 'ready'), 'the ready event');
          const id = (await t.core.enqueue('flaky', {}, { owner: someone() })).job.id;
          await stream.until(
            (s) =>
              s.events.some(
                (e) =>
                  e.event === 'status' &&
                  JSON.parse(e.data).id === id &&
                  JSON.parse(e.data).status === 'failed',
              ),
            'the failure',
          );
          const failed = stream.events
            .map((e) => JSON.parse(e.data))
            .find((d) => d.id === id && d.status === 'failed');
          assert.deepEqual(failed.error, { message: 'upstream said no', code: 'ERR_UPSTREAM' });
        } finally {
          stream.close();
        }
      });
    });

    describe('unknown paths and methods', () => {
      it('answers 404 problems under the mount, and 405 with Allow for a wrong method', async () => {
        for (const path of [
          '/nope',
          '/api',
          '/api/nope',
          '/assets',
          `/api/jobs/${randomUUID()}/nope`,
          '/api/jobs/x/cancel/more',
        ]) {
          await expectProblem(await get(path), 404);
        }
        const list = await post('/api/jobs');
        await expectProblem(list, 405);
        assert.equal(list.headers.get('allow'), 'GET, HEAD');
        const page = await fetch(root, { method: 'DELETE', headers: ADMIN });
        await expectProblem(page, 405);
      });
    });
  });
}
