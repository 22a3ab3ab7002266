import type { JobError, JobEvent, JobProgress, JobRecord, JobStatus, Json } from './job.js';

/**
 * The broker contract. Every adapter (memory, Redis, PostgreSQL, SQLite) implements it and
 * passes the shared conformance suite in `test/conformance/`. No driver type appears here.
 *
 * Times are epoch milliseconds. A broker may use its own clock (the database server's) for
 * leases, as long as one broker is consistent with itself.
 *
 * Writes that a worker makes on behalf of a run (`renew`, `progress`, `log`, `complete`,
 * `fail`, `release`) name the lease `token` that `claim` handed out. A write with a token
 * that is no longer current (the lease expired and the job was re-queued or claimed again,
 * or the job was canceled and acknowledged) is refused: it returns `false` and changes nothing.
 * That is what stops a worker that lost its lease from overwriting a newer run.
 */
export interface Broker {
  /**
   * Persist a new job as `queued` (seq 1) and wake idle workers, atomically.
   *
   * With an `idempotencyKey`, the key is scoped to (owner, task, key): while a job with the same
   * scope exists (until it is purged), enqueue returns that job with `created: false` and
   * persists nothing. The caller compares `payloadHash` to detect a key reused with another payload.
   *
   * With `maxQueued`, enqueue throws `QueueFullError` when that many jobs are already queued;
   * an idempotent replay of an existing job is answered even then (it adds nothing).
   */
  enqueue(input: EnqueueInput): Promise<EnqueueResult>;

  /**
   * Hand out up to `limit` due jobs (status `queued`, `runAt <= now`) among `tasks`, oldest
   * first, each as a lease to this caller alone. Each claimed job becomes `running`, its
   * `attempts` grows by one, `startedAt` is set, and its lease lasts `leaseMs`.
   *
   * A queued job that never started and whose `expireAt` has passed is failed (code
   * `ERR_OFFLOAD_EXPIRED`) instead; a job that already ran once is not expired by it.
   * Two concurrent callers never receive the same job. Fewer than `limit` means no more are
   * due now: the worker then waits for `onWork` or its poll instead of claiming again.
   */
  claim(request: ClaimRequest): Promise<Lease[]>;

  /**
   * Extend a lease by `leaseMs` from now. Returns `null` when the token is no longer current
   * (the worker must stop writing), else whether a cancel was requested meanwhile.
   */
  renew(jobId: string, token: string, leaseMs: number): Promise<{ cancelRequested: boolean } | null>;

  /** Record progress (last value wins) and emit a `progress` event. Holder only. */
  progress(jobId: string, token: string, progress: JobProgress): Promise<boolean>;

  /** Append a log line (the broker may cap how many it keeps). Holder only. */
  log(jobId: string, token: string, line: string): Promise<boolean>;

  /**
   * Finish the run successfully. If a cancel was requested while it ran, the job ends
   * `canceled` instead (the client was promised a cancel). Holder only.
   */
  complete(jobId: string, token: string, result: Json): Promise<boolean>;

  /**
   * Finish the run with an error. With `retryAt`, the job goes back to `queued` to run again
   * at that time (the attempt stays counted); without it, the job ends `failed`. If a cancel
   * was requested, the job ends `canceled` either way. Holder only.
   */
  fail(jobId: string, token: string, error: JobError, retryAt?: number): Promise<boolean>;

  /** Acknowledge a cancel: the worker stopped the run, the job ends `canceled`. Holder only. */
  acknowledgeCancel(jobId: string, token: string): Promise<boolean>;

  /**
   * End runs, each as `complete`, `fail` or `acknowledgeCancel` would, then claim as
   * `claim(next)` would (also for runs whose token was not current: the caller's slots are free
   * either way), in one step. A busy worker refills the slots its runs free without a call of
   * its own, and runs that end together cost one call. `next.limit` 0 claims nothing.
   */
  settle(runs: readonly Settlement[], next: ClaimRequest): Promise<SettleResult>;

  /**
   * The share of a worker's slots it may end in one `settle` call (default 1/4). Small for a
   * broker whose calls are cheap next to a round trip (Redis: several calls in flight keep it
   * busy while the worker runs jobs); large for one whose every call is a transaction to commit
   * (PostgreSQL, SQLite), where fewer, larger calls cost less per job.
   */
  readonly settleShare?: number;

  /**
   * Hand a running job back to the queue without counting the attempt (graceful shutdown).
   * A job whose cancel was requested ends `canceled` instead. Holder only.
   */
  release(jobId: string, token: string): Promise<boolean>;

