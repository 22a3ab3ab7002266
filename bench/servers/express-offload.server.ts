// The same route marked background: the submit (persist + 202) AND the job itself, run by the
// in-process worker (default concurrency 4) in this same process. The body goes through the same
// `express.json()` as the anchor's, so the parser work on both sides is identical.
import { createServer } from 'node:http';
import express from 'express';
import { MemoryBroker, offload } from 'offload';
import { serve } from './serve.js';

let ran = 0;
// A short result TTL: finished jobs are purged after 5 s, so the store stays bounded during the run.
const jobs = offload({ broker: new MemoryBroker(), resultTtl: '5s' });

const app = express();
app.disable('x-powered-by');
app.use(express.json());
app.use(jobs);
app.post(
  '/reports',
  jobs.background('report', async () => {
    ran++;
  }),
);

serve(createServer(app), {
  stats: async () => ({
    ran,
    resultTtlMs: jobs.core.config.resultTtlMs,
    ...(await jobs.core.broker.counts()),
  }),
  close: () => jobs.close(),
});
