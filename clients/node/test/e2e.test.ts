// End to end against the real shellper of this repository (SHELLPER_BIN,
// default target/release/shellper): a Node Tower acquires, renews, detaches,
// terminates, is stopped and killed, and shares a scope with leasectl and
// minitower. Every test runs under a LeakGuard.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { promisify } from "node:util";
import {
  Connection,
  LeaseHolder,
  ScopeLockedError,
  Token,
  Tower,
  queryStatus,
  spawnShellper,
  type Frame,
  type SpawnMode,
} from "../src/index";
import { sameProcessAlive } from "../src/proc";
import {
  LEASECTL_BIN,
  MINITOWER_BIN,
  SHELLPER_BIN,
  LeakGuard,
  TowerProcess,
  sleep,
  tempScope,
  until,
} from "./helpers";

const run = promisify(execFile);

/** JSON for assertion messages (bigints as numbers). */
function j(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? Number(x) : x));
}

if (!existsSync(SHELLPER_BIN)) {
  throw new Error(`no shellper at ${SHELLPER_BIN}: build it (cargo build --release -p shellper) or set SHELLPER_BIN`);
}

/** Every event a Tower emitted, for assertions. */
function record(tower: Tower): { ev: string; id: string; info: Record<string, unknown> }[] {
  const log: { ev: string; id: string; info: Record<string, unknown> }[] = [];
  for (const ev of ["granted", "unresponsive", "responsive", "lapsed", "revoked", "exited", "lost"] as const) {
    tower.on(ev, (id: string, info: object) => log.push({ ev, id, info: info as Record<string, unknown> }));
  }
  return log;
}

/** Runs `body` with a tagged environment, a scope, and the leak check at the end. */
async function withGuard(name: string, body: (g: LeakGuard, scope: string) => Promise<void>, settleMs = 3000): Promise<void> {
  const guard = new LeakGuard(name);
  const { dir, cleanup } = tempScope(name);
  const saved = process.env.SHELLPER_LEAK_TAG;
  process.env.SHELLPER_LEAK_TAG = guard.tag;
  try {
    await body(guard, dir);
  } catch (e) {
    guard.killAll();
    throw e;
  } finally {
    if (saved === undefined) delete process.env.SHELLPER_LEAK_TAG;
    else process.env.SHELLPER_LEAK_TAG = saved;
  }
  try {
    await guard.finish(settleMs);
  } finally {
    cleanup();
  }
}

const TREE = ["-c", "sleep 300 & setsid sleep 300 & (trap '' HUP TERM; sleep 300) & wait"];

for (const mode of ["config-stdin"] as SpawnMode[]) {
  test(`s06 acquire, renew for several TTLs, leasectl shows the Node Tower, terminate confirms the tree gone (${mode})`, async () => {
    await withGuard(`renew_${mode}`, async (_g, scope) => {
      const tower = Tower.open({
        scope,
        shellperBin: SHELLPER_BIN,
        name: "node-tower-test",
        spawnMode: mode,
        lease: { ttlMs: 300, windowMs: 3000, claimMs: 5000, killGraceMs: 500 },
      });
      const log = record(tower);
      try {
        const s = await tower.spawn({ command: "sh", args: TREE });
        assert.equal(s.holder.epoch, 1n);
        // Nothing of the config (env included) is in argv.
        const argv = readFileSync(`/proc/${s.entry.pid}/cmdline`, "utf8").split("\0");
        assert.deepEqual(argv.filter((a) => a !== ""), [SHELLPER_BIN, "--config-stdin"]);
        await sleep(2000); // more than six TTLs
        assert.deepEqual(log.filter((e) => e.ev !== "granted"), [], "no lapse while renewing");
        const st = await queryStatus(s.entry.socket);
        assert.equal(st.phase, "Held");
        assert.equal(st.epoch, 1n);
        assert.equal(st.holder?.name, "node-tower-test");
        assert.equal(st.holder_peer_pid, process.pid);
        assert.ok(st.counters.renewals >= 6n, `only ${st.counters.renewals} renewals`);
        assert.equal(st.counters.lapses, 0n);

        // leasectl sees the Node Tower as the holder and as the scope's Tower.
        const { stdout } = await run(LEASECTL_BIN, ["--scope", scope, "list", "--json"], { timeout: 20_000 });
        const listed = JSON.parse(stdout);
        assert.equal(listed.schema_version, 1);
        assert.equal(listed.shellpers.length, 1);
        const e = listed.shellpers[0];
        assert.equal(e.id, s.id);
        assert.equal(e.phase.toLowerCase(), "held");
        assert.match(j(e.holder), /node-tower-test/);
        const { stdout: table } = await run(LEASECTL_BIN, ["--scope", scope, "list"], { timeout: 20_000 });
        assert.match(table, /node-tower-test/);

        const report = await tower.terminateAll();
        const r = report.get(s.id);
        assert.ok(r && !(r instanceof Error), `terminate failed: ${r}`);
        assert.equal(r.reason, "Requested");
        assert.equal(r.survivors, 0);
        assert.ok(r.signalled >= 3, `signalled only ${r.signalled}`);
        assert.ok(!sameProcessAlive(s.entry.pid, BigInt(s.entry.start_ticks)));
        assert.deepEqual(tower.scope.readRegistry().shellpers, []);
      } finally {
        tower.close();
      }
    }, 500);
  });
}

