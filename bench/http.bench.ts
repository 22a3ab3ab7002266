import { join } from 'node:path';
import { compare, REPORT_REQUEST } from './compare.js';

/**
 * Express 5 alone (the anchor) against the same route marked background with offload on the
 * memory broker, whose in-process worker also runs every job. Same request, same body, same
 * `express.json()` on both sides. Prints a table, then one JSON line (the last line).
 */
export function httpBench(argv: string[]): Promise<number> {
  return compare(argv, {
    name: 'http',
    request: REPORT_REQUEST,
    anchor: {
      label: 'express',
      title: 'express (anchor, 200)',
      file: join(__dirname, 'servers/express-bare.server.js'),
      status: 200,
    },
    offload: {
      label: 'offload',
      title: 'offload (submit 202 + job run)',
      file: join(__dirname, 'servers/express-offload.server.js'),
      status: 202,
    },
  });
}
