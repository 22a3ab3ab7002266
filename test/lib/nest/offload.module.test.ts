import 'reflect-metadata';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import {
  Body,
  type CanActivate,
  Controller,
  type ExecutionContext,
  Get,
  Headers,
  Inject,
  Injectable,
  Module,
  type OnModuleDestroy,
  Param,
  Post,
  Query,
  Req,
  Scope,
  ValidationPipe,
} from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';
import { Type } from 'class-transformer';
import { IsDate, IsInt, IsString, Matches, Max, Min } from 'class-validator';
import { MemoryBroker } from '../../../adapters/memory/memory.broker.js';
import { Background } from '../../../decorators/background.decorator.js';
import { JobContext } from '../../../decorators/job-context.decorator.js';
import { JobCanceledError, ValidationError } from '../../../lib/errors.js';
import { silentLogger } from '../../../lib/logger.js';
import {
  OffloadModule,
  type OffloadModuleAsyncOptions,
  type OffloadOptionsFactory,
} from '../../../lib/nest/offload.module.js';
import { OffloadService } from '../../../lib/nest/offload.service.js';
import { Offload } from '../../../lib/offload.js';
import type { OffloadRequest } from '../../../lib/options.js';
import type { Job } from '../../../lib/task.js';
import { as, expectProblem, openSse, postJson, userOwner } from '../../helpers/create-server.js';
import { eventually } from '../../helpers/eventually.js';
import { gate, type NestTestApp, startNestApp } from '../../helpers/nest-app.js';

class Period {
  @IsString()
  @Matches(/^\d{4}-\d{2}$/)
  month!: string;

  @Type(() => Date)
  @IsDate()
  since!: Date;
}

class Steps {
  @IsInt()
  @Min(1)
  @Max(100)
  steps!: number;
}

@Injectable()
class Clock {
  now(): number {
    return 42;
  }
}

/** Per test: release the `steps` handler, and what the `slow` handler saw. */
const control = {
  release: gate(),
  aborted: null as unknown,
};

@Controller('reports')
class ReportsController {
  readonly instanceId = randomUUID();

  constructor(private readonly clock: Clock) {}

  @Post()
  @Background({ attempts: 1 })
  generate(@Body() period: Period, @JobContext() job: Job) {
    return {
      month: period.month,
      since: period.since.toISOString(),
      sinceIsDate: period.since instanceof Date,
      isPeriod: period instanceof Period,
      clock: this.clock.now(),
      instanceId: this.instanceId,
      attempt: job.attempt,
      jobIdMatches: typeof job.id === 'string' && job.id.length === 36,
    };
  }

  @Post('steps')
  @Background({ name: 'steps' })
  async steps(@JobContext() job: Job, @Body() body: Steps) {
    await job.progress(50, 'half way', { done: body.steps / 2 });
    await control.release.promise;
    await job.progress(100, 'done');
    return { steps: body.steps };
  }

  @Post('slow/:id')
  @Background({ attempts: 1 })
  slow(@Param('id') id: string, @JobContext() job: Job) {
    return new Promise((_resolve, reject) => {
      job.signal.addEventListener('abort', () => {
        control.aborted = job.signal.reason;
        reject(job.signal.reason);
      });
      void id;
    });
  }

  @Post('pages/:id')
  @Background({ attempts: 1 })
  page(@Param('id') id: number, @Query('size') size: number = 10, @Query('draft') draft?: boolean) {
    return { id, idType: typeof id, size, draft: draft ?? 'absent' };
  }

  @Get('plain')
  plain() {
    return { ok: true };
  }
}

const offloadOptions = { logger: silentLogger, owner: userOwner, worker: { gracePeriod: 200 } };

