import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Broker, Lease, RunOutcome, Unsubscribe } from './broker.js';
import { delay } from './duration.js';
import {
  JobCanceledError,
  JobTimeoutError,
  LeaseLostError,
  NonRetryableError,
  UnknownTaskError,
  WorkerStoppingError,
} from './errors.js';
import type { JobError, JobProgress, Json } from './job.js';
import type { Logger } from './logger.js';
import type { ResolvedConfig } from './options.js';
import { backoffDelay, type Job, type TaskDefinition, type TaskRegistry } from './task.js';

/** The worker's part of the resolved options (see `WorkerOptions` for what each means), plus a logger. */
export type WorkerConfig = ResolvedConfig['worker'] & { logger: Logger };

export interface StopReport {
  /** Jobs that finished during the grace period. */
  finished: number;
  /** Jobs handed back to the queue (their attempt not counted). */
  handedBack: number;
}

/**
 * When a draining worker (`Worker.drain`) is done: a worker started by cron exits when there is no
 * work. Each condition that is set can end the drain; the first that holds does.
 */
export interface DrainOptions {
  /** Done when no job is due: a claim came back short and nothing runs. Delayed jobs wait for the next start. */
  untilEmpty?: boolean;
  /** Done once this many jobs were claimed and have finished; no more are claimed. */
  maxJobs?: number;
  /** Done after this long with nothing running (reset whenever a job starts). */
  idleMs?: number;
  /**
   * `untilEmpty` waits for this first (the jobs a start enqueues, such as a schedule's missed
   * tick), then claims afresh before it decides the queue is empty.
   */
  notBefore?: Promise<unknown>;
}

/** Why a drain ended. */
export type DrainReason = 'empty' | 'max-jobs' | 'idle';

interface Drain extends DrainOptions {
  resolve: (reason: DrainReason) => void;
  idleTimer: NodeJS.Timeout | null;
  /** `notBefore` has not settled: the queue is not called empty yet. */
  gated: boolean;
  /** Resolved; kept so that `maxJobs` still bounds claims. */
  done: boolean;
}

/** What the log line of a finished run says. */
interface WriteInfo {
  outcome: string;
  started: number;
  error?: JobError;
}

/** A run's final write, waiting for the end of the turn (see `flushWrites`). */
interface PendingWrite {
  run: Run;
  outcome: RunOutcome;
  info?: WriteInfo;
}

interface Run {
  lease: Lease;
  def: TaskDefinition;
  controller: LazyAbortController;
  /** Set once the run's final broker write is decided; later outcomes are ignored. */
  closed: boolean;
  done: Promise<void>;
  resolveDone: () => void;
  timers: NodeJS.Timeout[];
  flushProgress: () => Promise<void>;
}

/**
 * Claims jobs from the broker and runs their tasks, `concurrency` at a time, in this process.
 * Wakes on the broker's work hint and polls every `pollMs` as a backstop.
 */
export class Worker {
  readonly id = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  /** By lease token: a run not yet found lost and a new run of the same job can both be here. */
  private readonly runs = new Map<string, Run>();
  private started = false;
  private stopping = false;
  private wake: (() => void) | null = null;
  /** The backstop poll timer, kept across idles (see `idle`), and the idle it may end. */
  private pollTimer: NodeJS.Timeout | null = null;
  private pollWake: (() => void) | null = null;
  private wakePending = false;
  private loopDone: Promise<void> = Promise.resolve();
  private offWork: Unsubscribe | null = null;
  private recoverTimer: NodeJS.Timeout | null = null;
  /** One timer renews every lease this worker holds, and one listener watches them for cancels. */
  private renewTimer: NodeJS.Timeout | null = null;
  private offCancel: Unsubscribe | null = null;
  private finishedDuringStop = 0;
  /** Final writes of runs that ended this turn. */
  private writes: PendingWrite[] = [];
  /** Set when stop() gave up waiting for a claim: whatever it hands out later is released at once. */
  private loopAbandoned = false;
  /** Jobs claimed since start, and places asked for by claims still in flight (for `maxJobs`). */
  private claimed = 0;
  private asked = 0;
  /** The last claim answered came back short: no job was due then. */
  private lastClaimShort = false;
  /** A claim has been answered: idle time counts from then. */
  private answeredOnce = false;
  /** Bumped when a drain's `notBefore` settles: answers to claims sent before it do not count. */
  private gateEpoch = 0;
  private drainState: Drain | null = null;

