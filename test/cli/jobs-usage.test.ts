// `offload jobs` at its edges: bad usage (exit 2 with a message), help texts, a broker that is
// missing, wrong or unreachable (exit 3 within --timeout, no credentials printed), colour only on
// a terminal, and the real bin run as a child process. The per-broker behaviour: jobs.test.ts.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { SqliteBroker } from '../../adapters/sqlite/sqlite.broker.js';
import { jsonOf, runCli } from '../helpers/cli-io.js';

const dir = mkdtempSync(join(tmpdir(), 'offload-cli-usage-'));
const dbPath = join(dir, 'offload.db');
const url = `sqlite:${dbPath}`;
let broker: SqliteBroker;
const ids: string[] = [];

before(async () => {
  broker = new SqliteBroker({ path: dbPath });
  for (const task of ['first', 'second']) {
    ids.push((await broker.enqueue({ task, payload: { task }, owner: null, maxAttempts: 1 })).job.id);
  }
});
after(async () => {
  await broker.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Exit 2, nothing on stdout, the message on stderr, and the hint to the right help. */
async function usage(args: string[], message: RegExp, help = 'offload jobs --help', env = {}) {
  const run = await runCli(['jobs', ...args], { env });
  assert.equal(run.code, 2, `${args.join(' ')}: ${run.stderr}`);
  assert.equal(run.stdout, '', args.join(' '));
  assert.match(run.stderr, message, args.join(' '));
  assert.ok(run.stderr.includes(`Run \`${help}\` for usage.`), run.stderr);
  assert.doesNotMatch(run.stderr, /\n\s+at /, 'no stack trace');
}

describe('offload jobs: bad usage exits 2 with a message', () => {
  it('an unknown or missing sub-command', async () => {
    await usage(
      ['lsit', '--broker', url],
      /^offload jobs: unknown command "lsit"\. Commands: list, show, counts, cancel, retry, purge\./,
    );
    await usage(['--broker', url, 'list'], /offload jobs: name a command before --broker/);
    const bare = await runCli(['jobs']);
    assert.equal(bare.code, 2);
    assert.match(bare.stdout, /^Usage: offload jobs <command>/);
  });

  it('missing ids, extra arguments, unknown options', async () => {
    await usage(
      ['show', '--broker', url],
      /^offload jobs show: missing <id>: the job to show\./,
      'offload jobs show --help',
    );
    await usage(
      ['show', ids[0]!, ids[1]!, '--broker', url],
      /one <id> expected; got 2/,
      'offload jobs show --help',
    );
    await usage(
      ['cancel', '--broker', url],
      /^offload jobs cancel: missing <id>: the job\(s\) to cancel\./,
      'offload jobs cancel --help',
    );
    await usage(['retry', '--broker', url], /^offload jobs retry: missing <id>/, 'offload jobs retry --help');
    await usage(
      ['list', 'extra', '--broker', url],
      /unexpected argument "extra"/,
      'offload jobs list --help',
    );
    await usage(
      ['list', '--fo', '--broker', url],
      /^offload jobs list: .*'--fo'/,
      'offload jobs list --help',
    );
    await usage(
      ['show', ids[0]!, '--older-than', '1d', '--broker', url],
      /'--older-than'/,
      'offload jobs show --help',
    );
  });

  it('bad --limit, --status, --cursor, --timeout', async () => {
    for (const limit of ['0', 'ten', '-3', '2.5']) {
      await usage(
        ['list', `--limit=${limit}`, '--broker', url],
        /--limit takes a whole number ≥ 1/,
        'offload jobs list --help',
      );
    }
    await usage(
      ['list', '--limit', '1001', '--broker', url],
      /--limit takes at most 1000; got 1001/,
      'offload jobs list --help',
    );
    await usage(
      ['list', '--status', 'done', '--broker', url],
      /--status takes one of queued, running, succeeded, failed, canceled; got "done"/,
      'offload jobs list --help',
    );
    await usage(['list', '--task', '', '--broker', url], /--task is empty/, 'offload jobs list --help');
    await usage(
      ['list', '--cursor', 'bm9wZQ', '--broker', url],
      /offload jobs list: .*cursor is not valid/i,
      'offload jobs list --help',
    );
    await usage(
      ['counts', '--timeout', '0', '--broker', url],
      /--timeout must be more than 0/,
      'offload jobs counts --help',
    );
    await usage(
      ['counts', '--timeout', 'soon', '--broker', url],
      /--timeout takes seconds/,
      'offload jobs counts --help',
    );
  });

  it('purge without --older-than, or with a duration that has no unit', async () => {
    await usage(
      ['purge', '--broker', url],
      /^offload jobs purge: missing --older-than <duration>/,
      'offload jobs purge --help',
    );
    for (const value of ['7', 'week', '-1d', '']) {
      await usage(
        ['purge', `--older-than=${value}`, '--broker', url],
        /--older-than takes a duration with a unit/,
        'offload jobs purge --help',
      );
    }
    assert.equal((await broker.counts()).queued, 2, 'nothing was touched');
  });

  it('no broker, a memory: broker, or a URL of no known scheme', async () => {
    await usage(
      ['list'],
      /offload jobs list: no broker: pass --broker <url> or set BROKER_URL/,
      'offload jobs list --help',
    );
    await usage(
      ['list', '--broker', 'memory:'],
      /a memory: broker lives inside one process/,
      'offload jobs list --help',
    );
    await usage(
      ['list', '--broker', 'amqp://me:secret@host/x'],
      /--broker: Unknown broker URL "amqp:\/\/\*\*\*@host\/x"/,
      'offload jobs list --help',
    );
    const viaEnv = await runCli(['jobs', 'list', '--json'], { env: { BROKER_URL: url } });
    assert.equal(viaEnv.code, 0, viaEnv.stderr);
    assert.equal(jsonOf(viaEnv).jobs.length, 2, 'BROKER_URL stands in for --broker');
  });
});

describe('offload jobs: help', () => {
  it('offload jobs --help lists the sub-commands and common options', async () => {
    const run = await runCli(['jobs', '--help']);
    assert.equal(run.code, 0);
    for (const sub of [
      'list',
      'show <id>',
      'counts',
      'cancel <id...>',
      'retry <id...>',
      'purge --older-than <d>',
    ]) {
      assert.match(
        run.stdout,
        new RegExp(`^  ${sub.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s+\\S`, 'm'),
        sub,
      );
    }
    assert.match(run.stdout, /--broker <url>/);
    assert.match(run.stdout, /--json/);
    assert.match(run.stdout, /--timeout <s>/);
    assert.match(run.stdout, /Exit codes: 0 done, 1 nothing to act on/);
    const main = await runCli(['--help']);
    assert.match(main.stdout, /^ {2}jobs\s+inspect and manage jobs/m);
  });

  it('each sub-command has its own help, from --help, -h or `offload jobs help <command>`', async () => {
    const list = await runCli(['jobs', 'list', '--help']);
    assert.equal(list.code, 0);
    assert.match(list.stdout, /^Usage: offload jobs list \[--status s\]/);
    assert.match(list.stdout, /--cursor <c>/);
    assert.match(list.stdout, /Exit codes:/);
    const purge = await runCli(['jobs', 'purge', '-h']);
    assert.match(purge.stdout, /^Usage: offload jobs purge --older-than <duration>/);
    const viaHelp = await runCli(['jobs', 'help', 'purge']);
    assert.equal(viaHelp.code, 0);
    assert.equal(viaHelp.stdout, purge.stdout);
    for (const sub of ['show', 'counts', 'cancel', 'retry']) {
      assert.match(
        (await runCli(['jobs', sub, '--help'])).stdout,
        new RegExp(`^Usage: offload jobs ${sub}`),
        sub,
      );
    }
  });
});

describe('offload jobs: a broker that cannot be used exits 3', () => {
  it('Redis that refuses connections: exit 3 within --timeout, no credentials in the message', async () => {
    const run = await runCli([
      'jobs',
      'list',
      '--timeout',
      '1',
      '--broker',
      'redis://me:hunter2@127.0.0.1:1',
    ]);
    assert.equal(run.code, 3, run.stderr);
    assert.equal(
      run.stderr,
      'offload jobs list: the broker redis://***@127.0.0.1:1 did not answer within 1 s (is it running and reachable?).\n',
    );
    assert.equal(run.stdout, '');
    assert.ok(run.ms < 3000, `took ${Math.round(run.ms)} ms`);
  });

  it('PostgreSQL on a closed port: exit 3 with the driver reason, no credentials', async () => {
    const run = await runCli(['jobs', 'counts', '--broker', 'postgres://postgres:hunter2@127.0.0.1:1/test']);
    assert.equal(run.code, 3, run.stderr);
    assert.match(
      run.stderr,
      /^offload jobs counts: the broker postgres:\/\/\*\*\*@127\.0\.0\.1:1\/test failed: .*ECONNREFUSED/,
    );
    assert.doesNotMatch(run.stderr, /hunter2/);
    assert.ok(run.ms < 5000, `took ${Math.round(run.ms)} ms`);
  });

  it('a server that accepts and never answers: exit 3 at --timeout, for each command', async () => {
    const sockets = new Set<Socket>();
    const silent: Server = createServer((s) => {
      sockets.add(s);
      s.on('error', () => {});
    });
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as { port: number }).port;
    try {
      for (const args of [
        ['cancel', ids[0]!],
        ['purge', '--older-than', '0'],
      ]) {
        const run = await runCli([
          'jobs',
          ...args,
          '--timeout',
          '0.5',
          '--broker',
          `postgres://postgres@127.0.0.1:${port}/test`,
        ]);
        assert.equal(run.code, 3, `${args[0]}: ${run.stderr}`);
        assert.match(run.stderr, /(did not answer within 0\.5 s|failed: .*timeout)/i);
        assert.ok(run.ms < 2500, `${args[0]} took ${Math.round(run.ms)} ms`);
      }
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it('a sqlite: path with no database file: exit 3, and no file is created', async () => {
    const missing = join(dir, 'nope', 'typo.db');
    const run = await runCli(['jobs', 'list', '--broker', `sqlite:${missing}`]);
    assert.equal(run.code, 3);
    assert.equal(
      run.stderr,
      `offload jobs list: no SQLite database at ${missing} (the app creates it on first use).\n`,
    );
    assert.equal(existsSync(missing), false);
  });
});

const ESC = String.fromCharCode(27);

describe('offload jobs: colour', () => {
  it('colours statuses on a terminal only, and never with NO_COLOR', async () => {
    const tty = await runCli(['jobs', 'list', '--broker', url], { isTTY: true });
    assert.equal(tty.code, 0);
    assert.ok(tty.stdout.includes(`${ESC}[34mqueued`), tty.stdout);
    // Padding is measured without the codes: the columns after STATUS still line up.
    const plain = tty.stdout.replace(new RegExp(`${ESC}\\[\\d+m`, 'g'), '');
    const [head, ...rows] = plain.trimEnd().split('\n');
    const at = head!.indexOf('CREATED');
    for (const row of rows) assert.match(row.slice(at), /^\d{4}-/);
    const noColour = await runCli(['jobs', 'list', '--broker', url], { isTTY: true, env: { NO_COLOR: '1' } });
    assert.ok(!noColour.stdout.includes(ESC));
    assert.equal(noColour.stdout, plain);
  });
});

describe('offload jobs: the real bin', () => {
  const bin = join(__dirname, '../../lib/cli/main.js');
  const exec = (args: string[]) =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      const env = { ...process.env };
      delete env.BROKER_URL;
      execFile(process.execPath, [bin, ...args], { env, timeout: 20_000 }, (err, stdout, stderr) => {
        resolve({ code: err ? ((err as { code?: number }).code ?? -1) : 0, stdout, stderr });
      });
    });

  it('node build/lib/cli/main.js jobs list / show / counts on a SQLite file', async () => {
    const list = await exec(['jobs', 'list', '--broker', url]);
    assert.equal(list.code, 0, list.stderr);
    assert.equal(list.stderr, '');
    assert.match(list.stdout, /^ID\s+TASK\s+STATUS/);
    for (const id of ids) assert.match(list.stdout, new RegExp(`^${id}\\s+(first|second)\\s+queued\\s`, 'm'));

    const counts = await exec(['jobs', 'counts', '--json', '--broker', url]);
    assert.equal(counts.code, 0, counts.stderr);
    assert.equal(JSON.parse(counts.stdout).queued, 2);

    const unknown = await exec(['jobs', 'show', '0b5c1b52-4f3a-4d47-9a49-5f2f0e1f6b0e', '--broker', url]);
    assert.equal(unknown.code, 1);
    assert.equal(unknown.stderr, 'offload jobs show: no job 0b5c1b52-4f3a-4d47-9a49-5f2f0e1f6b0e.\n');

    const noBroker = await exec(['jobs', 'list']);
    assert.equal(noBroker.code, 2);
    assert.match(noBroker.stderr, /no broker/);
  });
});
