/** Any value that survives `JSON.stringify` → `JSON.parse` unchanged. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'canceled';

export const JOB_STATUSES: readonly JobStatus[] = ['queued', 'running', 'succeeded', 'failed', 'canceled'];

export const TERMINAL_STATUSES: ReadonlySet<JobStatus> = new Set(['succeeded', 'failed', 'canceled']);

export function isTerminal(status: JobStatus): boolean {
  return TERMINAL_STATUSES.has(status);
}

export interface JobProgress {
  /** 0..100 */
  percent: number;
  message?: string;
  data?: Json;
}

export interface JobError {
  message: string;
  code?: string;
  /** Only present when the app opted in with `exposeStack`. */
  stack?: string;
}

/**
 * A job as the broker stores it. Times are epoch milliseconds; `null` means "not yet".
 * Brokers return copies: mutating a record never changes the stored job.
 */
export interface JobRecord {
  id: string;
  task: string;
  payload: Json;
  status: JobStatus;
  progress: JobProgress | null;
  result: Json | null;
  error: JobError | null;
  /** Runs started so far, the current one included. */
  attempts: number;
  maxAttempts: number;
  /** Not claimed before this time (delayed retry). */
  runAt: number;
  createdAt: number;
  startedAt: number | null;
  finishedAt: number | null;
  /** A job still queued at this time fails with ERR_OFFLOAD_EXPIRED instead of running. */
  expireAt: number | null;
  /** Per-run time limit the worker enforces, from the task's options at submit time. */
  timeoutMs: number | null;
  owner: string | null;
  idempotencyKey: string | null;
  /** Hash of the payload, kept so a replayed Idempotency-Key can be checked against it. */
  payloadHash: string | null;
  /** True once a cancel reached a running job; the worker turns it into `canceled`. */
  cancelRequested: boolean;
  /** Per-job event counter: bumped by every change a client can see. */
  seq: number;
  logs: string[];
}

/**
 * A change to one job, delivered to every process that subscribed.
 * `status` events carry the new status (and the result or error once terminal);
 * `progress` events carry the progress; `cancel` events tell the worker holding the
 * job to fire its signal and are not shown to clients.
 */
export interface JobEvent {
  jobId: string;
  seq: number;
  type: 'status' | 'progress' | 'cancel';
  at: number;
  status?: JobStatus;
  attempts?: number;
  progress?: JobProgress;
  result?: Json | null;
  error?: JobError | null;
}

/** The document clients see at `GET <base>/:id` and in SSE `snapshot` and terminal events. */
export interface JobStatusDocument {
  id: string;
  task: string;
  status: JobStatus;
  progress: JobProgress | null;
  attempts: number;
  maxAttempts: number;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  result?: Json | null;
  error?: JobError;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

export function toStatusDocument(job: JobRecord, exposeStack = false): JobStatusDocument {
  const doc: JobStatusDocument = {
    id: job.id,
    task: job.task,
    status: job.status,
    progress: job.progress,
    attempts: job.attempts,
    maxAttempts: job.maxAttempts,
    createdAt: iso(job.createdAt)!,
    startedAt: iso(job.startedAt),
    finishedAt: iso(job.finishedAt),
  };
  if (job.status === 'succeeded') doc.result = job.result;
  if (job.error && job.status !== 'succeeded') doc.error = publicError(job.error, exposeStack);
  return doc;
}

export function publicError(error: JobError, exposeStack: boolean): JobError {
  const out: JobError = { message: error.message };
  if (error.code) out.code = error.code;
  if (exposeStack && error.stack) out.stack = error.stack;
  return out;
}

/**
 * A job id: a UUID in canonical form, version 4 (random) or 7 (time-ordered: PostgreSQL's ids begin
 * with their job's creation time). Anything else in a status URL is a 404 before the broker is asked.
 */
const JOB_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[47][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

export function isJobId(value: string): boolean {
  return value.length === 36 && JOB_ID.test(value);
}
