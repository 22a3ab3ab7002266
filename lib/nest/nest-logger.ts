import { Logger as NestLogger } from '@nestjs/common';
import { IMPLICIT_LOGGER, type Logger, textLine } from '../logger.js';

/**
 * offload's logger in a Nest app that passes none: Nest's `Logger` (context `offload`), so job
 * lines follow the app's `useLogger()` and log levels: a finished job at `log`, a failed one at
 * `warn`, a job's start at `verbose`. Fields go after the message as key=value
 * (Nest's console logger prints one message per line); pass `logger` to `OffloadModule` for a
 * structured logger such as pino.
 */
export function nestLogger(context = 'offload'): Logger {
  const nest = new NestLogger(context);
  const line = (fields: object, message: string) => textLine(message, fields);
  return {
    // Nest's lowest level: a job's start line is the chattiest offload writes.
    debug: (fields, message) => nest.verbose(line(fields, message)),
    info: (fields, message) => nest.log(line(fields, message)),
    warn: (fields, message) => nest.warn(line(fields, message)),
    error: (fields, message) => nest.error(line(fields, message)),
    [IMPLICIT_LOGGER]: true,
  } as Logger;
}
