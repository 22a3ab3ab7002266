import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Broker, CancelOutcome } from '../broker.js';
import { redact, resolveBroker } from '../broker-url.js';
import { toMs } from '../duration.js';
import { BadRequestError, ConfigError, OffloadError } from '../errors.js';
import { isJobId, JOB_STATUSES, type JobRecord, type JobStatus, type Json } from '../job.js';
import type { Command } from './command.js';
import {
  brokerUrl,
  CliError,
  type CliIo,
  EXIT,
  intOption,
  parse,
  secondsOption,
  UsageError,
} from './common.js';
import { type Colour, duration, fields, isoTime, painter, table, time } from './format.js';

const DEFAULT_TIMEOUT_S = 5;
const DEFAULT_LIMIT = 20;
const MAX_LIMIT = 1000;

const COMMON_OPTIONS = {
  broker: { type: 'string' },
  json: { type: 'boolean' },
  timeout: { type: 'string' },
} as const;

const COMMON_HELP = `Options (every jobs command):
  --broker <url>   redis://…, postgres://…[?schema=name], sqlite:path (default: BROKER_URL)
  --json           print one JSON document on stdout, for scripts; errors stay on stderr
  --timeout <s>    give up on a broker that does not answer after s seconds (default ${DEFAULT_TIMEOUT_S})`;

const EXITS_HELP = `Exit codes: 0 done, 1 nothing to act on (unknown job, already finished, not retryable),
2 bad usage, 3 broker unreachable.`;

type Values = Record<string, string | boolean | undefined>;

/** What a sub-command gets: its parsed arguments, where to write, and the broker (opened on first use). */
interface Context {
  name: string;
  values: Values;
  positionals: string[];
  io: CliIo;
  json: boolean;
  broker: BrokerSession;
  paint: ReturnType<typeof painter>;
}

interface Subcommand {
  name: string;
  /** The line in `offload jobs --help`. */
  synopsis: string;
  summary: string;
  help: string;
  options: Record<string, { type: 'string' | 'boolean' }>;
  run(ctx: Context): Promise<number>;
}

// ---------------------------------------------------------------------------------------------
// list

const LIST_HELP = `Usage: offload jobs list [--status s] [--task t] [--owner o] [--limit n] [--cursor c] [options]

Lists jobs, newest first, one page at a time. Times are UTC (ISO 8601).

  --status <s>     only jobs in this status: ${JOB_STATUSES.join(', ')}
  --task <name>    only jobs of this task
  --owner <o>      only jobs submitted by this owner (the app's owner(req) value)
  --limit <n>      jobs per page, 1 to ${MAX_LIMIT} (default ${DEFAULT_LIMIT})
  --cursor <c>     the page after the one that printed this cursor

When more jobs follow, the last line is the command for the next page (with --json, the
document's "nextCursor"; null on the last page).

${COMMON_HELP}

Examples:
  offload jobs list --status failed --task report
  offload jobs list --json --limit 100 | jq -r '.jobs[].id'
`;

