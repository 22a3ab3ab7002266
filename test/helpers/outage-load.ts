// The load the outage tests (redis-outage, postgres-outage) put on an app with an in-process worker
// while its store goes away and comes back: clients submitting jobs and reading statuses, every
// answer recorded with its timing, and the checks and figures on those answers, whatever the broker.
// The app is the test's: POST /work (payload { i }) runs task `work`, which calls `ran(job.id)`.
// How the messages name the outage ("the kill", "the outage began") is the test's too.
import assert from 'node:assert/strict';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Broker } from '../../lib/broker.js';
import { isTerminal, type JobRecord, type JobStatus } from '../../lib/job.js';

/** brokerTimeout is 2 s; the core's sweep may add up to 250 ms, loopback HTTP a little more. */
const MAX_503_MS = 2500;
const LOOPERS = 6;
/** Pause between one looper's rounds (a submit, then a status read): ~150 requests/s while up. */
const PAUSE_MS = 30;
const UP_MS = 1500;
/** Accepted jobs wanted before the outage; the up phase waits up to 3 × UP_MS for them. */
const MIN_ACCEPTED = 100;
/** Longer than the apps' lease (3 s): leases of jobs running at the outage expire during it. */
const DOWN_MS = 4000;
/** A request still unanswered after this is recorded as a hang (status 0). */
const HANG_MS = 10_000;

export interface Sample {
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

/** How the messages and the summary line name the outage, e.g. for a killed Redis and a frozen PostgreSQL. */
export interface OutageWords {
  /** The outage: `the kill`, `the outage`. */
  outage: string;
  /** Its start, which sample times count from: `the kill`, `the outage began`. */
  began: string;
  /** Requests in flight at its start: `at the kill`, `when the outage began`. */
  inFlight: string;
  /** The store meanwhile: `Redis is down`, `PostgreSQL is away`. */
  down: string;
}

export class OutageLoad {
  /** The app's address, once it listens. */
  baseUrl = '';
  readonly samples: Sample[] = [];
  readonly accepted = new Set<string>();
  /** Start times of each job id's runs in the app's worker. */
  readonly runs = new Map<string, number[]>();
  /** What the app's offload logger said, one entry a line (counted in the summary). */
  readonly logged: string[] = [];
  /** Event-loop stalls inflate every latency measured here: reported with them. */
  readonly loopDelay = monitorEventLoopDelay({ resolution: 10 });
  /** When the outage began (kill or freeze sent). */
  outageAt = 0;
  /** Every job in the store after the outage (read once the broker answers again). */
  stored: JobRecord[] = [];
  private n = 0;

  /** `onRound` is called after each round of a looper, to sample a gauge of the broker's. */
  constructor(
    private readonly words: OutageWords,
    private readonly onRound?: () => void,
  ) {}

