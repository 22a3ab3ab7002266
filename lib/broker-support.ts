// Helpers the brokers share: what a job record, an idempotency scope and an event history tail
// are does not depend on where they are stored.
import { createHash } from 'node:crypto';
import type { EnqueueInput } from './broker.js';
import type { JobError, JobEvent, JobProgress, JobRecord, JobStatus, Json } from './job.js';

/** The scope an idempotency key dedupes in: (owner, task, key), as one string. */
export function idempotencyScope(input: EnqueueInput): string | null {
  return input.idempotencyKey ? JSON.stringify([input.owner, input.task, input.idempotencyKey]) : null;
}

/** `idempotencyScope` hashed, for stores that key on a short fixed-size string. */
export function hashedIdempotencyScope(input: EnqueueInput): string | null {
  const scope = idempotencyScope(input);
  return scope === null ? null : createHash('sha256').update(scope).digest('base64url');
}

/**
 * The record of a job just enqueued: what was sent, stamped with the store's times. Brokers
 * build it instead of reading it back. `payload` is the caller's own copy.
 */
export function newJobRecord(
  input: EnqueueInput,
  id: string,
  payload: Json,
  times: { createdAt: number; runAt: number },
): JobRecord {
  return {
    id,
    task: input.task,
    payload,
    status: 'queued',
    progress: null,
    result: null,
    error: null,
    attempts: 0,
    maxAttempts: input.maxAttempts,
    runAt: times.runAt,
    createdAt: times.createdAt,
    startedAt: null,
    finishedAt: null,
    expireAt: input.expireAt ?? null,
    timeoutMs: input.timeoutMs ?? null,
    owner: input.owner,
    idempotencyKey: input.idempotencyKey || null,
    payloadHash: input.payloadHash || null,
    cancelRequested: false,
    seq: 1,
    logs: [],
  };
}

/**
 * `Broker.history` from what a store kept: the job's current seq and its kept events (oldest
 * first). `[]` when the caller is up to date; `null` when the events right after `afterSeq` are
 * no longer kept (the caller sends a snapshot).
 */
export function eventsAfter(seq: number, kept: JobEvent[], afterSeq: number): JobEvent[] | null {
  if (afterSeq >= seq) return [];
  const events = kept.filter((e) => e.seq > afterSeq);
  const first = events[0];
  if (!first || first.seq > afterSeq + 1) return null;
  return events;
}

/**
 * A job as the SQL brokers store it: snake_case columns, JSON values as text (`J`, or as JSON
 * when SQL built the row with them embedded: `SqlJobRow<Json>`). The drivers differ in two
 * columns: a boolean comes as `true`/`false` (PostgreSQL) or `1`/`0` (SQLite), the logs as an
 * array (PostgreSQL's text[]) or JSON text (SQLite).
 */
export interface SqlJobRow<J = string> {
  id: string;
  task: string;
  payload: J;
  status: JobStatus;
  progress: J | null;
  result: J | null;
  error: J | null;
  attempts: number;
  max_attempts: number;
  run_at: number;
  created_at: number;
  started_at: number | null;
  finished_at: number | null;
  expire_at: number | null;
  timeout_ms: number | null;
  owner: string | null;
  idempotency_key: string | null;
  payload_hash: string | null;
  cancel_requested: boolean | number;
  seq: number;
  logs: string[] | string | null;
}

const parseJson = (text: string | null): unknown => (text === null ? null : JSON.parse(text));
const asIs = (value: unknown): unknown => value;

/** A job record from its SQL row. */
export function recordFromRow(row: SqlJobRow): JobRecord {
  return record(row, parseJson as (value: unknown) => unknown);
}

/**
 * A job record from a row whose JSON columns are embedded as JSON, not as text holding JSON
 * (PostgreSQL's leases): the values were parsed with the row, and are not parsed a second time.
 */
export function recordFromJsonRow(row: SqlJobRow<Json>): JobRecord {
  return record(row, asIs);
}

function record<J>(row: SqlJobRow<J>, json: (value: unknown) => unknown): JobRecord {
  return {
    id: row.id,
    task: row.task,
    payload: json(row.payload) as Json,
    status: row.status,
    progress: json(row.progress) as JobProgress | null,
    result: json(row.result) as Json,
    error: json(row.error) as JobError | null,
    attempts: row.attempts,
    maxAttempts: row.max_attempts,
    runAt: row.run_at,
    createdAt: row.created_at,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    expireAt: row.expire_at,
    timeoutMs: row.timeout_ms,
    owner: row.owner,
    idempotencyKey: row.idempotency_key,
    payloadHash: row.payload_hash,
    cancelRequested: row.cancel_requested === true || row.cancel_requested === 1,
    seq: row.seq,
    logs: Array.isArray(row.logs) ? row.logs : ((parseJson(row.logs) as string[] | null) ?? []),
  };
}
