import { randomUUID } from 'node:crypto';
import { after } from 'node:test';
import { Redis } from 'ioredis';
import { RedisBroker } from '../../adapters/redis/redis.broker.js';
import { brokerConformance } from '../conformance/broker.conformance.js';
import { deletePrefix as deleteKeys } from '../helpers/redis-server.js';

/** The machine's Redis; each broker gets its own prefix, deleted after the test. */
const REDIS_URL = process.env.OFFLOAD_TEST_REDIS ?? 'redis://127.0.0.1:6379';
const admin = new Redis(REDIS_URL);
after(() => admin.quit());

const deletePrefix = (prefix: string) => deleteKeys(admin, prefix);

const prefixes = new WeakMap<RedisBroker, string>();

brokerConformance(
  'RedisBroker',
  () => {
    const prefix = `offload-test-${randomUUID().slice(0, 8)}`;
    const broker = new RedisBroker({ connection: REDIS_URL, prefix });
    prefixes.set(broker, prefix);
    return broker;
  },
  { cleanup: (broker) => deletePrefix(prefixes.get(broker as RedisBroker)!) },
);