  /** For the app's task: one run of job `id` starts. */
  ran(id: string): void {
    this.runs.set(id, [...(this.runs.get(id) ?? []), Date.now()]);
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
      fetch(`${this.baseUrl}/work`, {
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
      fetch(`${this.baseUrl}/jobs/${id}`, { signal }),
    );
    sample.id = id;
    this.samples.push(sample);
    return sample;
  }

  /** `LOOPERS` clients each submitting, then reading a random accepted job's status, while `going()`. */
  private async load(going: () => boolean): Promise<void> {
    await Promise.all(
      Array.from({ length: LOOPERS }, async () => {
        while (going()) {
          await this.submit();
          const ids = [...this.accepted];
          if (ids.length && going()) await this.status(ids[Math.floor(Math.random() * ids.length)]!);
          this.onRound?.();
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
    const before = this.words.outage;
    const started = Date.now();
    let stopAt = Number.POSITIVE_INFINITY;
    const loadDone = this.load(() => Date.now() < stopAt);
    // Enough accepted jobs to lose, however slow the machine is, within a bound.
    while (
      Date.now() - started < UP_MS ||
      (this.accepted.size < MIN_ACCEPTED && Date.now() - started < 3 * UP_MS)
    ) {
      await sleep(20);
    }
    this.outageAt = Date.now();
    stopAt = this.outageAt + DOWN_MS;
    await outage();
    // A burst while the store is away (and the broker knows it): every request must still get its
    // answer in time, none may wait in a driver's queue.
    const burst = Promise.all([
      ...Array.from({ length: 20 }, (_, i) => this.submit(100_000 + i)),
      ...[...this.accepted].slice(0, 20).map((id) => this.status(id)),
    ]);
    await Promise.all([loadDone, burst]);
    const answered = this.samples.filter((s) => s.startedAt + s.ms < this.outageAt);
    assert.ok(
      this.accepted.size >= MIN_ACCEPTED / 2,
      `load ran before ${before} (${this.accepted.size} accepted)`,
    );
    for (const s of answered) {
      assert.equal(s.status, s.kind === 'submit' ? 202 : 200, `before ${before}: ${this.describe(s)}`);
    }
  }

  describe(s: Sample): string {
    return (
      `${s.kind} started ${s.startedAt - this.outageAt} ms after ${this.words.began}: ${s.status} in ${s.ms} ms, ` +
      `${s.contentType || 'no content type'}, Retry-After ${s.retryAfter}: ${s.body.slice(0, 200)}`
    );
  }

  /** Every request started during the outage (until `backAt`) answered 503 problem+json in time; those in flight at its start in time. */
  assertFast503s(backAt: number): void {
    const { down, inFlight } = this.words;
    const during = this.samples.filter((s) => s.startedAt >= this.outageAt && s.startedAt < backAt);
    const submits = during.filter((s) => s.kind === 'submit');
    const reads = during.filter((s) => s.kind === 'status');
    assert.ok(
      submits.length >= 20 && reads.length >= 10,
      `requests during the outage (${submits.length}, ${reads.length})`,
    );
    for (const s of during) {
      assert.ok(s.ms <= MAX_503_MS, `answered within ${MAX_503_MS} ms: ${this.describe(s)}`);
      assert.equal(s.status, 503, `503 while ${down}: ${this.describe(s)}`);
      assert.match(s.contentType, /^application\/problem\+json/, this.describe(s));
      assert.match(s.retryAfter ?? '', /^\d+$/, `Retry-After: ${this.describe(s)}`);
      assert.equal((JSON.parse(s.body) as { status: number }).status, 503);
    }
    // Requests in flight when it began: either answer is right, but never a slow one.
    const atStart = this.samples.filter(
      (s) => s.startedAt < this.outageAt && s.startedAt + s.ms >= this.outageAt,
    );
    for (const s of atStart) {
      assert.ok(s.ms <= MAX_503_MS, `in flight ${inFlight}, answered in time: ${this.describe(s)}`);
      assert.ok([200, 202, 503].includes(s.status), this.describe(s));
    }
  }

  /**
   * Wait (up to 25 s) for every accepted job to finish, keep every stored job (`stored`), print the
   * summary line and check none was lost, left unfinished or failed. The line is `label`, the
   * answers and jobs, `details(finishedMs)` (from `since` to all finished), then the log and
   * stalls; `after` names the outage's end in the messages (`the restart`, `the outage`).
   */
  async assertNoneLost(
    broker: Broker,
    options: {
      label: string;
      since: number;
      after: string;
      details: (finishedMs: number) => string;
      /** Called on each round of the wait, to note when something came back. */
      onPoll?: () => void;
    },
  ): Promise<void> {
    const pending = new Set(this.accepted);
    const states = new Map<string, JobStatus | 'missing'>();
    const deadline = Date.now() + 25_000;
    while (pending.size > 0 && Date.now() < deadline) {
      options.onPoll?.();
      for (const id of [...pending]) {
        let job: JobRecord | null;
        try {
          job = await broker.get(id);
        } catch {
          break; // still reconnecting
        }
        states.set(id, job ? job.status : 'missing');
        if (job && isTerminal(job.status)) pending.delete(id);
      }
      if (pending.size) await sleep(100);
    }
    const finishedMs = Date.now() - options.since;
    const missing = [...this.accepted].filter((id) => states.get(id) === 'missing');
    const stuck = [...pending].filter((id) => states.get(id) !== 'missing');
    const failed = [...this.accepted].filter((id) => states.get(id) === 'failed');
    const twice = [...this.runs.entries()].filter(([, starts]) => starts.length > 1);
    this.stored = [];
    for (let cursor: string | null = null; ; ) {
      const page = await broker.list({ limit: 500, cursor });
      this.stored.push(...page.jobs);
      if (!page.nextCursor) break;
      cursor = page.nextCursor;
    }
    const count = (kind: string, code: number) =>
      this.samples.filter((s) => s.kind === kind && s.status === code).length;
    const slowest = Math.max(...this.samples.filter((s) => s.status === 503).map((s) => s.ms));
    const summary =
      `${options.label}: ${count('submit', 202)} submits got 202, ${count('submit', 503)} got 503 ` +
      `(slowest 503 in ${slowest} ms); ${count('status', 200)} status reads got 200, ` +
      `${count('status', 503)} got 503; ${twice.length} jobs ran twice (run starts from ${this.words.outage}, ms: ` +
      `${JSON.stringify(twice.map(([, t]) => t.map((x) => x - this.outageAt)))}); ` +
      `${this.stored.filter((j) => !this.accepted.has(j.id)).length} jobs exist whose submit got 503; ` +
      `${missing.length} lost, ${stuck.length} not finished, ${failed.length} failed; ${options.details(finishedMs)}; ` +
      `offload log: ${JSON.stringify(countBy(this.logged))}; ` +
      `event-loop delay max ${Math.round(this.loopDelay.max / 1e6)} ms; slowest: ${JSON.stringify(
        [...this.samples]
          .sort((a, b) => b.ms - a.ms)
          .slice(0, 8)
          .map((s) => [s.kind, s.status, s.startedAt - this.outageAt, s.ms]),
      )}`;
    console.log(summary);
    assert.deepEqual(missing, [], `jobs that got a 202 and are gone after ${options.after}. ${summary}`);
    assert.deepEqual(stuck, [], `jobs that got a 202 and never finished within 25 s. ${summary}`);
    assert.deepEqual(failed, [], `jobs that failed. ${summary}`);
  }
}

function countBy(values: string[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}
