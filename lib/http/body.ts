import type { IncomingMessage } from 'node:http';
import { BadRequestError, OffloadError, PayloadTooLargeError } from '../errors.js';
import type { Json } from '../job.js';

const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i;

export class UnsupportedMediaTypeError extends OffloadError {
  constructor(message: string) {
    super(message, 'ERR_OFFLOAD_UNSUPPORTED_MEDIA_TYPE', 415);
  }
}

/** True when a body parser (express.json() or similar) already consumed the request. */
export function bodyAlreadyRead(req: IncomingMessage & { body?: unknown; _body?: boolean }): boolean {
  return req._body === true || req.body !== undefined || req.readableEnded;
}

/**
 * Read and parse a JSON request body within `limit` bytes. An empty body is `{}`.
 * Oversized → 413 (the rest of the body is discarded); bad JSON → 400; not JSON → 415.
 */
export function readJsonBody(req: IncomingMessage, limit: number): Promise<Json> {
  const length = req.headers['content-length'];
  const chunked = req.headers['transfer-encoding'] !== undefined;
  if (!chunked && (length === undefined || length === '0')) return Promise.resolve({});
  const encoding = req.headers['content-encoding'];
  if (encoding && encoding.toLowerCase() !== 'identity') {
    return Promise.reject(new UnsupportedMediaTypeError(`Content-Encoding "${encoding}" is not supported.`));
  }
  const type = req.headers['content-type'];
  if (!type || !JSON_TYPE.test(type)) {
    req.resume();
    return Promise.reject(new UnsupportedMediaTypeError('The request body must be application/json.'));
  }
  if (length !== undefined && Number(length) > limit) {
    req.resume();
    return Promise.reject(new PayloadTooLargeError(limit));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        cleanup();
        req.resume();
        reject(new PayloadTooLargeError(limit));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => {
      cleanup();
      const text = chunks.length === 1 ? chunks[0]!.toString('utf8') : Buffer.concat(chunks).toString('utf8');
      try {
        resolve(parseJson(text));
      } catch (err) {
        reject(err);
      }
    };
    const onError = (err: Error) => {
      cleanup();
      reject(new BadRequestError(`The request body could not be read: ${err.message}`));
    };
    const cleanup = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
    };
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
  });
}

export function parseJson(text: string): Json {
  if (text.trim() === '') return {};
  let value: Json;
  try {
    value = JSON.parse(text) as Json;
  } catch (err) {
    throw new BadRequestError(
      `The request body is not valid JSON: ${(err as Error).message}`,
      'ERR_OFFLOAD_BAD_JSON',
    );
  }
  // Cheap text test first: the walk only runs when a dangerous key can be present.
  if (text.includes('__proto__') || text.includes('prototype')) assertNoPoisonKeys(value);
  return value;
}

/**
 * Refuse `__proto__` keys and `constructor.prototype`: harmless in the parsed object itself,
 * but they pollute prototypes the moment some later code merges the payload into another object.
 */
export function assertNoPoisonKeys(value: unknown): void {
  const stack: unknown[] = [value];
  while (stack.length) {
    const node = stack.pop();
    if (node === null || typeof node !== 'object') continue;
    if (Array.isArray(node)) {
      for (const item of node) stack.push(item);
      continue;
    }
    for (const key of Object.keys(node)) {
      const child = (node as Record<string, unknown>)[key];
      if (
        key === '__proto__' ||
        (key === 'constructor' &&
          child !== null &&
          typeof child === 'object' &&
          Object.hasOwn(child, 'prototype'))
      ) {
        throw new BadRequestError(
          `The request body contains the forbidden key "${key}".`,
          'ERR_OFFLOAD_FORBIDDEN_KEY',
        );
      }
      stack.push(child);
    }
  }
}

/**
 * A body parser's error (Express's `express.json()`, Nest's built-in one) as offload's own, or
 * `null` when it is not one: parse and size failures, and the other client errors such parsers
 * raise (unsupported encoding or charset, aborted request).
 */
export function fromBodyParserError(err: unknown, limit: number): OffloadError | null {
  if (err instanceof OffloadError) return err;
  const e = err as { type?: unknown; status?: unknown; expose?: unknown; message?: unknown; limit?: unknown };
  if (typeof e?.type !== 'string') return null;
  if (e.type === 'entity.too.large')
    return new PayloadTooLargeError(typeof e.limit === 'number' ? e.limit : limit);
  if (e.type === 'entity.parse.failed') {
    return new BadRequestError('The request body is not valid JSON.', 'ERR_OFFLOAD_BAD_JSON');
  }
  if (e.expose === true && typeof e.status === 'number' && e.status >= 400 && e.status < 500) {
    const code = `ERR_OFFLOAD_${e.type.replace(/\W+/g, '_').toUpperCase()}`;
    return new OffloadError(String(e.message), code, e.status);
  }
  return null;
}
