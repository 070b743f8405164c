// What `pqconnect check` reports: one result per step, each with its time and verdict, and the
// exit status that names the first failure. Pure: formatting only.

export type StepName = "dns" | "keydir" | "keys" | "ephemeral" | "handshake" | "tunnel";
export type Verdict = "pass" | "fail" | "skip";

/** Exit statuses: one per kind of failure, so scripts can tell them apart. */
export const EXIT = {
  ok: 0,
  error: 1,
  usage: 2,
  /** The name does not resolve, carries no pq1 announcement, or its ports are unusable. */
  dns: 3,
  /** The local key directory's hash is not the one in DNS (new keys, old DNS). */
  keydirMismatch: 4,
  /** Nothing answers on the key port: server stopped, or the port filtered. */
  unreachable: 5,
  /** A key server answers, but on another port than the one announced. */
  wrongPort: 6,
  /** The key server serves keys whose hash is not the announced one. */
  keyMismatch: 7,
  /** No ephemeral key, or the same one handed out past its 30 s slot. */
  ephemeral: 8,
  /** Handshake sent, but nothing answered inside the tunnel. */
  noTunnelAnswer: 9,
} as const;

export interface StepResult {
  step: StepName;
  verdict: Verdict;
  /** Wall time the step took, in milliseconds. */
  ms: number;
  /** Facts found, one line each. */
  details: string[];
  /** For a failure: what is wrong and the likely cause, in one sentence. */
  cause?: string;
  /** For a failure: the exit status it gives. */
  exit?: number;
  /** Figures for --json. */
  data?: Record<string, unknown>;
}

export interface CheckReport {
  host: string;
  ok: boolean;
  exit: number;
  steps: StepResult[];
}

const TITLES: Record<StepName, string> = {
  dns: "DNS announcement",
  keydir: "local keys match DNS",
  keys: "long-term keys",
  ephemeral: "ephemeral key",
  handshake: "0-RTT handshake",
  tunnel: "answer inside the tunnel",
};

export function stepTitle(step: StepName): string {
  return TITLES[step];
}

/** The report as a whole: passes only when no step failed. */
export function finishReport(host: string, steps: StepResult[]): CheckReport {
  const failed = steps.find((s) => s.verdict === "fail");
  return { host, ok: !failed, exit: failed ? failed.exit ?? EXIT.error : EXIT.ok, steps };
}

/** Human-readable report: one block per step, then the overall verdict. */
export function formatReport(r: CheckReport): string {
  const lines = [`pqconnect check ${r.host}`];
  for (const s of r.steps) {
    const mark = s.verdict === "pass" ? "ok  " : s.verdict === "fail" ? "FAIL" : "skip";
    lines.push(`[${mark}] ${TITLES[s.step].padEnd(26)} ${s.ms.toFixed(0).padStart(6)} ms`);
    for (const d of s.details) lines.push(`       ${d}`);
    if (s.cause) lines.push(`       => ${s.cause}`);
  }
  const failed = r.steps.find((s) => s.verdict === "fail");
  lines.push(
    failed
      ? `FAILED at "${TITLES[failed.step]}" (exit ${r.exit}): ${failed.cause ?? "see above"}`
      : `PASSED: every step (${r.steps.filter((s) => s.verdict === "pass").length} checked)`,
  );
  return lines.join("\n");
}
