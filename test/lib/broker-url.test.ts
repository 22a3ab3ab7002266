import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryBroker } from '../../adapters/memory/memory.broker.js';
import { RedisBroker } from '../../adapters/redis/redis.broker.js';
import { redact, requireDriver, resolveBroker } from '../../lib/broker-url.js';
import { ConfigError, MissingDriverError } from '../../lib/errors.js';

describe('resolveBroker', () => {
  it('passes a broker object through', () => {
    const broker = new MemoryBroker();
    assert.equal(resolveBroker(broker), broker);
  });

  it('builds a MemoryBroker from memory:', () => {
    assert.ok(resolveBroker('memory:') instanceof MemoryBroker);
    assert.ok(resolveBroker('MEMORY:') instanceof MemoryBroker);
  });

  it('builds a RedisBroker from redis://, with the database and options of the URL', async () => {
    const broker = resolveBroker('redis://127.0.0.1:6379/3');
    try {
      assert.ok(broker instanceof RedisBroker);
      const { db, port } = (broker as RedisBroker).client.options as { db: number; port: number };
      assert.equal(db, 3);
      assert.equal(port, 6379);
      assert.deepEqual(await broker.counts(), {
        queued: 0,
        running: 0,
        succeeded: 0,
        failed: 0,
        canceled: 0,
      });
    } finally {
      await broker.close();
    }
  });

  it('rejects an unknown scheme with the list of known ones, without leaking credentials', () => {
    assert.throws(
      () => resolveBroker('amqp://user:secret@host/x'),
      (err: Error) => {
        assert.ok(err instanceof ConfigError);
        assert.match(err.message, /memory:, redis:\/\/, postgres:\/\/ or sqlite:path/);
        assert.doesNotMatch(err.message, /secret/);
        return true;
      },
    );
    assert.throws(() => resolveBroker('nonsense'), ConfigError);
  });
});

describe('requireDriver', () => {
  it('names the package to install when an optional driver is missing', () => {
    assert.throws(
      () => requireDriver('offload-test-driver-that-is-not-installed', 'test broker'),
      (err: Error) => {
        assert.ok(err instanceof MissingDriverError);
        assert.equal((err as MissingDriverError).code, 'ERR_OFFLOAD_MISSING_DRIVER');
        assert.match(err.message, /npm install offload-test-driver-that-is-not-installed/);
        assert.match(err.message, /test broker/);
        return true;
      },
    );
  });

  it('loads an installed package', () => {
    const mod = requireDriver<{ validate: unknown }>('class-validator', 'validation');
    assert.equal(typeof mod.validate, 'function');
  });
});

describe('redact', () => {
  it('hides the credentials of a URL, in its authority and its query', () => {
    assert.equal(redact('postgres://app:s3cret@db:5432/app'), 'postgres://***@db:5432/app');
    assert.equal(
      redact('postgres://db/app?user=app&password=s3cret&schema=jobs'),
      'postgres://db/app?user=app&password=***&schema=jobs',
    );
    assert.equal(redact('rediss://cache:6380?Token=abc#x'), 'rediss://cache:6380?Token=***#x');
    assert.equal(redact('sqlite:./offload.db'), 'sqlite:./offload.db');
  });
});
