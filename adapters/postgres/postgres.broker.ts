import { createHash } from 'node:crypto';
import type { Client, Pool, PoolConfig } from 'pg';
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
import { BrokerSignals, parseEvents } from '../../lib/broker-signals.js';
import {
  eventsAfter,
  hashedIdempotencyScope,
  newJobRecord,
  recordFromJsonRow,
  recordFromRow,
  type SqlJobRow,
} from '../../lib/broker-support.js';
import { requireDriver } from '../../lib/broker-url.js';
import { delay } from '../../lib/duration.js';
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
import { checkSchemaName, latestVersion, migrate, schemaVersion } from './migrations.js';

export interface PostgresBrokerOptions {
  /**
   * A `pg.Pool` the app already has (yours to end), a connection string, or pool options (the
   * broker makes and ends the pool). @defaultValue 'postgres://postgres@127.0.0.1:5432/postgres'
   */
  connection?: Pool | string | PoolConfig;
  /** The schema holding offload's tables and functions. @defaultValue 'offload' */
  schema?: string;
  /**
   * Create or migrate the schema on first use (under an advisory lock). `false`: only check that
   * it is at the version this offload needs (apply `migrationSql()` yourself). @defaultValue true
   */
  migrate?: boolean;
  /** Events kept per job for `Last-Event-ID` resume. @defaultValue 100 */
  historyLimit?: number;
  /** Log lines kept per job. @defaultValue 100 */
  logLimit?: number;
}

type PgModule = typeof import('pg');

/** Function calls a client's request waits on: they get a short connection timeout (503 fast). */
const CONNECT_TIMEOUT_MS = 2000;

/**
 * A broker on PostgreSQL: every state change is one call of a function in the broker's schema
 * (adapters/postgres/sql), one transaction. Workers claim with `FOR UPDATE SKIP LOCKED`; one
 * LISTEN connection per broker carries wake-ups, cancels and job events to every process.
 */
export class PostgresBroker implements Broker {
  /** Each settle is a transaction to commit: half the slots per call measured best (BENCHMARKS.md). */
  readonly settleShare = 0.5;
  readonly pool: Pool;
  readonly schema: string;
  private readonly ownsPool: boolean;
  private readonly pg: PgModule;
  private readonly historyLimit: number;
  private readonly logLimit: number;
  private readonly autoMigrate: boolean;
  /** Statement names: prepared once per connection. */
  private readonly names: Record<string, string>;
  private readonly channels: { events: string; work: string; cancel: string };
  private ready: Promise<void> | null = null;
  private readonly signals = new BrokerSignals();
  private listener: Client | null = null;
  private listening: Promise<Client> | null = null;
  /** Channels this broker listens on (again after a reconnect), and their LISTEN on `listener`. */
  private readonly wanted = new Set<string>();
  private readonly listens = new Map<string, Promise<void>>();
  private reconnectTimer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Jobs enqueued this turn, announced together once their enqueues committed. */
  private announcing: { ids: string[]; createdAt: number[]; runAt: number[]; sent: Promise<void> } | null =
    null;
  /**
   * The last seq delivered per job, for the jobs heard of lately (at most 10,000, oldest dropped).
   * A job's announcement (seq 1) is its own transaction after the enqueue's: a busy worker may
   * claim the job in between, and its later events then arrive first. Those stale events are
   * dropped here, so each job's events still arrive in seq order.
   */
  private readonly delivered = new Map<string, number>();

