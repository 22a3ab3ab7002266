import { randomUUID } from 'node:crypto';
import type BetterSqlite3 from 'better-sqlite3';
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
import {
  eventsAfter,
  idempotencyScope,
  newJobRecord,
  recordFromRow,
  type SqlJobRow,
} from '../../lib/broker-support.js';
import { requireDriver } from '../../lib/broker-url.js';
import { ConfigError, QueueFullError } from '../../lib/errors.js';
import {
  JOB_STATUSES,
  type JobError,
  type JobEvent,
  type JobProgress,
  type JobRecord,
  type JobStatus,
  type Json,
} from '../../lib/job.js';
import { decodeCursor, encodeCursor } from '../../lib/list-cursor.js';
import { WakeTimer } from '../../lib/wake-timer.js';
import { SCHEMA, SCHEMA_TABLES, SCHEMA_VERSION } from './schema.js';

type Database = BetterSqlite3.Database;
type Statement = BetterSqlite3.Statement<unknown[], any>;

export interface SqliteBrokerOptions {
  /**
   * The database file, created if missing (its directory must exist). Give offload a file of its
   * own, on a local filesystem: it is put in WAL mode, which network filesystems cannot do.
   * `:memory:` is refused: nothing in it would survive a restart or reach another process (the
   * `memory:` broker is the one for that). Exactly one of `path` and `database`.
   */
  path?: string;
  /**
   * A better-sqlite3 connection the app already opened (yours to close; one broker per connection).
   * The broker switches it to WAL mode and otherwise keeps its settings.
   */
  database?: Database;
  /** Events kept per job for `Last-Event-ID` resume. @defaultValue 100 */
  historyLimit?: number;
  /** Log lines kept per job. @defaultValue 100 */
  logLimit?: number;
  /**
   * How often, in ms, the broker looks for what other processes committed (job events, wake-ups,
   * cancels) while anything here listens. A look costs one `PRAGMA data_version`. @defaultValue 50
   */
  pollInterval?: number;
  /**
   * How long, in ms, a write waits for another process's transaction before it fails (SQLite's
   * busy timeout; the wait blocks this process, so transactions are kept short). Applied to a
   * `database` only when given. @defaultValue 5000
   */
  busyTimeout?: number;
}

const OPTION_KEYS: ReadonlySet<string> = new Set([
  'path',
  'database',
  'historyLimit',
  'logLimit',
  'pollInterval',
  'busyTimeout',
]);

/** `events.kind`: an event kept as history, or a cancel request (not shown to clients). */
const KIND_EVENT = 0;
const KIND_CANCEL = 1;

const EXPIRED = JSON.stringify({
  message: 'The job was not started before its age limit.',
  code: 'ERR_OFFLOAD_EXPIRED',
});
const LEASE_EXPIRED = JSON.stringify({
  message: 'The worker running the job stopped renewing its lease.',
  code: 'ERR_OFFLOAD_LEASE_EXPIRED',
});

/** Jobs a recover or purge transaction handles at most, so no transaction holds the file for long. */
const BATCH = 500;

/** Columns of a job record, in the order `toRecord` reads them. */
const RECORD = `id, task, payload, status, progress, result, error, attempts, max_attempts, run_at,
  created_at, started_at, finished_at, expire_at, timeout_ms, owner, idempotency_key, payload_hash,
  cancel_requested, seq, logs`;

interface RecordRow extends SqlJobRow {
  cancel_requested: number;
  logs: string | null;
}

/** What a transition reads of a job before it writes. */
interface StateRow {
  id: string;
  status: JobStatus;
  attempts: number;
  max_attempts: number;
  error: string | null;
  seq: number;
  cancel_requested: number;
  owner: string | null;
}

/** A due job a claim may take. */
interface DueRow extends StateRow {
  run_at: number;
  ord: number;
  expire_at: number | null;
  started_at: number | null;
}

/** An `events` row, written here or read from another process's commits (`body` only when needed). */
interface EventRow {
  id: number;
  kind: number;
  job_id: string;
  wake_at: number | null;
  body?: string;
}

/**
 * The single-machine persistent broker: one SQLite file in WAL mode, shared by the processes of
 * one machine (a web process and a worker process, say). Every state change is one IMMEDIATE
 * transaction, so two processes never both take a job; the busy timeout makes a process wait for
 * another's transaction instead of failing. Jobs survive restarts: a lease whose worker died
 * expires and `recover()` puts the job back.
 *
 * Events, wake-ups and cancels reach listeners in this process at commit. Other processes find
 * them in the `events` table: while anything listens, a timer checks `PRAGMA data_version` (it
 * changes when another connection commits) every `pollInterval` ms and reads the rows after the
 * last one seen. One timer per broker is its one subscription. The rows are the history too, capped
 * per job: a process sees every event of a job as long as it looks before the job writes
 * `historyLimit` more (with the worker's coalesced progress, far more than one poll's worth).
 */
