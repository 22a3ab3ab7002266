import { ServerResponse } from 'node:http';
import {
  Inject,
  Injectable,
  type OnApplicationBootstrap,
  type OnModuleDestroy,
  type OnModuleInit,
  RequestMethod,
  Res,
} from '@nestjs/common';
import { EXCEPTION_FILTERS_METADATA, METHOD_METADATA, PATH_METADATA } from '@nestjs/common/constants';
import {
  DiscoveryService,
  HttpAdapterHost,
  MetadataScanner,
  ModuleRef,
  ModulesContainer,
} from '@nestjs/core';
import type { InstanceWrapper } from '@nestjs/core/injector/instance-wrapper';
import type { BackgroundMethodOptions } from '../../decorators/background.decorator.js';
import type { ScheduleMetadata } from '../../decorators/schedule.decorator.js';
import { ConfigError, PayloadTooLargeError } from '../errors.js';
import { fromBodyParserError } from '../http/body.js';
import { createJobAcceptor, readSubmitPreferences, stringifyPayload } from '../http/submit.js';
import type { Json } from '../job.js';
import { consoleLogger, type Logger } from '../logger.js';
import { Offload } from '../offload.js';
import type { OffloadRequest } from '../options.js';
import { defineSchedule, type ScheduleDefinition } from '../schedule.js';
import { defineTask, type TaskDefinition } from '../task.js';
import { BackgroundMethod } from './background-method.js';
import { BACKGROUND_METADATA, ROUTE_RESPONSE_METADATA, SCHEDULE_METADATA } from './nest.constants.js';
import { OffloadProblemFilter } from './problem.filter.js';

const ORIGINAL = Symbol('offload.original');

/** What an app bound to a route of one controller instance: how it submits. */
type Submit = (args: unknown[], res: ServerResponse) => Promise<void>;

/**
 * Per controller instance (each app has its own), its background routes. The route wrapper is
 * shared by every app in the process (it sits on the prototype); `this` tells which app's it is.
 */
const routesOf = new WeakMap<object, Map<string, Submit>>();

/** The undecorated method behind an installed route wrapper. */
function originalOf(fn: unknown): Function | undefined {
  if (typeof fn !== 'function') return undefined;
  return (fn as { [ORIGINAL]?: Function })[ORIGINAL] ?? fn;
}

/** The task name of a `@Background()` method: `OffloadService.enqueue(Class, 'method', args)`. */
export function backgroundTaskName(target: Function, methodName: string): string {
  const options: BackgroundMethodOptions | undefined = Reflect.getMetadata(
    BACKGROUND_METADATA,
    originalOf(target.prototype?.[methodName]) ?? {},
  );
  if (!options) throw new ConfigError(`${target.name}.${methodName} is not a @Background() method.`);
  return options.name ?? `${target.name}.${methodName}`;
}

/** The logger of the app that bound routes last: only for what the shared route filter logs. */
let lastLogger: () => Logger = () => consoleLogger;

/**
 * Make a `@Background()` route submit instead of running. Nest reads a route's handler off the
 * prototype when it registers routes, before any `onModuleInit`, so this runs at construction.
 * The wrapper takes an extra `@Res()` argument (Nest then leaves the response to it) and hands
 * its other arguments, after guards and pipes, to the app's submit. Called any other way (a unit
 * test calling the method), it runs the method as written.
 */
function installRoute(method: BackgroundMethod, original: Function): void {
  const proto = method.target.prototype;
  const { methodName } = method;
  const current = Object.getOwnPropertyDescriptor(proto, methodName)?.value;
  if (current && (current as { [ORIGINAL]?: Function })[ORIGINAL]) return;

  const resIndex = method.arity;
  const label = method.label;
  const wrapper = function (this: object, ...args: unknown[]) {
    const res = args[resIndex];
    if (!(res instanceof ServerResponse)) return original.apply(this, args);
    const submit = routesOf.get(this)?.get(methodName);
    if (!submit)
      throw new ConfigError(`${label} is a @Background() route, but OffloadModule is not in this app.`);
    return submit(args, res);
  };
  for (const key of Reflect.getOwnMetadataKeys(original)) {
    Reflect.defineMetadata(key, Reflect.getOwnMetadata(key, original), wrapper);
  }
  const filters = Reflect.getOwnMetadata(EXCEPTION_FILTERS_METADATA, original) ?? [];
  Reflect.defineMetadata(
    EXCEPTION_FILTERS_METADATA,
    [...filters, new OffloadProblemFilter(method, () => lastLogger())],
    wrapper,
  );
  Object.defineProperty(wrapper, ORIGINAL, { value: original });
  Object.defineProperty(wrapper, 'name', { value: methodName });
  Res()(proto, methodName, resIndex);
  Reflect.defineMetadata(ROUTE_RESPONSE_METADATA, resIndex, method.target, methodName);
  Object.defineProperty(proto, methodName, { value: wrapper, writable: true, configurable: true });
}

