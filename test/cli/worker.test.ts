// `offload worker` and `offload run`, as processes: drain modes and graceful shutdown on SQLite,
// Redis and PostgreSQL, and the foreground run's exit codes.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { JobStatus } from '../../lib/job.js';
import { silentLogger } from '../../lib/logger.js';
import { Offload } from '../../lib/offload.js';
import { runCli } from '../helpers/cli-io.js';
import { APP, CLI_BROKERS, type CliBroker, cli, startCli } from '../helpers/cli-process.js';
import { eventually } from '../helpers/eventually.js';

/** An enqueue-only core on the test's broker, knowing the fixture app's task names. */
function producer(url: string): Offload {
  const core = new Offload({ broker: url, worker: false, logger: silentLogger });
  for (const task of ['sleep', 'boom', 'steps', 'stuck']) core.task(task, () => {});
  return core;
}

async function counts(core: Offload): Promise<Record<JobStatus, number>> {
  return core.broker.counts();
}

for (const kind of CLI_BROKERS) {
  describe(`offload worker on ${kind.name}`, () => {
    let broker: CliBroker;
    let core: Offload;
    before(() => {
      broker = kind.make();
      core = producer(broker.url);
    });
    after(async () => {
      await core.close();
      await broker.cleanup();
    });
    const enqueue = async (n: number, task: string, payload: object) => {
      for (let i = 0; i < n; i++) await core.enqueue(task, payload as never);
    };

    it('--until-empty runs every due job, then exits 0', async () => {
      await enqueue(12, 'sleep', { ms: 30 });
      // A delayed job is not due: it stays queued for the next start.
      await core.enqueue('sleep', { ms: 1 }, { delay: '1h' });
      const r = await cli(['worker', APP, '--broker', broker.url, '--until-empty', '--concurrency', '4']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /stopping \(no job is due\)/);
      assert.equal((r.stderr.match(/offload: job finished .*outcome=succeeded/g) ?? []).length, 12, r.stderr);
      const c = await counts(core);
      assert.equal(c.succeeded, 12);
      assert.equal(c.queued, 1, 'the delayed job waits');
      assert.equal(c.running, 0);
    });

    it('--max-jobs claims that many, lets them finish, and exits 0', async () => {
      const before = (await counts(core)).succeeded;
      await enqueue(10, 'sleep', { ms: 20 });
      const r = await cli(['worker', APP, '--broker', broker.url, '--max-jobs', '3', '--concurrency', '5']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /stopping \(max jobs reached\)/);
      const c = await counts(core);
      assert.equal(c.succeeded - before, 3);
      assert.equal(c.running, 0);
      assert.equal(c.queued, 1 + 7);
    });

    it('--idle-exit waits for work, runs what comes, and exits once idle that long after it', async () => {
      const run = startCli([
        'worker',
        APP,
        '--broker',
        broker.url,
        '--idle-exit',
        '2.5',
        '--concurrency',
        '8',
      ]);
      await eventually(() => run.stderr().includes('offload worker: started'), 'worker start', {
        timeoutMs: 10_000,
      });
      // What earlier tests left queued runs first; then, a second later, new work comes.
      await eventually(async () => (await counts(core)).queued === 1, 'the leftovers run', {
        timeoutMs: 10_000,
      });
      await new Promise((r) => setTimeout(r, 1000));
      const before = (await counts(core)).succeeded;
      await enqueue(7, 'sleep', { ms: 10 });
      const enqueued = Date.now();
      const r = await run.done;
      const exited = Date.now();
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /stopping \(idle\)/);
      assert.equal((await counts(core)).succeeded - before, 7);
      assert.ok(
        exited - enqueued >= 2500,
        `idle counted from the last job, not from start (${exited - enqueued} ms)`,
      );
    });

    it('SIGTERM hands running jobs back after the grace period; none is lost', async () => {
      await enqueue(3, 'sleep', { ms: 60_000 });
      const run = startCli(['worker', APP, '--broker', broker.url, '--concurrency', '3', '--grace', '0.3']);
      await eventually(async () => (await counts(core)).running === 3, '3 running', { timeoutMs: 10_000 });
      run.child.kill('SIGTERM');
      const r = await run.done;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /stopping \(SIGTERM\)/);
      assert.match(r.stderr, /0 running jobs finished, 3 handed back to the queue/);
      const c = await counts(core);
      assert.equal(c.running, 0);
      assert.equal(c.queued, 4, 'the 3 handed back, and the delayed one');
      const { jobs } = await core.list({ status: 'queued', task: 'sleep', limit: 10 });
      const back = jobs.filter((j) => (j.payload as { ms: number }).ms === 60_000);
      assert.equal(back.length, 3);
      for (const job of back) assert.equal(job.attempts, 0, 'a handed-back run does not count as an attempt');
      // Gone for good: cancel them so later tests start clean.
      for (const job of back) await core.cancel(job.id);
    });

    it('SIGTERM lets running jobs finish within the grace period', async () => {
      const before = (await counts(core)).succeeded;
      await enqueue(3, 'sleep', { ms: 700 });
      const run = startCli(['worker', APP, '--broker', broker.url, '--concurrency', '3', '--grace', '10']);
      await eventually(async () => (await counts(core)).running === 3, '3 running', { timeoutMs: 10_000 });
      run.child.kill('SIGTERM');
      const r = await run.done;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /3 running jobs finished, 0 handed back to the queue/);
      const c = await counts(core);
      assert.equal(c.succeeded - before, 3);
      assert.equal(c.running, 0);
    });

    it('--tasks runs only the tasks named; a second signal exits at once with 130', async () => {
      await core.enqueue('boom', { message: 'left alone' });
      await enqueue(2, 'sleep', { ms: 60_000 });
      const run = startCli(['worker', APP, '--broker', broker.url, '--tasks', 'sleep', '--grace', '30']);
      await eventually(async () => (await counts(core)).running === 2, '2 running', { timeoutMs: 10_000 });
      const c = await counts(core);
      run.child.kill('SIGTERM');
      await eventually(() => run.stderr().includes('stopping (SIGTERM)'), 'stopping', { timeoutMs: 5000 });
      run.child.kill('SIGTERM');
      const r = await run.done;
      assert.equal(r.code, 130, r.stderr);
      assert.match(r.stderr, /second signal, exiting now/);
      assert.equal(c.failed, 0, 'the boom job was not run');
      const { jobs } = await core.list({ task: 'boom', limit: 5 });
      assert.equal(jobs[0]!.status, 'queued');
      // Left running: their leases expire (30 s); cancel them so later tests start clean.
      for (const job of (await core.list({ status: 'running', limit: 10 })).jobs) await core.cancel(job.id);
      await core.cancel(jobs[0]!.id);
    });

    it('drains a failing job as failed, with a log line saying so', async () => {
      await core.enqueue('boom', { message: 'no luck' });
      const r = await cli(['worker', APP, '--broker', broker.url, '--until-empty', '--log', 'json']);
      assert.equal(r.code, 0, r.stderr);
      const lines = r.stderr
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      const failed = lines.find((l) => l.msg === 'offload: job failed');
      assert.ok(failed, r.stderr);
      assert.equal(failed.task, 'boom');
      assert.equal(failed.outcome, 'failed');
      assert.equal(failed.attempt, 1);
      assert.equal(failed.error, 'no luck');
      assert.equal(typeof failed.durationMs, 'number');
      assert.equal(failed.level, 40);
      assert.equal((await counts(core)).failed, 1);
    });
  });
}

