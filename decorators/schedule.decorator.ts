import 'reflect-metadata';
import { SCHEDULE_METADATA } from '../lib/nest/nest.constants.js';
import type { MissedTicks } from '../lib/schedule.js';

/** `@Schedule()` options. */
export interface ScheduleMethodOptions {
  /**
   * The method's arguments for every tick's job, in order, without the `@JobContext()` one (as
   * `OffloadService.enqueue` takes them); checked against the parameter types at start-up, and
   * again by the worker. @defaultValue `[]`
   */
  args?: unknown[];
  /** IANA time zone the expression is read in. @defaultValue `'UTC'` */
  timezone?: string;
  /** Ticks missed while no process ran: `'skip'` them, or enqueue the `'last'` one at start. @defaultValue `'skip'` */
  missed?: MissedTicks;
  /** The schedule's name, unique in the app (it keys each tick's job). @defaultValue the task name */
  name?: string;
}

/** One `@Schedule()` as recorded on the method. */
export interface ScheduleMetadata {
  cron: string;
  options: ScheduleMethodOptions;
}

/**
 * Enqueue this `@Background()` method as a job at every tick of `cron`, one job per tick however
 * many processes run the app: `@Schedule('0 3 * * *', { timezone: 'Europe/Paris' })`. A method may
 * carry several. Metadata only: `OffloadModule` does the wiring.
 */
export function Schedule(cron: string, options: ScheduleMethodOptions = {}): MethodDecorator {
  return (_target, _key, descriptor) => {
    const method = descriptor.value as object | undefined;
    if (typeof method !== 'function') throw new TypeError('@Schedule() belongs on a method.');
    const list: ScheduleMetadata[] = Reflect.getOwnMetadata(SCHEDULE_METADATA, method) ?? [];
    // Decorators apply bottom-up: put this one first to keep the order they are written in.
    Reflect.defineMetadata(SCHEDULE_METADATA, [{ cron, options }, ...list], method);
    return descriptor;
  };
}