describe('OffloadModule with @Background() routes, through Nest DI', () => {
  let t: NestTestApp;

  before(async () => {
    t = await startNestApp({
      imports: [OffloadModule.forRoot(offloadOptions)],
      controllers: [ReportsController],
      providers: [Clock],
    });
  });
  after(() => t.close());

  const count = async () => (await t.core.broker.list({ limit: 100 })).jobs.length;

  it('answers 202 with Location, Retry-After and the links; the worker runs the method on the DI instance', async () => {
    const res = await postJson(
      `${t.baseUrl}/reports`,
      { month: '2026-10', since: '2026-10-01T00:00:00.000Z' },
      {
        user: 'alice',
      },
    );
    assert.equal(res.status, 202);
    const body = await res.json();
    assert.equal(body.status, 'queued');
    assert.equal(body.statusUrl, `/jobs/${body.id}`);
    assert.equal(body.eventsUrl, `/jobs/${body.id}/events`);
    assert.equal(res.headers.get('location'), body.statusUrl);
    assert.equal(res.headers.get('retry-after'), '1');
    assert.match(res.headers.get('vary') ?? '', /Prefer/);

    const doc = await eventually(async () => {
      const d = await (await fetch(`${t.baseUrl}${body.statusUrl}`, { headers: as('alice') })).json();
      return d.status === 'succeeded' ? d : null;
    }, 'the job');
    const controller = t.app.get(ReportsController);
    assert.deepEqual(doc.result, {
      month: '2026-10',
      since: '2026-10-01T00:00:00.000Z',
      sinceIsDate: true,
      isPeriod: true,
      clock: 42,
      instanceId: controller.instanceId,
      attempt: 1,
      jobIdMatches: true,
    });
    const job = await t.core.get(body.id);
    assert.equal(job!.task, 'ReportsController.generate');
    // The payload is the argument list after pipes, without the job handle.
    assert.deepEqual(job!.payload, [{ month: '2026-10', since: '2026-10-01T00:00:00.000Z' }]);
    assert.equal(job!.owner, 'alice');
  });

  it('a ValidationPipe rejection is a 400 problem naming each field, and nothing is enqueued', async () => {
    const before = await count();
    const res = await postJson(`${t.baseUrl}/reports`, { month: 'October', since: 'someday', extra: 1 });
    const problem = await expectProblem(res, 400);
    assert.equal(problem.code, 'ERR_OFFLOAD_VALIDATION');
    assert.deepEqual(problem.errors!.map((e) => e.field).sort(), ['month', 'since']);
    assert.ok(problem.errors!.every((e) => e.messages.length > 0));
    assert.match(res.headers.get('vary') ?? '', /Prefer/);
    // Fields are checked as sent (no type conversion), as the pipe did: 7 is not a string.
    const typed = await expectProblem(
      await postJson(`${t.baseUrl}/reports`, { month: 202610, since: '2026-10-01T00:00:00Z' }),
      400,
    );
    assert.deepEqual(typed.errors, [
      {
        field: 'month',
        messages: ['month must match /^\\d{4}-\\d{2}$/ regular expression', 'month must be a string'],
      },
    ]);
    const missing = await expectProblem(await postJson(`${t.baseUrl}/reports/steps`, {}), 400);
    assert.deepEqual(
      missing.errors!.map((e) => e.field),
      ['steps'],
    );
    assert.equal(await count(), before);
  });

  it('a malformed or oversized body on a background route is problem+json; other routes keep Nest’s answers', async () => {
    const bad = await postJson(`${t.baseUrl}/reports`, '{"month":');
    assert.equal((await expectProblem(bad, 400)).code, 'ERR_OFFLOAD_BAD_JSON');
    const big = await postJson(`${t.baseUrl}/reports`, { month: 'x'.repeat(200_000) });
    assert.equal((await expectProblem(big, 413)).code, 'ERR_OFFLOAD_PAYLOAD_TOO_LARGE');
    // Not a background route: the app's own (Nest's default) error body, untouched.
    const other = await postJson(`${t.baseUrl}/reports/plain`, '{"month":');
    assert.equal(other.status, 400);
    assert.match(other.headers.get('content-type') ?? '', /^application\/json/);
    const plain = await fetch(`${t.baseUrl}/reports/plain`);
    assert.deepEqual(await plain.json(), { ok: true });
  });

  it('a stale or tampered payload fails the job with a validation error, not a crash', async () => {
    const def = t.core.registry.get('ReportsController.generate')!;
    const { job } = await t.core.submit(def, [{ month: 'nope', since: 'not a date' }], {
      owner: null,
      idempotencyKey: null,
    });
    const { job: short } = await t.core.submit(def, [], { owner: null, idempotencyKey: null });
    for (const id of [job.id, short.id]) {
      const failed = await eventually(async () => {
        const j = await t.core.get(id);
        return j?.status === 'failed' ? j : null;
      }, 'the failure');
      assert.equal(failed.error!.code, 'ERR_OFFLOAD_VALIDATION');
      assert.equal(failed.attempts, 1);
    }
    const failed = await t.core.get(job.id);
    assert.match(failed!.error!.message, /month/);
    assert.match(failed!.error!.message, /since/);
  });

  it('@JobContext() progress reaches an SSE client, then the terminal event ends the stream', async () => {
    control.release = gate();
    const res = await postJson(`${t.baseUrl}/reports/steps`, { steps: 8 }, { user: 'alice' });
    assert.equal(res.status, 202);
    const { id, eventsUrl } = await res.json();
    const sse = await openSse(`${t.baseUrl}${eventsUrl}`, as('alice'));
    assert.equal(sse.status, 200);
    await sse.until(
      (s) =>
        s.events.some(
          (e) => e.event === 'progress' || (e.event === 'snapshot' && e.data.includes('half way')),
        ),
      'the progress event',
    );
    const progress = sse.events.find((e) => e.event === 'progress') ?? sse.events[0]!;
    const data = JSON.parse(progress.data);
    const reported = data.progress ?? data;
    assert.equal(reported.percent, 50);
    assert.equal(reported.message, 'half way');
    control.release.open();
    await sse.untilEnded();
    const last = sse.events.at(-1)!;
    assert.equal(last.event, 'succeeded');
    assert.deepEqual(JSON.parse(last.data).result, { steps: 8 });
    const ids = sse.events.map((e) => Number(e.id)).filter((n) => !Number.isNaN(n));
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => a - b),
    );
    assert.equal((await t.core.get(id))!.task, 'steps');
  });

  it('DELETE on a running job fires its AbortSignal and it ends canceled', async () => {
    control.aborted = null;
    const res = await postJson(`${t.baseUrl}/reports/slow/7`, {}, { user: 'bob' });
    const { id, statusUrl } = await res.json();
    assert.deepEqual((await t.core.get(id))!.payload, ['7']);
    await eventually(async () => (await t.core.get(id))?.status === 'running', 'the run');
    const del = await fetch(`${t.baseUrl}${statusUrl}`, { method: 'DELETE', headers: as('bob') });
    assert.equal(del.status, 202);
    await eventually(async () => (await t.core.get(id))?.status === 'canceled', 'the cancel');
    assert.ok(control.aborted instanceof JobCanceledError, `signal reason: ${String(control.aborted)}`);
    await expectProblem(
      await fetch(`${t.baseUrl}${statusUrl}`, { method: 'DELETE', headers: as('bob') }),
      409,
    );
    await expectProblem(await fetch(`${t.baseUrl}${statusUrl}`, { headers: as('eve') }), 404);
  });

  it('Prefer: wait answers 200 with the result; an Idempotency-Key replays the job, 422 for another payload', async () => {
    const body = { month: '2026-09', since: '2026-09-01T00:00:00.000Z' };
    const waited = await postJson(`${t.baseUrl}/reports`, body, { headers: { prefer: 'wait=5' } });
    assert.equal(waited.status, 200);
    assert.equal(waited.headers.get('preference-applied'), 'wait=5');
    assert.equal((await waited.json()).month, '2026-09');

    const key = { 'idempotency-key': `k-${randomUUID()}` };
    const first = await postJson(`${t.baseUrl}/reports`, body, { user: 'carol', headers: key });
    const again = await postJson(`${t.baseUrl}/reports`, body, { user: 'carol', headers: key });
    assert.equal(first.status, 202);
    assert.equal(again.status, 202);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal((await first.json()).id, (await again.json()).id);
    const other = await postJson(
      `${t.baseUrl}/reports`,
      { ...body, month: '2026-08' },
      { user: 'carol', headers: key },
    );
    await expectProblem(other, 422);
  });

  it('the job routes answer like the Express ones: list, 404 for unknown ids, 405 with Allow', async () => {
    const mine = await (await fetch(`${t.baseUrl}/jobs?limit=100`, { headers: as('alice') })).json();
    assert.ok(mine.jobs.length >= 2);
    assert.ok(mine.jobs.every((j: { id: string }) => typeof j.id === 'string'));
    await expectProblem(await fetch(`${t.baseUrl}/jobs/not-a-uuid`), 404);
    await expectProblem(await fetch(`${t.baseUrl}/jobs/${randomUUID()}/events`), 404);
    const put = await fetch(`${t.baseUrl}/jobs/${randomUUID()}`, { method: 'PUT' });
    await expectProblem(put, 405);
    assert.equal(put.headers.get('allow'), 'GET, DELETE');
    await expectProblem(await fetch(`${t.baseUrl}/jobs?status=nope`), 400);
  });

  it('called directly (not through the router), a background method runs as written', async () => {
    const controller = t.app.get(ReportsController);
    const period = Object.assign(new Period(), { month: '2026-01', since: new Date('2026-01-01T00:00:00Z') });
    const result = controller.generate(period, { attempt: 9, id: randomUUID() } as unknown as Job);
    assert.equal(result.month, '2026-01');
    assert.equal(result.attempt, 9);
  });
});

