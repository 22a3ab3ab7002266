import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Cluster, Redis, RedisOptions } from 'ioredis';
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
import { eventsAfter, hashedIdempotencyScope, newJobRecord } from '../../lib/broker-support.js';
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

export interface RedisBrokerOptions {
  /**
   * An ioredis client (`Redis` or `Cluster`) the app already has (yours to close), a URL, or
   * connection options (the broker makes and closes the client). @defaultValue 'redis://127.0.0.1:6379'
   */
  connection?: Redis | Cluster | string | RedisOptions;
  /** Key prefix. @defaultValue 'offload' */
  prefix?: string;
  /**
   * The queue: every key of it shares one Redis Cluster hash slot (`offload:{jobs}:…`). Apps
   * that outgrow one slot split their tasks over several queues. @defaultValue 'jobs'
   */
  queue?: string;
  /** Events kept per job for `Last-Event-ID` resume. @defaultValue 100 */
  historyLimit?: number;
  /** Log lines kept per job. @defaultValue 100 */
  logLimit?: number;
}

type Client = Redis | Cluster;

const SCRIPTS = [
  'enqueue',
  'claim',
  'renew',
  'progress',
  'log',
  'settle',
  'cancel',
  'retry',
  'recover',
  'purge',
  'list',
  'history',
  'get',
  'counts',
] as const;
type ScriptName = (typeof SCRIPTS)[number];

/** Scripts a client request waits on (submit, status, cancel, list, SSE resume). */
const FAIL_FAST: ReadonlySet<ScriptName> = new Set([
  'enqueue',
  'cancel',
  'retry',
  'get',
  'list',
  'history',
  'counts',
]);

/** The Lua sources, read once per process: the shared prelude, then each script's body. */
let sources: Record<ScriptName, string> | undefined;
function loadSources(): Record<ScriptName, string> {
  if (!sources) {
    // This file runs from build/adapters/redis/; the .lua files ship in adapters/redis/lua.
    const dir = join(__dirname, '../../../adapters/redis/lua');
    const read = (file: string) => readFileSync(join(dir, file), 'utf8');
    const prelude = read('prelude.lua');
    // Every chunk of Lua a script carries runs at each call: claim_due only goes where it is used.
    const claiming = `${prelude}\n${read('claim-due.lua')}`;
    const out = {} as Record<ScriptName, string>;
    for (const name of SCRIPTS) {
      out[name] = `${name === 'claim' || name === 'settle' ? claiming : prelude}\n${read(`${name}.lua`)}`;
    }
    sources = out;
  }
  return sources;
}

/** For the plain outcome writes: settle without a claim. */
const NO_CLAIM: ClaimRequest = { tasks: [], limit: 0, leaseMs: 0, workerId: '' };

/** Who may cancel: `*` anyone; otherwise the owner key the job must have. */
function ownerKey(owner: string | null): string {
  return owner === null ? '~' : `=${owner}`;
}

/**
 * The production broker: every state change is one Lua script, atomic in Redis; workers and web
 * processes anywhere share it. Events reach every process through one subscriber connection.
 */
export class RedisBroker implements Broker {
  readonly client: Client;
  private readonly ownsClient: boolean;
  private readonly p: string;
  private readonly countsKey: string;
  private readonly historyLimit: string;
  private readonly logLimit: string;
  private readonly signals = new BrokerSignals();
  private readonly eventsChannel: string;
  private readonly workChannel: string;
  private readonly cancelChannel: string;
  private subscriber: Client | null = null;
  /** Channels subscribed or being subscribed on `subscriber`. */
  private readonly channels = new Map<string, Promise<void>>();
  private workSubscribed = false;
  private closed = false;
  /** Connected once: until then, commands queue while the first connection comes up. */
  private wasReady = false;

  constructor(options: RedisBrokerOptions = {}) {
    const connection = options.connection ?? 'redis://127.0.0.1:6379';
    if (typeof connection === 'string' || !isClient(connection)) {
      const IORedis = requireDriver<typeof import('ioredis')>('ioredis', 'Redis broker').default;
      this.client =
        typeof connection === 'string' ? new IORedis(connection) : new IORedis(connection as RedisOptions);
      this.ownsClient = true;
    } else {
      this.client = connection;
      this.ownsClient = false;
    }
    if (this.client.status === 'ready') this.wasReady = true;
    else this.client.once('ready', () => (this.wasReady = true));
    // ioredis reports every failed reconnect as an 'error' event; unhandled, each one prints a
    // stack. The broker's calls fail (and answer 503) on their own.
    if (this.ownsClient) this.client.on('error', () => {});
    const prefix = options.prefix ?? 'offload';
    const queue = options.queue ?? 'jobs';
    if (/[{}]/.test(prefix) || /[{}]/.test(queue))
      throw new ConfigError('Redis prefix and queue may not contain { or }.');
    this.p = `${prefix}:{${queue}}`;
    this.countsKey = `${this.p}:cnt`;
    this.eventsChannel = `${this.p}:events`;
    this.workChannel = `${this.p}:work`;
    this.cancelChannel = `${this.p}:cancel`;
    this.historyLimit = String(options.historyLimit ?? 100);
    this.logLimit = String(options.logLimit ?? 100);
    const lua = loadSources();
    for (const name of SCRIPTS) {
      // Defined once per client (brokers may share one); ioredis then sends EVALSHA.
      if (!(`offload_${name}` in this.client)) {
        this.client.defineCommand(`offload_${name}`, { numberOfKeys: 1, lua: lua[name] });
      }
    }
  }

