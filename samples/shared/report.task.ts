import type { Job } from 'offload';
import type { ReportRequest } from './report.dto.js';

/** Wait `ms`, or reject at once with the signal's reason when it fires. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** The demo task: `steps` steps of `stepMs` each, progress after every step, stops when canceled. */
export async function buildReport({ steps, stepMs }: ReportRequest, job: Job<unknown>) {
  for (let step = 1; step <= steps; step++) {
    await pause(stepMs, job.signal);
    await job.progress((step / steps) * 100, `step ${step} of ${steps}`);
  }
  return { steps };
}