describe('an app without a ValidationPipe', () => {
  let t: NestTestApp;

  before(async () => {
    t = await startNestApp(
      {
        imports: [OffloadModule.forRoot(offloadOptions)],
        controllers: [ReportsController],
        providers: [Clock],
      },
      { validationPipe: false },
    );
  });
  after(() => t.close());

  it('offload checks the declared DTO itself: 400 with the fields, nothing stored; unknown properties not stored', async () => {
    const bad = await postJson(`${t.baseUrl}/reports`, { month: 'October', since: 'someday' });
    const problem = await expectProblem(bad, 400);
    assert.deepEqual(problem.errors!.map((e) => e.field).sort(), ['month', 'since']);
    assert.equal((await t.core.broker.list({ limit: 100 })).jobs.length, 0);

    const res = await postJson(`${t.baseUrl}/reports`, {
      month: '2026-10',
      since: '2026-10-01T00:00:00Z',
      admin: true,
    });
    assert.equal(res.status, 202);
    const { id } = await res.json();
    assert.deepEqual((await t.core.get(id))!.payload, [
      { month: '2026-10', since: '2026-10-01T00:00:00.000Z' },
    ]);
    const done = await eventually(async () => {
      const j = await t.core.get(id);
      return j?.status === 'succeeded' ? j : null;
    }, 'the job');
    assert.equal((done.result as { isPeriod: boolean }).isPeriod, true);
  });

  it('path and query text becomes the declared number or boolean; an absent value is undefined again in the worker', async () => {
    const run = async (url: string) => {
      const res = await postJson(`${t.baseUrl}${url}`, {});
      assert.equal(res.status, 202, url);
      const { id } = await res.json();
      const job = await eventually(async () => {
        const j = await t.core.get(id);
        return j?.status === 'succeeded' ? j : null;
      }, url);
      return { payload: job.payload, result: job.result };
    };
    assert.deepEqual(await run('/reports/pages/7'), {
      payload: [7, null, null],
      result: { id: 7, idType: 'number', size: 10, draft: 'absent' },
    });
    assert.deepEqual((await run('/reports/pages/8?size=5&draft=true')).result, {
      id: 8,
      idType: 'number',
      size: 5,
      draft: true,
    });
    const bad = await expectProblem(await postJson(`${t.baseUrl}/reports/pages/x`, {}), 400);
    assert.deepEqual(bad.errors, [{ field: 'id', messages: ['must be a number'] }]);
  });
});

