import type { ServerResponse } from 'node:http';
import { BadRequestError, JobFinishedError, JobNotFoundError, OffloadError } from '../errors.js';
import { isJobId, isTerminal, JOB_STATUSES, type JobStatus, toStatusDocument } from '../job.js';
import type { Offload } from '../offload.js';
import type { OffloadRequest } from '../options.js';
import { sendJson, sendProblem, toProblem } from '../problem.js';
import {
  multiStreamPlan,
  parseWantedJobs,
  SSE_HEADERS,
  streamJobEvents,
  streamManyJobEvents,
} from './sse.js';

export type Next = (err?: unknown) => void;

class MethodNotAllowedError extends OffloadError {
  constructor(readonly allow: string) {
    super(`Allowed methods: ${allow}.`, 'ERR_OFFLOAD_METHOD_NOT_ALLOWED', 405);
  }
}

/** The caller's owner id, normalised: `null` when anonymous. */
export async function ownerOf(core: Offload, req: OffloadRequest): Promise<string | null> {
  const hook = core.config.owner;
  if (!hook) return null;
  const owner = await hook(req);
  return owner === null || owner === undefined ? null : String(owner);
}

/** The job routes one at a time, for a router that has matched the path already (Nest). */
export interface JobRouteHandlers {
  /** `GET <base>?status=&task=&limit=&cursor=`; `query` is the raw query string. */
  list(req: OffloadRequest, res: ServerResponse, query: string): void;
  /** `GET <base>/:id` (and HEAD). */
  status(req: OffloadRequest, res: ServerResponse, id: string): void;
  /** `GET <base>/:id/events` (and HEAD). */
  events(req: OffloadRequest, res: ServerResponse, id: string): void;
  /** `GET <base>/events?ids=<id>[:<seq>],…` (and HEAD): several jobs on one stream. */
  manyEvents(req: OffloadRequest, res: ServerResponse, query: string): void;
  /** `DELETE <base>/:id`. */
  cancel(req: OffloadRequest, res: ServerResponse, id: string): void;
  /** 405 with `Allow`. */
  methodNotAllowed(res: ServerResponse, allow: string): void;
  /** 404 problem for a path under the base that names no route. */
  notFound(res: ServerResponse): void;
}