export class SqliteBroker implements Broker {
  /** Each settle is a write transaction on one file: all the slots that end together in one. */
  readonly settleShare = 1;
  /** The connection (the app's own when it passed `database`). */
  readonly db: Database;
  private readonly ownsDb: boolean;
  private readonly historyLimit: number;
  private readonly logLimit: number;
  private readonly pollInterval: number;
  private readonly s: ReturnType<typeof prepare>;
  private readonly immediate: (fn: () => unknown) => unknown;
  private readonly deferred: (fn: () => unknown) => unknown;
  private readonly listCache = new Map<string, Statement>();
  private readonly listeners = new Set<(event: JobEvent) => void>();
  private readonly workListeners = new Set<() => void>();
  private readonly cancelListeners = new Set<(jobId: string) => void>();
  /** The transaction under way: the event rows it wrote and what to do once it commits. */
  private tx: { rows: EventRow[]; after: (() => void)[] } | null = null;
  /** Delivered (or being delivered) up to this events id; rows after it are news. */
  private lastRowid = 0;
  private lastVersion = -1;
  private pollTimer: NodeJS.Timeout | null = null;
  /** Rows accepted but not yet delivered: a listener that writes must not overtake earlier events. */
  private readonly queue: EventRow[] = [];
  private dispatching = false;
  private readonly wake = new WakeTimer(() => this.notifyWork());
  private readonly tokenPrefix = `${randomUUID().replace(/-/g, '').slice(0, 16)}.`;
  private tokenCounter = 0;
  private closed = false;

  constructor(options: SqliteBrokerOptions) {
    if (options === null || typeof options !== 'object') {
      throw new ConfigError('SqliteBroker(options): options must be an object.');
    }
    for (const key of Object.keys(options)) {
      if (!OPTION_KEYS.has(key)) throw new ConfigError(`Unknown SqliteBroker option "${key}".`);
    }
    this.historyLimit = positiveInt(options.historyLimit ?? 100, 'historyLimit', 1_000_000);
    this.logLimit = positiveInt(options.logLimit ?? 100, 'logLimit', 1_000_000);
    this.pollInterval = positiveInt(options.pollInterval ?? 50, 'pollInterval', 60_000);
    const busyTimeout =
      options.busyTimeout === undefined
        ? undefined
        : positiveInt(options.busyTimeout, 'busyTimeout', 3_600_000);
    if ((options.path === undefined) === (options.database === undefined)) {
      throw new ConfigError(
        'SqliteBroker needs either `path` (a file) or `database` (a better-sqlite3 connection).',
      );
    }

    let db: Database;
    if (options.path !== undefined) {
      const path = options.path;
      if (typeof path !== 'string' || path.trim() === '' || path === ':memory:') {
        throw new ConfigError(
          `The SQLite broker needs a database file, not ${JSON.stringify(path)}: an in-memory or temporary ` +
            'database would lose every job at exit and cannot be shared with another process. ' +
            'Use the memory: broker for that, or a path such as sqlite:./offload.db.',
        );
      }
      const Driver = requireDriver<typeof import('better-sqlite3')>('better-sqlite3', 'SQLite broker');
      try {
        db = new Driver(path, { timeout: busyTimeout ?? 5000 });
      } catch (err) {
        throw unusable(path, reason(err), err);
      }
      this.ownsDb = true;
    } else {
      db = options.database!;
      if (!isDatabase(db))
        throw new ConfigError('SqliteBroker: `database` must be a better-sqlite3 Database.');
      this.ownsDb = false;
    }
    this.db = db;

    try {
      if (!db.open) throw new Error('the connection is closed');
      if (!this.ownsDb && busyTimeout !== undefined) db.pragma(`busy_timeout = ${busyTimeout}`);
      // Readers never wait for the writer, and a commit is one append to the log.
      const mode = String(db.pragma('journal_mode = WAL', { simple: true })).toLowerCase();
      if (mode !== 'wal') {
        throw new ConfigError(
          `journal_mode stays "${mode}" instead of "wal" (WAL needs a file on a local filesystem that ` +
            'supports shared-memory locks; in-memory, temporary and read-only databases and most network ' +
            'filesystems cannot)',
        );
      }
      // In WAL mode, NORMAL loses no commit when a process dies (only on power loss or an OS crash),
      // and spares every commit an fsync. The app's own connection keeps its setting.
      if (this.ownsDb) db.pragma('synchronous = NORMAL');
      migrate(db);
      this.s = prepare(db);
    } catch (err) {
      if (this.ownsDb) db.close();
      throw unusable(db.name, err instanceof ConfigError ? err.message : reason(err), err);
    }
    const run = db.transaction((fn: () => unknown) => fn());
    this.immediate = (fn) => run.immediate(fn);
    this.deferred = (fn) => run.deferred(fn);
  }

