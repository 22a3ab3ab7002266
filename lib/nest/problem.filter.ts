import type { ServerResponse } from 'node:http';
import { STATUS_CODES } from 'node:http';
import { type ArgumentsHost, Catch, type ExceptionFilter, HttpException } from '@nestjs/common';
import { ValidationError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { OffloadRequest } from '../options.js';
import { type Problem, sendProblem, toProblem } from '../problem.js';
import type { BackgroundMethod } from './background-method.js';

/**
 * problem+json for what Nest throws on offload's routes before offload's own code runs: guards
 * (401/403), pipes (a `ValidationPipe`'s 400), interceptors. Attached to the job routes and to
 * each `@Background()` route only; the app's own filters keep every other route.
 */
@Catch()
export class OffloadProblemFilter implements ExceptionFilter {
  constructor(
    private readonly method: BackgroundMethod | null,
    private readonly logger: () => Logger,
  ) {}

  catch(exception: unknown, host: ArgumentsHost): void {
    const http = host.switchToHttp();
    const req = http.getRequest<OffloadRequest>();
    const res = http.getResponse<ServerResponse>();
    const headers: Record<string, string> = this.method ? { Vary: 'Prefer' } : {};
    this.problemOf(exception, req).then(
      (problem) => sendProblem(res, problem, headers),
      (err) => sendProblem(res, toProblem(err, this.logger()), headers),
    );
  }

  private async problemOf(exception: unknown, req: OffloadRequest): Promise<Problem> {
    if (!(exception instanceof HttpException)) return toProblem(exception, this.logger());
    const status = exception.getStatus();
    const body = exception.getResponse();
    const message = typeof body === 'string' ? body : (body as { message?: unknown })?.message;
    if (status === 400 && Array.isArray(message)) {
      // A ValidationPipe's rejection: its sentences lose the field names, so the request is
      // checked again against the declared DTOs, which gives them back.
      const errors = (await this.method?.requestErrors(req)) ?? [];
      return toProblem(
        new ValidationError(errors.length ? errors : [{ field: '', messages: message.map(String) }]),
      );
    }
    return {
      type: 'about:blank',
      title: STATUS_CODES[status] ?? 'Error',
      status,
      detail: typeof message === 'string' ? message : exception.message,
    };
  }
}
