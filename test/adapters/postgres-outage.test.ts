// PostgreSQL goes away under load and comes back: submits and status reads answer 503 fast (never
// hang), the worker resumes on its own (no restart of the app), and no job that got a 202 is
// lost. Own PostgreSQL server (test/helpers/postgres-server.ts), in two ways:
// - crashed: SIGKILL to the postmaster and every backend at once (connections refused at once),
//   then crash recovery on the same data dir and port;
// - frozen: SIGSTOP to all of them (the port still takes connections, nothing answers: a hung
//   host or a network partition), then SIGCONT. Only timeouts can answer the clients here.
//
// A 202 is sent only after the enqueue's COMMIT returned, i.e. after its WAL record was written
// to the kernel (synchronous_commit on): fsync=off loses that only with the machine, not with a
// killed server, so "no 202 lost" must hold every time.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PostgresBroker } from '../../adapters/postgres/postgres.broker.js';
import type { JobEvent, JobRecord } from '../../lib/job.js';
import type { Logger } from '../../lib/logger.js';
import { createServer, type TestServer } from '../helpers/create-server.js';
import { OutageLoad } from '../helpers/outage-load.js';
import { type PostgresServer, startPostgresServer } from '../helpers/postgres-server.js';

const JOB_MS = 20;
/**
 * The worker's backstop poll, long on purpose: a job submitted elsewhere after the outage that
 * starts well within it was woken by a NOTIFY, which proves the LISTEN connection is up.
 */
const POLL_MS = 10_000;
/**
 * The broker's LISTEN connection retries with a delay that doubles up to 5 s: give it that long
 * after a restart (and a second to connect) before asking that a NOTIFY reach the worker.
 */
const LISTEN_BACK_MS = 6000;
const SCHEMA = 'offload_outage';

/**
 * An Express app with offload on a PostgresBroker (in-process worker, task `work`) on its own
 * PostgreSQL server, the clients that load it (`OutageLoad`), and everything they and the broker saw.
 */
class OutageRig extends OutageLoad {
  db!: PostgresServer;
  broker!: PostgresBroker;
  server!: TestServer;
  /** Stands for another web process on the same database: enqueues, listens to nothing. */
  producer: PostgresBroker | undefined;
  /** Every job event the broker's LISTEN connection delivered. */
  readonly events: JobEvent[] = [];
  /** When it ended (the server answers again). */
  backAt = 0;
  poolWaitingPeak = 0;
  listenBackAt = 0;

  constructor() {
    super(
      {
        outage: 'the outage',
        began: 'the outage began',
        inFlight: 'when the outage began',
        down: 'PostgreSQL is away',
      },
      () => {
        this.poolWaitingPeak = Math.max(this.poolWaitingPeak, this.broker.pool.waitingCount);
      },
    );
  }

  readonly logger: Logger = {
    // A run whose final write was refused: its job was handed to another run meanwhile.
    debug: (f, message) => {
      if ((f as { outcome?: string }).outcome === 'lease-lost')
        this.logged.push(`debug: ${message} (lease-lost)`);
    },
    info: () => {},
    warn: (_f, message) => this.logged.push(`warn: ${message}`),
    // With the driver's reason: a final write lost to a dead connection or to a pool timeout.
    error: (f, message) => {
      const err = (f as { err?: { message?: string } }).err;
      this.logged.push(`error: ${message}${err?.message ? ` (${err.message})` : ''}`);
    },
  };

  async start(): Promise<void> {
    this.loopDelay.enable();
    this.db = await startPostgresServer();
    this.broker = new PostgresBroker({ connection: this.db.url, schema: SCHEMA });
    await this.broker.subscribe((event) => this.events.push(event));
    this.server = await createServer(
      {
        broker: this.broker,
        logger: this.logger,
        worker: { concurrency: 8, leaseTime: '3s', gracePeriod: 100, pollInterval: POLL_MS },
      },
      (app, jobs) => {
        app.post(
          '/work',
          jobs.background<{ i: number }>('work', async ({ i }, job) => {
            this.ran(job.id);
            await sleep(JOB_MS);
            return { i };
          }),
        );
      },
    );
    this.baseUrl = this.server.baseUrl;
  }

  async close(): Promise<void> {
    this.loopDelay.disable();
    // Each step bounded: a broker stuck on a dead database must not hold the process.
    await Promise.race([this.server?.close(), sleep(5000)]);
    await Promise.race([this.broker?.close(), sleep(2000)]);
    await Promise.race([this.producer?.close(), sleep(2000)]);
    // The whole cluster goes with its dir: the schema needs no DROP.
    await this.db?.stop();
  }

  /** The broker's LISTEN client, if connected (private: read for the report and the waits). */
  listenerUp(): boolean {
    return (this.broker as unknown as { listener: unknown }).listener != null;
  }

  /**
   * Wait (up to 25 s) for every accepted job to finish, print the figures, and check none was
   * lost, left unfinished or failed.
   */
  assertAllFinished(label: string, extra: string): Promise<void> {
    return this.assertNoneLost(this.broker, {
      label,
      since: this.backAt,
      after: 'the outage',
      onPoll: () => {
        if (!this.listenBackAt && this.listenerUp()) this.listenBackAt = Date.now();
      },
      details: (finishedMs) =>
        `${extra}; away ${this.backAt - this.outageAt} ms in all; all finished ${finishedMs} ms after it was back; ` +
        `LISTEN connection ${this.listenBackAt ? `up ${this.listenBackAt - this.backAt} ms after it was back` : 'not up'}; ` +
        `pool waiting peak ${this.poolWaitingPeak}`,
    });
  }

