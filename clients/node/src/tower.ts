/**
 * `Tower`: a small Tower that holds many shellpers of one scope from a
 * single timer, as the Rust tower-client does: it takes the scope's instance
 * lock, spawns in leased mode, records each shellper with its token in
 * `registry.json`, re-adopts the registry's live shellpers after a restart,
 * and detaches or terminates everything on request.
 */
import { EventEmitter } from "node:events";
import { LeaseHolder, type HolderEvents } from "./holder";
import { sameProcessAlive } from "./proc";
import { Scheduler } from "./sched";
import { InstanceLock, Scope, newShellperId, type RegistryEntry } from "./scope";
import { spawnShellper, type LeaseSettings, type SpawnMode } from "./spawn";
import { Token } from "./token";
import type { Terminated } from "./frames";

export interface TowerOptions {
  /** The scope directory (default: `$XDG_RUNTIME_DIR/shellper`, …). */
  scope?: string;
  /** The shellper binary (default: `shellper` on PATH). */
  shellperBin?: string;
  /** Lease settings for new shellpers. */
  lease?: LeaseSettings;
  /** Holder name shown in STATUS / `leasectl` (default `node-tower@PID`). */
  name?: string;
  spawnMode?: SpawnMode;
  /** Connect/request deadline per shellper (default 3000 ms). */
  timeoutMs?: number;
}

export interface SpawnRequest {
  command: string;
  args?: string[];
  cwd?: string;
  /** Overrides merged over this process's environment (the child's whole env, as codev does). */
  env?: Record<string, string | undefined>;
  cols?: number;
  rows?: number;
  replayBufferLines?: number;
  replayBufferBytes?: number;
}

/** One held shellper. */
export interface Session {
  readonly id: string;
  readonly entry: RegistryEntry;
  readonly holder: LeaseHolder;
}

/**
 * Tower events: every holder event, with the shellper's id first; and
 * `registryError` when dropping an entry could not be written (the scope
 * was replaced under the Tower, the disk is full): the entry stays on disk.
 */
export type TowerEvents = { [K in keyof HolderEvents]: [string, ...HolderEvents[K]] } & {
  registryError: [string, Error];
};

export interface AdoptReport {
  adopted: string[];
  /** Registry entries whose process is gone (dropped from the registry). */
  gone: string[];
  failed: { id: string; error: Error }[];
}

export class Tower extends EventEmitter {
  readonly scope: Scope;
  readonly sessions = new Map<string, Session>();
  private readonly sched = new Scheduler();
  private lock: InstanceLock | undefined;

  private constructor(
    scope: Scope,
    lock: InstanceLock,
    private readonly opts: TowerOptions,
  ) {
    super();
    this.scope = scope;
    this.lock = lock;
  }

  /** Opens the scope and takes its instance lock (throws `ScopeLockedError` if another Tower has it). */
  static open(opts: TowerOptions = {}): Tower {
    const scope = Scope.open(opts.scope);
    const lock = scope.lock();
    return new Tower(scope, lock, opts);
  }

