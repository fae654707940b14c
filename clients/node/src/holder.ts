/**
 * `LeaseHolder`: holds the lease of one shellper (SPEC.md §7–§8).
 *
 * It opens a lease-only connection (`clientType:"tower", lease:1,
 * replay:false, data:false`), acquires with the token, then renews from the
 * event loop: each RENEW is timed from the last RENEWED received (not from a
 * fixed grid), at the interval the GRANT suggests with ±10 % jitter. It
 * reports what happens as typed events:
 *
 * | event | when |
 * |---|---|
 * | `granted` | a GRANT (first acquire, or re-acquire after the connection was lost) |
 * | `unresponsive` | no RENEWED for one TTL (SPEC.md §8.3) |
 * | `responsive` | a RENEWED arrived again after `unresponsive` or `lapsed` |
 * | `lapsed` | the lease has expired at the shellper by our clock (we keep renewing: a silent holder that renews before the kill deadline is held again) |
 * | `revoked` | REVOKED, or a renewal refused with StaleEpoch/NotHolder: another Tower holds it now; we never re-acquire on our own |
 * | `exited` | the PTY child exited (EXIT; `signal` is `"0"` for a normal exit): the shellper stays, a husk, until we SPAWN a new child or terminate it |
 * | `lost` | the shellper is gone (with its TERMINATED report when one arrived), or its connection closed and we could not hold it again |
 * | `refused` | an ERROR other than a revocation (a SIGNAL outside the allow-list, a SPAWN that failed) |
 *
 * A holder created with the shellper's identity (`pid` and `startTicks`)
 * tells a closed connection from a dead shellper: while the process lives it
 * reconnects and re-acquires with the token (a new epoch); once it is gone,
 * `lost`.
 */
import { EventEmitter } from "node:events";
import { Connection, LeaseError } from "./conn";
import { truncateHolderName, type ErrorCode, type Frame, type Grant, type Terminated, type Welcome } from "./frames";
import { sameProcessAlive, waitGone } from "./proc";
import { Scheduler, now, type Scheduled } from "./sched";
import { Token } from "./token";
import { TrustError, checkListener, checkSocketPath } from "./trust";

/** The longest duration taken from the wire into a timer (7 days), SPEC.md §5. */
export const MAX_WIRE_MS = 7 * 24 * 3600 * 1000;
/** The shortest TTL a Tower believes (the protocol's minimum, SPEC.md §8.3). */
export const MIN_TTL_MS = 50;
/** The shortest renewal interval a Tower uses, whatever it is told. */
export const MIN_RENEW_MS = 10;

/** A duration from the wire, in 0 ..= {@link MAX_WIRE_MS}. */
export function wireMs(v: bigint): number {
  if (v < 0n) return 0;
  return v > BigInt(MAX_WIRE_MS) ? MAX_WIRE_MS : Number(v);
}

/** A GRANT's durations as this holder uses them (ms). */
export interface GrantTimes {
  ttlMs: number;
  windowMs: number;
  renewEveryMs: number;
  expiresInMs: number;
}

/**
 * Clamps a GRANT's durations as SPEC.md §5 says (the same rules as the Rust
 * `shellper_protocol::clamp::GrantTimes`): TTL in [50 ms, 7 d], window and
 * expiry at most 7 d, the renewal interval in [max(10 ms, ttl/10), ttl/2] of
 * the clamped TTL, so a shellper can neither make us renew in a busy loop nor
 * let the lease lapse between renewals.
 */
export function clampGrant(g: Pick<Grant, "ttl_ms" | "window_ms" | "renew_every_ms" | "expires_in_ms">): GrantTimes {
  const ttlMs = Math.max(MIN_TTL_MS, wireMs(g.ttl_ms));
  const floor = Math.max(MIN_RENEW_MS, ttlMs / 10);
  return {
    ttlMs,
    windowMs: wireMs(g.window_ms),
    renewEveryMs: Math.min(Math.max(wireMs(g.renew_every_ms), floor), ttlMs / 2),
    expiresInMs: wireMs(g.expires_in_ms),
  };
}

export interface HolderOptions {
  socketPath: string;
  token: Token;
  /** Holder name shown in STATUS and `leasectl` (≤ 256 bytes). */
  name?: string;
  /** The shellper's pid and start time: lets the holder tell "connection lost" from "shellper gone". */
  pid?: number;
  startTicks?: bigint;
  /** Share one timer among many holders (a {@link Tower} passes its own). */
  scheduler?: Scheduler;
  /** Connect / request deadline (default 3000 ms). */
  timeoutMs?: number;
  /** Renewal jitter as a fraction (default 0.1 = ±10 %). */
  jitter?: number;
}

