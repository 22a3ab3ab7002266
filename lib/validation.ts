import { createRequire } from 'node:module';
import { type FieldError, MissingDriverError } from './errors.js';
import type { Json } from './job.js';

/**
 * What `validate` accepts: a class-validator DTO class, or a function returning the field
 * errors (an empty array or nothing when the payload is valid).
 */
export type PayloadValidator =
  | (new (
      ...args: any[]
    ) => object)
  | ((payload: Json) => FieldError[] | undefined | null | Promise<FieldError[] | undefined | null>);

export interface CompiledValidator {
  /** Field errors, or `null` when valid. `value` is what the task will receive. */
  check(payload: Json): Promise<{ errors: FieldError[] | null; value: unknown }>;
}

const requireOptional = createRequire(__filename);

interface ClassValidatorModules {
  transformer: typeof import('class-transformer');
  validator: typeof import('class-validator');
}

let classModules: ClassValidatorModules | undefined;

function loadClassModules(): ClassValidatorModules {
  if (!classModules) {
    classModules = {
      transformer: loadPeer('class-transformer'),
      validator: loadPeer('class-validator'),
    };
  }
  return classModules;
}

function loadPeer<T>(pkg: string): T {
  try {
    return requireOptional(pkg) as T;
  } catch (err) {
    throw new MissingDriverError(pkg, 'DTO validation (validate: SomeClass)', { cause: err });
  }
}

/** A class has a prototype with methods or decorators; an arrow or plain function validator does not. */
export function isClass(fn: Function): fn is new (...args: any[]) => object {
  return /^class[\s{]/.test(Function.prototype.toString.call(fn));
}

export interface ClassCheckOptions {
  /**
   * Convert JSON values to the declared property types (`design:type`), as a `ValidationPipe`
   * with `enableImplicitConversion` does: a `Date` property stored as an ISO string comes back
   * a `Date`.
   */
  implicitConversion?: boolean;
  /** A class without any class-validator decorator is only rebuilt, not validated or stripped. */
  rebuildUndecorated?: boolean;
}

/**
 * Rebuild a JSON object into `dto` (class-transformer) and validate it (class-validator, unknown
 * properties stripped). Field errors, or `null`; `value` is the instance.
 */
export function compileClassCheck(
  dto: new (...args: any[]) => object,
  options: ClassCheckOptions = {},
): CompiledValidator['check'] {
  const { transformer, validator } = loadClassModules();
  const transform = options.implicitConversion ? { enableImplicitConversion: true } : undefined;
  const undecorated =
    options.rebuildUndecorated &&
    validator.getMetadataStorage().getTargetValidationMetadatas(dto, '', true, false).length === 0;
  return async (payload) => {
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      return { errors: [{ field: '', messages: ['the payload must be a JSON object'] }], value: payload };
    }
    const instance = transformer.plainToInstance(dto, payload, transform);
    if (undecorated) return { errors: null, value: instance };
    const found = await validator.validate(instance, { whitelist: true, forbidUnknownValues: true });
    return { errors: found.length ? flatten(found) : null, value: instance };
  };
}

export function compileValidator(validate: PayloadValidator): CompiledValidator {
  if (isClass(validate)) return { check: compileClassCheck(validate) };
  const fn = validate as (
    payload: Json,
  ) => FieldError[] | undefined | null | Promise<FieldError[] | undefined | null>;
  return {
    async check(payload) {
      const errors = await fn(payload);
      return { errors: errors?.length ? errors : null, value: payload };
    },
  };
}

function flatten(errors: import('class-validator').ValidationError[], prefix = ''): FieldError[] {
  const out: FieldError[] = [];
  for (const e of errors) {
    const field = prefix ? `${prefix}.${e.property}` : e.property;
    if (e.constraints) out.push({ field, messages: Object.values(e.constraints) });
    if (e.children?.length) out.push(...flatten(e.children, field));
  }
  return out;
}
