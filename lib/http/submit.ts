import type { ServerResponse } from 'node:http';
import {
  BadRequestError,
  IdempotencyConflictError,
  OffloadError,
  PayloadTooLargeError,
  ValidationError,
} from '../errors.js';
import { type JobRecord, type Json, publicError } from '../job.js';
import { hashPayload, type Offload } from '../offload.js';
import type { OffloadRequest } from '../options.js';
import { type Problem, sendJson, sendProblem, toProblem } from '../problem.js';
import type { TaskDefinition } from '../task.js';
import { assertNoPoisonKeys, bodyAlreadyRead, readJsonBody } from './body.js';
import type { Next } from './job-routes.js';
import { ownerOf } from './job-routes.js';
import { type Preferences, parsePrefer } from './prefer.js';

/** Builds the payload from the request; the default is the JSON body. Never put the request itself in it. */
export type PayloadExtractor<P = Json, Req = OffloadRequest> = (req: Req) => P | Promise<P>;

const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

class JobFailedProblem extends OffloadError {
  constructor(
    readonly job: JobRecord,
    exposeStack: boolean,
  ) {
    const canceled = job.status === 'canceled';
    super(
      canceled
        ? 'The job was canceled.'
        : publicError(job.error ?? { message: 'The job failed.' }, exposeStack).message,
      canceled ? 'ERR_OFFLOAD_CANCELED' : (job.error?.code ?? 'ERR_OFFLOAD_JOB_FAILED'),
      canceled ? 409 : 500,
    );
  }
}

/** What the client asked of a submit through headers. */
export interface SubmitPreferences {
  prefer: Preferences;
  idempotencyKey: string | null;
}

/** `Prefer` and `Idempotency-Key`, checked before anything else is read. */
export function readSubmitPreferences(req: OffloadRequest): SubmitPreferences {
  const prefer = parsePrefer(req.headers.prefer);
  const idemHeader = req.headers['idempotency-key'];
  const idempotencyKey = typeof idemHeader === 'string' ? idemHeader.trim() : null;
  if (idempotencyKey !== null && !IDEMPOTENCY_KEY.test(idempotencyKey)) {
    throw new BadRequestError(
      'Idempotency-Key must be 1-255 visible ASCII characters.',
      'ERR_OFFLOAD_BAD_IDEMPOTENCY_KEY',
    );
  }
  return { prefer, idempotencyKey };
}

/**
 * Validate the payload with the task's validator and bound its size. Returns what is persisted:
 * what a DTO kept (unknown properties stripped), as JSON. `sized` says the size is known to fit.
 */
export async function checkPayload(
  def: TaskDefinition,
  payload: Json,
  sized: boolean,
  maxPayloadBytes: number,
): Promise<Json> {
  // The JSON text of what is stored, when the copy made it: the size check reuses it.
  let text: string | undefined;
  if (def.validator) {
    const { errors, value } = await def.validator.check(payload);
    if (errors) throw new ValidationError(errors);
    if (value !== payload) {
      text = stringifyPayload(value);
      payload = JSON.parse(text) as Json;
    }
  }
  if (!sized && Buffer.byteLength(text ?? JSON.stringify(payload)) > maxPayloadBytes) {
    throw new PayloadTooLargeError(maxPayloadBytes);
  }
  return payload;
}

/**
 * The second half of every submit, shared by Express and Nest: persist a checked payload and
 * answer 202, or 200 (or the failure as a problem) when `Prefer: wait` sees the job finish.
 * `linkBase` is where the job routes are as the client sees them.
 */