export interface HolderEvents {
  granted: [{ epoch: bigint; grant: Grant }];
  unresponsive: [{ sinceAckMs: number }];
  responsive: [{ afterMs: number }];
  lapsed: [{ sinceAckMs: number }];
  revoked: [{ oldEpoch: bigint; newEpoch?: bigint; reason: string }];
  exited: [{ code: number | null; signal: string }];
  lost: [{ reason: string; terminated?: Terminated }];
  /** An ERROR on the lease connection other than a revocation (a refused SIGNAL or SPAWN, …). */
  refused: [{ code: ErrorCode; message: string }];
}

export type HolderState = "idle" | "held" | "reconnecting" | "released" | "terminated" | "revoked" | "lost";

export class LeaseHolder extends EventEmitter {
  readonly socketPath: string;
  readonly name: string;
  pid: number | undefined;
  startTicks: bigint | undefined;
  private readonly token: Token;
  private readonly sched: Scheduler;
  private readonly timeoutMs: number;
  private readonly jitter: number;

  private conn: Connection | undefined;
  private welcome: Welcome | undefined;
  private stateV: HolderState = "idle";
  private epochV = 0n;
  private seq = 0n;
  private ttlMs = 0;
  private renewEveryMs = 0;
  private lastAck = 0;
  private isUnresponsive = false;
  private isLapsed = false;
  private timers: Scheduled[] = [];
  private terminatedReport: Terminated | undefined;

  constructor(opts: HolderOptions) {
    super();
    this.socketPath = opts.socketPath;
    this.token = opts.token;
    this.name = truncateHolderName(opts.name ?? `node-tower@${process.pid}`);
    this.pid = opts.pid;
    this.startTicks = opts.startTicks;
    this.sched = opts.scheduler ?? new Scheduler();
    this.timeoutMs = opts.timeoutMs ?? 3000;
    this.jitter = opts.jitter ?? 0.1;
  }