@Injectable()
class ApiKeyGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    return context.switchToHttp().getRequest<OffloadRequest>().headers['x-api-key'] === 'secret';
  }
}

class Settings {
  constructor(readonly basePath: string) {}
}

@Module({ providers: [{ provide: Settings, useValue: new Settings('/tasks') }], exports: [Settings] })
class SettingsModule {}

describe('OffloadModule.forRootAsync, guards and the global prefix', () => {
  let t: NestTestApp;

  before(async () => {
    t = await startNestApp(
      {
        imports: [
          OffloadModule.forRootAsync({
            imports: [SettingsModule],
            inject: [Settings],
            useFactory: (settings: Settings) => ({ ...offloadOptions, basePath: settings.basePath }),
            guards: [ApiKeyGuard],
          }),
        ],
        controllers: [ReportsController],
        providers: [Clock],
      },
      {
        before: (app) => {
          app.setGlobalPrefix('api');
          // A global guard applies to the job routes as to any other.
          app.useGlobalGuards({
            canActivate: (ctx: ExecutionContext) =>
              ctx.switchToHttp().getRequest<OffloadRequest>().headers['x-blocked'] === undefined,
          });
        },
      },
    );
  });
  after(() => t.close());

  it('takes the base path from the factory, and links under the global prefix', async () => {
    const res = await postJson(
      `${t.baseUrl}/api/reports`,
      { month: '2026-10', since: '2026-10-01T00:00:00Z' },
      {
        user: 'alice',
      },
    );
    assert.equal(res.status, 202);
    const { id, statusUrl } = await res.json();
    assert.equal(statusUrl, `/api/tasks/${id}`);
    const ok = await fetch(`${t.baseUrl}${statusUrl}`, { headers: as('alice', { 'x-api-key': 'secret' }) });
    assert.equal(ok.status, 200);
    assert.equal((await ok.json()).id, id);
  });

  it('the module guard protects the job routes (403 problem), not the app’s own routes', async () => {
    const res = await postJson(
      `${t.baseUrl}/api/reports`,
      { month: '2026-10', since: '2026-10-01T00:00:00Z' },
      {
        user: 'alice',
      },
    );
    const { statusUrl } = await res.json();
    const denied = await fetch(`${t.baseUrl}${statusUrl}`, { headers: as('alice') });
    assert.equal((await expectProblem(denied, 403)).status, 403);
    await expectProblem(await fetch(`${t.baseUrl}/api/tasks`, { headers: as('alice') }), 403);
    const blocked = await fetch(`${t.baseUrl}${statusUrl}`, {
      headers: as('alice', { 'x-api-key': 'secret', 'x-blocked': '1' }),
    });
    await expectProblem(blocked, 403);
    // The global guard rejecting a background route: problem+json there too, nothing enqueued.
    const before = (await t.core.broker.list({ limit: 100 })).jobs.length;
    const rejected = await postJson(
      `${t.baseUrl}/api/reports`,
      { month: '2026-10', since: '2026-10-01T00:00:00Z' },
      {
        headers: { 'x-blocked': '1' },
      },
    );
    await expectProblem(rejected, 403);
    assert.equal((await t.core.broker.list({ limit: 100 })).jobs.length, before);
  });
});

