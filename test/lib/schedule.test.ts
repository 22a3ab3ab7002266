// Schedules on the memory broker, on a fake clock (node:test's mock timers drive `Date` and
// `setTimeout`): when ticks fall (time zones, the 24.8-day timer cap), what start and close do,
// the missed-ticks policies, failed enqueues, and the errors a bad declaration gets.
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, it, mock } from 'node:test';
import { IsInt, Min } from 'class-validator';
import { MemoryBroker } from '../../adapters/memory/memory.broker.js';
import type { EnqueueInput, EnqueueResult } from '../../lib/broker.js';
import { ConfigError } from '../../lib/errors.js';
import { offload } from '../../lib/express.js';
import type { JobRecord } from '../../lib/job.js';
import { type Logger, silentLogger } from '../../lib/logger.js';
import { holdInstances, Offload } from '../../lib/offload.js';
import type { OffloadOptions } from '../../lib/options.js';
import { tickKey } from '../../lib/schedule.js';

/** Let the enqueues a timer started reach the broker (promise hops, no timers). */
async function flush(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
}

/**
 * Move the fake clock on by `ms`, a second at a time: a mock `tick` sets `Date` to its end before
 * it runs the timers that came due, so one long tick would make every timer in it fire late.
 */
async function advance(ms: number): Promise<void> {
  for (let left = ms; left > 0; left -= 1000) {
    mock.timers.tick(Math.min(1000, left));
    await flush();
  }
}

async function jobsOf(broker: MemoryBroker, task = 'report'): Promise<JobRecord[]> {
  return (await broker.list({ task, limit: 1000 })).jobs.reverse();
}

/** The tick instants of a task's jobs, as ISO strings, oldest first (read from their keys). */
async function ticksOf(broker: MemoryBroker, task = 'report'): Promise<string[]> {
  return (await jobsOf(broker, task)).map((job) => job.idempotencyKey!.split(' ')[2]!);
}

