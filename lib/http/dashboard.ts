import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import type { Unsubscribe } from '../broker.js';
import { renderDashboardPage } from '../dashboard/dashboard.page.js';
import { DASHBOARD_STYLES } from '../dashboard/dashboard.styles.js';
import { BadRequestError, ConfigError, JobFinishedError, JobNotFoundError, OffloadError } from '../errors.js';
import {
  isJobId,
  JOB_STATUSES,
  type JobError,
  type JobEvent,
  type JobProgress,
  type JobRecord,
  type JobStatus,
  type Json,
  publicError,
} from '../job.js';
import type { Offload } from '../offload.js';
import type { OffloadRequest } from '../options.js';
import { sendJson, sendProblem, toProblem } from '../problem.js';
import type { Next } from './job-routes.js';
import { EventStream, SSE_HEADERS } from './sse.js';

/** `jobs.dashboard(options)`. */
export interface DashboardOptions {
  /** The page's title and heading. @defaultValue 'offload jobs' */
  title?: string;
  /**
   * The absolute path the dashboard answers under (`'/admin/jobs'`), for a server that does not
   * mount it under a path: plain `node:http`, or `app.use(requireAdmin, jobs.dashboard({ path }))`.
   * Requests elsewhere go to `next()`. @defaultValue wherever the router mounts it
   */
  path?: string;
}

/** A job as the dashboard lists it: every owner's, so the owner is shown. Times are ISO 8601. */
export interface DashboardJob {
  id: string;
  task: string;
  owner: string | null;
  status: JobStatus;
  progress: JobProgress | null;
  attempts: number;
  maxAttempts: number;
  cancelRequested: boolean;
  createdAt: string;
  runAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  /** The failure, or the last run's while a retry waits. */
  error?: JobError;
  /** The job's event counter: a document or event with a lower one is older news. */
  seq: number;
}

/** One job in full, for the detail view. */
export interface DashboardJobDetail extends DashboardJob {
  payload: Json;
  /** The result once succeeded, else `null`. */
  result: Json | null;
  logs: string[];
  expireAt: string | null;
  timeoutMs: number | null;
  idempotencyKey: string | null;
}

const KEYS: ReadonlySet<string> = new Set(['title', 'path']);

/** Checks `jobs.dashboard()` options once, at start-up. */
export function parseDashboardOptions(options: DashboardOptions | undefined): {
  title: string;
  path: string | null;
} {
  if (options === undefined) return { title: 'offload jobs', path: null };
  if (options === null || typeof options !== 'object') {
    throw new ConfigError('dashboard(options): options must be an object.');
  }
  for (const key of Object.keys(options)) {
    if (!KEYS.has(key)) throw new ConfigError(`Unknown dashboard option "${key}".`);
  }
  return { title: parseTitle(options.title), path: parsePath(options.path) };
}

export function parseTitle(title: unknown): string {
  if (title === undefined) return 'offload jobs';
  if (typeof title !== 'string' || title.trim() === '' || title.length > 200) {
    throw new ConfigError(
      `dashboard title must be a non-empty string of at most 200 characters; got ${JSON.stringify(title)}.`,
    );
  }
  return title;
}

function parsePath(path: unknown): string | null {
  if (path === undefined) return null;
  // Not '/': the dashboard would answer every path of the app.
  if (typeof path !== 'string' || !/^(\/[\w\-.~]+)+$/.test(path)) {
    throw new ConfigError(
      `dashboard path must be absolute, like "/admin/jobs", without a trailing "/"; got ${JSON.stringify(path)}.`,
    );
  }
  return path;
}

class DashboardNotFoundError extends OffloadError {
  constructor() {
    super('The dashboard has nothing at this path.', 'ERR_OFFLOAD_NOT_FOUND', 404);
  }
}

class MethodNotAllowedError extends OffloadError {
  constructor(readonly allow: string) {
    super(`Allowed methods: ${allow}.`, 'ERR_OFFLOAD_METHOD_NOT_ALLOWED', 405);
  }
}

class NotRetryableError extends OffloadError {
  constructor(status: JobStatus) {
    super(
      `Only failed or canceled jobs can be retried; this one is ${status}.`,
      'ERR_OFFLOAD_NOT_RETRYABLE',
      409,
    );
  }
}

/**
 * The header the dashboard's script sends with every action. A cross-site form or a simple
 * cross-origin request cannot set it, so a cookie session alone never cancels or retries a job.
 */
export const ACTION_HEADER = 'x-offload-dashboard';

