// What `offload worker` and `offload run` load (`npm run worker`): the sample's offload app,
// configured from the environment as main.ts configures it. The CLI runs its tasks with a
// worker of its own; this module starts no server and no worker.
import { createApp } from './app.js';

export const { jobs } = createApp({ brokerUrl: process.env.BROKER_URL || 'memory:', workers: 0 });