/** Each handler answers by itself, errors included (problem+json); none of them throws. */
export function createJobRouteHandlers(core: Offload): JobRouteHandlers {
  const retryAfter = String(core.config.retryAfter);
  const { logger } = core.config;

  function fail(res: ServerResponse, err: unknown): void {
    const headers: Record<string, string> = {};
    if (err instanceof MethodNotAllowedError) headers.Allow = err.allow;
    sendProblem(res, toProblem(err, logger), headers);
  }
  const guard =
    <A extends unknown[]>(fn: (req: OffloadRequest, res: ServerResponse, ...args: A) => Promise<void>) =>
    (req: OffloadRequest, res: ServerResponse, ...args: A): void => {
      fn(req, res, ...args).catch((err) => fail(res, err));
    };

  async function readable(req: OffloadRequest, id: string) {
    if (!isJobId(id)) throw new JobNotFoundError();
    const job = await core.get(id, await ownerOf(core, req));
    if (!job) throw new JobNotFoundError();
    return job;
  }

  async function status(req: OffloadRequest, res: ServerResponse, id: string): Promise<void> {
    const job = await readable(req, id);
    const headers: Record<string, string> = { 'Cache-Control': 'no-store' };
    if (!isTerminal(job.status)) headers['Retry-After'] = retryAfter;
    sendJson(res, 200, toStatusDocument(job, core.config.exposeStack), headers);
  }

  async function events(req: OffloadRequest, res: ServerResponse, id: string): Promise<void> {
    const job = await readable(req, id);
    if (req.method === 'HEAD') {
      res.writeHead(200, SSE_HEADERS);
      res.end();
      return;
    }
    return streamJobEvents(core, req, res, job);
  }

  async function manyEvents(req: OffloadRequest, res: ServerResponse, query: string): Promise<void> {
    const wanted = parseWantedJobs(query);
    const owner = await ownerOf(core, req);
    const jobs = await Promise.all(wanted.map((w) => core.get(w.id, owner)));
    const plan = multiStreamPlan(req, wanted, jobs);
    // Every job unknown, purged or someone else's looks the same as the single route: a 404.
    if (plan.noneVisible) throw new JobNotFoundError();
    return streamManyJobEvents(core, res, plan, req.method === 'HEAD');
  }

  async function cancel(req: OffloadRequest, res: ServerResponse, id: string): Promise<void> {
    if (!isJobId(id)) throw new JobNotFoundError();
    const { outcome, job } = await core.cancel(id, await ownerOf(core, req));
    if (outcome === 'not-found' || !job) throw new JobNotFoundError();
    if (outcome === 'finished') throw new JobFinishedError(job.status);
    const doc = toStatusDocument(job, core.config.exposeStack);
    if (outcome === 'canceled') return sendJson(res, 200, doc);
    sendJson(res, 202, { ...doc, cancelRequested: true }, { 'Retry-After': retryAfter });
  }

  async function list(req: OffloadRequest, res: ServerResponse, query: string): Promise<void> {
    const params = new URLSearchParams(query);
    const status = params.get('status');
    if (status !== null && !JOB_STATUSES.includes(status as JobStatus)) {
      throw new BadRequestError(`status must be one of ${JOB_STATUSES.join(', ')}.`, 'ERR_OFFLOAD_BAD_QUERY');
    }
    const limitText = params.get('limit');
    const limit = limitText === null ? 20 : Number(limitText);
    if (!Number.isInteger(limit) || limit < 1 || limit > 100) {
      throw new BadRequestError('limit must be an integer from 1 to 100.', 'ERR_OFFLOAD_BAD_QUERY');
    }
    const task = params.get('task');
    const page = await core.list({
      owner: await ownerOf(core, req),
      status: (status as JobStatus | null) ?? undefined,
      task: task || undefined,
      limit,
      cursor: params.get('cursor') || null,
    });
    const exposeStack = core.config.exposeStack;
    sendJson(
      res,
      200,
      { jobs: page.jobs.map((j) => toStatusDocument(j, exposeStack)), nextCursor: page.nextCursor },
      { 'Cache-Control': 'no-store' },
    );
  }

  return {
    list: guard(list),
    status: guard(status),
    events: guard(events),
    manyEvents: guard(manyEvents),
    cancel: guard(cancel),
    methodNotAllowed: (res, allow) => fail(res, new MethodNotAllowedError(allow)),
    notFound: (res) => fail(res, new JobNotFoundError()),
  };
}

/**
 * The status, events, cancel and list routes under `basePath`, as one Node-style handler.
 * Requests outside `basePath` go to `next()` untouched; everything under it is answered here.
 */
export function createJobRoutes(core: Offload) {
  const base = core.config.basePath;
  const routes = createJobRouteHandlers(core);

  function dispatch(req: OffloadRequest, res: ServerResponse, path: string, query: string): void {
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    if (path === '' || path === '/') {
      if (method === 'GET') routes.list(req, res, query);
      else routes.methodNotAllowed(res, 'GET');
      return;
    }
    const parts = path.split('/');
    // parts[0] is '' (path starts with '/'); then id, then optionally 'events'.
    const id = parts[1]!;
    if (path === '/events') {
      // No job id is 'events' (ids are UUIDs): the multi-job stream.
      if (method === 'GET') routes.manyEvents(req, res, query);
      else routes.methodNotAllowed(res, 'GET');
    } else if (parts.length > 3 || (parts.length === 3 && parts[2] !== 'events')) routes.notFound(res);
    else if (parts.length === 3) {
      if (method === 'GET') routes.events(req, res, id);
      else routes.methodNotAllowed(res, 'GET');
    } else if (method === 'GET') routes.status(req, res, id);
    else if (method === 'DELETE') routes.cancel(req, res, id);
    else routes.methodNotAllowed(res, 'GET, DELETE');
  }

  return function offloadJobRoutes(req: OffloadRequest, res: ServerResponse, next: Next): void {
    // originalUrl: the configured basePath is absolute, wherever the middleware is mounted.
    const url = req.originalUrl ?? req.url ?? '/';
    // Every request of the app passes here: leave the others with one string test.
    if (!url.startsWith(base)) {
      next();
      return;
    }
    const q = url.indexOf('?');
    const path = url.slice(base.length, q === -1 ? undefined : q);
    if (path !== '' && path[0] !== '/') {
      next();
      return;
    }
    dispatch(req, res, path, q === -1 ? '' : url.slice(q + 1));
  };
}
