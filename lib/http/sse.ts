import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { BadRequestError } from '../errors.js';
import { isJobId, isTerminal, type JobEvent, type JobRecord, toStatusDocument } from '../job.js';
import type { Offload } from '../offload.js';

/** Most jobs one `GET <base>/events?ids=` stream follows. */
export const MAX_STREAM_JOBS = 50;

const SEQ = /^\d{1,15}$/;

/**
 * `Last-Event-ID` as a seq the client holds, or `null` when absent or unusable (not a
 * non-negative integer, or ahead of the job): the client then gets a fresh snapshot.
 */
export function parseLastEventId(header: string | string[] | undefined, jobSeq: number): number | null {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined || !SEQ.test(value.trim())) return null;
  const seq = Number(value.trim());
  return seq <= jobSeq ? seq : null;
}

export const SSE_HEADERS = {
  'Content-Type': 'text/event-stream; charset=utf-8',
  'Cache-Control': 'no-cache, no-transform',
  'X-Accel-Buffering': 'no',
} as const;

/**
 * Bytes a stream's reader may leave unread, beyond the largest single event the stream has sent,
 * before the stream is dropped (see `EventStream.send`).
 */
export const MAX_UNREAD_BYTES = 1024 * 1024;

/**
 * Whether the client has gone: its connection closed (or the answer ended) before the stream was
 * opened, while the route awaited something (the owner hook, a read of the job, an app's async
 * guard). Its `close` event has fired already, so a listener attached now would never run.
 */
function clientGone(res: ServerResponse): boolean {
  return (
    res.destroyed ||
    res.writableEnded ||
    res.socket?.destroyed === true ||
    res.req?.socket?.destroyed === true
  );
}

/**
 * The response side of an event stream: headers, `retry:`, heartbeats, and one end that runs
 * every clean-up (unsubscribes) once, whoever ends it: the client leaving, the last terminal
 * event, a broker failure, a reader too far behind, or `Offload.close()`.
 */
export class EventStream {
  ended = false;
  private readonly cleanups: (() => void)[] = [];
  private heartbeat: NodeJS.Timeout | undefined;
  /** The largest event sent so far, in bytes: one big result on its way is not a stalled reader. */
  private largest = 0;

  constructor(
    private readonly core: Offload,
    private readonly res: ServerResponse,
    private readonly headers: OutgoingHttpHeaders = SSE_HEADERS,
  ) {}

  /**
   * Send the head; `false` when the stream had to end at once (the client left during the
   * route's awaits, or the app is closing): the caller then sets nothing up.
   */
  open(): boolean {
    if (clientGone(this.res)) {
      // Nothing sent, nothing to clean: no head, no heartbeat, no entry in `core.streams`.
      this.ended = true;
      return false;
    }
    const { heartbeatMs, sseRetryMs } = this.core.config;
    this.res.writeHead(200, this.headers);
    this.res.write(`retry: ${sseRetryMs}\n\n`);
    this.heartbeat = setInterval(() => this.send(': heartbeat\n\n'), heartbeatMs);
    this.heartbeat.unref();
    this.res.on('close', this.end);
    this.core.streams.add(this.end);
    if (this.core.closed) {
      // close() has run its enders already: this stream would hold server.close() open. Ended
      // at once, EventSource reconnects, to another instance or to this one once restarted.
      this.end();
      return false;
    }
    return true;
  }

