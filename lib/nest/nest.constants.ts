/** Metadata keys the decorators write and the explorer reads. */
export const BACKGROUND_METADATA = 'offload:background';
export const JOB_CONTEXT_METADATA = 'offload:job-context';
/** The `@Schedule()` entries of a method, a list (a method may have several). */
export const SCHEDULE_METADATA = 'offload:schedule';
/** Index of the `@Res()` argument offload adds to a background route (not the method's own). */
export const ROUTE_RESPONSE_METADATA = 'offload:route-response';

/** DI token of the options given to `OffloadModule.forRoot` / the `forRootAsync` factory. */
export const OFFLOAD_MODULE_OPTIONS = 'OFFLOAD_MODULE_OPTIONS';
