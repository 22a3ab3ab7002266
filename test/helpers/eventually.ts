import { setTimeout as sleep } from 'node:timers/promises';

export { sleep };

/**
 * Poll `check` until it returns a truthy value (which is returned) or `timeoutMs` pass (which
 * throws, naming `what`). Tests wait on conditions this way instead of sleeping a fixed time.
 */
export async function eventually<T>(
  check: () => T | Promise<T>,
  what = 'condition',
  { timeoutMs = 2000, intervalMs = 5 }: { timeoutMs?: number; intervalMs?: number } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}.`);
    await sleep(intervalMs);
  }
}
