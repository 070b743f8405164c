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

  /**
   * Sets a counter kept elsewhere (the kernel's drops of a socket) to its running total, so
   * report() shows it beside ours. A total that went down is ignored.
   */
  setTotal(reason: string, total: number): void {
    if (total > (this.counts.get(reason) ?? 0)) this.counts.set(reason, total);
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

/**
 * Text from the network made safe for one log line or table cell: control characters (C0, DEL,
 * C1), backslash and whitespace other than a plain space become \xHH, and it is cut to
 * `max` characters. A name holding ESC or a newline can then neither forge a line nor drive a
 * terminal.
 */
export function escapeText(text: string, max = 300): string {
  let out = "";
  for (const ch of text) {
    const c = ch.codePointAt(0)!;
    if (c < 0x20 || c === 0x5c || (c >= 0x7f && c <= 0x9f) || c === 0x2028 || c === 0x2029) {
      out += `\\x${c.toString(16).padStart(2, "0")}`;
    } else {
      out += ch;
    }
    if (out.length >= max) return out.slice(0, max) + "…";
  }
  return out;
}

/**
 * At most `perWindow` lines per key every `windowSeconds`; what is held back is counted and
 * reported in one line when the key's next window opens. The clock comes from the shell.
 */
export class LogLimiter {
  private readonly windows = new Map<string, { start: number; lines: number; held: number }>();

  constructor(
    private readonly log: Logger,
    private readonly now: () => number,
    private readonly perWindow = 10,
    private readonly windowSeconds = 10,
    /** Keys remembered at most; the oldest window is forgotten first. */
    private readonly maxKeys = 256,
  ) {}

  /** Logs `message()` at `level` unless `key` has used up its window. True if it was logged. */
  line(level: Level, key: string, message: () => string): boolean {
    const now = this.now();
    let w = this.windows.get(key);
    if (w && now - w.start >= this.windowSeconds) {
      if (w.held > 0) {
        this.log[level](`${escapeText(key)}: ${w.held} similar line(s) held back`);
      }
      this.windows.delete(key);
      w = undefined;
    }
    if (!w) {
      if (this.windows.size >= this.maxKeys) {
        this.windows.delete(this.windows.keys().next().value!);
      }
      w = { start: now, lines: 0, held: 0 };
      this.windows.set(key, w);
    }
    if (w.lines >= this.perWindow) {
      w.held++;
      return false;
    }
    w.lines++;
    this.log[level](message());
    return true;
  }
}

/**
 * At most `perSecond` lines a second for one kind of event; past that the events are counted
 * by reason instead, and `summary()` (called by a once-a-second tick) sums them up for one line.
 * A flood of handshakes then costs the log a line a second, not a write per tunnel.
 */
export class LineBudget {
  private second = -Infinity;
  private lines = 0;
  private readonly held = new Map<string, number>();

  constructor(private readonly perSecond: number) {}

  /** True: write this event's line now; false: it was counted under `reason` instead. */
  take(now: number, reason: string): boolean {
    const second = Math.floor(now);
    if (second !== this.second) {
      this.second = second;
      this.lines = 0;
    }
    if (this.lines < this.perSecond) {
      this.lines++;
      return true;
    }
    this.held.set(reason, (this.held.get(reason) ?? 0) + 1);
    return false;
  }

  /** The events held back since the last call, in all and by reason ("" when none). */
  summary(): { total: number; byReason: string } {
    let total = 0;
    const parts: string[] = [];
    for (const [reason, n] of this.held) {
      total += n;
      parts.push(`${reason}: ${n}`);
    }
    this.held.clear();
    return { total, byReason: parts.join(", ") };
  }
}