  constructor(options: PostgresBrokerOptions = {}) {
    this.pg = requireDriver<PgModule>('pg', 'PostgreSQL broker');
    const connection = options.connection ?? 'postgres://postgres@127.0.0.1:5432/postgres';
    if (connection instanceof this.pg.Pool) {
      this.pool = connection;
      this.ownsPool = false;
    } else {
      const config: PoolConfig =
        typeof connection === 'string' ? { connectionString: connection } : { ...connection };
      config.connectionTimeoutMillis ??= CONNECT_TIMEOUT_MS;
      this.pool = new this.pg.Pool(config);
      this.ownsPool = true;
      // An idle client that loses its connection is reported here; unhandled, it ends the process.
      this.pool.on('error', () => {});
    }
    this.schema = options.schema ?? 'offload';
    checkSchemaName(this.schema);
    this.autoMigrate = options.migrate ?? true;
    this.historyLimit = options.historyLimit ?? 100;
    this.logLimit = options.logLimit ?? 100;
    const tag = createHash('sha1').update(this.schema).digest('hex').slice(0, 8);
    this.names = {};
    for (const fn of [
      'enqueue',
      'announce',
      'claim',
      'settle',
      'renew',
      'progress',
      'log',
      'get',
      'history',
      'cancel',
    ]) {
      this.names[fn] = `offload_${tag}_${fn}`;
    }
    this.channels = {
      events: `${this.schema}:events`,
      work: `${this.schema}:work`,
      cancel: `${this.schema}:cancel`,
    };
  }

  /** Migrate (or check) the schema once, before the first statement. */
  private init(): Promise<void> {
    if (!this.ready) {
      this.ready = (async () => {
        if (this.autoMigrate) {
          await migrate(this.pool, this.schema);
          return;
        }
        const version = await schemaVersion(this.pool, this.schema);
        if (version < latestVersion()) {
          throw new ConfigError(
            `The PostgreSQL schema "${this.schema}" is at version ${version}; this offload needs ${latestVersion()}. ` +
              `Apply migrationSql({ schema: '${this.schema}', fromVersion: ${version} }) or let the broker migrate.`,
          );
        }
      })();
      // A failed start (database down) is tried again by the next call.
      this.ready.catch(() => {
        this.ready = null;
      });
    }
    return this.ready;
  }

  /** Run one of the schema's functions through a named (prepared) statement. */
  private async call<T>(name: string, sql: string, values: unknown[]): Promise<T> {
    await this.init();
    const result = await this.pool.query({ name: this.names[name], text: sql, values });
    return result.rows[0]?.r as T;
  }

  private get s(): string {
    return `"${this.schema}"`;
  }

  async enqueue(input: EnqueueInput): Promise<EnqueueResult> {
    const idem = hashedIdempotencyScope(input);
    const payload = JSON.stringify(input.payload);
    const reply = await this.call<string | null>(
      'enqueue',
      `SELECT ${this.s}.enqueue($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) AS r`,
      [
        // The id: made by the function, ordered by creation time (lists read the primary key).
        null,
        input.task,
        payload,
        input.owner,
        input.maxAttempts,
        input.runAt ?? null,
        input.expireAt ?? null,
        input.timeoutMs ?? null,
        idem,
        input.idempotencyKey || null,
        input.payloadHash || null,
        input.maxQueued ?? null,
      ],
    );
    if (reply === null) throw new QueueFullError(input.maxQueued!);
    const parsed = JSON.parse(reply) as {
      created: boolean;
      id: string;
      createdAt: number;
      runAt: number;
      job?: JobRow;
    };
    if (!parsed.created) return { job: recordFromRow(parsed.job!), created: false };
    const job = newJobRecord(input, parsed.id, JSON.parse(payload) as Json, {
      createdAt: parsed.createdAt,
      runAt: parsed.runAt,
    });
    // NOTIFY reaches this process's listener too, but one still connecting would miss it.
    if (input.runAt !== undefined && input.runAt > Date.now()) this.signals.armWake(input.runAt);
    else this.signals.wakeWorkers();
    await this.announce(job);
    return { job, created: true };
  }

