import {
  type CanActivate,
  type DynamicModule,
  Inject,
  type InjectionToken,
  type MiddlewareConsumer,
  Module,
  type ModuleMetadata,
  type NestModule,
  type OptionalFactoryDependency,
  type Provider,
  type Type,
} from '@nestjs/common';
import { DiscoveryModule, HttpAdapterHost } from '@nestjs/core';
import { ConfigError } from '../errors.js';
import { consoleLogger, type Logger } from '../logger.js';
import { Offload } from '../offload.js';
import type { OffloadOptions } from '../options.js';
import { BackgroundExplorer } from './background.explorer.js';
import {
  createDashboardController,
  type OffloadDashboardOptions,
  parseModuleDashboard,
  type ResolvedDashboard,
} from './dashboard.controller.js';
import { createJobsController } from './jobs.controller.js';
import { OFFLOAD_MODULE_OPTIONS } from './nest.constants.js';
import { nestLogger } from './nest-logger.js';
import { OffloadService } from './offload.service.js';

type Guard = CanActivate | Type<CanActivate>;

/** `OffloadModule.forRoot()` options: the Express middleware's, and guards for the job routes. */
export interface OffloadModuleOptions extends OffloadOptions {
  /**
   * Guards for the job routes (status, events, cancel, list), after the app's global ones.
   * A guard class is built by Nest inside OffloadModule: its dependencies must be global or
   * exported by a module in `imports`.
   */
  guards?: Guard[];
  /**
   * Mount the jobs dashboard: `{ path: 'admin/jobs', guards: [AdminGuard] }`. Absent: no dashboard.
   * It shows and acts on every owner's jobs and does no checks of its own: `guards` is required.
   */
  dashboard?: OffloadDashboardOptions | false;
}

/** A provider that builds the options: `forRootAsync({ useClass: OffloadConfig })`. */
export interface OffloadOptionsFactory {
  createOffloadOptions(): OffloadOptions | Promise<OffloadOptions>;
}

/**
 * One of `useFactory` (with `inject`), `useClass` or `useExisting` builds the options; not
 * `guards`, which Nest must know before any factory runs, so they sit here.
 */
export interface OffloadModuleAsyncOptions extends Pick<ModuleMetadata, 'imports'> {
  useFactory?: (...args: any[]) => OffloadOptions | Promise<OffloadOptions>;
  inject?: (InjectionToken | OptionalFactoryDependency)[];
  /** A class implementing `OffloadOptionsFactory`, built by Nest in OffloadModule. */
  useClass?: Type<OffloadOptionsFactory>;
  /** An `OffloadOptionsFactory` provider that exists already (exported by a module in `imports`). */
  useExisting?: Type<OffloadOptionsFactory> | InjectionToken;
  guards?: Guard[];
  /** The dashboard, as in `forRoot`: here too, because Nest needs its routes before any factory runs. */
  dashboard?: OffloadDashboardOptions | false;
}

/**
 * `imports: [OffloadModule.forRoot({ broker: 'redis://…', owner: req => req.user?.id })]`.
 * Global: mounts the job routes under `basePath`, wires every `@Background()` method, exports
 * `OffloadService` (and the `Offload` core).
 */
@Module({})
export class OffloadModule implements NestModule {
  constructor(@Inject(HttpAdapterHost) private readonly adapterHost: HttpAdapterHost) {}

  /** Runs before Nest registers any route: the one point to refuse a platform before it half-works. */
  configure(_consumer: MiddlewareConsumer): void {
    const adapter = this.adapterHost.httpAdapter;
    if (adapter && adapter.getType() !== 'express') {
      throw new ConfigError(
        `offload/nest runs on Nest's Express platform only; this app uses "${adapter.getType()}". ` +
          'Fastify is not supported yet.',
      );
    }
  }

  static forRoot(options: OffloadModuleOptions = {}): DynamicModule {
    const { guards = [], dashboard, ...offloadOptions } = options;
    return build(
      [{ provide: OFFLOAD_MODULE_OPTIONS, useValue: offloadOptions }],
      guards,
      [],
      parseModuleDashboard(dashboard),
    );
  }

  static forRootAsync(options: OffloadModuleAsyncOptions): DynamicModule {
    const given = (['useFactory', 'useClass', 'useExisting'] as const).filter(
      (k) => options?.[k] !== undefined,
    );
    if (given.length !== 1) {
      throw new ConfigError(
        'OffloadModule.forRootAsync needs exactly one of useFactory, useClass or useExisting' +
          (given.length ? `; got ${given.join(' and ')}.` : '.'),
      );
    }
    const providers: Provider[] = [];
    if (options.useFactory) {
      providers.push({
        provide: OFFLOAD_MODULE_OPTIONS,
        useFactory: options.useFactory,
        inject: options.inject ?? [],
      });
    } else {
      const source = options.useClass ?? options.useExisting!;
      if (options.useClass) providers.push(options.useClass);
      providers.push({
        provide: OFFLOAD_MODULE_OPTIONS,
        useFactory: (factory: OffloadOptionsFactory) => factory.createOffloadOptions(),
        inject: [source],
      });
    }
    return build(
      providers,
      options.guards ?? [],
      options.imports ?? [],
      parseModuleDashboard(options.dashboard),
    );
  }
}

function build(
  optionProviders: Provider[],
  guards: Guard[],
  imports: ModuleMetadata['imports'],
  dashboard: ResolvedDashboard | null,
): DynamicModule {
  if (!Array.isArray(guards)) throw new ConfigError('OffloadModule: guards must be an array.');
  let logger: Logger = consoleLogger;
  const controller = createJobsController(guards, () => logger);
  const controllers: Type<unknown>[] = [controller];
  if (dashboard) controllers.push(createDashboardController(dashboard, () => logger));
  return {
    module: OffloadModule,
    global: true,
    imports: [DiscoveryModule, ...(imports ?? [])],
    controllers,
    providers: [
      ...optionProviders,
      {
        provide: Offload,
        useFactory: (options: OffloadOptions) => {
          for (const key of ['guards', 'dashboard']) {
            if (key in (options ?? {})) {
              throw new ConfigError(
                `OffloadModule.forRootAsync: pass ${key} next to the factory, not from it.`,
              );
            }
          }
          // The worker waits for onApplicationBootstrap: jobs must not run before the app is up.
          // Nest's Logger unless the app passed a logger of its own.
          const given =
            options && typeof options === 'object'
              ? { ...options, logger: options.logger ?? nestLogger() }
              : options;
          // Before the core exists: a refused module must leave no broker connection open.
          if (dashboard) checkDashboardPath(dashboard, options?.basePath ?? '/jobs');
          const core = new Offload(given, { autoStart: false });
          logger = core.config.logger;
          controller.mountAt(core.config.basePath);
          return core;
        },
        inject: [OFFLOAD_MODULE_OPTIONS],
      },
      OffloadService,
      BackgroundExplorer,
    ],
    exports: [OffloadService, Offload],
  };
}

/** The job routes are registered first: a dashboard under their base path would never answer. */
function checkDashboardPath(dashboard: ResolvedDashboard, basePath: string): void {
  const path = `/${dashboard.path}`;
  if (path === basePath || path.startsWith(`${basePath}/`)) {
    throw new ConfigError(
      `OffloadModule: dashboard.path "${dashboard.path}" lies under basePath "${basePath}", whose routes answer first.`,
    );
  }
}
