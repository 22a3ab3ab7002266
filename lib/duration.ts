import { ConfigError } from './errors.js';

/** Milliseconds, or a string such as `'500ms'`, `'30s'`, `'10m'`, `'2h'`, `'1d'`. */
export type Duration = number | string;

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Resolves after `ms`, on a timer that does not keep the process alive: the bound of a wait
 * raced against something that may never settle (a broker that does not answer).
 */
export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Parses a duration at start-up; a bad one is a ConfigError naming the option. */
export function toMs(value: Duration, option: string): number {
  if (typeof value === 'number') {
    if (Number.isFinite(value) && value >= 0) return value;
  } else if (typeof value === 'string') {
    const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/.exec(value);
    if (m) return Math.round(Number(m[1]) * UNITS[m[2]!]!);
  }
  throw new ConfigError(
    `${option} must be a non-negative number of milliseconds or a string like "30s" or "10m"; got ${JSON.stringify(value)}.`,
  );
}
