import { silentLogger } from '../../../lib/logger.js';
import { createApp } from '../../../samples/express/app.js';
import { listen } from '../../helpers/create-server.js';
import { sampleChecks } from '../sample-checks.js';

sampleChecks('the Express sample app', async () => {
  const { app, jobs } = createApp({ offload: { logger: silentLogger } });
  const server = await listen(app, jobs);
  return {
    baseUrl: server.baseUrl,
    jobCount: async () => (await jobs.core.broker.list({ limit: 100 })).jobs.length,
    close: () => server.close(),
  };
});
