import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryBroker } from '../../adapters/memory/memory.broker.js';
import type { EnqueueInput } from '../../lib/broker.js';
import { brokerConformance } from '../conformance/broker.conformance.js';

brokerConformance('MemoryBroker', () => new MemoryBroker());

const input = (over: Partial<EnqueueInput> = {}): EnqueueInput => ({
  task: 'alpha',
  payload: { n: 1 },
  owner: null,
  maxAttempts: 3,
  ...over,
});

describe('MemoryBroker', () => {
  it('keeps historyLimit events per job; history() beyond them is null', async () => {
    const broker = new MemoryBroker({ historyLimit: 5 });
    const { job } = await broker.enqueue(input());
    const [lease] = await broker.claim({ tasks: ['alpha'], limit: 1, leaseMs: 1000, workerId: 't' });
    for (let p = 1; p <= 8; p++) assert.ok(await broker.progress(job.id, lease!.token, { percent: p }));
    // seq 1 queued, 2 running, 3..10 progress: only 6..10 are kept.
    assert.equal((await broker.get(job.id))?.seq, 10);
    assert.equal(await broker.history(job.id, 0), null);
    assert.equal(await broker.history(job.id, 4), null);
    assert.deepEqual(
      (await broker.history(job.id, 5))?.map((e) => e.seq),
      [6, 7, 8, 9, 10],
    );
    assert.deepEqual(
      (await broker.history(job.id, 8))?.map((e) => e.seq),
      [9, 10],
    );
    assert.deepEqual(await broker.history(job.id, 10), []);
    await broker.close();
  });

  it('keeps the last logLimit log lines', async () => {
    const broker = new MemoryBroker({ logLimit: 3 });
    const { job } = await broker.enqueue(input());
    const [lease] = await broker.claim({ tasks: ['alpha'], limit: 1, leaseMs: 1000, workerId: 't' });
    for (const line of ['a', 'b', 'c', 'd', 'e']) assert.ok(await broker.log(job.id, lease!.token, line));
    assert.deepEqual((await broker.get(job.id))?.logs, ['c', 'd', 'e']);
    await broker.close();
  });

  it('stores a copy of what it is given: later changes by the caller do not leak in', async () => {
    // Networked brokers serialize; the memory broker must not keep the caller's objects.
    const broker = new MemoryBroker();
    const payload = { ids: [1, 2] };
    const { job } = await broker.enqueue(input({ payload }));
    payload.ids.push(3);
    const [lease] = await broker.claim({ tasks: ['alpha'], limit: 1, leaseMs: 1000, workerId: 't' });
    const progress = { percent: 10, data: { step: 'a' } };
    assert.ok(await broker.progress(job.id, lease!.token, progress));
    progress.data.step = 'forged';
    const result = { rows: [1] };
    assert.ok(await broker.complete(job.id, lease!.token, result));
    result.rows.push(2);
    const stored = await broker.get(job.id);
    assert.deepEqual(stored?.payload, { ids: [1, 2] });
    assert.deepEqual(stored?.progress, { percent: 10, data: { step: 'a' } });
    assert.deepEqual(stored?.result, { rows: [1] });
    await broker.close();
  });

  it('does not wake anyone after close()', async () => {
    const broker = new MemoryBroker();
    let calls = 0;
    broker.onWork(() => calls++);
    await broker.enqueue(input({ runAt: Date.now() + 30 }));
    const seen = calls;
    await broker.close();
    await new Promise((resolve) => setTimeout(resolve, 80));
    assert.equal(calls, seen);
  });
});