@Injectable()
class OffloadConfig implements OffloadOptionsFactory {
  constructor(@Inject(Settings) private readonly settings: Settings) {}
  createOffloadOptions() {
    return { ...offloadOptions, basePath: `${this.settings.basePath}-from-class` };
  }
}

@Module({
  imports: [SettingsModule],
  providers: [OffloadConfig],
  exports: [OffloadConfig],
})
class OffloadConfigModule {}

describe('OffloadModule.forRootAsync with useClass or useExisting', () => {
  const cases: [string, OffloadModuleAsyncOptions][] = [
    ['useClass', { imports: [SettingsModule], useClass: OffloadConfig }],
    ['useExisting', { imports: [OffloadConfigModule], useExisting: OffloadConfig }],
  ];
  for (const [how, async] of cases) {
    it(`${how}: the options come from the factory provider`, async () => {
      const t = await startNestApp({
        imports: [OffloadModule.forRootAsync(async)],
        controllers: [ReportsController],
        providers: [Clock],
      });
      try {
        const res = await postJson(`${t.baseUrl}/reports`, {
          month: '2026-10',
          since: '2026-10-01T00:00:00Z',
        });
        assert.equal(res.status, 202);
        const { id, statusUrl } = await res.json();
        assert.equal(statusUrl, `/tasks-from-class/${id}`);
        assert.equal((await fetch(`${t.baseUrl}${statusUrl}`)).status, 200);
      } finally {
        await t.close();
      }
    });
  }

  it('needs exactly one of useFactory, useClass, useExisting', () => {
    assert.throws(
      () => OffloadModule.forRootAsync({}),
      /exactly one of useFactory, useClass or useExisting\.$/,
    );
    assert.throws(
      () => OffloadModule.forRootAsync({ useClass: OffloadConfig, useFactory: () => ({}) }),
      /got useFactory and useClass/,
    );
  });
});

