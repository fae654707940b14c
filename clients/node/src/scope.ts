/**
 * A Tower's scope directory (SPEC.md §2, docs/CONVENTIONS.md): the directory
 * checks, the instance lock `tower.lock` and the registry `registry.json`,
 * in the same format as the Rust tower-client, so minitower, leasectl and a
 * Node Tower can share a scope, one at a time.
 */
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { randomBytes } from "node:crypto";

/** Anything wrong with a scope: permissions, owner, lock, registry. */
export class ScopeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ScopeError";
  }
}

/** The scope is locked by another Tower. */
export class ScopeLockedError extends ScopeError {
  constructor(
    readonly dir: string,
    readonly holderPid: number | undefined,
  ) {
    super(
      `scope ${dir} is in use by another Tower` +
        (holderPid === undefined ? "" : ` (pid ${holderPid}, from tower.lock)`),
    );
    this.name = "ScopeLockedError";
  }
}

/** One shellper the Tower spawned, with the token that leases it. */
export interface RegistryEntry {
  id: string;
  /** 64 lowercase hex digits. */
  token: string;
  pid: number;
  /** Field 22 of /proc/PID/stat: with the pid, the shellper's identity. */
  start_ticks: number;
  socket: string;
  command: string;
  args: string[];
  cwd: string;
  created_at_ms: number;
}

export interface Registry {
  schema_version: 1;
  shellpers: RegistryEntry[];
}

/** The default scope: `$XDG_RUNTIME_DIR/shellper`, else `$TMPDIR/shellper-<uid>`. */
export function defaultScopeDir(): string {
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg) return join(xdg, "shellper");
  return join(process.env.TMPDIR || tmpdir() || "/tmp", `shellper-${process.getuid!()}`);
}

/** A fresh shellper id: `sh-` and 8 lowercase hex digits. */
export function newShellperId(): string {
  return `sh-${randomBytes(4).toString("hex")}`;
}

const ID_RE = /^sh-[0-9a-f]{8}$/;
const TOKEN_RE = /^[0-9a-f]{64}$/;

/** Prefix of the registry's temporary files (the Rust tower-client's too, which removes stale ones). */
export const REGISTRY_TMP_PREFIX = ".registry.json.tmp.";

/** Device and inode of a file: what a path cannot fake when it is re-created. */
interface FileId {
  dev: number;
  ino: number;
}

function idOf(st: fs.Stats): FileId {
  return { dev: st.dev, ino: st.ino };
}

/** An opened (not locked) scope directory. */
export class Scope {
  /** What {@link lock} locked: the directory and `tower.lock`, by device and inode. */
  private locked: { dir: FileId; lock: FileId } | undefined;

  private constructor(readonly dir: string) {}

  /**
   * Opens `dir`, creating it (0700) if missing. Refuses a symlink, a
   * directory owned by another uid, or one with group/other permission bits.
   */
  static open(dir: string = defaultScopeDir(), create = true): Scope {
    if (create) fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    let st: fs.Stats;
    try {
      st = fs.lstatSync(dir);
    } catch (e) {
      throw new ScopeError(`scope ${dir}: ${(e as Error).message}`);
    }
    if (st.isSymbolicLink()) throw new ScopeError(`scope ${dir} is a symlink`);
    if (!st.isDirectory()) throw new ScopeError(`scope ${dir} is not a directory`);
    if (st.uid !== process.getuid!()) {
      throw new ScopeError(`scope ${dir} is owned by uid ${st.uid}, not by us (${process.getuid!()})`);
    }
    if ((st.mode & 0o077) !== 0) {
      throw new ScopeError(
        `scope ${dir} has mode ${(st.mode & 0o777).toString(8)}: group/other bits must be clear (chmod 700)`,
      );
    }
    return new Scope(dir);
  }

  get lockPath(): string {
    return join(this.dir, "tower.lock");
  }
  get registryPath(): string {
    return join(this.dir, "registry.json");
  }
  socketPath(id: string): string {
    return join(this.dir, `${id}.sock`);
  }
  logPath(id: string): string {
    return join(this.dir, `${id}.log`);
  }

  /**
   * Takes the instance lock: `flock(LOCK_EX|LOCK_NB)` on `tower.lock`, then
   * writes our pid into it. Node has no flock(2) binding and this package
   * has no native code, so the lock is taken by util-linux's `flock`
   * command on a descriptor it inherits from us: a flock belongs to the open
   * file description, which this process keeps open after the command exits,
   * so the lock lives exactly as long as this process (or
   * {@link InstanceLock.release}). The descriptor is close-on-exec, so no
   * shellper inherits it.
   */
  lock(): InstanceLock {
    const fd = fs.openSync(
      this.lockPath,
      fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW,
      0o600,
    );
    const CONFLICT = 75;
    const r = spawnSync("flock", ["--exclusive", "--nonblock", "--conflict-exit-code", String(CONFLICT), "3"], {
      stdio: ["ignore", "ignore", "pipe", fd],
      timeout: 10_000,
    });
    if (r.status !== 0) {
      fs.closeSync(fd);
      if (r.status === CONFLICT) throw new ScopeLockedError(this.dir, this.writtenLockPid());
      const why = r.error ? r.error.message : `exit ${r.status}: ${r.stderr?.toString().trim()}`;
      throw new ScopeError(`cannot lock ${this.lockPath} with flock(1): ${why}`);
    }
    fs.ftruncateSync(fd, 0);
    fs.writeSync(fd, String(process.pid), 0);
    fs.fsyncSync(fd);
    this.locked = { dir: idOf(fs.lstatSync(this.dir)), lock: idOf(fs.fstatSync(fd)) };
    return new InstanceLock(fd);
  }

