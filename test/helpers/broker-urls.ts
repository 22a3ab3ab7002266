// Broker URLs of the machine's services (or a temporary SQLite file), unique to one test, with
// what removes the test's data afterwards: a Redis key prefix, a PostgreSQL schema, a folder.
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { Pool } from 'pg';
import { deletePrefix } from './redis-server.js';

/** A broker URL for one test, and how to remove what the test left behind. */
export interface TestBrokerUrl {
  url: string;
  cleanup(): Promise<void>;
}

const REDIS = process.env.OFFLOAD_TEST_REDIS ?? 'redis://127.0.0.1:6379';
const POSTGRES = 'postgres://postgres@127.0.0.1:5432/test';

/** `sqlite:` on a file in a new temporary folder (`offload-<tag>-…`). */
export function sqliteUrl(tag: string): TestBrokerUrl {
  const dir = mkdtempSync(join(tmpdir(), `offload-${tag}-`));
  return {
    url: `sqlite:${join(dir, 'jobs.db')}`,
    cleanup: async () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** The machine's Redis under a fresh key prefix (`offload-<tag>-…`). */
export function redisUrl(tag: string): TestBrokerUrl {
  const prefix = `offload-${tag}-${randomUUID().slice(0, 8)}`;
  return {
    url: `${REDIS}?prefix=${prefix}`,
    async cleanup() {
      const client = new Redis(REDIS);
      try {
        await deletePrefix(client, prefix);
      } finally {
        client.disconnect();
      }
    },
  };
}

/** The machine's PostgreSQL in a fresh schema (`offload_<tag>_…`). */
export function postgresUrl(tag: string): TestBrokerUrl {
  const schema = `offload_${tag}_${randomUUID().slice(0, 8)}`;
  return {
    url: `${POSTGRES}?schema=${schema}`,
    async cleanup() {
      const pool = new Pool({ connectionString: POSTGRES, max: 1 });
      try {
        await pool.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
      } finally {
        await pool.end();
      }
    },
  };
}
