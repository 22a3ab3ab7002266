// @Schedule() through real Nest DI: the explorer declares a schedule per decorator, each tick's
// job carries the method's arguments (checked against the parameter types, rebuilt as DTOs by the
// worker) and runs on the DI instance; bad declarations fail at start-up.
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Body, Controller, Injectable, Post } from '@nestjs/common';
import { IsString, Matches } from 'class-validator';
import { MemoryBroker } from '../../../adapters/memory/memory.broker.js';
import { Background } from '../../../decorators/background.decorator.js';
import { JobContext } from '../../../decorators/job-context.decorator.js';
import { Schedule } from '../../../decorators/schedule.decorator.js';
import { silentLogger } from '../../../lib/logger.js';
import { OffloadModule } from '../../../lib/nest/offload.module.js';
import type { Job } from '../../../lib/task.js';
import { eventually } from '../../helpers/eventually.js';
import { type NestTestApp, startNestApp } from '../../helpers/nest-app.js';

class Period {
  @IsString()
  @Matches(/^\d{4}-\d{2}$/)
  month!: string;
}

@Injectable()
class Archive {
  readonly stored: string[] = [];
}

@Injectable()
class Reports {
  readonly runs: { month: string; isPeriod: boolean; job: string }[] = [];

  constructor(private readonly archive: Archive) {}

  @Schedule('* * * * * *', { args: [{ month: '2026-07' }], name: 'monthly-report', timezone: 'Europe/Paris' })
  @Background({ attempts: 1 })
  build(period: Period, @JobContext() job: Job) {
    this.runs.push({ month: period.month, isPeriod: period instanceof Period, job: job.id });
    this.archive.stored.push(period.month);
    return period.month;
  }

  @Schedule('0 3 * * *')
  @Schedule('0 15 * * *', { name: 'afternoon-cleanup', missed: 'last' })
  @Background({ name: 'cleanup' })
  cleanup() {
    return 'clean';
  }
}

@Controller('exports')
class ExportsController {
  readonly runs: string[] = [];

  @Post()
  @Schedule('* * * * * *', { args: [{ month: '2026-08' }] })
  @Background()
  export(@Body() period: Period) {
    this.runs.push(period.month);
    return period.month;
  }
}

const options = { broker: new MemoryBroker(), logger: silentLogger };

describe('@Schedule() through Nest DI', () => {
  let t: NestTestApp;

  before(async () => {
    t = await startNestApp({
      imports: [OffloadModule.forRoot({ ...options, broker: new MemoryBroker() })],
      controllers: [ExportsController],
      providers: [Archive, Reports],
    });
  });
  after(() => t.close());

  it('declares a schedule per decorator, named and with the method as the task', () => {
    const byName = Object.fromEntries(t.core.schedules().map((s) => [s.name, s]));
    assert.deepEqual(Object.keys(byName).sort(), [
      'ExportsController.export',
      'afternoon-cleanup',
      'cleanup',
      'monthly-report',
    ]);
    assert.deepEqual(byName['monthly-report'], {
      name: 'monthly-report',
      cron: '* * * * * *',
      task: 'Reports.build',
      payload: [{ month: '2026-07' }],
      timezone: 'Europe/Paris',
      missed: 'skip',
    });
    assert.deepEqual(
      [byName.cleanup!.cron, byName.cleanup!.task, byName.cleanup!.payload, byName.cleanup!.timezone],
      ['0 3 * * *', 'cleanup', [], 'UTC'],
    );
    assert.equal(byName['afternoon-cleanup']!.missed, 'last');
  });

  it('each tick runs the method on the DI instance with its arguments rebuilt as the declared DTO', async () => {
    const reports = t.app.get(Reports);
    await eventually(() => reports.runs.length >= 2, 'two ticks of monthly-report', { timeoutMs: 5000 });
    for (const run of reports.runs) assert.deepEqual([run.month, run.isPeriod], ['2026-07', true]);
    assert.ok(t.app.get(Archive).stored.length >= 2, 'through its injected dependency');
    const jobs = (await t.core.list({ task: 'Reports.build', limit: 100 })).jobs;
    assert.ok(jobs.every((j) => /^schedule monthly-report \S+Z$/.test(j.idempotencyKey ?? '')));
    assert.equal(new Set(jobs.map((j) => j.idempotencyKey)).size, jobs.length);
  });

  it('a route method ticks too, its @Body() argument from the schedule', async () => {
    const controller = t.app.get(ExportsController);
    await eventually(() => controller.runs.length >= 1, 'a tick of the export route', { timeoutMs: 5000 });
    assert.equal(controller.runs[0], '2026-08');
  });

  it('stops ticking when the app closes', async () => {
    const app = await startNestApp({
      imports: [OffloadModule.forRoot({ ...options, broker: new MemoryBroker() })],
      providers: [Archive, Reports],
    });
    const reports = app.app.get(Reports);
    await eventually(() => reports.runs.length >= 1, 'a tick', { timeoutMs: 5000 });
    await app.close();
    const count = (await app.core.broker.list({ task: 'Reports.build', limit: 100 })).jobs.length;
    await new Promise((resolve) => setTimeout(resolve, 1500));
    assert.equal((await app.core.broker.list({ task: 'Reports.build', limit: 100 })).jobs.length, count);
  });

  it('schedules: false keeps them declared but not ticking in this process', async () => {
    const app = await startNestApp({
      imports: [OffloadModule.forRoot({ ...options, broker: new MemoryBroker(), schedules: false })],
      providers: [Archive, Reports],
    });
    try {
      assert.equal(app.core.schedules().length, 3);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      assert.equal((await app.core.broker.counts()).queued + (await app.core.broker.counts()).succeeded, 0);
    } finally {
      await app.close();
    }
  });
});

@Injectable()
class Unmarked {
  @Schedule('0 3 * * *')
  run() {}
}

@Injectable()
class BadArgs {
  @Schedule('0 3 * * *', { args: [{ month: 'July' }] })
  @Background()
  build(period: Period) {
    return period;
  }
}

@Injectable()
class BadCron {
  @Schedule('0 25 * * *')
  @Background()
  build() {}
}

@Injectable()
class PayloadOption {
  @Schedule('0 3 * * *', { payload: { month: '2026-07' } } as object)
  @Background()
  build() {}
}

@Injectable()
class TwoUnnamed {
  @Schedule('0 3 * * *')
  @Schedule('0 4 * * *')
  @Background()
  build() {}
}

describe('@Schedule() start-up errors', () => {
  const start = (provider: Function) =>
    startNestApp({ imports: [OffloadModule.forRoot(options)], providers: [provider as any] });

  it('needs @Background() on the same method', async () => {
    await assert.rejects(start(Unmarked), /Unmarked\.run: @Schedule\(\) needs @Background\(\)/);
  });

  it('args the parameter types refuse fail at start-up, naming the field', async () => {
    await assert.rejects(
      start(BadArgs),
      /BadArgs\.build: the args of @Schedule\("0 3 \* \* \*"\) are invalid: argument 0\.month: month must match/,
    );
  });

  it('a bad cron expression names the schedule and the expression', async () => {
    await assert.rejects(
      start(BadCron),
      /Schedule "BadCron\.build": invalid cron expression "0 25 \* \* \*"/,
    );
  });

  it('"payload" is refused with a pointer to "args"', async () => {
    await assert.rejects(
      start(PayloadOption),
      /unknown option "payload" \(the method's arguments go in "args"/,
    );
  });

  it('two schedules of one method need names of their own', async () => {
    await assert.rejects(start(TwoUnnamed), /Schedule "TwoUnnamed\.build" is declared twice/);
  });
});
