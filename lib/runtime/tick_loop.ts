// The one timer of a daemon: it calls the device's tick at least once per period and at any
// earlier time the device asks for (wakeAt: a resend, a key request retransmission). One timer
// is pending at a time and nothing spins, so an idle daemon wakes once per period.

export class TickLoop {
  #due = Infinity;
  #wake: (() => void) | null = null;

  /** `clock`: seconds, the same clock the device's deadlines are on. */
  constructor(
    private readonly name: string,
    private readonly clock: () => number,
    private readonly tick: () => void | Promise<void>,
    private readonly periodSeconds = 1,
  ) {}

  /** Asks for a tick at `time` or earlier. */
  wakeAt(time: number): void {
    if (time >= this.#due) return;
    this.#due = time;
    this.#wake?.();
  }

  /** Ticks until `running` turns false (noticed within one period). */
  async run(running: () => boolean): Promise<void> {
    let periodic = this.clock() + this.periodSeconds;
    while (running()) {
      const next = Math.min(this.#due, periodic);
      const ms = Math.max(0, Math.ceil((next - this.clock()) * 1000));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, ms);
        function done() {
          clearTimeout(timer);
          resolve();
        }
        this.#wake = done;
      });
      this.#wake = null;
      if (!running()) return;
      const now = this.clock();
      if (now < Math.min(this.#due, periodic)) continue; // woken early to plan again
      this.#due = Infinity;
      if (now >= periodic) periodic = now + this.periodSeconds;
      try {
        await this.tick();
      } catch (e) {
        console.error(`${this.name}: tick failed: ${(e as Error).stack ?? e}`);
      }
    }
  }
}
