import type { IncomingMessage } from 'node:http';

/**
 * Stand-in for real auth: the caller is whoever the `X-User` header (or, for the browser page,
 * whose EventSource cannot send headers, the `user` cookie) says. A real app reads its session.
 */
export function demoUser(req: IncomingMessage): string | null {
  const header = req.headers['x-user'];
  if (typeof header === 'string' && header) return header;
  const cookie = /(?:^|;\s*)user=([^;]+)/.exec(req.headers.cookie ?? '');
  return cookie ? decodeURIComponent(cookie[1]!) : null;
}
