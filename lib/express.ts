import type { ServerResponse } from 'node:http';
import { PayloadTooLargeError } from './errors.js';
import { fromBodyParserError } from './http/body.js';
import { createDashboardHandler, type DashboardHandler, type DashboardOptions } from './http/dashboard.js';
import { createJobRoutes, type Next } from './http/job-routes.js';
import { createSubmitHandler, type PayloadExtractor } from './http/submit.js';
import { Offload } from './offload.js';
import type { OffloadOptions, OffloadRequest } from './options.js';
import { sendProblem, toProblem } from './problem.js';
import type { ScheduleDefinition, ScheduleOptions } from './schedule.js';
import type { TaskHandler, TaskOptions } from './task.js';

export interface BackgroundOptions<P, Req> extends TaskOptions {
  /** Build the payload from the request. @defaultValue the JSON body */
  payload?: PayloadExtractor<P, Req>;
}

export type OffloadHandler<Req = OffloadRequest> = (req: Req, res: ServerResponse, next: Next) => void;

/**
 * `app.use(jobs)` mounts the job routes; `jobs.background(...)` marks a route.
 * The function is the middleware; the rest hangs off it.
 */
export interface OffloadMiddleware {
  (req: OffloadRequest, res: ServerResponse, next: Next): void;
  /** The framework-free core: broker, registry, worker. */
  readonly core: Offload;
  /**
   * Register task `name` and return the route handler that submits it:
   * `app.post('/reports', jobs.background('report', { payload: req => ({ month: req.body.month }) }, handler))`.
   */
  background<P = any, Req extends OffloadRequest = OffloadRequest>(
    name: string,
    options: BackgroundOptions<P, Req>,
    handler: TaskHandler<P>,
  ): OffloadHandler<Req>;
  background<P = any>(name: string, handler: TaskHandler<P>): OffloadHandler;
  /** Register a task with no route (enqueue it with `jobs.core.enqueue`). */
  task<P = any, R = unknown>(name: string, handler: TaskHandler<P, R>, options?: TaskOptions): void;
  /**
   * Enqueue task `options.task` (default: `name`, registered before this call) at every tick of
   * `cron`, one job per tick however many processes run the app:
   * `jobs.schedule('nightly-report', '0 3 * * *', { task: 'report', timezone: 'Europe/Paris' })`.
   */
  schedule(name: string, cron: string, options?: ScheduleOptions): ScheduleDefinition;
  /**
   * Error middleware for apps that parse bodies with `express.json()` before offload's routes:
   * turns its parse and size errors into problem+json. Mount after your routes.
   */
  errorHandler(): (err: unknown, req: OffloadRequest, res: ServerResponse, next: Next) => void;
  /**
   * The jobs dashboard: every owner's jobs, live progress, counts per status, a detail view,
   * cancel and retry. It does **no authentication or authorization of its own**: mount it
   * behind the app's admin check, under a path of its own:
   * `app.use('/admin/jobs', requireAdmin, jobs.dashboard())`.
   */
  dashboard(options?: DashboardOptions): DashboardHandler;
  /** Stop the worker gracefully and close the broker. */
  close(): ReturnType<Offload['close']>;
}

/** Create the Express middleware (also plain `node:http` compatible). */
export function offload(options: OffloadOptions = {}): OffloadMiddleware {
  const core = new Offload(options);
  const routes = createJobRoutes(core);

  const middleware = function offloadMiddleware(req: OffloadRequest, res: ServerResponse, next: Next): void {
    routes(req, res, next);
  } as OffloadMiddleware;

  Object.defineProperty(middleware, 'core', { value: core, enumerable: true });

  middleware.background = ((name: string, a: unknown, b?: unknown) => {
    const [opts, handler] = (typeof a === 'function' ? [{}, a] : [a ?? {}, b]) as [
      BackgroundOptions<unknown, OffloadRequest>,
      TaskHandler,
    ];
    const { payload, ...taskOptions } = opts;
    const def = core.task(name, handler, taskOptions);
    return createSubmitHandler(core, def, payload ?? null);
  }) as OffloadMiddleware['background'];

  middleware.task = (name, handler, opts) => {
    core.task(name, handler, opts);
  };

  middleware.schedule = (name, cron, opts) => core.schedule(name, cron, opts);

  middleware.errorHandler = () =>
    function offloadErrorHandler(err: unknown, _req: OffloadRequest, res: ServerResponse, next: Next): void {
      const mapped = fromBodyParserError(err, core.config.maxPayloadBytes);
      if (mapped) {
        const headers: Record<string, string> =
          mapped instanceof PayloadTooLargeError ? { Connection: 'close' } : {};
        sendProblem(res, toProblem(mapped, core.config.logger), headers);
      } else next(err);
    };

  middleware.dashboard = (opts) => createDashboardHandler(core, opts);

  middleware.close = () => core.close();
  return middleware;
}
