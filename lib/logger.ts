/** The subset of a pino-style logger offload writes to: a fields object first, then a message. */
export interface Logger {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

const noop = () => {};

/** The default: warnings and errors to the console, nothing else. */
export const consoleLogger: Logger = {
  debug: noop,
  info: noop,
  warn: (fields, message) => console.warn(message, fields),
  error: (fields, message) => console.error(message, fields),
};

export const silentLogger: Logger = { debug: noop, info: noop, warn: noop, error: noop };
