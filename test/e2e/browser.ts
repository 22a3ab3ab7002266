// Debian's Chromium driven by playwright-core, for the browser tests (npm run test:e2e).
import { mkdirSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, resolve } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import type { OffloadMiddleware } from '../../lib/express.js';
import { createApp } from '../../samples/express/app.js';

/** Where screenshots go: test-output/e2e/ at the repository root. */
export const SHOTS = resolve(__dirname, '../../../test-output/e2e');

/** Headless Chromium as this machine runs it: no sandbox (root), no GPU, no network chatter. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

/** Save a full-page screenshot as test-output/e2e/<name>.png; returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(SHOTS, { recursive: true });
  const path = join(SHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** The Express sample on the memory broker, listening on 127.0.0.1 (a free port). */
export interface RunningSample {
  base: string;
  jobs: OffloadMiddleware;
  server: Server;
  /** Stop the jobs, drop open connections (SSE), close the server. */
  close(): Promise<void>;
}

export async function startExpressSample(workers: number): Promise<RunningSample> {
  const { app, jobs } = createApp({ brokerUrl: 'memory:', workers });
  const server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    jobs,
    server,
    async close() {
      await jobs.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}