  override on<K extends keyof TowerEvents>(event: K, listener: (...args: TowerEvents[K]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }
  override emit<K extends keyof TowerEvents>(event: K, ...args: TowerEvents[K]): boolean {
    return super.emit(event, ...args);
  }

  private holderFor(entry: RegistryEntry): LeaseHolder {
    const h = new LeaseHolder({
      socketPath: entry.socket,
      token: Token.fromHex(entry.token),
      pid: entry.pid,
      startTicks: BigInt(entry.start_ticks),
      scheduler: this.sched,
      ...(this.opts.name !== undefined ? { name: this.opts.name } : {}),
      ...(this.opts.timeoutMs !== undefined ? { timeoutMs: this.opts.timeoutMs } : {}),
    });
    for (const ev of ["granted", "unresponsive", "responsive", "lapsed", "revoked", "exited", "lost", "refused"] as const) {
      h.on(ev, (...args: unknown[]) => (this.emit as (e: string, ...a: unknown[]) => boolean)(ev, entry.id, ...args));
    }
    // A shellper that is gone, revoked or ended leaves the registry: nothing of ours to re-adopt.
    h.on("lost", () => this.forget(entry.id));
    h.on("revoked", () => this.forget(entry.id));
    return h;
  }

  /** Spawns a shellper in leased mode, records it, and acquires its lease. */
  async spawn(req: SpawnRequest): Promise<Session> {
    const id = newShellperId();
    const token = Token.random();
    const socket = this.scope.socketPath(id);
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries({ ...process.env, ...(req.env ?? {}) })) {
      if (v !== undefined) env[k] = v;
    }
    const cwd = req.cwd ?? process.cwd();
    const args = req.args ?? [];
    const spawned = await spawnShellper({
      bin: this.opts.shellperBin ?? "shellper",
      token,
      logPath: this.scope.logPath(id),
      ...(this.opts.spawnMode ? { mode: this.opts.spawnMode } : {}),
      config: {
        command: req.command,
        args,
        cwd,
        env,
        cols: req.cols ?? 80,
        rows: req.rows ?? 24,
        socketPath: socket,
        lease: this.opts.lease ?? {},
        ...(req.replayBufferLines !== undefined ? { replayBufferLines: req.replayBufferLines } : {}),
        ...(req.replayBufferBytes !== undefined ? { replayBufferBytes: req.replayBufferBytes } : {}),
      },
    });
    const entry: RegistryEntry = {
      id,
      token: token.revealHex(),
      pid: spawned.pid,
      start_ticks: Number(spawned.startTicks),
      socket,
      command: req.command,
      args,
      cwd,
      created_at_ms: Date.now(),
    };
    // Recorded before the acquire: a Tower that dies right now can still re-adopt it.
    this.record(entry);
    const holder = this.holderFor(entry);
    spawned.child.once("exit", () => holder.markGone("shellper process exited"));
    try {
      await holder.acquire();
    } catch (e) {
      spawned.child.kill("SIGTERM");
      this.forget(id);
      throw e;
    }
    const s: Session = { id, entry, holder };
    this.sessions.set(id, s);
    return s;
  }

  /**
   * Re-adopts every shellper of the registry this Tower does not hold yet:
   * those whose process (pid + start time) still runs are re-acquired with
   * their token; the others are dropped from the registry.
   */
  async adoptAll(): Promise<AdoptReport> {
    const report: AdoptReport = { adopted: [], gone: [], failed: [] };
    const entries = this.scope.readRegistry().shellpers.filter((e) => !this.sessions.has(e.id));
    await Promise.all(
      entries.map(async (entry) => {
        if (!sameProcessAlive(entry.pid, BigInt(entry.start_ticks))) {
          report.gone.push(entry.id);
          this.forget(entry.id);
          return;
        }
        const holder = this.holderFor(entry);
        try {
          await holder.acquire();
          this.sessions.set(entry.id, { id: entry.id, entry, holder });
          report.adopted.push(entry.id);
        } catch (e) {
          report.failed.push({ id: entry.id, error: e as Error });
        }
      }),
    );
    return report;
  }

  /** Detaches every held shellper (the sessions survive for `max(holdMs, window)`). */
  async detachAll(holdMs?: number): Promise<void> {
    await Promise.all(
      [...this.sessions.values()].map(async (s) => {
        this.sessions.delete(s.id);
        if (s.holder.state === "held") await s.holder.detach(holdMs).catch(() => undefined);
      }),
    );
  }

  /** Terminates every held shellper and waits until each is gone; returns the reports. */
  async terminateAll(timeoutMs?: number): Promise<Map<string, Terminated | Error>> {
    const out = new Map<string, Terminated | Error>();
    await Promise.all(
      [...this.sessions.values()].map(async (s) => {
        try {
          out.set(s.id, await s.holder.terminate(timeoutMs));
        } catch (e) {
          out.set(s.id, e as Error);
        }
        this.forget(s.id);
      }),
    );
    return out;
  }

  /** Releases the instance lock (after detachAll/terminateAll). Idempotent. */
  close(): void {
    for (const s of this.sessions.values()) s.holder.abandon();
    this.sessions.clear();
    this.lock?.release();
    this.lock = undefined;
  }

  private record(entry: RegistryEntry): void {
    const reg = this.scope.readRegistry();
    reg.shellpers = reg.shellpers.filter((e) => e.id !== entry.id);
    reg.shellpers.push(entry);
    this.scope.writeRegistry(reg);
  }

  /** Drops `id` from the sessions and the registry. Called from holder events: never throws. */
  private forget(id: string): void {
    this.sessions.delete(id);
    try {
      const reg = this.scope.readRegistry();
      const kept = reg.shellpers.filter((e) => e.id !== id);
      if (kept.length !== reg.shellpers.length) this.scope.writeRegistry({ schema_version: 1, shellpers: kept });
    } catch (e) {
      this.emit("registryError", id, e as Error);
    }
  }
}
