// PostgresBroker across processes: web-only processes serve SSE for jobs a worker process runs,
// and worker processes SIGKILLed repeatedly lose no job (test/helpers/process-scenarios.ts). The
// fixtures are test/fixtures/postgres-{web,worker}.fixture.ts; the test's own tables (gates, run
// counts) live in a schema of their own next to the broker's, both dropped after each describe block.
import { randomUUID } from 'node:crypto';
import { after } from 'node:test';
import pg from 'pg';
import { PostgresBroker } from '../../adapters/postgres/postgres.broker.js';
import { FixtureProcess, killAllFixtures } from '../fixtures/fixture-process.js';
import { describeCrossProcessSse, describeWorkerCrashes } from '../helpers/process-scenarios.js';

/** The machine's PostgreSQL; each describe block gets its own schema, dropped after it. */
const PG_URL = process.env.OFFLOAD_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';

const admin = new pg.Pool({ connectionString: PG_URL, max: 2 });
after(() => admin.end());
after(killAllFixtures);

/** The test's tables, in `<schema>_t`: what the fixtures' tasks wait on and count. */
async function createTestTables(schema: string): Promise<void> {
  await admin.query(
    `CREATE SCHEMA "${schema}_t";
     CREATE TABLE "${schema}_t".gate (job_id uuid PRIMARY KEY, step integer NOT NULL);
     CREATE TABLE "${schema}_t".runs (job_id uuid PRIMARY KEY, n integer NOT NULL)`,
  );
}

async function dropSchemas(schema: string): Promise<void> {
  await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE; DROP SCHEMA IF EXISTS "${schema}_t" CASCADE`);
}

function startWeb(schema: string, name: string): FixtureProcess {
  return new FixtureProcess(name, 'postgres-web.fixture.js', { PG_URL, SCHEMA: schema, SSE_RETRY: '100' });
}

function startWorker(schema: string, name: string, env: Record<string, string>): FixtureProcess {
  return new FixtureProcess(name, 'postgres-worker.fixture.js', { PG_URL, SCHEMA: schema, ...env });
}

describeCrossProcessSse('PostgreSQL', () => {
  const schema = `offload_proc_${randomUUID().slice(0, 8)}`;
  return {
    before: () => createTestTables(schema),
    startWeb: (name) => startWeb(schema, name),
    startWorker: (name, env) => startWorker(schema, name, env),
    // The task polls its gate row.
    releaseUpTo: async (id, step) => {
      await admin.query(
        `INSERT INTO "${schema}_t".gate (job_id, step) VALUES ($1, $2)
         ON CONFLICT (job_id) DO UPDATE SET step = excluded.step`,
        [id, step],
      );
    },
    endMs: 10_000,
    after: () => dropSchemas(schema),
  };
});

describeWorkerCrashes('PostgreSQL', 'postgres', () => {
  const schema = `offload_crash_${randomUUID().slice(0, 8)}`;
  return {
    broker: new PostgresBroker({ connection: PG_URL, schema }),
    before: () => createTestTables(schema),
    startWorker: (name, env) => startWorker(schema, name, env),
    runs: async () => {
      const { rows } = await admin.query<{ job_id: string; n: number }>(
        `SELECT job_id, n FROM "${schema}_t".runs`,
      );
      return new Map(rows.map((r) => [r.job_id, r.n]));
    },
    after: () => dropSchemas(schema),
  };
});
