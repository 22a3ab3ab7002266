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

/**
 * Marks a logger offload chose for the app (Nest's Logger, by default, in `OffloadModule`), as
 * opposed to one the app passed: the CLI replaces the former with its own, keeps the latter.
 */
export const IMPLICIT_LOGGER: unique symbol = Symbol.for('offload.implicitLogger');

export function isImplicitLogger(logger: Logger | undefined): boolean {
  return logger !== undefined && (logger as { [IMPLICIT_LOGGER]?: boolean })[IMPLICIT_LOGGER] === true;
}

/** A log entry's fields for a text line or a JSON record: an Error becomes its message (and code). */
export function plainFields(fields: object): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) {
    const code = v instanceof Error ? (v as { code?: unknown }).code : undefined;
    out[k] = v instanceof Error ? (code ? `${v.message} (${code})` : v.message) : v;
  }
  return out;
}

/** `message key=value …` for loggers that print one text line per entry (strings quoted when needed). */
export function textLine(message: string, fields: object): string {
  const pairs = Object.entries(plainFields(fields))
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s|"/.test(v) ? v : JSON.stringify(v)}`);
  return pairs.length ? `${message} ${pairs.join(' ')}` : message;
}
