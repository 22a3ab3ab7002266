// The same Nest app, pipe, DTO and route, with `@Background()` on the route and OffloadModule on
// the memory broker: the submit (pipe, persist, 202) AND the job itself, run by the in-process
// worker (default concurrency 4) in this same process, which calls the method with the piped DTO.
import 'reflect-metadata';
import { Body, Controller, HttpCode, Module, Post, ValidationPipe } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { MemoryBroker } from 'offload';
import { Background, OffloadModule, OffloadService } from 'offload/nest';
// A value import (not `import type`): emitDecoratorMetadata must record the DTO class itself.
import { ReportBody } from './nest-report.dto.js';
import { serve } from './serve.js';

let ran = 0;

@Controller()
class ReportsController {
  @Post('reports')
  @HttpCode(200)
  @Background()
  create(@Body() _body: ReportBody) {
    ran++;
  }
}

@Module({
  // A short result TTL: finished jobs are purged after 5 s, so the store stays bounded during the run.
  imports: [OffloadModule.forRoot({ broker: new MemoryBroker(), resultTtl: '5s' })],
  controllers: [ReportsController],
})
class AppModule {}

async function main(): Promise<void> {
  const app = await NestFactory.create<NestExpressApplication>(AppModule, { logger: ['error'] });
  app.disable('x-powered-by');
  app.useGlobalPipes(new ValidationPipe({ transform: true, whitelist: true }));
  await app.init();
  const { core } = app.get(OffloadService);
  serve(app.getHttpServer(), {
    stats: async () => ({ ran, resultTtlMs: core.config.resultTtlMs, ...(await core.broker.counts()) }),
    close: () => app.close(),
  });
}

void main();
