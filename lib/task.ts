import { type Duration, toMs } from './duration.js';
import { ConfigError } from './errors.js';
import type { Json } from './job.js';
import { type CompiledValidator, compileValidator, type PayloadValidator } from './validation.js';

/** The handle a running task receives: who it is, how to report, and when to stop. */
export interface Job<P = unknown> {
  readonly id: string;
  readonly task: string;
  /** 1 on the first run. */
  readonly attempt: number;
  readonly maxAttempts: number;
  readonly payload: P;
  readonly owner: string | null;
  /** Fires on cancel, time limit, lost lease or shutdown; `signal.reason` says which. */
  readonly signal: AbortSignal;
  /**
   * Report progress (percent is clamped to 0..100). Coalesced: calls closer together than the
   * worker's `progressInterval` become one write, and the last value is always written.
   */
  progress(percent: number, message?: string, data?: Json): Promise<void>;
  /** Append a line to the job's log. */
  log(line: string): Promise<void>;
}

export type TaskHandler<P = any, R = unknown> = (payload: P, job: Job<P>) => R | Promise<R>;

export interface BackoffOptions {
  /** First retry delay. @defaultValue 1000 */
  delay?: Duration;
  /** Growth per attempt. @defaultValue 2 */
  factor?: number;
  /** Upper bound of one delay. @defaultValue 1 hour */
  max?: Duration;
}

export interface TaskOptions {
  /** Runs at most, the first included. A lost lease counts as a run. @defaultValue 3 */
  attempts?: number;
  /** Delay before a retry: exponential with jitter. A number or string is the first delay. */
  backoff?: Duration | BackoffOptions;
  /** Time limit of one run: the signal fires and the run fails. @defaultValue none */
  timeout?: Duration | null;
  /** A job not started this long after it was submitted fails with ERR_OFFLOAD_EXPIRED. @defaultValue none */
  ageLimit?: Duration | null;
  /** Validate (and, for a DTO class, rebuild) the payload at submit time and again in the worker. */
  validate?: PayloadValidator;
}

/** A task with its options resolved once at registration. */
export interface TaskDefinition {
  name: string;
  handler: TaskHandler;
  maxAttempts: number;
  backoff: { delay: number; factor: number; max: number };
  timeoutMs: number | null;
  ageLimitMs: number | null;
  validator: CompiledValidator | null;
}

const TASK_OPTION_KEYS = new Set(['attempts', 'backoff', 'timeout', 'ageLimit', 'validate']);

export function defineTask(name: string, handler: TaskHandler, options: TaskOptions = {}): TaskDefinition {
  if (typeof name !== 'string' || !/^[\w.:/-]{1,200}$/.test(name)) {
    throw new ConfigError(`Task name ${JSON.stringify(name)} must be 1-200 letters, digits or ._:/-`);
  }
  if (typeof handler !== 'function') throw new ConfigError(`Task "${name}" needs a handler function.`);
  for (const key of Object.keys(options)) {
    if (!TASK_OPTION_KEYS.has(key)) throw new ConfigError(`Task "${name}": unknown option "${key}".`);
  }
  const attempts = options.attempts ?? 3;
  if (!Number.isInteger(attempts) || attempts < 1 || attempts > 1000) {
    throw new ConfigError(`Task "${name}": attempts must be an integer from 1 to 1000.`);
  }
  const b =
    typeof options.backoff === 'object' && options.backoff !== null
      ? options.backoff
      : { delay: options.backoff ?? 1000 };
  const factor = b.factor ?? 2;
  if (!Number.isFinite(factor) || factor < 1)
    throw new ConfigError(`Task "${name}": backoff.factor must be >= 1.`);
  return {
    name,
    handler,
    maxAttempts: attempts,
    backoff: {
      delay: toMs(b.delay ?? 1000, `task "${name}" backoff.delay`),
      factor,
      max: toMs(b.max ?? 3_600_000, `task "${name}" backoff.max`),
    },
    timeoutMs: options.timeout == null ? null : toMs(options.timeout, `task "${name}" timeout`) || null,
    ageLimitMs: options.ageLimit == null ? null : toMs(options.ageLimit, `task "${name}" ageLimit`) || null,
    validator: options.validate ? compileValidator(options.validate) : null,
  };
}

/**
 * Delay before the run after `attempt` (1-based): exponential, capped, with "equal jitter"
 * (half fixed, half random) so a burst of failures does not retry in lockstep.
 */
export function backoffDelay(
  def: TaskDefinition['backoff'],
  attempt: number,
  random = Math.random(),
): number {
  const exp = Math.min(def.max, def.delay * def.factor ** Math.max(0, attempt - 1));
  return Math.round(exp / 2 + (exp / 2) * random);
}

/** The tasks one offload instance knows; the worker claims only these. */
export class TaskRegistry {
  private readonly tasks = new Map<string, TaskDefinition>();
  private namesCache: string[] = [];

  add(def: TaskDefinition): void {
    if (this.tasks.has(def.name)) throw new ConfigError(`Task "${def.name}" is registered twice.`);
    this.tasks.set(def.name, def);
    this.namesCache = [...this.tasks.keys()];
  }

  get(name: string): TaskDefinition | undefined {
    return this.tasks.get(name);
  }

  names(): readonly string[] {
    return this.namesCache;
  }

  /** Every registered definition, in registration order. */
  all(): TaskDefinition[] {
    return [...this.tasks.values()];
  }
}