  async enqueue(input: EnqueueInput): Promise<EnqueueResult> {
    const scope = idempotencyScope(input);
    const payload = JSON.stringify(input.payload ?? null);
    return this.write(() => {
      if (scope !== null) {
        const existing = this.s.byScope.get(scope) as RecordRow | undefined;
        if (existing) return { job: recordFromRow(existing), created: false };
      }
      if (input.maxQueued != null && (this.s.count.get('queued') as number) >= input.maxQueued) {
        throw new QueueFullError(input.maxQueued);
      }
      const id = randomUUID();
      const now = Date.now();
      const runAt = input.runAt ?? now;
      const ord = this.emit(id, 1, KIND_EVENT, runAt, '"type":"status","status":"queued","attempts":0', now);
      const job = newJobRecord(input, id, JSON.parse(payload) as Json, { createdAt: now, runAt });
      this.s.insert.run(
        id,
        job.task,
        payload,
        job.maxAttempts,
        runAt,
        ord,
        now,
        job.expireAt,
        job.timeoutMs,
        job.owner,
        job.idempotencyKey,
        scope,
        job.payloadHash,
      );
      return { job, created: true };
    });
  }

  async claim(request: ClaimRequest): Promise<Lease[]> {
    if (request.tasks.length === 0 || request.limit < 1) return [];
    // An idle worker's claim finds nothing most of the time: it looks without the write lock, which
    // other processes' writes would otherwise wait on. A job that comes due after this look wakes it.
    const now = Date.now();
    const tasks = [...new Set(request.tasks)];
    if (!tasks.some((task) => this.s.due.get(task, now, 1) !== undefined)) {
      this.armNextDue(tasks, now);
      return [];
    }
    return this.write(() => this.claimDue(request, Date.now()));
  }

  async renew(jobId: string, token: string, leaseMs: number): Promise<{ cancelRequested: boolean } | null> {
    // One statement: its own transaction, which takes the write lock before it reads.
    const flag = this.s.renew.get(Date.now() + leaseMs, jobId, token) as number | undefined;
    return flag === undefined ? null : { cancelRequested: flag === 1 };
  }

  async progress(jobId: string, token: string, progress: JobProgress): Promise<boolean> {
    const json = JSON.stringify(progress);
    return this.write(() => {
      const cur = this.s.held.get(jobId, token) as StateRow | undefined;
      if (!cur) return false;
      const seq = cur.seq + 1;
      this.s.setProgress.run(json, seq, jobId);
      this.emit(jobId, seq, KIND_EVENT, null, `"type":"progress","progress":${json}`, Date.now());
      return true;
    });
  }

  async log(jobId: string, token: string, line: string): Promise<boolean> {
    return this.write(() => {
      const logs = this.s.logsOf.get(jobId, token) as string | null | undefined;
      if (logs === undefined) return false;
      const lines = logs === null ? [] : (JSON.parse(logs) as string[]);
      lines.push(String(line));
      if (lines.length > this.logLimit) lines.splice(0, lines.length - this.logLimit);
      this.s.setLogs.run(JSON.stringify(lines), jobId);
      return true;
    });
  }

  async complete(jobId: string, token: string, result: Json): Promise<boolean> {
    return this.settleOne({ jobId, token, outcome: { type: 'complete', result } });
  }

  async fail(jobId: string, token: string, error: JobError, retryAt?: number): Promise<boolean> {
    return this.settleOne({ jobId, token, outcome: { type: 'fail', error, retryAt } });
  }

  async acknowledgeCancel(jobId: string, token: string): Promise<boolean> {
    return this.settleOne({ jobId, token, outcome: { type: 'cancel' } });
  }

  private async settleOne(run: Settlement): Promise<boolean> {
    return (await this.settle([run], { tasks: [], limit: 0, leaseMs: 0, workerId: '' })).accepted[0]!;
  }

