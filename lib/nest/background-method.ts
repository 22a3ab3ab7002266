import { METHOD_METADATA, ROUTE_ARGS_METADATA, SSE_METADATA } from '@nestjs/common/constants';
import { RouteParamtypes } from '@nestjs/common/enums/route-paramtypes.enum';
import type { BackgroundMethodOptions } from '../../decorators/background.decorator.js';
import { ConfigError, type FieldError, MissingDriverError, ValidationError } from '../errors.js';
import { stringifyPayload } from '../http/submit.js';
import type { Json } from '../job.js';
import type { OffloadRequest } from '../options.js';
import type { TaskOptions } from '../task.js';
import { type CompiledValidator, compileClassCheck, isClass } from '../validation.js';
import { JOB_CONTEXT_METADATA, ROUTE_RESPONSE_METADATA } from './nest.constants.js';

type Check = CompiledValidator['check'];

/** Where a payload argument comes from on the request. */
type Source = 'body' | 'query' | 'param' | 'headers' | 'ip' | 'host' | 'custom' | 'none';

/** One argument of the method that travels in the payload. */
interface Slot {
  index: number;
  source: Source;
  data: string | undefined;
  /** How a field of this argument is named in errors: `steps`, `report.steps`, `id`. */
  field: (inner: string) => string;
  /** Rebuilds and checks the stored value; `null` when the declared type says nothing. */
  check: Check | null;
  /** Checks a DTO argument as the client sent it, types not converted (as a ValidationPipe does). */
  requestCheck: Check | null;
  /** The declared DTO class, when the argument is one. */
  dto: Function | null;
}

/**
 * Parameter decorators whose value cannot be stored in a payload: they are the request itself,
 * or live objects of it. A background method that takes one fails at start-up.
 */
const NOT_SERIALISABLE: Partial<Record<number, string>> = {
  [RouteParamtypes.REQUEST]: '@Req()',
  [RouteParamtypes.RESPONSE]: '@Res()',
  [RouteParamtypes.NEXT]: '@Next()',
  [RouteParamtypes.SESSION]: '@Session()',
  [RouteParamtypes.FILE]: '@UploadedFile()',
  [RouteParamtypes.FILES]: '@UploadedFiles()',
  [RouteParamtypes.RAW_BODY]: '@RawBody()',
};

const SOURCES: Partial<Record<number, Source>> = {
  [RouteParamtypes.BODY]: 'body',
  [RouteParamtypes.QUERY]: 'query',
  [RouteParamtypes.PARAM]: 'param',
  [RouteParamtypes.HEADERS]: 'headers',
  [RouteParamtypes.IP]: 'ip',
  [RouteParamtypes.HOST]: 'host',
};

const BUILT_INS = new Set<unknown>([Object, Array, Function, Promise, Map, Set, Buffer, Symbol, BigInt]);

/**
 * What `@Background()` on one method means, worked out once at start-up from the method's
 * metadata: which arguments are the payload, how the worker rebuilds and re-checks them, where
 * the job handle goes. Independent of any app: two apps in one process share it.
 */
export class BackgroundMethod {
  readonly label: string;
  readonly taskName: string;
  readonly taskOptions: Omit<TaskOptions, 'validate'>;
  /** Position of `@JobContext()`, or -1. */
  readonly jobIndex: number;
  /** Parameters the method declares, the job handle included. */
  readonly arity: number;
  /** A route handler (`@Get()`, `@Post()`...), not only a task. */
  readonly isRoute: boolean;
  readonly validator: CompiledValidator;
  private readonly slots: Slot[];