  /**
   * Announce a committed job, its queued event and a wake-up for the workers of every process, in
   * a transaction after the enqueue's (see announce_queued in migration 003), shared by the jobs
   * enqueued in the same turn. It never fails: an announcement is a hint, the job is stored.
   */
  private announce(job: JobRecord): Promise<void> {
    let batch = this.announcing;
    if (!batch) {
      const ids: string[] = [];
      const createdAt: number[] = [];
      const runAt: number[] = [];
      const sent = new Promise<void>((resolve) =>
        setImmediate(() => {
          if (this.announcing === batch) this.announcing = null;
          this.pool
            .query({
              name: this.names.announce,
              text: `SELECT ${this.s}.announce_queued($1, $2, $3)`,
              values: [ids, createdAt, runAt],
            })
            .then(
              () => resolve(),
              () => resolve(),
            );
        }),
      );
      batch = { ids, createdAt, runAt, sent };
      this.announcing = batch;
    }
    batch.ids.push(job.id);
    batch.createdAt.push(job.createdAt);
    batch.runAt.push(job.runAt);
    return batch.sent;
  }

  async claim(request: ClaimRequest): Promise<Lease[]> {
    if (request.tasks.length === 0 || request.limit < 1) return [];
    const reply = await this.call<string>('claim', `SELECT ${this.s}.claim($1, $2, $3, $4) AS r`, [
      request.tasks,
      request.limit,
      request.leaseMs,
      this.historyLimit,
    ]);
    return this.leasesOf(JSON.parse(reply) as ClaimReply);
  }

  private leasesOf(reply: ClaimReply): Lease[] {
    // The earliest job not yet due: wake this process's workers then, not at the next poll.
    if (reply.nextDue !== null) this.signals.armWake(reply.nextDue);
    return reply.leases.map((row) => ({ token: String(row.token), job: recordFromJsonRow(row) }));
  }

  async settle(runs: readonly Settlement[], next: ClaimRequest): Promise<SettleResult> {
    const ids: string[] = [];
    const tokens: (string | null)[] = [];
    const outcomes: string[] = [];
    const values: (string | null)[] = [];
    const retryAts: (number | null)[] = [];
    for (const { jobId, token, outcome } of runs) {
      ids.push(jobId);
      tokens.push(isToken(token) ? token : null);
      outcomes.push(outcome.type);
      if (outcome.type === 'complete') {
        values.push(JSON.stringify(outcome.result ?? null));
        retryAts.push(null);
      } else if (outcome.type === 'fail') {
        values.push(JSON.stringify(outcome.error));
        retryAts.push(outcome.retryAt ?? null);
        if (outcome.retryAt !== undefined && outcome.retryAt > Date.now())
          this.signals.armWake(outcome.retryAt);
      } else {
        values.push(null);
        retryAts.push(null);
      }
    }
    return this.settleRaw(ids, tokens, outcomes, values, retryAts, next);
  }

  private async settleRaw(
    ids: string[],
    tokens: (string | null)[],
    outcomes: string[],
    values: (string | null)[],
    retryAts: (number | null)[],
    next: ClaimRequest,
  ): Promise<SettleResult> {
    const reply = await this.call<string>(
      'settle',
      `SELECT ${this.s}.settle($1, $2, $3, $4, $5, $6, $7, $8, $9) AS r`,
      [ids, tokens, outcomes, values, retryAts, next.tasks, next.limit, next.leaseMs, this.historyLimit],
    );
    const parsed = JSON.parse(reply) as ClaimReply & { accepted: boolean[] };
    return { accepted: parsed.accepted, leases: this.leasesOf(parsed) };
  }

  private async settleOne(run: Settlement): Promise<boolean> {
    return (await this.settle([run], NO_CLAIM)).accepted[0] === true;
  }

  complete(jobId: string, token: string, result: Json): Promise<boolean> {
    return this.settleOne({ jobId, token, outcome: { type: 'complete', result } });
  }

  fail(jobId: string, token: string, error: JobError, retryAt?: number): Promise<boolean> {
    return this.settleOne({ jobId, token, outcome: { type: 'fail', error, retryAt } });
  }

