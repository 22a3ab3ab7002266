// Where the Redis benchmark's servers find Redis and their keys: the parent sets these in the
// environment before forking, so each run (and each side) has its own prefix, deleted at the end.
export interface RedisTarget {
  url: string;
  /** For BullMQ, which takes connection options (it makes its own clients, one per role). */
  connection: { host: string; port: number };
  /** The run's key prefix; each side adds its own suffix. */
  prefix: string;
  /** Worker concurrency, the same on both sides. */
  concurrency: number;
}

export const REDIS_ENV = {
  url: 'OFFLOAD_BENCH_REDIS_URL',
  prefix: 'OFFLOAD_BENCH_REDIS_PREFIX',
  concurrency: 'OFFLOAD_BENCH_REDIS_CONCURRENCY',
} as const;

export function redisTarget(url = process.env[REDIS_ENV.url] ?? 'redis://127.0.0.1:6379'): RedisTarget {
  const u = new URL(url);
  return {
    url,
    connection: { host: u.hostname, port: Number(u.port || 6379) },
    prefix: process.env[REDIS_ENV.prefix] ?? 'offload-bench',
    concurrency: Number(process.env[REDIS_ENV.concurrency] ?? 50),
  };
}
