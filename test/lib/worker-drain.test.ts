// Worker.drain: when a worker started for a drain (`offload worker --until-empty | --max-jobs |
// --idle-exit`) is done. The broker is the real memory broker; where a test needs a slow or
// failing call, a subclass delays or fails that one call and leaves the rest to the broker.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';
import { MemoryBroker } from '../../adapters/memory/memory.broker.js';
import type { ClaimRequest, Lease, Settlement, SettleResult } from '../../lib/broker.js';
import { silentLogger } from '../../lib/logger.js';
import { Offload } from '../../lib/offload.js';
import type { DrainOptions, DrainReason } from '../../lib/worker.js';
import { sleep } from '../helpers/eventually.js';

const apps: Offload[] = [];
afterEach(async () => {
  await Promise.all(apps.splice(0).map((app) => app.close()));
});

/** A core whose worker is not started yet, with a `work` task that takes `ms` from its payload. */
function create(broker: MemoryBroker = new MemoryBroker(), concurrency = 2): Offload {
  const app = new Offload(
    {
      broker,
      logger: silentLogger,
      worker: { concurrency, leaseTime: 300, pollInterval: 50, gracePeriod: 200 },
    },
    { autoStart: false },
  );
  app.task('work', async ({ ms }: { ms: number }) => {
    await sleep(ms);
    return 'done';
  });
  apps.push(app);
  return app;
}

function drain(app: Offload, options: DrainOptions): Promise<DrainReason> {
  const draining = app.worker!.drain(options);
  app.start();
  return draining;
}

describe('Worker.drain', () => {
  it('untilEmpty: ends once every due job ran; a delayed one stays queued', async () => {
    const app = create();
    for (let i = 0; i < 5; i++) await app.enqueue('work', { ms: 5 });
    await app.enqueue('work', { ms: 5 }, { delay: '1h' });
    assert.equal(await drain(app, { untilEmpty: true }), 'empty');
    const counts = await app.broker.counts();
    assert.equal(counts.succeeded, 5);
    assert.equal(counts.queued, 1);
    assert.equal(counts.running, 0);
  });

  it('untilEmpty: a settle that fails does not call the queue empty', async () => {
    class FailingOnce extends MemoryBroker {
      failed = false;
      override async settle(runs: readonly Settlement[], next: ClaimRequest): Promise<SettleResult> {
        if (!this.failed) {
          this.failed = true;
          throw new Error('connection reset');
        }
        return super.settle(runs, next);
      }
    }
    const broker = new FailingOnce();
    const app = create(broker, 1);
    for (let i = 0; i < 4; i++) await app.enqueue('work', { ms: 1 });
    const reason = await drain(app, { untilEmpty: true });
    assert.equal(reason, 'empty');
    assert.ok(broker.failed);
    // The run whose outcome was lost is still running until its lease (300 ms) expires: the drain
    // ended only once nothing else was due, and the other three ran.
    const counts = await broker.counts();
    assert.equal(counts.succeeded + counts.running, 4, JSON.stringify(counts));
    assert.equal(counts.queued, 0, JSON.stringify(counts));
  });

  it('untilEmpty with notBefore: a claim sent before the gate opened cannot call the queue empty', async () => {
    let releaseFirst!: () => void;
    const firstHeld = new Promise<void>((r) => {
      releaseFirst = r;
    });
    class SlowFirstClaim extends MemoryBroker {
      calls = 0;
      override async claim(request: ClaimRequest): Promise<Lease[]> {
        const first = this.calls++ === 0;
        const leases = await super.claim(request);
        if (first) await firstHeld;
        return leases;
      }
    }
    const broker = new SlowFirstClaim();
    const app = create(broker);
    // What the start enqueues (a schedule's missed tick): after the first claim read the queue.
    const startUp = (async () => {
      while (broker.calls === 0) await sleep(1);
      await app.enqueue('work', { ms: 1 });
    })();
    const draining = app.worker!.drain({ untilEmpty: true, notBefore: startUp });
    app.start();
    await startUp;
    await sleep(20);
    releaseFirst();
    assert.equal(await draining, 'empty');
    const counts = await broker.counts();
    assert.equal(counts.succeeded, 1, JSON.stringify(counts));
    assert.equal(counts.queued, 0);
  });

  it('maxJobs: claims that many, and no more once the drain has ended', async () => {
    const app = create(new MemoryBroker(), 3);
    for (let i = 0; i < 7; i++) await app.enqueue('work', { ms: 5 });
    assert.equal(await drain(app, { maxJobs: 2 }), 'max-jobs');
    await app.enqueue('work', { ms: 1 });
    await sleep(200);
    assert.equal(app.worker!.claimedCount, 2);
    assert.equal((await app.broker.counts()).succeeded, 2);
  });

  it('idleMs: counts from the first answer, so a slow first claim still runs what is due', async () => {
    class SlowClaims extends MemoryBroker {
      override async claim(request: ClaimRequest): Promise<Lease[]> {
        await sleep(150);
        return super.claim(request);
      }
    }
    const app = create(new SlowClaims());
    await app.enqueue('work', { ms: 1 });
    const t0 = Date.now();
    assert.equal(await drain(app, { idleMs: 50 }), 'idle');
    assert.equal((await app.broker.counts()).succeeded, 1);
    assert.ok(Date.now() - t0 >= 150 + 50, 'idle only after the claim answered and the job ran');
  });

  it('idleMs: a job starting resets the idle time', async () => {
    const app = create();
    const t0 = Date.now();
    const draining = drain(app, { idleMs: 300 });
    await sleep(200);
    await app.enqueue('work', { ms: 50 });
    assert.equal(await draining, 'idle');
    assert.equal((await app.broker.counts()).succeeded, 1);
    assert.ok(Date.now() - t0 >= 200 + 50 + 300 - 20, `${Date.now() - t0} ms`);
  });
});
