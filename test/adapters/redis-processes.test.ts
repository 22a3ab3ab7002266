// RedisBroker across processes: web-only processes serve SSE for jobs a worker process runs, and
// worker processes SIGKILLed repeatedly lose no job (test/helpers/process-scenarios.ts). The
// fixtures are test/fixtures/redis-{web,worker}.fixture.ts; the test's own keys (gates, run counts)
// live under `<prefix>:t:`, next to the broker's, all deleted after each describe block.
import { randomUUID } from 'node:crypto';
import { after } from 'node:test';
import { Redis } from 'ioredis';
import { RedisBroker } from '../../adapters/redis/redis.broker.js';
import { FixtureProcess, killAllFixtures } from '../fixtures/fixture-process.js';
import { describeCrossProcessSse, describeWorkerCrashes } from '../helpers/process-scenarios.js';
import { deletePrefix as deleteKeys } from '../helpers/redis-server.js';

/** The machine's Redis; each describe block gets its own prefix, deleted after it. */
const REDIS_URL = process.env.OFFLOAD_TEST_REDIS ?? 'redis://127.0.0.1:6379';

const admin = new Redis(REDIS_URL);
after(() => admin.quit());
after(killAllFixtures);

const deletePrefix = (prefix: string) => deleteKeys(admin, prefix);

function startWeb(prefix: string, name: string): FixtureProcess {
  return new FixtureProcess(name, 'redis-web.fixture.js', { REDIS_URL, PREFIX: prefix, SSE_RETRY: '100' });
}

function startWorker(prefix: string, name: string, env: Record<string, string>): FixtureProcess {
  return new FixtureProcess(name, 'redis-worker.fixture.js', { REDIS_URL, PREFIX: prefix, ...env });
}

describeCrossProcessSse('Redis', () => {
  const prefix = `offload-proc-${randomUUID().slice(0, 8)}`;
  return {
    startWeb: (name) => startWeb(prefix, name),
    startWorker: (name, env) => startWorker(prefix, name, env),
    // The task polls this key.
    releaseUpTo: async (id, step) => {
      await admin.set(`${prefix}:t:gate:${id}`, step);
    },
    endMs: 10_000,
    after: () => deletePrefix(prefix),
  };
});

describeWorkerCrashes('Redis', 'redis', () => {
  const prefix = `offload-crash-${randomUUID().slice(0, 8)}`;
  return {
    broker: new RedisBroker({ connection: REDIS_URL, prefix }),
    startWorker: (name, env) => startWorker(prefix, name, env),
    // The fixture's task HINCRBYs its job's field first thing.
    runs: async () => {
      const runs = await admin.hgetall(`${prefix}:t:runs`);
      return new Map(Object.entries(runs).map(([id, n]) => [id, Number(n)]));
    },
    after: () => deletePrefix(prefix),
  };
});
