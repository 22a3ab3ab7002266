import type { ServerResponse } from 'node:http';
import {
  All,
  type CanActivate,
  Controller,
  Inject,
  Param,
  Req,
  Res,
  type Type,
  UseFilters,
  UseGuards,
} from '@nestjs/common';
import { ConfigError } from '../errors.js';
import { createDashboardRouter, type DashboardRouter, parseTitle } from '../http/dashboard.js';
import type { Logger } from '../logger.js';
import { Offload } from '../offload.js';
import type { OffloadRequest } from '../options.js';
import { OffloadProblemFilter } from './problem.filter.js';

type Guard = CanActivate | Type<CanActivate>;

/** `OffloadModule.forRoot({ dashboard })`: where the jobs dashboard lives and who may open it. */
export interface OffloadDashboardOptions {
  /** Its path, as a controller's: `'admin/jobs'` (a global prefix applies; not the job routes' `basePath`). */
  path: string;
  /**
   * Guards that admit admins only, after the app's global ones. Required: the dashboard shows
   * every owner's jobs and cancels and retries any of them, and does no checks of its own. `[]`
   * only when a global guard already keeps everyone else out.
   */
  guards: Guard[];
  /** The page's title and heading. @defaultValue 'offload jobs' */
  title?: string;
}

export interface ResolvedDashboard {
  /** Without leading or trailing `/`. */
  path: string;
  guards: Guard[];
  title: string;
}

const KEYS: ReadonlySet<string> = new Set(['path', 'guards', 'title']);

/** The module's `dashboard` option, checked before Nest registers any route; `null` when absent. */
export function parseModuleDashboard(value: unknown): ResolvedDashboard | null {
  if (value === undefined || value === false) return null;
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new ConfigError(
      "OffloadModule: dashboard must be an object: { path: 'admin/jobs', guards: [AdminGuard] }.",
    );
  }
  for (const key of Object.keys(value)) {
    if (!KEYS.has(key)) throw new ConfigError(`Unknown OffloadModule dashboard option "${key}".`);
  }
  const { path, guards, title } = value as Partial<OffloadDashboardOptions>;
  const trimmed = typeof path === 'string' ? path.replace(/^\/+|\/+$/g, '') : null;
  if (trimmed === null || !/^[\w\-.~]+(\/[\w\-.~]+)*$/.test(trimmed)) {
    throw new ConfigError(
      `OffloadModule: dashboard.path must be a path like 'admin/jobs' (not "/" alone, no parameters); got ${JSON.stringify(path)}.`,
    );
  }
  if (!Array.isArray(guards)) {
    throw new ConfigError(
      "OffloadModule: dashboard.guards is required: the dashboard shows and acts on every owner's jobs " +
        'and checks nobody itself. Pass the guard that admits admins, or [] if a global guard already does.',
    );
  }
  return { path: trimmed, guards, title: parseTitle(title) };
}

function queryOf(req: OffloadRequest): string {
  const url = req.originalUrl ?? req.url ?? '';
  const q = url.indexOf('?');
  return q === -1 ? '' : url.slice(q + 1);
}

/**
 * A controller class for the dashboard at `options.path`, behind `options.guards` (after the
 * app's global ones). It declares the dashboard's own routes only, so it never takes a path of
 * the app's; the answers are the Express handler's (`createDashboardRouter`).
 */
export function createDashboardController(options: ResolvedDashboard, logger: () => Logger): Type<unknown> {
  @Controller(options.path)
  @UseGuards(...options.guards)
  @UseFilters(new OffloadProblemFilter(null, logger))
  class OffloadDashboardController {
    private readonly router: DashboardRouter;

    constructor(@Inject(Offload) core: Offload) {
      this.router = createDashboardRouter(core, { title: options.title });
    }

    @All()
    page(@Req() req: OffloadRequest, @Res() res: ServerResponse): void {
      this.router.handle(req, res, '', queryOf(req));
    }

    @All('assets/:file')
    asset(@Req() req: OffloadRequest, @Res() res: ServerResponse, @Param('file') file: string): void {
      this.router.handle(req, res, `/assets/${file}`, queryOf(req));
    }

    @All('api/:name')
    api(@Req() req: OffloadRequest, @Res() res: ServerResponse, @Param('name') name: string): void {
      this.router.handle(req, res, `/api/${name}`, queryOf(req));
    }

    @All('api/jobs/:id')
    job(@Req() req: OffloadRequest, @Res() res: ServerResponse, @Param('id') id: string): void {
      this.router.handle(req, res, `/api/jobs/${id}`, queryOf(req));
    }

    @All('api/jobs/:id/:action')
    action(
      @Req() req: OffloadRequest,
      @Res() res: ServerResponse,
      @Param('id') id: string,
      @Param('action') action: string,
    ): void {
      this.router.handle(req, res, `/api/jobs/${id}/${action}`, queryOf(req));
    }

    /** Anything else under the dashboard's path: its 404 problem, as on Express. */
    @All('*rest')
    unknown(
      @Req() req: OffloadRequest,
      @Res() res: ServerResponse,
      @Param('rest') rest: string | string[],
    ): void {
      const segments = Array.isArray(rest) ? rest : [rest];
      this.router.handle(req, res, `/${segments.join('/')}`, queryOf(req));
    }
  }
  return OffloadDashboardController;
}
