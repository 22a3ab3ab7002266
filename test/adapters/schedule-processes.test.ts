// Schedules across processes, on every broker processes share: three processes run the same
// schedule (every second) on one Redis prefix, one PostgreSQL schema, one SQLite file, and each
// tick is one job, however many processes enqueued it. The fixture is
// test/fixtures/schedule.fixture.ts; each block removes what it made.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import pg from 'pg';
import { PostgresBroker } from '../../adapters/postgres/postgres.broker.js';
import { RedisBroker } from '../../adapters/redis/redis.broker.js';
import { SqliteBroker } from '../../adapters/sqlite/sqlite.broker.js';
import type { Broker } from '../../lib/broker.js';
import type { JobRecord } from '../../lib/job.js';
import { tickKey } from '../../lib/schedule.js';
import { FixtureProcess, killAllFixtures } from '../fixtures/fixture-process.js';
import { eventually } from '../helpers/eventually.js';
import { deletePrefix } from '../helpers/redis-server.js';

const REDIS_URL = process.env.OFFLOAD_TEST_REDIS ?? 'redis://127.0.0.1:6379';
const PG_URL = process.env.OFFLOAD_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';

after(killAllFixtures);

interface Setup {
  /** The fixture's env: BROKER and where its store is. */
  env: Record<string, string>;
  /** This process's broker on the same store, to read the jobs. */
  broker: Broker;
  /** After the processes are gone and the broker is closed: remove the store. */
  cleanUp(): Promise<void>;
}

interface TickReport {
  tick: string;
  created: boolean;
  jobId: string;
}

function reportsOf(proc: FixtureProcess): TickReport[] {
  return proc.lines.filter((l) => l.startsWith('tick ')).map((l) => JSON.parse(l.slice(5)));
}

const PROCESSES = 3;
/** Ticks every process must have enqueued, after all of them were ready. */
const SHARED_TICKS = 4;

function describeOneJobPerTick(name: string, makeSetup: () => Setup): void {
  describe(`${name}: ${PROCESSES} processes running one schedule`, () => {
    const setup = makeSetup();
    after(async () => {
      await setup.broker.close();
      await setup.cleanUp();
    });

    it('enqueue one job per tick, and every tick has its job', { timeout: 60_000 }, async () => {
      const procs = Array.from(
        { length: PROCESSES },
        (_, i) => new FixtureProcess(`${name} scheduler #${i + 1}`, 'schedule.fixture.js', setup.env),
      );
      const readyAt = Math.max(
        ...(await Promise.all(procs.map(async (p) => Number((await p.line(/^ready (\d+)$/))[1])))),
      );
      // The first whole second after the last process armed its timer: every one of them fires it.
      const firstShared = Math.floor(readyAt / 1000) * 1000 + 1000;
      const lastShared = firstShared + (SHARED_TICKS - 1) * 1000;
      await eventually(
        () => procs.every((p) => reportsOf(p).some((r) => Date.parse(r.tick) >= lastShared)),
        `every process to enqueue the tick of ${new Date(lastShared).toISOString()}`,
        { timeoutMs: 20_000, intervalMs: 50 },
      );
      for (const p of procs) assert.equal((await p.terminate()).code, 0, `${p.name} closed: ${p.stderr}`);
      for (const p of procs) {
        assert.ok(p.lines.includes('closed'), `${p.name} closed gracefully`);
        assert.equal(p.warnings.size, 0, `${p.name} logged no warning: ${p.stderr}`);
      }

      const jobs: JobRecord[] = (await setup.broker.list({ task: 'tick', limit: 1000 })).jobs;
      const reports = procs.map(reportsOf);

      // One job per tick: no key twice, and each job is a tick of the schedule.
      const byTick = new Map<string, JobRecord>();
      for (const job of jobs) {
        const tick = /^schedule every-second (\S+)$/.exec(job.idempotencyKey ?? '')?.[1];
        assert.ok(tick, `job ${job.id} has a tick key: ${job.idempotencyKey}`);
        assert.equal(byTick.has(tick), false, `one job for tick ${tick}`);
        assert.equal(job.idempotencyKey, tickKey('every-second', Date.parse(tick)));
        assert.equal(job.owner, null);
        assert.deepEqual(job.payload, { from: 'schedule' });
        byTick.set(tick, job);
      }

      // Every tick from the first to the last has its job: none fell between the processes.
      const ticks = [...byTick.keys()].map(Date.parse).sort((a, b) => a - b);
      assert.ok(ticks.length >= SHARED_TICKS, `at least ${SHARED_TICKS} ticks: ${ticks.length}`);
      for (let i = 1; i < ticks.length; i++) {
        assert.equal(
          ticks[i]! - ticks[i - 1]!,
          1000,
          `no tick missing after ${new Date(ticks[i - 1]!).toISOString()}`,
        );
      }

      // Each process's reports name the one job of their tick; a tick all processes enqueued was
      // created by exactly one of them.
      const all = reports.flat();
      for (const r of all) assert.equal(byTick.get(r.tick)?.id, r.jobId, `the job of tick ${r.tick}`);
      assert.deepEqual(
        new Set(all.filter((r) => r.created).map((r) => r.tick)),
        new Set(byTick.keys()),
        'each job was created by one report',
      );
      assert.equal(all.filter((r) => r.created).length, jobs.length);
      for (let tick = firstShared; tick <= lastShared; tick += 1000) {
        const iso = new Date(tick).toISOString();
        const seen = reports.map((rs) => rs.filter((r) => r.tick === iso));
        assert.deepEqual(
          seen.map((s) => s.length),
          Array(PROCESSES).fill(1),
          `every process enqueued tick ${iso} once`,
        );
        assert.equal(seen.flat().filter((r) => r.created).length, 1, `one process created tick ${iso}`);
      }
    });
  });
}

describeOneJobPerTick('Redis', () => {
  const prefix = `offload-sched-${randomUUID().slice(0, 8)}`;
  return {
    env: { BROKER: 'redis', REDIS_URL, PREFIX: prefix },
    broker: new RedisBroker({ connection: REDIS_URL, prefix }),
    async cleanUp() {
      const admin = new Redis(REDIS_URL);
      try {
        await deletePrefix(admin, prefix);
      } finally {
        await admin.quit();
      }
    },
  };
});

describeOneJobPerTick('PostgreSQL', () => {
  const schema = `offload_sched_${randomUUID().slice(0, 8)}`;
  return {
    env: { BROKER: 'postgres', PG_URL, SCHEMA: schema },
    broker: new PostgresBroker({ connection: PG_URL, schema }),
    async cleanUp() {
      const admin = new pg.Client({ connectionString: PG_URL });
      await admin.connect();
      try {
        await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      } finally {
        await admin.end();
      }
    },
  };
});

describeOneJobPerTick('SQLite', () => {
  const dir = mkdtempSync(join(tmpdir(), 'offload-sched-'));
  const path = join(dir, 'offload.db');
  return {
    env: { BROKER: 'sqlite', DB_PATH: path },
    broker: new SqliteBroker({ path }),
    async cleanUp() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
});
