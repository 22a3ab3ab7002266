import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, afterEach, beforeEach, describe, it } from 'node:test';
import pg from 'pg';
import { latestVersion, loadMigrations, migrationSql } from '../../adapters/postgres/migrations.js';
import { PostgresBroker } from '../../adapters/postgres/postgres.broker.js';
import { ConfigError } from '../../lib/errors.js';
import { isJobId, type JobEvent } from '../../lib/job.js';
import { brokerConformance } from '../conformance/broker.conformance.js';
import { eventually } from '../helpers/eventually.js';

/** The machine's PostgreSQL; each broker gets its own schema, dropped after the test. */
const PG_URL = process.env.OFFLOAD_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';
const admin = new pg.Pool({ connectionString: PG_URL, max: 2 });
after(() => admin.end());

let n = 0;
const schemaOf = () => `offload_test_${process.pid}_${++n}`;

brokerConformance('PostgresBroker', () => new PostgresBroker({ connection: PG_URL, schema: schemaOf() }), {
  cleanup: async (broker) => {
    await admin.query(`DROP SCHEMA IF EXISTS "${(broker as PostgresBroker).schema}" CASCADE`);
  },
});

describe('PostgresBroker: schema and migrations', () => {
  const schemas: string[] = [];
  const fresh = () => {
    const schema = schemaOf();
    schemas.push(schema);
    return schema;
  };
  after(async () => {
    for (const schema of schemas) await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  });

  it('brokers starting together on a new schema apply each migration once', async () => {
    const schema = fresh();
    const brokers = Array.from({ length: 4 }, () => new PostgresBroker({ connection: PG_URL, schema }));
    try {
      // Each first call migrates; they race for the advisory lock.
      await Promise.all(brokers.map((b) => b.counts()));
      const { rows } = await admin.query(`SELECT version, name FROM "${schema}".migration ORDER BY version`);
      assert.deepEqual(
        rows.map((r) => r.version),
        loadMigrations().map((m) => m.version),
      );
      assert.equal(latestVersion(), rows.at(-1).version);
      // Usable from every one of them.
      const { job } = await brokers[0]!.enqueue({ task: 't', payload: 1, owner: null, maxAttempts: 1 });
      assert.equal((await brokers[3]!.get(job.id))?.status, 'queued');
    } finally {
      await Promise.all(brokers.map((b) => b.close()));
    }
  });

  it('prints the SQL instead of applying it; migrate: false checks the version', async () => {
    const schema = fresh();
    const refusing = new PostgresBroker({ connection: PG_URL, schema, migrate: false });
    try {
      await assert.rejects(refusing.counts(), (err: Error) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, new RegExp(`"${schema}" is at version 0`));
        assert.match(err.message, /migrationSql/);
        return true;
      });
      const { rows } = await admin.query('SELECT to_regclass($1) AS t', [`"${schema}".job`]);
      assert.equal(rows[0].t, null, 'migrate: false created nothing');

      const sql = migrationSql({ schema });
      assert.match(sql, new RegExp(`CREATE TABLE "${schema}"\\.job`));
      assert.doesNotMatch(sql, /\{\{/, 'no placeholder left');
      await admin.query(sql);
      assert.deepEqual(await refusing.counts(), {
        queued: 0,
        running: 0,
        succeeded: 0,
        failed: 0,
        canceled: 0,
      });
      assert.equal(migrationSql({ schema, fromVersion: latestVersion() }).includes('BEGIN;'), false);
    } finally {
      await refusing.close();
    }
  });

  it('upgrades a schema at version 1: a lease taken before the upgrade is settled after it', async () => {
    const schema = fresh();
    // Version 1 as a database that ran an earlier offload holds it: only migration 1 applied.
    const all = migrationSql({ schema });
    await admin.query(all.slice(0, all.indexOf('-- migration 2:')));
    await admin.query(
      `SELECT "${schema}".enqueue(gen_random_uuid(), 't', '1', NULL, 1, NULL, NULL, NULL, NULL, NULL, NULL, NULL)`,
    );
    const old = await admin.query(`SELECT "${schema}".claim('{t}', 1, 60000, 100) AS r`);
    const lease = JSON.parse(old.rows[0].r).leases[0] as { id: string; token: number };
    assert.ok(lease, 'claimed through the version 1 functions');

    const broker = new PostgresBroker({ connection: PG_URL, schema });
    try {
      const { accepted } = await broker.settle(
        [
          {
            jobId: lease.id,
            token: String(lease.token),
            outcome: { type: 'complete', result: { ok: true } },
          },
        ],
        { tasks: ['t'], limit: 0, leaseMs: 1000, workerId: 'test' },
      );
      assert.deepEqual(accepted, [true]);
      const { rows } = await admin.query(`SELECT version FROM "${schema}".migration ORDER BY version`);
      assert.deepEqual(
        rows.map((r) => r.version),
        loadMigrations().map((m) => m.version),
      );
      const job = await broker.get(lease.id);
      assert.equal(job?.status, 'succeeded');
      assert.deepEqual(job?.result, { ok: true });
      assert.deepEqual(
        (await broker.history(lease.id, 0))?.map((e) => [e.seq, e.status]),
        [
          [1, 'queued'],
          [2, 'running'],
          [3, 'succeeded'],
        ],
      );
    } finally {
      await broker.close();
    }
  });

  it('refuses a schema name that is not a plain identifier', () => {
    for (const schema of ['', 'a-b', 'x"; DROP TABLE y; --', '1abc', 'a'.repeat(49)]) {
      assert.throws(() => new PostgresBroker({ connection: PG_URL, schema }), ConfigError, schema);
    }
  });
});

