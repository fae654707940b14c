// Trust at the Node client's edges, without the shellper binary: a fake
// shellper (a socket server in this process or in a child of another uid)
// plays the other side, so each fault is placed exactly.
//
// - SPEC §10: the token goes only to a socket that is ours (file, directory,
//   and the process listening on it), never to whatever answers at the path.
// - SPEC §2: registry writes are atomic with a unique temporary file, fsynced,
//   and only through the scope this Tower locked.
// - SPEC §5: every duration of a GRANT is clamped (one test per clamp).
// - Spawning never puts the config (the environment) in argv.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  FrameDecoder,
  LeaseHolder,
  MAX_WIRE_MS,
  Scope,
  ScopeError,
  Token,
  Tower,
  TrustError,
  clampGrant,
  encodeFrame,
  invocation,
  parseRegistry,
  spawnShellper,
  wireMs,
  type Frame,
  type ShellperConfig,
} from "../src/index";
import type { Grant } from "../src/frames";
import { sleep, tempScope, until } from "./helpers";

const isRoot = process.geteuid!() === 0;
const NOBODY = 65534;

// ---------------------------------------------------------------- clamps

const g = (ttl: bigint, window: bigint, renew: bigint, expires: bigint) => ({
  ttl_ms: ttl,
  window_ms: window,
  renew_every_ms: renew,
  expires_in_ms: expires,
});
const MAX = 2n ** 64n - 1n;

test("clamp: a sane GRANT passes unchanged", () => {
  assert.deepEqual(clampGrant(g(6000n, 600_000n, 2000n, 6000n)), {
    ttlMs: 6000,
    windowMs: 600_000,
    renewEveryMs: 2000,
    expiresInMs: 6000,
  });
});
test("clamp: ttl has a floor (50 ms)", () => {
  assert.equal(clampGrant(g(0n, 0n, 0n, 0n)).ttlMs, 50);
  assert.equal(clampGrant(g(1n, 0n, 0n, 0n)).ttlMs, 50);
});
test("clamp: ttl has a ceiling (7 days)", () => {
  assert.equal(clampGrant(g(MAX, 0n, 0n, 0n)).ttlMs, MAX_WIRE_MS);
});
test("clamp: window has a ceiling (7 days)", () => {
  assert.equal(clampGrant(g(6000n, MAX, 2000n, 0n)).windowMs, MAX_WIRE_MS);
});
test("clamp: the renewal interval has a floor (ttl/10, at least 10 ms)", () => {
  assert.equal(clampGrant(g(6000n, 0n, 0n, 0n)).renewEveryMs, 600);
  assert.equal(clampGrant(g(6000n, 0n, 1n, 0n)).renewEveryMs, 600);
  assert.equal(clampGrant(g(50n, 0n, 1n, 0n)).renewEveryMs, 10);
});
test("clamp: the renewal interval has a ceiling (ttl/2)", () => {
  assert.equal(clampGrant(g(6000n, 0n, 60_000n, 0n)).renewEveryMs, 3000);
  assert.equal(clampGrant(g(MAX, 0n, MAX, 0n)).renewEveryMs, MAX_WIRE_MS / 2);
});
test("clamp: expiry has a ceiling (7 days)", () => {
  assert.equal(clampGrant(g(6000n, 0n, 0n, MAX)).expiresInMs, MAX_WIRE_MS);
});
test("clamp: RENEWED expiry and RELEASED kill_in have a ceiling (7 days)", () => {
  assert.equal(wireMs(MAX), MAX_WIRE_MS);
  assert.equal(wireMs(1234n), 1234);
});

// ---------------------------------------------------------------- a fake shellper

interface Fake {
  path: string;
  /** Frames received from the client, in order. */
  got: Frame[];
  close(): Promise<void>;
}

/**
 * A shellper's side of the socket, in this process: WELCOME (naming
 * `claimPid`, default ours), then `grant` for an ACQUIRE, RENEWED for each
 * RENEW. The socket is made 0600, as a shellper's is.
 */