class CrossSiteError extends OffloadError {
  constructor(detail: string) {
    super(detail, 'ERR_OFFLOAD_CROSS_SITE', 403);
  }
}

/** `origin`'s host (`example.com:8443`) is `host`'s, its default port for the scheme aside. */
function sameHost(origin: URL, host: string | undefined): boolean {
  if (!host) return false;
  try {
    return new URL(`${origin.protocol}//${host.trim()}`).host === origin.host;
  } catch {
    return false;
  }
}

/**
 * Refuse a cancel or retry that did not come from the dashboard's own page: it needs the action
 * header, and what the browser says of the request's origin (when it says) must be this server.
 * The page's script only ever calls its own origin.
 */
function checkAction(req: OffloadRequest): void {
  if (!req.headers[ACTION_HEADER]) {
    throw new CrossSiteError(
      `Dashboard actions need the ${ACTION_HEADER} request header, a guard against cross-site requests.`,
    );
  }
  const site = req.headers['sec-fetch-site'];
  if (site === 'cross-site' || site === 'same-site') {
    throw new CrossSiteError(
      `Dashboard actions come from the dashboard's own page, not another site (${site}).`,
    );
  }
  const origin = req.headers.origin;
  if (origin === undefined) return;
  let from: URL | null = null;
  try {
    from = new URL(origin);
  } catch {
    // `Origin: null` (a sandboxed frame, a data: page) or garbage: not the dashboard's page.
  }
  // Behind a proxy that rewrites `Host`, the browser's host is in `X-Forwarded-Host` (which a
  // cross-site page cannot set without a CORS preflight, as for the action header).
  const forwarded = req.headers['x-forwarded-host'];
  const proxied = (Array.isArray(forwarded) ? forwarded[0] : forwarded)?.split(',')[0];
  if (!from || !(sameHost(from, req.headers.host) || sameHost(from, proxied))) {
    throw new CrossSiteError(`Dashboard actions come from the dashboard's own origin, not ${origin}.`);
  }
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

export function toDashboardJob(job: JobRecord, exposeStack: boolean): DashboardJob {
  const doc: DashboardJob = {
    id: job.id,
    task: job.task,
    owner: job.owner,
    status: job.status,
    progress: job.progress,
    attempts: job.attempts,
    maxAttempts: job.maxAttempts,
    cancelRequested: job.cancelRequested,
    createdAt: iso(job.createdAt)!,
    runAt: iso(job.runAt)!,
    startedAt: iso(job.startedAt),
    finishedAt: iso(job.finishedAt),
    seq: job.seq,
  };
  if (job.error && job.status !== 'succeeded') doc.error = publicError(job.error, exposeStack);
  return doc;
}

export function toDashboardJobDetail(job: JobRecord, exposeStack: boolean): DashboardJobDetail {
  return {
    ...toDashboardJob(job, exposeStack),
    payload: job.payload,
    result: job.status === 'succeeded' ? job.result : null,
    logs: job.logs,
    expireAt: iso(job.expireAt),
    timeoutMs: job.timeoutMs,
    idempotencyKey: job.idempotencyKey,
  };
}

/** One SSE event for every job change a dashboard shows; `null` for the ones it does not. */
function eventText(event: JobEvent, exposeStack: boolean): string | null {
  const at = new Date(event.at).toISOString();
  if (event.type === 'progress' && event.progress) {
    return `event: progress\ndata: ${JSON.stringify({ id: event.jobId, seq: event.seq, at, progress: event.progress })}\n\n`;
  }
  if (event.type === 'status' && event.status) {
    const data: Record<string, unknown> = {
      id: event.jobId,
      seq: event.seq,
      at,
      status: event.status,
      attempts: event.attempts ?? 0,
    };
    if (event.error && event.status !== 'succeeded') data.error = publicError(event.error, exposeStack);
    return `event: status\ndata: ${JSON.stringify(data)}\n\n`;
  }
  return null;
}

/**
 * Every job's events for the dashboard streams of one router: one broker subscription while at
 * least one stream is open (brokers share their underlying connection between subscribers), each
 * event serialised once for all of them.
 */
class DashboardFeed {
  private readonly listeners = new Set<(text: string) => void>();
  private subscription: Promise<Unsubscribe> | null = null;

  constructor(private readonly core: Offload) {}

  /** Resolves once the broker subscription is live, so a list read after it misses no event. */
  async add(listener: (text: string) => void): Promise<Unsubscribe> {
    this.listeners.add(listener);
    try {
      await this.core.call(this.subscribed());
    } catch (err) {
      this.remove(listener);
      throw err;
    }
    return () => this.remove(listener);
  }

  private subscribed(): Promise<Unsubscribe> {
    if (!this.subscription) {
      const exposeStack = this.core.config.exposeStack;
      const sub = this.core.broker.subscribe((event) => {
        const text = eventText(event, exposeStack);
        if (text === null) return;
        for (const listener of this.listeners) {
          try {
            listener(text);
          } catch {
            // A closed socket must not starve the other streams.
          }
        }
      });
      this.subscription = sub;
      // A failed subscribe must not stick: the next stream tries again.
      sub.catch(() => {
        if (this.subscription === sub) this.subscription = null;
      });
    }
    return this.subscription;
  }

  private remove(listener: (text: string) => void): void {
    if (!this.listeners.delete(listener) || this.listeners.size > 0 || !this.subscription) return;
    const sub = this.subscription;
    this.subscription = null;
    sub.then(
      (off) => off(),
      () => {},
    );
  }
}

interface Asset {
  body: string;
  type: string;
  etag: string;
}

function asset(body: string, type: string): Asset {
  return { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 27)}"` };
}

