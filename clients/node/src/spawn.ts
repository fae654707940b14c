/**
 * Starting a shellper in leased mode (SPEC.md §3, docs/CONVENTIONS.md).
 *
 * A Tower of ours runs `shellper --config-stdin`: argv carries neither the
 * config nor the environment (both are readable by every process of the
 * user through /proc), and stdin carries line 1 the token (64 lowercase hex),
 * line 2 the whole JSON config (compact, one line), then EOF. The shellper
 * answers with one line `{"pid":…,"startTime":…}` on stdout, read here with
 * a timeout. Its stderr goes to `<id>.log` (append). Any failure kills what
 * was started (SIGTERM, so the shellper runs its own kill ladder; SIGKILL if
 * it does not go) and reports the step and the log's tail.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import { procStat, waitGone } from "./proc";
import type { Token } from "./token";

/** Lease settings of a shellper; every field optional (defaults in SPEC.md §3). */
export interface LeaseSettings {
  ttlMs?: number;
  windowMs?: number;
  claimMs?: number;
  killGraceMs?: number;
}

/** The shellper's JSON config: codev's fields plus `lease` (SPEC.md §3). */
export interface ShellperConfig {
  command: string;
  args: string[];
  cwd: string;
  /** The child's whole environment (it does not inherit the shellper's). */
  env: Record<string, string>;
  cols: number;
  rows: number;
  socketPath: string;
  replayBufferLines?: number;
  replayBufferBytes?: number;
  lease: LeaseSettings;
  handshakeTimeoutMs?: number;
}

/**
 * How the config reaches the shellper: `config-stdin`, the only form this
 * package writes. The argv form (config as the last argument) is codev's:
 * it puts `env`, which usually holds secrets, in `/proc/PID/cmdline`, which
 * every user of the host can read, so this package refuses it.
 */
export type SpawnMode = "config-stdin";

export interface SpawnOptions {
  /** The shellper binary. */
  bin: string;
  config: ShellperConfig;
  token: Token;
  /** Where the shellper's stderr goes (appended). */
  logPath?: string;
  /** How long to wait for the info line (default 10 s). */
  infoTimeoutMs?: number;
  mode?: SpawnMode;
  /** The shellper process's own environment (default: this process's). */
  processEnv?: NodeJS.ProcessEnv;
}

export interface Spawned {
  pid: number;
  /** Field 22 of /proc/PID/stat: with the pid, the shellper's identity. */
  startTicks: bigint;
  /** Wall-clock start (ms since the epoch) as the shellper reported it. */
  startTime: number;
  /** Our handle on the process: its `exit` event is how we learn it is gone. */
  child: ChildProcess;
}

/** Spawning failed at `step`; whatever was started has been killed. */
export class SpawnError extends Error {
  constructor(
    readonly step: string,
    message: string,
    readonly logTail: string,
  ) {
    super(`spawning a shellper failed at ${step}: ${message}${logTail ? `\n--- log tail ---\n${logTail}` : ""}`);
    this.name = "SpawnError";
  }
}

/**
 * argv and stdin for one spawn: the single place that knows the invocation.
 * Nothing of the config is in argv; any mode but `config-stdin` (from
 * JavaScript, or an older caller asking for `argv`) is refused.
 */
export function invocation(mode: SpawnMode, config: ShellperConfig, token: Token): { args: string[]; stdin: string } {
  if (mode !== "config-stdin") {
    throw new RangeError(
      `spawn mode ${JSON.stringify(mode)} is not supported: only config-stdin (the argv form would put the environment in /proc/PID/cmdline)`,
    );
  }
  const json = JSON.stringify(config);
  return { args: ["--config-stdin"], stdin: `${token.revealHex()}\n${json}\n` };
}

function tail(path: string | undefined, max = 4096): string {
  if (!path) return "";
  try {
    const buf = fs.readFileSync(path);
    return buf.subarray(Math.max(0, buf.length - max)).toString("utf8").trim();
  } catch {
    return "";
  }
}

export async function spawnShellper(opts: SpawnOptions): Promise<Spawned> {
  const mode = opts.mode ?? "config-stdin";
  const { args, stdin } = invocation(mode, opts.config, opts.token);
  const logFd = opts.logPath !== undefined ? fs.openSync(opts.logPath, "a", 0o600) : "ignore";
  let child: ChildProcess;
  try {
    child = spawn(opts.bin, args, {
      stdio: ["pipe", "pipe", logFd],
      env: opts.processEnv ?? process.env,
      cwd: "/",
    });
  } finally {
    if (typeof logFd === "number") fs.closeSync(logFd);
  }
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  child.once("exit", (code, signal) => {
    exited = { code, signal };
  });

  const fail = async (step: string, message: string): Promise<never> => {
    if (exited === undefined && child.pid !== undefined) {
      const pid = child.pid;
      const st = procStat(pid);
      child.kill("SIGTERM");
      if (st) {
        try {
          await waitGone(pid, st.startTicks, 10_000);
        } catch {
          child.kill("SIGKILL");
        }
      }
    }
    throw new SpawnError(step, message, tail(opts.logPath));
  };

  const spawnError = await new Promise<Error | undefined>((resolve) => {
    child.once("spawn", () => resolve(undefined));
    child.once("error", (e) => resolve(e));
  });
  if (spawnError) return fail("exec", `${opts.bin}: ${spawnError.message}`);

  // stdin: the token (and config); an EPIPE here means it exited early, which
  // the info-line step reports with the log.
  child.stdin!.on("error", () => {});
  child.stdin!.end(stdin);

  const timeoutMs = opts.infoTimeoutMs ?? 10_000;
  let line: string;
  try {
    line = await new Promise<string>((resolve, reject) => {
      let got = "";
      const timer = setTimeout(() => reject(new Error(`no info line within ${timeoutMs} ms`)), timeoutMs);
      const out = child.stdout!;
      out.setEncoding("utf8");
      out.on("data", (s: string) => {
        got += s;
        const nl = got.indexOf("\n");
        if (nl >= 0) {
          clearTimeout(timer);
          resolve(got.slice(0, nl));
        } else if (got.length > 64 * 1024) {
          clearTimeout(timer);
          reject(new Error("info line longer than 64 KiB"));
        }
      });
      out.on("end", () => {
        clearTimeout(timer);
        reject(new Error(`stdout closed without an info line${exited ? ` (exit ${exited.code ?? exited.signal})` : ""}`));
      });
    });
  } catch (e) {
    return fail("info line", (e as Error).message);
  }
  child.stdout!.destroy();

  let info: { pid?: unknown; startTime?: unknown };
  try {
    info = JSON.parse(line);
  } catch (e) {
    return fail("info line", `not JSON: ${JSON.stringify(line.slice(0, 200))}`);
  }
  if (info.pid !== child.pid || typeof info.startTime !== "number") {
    return fail("info line", `unexpected ${line.slice(0, 200)} (spawned pid ${child.pid})`);
  }
  const st = procStat(child.pid!);
  if (!st) return fail("identity", `process ${child.pid} vanished after its info line`);
  // The shellper outlives this process if need be: do not keep the loop alive for it.
  child.unref();
  return { pid: child.pid!, startTicks: st.startTicks, startTime: info.startTime, child };
}
