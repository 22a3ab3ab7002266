import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, beforeEach, describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { fromUrl, SqliteBroker } from '../../adapters/sqlite/index.js';
import type { Broker, EnqueueInput } from '../../lib/broker.js';
import { resolveBroker } from '../../lib/broker-url.js';
import { ConfigError } from '../../lib/errors.js';
import type { JobEvent } from '../../lib/job.js';
import { brokerConformance } from '../conformance/broker.conformance.js';
import { eventually, sleep } from '../helpers/eventually.js';

/** Every temp dir this file made: each test's file lives in one, removed after its test. */
const dirs = new Set<string>();
const brokerDirs = new WeakMap<Broker, string>();

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'offload-sqlite-'));
  dirs.add(dir);
  return dir;
}

function removeDir(dir: string): void {
  rmSync(dir, { recursive: true, force: true });
  dirs.delete(dir);
}

after(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

brokerConformance(
  'SqliteBroker',
  () => {
    const dir = tempDir();
    const broker = new SqliteBroker({ path: join(dir, 'offload.db') });
    brokerDirs.set(broker, dir);
    return broker;
  },
  {
    cleanup: async (broker) => {
      // Closed here so the file can go; the suite's own close() after this is a no-op.
      await broker.close();
      removeDir(brokerDirs.get(broker)!);
    },
  },
);

const input = (over: Partial<EnqueueInput> = {}): EnqueueInput => ({
  task: 'alpha',
  payload: { n: 1 },
  owner: null,
  maxAttempts: 3,
  ...over,
});

const claimRequest = (leaseMs = 10_000) => ({ tasks: ['alpha'], limit: 1, leaseMs, workerId: 't' });

describe('SqliteBroker', () => {
  let dir: string;
  let path: string;
  const open: { close(): unknown }[] = [];

  beforeEach(() => {
    dir = tempDir();
    path = join(dir, 'offload.db');
  });

  afterEach(async () => {
    for (const item of open.splice(0).reverse()) await item.close();
    removeDir(dir);
  });

  const broker = (options: Omit<ConstructorParameters<typeof SqliteBroker>[0], 'path'> = {}) => {
    const b = new SqliteBroker({ path, ...options });
    open.push(b);
    return b;
  };

  /** A plain connection to the broker's file, to look at what it stored. */
  const inspect = () => {
    const db = new Database(path);
    open.push(db);
    return db;
  };

  it('keeps historyLimit events per job; history() beyond them is null', async () => {
    const b = broker({ historyLimit: 5 });
    const { job } = await b.enqueue(input());
    const [lease] = await b.claim(claimRequest());
    for (let p = 1; p <= 8; p++) assert.ok(await b.progress(job.id, lease!.token, { percent: p }));
    // seq 1 queued, 2 running, 3..10 progress: only 6..10 are kept.
    assert.equal((await b.get(job.id))?.seq, 10);
    assert.equal(await b.history(job.id, 0), null);
    assert.equal(await b.history(job.id, 4), null);
    assert.deepEqual(
      (await b.history(job.id, 5))?.map((e) => e.seq),
      [6, 7, 8, 9, 10],
    );
    assert.deepEqual(await b.history(job.id, 10), []);
    const rows = inspect().prepare('SELECT count(*) FROM events WHERE job_id = ?').pluck().get(job.id);
    assert.equal(rows, 5, 'the table holds the cap, not every event');
  });

  it('keeps the last logLimit log lines', async () => {
    const b = broker({ logLimit: 3 });
    const { job } = await b.enqueue(input());
    const [lease] = await b.claim(claimRequest());
    for (const line of ['a', 'b', 'c', 'd', 'e']) assert.ok(await b.log(job.id, lease!.token, line));
    assert.deepEqual((await b.get(job.id))?.logs, ['c', 'd', 'e']);
  });

  it('purge deletes the events rows of purged jobs', async () => {
    const b = broker();
    const { job } = await b.enqueue(input());
    const { job: kept } = await b.enqueue(input());
    const [lease] = await b.claim(claimRequest());
    assert.ok(await b.complete(job.id, lease!.token, null));
    assert.equal(await b.purge(Date.now() + 1), 1);
    const db = inspect();
    assert.equal(db.prepare('SELECT count(*) FROM events WHERE job_id = ?').pluck().get(job.id), 0);
    assert.equal(db.prepare('SELECT count(*) FROM events WHERE job_id = ?').pluck().get(kept.id), 1);
  });

  it('opens the file in WAL mode with schema version 1, and opens it again as it is', async () => {
    const first = broker();
    const { job } = await first.enqueue(input({ payload: { kept: true } }));
    await first.close();
    const db = inspect();
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(db.pragma('user_version', { simple: true }), 1);
    const again = broker();
    assert.deepEqual((await again.get(job.id))?.payload, { kept: true });
    assert.equal((await again.counts()).queued, 1);
  });

  it('keeps jobs across a restart: an expired lease of the dead process is recovered and runs', async () => {
    const before = broker();
    const { job: running } = await before.enqueue(input({ payload: { i: 1 } }));
    const { job: queued } = await before.enqueue(input({ payload: { i: 2 } }));
    const [lease] = await before.claim(claimRequest(100));
    assert.equal(lease?.job.id, running.id);
    // The process "dies": the connection goes without a word to anyone.
    await before.close();

    const after = broker();
    assert.equal((await after.get(running.id))?.status, 'running');
    await eventually(async () => (await after.recover()) === 1, 'the dead lease to expire');
    const leases = await after.claim({ tasks: ['alpha'], limit: 5, leaseMs: 10_000, workerId: 't2' });
    assert.deepEqual(leases.map((l) => l.job.id).sort(), [running.id, queued.id].sort());
    assert.equal(leases.find((l) => l.job.id === running.id)?.job.attempts, 2);
    assert.equal(await after.complete(running.id, lease!.token, 'stale'), false, 'the dead run is refused');
  });

  describe('two connections to one file (as two processes have)', () => {
    it('deliver job events, wake-ups and cancels from one to the other', async () => {
      const web = broker({ pollInterval: 20 });
      const worker = broker({ pollInterval: 20 });
      const events: JobEvent[] = [];
      open.push({ close: await web.subscribe((e) => events.push(e)) });
      let woken = 0;
      const cancels: string[] = [];
      open.push({ close: worker.onWork(() => woken++) });
      open.push({ close: worker.onCancel((id) => cancels.push(id)) });

      const { job } = await web.enqueue(input());
      await eventually(() => woken > 0, 'the worker connection to be woken');
      const [lease] = await worker.claim(claimRequest());
      assert.equal(lease?.job.id, job.id);
      assert.ok(await worker.progress(job.id, lease!.token, { percent: 50 }));
      assert.equal((await web.cancel(job.id)).outcome, 'requested');
      await eventually(() => cancels.includes(job.id), 'the cancel to reach the worker connection');
      assert.ok(await worker.acknowledgeCancel(job.id, lease!.token));
      await eventually(() => events.some((e) => e.status === 'canceled'), 'the canceled event');
      assert.deepEqual(
        events.map((e) => [e.seq, e.type, e.status ?? e.progress?.percent]),
        [
          [1, 'status', 'queued'],
          [2, 'status', 'running'],
          [3, 'progress', 50],
          // The cancel request is not a client-visible change: the seq of the job as it was.
          [3, 'cancel', undefined],
          [4, 'status', 'canceled'],
        ],
      );
    });

    it('wake the other when a delayed job it did not enqueue comes due', async () => {
      const producer = broker({ pollInterval: 20 });
      const worker = broker({ pollInterval: 20 });
      const calls: number[] = [];
      open.push({ close: worker.onWork(() => calls.push(Date.now())) });
      const runAt = Date.now() + 300;
      await producer.enqueue(input({ runAt }));
      await eventually(() => calls.some((t) => t >= runAt - 20), 'a wake-up when the job is due', {
        timeoutMs: 3000,
      });
    });

    it('keep each job’s events in seq order when both write to it', async () => {
      // The web side's write (a cancel of a queued job) follows the worker side's writes it has
      // not yet polled: they are delivered first.
      const web = broker({ pollInterval: 10_000 });
      const other = broker();
      const events: JobEvent[] = [];
      open.push({ close: await web.subscribe((e) => events.push(e)) });
      const { job } = await other.enqueue(input());
      const [lease] = await other.claim(claimRequest());
      assert.ok(await other.release(job.id, lease!.token));
      assert.equal((await web.cancel(job.id)).outcome, 'canceled');
      assert.deepEqual(
        events.map((e) => [e.seq, e.status]),
        [
          [1, 'queued'],
          [2, 'running'],
          [3, 'queued'],
          [4, 'canceled'],
        ],
      );
    });
  });

  it('stops looking for other connections’ commits when the last listener leaves, and at close', async () => {
    const b = broker({ pollInterval: 10 });
    const writer = broker();
    const off = b.onWork(() => {});
    off();
    let woken = 0;
    b.onWork(() => woken++);
    await b.close();
    await writer.enqueue(input());
    await sleep(60);
    assert.equal(woken, 0);
  });

  it('wakes no one early for a job due beyond what a timer can hold (24.8 days)', async () => {
    const b = broker();
    let calls = 0;
    open.push({ close: b.onWork(() => calls++) });
    await b.enqueue(input({ runAt: Date.now() + 30 * 86_400_000 }));
    assert.deepEqual(await b.claim(claimRequest()), []);
    const seen = calls;
    await sleep(50);
    assert.equal(calls, seen);
  });

  it('leaves a connection the app passed open at close, and in WAL mode', async () => {
    const db = new Database(path);
    open.push(db);
    const b = new SqliteBroker({ database: db });
    await b.enqueue(input());
    await b.close();
    assert.equal(db.open, true);
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(db.prepare('SELECT count(*) FROM jobs').pluck().get(), 1);
  });

  describe('refuses a file it cannot use, with a ConfigError naming the file and the cause', () => {
    const refused = (fn: () => unknown, ...patterns: RegExp[]) =>
      assert.throws(fn, (err: unknown) => {
        assert.ok(err instanceof ConfigError, String(err));
        assert.equal(err.code, 'ERR_OFFLOAD_CONFIG');
        for (const pattern of patterns) assert.match(err.message, pattern);
        return true;
      });

    it('an in-memory or temporary database (no WAL, nothing shared, nothing kept)', () => {
      refused(() => new SqliteBroker({ path: ':memory:' }), /":memory:"/, /memory: broker/);
      refused(() => fromUrl('sqlite::memory:'), /":memory:"/);
      refused(() => new SqliteBroker({ path: '' }), /temporary/);
      refused(() => fromUrl('sqlite:'), /names no file/);
      // Passed in as a connection, it is the journal mode that tells.
      const memory = new Database(':memory:');
      open.push(memory);
      refused(() => new SqliteBroker({ database: memory }), /":memory:"/, /journal_mode stays "memory"/);
    });

    it('a connection whose journal cannot become WAL (read-only)', () => {
      new Database(path).close();
      const readonly = new Database(path, { readonly: true });
      open.push(readonly);
      refused(
        () => new SqliteBroker({ database: readonly }),
        new RegExp(path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')),
        /readonly|read-only/i,
      );
    });

    it('a file another connection holds locked (busy timeout, then SQLITE_BUSY)', () => {
      const holder = new Database(path);
      open.push(holder);
      holder.pragma('locking_mode = EXCLUSIVE');
      holder.exec('CREATE TABLE held (x); INSERT INTO held VALUES (1)');
      const started = Date.now();
      refused(() => new SqliteBroker({ path, busyTimeout: 100 }), /offload\.db/, /locked/, /SQLITE_BUSY/);
      assert.ok(Date.now() - started >= 90, 'it waited for the lock first');
    });

    it('a directory that does not exist', () => {
      refused(() => new SqliteBroker({ path: join(dir, 'missing', 'x.db') }), /missing/, /directory/);
    });

    it('a file of another program, or of a newer offload', () => {
      const other = new Database(path);
      other.exec('CREATE TABLE users (id INTEGER)');
      other.close();
      refused(() => new SqliteBroker({ path }), /not an offload database/, /users/);
      rmSync(path);
      broker();
      const newer = new Database(path);
      newer.pragma('user_version = 99');
      newer.close();
      refused(() => new SqliteBroker({ path }), /version 99/);
    });

    it('unknown or out-of-range options', () => {
      refused(() => new SqliteBroker({ path, historyLimt: 5 } as never), /historyLimt/);
      refused(() => new SqliteBroker({ path, pollInterval: 0 }), /pollInterval/);
      refused(() => new SqliteBroker({}), /path/);
    });
  });

  it('is what BROKER_URL=sqlite:<path> resolves to', async () => {
    for (const url of [`sqlite:${path}`, `sqlite://${path}`]) {
      const b = resolveBroker(url);
      open.push(b);
      assert.ok(b instanceof SqliteBroker);
      assert.equal(b.db.name, path);
    }
  });
});
