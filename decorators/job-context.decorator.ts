import 'reflect-metadata';
import { JOB_CONTEXT_METADATA } from '../lib/nest/nest.constants.js';

/**
 * The running job's handle (`id`, `attempt`, `progress()`, `log()`, `signal`) as a parameter of
 * a `@Background()` method. It is not part of the payload; on the HTTP request it is `undefined`.
 */
export function JobContext(): ParameterDecorator {
  return (target, key, index) => {
    if (key === undefined) throw new TypeError('@JobContext() belongs on a method parameter.');
    Reflect.defineMetadata(JOB_CONTEXT_METADATA, index, target.constructor, key);
  };
}
