import { join } from 'node:path';
import { compare } from './compare.js';

/**
 * A NestJS 11 app (Express platform, global `ValidationPipe`, a class-validator DTO) alone (the
 * anchor) against the same app with `OffloadModule` on the memory broker and `@Background()` on
 * the route, whose in-process worker also runs every job. Prints a table, then one JSON line.
 */
export function nestBench(argv: string[]): Promise<number> {
  return compare(argv, {
    name: 'nest',
    request: {
      method: 'POST',
      path: '/reports',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ month: '2026-10' }),
    },
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