  async settle(runs: readonly Settlement[], next: ClaimRequest): Promise<SettleResult> {
    // Serialized before the transaction: it holds the write lock, other processes wait on it.
    const values = runs.map(({ outcome }) =>
      outcome.type === 'complete'
        ? JSON.stringify(outcome.result ?? null)
        : outcome.type === 'fail'
          ? JSON.stringify(outcome.error)
          : null,
    );
    return this.write(() => {
      const now = Date.now();
      const accepted = runs.map(({ jobId, token, outcome }, i) => {
        const cur = this.s.held.get(jobId, token) as StateRow | undefined;
        if (!cur) return false;
        if (outcome.type === 'cancel' || cur.cancel_requested) this.finish(cur, 'canceled', now, null, null);
        else if (outcome.type === 'complete') this.finish(cur, 'succeeded', now, values[i]!, null);
        else if (outcome.retryAt === undefined) this.finish(cur, 'failed', now, null, values[i]!);
        else this.requeue(cur, outcome.retryAt, values[i]!, 0, now);
        return true;
      });
      const leases = next.tasks.length > 0 && next.limit > 0 ? this.claimDue(next, now) : [];
      return { accepted, leases };
    });
  }

  async release(jobId: string, token: string): Promise<boolean> {
    return this.write(() => {
      const cur = this.s.held.get(jobId, token) as StateRow | undefined;
      if (!cur) return false;
      const now = Date.now();
      if (cur.cancel_requested) this.finish(cur, 'canceled', now, null, null);
      else this.requeue(cur, now, cur.error, -1, now);
      return true;
    });
  }

  async cancel(
    jobId: string,
    owner?: string | null,
  ): Promise<{ outcome: CancelOutcome; job: JobRecord | null }> {
    return this.write(() => {
      const cur = this.s.state.get(jobId) as StateRow | undefined;
      if (!cur || (owner !== undefined && cur.owner !== owner)) return { outcome: 'not-found', job: null };
      let outcome: CancelOutcome = 'finished';
      if (cur.status === 'queued') {
        this.finish(cur, 'canceled', Date.now(), null, null);
        outcome = 'canceled';
      } else if (cur.status === 'running') {
        if (!cur.cancel_requested) {
          this.s.requestCancel.run(jobId);
          // Not a client-visible change: no seq bump, not kept as history.
          this.emit(jobId, cur.seq, KIND_CANCEL, null, '"type":"cancel"', Date.now());
        }
        outcome = 'requested';
      }
      return { outcome, job: recordFromRow(this.s.get.get(jobId) as RecordRow) };
    });
  }

  async retry(jobId: string): Promise<JobRecord | null> {
    return this.write(() => {
      const cur = this.s.state.get(jobId) as StateRow | undefined;
      if (!cur || (cur.status !== 'failed' && cur.status !== 'canceled')) return null;
      this.s.resetRun.run(jobId);
      this.requeue({ ...cur, attempts: 0 }, Date.now(), null, 0, Date.now());
      return recordFromRow(this.s.get.get(jobId) as RecordRow);
    });
  }

  async get(jobId: string): Promise<JobRecord | null> {
    const row = this.s.get.get(jobId) as RecordRow | undefined;
    return row ? recordFromRow(row) : null;
  }

