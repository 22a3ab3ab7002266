import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import express from 'express';
import { type OffloadOptions, offload } from 'offload';
import { ReportRequest } from './report.dto.js';
import { buildReport } from './report.task.js';

export interface SampleOptions {
  brokerUrl?: string;
  workers?: number;
  offload?: OffloadOptions;
}

const page = readFileSync(join(__dirname, '../../../samples/express/public/index.html'), 'utf8');

/**
 * Stand-in for real auth: the caller is whoever the `X-User` header (or, for the browser page,
 * whose EventSource cannot send headers, the `user` cookie) says. A real app reads its session.
 */
function demoUser(req: express.Request): string | null {
  const header = req.headers['x-user'];
  if (typeof header === 'string' && header) return header;
  const cookie = /(?:^|;\s*)user=([^;]+)/.exec(req.headers.cookie ?? '');
  return cookie ? decodeURIComponent(cookie[1]!) : null;
}

export function createApp(options: SampleOptions = {}) {
  const jobs = offload({
    broker: options.brokerUrl ?? 'memory:',
    owner: demoUser,
    worker: { concurrency: options.workers ?? 4 },
    ...options.offload,
  });
  const app = express();
  app.disable('x-powered-by');
  app.use(jobs);
  app.post('/reports', jobs.background('report', { validate: ReportRequest }, buildReport));
  app.get('/', (_req, res) => {
    res.type('html').send(page);
  });
  return { app, jobs };
}
