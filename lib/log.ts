// Log lines on stderr: time, component, message. Drops are counted and summarised, so a flood
// of bad packets costs a counter increment, not a line each.

export type Level = "error" | "warn" | "info" | "debug";
const ORDER: Record<Level, number> = { error: 0, warn: 1, info: 2, debug: 3 };

export class Logger {
  constructor(private readonly component: string, public level: Level = "info") {}

  private write(level: Level, message: string): void {
    if (ORDER[level] > ORDER[this.level]) return;
    const line = `${new Date().toISOString()} ${this.component} ${level}: ${message}\n`;
    try {
      Deno.stderr.writeSync(new TextEncoder().encode(line));
    } catch { /* stderr gone: nothing sensible left to do */ }
  }

  error(m: string): void {
    this.write("error", m);
  }
  warn(m: string): void {
    this.write("warn", m);
  }
  info(m: string): void {
    this.write("info", m);
  }
  debug(m: string): void {
    this.write("debug", m);
  }
  get debugEnabled(): boolean {
    return this.level === "debug";
  }
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
