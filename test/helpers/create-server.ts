import assert from 'node:assert/strict';
import { once } from 'node:events';
import http, { type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import express, { type Express } from 'express';
import { type OffloadMiddleware, offload } from '../../lib/express.js';
import { silentLogger } from '../../lib/logger.js';
import type { OffloadOptions, OffloadRequest } from '../../lib/options.js';
import type { Problem } from '../../lib/problem.js';
import type { TaskHandler } from '../../lib/task.js';

export interface TestServer {
  /** `http://127.0.0.1:<port>`, no trailing slash. */
  baseUrl: string;
  app: Express;
  jobs: OffloadMiddleware;
  server: Server;
  /** Destroy every open connection (SSE streams included); the server keeps listening. */
  dropConnections(): void;
  /** Close the connections, the server, then offload (worker and broker). */
  close(): Promise<void>;
}

/** The owner hook of every HTTP test: the caller is whoever `X-User` names, else anonymous. */
export function userOwner(req: OffloadRequest): string | null {
  const user = req.headers['x-user'];
  return typeof user === 'string' && user !== '' ? user : null;
}

/**
 * An Express 5 app with `app.use(offload(options))` mounted first, then whatever `setup` adds
 * (background routes, tasks, body parsers, `jobs.errorHandler()`), listening on 127.0.0.1:0.
 * Defaults: a silent logger, the `X-User` owner hook, and a short worker grace period so
 * `close()` does not wait on a handler that is still running.
 */
export async function createServer(
  options: OffloadOptions = {},
  setup?: (app: Express, jobs: OffloadMiddleware) => void,
): Promise<TestServer> {
  const worker = options.worker === false ? false : { gracePeriod: 100, ...options.worker };
  const jobs = offload({ logger: silentLogger, owner: userOwner, ...options, worker });
  const app = express();
  app.use(jobs);
  setup?.(app, jobs);
  return listen(app, jobs);
}

/** Listen on an app built elsewhere (the sample app). */
export async function listen(app: Express, jobs: OffloadMiddleware): Promise<TestServer> {
  const server = http.createServer(app);
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  const dropConnections = () => {
    for (const socket of sockets) socket.destroy();
  };
  return {
    baseUrl: `http://127.0.0.1:${port}`,
    app,
    jobs,
    server,
    dropConnections,
    async close() {
      dropConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await jobs.close();
    },
  };
}

/** `fetch` with a JSON body and the caller named in `X-User` (omit `user` for anonymous). */
export function postJson(
  url: string,
  body: unknown,
  { user, headers = {} }: { user?: string; headers?: Record<string, string> } = {},
): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(user ? { 'x-user': user } : {}), ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

export function as(user: string | undefined, headers: Record<string, string> = {}): Record<string, string> {
  return user ? { 'x-user': user, ...headers } : headers;
}

export interface RawResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/**
 * A request through `node:http`, for what fetch cannot do: header values fetch refuses, or a
 * chunked body sent piece by piece. Once a response arrives no further chunk is written (the
 * server may already have closed its side), and the request is torn down after the body is read.
 */
export function rawRequest(
  url: string,
  {
    method = 'GET',
    headers = {},
    chunks = [],
    chunkDelayMs = 10,
  }: {
    method?: string;
    headers?: Record<string, string>;
    chunks?: (string | Buffer)[];
    chunkDelayMs?: number;
  } = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers });
    let responded = false;
    req.on('error', (err) => {
      if (!responded) reject(err);
    });
    req.on('response', (res) => {
      responded = true;
      const parts: Buffer[] = [];
      res.on('data', (chunk: Buffer) => parts.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          body: Buffer.concat(parts).toString('utf8'),
        });
        req.destroy();
      });
    });
    void (async () => {
      for (const chunk of chunks) {
        if (responded || req.destroyed) return;
        req.write(chunk);
        await new Promise((r) => setTimeout(r, chunkDelayMs));
      }
      if (!responded && !req.destroyed) req.end();
    })();
  });
}

export interface SseEvent {
  id: string | null;
  event: string;
  data: string;
}

/**
 * An SSE response read byte by byte: the raw text, the `retry:` value, comments (heartbeats)
 * and events in arrival order, and whether the server ended the stream.
 */
export class SseStream {
  raw = '';
  retry: number | null = null;
  readonly events: SseEvent[] = [];
  readonly comments: string[] = [];
  ended = false;
  private buffer = '';

  constructor(
    readonly status: number,
    readonly headers: IncomingHttpHeaders,
    private readonly response: http.IncomingMessage,
    private readonly request: http.ClientRequest,
  ) {
    response.setEncoding('utf8');
    response.on('data', (text: string) => this.feed(text));
    response.on('end', () => {
      this.ended = true;
    });
    response.on('error', () => {
      this.ended = true;
    });
    response.on('close', () => {
      this.ended = true;
    });
  }

  /** Parsed event data (JSON) of the event at `index`. */
  data<T = any>(index: number): T {
    return JSON.parse(this.events[index]!.data) as T;
  }

