import { Cron } from 'croner';
import { ConfigError, ValidationError } from './errors.js';
import type { Json } from './job.js';
import type { Offload } from './offload.js';

/**
 * What a schedule does with ticks that came due while no process ran it (deploy, outage):
 * - `'skip'` (the default, as cron and Celery beat do): they are not enqueued; the next tick is
 *   the first one after start.
 * - `'last'`: on start, the most recent tick that passed is enqueued once, if it is younger than
 *   the result TTL (so its idempotency key would still exist had another process enqueued it);
 *   older ones, and all but the last, are dropped. Many processes starting at once still make one
 *   job of it.
 */
export type MissedTicks = 'skip' | 'last';

export interface ScheduleOptions {
  /** The registered task each tick enqueues. @defaultValue the schedule's name */
  task?: string;
  /** The payload of every tick's job (JSON). @defaultValue `{}` */
  payload?: Json;
  /**
   * IANA time zone the expression is read in (`'Europe/Paris'`): `0 3 * * *` is 03:00 there,
   * summer and winter. @defaultValue `'UTC'` (not the process's zone: processes in different
   * zones would tick at different instants, and each instant is a job)
   */
  timezone?: string;
  /** Ticks missed while nothing ran: see `MissedTicks`. @defaultValue `'skip'` */
  missed?: MissedTicks;
}

/** A schedule as declared, options resolved; `Offload.schedules()` lists them. */
export interface ScheduleDefinition {
  readonly name: string;
  /** 5 fields (minute precision), 6 (seconds first) or 7 (years last), or `@daily` and the like. */
  readonly cron: string;
  readonly task: string;
  readonly payload: Json;
  readonly timezone: string;
  readonly missed: MissedTicks;
}

const OPTION_KEYS = new Set(['task', 'payload', 'timezone', 'missed']);

/** setTimeout turns a delay past 2^31 - 1 ms (24.8 days) into 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** How long a tick whose enqueue failed is retried, at most (and never past the next tick). */
const RETRY_WINDOW_MS = 60_000;

/**
 * The idempotency key of one tick's job. It holds spaces, which an HTTP `Idempotency-Key` may not
 * (visible ASCII only): an anonymous client cannot take a tick's key and so suppress its run.
 */
export function tickKey(schedule: string, tick: number): string {
  return `schedule ${schedule} ${new Date(tick).toISOString()}`;
}

/** Check a schedule's declaration at once, with an error that names what is wrong. */
export function defineSchedule(
  name: string,
  cron: string,
  options: ScheduleOptions = {},
  maxPayloadBytes = Number.POSITIVE_INFINITY,
): ScheduleDefinition {
  if (typeof name !== 'string' || !/^[\w.:/-]{1,200}$/.test(name)) {
    throw new ConfigError(`Schedule name ${JSON.stringify(name)} must be 1-200 letters, digits or ._:/-`);
  }
  const label = `Schedule "${name}"`;
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new ConfigError(`${label}: options must be an object.`);
  }
  for (const key of Object.keys(options)) {
    if (!OPTION_KEYS.has(key)) throw new ConfigError(`${label}: unknown option "${key}".`);
  }
  const task = options.task ?? name;
  if (typeof task !== 'string' || task === '') throw new ConfigError(`${label}: task must be a task name.`);
  const timezone = options.timezone ?? 'UTC';
  checkTimezone(label, timezone);
  const missed = options.missed ?? 'skip';
  if (missed !== 'skip' && missed !== 'last') {
    throw new ConfigError(`${label}: missed must be "skip" or "last"; got ${JSON.stringify(missed)}.`);
  }
  const payload = options.payload === undefined ? {} : options.payload;
  const notJson = jsonProblem(payload, 'payload');
  if (notJson) throw new ConfigError(`${label}: the payload must be JSON data; ${notJson}.`);
  const bytes = Buffer.byteLength(JSON.stringify(payload));
  if (bytes > maxPayloadBytes) {
    throw new ConfigError(
      `${label}: the payload is ${bytes} bytes, over the maxPayloadBytes limit of ${maxPayloadBytes}.`,
    );
  }
  const def: ScheduleDefinition = Object.freeze({ name, cron, task, payload, timezone, missed });
  compile(def);
  return def;
}

function checkTimezone(label: string, timezone: unknown): void {
  if (typeof timezone !== 'string' || timezone === '') {
    throw new ConfigError(`${label}: timezone must be an IANA time zone name such as "Europe/Paris".`);
  }
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: timezone });
  } catch {
    throw new ConfigError(
      `${label}: unknown time zone ${JSON.stringify(timezone)}; use an IANA name such as "Europe/Paris" or "UTC".`,
    );
  }
}