describe('offload worker: bad usage and an unreachable broker', () => {
  it('exits 2 with a message for bad arguments', async () => {
    const cases: [string[], RegExp][] = [
      [['worker'], /missing <entry>/],
      [['worker', APP, '--max-jobs', 'many'], /--max-jobs takes a whole number/],
      [['worker', APP, '--idle-exit', 'soon'], /--idle-exit takes seconds/],
      [['worker', APP, '--bogus'], /Unknown option '--bogus'/],
      [
        ['worker', APP, '--tasks', 'nope', '--broker', 'memory:'],
        /unknown task nope; the app registers sleep, boom, steps, stuck/,
      ],
      [['worker', 'no/such/file.js'], /no such entry module/],
      [['worker', APP, '--log', 'xml'], /--log takes text or json/],
      [['nope'], /unknown command "nope"/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
    }
  });

  it('exits 3 within a few seconds when the broker does not answer', async () => {
    const r = await cli(['worker', APP, '--broker', 'redis://127.0.0.1:1', '--until-empty']);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /the broker did not answer/);
    assert.ok(r.ms < 10_000, `${r.ms} ms`);
  });

  it('prints help for every command, exit 0', async () => {
    for (const command of ['worker', 'run', 'jobs']) {
      const r = await cli([command, '--help']);
      assert.equal(r.code, 0);
      assert.match(r.stdout, new RegExp(`^Usage: offload ${command}`));
    }
    const r = await cli(['--help']);
    assert.equal(r.code, 0);
    assert.match(r.stdout, /Exit codes:/);
  });
});

