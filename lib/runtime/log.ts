// Log lines on stderr: time, component, message.

import type { Level, Logger } from "../core/log.ts";

const ORDER: Record<Level, number> = { error: 0, warn: 1, info: 2, debug: 3 };
const encoder = new TextEncoder();

export class StderrLogger implements Logger {
  constructor(private readonly component: string, public level: Level = "info") {}

  private write(level: Level, message: string): void {
    if (ORDER[level] > ORDER[this.level]) return;
    const line = `${new Date().toISOString()} ${this.component} ${level}: ${message}\n`;
    try {
      Deno.stderr.writeSync(encoder.encode(line));
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
