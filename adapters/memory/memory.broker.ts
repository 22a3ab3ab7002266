import { randomUUID } from 'node:crypto';
import type {
  Broker,
  CancelOutcome,
  ClaimRequest,
  EnqueueInput,
  EnqueueResult,
  Lease,
  ListPage,
  ListQuery,
  Settlement,
  SettleResult,
  Unsubscribe,
} from '../../lib/broker.js';
import { eventsAfter, idempotencyScope, newJobRecord } from '../../lib/broker-support.js';
import { QueueFullError } from '../../lib/errors.js';
import {
  isTerminal,
  type JobError,
  type JobEvent,
  type JobProgress,
  type JobRecord,
  type JobStatus,
  type Json,
} from '../../lib/job.js';
import { decodeCursor, encodeCursor, isAfterCursor } from '../../lib/list-cursor.js';
import { WakeTimer } from '../../lib/wake-timer.js';

export interface MemoryBrokerOptions {
  /**
   * Events kept per job for `Last-Event-ID` resume; older ones are dropped and a resuming
   * client gets a snapshot instead.
   * @defaultValue 100
   */
  historyLimit?: number;
  /** @defaultValue 100 */
  logLimit?: number;
}

interface Entry {
  job: JobRecord;
  token: string | null;
  leaseUntil: number;
  events: JobEvent[];
  /** When the job last became due, for oldest-first claim across tasks. */
  readyOrder: number;
}

/** A FIFO over an array with a moving head, compacted now and then. */
class Fifo<T> {
  private items: T[] = [];
  private head = 0;
  push(item: T): void {
    this.items.push(item);
  }
  peek(): T | undefined {
    return this.items[this.head];
  }
  shift(): T | undefined {
    const item = this.items[this.head];
    if (item === undefined) return undefined;
    this.items[this.head++] = undefined as T;
    if (this.head > 1024 && this.head * 2 > this.items.length) {
      this.items = this.items.slice(this.head);
      this.head = 0;
    }
    return item;
  }
}

/**
 * The in-process broker: the default, and the one to test with. Everything lives in this
 * process's memory, so jobs do not survive a restart and other processes cannot see them;
 * use SQLite, Redis or PostgreSQL for that. It keeps every guarantee of the contract within
 * the process (each method runs to completion without yielding, which is what makes it atomic).
 */
export class MemoryBroker implements Broker {
  private readonly jobs = new Map<string, Entry>();
  private readonly ready = new Map<string, Fifo<Entry>>();
  /** Queued jobs not yet due, sorted by runAt. */
  private delayed: Entry[] = [];
  private readonly running = new Set<Entry>();
  /** Finished jobs in the order they finished, for purge; `finishedAt` tells a stale position of a retried job. */
  private readonly finished = new Fifo<{ entry: Entry; finishedAt: number }>();
  private readonly idempotency = new Map<string, string>();
  private readonly statusCounts: Record<JobStatus, number> = {
    queued: 0,
    running: 0,
    succeeded: 0,
    failed: 0,
    canceled: 0,
  };
  private readonly listeners = new Set<(event: JobEvent) => void>();
  private readonly workListeners = new Set<() => void>();
  private readonly cancelListeners = new Set<(jobId: string) => void>();
  private readonly wake = new WakeTimer(() => {
    // The next delayed job after the one that came due, then the workers.
    const next = this.delayed.find((e) => e.job.status === 'queued' && e.job.runAt > Date.now());
    if (next) this.wake.arm(next.job.runAt);
    this.notifyWork();
  });
  private readyCounter = 0;
  private readonly tokenPrefix = `${randomUUID().slice(0, 8)}:`;
  private tokenCounter = 0;
  private readonly historyLimit: number;
  private readonly logLimit: number;

  constructor(options: MemoryBrokerOptions = {}) {
    this.historyLimit = options.historyLimit ?? 100;
    this.logLimit = options.logLimit ?? 100;
  }