describe('offload run', () => {
  it('runs a task in the foreground: progress and log on stderr, the result on stdout, exit 0', async () => {
    const r = await cli(['run', APP, 'steps', '--payload', '{"n":3}']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { n: 3 });
    assert.match(
      r.stderr,
      /progress 33% step 1\nprogress 67% step 2\nprogress 100% step 3\nall steps done\n/,
    );
    assert.match(r.stderr, /steps succeeded in \d+ ms/);
  });

  it('--json prints one document', async () => {
    const r = await cli(['run', APP, 'steps', '--payload', '{"n":1}', '--json']);
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout);
    assert.equal(doc.status, 'succeeded');
    assert.deepEqual(doc.result, { n: 1 });
    assert.equal(typeof doc.durationMs, 'number');
  });

  it('exits 1 when the task fails, with its message and code', async () => {
    const r = await cli(['run', APP, 'boom', '--payload', '{"message":"disk full"}', '--json']);
    assert.equal(r.code, 1);
    assert.deepEqual(JSON.parse(r.stdout), {
      status: 'failed',
      error: { message: 'disk full', code: 'ERR_BOOM' },
      durationMs: JSON.parse(r.stdout).durationMs,
    });
    assert.match(r.stderr, /boom failed after \d+ ms: disk full \(ERR_BOOM\)/);
  });

  it('exits 1 when the task outlives its time limit', async () => {
    const r = await cli(['run', APP, 'stuck']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /time limit of 200 ms.*ERR_OFFLOAD_TIMEOUT/);
  });

  it('exits 2 for a payload that is not JSON, fails validation, or an unknown task', async () => {
    const bad = await cli(['run', APP, 'steps', '--payload', '{"n":']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /the payload is not valid JSON/);
    const invalid = await cli(['run', APP, 'steps', '--payload', '{"n":0}']);
    assert.equal(invalid.code, 2);
    assert.match(invalid.stderr, /the payload of "steps" is invalid:\n {2}n: n must be a number ≥ 1/);
    const unknown = await cli(['run', APP, 'nope']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /unknown task "nope"; .* registers sleep, boom, steps, stuck/);
    const missing = await cli(['run', APP]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /expected <entry> <task>/);
  });

  it('SIGINT fires the job signal and exits 130', async () => {
    const run = startCli(['run', APP, 'sleep', '--payload', '{"ms":60000}']);
    await eventually(() => run.stderr().includes('sleep started'), 'the task started', { timeoutMs: 10_000 });
    run.child.kill('SIGINT');
    const r = await run.done;
    assert.equal(r.code, 130, r.stderr);
    assert.match(r.stderr, /SIGINT: asking the task to stop/);
    assert.match(r.stderr, /sleep was interrupted/);
  });

  it('loads an ES module entry through its default export', async () => {
    const r = await cli([
      'run',
      resolve(__dirname, '../fixtures/esm-app.fixture.mjs'),
      'hello',
      '--payload',
      '{"name":"ada"}',
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { greeting: 'hello ada' });
  });

  it('finds a CommonJS default export compiled from `export default`, and picks an export with --export', async () => {
    const cjs = resolve(__dirname, '../fixtures/cjs-default.fixture.js');
    const r = await cli(['run', cjs, 'twice', '--payload', '{"n":21}']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), '42');
    const several = await cli(['run', resolve(__dirname, '../fixtures/two-apps.fixture.js'), 'a']);
    assert.equal(several.code, 2);
    assert.match(several.stderr, /exports several offload apps \(first, second\); pick one with --export/);
    const picked = await cli([
      'run',
      resolve(__dirname, '../fixtures/two-apps.fixture.js'),
      'b',
      '--export',
      'second',
    ]);
    assert.equal(picked.code, 0, picked.stderr);
    assert.equal(picked.stdout.trim(), '"b"');
    const wrong = await cli([
      'run',
      resolve(__dirname, '../fixtures/two-apps.fixture.js'),
      'b',
      '--export',
      'nope',
    ]);
    assert.equal(wrong.code, 2);
    assert.match(wrong.stderr, /has no export "nope"/);
  });

  it('exits 3 when the entry module throws while loading', async () => {
    const r = await cli(['run', resolve(__dirname, '../fixtures/throwing-entry.fixture.js'), 'x']);
    assert.equal(r.code, 3, r.stderr);
    assert.match(r.stderr, /could not load .*throwing-entry.*this module is broken/s);
  });
});

