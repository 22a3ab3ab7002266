import type { IncomingMessage, ServerResponse } from 'node:http';
import { isTerminal, type JobEvent, type JobRecord, toStatusDocument } from '../job.js';
import type { Offload } from '../offload.js';

/**
 * `Last-Event-ID` as a seq the client holds, or `null` when absent or unusable (not a
 * non-negative integer, or ahead of the job): the client then gets a fresh snapshot.
 */
export function parseLastEventId(header: string | string[] | undefined, jobSeq: number): number | null {
  const value = Array.isArray(header) ? header[0] : header;
  if (value === undefined || !/^\d{1,15}$/.test(value.trim())) return null;
  const seq = Number(value.trim());
  return seq <= jobSeq ? seq : null;
}

/**
 * Stream one job's events: `snapshot` first (or, on resume, exactly the events the client
 * lacks), then `progress`/`status`, then the terminal event, then end. `job` was read once
 * already to check the owner; it is read again after subscribing so no event falls between.
 */
export async function streamJobEvents(
  core: Offload,
  req: IncomingMessage,
  res: ServerResponse,
  job: JobRecord,
): Promise<void> {
  const { exposeStack, heartbeatMs, sseRetryMs } = core.config;
  const resumeFrom = parseLastEventId(req.headers['last-event-id'], job.seq);
  if (resumeFrom !== null && isTerminal(job.status) && resumeFrom >= job.seq) {
    // The client holds the terminal event: 204 stops EventSource from reconnecting.
    res.statusCode = 204;
    res.end();
    return;
  }

  let lastSent = resumeFrom ?? -1;
  let ended = false;
  let buffer: JobEvent[] | null = [];
  const end = () => {
    if (ended) return;
    ended = true;
    clearInterval(heartbeat);
    core.streams.delete(end);
    off?.();
    res.end();
  };
  const write = (event: string, id: number, data: unknown) => {
    if (ended) return;
    res.write(`id: ${id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    lastSent = id;
  };
  const writeUnnumbered = (event: string, data: unknown) => {
    if (!ended) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
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
    write(finished.status, event.seq, toStatusDocument(finished, exposeStack));
    end();
  };
  const deliver = (event: JobEvent) => {
    if (ended || event.seq <= lastSent || event.type === 'cancel') return;
    if (event.type === 'progress') {
      write('progress', event.seq, event.progress);
    } else if (event.status && isTerminal(event.status)) {
      lastSent = event.seq;
      void sendTerminal(event);
    } else {
      write('status', event.seq, { id: job.id, status: event.status, attempts: event.attempts });
    }
  };

  res.writeHead(200, {
    'Content-Type': 'text/event-stream; charset=utf-8',
    'Cache-Control': 'no-cache, no-transform',
    'X-Accel-Buffering': 'no',
  });
  res.write(`retry: ${sseRetryMs}\n\n`);
  const heartbeat = setInterval(() => {
    if (!ended) res.write(': heartbeat\n\n');
  }, heartbeatMs);
  heartbeat.unref();
  let off: (() => void) | null = null;
  res.on('close', end);
  core.streams.add(end);
  if (core.closed) {
    // close() has run its enders already: this stream would hold server.close() open. Ended
    // at once, EventSource reconnects, to another instance or to this one once restarted.
    end();
    return;
  }

  try {
    off = await core.listen(job.id, (event) => {
      if (buffer) buffer.push(event);
      else deliver(event);
    });
    if (ended) {
      // The client left while we subscribed: `end` ran before there was anything to undo.
      off();
      return;
    }
    const current = (await core.get(job.id)) ?? job;
    const missed = resumeFrom === null ? null : await core.call(core.broker.history(job.id, resumeFrom));
    if (missed === null) {
      // Fresh connection, or history no longer reaches back: the snapshot stands for it all.
      const doc = toStatusDocument(current, exposeStack);
      if (isTerminal(current.status)) {
        // The snapshot goes without an id so ids stay strictly increasing: the terminal event
        // that follows carries the job's seq.
        writeUnnumbered('snapshot', doc);
        write(current.status, current.seq, doc);
        return end();
      }
      write('snapshot', current.seq, doc);
    } else {
      for (const event of missed) deliver(event);
    }
    const pending = buffer;
    buffer = null;
    for (const event of pending) deliver(event);
  } catch {
    // The broker failed mid-stream: end it; EventSource reconnects with Last-Event-ID.
    end();
  }
}