  acknowledgeCancel(jobId: string, token: string): Promise<boolean> {
    return this.settleOne({ jobId, token, outcome: { type: 'cancel' } });
  }

  async release(jobId: string, token: string): Promise<boolean> {
    // Not a run's outcome (RunOutcome): the worker hands the job back.
    const { accepted } = await this.settleRaw(
      [jobId],
      [isToken(token) ? token : null],
      ['release'],
      [null],
      [null],
      NO_CLAIM,
    );
    return accepted[0] === true;
  }

  async renew(jobId: string, token: string, leaseMs: number): Promise<{ cancelRequested: boolean } | null> {
    if (!isToken(token)) return null;
    const reply = await this.call<boolean | null>('renew', `SELECT ${this.s}.renew($1, $2, $3) AS r`, [
      jobId,
      token,
      leaseMs,
    ]);
    return reply === null || reply === undefined ? null : { cancelRequested: reply };
  }

  async progress(jobId: string, token: string, progress: JobProgress): Promise<boolean> {
    if (!isToken(token)) return false;
    return this.call<boolean>('progress', `SELECT ${this.s}.progress($1, $2, $3, $4) AS r`, [
      jobId,
      token,
      JSON.stringify(progress),
      this.historyLimit,
    ]);
  }

  async log(jobId: string, token: string, line: string): Promise<boolean> {
    if (!isToken(token)) return false;
    return this.call<boolean>('log', `SELECT ${this.s}.append_log($1, $2, $3, $4) AS r`, [
      jobId,
      token,
      line,
      this.logLimit,
    ]);
  }

  async cancel(
    jobId: string,
    owner?: string | null,
  ): Promise<{ outcome: CancelOutcome; job: JobRecord | null }> {
    if (!isUuid(jobId)) return { outcome: 'not-found', job: null };
    const reply = await this.call<string>('cancel', `SELECT ${this.s}.cancel($1, $2, $3, $4) AS r`, [
      jobId,
      owner !== undefined,
      owner ?? null,
      this.historyLimit,
    ]);
    const parsed = JSON.parse(reply) as { outcome: CancelOutcome; job: JobRow | null };
    return { outcome: parsed.outcome, job: parsed.job ? recordFromRow(parsed.job) : null };
  }

  async retry(jobId: string): Promise<JobRecord | null> {
    if (!isUuid(jobId)) return null;
    await this.init();
    const { rows } = await this.pool.query(`SELECT ${this.s}.retry($1, $2) AS r`, [jobId, this.historyLimit]);
    const reply = rows[0]?.r as string | null;
    return reply ? recordFromRow(JSON.parse(reply) as JobRow) : null;
  }

  async get(jobId: string): Promise<JobRecord | null> {
    if (!isUuid(jobId)) return null;
    const reply = await this.call<string | undefined>(
      'get',
      // The row as JSON text: one column for node-pg to decode.
      `SELECT row_to_json(j)::text AS r FROM ${this.s}.job j WHERE id = $1`,
      [jobId],
    );
    return reply ? recordFromRow(JSON.parse(reply) as JobRow) : null;
  }

  async list(query: ListQuery): Promise<ListPage> {
    await this.init();
    const where: string[] = [];
    const values: unknown[] = [];
    const add = (sql: string, value: unknown) => {
      values.push(value);
      where.push(sql.replace('?', `$${values.length}`));
    };
    if (query.owner !== undefined) {
      if (query.owner === null) where.push('owner IS NULL');
      else add('owner = ?', query.owner);
    }
    if (query.status) add('status = ?', query.status);
    if (query.task) add('task = ?', query.task);
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    if (after) {
      add('id < ?', after.id);
    }
    values.push(query.limit + 1);
    // Newest first through the primary key or job_owner: an id begins with its job's createdAt
    // (migration 003), so id order is (createdAt, id) order and the cursor's id alone says where
    // the page ended. One row more than the page says whether another page follows.
    const { rows } = await this.pool.query(
      `SELECT row_to_json(j)::text AS r FROM ${this.s}.job j
       ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
       ORDER BY id DESC LIMIT $${values.length}`,
      values,
    );
    const jobs = rows
      .slice(0, query.limit)
      .map((row) => recordFromRow(JSON.parse(row.r as string) as JobRow));
    const last = jobs[jobs.length - 1];
    return { jobs, nextCursor: rows.length > query.limit && last ? encodeCursor(last) : null };
  }

