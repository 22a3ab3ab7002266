import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, describe, it } from 'node:test';
import { Redis } from 'ioredis';
import { fromUrl, RedisBroker } from '../../adapters/redis/redis.broker.js';
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

describe('fromUrl (BROKER_URL=redis://…)', () => {
  it('takes prefix and queue from the URL, and hands ioredis the rest', async () => {
    const prefix = `offload-url-${randomUUID().slice(0, 8)}`;
    const broker = fromUrl(`${REDIS_URL}/0?prefix=${prefix}&queue=mail`);
    try {
      const { job } = await broker.enqueue({
        task: 't',
        payload: {},
        owner: null,
        maxAttempts: 1,
        expireAt: null,
        timeoutMs: null,
        idempotencyKey: null,
        payloadHash: null,
        maxQueued: null,
      });
      const keys = await admin.keys(`${prefix}:*`);
      assert.ok(keys.length > 0, 'keys under the prefix');
      assert.ok(
        keys.every((k) => k.startsWith(`${prefix}:{mail}:`)),
        keys.join(', '),
      );
      assert.equal((await broker.get(job.id))?.task, 't');
    } finally {
      await broker.close();
      await deletePrefix(prefix);
    }
  });

  it('refuses an empty prefix or a URL it cannot parse', () => {
    assert.throws(() => fromUrl(`${REDIS_URL}?prefix=`), /prefix parameter is empty/);
    assert.throws(
      () => fromUrl('redis://user:secret@[bad'),
      (err: Error) => {
        assert.match(err.message, /Not a valid Redis URL/);
        assert.doesNotMatch(err.message, /secret/);
        return true;
      },
    );
  });
});
