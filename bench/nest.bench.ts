import { join } from 'node:path';
import { compare, REPORT_REQUEST } from './compare.js';

/**
 * A NestJS 11 app (Express platform, global `ValidationPipe`, a class-validator DTO) alone (the
 * anchor) against the same app with `OffloadModule` on the memory broker and `@Background()` on
 * the route, whose in-process worker also runs every job. Prints a table, then one JSON line.
 */
export function nestBench(argv: string[]): Promise<number> {
  return compare(argv, {
    name: 'nest',
    request: REPORT_REQUEST,
    anchor: {
      label: 'nest',
      title: 'nest (anchor, 200)',
      file: join(__dirname, 'servers/nest-bare.server.js'),
      status: 200,
    },
    offload: {
      label: 'offload',
      title: 'offload (submit 202 + job run)',
      file: join(__dirname, 'servers/nest-offload.server.js'),
      status: 202,
    },
  });
}
