/**
 * Every error offload raises carries a stable `code`; the ones that can reach a client
 * also carry the HTTP `status` that `problem.ts` maps them to.
 */
export class OffloadError extends Error {
  readonly code: string;
  readonly status: number;

  constructor(message: string, code = 'ERR_OFFLOAD', status = 500, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
  }
}

/** One field that failed validation: `field` is a dotted path into the payload. */
export interface FieldError {
  field: string;
  messages: string[];
}

export class ValidationError extends OffloadError {
  readonly errors: FieldError[];
  constructor(errors: FieldError[], message = 'The request payload is invalid.') {
    super(message, 'ERR_OFFLOAD_VALIDATION', 400);
    this.errors = errors;
  }
}

/** The body could not be read as JSON (syntax, wrong content type, forbidden keys). */
export class BadRequestError extends OffloadError {
  constructor(message: string, code = 'ERR_OFFLOAD_BAD_REQUEST') {
    super(message, code, 400);
  }
}

export class PayloadTooLargeError extends OffloadError {
  constructor(limit: number) {
    super(`The payload is larger than the limit of ${limit} bytes.`, 'ERR_OFFLOAD_PAYLOAD_TOO_LARGE', 413);
  }
}

/** The broker did not answer, or answered with an error, within the configured time. */
export class BrokerUnavailableError extends OffloadError {
  constructor(message = 'The job broker is unavailable.', options?: { cause?: unknown }) {
    super(message, 'ERR_OFFLOAD_BROKER_UNAVAILABLE', 503, options);
  }
}

export class QueueFullError extends OffloadError {
  constructor(limit: number) {
    super(`The queue holds its limit of ${limit} waiting jobs.`, 'ERR_OFFLOAD_QUEUE_FULL', 503);
  }
}

export class IdempotencyConflictError extends OffloadError {
  constructor() {
    super(
      'This Idempotency-Key was already used with a different payload.',
      'ERR_OFFLOAD_IDEMPOTENCY_CONFLICT',
      422,
    );
  }
}

export class JobNotFoundError extends OffloadError {
  constructor() {
    super('No such job.', 'ERR_OFFLOAD_JOB_NOT_FOUND', 404);
  }
}

export class JobFinishedError extends OffloadError {
  constructor(status: string) {
    super(`The job has already finished (${status}).`, 'ERR_OFFLOAD_JOB_FINISHED', 409);
  }
}

export class UnknownTaskError extends OffloadError {
  constructor(task: string) {
    super(`No task named "${task}" is registered.`, 'ERR_OFFLOAD_UNKNOWN_TASK', 500);
  }
}

/** Options or a broker URL that cannot work; raised at start-up, never per request. */
export class ConfigError extends OffloadError {
  constructor(message: string) {
    super(message, 'ERR_OFFLOAD_CONFIG', 500);
  }
}

/** An optional driver package (ioredis, pg, better-sqlite3, ...) is not installed. */
export class MissingDriverError extends OffloadError {
  constructor(pkg: string, feature: string, options?: { cause?: unknown }) {
    super(
      `The ${feature} needs the "${pkg}" package, which is not installed. Run: npm install ${pkg}`,
      'ERR_OFFLOAD_MISSING_DRIVER',
      500,
      options,
    );
  }
}

/**
 * Thrown by a task to say "this will never succeed": the job fails at once,
 * whatever attempts remain.
 */
export class NonRetryableError extends OffloadError {
  constructor(message: string, code = 'ERR_OFFLOAD_NON_RETRYABLE') {
    super(message, code, 500);
  }
}

/** The reason a job's signal fires when its time limit runs out. */
export class JobTimeoutError extends OffloadError {
  constructor(ms: number) {
    super(`The job ran longer than its time limit of ${ms} ms.`, 'ERR_OFFLOAD_TIMEOUT', 500);
  }
}

/** The reason a job's signal fires when the client canceled it. */
export class JobCanceledError extends OffloadError {
  constructor() {
    super('The job was canceled.', 'ERR_OFFLOAD_CANCELED', 409);
  }
}

/** The reason a job's signal fires when this worker lost its lease (another worker may run it). */
export class LeaseLostError extends OffloadError {
  constructor() {
    super('The worker lost its lease on the job.', 'ERR_OFFLOAD_LEASE_LOST', 500);
  }
}

/** The reason a job's signal fires when the worker shuts down and hands the job back. */
export class WorkerStoppingError extends OffloadError {
  constructor() {
    super('The worker is shutting down; the job was handed back to the queue.', 'ERR_OFFLOAD_SHUTDOWN', 503);
  }
}