async function list(ctx: Context): Promise<number> {
  noPositionals(ctx);
  const { values, io } = ctx;
  const status = values.status as string | undefined;
  if (status !== undefined && !JOB_STATUSES.includes(status as JobStatus)) {
    throw new UsageError(
      `offload jobs list: --status takes one of ${JOB_STATUSES.join(', ')}; got ${JSON.stringify(status)}.`,
    );
  }
  const limit = intOption('jobs list', 'limit', values.limit as string | undefined, 1) ?? DEFAULT_LIMIT;
  if (limit > MAX_LIMIT) {
    throw new UsageError(`offload jobs list: --limit takes at most ${MAX_LIMIT}; got ${limit}.`);
  }
  const task = nonEmpty(ctx, 'task');
  const owner = nonEmpty(ctx, 'owner');
  const cursor = nonEmpty(ctx, 'cursor');

  const page = await ctx.broker.call((b) =>
    b.list({
      ...(owner === undefined ? {} : { owner }),
      ...(status === undefined ? {} : { status: status as JobStatus }),
      ...(task === undefined ? {} : { task }),
      limit,
      cursor: cursor ?? null,
    }),
  );

  if (ctx.json) {
    io.out(`${JSON.stringify({ jobs: page.jobs.map(jobJson), nextCursor: page.nextCursor })}\n`);
    return EXIT.ok;
  }
  if (page.jobs.length === 0) {
    const filters = [status && `status ${status}`, task && `task ${task}`, owner && `owner ${owner}`].filter(
      Boolean,
    );
    io.out(
      cursor ? 'No more jobs.\n' : filters.length ? `No jobs with ${filters.join(', ')}.\n` : 'No jobs.\n',
    );
    return EXIT.ok;
  }
  io.out(
    table(page.jobs, [
      { header: 'ID', value: (j) => j.id },
      { header: 'TASK', value: (j) => j.task },
      {
        header: 'STATUS',
        value: (j) => j.status,
        style: (j, cell) => ctx.paint(STATUS_COLOUR[j.status], cell),
      },
      {
        header: 'PROGRESS',
        value: (j) => (j.progress ? `${Math.round(j.progress.percent)}%` : '-'),
        align: 'right',
      },
      { header: 'ATTEMPTS', value: (j) => `${j.attempts}/${j.maxAttempts}`, align: 'right' },
      { header: 'CREATED', value: (j) => time(j.createdAt) },
      { header: 'FINISHED', value: (j) => time(j.finishedAt) },
    ]),
  );
  if (page.nextCursor) {
    const again = ['offload jobs list'];
    for (const name of ['status', 'task', 'owner', 'limit'] as const) {
      if (values[name] !== undefined) again.push(`--${name} ${shellWord(String(values[name]))}`);
    }
    // The URL as given, unless it holds credentials: those are not echoed to a terminal or a log.
    const broker = values.broker as string | undefined;
    if (broker !== undefined)
      again.push(`--broker ${redact(broker) === broker ? shellWord(broker) : '<url>'}`);
    again.push(`--cursor ${page.nextCursor}`);
    io.out(`\nMore jobs: ${again.join(' ')}\n`);
  }
  return EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// show

const SHOW_HELP = `Usage: offload jobs show <id> [options]

Prints one job in full: status, attempts, timings, progress, payload, result or error, and
its log lines. Times are UTC (ISO 8601).

An id that is unknown, purged, or not a job id at all (ids are UUIDs) prints "no job <id>"
on stderr and exits 1, the same for each: a script tells "not there" from bad usage (2)
and from an unreachable broker (3).

${COMMON_HELP}

Examples:
  offload jobs show 0b5c1b52-4f3a-4d47-9a49-5f2f0e1f6b0e
  offload jobs show 0b5c1b52-4f3a-4d47-9a49-5f2f0e1f6b0e --json | jq .error
`;

async function show(ctx: Context): Promise<number> {
  const id = oneId(ctx);
  const job = isJobId(id) ? await ctx.broker.call((b) => b.get(id)) : null;
  if (!job) throw new CliError(`no job ${id}${isJobId(id) ? '' : ' (job ids are UUIDs)'}.`, EXIT.failed);
  if (ctx.json) {
    ctx.io.out(`${JSON.stringify(jobJson(job))}\n`);
    return EXIT.ok;
  }
  ctx.io.out(describeJob(job, ctx.paint));
  return EXIT.ok;
}

function describeJob(job: JobRecord, paint: Context['paint']): string {
  const rows: [string, string][] = [
    ['id', job.id],
    ['task', job.task],
    [
      'status',
      paint(STATUS_COLOUR[job.status], job.status) + (job.cancelRequested ? ' (cancel requested)' : ''),
    ],
    ['owner', job.owner ?? '-'],
    ['attempts', `${job.attempts} of ${job.maxAttempts}`],
  ];
  if (job.progress) {
    rows.push([
      'progress',
      `${job.progress.percent}%${job.progress.message ? `  ${job.progress.message}` : ''}`,
    ]);
  }
  rows.push(['created', time(job.createdAt)]);
  if (job.runAt !== job.createdAt && (job.status === 'queued' || job.startedAt === null)) {
    rows.push(['runs at', time(job.runAt)]);
  }
  if (job.startedAt !== null) {
    rows.push([
      'started',
      `${time(job.startedAt)}  (${duration(job.startedAt - job.createdAt)} after created)`,
    ]);
  }
  if (job.finishedAt !== null) {
    const ran = job.startedAt === null ? '' : `  (ran ${duration(job.finishedAt - job.startedAt)})`;
    rows.push(['finished', `${time(job.finishedAt)}${ran}`]);
  } else if (job.status === 'running' && job.startedAt !== null) {
    rows.push(['running', `for ${duration(Date.now() - job.startedAt)}`]);
  }
  if (job.expireAt !== null) rows.push(['expires', `${time(job.expireAt)}  (if not started by then)`]);
  if (job.timeoutMs !== null) rows.push(['time limit', duration(job.timeoutMs)]);
  if (job.idempotencyKey) rows.push(['idempotency key', job.idempotencyKey]);

  let out = fields(rows);
  const section = (title: string, body: string) => {
    out += `\n${title}\n${body.replace(/^/gm, '  ').replace(/[ ]+$/gm, '')}\n`;
  };
  section('Payload', pretty(job.payload));
  if (job.progress?.data !== undefined) section('Progress data', pretty(job.progress.data));
  if (job.status === 'succeeded') section('Result', pretty(job.result));
  if (job.error) {
    const head = job.error.code ? `${job.error.code}: ${job.error.message}` : job.error.message;
    section(
      job.status === 'failed' ? 'Error' : 'Last error',
      job.error.stack ? `${head}\n${job.error.stack}` : head,
    );
  }
  section(`Logs (${job.logs.length})`, job.logs.length ? job.logs.join('\n') : '(none)');
  return out;
}

// ---------------------------------------------------------------------------------------------
// counts

const COUNTS_HELP = `Usage: offload jobs counts [options]

Prints how many jobs the broker holds in each status (every owner and task), and the total.
With --json: {"queued":n,"running":n,"succeeded":n,"failed":n,"canceled":n}.

${COMMON_HELP}

Examples:
  offload jobs counts
  test "$(offload jobs counts --json | jq .failed)" -eq 0 || echo "failed jobs to look at"
`;

async function counts(ctx: Context): Promise<number> {
  noPositionals(ctx);
  const c = await ctx.broker.call((b) => b.counts());
  const ordered = Object.fromEntries(JOB_STATUSES.map((s) => [s, c[s] ?? 0])) as Record<JobStatus, number>;
  if (ctx.json) {
    ctx.io.out(`${JSON.stringify(ordered)}\n`);
    return EXIT.ok;
  }
  const total = JOB_STATUSES.reduce((sum, s) => sum + ordered[s], 0);
  const width = String(total).length;
  const line = (label: string, n: number, colour: Colour | null) =>
    `${ctx.paint(colour, label.padEnd(9))}  ${String(n).padStart(width)}\n`;
  ctx.io.out(
    JOB_STATUSES.map((s) => line(s, ordered[s], STATUS_COLOUR[s])).join('') + line('total', total, null),
  );
  return EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// cancel

const CANCEL_HELP = `Usage: offload jobs cancel <id...> [options]

Cancels each job: a queued job ends canceled at once; a running job's worker is told (its
AbortSignal fires) and the job ends canceled when the handler stops. Prints one line per id.

Exits 1 when any id was not found or its job had already finished (the others are still
canceled). With --json: {"results":[{"id","outcome","status"}]}, outcome one of canceled,
requested, finished, not-found.

${COMMON_HELP}

Examples:
  offload jobs cancel 0b5c1b52-4f3a-4d47-9a49-5f2f0e1f6b0e
  offload jobs list --status queued --task import --json | jq -r '.jobs[].id' | xargs offload jobs cancel
`;

async function cancel(ctx: Context): Promise<number> {
  const ids = someIds(ctx, 'cancel');
  const results: { id: string; outcome: CancelOutcome; status: JobStatus | null }[] = [];
  for (const id of ids) {
    const { outcome, job } = isJobId(id)
      ? await ctx.broker.call((b) => b.cancel(id))
      : { outcome: 'not-found' as const, job: null };
    results.push({ id, outcome, status: job?.status ?? null });
  }
  const failed = results.filter((r) => r.outcome === 'finished' || r.outcome === 'not-found').length;
  if (ctx.json) {
    ctx.io.out(`${JSON.stringify({ results })}\n`);
  } else {
    for (const r of results) {
      const text =
        r.outcome === 'canceled'
          ? ctx.paint('yellow', 'canceled')
          : r.outcome === 'requested'
            ? 'cancel requested: running, its worker stops it and the job ends canceled'
            : r.outcome === 'finished'
              ? `not canceled: it already finished (${r.status})`
              : 'not canceled: no such job';
      ctx.io.out(`${r.id}: ${text}\n`);
    }
  }
  if (failed === 0) return EXIT.ok;
  ctx.io.err(`offload jobs cancel: ${failed} of ${results.length} could not be canceled.\n`);
  return EXIT.failed;
}

// ---------------------------------------------------------------------------------------------
// retry

const RETRY_HELP = `Usage: offload jobs retry <id...> [options]

Queues each failed or canceled job again as a fresh run (attempts reset, same id, same
payload); a worker picks it up as usual. Prints one line per id.

Exits 1 when any id could not be retried: not found, or not failed or canceled (a queued,
running or succeeded job is left alone). With --json: {"results":[{"id","outcome","status"}]},
outcome one of retried, not-found, not-retryable.

${COMMON_HELP}

Examples:
  offload jobs retry 0b5c1b52-4f3a-4d47-9a49-5f2f0e1f6b0e
  offload jobs list --status failed --task sync --json | jq -r '.jobs[].id' | xargs offload jobs retry
`;

type RetryOutcome = 'retried' | 'not-found' | 'not-retryable';

async function retry(ctx: Context): Promise<number> {
  const ids = someIds(ctx, 'retry');
  const results: { id: string; outcome: RetryOutcome; status: JobStatus | null }[] = [];
  for (const id of ids) {
    if (!isJobId(id)) {
      results.push({ id, outcome: 'not-found', status: null });
      continue;
    }
    const job = await ctx.broker.call((b) => b.retry(id));
    if (job) {
      results.push({ id, outcome: 'retried', status: job.status });
      continue;
    }
    // retry() says only "no": ask why, for the message.
    const current = await ctx.broker.call((b) => b.get(id));
    results.push({ id, outcome: current ? 'not-retryable' : 'not-found', status: current?.status ?? null });
  }
  const failed = results.filter((r) => r.outcome !== 'retried').length;
  if (ctx.json) {
    ctx.io.out(`${JSON.stringify({ results })}\n`);
  } else {
    for (const r of results) {
      const text =
        r.outcome === 'retried'
          ? `${ctx.paint('blue', r.status ?? 'queued')} again`
          : r.outcome === 'not-found'
            ? 'not retried: no such job'
            : `not retried: it is ${r.status}; only failed or canceled jobs can be retried`;
      ctx.io.out(`${r.id}: ${text}\n`);
    }
  }
  if (failed === 0) return EXIT.ok;
  ctx.io.err(`offload jobs retry: ${failed} of ${results.length} could not be retried.\n`);
  return EXIT.failed;
}

// ---------------------------------------------------------------------------------------------
// purge

const PURGE_HELP = `Usage: offload jobs purge --older-than <duration> [options]

Deletes finished jobs (succeeded, failed, canceled), with their events and idempotency keys,
that finished more than <duration> ago. Queued and running jobs are never purged. Prints how
many were deleted; 0 is not an error (exit 0), so it can run from cron.

  --older-than <d>   7d, 24h, 30m, 90s, 500ms; 0 deletes every finished job. Required: there
                     is no purge without it.

With --json: {"purged":n,"before":"<ISO time>"} ("before" is null for --older-than 0).

${COMMON_HELP}

Examples:
  offload jobs purge --older-than 7d
  0 3 * * *  BROKER_URL=redis://127.0.0.1:6379 offload jobs purge --older-than 30d   # crontab
`;

async function purge(ctx: Context): Promise<number> {
  noPositionals(ctx);
  const text = ctx.values['older-than'] as string | undefined;
  if (text === undefined) {
    throw new UsageError(
      'offload jobs purge: missing --older-than <duration> (e.g. 7d, 24h; 0 purges every finished job).',
    );
  }
  let ms: number;
  try {
    ms = /^\s*0+(\.0*)?\s*$/.test(text) ? 0 : toMs(text, '--older-than');
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    throw new UsageError(
      `offload jobs purge: --older-than takes a duration with a unit, like 7d, 24h, 30m or 90s (or 0 for every finished job); got ${JSON.stringify(text)}.`,
    );
  }
  // 0 means every finished job, whatever the broker's clock says "now" is.
  const before = ms === 0 ? Number.MAX_SAFE_INTEGER : Date.now() - ms;
  const purged = await ctx.broker.call((b) => b.purge(before));
  if (ctx.json) {
    ctx.io.out(`${JSON.stringify({ purged, before: ms === 0 ? null : isoTime(before) })}\n`);
  } else {
    const noun = purged === 1 ? 'job' : 'jobs';
    ctx.io.out(
      ms === 0
        ? `Purged ${purged} finished ${noun} (every finished job).\n`
        : `Purged ${purged} ${noun} that finished before ${time(before)} (older than ${text.trim()}).\n`,
    );
  }
  return EXIT.ok;
}

// ---------------------------------------------------------------------------------------------
// the command

const SUBCOMMANDS: readonly Subcommand[] = [
  {
    name: 'list',
    synopsis: 'list',
    summary: 'jobs newest first, filtered by status, task or owner, a page at a time',
    help: LIST_HELP,
    options: {
      status: { type: 'string' },
      task: { type: 'string' },
      owner: { type: 'string' },
      limit: { type: 'string' },
      cursor: { type: 'string' },
    },
    run: list,
  },
  {
    name: 'show',
    synopsis: 'show <id>',
    summary: 'one job in full: payload, progress, logs, result or error, timings',
    help: SHOW_HELP,
    options: {},
    run: show,
  },
  {
    name: 'counts',
    synopsis: 'counts',
    summary: 'how many jobs are in each status',
    help: COUNTS_HELP,
    options: {},
    run: counts,
  },
  {
    name: 'cancel',
    synopsis: 'cancel <id...>',
    summary: 'cancel queued jobs; tell the workers of running ones to stop',
    help: CANCEL_HELP,
    options: {},
    run: cancel,
  },
  {
    name: 'retry',
    synopsis: 'retry <id...>',
    summary: 'queue failed or canceled jobs again (attempts reset)',
    help: RETRY_HELP,
    options: {},
    run: retry,
  },
  {
    name: 'purge',
    synopsis: 'purge --older-than <d>',
    summary: 'delete jobs that finished more than <d> ago (7d, 24h; 0 = all)',
    help: PURGE_HELP,
    options: { 'older-than': { type: 'string' } },
    run: purge,
  },
];

const synopsisWidth = Math.max(...SUBCOMMANDS.map((s) => s.synopsis.length));

const HELP = `Usage: offload jobs <command> [options]

Inspects and manages the jobs in a broker, without writing code.

Commands:
${SUBCOMMANDS.map((s) => `  ${s.synopsis.padEnd(synopsisWidth)}  ${s.summary}`).join('\n')}

${COMMON_HELP}

Run \`offload jobs <command> --help\` for a command's options and examples.

${EXITS_HELP}
`;

export const jobsCommand: Command = {
  name: 'jobs',
  summary: 'inspect and manage jobs: list, show, counts, cancel, retry, purge',
  help: HELP,
  helpFor(args) {
    const sub = SUBCOMMANDS.find((s) => s.name === args[0]);
    return sub ? `${sub.help}\n${EXITS_HELP}\n` : HELP;
  },
  run: runJobs,
};

async function runJobs(args: string[], io: CliIo): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined) {
    io.out(HELP);
    return EXIT.usage;
  }
  if (name === 'help') {
    io.out(jobsCommand.helpFor!(rest));
    return EXIT.ok;
  }
  const sub = SUBCOMMANDS.find((s) => s.name === name);
  if (!sub) {
    const what = name.startsWith('-') ? `name a command before ${name}` : `unknown command "${name}"`;
    io.err(
      `offload jobs: ${what}. Commands: ${SUBCOMMANDS.map((s) => s.name).join(', ')}.\n` +
        'Run `offload jobs --help` for usage.\n',
    );
    return EXIT.usage;
  }
  let session: BrokerSession | null = null;
  try {
    const command = `jobs ${sub.name}`;
    const { values, positionals } = parse(command, rest, { ...COMMON_OPTIONS, ...sub.options });
    const timeoutMs = secondsOption(command, 'timeout', values.timeout as string | undefined);
    if (timeoutMs === 0) throw new UsageError(`offload ${command}: --timeout must be more than 0 seconds.`);
    const url = brokerUrl(command, values.broker as string | undefined, io, true);
    session = new BrokerSession(command, url, timeoutMs ?? DEFAULT_TIMEOUT_S * 1000);
    return await sub.run({
      name: sub.name,
      values,
      positionals,
      io,
      json: values.json === true,
      broker: session,
      paint: painter(io),
    });
  } catch (err) {
    if (err instanceof UsageError) {
      io.err(`${err.message}\nRun \`offload jobs ${sub.name} --help\` for usage.\n`);
      return EXIT.usage;
    }
    if (err instanceof CliError) {
      io.err(`offload jobs ${sub.name}: ${err.message}\n`);
      return err.exitCode;
    }
    throw err;
  } finally {
    await session?.close();
  }
}