  override on<K extends keyof HolderEvents>(event: K, listener: (...args: HolderEvents[K]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }
  override once<K extends keyof HolderEvents>(event: K, listener: (...args: HolderEvents[K]) => void): this {
    return super.once(event, listener as (...args: unknown[]) => void);
  }
  override emit<K extends keyof HolderEvents>(event: K, ...args: HolderEvents[K]): boolean {
    return super.emit(event, ...args);
  }

  get state(): HolderState {
    return this.stateV;
  }
  get epoch(): bigint {
    return this.epochV;
  }
  /** The shellper's WELCOME on the lease connection. */
  get welcomeInfo(): Welcome | undefined {
    return this.welcome;
  }

  /**
   * Connects and acquires the lease. Rejects with a {@link LeaseError}
   * (`BadToken`, `NotLeased` for a legacy shellper, `Terminating`, `Timeout`, …)
   * or a {@link TrustError} when the socket is not provably ours: the token
   * is sent only after the socket, its directory and the listening process
   * were checked (see `trust.ts`), and only to the shellper we expect (the
   * pid the WELCOME names must be ours to hold, when we know it).
   */
  async acquire(): Promise<Grant> {
    if (this.stateV === "held") throw new Error(`already holding ${this.socketPath}`);
    checkSocketPath(this.socketPath);
    const { conn, welcome } = await Connection.open(this.socketPath, { timeoutMs: this.timeoutMs });
    try {
      if (!welcome.lease || !welcome.lease.leased) {
        throw new LeaseError("NotLeased", `${this.socketPath} runs in legacy mode (no lease)`);
      }
      const served = welcome.lease.shellperPid;
      if (this.pid !== undefined && served !== this.pid) {
        throw new TrustError(`socket ${this.socketPath} is served by pid ${served}, but we expect pid ${this.pid}`);
      }
      checkListener(this.socketPath, served);
      if (this.pid === undefined) this.pid = served;
      conn.send({
        kind: "ACQUIRE",
        msg: { token: this.token.bytes, holder: { name: this.name, pid: process.pid } },
      });
      const f = await conn.waitFor((f) => f.kind === "GRANT", this.timeoutMs, "GRANT");
      const grant = (f as Extract<Frame, { kind: "GRANT" }>).msg;
      this.conn = conn;
      this.welcome = welcome;
      conn.on("frame", (fr: Frame) => this.onFrame(fr));
      conn.on("close", (err?: Error) => this.onClose(conn, err));
      this.stateV = "held";
      this.epochV = grant.epoch;
      const times = clampGrant(grant);
      this.ttlMs = times.ttlMs;
      this.renewEveryMs = times.renewEveryMs;
      this.isUnresponsive = false;
      this.isLapsed = false;
      this.acked(times.expiresInMs);
      this.emit("granted", { epoch: grant.epoch, grant });
      return grant;
    } catch (e) {
      conn.close();
      throw e;
    }
  }

  /**
   * Releases the lease but keeps the session: the shellper waits
   * `max(holdMs, window)` for a Tower to re-acquire (SPEC.md §8.2). Resolves
   * with the shellper's `kill_in_ms`.
   */
  async detach(holdMs?: number): Promise<{ killInMs: number }> {
    const conn = this.requireHeld("detach");
    this.stop("released");
    conn.send({
      kind: "RELEASE",
      msg: { epoch: this.epochV, mode: { mode: "Detach", hold_ms: BigInt(Math.max(0, Math.round(holdMs ?? 0))) } },
    });
    try {
      const f = await conn.waitFor((f) => f.kind === "RELEASED", this.timeoutMs, "RELEASED");
      return { killInMs: wireMs((f as Extract<Frame, { kind: "RELEASED" }>).msg.kill_in_ms) };
    } finally {
      conn.close();
    }
  }

  /**
   * Ends the session: RELEASE Terminate, then waits for the TERMINATED
   * report and for the shellper process to be gone (the shellper kills its
   * whole tree before it reports). Rejects if either takes longer than
   * `timeoutMs` (default 20 s: the kill grace defaults to 3 s).
   */
  async terminate(timeoutMs = 20_000): Promise<Terminated> {
    const conn = this.requireHeld("terminate");
    this.stop("terminated");
    const deadline = now() + timeoutMs;
    conn.send({ kind: "RELEASE", msg: { epoch: this.epochV, mode: { mode: "Terminate" } } });
    let report: Terminated;
    try {
      const f = await conn.waitFor((f) => f.kind === "TERMINATED", timeoutMs, "TERMINATED");
      report = (f as Extract<Frame, { kind: "TERMINATED" }>).msg;
    } finally {
      conn.close();
    }
    if (this.pid !== undefined && this.startTicks !== undefined) {
      await waitGone(this.pid, this.startTicks, Math.max(0, deadline - now()));
    }
    return report;
  }

  /**
   * Signals the PTY child (holder only; SPEC.md §6.1: 1, 2, 9, 15, 28). The
   * protocol has no acknowledgment; a refusal arrives as an ERROR, reported
   * through the `refused` event.
   */
  signal(signal: number): void {
    this.requireHeld("signal").send({ kind: "SIGNAL", msg: { signal } });
  }

  /**
   * Replaces the PTY child with a new command (SPAWN, holder only): the
   * restart-in-place codev uses for a session whose command exited.
   */
  respawn(cmd: { command: string; args?: string[]; cwd: string; env?: Record<string, string> }): void {
    this.requireHeld("respawn").send({
      kind: "SPAWN",
      msg: { command: cmd.command, args: cmd.args ?? [], cwd: cmd.cwd, env: cmd.env ?? {} },
    });
  }

  /** Drops the connection without releasing (what a crash looks like to the shellper). */
  abandon(): void {
    const c = this.conn;
    this.stop("released");
    c?.close();
  }

  /** Declares the shellper gone (its owner saw the process exit): stops and emits `lost`. */
  markGone(reason: string): void {
    if (this.stateV === "lost" || this.stateV === "terminated") return;
    const c = this.conn;
    this.stop("lost");
    c?.close();
    this.emit("lost", { reason, ...(this.terminatedReport ? { terminated: this.terminatedReport } : {}) });
  }

  private requireHeld(what: string): Connection {
    if (this.stateV !== "held" || !this.conn || this.conn.closed) {
      throw new LeaseError("NotHolder", `cannot ${what}: the lease of ${this.socketPath} is not held (${this.stateV})`);
    }
    return this.conn;
  }

  private clearTimers(): void {
    for (const t of this.timers) t.cancel();
    this.timers = [];
  }

  private stop(state: HolderState): void {
    this.stateV = state;
    this.clearTimers();
    this.conn = undefined;
  }

  private jittered(ms: number): number {
    return ms * (1 + (Math.random() * 2 - 1) * this.jitter);
  }

  /** A RENEWED or GRANT arrived: re-time everything from now. */
  private acked(expiresInMs: number): void {
    const t = now();
    const recovered = this.isUnresponsive || this.isLapsed;
    const since = t - this.lastAck;
    this.lastAck = t;
    this.isUnresponsive = false;
    this.isLapsed = false;
    this.clearTimers();
    this.timers.push(
      this.sched.at(t + this.jittered(this.renewEveryMs), () => this.renew()),
      this.sched.at(t + this.ttlMs, () => this.onUnresponsive()),
      this.sched.at(t + expiresInMs, () => this.onLapsed()),
    );
    if (recovered) this.emit("responsive", { afterMs: since });
  }

  private renew(): void {
    if (this.stateV !== "held" || !this.conn) return;
    this.seq += 1n;
    this.conn.send({ kind: "RENEW", msg: { epoch: this.epochV, seq: this.seq } });
    // If no RENEWED comes, try again one interval later; a RENEWED re-times this.
    this.timers.push(this.sched.after(this.jittered(this.renewEveryMs), () => this.renew()));
  }

  private onUnresponsive(): void {
    if (this.stateV !== "held" || this.isUnresponsive) return;
    this.isUnresponsive = true;
    this.emit("unresponsive", { sinceAckMs: now() - this.lastAck });
  }

  private onLapsed(): void {
    if (this.stateV !== "held" || this.isLapsed) return;
    this.onUnresponsive();
    this.isLapsed = true;
    this.emit("lapsed", { sinceAckMs: now() - this.lastAck });
  }

  private onFrame(f: Frame): void {
    switch (f.kind) {
      case "RENEWED":
        if (this.stateV === "held" && f.msg.epoch === this.epochV) this.acked(wireMs(f.msg.expires_in_ms));
        break;
      case "REVOKED":
        this.revoke(f.msg.old_epoch, f.msg.new_epoch, "REVOKED: another holder acquired the lease");
        break;
      case "ERROR":
        if (f.msg.code === "StaleEpoch" || f.msg.code === "NotHolder") {
          this.revoke(this.epochV, undefined, `${f.msg.code}: ${f.msg.message}`);
        } else {
          this.emit("refused", { code: f.msg.code, message: f.msg.message });
        }
        break;
      case "EXIT":
        // A normal exit is signal "0" (node-pty's shape); older shellpers sent null.
        this.emit("exited", { code: f.msg.code, signal: f.msg.signal ?? "0" });
        break;
      case "TERMINATED":
        this.terminatedReport = f.msg;
        break;
      default:
        break;
    }
  }

  private revoke(oldEpoch: bigint, newEpoch: bigint | undefined, reason: string): void {
    if (this.stateV !== "held") return;
    const c = this.conn;
    this.stop("revoked");
    c?.close();
    this.emit("revoked", { oldEpoch, ...(newEpoch !== undefined ? { newEpoch } : {}), reason });
  }

  private onClose(conn: Connection, err?: Error): void {
    if (this.conn !== conn || this.stateV !== "held") return;
    this.clearTimers();
    this.conn = undefined;
    const why = err ? `connection closed: ${err.message}` : "connection closed";
    if (this.terminatedReport) {
      this.markGone(`shellper terminated (${this.terminatedReport.reason})`);
      return;
    }
    if (this.pid === undefined || this.startTicks === undefined) {
      this.markGone(why);
      return;
    }
    this.stateV = "reconnecting";
    void this.reconnect(why);
  }

  /** The shellper may still be alive: re-acquire with the token until it is, or until it is gone. */
  private async reconnect(why: string): Promise<void> {
    while (this.stateV === "reconnecting") {
      if (!sameProcessAlive(this.pid!, this.startTicks!)) {
        this.markGone(`shellper process gone (${why})`);
        return;
      }
      try {
        this.stateV = "idle";
        await this.acquire();
        return;
      } catch (e) {
        if (this.stateV !== "idle") return;
        if (e instanceof LeaseError && e.code === "BadToken") {
          this.markGone(`re-acquire refused: ${e.message}`);
          return;
        }
        this.stateV = "reconnecting";
      }
      // A stop() meanwhile cancels this timer; the loop then simply ends here.
      await new Promise<void>((r) => {
        this.timers.push(this.sched.after(Math.max(50, this.renewEveryMs / 2), r));
      });
    }
  }
}