  /**
   * Throws unless the scope directory and `tower.lock` are still the ones
   * {@link lock} locked (device and inode): a Tower never writes through a
   * scope that was replaced under it (deleted and re-created, a second
   * Tower starting there).
   */
  verifyLocked(): void {
    if (!this.locked) throw new ScopeError(`scope ${this.dir} is not locked by this Tower: nothing is written`);
    const same = (p: string, want: FileId): string | undefined => {
      try {
        const st = fs.lstatSync(p);
        return st.dev === want.dev && st.ino === want.ino ? undefined : `${p} was replaced`;
      } catch (e) {
        return `${p}: ${(e as Error).message}`;
      }
    };
    const why = same(this.dir, this.locked.dir) ?? same(this.lockPath, this.locked.lock);
    if (why) throw new ScopeError(`scope ${this.dir} is not the one this Tower locked (${why}): nothing is written`);
  }

  /** The pid written in `tower.lock` (the last Tower that locked it). */
  writtenLockPid(): number | undefined {
    try {
      const n = Number(fs.readFileSync(this.lockPath, "utf8").trim());
      return Number.isInteger(n) && n > 0 ? n : undefined;
    } catch {
      return undefined;
    }
  }

  /** The registry; empty when the file does not exist, an error when it does not parse. */
  readRegistry(): Registry {
    let text: string;
    try {
      text = fs.readFileSync(this.registryPath, "utf8");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return { schema_version: 1, shellpers: [] };
      throw new ScopeError(`reading ${this.registryPath}: ${(e as Error).message}`);
    }
    return parseRegistry(text, this.registryPath);
  }

  /**
   * Replaces the registry atomically, as the Rust registry does (SPEC.md
   * §2): checks the scope is still the one locked ({@link verifyLocked}),
   * writes a temporary file of a unique name created exclusively (never
   * following a symlink, mode 0600), fsyncs it, renames it over
   * `registry.json` and fsyncs the directory so the rename itself is
   * durable. On any failure the temporary file is removed and the previous
   * registry stays.
   */
  writeRegistry(reg: Registry): void {
    this.verifyLocked();
    const text = JSON.stringify(reg, null, 2) + "\n";
    const tmp = join(this.dir, `${REGISTRY_TMP_PREFIX}${process.pid}.${randomBytes(4).readUInt32BE(0)}`);
    const { O_WRONLY, O_CREAT, O_EXCL, O_NOFOLLOW } = fs.constants;
    try {
      const fd = fs.openSync(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o600);
      try {
        fs.writeSync(fd, text);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      fs.renameSync(tmp, this.registryPath);
    } catch (e) {
      try {
        fs.unlinkSync(tmp);
      } catch {
        // never created, or renamed already
      }
      throw new ScopeError(`writing ${this.registryPath}: ${(e as Error).message}`);
    }
    const dfd = fs.openSync(this.dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  }
}

/** The held instance lock; released when the process exits or on {@link release}. */
export class InstanceLock {
  constructor(private fd: number | undefined) {}
  release(): void {
    if (this.fd !== undefined) {
      fs.closeSync(this.fd);
      this.fd = undefined;
    }
  }
}

/** Parses and checks a registry document. */
export function parseRegistry(text: string, where = "registry.json"): Registry {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new ScopeError(`${where} does not parse: ${(e as Error).message}`);
  }
  const bad = (why: string) => new ScopeError(`${where} is invalid: ${why}`);
  if (typeof v !== "object" || v === null) throw bad("not an object");
  const o = v as Record<string, unknown>;
  if (o.schema_version !== 1) throw bad(`schema_version ${JSON.stringify(o.schema_version)} (expected 1)`);
  if (!Array.isArray(o.shellpers)) throw bad("shellpers is not an array");
  const shellpers = o.shellpers.map((e: unknown, i: number): RegistryEntry => {
    const x = e as Record<string, unknown>;
    const isNat = (n: unknown) => typeof n === "number" && Number.isSafeInteger(n) && n >= 0;
    if (typeof x !== "object" || x === null) throw bad(`entry ${i} is not an object`);
    if (typeof x.id !== "string" || !ID_RE.test(x.id)) throw bad(`entry ${i}: id ${JSON.stringify(x.id)}`);
    if (typeof x.token !== "string" || !TOKEN_RE.test(x.token)) throw bad(`entry ${x.id}: token is not 64 hex digits`);
    for (const k of ["pid", "start_ticks", "created_at_ms"]) {
      if (!isNat(x[k])) throw bad(`entry ${x.id}: ${k}`);
    }
    for (const k of ["socket", "command", "cwd"]) {
      if (typeof x[k] !== "string") throw bad(`entry ${x.id}: ${k}`);
    }
    if (!Array.isArray(x.args) || !x.args.every((a) => typeof a === "string")) throw bad(`entry ${x.id}: args`);
    return {
      id: x.id,
      token: x.token,
      pid: x.pid as number,
      start_ticks: x.start_ticks as number,
      socket: x.socket as string,
      command: x.command as string,
      args: x.args as string[],
      cwd: x.cwd as string,
      created_at_ms: x.created_at_ms as number,
    };
  });
  return { schema_version: 1, shellpers };
}