  async list(query: ListQuery): Promise<ListPage> {
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    const where: string[] = [];
    const params: unknown[] = [];
    if (query.owner === null) where.push('owner IS NULL');
    else if (query.owner !== undefined) {
      where.push('owner = ?');
      params.push(query.owner);
    }
    if (query.status) {
      where.push('status = ?');
      params.push(query.status);
    }
    if (query.task) {
      where.push('task = ?');
      params.push(query.task);
    }
    if (after) {
      where.push('(created_at, id) < (?, ?)');
      params.push(after.createdAt, after.id);
    }
    const sql =
      `SELECT ${RECORD} FROM jobs ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ` +
      'ORDER BY created_at DESC, id DESC LIMIT ?';
    let statement = this.listCache.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql).safeIntegers(false);
      this.listCache.set(sql, statement);
    }
    const rows = statement.all(...params, query.limit + 1) as RecordRow[];
    const jobs = rows.slice(0, query.limit).map(recordFromRow);
    const last = jobs[jobs.length - 1];
    return { jobs, nextCursor: rows.length > query.limit && last ? encodeCursor(last) : null };
  }

  async history(jobId: string, afterSeq: number): Promise<JobEvent[] | null> {
    // One read transaction: the job's seq and its events from the same snapshot.
    return this.deferred(() => {
      const seq = this.s.seqOf.get(jobId) as number | undefined;
      if (seq === undefined) return null;
      if (afterSeq >= seq) return [];
      const rows = this.s.history.all(jobId, afterSeq) as { seq: number; body: string }[];
      return eventsAfter(
        seq,
        rows.map((r) => JSON.parse(r.body) as JobEvent),
        afterSeq,
      );
    }) as JobEvent[] | null;
  }

  async subscribe(listener: (event: JobEvent) => void): Promise<Unsubscribe> {
    if (this.closed) throw new Error('The broker is closed.');
    this.listeners.add(listener);
    this.listen();
    return () => {
      this.listeners.delete(listener);
      this.unlisten();
    };
  }

  onWork(listener: () => void): Unsubscribe {
    if (this.closed) return () => {};
    this.workListeners.add(listener);
    this.listen();
    return () => {
      this.workListeners.delete(listener);
      this.unlisten();
    };
  }

  onCancel(listener: (jobId: string) => void): Unsubscribe {
    if (this.closed) return () => {};
    this.cancelListeners.add(listener);
    this.listen();
    return () => {
      this.cancelListeners.delete(listener);
      this.unlisten();
    };
  }

  async recover(): Promise<number> {
    // Every worker calls this on a timer: most calls find nothing, and need not take the write lock.
    if (this.s.expiredLeases.get(Date.now(), 1) === undefined) return 0;
    let touched = 0;
    for (;;) {
      const n = this.write(() => {
        const now = Date.now();
        const expired = this.s.expiredLeases.all(now, BATCH) as StateRow[];
        for (const cur of expired) {
          if (cur.cancel_requested) this.finish(cur, 'canceled', now, null, null);
          else if (cur.attempts >= cur.max_attempts) this.finish(cur, 'failed', now, null, LEASE_EXPIRED);
          else this.requeue(cur, now, LEASE_EXPIRED, 0, now);
        }
        return expired.length;
      });
      touched += n;
      if (n < BATCH) return touched;
    }
  }

  async purge(before: number): Promise<number> {
    if (this.s.purgeable.get(before, 1) === undefined) return 0;
    let purged = 0;
    for (;;) {
      const n = this.write(() => {
        const ids = this.s.purgeable.all(before, BATCH) as string[];
        for (const id of ids) {
          this.s.deleteEvents.run(id);
          this.s.deleteJob.run(id);
        }
        return ids.length;
      });
      purged += n;
      if (n < BATCH) return purged;
    }
  }

  async counts(): Promise<Record<JobStatus, number>> {
    const out = {} as Record<JobStatus, number>;
    for (const status of JOB_STATUSES) out[status] = 0;
    for (const row of this.s.counts.all() as { status: JobStatus; n: number }[]) out[row.status] = row.n;
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.wake.stop();
    this.listeners.clear();
    this.workListeners.clear();
    this.cancelListeners.clear();
    this.queue.length = 0;
    if (this.ownsDb) this.db.close();
  }

  /**
   * Run `fn` in one IMMEDIATE transaction (the write lock first, so no other process's commit can
   * fall between its reads and its writes), then deliver the events it wrote. While anything
   * listens, it first reads what other processes committed since the last look: those events
   * come before this transaction's, which keeps each job's events in seq order.
   */
  private write<T>(fn: () => T): T {
    const tx: { rows: EventRow[]; after: (() => void)[] } = { rows: [], after: [] };
    let result: T;
    try {
      result = this.immediate(() => {
        this.tx = tx;
        if (this.pollTimer) tx.rows.push(...this.readNew());
        return fn();
      }) as T;
    } finally {
      this.tx = null;
    }
    if (tx.rows.length > 0) this.accept(tx.rows);
    for (const fn of tx.after) fn();
    return result;
  }

  /** Lease up to `limit` due jobs of `tasks`, oldest first; fail those past their age limit. */
  private claimDue(request: ClaimRequest, now: number): Lease[] {
    const tasks = [...new Set(request.tasks)];
    const until = now + request.leaseMs;
    const leases: Lease[] = [];
    while (leases.length < request.limit) {
      const due = this.dueJobs(tasks, now, request.limit - leases.length);
      if (due.length === 0) break;
      for (const cur of due) {
        // The age limit is about starting: a job that already ran (now waiting for a retry) keeps going.
        if (cur.expire_at !== null && cur.started_at === null && cur.expire_at <= now) {
          this.finish(cur, 'failed', now, null, EXPIRED);
          continue;
        }
        const token = `${this.tokenPrefix}${++this.tokenCounter}`;
        const row = this.s.take.get(now, token, until, cur.id) as RecordRow;
        this.emit(
          cur.id,
          row.seq,
          KIND_EVENT,
          null,
          `"type":"status","status":"running","attempts":${row.attempts}`,
          now,
        );
        leases.push({ job: recordFromRow(row), token });
      }
    }
    if (leases.length < request.limit) this.armNextDue(tasks, now);
    return leases;
  }

  /** Wake this process's workers when the earliest job of `tasks` not due at `now` comes due. */
  private armNextDue(tasks: readonly string[], now: number): void {
    let next = Number.POSITIVE_INFINITY;
    for (const task of tasks) {
      const at = this.s.nextDue.get(task, now) as number | null;
      if (at !== null && at < next) next = at;
    }
    if (next === Number.POSITIVE_INFINITY) return;
    if (this.tx) this.tx.after.push(() => this.wake.arm(next));
    else this.wake.arm(next);
  }

  /** The `limit` oldest due jobs over `tasks`: each task's in index order, merged. */
  private dueJobs(tasks: string[], now: number, limit: number): DueRow[] {
    if (tasks.length === 1) return this.s.due.all(tasks[0], now, limit) as DueRow[];
    const all: DueRow[] = [];
    for (const task of tasks) all.push(...(this.s.due.all(task, now, limit) as DueRow[]));
    all.sort((a, b) => a.run_at - b.run_at || a.ord - b.ord);
    return all.slice(0, limit);
  }

  /** End the job; `result` and `error` are JSON, or null to keep what the job has. */
  private finish(
    cur: StateRow,
    status: 'succeeded' | 'failed' | 'canceled',
    now: number,
    result: string | null,
    error: string | null,
  ): void {
    const seq = cur.seq + 1;
    this.s.finish.run(status, now, result, error, seq, cur.id);
    const r = status === 'succeeded' ? result! : 'null';
    const e = status === 'succeeded' ? 'null' : (error ?? cur.error ?? 'null');
    this.emit(
      cur.id,
      seq,
      KIND_EVENT,
      null,
      `"type":"status","status":"${status}","attempts":${cur.attempts},"result":${r},"error":${e}`,
      now,
    );
  }

  /** Back to queued for `runAt`; `error` (JSON, or null to clear) is the job's error from now on. */
  private requeue(
    cur: StateRow,
    runAt: number,
    error: string | null,
    attemptsDelta: number,
    now: number,
  ): void {
    const seq = cur.seq + 1;
    const attempts = cur.attempts + attemptsDelta;
    const ord = this.emit(
      cur.id,
      seq,
      KIND_EVENT,
      runAt,
      `"type":"status","status":"queued","attempts":${attempts},"error":${error ?? 'null'}`,
      now,
    );
    this.s.requeue.run(runAt, ord, error, attempts, seq, cur.id);
  }

  /**
   * Append an event row (history and feed) and cap the job's history. `members` is the JSON of
   * the event after jobId, seq and at; the values in it (result, error, progress) are stored JSON
   * text, never parsed and encoded again. Returns the row id.
   */
  private emit(
    jobId: string,
    seq: number,
    kind: number,
    wakeAt: number | null,
    members: string,
    now: number,
  ): number {
    const body = `{"jobId":"${jobId}","seq":${seq},"at":${now},${members}}`;
    const id = Number(this.s.addEvent.run(jobId, seq, kind, wakeAt, body).lastInsertRowid);
    if (kind === KIND_EVENT && seq > this.historyLimit) this.s.trimEvents.run(jobId, seq - this.historyLimit);
    this.tx?.rows.push({ id, kind, job_id: jobId, wake_at: wakeAt, body });
    return id;
  }

  /** Rows other processes committed since the last look (bodies only when someone wants events). */
  private readNew(): EventRow[] {
    return (this.listeners.size > 0 ? this.s.newEvents : this.s.newSignals).all(this.lastRowid) as EventRow[];
  }

  /** Deliver rows in id order, once each; rows arriving while delivering wait their turn. */
  private accept(rows: EventRow[]): void {
    for (const row of rows) {
      if (!this.pollTimer || row.id <= this.lastRowid) continue;
      this.lastRowid = row.id;
      this.queue.push(row);
    }
    if (this.dispatching) return;
    this.dispatching = true;
    try {
      // The length is read at each step: rows a listener's own write adds come after these.
      for (let i = 0; i < this.queue.length; i++) this.deliver(this.queue[i]!);
    } finally {
      this.queue.length = 0;
      this.dispatching = false;
    }
  }

  private deliver(row: EventRow): void {
    if (row.kind === KIND_CANCEL) {
      for (const listener of this.cancelListeners) guard(() => listener(row.job_id));
    }
    if (row.wake_at !== null && this.workListeners.size > 0) {
      if (row.wake_at > Date.now()) this.wake.arm(row.wake_at);
      else this.notifyWork();
    }
    if (this.listeners.size > 0 && row.body !== undefined) {
      const event = JSON.parse(row.body) as JobEvent;
      for (const listener of this.listeners) guard(() => listener(event));
    }
  }

  /** Start looking for other processes' commits, from now on, when the first listener comes. */
  private listen(): void {
    if (this.pollTimer || this.closed) return;
    this.lastVersion = this.s.dataVersion.get() as number;
    this.lastRowid = (this.s.lastEventId.get() as number | null) ?? 0;
    this.pollTimer = setInterval(() => this.poll(), this.pollInterval);
    this.pollTimer.unref();
  }

  private unlisten(): void {
    if (this.listeners.size + this.workListeners.size + this.cancelListeners.size > 0) return;
    if (this.pollTimer) clearInterval(this.pollTimer);
    this.pollTimer = null;
    this.queue.length = 0;
  }

  private poll(): void {
    try {
      const version = this.s.dataVersion.get() as number;
      if (version === this.lastVersion) return;
      this.lastVersion = version;
      this.accept(this.readNew());
    } catch {
      // A read refused for a moment (the file is being recovered): the next look catches up.
    }
  }

  private notifyWork(): void {
    for (const listener of this.workListeners) guard(listener);
  }
}

