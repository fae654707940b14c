// Property-style tests of the codec: random values of every frame type round
// trip exactly (also through the streaming decoder under random splits), and
// random corruption only ever yields FrameError, never a crash or a hang.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  CLIENT_TYPES,
  COUNTER_NAMES,
  ERROR_CODES,
  FrameDecoder,
  FrameError,
  PHASES,
  TERMINATE_REASONS,
  encodeFrame,
  parseFrame,
  type Counters,
  type Frame,
  type Status,
} from "../src/frames";
import { DecodeError, Reader, Writer } from "../src/postcard";

/** xorshift64*: a seeded generator, so a failure names a reproducible seed. */
class Rng {
  private s: bigint;
  constructor(seed: number) {
    this.s = BigInt(seed) * 0x9e3779b97f4a7c15n + 1n;
  }
  next64(): bigint {
    let x = this.s;
    x ^= x >> 12n;
    x ^= (x << 25n) & 0xffffffffffffffffn;
    x ^= x >> 27n;
    this.s = x;
    return (x * 0x2545f4914f6cdd1dn) & 0xffffffffffffffffn;
  }
  int(n: number): number {
    return Number(this.next64() % BigInt(n));
  }
  bool(): boolean {
    return this.int(2) === 1;
  }
  /** A u64 biased toward the edges of each varint length. */
  u64(): bigint {
    const bits = BigInt(this.int(65));
    const v = bits === 0n ? 0n : this.next64() & ((1n << bits) - 1n);
    return this.bool() ? v : bits === 0n ? 0n : (1n << bits) - 1n;
  }
  u32(): number {
    return Number(this.u64() & 0xffffffffn);
  }
  i32(): number {
    return this.u32() | 0;
  }
  string(max = 40): string {
    const alphabet = ["a", "Z", "0", " ", "é", "€", "𝄞", "\n", '"', "\\", "\u0000"];
    let s = "";
    const n = this.int(max);
    for (let i = 0; i < n; i++) s += alphabet[this.int(alphabet.length)];
    return s;
  }
  bytes(max: number): Uint8Array {
    const out = new Uint8Array(this.int(max));
    for (let i = 0; i < out.length; i++) out[i] = this.int(256);
    return out;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }
  opt<T>(f: () => T): T | undefined {
    return this.bool() ? f() : undefined;
  }
}

function randomStatus(r: Rng): Status {
  const counters = {} as Counters;
  for (const n of COUNTER_NAMES) counters[n] = r.u64();
  const s: Status = {
    version: r.string(),
    shellper_pid: r.u32(),
    shellper_start_ticks: r.u64(),
    started_at_ms: r.u64(),
    child: r.bool()
      ? { state: "Running" }
      : { state: "Exited", ...strip({ code: r.opt(() => r.i32()), signal: r.opt(() => r.i32()) }) },
    command: r.string(),
    args: Array.from({ length: r.int(4) }, () => r.string()),
    cwd: r.string(),
    phase: r.pick(PHASES),
    leased: r.bool(),
    epoch: r.u64(),
    ttl_ms: r.u64(),
    window_ms: r.u64(),
    claim_ms: r.u64(),
    kill_grace_ms: r.u64(),
    clients: Array.from({ length: r.int(4) }, () => ({
      kind: r.pick(CLIENT_TYPES),
      pid: r.u32(),
      holder: r.bool(),
    })),
    counters,
  };
  return Object.assign(
    s,
    strip({
      child_pid: r.opt(() => r.u32()),
      holder: r.opt(() => ({ name: r.string(60), pid: r.u32() })),
      holder_peer_pid: r.opt(() => r.u32()),
      expires_in_ms: r.opt(() => r.u64()),
      kill_in_ms: r.opt(() => r.u64()),
      claim_in_ms: r.opt(() => r.u64()),
    }),
  );
}

/** Drops undefined fields (the decoder leaves absent options out). */
function strip<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function randomFrame(r: Rng): Frame {
  switch (r.int(21)) {
    case 0:
      return { kind: "DATA", data: r.bytes(300) };
    case 1:
      return { kind: "REPLAY", data: r.bytes(300) };
    case 2:
      return { kind: "RESIZE", msg: { cols: r.int(65536), rows: r.int(65536) } };
    case 3:
      return { kind: "SIGNAL", msg: { signal: r.i32() } };
    case 4:
      return {
        kind: "EXIT",
        msg: { code: r.bool() ? null : r.i32(), signal: r.bool() ? null : r.string() },
      };
    case 5:
      return { kind: r.bool() ? "PING" : "PONG" };
    case 6:
      return {
        kind: "HELLO",
        msg: {
          version: r.int(5),
          clientType: r.pick(["tower", "terminal", "status"] as const),
          lease: r.int(3),
          replay: r.bool(),
          data: r.bool(),
        },
      };
    case 7:
      return {
        kind: "WELCOME",
        msg: {
          version: 1,
          pid: r.i32(),
          cols: r.int(65536),
          rows: r.int(65536),
          startTime: r.int(2 ** 45),
          alwaysSendsReplay: true,
          lease: { version: 1, leased: r.bool(), shellperPid: r.u32() },
        },
      };
    case 8:
      return {
        kind: "SPAWN",
        msg: { command: r.string(), args: [r.string()], cwd: r.string(), env: { [r.string()]: r.string() } },
      };
    case 9: {
      const token = new Uint8Array(32);
      for (let i = 0; i < 32; i++) token[i] = r.int(256);
      return { kind: "ACQUIRE", msg: { token, holder: { name: r.string(60), pid: r.u32() } } };
    }
    case 10:
      return {
        kind: "GRANT",
        msg: {
          epoch: r.u64(),
          ttl_ms: r.u64(),
          window_ms: r.u64(),
          renew_every_ms: r.u64(),
          expires_in_ms: r.u64(),
        },
      };
    case 11:
      return { kind: "RENEW", msg: { epoch: r.u64(), seq: r.u64() } };
    case 12:
      return { kind: "RENEWED", msg: { epoch: r.u64(), seq: r.u64(), expires_in_ms: r.u64() } };
    case 13:
      return {
        kind: "RELEASE",
        msg: {
          epoch: r.u64(),
          mode: r.bool() ? { mode: "Terminate" } : { mode: "Detach", hold_ms: r.u64() },
        },
      };
    case 14:
      return { kind: "RELEASED", msg: { epoch: r.u64(), kill_in_ms: r.u64() } };
    case 15:
      return {
        kind: "TERMINATED",
        msg: {
          reason: r.pick(TERMINATE_REASONS),
          signalled: r.u32(),
          survivors: r.u32(),
          elapsed_ms: r.u64(),
          sweeps: r.u32(),
        },
      };
    case 16:
      return { kind: "STATUS_REQUEST" };
    case 17:
      return { kind: "STATUS", msg: randomStatus(r) };
    case 18:
      return { kind: "REVOKED", msg: { old_epoch: r.u64(), new_epoch: r.u64() } };
    case 19:
      return { kind: "ERROR", msg: { code: r.pick(ERROR_CODES), message: r.string() } };
    default:
      return { kind: "PING" };
  }
}

