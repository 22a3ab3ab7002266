import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { toMs } from '../../lib/duration.js';
import { ConfigError } from '../../lib/errors.js';
import { parseOptions } from '../../lib/options.js';

describe('parseOptions', () => {
  it('fills every default once', () => {
    const c = parseOptions();
    assert.equal(c.broker, 'memory:');
    assert.equal(c.basePath, '/jobs');
    assert.equal(c.owner, null);
    assert.equal(c.worker.concurrency, 4);
    assert.equal(c.worker.leaseMs, 30_000);
    assert.equal(c.resultTtlMs, 86_400_000);
    assert.equal(c.maxPayloadBytes, 102_400);
    assert.equal(c.maxQueued, null);
    assert.equal(c.maxWaitMs, 30_000);
    assert.equal(c.brokerTimeoutMs, 2000);
    assert.equal(c.heartbeatMs, 15_000);
    assert.equal(c.exposeStack, false);
  });

  it('names an unknown key, at the top level and in worker options', () => {
    assert.throws(() => parseOptions({ brokr: 'memory:' } as never), /Unknown offload option "brokr"/);
    assert.throws(
      () => parseOptions({ worker: { concurency: 2 } } as never),
      /Unknown worker option "concurency"/,
    );
  });

  it('checks ranges and types', () => {
    assert.throws(() => parseOptions({ worker: { concurrency: -1 } }), ConfigError);
    assert.throws(() => parseOptions({ worker: { concurrency: 1.5 } }), ConfigError);
    assert.throws(() => parseOptions({ maxPayloadBytes: 0 }), ConfigError);
    assert.throws(() => parseOptions({ maxQueued: 0 }), ConfigError);
    assert.throws(() => parseOptions({ basePath: 'jobs' }), /basePath/);
    assert.throws(() => parseOptions({ basePath: '/jobs/' }), /basePath/);
    assert.throws(() => parseOptions({ basePath: '/' }), /not be "\/" alone/);
    assert.throws(() => parseOptions({ owner: 'x' as never }), /owner must be a function/);
    assert.throws(() => parseOptions({ worker: { leaseTime: 10 } }), /leaseTime/);
    assert.throws(() => parseOptions({ resultTtl: '3 weeks' }), /resultTtl/);
  });

  it('accepts durations as strings and worker: false as no worker', () => {
    const c = parseOptions({ resultTtl: '2h', maxWait: '5s', worker: false, basePath: '/api/jobs' });
    assert.equal(c.resultTtlMs, 7_200_000);
    assert.equal(c.maxWaitMs, 5000);
    assert.equal(c.worker.concurrency, 0);
    assert.equal(c.basePath, '/api/jobs');
  });
});

describe('toMs', () => {
  it('parses numbers and unit strings', () => {
    assert.equal(toMs(250, 'x'), 250);
    assert.equal(toMs('500ms', 'x'), 500);
    assert.equal(toMs('1.5s', 'x'), 1500);
    assert.equal(toMs('10m', 'x'), 600_000);
    assert.equal(toMs('2h', 'x'), 7_200_000);
    assert.equal(toMs('1d', 'x'), 86_400_000);
  });
  it('rejects negatives, NaN and unknown units, naming the option', () => {
    assert.throws(() => toMs(-1, 'timeout'), /timeout/);
    assert.throws(() => toMs(Number.NaN, 'timeout'), /timeout/);
    assert.throws(() => toMs('10 years', 'ageLimit'), /ageLimit/);
    assert.throws(() => toMs('', 'x'), ConfigError);
  });
});