test("s03 SIGSTOP of the Node Tower past the TTL: the lease lapses, the tree dies after the window, the resumed Tower learns it", async () => {
  await withGuard("sigstop", async (_g, scope) => {
    const ttl = 300;
    const window = 1500;
    const grace = 500;
    const t = TowerProcess.start(_g, ["--scope", scope, "--ttl", `${ttl}ms`, "--window", `${window}ms`, "--kill-grace", `${grace}ms`, "--spawn", "1", "--", "sh", ...TREE]);
    try {
      const spawned = await t.waitEvent((e) => e.event === "spawned", 15_000, "spawned");
      await t.waitEvent((e) => e.event === "ready", 5_000, "ready");
      const socket = `${scope}/${spawned.id}.sock`;
      await sleep(4 * ttl);
      assert.equal((await queryStatus(socket)).phase, "Held");

      t.kill("SIGSTOP");
      const stoppedAt = performance.now();
      assert.ok(await until(async () => (await queryStatus(socket).catch(() => undefined))?.phase === "Lapsed", ttl + 3000), "never lapsed");
      const lapsedAt = performance.now();
      // Not before the window: still there shortly before lapse + window.
      await sleep(Math.max(0, window - 400 - (performance.now() - lapsedAt)));
      const alive = _g.survivors().filter((s) => s.pid !== t.pid);
      assert.ok(alive.length >= 4, `the tree died before its window: ${j(alive)}`);
      // Gone within TTL + window + kill grace + margin of the stop.
      const left = await until(() => _g.survivors().every((s) => s.pid === t.pid), ttl + window + grace + 2500 - (performance.now() - stoppedAt));
      assert.ok(left, `survivors: ${j(_g.survivors())}`);

      t.kill("SIGCONT");
      const lost = await t.waitEvent((e) => e.event === "lost", 10_000, "lost after SIGCONT");
      assert.equal(lost.id, spawned.id);
      await sleep(300);
      assert.equal(t.exited, undefined, `the resumed Tower crashed: ${t.stderr}`);
      t.kill("SIGTERM");
      await t.waitEvent((e) => e.event === "bye", 10_000, "bye");
      await t.waitExit(5000);
      assert.equal(t.exitCode, 0);
    } finally {
      t.kill("SIGCONT");
      t.kill("SIGKILL");
    }
  });
});

test("s02 Tower SIGKILLed and restarted within the window: re-adopted with the token, new epoch, same child", async () => {
  await withGuard("restart", async (g, scope) => {
    const args = ["--scope", scope, "--ttl", "300ms", "--window", "20s", "--kill-grace", "500ms"];
    const a = TowerProcess.start(g, [...args, "--spawn", "2", "--", "sh", ...TREE]);
    let b: TowerProcess | undefined;
    try {
      await a.waitEvent((e) => e.event === "ready", 20_000, "ready");
      const ids = a.events.filter((e) => e.event === "spawned").map((e) => e.id as string);
      assert.equal(ids.length, 2);
      const before = await Promise.all(ids.map((id) => queryStatus(`${scope}/${id}.sock`)));
      a.kill("SIGKILL");
      await a.waitExit(5000);
      // The shellpers saw EOF: lapsed at once, waiting for a Tower.
      assert.ok(await until(async () => (await queryStatus(`${scope}/${ids[0]}.sock`)).phase === "Lapsed", 3000));

      b = TowerProcess.start(g, [...args, "--on-exit", "terminate"]);
      const ready = await b.waitEvent((e) => e.event === "ready", 15_000, "ready (B)");
      assert.equal(ready.held, 2);
      const adopted = b.events.filter((e) => e.event === "adopted").map((e) => e.id).sort();
      assert.deepEqual(adopted, [...ids].sort());
      await sleep(1000);
      for (const [i, id] of ids.entries()) {
        const st = await queryStatus(`${scope}/${id}.sock`);
        assert.equal(st.phase, "Held");
        assert.equal(st.epoch, 2n);
        assert.equal(st.holder_peer_pid, b.pid);
        assert.equal(st.child_pid, before[i].child_pid, "the same child, nothing restarted");
        assert.equal(st.counters.lapses, 1n);
      }
      b.kill("SIGTERM");
      const terminated = await Promise.all(ids.map((id) => b!.waitEvent((e) => e.event === "terminated" && e.id === id, 15_000, `terminated ${id}`)));
      for (const r of terminated) assert.equal(r.survivors, 0);
      await b.waitExit(5000);
      assert.equal(b.exited?.code, 0);
    } finally {
      a.kill("SIGKILL");
      b?.kill("SIGKILL");
    }
  });
});