describe('PostgresBroker: job ids, events and history', () => {
  let broker: PostgresBroker;
  let schema: string;
  beforeEach(() => {
    schema = schemaOf();
    broker = new PostgresBroker({ connection: PG_URL, schema });
  });
  afterEach(async () => {
    await broker.close();
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  });

  it("makes version 7 ids that begin with the job's createdAt; lists page through them newest first", async () => {
    const jobs = [];
    // Ten at a time: several jobs share a millisecond, where the id alone orders them.
    for (let i = 0; i < 6; i++) {
      const batch = await Promise.all(
        Array.from({ length: 10 }, (_, k) =>
          broker.enqueue({ task: 't', payload: i * 10 + k, owner: k % 2 ? 'alice' : null, maxAttempts: 1 }),
        ),
      );
      jobs.push(...batch.map((r) => r.job));
    }
    for (const job of jobs) {
      assert.ok(isJobId(job.id), job.id);
      assert.equal(job.id[14], '7', `${job.id} is version 7`);
      assert.equal(
        parseInt(job.id.replace('-', '').slice(0, 12), 16),
        job.createdAt,
        'begins with createdAt',
      );
    }
    const newestFirst = [...jobs].sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : -1));
    const page = async (owner: string | null | undefined) => {
      const seen = [];
      let cursor: string | undefined;
      do {
        const got = await broker.list({ owner, cursor, limit: 7 });
        seen.push(...got.jobs.map((j) => j.id));
        cursor = got.nextCursor ?? undefined;
      } while (cursor);
      return seen;
    };
    assert.deepEqual(
      await page(undefined),
      newestFirst.map((j) => j.id),
    );
    assert.deepEqual(
      await page('alice'),
      newestFirst.filter((j) => j.owner === 'alice').map((j) => j.id),
    );
    assert.deepEqual(
      await page(null),
      newestFirst.filter((j) => j.owner === null).map((j) => j.id),
    );
  });

  it('purges finished jobs by their ids, and the random ids of jobs enqueued before migration 003', async () => {
    const { job: recent } = await broker.enqueue({ task: 't', payload: 1, owner: null, maxAttempts: 1 });
    // Jobs as an earlier offload stored them: random (version 4) ids, finished an hour ago.
    const old = Array.from({ length: 3 }, () => randomUUID());
    const hourAgo = Date.now() - 3_600_000;
    for (const id of old) {
      await admin.query(
        `INSERT INTO "${schema}".job (id, task, payload, status, max_attempts, run_at, ord, created_at, finished_at, attempts)
         VALUES ($1, 't', '1', 'succeeded', 1, $2, 0, $2, $2, 1)`,
        [id, hourAgo - 1000],
      );
    }
    const [lease] = await broker.claim({ tasks: ['t'], limit: 1, leaseMs: 5000, workerId: 'test' });
    assert.ok(await broker.complete(recent.id, lease!.token, null));
    // Only the ones that finished before the cutoff go: the recent job stays.
    assert.equal(await broker.purge(Date.now() - 60_000), old.length);
    for (const id of old) assert.equal(await broker.get(id), null);
    assert.equal((await broker.get(recent.id))?.status, 'succeeded');
    assert.equal(await broker.purge(Date.now() + 1000), 1);
    assert.equal(await broker.get(recent.id), null);
  });

  it('isJobId takes canonical version 4 and 7 UUIDs only', () => {
    assert.ok(isJobId(randomUUID()));
    assert.ok(isJobId('019a8b7c-1d2e-7f30-8a4b-5c6d7e8f9a0b'));
    for (const id of [
      '019a8b7c-1d2e-1f30-8a4b-5c6d7e8f9a0b', // version 1
      '019a8b7c-1d2e-8f30-8a4b-5c6d7e8f9a0b', // version 8
      '019a8b7c-1d2e-7f30-4a4b-5c6d7e8f9a0b', // not the RFC variant
      '019A8B7C-1D2E-7F30-8A4B-5C6D7E8F9A0B', // not canonical (upper case)
      '019a8b7c1d2e7f308a4b5c6d7e8f9a0b',
    ]) {
      assert.equal(isJobId(id), false, id);
    }
  });
  it('delivers an event too large for a NOTIFY, read back from the history', async () => {
    const events: JobEvent[] = [];
    const off = await broker.subscribe((e) => events.push(e));
    const { job } = await broker.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 1 });
    const [lease] = await broker.claim({ tasks: ['t'], limit: 1, leaseMs: 5000, workerId: 'test' });
    const big = { rows: 'x'.repeat(20_000) };
    assert.ok(await broker.complete(job.id, lease!.token, big));
    await eventually(
      () => events.some((e) => e.jobId === job.id && e.status === 'succeeded'),
      'the big event',
    );
    const terminal = events.find((e) => e.jobId === job.id && e.status === 'succeeded')!;
    assert.deepEqual(terminal.result, big);
    assert.deepEqual(
      events.filter((e) => e.jobId === job.id).map((e) => e.seq),
      [1, 2, 3],
    );
    off();
  });

  it('sends the events of a settle too large for one NOTIFY in several, each job in seq order', async () => {
    const events: JobEvent[] = [];
    const off = await broker.subscribe((e) => events.push(e));
    const request = { tasks: ['t'], limit: 40, leaseMs: 5000, workerId: 'test' };
    for (let i = 0; i < 80; i++) await broker.enqueue({ task: 't', payload: i, owner: null, maxAttempts: 1 });
    const first = await broker.claim(request);
    assert.equal(first.length, 40);
    // 40 results of about 500 bytes: some 20 kB of events, more than three NOTIFY payloads.
    const result = (i: number) => ({ i, text: 'r'.repeat(500) });
    const { accepted, leases } = await broker.settle(
      first.map((l, i) => ({
        jobId: l.job.id,
        token: l.token,
        outcome: { type: 'complete', result: result(i) },
      })),
      request,
    );
    assert.deepEqual(
      accepted,
      first.map(() => true),
    );
    assert.equal(leases.length, 40, 'and claimed the next 40');
    await eventually(
      () =>
        events.filter((e) => e.status === 'succeeded').length === 40 &&
        events.filter((e) => e.status === 'running').length === 80,
      'every event of the settle',
    );
    first.forEach((l, i) => {
      const mine = events.filter((e) => e.jobId === l.job.id);
      assert.deepEqual(
        mine.map((e) => e.seq),
        [1, 2, 3],
        'in seq order',
      );
      assert.deepEqual(mine.at(-1)?.result, result(i));
    });
    off();
  });

  it('keeps historyLimit events per job, the settle trimming too', async () => {
    const small = new PostgresBroker({ connection: PG_URL, schema, historyLimit: 5 });
    try {
      const { job } = await small.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 1 });
      const [lease] = await small.claim({ tasks: ['t'], limit: 1, leaseMs: 5000, workerId: 'test' });
      for (let p = 1; p <= 8; p++) assert.ok(await small.progress(job.id, lease!.token, { percent: p }));
      assert.ok(await small.complete(job.id, lease!.token, 'done'));
      // seq 1 queued, 2 running, 3..10 progress, 11 succeeded: only 7..11 are kept.
      assert.equal((await small.get(job.id))?.seq, 11);
      assert.equal(await small.history(job.id, 5), null);
      assert.deepEqual(
        (await small.history(job.id, 6))?.map((e) => e.seq),
        [7, 8, 9, 10, 11],
      );
      const { rows } = await admin.query(
        `SELECT count(*)::int AS n FROM "${schema}".event WHERE job_id = $1`,
        [job.id],
      );
      // Progress 7..10: the final status (11) is read back from the job, the cap covers it too.
      assert.equal(rows[0].n, 4, 'the table holds the cap, not every event');
    } finally {
      await small.close();
    }
  });

  it('keeps no history row for a job that ran once, and reads its events back from the job', async () => {
    const request = { tasks: ['t'], limit: 1, leaseMs: 5000, workerId: 'test' };
    const { job } = await broker.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 1 });
    const [lease] = await broker.claim(request);
    assert.ok(await broker.complete(job.id, lease!.token, { rows: 3 }));
    const { rows } = await admin.query(`SELECT count(*)::int AS n FROM "${schema}".event`);
    assert.equal(rows[0].n, 0, 'enqueue, first claim and final status write no history row');
    const done = (await broker.get(job.id))!;
    assert.deepEqual(await broker.history(job.id, 0), [
      { jobId: job.id, seq: 1, at: job.createdAt, type: 'status', status: 'queued', attempts: 0 },
      { jobId: job.id, seq: 2, at: done.startedAt, type: 'status', status: 'running', attempts: 1 },
      {
        jobId: job.id,
        seq: 3,
        at: done.finishedAt,
        type: 'status',
        status: 'succeeded',
        attempts: 1,
        result: { rows: 3 },
        error: null,
      },
    ]);
  });

  it('writes down the events the job row would forget: a first claim claimed again, a final status retried', async () => {
    const request = { tasks: ['t'], limit: 1, leaseMs: 5000, workerId: 'test' };
    const { job } = await broker.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 3 });
    const [first] = await broker.claim(request);
    const firstStart = (await broker.get(job.id))!.startedAt;
    assert.ok(await broker.release(job.id, first!.token));
    await new Promise((r) => setTimeout(r, 5));
    const [second] = await broker.claim(request);
    assert.ok(await broker.fail(job.id, second!.token, { message: 'no' }));
    const failed = (await broker.get(job.id))!;
    assert.equal(failed.status, 'failed');
    assert.notEqual(failed.startedAt, firstStart);
    const before = await broker.history(job.id, 0);
    assert.deepEqual(
      before?.map((e) => [e.seq, e.status, e.attempts]),
      [
        [1, 'queued', 0],
        [2, 'running', 1],
        [3, 'queued', 0],
        [4, 'running', 1],
        [5, 'failed', 1],
      ],
    );
    assert.equal(before?.[1]?.at, firstStart, 'the first claim keeps its own time');
    assert.ok(await broker.retry(job.id));
    const after = await broker.history(job.id, 0);
    assert.deepEqual(after?.slice(0, 5), before, 'a retry keeps the history it replaces');
    assert.deepEqual(
      after?.slice(5).map((e) => [e.seq, e.status]),
      [[6, 'queued']],
    );
  });

  it('announces a job after its enqueue, and drops an announcement that comes after a later event', async () => {
    const events: JobEvent[] = [];
    const off = await broker.subscribe((e) => events.push(e));
    const { job } = await broker.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 1 });
    // enqueue() resolves once the job was announced: its queued event is on its way.
    await eventually(() => events.some((e) => e.jobId === job.id), 'the queued event');
    assert.deepEqual(
      events.map((e) => [e.jobId, e.seq, e.status]),
      [[job.id, 1, 'queued']],
    );
    // A worker in another process claimed a job before its announcement went out: the running
    // event (seq 2) arrives first, and the late queued event (seq 1) is not delivered after it.
    const other = randomUUID();
    const channel = `${schema}:events`;
    const note = (seq: number, status: string) =>
      JSON.stringify({ jobId: other, seq, at: Date.now(), type: 'status', status, attempts: seq - 1 });
    await admin.query('SELECT pg_notify($1, $2)', [channel, note(2, 'running')]);
    await admin.query('SELECT pg_notify($1, $2)', [channel, note(1, 'queued')]);
    await admin.query('SELECT pg_notify($1, $2)', [channel, note(3, 'succeeded')]);
    await eventually(() => events.some((e) => e.jobId === other && e.seq === 3), 'the last event');
    assert.deepEqual(
      events.filter((e) => e.jobId === other).map((e) => e.seq),
      [2, 3],
    );
    off();
  });

  it('listens again after its connection is cut, and wakes the workers then', async () => {
    let wakes = 0;
    broker.onWork(() => wakes++);
    const events: JobEvent[] = [];
    await broker.subscribe((e) => events.push(e));
    // The LISTEN connection following events: its row in the follower table (a live connection).
    const listenerPid = async () =>
      (
        await admin.query(
          `SELECT pid FROM "${schema}".follower WHERE pid IN (SELECT pid FROM pg_stat_activity)`,
        )
      ).rows[0]?.pid as number | undefined;
    const pid = await eventually(listenerPid, 'the LISTEN connection');
    await admin.query('SELECT pg_terminate_backend($1)', [pid]);
    const before = wakes;
    await eventually(
      async () => (await listenerPid()) !== undefined && (await listenerPid()) !== pid,
      'a new LISTEN',
      {
        timeoutMs: 5000,
      },
    );
    await eventually(() => wakes > before, 'a wake-up after reconnecting');
    // Events flow again, from another connection (another broker: no local shortcut).
    const other = new PostgresBroker({ connection: PG_URL, schema });
    try {
      const { job } = await other.enqueue({ task: 't', payload: 1, owner: null, maxAttempts: 1 });
      await eventually(() => events.some((e) => e.jobId === job.id), 'an event after reconnecting');
      // The new connection follows events again: a settle elsewhere sends them to it.
      const [lease] = await other.claim({ tasks: ['t'], limit: 1, leaseMs: 5000, workerId: 'test' });
      assert.ok(await other.complete(job.id, lease!.token, 'ok'));
      await eventually(
        () => events.some((e) => e.jobId === job.id && e.status === 'succeeded'),
        'a settle event after reconnecting',
      );
    } finally {
      await other.close();
    }
  });
});

