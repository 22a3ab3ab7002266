import { createHash } from 'node:crypto';
import type { Broker, CancelOutcome, ListPage, ListQuery, Unsubscribe } from './broker.js';
import { resolveBroker } from './broker-url.js';
import { type Duration, toMs } from './duration.js';
import { BrokerUnavailableError, OffloadError, UnknownTaskError, ValidationError } from './errors.js';
import { isTerminal, type JobEvent, type JobRecord, type Json } from './job.js';
import { JobEvents } from './job-events.js';
import { type OffloadOptions, parseOptions, type ResolvedConfig } from './options.js';
import { defineSchedule, type ScheduleDefinition, type ScheduleOptions, Scheduler } from './schedule.js';
import { defineTask, type TaskDefinition, type TaskHandler, type TaskOptions, TaskRegistry } from './task.js';
import { type StopReport, Worker } from './worker.js';

export interface EnqueueOptions {
  owner?: string | null;
  idempotencyKey?: string | null;
  /** Run no earlier than this long from now. */
  delay?: Duration;
}

/**
 * Set by the CLI while it loads an app's entry module (see `holdInstances`): the instances made
 * meanwhile never start a worker or a purge timer; the CLI runs their tasks itself.
 */
const HOLD = Symbol.for('offload.holdInstances');
const holdState = globalThis as { [HOLD]?: boolean };

/**
 * Marks offload cores, whatever copy of the package made them: a CLI installed globally loads
 * an app whose `offload` is its own copy, where `instanceof` fails (and the hold flag above is
 * on `globalThis` for the same reason).
 */
export const OFFLOAD_CORE: unique symbol = Symbol.for('offload.core');

/** An offload core, from this copy of the package or another. */
export function isOffloadCore(value: unknown): value is Offload {
  return (
    value instanceof Offload ||
    (typeof value === 'object' &&
      value !== null &&
      (value as { [OFFLOAD_CORE]?: unknown })[OFFLOAD_CORE] === true)
  );
}

/**
 * @internal While `on`, new `Offload` instances are held: `start()` does nothing and no purge
 * timer runs. The CLI loads the app's module this way, then runs its tasks with an instance of
 * its own (its broker and worker options).
 */
export function holdInstances(on: boolean): void {
  holdState[HOLD] = on;
}

/**
 * The framework-free core one app holds: the broker, the task registry, the event fan-out,
 * and the in-process worker. The Express middleware and the Nest module are thin layers on it.
 */
export class Offload {
  readonly config: ResolvedConfig;
  readonly broker: Broker;
  readonly registry = new TaskRegistry();
  readonly events: JobEvents;
  readonly worker: Worker | null;
  /** The schedules: they tick once `start()` ran, unless held or `schedules: false`. */
  private readonly scheduler = new Scheduler(this);
  private purgeTimer: NodeJS.Timeout | null = null;
  /** Enders of the open SSE streams: `close()` ends them, or `server.close()` would wait on their clients. */
  readonly streams = new Set<() => void>();
  /** Give-ups of the `waitFor` calls in flight: `close()` ends them as timed out, for the same reason. */
  private readonly waits = new Set<() => void>();
  private closing: Promise<StopReport> | null = null;
  /** Only a broker this instance built from a URL is closed with it; a passed-in one belongs to the app. */
  private readonly ownsBroker: boolean;
  /** The options as given: the CLI builds its own instance from them (`holdInstances`). */
  readonly options: Readonly<OffloadOptions>;
  /** Made while the CLI held instances: never starts a worker or purges. */
  readonly held: boolean;
  readonly [OFFLOAD_CORE] = true;

  /**
   * Whether `task()` starts the worker; the Nest module holds it until the app is ready, then
   * `start()` sets it (a task registered later must start the worker as well).
   */
  private autoStart: boolean;

  /** @param internal.autoStart `false` leaves the worker stopped until `start()`. */
  constructor(options: OffloadOptions = {}, internal: { autoStart?: boolean } = {}) {
    this.config = parseOptions(options);
    this.options = options;
    this.held = holdState[HOLD] === true;
    this.autoStart = internal.autoStart !== false;
    this.broker = resolveBroker(this.config.broker);
    this.ownsBroker = typeof this.config.broker === 'string';
    this.events = new JobEvents(this.broker);
    const w = this.config.worker;
    this.worker =
      w.concurrency > 0 ? new Worker(this.broker, this.registry, { ...w, logger: this.config.logger }) : null;
    // Purge finished jobs from any process: it is idempotent, and a web-only process must not
    // depend on a worker being alive to keep the store bounded.
    if (!this.held) {
      const every = Math.max(1000, Math.min(60_000, Math.floor(this.config.resultTtlMs / 2)));
      this.purgeTimer = setInterval(() => void this.purge(), every);
      this.purgeTimer.unref();
    }
  }

