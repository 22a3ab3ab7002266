import { type Logger, plainFields, textLine } from '../logger.js';
import type { CliIo } from './common.js';

export type LogFormat = 'text' | 'json';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const LEVELS: Record<LogLevel, number> = { debug: 20, info: 30, warn: 40, error: 50 };

/**
 * The CLI's logger, on stderr: one line per entry, `text` for people (time, level, message,
 * then key=value fields) or `json` for log shippers (pino's shape: level number, time in ms,
 * msg, and the fields).
 */
export function cliLogger(io: CliIo, format: LogFormat, level: LogLevel): Logger {
  const min = LEVELS[level];
  const write = (lvl: LogLevel) => (fields: object, message: string) => {
    if (LEVELS[lvl] < min) return;
    if (format === 'json') {
      io.err(
        `${JSON.stringify({ level: LEVELS[lvl], time: Date.now(), msg: message, ...plainFields(fields) })}\n`,
      );
      return;
    }
    io.err(`${new Date().toISOString()} ${lvl.padEnd(5)} ${textLine(message, fields)}\n`);
  };
  return { debug: write('debug'), info: write('info'), warn: write('warn'), error: write('error') };
}

export function parseLogOptions(
  command: string,
  values: Record<string, string | boolean | undefined>,
): { format: LogFormat; level: LogLevel } | string {
  const format = (values.log ?? 'text') as string;
  if (format !== 'text' && format !== 'json')
    return `offload ${command}: --log takes text or json; got ${JSON.stringify(format)}.`;
  const level: LogLevel = values.quiet ? 'warn' : values.verbose ? 'debug' : 'info';
  return { format, level };
}