describe('PostgresBroker: what a claim reads', () => {
  let broker: PostgresBroker;
  let schema: string;
  beforeEach(async () => {
    schema = schemaOf();
    broker = new PostgresBroker({ connection: PG_URL, schema });
    await broker.counts(); // creates the schema
  });
  afterEach(async () => {
    await broker.close();
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  });

  /** `count` jobs of task t through enqueue(), due after `delayMs`, with an age limit `expireInMs` away. */
  const backlog = (count: number, delayMs: number | null, expireInMs: number | null) =>
    admin.query(
      `SELECT "${schema}".enqueue(NULL, 't', '{}', NULL, 1,
         CASE WHEN $2::bigint IS NULL THEN NULL ELSE "${schema}".now_ms() + $2::bigint END,
         CASE WHEN $3::bigint IS NULL THEN NULL ELSE "${schema}".now_ms() + $3::bigint END,
         NULL, NULL, NULL, NULL, NULL)
       FROM generate_series(1, $1::integer)`,
      [count, delayMs, expireInMs],
    );

  /**
   * Claim `limit` jobs in a transaction that is rolled back, and count the job rows the claim
   * fetched through an index: pg_stat_xact_user_tables holds the transaction's own counts.
   */
  async function rowsFetchedByClaim(limit: number): Promise<{ fetched: number; leased: number }> {
    const client = await admin.connect();
    const fetched = async () =>
      Number(
        (
          await client.query(
            `SELECT idx_tup_fetch AS n FROM pg_stat_xact_user_tables WHERE relid = $1::regclass`,
            [`"${schema}".job`],
          )
        ).rows[0]?.n ?? 0,
      );
    try {
      await client.query('BEGIN');
      const before = await fetched();
      const { rows } = await client.query(`SELECT "${schema}".claim('{t}', $1, 60000, 100) AS r`, [limit]);
      const leased = (JSON.parse(rows[0].r) as { leases: unknown[] }).leases.length;
      return { fetched: (await fetched()) - before, leased };
    } finally {
      await client.query('ROLLBACK');
      client.release();
    }
  }

  it('reads the jobs it takes, not the backlog behind them', async () => {
    // Due jobs without an age limit: the age-limit probe once read every one of them (migration 4),
    // once the table had statistics (autovacuum analyzes it after a few hundred changes).
    await backlog(3000, null, null);
    await admin.query(`ANALYZE "${schema}".job`);
    let read = await rowsFetchedByClaim(5);
    assert.equal(read.leased, 5);
    assert.ok(read.fetched <= 20, `a claim of 5 from 3,000 due jobs fetched ${read.fetched} rows`);

    // Due jobs with age limits an hour away: the probe reads the earliest limit alone.
    await backlog(3000, null, 3_600_000);
    read = await rowsFetchedByClaim(5);
    assert.equal(read.leased, 5);
    assert.ok(read.fetched <= 20, `with 3,000 age limits ahead it fetched ${read.fetched} rows`);
  });

  it('finds when the next delayed job is due by reading the first of them', async () => {
    // Without statistics (a burst of delayed jobs) min(run_at) was planned as a scan of them all.
    await backlog(3000, 3_600_000, null);
    const read = await rowsFetchedByClaim(5);
    assert.equal(read.leased, 0);
    assert.ok(read.fetched <= 5, `an empty claim with 3,000 delayed jobs fetched ${read.fetched} rows`);
    const [due] = (await admin.query(`SELECT min(run_at)::float8 AS due FROM "${schema}".job`)).rows as {
      due: number;
    }[];
    assert.deepEqual(
      JSON.parse((await admin.query(`SELECT "${schema}".claim('{t}', 5, 60000, 100) AS r`)).rows[0].r)
        .nextDue,
      due!.due,
    );
  });

  /** A job of `task` whose age limit has passed (50 ms after its enqueue, 100 ms ago). */
  const expiredJob = async (task: string) => {
    const { job } = await broker.enqueue({
      task,
      payload: null,
      owner: null,
      maxAttempts: 1,
      expireAt: Date.now() + 50,
    });
    await new Promise((r) => setTimeout(r, 100));
    return job.id;
  };
  const assertExpired = async (id: string) => {
    const expired = await broker.get(id);
    assert.equal(expired?.status, 'failed');
    assert.equal(expired?.error?.code, 'ERR_OFFLOAD_EXPIRED');
  };

  it('fails a due job of any task past its age limit, not only of the tasks claimed', async () => {
    await broker.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 1 });
    const id = await expiredJob('unserved');
    const leases = await broker.claim({ tasks: ['t'], limit: 5, leaseMs: 5000, workerId: 'test' });
    assert.equal(leases.length, 1);
    await assertExpired(id);
  });

  it('hands out each lease as the record get() reads: JSON columns embedded, text escaped', async () => {
    const request = { tasks: ['t "quoted"\\'], limit: 10, leaseMs: 5000, workerId: 'test' };
    const payloads = [
      'just a string',
      null,
      0,
      [1, 'two', { three: 3 }],
      { text: 'line\nbreak "quotes" \\ back\u0001slash é 😀', nested: { deep: [true, false, null] } },
    ];
    for (const [i, payload] of payloads.entries()) {
      await broker.enqueue({
        task: request.tasks[0]!,
        payload,
        owner: i % 2 ? 'owner "a"\n\\b' : null,
        maxAttempts: 3,
        timeoutMs: i % 2 ? 1234 : null,
        expireAt: i === 4 ? Date.now() + 3_600_000 : null,
        idempotencyKey: i === 3 ? 'key "k"\t' : null,
        payloadHash: i === 3 ? 'hash\\' : null,
      });
    }
    // A job claimed again after a failed attempt carries its progress, error and logs.
    const first = await broker.claim({ ...request, limit: 1 });
    const again = first[0]!.job.id;
    assert.ok(await broker.progress(again, first[0]!.token, { percent: 40, message: 'half "way"' }));
    assert.ok(await broker.log(again, first[0]!.token, 'a line with "quotes"'));
    const error = { message: 'first "try"\nfailed', code: 'E_TRY' };
    assert.ok(await broker.fail(again, first[0]!.token, error, Date.now()));
    const leases = await broker.claim(request);
    assert.equal(leases.length, payloads.length);
    for (const lease of leases) assert.deepEqual(lease.job, await broker.get(lease.job.id));
    assert.deepEqual(
      leases.map((l) => l.job.payload),
      [...payloads.slice(1), payloads[0]],
      'in queue order (the released job back at its end), each payload as enqueued',
    );
    const retried = leases.find((l) => l.job.id === again)!.job;
    assert.deepEqual(retried.progress, { percent: 40, message: 'half "way"' });
    assert.deepEqual(retried.logs, ['a line with "quotes"']);
    assert.deepEqual(retried.error, error);
    assert.equal(retried.attempts, 2);
  });

  it('fails a due job past its age limit behind a backlog without limits, and still claims the rest', async () => {
    await backlog(2000, null, null);
    const id = await expiredJob('t');
    const leases = await broker.claim({ tasks: ['t'], limit: 10, leaseMs: 5000, workerId: 'test' });
    assert.equal(leases.length, 10);
    assert.ok(!leases.some((l) => l.job.id === id));
    await assertExpired(id);
  });
});

