import type { CliIo } from './common.js';

/** One column of a plain-text table. */
export interface Column<Row> {
  header: string;
  value(row: Row): string;
  /** Numbers read better right-aligned. @defaultValue 'left' */
  align?: 'left' | 'right';
  /** Wraps the padded cell (colour codes); its width is measured on the plain text. */
  style?(row: Row, cell: string): string;
}

/**
 * Rows under an upper-case header, columns two spaces apart and aligned, no trailing spaces.
 * Plain text a script could cut, and the same on a terminal except for `style`.
 */
export function table<Row>(rows: readonly Row[], columns: readonly Column<Row>[]): string {
  const cells = rows.map((row) => columns.map((c) => c.value(row)));
  const widths = columns.map((c, i) => Math.max(c.header.length, ...cells.map((r) => r[i]!.length)));
  const line = (texts: string[], row: Row | null) =>
    texts
      .map((text, i) => {
        const column = columns[i]!;
        const last = i === columns.length - 1;
        const padded =
          column.align === 'right' ? text.padStart(widths[i]!) : last ? text : text.padEnd(widths[i]!);
        return row && column.style ? column.style(row, padded) : padded;
      })
      .join('  ')
      .trimEnd();
  return [
    line(
      columns.map((c) => c.header),
      null,
    ),
    ...rows.map((row, i) => line(cells[i]!, row)),
  ]
    .map((l) => `${l}\n`)
    .join('');
}

/** Label/value lines with the labels padded to one width. */
export function fields(pairs: readonly (readonly [string, string])[], indent = ''): string {
  const width = Math.max(...pairs.map(([label]) => label.length));
  return pairs.map(([label, value]) => `${indent}${label.padEnd(width)}  ${value}\n`).join('');
}

/** A time for people: UTC, ISO 8601, to the second (`2024-05-01T12:00:03Z`); `-` for "not yet". */
export function time(ms: number | null): string {
  return ms === null ? '-' : new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** A time for scripts: full ISO 8601 with milliseconds, or null. */
export function isoTime(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

/** A duration for people: `850ms`, `4.2s`, `3m 05s`, `2h 10m`, `3d 4h`. */
export function duration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  const totalS = Math.round(s);
  const [d, h, m, sec] = [
    Math.floor(totalS / 86_400),
    Math.floor(totalS / 3600) % 24,
    Math.floor(totalS / 60) % 60,
    totalS % 60,
  ];
  if (d > 0) return `${d}d ${h}h`;
  if (h > 0) return `${h}h ${String(m).padStart(2, '0')}m`;
  return `${m}m ${String(sec).padStart(2, '0')}s`;
}

const CODES = { red: 31, green: 32, yellow: 33, blue: 34, dim: 2, bold: 1 } as const;
export type Colour = keyof typeof CODES;

/**
 * Colour for a terminal only: never when stdout is piped or redirected, nor with `NO_COLOR`
 * set (no-color.org), so what a script reads is plain text.
 */
export function painter(io: CliIo): (colour: Colour | null, text: string) => string {
  const on = io.isTTY && !io.env.NO_COLOR && io.env.TERM !== 'dumb';
  return (colour, text) => (on && colour ? `\u001b[${CODES[colour]}m${text}\u001b[0m` : text);
}
