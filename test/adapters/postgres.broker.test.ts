import { after } from 'node:test';
import pg from 'pg';
import { PostgresBroker } from '../../adapters/postgres/postgres.broker.js';
import { brokerConformance } from '../conformance/broker.conformance.js';

/** The machine's PostgreSQL; each broker gets its own schema, dropped after the test. */
export const PG_URL = process.env.OFFLOAD_TEST_PG ?? 'postgres://postgres@127.0.0.1:5432/test';
const admin = new pg.Pool({ connectionString: PG_URL, max: 2 });
after(() => admin.end());

let n = 0;
const schemaOf = () => `offload_test_${process.pid}_${++n}`;

brokerConformance('PostgresBroker', () => new PostgresBroker({ connection: PG_URL, schema: schemaOf() }), {
  cleanup: async (broker) => {
    await admin.query(`DROP SCHEMA IF EXISTS "${(broker as PostgresBroker).schema}" CASCADE`);
  },
});
