import { createApp } from './app.js';

const port = Number(process.env.PORT ?? 3000);
const workers = Number(process.env.WORKERS ?? 4);
const { app, jobs } = createApp({ brokerUrl: process.env.BROKER_URL || 'memory:', workers });

const server = app.listen(port, () => {
  console.log(
    `offload sample on http://localhost:${port} (broker ${process.env.BROKER_URL || 'memory:'}, workers ${workers})`,
  );
});

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  process.once(signal, async () => {
    server.close();
    const report = await jobs.close();
    console.log(`stopped: ${report.finished} jobs finished, ${report.handedBack} handed back to the queue`);
    process.exit(0);
  });
}
