// What the core needs of a log: levelled lines, and counted drops. The core only ever holds a
// Logger that a shell hands in (lib/runtime/log.ts writes one to stderr). Drops are counted and
// summarised, so a flood of bad packets costs a counter increment, not a line each.

export type Level = "error" | "warn" | "info" | "debug";

export interface Logger {
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
  readonly debugEnabled: boolean;
}

/** Named counters of dropped input; `report` logs what changed since the last report. */
export class DropCounters {
  private readonly counts = new Map<string, number>();
  private readonly reported = new Map<string, number>();

  count(reason: string): void {
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
  }

  get(reason: string): number {
    return this.counts.get(reason) ?? 0;
  }

  snapshot(): Record<string, number> {
    return Object.fromEntries(this.counts);
  }

  /** One line for all reasons that grew since the last call, or nothing. */
  report(log: Logger): void {
    const parts: string[] = [];
    for (const [reason, n] of this.counts) {
      const delta = n - (this.reported.get(reason) ?? 0);
      if (delta > 0) parts.push(`${reason} +${delta} (${n} in all)`);
      this.reported.set(reason, n);
    }
    if (parts.length > 0) log.info(`dropped: ${parts.join(", ")}`);
  }
}