/** The statements the broker runs, prepared once per connection. */
function prepare(db: Database) {
  const p = (sql: string): Statement => db.prepare(sql).safeIntegers(false);
  const state = 'id, status, attempts, max_attempts, error, seq, cancel_requested, owner';
  return {
    insert: p(
      `INSERT INTO jobs (id, task, payload, status, attempts, max_attempts, run_at, ord, created_at,
        expire_at, timeout_ms, owner, idempotency_key, idem_scope, payload_hash, seq)
       VALUES (?, ?, ?, 'queued', 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1)`,
    ),
    byScope: p(`SELECT ${RECORD} FROM jobs WHERE idem_scope = ?`),
    count: p('SELECT n FROM counts WHERE status = ?').pluck(),
    counts: p('SELECT status, n FROM counts'),
    get: p(`SELECT ${RECORD} FROM jobs WHERE id = ?`),
    state: p(`SELECT ${state} FROM jobs WHERE id = ?`),
    held: p(`SELECT ${state} FROM jobs WHERE id = ? AND token = ? AND status = 'running'`),
    due: p(
      `SELECT ${state}, run_at, ord, expire_at, started_at FROM jobs
       WHERE status = 'queued' AND task = ? AND run_at <= ? ORDER BY run_at, ord LIMIT ?`,
    ),
    nextDue: p(`SELECT min(run_at) FROM jobs WHERE status = 'queued' AND task = ? AND run_at > ?`).pluck(),
    take: p(
      `UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, token = ?,
        lease_until = ?, seq = seq + 1 WHERE id = ? RETURNING ${RECORD}`,
    ),
    renew: p(
      `UPDATE jobs SET lease_until = ? WHERE id = ? AND token = ? AND status = 'running'
       RETURNING cancel_requested`,
    ).pluck(),
    setProgress: p('UPDATE jobs SET progress = ?, seq = ? WHERE id = ?'),
    logsOf: p(`SELECT logs FROM jobs WHERE id = ? AND token = ? AND status = 'running'`).pluck(),
    setLogs: p('UPDATE jobs SET logs = ? WHERE id = ?'),
    finish: p(
      `UPDATE jobs SET status = ?, finished_at = ?, result = coalesce(?, result), error = coalesce(?, error),
        seq = ?, cancel_requested = 0, token = NULL, lease_until = NULL WHERE id = ?`,
    ),
    requeue: p(
      `UPDATE jobs SET status = 'queued', run_at = ?, ord = ?, error = ?, attempts = ?, seq = ?,
        token = NULL, lease_until = NULL WHERE id = ?`,
    ),
    resetRun: p(
      `UPDATE jobs SET attempts = 0, result = NULL, progress = NULL, started_at = NULL, finished_at = NULL,
        cancel_requested = 0, expire_at = NULL WHERE id = ?`,
    ),
    requestCancel: p('UPDATE jobs SET cancel_requested = 1 WHERE id = ?'),
    expiredLeases: p(`SELECT ${state} FROM jobs WHERE status = 'running' AND lease_until <= ? LIMIT ?`),
    purgeable: p('SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT ?').pluck(),
    deleteJob: p('DELETE FROM jobs WHERE id = ?'),
    deleteEvents: p('DELETE FROM events WHERE job_id = ?'),
    seqOf: p('SELECT seq FROM jobs WHERE id = ?').pluck(),
    history: p(
      `SELECT seq, body FROM events WHERE job_id = ? AND kind = ${KIND_EVENT} AND seq > ? ORDER BY seq`,
    ),
    addEvent: p('INSERT INTO events (job_id, seq, kind, wake_at, body) VALUES (?, ?, ?, ?, ?)'),
    trimEvents: p('DELETE FROM events WHERE job_id = ? AND seq <= ?'),
    newEvents: p('SELECT id, kind, job_id, wake_at, body FROM events WHERE id > ? ORDER BY id'),
    newSignals: p('SELECT id, kind, job_id, wake_at FROM events WHERE id > ? ORDER BY id'),
    lastEventId: p('SELECT max(id) FROM events').pluck(),
    dataVersion: p('PRAGMA data_version').pluck(),
  };
}