  async enqueue(input: EnqueueInput): Promise<EnqueueResult> {
    const idemKey = idempotencyScope(input);
    if (idemKey) {
      const existing = this.idempotency.get(idemKey);
      const entry = existing === undefined ? undefined : this.jobs.get(existing);
      if (entry) return { job: copy(entry.job), created: false };
    }
    if (input.maxQueued != null && this.statusCounts.queued >= input.maxQueued) {
      throw new QueueFullError(input.maxQueued);
    }
    const now = Date.now();
    const job = newJobRecord(input, randomUUID(), cloneData(input.payload), {
      createdAt: now,
      runAt: input.runAt ?? now,
    });
    // The queued event below counts it: seq 1, as the stores that write the event with the record.
    job.seq = 0;
    const entry: Entry = { job, token: null, leaseUntil: 0, events: [], readyOrder: 0 };
    this.jobs.set(job.id, entry);
    this.statusCounts.queued++;
    if (idemKey) this.idempotency.set(idemKey, job.id);
    this.schedule(entry, now);
    this.emit(entry, { type: 'status', status: 'queued', attempts: 0 });
    this.notifyWork();
    return { job: copy(job), created: true };
  }

  async claim(request: ClaimRequest): Promise<Lease[]> {
    const now = Date.now();
    this.promoteDue(now);
    const leases: Lease[] = [];
    while (leases.length < request.limit) {
      const entry = this.takeOldestReady(request.tasks, now);
      if (!entry) break;
      const job = entry.job;
      // The age limit is about starting: a job that already ran (now waiting for a retry) keeps going.
      if (job.expireAt !== null && job.expireAt <= now && job.startedAt === null) {
        this.finish(entry, 'failed', now, {
          error: { message: 'The job was not started before its age limit.', code: 'ERR_OFFLOAD_EXPIRED' },
        });
        continue;
      }
      this.setStatus(entry, 'running');
      job.attempts++;
      job.startedAt = now;
      // Unique within this broker is all a lease token needs here; a counter costs no entropy.
      entry.token = `${this.tokenPrefix}${++this.tokenCounter}`;
      entry.leaseUntil = now + request.leaseMs;
      this.running.add(entry);
      this.emit(entry, { type: 'status', status: 'running', attempts: job.attempts });
      leases.push({ job: copy(job), token: entry.token });
    }
    return leases;
  }

  async renew(jobId: string, token: string, leaseMs: number): Promise<{ cancelRequested: boolean } | null> {
    const entry = this.held(jobId, token);
    if (!entry) return null;
    entry.leaseUntil = Date.now() + leaseMs;
    return { cancelRequested: entry.job.cancelRequested };
  }

  async progress(jobId: string, token: string, progress: JobProgress): Promise<boolean> {
    const entry = this.held(jobId, token);
    if (!entry) return false;
    entry.job.progress = cloneData(progress);
    this.emit(entry, { type: 'progress', progress: entry.job.progress });
    return true;
  }

  async log(jobId: string, token: string, line: string): Promise<boolean> {
    const entry = this.held(jobId, token);
    if (!entry) return false;
    const logs = entry.job.logs;
    logs.push(line);
    if (logs.length > this.logLimit) logs.splice(0, logs.length - this.logLimit);
    return true;
  }

  async complete(jobId: string, token: string, result: Json): Promise<boolean> {
    const entry = this.held(jobId, token);
    if (!entry) return false;
    if (entry.job.cancelRequested) this.finish(entry, 'canceled', Date.now(), {});
    else this.finish(entry, 'succeeded', Date.now(), { result: cloneData(result) });
    return true;
  }

  async fail(jobId: string, token: string, error: JobError, retryAt?: number): Promise<boolean> {
    const entry = this.held(jobId, token);
    if (!entry) return false;
    const now = Date.now();
    error = cloneData(error);
    if (entry.job.cancelRequested) this.finish(entry, 'canceled', now, {});
    else if (retryAt !== undefined) this.requeue(entry, retryAt, error);
    else this.finish(entry, 'failed', now, { error });
    return true;
  }