interface Found {
  method: BackgroundMethod;
  host: InstanceWrapper;
  def: TaskDefinition;
  /** Its `@Schedule()`s: their args are checked against the parameter types before they tick. */
  schedules: { cron: string; def: ScheduleDefinition }[];
}

/**
 * Finds `@Background()` methods on controllers and providers, registers each as a task whose
 * handler calls the method on the DI instance, and turns the routes among them into submits.
 * Starts the worker once the app is up; stops it first when the app closes.
 */
@Injectable()
export class BackgroundExplorer implements OnModuleInit, OnApplicationBootstrap, OnModuleDestroy {
  private readonly found: Found[] = [];

  constructor(
    // Tokens spelled out: the library must not depend on how it was compiled (design:paramtypes).
    @Inject(DiscoveryService) discovery: DiscoveryService,
    @Inject(MetadataScanner) scanner: MetadataScanner,
    @Inject(ModulesContainer) modules: ModulesContainer,
    @Inject(ModuleRef) private readonly moduleRef: ModuleRef,
    @Inject(HttpAdapterHost) private readonly adapterHost: HttpAdapterHost,
    @Inject(Offload) private readonly core: Offload,
  ) {
    // Hooks run by module distance: below every module, OffloadModule starts its worker after
    // the app's providers are ready and stops it before any of them is torn down, so a running
    // job never finds its database connection closed under it.
    for (const module of modules.values()) {
      if (module.providers.has(BackgroundExplorer)) module.distance = -1;
    }
    const warn = (message: string) => core.config.logger.warn({}, message);
    const hosts = [...discovery.getControllers(), ...discovery.getProviders()];
    for (const host of hosts) {
      const metatype = host.metatype;
      // Factory and value providers have no class to read metadata from.
      if (!metatype || host.inject || typeof metatype !== 'function' || !metatype.prototype) continue;
      const proto = metatype.prototype;
      for (const methodName of scanner.getAllMethodNames(proto)) {
        const original = originalOf(proto[methodName]);
        const options: BackgroundMethodOptions | undefined =
          original && Reflect.getMetadata(BACKGROUND_METADATA, original);
        const scheduled: ScheduleMetadata[] =
          (original && Reflect.getMetadata(SCHEDULE_METADATA, original)) ?? [];
        if (!original || !options) {
          if (scheduled.length > 0) {
            throw new ConfigError(
              `${metatype.name}.${methodName}: @Schedule() needs @Background() on the same method.`,
            );
          }
          continue;
        }
        const method = new BackgroundMethod(metatype, methodName, original, options, warn);
        let instance: unknown;
        const def = defineTask(
          method.taskName,
          // Singletons only (checked at init): the instance is looked up once.
          (values: unknown[], job) => {
            instance ??= host.instance;
            return original.apply(instance, method.argsFor(values, job));
          },
          method.taskOptions,
        );
        def.validator = method.validator;
        core.addTask(def);
        const schedules = scheduled.map((entry) => ({
          cron: entry.cron,
          def: scheduleFor(method, entry, core.config.maxPayloadBytes),
        }));
        for (const schedule of schedules) core.addSchedule(schedule.def);
        if (method.isRoute) installRoute(method, original);
        this.found.push({ method, host, def, schedules });
      }
    }
  }

  onModuleInit(): void {
    // OffloadModule.configure() has refused any other platform already.
    const adapter = this.adapterHost.httpAdapter;
    const { config } = this.core;
    lastLogger = () => config.logger;
    const prefix = globalPrefixOf(this.moduleRef);
    const linkBase = `${prefix}${config.basePath}`;
    for (const { method, host, def } of this.found) {
      if (!host.isDependencyTreeStatic()) {
        throw new ConfigError(
          `${method.label}: @Background() needs a singleton ${method.target.name}; it is request-scoped ` +
            '(itself or through a dependency), and a worker has no request to build it for.',
        );
      }
      if (!method.isRoute) continue;
      const acceptor = createJobAcceptor(this.core, def, linkBase);
      if (adapter)
        catchBodyErrors(adapter.getInstance(), method, prefix, (err, res) => acceptor.fail(res, err));
      const submit: Submit = async (args, res) => {
        const req = (res as ServerResponse & { req: OffloadRequest }).req;
        try {
          const preferences = readSubmitPreferences(req);
          const { payload, text } = await method.submitPayload(args);
          if (Buffer.byteLength(text) > config.maxPayloadBytes)
            throw new PayloadTooLargeError(config.maxPayloadBytes);
          await acceptor.accept(req, res, payload, preferences);
        } catch (err) {
          acceptor.fail(res, err);
        }
      };
      const instance = host.instance as object;
      const routes = routesOf.get(instance) ?? new Map<string, Submit>();
      routesOf.set(instance, routes);
      routes.set(method.methodName, submit);
    }
  }

