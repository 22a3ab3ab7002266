// jobs.dashboard() on Express and plain node:http: the shared API suite on each broker, then what
// only the Express handler does (mounting, the `path` option, options, shutdown, stream clients
// that left early or stopped reading, packaging).
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { resolve } from 'node:path';
import { describe, it } from 'node:test';
import express, { type NextFunction, type Request, type Response } from 'express';
import { MemoryBroker } from '../../../adapters/memory/memory.broker.js';
import type { Unsubscribe } from '../../../lib/broker.js';
import { ConfigError } from '../../../lib/errors.js';
import { offload } from '../../../lib/express.js';
import type { JobEvent } from '../../../lib/job.js';
import { silentLogger } from '../../../lib/logger.js';
import { createServer, expectProblem, openSse, Steps, type TestServer } from '../../helpers/create-server.js';
import {
  DASHBOARD_BROKERS,
  describeDashboardApi,
  registerDashboardTasks,
} from '../../helpers/dashboard-suite.js';
import { eventually, sleep } from '../../helpers/eventually.js';
import { stalledReader } from '../../helpers/stalled-reader.js';

/** The sample-style admin check: 401 for nobody, 403 for anyone but `admin`. */
function requireAdmin(req: Request, res: Response, next: NextFunction): void {
  const user = req.headers['x-user'];
  if (!user) res.status(401).type('text').send('log in first');
  else if (user !== 'admin') res.status(403).type('text').send('admins only');
  else next();
}

for (const kind of DASHBOARD_BROKERS) {
  describeDashboardApi(`jobs.dashboard() on Express (${kind.name} broker)`, async () => {
    const broker = kind.make();
    let tasks!: ReturnType<typeof registerDashboardTasks>;
    const server = await createServer(
      { broker: broker.url, worker: { concurrency: 4, pollInterval: 100 } },
      (app, jobs) => {
        tasks = registerDashboardTasks(jobs.core);
        app.use('/admin/jobs', requireAdmin, jobs.dashboard());
      },
    );
    return {
      baseUrl: server.baseUrl,
      mount: '/admin/jobs',
      core: server.jobs.core,
      tasks,
      async close() {
        await server.close();
        await broker.cleanup();
      },
    };
  });
}

async function withServer(
  setup: Parameters<typeof createServer>[1],
  run: (server: TestServer) => Promise<void>,
): Promise<void> {
  const server = await createServer({ worker: false }, setup);
  try {
    await run(server);
  } finally {
    await server.close();
  }
}