/**
 * Create the schema in a new file, or check the file's version. In an IMMEDIATE transaction: two
 * processes opening a new file at once create it once.
 */
function migrate(db: Database): void {
  db.transaction(() => {
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version === SCHEMA_VERSION) return;
    if (version > SCHEMA_VERSION) {
      throw new ConfigError(
        `the file has offload schema version ${version}, newer than this version of offload knows (${SCHEMA_VERSION})`,
      );
    }
    const tables = db
      .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
      .pluck()
      .all() as string[];
    const foreign = tables.filter((t) => !SCHEMA_TABLES.includes(t));
    if (version !== 0 || foreign.length > 0) {
      throw new ConfigError(
        `the file is not an offload database (user_version ${version}, tables ${foreign.join(', ') || 'none'}); ` +
          'give the broker a file of its own',
      );
    }
    for (const statement of SCHEMA) db.exec(statement);
    db.pragma(`user_version = ${SCHEMA_VERSION}`);
  }).immediate();
}

/** A listener's exception is not the broker's: the commit stands, and the other listeners still hear. */
function guard(fn: () => void): void {
  try {
    fn();
  } catch {
    // Nothing to undo; JobEvents and the worker keep their own listeners from throwing.
  }
}

function positiveInt(value: unknown, name: string, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > max) {
    throw new ConfigError(
      `SqliteBroker ${name} must be an integer from 1 to ${max}; got ${JSON.stringify(value)}.`,
    );
  }
  return value;
}

