// The anchor for the Redis benchmark: the same route hand-wired to BullMQ on the same Redis. The
// submit is `queue.add` then 202 with a status URL; a minimal status route reads the job back; a
// BullMQ Worker with offload's concurrency runs every job in this same process.
import { createServer } from 'node:http';
import { Queue, Worker } from 'bullmq';
import express from 'express';
import { redisTarget } from './redis-target.js';
import { serve } from './serve.js';

const target = redisTarget();
const prefix = `${target.prefix}-hb`;
let ran = 0;
// Finished jobs removed once 5 s old, like the offload side's resultTtl.
const queue = new Queue('http', {
  connection: target.connection,
  prefix,
  defaultJobOptions: { removeOnComplete: { age: 5 }, removeOnFail: { age: 5 } },
});
const worker = new Worker(
  'http',
  async () => {
    ran++;
  },
  { connection: target.connection, prefix, concurrency: target.concurrency },
);

const app = express();
app.disable('x-powered-by');
app.use(express.json());
app.post('/reports', async (req, res) => {
  const job = await queue.add('report', req.body);
  const statusUrl = `/jobs/${job.id}`;
  res
    .status(202)
    .set({ Location: statusUrl, 'Retry-After': '1' })
    .json({ id: job.id, status: 'queued', statusUrl });
});
app.get('/jobs/:id', async (req, res) => {
  const job = await queue.getJob(req.params.id);
  if (!job) {
    res.status(404).json({ title: 'Not Found' });
    return;
  }
  res.json({
    id: job.id,
    status: await job.getState(),
    result: job.returnvalue ?? null,
    error: job.failedReason ?? null,
  });
});

serve(createServer(app), {
  stats: async () => {
    const c = await queue.getJobCounts('wait', 'prioritized', 'delayed', 'active', 'completed', 'failed');
    return {
      ran,
      queued: c.wait! + c.prioritized! + c.delayed!,
      running: c.active!,
      succeeded: c.completed!,
      failed: c.failed!,
      canceled: 0,
    };
  },
  close: () => worker.close().finally(() => queue.close()),
});