test("s10 fencing: a newer acquire revokes the old holder, which never re-acquires; a stale epoch is rejected", async () => {
  await withGuard("fencing", async (_g, scope) => {
    const token = Token.random();
    const socketPath = `${scope}/sh-0000f00d.sock`;
    const sp = await spawnShellper({
      bin: SHELLPER_BIN,
      token,
      logPath: `${scope}.log`,
      config: {
        command: "sleep",
        args: ["300"],
        cwd: "/",
        env: { PATH: process.env.PATH ?? "/usr/bin:/bin", SHELLPER_LEAK_TAG: process.env.SHELLPER_LEAK_TAG! },
        cols: 80,
        rows: 24,
        socketPath,
        lease: { ttlMs: 300, windowMs: 3000, claimMs: 5000, killGraceMs: 500 },
      },
    });
    const a = new LeaseHolder({ socketPath, token, name: "old", pid: sp.pid, startTicks: sp.startTicks });
    const b = new LeaseHolder({ socketPath, token, name: "new", pid: sp.pid, startTicks: sp.startTicks });
    try {
      const revoked = new Promise<{ oldEpoch: bigint; newEpoch?: bigint }>((r) => a.once("revoked", r));
      assert.equal((await a.acquire()).epoch, 1n);
      assert.equal((await b.acquire()).epoch, 2n);
      const rv = await revoked;
      assert.equal(rv.oldEpoch, 1n);
      assert.equal(rv.newEpoch, 2n);
      assert.equal(a.state, "revoked");
      await sleep(1000);
      const st = await queryStatus(socketPath);
      assert.equal(st.epoch, 2n, "the revoked holder did not re-acquire");
      assert.equal(st.holder?.name, "new");

      // A stale Tower (epoch 1) on a connection of its own: its RENEW and
      // RELEASE are refused and change nothing. The epoch is checked first
      // (StaleEpoch); the current epoch from a non-holder is NotHolder.
      const { conn } = await Connection.open(socketPath);
      const error = async () =>
        ((await conn.waitFor((f) => f.kind === "ERROR", 3000, "ERROR", false)) as Extract<Frame, { kind: "ERROR" }>).msg.code;
      try {
        conn.send({ kind: "RENEW", msg: { epoch: 1n, seq: 1n } });
        assert.equal(await error(), "StaleEpoch");
        conn.send({ kind: "RELEASE", msg: { epoch: 1n, mode: { mode: "Terminate" } } });
        assert.equal(await error(), "StaleEpoch");
        conn.send({ kind: "RENEW", msg: { epoch: 2n, seq: 1n } });
        assert.equal(await error(), "NotHolder");
        // A wrong token is refused as such.
        conn.send({ kind: "ACQUIRE", msg: { token: Token.random().bytes, holder: { name: "x", pid: 1 } } });
        assert.equal(await error(), "BadToken");
      } finally {
        conn.close();
      }
      const st2 = await queryStatus(socketPath);
      assert.equal(st2.phase, "Held");
      assert.equal(st2.epoch, 2n);
      assert.equal(st2.counters.rejected_tokens, 1n);
      assert.equal(st2.counters.stale_epochs, 2n);
      const r = await b.terminate();
      assert.equal(r.reason, "Requested");
    } finally {
      a.abandon();
      b.abandon();
    }
  }, 1000);
});

