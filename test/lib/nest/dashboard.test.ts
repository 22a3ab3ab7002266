// OffloadModule's `dashboard` option: the shared API suite behind a Nest guard on each broker, then
// what only the module does (no option, no route; checked options; forRootAsync; a global prefix).
import 'reflect-metadata';
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  type CanActivate,
  Controller,
  type ExecutionContext,
  Get,
  Inject,
  Injectable,
  type OnModuleInit,
  UnauthorizedException,
} from '@nestjs/common';
import { ConfigError } from '../../../lib/errors.js';
import { silentLogger } from '../../../lib/logger.js';
import { OffloadModule } from '../../../lib/nest/offload.module.js';
import { Offload } from '../../../lib/offload.js';
import type { OffloadOptions, OffloadRequest } from '../../../lib/options.js';
import { expectProblem, userOwner } from '../../helpers/create-server.js';
import {
  DASHBOARD_BROKERS,
  type DashboardTasks,
  describeDashboardApi,
  registerDashboardTasks,
} from '../../helpers/dashboard-suite.js';
import { type NestTestApp, startNestApp } from '../../helpers/nest-app.js';

/** 401 for nobody, 403 (a `false`) for anyone but `admin`. */
@Injectable()
class AdminGuard implements CanActivate {
  canActivate(context: ExecutionContext): boolean {
    const user = context.switchToHttp().getRequest<OffloadRequest>().headers['x-user'];
    if (!user) throw new UnauthorizedException('log in first');
    return user === 'admin';
  }
}

/** The suite's tasks, on the core Nest built (so both harnesses run the very same handlers). */
@Injectable()
class SuiteTasks implements OnModuleInit {
  tasks!: DashboardTasks;

  constructor(@Inject(Offload) private readonly core: Offload) {}

  onModuleInit(): void {
    this.tasks = registerDashboardTasks(this.core);
  }
}

@Controller('hello')
class HelloController {
  @Get()
  hello(): string {
    return 'app';
  }
}

const base: OffloadOptions = { logger: silentLogger, owner: userOwner };

for (const kind of DASHBOARD_BROKERS.filter((b) => b.name !== 'Redis')) {
  describeDashboardApi(`OffloadModule dashboard on Nest (${kind.name} broker)`, async () => {
    const broker = kind.make();
    const t = await startNestApp({
      imports: [
        OffloadModule.forRoot({
          ...base,
          broker: broker.url,
          worker: { concurrency: 4, pollInterval: 100, gracePeriod: 100 },
          dashboard: { path: 'admin/jobs', guards: [AdminGuard] },
        }),
      ],
      providers: [SuiteTasks],
    });
    return {
      baseUrl: t.baseUrl,
      mount: '/admin/jobs',
      core: t.core,
      tasks: t.app.get(SuiteTasks).tasks,
      async close() {
        await t.close();
        await broker.cleanup();
      },
    };
  });
}

describe('OffloadModule without a dashboard option', () => {
  let t: NestTestApp;
  before(async () => {
    t = await startNestApp({ imports: [OffloadModule.forRoot({ ...base, worker: false })] });
  });
  after(() => t.close());

  it('mounts no dashboard: its paths are Nest’s own 404', async () => {
    for (const path of ['/admin/jobs', '/admin/jobs/api/jobs', '/admin/jobs/assets/dashboard.js']) {
      const res = await fetch(`${t.baseUrl}${path}`, { headers: { 'x-user': 'admin' } });
      assert.equal(res.status, 404, path);
      assert.doesNotMatch(res.headers.get('content-type') ?? '', /problem\+json/);
    }
  });
});

describe('OffloadModule.forRootAsync with a dashboard, under a global prefix', () => {
  let t: NestTestApp;
  before(async () => {
    t = await startNestApp(
      {
        imports: [
          OffloadModule.forRootAsync({
            useFactory: () => ({ ...base, worker: false }),
            dashboard: { path: '/ops/queue/', guards: [AdminGuard], title: 'Ops' },
          }),
        ],
        controllers: [HelloController],
      },
      { before: (app) => app.setGlobalPrefix('api') },
    );
  });
  after(() => t.close());

  it('links the page under the prefix, behind its guard', async () => {
    const res = await fetch(`${t.baseUrl}/api/ops/queue`, { headers: { 'x-user': 'admin' } });
    assert.equal(res.status, 200);
    const html = await res.text();
    assert.match(html, /<script type="module" src="\/api\/ops\/queue\/assets\/dashboard.js">/);
    assert.match(html, /<title>Ops<\/title>/);
    const refused = await fetch(`${t.baseUrl}/api/ops/queue/api/counts`, { headers: { 'x-user': 'bob' } });
    await expectProblem(refused, 403);
    await expectProblem(await fetch(`${t.baseUrl}/api/ops/queue/api/counts`), 401);
    assert.equal(await (await fetch(`${t.baseUrl}/api/hello`)).text(), 'app', 'the app’s routes untouched');
  });
});

describe('OffloadModule dashboard option checks', () => {
  const guards = [AdminGuard];
  const bad: [unknown, RegExp][] = [
    [{ guards }, /dashboard.path must be a path like 'admin\/jobs'/],
    [{ path: '/', guards }, /dashboard.path must be/],
    [{ path: 'admin/:id', guards }, /dashboard.path must be/],
    [{ path: 'admin/jobs' }, /dashboard.guards is required/],
    [{ path: 'admin/jobs', guards: AdminGuard }, /dashboard.guards is required/],
    [{ path: 'admin/jobs', guards, colour: 'red' }, /Unknown OffloadModule dashboard option "colour"/],
    [{ path: 'admin/jobs', guards, title: '' }, /title must be a non-empty string/],
    [true, /dashboard must be an object/],
    ['admin/jobs', /dashboard must be an object/],
  ];
  for (const [dashboard, message] of bad) {
    it(`refuses dashboard: ${JSON.stringify(dashboard)}`, () => {
      const check = (err: unknown) => err instanceof ConfigError && message.test(err.message);
      assert.throws(() => OffloadModule.forRoot({ ...base, dashboard: dashboard as never }), check);
      assert.throws(
        () => OffloadModule.forRootAsync({ useFactory: () => base, dashboard: dashboard as never }),
        check,
      );
    });
  }

  it('takes `false` as no dashboard, and `[]` guards when a global guard keeps others out', async () => {
    const off = OffloadModule.forRoot({ ...base, dashboard: false });
    assert.equal(off.controllers!.length, 1);
    const on = OffloadModule.forRoot({ ...base, dashboard: { path: 'admin/jobs', guards: [] } });
    assert.equal(on.controllers!.length, 2);
  });

  it('refuses a dashboard under the job routes’ basePath, and one passed from the factory', async () => {
    await assert.rejects(
      startNestApp({
        imports: [
          OffloadModule.forRoot({
            ...base,
            worker: false,
            basePath: '/jobs',
            dashboard: { path: 'jobs/admin', guards },
          }),
        ],
      }),
      (err: unknown) => err instanceof ConfigError && /lies under basePath "\/jobs"/.test(err.message),
    );
    await assert.rejects(
      startNestApp({
        imports: [
          OffloadModule.forRootAsync({
            useFactory: () => ({ ...base, dashboard: { path: 'admin/jobs', guards } }) as OffloadOptions,
          }),
        ],
      }),
      (err: unknown) => err instanceof ConfigError && /pass dashboard next to the factory/.test(err.message),
    );
  });
});
