import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../../lib/logger.js';
import { createApp as createExpressApp } from '../../samples/express/app.js';
import { createApp as createNestApp } from '../../samples/nest/create-app.js';
import { listen } from '../helpers/create-server.js';

const built = readFileSync(join(__dirname, '../../lib/client/index.mjs'), 'utf8');

/** Both samples serve the page and the browser client it imports, the same way. */
function clientPageChecks(name: string, start: () => Promise<{ baseUrl: string; close(): Promise<void> }>) {
  describe(name, () => {
    let s: { baseUrl: string; close(): Promise<void> };

    before(async () => {
      s = await start();
    });
    after(() => s.close());

    it('GET /offload-client.mjs serves offload/client as JavaScript, without its source-map comment', async () => {
      const res = await fetch(`${s.baseUrl}/offload-client.mjs`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^(text|application)\/javascript/);
      const code = await res.text();
      assert.match(code, /export function createClient/);
      assert.doesNotMatch(code, /sourceMappingURL/);
      assert.equal(code.trim(), built.replace(/\/\/# sourceMappingURL=.*\s*$/, '').trim());
    });

    it('the page imports the client and has the form and job list the browser tests drive', async () => {
      const html = await (await fetch(`${s.baseUrl}/`)).text();
      assert.match(html, /<script type="module">/);
      assert.match(html, /import \{ createClient \} from '\/offload-client\.mjs'/);
      for (const id of ['form', 'steps', 'stepMs', 'count', 'submit', 'status', 'jobs']) {
        assert.match(html, new RegExp(`id="${id}"`), `#${id}`);
      }
      assert.match(html, /role="progressbar"/);
      assert.match(html, /query\.has\(param\)/, '?n= presets the number of jobs');
    });
  });
}

clientPageChecks('the Express sample page', async () => {
  const { app, jobs } = createExpressApp({ offload: { logger: silentLogger } });
  return listen(app, jobs);
});

clientPageChecks('the Nest sample page', async () => {
  const app = await createNestApp({ offload: { logger: silentLogger } });
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  return { baseUrl: `http://127.0.0.1:${port}`, close: () => app.close() };
});
