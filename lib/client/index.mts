/**
 * offload/client: submit work to an offload route and follow the job from the browser.
 * No dependencies. The jobs a client follows share one `EventSource` (`GET <base>/events`, up to
 * 50 jobs a stream, at most three streams); where that is unavailable or blocked, or past 150
 * jobs, the client polls `GET <base>/:id` instead.
 */

export type JobStatus = 'queued' | 'running' | 'succeeded' | 'failed' | 'canceled';

export interface JobProgress {
  percent: number;
  message?: string;
  data?: unknown;
}

/** The server's status document (`GET <base>/:id`). */
export interface JobStatusDocument {
  id: string;
  task: string;
  status: JobStatus;
  progress: JobProgress | null;
  attempts: number;
  maxAttempts: number;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  result?: unknown;
  error?: { message: string; code?: string };
}

/** An RFC 9457 problem document, as offload's routes answer errors. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  code?: string;
  errors?: { field: string; messages: string[] }[];
  [extension: string]: unknown;
}

/** One change to a job, as `for await (const update of job)` yields it. */
export interface JobUpdate {
  type: 'progress' | 'status';
  status: JobStatus | null;
  progress: JobProgress | null;
}

/**
 * A refused request (`status` and the server's `problem`), a failed or canceled job (`code`
 * from the job's error, `job` its final document), or a job that is not the caller's
 * (`status` 404, `code` `ERR_OFFLOAD_JOB_NOT_FOUND`).
 */
export class OffloadError extends Error {
  code?: string;
  status?: number;
  problem?: Problem;
  job?: JobStatusDocument;

  constructor(message: string, details: Pick<OffloadError, 'code' | 'status' | 'problem' | 'job'> = {}) {
    super(message);
    this.name = 'OffloadError';
    Object.assign(this, details);
  }
}

/** What the client needs of an `EventSource` implementation (the browser's, or a polyfill). */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((event: any) => unknown) | null;
  onerror: ((event: any) => unknown) | null;
  addEventListener(type: string, listener: (event: MessageEvent) => void): void;
  close(): void;
}

export interface ClientOptions {
  /**
   * Where offload's job routes are mounted. On another origin, its CORS answers must include
   * `Access-Control-Expose-Headers: Retry-After`, or polls cannot see the wait the server asks for.
   * @defaultValue '/jobs'
   */
  base?: string;
  /** @defaultValue the global `fetch` */
  fetch?: typeof fetch;
  /** Sent with every `fetch` (submit, poll, cancel); a function is called per request. EventSource sends none: it relies on cookies. */
  headers?: Record<string, string> | (() => Record<string, string>);
  /** `'include'` for a cross-origin `base` with cookies (EventSource `withCredentials` too). */
  credentials?: RequestCredentials;
  /** @defaultValue the global `EventSource`; `false` polls only. */
  EventSource?: (new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike) | false;
  /**
   * Milliseconds between polls when the server sends no `Retry-After`, and before a failed stream
   * is reopened; doubled per failure in a row, up to 32 times. @defaultValue 1000
   */
  pollInterval?: number;
}

export interface FollowOptions {
  /**
   * Stop following (the job itself runs on: call `cancel()` for that); `result` rejects with the
   * reason. Taken by the call that starts following a job; a later call for the same id gets the
   * same handle and does not add its signal.
   */
  signal?: AbortSignal;
}

export interface SubmitOptions extends FollowOptions {
  /** Sent as `Idempotency-Key`: the same key returns the same job. */
  idempotencyKey?: string;
  headers?: Record<string, string>;
  /** @defaultValue 'POST' */
  method?: string;
}

export interface JobHandle<R = unknown> extends AsyncIterable<JobUpdate> {
  readonly id: string;
  /** `null` until the server has said (a job from `follow()`). */
  readonly status: JobStatus | null;
  readonly progress: JobProgress | null;
  /** The latest status document received (snapshot, poll or terminal event). */
  readonly document: JobStatusDocument | null;
  /** The job's result; rejects with an `OffloadError` when it fails, is canceled or is not found, or with the abort reason. */
  readonly result: Promise<R>;
  /** Called on every progress change; returns the unsubscribe. */
  onProgress(listener: (progress: JobProgress) => void): () => void;
  /** Called on every status change; returns the unsubscribe. */
  onStatus(listener: (status: JobStatus) => void): () => void;
  /** Ask the server to cancel the job (`DELETE <base>/:id`). Resolves quietly if it had already finished. */
  cancel(): Promise<void>;
}