async function fakeShellper(path: string, grant: Grant, claimPid = process.pid): Promise<Fake> {
  const got: Frame[] = [];
  const socks: net.Socket[] = [];
  const server = net.createServer((s) => {
    socks.push(s);
    const dec = new FrameDecoder();
    s.on("error", () => {});
    s.on("data", (chunk) => {
      for (const f of dec.push(chunk)) {
        got.push(f);
        if (f.kind === "HELLO") {
          s.write(
            encodeFrame({
              kind: "WELCOME",
              msg: {
                version: 1,
                pid: 1,
                cols: 80,
                rows: 24,
                startTime: 0,
                alwaysSendsReplay: true,
                lease: { version: 1, leased: true, shellperPid: claimPid },
              },
            }),
          );
        } else if (f.kind === "ACQUIRE") {
          s.write(encodeFrame({ kind: "GRANT", msg: grant }));
        } else if (f.kind === "RENEW") {
          s.write(encodeFrame({ kind: "RENEWED", msg: { epoch: f.msg.epoch, seq: f.msg.seq, expires_in_ms: grant.expires_in_ms } }));
        }
      }
    });
  });
  await new Promise<void>((r) => server.listen(path, r));
  fs.chmodSync(path, 0o600);
  return {
    path,
    got,
    close: () =>
      new Promise<void>((r) => {
        for (const s of socks) s.destroy();
        server.close(() => r());
      }),
  };
}

const SANE: Grant = { epoch: 1n, ttl_ms: 3000n, window_ms: 60_000n, renew_every_ms: 1000n, expires_in_ms: 3000n };

function dirFor(name: string): { dir: string; cleanup: () => void } {
  const { dir, cleanup } = tempScope(name);
  fs.mkdirSync(dir, { mode: 0o700 });
  return { dir, cleanup };
}

test("clamp, live: a GRANT saying renew_every_ms 0 gets at most ten renewals per TTL", async () => {
  const { dir, cleanup } = dirFor("clamp_live");
  const fake = await fakeShellper(join(dir, "sh-00000001.sock"), { ...SANE, renew_every_ms: 0n });
  const h = new LeaseHolder({ socketPath: fake.path, token: Token.random() });
  try {
    await h.acquire();
    await sleep(1500);
    const renews = fake.got.filter((f) => f.kind === "RENEW").length;
    // TTL 3 s: one renewal per 300 ms (±10 % jitter) at most.
    assert.ok(renews >= 1 && renews <= 8, `renew_every_ms 0: ${renews} renewals in 1.5 s`);
  } finally {
    h.abandon();
    await fake.close();
    cleanup();
  }
});

test("clamp, live: a GRANT of u64::MAX durations is held without a renewal storm or a crash", async () => {
  const { dir, cleanup } = dirFor("clamp_huge");
  const fake = await fakeShellper(join(dir, "sh-00000002.sock"), {
    epoch: 1n,
    ttl_ms: MAX,
    window_ms: MAX,
    renew_every_ms: MAX,
    expires_in_ms: MAX,
  });
  const h = new LeaseHolder({ socketPath: fake.path, token: Token.random() });
  const events: string[] = [];
  for (const ev of ["unresponsive", "lapsed", "lost"] as const) h.on(ev, () => events.push(ev));
  try {
    await h.acquire();
    await sleep(500);
    assert.equal(fake.got.filter((f) => f.kind === "RENEW").length, 0);
    assert.deepEqual(events, []);
    assert.equal(h.state, "held");
  } finally {
    h.abandon();
    await fake.close();
    cleanup();
  }
});

// ---------------------------------------------------------------- the socket's owner

async function refusedBeforeAcquire(fake: Fake, h: LeaseHolder, why: RegExp): Promise<void> {
  await assert.rejects(h.acquire(), (e: Error) => e instanceof TrustError && why.test(e.message));
  await sleep(100);
  assert.equal(
    fake.got.filter((f) => f.kind === "ACQUIRE").length,
    0,
    "no ACQUIRE (no token) may reach an unverified socket",
  );
}

test("owner: a socket in a directory others may write to gets no token", async () => {
  const { dir, cleanup } = dirFor("owner_dirmode");
  const fake = await fakeShellper(join(dir, "sh-00000003.sock"), SANE);
  fs.chmodSync(dir, 0o777);
  try {
    await refusedBeforeAcquire(fake, new LeaseHolder({ socketPath: fake.path, token: Token.random() }), /others may replace/);
  } finally {
    await fake.close();
    cleanup();
  }
});

