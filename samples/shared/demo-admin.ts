import type { IncomingMessage, ServerResponse } from 'node:http';
import { demoUser } from './demo-user.js';

/**
 * Stand-in for a real admin check, as `demoUser` stands in for authentication: the admin is the
 * demo user named `admin` (`X-User: admin`, or the `user=admin` cookie in a browser). A real app
 * checks its own session and roles here.
 */
export const DEMO_ADMIN = 'admin';

/** Why the caller may not open the dashboard (401: nobody, 403: not the admin), or `null`. */
export function demoAdminRefusal(req: IncomingMessage): 401 | 403 | null {
  const user = demoUser(req);
  if (user === null) return 401;
  return user === DEMO_ADMIN ? null : 403;
}

/** The Express sample's admin check, mounted in front of `jobs.dashboard()`. */
export function requireDemoAdmin(req: IncomingMessage, res: ServerResponse, next: () => void): void {
  const refusal = demoAdminRefusal(req);
  if (refusal === null) {
    next();
    return;
  }
  res.statusCode = refusal;
  res.setHeader('Content-Type', 'text/plain; charset=utf-8');
  res.end(refusal === 401 ? 'Who are you? (the sample: X-User header or user cookie)\n' : 'Admins only.\n');
}
