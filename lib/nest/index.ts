// The `offload/nest` entry point: the module, its service, the decorators.
export { Background, type BackgroundMethodOptions } from '../../decorators/background.decorator.js';
export { JobContext } from '../../decorators/job-context.decorator.js';
export { Schedule, type ScheduleMethodOptions } from '../../decorators/schedule.decorator.js';
export type { Job } from '../task.js';
export { backgroundTaskName } from './background.explorer.js';
export type { OffloadDashboardOptions } from './dashboard.controller.js';
export {
  OffloadModule,
  type OffloadModuleAsyncOptions,
  type OffloadModuleOptions,
} from './offload.module.js';
export { OffloadService } from './offload.service.js';
export { OffloadProblemFilter } from './problem.filter.js';