test("owner: a socket with group/other bits gets no token", async () => {
  const { dir, cleanup } = dirFor("owner_sockmode");
  const fake = await fakeShellper(join(dir, "sh-00000004.sock"), SANE);
  fs.chmodSync(fake.path, 0o666);
  try {
    await refusedBeforeAcquire(fake, new LeaseHolder({ socketPath: fake.path, token: Token.random() }), /group\/other/);
  } finally {
    await fake.close();
    cleanup();
  }
});

test("owner: a symlink to a socket gets no token", async () => {
  const { dir, cleanup } = dirFor("owner_symlink");
  const fake = await fakeShellper(join(dir, "real.sock"), SANE);
  const link = join(dir, "sh-00000005.sock");
  fs.symlinkSync(fake.path, link);
  try {
    await refusedBeforeAcquire(fake, new LeaseHolder({ socketPath: link, token: Token.random() }), /symlink/);
  } finally {
    await fake.close();
    cleanup();
  }
});

test("owner: a socket or directory of another uid gets no token", { skip: isRoot ? false : "needs root (chown)" }, async () => {
  const { dir, cleanup } = dirFor("owner_uid");
  const fake = await fakeShellper(join(dir, "sh-00000006.sock"), SANE);
  try {
    fs.chownSync(fake.path, NOBODY, NOBODY);
    await refusedBeforeAcquire(fake, new LeaseHolder({ socketPath: fake.path, token: Token.random() }), /owned by uid 65534/);
    fs.chownSync(fake.path, 0, 0);
    fs.chownSync(dir, NOBODY, NOBODY);
    await refusedBeforeAcquire(fake, new LeaseHolder({ socketPath: fake.path, token: Token.random() }), /owned by uid 65534/);
  } finally {
    await fake.close();
    cleanup();
  }
});

test("peer: the WELCOME must name the pid we spawned, and that pid must hold the listening socket", async () => {
  const { dir, cleanup } = dirFor("peer_pid");
  // Claims to be served by pid 1 (not ours to hold: it does not listen there).
  const fake = await fakeShellper(join(dir, "sh-00000007.sock"), SANE, 1);
  try {
    await refusedBeforeAcquire(fake, new LeaseHolder({ socketPath: fake.path, token: Token.random() }), /not served by pid 1|uid/);
    // We spawned pid 424242; it answers for another one.
    await refusedBeforeAcquire(
      fake,
      new LeaseHolder({ socketPath: fake.path, token: Token.random(), pid: 424242, startTicks: 1n }),
      /served by pid 1, but we expect pid 424242/,
    );
  } finally {
    await fake.close();
    cleanup();
  }
});

