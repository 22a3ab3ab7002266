// Both samples mount the dashboard at /admin/jobs behind their stand-in admin check.
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../lib/logger.js';
import { createApp as createExpressApp } from '../../samples/express/app.js';
import { createApp as createNestApp } from '../../samples/nest/create-app.js';
import { listen } from '../helpers/create-server.js';
import { eventually } from '../helpers/eventually.js';

type Start = () => Promise<{ baseUrl: string; close(): Promise<void> }>;

const samples: [string, Start][] = [
  [
    'Express',
    async () => {
      const { app, jobs } = createExpressApp({ offload: { logger: silentLogger } });
      return listen(app, jobs);
    },
  ],
  [
    'Nest',
    async () => {
      const app = await createNestApp({ offload: { logger: silentLogger } });
      await app.listen(0, '127.0.0.1');
      const { port } = app.getHttpServer().address() as AddressInfo;
      return { baseUrl: `http://127.0.0.1:${port}`, close: () => app.close() };
    },
  ],
];

for (const [name, start] of samples) {
  describe(`the ${name} sample’s dashboard`, () => {
    let s: Awaited<ReturnType<Start>>;
    before(async () => {
      s = await start();
    });
    after(() => s.close());

    it('refuses nobody (401) and a user who is not the admin (403)', async () => {
      assert.equal((await fetch(`${s.baseUrl}/admin/jobs`)).status, 401);
      assert.equal(
        (await fetch(`${s.baseUrl}/admin/jobs/api/jobs`, { headers: { 'x-user': 'ann' } })).status,
        403,
      );
      assert.equal((await fetch(`${s.baseUrl}/admin/jobs`, { headers: { cookie: 'user=ann' } })).status, 403);
    });

    it('shows the admin every user’s jobs, the page included', async () => {
      const page = await fetch(`${s.baseUrl}/admin/jobs`, { headers: { cookie: 'user=admin' } });
      assert.equal(page.status, 200);
      assert.match(await page.text(), /<body data-base="\/admin\/jobs">/);
      const submitted = await fetch(`${s.baseUrl}/reports`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-user': 'ann' },
        body: JSON.stringify({ steps: 2, stepMs: 5 }),
      });
      const { id } = await submitted.json();
      const job = await eventually(async () => {
        const res = await fetch(`${s.baseUrl}/admin/jobs/api/jobs/${id}`, { headers: { 'x-user': 'admin' } });
        const doc = await res.json();
        return doc.status === 'succeeded' ? doc : null;
      }, 'ann’s report');
      assert.equal(job.owner, 'ann');
      assert.deepEqual(job.result, { steps: 2 });
    });
  });
}
