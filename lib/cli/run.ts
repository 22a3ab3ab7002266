import { randomUUID } from 'node:crypto';
import { JobCanceledError, JobTimeoutError } from '../errors.js';
import type { JobProgress, Json } from '../job.js';
import type { Job, TaskDefinition } from '../task.js';
import { errorOf, toJsonResult } from '../worker.js';
import type { Command } from './command.js';
import { type CliIo, EXIT, parse, UsageError } from './common.js';
import { loadEntry } from './entry.js';

const HELP = `Usage: offload run <entry> <task> [--payload '<json>'] [options]

Runs one task of the app that <entry> exports, here and now, bypassing the queue and the
broker: a task as a management command. The payload is validated as at submit.

Options:
  --payload <json>      the task's payload (default: {})
  --payload-file <path> read the payload from a file ('-' for stdin)
  --export <name>       the export to use when the module exports several apps
  --json                print {"status","result"|"error","durationMs"} on stdout

Progress is a bar on a terminal (stderr) and plain lines otherwise; job.log() lines go to
stderr; the result (JSON) goes to stdout. SIGINT/SIGTERM fires the job's signal; a second
one exits at once. A Nest @Background() method's payload is its argument list:
  offload run build/app.module.js ReportsController.generate --payload '[{"month":"2026-10"}]'

Exit codes: 0 succeeded, 1 failed or timed out, 2 bad usage, unknown task or invalid
payload, 3 entry not loadable, 130 interrupted.
`;

export const runCommand: Command = {
  name: 'run',
  summary: 'run one task in the foreground with a payload, bypassing the queue',
  help: HELP,
  run: runTask,
};

async function runTask(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse('run', args, {
    payload: { type: 'string' },
    'payload-file': { type: 'string' },
    export: { type: 'string' },
    json: { type: 'boolean' },
  });
  if (positionals.length !== 2) {
    throw new UsageError(
      positionals.length < 2
        ? 'offload run: expected <entry> <task>.'
        : `offload run: expected <entry> <task>; got ${positionals.length} arguments (quote the --payload JSON).`,
    );
  }
  const [entry, taskName] = positionals as [string, string];
  const payloadText = await readPayload(
    values.payload as string | undefined,
    values['payload-file'] as string | undefined,
  );
  let raw: Json;
  try {
    raw = JSON.parse(payloadText) as Json;
  } catch (err) {
    throw new UsageError(`offload run: the payload is not valid JSON: ${(err as Error).message}`);
  }

  const app = await loadEntry('run', entry, values.export as string | undefined);
  try {
    const def = app.core.registry.get(taskName);
    if (!def) {
      const names = app.core.registry.names();
      throw new UsageError(
        `offload run: unknown task "${taskName}"; ${entry} registers ${names.length ? names.join(', ') : 'no task'}.`,
      );
    }
    let payload: unknown = raw;
    if (def.validator) {
      const checked = await def.validator.check(raw);
      if (checked.errors) {
        const lines = checked.errors.map((e) => `  ${e.field || '(payload)'}: ${e.messages.join(', ')}`);
        throw new UsageError(`offload run: the payload of "${taskName}" is invalid:\n${lines.join('\n')}`);
      }
      payload = checked.value;
    }
    return await runDirect(def, payload, io, values.json === true);
  } finally {
    await app.close();
  }
}

