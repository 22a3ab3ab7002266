import { type DynamicModule, Module } from '@nestjs/common';
import type { OffloadOptions } from 'offload';
import { OffloadModule } from 'offload/nest';
import { demoUser } from '../shared/demo-user.js';
import { DemoAdminGuard } from './demo-admin.guard.js';
import { ReportsController } from './reports.controller.js';

export interface SampleOptions {
  brokerUrl?: string;
  workers?: number;
  offload?: OffloadOptions;
}

@Module({})
export class AppModule {
  static register(options: SampleOptions = {}): DynamicModule {
    return {
      module: AppModule,
      imports: [
        OffloadModule.forRoot({
          broker: options.brokerUrl ?? 'memory:',
          owner: demoUser,
          worker: { concurrency: options.workers ?? 4 },
          // Every owner's jobs, live: behind the (stand-in) admin guard.
          dashboard: { path: 'admin/jobs', guards: [DemoAdminGuard] },
          ...options.offload,
        }),
      ],
      controllers: [ReportsController],
    };
  }
}