  /** Register a task. The in-process worker starts with the first one. */
  task<P = any, R = unknown>(
    name: string,
    handler: TaskHandler<P, R>,
    options: TaskOptions = {},
  ): TaskDefinition {
    const def = defineTask(name, handler as TaskHandler, options);
    this.addTask(def);
    return def;
  }

  /** @internal Register a task defined elsewhere (the Nest explorer builds its own validator). */
  addTask(def: TaskDefinition): void {
    this.registry.add(def);
    if (this.autoStart) this.start();
  }

  /**
   * Enqueue a job of `options.task` (default: `name`) at every tick of the cron expression, once
   * per tick however many processes run this schedule (see `Scheduler`). Checked at once; the
   * task must be registered before the schedule starts ticking: at once here when the instance
   * is started already (Express), else at `start()`.
   */
  schedule(name: string, cron: string, options: ScheduleOptions = {}): ScheduleDefinition {
    const def = defineSchedule(name, cron, options, this.config.maxPayloadBytes);
    this.addSchedule(def);
    return def;
  }

  /** @internal Resolves once the schedule enqueues in flight (a start's catch-up) have settled. */
  schedulesSettled(): Promise<void> {
    return this.scheduler.settled();
  }

  /** The schedules declared on this instance, as `addSchedule` takes them. */
  schedules(): ScheduleDefinition[] {
    return this.scheduler.list();
  }

  /** @internal Add a schedule declared elsewhere (the CLI copies a held instance's; the Nest explorer). */
  addSchedule(def: ScheduleDefinition): void {
    this.scheduler.add(def, this.autoStart);
    if (this.autoStart) this.start();
  }

  /** True once `close()` has begun: an SSE stream or a wait that starts now must end at once. */
  get closed(): boolean {
    return this.closing !== null;
  }

  /** Start the in-process worker (if any). Idempotent; a closed instance stays stopped. */
  start(): void {
    this.autoStart = true;
    // Schedules first: one whose task is missing throws before any job runs.
    if (!this.closing) this.scheduler.start(!this.held && this.config.schedules);
    if (!this.closing && !this.held && this.registry.names().length > 0) this.worker?.start();
  }

  /**
   * Persist a job for a registered task (validated as at submit), bounded by `brokerTimeout`.
   * Returns the job, or the existing one when the idempotency key matched.
   */
  async enqueue(
    task: string,
    payload: Json,
    options: EnqueueOptions = {},
  ): Promise<{ job: JobRecord; created: boolean }> {
    const def = this.registry.get(task);
    if (!def) throw new UnknownTaskError(task);
    if (def.validator) {
      const { errors, value } = await def.validator.check(payload);
      if (errors) throw new ValidationError(errors);
      // What the DTO kept (unknown properties stripped), as JSON data.
      payload = JSON.parse(JSON.stringify(value)) as Json;
    }
    return this.submit(def, payload, {
      owner: options.owner ?? null,
      idempotencyKey: options.idempotencyKey ?? null,
      runAt: options.delay === undefined ? undefined : Date.now() + toMs(options.delay, 'delay'),
    });
  }

  /** @internal The enqueue the HTTP layer uses once the payload is validated. */
  submit(
    def: TaskDefinition,
    payload: Json,
    opts: {
      owner: string | null;
      idempotencyKey: string | null;
      payloadHash?: string | null;
      runAt?: number;
    },
  ): Promise<{ job: JobRecord; created: boolean }> {
    const now = Date.now();
    return this.call(
      this.broker.enqueue({
        task: def.name,
        payload,
        owner: opts.owner,
        maxAttempts: def.maxAttempts,
        runAt: opts.runAt,
        expireAt: def.ageLimitMs === null ? null : (opts.runAt ?? now) + def.ageLimitMs,
        timeoutMs: def.timeoutMs,
        idempotencyKey: opts.idempotencyKey,
        payloadHash: opts.idempotencyKey ? (opts.payloadHash ?? hashPayload(payload)) : null,
        maxQueued: this.config.maxQueued,
      }),
    );
  }

  /** The job if it exists and, when `owner` is given (also `null`), belongs to that owner. */
  async get(id: string, owner?: string | null): Promise<JobRecord | null> {
    const job = await this.call(this.broker.get(id));
    if (!job || (owner !== undefined && job.owner !== owner)) return null;
    return job;
  }

  cancel(id: string, owner?: string | null): Promise<{ outcome: CancelOutcome; job: JobRecord | null }> {
    return this.call(this.broker.cancel(id, owner));
  }

  list(query: ListQuery): Promise<ListPage> {
    return this.call(this.broker.list(query));
  }