test(
  "peer: a listener of another uid behind a path that looks ours gets no token",
  { skip: isRoot ? false : "needs root (a process of another uid, chown)" },
  async () => {
    const { dir, cleanup } = dirFor("peer_uid");
    // The other uid listens in its own directory...
    const theirs = fs.mkdtempSync(join(tmpdir(), "shellper-node-theirs-"));
    fs.chownSync(theirs, NOBODY, NOBODY);
    const theirSock = join(theirs, "s.sock");
    // It answers HELLO with a WELCOME naming itself, and reports the type of
    // every frame it gets (HELLO is 8, ACQUIRE would be 32).
    const script = `
      const net = require("net");
      const welcome = Buffer.from(JSON.stringify({ version: 1, pid: 1, cols: 80, rows: 24, startTime: 0,
        alwaysSendsReplay: true, lease: { version: 1, leased: true, shellperPid: process.pid } }));
      const head = Buffer.alloc(5); head[0] = 9; head.writeUInt32BE(welcome.length, 1);
      const srv = net.createServer((s) => {
        s.on("error", () => {});
        s.on("data", (d) => {
          process.stdout.write("GOT " + d[0] + "\\n");
          if (d[0] === 8) s.write(Buffer.concat([head, welcome]));
        });
      });
      srv.listen(process.argv[1], () => process.stdout.write("LISTENING\\n"));`;
    const child = spawn(process.execPath, ["-e", script, theirSock], { uid: NOBODY, gid: NOBODY, stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout!.on("data", (d) => (out += d));
    try {
      assert.ok(await until(() => out.includes("LISTENING"), 5000), "the other uid's listener did not start");
      // ...and the socket appears in ours, owned by us, mode 0600 (a hard link: same inode).
      const ours = join(dir, "sh-00000008.sock");
      fs.linkSync(theirSock, ours);
      fs.chownSync(ours, 0, 0);
      fs.chmodSync(ours, 0o600);
      const h = new LeaseHolder({ socketPath: ours, token: Token.random(), timeoutMs: 1000 });
      await assert.rejects(h.acquire(), (e: Error) => e instanceof TrustError && /uid 65534/.test(e.message));
      await sleep(200);
      assert.ok(out.includes("GOT 8"), `the HELLO went through: ${out}`);
      assert.ok(!out.includes("GOT 32"), `the other uid's listener got an ACQUIRE: ${out}`);
    } finally {
      child.kill("SIGKILL");
      await until(() => child.exitCode !== null || child.signalCode !== null, 5000);
      fs.rmSync(theirs, { recursive: true, force: true });
      cleanup();
    }
  },
);

// ---------------------------------------------------------------- registry writes

test("registry: a file planted at the old fixed temporary name is neither followed nor clobbered", async () => {
  const { dir, cleanup } = dirFor("reg_symlink");
  const victim = join(dir, "..", "victim");
  fs.writeFileSync(victim, "precious\n");
  fs.symlinkSync(victim, join(dir, "registry.json.tmp"));
  const tower = Tower.open({ scope: dir });
  try {
    tower.scope.writeRegistry({ schema_version: 1, shellpers: [] });
    assert.equal(fs.readFileSync(victim, "utf8"), "precious\n");
    const reg = fs.readFileSync(join(dir, "registry.json"), "utf8");
    assert.deepEqual(parseRegistry(reg), { schema_version: 1, shellpers: [] });
    assert.equal(fs.statSync(join(dir, "registry.json")).mode & 0o777, 0o600);
    const left = fs.readdirSync(dir).filter((n) => n.startsWith(".registry.json.tmp."));
    assert.deepEqual(left, [], "no temporary file left");
  } finally {
    tower.close();
    cleanup();
  }
});

test("registry: never written through a scope replaced under the Tower", async () => {
  const { dir, cleanup } = dirFor("reg_replaced");
  const tower = Tower.open({ scope: dir });
  try {
    fs.renameSync(dir, `${dir}.old`);
    fs.mkdirSync(dir, { mode: 0o700 });
    assert.throws(
      () => tower.scope.writeRegistry({ schema_version: 1, shellpers: [] }),
      (e: Error) => e instanceof ScopeError && /not the one this Tower locked/.test(e.message),
    );
    assert.equal(fs.existsSync(join(dir, "registry.json")), false);
    assert.deepEqual(fs.readdirSync(dir), []);
  } finally {
    tower.close();
    fs.rmSync(`${dir}.old`, { recursive: true, force: true });
    cleanup();
  }
});

test("registry: a scope nobody locked is not written", () => {
  const { dir, cleanup } = dirFor("reg_unlocked");
  try {
    const scope = Scope.open(dir);
    assert.throws(() => scope.writeRegistry({ schema_version: 1, shellpers: [] }), /not locked/);
    assert.equal(fs.existsSync(join(dir, "registry.json")), false);
  } finally {
    cleanup();
  }
});

// ---------------------------------------------------------------- argv

const CONFIG: ShellperConfig = {
  command: "sh",
  args: [],
  cwd: "/",
  env: { API_KEY: "sk-secret-value" },
  cols: 80,
  rows: 24,
  socketPath: "/nonexistent/sh-00000009.sock",
  lease: {},
};

test("argv: no invocation puts the config (the environment) in argv", async () => {
  const inv = invocation("config-stdin", CONFIG, Token.random());
  assert.deepEqual(inv.args, ["--config-stdin"]);
  assert.ok(!inv.args.join(" ").includes("sk-secret-value"));
  assert.throws(() => invocation("argv" as never, CONFIG, Token.random()), /not supported/);
  await assert.rejects(
    spawnShellper({ bin: "/bin/false", config: CONFIG, token: Token.random(), mode: "argv" as never }),
    /not supported/,
  );
});