  /**
   * Cancel a job, atomically with respect to claim: a queued job ends `canceled` at once
   * (`'canceled'`); a running job is flagged and a `cancel` event tells its worker
   * (`'requested'`) and so are `onCancel` listeners; a finished job is left alone (`'finished'`); `'not-found'` otherwise.
   * `owner`, when given (also `null`), must match the job's owner or the job is not found.
   */
  cancel(jobId: string, owner?: string | null): Promise<{ outcome: CancelOutcome; job: JobRecord | null }>;

  /** Re-queue a failed or canceled job as a fresh run (attempts reset). Used by admin tools. */
  retry(jobId: string): Promise<JobRecord | null>;

  /** A copy of the job, or `null`. */
  get(jobId: string): Promise<JobRecord | null>;

  /** Jobs newest first (createdAt, then id, descending), filtered, with an opaque cursor. */
  list(query: ListQuery): Promise<ListPage>;

  /**
   * The job's events with `seq > afterSeq`, in seq order; `null` when the broker no longer holds
   * all of them (history is capped) or the job is unknown; the caller then sends a snapshot.
   */
  history(jobId: string, afterSeq: number): Promise<JobEvent[] | null>;

  /**
   * Subscribe to events of every job. Implementations open at most one underlying subscription
   * per broker instance; `JobEvents` (lib/job-events.ts) calls this once per process and fans out.
   * Events of one job arrive in seq order.
   */
  subscribe(listener: (event: JobEvent) => void): Promise<Unsubscribe>;

  /**
   * Be told when work may be due (a new job, a retry coming due), so idle workers need not poll.
   * Polling remains the worker's backstop; a wake-up is a hint, never a promise of work.
   */
  onWork(listener: () => void): Unsubscribe;

  /**
   * Be told the id of a running job whose cancel was just requested (workers stop its run),
   * without receiving every job's events. A hint as well: `renew` reports the request too.
   */
  onCancel(listener: (jobId: string) => void): Unsubscribe;

  /**
   * Re-queue (attempt counted) or fail (attempts spent, code `ERR_OFFLOAD_LEASE_EXPIRED`) every
   * running job whose lease has expired; one whose cancel was requested ends `canceled`.
   * Returns how many jobs it touched. Safe to run anywhere, from many processes at once.
   */
  recover(): Promise<number>;

  /** Delete finished jobs (with their events and idempotency keys) that finished before `before`. */
  purge(before: number): Promise<number>;

  /** Count of jobs per status (for health checks and tests). */
  counts(): Promise<Record<JobStatus, number>>;

  /** Release connections and timers. Idempotent. */
  close(): Promise<void>;
}

export type Unsubscribe = () => void;

export type CancelOutcome = 'canceled' | 'requested' | 'finished' | 'not-found';

export interface EnqueueInput {
  task: string;
  payload: Json;
  owner: string | null;
  maxAttempts: number;
  /** Defaults to now. */
  runAt?: number;
  expireAt?: number | null;
  timeoutMs?: number | null;
  idempotencyKey?: string | null;
  payloadHash?: string | null;
  maxQueued?: number | null;
}

export interface EnqueueResult {
  job: JobRecord;
  /** `false` when an idempotency key matched an existing job. */
  created: boolean;
}

export interface ClaimRequest {
  tasks: readonly string[];
  limit: number;
  leaseMs: number;
  /** For logs and diagnostics only. */
  workerId: string;
}

/** How a run ended, for `settle`. */
export type RunOutcome =
  | { type: 'complete'; result: Json }
  | { type: 'fail'; error: JobError; retryAt?: number }
  | { type: 'cancel' };

export interface Settlement {
  jobId: string;
  token: string;
  outcome: RunOutcome;
}

export interface SettleResult {
  /** Per run, in order: what `complete`, `fail` or `acknowledgeCancel` would have returned. */
  accepted: boolean[];
  /** The claim's leases. */
  leases: Lease[];
}

export interface Lease {
  job: JobRecord;
  token: string;
}

export interface ListQuery {
  /** When present (also `null`), only this owner's jobs. */
  owner?: string | null;
  status?: JobStatus;
  task?: string;
  limit: number;
  cursor?: string | null;
}

export interface ListPage {
  jobs: JobRecord[];
  /** Pass back as `cursor` for the next page; `null` on the last page. */
  nextCursor: string | null;
}

/** A broker, or a URL naming one: `memory:`, later `redis://`, `postgres://`, `sqlite:`. */
export type BrokerSpec = Broker | string;
