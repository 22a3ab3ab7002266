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
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PostgresBroker } from '../../adapters/postgres/postgres.broker.js';
import { isTerminal, type JobEvent, type JobRecord, type JobStatus } from '../../lib/job.js';
import type { Logger } from '../../lib/logger.js';
import { createServer, type TestServer } from '../helpers/create-server.js';
import { type PostgresServer, startPostgresServer } from '../helpers/postgres-server.js';

/** brokerTimeout is 2 s; the core's sweep may add up to 250 ms, loopback HTTP a little more. */
const MAX_503_MS = 2500;
const LOOPERS = 6;
/** Pause between one looper's rounds (a submit, then a status read): ~150 requests/s while up. */
const PAUSE_MS = 30;
const UP_MS = 1500;
/** Accepted jobs wanted before the outage; the up phase waits up to 3 × UP_MS for them. */
const MIN_ACCEPTED = 100;
/** Longer than the lease (3 s): leases of jobs running at the outage expire during it. */
const DOWN_MS = 4000;
const JOB_MS = 20;
/** A request still unanswered after this is recorded as a hang (status 0). */
const HANG_MS = 10_000;
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

interface Sample {
  kind: 'submit' | 'status';
  startedAt: number;
  ms: number;
  status: number;
  contentType: string;
  retryAfter: string | null;
  body: string;
  /** The submit's payload number. */
  i?: number;
  /** The accepted job's id (submit 202) or the job asked for (status). */
  id?: string;
}

/**
 * An Express app with offload on a PostgresBroker (in-process worker, task `work`) on its own
 * PostgreSQL server, clients to load it, and everything they and the broker saw.
 */