  constructor(
    private readonly broker: Broker,
    private readonly registry: TaskRegistry,
    private readonly config: WorkerConfig,
  ) {}

  get activeCount(): number {
    return this.runs.size;
  }

  /** Jobs this worker has claimed since it started. */
  get claimedCount(): number {
    return this.claimed;
  }

  /**
   * Resolve when the worker has drained (see `DrainOptions`); the caller then stops it. Call
   * before `start()`: `maxJobs` bounds every claim from the first, and keeps bounding them after
   * the drain resolved.
   */
  drain(options: DrainOptions): Promise<DrainReason> {
    if (this.drainState) throw new Error('drain() was already called on this worker.');
    return new Promise((resolve) => {
      const gate = options.notBefore;
      this.drainState = { ...options, resolve, idleTimer: null, gated: gate !== undefined, done: false };
      gate?.then(
        () => this.openDrainGate(),
        () => this.openDrainGate(),
      );
      this.checkDrain();
    });
  }

  /**
   * `notBefore` settled: a claim sent before now may have missed what it waited for, so only
   * the answers of claims sent from now on can call the queue empty (`claimSent`).
   */
  private openDrainGate(): void {
    const d = this.drainState;
    if (!d) return;
    d.gated = false;
    this.gateEpoch++;
    this.lastClaimShort = false;
    this.poke();
  }

  /** How many jobs a claim may ask for now: the free slots, bounded by what `maxJobs` leaves. */
  private quota(free: number): number {
    const max = this.drainState?.maxJobs;
    return max === undefined ? free : Math.max(0, Math.min(free, max - this.claimed - this.asked));
  }

  /** A claim (or a settle's claim) asking for `asked` jobs goes out; returns what its answer needs. */
  private claimSent(asked: number): { asked: number; epoch: number } {
    this.asked += asked;
    return { asked, epoch: this.gateEpoch };
  }

  /**
   * Count a claim's answer. A short answer means no job was due when it was read, which ends an
   * `untilEmpty` drain; a failed call proves nothing, nor does a claim sent before the drain's
   * gate opened.
   */
  private claimAnswered(sent: { asked: number; epoch: number }, got: number | null): void {
    this.asked -= sent.asked;
    if (got === null) return;
    this.claimed += got;
    if (sent.asked > 0 && sent.epoch === this.gateEpoch) this.lastClaimShort = got < sent.asked;
    this.answeredOnce = true;
  }

  private checkDrain(): void {
    const d = this.drainState;
    if (!d || d.done || !this.started || this.stopping) return;
    const quiet = this.runs.size === 0 && this.asked === 0;
    if (d.maxJobs !== undefined && this.claimed >= d.maxJobs && quiet) {
      this.endDrain('max-jobs');
      return;
    }
    if (d.untilEmpty && !d.gated && quiet && this.lastClaimShort) {
      this.endDrain('empty');
      return;
    }
    if (d.idleMs !== undefined) {
      if (this.runs.size > 0) {
        if (d.idleTimer) clearTimeout(d.idleTimer);
        d.idleTimer = null;
      } else if (this.answeredOnce) {
        // Idle from the first answer on: a slow first claim is not idleness.
        d.idleTimer ??= setTimeout(() => this.endDrain('idle'), d.idleMs);
      }
    }
  }