export interface Client {
  /** Send `body` as JSON to a background route; resolves with the job once the server answered 202. */
  submit<R = unknown>(url: string, body?: unknown, options?: SubmitOptions): Promise<JobHandle<R>>;
  /** Follow a job the page already knows the id of. The same id gives the same handle. */
  follow<R = unknown>(id: string, options?: FollowOptions): JobHandle<R>;
  /** Stop following every job and close the connection; their `result`s reject with an AbortError. */
  close(): void;
}

/** A followed job, as the transport sees it. */
interface Followed {
  handle: JobHandle<any>;
  /** The last event seq received; -1 before any. */
  seq: number;
  done: boolean;
  /** The stream that carries it (also while a failed stream's jobs are checked and wait to reopen). */
  stream?: Stream;
  /** Polled until it ends (no EventSource, a blocked stream, or every stream full). */
  polled?: boolean;
  apply(status?: JobStatus | null, progress?: JobProgress | null, doc?: JobStatusDocument): void;
  end(error: unknown, value?: unknown): void;
  stopped: AbortSignal;
}

/** One EventSource and the jobs it carries that have not ended. */
interface Stream {
  jobs: Set<Followed>;
  stop(): void;
}

const TERMINAL = ['succeeded', 'failed', 'canceled'];
const EVENTS = ['snapshot', 'progress', 'status', 'missing', ...TERMINAL];
/** The server's bound on one multi-job stream. */
const PER_STREAM = 50;
/** Streams open at once: a browser allows six connections per host on HTTP/1.1; more jobs are polled. */
const MAX_STREAMS = 3;
/** A stream that has not opened in this long is treated as blocked (a buffering proxy). */
const OPEN_TIMEOUT = 10_000;
/** A job id: a canonical UUID, version 4 or 7 (the server's `isJobId`). */
const JOB_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[47][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

const abortError = () => new DOMException('Stopped following the job.', 'AbortError');
const notFound = () => new OffloadError('No such job.', { status: 404, code: 'ERR_OFFLOAD_JOB_NOT_FOUND' });

/** Wait `ms`, or less if `signal` aborts; leaves no listener behind. */
const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done);
  });

async function problemError(res: Response): Promise<OffloadError> {
  const problem: Problem = await res.json().catch(() => ({}));
  return new OffloadError(problem.detail || problem.title || `HTTP ${res.status}`, {
    status: res.status,
    code: problem.code,
    problem,
  });
}

