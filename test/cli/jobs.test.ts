// `offload jobs` against each real broker: list (filters, pages), show, counts, cancel, retry and
// purge, read back through the broker. The CLI runs in this process through `main()`; the jobs are
// seeded through the broker API (enqueue, then claim and complete/fail to get finished ones).
// Bad usage, help, unreachable brokers and the real bin: jobs-usage.test.ts.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, beforeEach, describe, it } from 'node:test';
import pg from 'pg';
import { PostgresBroker } from '../../adapters/postgres/postgres.broker.js';
import { RedisBroker } from '../../adapters/redis/redis.broker.js';
import { SqliteBroker } from '../../adapters/sqlite/sqlite.broker.js';
import type { Broker } from '../../lib/broker.js';
import type { JobRecord, Json } from '../../lib/job.js';
import { jsonOf, runCli } from '../helpers/cli-io.js';
import { sleep } from '../helpers/eventually.js';
import { type RedisServer, redisCli, startRedisServer } from '../helpers/redis-server.js';

interface Target {
  /** The URL the CLI gets. */
  url: string;
  /** This test's own broker on the same store, to seed and to check. */
  broker: Broker;
  cleanup(): Promise<void>;
}

const PG_URL = process.env.OFFLOAD_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';

/** The suite, once per broker; `open` gives each test an empty store. */
function jobsCli(
  name: string,
  hooks: { before?: () => Promise<void>; after?: () => Promise<void> },
  open: () => Promise<Target>,
) {
  describe(`offload jobs on ${name}`, () => {
    let t: Target;
    if (hooks.before) before(hooks.before);
    if (hooks.after) after(hooks.after);
    beforeEach(async () => {
      t = await open();
    });
    afterEach(async () => {
      await t.cleanup();
    });

    const cli = (...args: string[]) => runCli(['jobs', ...args, '--broker', t.url]);

    it('lists jobs newest first in an aligned table, filtered by status, task and owner', async () => {
      const s = await seedMix(t.broker);
      const all = await cli('list');
      assert.equal(all.code, 0, all.stderr);
      assert.equal(all.stderr, '');
      const lines = all.stdout.trimEnd().split('\n');
      assert.match(lines[0]!, /^ID\s+TASK\s+STATUS\s+PROGRESS\s+ATTEMPTS\s+CREATED\s+FINISHED$/);
      assert.equal(lines.length, 5, all.stdout);
      assert.deepEqual(idsIn(all.stdout), newestFirst([s.done, s.failed, s.queued, s.running]));
      // Aligned: every column starts at the same offset on every line.
      const statusAt = lines[0]!.indexOf('STATUS');
      const createdAt = lines[0]!.indexOf('CREATED');
      for (const line of lines.slice(1)) {
        assert.match(line.slice(statusAt), /^(succeeded|failed|queued|running)\s/);
        assert.match(line.slice(createdAt), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ /);
      }
      const doneLine = lines.find((l) => l.startsWith(s.done.id))!;
      assert.match(doneLine, /\ssucceeded\s+40%\s+1\/1\s+\S+Z\s+\d{4}-\S+Z$/);
      assert.match(lines.find((l) => l.startsWith(s.queued.id))!, /\squeued\s+-\s+0\/3\s+\S+Z\s+-$/);
      assert.ok(
        !all.stdout.includes(String.fromCharCode(27)),
        'no colour codes when stdout is not a terminal',
      );
      assert.doesNotMatch(all.stdout, /More jobs/);

      assert.deepEqual(idsIn((await cli('list', '--status', 'failed')).stdout), [s.failed.id]);
      assert.deepEqual(
        idsIn((await cli('list', '--task', 'report')).stdout),
        newestFirst([s.done, s.queued]),
      );
      assert.deepEqual(
        idsIn((await cli('list', '--owner', 'bob')).stdout),
        newestFirst([s.failed, s.queued]),
      );
      assert.deepEqual(idsIn((await cli('list', '--task', 'report', '--owner', 'bob')).stdout), [
        s.queued.id,
      ]);
      const none = await cli('list', '--status', 'canceled', '--task', 'report');
      assert.equal(none.code, 0);
      assert.equal(none.stdout, 'No jobs with status canceled, task report.\n');
    });

    it('pages with --cursor: the table prints the next command, --json the nextCursor', async () => {
      const jobs: JobRecord[] = [];
      for (let i = 0; i < 5; i++) jobs.push(await enqueue(t.broker, 'page', { i }));
      await enqueue(t.broker, 'other', {});
      const expected = newestFirst(jobs);

      const first = await cli('list', '--task', 'page', '--limit', '2');
      assert.equal(first.code, 0, first.stderr);
      assert.deepEqual(idsIn(first.stdout), expected.slice(0, 2));
      const more = /^More jobs: offload jobs list --task page --limit 2 --broker (\S+) --cursor (\S+)$/m.exec(
        first.stdout,
      );
      assert.ok(more, first.stdout);
      assert.equal(more[1], t.url.includes('@') ? '<url>' : t.url, 'the broker again, never its credentials');
      const second = await cli('list', '--task', 'page', '--limit', '2', '--cursor', more[2]!);
      assert.deepEqual(idsIn(second.stdout), expected.slice(2, 4));

      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const run = await cli(
          'list',
          '--task',
          'page',
          '--limit',
          '2',
          '--json',
          ...(cursor ? ['--cursor', cursor] : []),
        );
        assert.equal(run.code, 0, run.stderr);
        const page = jsonOf<{ jobs: { id: string; task: string }[]; nextCursor: string | null }>(run);
        assert.ok(page.jobs.every((j) => j.task === 'page'));
        seen.push(...page.jobs.map((j) => j.id));
        cursor = page.nextCursor;
        pages++;
      } while (cursor && pages < 10);
      assert.deepEqual(seen, expected, 'every job once, newest first, over the pages');
      assert.equal(pages, 3);

      const last = await cli('list', '--task', 'page', '--limit', '5');
      assert.deepEqual(idsIn(last.stdout), expected);
      assert.doesNotMatch(last.stdout, /More jobs/, 'no next page after the last job');

      const bad = await cli('list', '--cursor', 'not-a-cursor');
      assert.equal(bad.code, 2);
      assert.match(bad.stderr, /offload jobs list: .*cursor is not valid/i);
      assert.equal(bad.stdout, '');
    });

    it('shows a job in full, and --json carries every field with ISO times', async () => {
      const s = await seedMix(t.broker);
      const done = await cli('show', s.done.id);
      assert.equal(done.code, 0, done.stderr);
      const out = done.stdout;
      assert.match(out, new RegExp(`^id\\s+${s.done.id}$`, 'm'));
      assert.match(out, /^task\s+report$/m);
      assert.match(out, /^status\s+succeeded$/m);
      assert.match(out, /^owner\s+alice$/m);
      assert.match(out, /^attempts\s+1 of 1$/m);
      assert.match(out, /^progress\s+40%\s+loading rows$/m);
      assert.match(out, /^created\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/m);
      assert.match(out, /^started\s+\S+Z\s+\(\S+ after created\)$/m);
      assert.match(out, /^finished\s+\S+Z\s+\(ran \S+\)$/m);
      assert.match(out, /^Payload\n {2}\{\n {4}"month": "2024-04",\n {4}"ids": \[/m);
      assert.match(out, /^Progress data\n {2}\{\n {4}"rows": 120\n {2}\}$/m);
      assert.match(out, /^Result\n {2}\{\n {4}"url": "\/files\/r.csv"\n {2}\}$/m);
      assert.match(out, /^Logs \(2\)\n {2}started\n {2}120 rows read$/m);
      assert.doesNotMatch(out, /Error/);

      const failed = await cli('show', s.failed.id);
      assert.match(failed.stdout, /^Error\n {2}E_BOOM: the remote end said no$/m);
      assert.match(failed.stdout, /^Logs \(0\)\n {2}\(none\)$/m);
      assert.doesNotMatch(failed.stdout, /^Result/m);

      const json = jsonOf(await cli('show', s.done.id, '--json'));
      assert.equal(json.id, s.done.id);
      assert.equal(json.task, 'report');
      assert.equal(json.status, 'succeeded');
      assert.equal(json.owner, 'alice');
      assert.deepEqual(json.payload, s.done.payload);
      assert.deepEqual(json.progress, { percent: 40, message: 'loading rows', data: { rows: 120 } });
      assert.deepEqual(json.result, { url: '/files/r.csv' });
      assert.equal(json.error, null);
      assert.equal(json.attempts, 1);
      assert.equal(json.maxAttempts, 1);
      assert.deepEqual(json.logs, ['started', '120 rows read']);
      assert.equal(json.createdAt, new Date(s.done.createdAt).toISOString());
      for (const key of ['startedAt', 'finishedAt']) {
        assert.match(json[key], /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/, key);
      }
      assert.equal(jsonOf(await cli('show', s.failed.id, '--json')).error.code, 'E_BOOM');

      const unknown = '0b5c1b52-4f3a-4d47-9a49-5f2f0e1f6b0e';
      const missing = await cli('show', unknown);
      assert.equal(missing.code, 1);
      assert.equal(missing.stdout, '');
      assert.equal(missing.stderr, `offload jobs show: no job ${unknown}.\n`);
      const missingJson = await cli('show', unknown, '--json');
      assert.equal(missingJson.code, 1);
      assert.equal(missingJson.stdout, '', 'nothing on stdout for a script to mistake for a job');
      const malformed = await cli('show', 'not-a-job-id');
      assert.equal(malformed.code, 1);
      assert.equal(malformed.stderr, 'offload jobs show: no job not-a-job-id (job ids are UUIDs).\n');
    });

    it('counts jobs per status', async () => {
      await seedMix(t.broker);
      const table = await cli('counts');
      assert.equal(table.code, 0, table.stderr);
      assert.equal(
        table.stdout,
        'queued     1\nrunning    1\nsucceeded  1\nfailed     1\ncanceled   0\ntotal      4\n',
      );
      assert.deepEqual(jsonOf(await cli('counts', '--json')), {
        queued: 1,
        running: 1,
        succeeded: 1,
        failed: 1,
        canceled: 0,
      });
    });

    it('cancels a queued job at once and asks a running one to stop; a finished or unknown one exits 1', async () => {
      const s = await seedMix(t.broker);
      const queued = await cli('cancel', s.queued.id);
      assert.equal(queued.code, 0, queued.stderr);
      assert.equal(queued.stdout, `${s.queued.id}: canceled\n`);
      assert.equal(queued.stderr, '');
      assert.equal((await t.broker.get(s.queued.id))?.status, 'canceled');

      const running = await cli('cancel', s.running.id);
      assert.equal(running.code, 0, running.stderr);
      assert.match(running.stdout, /: cancel requested: running, its worker stops it/);
      const flagged = await t.broker.get(s.running.id);
      assert.equal(flagged?.status, 'running');
      assert.equal(flagged?.cancelRequested, true);

      const finished = await cli('cancel', s.done.id);
      assert.equal(finished.code, 1);
      assert.equal(finished.stdout, `${s.done.id}: not canceled: it already finished (succeeded)\n`);
      assert.equal(finished.stderr, 'offload jobs cancel: 1 of 1 could not be canceled.\n');
      assert.equal((await t.broker.get(s.done.id))?.status, 'succeeded', 'a finished job never changes');

      const another = await enqueue(t.broker, 'report', {});
      const unknown = '0b5c1b52-4f3a-4d47-9a49-5f2f0e1f6b0e';
      const mixed = await cli('cancel', another.id, unknown, 'junk', '--json');
      assert.equal(mixed.code, 1);
      assert.deepEqual(jsonOf(mixed), {
        results: [
          { id: another.id, outcome: 'canceled', status: 'canceled' },
          { id: unknown, outcome: 'not-found', status: null },
          { id: 'junk', outcome: 'not-found', status: null },
        ],
      });
      assert.equal(mixed.stderr, 'offload jobs cancel: 2 of 3 could not be canceled.\n');
      assert.equal((await t.broker.get(another.id))?.status, 'canceled', 'the others are still canceled');
    });

    it('retries failed and canceled jobs; anything else exits 1 and says why', async () => {
      const s = await seedMix(t.broker);
      const failed = await cli('retry', s.failed.id);
      assert.equal(failed.code, 0, failed.stderr);
      assert.equal(failed.stdout, `${s.failed.id}: queued again\n`);
      const requeued = await t.broker.get(s.failed.id);
      assert.equal(requeued?.status, 'queued');
      assert.equal(requeued?.attempts, 0, 'a fresh run');

      await t.broker.cancel(s.queued.id);
      const canceled = await cli('retry', s.queued.id, '--json');
      assert.equal(canceled.code, 0, canceled.stderr);
      assert.deepEqual(jsonOf(canceled), {
        results: [{ id: s.queued.id, outcome: 'retried', status: 'queued' }],
      });

      const succeeded = await cli('retry', s.done.id);
      assert.equal(succeeded.code, 1);
      assert.equal(
        succeeded.stdout,
        `${s.done.id}: not retried: it is succeeded; only failed or canceled jobs can be retried\n`,
      );
      assert.equal(succeeded.stderr, 'offload jobs retry: 1 of 1 could not be retried.\n');
      assert.equal((await t.broker.get(s.done.id))?.status, 'succeeded');

      const unknown = '0b5c1b52-4f3a-4d47-9a49-5f2f0e1f6b0e';
      const mixed = await cli('retry', s.running.id, unknown, '--json');
      assert.equal(mixed.code, 1);
      assert.deepEqual(jsonOf(mixed), {
        results: [
          { id: s.running.id, outcome: 'not-retryable', status: 'running' },
          { id: unknown, outcome: 'not-found', status: null },
        ],
      });
    });

    it('purges finished jobs older than the duration; 0 purges every finished job', async () => {
      const s = await seedMix(t.broker);
      const recent = await cli('purge', '--older-than', '1h');
      assert.equal(recent.code, 0, recent.stderr);
      assert.match(recent.stdout, /^Purged 0 jobs that finished before \S+Z \(older than 1h\)\.\n$/);
      assert.equal((await t.broker.get(s.done.id))?.status, 'succeeded', 'a job that just finished stays');

      await sleep(20);
      const recentJson = jsonOf(await cli('purge', '--older-than', '10ms', '--json'));
      assert.equal(recentJson.purged, 2);
      assert.match(recentJson.before, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.equal(await t.broker.get(s.done.id), null);
      assert.equal(await t.broker.get(s.failed.id), null);

      const late = await enqueue(t.broker, 'late', {});
      await finish(t.broker, late, { result: 1 });
      const all = await cli('purge', '--older-than', '0');
      assert.equal(all.code, 0, all.stderr);
      assert.equal(all.stdout, 'Purged 1 finished job (every finished job).\n');
      assert.equal(await t.broker.get(late.id), null);
      // Queued and running jobs are never purged.
      assert.equal((await t.broker.get(s.queued.id))?.status, 'queued');
      assert.equal((await t.broker.get(s.running.id))?.status, 'running');
      assert.deepEqual(jsonOf(await cli('purge', '--older-than', '0', '--json')), {
        purged: 0,
        before: null,
      });
    });
  });
}

// --- the brokers -----------------------------------------------------------------------------

let redis: RedisServer;
jobsCli(
  'Redis',
  {
    before: async () => {
      redis = await startRedisServer();
    },
    after: () => redis.stop(),
  },
  async () => {
    // A private server: the URL cannot carry a key prefix, so each test empties the whole server.
    await redisCli(redis.port, 'flushall');
    const broker = new RedisBroker({ connection: redis.url });
    return { url: redis.url, broker, cleanup: () => broker.close() };
  },
);

const admin = new pg.Pool({ connectionString: PG_URL, max: 2 });
after(() => admin.end());
let schemas = 0;
jobsCli('PostgreSQL', {}, async () => {
  const schema = `offload_cli_${process.pid}_${++schemas}`;
  const broker = new PostgresBroker({ connection: PG_URL, schema });
  await broker.counts(); // creates the schema, so the CLI finds it through ?schema=
  return {
    url: `${PG_URL}?schema=${schema}`,
    broker,
    cleanup: async () => {
      await broker.close();
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    },
  };
});

jobsCli('SQLite', {}, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'offload-cli-jobs-'));
  const broker = new SqliteBroker({ path: join(dir, 'offload.db') });
  return {
    url: `sqlite:${join(dir, 'offload.db')}`,
    broker,
    cleanup: async () => {
      await broker.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

describe('PostgresBroker fromUrl ?schema=', () => {
  it('reads the schema from the URL and keeps it out of the connection string', async () => {
    const schema = `offload_cli_${process.pid}_url`;
    try {
      const shown = await runCli(['jobs', 'counts', '--json', '--broker', `${PG_URL}?schema=${schema}`]);
      assert.equal(shown.code, 0, shown.stderr);
      const { rows } = await admin.query('SELECT to_regclass($1) AS t', [`"${schema}".job`]);
      assert.equal(rows[0].t, `${schema}.job`);
      const bad = await runCli(['jobs', 'counts', '--broker', `${PG_URL}?schema=no-way`]);
      assert.equal(bad.code, 2, bad.stderr);
      assert.match(bad.stderr, /--broker: .*no-way/);
    } finally {
      await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    }
  });
});

// --- seeding ---------------------------------------------------------------------------------

async function enqueue(
  broker: Broker,
  task: string,
  payload: Json,
  owner: string | null = null,
  maxAttempts = 1,
) {
  return (await broker.enqueue({ task, payload, owner, maxAttempts })).job;
}

/** Claim `job` (the oldest queued job of its task) and end its run; returns the stored record. */
async function finish(
  broker: Broker,
  job: JobRecord,
  end: { result: Json } | { error: { message: string; code?: string } } | 'keep running',
  run?: (id: string, token: string) => Promise<void>,
): Promise<JobRecord> {
  const [lease] = await broker.claim({ tasks: [job.task], limit: 1, leaseMs: 60_000, workerId: 'test' });
  assert.equal(lease?.job.id, job.id, 'claimed the job meant');
  await run?.(job.id, lease.token);
  if (end !== 'keep running') {
    const ok =
      'result' in end
        ? await broker.complete(job.id, lease.token, end.result)
        : await broker.fail(job.id, lease.token, end.error);
    assert.ok(ok);
  }
  return (await broker.get(job.id))!;
}

/** One job in each of four states, created in this order: done, failed, queued, running. */
async function seedMix(broker: Broker) {
  const done = await finish(
    broker,
    await enqueue(broker, 'report', { month: '2024-04', ids: [1, 2] }, 'alice'),
    { result: { url: '/files/r.csv' } },
    async (id, token) => {
      assert.ok(await broker.log(id, token, 'started'));
      assert.ok(
        await broker.progress(id, token, { percent: 40, message: 'loading rows', data: { rows: 120 } }),
      );
      assert.ok(await broker.log(id, token, '120 rows read'));
    },
  );
  const failed = await finish(broker, await enqueue(broker, 'sync', { account: 7 }, 'bob'), {
    error: { message: 'the remote end said no', code: 'E_BOOM' },
  });
  const queued = await enqueue(broker, 'report', { month: '2024-05' }, 'bob', 3);
  const running = await finish(
    broker,
    await enqueue(broker, 'mail', { to: 'x@example.com' }),
    'keep running',
  );
  return { done, failed, queued, running };
}

/** Job ids in the order the table printed them. */
function idsIn(stdout: string): string[] {
  return [...stdout.matchAll(/^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\s/gm)].map(
    (m) => m[1]!,
  );
}

/** The broker's list order: createdAt, then id, descending. */
function newestFirst(jobs: JobRecord[]): string[] {
  return [...jobs]
    .sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0))
    .map((j) => j.id);
}