let assets: Map<string, Asset> | null = null;

/**
 * The script and stylesheet, read once per process. The script is the compiled
 * `lib/dashboard/dashboard.client.mts`, next to this module's own output in the package.
 */
function dashboardAssets(): Map<string, Asset> {
  if (!assets) {
    const script = readFileSync(join(__dirname, '../dashboard/dashboard.client.mjs'), 'utf8')
      // The source map is not served.
      .replace(/\n\/\/# sourceMappingURL=\S+\s*$/, '\n');
    assets = new Map([
      ['dashboard.js', asset(script, 'text/javascript; charset=utf-8')],
      ['dashboard.css', asset(DASHBOARD_STYLES, 'text/css; charset=utf-8')],
    ]);
  }
  return assets;
}

const SECURITY_HEADERS = {
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'same-origin',
};

const EVENT_HEADERS = { ...SSE_HEADERS, ...SECURITY_HEADERS };

/** The page loads its own script and styles only, and may not be framed. */
const PAGE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/**
 * The dashboard's routes, for a caller that knows the path relative to where it is mounted:
 *
 * | path | |
 * |---|---|
 * | `GET /` | the page |
 * | `GET /assets/dashboard.js`, `/assets/dashboard.css` | its script and styles |
 * | `GET /api/jobs?status=&task=&owner=&limit=&cursor=` | every owner's jobs, newest first |
 * | `GET /api/counts` | jobs per status |
 * | `GET /api/jobs/:id` | one job in full |
 * | `POST /api/jobs/:id/cancel`, `/retry` | act on one (with the `x-offload-dashboard` header) |
 * | `GET /api/events` | every job's `status` and `progress` events (SSE), `ready` once live |
 */
export interface DashboardRouter {
  /**
   * Answer a request; each answer is complete, errors as problem+json. `path` is relative to the
   * mount (`''` or `'/'` for the page), `query` the raw query string. With `next`, a path the
   * dashboard does not know goes there instead of a 404.
   */
  handle(req: OffloadRequest, res: ServerResponse, path: string, query: string, next?: Next): void;
}

type Route =
  | { name: 'page' | 'list' | 'counts' | 'events'; allow: 'GET' }
  | { name: 'asset'; allow: 'GET'; file: string }
  | { name: 'job'; allow: 'GET'; id: string }
  | { name: 'cancel' | 'retry'; allow: 'POST'; id: string };

function route(path: string): Route | null {
  if (path === '' || path === '/') return { name: 'page', allow: 'GET' };
  const parts = path.split('/');
  // parts[0] is '' (the path starts with '/').
  if (parts[0] !== '') return null;
  if (parts.length === 3 && parts[1] === 'assets') return { name: 'asset', allow: 'GET', file: parts[2]! };
  if (parts[1] !== 'api') return null;
  if (parts.length === 3) {
    if (parts[2] === 'jobs') return { name: 'list', allow: 'GET' };
    if (parts[2] === 'counts') return { name: 'counts', allow: 'GET' };
    if (parts[2] === 'events') return { name: 'events', allow: 'GET' };
    return null;
  }
  if (parts[2] !== 'jobs' || !parts[3]) return null;
  if (parts.length === 4) return { name: 'job', allow: 'GET', id: parts[3] };
  if (parts.length === 5 && (parts[4] === 'cancel' || parts[4] === 'retry')) {
    return { name: parts[4], allow: 'POST', id: parts[3] };
  }
  return null;
}

/** The path the browser used to reach the dashboard's root: the request path without `path`. */
function mountOf(req: OffloadRequest, path: string): string {
  const url = req.originalUrl ?? req.url ?? '/';
  const q = url.indexOf('?');
  let full = q === -1 ? url : url.slice(0, q);
  if (path !== '' && path !== '/' && full.endsWith(path)) full = full.slice(0, full.length - path.length);
  return full.replace(/\/+$/, '');
}

/** The dashboard's routes; the Express handler and the Nest controller both answer with it. */
export function createDashboardRouter(core: Offload, { title }: { title: string }): DashboardRouter {
  const { logger, exposeStack } = core.config;
  const files = dashboardAssets();
  const feed = new DashboardFeed(core);

  function fail(res: ServerResponse, err: unknown): void {
    const headers: Record<string, string> = {};
    if (err instanceof MethodNotAllowedError) headers.Allow = err.allow;
    sendProblem(res, toProblem(err, logger), headers);
  }

  function page(req: OffloadRequest, res: ServerResponse, path: string): void {
    const html = renderDashboardPage({ base: mountOf(req, path), title, tasks: core.registry.names() });
    res.writeHead(200, {
      'Content-Type': 'text/html; charset=utf-8',
      'Content-Length': Buffer.byteLength(html),
      'Cache-Control': 'no-store',
      'Content-Security-Policy': PAGE_CSP,
      ...SECURITY_HEADERS,
    });
    res.end(html);
  }

  function file(req: OffloadRequest, res: ServerResponse, name: string): void {
    const found = files.get(name);
    if (!found) throw new DashboardNotFoundError();
    const headers = {
      ETag: found.etag,
      // Revalidated on every load: a new offload version must not meet an old cached script.
      'Cache-Control': 'no-cache',
      ...SECURITY_HEADERS,
    };
    if (req.headers['if-none-match'] === found.etag) {
      res.writeHead(304, headers);
      res.end();
      return;
    }
    res.writeHead(200, {
      ...headers,
      'Content-Type': found.type,
      'Content-Length': Buffer.byteLength(found.body),
    });
    res.end(found.body);
  }

  async function list(res: ServerResponse, query: string): Promise<void> {
    const params = new URLSearchParams(query);
    const status = params.get('status') || null;
    if (status !== null && !JOB_STATUSES.includes(status as JobStatus)) {
      throw new BadRequestError(`status must be one of ${JOB_STATUSES.join(', ')}.`, 'ERR_OFFLOAD_BAD_QUERY');
    }
    const limitText = params.get('limit');
    const limit = limitText === null || limitText === '' ? 50 : Number(limitText);
    if (!Number.isInteger(limit) || limit < 1 || limit > 200) {
      throw new BadRequestError('limit must be an integer from 1 to 200.', 'ERR_OFFLOAD_BAD_QUERY');
    }
    const owner = params.get('owner');
    const page = await core.list({
      // Absent: every owner's jobs (the admin view).
      owner: owner ? owner : undefined,
      status: (status as JobStatus | null) ?? undefined,
      task: params.get('task') || undefined,
      limit,
      cursor: params.get('cursor') || null,
    });
    sendJson(
      res,
      200,
      { jobs: page.jobs.map((j) => toDashboardJob(j, exposeStack)), nextCursor: page.nextCursor },
      { 'Cache-Control': 'no-store' },
    );
  }

  async function counts(res: ServerResponse): Promise<void> {
    const c = await core.call(core.broker.counts());
    const body: Record<string, number> = {};
    for (const status of JOB_STATUSES) body[status] = c[status] ?? 0;
    sendJson(res, 200, body, { 'Cache-Control': 'no-store' });
  }

  async function job(res: ServerResponse, id: string): Promise<void> {
    const found = isJobId(id) ? await core.get(id) : null;
    if (!found) throw new JobNotFoundError();
    sendJson(res, 200, toDashboardJobDetail(found, exposeStack), { 'Cache-Control': 'no-store' });
  }

  async function cancel(req: OffloadRequest, res: ServerResponse, id: string): Promise<void> {
    checkAction(req);
    if (!isJobId(id)) throw new JobNotFoundError();
    // No owner: an admin cancels anyone's job.
    const { outcome, job: found } = await core.cancel(id);
    if (outcome === 'not-found' || !found) throw new JobNotFoundError();
    if (outcome === 'finished') throw new JobFinishedError(found.status);
    sendJson(res, outcome === 'canceled' ? 200 : 202, {
      outcome,
      job: toDashboardJobDetail(found, exposeStack),
    });
  }

  async function retry(req: OffloadRequest, res: ServerResponse, id: string): Promise<void> {
    checkAction(req);
    if (!isJobId(id)) throw new JobNotFoundError();
    const retried = await core.call(core.broker.retry(id));
    if (!retried) {
      // retry() only says "no": ask why.
      const current = await core.get(id);
      if (!current) throw new JobNotFoundError();
      throw new NotRetryableError(current.status);
    }
    sendJson(res, 200, { outcome: 'retried', job: toDashboardJobDetail(retried, exposeStack) });
  }

  async function events(req: OffloadRequest, res: ServerResponse): Promise<void> {
    if (req.method === 'HEAD') {
      res.writeHead(200, EVENT_HEADERS);
      res.end();
      return;
    }
    // Every event of every job goes to each dashboard: the stream drops a reader that falls
    // behind (see `EventStream.send`); the page reconnects and reads the list again on `ready`.
    const stream = new EventStream(core, res, EVENT_HEADERS);
    // The client left already (an app's async admin check ran first), or offload is closing.
    if (!stream.open()) return;
    let off: Unsubscribe;
    try {
      off = await feed.add((text) => stream.send(text));
    } catch {
      // The broker is unreachable: end; EventSource reconnects after `retry`.
      return stream.end();
    }
    // Undone at once if the client left while we subscribed.
    stream.onEnd(off);
    // The client reads the list after this, so no change falls between the list and the stream.
    stream.send('event: ready\ndata: {}\n\n');
  }

  async function dispatch(req: OffloadRequest, res: ServerResponse, r: Route, path: string, query: string) {
    switch (r.name) {
      case 'page':
        return page(req, res, path);
      case 'asset':
        return file(req, res, r.file);
      case 'list':
        return list(res, query);
      case 'counts':
        return counts(res);
      case 'events':
        return events(req, res);
      case 'job':
        return job(res, r.id);
      case 'cancel':
        return cancel(req, res, r.id);
      case 'retry':
        return retry(req, res, r.id);
    }
  }

  return {
    handle(req, res, path, query, next) {
      const r = route(path);
      if (!r) {
        if (next) next();
        else fail(res, new DashboardNotFoundError());
        return;
      }
      const method = req.method === 'HEAD' ? 'GET' : req.method;
      if (method !== r.allow) {
        fail(res, new MethodNotAllowedError(r.allow === 'GET' ? 'GET, HEAD' : r.allow));
        return;
      }
      dispatch(req, res, r, path, query).catch((err) => fail(res, err));
    },
  };
}

/**
 * The handler `jobs.dashboard()` returns. Its request is Node's: it reads `url`, `originalUrl`
 * (Express), `method` and headers only, so it sits next to any framework's typed middleware.
 */
export type DashboardHandler = (req: IncomingMessage, res: ServerResponse, next: Next) => void;

/**
 * `jobs.dashboard()`: the dashboard as a Node-style handler. It does no authentication or
 * authorization: whoever reaches it sees every owner's jobs and may cancel and retry them, so the
 * app mounts it behind its own admin check. Mounted under a path by a router
 * (`app.use('/admin/jobs', requireAdmin, jobs.dashboard())`), it answers everything under it,
 * unknown paths with a 404 problem. Given `path`, it answers under that absolute path and passes
 * other requests to `next()`; mounted at the root without `path`, it passes on what it does not know.
 */
export function createDashboardHandler(core: Offload, options?: DashboardOptions): DashboardHandler {
  const { title, path } = parseDashboardOptions(options);
  const router = createDashboardRouter(core, { title });

  return function offloadDashboard(message: IncomingMessage, res: ServerResponse, next: Next): void {
    const req = message as OffloadRequest;
    const local = req.url ?? '/';
    const url = path === null ? local : (req.originalUrl ?? local);
    const q = url.indexOf('?');
    let rel = q === -1 ? url : url.slice(0, q);
    const query = q === -1 ? '' : url.slice(q + 1);
    if (path !== null) {
      if (!rel.startsWith(path) || (rel.length > path.length && rel[path.length] !== '/')) {
        next();
        return;
      }
      rel = rel.slice(path.length);
      router.handle(req, res, rel, query);
      return;
    }
    const original = req.originalUrl ?? local;
    const oq = original.indexOf('?');
    const atRoot = (oq === -1 ? original : original.slice(0, oq)) === rel;
    router.handle(req, res, rel, query, atRoot ? next : undefined);
  };
}
