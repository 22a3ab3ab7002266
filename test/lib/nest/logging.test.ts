import 'reflect-metadata';
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Body, Controller, type LoggerService, Post } from '@nestjs/common';
import { Background } from '../../../decorators/background.decorator.js';
import type { Logger } from '../../../lib/logger.js';
import { OffloadModule } from '../../../lib/nest/offload.module.js';
import { eventually } from '../../helpers/eventually.js';
import { startNestApp } from '../../helpers/nest-app.js';

@Controller('work')
class WorkController {
  @Post()
  @Background({ name: 'work' })
  run(@Body() body: { fail?: boolean }) {
    if (body.fail) throw new Error('it broke');
    return { ok: true };
  }
}

/** A Nest LoggerService that keeps what it is given. */
class Capture implements LoggerService {
  readonly lines: { level: string; message: string; context?: string }[] = [];
  log(message: string, context?: string) {
    this.lines.push({ level: 'log', message, context });
  }
  warn(message: string, context?: string) {
    this.lines.push({ level: 'warn', message, context });
  }
  error(message: string, ...rest: string[]) {
    this.lines.push({ level: 'error', message, context: rest.at(-1) });
  }
  debug(message: string, context?: string) {
    this.lines.push({ level: 'debug', message, context });
  }
}

describe('logging in Nest', () => {
  it("goes through Nest's Logger (the app's useLogger) by default, one structured line per job", async () => {
    const capture = new Capture();
    const t = await startNestApp(
      {
        imports: [OffloadModule.forRoot({ broker: 'memory:', worker: { concurrency: 1 } })],
        controllers: [WorkController],
      },
      { before: (app) => app.useLogger(capture) },
    );
    try {
      const ok = await t.core.enqueue('work', [{}]);
      const bad = await t.core.enqueue('work', [{ fail: true }]);
      const finished = await eventually(
        () =>
          capture.lines.find(
            (l) =>
              l.context === 'offload' &&
              l.message.startsWith('offload: job finished') &&
              l.message.includes(ok.job.id),
          ),
        'the job line',
      );
      assert.equal(finished.level, 'log');
      assert.match(
        finished.message,
        new RegExp(
          `^offload: job finished jobId=${ok.job.id} task=work attempt=1 durationMs=\\d+ outcome=succeeded$`,
        ),
      );
      const failed = await eventually(
        () =>
          capture.lines.find(
            (l) =>
              l.context === 'offload' &&
              l.message.startsWith('offload: job failed') &&
              l.message.includes(bad.job.id),
          ),
        'the failure line',
      );
      assert.equal(failed.level, 'warn');
      assert.match(
        failed.message,
        /offload: job failed .*task=work attempt=1 .*outcome=retrying error="it broke"/,
      );
    } finally {
      await t.close();
    }
  });

  it('uses the logger the app passes instead', async () => {
    const entries: { fields: Record<string, unknown>; message: string }[] = [];
    const keep = (fields: object, message: string) =>
      entries.push({ fields: fields as Record<string, unknown>, message });
    const logger: Logger = { debug: keep, info: keep, warn: keep, error: keep };
    const t = await startNestApp({
      imports: [OffloadModule.forRoot({ broker: 'memory:', logger })],
      controllers: [WorkController],
    });
    try {
      const { job } = await t.core.enqueue('work', [{}]);
      const line = await eventually(
        () => entries.find((e) => e.message === 'offload: job finished'),
        'the job line',
      );
      assert.equal(line.fields.jobId, job.id);
      assert.equal(line.fields.task, 'work');
      assert.equal(line.fields.attempt, 1);
      assert.equal(line.fields.outcome, 'succeeded');
      assert.equal(typeof line.fields.durationMs, 'number');
    } finally {
      await t.close();
    }
  });
});
