// The daemons' run flag: SIGINT and SIGTERM (or an internal reason) end the packet loops, and
// the signal handlers are removed again on dispose.

import type { Logger } from "../core/log.ts";

export class Shutdown {
  #running = true;
  readonly #onTerm = () => this.stop("SIGTERM");
  readonly #onInt = () => this.stop("SIGINT");

  constructor(private readonly log: Logger) {
    Deno.addSignalListener("SIGTERM", this.#onTerm);
    Deno.addSignalListener("SIGINT", this.#onInt);
  }

  /** For loops: `while (shutdown.running)`. */
  get running(): boolean {
    return this.#running;
  }

  /** Ends the loops (once), saying why. */
  stop(why: string): void {
    if (this.#running) this.log.info(`${why}: shutting down`);
    this.#running = false;
  }

  dispose(): void {
    Deno.removeSignalListener("SIGTERM", this.#onTerm);
    Deno.removeSignalListener("SIGINT", this.#onInt);
  }
}