  /** Wait until `check(this)` holds; fails with the stream so far when it does not in time. */
  async until(check: (s: SseStream) => boolean, what: string, timeoutMs = 3000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check(this)) {
      if (Date.now() > deadline) {
        throw new Error(`Timed out waiting for ${what}; stream so far:\n${this.raw}`);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** Wait for the server to end the stream. */
  untilEnded(timeoutMs = 3000): Promise<void> {
    return this.until((s) => s.ended, 'the end of the stream', timeoutMs);
  }

  close(): void {
    this.request.destroy();
    this.response.destroy();
  }

  private feed(text: string): void {
    this.raw += text;
    this.buffer += text;
    for (let end = this.buffer.indexOf('\n\n'); end !== -1; end = this.buffer.indexOf('\n\n')) {
      const block = this.buffer.slice(0, end);
      this.buffer = this.buffer.slice(end + 2);
      const event: SseEvent = { id: null, event: 'message', data: '' };
      let isEvent = false;
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) {
          this.comments.push(line.slice(1).trim());
          continue;
        }
        const colon = line.indexOf(':');
        const field = colon === -1 ? line : line.slice(0, colon);
        const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'retry') this.retry = Number(value);
        else if (field === 'id') {
          event.id = value;
          isEvent = true;
        } else if (field === 'event') {
          event.event = value;
          isEvent = true;
        } else if (field === 'data') {
          data.push(value);
          isEvent = true;
        }
      }
      if (isEvent) {
        event.data = data.join('\n');
        this.events.push(event);
      }
    }
  }
}

/** Open `GET url` as an event stream; resolves once the status line and headers arrived. */
export function openSse(url: string, headers: Record<string, string> = {}): Promise<SseStream> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { headers: { accept: 'text/event-stream', ...headers } });
    req.on('error', reject);
    req.on('response', (res) => {
      req.off('error', reject);
      req.on('error', () => {});
      resolve(new SseStream(res.statusCode ?? 0, res.headers, res, req));
    });
    req.end();
  });
}

/**
 * Assert an RFC 9457 problem answer with `status`: the content type, the members every problem
 * has, and no stack trace anywhere in the body. Returns the problem.
 */
export async function expectProblem(res: Response | RawResponse, status: number): Promise<Problem> {
  const text = res instanceof Response ? await res.text() : res.body;
  const type =
    res instanceof Response ? res.headers.get('content-type') : (res.headers['content-type'] ?? null);
  assert.equal(res.status, status, `expected ${status}, got ${res.status}: ${text}`);
  assert.match(type ?? '', /^application\/problem\+json/, `problem content type, got ${type}`);
  const problem = JSON.parse(text) as Problem;
  assert.equal(typeof problem.type, 'string');
  assert.ok(problem.type.length > 0);
  assert.equal(typeof problem.title, 'string');
  assert.ok(problem.title.length > 0);
  assert.equal(problem.status, status);
  assert.equal(typeof problem.detail, 'string');
  assert.ok(problem.detail.length > 0);
  assert.ok(!('stack' in problem), 'a problem never carries a stack');
  assert.doesNotMatch(text, /\n\s+at |\\n\s+at /, 'no stack trace text in the body');
  return problem;
}

/** Canonical UUID v4. */
export const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** A promise with its resolver outside, for tasks the test drives step by step. */
export class Steps {
  private waiters: (() => void)[] = [];
  private credits = 0;

  /** Called by the task: wait for the test to let the next step run. */
  next(signal?: AbortSignal): Promise<void> {
    if (this.credits > 0) {
      this.credits--;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const waiter = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      const onAbort = () => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(signal!.reason);
      };
      if (signal?.aborted) return reject(signal.reason);
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiters.push(waiter);
    });
  }

  /** Called by the test: let `n` steps run (now or whenever the task asks). */
  release(n = 1): void {
    for (let i = 0; i < n; i++) {
      const waiter = this.waiters.shift();
      if (waiter) waiter();
      else this.credits++;
    }
  }

  /** How many task steps are waiting right now. */
  get waiting(): number {
    return this.waiters.length;
  }
}

/** Wait `ms`, or reject with the signal's reason as soon as it fires. */
export function sleepUnlessAborted(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** One `Steps` gate per job id, made on first use: each job of a shared task waits on its own. */
export function stepsById(): (jobId: string) => Steps {
  const gates = new Map<string, Steps>();
  return (jobId) => {
    let gate = gates.get(jobId);
    if (!gate) {
      gate = new Steps();
      gates.set(jobId, gate);
    }
    return gate;
  };
}

/** The `steps` task the SSE tests follow: `n` gated steps, progress after each, `{ steps: n }`. */
export function stepsTask(gate: (jobId: string) => Steps): TaskHandler<{ n: number }> {
  return async ({ n }, job) => {
    for (let i = 1; i <= n; i++) {
      await gate(job.id).next(job.signal);
      await job.progress(Math.round((i * 100) / n), `step ${i}`);
    }
    return { steps: n };
  };
}