// ---------------------------------------------------------------------------------------------
// the broker, bounded

/**
 * The broker behind `--broker`, opened on first use. Every call is bounded by `--timeout`: a
 * driver that retries forever (ioredis queues commands until Redis comes back) must not hang a
 * command a script or a cron job is waiting on. Failures become exit 3 with a one-line message
 * that names the broker without its credentials.
 */
class BrokerSession {
  private broker: Broker | null = null;
  private timedOut = false;

  constructor(
    private readonly command: string,
    private readonly url: string,
    private readonly timeoutMs: number,
  ) {}

  private open(): Broker {
    if (this.broker) return this.broker;
    const scheme = /^([a-z][a-z0-9+.-]*):/i.exec(this.url)?.[1]?.toLowerCase();
    if (scheme === 'memory') {
      throw new UsageError(
        `offload ${this.command}: a memory: broker lives inside one process; the jobs commands need the app's redis://, postgres:// or sqlite: broker.`,
      );
    }
    if (scheme === 'sqlite') {
      // Opening a missing file would create an empty database: a typo would list "No jobs".
      const path = this.url.slice('sqlite:'.length).replace(/^\/\//, '');
      if (path !== '' && !existsSync(path)) {
        throw new CliError(
          `no SQLite database at ${path} (the app creates it on first use).`,
          EXIT.unavailable,
        );
      }
    }
    try {
      this.broker = resolveBroker(this.url);
    } catch (err) {
      if (err instanceof ConfigError)
        throw new UsageError(`offload ${this.command}: --broker: ${err.message}`);
      if (err instanceof OffloadError) throw new CliError(err.message, EXIT.unavailable, { cause: err });
      throw new CliError(
        `cannot open the broker ${redact(this.url)}: ${(err as Error)?.message ?? err}`,
        EXIT.unavailable,
        { cause: err },
      );
    }
    return this.broker;
  }

  async call<T>(op: (broker: Broker) => Promise<T>): Promise<T> {
    const broker = this.open();
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.timedOut = true;
        reject(
          new CliError(
            `the broker ${redact(this.url)} did not answer within ${this.timeoutMs / 1000} s (is it running and reachable?).`,
            EXIT.unavailable,
          ),
        );
      }, this.timeoutMs);
    });
    try {
      return await Promise.race([op(broker), deadline]);
    } catch (err) {
      if (err instanceof CliError || err instanceof UsageError) throw err;
      // A cursor this broker did not hand out.
      if (err instanceof BadRequestError) throw new UsageError(`offload ${this.command}: ${err.message}`);
      const message = (err as Error)?.message || String(err);
      throw new CliError(`the broker ${redact(this.url)} failed: ${message}`, EXIT.unavailable, {
        cause: err,
      });
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Close, but never wait long for it: a broker that did not answer may not answer a goodbye
   * either (a pool ending waits for its pending connect). After a timeout, do not wait at all.
   */
  async close(): Promise<void> {
    const broker = this.broker;
    this.broker = null;
    if (!broker) return;
    const closing = broker.close().catch(() => {});
    if (this.timedOut) return;
    const ac = new AbortController();
    await Promise.race([closing, sleep(1000, undefined, { signal: ac.signal }).catch(() => {})]);
    ac.abort();
  }
}

