// The `offload` entry point: core, Express middleware, memory broker.
export { MemoryBroker, type MemoryBrokerOptions } from '../adapters/memory/memory.broker.js';
export type {
  Broker,
  BrokerSpec,
  CancelOutcome,
  ClaimRequest,
  EnqueueInput,
  EnqueueResult,
  Lease,
  ListPage,
  ListQuery,
  Unsubscribe,
} from './broker.js';
export { requireDriver, resolveBroker } from './broker-url.js';
export type { Duration } from './duration.js';
export {
  BadRequestError,
  BrokerUnavailableError,
  ConfigError,
  type FieldError,
  IdempotencyConflictError,
  JobCanceledError,
  JobFinishedError,
  JobNotFoundError,
  JobTimeoutError,
  LeaseLostError,
  MissingDriverError,
  NonRetryableError,
  OffloadError,
  PayloadTooLargeError,
  QueueFullError,
  UnknownTaskError,
  ValidationError,
  WorkerStoppingError,
} from './errors.js';
export { type BackgroundOptions, type OffloadHandler, type OffloadMiddleware, offload } from './express.js';
export type {
  DashboardHandler,
  DashboardJob,
  DashboardJobDetail,
  DashboardOptions,
} from './http/dashboard.js';
export {
  isJobId,
  isTerminal,
  type JobError,
  type JobEvent,
  type JobProgress,
  type JobRecord,
  type JobStatus,
  type JobStatusDocument,
  type Json,
  toStatusDocument,
} from './job.js';
export { JobEvents } from './job-events.js';
export { consoleLogger, type Logger, silentLogger } from './logger.js';
export { type EnqueueOptions, Offload } from './offload.js';
export type { OffloadOptions, OffloadRequest, OwnerHook, WorkerOptions } from './options.js';
export { type Problem, toProblem } from './problem.js';
export type { MissedTicks, ScheduleDefinition, ScheduleOptions } from './schedule.js';
export type { BackoffOptions, Job, TaskHandler, TaskOptions } from './task.js';
export type { StopReport } from './worker.js';