  private endDrain(reason: DrainReason): void {
    const d = this.drainState;
    if (!d || d.done) return;
    if (d.idleTimer) clearTimeout(d.idleTimer);
    d.idleTimer = null;
    // Kept (done): `maxJobs` still bounds claims until the caller stops the worker.
    d.done = true;
    d.resolve(reason);
  }

  get isRunning(): boolean {
    return this.started && !this.stopping;
  }

  start(): void {
    if (this.started) return;
    this.started = true;
    this.offWork = this.broker.onWork(() => this.poke());
    this.recoverTimer = setInterval(() => {
      this.broker
        .recover()
        .catch((err) => this.config.logger.warn({ err }, 'offload: lease recovery failed'));
    }, this.config.recoverMs);
    this.recoverTimer.unref();
    this.renewTimer = setInterval(() => this.renewAll(), Math.max(50, Math.floor(this.config.leaseMs / 3)));
    this.renewTimer.unref();
    // Renewal reports a requested cancel too, within a third of the lease.
    this.offCancel = this.broker.onCancel((jobId) => {
      for (const run of this.runs.values()) {
        if (run.lease.job.id === jobId) run.controller.abort(new JobCanceledError());
      }
    });
    this.loopDone = this.loop();
    this.checkDrain();
  }

  /**
   * Stop claiming, give running jobs `graceMs` to finish, then fire their signals and hand them
   * back to the queue without counting the attempt.
   */
  async stop(graceMs = this.config.graceMs): Promise<StopReport> {
    if (!this.started || this.stopping) {
      await this.loopDone;
      return { finished: 0, handedBack: 0 };
    }
    this.stopping = true;
    if (this.drainState?.idleTimer) clearTimeout(this.drainState.idleTimer);
    this.offWork?.();
    if (this.recoverTimer) clearInterval(this.recoverTimer);
    this.poke();
    // A claim the broker never answers must not hold stop() (nor keep the running jobs from their
    // signal): it gets the grace period, and leases it hands out later go straight back (`loop`).
    let loopTimer: NodeJS.Timeout | undefined;
    const loopEnded = await Promise.race([
      this.loopDone.then(() => true),
      new Promise<false>((resolve) => {
        loopTimer = setTimeout(() => resolve(false), graceMs);
      }),
    ]);
    clearTimeout(loopTimer);
    if (!loopEnded) this.loopAbandoned = true;
    if (this.pollTimer) clearTimeout(this.pollTimer);
    this.pollTimer = null;
    if (this.runs.size > 0) {
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, graceMs);
      });
      await Promise.race([Promise.all([...this.runs.values()].map((r) => r.done)), grace]);
      clearTimeout(timer);
    }
    let handedBack = 0;
    await Promise.all(
      [...this.runs.values()].map(async (run) => {
        // Its final write is under way; a broker that never answers must not hold stop() forever.
        if (run.closed) return Promise.race([run.done, delay(graceMs)]);
        this.closeRun(run);
        run.controller.abort(new WorkerStoppingError());
        try {
          // Bounded like the final writes above: unanswered, the lease expires and recovery re-queues.
          const release = this.broker.release(run.lease.job.id, run.lease.token);
          if (await Promise.race([release, delay(graceMs).then(() => false)])) handedBack++;
        } catch (err) {
          // The lease will expire and recovery re-queues the job: slower, but nothing is lost.
          this.config.logger.warn({ err, jobId: run.lease.job.id }, 'offload: could not hand a job back');
        }
        this.endRun(run, false);
      }),
    );
    // Only now: runs finishing within the grace period still renewed their leases and heard cancels.
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.renewTimer = null;
    this.offCancel?.();
    this.offCancel = null;
    return { finished: this.finishedDuringStop, handedBack };
  }

  private renewAll(): void {
    for (const run of this.runs.values()) {
      if (run.closed) continue;
      const { job, token } = run.lease;
      this.broker.renew(job.id, token, this.config.leaseMs).then(
        (state) => {
          if (state === null) {
            if (run.closed) return;
            this.closeRun(run);
            run.controller.abort(new LeaseLostError());
            this.config.logger.warn(
              { jobId: job.id, task: job.task },
              'offload: lease lost; the run is abandoned',
            );
            this.endRun(run);
            this.checkDrain();
          } else if (state.cancelRequested) run.controller.abort(new JobCanceledError());
        },
        (err) => this.config.logger.warn({ err, jobId: job.id }, 'offload: lease renewal failed'),
      );
    }
  }

  private poke(): void {
    this.wakePending = true;
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  private async loop(): Promise<void> {
    let failures = 0;
    while (!this.stopping) {
      // Runs that end together (their writes answered in one read from the broker) free their
      // slots in the same turn: wait for the turn to end, then claim them all in one call.
      await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.stopping) break;
      const free = this.quota(this.config.concurrency - this.runs.size);
      const tasks = this.claimTasks();
      if (free <= 0 || tasks.length === 0) {
        await this.idle(this.config.pollMs);
        continue;
      }
      this.wakePending = false;
      let leases: Lease[];
      const sent = this.claimSent(free);
      try {
        leases = await this.broker.claim({
          tasks,
          limit: free,
          leaseMs: this.config.leaseMs,
          workerId: this.id,
        });
        failures = 0;
        this.claimAnswered(sent, leases.length);
      } catch (err) {
        this.claimAnswered(sent, null);
        failures++;
        this.config.logger.warn({ err }, 'offload: claim failed; retrying');
        await this.idle(Math.min(this.config.pollMs * 2 ** failures, 30_000));
        continue;
      }
      // Once stop() began, what the claim handed out goes straight back.
      this.adopt(leases);
      this.checkDrain();
      if (this.stopping) break;
      // Fewer than asked means none is due now (claim hands out up to `limit`): wait for a hint
      // instead of a second claim that finds nothing. A hint that came during the claim is kept.
      if (leases.length < free) await this.idle(this.config.pollMs);
    }
  }

  /** The tasks this worker claims: those it was given, else every registered one. */
  private claimTasks(): readonly string[] {
    return this.config.tasks.length ? this.config.tasks : this.registry.names();
  }

  /** Wait for a work hint, a freed slot, stop, or the poll timer; returns at once if a hint came meanwhile. */
  private idle(ms: number): Promise<void> {
    if (this.wakePending || this.stopping) {
      this.wakePending = false;
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      if (ms !== this.config.pollMs) {
        const timer = setTimeout(() => {
          this.wake = null;
          resolve();
        }, ms);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
        return;
      }
      // Under load the loop idles once per job: a poll timer made and cleared each time would cost
      // more than a short job itself. So it outlives a wake-up and serves the next idles too; armed
      // less than pollMs ago, it still ends this idle within pollMs, which is all a backstop needs.
      this.wake = resolve;
      this.pollWake = resolve;
      this.pollTimer ??= setTimeout(() => {
        this.pollTimer = null;
        const wake = this.pollWake;
        this.pollWake = null;
        if (wake && this.wake === wake) this.wake = null;
        wake?.();
      }, ms);
    });
  }

  private run(lease: Lease): void {
    const job = lease.job;
    const def = this.registry.get(job.task);
    let resolveDone!: () => void;
    const done = new Promise<void>((r) => {
      resolveDone = r;
    });
    const run: Run = {
      lease,
      def: def!,
      controller: new LazyAbortController(),
      closed: false,
      done,
      resolveDone,
      timers: [],
      flushProgress: async () => {},
    };
    this.runs.set(lease.token, run);
    this.config.logger.debug(
      { jobId: job.id, task: job.task, attempt: job.attempts },
      'offload: job started',
    );
    if (!def) {
      this.closeRun(run);
      this.write(run, { type: 'fail', error: errorOf(new UnknownTaskError(job.task)) });
      return;
    }
    void this.execute(run);
  }

  private async execute(run: Run): Promise<void> {
    const { lease, def, controller } = run;
    const job = lease.job;
    const started = Date.now();

    const timeoutMs = job.timeoutMs ?? def.timeoutMs;
    if (timeoutMs) {
      const t = setTimeout(() => {
        if (run.closed) return;
        const reason = new JobTimeoutError(timeoutMs);
        controller.abort(reason);
        // Do not wait for a handler that ignores its signal: the slot and the job move on.
        void this.settleFailure(run, reason, started);
      }, timeoutMs);
      t.unref();
      run.timers.push(t);
    }

    controller.onAbort = (reason) => {
      if (!(reason instanceof JobCanceledError) || run.closed) return;
      const t = setTimeout(() => void this.settleCanceled(run, started), this.config.cancelGraceMs);
      t.unref();
      run.timers.push(t);
    };

    const handle = this.createHandle(run);
    let payload: unknown = job.payload;
    try {
      if (def.validator) {
        const checked = await def.validator.check(job.payload);
        if (checked.errors) {
          const fields = checked.errors
            .map((e) => `${e.field || '(payload)'}: ${e.messages.join(', ')}`)
            .join('; ');
          throw new NonRetryableError(`The stored payload is invalid: ${fields}`, 'ERR_OFFLOAD_VALIDATION');
        }
        payload = checked.value;
      }
      (handle as { payload: unknown }).payload = payload;
      const result = await def.handler(payload, handle);
      if (controller.reason instanceof JobCanceledError) return this.settleCanceled(run, started);
      if (run.closed) return;
      await run.flushProgress();
      const json = toJsonResult(result);
      if (run.closed) return;
      this.closeRun(run);
      this.write(run, { type: 'complete', result: json }, { outcome: 'succeeded', started });
    } catch (err) {
      if (controller.reason instanceof JobCanceledError) return this.settleCanceled(run, started);
      await this.settleFailure(run, err, started);
    }
  }

  private async settleCanceled(run: Run, started: number): Promise<void> {
    if (run.closed) return;
    this.closeRun(run);
    this.write(run, { type: 'cancel' }, { outcome: 'canceled', started });
  }

  private async settleFailure(run: Run, err: unknown, started: number): Promise<void> {
    if (run.closed) return;
    this.closeRun(run);
    await run.flushProgress().catch(() => {});
    const { job } = run.lease;
    const error = errorOf(err);
    const retry = !(err instanceof NonRetryableError) && job.attempts < job.maxAttempts;
    const retryAt = retry ? Date.now() + backoffDelay(run.def.backoff, job.attempts) : undefined;
    this.write(
      run,
      { type: 'fail', error, retryAt },
      {
        outcome: retry ? 'retrying' : 'failed',
        started,
        error,
      },
    );
  }

  /** Mark the run decided: no other outcome may write after this. */
  private closeRun(run: Run): void {
    run.closed = true;
    for (const t of run.timers) clearTimeout(t);
    run.timers.length = 0;
  }

  /**
   * Queue the run's final broker write; runs that end in the same turn are written together by
   * `flushWrites`, whose call also claims the jobs that take their slots.
   */
  private write(run: Run, outcome: RunOutcome, info?: WriteInfo): void {
    this.writes.push({ run, outcome, info });
    if (this.writes.length === 1) setImmediate(() => this.flushWrites());
  }

  /**
   * Write the outcomes queued this turn, each call claiming as many jobs as slots it frees (as
   * BullMQ's moveToFinished fetches the next job). Runs that end together share a call, but a
   * call takes at most the broker's `settleShare` of the slots (a quarter by default): with
   * several calls in flight, the broker works on one while this process runs the jobs another
   * brought back.
   */
  private flushWrites(): void {
    const writes = this.writes;
    this.writes = [];
    const size = Math.ceil(this.config.concurrency * (this.broker.settleShare ?? 0.25));
    for (let i = 0; i < writes.length; i += size) this.settle(writes.slice(i, i + size));
  }

  private settle(batch: PendingWrite[]): void {
    const limit = this.stopping ? 0 : this.quota(batch.length);
    const sent = this.claimSent(limit);
    const runs = batch.map(({ run, outcome }) => ({
      jobId: run.lease.job.id,
      token: run.lease.token,
      outcome,
    }));
    const next = { tasks: this.claimTasks(), limit, leaseMs: this.config.leaseMs, workerId: this.id };
    this.broker.settle(runs, next).then(
      ({ accepted, leases }) => {
        this.claimAnswered(sent, leases.length);
        batch.forEach(({ run, info }, i) => {
          if (info) this.logOutcome(run, info, accepted[i] === true);
          // Asked for jobs: the slot is taken again, or none is due (the loop then waits for a
          // work hint, as after a claim that comes back short).
          this.endRun(run, true, limit === 0);
        });
        this.adopt(leases);
        this.checkDrain();
      },
      (err) => {
        this.claimAnswered(sent, null);
        for (const { run } of batch) {
          // The lease will expire and the job is retried elsewhere: at-least-once, never lost.
          this.config.logger.error(
            { err, jobId: run.lease.job.id },
            'offload: could not record the outcome of a job',
          );
          this.endRun(run);
        }
        this.checkDrain();
      },
    );
  }

  private logOutcome(run: Run, info: WriteInfo, accepted: boolean): void {
    const { job } = run.lease;
    const entry = {
      jobId: job.id,
      task: job.task,
      attempt: job.attempts,
      durationMs: Date.now() - info.started,
      outcome: accepted ? info.outcome : 'lease-lost',
      error: info.error?.message,
    };
    if (info.outcome === 'failed' || info.outcome === 'retrying')
      this.config.logger.warn(entry, 'offload: job failed');
    else this.config.logger.info(entry, 'offload: job finished');
  }

  /** Run leases a write's claim handed out; hand them back when the worker cannot take them now. */
  private adopt(leases: Lease[]): void {
    for (const lease of leases) {
      if (!this.stopping && !this.loopAbandoned && this.runs.size < this.config.concurrency) {
        this.run(lease);
        continue;
      }
      const { job, token } = lease;
      this.broker
        .release(job.id, token)
        .catch((err) =>
          this.config.logger.warn({ err, jobId: job.id }, 'offload: could not hand a job back'),
        );
    }
  }

  private endRun(run: Run, finished = true, poke = true): void {
    const token = run.lease.token;
    if (this.runs.get(token) !== run) return;
    this.runs.delete(token);
    if (this.stopping && finished) this.finishedDuringStop++;
    run.resolveDone();
    if (poke) this.poke();
  }

  private createHandle(run: Run): Job<unknown> {
    const { job, token } = run.lease;
    const broker = this.broker;
    const interval = this.config.progressIntervalMs;
    const logger = this.config.logger;
    let pending: JobProgress | null = null;
    let lastWrite = 0;
    let timer: NodeJS.Timeout | null = null;
    let inflight: Promise<void> | null = null;

    const writePending = (): Promise<void> => {
      if (inflight) return inflight;
      if (!pending || run.closed) return Promise.resolve();
      const value = pending;
      pending = null;
      lastWrite = Date.now();
      inflight = broker
        .progress(job.id, token, value)
        .then(
          () => {},
          (err) => logger.warn({ err, jobId: job.id }, 'offload: progress write failed'),
        )
        .finally(() => {
          inflight = null;
        });
      return inflight;
    };

    const schedule = () => {
      // Once the run is closed nothing more is written (`writePending` refuses), so rescheduling
      // would spin forever on the value that stays pending.
      if (timer || inflight || run.closed) return;
      const wait = lastWrite + interval - Date.now();
      if (wait <= 0) {
        void writePending().then(() => {
          if (pending) schedule();
        });
        return;
      }
      timer = setTimeout(() => {
        timer = null;
        void writePending().then(() => {
          if (pending) schedule();
        });
      }, wait);
      timer.unref();
    };

    run.flushProgress = async () => {
      // Finishing an in-flight write may start the next one: wait until none is left.
      for (;;) {
        if (timer) clearTimeout(timer);
        timer = null;
        if (!inflight) break;
        await inflight;
      }
      // Bypass `run.closed`: the final value is written just before the outcome.
      if (pending) {
        const value = pending;
        pending = null;
        // As in `writePending`: a failed progress write is logged, never the run's outcome
        // (it would fail a finished run and store the driver's message as the job's error).
        await broker
          .progress(job.id, token, value)
          .catch((err) => logger.warn({ err, jobId: job.id }, 'offload: progress write failed'));
      }
    };

    const progress = (percent: number, message?: string, data?: Json): Promise<void> => {
      if (typeof percent !== 'number' || Number.isNaN(percent)) {
        return Promise.reject(new TypeError('job.progress(percent): percent must be a number'));
      }
      const value: JobProgress = { percent: Math.min(100, Math.max(0, percent)) };
      if (message !== undefined) value.message = String(message);
      if (data !== undefined) value.data = data;
      pending = value;
      schedule();
      return Promise.resolve();
    };
    const log = async (line: string): Promise<void> => {
      if (run.closed) return;
      // Like progress: a broker hiccup while logging must not fail the task with a driver error.
      await broker.log(job.id, token, String(line)).catch((err) => {
        this.config.logger.warn({ err, jobId: job.id }, 'offload: log write failed');
      });
    };
    return new JobHandle(job, run.controller, progress, log);
  }
}