const CASES = 3000;

test("random frames of every type round trip exactly", () => {
  const r = new Rng(1);
  const seen = new Set<string>();
  for (let i = 0; i < CASES; i++) {
    const f = randomFrame(r);
    seen.add(f.kind);
    const bytes = encodeFrame(f);
    const back = parseFrame(bytes);
    if ("data" in f) {
      assert.deepEqual(Buffer.from((back as typeof f).data), Buffer.from(f.data), `case ${i}`);
    } else if (f.kind === "ACQUIRE") {
      assert.deepEqual(back, f, `case ${i}`);
    } else {
      assert.deepEqual(back, f, `case ${i} (${f.kind})`);
    }
    assert.deepEqual(encodeFrame(back), bytes, `case ${i}: re-encoding`);
  }
  assert.equal(seen.size, 21);
});

test("a stream of random frames decodes the same under random splits", () => {
  const r = new Rng(2);
  for (let round = 0; round < 40; round++) {
    const frames = Array.from({ length: 30 }, () => randomFrame(r));
    const stream = Buffer.concat([
      ...frames.flatMap((f, i) =>
        i % 7 === 3 ? [Buffer.from([0x7d, 0, 0, 0, 3, 1, 2, 3]), encodeFrame(f)] : [encodeFrame(f)],
      ),
    ]);
    const d = new FrameDecoder();
    const got: Frame[] = [];
    let at = 0;
    while (at < stream.length) {
      const n = 1 + r.int(64);
      got.push(...d.push(stream.subarray(at, at + n)));
      at += n;
    }
    d.end();
    const known = got.filter((f) => f.kind !== "UNKNOWN");
    assert.equal(known.length, frames.length);
    known.forEach((f, i) => assert.deepEqual(encodeFrame(f), encodeFrame(frames[i])));
  }
});

test("random corruption yields FrameError only", () => {
  const r = new Rng(3);
  let errors = 0;
  for (let i = 0; i < CASES; i++) {
    const bytes = Buffer.from(encodeFrame(randomFrame(r)));
    const flips = 1 + r.int(3);
    for (let k = 0; k < flips; k++) bytes[r.int(bytes.length)] ^= 1 << r.int(8);
    const cut = r.bool() ? bytes.subarray(0, r.int(bytes.length + 1)) : bytes;
    try {
      const f = parseFrame(cut);
      // Whatever decodes must re-encode to something that decodes the same.
      if (f.kind !== "UNKNOWN") assert.deepEqual(parseFrame(encodeFrame(f)), f);
    } catch (e) {
      assert.ok(e instanceof FrameError, `case ${i}: ${e}`);
      errors++;
    }
  }
  assert.ok(errors > CASES / 4, `only ${errors} corruptions were caught`);
});

test("varints: every length boundary round trips; overlong forms are refused", () => {
  for (let bits = 0n; bits <= 64n; bits++) {
    for (const v of [(1n << bits) - 1n, 1n << bits]) {
      if (v >= 1n << 64n) continue;
      const bytes = new Writer().u64(v).bytes();
      assert.equal(bytes.length, Math.max(1, Math.ceil(v.toString(2).length / 7)));
      const rd = new Reader(bytes);
      assert.equal(rd.u64(), v);
      rd.finish("u64");
    }
  }
  for (const v of [0, 1, -1, 2 ** 31 - 1, -(2 ** 31), 63, -64]) {
    const rd = new Reader(new Writer().i32(v).bytes());
    assert.equal(rd.i32(), v);
  }
  for (const v of [0n, -1n, (1n << 63n) - 1n, -(1n << 63n)]) {
    assert.equal(new Reader(new Writer().i64(v).bytes()).i64(), v);
  }
  // zigzag as SPEC.md §5 states it: -1 -> 1, 1 -> 2.
  assert.deepEqual([...new Writer().i32(-1).bytes()], [1]);
  assert.deepEqual([...new Writer().i32(1).bytes()], [2]);
  assert.throws(() => new Reader(Uint8Array.of(2)).bool(), DecodeError);
  assert.throws(() => new Reader(Uint8Array.of(0xff, 0xff, 0x04)).u16(), DecodeError);
  assert.equal(new Reader(Uint8Array.of(0xff, 0xff, 0x03)).u16(), 0xffff);
  assert.throws(() => new Writer().u32(2 ** 32), RangeError);
});
