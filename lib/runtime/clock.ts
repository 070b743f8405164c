// The server daemon's two clocks. The protocol core counts key lifetimes (ephemeral key slots,
// cookie keys) on the "wall" clock it is given and replay memory (handshake c0s) on the monotonic
// one. Were wall time to step back (an NTP or manual correction), a 30 s slot would be live again
// after the replay entries of its handshakes had expired, and a recorded handshake would open a
// second session with the same keys (tests/clock_step_test.ts). So the wall clock handed to the
// core is the wall time at start plus monotonic time since: it reads like Unix time, never steps.

export interface Clocks {
  /** Seconds since start, monotonic. */
  mono(): number;
  /** Unix seconds at start plus mono(): steady, whatever the system clock does later. */
  wall(): number;
}

/** `perfMs` and `unixMs` are the system's clocks (injectable for tests). */
export function steadyClocks(
  perfMs: () => number = () => performance.now(),
  unixMs: () => number = () => Date.now(),
): Clocks {
  const t0 = perfMs();
  const wall0 = unixMs() / 1000;
  const mono = () => (perfMs() - t0) / 1000;
  return { mono, wall: () => wall0 + mono() };
}
