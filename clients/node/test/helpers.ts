// Test support: the binaries under test, a leak guard like the Rust
// testkit's LeakGuard, polling with deadlines, a throwaway scope.
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import * as fs from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { procStat } from "../src/proc";

/** The workspace root (clients/node/dist/test -> ../../../..). */
export const WORKSPACE = resolve(__dirname, "..", "..", "..", "..");

/** The shellper under test: `SHELLPER_BIN`, else the workspace's release build. */
export const SHELLPER_BIN = process.env.SHELLPER_BIN || join(WORKSPACE, "target", "release", "shellper");
/** A workspace binary: `$VAR`, else the release build, else the debug build (`cargo test --workspace` makes it). */
function workspaceBin(name: string, envVar: string): string {
  const fromEnv = process.env[envVar];
  if (fromEnv) return fromEnv;
  const release = join(WORKSPACE, "target", "release", name);
  return fs.existsSync(release) ? release : join(WORKSPACE, "target", "debug", name);
}
/** leasectl: `LEASECTL_BIN`, else the workspace's build. */
export const LEASECTL_BIN = workspaceBin("leasectl", "LEASECTL_BIN");
/** minitower: `MINITOWER_BIN`, else the workspace's build. */
export const MINITOWER_BIN = workspaceBin("minitower", "MINITOWER_BIN");
/** The package's own Node Tower (compiled). */
export const NODE_TOWER = join(__dirname, "..", "src", "bin", "node-tower.js");

export const LEAK_TAG_VAR = "SHELLPER_LEAK_TAG";

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `cond` every 20 ms until it holds or `timeoutMs` passes; returns whether it held. */
export async function until(cond: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (await cond()) return true;
    if (performance.now() >= deadline) return false;
    await sleep(20);
  }
}

/** A live (not zombie) process, as a leak report names it. */
export interface Survivor {
  pid: number;
  state: string;
  cmdline: string;
}

function envHas(pid: number, needle: Buffer): boolean {
  try {
    const env = fs.readFileSync(`/proc/${pid}/environ`);
    let start = 0;
    for (let i = 0; i <= env.length; i++) {
      if (i === env.length || env[i] === 0) {
        if (i - start === needle.length && env.subarray(start, i).equals(needle)) return true;
        start = i + 1;
      }
    }
  } catch {
    // gone, or not ours to read
  }
  return false;
}

/**
 * Tags every process a test starts with `SHELLPER_LEAK_TAG=<unique>` (the
 * variable survives fork, exec, setsid and double forks) and proves at
 * teardown, by scanning /proc, that none is alive. Zombies do not count: on
 * these machines nobody reaps orphans.
 */
export class LeakGuard {
  readonly tag: string;
  constructor(name: string) {
    this.tag = `${name.replace(/[^A-Za-z0-9_-]/g, "_").slice(0, 64)}-${process.pid}-${randomBytes(8).toString("hex")}`;
  }

  /** An environment carrying the tag (this process's env plus `extra`). */
  env(extra: Record<string, string> = {}): Record<string, string> {
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) if (v !== undefined) out[k] = v;
    return { ...out, ...extra, [LEAK_TAG_VAR]: this.tag };
  }

  survivors(): Survivor[] {
    const needle = Buffer.from(`${LEAK_TAG_VAR}=${this.tag}`);
    const found: Survivor[] = [];
    for (const name of fs.readdirSync("/proc")) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      if (pid === process.pid) continue;
      const st = procStat(pid);
      if (!st || st.state === "Z" || st.state === "X") continue;
      if (!envHas(pid, needle)) continue;
      let cmdline = "";
      try {
        cmdline = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").join(" ").trim();
      } catch {
        // gone meanwhile
      }
      found.push({ pid, state: st.state, cmdline });
    }
    return found;
  }

  /** Waits up to `timeoutMs` for every tagged process to be gone; returns the survivors. */
  async waitGone(timeoutMs: number): Promise<Survivor[]> {
    let last: Survivor[] = [];
    await until(() => (last = this.survivors()).length === 0, timeoutMs);
    return last;
  }

  killAll(): Survivor[] {
    const all: Survivor[] = [];
    for (let pass = 0; pass < 20; pass++) {
      const s = this.survivors();
      if (s.length === 0) break;
      for (const p of s) {
        if (!all.some((x) => x.pid === p.pid)) all.push(p);
        try {
          process.kill(p.pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
    }
    return all;
  }

  /** Teardown: waits `settleMs` for the tree to exit on its own, then kills and throws naming survivors. */
  async finish(settleMs = 2000): Promise<void> {
    const left = await this.waitGone(settleMs);
    if (left.length === 0) return;
    const killed = this.killAll();
    const names = [...left, ...killed.filter((k) => !left.some((l) => l.pid === k.pid))]
      .map((s) => `  pid ${s.pid} state ${s.state} ${s.cmdline}`)
      .join("\n");
    throw new Error(`leak guard ${this.tag}: process(es) survived the test:\n${names}`);
  }
}

/** A fresh scope directory (0700) under the temp dir; removed by the returned cleanup. */
export function tempScope(name: string): { dir: string; cleanup: () => void } {
  const base = fs.mkdtempSync(join(tmpdir(), `shellper-node-${name}-`));
  fs.chmodSync(base, 0o700);
  const dir = join(base, "scope");
  return { dir, cleanup: () => fs.rmSync(base, { recursive: true, force: true }) };
}

/** A running Node Tower (a child process, so SIGSTOP stops it and not the test runner). */
export class TowerProcess {
  readonly events: Record<string, unknown>[] = [];
  stderr = "";
  exited: { code: number | null; signal: string | null } | undefined;
  private waiters: (() => void)[] = [];

  constructor(readonly child: ChildProcess) {
    let buf = "";
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (s: string) => {
      buf += s;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        try {
          this.events.push(JSON.parse(line));
        } catch {
          this.events.push({ event: "unparsed", line });
        }
        this.wake();
      }
    });
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (s: string) => (this.stderr += s));
    child.on("exit", (code, signal) => {
      this.exited = { code, signal };
      this.wake();
    });
  }

  static start(guard: LeakGuard, args: string[]): TowerProcess {
    const child = spawn(process.execPath, [NODE_TOWER, "--shellper", SHELLPER_BIN, ...args], {
      env: guard.env(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    return new TowerProcess(child);
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** The exit code once exited (`undefined` while running, `null` if killed by a signal). */
  get exitCode(): number | null | undefined {
    return this.exited?.code;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Waits for an event matching `pred`; throws with the stderr on timeout or exit. */
  async waitEvent(pred: (e: Record<string, unknown>) => boolean, timeoutMs: number, what: string): Promise<Record<string, unknown>> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const hit = this.events.find(pred);
      if (hit) return hit;
      if (this.exited) throw new Error(`node-tower exited (${JSON.stringify(this.exited)}) before ${what}; stderr: ${this.stderr}`);
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(`no ${what} within ${timeoutMs} ms; events: ${JSON.stringify(this.events)}; stderr: ${this.stderr}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async waitExit(timeoutMs: number): Promise<void> {
    if (!(await until(() => this.exited !== undefined, timeoutMs))) {
      throw new Error(`node-tower still running after ${timeoutMs} ms`);
    }
  }

  kill(sig: NodeJS.Signals): void {
    if (this.exited === undefined) this.child.kill(sig);
  }
}