test("s08 detach with a hold keeps the session; another Tower re-adopts it; the child's exit is reported", async () => {
  await withGuard("detach", async (_g, scope) => {
    const opts = { scope, shellperBin: SHELLPER_BIN, lease: { ttlMs: 300, windowMs: 1000, claimMs: 5000, killGraceMs: 500 } };
    const t1 = Tower.open(opts);
    const s = await t1.spawn({ command: "sh", args: ["-c", "read x; exit 7"] });
    const [{ killInMs }] = await Promise.all([s.holder.detach(4000)]);
    assert.ok(killInMs > 3000 && killInMs <= 4000, `kill_in_ms ${killInMs}`);
    t1.close();
    // Past TTL + window, within the hold: still alive and lapsed.
    await sleep(1500);
    const st = await queryStatus(s.entry.socket);
    assert.equal(st.phase, "Lapsed");

    const t2 = Tower.open(opts);
    const log = record(t2);
    try {
      const rep = await t2.adoptAll();
      assert.deepEqual(rep.adopted, [s.id]);
      const exited = new Promise((r) => t2.on("exited", (id, info) => r({ id, ...info })));
      // Make the child exit through a terminal connection: it reads a line.
      const { conn } = await Connection.open(s.entry.socket, { clientType: "terminal" });
      conn.send({ kind: "DATA", data: Buffer.from("\n") });
      assert.deepEqual(await exited, { id: s.id, code: 7, signal: "0" });
      conn.close();
      // A husk while held: still there, and restarted in place by SPAWN.
      await sleep(500);
      const husk = await queryStatus(s.entry.socket);
      assert.equal(husk.phase, "Held");
      assert.deepEqual(husk.child, { state: "Exited", code: 7 });
      t2.sessions.get(s.id)!.holder.respawn({ command: "sleep", args: ["300"], cwd: "/" });
      assert.ok(await until(async () => (await queryStatus(s.entry.socket)).child.state === "Running", 5000), "SPAWN did not restart the child");
      const r = await t2.terminateAll();
      assert.equal((r.get(s.id) as { survivors: number }).survivors, 0);
      assert.ok(!log.some((e) => e.ev === "lost" || e.ev === "lapsed"), j(log));
    } finally {
      t2.close();
    }
  }, 1000);
});

test("s09 one scope, one Tower: a second Node Tower and minitower are refused while a Node Tower holds it", async () => {
  await withGuard("lock", async (_g, scope) => {
    const t1 = Tower.open({ scope, shellperBin: SHELLPER_BIN });
    try {
      assert.throws(() => Tower.open({ scope, shellperBin: SHELLPER_BIN }), (e: unknown) => e instanceof ScopeLockedError && e.holderPid === process.pid);
      if (existsSync(MINITOWER_BIN)) {
        const r = await run(MINITOWER_BIN, ["--scope", scope], { timeout: 20_000 }).then(
          () => ({ code: 0, stderr: "" }),
          (e: { code: number; stderr: string }) => e,
        );
        assert.notEqual(r.code, 0, "minitower started on a locked scope");
        assert.match(r.stderr, new RegExp(String(process.pid)));
      }
    } finally {
      t1.close();
    }
    // Released: the next Tower gets it.
    Tower.open({ scope, shellperBin: SHELLPER_BIN }).close();
  }, 500);
});

test("s09 minitower adopts what a Node Tower spawned (same registry, same lock)", { skip: !existsSync(MINITOWER_BIN) && "no minitower binary" }, async () => {
  await withGuard("minitower", async (g, scope) => {
    const t = Tower.open({ scope, shellperBin: SHELLPER_BIN, lease: { ttlMs: 300, windowMs: 20_000, killGraceMs: 500 } });
    const s = await t.spawn({ command: "sh", args: TREE });
    await t.detachAll();
    t.close();
    const mt = new TowerProcess(
      spawn(MINITOWER_BIN, ["--scope", scope, "--on-exit", "terminate"], { env: g.env(), stdio: ["ignore", "pipe", "pipe"] }),
    );
    try {
      const ready = await mt.waitEvent((e) => e.event === "ready", 15_000, "minitower ready");
      assert.equal(ready.held, 1);
      assert.ok(mt.events.some((e) => e.event === "adopted" && e.id === s.id), j(mt.events));
      await sleep(700);
      const st = await queryStatus(s.entry.socket);
      assert.equal(st.phase, "Held");
      assert.equal(st.epoch, 2n);
      assert.equal(st.holder_peer_pid, mt.pid);
      mt.kill("SIGTERM");
      await mt.waitExit(15_000);
      assert.equal(mt.exited?.code, 0, mt.stderr);
    } finally {
      mt.kill("SIGKILL");
    }
  });
});

test("s04 a stopped shellper: the holder reports unresponsive and lapsed, then responsive once it runs again", async () => {
  await withGuard("shellper_stop", async (_g, scope) => {
    const t = Tower.open({ scope, shellperBin: SHELLPER_BIN, lease: { ttlMs: 300, windowMs: 5000, killGraceMs: 500 } });
    const log = record(t);
    try {
      const s = await t.spawn({ command: "sleep", args: ["300"] });
      process.kill(s.entry.pid, "SIGSTOP");
      assert.ok(await until(() => log.some((e) => e.ev === "lapsed"), 3000), j(log));
      process.kill(s.entry.pid, "SIGCONT");
      assert.ok(await until(() => log.some((e) => e.ev === "responsive"), 3000), j(log));
      const order = log.map((e) => e.ev).filter((e) => e !== "granted");
      assert.deepEqual(order, ["unresponsive", "lapsed", "responsive"]);
      const st = await queryStatus(s.entry.socket);
      assert.equal(st.phase, "Held");
      assert.equal(st.epoch, 1n, "the same lease, no re-acquire");
      await t.terminateAll();
    } finally {
      t.close();
    }
  }, 1000);
});
