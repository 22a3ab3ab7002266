import { type ServerResponse, STATUS_CODES } from 'node:http';
import { OffloadError, ValidationError } from './errors.js';
import type { Logger } from './logger.js';

/** An RFC 9457 problem document. */
export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  code?: string;
  errors?: { field: string; messages: string[] }[];
  [extension: string]: unknown;
}

/** `ERR_OFFLOAD_QUEUE_FULL` → `urn:offload:problem:queue-full`. */
function typeOf(code: string): string {
  const slug =
    code
      .replace(/^ERR_OFFLOAD_?/, '')
      .toLowerCase()
      .replace(/_/g, '-') || 'error';
  return `urn:offload:problem:${slug}`;
}

/**
 * The one place errors become problem documents. Unknown errors become a bare 500 and are
 * logged: their message and stack never reach the client.
 */
export function toProblem(err: unknown, logger?: Logger): Problem {
  if (err instanceof OffloadError) {
    const problem: Problem = {
      type: typeOf(err.code),
      title: STATUS_CODES[err.status] ?? 'Error',
      status: err.status,
      detail: err.message,
      code: err.code,
    };
    if (err instanceof ValidationError) problem.errors = err.errors;
    if (err.status >= 500) logger?.warn({ err }, `offload: ${err.code}`);
    return problem;
  }
  logger?.error({ err }, 'offload: unexpected error');
  return {
    type: 'about:blank',
    title: 'Internal Server Error',
    status: 500,
    detail: 'An unexpected error occurred.',
  };
}

export function sendProblem(
  res: ServerResponse,
  problem: Problem,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body = JSON.stringify(problem);
  res.statusCode = problem.status;
  for (const [name, value] of Object.entries(headers)) res.setHeader(name, value);
  if (problem.status === 503 && !res.hasHeader('retry-after')) res.setHeader('Retry-After', '1');
  res.setHeader('Content-Type', 'application/problem+json; charset=utf-8');
  res.setHeader('Content-Length', Buffer.byteLength(body));
  res.setHeader('Cache-Control', 'no-store');
  res.end(body);
}

export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers?: Record<string, string>,
): void {
  const text = JSON.stringify(body);
  const all: Record<string, string | number> = headers ? { ...headers } : {};
  all['Content-Type'] = 'application/json; charset=utf-8';
  all['Content-Length'] = Buffer.byteLength(text);
  // One writeHead instead of a setHeader per header: on the submit hot path it is measurably
  // cheaper, and headers the app set earlier are kept (writeHead merges them).
  res.writeHead(status, all);
  res.end(text);
}
