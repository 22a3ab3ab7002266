// offload's route on the Redis broker: the submit (enqueue script + 202) AND the job itself, run by
// the in-process worker in this same process, like express-offload.server.ts on the memory broker.
import { createServer } from 'node:http';
import express from 'express';
import { offload } from 'offload';
import { RedisBroker } from '../../adapters/redis/index.js';
import { redisTarget } from './redis-target.js';
import { serve } from './serve.js';

const target = redisTarget();
let ran = 0;
const broker = new RedisBroker({ connection: target.url, prefix: `${target.prefix}-ho`, queue: 'http' });
// Finished jobs purged after 5 s (the BullMQ side removes them at the same age), so the store stays
// bounded during the run.
const jobs = offload({ broker, resultTtl: '5s', worker: { concurrency: target.concurrency } });

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
  stats: async () => ({ ran, resultTtlMs: jobs.core.config.resultTtlMs, ...(await broker.counts()) }),
  // A broker passed in is the app's: offload does not close it.
  close: () => jobs.close().finally(() => broker.close()),
});