describe('the Express sample: web-only on SQLite, drained by `offload worker --until-empty`', () => {
  const broker = CLI_BROKERS.find((b) => b.name === 'sqlite')!.make();
  after(() => broker.cleanup());

  it('accepts jobs with WORKERS=0, and the worker finishes them all', async () => {
    const port = await freePort();
    const sample = spawn(process.execPath, [resolve(__dirname, '../../samples/express/main.js')], {
      env: { ...process.env, BROKER_URL: broker.url, WORKERS: '0', PORT: String(port) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      await eventually(
        () =>
          fetch(`http://127.0.0.1:${port}/`).then(
            (r) => r.ok,
            () => false,
          ),
        'the sample listening',
        { timeoutMs: 15_000, intervalMs: 50 },
      );
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) {
        const res = await fetch(`http://127.0.0.1:${port}/reports`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-user': 'ada' },
          body: JSON.stringify({ steps: 2, stepMs: 10 }),
        });
        assert.equal(res.status, 202);
        ids.push(((await res.json()) as { id: string }).id);
      }
      // Nothing runs them in the web process.
      await new Promise((r) => setTimeout(r, 300));
      const queued = await fetch(`http://127.0.0.1:${port}/jobs/${ids[0]}`, { headers: { 'x-user': 'ada' } });
      assert.equal(((await queued.json()) as { status: string }).status, 'queued');

      const r = await cli(['worker', resolve(__dirname, '../../samples/express/jobs.js'), '--until-empty'], {
        BROKER_URL: broker.url,
      });
      assert.equal(r.code, 0, r.stderr);
      for (const id of ids) {
        const res = await fetch(`http://127.0.0.1:${port}/jobs/${id}`, { headers: { 'x-user': 'ada' } });
        const doc = (await res.json()) as { status: string; result: unknown };
        assert.equal(doc.status, 'succeeded');
        assert.deepEqual(doc.result, { steps: 2 });
      }
    } finally {
      sample.kill('SIGTERM');
      await new Promise((r) => sample.once('close', r));
    }
  });
});

function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

