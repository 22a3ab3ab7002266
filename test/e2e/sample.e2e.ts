// The sample page in Chromium, on the browser client (offload/client): a report's bar reaches
// 100 %, a running job is canceled, ten jobs share one events connection, and with the events
// URL blocked the client falls back to polling. Run on the Express sample.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { launchChromium, type RunningSample, screenshot, startExpressSample } from './browser.js';

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const POLL = new RegExp(`/jobs/${UUID}(\\?|$)`);

/** The page's requests to the job routes: event streams (open now, most at once) and polls. */
function watchRequests(page: Page) {
  const seen = { streams: 0, open: 0, maxOpen: 0, polls: 0 };
  const isStream = (url: string) => new URL(url).pathname.endsWith('/jobs/events');
  page.on('request', (req) => {
    if (isStream(req.url())) {
      seen.streams++;
      seen.open++;
      seen.maxOpen = Math.max(seen.maxOpen, seen.open);
    } else if (req.method() === 'GET' && POLL.test(new URL(req.url()).pathname)) seen.polls++;
  });
  const ended = (req: { url(): string }) => {
    if (isStream(req.url())) seen.open--;
  };
  page.on('requestfinished', ended);
  page.on('requestfailed', ended);
  return seen;
}

async function allSucceeded(page: Page, n: number): Promise<void> {
  await page.waitForFunction(
    (count) =>
      document.querySelectorAll('#jobs li[data-status="succeeded"]').length === count &&
      [...document.querySelectorAll('#jobs [role=progressbar]')].every(
        (bar) => bar.getAttribute('aria-valuenow') === '100',
      ),
    n,
    { timeout: 30_000 },
  );
}

describe('the sample page in Chromium', () => {
  let browser: Browser;
  let base: string;
  let sample: RunningSample;
  before(async () => {
    sample = await startExpressSample(10);
    base = sample.base;
    browser = await launchChromium();
  });
  after(async () => {
    await browser?.close();
    await sample?.close();
  });

  it('submits a report and its progress bar reaches 100 %', async () => {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (err) => errors.push(err.message));
    await page.goto(`${base}/?n=1&steps=5&stepMs=100`);
    await page.click('#submit');
    // Part way first: the bar moves.
    await page.waitForFunction(() => {
      const v = Number(document.querySelector('#job-1-bar')?.getAttribute('aria-valuenow'));
      return v > 0 && v < 100;
    });
    await allSucceeded(page, 1);
    assert.match((await page.textContent('#status'))!, /All done: 1 succeeded/);
    await screenshot(page, 'sample-succeeded');
    assert.deepEqual(errors, []);
    await page.close();
  });

  it('cancels a running job', async () => {
    const page = await browser.newPage();
    await page.goto(`${base}/?n=1&steps=50&stepMs=200`);
    await page.click('#submit');
    await page.waitForFunction(
      () => Number(document.querySelector('#job-1-bar')?.getAttribute('aria-valuenow')) > 0,
    );
    await page.click('#job-1-cancel');
    await page.waitForSelector('#job-1[data-status="canceled"]');
    const value = Number(await page.getAttribute('#job-1-bar', 'aria-valuenow'));
    assert.ok(value > 0 && value < 100, `stopped part way (${value} %)`);
    await screenshot(page, 'sample-canceled');
    await page.close();
  });

  it('follows ten jobs on one page over one events connection', async () => {
    const page = await browser.newPage();
    const seen = watchRequests(page);
    await page.goto(`${base}/?n=10&steps=5&stepMs=150`);
    await page.click('#submit');
    await allSucceeded(page, 10);
    assert.equal(await page.locator('#jobs li').count(), 10);
    assert.ok(seen.streams >= 1, 'the events stream was used');
    assert.equal(seen.maxOpen, 1, `never more than one events connection at once (${seen.streams} in all)`);
    assert.equal(seen.polls, 0, 'no polling while the stream works');
    await screenshot(page, 'sample-ten-jobs');
    await page.close();
  });

  it('falls back to polling when the events URL is blocked', async () => {
    const page = await browser.newPage();
    await page.route('**/jobs/events**', (route) => route.abort());
    const seen = watchRequests(page);
    await page.goto(`${base}/?n=2&steps=4&stepMs=150`);
    await page.click('#submit');
    await allSucceeded(page, 2);
    assert.ok(seen.streams >= 1, 'the client tried the stream first');
    assert.ok(seen.polls >= 2, `then polled the jobs (${seen.polls} polls)`);
    await screenshot(page, 'sample-polling');
    await page.close();
  });
});
