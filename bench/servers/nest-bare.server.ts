// The anchor: what the route costs in a plain NestJS 11 app (Express platform), with no offload.
// A global `ValidationPipe({ transform: true, whitelist: true })` checks the DTO, and the route
// answers 200 at once with a small JSON body.
import 'reflect-metadata';
import { Body, Controller, HttpCode, Module, Post, ValidationPipe } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
// A value import (not `import type`): emitDecoratorMetadata must record the DTO class itself.
import { ReportBody } from './nest-report.dto.js';
import { serve } from './serve.js';

@Controller()
class ReportsController {
  @Post('reports')
  @HttpCode(200)
  create(@Body() body: ReportBody) {
    return { ok: true, month: body.month };
  }
}

@Module({ controllers: [ReportsController] })
class AppModule {}

async function main(): Promise<void> {
  const app = await NestFactory.create<NestExpressApplication>(AppModule, { logger: ['error'] });
  app.disable('x-powered-by');
  app.useGlobalPipes(new ValidationPipe({ transform: true, whitelist: true }));
  await app.init();
  serve(app.getHttpServer(), { close: () => app.close() });
}

void main();
