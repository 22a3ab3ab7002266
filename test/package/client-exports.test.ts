import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';

/**
 * `offload/client` as a browser app's code reaches it: by name from ESM (a bundler or an import
 * map), with its types, and as plain browser ESM that pulls in nothing else.
 */
describe('offload/client, as a consumer loads it', () => {
  const root = resolve(__dirname, '../../..');
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'offload-client-consumer-'));
    mkdirSync(join(dir, 'node_modules'));
    symlinkSync(root, join(dir, 'node_modules', 'offload'), 'dir');
    writeFileSync(join(dir, 'package.json'), '{"name":"consumer","private":true,"type":"module"}');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('import { createClient } from "offload/client"', () => {
    writeFileSync(
      join(dir, 'client.mjs'),
      `import { createClient, OffloadError } from 'offload/client';
       const client = createClient({ base: 'http://127.0.0.1:1/jobs', EventSource: false });
       console.log(typeof client.submit, typeof client.follow, new OffloadError('x', { code: 'C' }).code);`,
    );
    const out = execFileSync(process.execPath, [join(dir, 'client.mjs')], { cwd: dir, encoding: 'utf8' });
    assert.equal(out.trim(), 'function function C');
  });

  it('is plain browser ESM: no require, no Node built-in, no other import', () => {
    const file = join(root, 'build/lib/client/index.mjs');
    const code = readFileSync(file, 'utf8');
    assert.doesNotMatch(code, /\brequire\s*\(/);
    assert.doesNotMatch(code, /\bimport\s*(?:[\w{}*\s,]+from\s*)?['"]/, 'no static import');
    assert.doesNotMatch(code, /\bimport\s*\(/, 'no dynamic import');
    assert.doesNotMatch(code, /\bprocess\.|\bBuffer\b|__dirname/);
    assert.match(code, /^export function createClient/m);
  });

  it('types resolve through the exports map (bundler resolution, DOM lib)', () => {
    writeFileSync(
      join(dir, 'app.ts'),
      `import { createClient, type JobHandle } from 'offload/client';
       const client = createClient({ base: '/jobs' });
       export async function go(): Promise<number> {
         const job: JobHandle<{ rows: number }> = await client.submit('/reports', { month: '2026-01' });
         job.onProgress((p) => p.percent.toFixed(0));
         return (await job.result).rows;
       }
       // @ts-expect-error: the result is typed
       export const wrong: Promise<string> = client.follow<{ rows: number }>('x').result;`,
    );
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'es2022',
          module: 'esnext',
          moduleResolution: 'bundler',
          lib: ['es2022', 'dom'],
          strict: true,
          noEmit: true,
          types: [],
        },
        files: ['app.ts'],
      }),
    );
    execFileSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '-p', dir], {
      cwd: dir,
      encoding: 'utf8',
    });
  });
});