function isDatabase(value: unknown): value is Database {
  const db = value as Partial<Database> | null;
  return (
    typeof db?.prepare === 'function' &&
    typeof db.pragma === 'function' &&
    typeof db.transaction === 'function'
  );
}

function reason(err: unknown): string {
  const code = (err as { code?: unknown })?.code;
  const message = err instanceof Error ? err.message : String(err);
  return typeof code === 'string' ? `${message} (${code})` : message;
}

/** The file cannot serve as a broker: say which file and why. */
function unusable(path: string, cause: string, err: unknown): ConfigError {
  const error = new ConfigError(`The SQLite broker cannot use ${JSON.stringify(path)}: ${cause}.`);
  if (err !== undefined && err !== null) error.cause = err;
  return error;
}

/**
 * `BROKER_URL=sqlite:<path>`: `sqlite:./offload.db` (relative to the working directory),
 * `sqlite:/var/lib/app/offload.db`; `sqlite:///var/lib/app/offload.db` is read the same way.
 * The rest of the URL is the file name as it is (no query options).
 */
export function fromUrl(url: string): SqliteBroker {
  if (!/^sqlite:/i.test(url)) throw new ConfigError(`Not a sqlite: URL: ${JSON.stringify(url)}.`);
  let path = url.slice('sqlite:'.length);
  if (path.startsWith('//')) path = path.slice(2);
  if (path === '') {
    throw new ConfigError(
      `${JSON.stringify(url)} names no file: use sqlite:./offload.db or sqlite:/abs/path.db.`,
    );
  }
  return new SqliteBroker({ path });
}