export function createJobAcceptor(core: Offload, def: TaskDefinition, linkBase: string) {
  const { maxWaitMs, exposeStack, logger } = core.config;
  const retryAfter = String(core.config.retryAfter);

  function urls(id: string) {
    const statusUrl = `${linkBase}/${id}`;
    return { statusUrl, eventsUrl: `${statusUrl}/events` };
  }

  function sendAccepted(res: ServerResponse, job: JobRecord, created: boolean, respondAsync: boolean): void {
    const { statusUrl, eventsUrl } = urls(job.id);
    const headers: Record<string, string> = {
      Location: statusUrl,
      'Retry-After': retryAfter,
      Vary: 'Prefer',
    };
    if (respondAsync) headers['Preference-Applied'] = 'respond-async';
    if (!created) headers['Idempotent-Replayed'] = 'true';
    sendJson(res, 202, { id: job.id, status: job.status, statusUrl, eventsUrl }, headers);
  }

  function sendFinished(res: ServerResponse, job: JobRecord, waited: number): void {
    const headers = {
      'Content-Location': urls(job.id).statusUrl,
      'Preference-Applied': `wait=${waited}`,
      Vary: 'Prefer',
    };
    if (job.status === 'succeeded') {
      sendJson(res, 200, job.result, headers);
      return;
    }
    const problem: Problem = toProblem(new JobFailedProblem(job, exposeStack));
    problem.jobId = job.id;
    sendProblem(res, problem, headers);
  }

  return {
    async accept(
      req: OffloadRequest,
      res: ServerResponse,
      payload: Json,
      { prefer, idempotencyKey }: SubmitPreferences,
    ): Promise<void> {
      const owner = await ownerOf(core, req);
      const payloadHash = idempotencyKey ? hashPayload(payload) : null;
      const { job, created } = await core.submit(def, payload, { owner, idempotencyKey, payloadHash });
      if (!created && job.payloadHash !== payloadHash) throw new IdempotencyConflictError();

      if (prefer.wait !== null) {
        const ms = Math.min(prefer.wait * 1000, maxWaitMs);
        // The job is already persisted: a broker failing during the wait means "not finished in
        // time" (202), never a 503 that would make the client submit it again.
        const finished =
          ms > 0
            ? await core.waitFor(job.id, ms).catch((err) => {
                logger.warn({ err, jobId: job.id }, 'offload: Prefer: wait gave up on the broker');
                return null;
              })
            : null;
        if (finished) return sendFinished(res, finished, Math.round(ms / 1000));
      }
      sendAccepted(res, job, created, prefer.respondAsync);
    },

    /** A submit that failed before it was answered, as problem+json. */
    fail(res: ServerResponse, err: unknown): void {
      const headers: Record<string, string> = { Vary: 'Prefer' };
      if (err instanceof PayloadTooLargeError) headers.Connection = 'close';
      sendProblem(res, toProblem(err, logger), headers);
    },
  };
}

/**
 * The handler of a route marked background: read and check the payload, persist the job, and
 * answer 202 (or 200 when `Prefer: wait` sees it finish). Nothing is persisted unless every
 * check passed.
 */
export function createSubmitHandler(
  core: Offload,
  def: TaskDefinition,
  extract: PayloadExtractor<unknown, any> | null,
) {
  const { maxPayloadBytes } = core.config;
  const acceptor = createJobAcceptor(core, def, core.config.basePath);

  async function submit(req: OffloadRequest, res: ServerResponse): Promise<void> {
    const preferences = readSubmitPreferences(req);
    // `sized` is true once the payload is known to fit: a body we read ourselves was bounded.
    let sized = false;
    if (bodyAlreadyRead(req)) {
      if (req.body !== undefined) assertNoPoisonKeys(req.body);
    } else {
      req.body = await readJsonBody(req, maxPayloadBytes);
      sized = true;
    }
    let payload: Json;
    if (extract) {
      payload = toJson(await extract(req));
      sized = false;
    } else {
      if (req.body === undefined)
        throw new BadRequestError('The payload is empty.', 'ERR_OFFLOAD_EMPTY_PAYLOAD');
      payload = req.body as Json;
    }
    payload = await checkPayload(def, payload, sized, maxPayloadBytes);
    await acceptor.accept(req, res, payload, preferences);
  }

  return function offloadSubmit(req: OffloadRequest, res: ServerResponse, _next?: Next): void {
    submit(req, res).catch((err) => acceptor.fail(res, err));
  };
}

/** The payload as JSON data (a copy), or a 400 when it cannot be serialised. */
export function toJson(value: unknown): Json {
  return JSON.parse(stringifyPayload(value)) as Json;
}

/** The payload as JSON text, or a 400 when it cannot be serialised. */
export function stringifyPayload(value: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    throw new BadRequestError(
      `The payload is not JSON-serialisable: ${(err as Error).message}`,
      'ERR_OFFLOAD_BAD_PAYLOAD',
    );
  }
  if (text === undefined)
    throw new BadRequestError('The payload is not JSON-serialisable.', 'ERR_OFFLOAD_BAD_PAYLOAD');
  return text;
}