  /** One event; `id` null sends it without an `id:` line (the client's last id stays). */
  write(event: string, id: string | null, data: unknown): void {
    if (this.ended) return;
    const idLine = id === null ? '' : `id: ${id}\n`;
    this.send(`${idLine}event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
  }

  /**
   * Text already in event-stream form. A reader that stopped reading (a stalled connection, a
   * suspended laptop) would have every later event buffered here without bound: once more than
   * `MAX_UNREAD_BYTES` beyond the largest event wait unread, the connection is dropped. The
   * client's EventSource reconnects and resumes from the last event it did read.
   */
  send(text: string): void {
    if (this.ended) return;
    if (this.res.writableLength > MAX_UNREAD_BYTES + this.largest) {
      this.res.destroy();
      this.end();
      return;
    }
    const size = Buffer.byteLength(text);
    if (size > this.largest) this.largest = size;
    this.res.write(text);
  }

  /** Run `fn` when the stream ends, or now if it has. */
  onEnd(fn: () => void): void {
    if (this.ended) fn();
    else this.cleanups.push(fn);
  }

  readonly end = (): void => {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this.heartbeat);
    this.core.streams.delete(this.end);
    for (const fn of this.cleanups) fn();
    this.res.end();
  };
}

/** Where one job's events go: `seq` null for the snapshot of a finished job (no `id:`). */
interface JobSink {
  send(event: string, seq: number | null, data: object): void;
  /** The terminal event was sent: nothing more will come for this job. */
  finished(): void;
}

/**
 * Follow one job into `sink`: `snapshot` first (or, on resume from `resumeFrom`, exactly the
 * events the client lacks), then `progress`/`status`, then the terminal event. `job` was read
 * once already to check the owner; it is read again after subscribing so no event falls
 * between. Rejects when the broker fails (the caller ends the stream; the client resumes).
 */
async function followJob(
  core: Offload,
  stream: EventStream,
  job: JobRecord,
  resumeFrom: number | null,
  sink: JobSink,
): Promise<void> {
  const { exposeStack } = core.config;
  let lastSent = resumeFrom ?? -1;
  let done = false;
  let buffer: JobEvent[] | null = [];
  let off: (() => void) | null = null;

  const send = (event: string, seq: number | null, data: object) => {
    if (done || stream.ended) return;
    if (seq !== null) lastSent = seq;
    sink.send(event, seq, data);
  };
  const finish = (event: string, seq: number, data: object) => {
    send(event, seq, data);
    if (done) return;
    done = true;
    off?.();
    sink.finished();
  };
  const sendTerminal = async (event: JobEvent) => {
    const latest = await core.get(job.id).catch(() => null);
    // Without a fresh read (broker hiccup, purged), the event itself says how the job ended.
    const finished =
      latest && isTerminal(latest.status)
        ? latest
        : {
            ...job,
            status: event.status!,
            attempts: event.attempts ?? job.attempts,
            result: event.result ?? null,
            error: event.error ?? null,
            finishedAt: event.at,
          };
    finish(finished.status, event.seq, toStatusDocument(finished, exposeStack));
  };
  const deliver = (event: JobEvent) => {
    if (done || event.seq <= lastSent || event.type === 'cancel') return;
    if (event.type === 'progress') {
      send('progress', event.seq, event.progress!);
    } else if (event.status && isTerminal(event.status)) {
      lastSent = event.seq;
      void sendTerminal(event);
    } else {
      send('status', event.seq, { id: job.id, status: event.status, attempts: event.attempts });
    }
  };

  off = await core.listen(job.id, (event) => {
    if (buffer) buffer.push(event);
    else deliver(event);
  });
  // The client may have left while we subscribed: then this undoes the subscription at once.
  stream.onEnd(off);
  if (stream.ended) return;
  const current = (await core.get(job.id)) ?? job;
  const missed = resumeFrom === null ? null : await core.call(core.broker.history(job.id, resumeFrom));
  if (missed === null) {
    // Fresh connection, or history no longer reaches back: the snapshot stands for it all.
    const doc = toStatusDocument(current, exposeStack);
    if (isTerminal(current.status)) {
      // The snapshot goes without an id so ids stay strictly increasing: the terminal event
      // that follows carries the job's seq.
      send('snapshot', null, doc);
      return finish(current.status, current.seq, doc);
    }
    send('snapshot', current.seq, doc);
  } else {
    for (const event of missed) deliver(event);
  }
  const pending = buffer;
  buffer = null;
  for (const event of pending) deliver(event);
}

/**
 * Stream one job's events (`GET <base>/:id/events`), resuming after `Last-Event-ID`, then end.
 */
export async function streamJobEvents(
  core: Offload,
  req: IncomingMessage,
  res: ServerResponse,
  job: JobRecord,
): Promise<void> {
  const resumeFrom = parseLastEventId(req.headers['last-event-id'], job.seq);
  if (resumeFrom !== null && isTerminal(job.status) && resumeFrom >= job.seq) {
    // The client holds the terminal event: 204 stops EventSource from reconnecting.
    res.statusCode = 204;
    res.end();
    return;
  }
  const stream = new EventStream(core, res);
  if (!stream.open()) return;
  try {
    await followJob(core, stream, job, resumeFrom, {
      send: (event, seq, data) => stream.write(event, seq === null ? null : String(seq), data),
      finished: stream.end,
    });
  } catch {
    // The broker failed mid-stream: end it; EventSource reconnects with Last-Event-ID.
    stream.end();
  }
}

/**
 * A resume cursor of the multi-job stream: the seq the client holds, `'x'` once it was told
 * the job is missing, `null` for nothing yet.
 */
export type JobCursor = number | 'x' | null;

/** One entry of `ids=`: a job id and the seq the client holds, if it said. */
export interface WantedJob {
  id: string;
  after: number | null;
}

/**
 * The `ids` query of `GET <base>/events`: `id` or `id:seq`, comma-separated, 1 to
 * `MAX_STREAM_JOBS` distinct job ids. Anything else is a 400, naming the entry at fault.
 */
export function parseWantedJobs(query: string): WantedJob[] {
  const raw = new URLSearchParams(query).getAll('ids').join(',');
  const bad = (detail: string) => new BadRequestError(detail, 'ERR_OFFLOAD_BAD_QUERY');
  if (raw === '') throw bad('ids must list the jobs to follow: ids=<id>[:<seq>],<id>[:<seq>]…');
  const entries = raw.split(',');
  if (entries.length > MAX_STREAM_JOBS) {
    throw bad(`ids may list at most ${MAX_STREAM_JOBS} jobs, not ${entries.length}.`);
  }
  const seen = new Set<string>();
  return entries.map((entry, i) => {
    const colon = entry.indexOf(':');
    const id = colon === -1 ? entry : entry.slice(0, colon);
    const seq = colon === -1 ? null : entry.slice(colon + 1);
    if (!isJobId(id)) throw bad(`ids[${i}] is not a job id (a UUID, optionally followed by :<seq>).`);
    if (seq !== null && !SEQ.test(seq)) throw bad(`ids[${i}] has a seq that is not a whole number.`);
    if (seen.has(id)) throw bad(`ids[${i}] names a job listed before it; list each job once.`);
    seen.add(id);
    return { id, after: seq === null ? null : Number(seq) };
  });
}

/**
 * The multi-job stream's `Last-Event-ID`: one cursor per job of `ids=`, in that order,
 * comma-separated. `null` when there is none or it does not fit the list (then the query's
 * cursors stand); an entry that is no seq (`''`, garbage) falls back to the query's cursor.
 */
export function parseCursorList(
  header: string | string[] | undefined,
  count: number,
): (JobCursor | undefined)[] | null {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined) return null;
  const parts = value.trim().split(',');
  if (parts.length !== count) return null;
  return parts.map((p) => (p === 'x' ? 'x' : SEQ.test(p) ? Number(p) : undefined));
}

/**
 * Stream several jobs' events on one connection (`GET <base>/events?ids=`). Each job's story
 * is the single route's (snapshot or resume, progress/status, one terminal event), its data
 * tagged with `jobId` and `seq`; the `id:` of every event is the list of every job's cursor,
 * so a reconnect's `Last-Event-ID` resumes each job where it stopped. A job that is not the
 * caller's (or unknown, or purged) gets one `missing` event. The stream ends once every job
 * has had its terminal or `missing` event. Answers 204 when the client holds everything
 * already; the caller answers 404 when no job is visible at all (`plan.noneVisible`).
 */
export async function streamManyJobEvents(
  core: Offload,
  res: ServerResponse,
  plan: MultiStreamPlan,
  head = false,
): Promise<void> {
  const { cursors, follow, tell } = plan;
  if (follow.length === 0 && tell.length === 0) {
    res.statusCode = 204;
    res.end();
    return;
  }
  if (head) {
    res.writeHead(200, SSE_HEADERS);
    res.end();
    return;
  }
  const stream = new EventStream(core, res);
  if (!stream.open()) return;
  const idOf = () => cursors.map((c) => (c === null ? '' : String(c))).join(',');
  for (const { index, id } of tell) {
    cursors[index] = 'x';
    stream.write('missing', idOf(), { jobId: id });
  }
  let left = follow.length;
  if (left === 0) return stream.end();
  try {
    await Promise.all(
      follow.map(({ index, job, resumeFrom }) =>
        followJob(core, stream, job, resumeFrom, {
          send(event, seq, data) {
            if (seq === null) return stream.write(event, null, { jobId: job.id, ...data });
            cursors[index] = seq;
            stream.write(event, idOf(), { jobId: job.id, seq, ...data });
          },
          finished() {
            if (--left === 0) stream.end();
          },
        }),
      ),
    );
  } catch {
    // The broker failed mid-stream: end it; the client resumes every job from its cursor.
    stream.end();
  }
}

/** What a multi-job stream will do, decided before any byte is sent. */
export interface MultiStreamPlan {
  /** Every job's cursor, in `ids=` order: the `id:` of the stream's events. */
  cursors: JobCursor[];
  /** The jobs to stream, with where to resume. */
  follow: { index: number; job: JobRecord; resumeFrom: number | null }[];
  /** The jobs to announce as `missing`. */
  tell: { index: number; id: string }[];
  /** No job of the list is visible to the caller (and none was already told): a 404. */
  noneVisible: boolean;
}

/**
 * Decide per job: held terminal or told missing → skip; not visible → `missing`; else follow,
 * from the `Last-Event-ID` cursor when it has one for the job, else from the query's.
 */
export function multiStreamPlan(
  req: IncomingMessage,
  wanted: WantedJob[],
  jobs: (JobRecord | null)[],
): MultiStreamPlan {
  const fromHeader = parseCursorList(req.headers['last-event-id'], wanted.length);
  const plan: MultiStreamPlan = { cursors: [], follow: [], tell: [], noneVisible: true };
  wanted.forEach(({ id, after }, index) => {
    const cursor = fromHeader?.[index] ?? after;
    const job = jobs[index] ?? null;
    if (cursor === 'x') {
      plan.cursors.push('x');
      plan.noneVisible = false;
      return;
    }
    if (!job) {
      plan.cursors.push(null);
      plan.tell.push({ index, id });
      return;
    }
    plan.noneVisible = false;
    const resumeFrom = cursor !== null && cursor <= job.seq ? cursor : null;
    plan.cursors.push(resumeFrom);
    // The client holds the terminal event: nothing to send for this job.
    if (resumeFrom !== null && isTerminal(job.status) && resumeFrom >= job.seq) return;
    plan.follow.push({ index, job, resumeFrom });
  });
  return plan;
}