/**
 * The `job` a task receives. A class, not an object literal: `signal` is a getter (the signal is
 * made on first use), and V8 builds a literal with an accessor about 50 times slower.
 */
class JobHandle implements Job<unknown> {
  readonly id: string;
  readonly task: string;
  readonly attempt: number;
  readonly maxAttempts: number;
  payload: unknown;
  readonly owner: string | null;
  readonly progress: Job<unknown>['progress'];
  readonly log: Job<unknown>['log'];
  readonly #controller: LazyAbortController;

  constructor(
    job: Lease['job'],
    controller: LazyAbortController,
    progress: Job<unknown>['progress'],
    log: Job<unknown>['log'],
  ) {
    this.id = job.id;
    this.task = job.task;
    this.attempt = job.attempts;
    this.maxAttempts = job.maxAttempts;
    this.payload = job.payload;
    this.owner = job.owner;
    this.progress = progress;
    this.log = log;
    this.#controller = controller;
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }
}

/** What a task's exception becomes in the job record: message and code; the stack stays server-side. */
export function errorOf(err: unknown): JobError {
  if (err instanceof Error) {
    const out: JobError = { message: err.message || err.name };
    const code = (err as { code?: unknown }).code;
    if (typeof code === 'string') out.code = code;
    if (err.stack) out.stack = err.stack;
    return out;
  }
  return { message: typeof err === 'string' ? err : 'The task failed.' };
}

/**
 * An AbortController whose signal is made on first use: Node 20 takes microseconds to build an
 * AbortSignal, and a short task that never reads `job.signal` need not pay for one. As with
 * AbortController, the first abort wins; a signal made after it is already aborted with that reason.
 */
class LazyAbortController {
  private controller: AbortController | null = null;
  private aborted = false;
  reason: unknown;
  /** Runs once, at the first abort, before the signal fires. */
  onAbort: ((reason: unknown) => void) | null = null;

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.onAbort?.(reason);
    this.controller?.abort(reason);
  }
}

/** A handler's return value as the JSON the broker stores (`undefined` is `null`). */
export function toJsonResult(result: unknown): Json {
  if (result === undefined) return null;
  return JSON.parse(JSON.stringify(result)) as Json;
}
