import type { ServerResponse } from 'node:http';
import {
  All,
  type CanActivate,
  Controller,
  Delete,
  Get,
  Inject,
  Param,
  Req,
  Res,
  type Type,
  UseFilters,
  UseGuards,
} from '@nestjs/common';
import { PATH_METADATA } from '@nestjs/common/constants';
import { createJobRouteHandlers, type JobRouteHandlers } from '../http/job-routes.js';
import type { Logger } from '../logger.js';
import { Offload } from '../offload.js';
import type { OffloadRequest } from '../options.js';
import { OffloadProblemFilter } from './problem.filter.js';

function queryOf(req: OffloadRequest): string {
  const url = req.originalUrl ?? req.url ?? '';
  const q = url.indexOf('?');
  return q === -1 ? '' : url.slice(q + 1);
}

/**
 * A fresh controller class per `OffloadModule.forRoot`: its path (the base path) and guards are
 * the module's, set on this class only. The handlers are the Express middleware's, so the two
 * answer alike, rule for rule.
 */
export function createJobsController(
  guards: (CanActivate | Type<CanActivate>)[],
  logger: () => Logger,
): Type<unknown> & { mountAt(basePath: string): void } {
  @Controller()
  @UseGuards(...guards)
  @UseFilters(new OffloadProblemFilter(null, logger))
  class OffloadJobsController {
    private readonly routes: JobRouteHandlers;

    constructor(@Inject(Offload) core: Offload) {
      this.routes = createJobRouteHandlers(core);
    }

    /** Set before Nest registers the routes (the base path may come from an async factory). */
    static mountAt(basePath: string): void {
      Reflect.defineMetadata(PATH_METADATA, basePath, OffloadJobsController);
    }

    @Get()
    list(@Req() req: OffloadRequest, @Res() res: ServerResponse): void {
      this.routes.list(req, res, queryOf(req));
    }

    // Before ':id': Nest registers routes in declaration order, and 'events' would match ':id'.
    @Get('events')
    manyEvents(@Req() req: OffloadRequest, @Res() res: ServerResponse): void {
      this.routes.manyEvents(req, res, queryOf(req));
    }

    @All('events')
    manyEventsOnly(@Res() res: ServerResponse): void {
      this.routes.methodNotAllowed(res, 'GET');
    }

    @Get(':id')
    status(@Req() req: OffloadRequest, @Res() res: ServerResponse, @Param('id') id: string): void {
      this.routes.status(req, res, id);
    }

    @Get(':id/events')
    events(@Req() req: OffloadRequest, @Res() res: ServerResponse, @Param('id') id: string): void {
      this.routes.events(req, res, id);
    }

    @Delete(':id')
    cancel(@Req() req: OffloadRequest, @Res() res: ServerResponse, @Param('id') id: string): void {
      this.routes.cancel(req, res, id);
    }

    @All()
    listOnly(@Res() res: ServerResponse): void {
      this.routes.methodNotAllowed(res, 'GET');
    }

    @All(':id')
    jobOnly(@Res() res: ServerResponse): void {
      this.routes.methodNotAllowed(res, 'GET, DELETE');
    }

    @All(':id/events')
    eventsOnly(@Res() res: ServerResponse): void {
      this.routes.methodNotAllowed(res, 'GET');
    }

    @All(':id/:rest')
    unknown(@Res() res: ServerResponse): void {
      this.routes.notFound(res);
    }
  }
  return OffloadJobsController;
}
