import { redact } from '../broker-url.js';
import { isImplicitLogger, type Logger } from '../logger.js';
import { Offload } from '../offload.js';
import type { WorkerOptions } from '../options.js';
import type { DrainOptions, DrainReason } from '../worker.js';
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
import { loadEntry } from './entry.js';
import { cliLogger, parseLogOptions } from './log.js';

const HELP = `Usage: offload worker <entry> [options]

Runs the tasks of the app that <entry> exports (an Offload instance, the offload()
middleware, or a Nest module) from the broker, until stopped or drained.

Options:
  --broker <url>        broker URL (default: BROKER_URL, else the app's own broker)
  --concurrency <n>     jobs run at once (default: the app's worker concurrency, else 4)
  --tasks <a,b>         run only these tasks (default: every registered task)
  --until-empty         exit 0 once no job is due (jobs delayed for later stay queued)
  --max-jobs <n>        claim at most n jobs, exit 0 once they have finished
  --idle-exit <s>       exit 0 after s seconds with nothing to run
  --no-schedules        do not tick the app's schedules in this process
  --grace <s>           on SIGTERM/SIGINT, how long running jobs may finish before they
                        are handed back to the queue (default: the app's, else 10)
  --export <name>       the export to use when the module exports several apps
  --log <text|json>     log format on stderr (default: text)
  --quiet | --verbose   warnings only | also a line when each job starts

SIGTERM or SIGINT stops claiming, lets running jobs finish within the grace period, hands
the rest back to the queue (their attempt not counted) and exits 0. A second signal exits
at once (130): the leases of jobs still running expire and other workers retry them.

Examples:
  BROKER_URL=redis://127.0.0.1:6379 offload worker build/worker.js --concurrency 8
  offload worker build/app.js --broker sqlite:./offload.db --until-empty   # from cron

Exit codes: 0 drained or stopped, 2 bad usage, 3 broker unreachable or entry not loadable.
`;

export const workerCommand: Command = {
  name: 'worker',
  summary: 'run the tasks of an app from the broker (drain modes for cron)',
  help: HELP,
  run: runWorker,
};

