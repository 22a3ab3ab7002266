import type { Unsubscribe } from './broker.js';
import type { JobEvent } from './job.js';
import { WakeTimer } from './wake-timer.js';

/**
 * The listeners of a networked broker in this process (job events, wake-ups, cancels) and its
 * timer for the next delayed job. The broker says how a kind of signal reaches this process
 * (`ready`: a subscription, a LISTEN), and passes on what arrives.
 */
export class BrokerSignals {
  private readonly eventListeners = new Set<(event: JobEvent) => void>();
  private readonly workListeners = new Set<() => void>();
  private readonly cancelListeners = new Set<(jobId: string) => void>();
  private readonly timer = new WakeTimer(() => this.wakeWorkers());

  get hasEventListeners(): boolean {
    return this.eventListeners.size > 0;
  }

  /** Resolves once events reach this process; a listener whose subscription failed is dropped. */
  async subscribe(listener: (event: JobEvent) => void, ready: () => Promise<void>): Promise<Unsubscribe> {
    this.eventListeners.add(listener);
    try {
      await ready();
    } catch (err) {
      this.eventListeners.delete(listener);
      throw err;
    }
    return () => this.eventListeners.delete(listener);
  }

  onWork(listener: () => void, ready: () => Promise<void>): Unsubscribe {
    this.workListeners.add(listener);
    ready().catch(() => {
      // The worker polls as a backstop; the connection comes back by itself.
    });
    return () => this.workListeners.delete(listener);
  }

  onCancel(listener: (jobId: string) => void, ready: () => Promise<void>): Unsubscribe {
    this.cancelListeners.add(listener);
    ready().catch(() => {
      // Lease renewal reports a requested cancel as well, within a third of the lease.
    });
    return () => this.cancelListeners.delete(listener);
  }

  wakeWorkers(): void {
    for (const listener of this.workListeners) listener();
  }

  /** The earliest delayed job this process knows of comes due at `at`: wake the workers then. */
  armWake(at: number): void {
    this.timer.arm(at);
  }

  /** A message from another process: a job comes due at `at`, now or later. */
  dueAt(at: number): void {
    if (at > Date.now()) this.timer.arm(at);
    else this.wakeWorkers();
  }

  cancelRequested(jobId: string): void {
    for (const listener of this.cancelListeners) listener(jobId);
  }

  emit(event: JobEvent): void {
    for (const listener of this.eventListeners) listener(event);
  }

  close(): void {
    this.timer.stop();
    this.eventListeners.clear();
    this.workListeners.clear();
    this.cancelListeners.clear();
  }
}

/** A message holding one event, or the events of one broker call as an array; [] if unreadable. */
export function parseEvents<T = JobEvent>(message: string): T[] {
  let parsed: T | T[];
  try {
    parsed = JSON.parse(message) as T | T[];
  } catch {
    return [];
  }
  return Array.isArray(parsed) ? parsed : [parsed];
}