describe('jobs.dashboard() mounting', () => {
  it('mounts nothing until called: /admin/jobs is the app’s own 404', async () => {
    await withServer(undefined, async (server) => {
      for (const path of ['/admin/jobs', '/admin/jobs/api/jobs', '/admin/jobs/assets/dashboard.js']) {
        const res = await fetch(`${server.baseUrl}${path}`);
        assert.equal(res.status, 404);
        assert.doesNotMatch(
          res.headers.get('content-type') ?? '',
          /problem\+json/,
          'Express’s 404, not offload’s',
        );
      }
    });
  });

  it('links its assets and API under whatever path it is mounted at', async () => {
    await withServer(
      (app, jobs) => {
        const ops = express.Router();
        ops.use('/queue', jobs.dashboard({ title: 'Ops <queue>' }));
        app.use('/ops', ops);
      },
      async (server) => {
        const html = await (await fetch(`${server.baseUrl}/ops/queue`)).text();
        assert.match(html, /<script type="module" src="\/ops\/queue\/assets\/dashboard.js">/);
        assert.match(html, /<body data-base="\/ops\/queue">/);
        assert.match(html, /<title>Ops &#60;queue&#62;<\/title>/, 'the title escaped');
        const counts = await fetch(`${server.baseUrl}/ops/queue/api/counts`);
        assert.equal(counts.status, 200);
      },
    );
  });

  it('mounted at the root, answers its own paths and passes the others to the app', async () => {
    await withServer(
      (app, jobs) => {
        app.use(jobs.dashboard());
        app.get('/hello', (_req, res) => {
          res.send('app');
        });
      },
      async (server) => {
        assert.equal(await (await fetch(`${server.baseUrl}/hello`)).text(), 'app');
        assert.equal((await fetch(`${server.baseUrl}/api/counts`)).status, 200);
        assert.match(await (await fetch(`${server.baseUrl}/`)).text(), /<body data-base="">/);
      },
    );
  });

  it('answers under `path` on a plain node:http server, passing other requests on', async () => {
    const jobs = offload({ logger: silentLogger, worker: false });
    const dashboard = jobs.dashboard({ path: '/admin/jobs' });
    const server = http.createServer((req, res) =>
      dashboard(req, res, () => {
        res.statusCode = 418;
        res.end('the app');
      }),
    );
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const page = await fetch(`${base}/admin/jobs`);
      assert.equal(page.status, 200);
      assert.match(await page.text(), /<body data-base="\/admin\/jobs">/);
      assert.match(
        await (await fetch(`${base}/admin/jobs/?status=failed`)).text(),
        /data-base="\/admin\/jobs"/,
      );
      assert.equal((await fetch(`${base}/admin/jobs/api/counts`)).status, 200);
      await expectProblem(await fetch(`${base}/admin/jobs/nope`), 404);
      for (const path of ['/', '/admin', '/admin/jobsX', '/other/admin/jobs']) {
        const res = await fetch(`${base}${path}`);
        assert.equal(res.status, 418, path);
        assert.equal(await res.text(), 'the app');
      }
    } finally {
      server.close();
      await jobs.close();
    }
  });

  it('refuses bad options with a ConfigError naming them', () => {
    const jobs = offload({ logger: silentLogger, worker: false });
    try {
      const bad: [unknown, RegExp][] = [
        [{ nope: 1 }, /Unknown dashboard option "nope"/],
        [{ path: 'admin/jobs' }, /dashboard path must be absolute/],
        [{ path: '/' }, /dashboard path must be absolute/],
        [{ path: '/admin/jobs/' }, /without a trailing/],
        [{ path: '/admin/:id' }, /dashboard path/],
        [{ title: '' }, /title must be a non-empty string/],
        [{ title: 42 }, /title must be a non-empty string/],
        ['x', /options must be an object/],
      ];
      for (const [options, message] of bad) {
        assert.throws(
          () => jobs.dashboard(options as never),
          (err: unknown) => err instanceof ConfigError && message.test(err.message),
          JSON.stringify(options),
        );
      }
    } finally {
      void jobs.close();
    }
  });

  it('ends its event streams when offload closes, so the server can close', async () => {
    const server = await createServer({ worker: false }, (app, jobs) => {
      app.use('/admin/jobs', jobs.dashboard());
    });
    const stream = await openSse(`${server.baseUrl}/admin/jobs/api/events`);
    await stream.until((s) => s.events.some((e) => e.event === 'ready'), 'ready');
    await server.jobs.close();
    await stream.untilEnded();
    await server.close();
  });
});

/** A memory broker that counts its live event subscriptions (the dashboard's feed holds one). */
class CountingBroker extends MemoryBroker {
  subscriptions = 0;

  override async subscribe(listener: (event: JobEvent) => void): Promise<Unsubscribe> {
    const off = await super.subscribe(listener);
    this.subscriptions++;
    let live = true;
    return () => {
      if (live) this.subscriptions--;
      live = false;
      off();
    };
  }
}

