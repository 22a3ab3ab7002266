// Helpers the brokers share: what a job record, an idempotency scope and an event history tail
// are does not depend on where they are stored.
import { createHash } from 'node:crypto';
import type { EnqueueInput } from './broker.js';
import type { JobEvent, JobRecord, Json } from './job.js';

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
