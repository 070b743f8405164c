// An independent, strict DNS message reader for tests: it shares no code with
// lib/core/dns_answer.ts, so the fuzz property compares two separate readings of the same bytes.
// It returns every field's position, or null when anything does not frame:
//   - labels of 1..63 bytes, 0x40/0x80 label types rejected;
//   - a compression pointer must lead strictly below the start of the labels it interrupts
//     (so it always terminates), at most 64 pointers and 255 bytes per name;
//   - every section count is honoured, every RDATA lies inside the message; OPT only in the
//     additional section.

export interface StrictName {
  /** Label bytes, in order, after following pointers. */
  labels: Uint8Array[];
  /** Offset just past the name where it is written (terminal zero or first pointer). */
  end: number;
}

export interface StrictRecord {
  section: "answer" | "authority" | "additional";
  owner: StrictName;
  typeAt: number;
  type: number;
  klass: number;
  ttlAt: number;
  rdataAt: number;
  rdlength: number;
}

export interface StrictMessage {
  flags: number;
  questions: { name: StrictName; type: number }[];
  records: StrictRecord[];
}

export function readStrictName(msg: Uint8Array, start: number): StrictName | null {
  const labels: Uint8Array[] = [];
  let at = start;
  let runStart = start;
  let end: number | null = null;
  let pointers = 0;
  let size = 1;
  while (true) {
    if (at >= msg.length) return null;
    const b = msg[at];
    if (b === 0) {
      return { labels, end: end ?? at + 1 };
    }
    if (b >= 0xc0) {
      if (at + 1 >= msg.length) return null;
      const to = (b - 0xc0) * 256 + msg[at + 1];
      if (end === null) end = at + 2;
      if (to >= runStart) return null;
      pointers += 1;
      if (pointers > 64) return null;
      at = to;
      runStart = to;
      continue;
    }
    if (b > 63) return null;
    if (at + 1 + b > msg.length) return null;
    size += b + 1;
    if (size > 255) return null;
    labels.push(msg.slice(at + 1, at + 1 + b));
    at += 1 + b;
  }
}

export function readStrictMessage(msg: Uint8Array): StrictMessage | null {
  if (msg.length < 12) return null;
  const word = (o: number) => msg[o] * 256 + msg[o + 1];
  const counts = [word(4), word(6), word(8), word(10)];
  let at = 12;
  const questions: { name: StrictName; type: number }[] = [];
  for (let q = 0; q < counts[0]; q++) {
    const name = readStrictName(msg, at);
    if (name === null || name.end + 4 > msg.length) return null;
    questions.push({ name, type: word(name.end) });
    at = name.end + 4;
  }
  const records: StrictRecord[] = [];
  const sections = ["answer", "authority", "additional"] as const;
  for (let s = 0; s < 3; s++) {
    for (let r = 0; r < counts[s + 1]; r++) {
      const owner = readStrictName(msg, at);
      if (owner === null || owner.end + 10 > msg.length) return null;
      const typeAt = owner.end;
      const rdlength = word(typeAt + 8);
      const rdataAt = typeAt + 10;
      if (rdataAt + rdlength > msg.length) return null;
      const type = word(typeAt);
      if (type === 41 && s !== 2) return null;
      records.push({
        section: sections[s],
        owner,
        typeAt,
        type,
        klass: word(typeAt + 2),
        ttlAt: typeAt + 4,
        rdataAt,
        rdlength,
      });
      at = rdataAt + rdlength;
    }
  }
  return { flags: word(2), questions, records };
}

/** Presentation form of a name (RFC 1035 escapes, lower case, no final dot). */
export function presentName(n: StrictName): string {
  const parts: string[] = [];
  for (const l of n.labels) {
    let text = "";
    for (const b of l) {
      const c = b >= 65 && b <= 90 ? b + 32 : b;
      text += c <= 32 || c >= 127 || c === 46 || c === 92
        ? `\\${c.toString().padStart(3, "0")}`
        : String.fromCharCode(c);
    }
    parts.push(text);
  }
  return parts.join(".");
}