  async acknowledgeCancel(jobId: string, token: string): Promise<boolean> {
    const entry = this.held(jobId, token);
    if (!entry) return false;
    this.finish(entry, 'canceled', Date.now(), {});
    return true;
  }

  async settle(runs: readonly Settlement[], next: ClaimRequest): Promise<SettleResult> {
    // Each body runs synchronously when called, so nothing else runs between them.
    const accepted = runs.map(({ jobId, token, outcome }) =>
      outcome.type === 'complete'
        ? this.complete(jobId, token, outcome.result)
        : outcome.type === 'fail'
          ? this.fail(jobId, token, outcome.error, outcome.retryAt)
          : this.acknowledgeCancel(jobId, token),
    );
    const leases = this.claim(next);
    return { accepted: await Promise.all(accepted), leases: await leases };
  }

  async release(jobId: string, token: string): Promise<boolean> {
    const entry = this.held(jobId, token);
    if (!entry) return false;
    if (entry.job.cancelRequested) {
      this.finish(entry, 'canceled', Date.now(), {});
      return true;
    }
    entry.job.attempts--;
    this.requeue(entry, Date.now(), entry.job.error);
    return true;
  }

  async cancel(
    jobId: string,
    owner?: string | null,
  ): Promise<{ outcome: CancelOutcome; job: JobRecord | null }> {
    const entry = this.jobs.get(jobId);
    if (!entry || (owner !== undefined && entry.job.owner !== owner))
      return { outcome: 'not-found', job: null };
    const job = entry.job;
    if (job.status === 'queued') {
      this.finish(entry, 'canceled', Date.now(), {});
      return { outcome: 'canceled', job: copy(job) };
    }
    if (job.status === 'running') {
      if (!job.cancelRequested) {
        job.cancelRequested = true;
        // Not a client-visible change: no seq bump, not kept in history.
        this.broadcast({ jobId, seq: job.seq, type: 'cancel', at: Date.now() });
        for (const listener of this.cancelListeners) listener(jobId);
      }
      return { outcome: 'requested', job: copy(job) };
    }
    return { outcome: 'finished', job: copy(job) };
  }

  async retry(jobId: string): Promise<JobRecord | null> {
    const entry = this.jobs.get(jobId);
    if (!entry || (entry.job.status !== 'failed' && entry.job.status !== 'canceled')) return null;
    const job = entry.job;
    job.attempts = 0;
    job.result = null;
    job.progress = null;
    job.startedAt = null;
    job.finishedAt = null;
    job.cancelRequested = false;
    job.expireAt = null;
    this.requeue(entry, Date.now(), null);
    return copy(job);
  }

  async get(jobId: string): Promise<JobRecord | null> {
    const entry = this.jobs.get(jobId);
    return entry ? copy(entry.job) : null;
  }