  async history(jobId: string, afterSeq: number): Promise<JobEvent[] | null> {
    if (!isUuid(jobId)) return null;
    await this.init();
    // The job's seq and its events after afterSeq, read in one statement (one snapshot): an event
    // committed between two reads cannot slip between them. Three events are read back from the
    // job itself (built by status_event(), as they were announced) unless a history row holds
    // them (migrations 002 and 003 stopped writing them): seq 1, queued at createdAt; seq 2, the
    // first claim, at startedAt until a later claim or an admin retry writes it down; and a final
    // status, the job's last event. Like kept rows, they count only within the last historyLimit.
    const s = this.s;
    const { rows } = await this.pool.query({
      name: this.names.history,
      text: `SELECT j.seq, coalesce((SELECT array_agg(body ORDER BY seq) FROM (
                 SELECT e.seq, e.body FROM ${s}.event e WHERE e.job_id = j.id AND e.seq > $2
                 UNION ALL
                 SELECT d.seq, d.body FROM (VALUES
                   (1, ${s}.status_event(j.id, 1, j.created_at, 'queued', 0, NULL, NULL, false)),
                   (2, CASE WHEN j.started_at IS NOT NULL AND (j.seq > 2 OR j.status = 'running')
                     THEN ${s}.status_event(j.id, 2, j.started_at, 'running', 1, NULL, NULL, false) END),
                   (j.seq, CASE WHEN j.status IN ('succeeded', 'failed', 'canceled')
                     THEN ${s}.status_event(j.id, j.seq, j.finished_at, j.status, j.attempts, j.result,
                       j.error, false) END)
                 ) AS d(seq, body)
                 WHERE d.body IS NOT NULL AND d.seq > $2 AND d.seq > j.seq - $3
                   AND NOT EXISTS (SELECT 1 FROM ${s}.event e WHERE e.job_id = j.id AND e.seq = d.seq)
               ) AS events), '{}') AS events
             FROM ${s}.job j WHERE j.id = $1`,
      values: [jobId, afterSeq, this.historyLimit],
    });
    const row = rows[0] as { seq: number; events: string[] } | undefined;
    if (!row) return null;
    return eventsAfter(
      row.seq,
      row.events.map((e) => JSON.parse(e) as JobEvent),
      afterSeq,
    );
  }

  subscribe(listener: (event: JobEvent) => void): Promise<Unsubscribe> {
    return this.signals.subscribe(listener, () => this.listen(this.channels.events));
  }

  onWork(listener: () => void): Unsubscribe {
    return this.signals.onWork(listener, () => this.listen(this.channels.work));
  }

  onCancel(listener: (jobId: string) => void): Unsubscribe {
    return this.signals.onCancel(listener, () => this.listen(this.channels.cancel));
  }

  async recover(): Promise<number> {
    await this.init();
    let touched = 0;
    for (;;) {
      const { rows } = await this.pool.query(`SELECT ${this.s}.recover(500, $1) AS r`, [this.historyLimit]);
      const n = rows[0].r as number;
      touched += n;
      if (n < 500) return touched;
    }
  }

  async purge(before: number): Promise<number> {
    await this.init();
    let purged = 0;
    for (;;) {
      const { rows } = await this.pool.query(`SELECT ${this.s}.purge($1, 500) AS r`, [before]);
      const n = rows[0].r as number;
      purged += n;
      if (n < 500) return purged;
    }
  }

