// The dashboard in Chromium, mounted by the Express sample behind its stand-in admin check:
// a job is listed, its progress bar moves live, and cancel and retry work from the detail view.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import type { Browser, BrowserContext } from 'playwright-core';
import type { OffloadMiddleware } from '../../lib/express.js';
import { launchChromium, type RunningSample, screenshot, startExpressSample } from './browser.js';

/** The Express sample with `workers` workers, and Chromium signed in as its admin, for one suite. */
function adminSession(workers: number) {
  const session = {} as {
    base: string;
    jobs: OffloadMiddleware;
    server: Server;
    browser: Browser;
    context: BrowserContext;
  };
  let sample: RunningSample | undefined;
  before(async () => {
    sample = await startExpressSample(workers);
    ({ base: session.base, jobs: session.jobs, server: session.server } = sample);
    session.browser = await launchChromium();
    session.context = await session.browser.newContext({ viewport: { width: 1400, height: 800 } });
    // The sample's stand-in admin: the demo user named admin.
    await session.context.addCookies([{ name: 'user', value: 'admin', url: session.base }]);
  });
  after(async () => {
    await session.context?.close();
    await session.browser?.close();
    await sample?.close();
  });
  return session;
}

describe('the dashboard in Chromium', () => {
  const s = adminSession(2);

  it('refuses a caller who is not the admin (the app guard in front)', async () => {
    const page = await s.browser.newPage();
    const res = await page.goto(`${s.base}/admin/jobs`);
    assert.equal(res?.status(), 401);
    await page.close();
  });

  it('lists a job, moves its progress bar live, and cancels and retries it', async () => {
    const { job } = await s.jobs.core.enqueue('report', { steps: 40, stepMs: 100 }, { owner: 'ann' });
    const page = await s.context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    await page.goto(`${s.base}/admin/jobs`);
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
    assert.equal((await s.jobs.core.get(job.id))?.status, 'canceled');

    await page.waitForSelector('#detail-retry:not([disabled])');
    await page.click('#detail-retry');
    await page.waitForFunction(
      (id) =>
        ['queued', 'running'].includes(
          document.querySelector(`tr.job[data-job-id="${id}"]`)?.getAttribute('data-status') ?? '',
        ),
      job.id,
    );
    const retried = await s.jobs.core.get(job.id);
    assert.ok(retried && ['queued', 'running'].includes(retried.status), retried?.status);
    await screenshot(page, 'dashboard-retried');

    // Escape closes the detail.
    await page.keyboard.press('Escape');
    await page.waitForSelector('#detail', { state: 'hidden' });
    assert.deepEqual(errors, []);
    await s.jobs.core.cancel(job.id);
    await page.close();
  });
});

describe('the dashboard in Chromium, reading its list again', () => {
  const s = adminSession(1);

  it('keeps the rows of Load more, the open detail and its focus across a reconnect and a burst of new jobs', async () => {
    const owner = `pages-${randomUUID().slice(0, 8)}`;
    // Due in an hour: they stay queued, and the list stays as it is but for what the test does.
    const park = async () =>
      (await s.jobs.core.enqueue('report', { steps: 1, stepMs: 1 }, { owner, delay: '1h' })).job.id;
    for (let i = 0; i < 60; i++) await park();
    const page = await s.context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    const countsReads: number[] = [];
    page.on('request', (req) => {
      if (new URL(req.url()).pathname.endsWith('/api/counts')) countsReads.push(Date.now());
    });
    const rowCount = (n: number) =>
      page.waitForFunction((want) => document.querySelectorAll('tr.job').length === want, n);

    await page.goto(`${s.base}/admin/jobs?owner=${owner}`);
    await page.waitForSelector('#live[data-state="live"]');
    await rowCount(50);
    await page.click('#more');
    await rowCount(60);
    assert.equal(await page.isHidden('#more'), true, 'every job loaded');
    const oldest = (await page.locator('tr.job').last().getAttribute('data-job-id'))!;
    await page.locator(`tr.job[data-job-id="${oldest}"]`).click();
    await page.waitForSelector('#detail:not([hidden])');
    const focused = () => page.evaluate(() => document.activeElement?.id ?? null);
    assert.equal(await focused(), 'detail-close');

    // A dropped connection: the page reconnects and reads its list again on `ready`.
    const reread = page.waitForResponse((res) => /\/api\/jobs\?/.test(res.url()));
    s.server.closeAllConnections();
    await reread;
    await page.waitForSelector('#live[data-state="live"]');
    await page.waitForTimeout(200);
    assert.equal(await page.locator('tr.job').count(), 60, 'the second page stayed');
    assert.equal(await page.locator(`tr.job[data-job-id="${oldest}"]`).count(), 1);
    assert.equal(await page.textContent('#detail-id'), oldest, 'the detail stayed open');
    assert.equal(await focused(), 'detail-close', 'focus stayed in the detail');

    // A burst of new jobs: read one by one at first, then by reloading the list.
    const fresh: string[] = [];
    for (let i = 0; i < 12; i++) fresh.push(await park());
    await rowCount(72);
    for (const id of [...fresh, oldest]) {
      assert.equal(await page.locator(`tr.job[data-job-id="${id}"]`).count(), 1, id);
    }
    assert.equal(
      await page.locator('tr.job').first().getAttribute('data-job-id'),
      (await s.jobs.core.list({ owner, limit: 1 })).jobs[0]!.id,
      'the newest on top',
    );
    assert.equal(await page.textContent('#detail-id'), oldest);
    assert.equal(await focused(), 'detail-close');

    // Counts scan every job on PostgreSQL: at most one read per 2 s, however many events came.
    await page.waitForTimeout(2500);
    assert.ok(countsReads.length >= 2, `counts were read (${countsReads.length})`);
    for (let i = 1; i < countsReads.length; i++) {
      const gap = countsReads[i]! - countsReads[i - 1]!;
      assert.ok(gap >= 1800, `counts read ${gap} ms after the previous read`);
    }
    assert.deepEqual(errors, []);
    await page.close();
  });
});
