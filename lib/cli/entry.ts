import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { requireDriver } from '../broker-url.js';
import { holdInstances, isOffloadCore, Offload } from '../offload.js';
import { CliError, EXIT, UsageError } from './common.js';

/** The app an entry module describes: its offload core (held: it runs nothing itself). */
export interface LoadedApp {
  core: Offload;
  /** What the export was: an Offload core, the Express middleware, or a Nest module. */
  kind: 'offload' | 'express' | 'nest';
  /** Close what loading opened (the Nest application context, the held core and its broker). */
  close(): Promise<void>;
}

const MODULE_KEYS = ['imports', 'providers', 'controllers', 'exports'];

/**
 * Load the app's entry module with offload instances held (see `holdInstances`: they start no
 * worker), and find its offload: an exported `Offload`, an exported Express middleware
 * (`offload()`'s result, holding `.core`), or an exported Nest module (booted as an application
 * context, without HTTP). `exportName` picks one export when the module has several.
 */
export async function loadEntry(command: string, path: string, exportName?: string): Promise<LoadedApp> {
  const file = resolve(path);
  if (!existsSync(file)) throw new UsageError(`offload ${command}: no such entry module: ${path}`);
  let mod: Record<string, unknown>;
  holdInstances(true);
  try {
    mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (err) {
    throw new CliError(`could not load ${path}: ${(err as Error)?.stack ?? String(err)}`, EXIT.unavailable, {
      cause: err,
    });
  } finally {
    holdInstances(false);
  }
  const candidates = exportsOf(mod);
  let found: [string, unknown][];
  if (exportName !== undefined) {
    if (!candidates.has(exportName)) {
      throw new UsageError(
        `offload ${command}: ${path} has no export "${exportName}" (it exports: ${[...candidates.keys()].join(', ') || 'nothing'}).`,
      );
    }
    found = [[exportName, candidates.get(exportName)]];
    if (!kindOf(found[0]![1])) {
      throw new UsageError(
        `offload ${command}: the export "${exportName}" of ${path} is not an offload instance, an offload() middleware or a Nest module.`,
      );
    }
  } else {
    found = [...candidates].filter(([, value]) => kindOf(value) !== null);
    // One app exported twice (`export default jobs; export { jobs }`, or the middleware and its
    // `.core`) is one app: the same core.
    const coreOf = (v: unknown) => (kindOf(v) === 'express' ? (v as { core: unknown }).core : v);
    found = found.filter(([, v], i) => found.findIndex(([, w]) => coreOf(w) === coreOf(v)) === i);
    if (found.length === 0) {
      throw new UsageError(
        `offload ${command}: ${path} exports no offload app. Export the Offload instance, the offload() middleware ` +
          `(e.g. \`export const jobs = offload({...})\`) or your Nest root module.`,
      );
    }
    if (found.length > 1) {
      throw new UsageError(
        `offload ${command}: ${path} exports several offload apps (${found.map(([k]) => k).join(', ')}); pick one with --export <name>.`,
      );
    }
  }
  const [, value] = found[0]!;
  const kind = kindOf(value)!;
  if (kind === 'offload') return heldApp(value as Offload, 'offload');
  if (kind === 'express') return heldApp((value as { core: Offload }).core, 'express');
  return bootNest(command, value as NestRoot);
}

/**
 * Named exports, with a CommonJS module's `module.exports` properties: `import()` puts that
 * object on `default`, and for a module compiled from ES syntax (`__esModule`) its own
 * `default` is the module's default export.
 */
function exportsOf(mod: Record<string, unknown>): Map<string, unknown> {
  const out = new Map<string, unknown>();
  for (const [key, value] of Object.entries(mod)) out.set(key, value);
  const def = mod.default as Record<string, unknown> | undefined;
  if (def && typeof def === 'object' && !isOffloadCore(def)) {
    if (def.__esModule === true) out.set('default', def.default);
    for (const [key, value] of Object.entries(def)) {
      if (key !== '__esModule' && !out.has(key)) out.set(key, value);
    }
  }
  return out;
}

const DYNAMIC_MODULE_KEYS = new Set([...MODULE_KEYS, 'module', 'global']);

function kindOf(value: unknown): LoadedApp['kind'] | null {
  if (isOffloadCore(value)) return 'offload';
  // A dynamic module (`AppModule.forRoot(...)`'s result): { module, imports?, providers?, global?, ... }.
  if (
    value &&
    typeof value === 'object' &&
    typeof (value as { module?: unknown }).module === 'function' &&
    Object.keys(value).every((k) => DYNAMIC_MODULE_KEYS.has(k))
  ) {
    return 'nest';
  }
  if (typeof value === 'function') {
    if (isOffloadCore((value as { core?: unknown }).core)) return 'express';
    const reflect = Reflect as unknown as { getMetadataKeys?: (target: object) => unknown[] };
    const keys = reflect.getMetadataKeys?.(value) ?? [];
    if (keys.some((k) => typeof k === 'string' && MODULE_KEYS.includes(k))) return 'nest';
  }
  return null;
}

function heldApp(core: Offload, kind: LoadedApp['kind']): LoadedApp {
  return { core, kind, close: () => core.close().then(() => {}) };
}

/** A module class, or a dynamic module object. */
type NestRoot = (new (...args: unknown[]) => unknown) | { module: new (...args: unknown[]) => unknown };

function nestName(root: NestRoot): string {
  return typeof root === 'function' ? root.name : root.module.name;
}

interface NestContext {
  get<T>(token: unknown, options?: { strict: boolean }): T;
  close(): Promise<void>;
}

/** Boot a Nest module as an application context (DI, lifecycle hooks, no HTTP) and take its offload. */
async function bootNest(command: string, module: NestRoot): Promise<LoadedApp> {
  const { NestFactory } = requireDriver<{
    NestFactory: { createApplicationContext(m: unknown, o?: object): Promise<NestContext> };
  }>('@nestjs/core', 'offload on a Nest module');
  holdInstances(true);
  let app: NestContext;
  try {
    app = await NestFactory.createApplicationContext(module, { logger: ['error', 'warn'] });
  } catch (err) {
    throw new CliError(
      `could not start the Nest module ${nestName(module)}: ${(err as Error)?.message ?? err}`,
      EXIT.unavailable,
      {
        cause: err,
      },
    );
  } finally {
    holdInstances(false);
  }
  let core: Offload;
  try {
    core = app.get<Offload>(Offload, { strict: false });
  } catch {
    await app.close();
    throw new UsageError(
      `offload ${command}: the Nest module ${nestName(module)} does not import OffloadModule.`,
    );
  }
  return {
    core,
    kind: 'nest',
    async close() {
      await app.close();
    },
  };
}
