// What `offload worker` and `offload run` load for the Nest sample: its root module, configured
// from the environment as main.ts configures it. The CLI boots it without HTTP and runs its
// @Background() methods with a worker of its own.
import { AppModule } from './app.module.js';

export const WorkerModule = AppModule.register({
  brokerUrl: process.env.BROKER_URL || 'memory:',
  workers: 0,
});