// ---------------------------------------------------------------------------------------------
// helpers

const STATUS_COLOUR: Record<JobStatus, Colour | null> = {
  queued: 'blue',
  running: 'yellow',
  succeeded: 'green',
  failed: 'red',
  canceled: 'dim',
};

/** A job for scripts: every field a user can act on, times as ISO 8601 strings (UTC, ms). */
export function jobJson(job: JobRecord) {
  return {
    id: job.id,
    task: job.task,
    status: job.status,
    owner: job.owner,
    payload: job.payload,
    progress: job.progress,
    result: job.result,
    error: job.error,
    attempts: job.attempts,
    maxAttempts: job.maxAttempts,
    createdAt: isoTime(job.createdAt),
    runAt: isoTime(job.runAt),
    startedAt: isoTime(job.startedAt),
    finishedAt: isoTime(job.finishedAt),
    expireAt: isoTime(job.expireAt),
    timeoutMs: job.timeoutMs,
    idempotencyKey: job.idempotencyKey,
    cancelRequested: job.cancelRequested,
    seq: job.seq,
    logs: job.logs,
  };
}

function pretty(value: Json | undefined): string {
  return JSON.stringify(value ?? null, null, 2);
}

function noPositionals(ctx: Context): void {
  if (ctx.positionals.length > 0) {
    throw new UsageError(
      `offload jobs ${ctx.name}: unexpected argument ${JSON.stringify(ctx.positionals[0])}.`,
    );
  }
}

function oneId(ctx: Context): string {
  if (ctx.positionals.length === 0)
    throw new UsageError(`offload jobs ${ctx.name}: missing <id>: the job to show.`);
  if (ctx.positionals.length > 1) {
    throw new UsageError(`offload jobs ${ctx.name}: one <id> expected; got ${ctx.positionals.length}.`);
  }
  return ctx.positionals[0]!;
}

function someIds(ctx: Context, verb: string): string[] {
  if (ctx.positionals.length === 0) {
    throw new UsageError(`offload jobs ${ctx.name}: missing <id>: the job(s) to ${verb}.`);
  }
  return [...new Set(ctx.positionals)];
}

function nonEmpty(ctx: Context, name: string): string | undefined {
  const value = ctx.values[name] as string | undefined;
  if (value !== undefined && value.trim() === '') {
    throw new UsageError(`offload jobs ${ctx.name}: --${name} is empty.`);
  }
  return value;
}

/** A word a POSIX shell reads back as itself. */
function shellWord(text: string): string {
  return /^[\w@%+=:,./-]+$/.test(text) ? text : `'${text.replace(/'/g, `'\\''`)}'`;
}