@Injectable()
class Mailer {
  readonly sent: string[] = [];

  @Background({ name: 'mail', attempts: 2 })
  async send(to: string, @JobContext() job: Job, times: number) {
    this.sent.push(`${to}x${times}#${job.attempt}`);
    return this.sent.length;
  }
}

@Injectable()
class Signup {
  constructor(readonly offload: OffloadService) {}

  welcome(to: string) {
    return this.offload.enqueue(Mailer, 'send', [to, 2]);
  }
}

describe('OffloadService and @Background() on a provider', () => {
  let t: NestTestApp;

  before(async () => {
    t = await startNestApp({
      imports: [OffloadModule.forRoot(offloadOptions)],
      controllers: [ReportsController],
      providers: [Clock, Mailer, Signup],
    });
  });
  after(() => t.close());

  it('enqueues a provider method by class and name; the worker calls it on the DI instance', async () => {
    const { job } = await t.app.get(Signup).welcome('ann@example.com');
    assert.equal(job.task, 'mail');
    assert.deepEqual(job.payload, ['ann@example.com', 2]);
    const done = await eventually(async () => {
      const j = await t.app.get(OffloadService).get(job.id);
      return j?.status === 'succeeded' ? j : null;
    }, 'the mail');
    assert.equal(done.result, 1);
    assert.deepEqual(t.app.get(Mailer).sent, ['ann@example.comx2#1']);
  });

  it('enqueues a route method with its DTO, validated (ValidationError) before anything is stored', async () => {
    const service = t.app.get(OffloadService);
    const { job } = await service.enqueue(ReportsController, 'generate', [
      { month: '2026-07', since: new Date('2026-07-01T00:00:00Z') },
    ]);
    const done = await eventually(async () => {
      const j = await service.get(job.id);
      return j?.status === 'succeeded' ? j : null;
    }, 'the report');
    assert.equal((done.result as { sinceIsDate: boolean }).sinceIsDate, true);
    const before = (await t.core.broker.list({ limit: 100 })).jobs.length;
    await assert.rejects(service.enqueue('ReportsController.generate', [{ month: 'x' }]), ValidationError);
    await assert.rejects(service.enqueue('mail', [42, 1]), ValidationError);
    assert.equal((await t.core.broker.list({ limit: 100 })).jobs.length, before);
  });
});

@Controller('bad')
class RequestTakingController {
  @Post()
  @Background()
  upload(@Body() body: Steps, @Req() req: OffloadRequest) {
    return [body, req.url];
  }
}

@Controller('headers')
class AllHeadersController {
  @Post()
  @Background()
  submit(@Headers() headers: Record<string, string>) {
    return headers;
  }
}

@Controller({ path: 'scoped', scope: Scope.REQUEST })
class RequestScopedController {
  @Post()
  @Background()
  run(@Body() body: Steps) {
    return body;
  }
}