  /**
   * The app serves reads again, and the worker takes new work on a NOTIFY: a job another process
   * enqueues runs within 1.5 s (the poll is 10 s), its events reach this broker's subscribers,
   * and a job submitted through the app runs too.
   */
  async assertResumed(): Promise<void> {
    const id = [...this.accepted][0]!;
    const read = await this.status(id);
    assert.equal(read.status, 200, `status after the outage: ${read.body}`);
    assert.equal((JSON.parse(read.body) as JobRecord).status, 'succeeded');

    this.producer ??= new PostgresBroker({ connection: this.db.url, schema: SCHEMA });
    const { job } = await this.producer.enqueue({
      task: 'work',
      payload: { i: 300_000 },
      owner: null,
      maxAttempts: 3,
    });
    const enqueuedAt = Date.now();
    for (;;) {
      const s = await this.status(job.id);
      if (s.status === 200 && (JSON.parse(s.body) as JobRecord).status === 'succeeded') break;
      assert.ok(
        Date.now() - enqueuedAt < 1500,
        `a job enqueued by another process ${enqueuedAt - this.backAt} ms after the outage runs within ` +
          `1.5 s, not at the ${POLL_MS} ms backstop poll (the LISTEN connection did not come back, or ` +
          `the worker is stuck; LISTEN connection ${this.listenerUp() ? 'up' : 'down'}): ${s.body}`,
      );
      await sleep(20);
    }
    console.log(
      `a job enqueued by another process ${enqueuedAt - this.backAt} ms after the outage finished in ` +
        `${Date.now() - enqueuedAt} ms`,
    );
    const seen = (jobId: string) =>
      this.events.filter((e) => e.jobId === jobId && e.type === 'status').map((e) => e.status);
    const deadline = Date.now() + 1000;
    while (!seen(job.id).includes('succeeded') && Date.now() < deadline) await sleep(10);
    assert.deepEqual(
      seen(job.id),
      ['queued', 'running', 'succeeded'],
      'events after the outage reach subscribers',
    );

    const fresh = await this.submit(200_000);
    assert.equal(fresh.status, 202, `submit after the outage: ${fresh.body}`);
    const started = Date.now();
    for (;;) {
      const s = await this.status(fresh.id!);
      if (s.status === 200 && (JSON.parse(s.body) as JobRecord).status === 'succeeded') break;
      assert.ok(Date.now() - started < 1500, `a job submitted after the outage runs within 1.5 s: ${s.body}`);
      await sleep(20);
    }
  }
}

describe('PostgresBroker when PostgreSQL is killed -9 under load (own server)', () => {
  const rig = new OutageRig();
  /** When every server process was dead: no statement can commit after this. */
  let deadAt = 0;

  before(() => rig.start());
  after(() => rig.close());

  it('kills -9 PostgreSQL under load; before the kill submits answer 202 and statuses 200', async () => {
    await rig.loadThrough(async () => {
      await rig.db.kill();
      deadAt = Date.now();
    });
  });

  it('answers every submit and status read within 2.5 s while PostgreSQL is down: 503 problem+json with Retry-After', () => {
    rig.backAt = Number.POSITIVE_INFINITY;
    rig.assertFast503s(rig.backAt);
  });

  it('loses no job that got a 202 once PostgreSQL restarts on the same data dir and port', async () => {
    await rig.db.restart();
    rig.backAt = Date.now();
    await rig.assertAllFinished('postgres killed', `server dead ${deadAt - rig.outageAt} ms after the kill`);
  });

  it('resumes without a restart of the app: reads answer 200, a job another process enqueues is woken by NOTIFY', async () => {
    const wait = rig.backAt + LISTEN_BACK_MS - Date.now();
    if (wait > 0) await sleep(wait);
    await rig.assertResumed();
  });

  it('leaves no job behind for a submit answered 503 while PostgreSQL was down', () => {
    // 503 tells the client nothing was accepted and to retry (Retry-After): a job created anyway
    // runs twice once the client does. Only submits started once every server process was dead
    // count: one sent before may have committed, and its answer is honestly unknown.
    assert.ok(deadAt > 0, 'the server was killed');
    const refused = new Set(
      rig.samples
        .filter(
          (s) => s.kind === 'submit' && s.status === 503 && s.startedAt > deadAt && s.startedAt < rig.backAt,
        )
        .map((s) => s.i),
    );
    assert.ok(refused.size >= 20, `submits refused while PostgreSQL was down (${refused.size})`);
    const phantoms = rig.stored.filter((j) => refused.has((j.payload as { i: number }).i));
    assert.equal(
      phantoms.length,
      0,
      `${phantoms.length} of ${refused.size} submits answered 503 while PostgreSQL was down were persisted ` +
        'anyway once it came back: a client retrying on 503 gets the job twice',
    );
  });
});

describe('PostgresBroker when PostgreSQL stops answering under load (own server, SIGSTOP)', () => {
  const rig = new OutageRig();

  before(() => rig.start());
  after(() => rig.close());

  it('freezes PostgreSQL under load; before, submits answer 202 and statuses 200', async () => {
    await rig.loadThrough(() => rig.db.freeze());
  });

  it('answers every submit and status read within 2.5 s while PostgreSQL answers nothing: 503 problem+json', () => {
    rig.db.thaw();
    rig.backAt = Date.now();
    rig.assertFast503s(rig.backAt);
  });

  it('loses no job that got a 202 once PostgreSQL answers again', async () => {
    // Jobs whose submit got 503 may exist here: the enqueue reached the frozen server before the
    // timeout and committed once it went on. Nothing on the client side can prevent that.
    await rig.assertAllFinished('postgres frozen', 'no restart: the same server and connections');
  });

  it('resumes: reads answer 200, a job another process enqueues is woken by NOTIFY', async () => {
    await rig.assertResumed();
  });
});
