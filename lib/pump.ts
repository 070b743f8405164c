// The event loop shape of every packet source: wait for readiness off the JS thread (an FFI
// poll), then drain synchronously until empty. A handler error is a bug, not bad input (the
// parsers never throw), so it is reported and the loop keeps serving.

export async function pump(
  name: string,
  running: () => boolean,
  wait: (ms: number) => Promise<boolean>,
  drain: () => void,
): Promise<void> {
  while (running()) {
    const ready = await wait(250);
    if (!running()) return;
    if (!ready) continue;
    try {
      drain();
    } catch (e) {
      console.error(`${name}: packet loop error: ${(e as Error).stack ?? e}`);
    }
  }
}
