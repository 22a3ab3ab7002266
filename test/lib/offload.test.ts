import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { IsInt, Min } from 'class-validator';
import { MemoryBroker } from '../../adapters/memory/memory.broker.js';
import { UnknownTaskError, ValidationError } from '../../lib/errors.js';
import { silentLogger } from '../../lib/logger.js';
import { Offload } from '../../lib/offload.js';

class CountRequest {
  @IsInt()
  @Min(1)
  count!: number;
}

describe('Offload.enqueue', () => {
  const broker = new MemoryBroker();
  const core = new Offload({ broker, worker: false, logger: silentLogger });
  core.task('count', async (p: CountRequest) => p.count, { validate: CountRequest });
  after(() => core.close());

  it('validates like a submit: nothing persisted for an invalid payload', async () => {
    await assert.rejects(core.enqueue('count', { count: 0 }), (err: unknown) => {
      assert.ok(err instanceof ValidationError);
      assert.equal(err.errors[0]?.field, 'count');
      return true;
    });
    assert.equal((await broker.counts()).queued, 0);
  });

  it('persists what the DTO kept, with the owner and a delay', async () => {
    const before = Date.now();
    const { job, created } = await core.enqueue(
      'count',
      { count: 2, extra: 'x' },
      { owner: 'ann', delay: '1s' },
    );
    assert.equal(created, true);
    assert.deepEqual(job.payload, { count: 2 });
    assert.equal(job.owner, 'ann');
    assert.ok(job.runAt >= before + 1000);
  });

  it('refuses a task that is not registered', async () => {
    await assert.rejects(core.enqueue('nope', {}), UnknownTaskError);
  });

  it('does not close a broker it was given', async () => {
    const other = new Offload({ broker, worker: false, logger: silentLogger });
    await other.close();
    assert.equal(
      (await broker.enqueue({ task: 't', payload: 1, owner: null, maxAttempts: 1 })).created,
      true,
    );
  });
});
