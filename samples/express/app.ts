import express from 'express';
import { type OffloadOptions, offload } from 'offload';
import { requireDemoAdmin } from '../shared/demo-admin.js';
import { demoUser } from '../shared/demo-user.js';
import { clientScript, clientScriptPath, samplePage } from '../shared/page.js';
import { ReportRequest } from '../shared/report.dto.js';
import { buildReport } from '../shared/report.task.js';

export interface SampleOptions {
  brokerUrl?: string;
  workers?: number;
  offload?: OffloadOptions;
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
  // Every owner's jobs, live: behind the (stand-in) admin check.
  app.use('/admin/jobs', requireDemoAdmin, jobs.dashboard());
  app.get('/', (_req, res) => {
    res.type('html').send(samplePage);
  });
  app.get(clientScriptPath, (_req, res) => {
    res.type('text/javascript').send(clientScript);
  });
  return { app, jobs };
}