  constructor(
    readonly target: Function,
    readonly methodName: string,
    original: Function,
    options: BackgroundMethodOptions,
    warn: (message: string) => void,
  ) {
    this.label = `${target.name}.${methodName}`;
    const { name, ...taskOptions } = options ?? {};
    if ('validate' in taskOptions) {
      throw new ConfigError(
        `${this.label}: @Background() takes no "validate": the parameter types (DTO classes) are the validation.`,
      );
    }
    this.taskName = name ?? this.label;
    this.taskOptions = taskOptions;
    this.isRoute = Reflect.getMetadata(METHOD_METADATA, original) !== undefined;
    if (this.isRoute && Reflect.getMetadata(SSE_METADATA, original)) {
      throw new ConfigError(`${this.label}: @Background() cannot mark an @Sse() route.`);
    }

    const args: Record<string, { index: number; data?: unknown }> =
      Reflect.getMetadata(ROUTE_ARGS_METADATA, target, methodName) ?? {};
    const jobIndex: number | undefined = Reflect.getMetadata(JOB_CONTEXT_METADATA, target, methodName);
    this.jobIndex = jobIndex ?? -1;
    const types: unknown[] | undefined = Reflect.getMetadata(
      'design:paramtypes',
      target.prototype,
      methodName,
    );
    if (!types && original.length > 0) {
      warn(
        `offload: ${this.label} has no parameter type metadata (compile with emitDecoratorMetadata); ` +
          'its payload arguments reach the worker as plain JSON, not rebuilt or re-validated.',
      );
    }

    // Another app in this process may have installed the route already, adding its own @Res().
    const added: number | undefined = Reflect.getMetadata(ROUTE_RESPONSE_METADATA, target, methodName);
    const byIndex = new Map<number, { source: Source; data: string | undefined }>();
    let arity = Math.max(types?.length ?? 0, original.length, this.jobIndex + 1);
    for (const [key, meta] of Object.entries(args)) {
      const type = key.slice(0, key.lastIndexOf(':'));
      const data = typeof meta.data === 'string' ? meta.data : undefined;
      if (meta.index === added && type === String(RouteParamtypes.RESPONSE)) continue;
      arity = Math.max(arity, meta.index + 1);
      if (/^\d+$/.test(type)) {
        const paramtype = Number(type);
        const refused =
          NOT_SERIALISABLE[paramtype] ??
          (paramtype === RouteParamtypes.HEADERS && data === undefined ? '@Headers()' : undefined);
        if (refused) throw notSerialisable(this.label, refused, meta.index);
        byIndex.set(meta.index, { source: SOURCES[paramtype] ?? 'custom', data });
      } else {
        byIndex.set(meta.index, { source: 'custom', data });
      }
    }
    if (this.jobIndex >= 0 && byIndex.has(this.jobIndex)) {
      throw new ConfigError(
        `${this.label}: parameter ${this.jobIndex} has @JobContext() and another decorator.`,
      );
    }
    this.arity = arity;

    this.slots = [];
    for (let index = 0; index < arity; index++) {
      if (index === this.jobIndex) continue;
      const { source, data } = byIndex.get(index) ?? { source: 'none' as const, data: undefined };
      const name = data ?? (source === 'none' || source === 'custom' ? `argument ${index}` : source);
      const field = (inner: string) => {
        if (!inner) return name;
        return data !== undefined || (source !== 'body' && source !== 'query' && source !== 'param')
          ? `${name}.${inner}`
          : inner;
      };
      const type = types?.[index];
      const check = checkFor(type, source, this.label, warn);
      const requestCheck =
        check && isClass(type as Function)
          ? compileClassCheck(type as new () => object, { rebuildUndecorated: true })
          : null;
      this.slots.push({
        index,
        source,
        data,
        field,
        check,
        requestCheck,
        dto: requestCheck ? (type as Function) : null,
      });
    }

    const slots = this.slots;
    const label = this.label;
    this.validator = {
      async check(payload) {
        if (!Array.isArray(payload) || payload.length !== slots.length) {
          return {
            errors: [
              {
                field: '',
                messages: [
                  `the payload of ${label} must be an array of its ${slots.length} argument(s), ` +
                    'in order, without the @JobContext() one',
                ],
              },
            ],
            value: payload,
          };
        }
        const errors: FieldError[] = [];
        const value: unknown[] = [];
        for (let i = 0; i < slots.length; i++) {
          const slot = slots[i]!;
          if (!slot.check) {
            value.push(payload[i]);
            continue;
          }
          value.push(await checkSlot(slot, slot.check, payload[i]!, errors));
        }
        return { errors: errors.length ? errors : null, value };
      },
    };
  }

  /** The payload arguments of a call, in order (not yet checked or copied). */
  payloadOf(args: unknown[]): unknown[] {
    return this.slots.map((slot) => args[slot.index] ?? null);
  }

  /**
   * What a route call stores: its payload arguments as JSON, checked as the worker will check
   * them. A DTO argument that is already an instance of its class comes from a transforming
   * pipe that validated it (a `ValidationPipe`): it is not validated a second time. Throws
   * `ValidationError`; returns the payload and its JSON text.
   */
  async submitPayload(args: unknown[]): Promise<{ payload: Json; text: string }> {
    let text = stringifyPayload(this.payloadOf(args));
    const values = JSON.parse(text) as Json[];
    const errors: FieldError[] = [];
    let changed = false;
    for (let i = 0; i < this.slots.length; i++) {
      const slot = this.slots[i]!;
      if (!slot.check || (slot.dto && args[slot.index] instanceof slot.dto)) continue;
      const value = await checkSlot(slot, slot.check, values[i]!, errors);
      if (value !== values[i]) {
        values[i] = value as Json;
        changed = true;
      }
    }
    if (errors.length) throw new ValidationError(errors);
    // A rebuilt DTO keeps only what it validated (unknown properties stripped): store that.
    if (changed) text = stringifyPayload(values);
    return { payload: changed ? (JSON.parse(text) as Json) : values, text };
  }