describe('a Nest module as the entry (real DI, no HTTP)', () => {
  const NEST_ENTRY = resolve(__dirname, '../../samples/nest/worker.module.js');
  const broker = CLI_BROKERS.find((b) => b.name === 'sqlite')!.make();
  after(() => broker.cleanup());

  it('offload run calls the @Background() method with the payload as its arguments', async () => {
    const r = await cli(['run', NEST_ENTRY, 'report', '--payload', '[{"steps":2,"stepMs":5}]']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { steps: 2 });
    assert.match(r.stderr, /progress 50% step 1 of 2\nprogress 100% step 2 of 2/);
    const invalid = await cli(['run', NEST_ENTRY, 'report', '--payload', '[{"steps":0,"stepMs":5}]']);
    assert.equal(invalid.code, 2);
    assert.match(invalid.stderr, /steps: steps must not be less than 1/);
  });

  it('offload worker --until-empty runs the jobs the web process accepted', async () => {
    const core = new Offload({ broker: broker.url, worker: false, logger: silentLogger });
    core.task('report', () => {});
    try {
      for (let i = 0; i < 4; i++) await core.enqueue('report', [{ steps: 1, stepMs: 5 }]);
      const r = await cli(['worker', NEST_ENTRY, '--until-empty'], { BROKER_URL: broker.url });
      assert.equal(r.code, 0, r.stderr);
      const { jobs } = await core.list({ task: 'report', limit: 10 });
      assert.equal(jobs.length, 4);
      for (const job of jobs) {
        assert.equal(job.status, 'succeeded');
        assert.deepEqual(job.result, { steps: 1 });
      }
    } finally {
      await core.close();
    }
  });
});

for (const kind of CLI_BROKERS)
  describe(`offload worker --until-empty on a cron host, ${kind.name}: a schedule with missed: "last"`, () => {
    const broker = kind.make();
    after(() => broker.cleanup());

    it('enqueues the last tick at start, runs it before calling the queue empty, and only once', async () => {
      const env = { CLI_FIXTURE_SCHEDULE: '1' };
      const off = await cli(['worker', APP, '--broker', broker.url, '--until-empty', '--no-schedules'], env);
      assert.equal(off.code, 0, off.stderr);
      assert.match(off.stderr, /schedules=off/);
      const core = producer(broker.url);
      try {
        assert.equal((await core.list({ limit: 10 })).jobs.length, 0, '--no-schedules ticks nothing');
        for (let run = 0; run < 2; run++) {
          const r = await cli(['worker', APP, '--broker', broker.url, '--until-empty'], env);
          assert.equal(r.code, 0, r.stderr);
          assert.match(r.stderr, /schedules=1/);
          // The first run enqueues the tick and runs it before it calls the queue empty.
          if (run === 0) assert.match(r.stderr, /offload: job finished .*task=sleep .*outcome=succeeded/);
          else assert.doesNotMatch(r.stderr, /offload: job finished/);
        }
        const { jobs } = await core.list({ limit: 10 });
        assert.equal(jobs.length, 1, 'two runs, one tick: one job');
        assert.equal(jobs[0]!.status, 'succeeded');
        assert.equal(jobs[0]!.task, 'sleep');
      } finally {
        await core.close();
      }
    });
  });

describe('offload run on a terminal', () => {
  it('draws one progress bar in place and pretty-prints the result', async () => {
    const r = await runCli(['run', APP, 'steps', '--payload', '{"n":3}'], { isTTY: true });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, '{\n  "n": 3\n}\n');
    const ESC = '\x1b';
    assert.ok(r.stderr.includes(`\r[${'#'.repeat(30)}] 100% step 3${ESC}[K`), JSON.stringify(r.stderr));
    assert.doesNotMatch(r.stderr, /^progress /m, 'no plain progress lines on a terminal');
    assert.ok(r.stderr.includes(`\r${ESC}[Kall steps done\n`), 'a log line clears the bar first');
  });
});
