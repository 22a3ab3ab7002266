import { Inject, Injectable } from '@nestjs/common';
import type { ListPage, ListQuery } from '../broker.js';
import type { JobRecord, Json } from '../job.js';
import { type EnqueueOptions, Offload } from '../offload.js';
import { backgroundTaskName } from './background.explorer.js';

/**
 * Submit, read and cancel jobs from any provider. A `@Background()` method's payload is its
 * argument list, in order, without the `@JobContext()` one:
 * `offload.enqueue(ReportsController, 'generate', [{ month: '2026-10' }])`.
 */
@Injectable()
export class OffloadService {
  constructor(@Inject(Offload) readonly core: Offload) {}

  /** Submit a job for a task by name, validated as at submit. */
  enqueue(
    task: string,
    payload: Json,
    options?: EnqueueOptions,
  ): Promise<{ job: JobRecord; created: boolean }>;
  /** Submit a job for a `@Background()` method, with its arguments. */
  enqueue<T>(
    target: abstract new (...args: any[]) => T,
    method: keyof T & string,
    args: unknown[],
    options?: EnqueueOptions,
  ): Promise<{ job: JobRecord; created: boolean }>;
  enqueue(
    a: string | Function,
    b: unknown,
    c?: unknown,
    d?: EnqueueOptions,
  ): Promise<{ job: JobRecord; created: boolean }> {
    if (typeof a === 'string') return this.core.enqueue(a, b as Json, c as EnqueueOptions | undefined);
    return this.core.enqueue(backgroundTaskName(a, b as string), toJsonArgs(c as unknown[]), d);
  }

  /** The job, when it exists and (given an `owner`, `null` included) belongs to that owner. */
  get(id: string, owner?: string | null): Promise<JobRecord | null> {
    return this.core.get(id, owner);
  }

  cancel(id: string, owner?: string | null): ReturnType<Offload['cancel']> {
    return this.core.cancel(id, owner);
  }

  list(query: ListQuery): Promise<ListPage> {
    return this.core.list(query);
  }

  /** The finished job, or `null` when `ms` pass first. */
  waitFor(id: string, ms: number): Promise<JobRecord | null> {
    return this.core.waitFor(id, ms);
  }
}

/** Arguments as JSON (a DTO instance becomes its fields, a Date its ISO string). */
function toJsonArgs(args: unknown[]): Json {
  return JSON.parse(JSON.stringify(args ?? [])) as Json;
}