  private run(name: ScriptName, ...args: (string | number)[]): Promise<any> {
    // A client's request must not wait in ioredis's offline queue while Redis is away: it would
    // outlive its 503 and run when Redis returns (a job stored twice once the client retries).
    // Worker writes (complete, renew...) do wait: run late, they keep finished work finished.
    if (this.wasReady && FAIL_FAST.has(name) && this.client.status !== 'ready') {
      return Promise.reject(new Error(`Redis is not connected (${this.client.status}).`));
    }
    const command = (this.client as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>)[
      `offload_${name}`
    ]!;
    return command.call(this.client, this.countsKey, this.p, this.historyLimit, ...args);
  }

  async enqueue(input: EnqueueInput): Promise<EnqueueResult> {
    const idem = hashedIdempotencyScope(input) ?? '';
    // Read before sending: a subscription confirmed by then is sure to see this enqueue's PUBLISH.
    const subscribed = this.workSubscribed;
    const id = randomUUID();
    const specJson = JSON.stringify({
      id,
      task: input.task,
      payload: input.payload,
      maxAttempts: input.maxAttempts,
      timeoutMs: input.timeoutMs ?? null,
      owner: input.owner,
      idempotencyKey: input.idempotencyKey || null,
      payloadHash: input.payloadHash || null,
    } satisfies Spec);
    const reply = await this.run(
      'enqueue',
      id,
      input.task,
      specJson,
      ownerKey(input.owner),
      input.runAt ?? '',
      input.expireAt ?? '',
      idem,
      input.maxQueued ?? '',
    );
    if (reply[0] === -1) throw new QueueFullError(input.maxQueued!);
    if (reply[0] === 0) return { job: toRecord(reply[1]), created: false };
    // Created: the record is what was sent, stamped with the server's times (no read back).
    const job = newJobRecord(input, id, (JSON.parse(specJson) as Spec).payload, {
      createdAt: Number(reply[1]),
      runAt: Number(reply[2]),
    });
    // Published as well; until this process's subscriber is up, its own workers are told here.
    if (input.runAt !== undefined && input.runAt > Date.now()) this.signals.armWake(input.runAt);
    else if (!subscribed) this.signals.wakeWorkers();
    return { job, created: true };
  }

  async claim(request: ClaimRequest): Promise<Lease[]> {
    if (request.tasks.length === 0 || request.limit < 1) return [];
    const reply: unknown[] = await this.run('claim', request.leaseMs, request.limit, ...request.tasks);
    return this.leasesOf(reply, 0);
  }

  /** A claim's reply from `at`: when the next delayed job comes due, then token, record pairs. */
  private leasesOf(reply: unknown[], at: number): Lease[] {
    const leases: Lease[] = [];
    for (let i = at + 1; i < reply.length; i += 2) {
      leases.push({ token: String(reply[i]), job: toRecord(reply[i + 1] as RecordReply) });
    }
    // The earliest job not yet due: wake this process's workers then, not at the next poll.
    if (reply[at] !== '') this.signals.armWake(Number(reply[at]));
    return leases;
  }

  async renew(jobId: string, token: string, leaseMs: number): Promise<{ cancelRequested: boolean } | null> {
    const reply = await this.run('renew', jobId, token, leaseMs);
    return reply === null ? null : { cancelRequested: reply === '1' };
  }

  async progress(jobId: string, token: string, progress: JobProgress): Promise<boolean> {
    return (await this.run('progress', jobId, token, JSON.stringify(progress))) === 1;
  }