class OutageRig {
  db!: PostgresServer;
  broker!: PostgresBroker;
  server!: TestServer;
  /** Stands for another web process on the same database: enqueues, listens to nothing. */
  producer: PostgresBroker | undefined;
  /** Start times of each job id's runs in this process's worker. */
  readonly runs = new Map<string, number[]>();
  readonly accepted = new Set<string>();
  readonly samples: Sample[] = [];
  readonly logged: string[] = [];
  /** Every job event the broker's LISTEN connection delivered. */
  readonly events: JobEvent[] = [];
  /** When the outage began (kill or freeze sent). */
  outageAt = 0;
  /** When it ended (the server answers again). */
  backAt = 0;
  poolWaitingPeak = 0;
  /** Event-loop stalls inflate every latency measured here: reported with them. */
  readonly loopDelay = monitorEventLoopDelay({ resolution: 10 });
  private n = 0;

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
            this.runs.set(job.id, [...(this.runs.get(job.id) ?? []), Date.now()]);
            await sleep(JOB_MS);
            return { i };
          }),
        );
      },
    );
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

  /** A request that hangs is recorded as status 0 after `HANG_MS` instead of holding the test. */
  private async timed(
    kind: Sample['kind'],
    request: (signal: AbortSignal) => Promise<Response>,
  ): Promise<Sample> {
    const startedAt = Date.now();
    try {
      const res = await request(AbortSignal.timeout(HANG_MS));
      const body = await res.text();
      return {
        kind,
        startedAt,
        ms: Date.now() - startedAt,
        status: res.status,
        contentType: res.headers.get('content-type') ?? '',
        retryAfter: res.headers.get('retry-after'),
        body,
      };
    } catch (err) {
      const ms = Date.now() - startedAt;
      return { kind, startedAt, ms, status: 0, contentType: '', retryAfter: null, body: String(err) };
    }
  }

  async submit(i = this.n++): Promise<Sample> {
    const sample: Sample = await this.timed('submit', (signal) =>
      fetch(`${this.server.baseUrl}/work`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ i }),
        signal,
      }),
    );
    sample.i = i;
    if (sample.status === 202) {
      sample.id = (JSON.parse(sample.body) as { id: string }).id;
      this.accepted.add(sample.id);
    }
    this.samples.push(sample);
    return sample;
  }

  async status(id: string): Promise<Sample> {
    const sample: Sample = await this.timed('status', (signal) =>
      fetch(`${this.server.baseUrl}/jobs/${id}`, { signal }),
    );
    sample.id = id;
    this.samples.push(sample);
    return sample;
  }

  /** `LOOPERS` clients each submitting, then reading a random accepted job's status, while `going()`. */
  async load(going: () => boolean): Promise<void> {
    await Promise.all(
      Array.from({ length: LOOPERS }, async () => {
        while (going()) {
          await this.submit();
          const ids = [...this.accepted];
          if (ids.length && going()) await this.status(ids[Math.floor(Math.random() * ids.length)]!);
          this.poolWaitingPeak = Math.max(this.poolWaitingPeak, this.broker.pool.waitingCount);
          await sleep(PAUSE_MS);
        }
      }),
    );
  }

  /**
   * Load for `UP_MS` (and until `MIN_ACCEPTED` jobs are accepted, within a bound), run `outage`,
   * keep loading for `DOWN_MS` with a burst right after it; then check the answers before it.
   */
  async loadThrough(outage: () => Promise<void> | void): Promise<void> {
    const started = Date.now();
    let stopAt = Number.POSITIVE_INFINITY;
    const loadDone = this.load(() => Date.now() < stopAt);
    while (
      Date.now() - started < UP_MS ||
      (this.accepted.size < MIN_ACCEPTED && Date.now() - started < 3 * UP_MS)
    ) {
      await sleep(20);
    }
    this.outageAt = Date.now();
    stopAt = this.outageAt + DOWN_MS;
    await outage();
    // A burst while the database is away: every request must still get its answer in time.
    const burst = Promise.all([
      ...Array.from({ length: 20 }, (_, i) => this.submit(100_000 + i)),
      ...[...this.accepted].slice(0, 20).map((id) => this.status(id)),
    ]);
    await Promise.all([loadDone, burst]);
    const before = this.samples.filter((s) => s.startedAt + s.ms < this.outageAt);
    assert.ok(
      this.accepted.size >= MIN_ACCEPTED / 2,
      `load ran before the outage (${this.accepted.size} accepted)`,
    );
    for (const s of before) {
      assert.equal(s.status, s.kind === 'submit' ? 202 : 200, `before the outage: ${this.describe(s)}`);
    }
  }

  describe(s: Sample): string {
    return (
      `${s.kind} started ${s.startedAt - this.outageAt} ms after the outage began: ${s.status} in ${s.ms} ms, ` +
      `${s.contentType || 'no content type'}, Retry-After ${s.retryAfter}: ${s.body.slice(0, 200)}`
    );
  }

  /** Every request started during the outage answered 503 problem+json in time; those in flight at its start in time. */
  assertFast503s(): void {
    const during = this.samples.filter((s) => s.startedAt >= this.outageAt && s.startedAt < this.backAt);
    const submits = during.filter((s) => s.kind === 'submit');
    const reads = during.filter((s) => s.kind === 'status');
    assert.ok(
      submits.length >= 20 && reads.length >= 10,
      `requests during the outage (${submits.length}, ${reads.length})`,
    );
    for (const s of during) {
      assert.ok(s.ms <= MAX_503_MS, `answered within ${MAX_503_MS} ms: ${this.describe(s)}`);
      assert.equal(s.status, 503, `503 while PostgreSQL is away: ${this.describe(s)}`);
      assert.match(s.contentType, /^application\/problem\+json/, this.describe(s));
      assert.match(s.retryAfter ?? '', /^\d+$/, `Retry-After: ${this.describe(s)}`);
      assert.equal((JSON.parse(s.body) as { status: number }).status, 503);
    }
    // Requests in flight when it began: either answer is right, but never a slow one.
    const inFlight = this.samples.filter(
      (s) => s.startedAt < this.outageAt && s.startedAt + s.ms >= this.outageAt,
    );
    for (const s of inFlight) {
      assert.ok(s.ms <= MAX_503_MS, `in flight when the outage began, answered in time: ${this.describe(s)}`);
      assert.ok([200, 202, 503].includes(s.status), this.describe(s));
    }
  }

  /** Every job in the database after the outage (read once the broker answers again). */
  stored: JobRecord[] = [];
  listenBackAt = 0;

  /**
   * Wait (up to 25 s) for every accepted job to finish, print the figures, and check none was
   * lost, left unfinished or failed.
   */
  async assertNoneLost(label: string, extra: string): Promise<void> {
    const pending = new Set(this.accepted);
    const states = new Map<string, JobStatus | 'missing'>();
    const deadline = Date.now() + 25_000;
    while (pending.size > 0 && Date.now() < deadline) {
      if (!this.listenBackAt && this.listenerUp()) this.listenBackAt = Date.now();
      for (const id of [...pending]) {
        let job: JobRecord | null;
        try {
          job = await this.broker.get(id);
        } catch {
          break; // still reconnecting
        }
        states.set(id, job ? job.status : 'missing');
        if (job && isTerminal(job.status)) pending.delete(id);
      }
      if (pending.size) await sleep(100);
    }
    const recoveredMs = Date.now() - this.backAt;
    const missing = [...this.accepted].filter((id) => states.get(id) === 'missing');
    const stuck = [...pending].filter((id) => states.get(id) !== 'missing');
    const failed = [...this.accepted].filter((id) => states.get(id) === 'failed');
    const twice = [...this.runs.entries()].filter(([, starts]) => starts.length > 1);
    this.stored = [];
    for (let cursor: string | null = null; ; ) {
      const page = await this.broker.list({ limit: 500, cursor });
      this.stored.push(...page.jobs);
      if (!page.nextCursor) break;
      cursor = page.nextCursor;
    }
    const count = (kind: string, code: number) =>
      this.samples.filter((s) => s.kind === kind && s.status === code).length;
    const slowest = Math.max(...this.samples.filter((s) => s.status === 503).map((s) => s.ms));
    const summary =
      `${label}: ${count('submit', 202)} submits got 202, ${count('submit', 503)} got 503 ` +
      `(slowest 503 in ${slowest} ms); ${count('status', 200)} status reads got 200, ` +
      `${count('status', 503)} got 503; ${twice.length} jobs ran twice (run starts from the outage, ms: ` +
      `${JSON.stringify(twice.map(([, t]) => t.map((x) => x - this.outageAt)))}); ` +
      `${this.stored.filter((j) => !this.accepted.has(j.id)).length} jobs exist whose submit got 503; ` +
      `${missing.length} lost, ${stuck.length} not finished, ${failed.length} failed; ${extra}; ` +
      `away ${this.backAt - this.outageAt} ms in all; all finished ${recoveredMs} ms after it was back; ` +
      `LISTEN connection ${this.listenBackAt ? `up ${this.listenBackAt - this.backAt} ms after it was back` : 'not up'}; ` +
      `pool waiting peak ${this.poolWaitingPeak}; offload log: ${JSON.stringify(countBy(this.logged))}; ` +
      `event-loop delay max ${Math.round(this.loopDelay.max / 1e6)} ms; slowest: ${JSON.stringify(
        [...this.samples]
          .sort((a, b) => b.ms - a.ms)
          .slice(0, 8)
          .map((s) => [s.kind, s.status, s.startedAt - this.outageAt, s.ms]),
      )}`;
    console.log(summary);
    assert.deepEqual(missing, [], `jobs that got a 202 and are gone after the outage. ${summary}`);
    assert.deepEqual(stuck, [], `jobs that got a 202 and never finished within 25 s. ${summary}`);
    assert.deepEqual(failed, [], `jobs that failed. ${summary}`);
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
    rig.assertFast503s();
  });

  it('loses no job that got a 202 once PostgreSQL restarts on the same data dir and port', async () => {
    await rig.db.restart();
    rig.backAt = Date.now();
    await rig.assertNoneLost('postgres killed', `server dead ${deadAt - rig.outageAt} ms after the kill`);
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
    rig.assertFast503s();
  });

  it('loses no job that got a 202 once PostgreSQL answers again', async () => {
    // Jobs whose submit got 503 may exist here: the enqueue reached the frozen server before the
    // timeout and committed once it went on. Nothing on the client side can prevent that.
    await rig.assertNoneLost('postgres frozen', 'no restart: the same server and connections');
  });

  it('resumes: reads answer 200, a job another process enqueues is woken by NOTIFY', async () => {
    await rig.assertResumed();
  });
});

function countBy(values: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}
