import { createRequire } from 'node:module';
import { MemoryBroker } from '../adapters/memory/memory.broker.js';
import type { Broker, BrokerSpec } from './broker.js';
import { ConfigError, MissingDriverError } from './errors.js';

const requireLazy = createRequire(__filename);

/**
 * Loaders per URL scheme. Adapters are required only when their scheme is used, so a memory
 * user never loads a driver. An adapter module exports `fromUrl(url: string): Broker`.
 */
const ADAPTERS: Record<string, { module: string; driver: string }> = {
  'redis:': { module: '../adapters/redis/index.js', driver: 'ioredis' },
  'rediss:': { module: '../adapters/redis/index.js', driver: 'ioredis' },
  'postgres:': { module: '../adapters/postgres/index.js', driver: 'pg' },
  'postgresql:': { module: '../adapters/postgres/index.js', driver: 'pg' },
  'sqlite:': { module: '../adapters/sqlite/index.js', driver: 'better-sqlite3' },
};

export function resolveBroker(spec: BrokerSpec): Broker {
  if (typeof spec !== 'string') return spec;
  const colon = spec.indexOf(':');
  const scheme = colon === -1 ? '' : spec.slice(0, colon + 1).toLowerCase();
  if (scheme === 'memory:') return new MemoryBroker();
  const adapter = ADAPTERS[scheme];
  if (!adapter) {
    throw new ConfigError(
      `Unknown broker URL ${JSON.stringify(redact(spec))}: use memory:, redis://, postgres:// or sqlite:path.`,
    );
  }
  requireDriver(adapter.driver, `${scheme.slice(0, -1)} broker`);
  let mod: { fromUrl(url: string): Broker };
  try {
    mod = requireLazy(adapter.module);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'MODULE_NOT_FOUND') {
      throw new ConfigError(`The ${scheme.slice(0, -1)} broker is not part of this version of offload yet.`);
    }
    throw err;
  }
  return mod.fromUrl(spec);
}

/** Load an optional peer package, or say exactly what to install. */
export function requireDriver<T = unknown>(pkg: string, feature: string): T {
  try {
    return requireLazy(pkg) as T;
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'MODULE_NOT_FOUND' && e.message.includes(`'${pkg}'`)) {
      throw new MissingDriverError(pkg, feature, { cause: err });
    }
    throw err;
  }
}

/** Hide credentials before a URL goes into a message: `user:pass@`, and password-like query parameters. */
export function redact(url: string): string {
  return url
    .replace(/\/\/[^@/]*@/, '//***@')
    .replace(/([?&](?:password|pass|pwd|passwd|sslpassword|token|secret)=)[^&#]*/gi, '$1***');
}
