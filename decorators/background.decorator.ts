import { SetMetadata } from '@nestjs/common';
import { BACKGROUND_METADATA } from '../lib/nest/nest.constants.js';
import type { TaskOptions } from '../lib/task.js';

/** `@Background()` options: the task options, and the task's name. */
export interface BackgroundMethodOptions extends Omit<TaskOptions, 'validate'> {
  /** The task name. @defaultValue `ClassName.methodName` */
  name?: string;
}

/**
 * Run this method as a background job. On a controller route the request answers `202 Accepted`
 * with a status URL, and a worker calls the method later with the same arguments (after pipes)
 * on the same DI-resolved instance. On any other provider method it registers a task that
 * `OffloadService.enqueue` submits. Metadata only: `OffloadModule` does the wiring.
 */
export function Background(options: BackgroundMethodOptions = {}): MethodDecorator {
  return SetMetadata(BACKGROUND_METADATA, options);
}
