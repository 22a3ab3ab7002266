import 'reflect-metadata';
import { createApp } from './create-app.js';

const port = Number(process.env.PORT ?? 3000);
const workers = Number(process.env.WORKERS ?? 4);
const brokerUrl = process.env.BROKER_URL || 'memory:';

async function main() {
  const app = await createApp({ brokerUrl, workers });
  await app.listen(port);
  console.log(`offload Nest sample on http://localhost:${port} (broker ${brokerUrl}, workers ${workers})`);
}

void main();
