// The Nest sample's page in Chromium: the same page and client as the Express sample, served by
// Nest (@Background route, OffloadModule's job routes); and its dashboard behind the sample guard.
import 'reflect-metadata';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import type { INestApplication } from '@nestjs/common';
import type { Browser } from 'playwright-core';
import { createApp } from '../../samples/nest/create-app.js';
import { launchChromium, screenshot } from './browser.js';

describe('the Nest sample in Chromium', () => {
  let browser: Browser;
  let app: INestApplication;
  let base: string;
  before(async () => {
    app = await createApp({ brokerUrl: 'memory:', workers: 4 });
    await app.listen(0, '127.0.0.1');
    base = `http://127.0.0.1:${(app.getHttpServer().address() as AddressInfo).port}`;
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await app?.close();
  });

  it('submits three reports; every bar reaches 100 %, and the dashboard lists them', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    await page.goto(`${base}/?n=3&steps=4&stepMs=100`);
    await page.click('#submit');
    await page.waitForFunction(
      () =>
        document.querySelectorAll('#jobs li[data-status="succeeded"]').length === 3 &&
        [...document.querySelectorAll('#jobs [role=progressbar]')].every(
          (b) => b.getAttribute('aria-valuenow') === '100',
        ),
      undefined,
      { timeout: 30_000 },
    );
    const ids = await page.$$eval('#jobs li', (lis) => lis.map((li) => li.getAttribute('data-id')));
    await screenshot(page, 'nest-sample-succeeded');

    await context.addCookies([{ name: 'user', value: 'admin', url: base }]);
    await page.goto(`${base}/admin/jobs`);
    for (const id of ids) await page.waitForSelector(`tr.job[data-job-id="${id}"][data-status="succeeded"]`);
    assert.equal(await page.textContent('#count-succeeded'), '3');
    await screenshot(page, 'nest-dashboard');
    assert.deepEqual(errors, []);
    await context.close();
  });
});