/** What a logger received, by level. */
function recordingLogger() {
  const lines: { level: string; fields: any; message: string }[] = [];
  const at = (level: string) => (fields: object, message: string) => {
    lines.push({ level, fields, message });
  };
  const logger: Logger = { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
  return { logger, lines };
}

const open: Offload[] = [];

/** A web-only core (no worker: the jobs stay queued to be counted) with task `report`. */
function core(broker: MemoryBroker, options: OffloadOptions = {}): Offload {
  const c = new Offload({ broker, worker: false, logger: silentLogger, ...options });
  c.task('report', () => null);
  open.push(c);
  return c;
}

describe('Offload.schedule', () => {
  beforeEach(() => {
    mock.timers.enable({ apis: ['setTimeout', 'Date'], now: Date.parse('2026-01-15T00:00:00.000Z') });
  });
  afterEach(async () => {
    mock.timers.reset();
    await Promise.all(open.splice(0).map((c) => c.close()));
  });

  it('reads the expression in its time zone: 03:00 in Paris is 02:00 UTC in winter', async () => {
    const broker = new MemoryBroker();
    const c = core(broker);
    c.schedule('paris', '0 3 * * *', { task: 'report', timezone: 'Europe/Paris' });
    c.schedule('utc', '0 3 * * *', { task: 'report' });
    mock.timers.tick(2 * 3_600_000 - 1);
    await flush();
    assert.deepEqual(await ticksOf(broker), []);
    mock.timers.tick(1);
    await flush();
    assert.deepEqual(await ticksOf(broker), ['2026-01-15T02:00:00.000Z']);
    mock.timers.tick(3_600_000);
    await flush();
    const jobs = await jobsOf(broker);
    assert.deepEqual(
      jobs.map((j) => j.idempotencyKey),
      [
        tickKey('paris', Date.parse('2026-01-15T02:00:00.000Z')),
        tickKey('utc', Date.parse('2026-01-15T03:00:00.000Z')),
      ],
    );
    assert.deepEqual(
      jobs.map((j) => [j.owner, j.payload]),
      [
        [null, {}],
        [null, {}],
      ],
    );
  });

  it('enqueues every tick, with its payload, until close(); then nothing more', async () => {
    const broker = new MemoryBroker();
    const c = core(broker);
    // Started exactly on a tick: that tick is the first.
    c.schedule('every-minute', '* * * * *', { task: 'report', payload: { kind: 'summary' } });
    await advance(3 * 60_000);
    assert.deepEqual(await ticksOf(broker), [
      '2026-01-15T00:00:00.000Z',
      '2026-01-15T00:01:00.000Z',
      '2026-01-15T00:02:00.000Z',
      '2026-01-15T00:03:00.000Z',
    ]);
    assert.deepEqual((await jobsOf(broker))[0]!.payload, { kind: 'summary' });
    await c.close();
    mock.timers.tick(10 * 60_000);
    await flush();
    assert.equal((await jobsOf(broker)).length, 4);
  });

  it('ticks past the 24.8-day limit of one timer at the right instant', async () => {
    const broker = new MemoryBroker();
    const c = core(broker);
    c.schedule('yearly', '0 0 1 1 *', { task: 'report' });
    const due = Date.parse('2027-01-01T00:00:00.000Z');
    // setTimeout would turn the 351-day delay into 1 ms: the schedule must wait, in steps.
    mock.timers.tick(1000);
    await flush();
    assert.equal((await jobsOf(broker)).length, 0);
    while (Date.now() < due - 1) {
      mock.timers.tick(Math.min(10 * 86_400_000, due - 1 - Date.now()));
      await flush();
    }
    assert.equal((await jobsOf(broker)).length, 0, 'nothing before the tick');
    mock.timers.tick(1);
    await flush();
    assert.deepEqual(await ticksOf(broker), ['2027-01-01T00:00:00.000Z']);
  });

  it('missed "skip" (the default): a tick that passed before start is not enqueued', async () => {
    mock.timers.setTime(Date.parse('2026-01-15T10:30:00.000Z'));
    const broker = new MemoryBroker();
    core(broker).schedule('hourly', '0 * * * *', { task: 'report' });
    await flush();
    assert.deepEqual(await ticksOf(broker), []);
    mock.timers.tick(30 * 60_000);
    await flush();
    assert.deepEqual(await ticksOf(broker), ['2026-01-15T11:00:00.000Z']);
  });

  it('missed "last": the last tick that passed is enqueued once at start, by however many processes', async () => {
    mock.timers.setTime(Date.parse('2026-01-15T10:30:00.000Z'));
    const broker = new MemoryBroker();
    for (let i = 0; i < 3; i++)
      core(broker).schedule('hourly', '0 * * * *', { task: 'report', missed: 'last' });
    await flush();
    assert.deepEqual(await ticksOf(broker), ['2026-01-15T10:00:00.000Z']);
    mock.timers.tick(30 * 60_000);
    await flush();
    assert.deepEqual(await ticksOf(broker), ['2026-01-15T10:00:00.000Z', '2026-01-15T11:00:00.000Z']);
  });

  it('missed "last": not a tick older than the result TTL (its key may be purged already)', async () => {
    mock.timers.setTime(Date.parse('2026-01-15T10:30:00.000Z'));
    const broker = new MemoryBroker();
    core(broker, { resultTtl: '20m' }).schedule('hourly', '0 * * * *', { task: 'report', missed: 'last' });
    await flush();
    assert.deepEqual(await ticksOf(broker), []);
  });

  it("an instance copies another one's schedules; both tick, each tick is one job", async () => {
    const broker = new MemoryBroker();
    const a = core(broker);
    a.schedule('every-minute', '* * * * *', { task: 'report', timezone: 'Asia/Tokyo', missed: 'last' });
    const b = core(broker);
    for (const def of a.schedules()) b.addSchedule(def);
    assert.deepEqual(b.schedules(), a.schedules());
    assert.deepEqual(a.schedules(), [
      {
        name: 'every-minute',
        cron: '* * * * *',
        task: 'report',
        payload: {},
        timezone: 'Asia/Tokyo',
        missed: 'last',
      },
    ]);
    await advance(3 * 60_000);
    // 'last' at start added 23:59 (the previous day, UTC); 00:00 is the start instant itself.
    assert.deepEqual(await ticksOf(broker), [
      '2026-01-14T23:59:00.000Z',
      '2026-01-15T00:00:00.000Z',
      '2026-01-15T00:01:00.000Z',
      '2026-01-15T00:02:00.000Z',
      '2026-01-15T00:03:00.000Z',
    ]);
  });

  it('does not tick with schedules: false, nor in a held instance; both still list it', async () => {
    const broker = new MemoryBroker();
    const off = core(broker, { schedules: false });
    off.schedule('every-minute', '* * * * *', { task: 'report' });
    holdInstances(true);
    let held: Offload;
    try {
      held = core(broker);
    } finally {
      holdInstances(false);
    }
    held.schedule('every-minute', '* * * * *', { task: 'report' });
    mock.timers.tick(5 * 60_000);
    await flush();
    assert.equal((await jobsOf(broker)).length, 0);
    assert.equal(off.schedules().length, 1);
    assert.equal(held.schedules().length, 1);
  });

  it('a held instance still refuses a schedule whose task is not registered', () => {
    holdInstances(true);
    try {
      const held = core(new MemoryBroker());
      assert.throws(() => held.schedule('nightly', '0 3 * * *', { task: 'nope' }), /task "nope"/);
    } finally {
      holdInstances(false);
    }
  });

  it('retries a tick whose enqueue failed, logs it, and still makes one job of it', async () => {
    mock.timers.setTime(Date.parse('2026-01-15T00:00:30.000Z'));
    const broker = new FailingBroker();
    const { logger, lines } = recordingLogger();
    core(broker, { logger }).schedule('every-minute', '* * * * *', { task: 'report' });
    broker.failures = 2;
    mock.timers.tick(30_000);
    await flush();
    const warn = lines.find((l) => l.level === 'warn');
    assert.ok(warn, 'a warning');
    assert.equal(warn.message, 'offload: schedule tick not enqueued; retrying');
    assert.deepEqual(
      { ...warn.fields, err: undefined },
      { schedule: 'every-minute', task: 'report', tick: '2026-01-15T00:01:00.000Z', err: undefined },
    );
    assert.ok(warn.fields.err instanceof Error);
    mock.timers.tick(500);
    await flush();
    mock.timers.tick(1000);
    await flush();
    assert.deepEqual(await ticksOf(broker), ['2026-01-15T00:01:00.000Z']);
    assert.equal(lines.filter((l) => l.level === 'warn').length, 2);
    assert.ok(lines.some((l) => l.level === 'info' && l.message === 'offload: schedule tick enqueued'));
  });

  it('gives up on a tick at the next one, which is enqueued on its own', async () => {
    const broker = new FailingBroker();
    const { logger, lines } = recordingLogger();
    mock.timers.setTime(Date.parse('2026-01-15T00:00:00.200Z'));
    core(broker, { logger }).schedule('every-second', '* * * * * *', { task: 'report' });
    // Fails at tick 1 and at its retry half a second later; the next retry would pass tick 2.
    broker.failures = 2;
    mock.timers.tick(800);
    await flush();
    mock.timers.tick(1000);
    await flush();
    assert.deepEqual(await ticksOf(broker), ['2026-01-15T00:00:02.000Z']);
    const error = lines.find((l) => l.level === 'error');
    assert.equal(error?.message, 'offload: schedule tick not enqueued; giving up on this tick');
    assert.equal(error?.fields.tick, '2026-01-15T00:00:01.000Z');
  });

  it('logs a payload the task refuses as an error at each tick, never enqueues it', async () => {
    class Month {
      @IsInt()
      @Min(1)
      month!: number;
    }
    const broker = new MemoryBroker();
    const { logger, lines } = recordingLogger();
    const c = new Offload({ broker, worker: false, logger });
    open.push(c);
    c.task('report', () => null, { validate: Month });
    c.schedule('report', '* * * * *', { payload: { month: 0 } });
    mock.timers.tick(1);
    await flush();
    assert.equal((await jobsOf(broker)).length, 0);
    const error = lines.find((l) => l.level === 'error');
    assert.equal(error?.message, 'offload: schedule payload is invalid; tick skipped');
    assert.equal(error?.fields.errors[0].field, 'month');
  });
});

describe('Offload.schedule errors', () => {
  afterEach(async () => {
    await Promise.all(open.splice(0).map((c) => c.close()));
  });

  const broker = new MemoryBroker();

  it('names a bad cron expression and why', () => {
    const c = core(broker);
    assert.throws(
      () => c.schedule('bad', '61 * * * *', { task: 'report' }),
      (err: unknown) =>
        err instanceof ConfigError &&
        err.code === 'ERR_OFFLOAD_CONFIG' &&
        /Schedule "bad": invalid cron expression "61 \* \* \* \*": .*minute/.test(err.message),
    );
    assert.throws(
      () => c.schedule('bad', 'every day', { task: 'report' }),
      /invalid cron expression "every day"/,
    );
    assert.throws(() => c.schedule('bad', '', { task: 'report' }), /non-empty string/);
    assert.throws(() => c.schedule('bad', 42 as any, { task: 'report' }), /non-empty string/);
    assert.throws(
      () => c.schedule('bad', '2026-05-01T00:00:00', { task: 'report' }),
      /is a date, not a cron/,
    );
    assert.throws(() => c.schedule('bad', '0 0 30 2 *', { task: 'report' }), /never fires/);
    assert.deepEqual(c.schedules(), []);
  });

  it('refuses an unknown time zone', () => {
    const c = core(broker);
    assert.throws(
      () => c.schedule('tz', '0 3 * * *', { task: 'report', timezone: 'Europe/Parys' }),
      /Schedule "tz": unknown time zone "Europe\/Parys"/,
    );
    assert.throws(() => c.schedule('tz', '0 3 * * *', { task: 'report', timezone: '' }), /IANA/);
  });

  it('refuses a name declared twice', () => {
    const c = core(broker);
    c.schedule('nightly', '0 3 * * *', { task: 'report' });
    assert.throws(
      () => c.schedule('nightly', '0 4 * * *', { task: 'report' }),
      /Schedule "nightly" is declared twice/,
    );
    assert.equal(c.schedules().length, 1);
  });

  it('refuses a payload that is not JSON, saying where', () => {
    const c = core(broker);
    const cases: [unknown, RegExp][] = [
      [{ at: new Date() }, /payload\.at is a Date, not a plain object/],
      [{ n: Number.NaN }, /payload\.n is NaN/],
      [{ list: [1, undefined] }, /payload\.list\[1\] is undefined/],
      [{ f: () => 1 }, /payload\.f is a function/],
      [new Map(), /payload is a Map/],
    ];
    for (const [payload, message] of cases) {
      assert.throws(() => c.schedule('p', '0 3 * * *', { task: 'report', payload: payload as any }), message);
    }
    const small = core(broker, { maxPayloadBytes: 10 });
    assert.throws(
      () => small.schedule('p', '0 3 * * *', { task: 'report', payload: { text: 'x'.repeat(20) } }),
      /over the maxPayloadBytes limit of 10/,
    );
  });

  it('refuses bad options and names', () => {
    const c = core(broker);
    assert.throws(
      () => c.schedule('x', '0 3 * * *', { task: 'report', every: 1 } as any),
      /unknown option "every"/,
    );
    assert.throws(
      () => c.schedule('x', '0 3 * * *', { task: 'report', missed: 'all' as any }),
      /"skip" or "last"/,
    );
    assert.throws(
      () => c.schedule('two words', '0 3 * * *', { task: 'report' }),
      /Schedule name "two words"/,
    );
    assert.throws(() => new Offload({ schedules: 'no' as any }), /schedules must be true or false/);
  });

  it('a started instance (Express) refuses a schedule of a task not registered, and keeps nothing of it', () => {
    const jobs = offload({ broker, worker: false, logger: silentLogger });
    open.push(jobs.core);
    assert.throws(
      () => jobs.schedule('nightly', '0 3 * * *', { task: 'report' }),
      (err: unknown) =>
        err instanceof ConfigError && /task "report", which is not registered/.test(err.message),
    );
    // The task defaults to the schedule's name.
    jobs.task('nightly', () => null);
    const def = jobs.schedule('nightly', '0 3 * * *');
    assert.equal(def.task, 'nightly');
    assert.deepEqual(
      jobs.core.schedules().map((s) => s.name),
      ['nightly'],
    );
  });

  it('an instance not started yet (Nest) checks the task at start()', () => {
    const c = new Offload({ broker, worker: false, logger: silentLogger }, { autoStart: false });
    open.push(c);
    c.schedule('nightly', '0 3 * * *', { task: 'report' });
    assert.throws(() => c.start(), /Schedule "nightly" enqueues task "report", which is not registered/);
    c.task('report', () => null);
    c.start();
  });
});

/** The memory broker, with enqueues that fail while `failures` lasts (a broker outage). */
class FailingBroker extends MemoryBroker {
  failures = 0;

  override async enqueue(input: EnqueueInput): Promise<EnqueueResult> {
    if (this.failures > 0) {
      this.failures--;
      throw new Error('connect ECONNREFUSED 127.0.0.1:6379');
    }
    return super.enqueue(input);
  }
}