  /**
   * Wait until the job is finished or `ms` pass. Resolves with the finished job, or `null`
   * on time-out. Listens before reading, so a finish in between is not missed. `close()` ends
   * the wait as a time-out: a `Prefer: wait` request must not hold the server's shutdown.
   */
  async waitFor(id: string, ms: number): Promise<JobRecord | null> {
    if (this.closing) {
      const job = await this.get(id);
      return job && isTerminal(job.status) ? job : null;
    }
    let wake!: () => void;
    const finished = new Promise<void>((resolve) => {
      wake = resolve;
    });
    const off = await this.listen(id, (event) => {
      if (event.type === 'status' && event.status && isTerminal(event.status)) wake();
    });
    let timer: NodeJS.Timeout | undefined;
    let giveUp: (() => void) | undefined;
    try {
      const job = await this.get(id);
      if (!job || isTerminal(job.status)) return job;
      if (this.closing) return null;
      const timedOut = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), ms);
        giveUp = () => resolve('timeout');
      });
      this.waits.add(giveUp!);
      if ((await Promise.race([finished, timedOut])) === 'timeout') return null;
      return await this.get(id);
    } finally {
      clearTimeout(timer);
      if (giveUp) this.waits.delete(giveUp);
      off();
    }
  }

  /**
   * Listen to one job's events (see `JobEvents.listen`), bounded by `brokerTimeout` like every
   * broker call: a subscription that never comes up must not hold the caller.
   */
  async listen(id: string, listener: (event: JobEvent) => void): Promise<Unsubscribe> {
    const listening = this.events.listen(id, listener);
    try {
      return await this.call(listening);
    } catch (err) {
      listening.then(
        (off) => off(),
        () => {},
      );
      throw err;
    }
  }

  async purge(): Promise<number> {
    try {
      return await this.broker.purge(Date.now() - this.config.resultTtlMs);
    } catch (err) {
      this.config.logger.warn({ err }, 'offload: purge failed');
      return 0;
    }
  }

  /**
   * Stop the worker gracefully (see `WorkerOptions.gracePeriod`), then close the broker if this
   * instance created it from a URL.
   */
  close(): Promise<StopReport> {
    if (!this.closing) {
      this.closing = (async () => {
        if (this.purgeTimer) clearInterval(this.purgeTimer);
        const schedulesStopped = this.scheduler.stop();
        for (const end of [...this.streams, ...this.waits]) end();
        const report = (await this.worker?.stop()) ?? { finished: 0, handedBack: 0 };
        await schedulesStopped;
        await this.events.close();
        if (this.ownsBroker) await this.broker.close();
        return report;
      })();
    }
    return this.closing;
  }

  /**
   * Bound every broker call: a broker that hangs or throws a driver error becomes a 503 for the
   * client within `brokerTimeout`, never a hang or a 500 with driver internals.
   */
  call<T>(op: Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const pending: PendingCall = { deadline: performance.now() + this.config.brokerTimeoutMs, reject };
      this.pendingCalls.add(pending);
      this.sweepCalls ??= this.startSweep();
      op.then(
        (value) => {
          if (this.pendingCalls.delete(pending)) resolve(value);
        },
        (err) => {
          if (!this.pendingCalls.delete(pending)) return;
          reject(err instanceof OffloadError ? err : new BrokerUnavailableError(undefined, { cause: err }));
        },
      );
    });
  }

  /**
   * One timer for every call in flight instead of one per call (a timer per submit cost as much
   * as the broker's own enqueue): a call is refused between `brokerTimeout` and an eighth of it
   * (at most 250 ms) later, on the monotonic clock. It stops by itself once no call is in flight.
   */
  private readonly pendingCalls = new Set<PendingCall>();
  private sweepCalls: NodeJS.Timeout | null = null;

  private startSweep(): NodeJS.Timeout {
    const ms = this.config.brokerTimeoutMs;
    const timer = setInterval(
      () => {
        if (this.pendingCalls.size === 0) {
          clearInterval(timer);
          this.sweepCalls = null;
          return;
        }
        const now = performance.now();
        for (const pending of this.pendingCalls) {
          if (pending.deadline > now) continue;
          this.pendingCalls.delete(pending);
          pending.reject(new BrokerUnavailableError(`The job broker did not answer within ${ms} ms.`));
        }
      },
      Math.min(250, Math.max(1, Math.floor(ms / 8))),
    );
    return timer;
  }
}

interface PendingCall {
  deadline: number;
  reject: (err: Error) => void;
}

/** Stable across key order, so `{a,b}` and `{b,a}` replay the same Idempotency-Key. */
export function hashPayload(payload: Json): string {
  return createHash('sha256').update(canonicalJson(payload)).digest('base64url');
}

function canonicalJson(value: Json): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(value[k]!)}`).join(',')}}`;
}
