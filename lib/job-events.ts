import type { Broker, Unsubscribe } from './broker.js';
import { delay } from './duration.js';
import type { JobEvent } from './job.js';

type Listener = (event: JobEvent) => void;

/**
 * One broker subscription per process, fanned out to local listeners by job id
 * (SSE streams, `Prefer: wait` requests). Workers hear cancels from `Broker.onCancel`.
 * The subscription opens with the first listener and stays open until `close()`: reopening it
 * for every short-lived listener would churn connections on networked brokers.
 */
export class JobEvents {
  private readonly byJob = new Map<string, Set<Listener>>();
  private subscription: Promise<Unsubscribe> | null = null;
  private size = 0;

  constructor(private readonly broker: Broker) {}

  /**
   * Listen to one job's events. Resolves once the broker subscription is live, so a caller
   * that reads the job *after* this resolves cannot miss an event that follows its read.
   */
  listen(jobId: string, listener: Listener): Promise<Unsubscribe> {
    let set = this.byJob.get(jobId);
    if (!set) {
      set = new Set();
      this.byJob.set(jobId, set);
    }
    set.add(listener);
    return this.attached(() => this.remove(jobId, listener));
  }

  /** Count a listener just added, make sure the subscription is live, and hand back its undo (once). */
  private async attached(detach: () => void): Promise<Unsubscribe> {
    this.size++;
    let active = true;
    const unsubscribe = () => {
      if (!active) return;
      active = false;
      detach();
    };
    try {
      await this.ensureSubscribed();
    } catch (err) {
      unsubscribe();
      throw err;
    }
    return unsubscribe;
  }

  /** Number of local listeners (for tests and health). */
  get listenerCount(): number {
    return this.size;
  }

  async close(): Promise<void> {
    this.byJob.clear();
    this.size = 0;
    await this.dropSubscription();
  }

  private ensureSubscribed(): Promise<Unsubscribe> {
    if (!this.subscription) {
      this.subscription = this.broker.subscribe((event) => this.dispatch(event));
      // A failed subscribe must not stick: the next listener tries again.
      this.subscription.catch(() => {
        this.subscription = null;
      });
    }
    return this.subscription;
  }

  private dispatch(event: JobEvent): void {
    const set = this.byJob.get(event.jobId);
    if (!set) return;
    for (const listener of set) {
      try {
        listener(event);
      } catch {
        // One broken listener (a closed socket) must not starve the others.
      }
    }
  }

  private remove(jobId: string, listener: Listener): void {
    const set = this.byJob.get(jobId);
    if (!set?.delete(listener)) return;
    this.size--;
    if (set.size === 0) this.byJob.delete(jobId);
  }

  private async dropSubscription(): Promise<void> {
    const sub = this.subscription;
    this.subscription = null;
    if (!sub) return;
    // Bounded: a subscription still coming up (broker unreachable) must not hold close();
    // if it comes up later, it is undone then.
    const undone = sub.then(
      (off) => off(),
      () => {},
    );
    await Promise.race([undone, delay(1000)]);
  }
}