  async list(query: ListQuery): Promise<ListPage> {
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    const matches: JobRecord[] = [];
    for (const { job } of this.jobs.values()) {
      if (query.owner !== undefined && job.owner !== query.owner) continue;
      if (query.status && job.status !== query.status) continue;
      if (query.task && job.task !== query.task) continue;
      if (after && !isAfterCursor(job.createdAt, job.id, after)) continue;
      matches.push(job);
    }
    matches.sort((a, b) => b.createdAt - a.createdAt || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
    const page = matches.slice(0, query.limit).map(copy);
    const last = page[page.length - 1];
    const nextCursor = matches.length > query.limit && last ? encodeCursor(last) : null;
    return { jobs: page, nextCursor };
  }

  async history(jobId: string, afterSeq: number): Promise<JobEvent[] | null> {
    const entry = this.jobs.get(jobId);
    if (!entry) return null;
    const events = eventsAfter(entry.job.seq, entry.events, afterSeq);
    return events && cloneData(events);
  }

  async subscribe(listener: (event: JobEvent) => void): Promise<Unsubscribe> {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  onWork(listener: () => void): Unsubscribe {
    this.workListeners.add(listener);
    return () => this.workListeners.delete(listener);
  }

  onCancel(listener: (jobId: string) => void): Unsubscribe {
    this.cancelListeners.add(listener);
    return () => this.cancelListeners.delete(listener);
  }

  async recover(): Promise<number> {
    const now = Date.now();
    let touched = 0;
    for (const entry of this.running) {
      if (entry.leaseUntil > now) continue;
      touched++;
      const job = entry.job;
      const error = {
        message: 'The worker running the job stopped renewing its lease.',
        code: 'ERR_OFFLOAD_LEASE_EXPIRED',
      };
      if (job.cancelRequested) this.finish(entry, 'canceled', now, {});
      else if (job.attempts >= job.maxAttempts) this.finish(entry, 'failed', now, { error });
      else this.requeue(entry, now, error);
    }
    return touched;
  }

  async purge(before: number): Promise<number> {
    let purged = 0;
    for (let item = this.finished.peek(); item; item = this.finished.peek()) {
      const { entry, finishedAt } = item;
      const job = entry.job;
      const stillFinished =
        this.jobs.get(job.id) === entry && isTerminal(job.status) && job.finishedAt === finishedAt;
      if (stillFinished && finishedAt >= before) break;
      this.finished.shift();
      // A retried job left the finished list; it is added again when it finishes again.
      if (!stillFinished) continue;
      this.jobs.delete(job.id);
      this.statusCounts[job.status]--;
      if (job.idempotencyKey)
        this.idempotency.delete(JSON.stringify([job.owner, job.task, job.idempotencyKey]));
      purged++;
    }
    return purged;
  }

  async counts(): Promise<Record<JobStatus, number>> {
    return { ...this.statusCounts };
  }

  async close(): Promise<void> {
    this.wake.stop();
    this.listeners.clear();
    this.workListeners.clear();
    this.cancelListeners.clear();
  }

  /** The entry if `token` holds its lease now; lease expiry is judged by `recover`, as in other brokers. */
  private held(jobId: string, token: string): Entry | undefined {
    const entry = this.jobs.get(jobId);
    if (!entry || entry.token !== token || entry.job.status !== 'running') return undefined;
    return entry;
  }

  private setStatus(entry: Entry, status: JobStatus): void {
    this.statusCounts[entry.job.status]--;
    this.statusCounts[status]++;
    entry.job.status = status;
  }

  private finish(
    entry: Entry,
    status: 'succeeded' | 'failed' | 'canceled',
    now: number,
    outcome: { result?: Json; error?: JobError },
  ): void {
    const job = entry.job;
    this.running.delete(entry);
    entry.token = null;
    this.setStatus(entry, status);
    job.finishedAt = now;
    job.cancelRequested = false;
    if (outcome.result !== undefined) job.result = outcome.result;
    if (outcome.error !== undefined) job.error = outcome.error;
    this.finished.push({ entry, finishedAt: now });
    this.emit(entry, {
      type: 'status',
      status,
      attempts: job.attempts,
      result: status === 'succeeded' ? job.result : null,
      error: status === 'succeeded' ? null : job.error,
    });
  }

  private requeue(entry: Entry, runAt: number, error: JobError | null): void {
    const job = entry.job;
    this.running.delete(entry);
    entry.token = null;
    this.setStatus(entry, 'queued');
    job.runAt = runAt;
    job.error = error;
    this.schedule(entry, Date.now());
    this.emit(entry, { type: 'status', status: 'queued', attempts: job.attempts, error });
    this.notifyWork();
  }

  private schedule(entry: Entry, now: number): void {
    if (entry.job.runAt <= now) {
      this.pushReady(entry);
      return;
    }
    const runAt = entry.job.runAt;
    let lo = 0;
    let hi = this.delayed.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.delayed[mid]!.job.runAt <= runAt) lo = mid + 1;
      else hi = mid;
    }
    this.delayed.splice(lo, 0, entry);
    this.wake.arm(runAt);
  }

