import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { as, expectProblem, postJson } from '../helpers/create-server.js';
import { eventually } from '../helpers/eventually.js';

/** A running sample app, however it was built. */
export interface RunningSample {
  baseUrl: string;
  /** Jobs in the app's broker. */
  jobCount(): Promise<number>;
  close(): Promise<void>;
}

/**
 * The HTTP contract both samples (Express and Nest) keep: the same requests get the same
 * answers, so a user can switch frameworks without the client noticing.
 */
export function sampleChecks(name: string, start: () => Promise<RunningSample>): void {
  describe(name, () => {
    let s: RunningSample;

    before(async () => {
      s = await start();
    });

    after(() => s.close());

    it('POST /reports with a valid body: 202, and the job runs to its result', async () => {
      const res = await postJson(`${s.baseUrl}/reports`, { steps: 3, stepMs: 5 }, { user: 'alice' });
      assert.equal(res.status, 202);
      const { id, statusUrl, eventsUrl } = await res.json();
      assert.equal(statusUrl, `/jobs/${id}`);
      assert.equal(eventsUrl, `/jobs/${id}/events`);
      const doc = await eventually(async () => {
        const d = await (await fetch(`${s.baseUrl}${statusUrl}`, { headers: as('alice') })).json();
        return d.status === 'succeeded' ? d : null;
      }, 'the report');
      assert.deepEqual(doc.result, { steps: 3 });
      assert.equal(doc.progress.percent, 100);
      assert.equal(doc.progress.message, 'step 3 of 3');
    });

    it('POST /reports with an invalid body: 400 with the fields at fault, and no job', async () => {
      const before = await s.jobCount();
      const res = await postJson(`${s.baseUrl}/reports`, { steps: 0, stepMs: 'slow' }, { user: 'alice' });
      const problem = await expectProblem(res, 400);
      assert.deepEqual(problem.errors!.map((e) => e.field).sort(), ['stepMs', 'steps']);
      const missing = await expectProblem(await postJson(`${s.baseUrl}/reports`, {}, { user: 'alice' }), 400);
      assert.deepEqual(missing.errors!.map((e) => e.field).sort(), ['stepMs', 'steps']);
      await expectProblem(await postJson(`${s.baseUrl}/reports`, '{"steps":', { user: 'alice' }), 400);
      assert.equal(await s.jobCount(), before);
    });

    it('GET / serves the HTML page', async () => {
      const res = await fetch(`${s.baseUrl}/`);
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
      const html = await res.text();
      assert.match(html, /<title>offload sample<\/title>/);
      assert.match(html, /EventSource/);
      assert.equal(res.headers.get('x-powered-by'), null);
    });

    it("scopes jobs to the X-User header: another user's job is a 404 and absent from their list", async () => {
      const res = await postJson(`${s.baseUrl}/reports`, { steps: 1, stepMs: 5000 }, { user: 'alice' });
      const { id } = await res.json();
      await expectProblem(await fetch(`${s.baseUrl}/jobs/${id}`, { headers: as('bob') }), 404);
      await expectProblem(await fetch(`${s.baseUrl}/jobs/${id}`), 404);
      await expectProblem(
        await fetch(`${s.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('bob') }),
        404,
      );
      const bobs = await (await fetch(`${s.baseUrl}/jobs`, { headers: as('bob') })).json();
      assert.ok(!bobs.jobs.some((j: { id: string }) => j.id === id));
      const alices = await (await fetch(`${s.baseUrl}/jobs`, { headers: as('alice') })).json();
      assert.ok(alices.jobs.some((j: { id: string }) => j.id === id));
      // The browser page identifies with a cookie (EventSource cannot send headers).
      const viaCookie = await fetch(`${s.baseUrl}/jobs/${id}`, {
        headers: { cookie: 'theme=dark; user=alice' },
      });
      assert.equal(viaCookie.status, 200);
      // Alice cancels her long job; it stops.
      const del = await fetch(`${s.baseUrl}/jobs/${id}`, { method: 'DELETE', headers: as('alice') });
      assert.ok([200, 202].includes(del.status));
      await eventually(async () => {
        const d = await (await fetch(`${s.baseUrl}/jobs/${id}`, { headers: as('alice') })).json();
        return d.status === 'canceled';
      }, 'the cancel');
    });
  });
}
