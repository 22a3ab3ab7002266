import type { AddressInfo } from 'node:net';
import { silentLogger } from '../../../lib/logger.js';
import { Offload } from '../../../lib/offload.js';
import { createApp } from '../../../samples/nest/create-app.js';
import { sampleChecks } from '../sample-checks.js';

sampleChecks('the Nest sample app', async () => {
  const app = await createApp({ offload: { logger: silentLogger } });
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  const core = app.get(Offload);
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    jobCount: async () => (await core.broker.list({ limit: 100 })).jobs.length,
    close: () => app.close(),
  };
});