/** Parse the expression (croner); a ConfigError saying which expression and why. */
function compile(def: ScheduleDefinition): Cron {
  const label = `Schedule "${def.name}"`;
  if (typeof def.cron !== 'string' || def.cron.trim() === '') {
    throw new ConfigError(`${label}: the cron expression must be a non-empty string.`);
  }
  let cron: Cron;
  try {
    // No callback: croner only computes run times here; the Scheduler owns the timers.
    cron = new Cron(def.cron, { timezone: def.timezone });
  } catch (err) {
    throw new ConfigError(
      `${label}: invalid cron expression ${JSON.stringify(def.cron)}: ${(err as Error).message}`,
    );
  }
  // croner takes an ISO date for a one-off run; a schedule is a recurring expression.
  if (cron.getPattern() === undefined) {
    throw new ConfigError(
      `${label}: ${JSON.stringify(def.cron)} is a date, not a cron expression such as "0 3 * * *".`,
    );
  }
  if (cron.nextRun() === null) {
    throw new ConfigError(`${label}: the cron expression ${JSON.stringify(def.cron)} never fires again.`);
  }
  return cron;
}

/** Why `value` would not survive JSON unchanged, naming where; `null` when it would. */
function jsonProblem(value: unknown, path: string): string | null {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return null;
  if (typeof value === 'number') return Number.isFinite(value) ? null : `${path} is ${value}`;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const problem = jsonProblem(value[i], `${path}[${i}]`);
      if (problem) return problem;
    }
    return null;
  }
  if (typeof value === 'object') {
    const proto = Object.getPrototypeOf(value);
    if (proto !== Object.prototype && proto !== null) {
      return `${path} is a ${proto?.constructor?.name ?? 'class instance'}, not a plain object`;
    }
    for (const [key, inner] of Object.entries(value)) {
      const problem = jsonProblem(inner, `${path}.${key}`);
      if (problem) return problem;
    }
    return null;
  }
  return `${path} is ${typeof value === 'undefined' ? 'undefined' : `a ${typeof value}`}`;
}

interface Entry {
  def: ScheduleDefinition;
  cron: Cron;
  /** The tick the timer is armed for (epoch ms). */
  next: number | null;
  timer: NodeJS.Timeout | null;
  /** Retries of ticks whose enqueue failed. */
  retries: Set<NodeJS.Timeout>;
}

/**
 * The schedules of one `Offload` instance. Each ticking process enqueues every tick's job with
 * the idempotency key `tickKey(name, tick)` and owner `null`; the broker's enqueue dedupes on
 * (owner, task, key) atomically, so however many processes tick, each tick is one job. The key
 * lives as long as the job (until it is purged, the result TTL after it finished): a process
 * whose clock is behind by less than a job's run time plus the TTL still finds it.
 *
 * A tick's job is enqueued to run at once. A timer that fires late (event loop blocked, machine
 * asleep) enqueues the latest tick that came due and drops those before it, as `'skip'` does.
 * An enqueue that fails (broker down) is logged and retried for up to a minute, never past the
 * next tick nor the result TTL; other processes ticking the same schedule may have enqueued it.
 */
export class Scheduler {
  private readonly entries = new Map<string, Entry>();
  /** `start()` ran: the tasks were checked, and a schedule added now is checked at once. */
  private started = false;
  private ticking = false;
  private stopped = false;
  private readonly inFlight = new Set<Promise<void>>();

  constructor(private readonly core: Offload) {}

  /**
   * Add a schedule. Once started (or with `requireTask`), its task must be registered already;
   * a ticking scheduler arms it at once.
   */
  add(def: ScheduleDefinition, requireTask = false): void {
    if (this.entries.has(def.name)) throw new ConfigError(`Schedule "${def.name}" is declared twice.`);
    // Checked again: a definition may come from another instance (the CLI copies them).
    const checked = defineSchedule(def.name, def.cron, {
      task: def.task,
      payload: def.payload,
      timezone: def.timezone,
      missed: def.missed,
    });
    if (requireTask || this.started) this.checkTask(checked);
    const entry: Entry = {
      def: checked,
      cron: compile(checked),
      next: null,
      timer: null,
      retries: new Set(),
    };
    this.entries.set(def.name, entry);
    if (this.ticking) this.begin(entry);
  }

  list(): ScheduleDefinition[] {
    return [...this.entries.values()].map((e) => e.def);
  }

  /**
   * Check that every schedule's task is registered (a ConfigError otherwise), then, with `tick`,
   * arm them. Idempotent; nothing ticks again once stopped.
   */
  start(tick: boolean): void {
    if (this.stopped) return;
    for (const entry of this.entries.values()) this.checkTask(entry.def);
    this.started = true;
    if (!tick || this.ticking) return;
    this.ticking = true;
    for (const entry of this.entries.values()) this.begin(entry);
  }

