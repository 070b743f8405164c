// What a daemon set up, undone in reverse order on every exit path. Steps are awaited (the
// crypto worker wipes the McEliece key before the process ends), and a step that fails is
// logged without keeping the others from running: closing what is left matters more.

import type { Logger } from "../core/log.ts";

export class Cleanup {
  readonly #steps: (() => void | Promise<void>)[] = [];

  constructor(private readonly log: Logger) {}

  /** Registers the undoing of something just set up. */
  add(step: () => void | Promise<void>): void {
    this.#steps.push(step);
  }

  /** Runs every step, newest first (each once). */
  async run(): Promise<void> {
    for (let step = this.#steps.pop(); step; step = this.#steps.pop()) {
      try {
        await step();
      } catch (e) {
        this.log.error(`cleanup: ${(e as Error).message ?? e}`);
      }
    }
  }
}