async function runWorker(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse('worker', args, {
    broker: { type: 'string' },
    concurrency: { type: 'string' },
    tasks: { type: 'string' },
    'until-empty': { type: 'boolean' },
    'max-jobs': { type: 'string' },
    'idle-exit': { type: 'string' },
    grace: { type: 'string' },
    export: { type: 'string' },
    log: { type: 'string' },
    quiet: { type: 'boolean' },
    verbose: { type: 'boolean' },
    'no-schedules': { type: 'boolean' },
  });
  if (positionals.length !== 1) {
    throw new UsageError(
      positionals.length === 0
        ? 'offload worker: missing <entry>: the module that exports your offload app.'
        : `offload worker: one <entry> expected; got ${positionals.join(' ')}.`,
    );
  }
  const log = parseLogOptions('worker', values);
  if (typeof log === 'string') throw new UsageError(log);
  const concurrency = intOption('worker', 'concurrency', values.concurrency as string | undefined, 1);
  const maxJobs = intOption('worker', 'max-jobs', values['max-jobs'] as string | undefined, 1);
  const idleMs = secondsOption('worker', 'idle-exit', values['idle-exit'] as string | undefined);
  if (idleMs === 0) throw new UsageError('offload worker: --idle-exit takes seconds > 0.');
  const graceMs = secondsOption('worker', 'grace', values.grace as string | undefined);
  const tasks =
    values.tasks === undefined
      ? undefined
      : String(values.tasks)
          .split(',')
          .map((t) => t.trim())
          .filter(Boolean);
  if (tasks && tasks.length === 0) throw new UsageError('offload worker: --tasks names no task.');
  const url = brokerUrl('worker', values.broker as string | undefined, io, false);

  const app = await loadEntry('worker', positionals[0]!, values.export as string | undefined);
  let core: Offload | null = null;
  let signal: ReturnType<typeof onceSignal> | null = null;
  try {
    const given = app.core.options;
    // The app's own logger when it passed one; else the CLI's (on stderr, --log/--quiet/--verbose).
    const logger =
      given.logger && !isImplicitLogger(given.logger) ? given.logger : cliLogger(io, log.format, log.level);
    const registered = app.core.registry.names();
    if (registered.length === 0) throw new UsageError(`offload worker: ${positionals[0]} registers no task.`);
    const unknown = (tasks ?? []).filter((t) => !registered.includes(t));
    if (unknown.length) {
      throw new UsageError(
        `offload worker: unknown task ${unknown.join(', ')}; the app registers ${registered.join(', ')}.`,
      );
    }
    const appWorker: WorkerOptions = given.worker === false || given.worker === undefined ? {} : given.worker;
    core = new Offload(
      {
        ...given,
        broker: url ?? given.broker ?? 'memory:',
        logger,
        ...(values['no-schedules'] ? { schedules: false } : {}),
        worker: {
          ...appWorker,
          concurrency: concurrency ?? (appWorker.concurrency || 4),
          ...(tasks ? { tasks } : {}),
          ...(graceMs === undefined ? {} : { gracePeriod: graceMs }),
        },
      },
      { autoStart: false },
    );
    for (const def of app.core.registry.all()) core.addTask(def);
    // The app's schedules tick here too (one job per tick however many processes tick).
    for (const def of app.core.schedules()) core.addSchedule(def);
    await reachable(core);

    const drain: DrainOptions = {
      ...(values['until-empty'] ? { untilEmpty: true } : {}),
      ...(maxJobs === undefined ? {} : { maxJobs }),
      ...(idleMs === undefined ? {} : { idleMs }),
    };
    let startedUp!: () => void;
    const startUp = new Promise<void>((r) => {
      startedUp = r;
    });
    const draining =
      Object.keys(drain).length > 0 ? core.worker!.drain({ ...drain, notBefore: startUp }) : null;
    signal = onceSignal();
    core.start();
    // A schedule's missed tick enqueued at start counts as work for --until-empty.
    void core.schedulesSettled().then(startedUp);
    const w = core.config.worker;
    logger.info(
      {
        broker: describe(url ?? given.broker),
        concurrency: w.concurrency,
        tasks: (w.tasks.length ? w.tasks : registered).join(','),
        schedules: core.config.schedules ? core.schedules().length : 'off',
        ...drain,
      },
      'offload worker: started',
    );
    const why = await Promise.race([draining ?? new Promise<never>(() => {}), signal.promise]);
    signal.forceOnNext(logger, core);
    const running = core.worker!.activeCount;
    logger.info(
      { reason: why, running, graceMs: w.graceMs, claimed: core.worker!.claimedCount },
      `offload worker: stopping (${explain(why)})`,
    );
    const report = await core.close();
    logger.info(
      {
        reason: why,
        finished: report.finished,
        handedBack: report.handedBack,
        claimed: core.worker!.claimedCount,
      },
      `offload worker: stopped: ${report.finished} running jobs finished, ${report.handedBack} handed back to the queue`,
    );
    return EXIT.ok;
  } finally {
    signal?.dispose();
    await core?.close();
    await app.close();
  }
}

/** Fail fast (exit 3) when the broker does not answer, instead of a worker retrying forever. */
async function reachable(core: Offload): Promise<void> {
  try {
    await core.call(core.broker.counts());
  } catch (err) {
    throw new CliError(`the broker did not answer: ${(err as Error).message}`, EXIT.unavailable, {
      cause: err,
    });
  }
}

function explain(why: DrainReason | NodeJS.Signals): string {
  switch (why) {
    case 'empty':
      return 'no job is due';
    case 'max-jobs':
      return 'max jobs reached';
    case 'idle':
      return 'idle';
    default:
      return why;
  }
}

function describe(broker: unknown): string {
  if (typeof broker === 'string') return redact(broker);
  return (broker as { constructor?: { name?: string } })?.constructor?.name ?? 'broker';
}

/** The first SIGTERM/SIGINT ends the wait; a second one while stopping exits at once. */
function onceSignal() {
  let resolve!: (s: NodeJS.Signals) => void;
  const promise = new Promise<NodeJS.Signals>((r) => {
    resolve = r;
  });
  const first = (s: NodeJS.Signals) => resolve(s);
  let second: ((s: NodeJS.Signals) => void) | null = null;
  process.on('SIGTERM', first);
  process.on('SIGINT', first);
  return {
    promise,
    forceOnNext(logger: Logger, core: Offload) {
      process.off('SIGTERM', first);
      process.off('SIGINT', first);
      second = (s) => {
        logger.warn(
          { signal: s, running: core.worker?.activeCount ?? 0 },
          'offload worker: second signal, exiting now; the running jobs will be retried when their leases expire',
        );
        process.exit(EXIT.interrupted);
      };
      process.once('SIGTERM', second);
      process.once('SIGINT', second);
    },
    dispose() {
      process.off('SIGTERM', first);
      process.off('SIGINT', first);
      if (second) {
        process.off('SIGTERM', second);
        process.off('SIGINT', second);
      }
    },
  };
}