  /** The method's arguments for a run: the checked payload in place, the job handle at its spot. */
  argsFor(values: unknown[], job: unknown): unknown[] {
    const args = new Array(this.arity);
    for (let i = 0; i < this.slots.length; i++) {
      const slot = this.slots[i]!;
      // JSON has no `undefined`: an absent query value or header was stored as null. Handed
      // back as undefined, so a default parameter (`page = 1`) applies as on the request.
      args[slot.index] =
        values[i] === null && slot.source !== 'body' && slot.source !== 'custom' ? undefined : values[i];
    }
    if (this.jobIndex >= 0) args[this.jobIndex] = job;
    return args;
  }

  /**
   * The per-field errors of the request's own body, query and params against the declared DTO
   * classes: what a `ValidationPipe` rejected, named by field (the pipe itself only gives
   * sentences).
   */
  async requestErrors(req: OffloadRequest): Promise<FieldError[]> {
    const errors: FieldError[] = [];
    for (const slot of this.slots) {
      if (!slot.requestCheck) continue;
      const whole =
        slot.source === 'body'
          ? req.body
          : slot.source === 'query'
            ? req.query
            : slot.source === 'param'
              ? req.params
              : undefined;
      if (whole === undefined) continue;
      const raw = slot.data === undefined ? whole : whole?.[slot.data];
      // Query strings and path parameters are text: a pipe passes `?page=2` to an `@IsInt()`
      // only by converting it, so they are checked converted; body fields as sent.
      const check = slot.source === 'body' ? slot.requestCheck : (slot.check ?? slot.requestCheck);
      await checkSlot(slot, check, raw as Json, errors);
    }
    return errors;
  }
}

/** Run one argument's check; its field errors, named after the argument, go to `errors`. */
async function checkSlot(slot: Slot, check: Check, value: Json, errors: FieldError[]): Promise<unknown> {
  const checked = await check(value);
  for (const e of checked.errors ?? []) errors.push({ field: slot.field(e.field), messages: e.messages });
  return checked.value;
}

function notSerialisable(label: string, decorator: string, index: number): ConfigError {
  const why =
    decorator === '@Headers()'
      ? 'every header (cookies, tokens) would be stored in the job: name the one it needs, @Headers("x-tenant")'
      : 'the job runs later in a worker, where there is no request: take what the task needs (@Body() dto, ids) instead';
  return new ConfigError(
    `${label}: a @Background() method cannot take ${decorator} (parameter ${index}); ${why}.`,
  );
}

/** How the worker rebuilds an argument of the declared type from JSON, and checks it. */
function checkFor(
  type: unknown,
  source: Source,
  label: string,
  warn: (message: string) => void,
): Check | null {
  if (typeof type !== 'function' || BUILT_INS.has(type)) return null;
  // Path, query and header values are text: `@Param('id') id: number` without a converting pipe
  // receives '7'. Stored (and handed to the method) as the declared type, as a pipe would.
  const text = source === 'param' || source === 'query' || source === 'headers';
  if (type === String || type === Number || type === Boolean) {
    const expected = type.name.toLowerCase();
    return async (value) => {
      if (value === null || typeof value === expected) return { errors: null, value };
      if (text && typeof value === 'string') {
        if (type === Number && value.trim() !== '' && Number.isFinite(Number(value))) {
          return { errors: null, value: Number(value) };
        }
        if (type === Boolean && (value === 'true' || value === 'false')) {
          return { errors: null, value: value === 'true' };
        }
      }
      return { errors: [{ field: '', messages: [`must be a ${expected}`] }], value };
    };
  }
  if (type === Date) {
    return async (value) => {
      if (value === null) return { errors: null, value };
      const date = typeof value === 'string' || typeof value === 'number' ? new Date(value) : null;
      return date && !Number.isNaN(date.getTime())
        ? { errors: null, value: date }
        : { errors: [{ field: '', messages: ['must be a date'] }], value };
    };
  }
  if (!isClass(type as Function)) return null;
  try {
    const check = compileClassCheck(type as new () => object, {
      implicitConversion: true,
      rebuildUndecorated: true,
    });
    // Only a body must be an object; a custom decorator (`@CurrentUser()` of an anonymous
    // caller) or an absent query object may give nothing.
    return source === 'body'
      ? check
      : async (value) => (value === null ? { errors: null, value } : check(value));
  } catch (err) {
    if (!(err instanceof MissingDriverError)) throw err;
    warn(
      `offload: ${label} takes a ${type.name}, but class-transformer and class-validator are not ` +
        'installed: it reaches the worker as plain JSON.',
    );
    return null;
  }
}
