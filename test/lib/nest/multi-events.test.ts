import 'reflect-metadata';
import { silentLogger } from '../../../lib/logger.js';
import { OffloadModule } from '../../../lib/nest/offload.module.js';
import { startNestApp } from '../../helpers/nest-app.js';
import { HEARTBEAT_MS, multiEventsChecks, RETRY_MS } from '../http/multi-events-checks.js';

multiEventsChecks('GET /jobs/events?ids= (Nest)', async (owner) => {
  const t = await startNestApp({
    imports: [
      OffloadModule.forRoot({
        logger: silentLogger,
        owner,
        heartbeat: HEARTBEAT_MS,
        sseRetry: RETRY_MS,
        worker: { progressInterval: 0, concurrency: 20, gracePeriod: 100 },
      }),
    ],
  });
  return { baseUrl: t.baseUrl, core: t.core, close: t.close };
});
