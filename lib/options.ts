import type { IncomingMessage } from 'node:http';
import type { BrokerSpec } from './broker.js';
import { type Duration, toMs } from './duration.js';
import { ConfigError } from './errors.js';
import { consoleLogger, type Logger } from './logger.js';

/** Who is asking: the id that owns and may read a job. `null`/`undefined` means anonymous. */
export type OwnerHook<Req = any> = (
  req: Req,
) => string | number | null | undefined | Promise<string | number | null | undefined>;

export interface WorkerOptions {
  /** Jobs run at once in this process; `0` runs none here (web only). @defaultValue 4 */
  concurrency?: number;
  /** How long a claimed job stays leased without renewal; renewed every third of it. @defaultValue '30s' */
  leaseTime?: Duration;
  /** Backstop poll when no wake-up arrives. @defaultValue '1s' */
  pollInterval?: Duration;
  /** On stop, how long running jobs may take before they are handed back. @defaultValue '10s' */
  gracePeriod?: Duration;
  /** Minimum time between two progress writes of one job. @defaultValue '200ms' */
  progressInterval?: Duration;
  /** How long a canceled handler may take to stop before the job is marked canceled anyway. @defaultValue '5s' */
  cancelGrace?: Duration;
  /** Only run these tasks in this process. @defaultValue all registered tasks */
  tasks?: string[];
}

/** Everything is optional; `parseOptions` fills the defaults once. */
export interface OffloadOptions {
  /** A broker, or a URL: `memory:`, `redis://…`, `postgres://…`, `sqlite:path`. @defaultValue 'memory:' */
  broker?: BrokerSpec;
  /** Where the job routes live, as the client sees it. @defaultValue '/jobs' */
  basePath?: string;
  /** Scopes every read and cancel to the caller. @defaultValue every caller is anonymous */
  owner?: OwnerHook;
  /** The in-process worker, or `false` for none (same as concurrency 0). */
  worker?: WorkerOptions | false;
  /** How long finished jobs stay readable before purge. @defaultValue '24h' */
  resultTtl?: Duration;
  /** Largest request body / payload accepted, in bytes. @defaultValue 102400 */
  maxPayloadBytes?: number;
  /** Refuse submits with 503 once this many jobs are queued. @defaultValue no bound */
  maxQueued?: number | null;
  /** Upper bound for `Prefer: wait=N`. @defaultValue '30s' */
  maxWait?: Duration;
  /** A broker call slower than this answers 503. @defaultValue '2s' */
  brokerTimeout?: Duration;
  /** `Retry-After` seconds suggested to pollers. @defaultValue 1 */
  retryAfter?: number;
  /** SSE comment heartbeat. @defaultValue '15s' */
  heartbeat?: Duration;
  /** SSE `retry:` sent to clients. @defaultValue '3s' */
  sseRetry?: Duration;
  /** Send job error stacks to clients (development only). @defaultValue false */
  exposeStack?: boolean;
  /** @defaultValue warnings and errors to the console */
  logger?: Logger;
  /**
   * Whether this process enqueues the ticks of the app's schedules (`schedule()`); `false` for a
   * process that must not (the schedules stay declared). Any number of processes may tick: each
   * tick is still one job. @defaultValue true
   */
  schedules?: boolean;
}

export interface ResolvedConfig {
  broker: BrokerSpec;
  basePath: string;
  owner: OwnerHook | null;
  worker: {
    concurrency: number;
    leaseMs: number;
    pollMs: number;
    graceMs: number;
    progressIntervalMs: number;
    cancelGraceMs: number;
    /** How often a worker re-queues jobs whose lease expired (any worker's). */
    recoverMs: number;
    /** Only these tasks; all registered ones when empty. */
    tasks: string[];
  };
  resultTtlMs: number;
  maxPayloadBytes: number;
  maxQueued: number | null;
  maxWaitMs: number;
  brokerTimeoutMs: number;
  retryAfter: number;
  heartbeatMs: number;
  sseRetryMs: number;
  exposeStack: boolean;
  logger: Logger;
  schedules: boolean;
}

const OPTION_KEYS: ReadonlySet<string> = new Set([
  'broker',
  'basePath',
  'owner',
  'worker',
  'resultTtl',
  'maxPayloadBytes',
  'maxQueued',
  'maxWait',
  'brokerTimeout',
  'retryAfter',
  'heartbeat',
  'sseRetry',
  'exposeStack',
  'logger',
  'schedules',
]);