describe('start-up errors', () => {
  it('a background method taking @Req() fails at start-up, naming the class and method', async () => {
    await assert.rejects(
      startNestApp({
        imports: [OffloadModule.forRoot(offloadOptions)],
        controllers: [RequestTakingController],
      }),
      (err: Error) => {
        assert.match(err.message, /RequestTakingController\.upload/);
        assert.match(err.message, /@Req\(\)/);
        return true;
      },
    );
  });

  it('@Headers() without a name is refused (every header, cookies included, would be stored)', async () => {
    await assert.rejects(
      startNestApp({ imports: [OffloadModule.forRoot(offloadOptions)], controllers: [AllHeadersController] }),
      /AllHeadersController\.submit.*@Headers\(\)/,
    );
  });

  it('a request-scoped controller is refused: a worker has no request to build it for', async () => {
    await assert.rejects(
      startNestApp({
        imports: [OffloadModule.forRoot(offloadOptions)],
        controllers: [RequestScopedController],
      }),
      /RequestScopedController\.run.*request-scoped/,
    );
  });

  it('the Fastify platform is refused at start-up with a clear message, not half-wired', async () => {
    const moduleRef = await Test.createTestingModule({
      imports: [OffloadModule.forRoot(offloadOptions)],
      controllers: [ReportsController],
      providers: [Clock],
    }).compile();
    const app = moduleRef.createNestApplication(new FastifyAdapter(), { logger: false });
    try {
      await assert.rejects(app.init(), /Express platform only.*"fastify".*not supported yet/);
    } finally {
      await app.close().catch(() => {});
    }
  });

  it('unknown options are named', async () => {
    await assert.rejects(
      startNestApp({ imports: [OffloadModule.forRoot({ ...offloadOptions, basepath: '/x' } as object)] }),
      /Unknown offload option "basepath"/,
    );
  });
});

describe('a worker-only application context', () => {
  const broker = new MemoryBroker();

  @Module({
    imports: [OffloadModule.forRoot({ ...offloadOptions, broker })],
    controllers: [ReportsController],
    providers: [Clock],
  })
  class WorkerModule {}

  it('runs, on its own DI instance, the jobs the HTTP app (worker: false) enqueued through a shared broker', async () => {
    const web = await startNestApp({
      imports: [OffloadModule.forRoot({ ...offloadOptions, broker, worker: false })],
      controllers: [ReportsController],
      providers: [Clock],
    });
    const worker = await NestFactory.createApplicationContext(WorkerModule, { logger: false });
    try {
      const res = await postJson(
        `${web.baseUrl}/reports`,
        { month: '2026-10', since: '2026-10-01T00:00:00Z' },
        {
          user: 'alice',
        },
      );
      assert.equal(res.status, 202);
      const { statusUrl } = await res.json();
      const doc = await eventually(async () => {
        const d = await (await fetch(`${web.baseUrl}${statusUrl}`, { headers: as('alice') })).json();
        return d.status === 'succeeded' ? d : null;
      }, 'the job run by the worker context');
      assert.equal(doc.result.instanceId, worker.get(ReportsController).instanceId);
      assert.notEqual(doc.result.instanceId, web.app.get(ReportsController).instanceId);
      assert.equal(doc.result.sinceIsDate, true);
      assert.equal(web.core.worker, null);
    } finally {
      await worker.close();
      await web.close();
    }
  });
});

/** Stands for a database connection another module closes on shutdown. */
@Injectable()
class Database implements OnModuleDestroy {
  open = true;
  onModuleDestroy(): void {
    this.open = false;
  }
}

@Module({ providers: [Database], exports: [Database] })
class DatabaseModule {}

const shutdown = { started: gate(), finishedWithOpenDb: null as boolean | null };

@Controller('exports')
class ExportController {
  constructor(private readonly db: Database) {}

  @Post()
  @Background()
  async run(@JobContext() job: Job) {
    shutdown.started.open();
    await new Promise((r) => setTimeout(r, 150));
    shutdown.finishedWithOpenDb = this.db.open;
    void job;
    return 'exported';
  }
}

describe('shutdown', () => {
  it('app.close() lets a running job finish before the app’s other modules are torn down', async () => {
    const broker = new MemoryBroker();
    const t = await startNestApp({
      imports: [
        OffloadModule.forRoot({ ...offloadOptions, broker, worker: { gracePeriod: 2000 } }),
        DatabaseModule,
      ],
      controllers: [ExportController],
    });
    const res = await postJson(`${t.baseUrl}/exports`, {});
    const { id } = await res.json();
    await shutdown.started.promise;
    await t.close();
    assert.equal(shutdown.finishedWithOpenDb, true);
    assert.equal((await broker.get(id))?.status, 'succeeded');
  });
});

