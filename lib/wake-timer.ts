/** setTimeout turns a delay past 2^31 - 1 ms (24.8 days) into 1 ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * A broker's one timer for the earliest delayed job it knows of: idle workers wake when it comes
 * due, not at their next poll. Arming for a time later than the one armed changes nothing. A job
 * due past 24.8 days wakes the workers early, once; the claim that follows arms it again.
 */
export class WakeTimer {
  private timer: NodeJS.Timeout | null = null;
  private at = Number.POSITIVE_INFINITY;
  private stopped = false;

  constructor(private readonly fire: () => void) {}

  arm(at: number): void {
    if (this.stopped || at >= this.at) return;
    if (this.timer) clearTimeout(this.timer);
    this.at = at;
    this.timer = setTimeout(
      () => {
        this.timer = null;
        this.at = Number.POSITIVE_INFINITY;
        this.fire();
      },
      Math.min(MAX_TIMER_MS, Math.max(0, at - Date.now())),
    );
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }
}