const WORKER_KEYS: ReadonlySet<string> = new Set([
  'concurrency',
  'leaseTime',
  'pollInterval',
  'gracePeriod',
  'progressInterval',
  'cancelGrace',
  'tasks',
]);

function checkKeys(given: object, known: ReadonlySet<string>, where: string): void {
  for (const key of Object.keys(given)) {
    if (!known.has(key)) throw new ConfigError(`Unknown ${where} option "${key}".`);
  }
}

function intInRange(value: unknown, name: string, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${name} must be an integer from ${min} to ${max}; got ${JSON.stringify(value)}.`);
  }
  return value;
}

/** Fills defaults once, checks ranges, and names any unknown key. */
export function parseOptions(options: OffloadOptions = {}): ResolvedConfig {
  if (options === null || typeof options !== 'object')
    throw new ConfigError('offload(options): options must be an object.');
  checkKeys(options, OPTION_KEYS, 'offload');
  const w = options.worker === false ? { concurrency: 0 } : (options.worker ?? {});
  checkKeys(w, WORKER_KEYS, 'worker');

  const basePath = options.basePath ?? '/jobs';
  // Not '/': the job routes would then answer every path and hide the app's own routes.
  if (!/^\/[\w\-./~]*[^/]$/.test(basePath)) {
    throw new ConfigError(
      `basePath must start with "/", not end with "/", and not be "/" alone; got ${JSON.stringify(basePath)}.`,
    );
  }
  if (options.owner !== undefined && typeof options.owner !== 'function') {
    throw new ConfigError('owner must be a function (req) => string | null.');
  }
  const broker = options.broker ?? 'memory:';
  if (typeof broker !== 'string' && (broker === null || typeof broker !== 'object')) {
    throw new ConfigError('broker must be a Broker object or a URL string.');
  }
  const leaseMs = toMs(w.leaseTime ?? 30_000, 'worker.leaseTime');
  if (leaseMs < 100) throw new ConfigError('worker.leaseTime must be at least 100 ms.');
  const maxQueued = options.maxQueued ?? null;
  if (maxQueued !== null) intInRange(maxQueued, 'maxQueued', 1, Number.MAX_SAFE_INTEGER);
  if (options.schedules !== undefined && typeof options.schedules !== 'boolean') {
    throw new ConfigError(`schedules must be true or false; got ${JSON.stringify(options.schedules)}.`);
  }
  const tasks = w.tasks ?? [];
  if (!Array.isArray(tasks) || tasks.some((t) => typeof t !== 'string')) {
    throw new ConfigError('worker.tasks must be an array of task names.');
  }

  return {
    broker,
    basePath,
    owner: options.owner ?? null,
    worker: {
      concurrency: intInRange(w.concurrency ?? 4, 'worker.concurrency', 0, 10_000),
      leaseMs,
      pollMs: Math.max(10, toMs(w.pollInterval ?? 1000, 'worker.pollInterval')),
      graceMs: toMs(w.gracePeriod ?? 10_000, 'worker.gracePeriod'),
      progressIntervalMs: toMs(w.progressInterval ?? 200, 'worker.progressInterval'),
      cancelGraceMs: toMs(w.cancelGrace ?? 5000, 'worker.cancelGrace'),
      recoverMs: Math.min(5000, Math.max(50, Math.floor(leaseMs / 2))),
      tasks,
    },
    resultTtlMs: toMs(options.resultTtl ?? 86_400_000, 'resultTtl'),
    maxPayloadBytes: intInRange(options.maxPayloadBytes ?? 102_400, 'maxPayloadBytes', 2, 1024 ** 3),
    maxQueued,
    maxWaitMs: toMs(options.maxWait ?? 30_000, 'maxWait'),
    brokerTimeoutMs: Math.max(1, toMs(options.brokerTimeout ?? 2000, 'brokerTimeout')),
    retryAfter: intInRange(options.retryAfter ?? 1, 'retryAfter', 0, 86_400),
    heartbeatMs: Math.max(10, toMs(options.heartbeat ?? 15_000, 'heartbeat')),
    sseRetryMs: toMs(options.sseRetry ?? 3000, 'sseRetry'),
    exposeStack: options.exposeStack === true,
    logger: options.logger ?? consoleLogger,
    schedules: options.schedules !== false,
  };
}

/** The request shape offload reads: Node's, plus what body parsers and routers add. */
export type OffloadRequest = IncomingMessage & {
  body?: any;
  params?: Record<string, string | string[]>;
  query?: any;
  originalUrl?: string;
};