describe('PostgresBroker: status events only while a process follows them', () => {
  let broker: PostgresBroker;
  let schema: string;
  let raw: pg.Client;
  /** What reaches a connection that LISTENs on the events channel without following. */
  let heard: JobEvent[];
  const request = { tasks: ['t'], limit: 1, leaseMs: 5000, workerId: 'test' };
  beforeEach(async () => {
    schema = schemaOf();
    broker = new PostgresBroker({ connection: PG_URL, schema });
    await broker.counts(); // creates the schema
    heard = [];
    raw = new pg.Client({ connectionString: PG_URL });
    await raw.connect();
    raw.on('notification', (msg) => heard.push(...(JSON.parse(msg.payload!) as JobEvent[])));
    await raw.query(`LISTEN "${schema}:events"`);
  });
  afterEach(async () => {
    await raw.end();
    await broker.close();
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  });
  const followers = async () =>
    (await admin.query(`SELECT pid FROM "${schema}".follower ORDER BY pid`)).rows.map((r) => r.pid as number);
  const runOnce = async (b: PostgresBroker) => {
    const { job } = await b.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 1 });
    const [lease] = await b.claim(request);
    assert.equal(lease?.job.id, job.id);
    assert.ok(await b.complete(job.id, lease.token, 'ok'));
    return job.id;
  };

  it('sends no claim or settle events while nothing follows, and sends them once a process does', async () => {
    const unheard = await runOnce(broker);
    assert.deepEqual(await followers(), []);

    const follower = new PostgresBroker({ connection: PG_URL, schema });
    try {
      const followed: JobEvent[] = [];
      await follower.subscribe((e) => followed.push(e));
      assert.equal((await followers()).length, 1, 'the follower connection is recorded');
      const heardOf = await runOnce(broker);
      await eventually(
        () => followed.some((e) => e.jobId === heardOf && e.status === 'succeeded'),
        'the follower hears',
      );
      await eventually(
        () => heard.some((e) => e.jobId === heardOf && e.status === 'succeeded'),
        'the channel carries it',
      );
      assert.deepEqual(
        heard.filter((e) => e.jobId === heardOf).map((e) => e.status),
        ['queued', 'running', 'succeeded'],
      );
      // Before anyone followed: the enqueue's announcement only, no claim's or settle's event.
      assert.deepEqual(
        heard.filter((e) => e.jobId === unheard).map((e) => e.status),
        ['queued'],
      );
      // Their history is whole all the same, read back from the jobs.
      assert.deepEqual(
        (await broker.history(unheard, 0))?.map((e) => e.status),
        ['queued', 'running', 'succeeded'],
      );
    } finally {
      await follower.close();
    }
    assert.deepEqual(await followers(), [], 'closing the broker stops following');
  });

  it('keeps the history rows of a requeued run while nothing follows', async () => {
    const { job } = await broker.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 3 });
    const [first] = await broker.claim(request);
    assert.ok(await broker.fail(job.id, first!.token, { message: 'again' }, Date.now()));
    const [second] = await broker.claim(request);
    assert.ok(await broker.complete(job.id, second!.token, 'ok'));
    assert.deepEqual(
      (await broker.history(job.id, 0))?.map((e) => [e.seq, e.status]),
      [
        [1, 'queued'],
        [2, 'running'],
        [3, 'queued'],
        [4, 'running'],
        [5, 'succeeded'],
      ],
    );
  });

  it('starts following only once the settles in flight committed', async () => {
    await broker.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 1 });
    // A claim in a transaction still open: it holds the follow lock shared.
    const inFlight = await admin.connect();
    let following = false;
    const follower = new PostgresBroker({ connection: PG_URL, schema });
    try {
      await inFlight.query('BEGIN');
      const { rows } = await inFlight.query(`SELECT "${schema}".claim('{t}', 1, 60000, 100) AS r`);
      const lease = JSON.parse(rows[0].r).leases[0] as { id: string; token: number };
      const followed: JobEvent[] = [];
      const subscribed = follower
        .subscribe((e) => followed.push(e))
        .then(() => {
          following = true;
        });
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(following, false, 'follow() waits for the open settle');
      await inFlight.query('COMMIT');
      await subscribed;
      // The claim committed before following began: a read now sees it.
      assert.equal((await follower.get(lease.id))?.status, 'running');
      assert.ok(await broker.complete(lease.id, String(lease.token), 'ok'));
      await eventually(
        () => followed.some((e) => e.jobId === lease.id && e.status === 'succeeded'),
        'the completion',
      );
    } finally {
      await inFlight.query('ROLLBACK').catch(() => {});
      inFlight.release();
      await follower.close();
    }
  });

  it('gives up following after a second when a settle in flight is stuck, and lets the others through', async () => {
    await broker.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 1 });
    await broker.enqueue({ task: 't', payload: null, owner: null, maxAttempts: 1 });
    // A settle that stays open (as one waiting on a row would): it holds the follow lock shared.
    const stuck = await admin.connect();
    const follower = new PostgresBroker({ connection: PG_URL, schema });
    try {
      await stuck.query('BEGIN');
      await stuck.query(`SELECT "${schema}".claim('{t}', 1, 60000, 100)`);
      let following = false;
      const subscribed = follower
        .subscribe(() => {})
        .then(() => {
          following = true;
        });
      await new Promise((r) => setTimeout(r, 100));
      // This claim queues behind the waiting follow(), until follow() gives up.
      const t0 = Date.now();
      const leases = await broker.claim(request);
      assert.equal(leases.length, 1);
      const waited = Date.now() - t0;
      assert.ok(waited < 2000, `a claim waited ${waited} ms behind a follow() that could not start`);
      assert.equal(following, false);
      await stuck.query('COMMIT');
      await subscribed; // a later attempt, once the stuck settle ended
      assert.equal(following, true);
      assert.equal((await followers()).length, 1);
    } finally {
      await stuck.query('ROLLBACK').catch(() => {});
      stuck.release();
      await follower.close();
    }
  });

  it('drops the rows of connections that are gone when a process starts following', async () => {
    // A pid no connection has, and a live pid whose connection started later (the pid reused).
    await admin.query(
      `INSERT INTO "${schema}".follower (pid, backend_start)
       VALUES (2147483000, now()), (pg_backend_pid(), '2000-01-01')`,
    );
    const follower = new PostgresBroker({ connection: PG_URL, schema });
    try {
      await follower.subscribe(() => {});
      const pids = await followers();
      assert.equal(pids.length, 1);
      assert.notEqual(pids[0], 2147483000);
    } finally {
      await follower.close();
    }
  });
});