  async onApplicationBootstrap(): Promise<void> {
    // A schedule whose args the method refuses would fail at every tick: refuse it at start-up.
    for (const { method, schedules } of this.found) {
      for (const { cron, def } of schedules) {
        const { errors } = await method.validator.check(def.payload);
        if (!errors) continue;
        const detail = errors.map((e) => `${e.field || 'args'}: ${e.messages.join(', ')}`).join('; ');
        throw new ConfigError(
          `${method.label}: the args of @Schedule(${JSON.stringify(cron)}) are invalid: ${detail}.`,
        );
      }
    }
    this.core.start();
  }

  async onModuleDestroy(): Promise<void> {
    await this.core.close();
  }
}

const SCHEDULE_METHOD_KEYS = new Set(['args', 'timezone', 'missed', 'name']);

/** The schedule one `@Schedule()` declares: the method's task, its args as the payload. */
function scheduleFor(
  method: BackgroundMethod,
  entry: ScheduleMetadata,
  maxPayloadBytes: number,
): ScheduleDefinition {
  const where = `${method.label}: @Schedule(${JSON.stringify(entry.cron)})`;
  const options = entry.options ?? {};
  for (const key of Object.keys(options)) {
    if (!SCHEDULE_METHOD_KEYS.has(key)) {
      const hint = key === 'payload' ? ' (the method\'s arguments go in "args", an array)' : '';
      throw new ConfigError(`${where}: unknown option "${key}"${hint}.`);
    }
  }
  const { args = [], timezone, missed, name } = options;
  if (!Array.isArray(args)) {
    throw new ConfigError(`${where}: args must be an array of the method's arguments, in order.`);
  }
  let payload: Json;
  try {
    // DTO instances become their fields, as OffloadService.enqueue stores them.
    payload = JSON.parse(stringifyPayload(args)) as Json;
  } catch (err) {
    throw new ConfigError(`${where}: args must be JSON-serialisable: ${(err as Error).message}`);
  }
  return defineSchedule(
    name ?? method.taskName,
    entry.cron,
    { task: method.taskName, payload, timezone, missed },
    maxPayloadBytes,
  );
}

/**
 * Nest parses bodies before routing, so a malformed or oversized body on a background route
 * never reaches the route or its filters: Nest's global handler answers it, not in
 * problem+json. An Express error handler on the route's own path and method (added after Nest's
 * routes, before its global handler) answers those as the protocol says. Paths come from the
 * controller and method metadata and the global prefix; a path Express cannot take is skipped.
 */
function catchBodyErrors(
  app: { use(path: string, handler: Function): void },
  method: BackgroundMethod,
  prefix: string,
  fail: (err: unknown, res: ServerResponse) => void,
): void {
  const original = originalOf(method.target.prototype[method.methodName])!;
  const verb = RequestMethod[Reflect.getMetadata(METHOD_METADATA, original)] ?? 'ALL';
  const list = (value: unknown) => (Array.isArray(value) ? value : [value ?? '/']).map(String);
  // Mounted with use(), as Express routes never see an error raised before them; use() matches
  // a prefix, so the rest of the URL must be empty for the route itself.
  const handler = (err: unknown, req: OffloadRequest, res: ServerResponse, next: (err?: unknown) => void) => {
    const rest = (req.url ?? '').split('?')[0];
    const mapped =
      (verb === 'ALL' || req.method === verb) && (rest === '/' || rest === '')
        ? fromBodyParserError(err, Number.POSITIVE_INFINITY)
        : null;
    if (mapped) fail(mapped, res);
    else next(err);
  };
  for (const base of list(Reflect.getMetadata(PATH_METADATA, method.target))) {
    for (const sub of list(Reflect.getMetadata(PATH_METADATA, original))) {
      const path = `/${[prefix, base, sub].join('/')}`.replace(/\/{2,}/g, '/').replace(/(.)\/$/, '$1');
      try {
        app.use(path, handler);
      } catch {
        // A path syntax Express rejects (Nest converts some on its own): left to Nest's handler.
      }
    }
  }
}

/**
 * `app.setGlobalPrefix('api')` moves the job routes to `/api/jobs`; the links in 202 answers
 * must say so. Nest keeps the prefix in its container's config, read here once at init.
 */
function globalPrefixOf(moduleRef: ModuleRef): string {
  const container = (
    moduleRef as unknown as { container?: { applicationConfig?: { getGlobalPrefix(): string } } }
  ).container;
  const prefix = container?.applicationConfig?.getGlobalPrefix() ?? '';
  const trimmed = prefix.replace(/^\/+|\/+$/g, '');
  return trimmed ? `/${trimmed}` : '';
}
