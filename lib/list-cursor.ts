import { BadRequestError } from './errors.js';

/** Position in a newest-first listing: the last job of the page, by (createdAt, id). */
export interface CursorPosition {
  createdAt: number;
  id: string;
}

export function encodeCursor(pos: CursorPosition): string {
  return Buffer.from(`${pos.createdAt}.${pos.id}`).toString('base64url');
}

/** Throws a 400 for a cursor this module did not make. */
export function decodeCursor(cursor: string): CursorPosition {
  const text = Buffer.from(cursor, 'base64url').toString();
  const dot = text.indexOf('.');
  const createdAt = Number(text.slice(0, dot));
  const id = text.slice(dot + 1);
  if (dot < 1 || !Number.isSafeInteger(createdAt) || !/^[0-9a-f-]{36}$/.test(id)) {
    throw new BadRequestError('The cursor is not valid.', 'ERR_OFFLOAD_BAD_CURSOR');
  }
  return { createdAt, id };
}

/** True when a job at (createdAt, id) comes after the cursor in newest-first order. */
export function isAfterCursor(createdAt: number, id: string, pos: CursorPosition): boolean {
  return createdAt < pos.createdAt || (createdAt === pos.createdAt && id < pos.id);
}