  async counts(): Promise<Record<JobStatus, number>> {
    await this.init();
    // A scan of the job table: for health checks, not for every request.
    const { rows } = await this.pool.query<{ status: JobStatus; n: number }>(
      `SELECT status, count(*)::integer AS n FROM ${this.s}.job GROUP BY status`,
    );
    const out = {} as Record<JobStatus, number>;
    for (const status of JOB_STATUSES) out[status] = 0;
    for (const row of rows) out[row.status] = row.n;
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.signals.close();
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    const listener = this.listener;
    this.listener = null;
    await Promise.all([
      listener ? this.endListener(listener) : undefined,
      this.ownsPool ? this.pool.end().catch(() => {}) : undefined,
    ]);
  }

  /**
   * Listen on one of the broker's channels, on its one LISTEN connection (not from the pool: it is
   * held for good). Each channel is listened to when first needed: a worker-only process takes
   * wake-ups and cancels, not the events of every job. When the connection drops, it reconnects
   * with a growing delay, listens again, and tells the workers to claim (a wake-up may have been
   * missed meanwhile).
   */
  private listen(channel: string): Promise<void> {
    if (this.closed) return Promise.reject(new Error('The broker is closed.'));
    this.wanted.add(channel);
    return this.connection().then((client) => this.listenOn(client, channel));
  }

  private connection(): Promise<Client> {
    if (!this.listening) {
      this.listening = this.connectListener().catch((err) => {
        this.listening = null;
        throw err;
      });
    }
    return this.listening;
  }

  private listenOn(client: Client, channel: string): Promise<void> {
    let listening = this.listens.get(channel);
    if (!listening) {
      listening = (async () => {
        await client.query(`LISTEN "${channel}"`);
        // Settles send status events only while a process follows them (migration 004): this
        // connection now does. follow() waits for the settles in flight, so once it returns a
        // settle has either committed (a read of its job sees it) or sends its events here.
        if (channel === this.channels.events) {
          await this.init();
          await this.follow(client);
        }
      })().catch((err) => {
        this.listens.delete(channel);
        throw err;
      });
      this.listens.set(channel, listening);
    }
    return listening;
  }