  /** Resolves once the enqueues in flight now (a start's catch-up of a missed tick) have settled. */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
  }

  /** Stop every timer and retry; resolves once the enqueues in flight have settled. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.ticking = false;
    for (const entry of this.entries.values()) {
      if (entry.timer) clearTimeout(entry.timer);
      entry.timer = null;
      for (const retry of entry.retries) clearTimeout(retry);
      entry.retries.clear();
    }
    await Promise.allSettled([...this.inFlight]);
  }

  private checkTask(def: ScheduleDefinition): void {
    if (!this.core.registry.get(def.task)) {
      throw new ConfigError(
        `Schedule "${def.name}" enqueues task "${def.task}", which is not registered: register the task ` +
          'before its schedule starts.',
      );
    }
  }

  /** Arm a schedule once, when ticking starts or it is added to a ticking scheduler. */
  private begin(entry: Entry): void {
    const now = Date.now();
    if (entry.def.missed === 'last') {
      const last = this.before(entry, now);
      if (last !== null && now - last < this.core.config.resultTtlMs) this.fire(entry, last);
    }
    // From a millisecond back: a start exactly on a tick still has that tick.
    this.arm(entry, this.after(entry, now - 1));
  }

  /** The first tick strictly after `at`, or null when the expression never fires again. */
  private after(entry: Entry, at: number): number | null {
    return entry.cron.nextRun(new Date(at))?.getTime() ?? null;
  }

  /** The last tick strictly before `at`, or null. */
  private before(entry: Entry, at: number): number | null {
    try {
      // croner drops the milliseconds of the reference first; ticks fall on whole seconds.
      return entry.cron.previousRuns(1, new Date(Math.ceil(at / 1000) * 1000))[0]?.getTime() ?? null;
    } catch {
      return null;
    }
  }

  private arm(entry: Entry, tick: number | null): void {
    entry.next = tick;
    if (tick === null || this.stopped) return;
    entry.timer = setTimeout(
      () => this.onTimer(entry),
      Math.min(MAX_TIMER_MS, Math.max(0, tick - Date.now())),
    );
    entry.timer.unref();
  }

  private onTimer(entry: Entry): void {
    entry.timer = null;
    const due = entry.next;
    if (due === null || this.stopped) return;
    const now = Date.now();
    // A tick past the timer's 24.8-day cap, or a timer that fired a little early: wait on.
    if (now < due) {
      this.arm(entry, due);
      return;
    }
    const next = this.after(entry, now);
    const latest = next === null ? due : Math.max(due, this.before(entry, next) ?? due);
    this.fire(entry, latest);
    this.arm(entry, next);
  }

  /** Enqueue one tick's job; on failure retry within the window, then give up with an error. */
  private fire(entry: Entry, tick: number): void {
    const { def } = entry;
    // Never past the next tick, nor past the result TTL after this one: a retry later than that
    // could find the tick's job (and so its key) purged, and enqueue the tick a second time.
    const deadline = Math.min(
      Date.now() + RETRY_WINDOW_MS,
      this.after(entry, tick) ?? Number.POSITIVE_INFINITY,
      tick + this.core.config.resultTtlMs,
    );
    const fields = { schedule: def.name, task: def.task, tick: new Date(tick).toISOString() };
    const logger = this.core.config.logger;
    const attempt = async (n: number): Promise<void> => {
      try {
        const { job, created } = await this.core.enqueue(def.task, def.payload, {
          owner: null,
          idempotencyKey: tickKey(def.name, tick),
        });
        if (created) logger.info({ ...fields, jobId: job.id }, 'offload: schedule tick enqueued');
        else logger.debug({ ...fields, jobId: job.id }, 'offload: schedule tick already enqueued');
      } catch (err) {
        if (this.stopped) return;
        // Every tick carries the same payload: retrying cannot make it valid.
        if (err instanceof ValidationError) {
          logger.error(
            { ...fields, errors: err.errors },
            'offload: schedule payload is invalid; tick skipped',
          );
          return;
        }
        const delay = Math.min(10_000, 500 * 2 ** n);
        if (Date.now() + delay >= deadline) {
          logger.error({ ...fields, err }, 'offload: schedule tick not enqueued; giving up on this tick');
          return;
        }
        logger.warn({ ...fields, err }, 'offload: schedule tick not enqueued; retrying');
        const retry = setTimeout(() => {
          entry.retries.delete(retry);
          this.track(attempt(n + 1));
        }, delay);
        retry.unref();
        entry.retries.add(retry);
      }
    };
    this.track(attempt(0));
  }

  private track(run: Promise<void>): void {
    this.inFlight.add(run);
    const done = () => this.inFlight.delete(run);
    run.then(done, done);
  }
}