async function readPayload(inline: string | undefined, file: string | undefined): Promise<string> {
  if (inline !== undefined && file !== undefined)
    throw new UsageError('offload run: give --payload or --payload-file, not both.');
  if (file === undefined) return inline ?? '{}';
  const { readFile } = await import('node:fs/promises');
  try {
    return file === '-' ? await readStdin() : await readFile(file, 'utf8');
  } catch (err) {
    throw new UsageError(`offload run: cannot read --payload-file ${file}: ${(err as Error).message}`);
  }
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** Run the handler with a job handle that reports to the terminal instead of a broker. */
async function runDirect(def: TaskDefinition, payload: unknown, io: CliIo, json: boolean): Promise<number> {
  const controller = new AbortController();
  const progress = progressPrinter(io);
  const job: Job<unknown> = {
    id: randomUUID(),
    task: def.name,
    attempt: 1,
    maxAttempts: 1,
    payload,
    owner: null,
    signal: controller.signal,
    async progress(percent: number, message?: string, data?: Json) {
      const p: JobProgress = { percent: Math.max(0, Math.min(100, Number(percent) || 0)) };
      if (message !== undefined) p.message = String(message);
      if (data !== undefined) p.data = data;
      progress.update(p);
    },
    async log(line: string) {
      progress.line(String(line));
    },
  };
  let interrupted = false;
  const onSignal = (s: NodeJS.Signals) => {
    if (interrupted) {
      progress.line(`${s} again: exiting now`);
      process.exit(EXIT.interrupted);
    }
    interrupted = true;
    progress.line(`${s}: asking the task to stop (job.signal); ${s} again exits at once`);
    controller.abort(new JobCanceledError());
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  let timer: NodeJS.Timeout | undefined;
  const started = Date.now();
  if (!json) io.err(`offload run: ${def.name} started (job ${job.id})\n`);
  try {
    const work = Promise.resolve().then(() => def.handler(payload, job));
    const outcomes: Promise<unknown>[] = [work];
    if (def.timeoutMs) {
      outcomes.push(
        new Promise((_, reject) => {
          timer = setTimeout(() => {
            const reason = new JobTimeoutError(def.timeoutMs!);
            controller.abort(reason);
            reject(reason);
          }, def.timeoutMs!);
        }),
      );
    }
    const result = await Promise.race(outcomes);
    progress.end();
    const value = toJsonResult(result);
    const durationMs = Date.now() - started;
    if (interrupted) {
      io.err(
        `offload run: ${def.name} was interrupted (it returned after its signal fired) in ${durationMs} ms\n`,
      );
      if (json) io.out(`${JSON.stringify({ status: 'canceled', result: value, durationMs })}\n`);
      return EXIT.interrupted;
    }
    if (json) io.out(`${JSON.stringify({ status: 'succeeded', result: value, durationMs })}\n`);
    else {
      io.err(`offload run: ${def.name} succeeded in ${durationMs} ms\n`);
      io.out(`${JSON.stringify(value, null, io.isTTY ? 2 : undefined)}\n`);
    }
    return EXIT.ok;
  } catch (err) {
    progress.end();
    const durationMs = Date.now() - started;
    const { stack, ...error } = errorOf(err);
    if (json)
      io.out(`${JSON.stringify({ status: interrupted ? 'canceled' : 'failed', error, durationMs })}\n`);
    io.err(
      `offload run: ${def.name} ${interrupted ? 'was interrupted' : 'failed'} after ${durationMs} ms: ${error.message}` +
        `${error.code ? ` (${error.code})` : ''}\n${stack && !json && !(err instanceof JobTimeoutError) ? `${stack}\n` : ''}`,
    );
    return interrupted ? EXIT.interrupted : EXIT.failed;
  } finally {
    clearTimeout(timer);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

/**
 * Progress on stderr: on a terminal one bar redrawn in place (at most every 50 ms, the last
 * value always drawn); otherwise a plain line per change of percent or message.
 */
function progressPrinter(io: CliIo) {
  const tty = io.errIsTTY ?? io.isTTY;
  let drawn = false;
  let last = '';
  let pending: JobProgress | null = null;
  let timer: NodeJS.Timeout | null = null;
  const text = (p: JobProgress) => `${Math.round(p.percent)}%${p.message ? ` ${p.message}` : ''}`;
  const bar = (p: JobProgress) => {
    const width = 30;
    const full = Math.round((p.percent / 100) * width);
    return `\r[${'#'.repeat(full)}${'-'.repeat(width - full)}] ${text(p)}\x1b[K`;
  };
  const draw = () => {
    timer = null;
    if (!pending) return;
    io.err(bar(pending));
    drawn = true;
    pending = null;
  };
  return {
    update(p: JobProgress) {
      if (!tty) {
        const line = `progress ${text(p)}`;
        if (line !== last) io.err(`${line}\n`);
        last = line;
        return;
      }
      pending = p;
      timer ??= setTimeout(draw, 50);
    },
    line(s: string) {
      // Clear the bar, print the line; the next update draws the bar again below it.
      if (tty && drawn) io.err('\r\x1b[K');
      drawn = false;
      io.err(`${s}\n`);
    },
    end() {
      if (timer) clearTimeout(timer);
      if (pending) draw();
      if (tty && drawn) io.err('\n');
      drawn = false;
    },
  };
}
