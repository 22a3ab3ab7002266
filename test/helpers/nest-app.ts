import 'reflect-metadata';
import type { AddressInfo } from 'node:net';
import type { INestApplication, ModuleMetadata } from '@nestjs/common';
import { ValidationPipe } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { Offload } from '../../lib/offload.js';

export interface NestTestApp {
  app: INestApplication;
  /** `http://127.0.0.1:<port>`, no trailing slash. */
  baseUrl: string;
  /** The app's offload core, resolved through DI. */
  core: Offload;
  close(): Promise<void>;
}

/**
 * A Nest app from `metadata` through `@nestjs/testing` (real DI), with the usual global
 * `ValidationPipe`, listening on 127.0.0.1:0. `before` runs on the app before `init()`.
 */
export async function startNestApp(
  metadata: ModuleMetadata,
  {
    before,
    validationPipe = true,
  }: { before?: (app: INestApplication) => void; validationPipe?: boolean } = {},
): Promise<NestTestApp> {
  const moduleRef = await Test.createTestingModule(metadata).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  if (validationPipe) app.useGlobalPipes(new ValidationPipe({ transform: true, whitelist: true }));
  before?.(app);
  await app.listen(0, '127.0.0.1');
  const { port } = app.getHttpServer().address() as AddressInfo;
  return {
    app,
    baseUrl: `http://127.0.0.1:${port}`,
    core: app.get(Offload),
    close: () => app.close(),
  };
}

/** A promise with its resolver, for handlers that wait on the test. */
export function gate<T = void>(): { promise: Promise<T>; open(value: T): void } {
  let open!: (value: T) => void;
  const promise = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}