describe('jobs.dashboard() event stream and its clients', () => {
  const HEARTBEAT_MS = 20;

  it('sets nothing up for a client that left while the app’s async admin check ran', async () => {
    const broker = new CountingBroker();
    const hold = new Steps();
    const held: Response[] = [];
    const server = await createServer({ broker, worker: false, heartbeat: HEARTBEAT_MS }, (app, jobs) => {
      const slowAdminCheck = async (_req: Request, res: Response, next: NextFunction) => {
        held.push(res);
        await hold.next();
        next();
      };
      app.use('/admin/jobs', slowAdminCheck, jobs.dashboard());
    });
    const core = server.jobs.core;
    const url = `${server.baseUrl}/admin/jobs/api/events`;
    try {
      const client = http.request(url);
      client.on('error', () => {});
      client.end();
      const res = await eventually(() => held.pop(), 'the admin check to hold the request');
      client.destroy();
      await eventually(() => res.destroyed, 'the server to see the client go');
      hold.release();
      // The dashboard answers now; a stream opened for nobody would heartbeat and subscribe.
      await sleep(HEARTBEAT_MS * 5);
      assert.equal(res.headersSent, false, 'nothing written to a client that is gone');
      assert.equal(core.streams.size, 0, 'no stream left open');
      assert.equal(broker.subscriptions, 0, 'no subscription left on the broker');

      // The same wait with the client still there: the stream opens, subscribes, and lets go.
      const opening = openSse(url);
      await eventually(() => held.pop(), 'the admin check to hold the request');
      hold.release();
      const stream = await opening;
      await stream.until((s) => s.events.some((e) => e.event === 'ready'), 'ready');
      assert.equal(core.streams.size, 1);
      assert.equal(broker.subscriptions, 1);
      stream.close();
      await eventually(() => core.streams.size === 0 && broker.subscriptions === 0, 'the stream to let go');
    } finally {
      await server.close();
      await broker.close();
    }
  });

  it('drops a stream whose reader stopped reading, and keeps the one that reads', async () => {
    const broker = new CountingBroker();
    let flooding = true;
    const server = await createServer({ broker, worker: { progressInterval: 0 } }, (app, jobs) => {
      // Progress as fast as the broker takes it, 16 KiB a time, until the test says stop.
      jobs.core.task('flood', async (_p, job) => {
        const message = 'x'.repeat(16 * 1024);
        for (let i = 0; flooding && i < 4000; i++) {
          await job.progress(i % 100, message);
          await new Promise((r) => setImmediate(r));
        }
        return null;
      });
      app.use('/admin/jobs', jobs.dashboard());
    });
    const core = server.jobs.core;
    const url = `${server.baseUrl}/admin/jobs/api/events`;
    try {
      const reading = await openSse(url);
      await reading.until((s) => s.events.some((e) => e.event === 'ready'), 'ready');
      const stalled = await stalledReader(url, 'event: ready');
      assert.equal(core.streams.size, 2);
      const { job } = await core.enqueue('flood', {});
      try {
        await eventually(() => core.streams.size === 1, 'the stalled stream to be dropped', {
          timeoutMs: 30_000,
        });
        assert.equal((await core.get(job.id))?.status, 'running', 'dropped while the job still runs');
      } finally {
        flooding = false;
      }
      assert.equal(broker.subscriptions, 1, 'the reading stream still subscribed');
      // Read again, the stalled client finds its connection over: the page reconnects then.
      await stalled.drainToEnd();
      await reading.until(
        (s) => s.events.some((e) => e.event === 'status' && JSON.parse(e.data).status === 'succeeded'),
        'the reading client to see the job finish',
        30_000,
      );
      const seqs = reading.events
        .filter((e) => e.event !== 'ready')
        .map((e) => JSON.parse(e.data))
        .filter((d) => d.id === job.id)
        .map((d) => d.seq as number);
      for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1]! + 1, 'no event lost');
      assert.ok(seqs.length > 64, `the reader took every event of the flood (${seqs.length})`);
      assert.ok(!reading.ended, 'the reading stream stays open');
      reading.close();
    } finally {
      await server.close();
      await broker.close();
    }
  });
});

describe('the published package', () => {
  it('contains the dashboard’s browser script (npm pack)', () => {
    const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], {
      cwd: resolve(__dirname, '../../../..'),
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    const files = (JSON.parse(out)[0].files as { path: string }[]).map((f) => f.path);
    for (const file of [
      'build/lib/dashboard/dashboard.client.mjs',
      'build/lib/dashboard/dashboard.page.js',
      'build/lib/dashboard/dashboard.styles.js',
      'build/lib/http/dashboard.js',
    ]) {
      assert.ok(files.includes(file), `${file} is published`);
    }
  });
});