  private pushReady(entry: Entry): void {
    entry.readyOrder = ++this.readyCounter;
    let fifo = this.ready.get(entry.job.task);
    if (!fifo) {
      fifo = new Fifo();
      this.ready.set(entry.job.task, fifo);
    }
    fifo.push(entry);
  }

  private promoteDue(now: number): void {
    let i = 0;
    while (i < this.delayed.length && this.delayed[i]!.job.runAt <= now) i++;
    if (i === 0) return;
    for (const entry of this.delayed.splice(0, i)) {
      // Stale entries (canceled or re-scheduled since) are skipped when taken.
      if (entry.job.status === 'queued') this.pushReady(entry);
    }
  }

  private takeOldestReady(tasks: readonly string[], now: number): Entry | undefined {
    let best: Fifo<Entry> | undefined;
    let bestOrder = Number.POSITIVE_INFINITY;
    for (const task of tasks) {
      const fifo = this.ready.get(task);
      if (!fifo) continue;
      let head = fifo.peek();
      // A queue may hold stale entries: canceled, already claimed, or pushed back to a later runAt.
      while (head && (head.job.status !== 'queued' || head.job.runAt > now)) {
        fifo.shift();
        head = fifo.peek();
      }
      if (head && head.readyOrder < bestOrder) {
        best = fifo;
        bestOrder = head.readyOrder;
      }
    }
    return best?.shift();
  }

  private emit(entry: Entry, event: Omit<JobEvent, 'jobId' | 'seq' | 'at'>): void {
    const full: JobEvent = { jobId: entry.job.id, seq: ++entry.job.seq, at: Date.now(), ...event };
    entry.events.push(full);
    if (entry.events.length > this.historyLimit) entry.events.shift();
    this.broadcast(full);
  }

  private broadcast(event: JobEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  private notifyWork(): void {
    for (const listener of this.workListeners) listener();
  }
}

/** A deep copy: payload, progress, result, error and logs are objects a caller could mutate. */
function copy(job: JobRecord): JobRecord {
  return {
    ...job,
    payload: cloneData(job.payload),
    progress: cloneData(job.progress),
    result: cloneData(job.result),
    error: cloneData(job.error),
    logs: job.logs.slice(),
  };
}

const NOT_PLAIN = Symbol('not plain data');

/**
 * `structuredClone(value)`, with a fast path for plain JSON-shaped data (what jobs hold):
 * structuredClone costs microseconds even for `{ month: '2026-10' }`, and every enqueue and
 * claim copies. Anything else (a Date, a sparse array, a `__proto__` key, a function, nesting
 * deeper than 64, so any cycle) goes to structuredClone itself. The one difference: an object
 * reached twice is copied twice, where structuredClone would share it (JSON cannot express that).
 */
function cloneData<T>(value: T): T {
  try {
    return clonePlain(value, 0);
  } catch (err) {
    if (err === NOT_PLAIN) return structuredClone(value);
    throw err;
  }
}

function clonePlain<T>(value: T, depth: number): T {
  if (typeof value !== 'object' || value === null) {
    if (typeof value === 'function' || typeof value === 'symbol') throw NOT_PLAIN;
    return value;
  }
  if (depth > 64) throw NOT_PLAIN;
  const proto = Object.getPrototypeOf(value);
  if (proto === Array.prototype) {
    const array = value as unknown[];
    const out = new Array(array.length);
    for (let i = 0; i < array.length; i++) {
      if (!(i in array)) throw NOT_PLAIN;
      out[i] = clonePlain(array[i], depth + 1);
    }
    return out as T;
  }
  if (proto !== Object.prototype && proto !== null) throw NOT_PLAIN;
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(value)) {
    if (key === '__proto__') throw NOT_PLAIN;
    out[key] = clonePlain((value as Record<string, unknown>)[key], depth + 1);
  }
  return out as T;
}
