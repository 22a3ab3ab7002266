// The dashboard in Chromium, mounted by the Express sample behind its stand-in admin check:
// a job is listed, its progress bar moves live, and cancel and retry work from the detail view.
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { Browser, BrowserContext } from 'playwright-core';
import type { OffloadMiddleware } from '../../lib/express.js';
import { createApp } from '../../samples/express/app.js';
import { launchChromium, screenshot } from './browser.js';

describe('the dashboard in Chromium', () => {
  let browser: Browser;
  let context: BrowserContext;
  let base: string;
  let jobs: OffloadMiddleware;
  let close: () => Promise<void>;
  before(async () => {
    const sample = createApp({ brokerUrl: 'memory:', workers: 2 });
    jobs = sample.jobs;
    const server = sample.app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    close = async () => {
      await jobs.close();
      await new Promise((r) => server.close(r));
    };
    browser = await launchChromium();
    context = await browser.newContext({ viewport: { width: 1400, height: 800 } });
    // The sample's stand-in admin: the demo user named admin.
    await context.addCookies([{ name: 'user', value: 'admin', url: base }]);
  });
  after(async () => {
    await context?.close();
    await browser?.close();
    await close?.();
  });

  it('refuses a caller who is not the admin (the app guard in front)', async () => {
    const page = await browser.newPage();
    const res = await page.goto(`${base}/admin/jobs`);
    assert.equal(res?.status(), 401);
    await page.close();
  });

  it('lists a job, moves its progress bar live, and cancels and retries it', async () => {
    const { job } = await jobs.core.enqueue('report', { steps: 40, stepMs: 100 }, { owner: 'ann' });
    const page = await context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    await page.goto(`${base}/admin/jobs`);
    await page.waitForSelector('#live[data-state="live"]');
    const row = page.locator(`tr.job[data-job-id="${job.id}"]`);
    await row.waitFor();
    assert.equal(await row.locator('td[data-col=owner]').textContent(), 'ann');

    // Live: the row's bar takes at least two different values while the job runs.
    // No layout jumps: the row and every cell keep their boxes while the numbers change.
    const bar = row.locator('[role=progressbar]');
    const boxes = () =>
      row.evaluate((tr) =>
        [tr, ...tr.querySelectorAll('td')].map((el) => {
          const r = el.getBoundingClientRect();
          return [r.x, r.y, r.width, r.height].map((v) => Math.round(v * 10) / 10).join(',');
        }),
      );
    const seen = new Set<string>();
    let layout: string[] | null = null;
    const deadline = Date.now() + 10_000;
    while (seen.size < 4 && Date.now() < deadline) {
      const now = await bar.getAttribute('aria-valuenow');
      if (now && now !== '0' && !seen.has(now)) {
        seen.add(now);
        const current = await boxes();
        if (layout === null) layout = current;
        else assert.deepEqual(current, layout, `the layout held at ${now} %`);
      }
      await page.waitForTimeout(50);
    }
    assert.ok(seen.size >= 3, `the bar moved: ${[...seen].join(', ')}`);
    assert.equal(await row.getAttribute('data-status'), 'running');
    await screenshot(page, 'dashboard-running');

    // Keyboard: focus the row, Enter opens the detail.
    await row.focus();
    await page.keyboard.press('Enter');
    await page.waitForSelector('#detail:not([hidden])');
    assert.equal(await page.textContent('#detail-id'), job.id);
    await page.click('#detail-cancel');
    await page.waitForSelector(`tr.job[data-job-id="${job.id}"][data-status="canceled"]`, {
      timeout: 10_000,
    });
    assert.equal((await jobs.core.get(job.id))?.status, 'canceled');

    await page.waitForSelector('#detail-retry:not([disabled])');
    await page.click('#detail-retry');
    await page.waitForFunction(
      (id) =>
        ['queued', 'running'].includes(
          document.querySelector(`tr.job[data-job-id="${id}"]`)?.getAttribute('data-status') ?? '',
        ),
      job.id,
    );
    const retried = await jobs.core.get(job.id);
    assert.ok(retried && ['queued', 'running'].includes(retried.status), retried?.status);
    await screenshot(page, 'dashboard-retried');

    // Escape closes the detail.
    await page.keyboard.press('Escape');
    await page.waitForSelector('#detail', { state: 'hidden' });
    assert.deepEqual(errors, []);
    await jobs.core.cancel(job.id);
    await page.close();
  });
});