const stuck = { started: gate() };

@Controller('stuck')
class StuckController {
  @Post()
  @Background({ attempts: 3 })
  async run(@JobContext() job: Job) {
    stuck.started.open();
    // Ignores its signal: runs past the grace period and is handed back.
    await new Promise((r) => setTimeout(r, 10_000).unref());
    void job;
  }
}

describe('a task registered once the app is up', () => {
  it('starts the worker, though no @Background() method had started it', async () => {
    const t = await startNestApp({ imports: [OffloadModule.forRoot(offloadOptions)] });
    try {
      const service = t.app.get(OffloadService);
      service.core.task('later', async () => 'ran');
      const { job } = await service.enqueue('later', {});
      assert.equal((await service.waitFor(job.id, 3000))?.result, 'ran');
    } finally {
      await t.close();
    }
  });
});

describe('app.close() with requests still open', () => {
  it('an SSE stream opened while the worker drains is ended, not left holding the server open', async () => {
    stuck.started = gate();
    const t = await startNestApp({
      imports: [OffloadModule.forRoot({ ...offloadOptions, worker: { gracePeriod: 600 } })],
      controllers: [StuckController],
    });
    const { eventsUrl } = await (await postJson(`${t.baseUrl}/stuck`, {})).json();
    await stuck.started.promise;
    let closed = false;
    const closing = t.close().then(() => {
      closed = true;
    });
    // The worker's grace period: the HTTP server still answers.
    await new Promise((r) => setTimeout(r, 100));
    const sse = await openSse(`${t.baseUrl}${eventsUrl}`);
    try {
      assert.equal(sse.status, 200);
      await sse.untilEnded();
      await eventually(async () => closed, 'app.close()');
    } finally {
      sse.close();
      await closing;
    }
  });

  it('a Prefer: wait request does not hold app.close() for its whole wait: it gets its 202', async () => {
    stuck.started = gate();
    const t = await startNestApp({
      imports: [OffloadModule.forRoot({ ...offloadOptions, worker: { gracePeriod: 200 } })],
      controllers: [StuckController],
    });
    const waiting = postJson(`${t.baseUrl}/stuck`, {}, { headers: { prefer: 'wait=20' } });
    await stuck.started.promise;
    const started = Date.now();
    await t.close();
    assert.ok(Date.now() - started < 5000, `app.close() took ${Date.now() - started} ms`);
    const res = await waiting;
    assert.equal(res.status, 202);
    assert.match((await res.json()).statusUrl, /^\/jobs\//);
  });
});

class Page {
  @IsInt()
  @Min(1)
  page!: number;
}

@Controller('search')
class SearchController {
  @Post()
  @Background()
  run(@Query() query: Page, @Body() body: Steps) {
    return [query.page, body.steps];
  }
}

describe('a ValidationPipe converting query strings (enableImplicitConversion)', () => {
  let t: NestTestApp;

  before(async () => {
    t = await startNestApp(
      { imports: [OffloadModule.forRoot(offloadOptions)], controllers: [SearchController] },
      {
        validationPipe: false,
        before: (app) =>
          app.useGlobalPipes(
            new ValidationPipe({ transform: true, transformOptions: { enableImplicitConversion: true } }),
          ),
      },
    );
  });
  after(() => t.close());

  it('the 400 names the fields the pipe rejected, not a query field it accepted', async () => {
    const ok = await postJson(`${t.baseUrl}/search?page=2`, { steps: 3 });
    assert.equal(ok.status, 202);
    const problem = await expectProblem(await postJson(`${t.baseUrl}/search?page=2`, { steps: 0 }), 400);
    assert.deepEqual(
      problem.errors!.map((e) => e.field),
      ['steps'],
    );
    const both = await expectProblem(await postJson(`${t.baseUrl}/search?page=0`, { steps: 0 }), 400);
    assert.deepEqual(both.errors!.map((e) => e.field).sort(), ['page', 'steps']);
  });
});

// The Offload core is injectable too.
void Offload;