  async log(jobId: string, token: string, line: string): Promise<boolean> {
    return (await this.run('log', jobId, token, line, this.logLimit)) === 1;
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

  async release(jobId: string, token: string): Promise<boolean> {
    const reply = await this.run('settle', 0, 0, 0, jobId, token, 'release', '', '');
    return reply[0][0] === 1;
  }

  private async settleOne(run: Settlement): Promise<boolean> {
    return (await this.settle([run], NO_CLAIM)).accepted[0]!;
  }

  async settle(runs: readonly Settlement[], next: ClaimRequest): Promise<SettleResult> {
    const limit = next.tasks.length === 0 ? 0 : next.limit;
    const args: (string | number)[] = [next.leaseMs, limit, limit > 0 ? next.tasks.length : 0];
    if (limit > 0) args.push(...next.tasks);
    let wakeAt = Number.POSITIVE_INFINITY;
    for (const { jobId, token, outcome } of runs) {
      if (outcome.type === 'complete') {
        args.push(jobId, token, 'complete', JSON.stringify(outcome.result ?? null), '');
      } else if (outcome.type === 'fail') {
        args.push(jobId, token, 'fail', JSON.stringify(outcome.error), outcome.retryAt ?? '');
        if (outcome.retryAt !== undefined) wakeAt = Math.min(wakeAt, outcome.retryAt);
      } else {
        args.push(jobId, token, 'cancel', '', '');
      }
    }
    const reply: unknown[] = await this.run('settle', ...args);
    // The wake-up is published too, but a subscriber still connecting would miss it.
    if (wakeAt > Date.now() && wakeAt !== Number.POSITIVE_INFINITY) this.signals.armWake(wakeAt);
    return { accepted: (reply[0] as number[]).map((a) => a === 1), leases: this.leasesOf(reply, 1) };
  }

  async cancel(
    jobId: string,
    owner?: string | null,
  ): Promise<{ outcome: CancelOutcome; job: JobRecord | null }> {
    const reply = await this.run('cancel', jobId, owner === undefined ? '*' : ownerKey(owner));
    return { outcome: reply[0] as CancelOutcome, job: reply[1] ? toRecord(reply[1]) : null };
  }

  async retry(jobId: string): Promise<JobRecord | null> {
    const reply = await this.run('retry', jobId);
    return reply ? toRecord(reply) : null;
  }

  async get(jobId: string): Promise<JobRecord | null> {
    const reply = await this.run('get', jobId);
    return reply ? toRecord(reply) : null;
  }

  async list(query: ListQuery): Promise<ListPage> {
    const after = query.cursor ? decodeCursor(query.cursor) : null;
    const reply: RecordReply[] = await this.run(
      'list',
      query.owner === undefined ? 'all' : `o:${ownerKey(query.owner)}`,
      query.status ?? '',
      query.task ?? '',
      query.limit,
      after ? after.createdAt : '',
      after ? after.id : '',
    );
    const jobs = reply.slice(0, query.limit).map(toRecord);
    const last = jobs[jobs.length - 1];
    return { jobs, nextCursor: reply.length > query.limit && last ? encodeCursor(last) : null };
  }

  async history(jobId: string, afterSeq: number): Promise<JobEvent[] | null> {
    const reply = await this.run('history', jobId);
    if (!reply) return null;
    const events = (reply[1] as string[]).map((e) => JSON.parse(e) as JobEvent);
    return eventsAfter(Number(reply[0]), events, afterSeq);
  }

  subscribe(listener: (event: JobEvent) => void): Promise<Unsubscribe> {
    return this.signals.subscribe(listener, () => this.listen(this.eventsChannel));
  }

  onWork(listener: () => void): Unsubscribe {
    return this.signals.onWork(listener, () => this.listen(this.workChannel));
  }

  onCancel(listener: (jobId: string) => void): Unsubscribe {
    return this.signals.onCancel(listener, () => this.listen(this.cancelChannel));
  }

  async recover(): Promise<number> {
    let touched = 0;
    for (;;) {
      const n = Number(await this.run('recover', 500));
      touched += n;
      if (n < 500) return touched;
    }
  }

  async purge(before: number): Promise<number> {
    let purged = 0;
    for (;;) {
      const n = Number(await this.run('purge', before, 100));
      purged += n;
      if (n < 100) return purged;
    }
  }

  async counts(): Promise<Record<JobStatus, number>> {
    const [pairs, all, running, finished] = (await this.run('counts')) as [string[], number, number, number];
    const raw: Record<string, string> = {};
    for (let i = 0; i < pairs.length; i += 2) raw[pairs[i]!] = pairs[i + 1]!;
    const out = {} as Record<JobStatus, number>;
    for (const status of JOB_STATUSES) out[status] = Number(raw[status] ?? 0);
    out.running = running;
    out.queued = all - running - finished;
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.signals.close();
    const subscriber = this.subscriber;
    this.subscriber = null;
    await Promise.all([
      subscriber ? hangUp(subscriber) : undefined,
      this.ownsClient ? hangUp(this.client) : undefined,
    ]);
  }

  /**
   * Subscribe to one of the broker's channels, on the one subscriber connection per broker. Each
   * channel is subscribed when first needed: a worker-only process takes wake-ups and cancels,
   * not the events of every job.
   */
  private listen(channel: string): Promise<void> {
    if (this.closed) return Promise.reject(new Error('The broker is closed.'));
    let subscribing = this.channels.get(channel);
    if (!subscribing) {
      subscribing = this.subscriberClient()
        .subscribe(channel)
        .then(
          () => {
            if (channel === this.workChannel) this.workSubscribed = true;
          },
          (err) => {
            this.channels.delete(channel);
            throw err;
          },
        );
      this.channels.set(channel, subscribing);
    }
    return subscribing;
  }

  private subscriberClient(): Client {
    if (this.subscriber) return this.subscriber;
    const subscriber = this.client.duplicate();
    subscriber.on('error', () => {});
    subscriber.on('message', (channel: string, message: string) => this.onMessage(channel, message));
    this.subscriber = subscriber;
    return subscriber;
  }

  private onMessage(channel: string, message: string): void {
    // A work message is when the job comes due: now, or later (a delay, a retry's backoff).
    if (channel === this.workChannel) this.signals.dueAt(Number(message));
    else if (channel === this.cancelChannel) this.signals.cancelRequested(message);
    else if (channel === this.eventsChannel && this.signals.hasEventListeners) {
      // One event, or the events of one script run (a claim's jobs) as an array.
      for (const event of parseEvents(message)) this.signals.emit(event);
    }
  }
}

function isClient(value: object): value is Client {
  return typeof (value as { defineCommand?: unknown }).defineCommand === 'function';
}

/** What never changes after enqueue, stored as one JSON field (prelude.lua's `spec`). */
interface Spec {
  id: string;
  task: string;
  payload: Json;
  maxAttempts: number;
  timeoutMs: number | null;
  owner: string | null;
  idempotencyKey: string | null;
  payloadHash: string | null;
}

/** A record as the scripts send it: prelude.lua's RECORD fields by position, then logs. */
type RecordReply = (string | number | null)[];

const json = (value: string | number | null): unknown => (value === null ? null : JSON.parse(String(value)));
const num = (value: string | number | null): number | null => (value === null ? null : Number(value));

/** A job record from a script's reply. */
function toRecord(v: RecordReply): JobRecord {
  const spec = JSON.parse(String(v[0])) as Spec;
  return {
    id: spec.id,
    task: spec.task,
    payload: spec.payload,
    status: v[1] as JobStatus,
    progress: json(v[2]) as JobProgress | null,
    result: json(v[3]) as Json,
    error: json(v[4]) as JobError | null,
    attempts: Number(v[5]),
    maxAttempts: spec.maxAttempts,
    runAt: Number(v[6]),
    createdAt: Number(v[7]),
    startedAt: num(v[8]),
    finishedAt: num(v[9]),
    expireAt: num(v[10]),
    timeoutMs: spec.timeoutMs,
    owner: spec.owner,
    idempotencyKey: spec.idempotencyKey,
    payloadHash: spec.payloadHash,
    cancelRequested: v[11] === '1',
    seq: Number(v[12]),
    // A claim sends no logs (the worker has no use for them).
    logs: v[13] === undefined || v[13] === null ? [] : (json(v[13]) as string[]),
  };
}

/**
 * QUIT a connected client (its replies flushed first); drop one that is not connected at once:
 * QUIT would wait for a reconnect that may never come (a server that is down).
 */
function hangUp(client: Client): Promise<unknown> {
  if (client.status !== 'ready') {
    client.disconnect();
    return Promise.resolve();
  }
  return client.quit().catch(() => client.disconnect());
}

/**
 * `BROKER_URL=redis://host:port/db?prefix=p&queue=q` (or `rediss://`): `prefix` and `queue` are the broker's (see
 * `RedisBrokerOptions`) and are taken out of the URL; the rest is ioredis's.
 */
export function fromUrl(url: string): RedisBroker {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(`Not a valid Redis URL: ${JSON.stringify(url.replace(/\/\/[^@/]*@/, '//***@'))}.`);
  }
  const options: RedisBrokerOptions = {};
  for (const key of ['prefix', 'queue'] as const) {
    const value = parsed.searchParams.get(key);
    if (value === null) continue;
    if (value === '') throw new ConfigError(`The Redis URL's ${key} parameter is empty.`);
    options[key] = value;
    parsed.searchParams.delete(key);
  }
  return new RedisBroker({
    ...options,
    connection: options.prefix || options.queue ? parsed.toString() : url,
  });
}