export function createClient(options: ClientOptions = {}): Client {
  const base = (options.base ?? '/jobs').replace(/\/$/, '');
  const interval = options.pollInterval ?? 1000;
  const Source = options.EventSource === false ? undefined : (options.EventSource ?? globalThis.EventSource);
  const jobs = new Map<string, Followed>();
  const streams = new Set<Stream>();
  /** Streams failed in a row (the reopening backs off), and of those, how many look blocked. */
  let failures = 0;
  let blocked = 0;
  /** Once the stream is deemed blocked, every new job is polled for the client's lifetime. */
  let polling = !Source;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const request = (url: string, init: RequestInit = {}) => {
    const { headers } = options;
    return (options.fetch || fetch)(url, {
      credentials: options.credentials,
      ...init,
      headers: { ...(typeof headers === 'function' ? headers() : headers), ...(init.headers as object) },
    });
  };

  /**
   * Put the jobs no stream carries on one (soon, batching several follows): a stream with room
   * is reopened with them, each job resuming from its cursor; past `MAX_STREAMS` they are polled.
   */
  const sync = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      let list = [...jobs.values()].filter((job) => !job.stream && !job.polled);
      if (!list.length) return;
      if (!polling) {
        for (const stream of streams) {
          if (stream.jobs.size < PER_STREAM) {
            stream.stop();
            list = [...stream.jobs, ...list];
          }
        }
        while (list.length && streams.size < MAX_STREAMS) open(list.splice(0, PER_STREAM));
      }
      list.forEach(poll);
    }, 25);
  };

  const open = (list: Followed[]) => {
    const ids = list.map((job) => (job.seq < 0 ? job.handle.id : `${job.handle.id}:${job.seq}`));
    const source = new Source!(`${base}/events?ids=${ids.join(',')}`, {
      withCredentials: options.credentials === 'include',
    });
    let opened = false;
    const stream: Stream = {
      jobs: new Set(list),
      stop() {
        clearTimeout(wait);
        source.close();
        streams.delete(stream);
      },
    };
    /**
     * EventSource does not say why a stream failed: a job purged (404), the broker down (503) and
     * a proxy that refuses the events URL look alike. One poll per job tells them apart: it
     * settles the jobs that are gone or finished, and only a stream that never opened while the
     * server answered those polls counts as blocked (twice in a row: polling for good).
     */
    const fail = async () => {
      if (!streams.has(stream)) return;
      stream.stop();
      const answers = await Promise.all([...stream.jobs].map(check));
      if (!stream.jobs.size) return;
      if (!opened && answers.some(([ok]) => ok) && ++blocked > 1) polling = true;
      wait = setTimeout(
        () => {
          for (const job of stream.jobs) job.stream = undefined;
          sync();
        },
        polling ? 0 : interval * 2 ** Math.min(failures++, 5),
      );
    };
    let wait = setTimeout(fail, OPEN_TIMEOUT);
    for (const job of list) job.stream = stream;
    streams.add(stream);
    source.onopen = () => {
      opened = true;
      failures = blocked = 0;
      clearTimeout(wait);
    };
    // After it opened, EventSource reconnects by itself (resuming with Last-Event-ID); a stream
    // that never opened, or that the server refused (closed), has failed.
    source.onerror = () => {
      if (!opened || source.readyState === 2) fail();
    };
    for (const type of EVENTS) {
      source.addEventListener(type, (event) => {
        const { jobId, seq, ...data } = JSON.parse(event.data);
        const job = jobs.get(jobId);
        if (!job) return;
        if (seq !== undefined) {
          if (seq <= job.seq) return;
          job.seq = seq;
        }
        if (type === 'missing') job.end(notFound());
        else if (type === 'progress') job.apply(null, data);
        else if (type === 'status') job.apply(data.status);
        else job.apply(data.status, data.progress, data);
      });
    }
  };

  /**
   * One `GET <base>/:id`: applies the document; a 4xx other than 408/429 (gone, not allowed,
   * refused) ends the job with the problem. Says whether the document came, and the wait the
   * server asked for (0: none).
   */
  const check = async (job: Followed): Promise<[boolean, number]> => {
    try {
      const res = await request(`${base}/${job.handle.id}`, { signal: job.stopped });
      const { status } = res;
      if (status > 399 && status < 500 && status !== 408 && status !== 429) job.end(await problemError(res));
      else if (res.ok) {
        const doc: JobStatusDocument = await res.json();
        job.apply(doc.status, doc.progress, doc);
        // The document is newer than the events held: a reopened stream starts from a snapshot
        // rather than replaying older progress over it.
        job.seq = -1;
      }
      return [res.ok, Number(res.headers.get('retry-after')) * 1000];
    } catch {
      return [false, 0];
    }
  };

  const poll = async (job: Followed) => {
    job.polled = true;
    for (let errors = 0; !job.done; ) {
      const [ok, retryAfter] = await check(job);
      errors = ok ? 0 : errors + 1;
      // The server's Retry-After when it gives one; else the interval, doubled per failure in a row.
      if (!job.done) await sleep(retryAfter || interval * 2 ** Math.min(errors, 5), job.stopped);
    }
  };

  const follow = <R,>(id: string, { signal }: FollowOptions = {}): JobHandle<R> => {
    const known = jobs.get(id);
    if (known) return known.handle;
    const stopper = new AbortController();
    const listeners = new Set<(update: JobUpdate) => void>();
    let settle!: [(value: R) => void, (error: unknown) => void];
    const result = new Promise<R>((resolve, reject) => {
      settle = [resolve, reject];
    });
    // A page that never reads `result` must not see an unhandled rejection for a failed job.
    result.catch(() => {});

    const on = (listener: (update: JobUpdate) => void) => {
      listeners.add(listener);
      return () => void listeners.delete(listener);
    };
    const emit = (type: JobUpdate['type']) => {
      const update = { type, status: handle.status, progress: handle.progress };
      for (const listener of listeners) {
        // A listener that throws must not keep the job from ending, nor the other listeners from hearing.
        try {
          listener(update);
        } catch (err) {
          const report = (globalThis as { reportError?: (err: unknown) => void }).reportError;
          report
            ? report(err)
            : queueMicrotask(() => {
                throw err;
              });
        }
      }
    };

    const handle = {
      id,
      status: null as JobStatus | null,
      progress: null as JobProgress | null,
      document: null as JobStatusDocument | null,
      result,
      onProgress: (listener: (progress: JobProgress) => void) =>
        on((u) => u.type === 'progress' && listener(u.progress!)),
      onStatus: (listener: (status: JobStatus) => void) =>
        on((u) => u.type === 'status' && listener(u.status!)),
      async cancel() {
        const res = await request(`${base}/${id}`, { method: 'DELETE' });
        if (!res.ok && res.status !== 409) throw await problemError(res);
      },
      async *[Symbol.asyncIterator]() {
        const queue: JobUpdate[] = [];
        let wake = () => {};
        const off = on((update) => {
          queue.push(update);
          wake();
        });
        const settled = result.then(
          () => {},
          () => {},
        );
        try {
          for (;;) {
            const update = queue.shift();
            if (update) {
              yield update;
              if (update.type === 'status' && TERMINAL.includes(update.status!)) return;
            } else if (job.done) {
              // Ended without a terminal status (aborted, not found): that is an error.
              if (!TERMINAL.includes(handle.status!)) await result;
              return;
            } else await Promise.race([settled, new Promise<void>((resolve) => (wake = resolve))]);
          }
        } finally {
          off();
        }
      },
    };

    const job: Followed = {
      handle,
      seq: -1,
      done: false,
      stopped: stopper.signal,
      apply(status, progress, doc) {
        if (job.done) return;
        if (doc) handle.document = doc;
        if (progress && JSON.stringify(progress) !== JSON.stringify(handle.progress)) {
          handle.progress = progress;
          emit('progress');
        }
        if (status && status !== handle.status) {
          handle.status = status;
          emit('status');
        }
        if (status === 'succeeded') job.end(null, doc?.result);
        else if (status && TERMINAL.includes(status)) {
          const error = doc?.error ?? { message: 'The job was canceled.', code: 'ERR_OFFLOAD_CANCELED' };
          job.end(new OffloadError(error.message, { code: error.code, job: doc }));
        }
      },
      end(error, value) {
        if (job.done) return;
        job.done = true;
        jobs.delete(id);
        stopper.abort();
        signal?.removeEventListener('abort', onAbort);
        // A stream left with no job is closed here: the server would end it, and EventSource's
        // reconnect would get 204, which reads as a failure.
        const { stream } = job;
        if (stream?.jobs.delete(job) && !stream.jobs.size) stream.stop();
        if (error) settle[1](error);
        else settle[0](value as R);
      },
    };

    const onAbort = () => job.end(signal!.reason ?? abortError());
    if (!JOB_ID.test(id)) {
      // The server would answer 404; asking it would put a malformed id on the shared stream.
      job.end(notFound());
      return handle;
    }
    if (signal?.aborted) {
      onAbort();
      return handle;
    }
    signal?.addEventListener('abort', onAbort);
    jobs.set(id, job);
    sync();
    return handle;
  };

  return {
    async submit(url, body, { signal, idempotencyKey, headers, method = 'POST' } = {}) {
      const res = await request(url, {
        method,
        body: JSON.stringify(body ?? {}),
        signal,
        headers: {
          'content-type': 'application/json',
          ...(idempotencyKey ? { 'idempotency-key': idempotencyKey } : {}),
          ...headers,
        },
      });
      if (!res.ok) throw await problemError(res);
      const { id, status } = await res.json();
      const handle = follow(id, { signal });
      // A replayed Idempotency-Key may name a finished job: its result comes with the stream's snapshot.
      if (!handle.status && !TERMINAL.includes(status)) jobs.get(id)?.apply(status);
      return handle;
    },
    follow,
    close() {
      for (const job of [...jobs.values()]) job.end(abortError());
      clearTimeout(timer);
    },
  } as Client;
}
