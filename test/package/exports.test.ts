import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, describe, it } from 'node:test';

/**
 * A consumer project outside the repo with `offload` linked into its node_modules, loading the
 * built package by name from CommonJS and from ESM, as an app would after `npm install offload`.
 */
describe('the built package, as a consumer loads it', () => {
  const root = resolve(__dirname, '../../..');
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'offload-consumer-'));
    execFileSync('mkdir', ['-p', join(dir, 'node_modules')]);
    symlinkSync(root, join(dir, 'node_modules', 'offload'), 'dir');
    writeFileSync(join(dir, 'package.json'), '{"name":"consumer","private":true}');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const run = (file: string, code: string) => {
    writeFileSync(join(dir, file), code);
    return execFileSync(process.execPath, [join(dir, file)], { cwd: dir, encoding: 'utf8' }).trim();
  };

  it('require("offload") from CommonJS', () => {
    const out = run(
      'cjs.cjs',
      `const { offload, MemoryBroker, NonRetryableError } = require('offload');
       const jobs = offload({ worker: false });
       console.log(typeof jobs, typeof jobs.background, jobs.core.broker instanceof MemoryBroker, new NonRetryableError('x').code);
       jobs.close();`,
    );
    assert.equal(out, 'function function true ERR_OFFLOAD_NON_RETRYABLE');
  });

  it('import { offload } from "offload" in ESM, sharing classes with the CommonJS build', () => {
    const out = run(
      'esm.mjs',
      `import { offload, MemoryBroker } from 'offload';
       import def from 'offload';
       import { createRequire } from 'node:module';
       const cjs = createRequire(import.meta.url)('offload');
       const jobs = offload({ worker: false });
       console.log(typeof offload, jobs.core.broker instanceof MemoryBroker, MemoryBroker === cjs.MemoryBroker, def.offload === offload);
       await jobs.close();`,
    );
    assert.equal(out, 'function true true true');
  });

  it('require("offload") loads no Nest, driver or validation package', () => {
    const out = run(
      'light.cjs',
      `require('offload');
       const loaded = Object.keys(require.cache).filter((f) => /node_modules[/](@nestjs|class-|ioredis|pg|better-sqlite3|reflect-metadata)[/]/.test(f));
       console.log(loaded.length);`,
    );
    assert.equal(out, '0');
  });

  it('offload/nest from CommonJS and from ESM: the same classes', () => {
    const cjs = run(
      'nest.cjs',
      `const nest = require('offload/nest');
       const m = nest.OffloadModule.forRoot({ worker: false });
       console.log(typeof nest.Background, typeof nest.JobContext, typeof nest.OffloadService, m.global, m.module === nest.OffloadModule);`,
    );
    assert.equal(cjs, 'function function function true true');
    const esm = run(
      'nest.mjs',
      `import { OffloadModule, Background } from 'offload/nest';
       import { createRequire } from 'node:module';
       const cjs = createRequire(import.meta.url)('offload/nest');
       console.log(OffloadModule === cjs.OffloadModule, Background === cjs.Background);`,
    );
    assert.equal(esm, 'true true');
  });

  it('offload/redis from CommonJS and ESM, with its Lua scripts', () => {
    const cjs = run(
      'redis.cjs',
      `const { RedisBroker } = require('offload/redis');
       const b = new RedisBroker({ prefix: 'offload-exports-test' });
       b.counts().then((c) => { console.log(typeof RedisBroker, c.queued); return b.close(); });`,
    );
    assert.equal(cjs, 'function 0');
    const esm = run(
      'redis.mjs',
      `import { RedisBroker } from 'offload/redis';
       import { createRequire } from 'node:module';
       console.log(RedisBroker === createRequire(import.meta.url)('offload/redis').RedisBroker);`,
    );
    assert.equal(esm, 'true');
  });

  it('exposes only the declared entry points', () => {
    assert.throws(
      () => run('deep.cjs', `require('offload/build/lib/worker.js')`),
      /ERR_PACKAGE_PATH_NOT_EXPORTED/,
    );
  });
});
