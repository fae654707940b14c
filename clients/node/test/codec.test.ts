// The frame codec against SPEC.md: every golden vector of §14 decodes and
// re-encodes byte for byte; the strictness rules of §4/§5 hold.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  FrameDecoder,
  FrameError,
  FrameType,
  encodeFrame,
  parseFrame,
  type Frame,
} from "../src/frames";

const SPEC = join(__dirname, "..", "..", "..", "..", "SPEC.md");

/** The golden vectors, read from SPEC.md itself so the test follows the document. */
function goldenVectors(): { type: number; name: string; bytes: Buffer }[] {
  const text = readFileSync(SPEC, "utf8");
  const rows = [...text.matchAll(/^\| (0x[0-9a-f]{2}) \| (\w+) \| `([0-9a-f]+)` \|$/gm)];
  return rows.map((m) => ({ type: Number(m[1]), name: m[2], bytes: Buffer.from(m[3], "hex") }));
}

test("SPEC.md has a golden vector for every frame type", () => {
  const names = goldenVectors().map((v) => v.name).sort();
  assert.deepEqual(names, Object.keys(FrameType).sort());
});

test("every golden vector decodes and re-encodes byte for byte", () => {
  for (const v of goldenVectors()) {
    const f = parseFrame(v.bytes);
    assert.equal(f.kind, v.name, `vector ${v.name}`);
    assert.equal(FrameType[f.kind as keyof typeof FrameType], v.type);
    assert.deepEqual(encodeFrame(f), v.bytes, `re-encoding ${v.name}`);
  }
});

test("golden vectors decode to the documented values", () => {
  const byName = new Map(goldenVectors().map((v) => [v.name, parseFrame(v.bytes)]));
  const acq = byName.get("ACQUIRE") as Extract<Frame, { kind: "ACQUIRE" }>;
  assert.deepEqual([...acq.msg.token], [...Array(32).keys()]);
  assert.deepEqual(acq.msg.holder, { name: "minitower", pid: 300 });
  const grant = byName.get("GRANT") as Extract<Frame, { kind: "GRANT" }>;
  assert.deepEqual(grant.msg, {
    epoch: 1n,
    ttl_ms: 6000n,
    window_ms: 600000n,
    renew_every_ms: 2000n,
    expires_in_ms: 6000n,
  });
  const rel = byName.get("RELEASE") as Extract<Frame, { kind: "RELEASE" }>;
  assert.deepEqual(rel.msg, { epoch: 1n, mode: { mode: "Detach", hold_ms: 3600000n } });
  const st = byName.get("STATUS") as Extract<Frame, { kind: "STATUS" }>;
  assert.equal(st.msg.version, "0.1.0");
  assert.equal(st.msg.command, "bash");
  assert.equal(st.msg.phase, "Held");
  assert.deepEqual(st.msg.holder, { name: "t", pid: 300 });
  const err = byName.get("ERROR") as Extract<Frame, { kind: "ERROR" }>;
  assert.deepEqual(err.msg, { code: "StaleEpoch", message: "stale" });
  const exit = byName.get("EXIT") as Extract<Frame, { kind: "EXIT" }>;
  assert.deepEqual(exit.msg, { code: 0, signal: "15" });
});

function reason(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof FrameError, `expected a FrameError, got ${e}`);
    return e.reason;
  }
  assert.fail("expected an error");
}

test("trailing bytes after a postcard payload are an error", () => {
  // RENEW {epoch 1, seq 7} plus one stray byte inside the announced length.
  assert.equal(reason(() => parseFrame(Buffer.from("2200000003010700", "hex"))), "trailing");
  // STATUS_REQUEST must be empty.
  assert.equal(reason(() => parseFrame(Buffer.from("270000000100", "hex"))), "trailing");
  // PING's limit is 0: a byte is over the limit.
  assert.equal(reason(() => parseFrame(Buffer.from("060000000100", "hex"))), "oversized");
});

test("oversized headers are refused before any payload arrives", () => {
  const d = new FrameDecoder();
  // RENEW announcing 4097 bytes (limit 4 KiB): refused from the header alone.
  assert.equal(reason(() => d.push(Buffer.from("2200001001", "hex"))), "oversized");
  // An unknown type over 16 MiB is refused too.
  assert.equal(reason(() => new FrameDecoder().push(Buffer.from("7f01000001", "hex"))), "oversized");
  // At the limit is fine (DATA of 16 MiB needs no bytes to be checked).
  assert.deepEqual(new FrameDecoder().push(Buffer.from("0101000000", "hex")), []);
});

test("undecodable postcard payloads are refused", () => {
  const bad: [string, string][] = [
    ["varint over u64 (11 bytes)", "2200000002" + "ff".repeat(10) + "01"],
    ["u64 last byte over its 1 bit", "220000000b" + "ff".repeat(9) + "0201"],
    ["u32 varint over 32 bits", "2600000007" + "02" + "ffffffff1f" + "00"],
    ["unknown enum variant", "2a00000002" + "0800"],
    ["option tag 2", "2800000005" + "0000000002"],
    ["string length past the end", "2a00000002" + "0105"],
    ["invalid UTF-8", "2a00000003" + "0101ff"],
    ["truncated struct", "2300000002" + "0107"],
  ];
  for (const [what, hex] of bad) {
    const bytes = Buffer.from(hex, "hex");
    bytes.writeUInt32BE(bytes.length - 5, 1);
    const r = reason(() => parseFrame(bytes));
    assert.ok(r === "undecodable" || r === "trailing", `${what}: ${r}`);
  }
});

test("JSON payloads: unknown fields ignored, trailing garbage and wrong types refused", () => {
  const json = (type: number, s: string) => {
    const p = Buffer.from(s);
    const h = Buffer.alloc(5);
    h[0] = type;
    h.writeUInt32BE(p.length, 1);
    return Buffer.concat([h, p]);
  };
  const f = parseFrame(json(2, ' {"cols":1,"rows":2,"extra":[1]} \n'));
  assert.equal(f.kind, "RESIZE");
  assert.equal(reason(() => parseFrame(json(2, '{"cols":1,"rows":2} x'))), "undecodable");
  assert.equal(reason(() => parseFrame(json(2, '{"cols":70000,"rows":2}'))), "undecodable");
  assert.equal(reason(() => parseFrame(json(2, '[1,2]'))), "undecodable");
  assert.equal(reason(() => parseFrame(json(8, '{"clientType":"tower"}'))), "undecodable");
  assert.equal(reason(() => parseFrame(Buffer.from([2, 0, 0, 0, 1, 0xff]))), "undecodable");
});

test("truncated frames are errors; unknown types are skipped without buffering", () => {
  assert.equal(reason(() => parseFrame(Buffer.from("22000000", "hex"))), "truncated");
  assert.equal(reason(() => parseFrame(Buffer.from("2200000002", "hex"))), "truncated");
  const d = new FrameDecoder();
  d.push(Buffer.from("220000000201", "hex"));
  assert.equal(reason(() => d.end()), "truncated");

  const u = new FrameDecoder();
  // Unknown type 0x7e with 1 MiB announced, then PING.
  const frames = u.push(Buffer.from("7e00100000", "hex"));
  assert.deepEqual(frames, [{ kind: "UNKNOWN", type: 0x7e, length: 1 << 20 }]);
  for (let i = 0; i < 16; i++) assert.deepEqual(u.push(Buffer.alloc(1 << 16)), []);
  assert.deepEqual(u.push(Buffer.from("0600000000", "hex")), [{ kind: "PING" }]);
  u.end();
});