  /**
   * follow() on the LISTEN connection. It gives up after a second when a settle it waits for is
   * itself waiting on a row (lock_timeout, so that the settles queued behind it are not held
   * longer): tried again, after a growing pause, a few times.
   */
  private async follow(client: Client): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        await client.query(`SELECT ${this.s}.follow()`);
        return;
      } catch (err) {
        if ((err as { code?: string }).code !== '55P03' || attempt === 4 || this.closed) throw err;
        await delay(100 * 2 ** attempt);
      }
    }
  }

  /** End the LISTEN connection, after saying it no longer follows events (bounded: it may be down). */
  private async endListener(client: Client): Promise<void> {
    if (this.listens.has(this.channels.events)) {
      await Promise.race([client.query(`SELECT ${this.s}.unfollow()`).catch(() => {}), delay(500)]);
    }
    await client.end().catch(() => {});
  }

  private async connectListener(): Promise<Client> {
    const client = new this.pg.Client({ ...this.pool.options, connectionTimeoutMillis: CONNECT_TIMEOUT_MS });
    client.on('error', () => {});
    client.on('notification', (msg) => this.onNotification(msg.channel, msg.payload ?? ''));
    client.on('end', () => {
      if (this.listener !== client || this.closed) return;
      this.listener = null;
      this.listening = null;
      this.listens.clear();
      this.scheduleReconnect(250);
    });
    await client.connect();
    this.listens.clear();
    try {
      await Promise.all([...this.wanted].map((channel) => this.listenOn(client, channel)));
    } catch (err) {
      this.listens.clear();
      await client.end().catch(() => {});
      throw err;
    }
    if (this.closed) {
      await client.end().catch(() => {});
      throw new Error('The broker is closed.');
    }
    this.listener = client;
    return client;
  }

  private scheduleReconnect(delayMs: number): void {
    if (this.closed || this.reconnectTimer) return;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.closed) return;
      this.connection().then(
        () => this.signals.wakeWorkers(),
        () => this.scheduleReconnect(Math.min(delayMs * 2, 1000)),
      );
    }, delayMs);
    this.reconnectTimer.unref();
  }

  private onNotification(channel: string, payload: string): void {
    // A work payload is when the job comes due: now, or later (a delay, a retry's backoff).
    if (channel === this.channels.work) this.signals.dueAt(Number(payload));
    else if (channel === this.channels.cancel) this.signals.cancelRequested(payload);
    else if (channel === this.channels.events && this.signals.hasEventListeners) {
      // One event, or the events of one call as an array.
      for (const event of parseEvents<EventNotice>(payload)) this.deliver(event);
    }
  }

  /** Events still to deliver behind one read back from the history, in arrival order. */
  private backlog: Promise<void> | null = null;

  /**
   * An event too large for a NOTIFY came as a reference: read it from the history. The events
   * after it wait for that read, so each job's events still arrive in seq order.
   */
  private deliver(event: EventNotice): void {
    if (!event.ref && !this.backlog) {
      this.emitInOrder(event);
      return;
    }
    const previous = this.backlog ?? Promise.resolve();
    const next = previous.then(async () => {
      let full: JobEvent | null = event;
      if (event.ref) {
        full = null;
        try {
          // Through history(): a final status is read back from the job, not from a kept row.
          const events = await this.history(event.jobId, event.seq - 1);
          full = events?.find((e) => e.seq === event.seq) ?? null;
        } catch {
          // Gone or unreadable: the SSE stream sends a snapshot when it sees a gap in seq.
        }
      }
      if (full) this.emitInOrder(full);
    });
    this.backlog = next;
    void next.then(() => {
      if (this.backlog === next) this.backlog = null;
    });
  }

  /** Deliver an event unless a later one of its job already went out (see `delivered`). */
  private emitInOrder(event: JobEvent): void {
    // A cancel request carries the job's current seq and is not part of its history.
    if (event.type !== 'cancel') {
      const last = this.delivered.get(event.jobId);
      if (last !== undefined && event.seq <= last) return;
      this.delivered.delete(event.jobId);
      this.delivered.set(event.jobId, event.seq);
      if (this.delivered.size > 10_000) this.delivered.delete(this.delivered.keys().next().value!);
    }
    this.signals.emit(event);
  }
}

const NO_CLAIM: ClaimRequest = { tasks: [], limit: 0, leaseMs: 0, workerId: '' };

/** A row of the job table as row_to_json writes it (with the lease token). */
interface JobRow extends SqlJobRow {
  cancel_requested: boolean;
  token: number | null;
  logs: string[];
}

interface ClaimReply {
  /** Rows with their JSON columns embedded (migration 004). */
  leases: (SqlJobRow<Json> & { token: number })[];
  nextDue: number | null;
}

type EventNotice = JobEvent & { ref?: boolean };

/** Lease tokens are bigints in the database; anything else can hold no lease. */
function isToken(token: string): boolean {
  return /^[0-9]{1,18}$/.test(token);
}

function isUuid(id: string): boolean {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id);
}

/**
 * `BROKER_URL=postgres://…` (or `postgresql://`): the URL goes to pg as its connection string,
 * except `?schema=name` (offload's schema, default `offload`), taken out before pg sees it.
 */
export function fromUrl(url: string): PostgresBroker {
  const q = url.indexOf('?');
  const params = new URLSearchParams(q === -1 ? '' : url.slice(q + 1));
  const schema = params.get('schema');
  if (schema === null) return new PostgresBroker({ connection: url });
  params.delete('schema');
  const rest = params.toString();
  return new PostgresBroker({ connection: url.slice(0, q) + (rest ? `?${rest}` : ''), schema });
}
