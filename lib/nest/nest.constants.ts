/** Metadata keys the decorators write and the explorer reads. */
export const BACKGROUND_METADATA = 'offload:background';
export const JOB_CONTEXT_METADATA = 'offload:job-context';

/** DI token of the options given to `OffloadModule.forRoot` / the `forRootAsync` factory. */
export const OFFLOAD_MODULE_OPTIONS = 'OFFLOAD_MODULE_OPTIONS';
