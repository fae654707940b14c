/**
 * Who is at the other end of a socket path, checked before a token (or a
 * SPAWN's environment) is sent there (SPEC.md §10). The Rust Tower checks the
 * peer's uid with SO_PEERCRED; Node has no binding for it, so this module
 * checks, without native code:
 *
 * 1. before connecting, the path: a socket (not a symlink) owned by our uid,
 *    with no group/other permission bits, in a directory owned by our uid
 *    that nobody else may write to (so nobody else can have put it there or
 *    swap it afterwards);
 * 2. after WELCOME, the listener: the process the WELCOME names
 *    (`lease.shellperPid`) runs as our uid and holds the very socket that
 *    listens on that path (its inode, from `/proc/net/unix`, among the
 *    process's descriptors). This stands in for SO_PEERCRED: a process of
 *    another uid would have to be that listener, and its descriptors are not
 *    ours to read.
 *
 * Every failure is a {@link TrustError} naming what was wrong; nothing is
 * sent to an unverified peer.
 */
import * as fs from "node:fs";
import { dirname } from "node:path";

/** The socket path or its listener is not provably ours. */
export class TrustError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "TrustError";
  }
}

function me(): number {
  return process.geteuid!();
}

/** Checks the socket file and its directory (step 1). */
export function checkSocketPath(path: string): void {
  const uid = me();
  let st: fs.Stats;
  try {
    st = fs.lstatSync(path);
  } catch (e) {
    throw new TrustError(`socket ${path}: ${(e as Error).message}`);
  }
  if (st.isSymbolicLink()) throw new TrustError(`socket ${path} is a symlink`);
  if (!st.isSocket()) throw new TrustError(`${path} is not a socket`);
  if (st.uid !== uid) throw new TrustError(`socket ${path} is owned by uid ${st.uid}, not by us (uid ${uid})`);
  if ((st.mode & 0o077) !== 0) {
    throw new TrustError(`socket ${path} has mode ${(st.mode & 0o777).toString(8)}: group/other bits must be clear`);
  }
  const dir = dirname(path);
  let d: fs.Stats;
  try {
    d = fs.lstatSync(dir);
  } catch (e) {
    throw new TrustError(`directory ${dir}: ${(e as Error).message}`);
  }
  if (!d.isDirectory()) throw new TrustError(`${dir} is not a directory`);
  if (d.uid !== uid) throw new TrustError(`directory ${dir} of socket ${path} is owned by uid ${d.uid}, not by us (uid ${uid})`);
  if ((d.mode & 0o022) !== 0) {
    throw new TrustError(
      `directory ${dir} of socket ${path} has mode ${(d.mode & 0o777).toString(8)}: others may replace the socket`,
    );
  }
}

/** Inodes of the sockets listening on `path` (`/proc/net/unix`, state LISTEN). */
export function listeningInodes(path: string, table?: string): Set<string> {
  const text = table ?? fs.readFileSync("/proc/net/unix", "latin1");
  const out = new Set<string>();
  for (const line of text.split("\n").slice(1)) {
    // Num RefCount Protocol Flags Type St Inode Path
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const flags = parseInt(f[3], 16);
    const listening = (flags & 0x10000) !== 0; // __SO_ACCEPTCON
    if (listening && f.slice(7).join(" ") === path) out.add(f[6]);
  }
  return out;
}

/**
 * Checks that `pid` runs as our uid and holds the socket listening on
 * `path` (step 2).
 */
export function checkListener(path: string, pid: number): void {
  const uid = me();
  let owner: number;
  try {
    owner = fs.statSync(`/proc/${pid}`).uid;
  } catch (e) {
    throw new TrustError(`socket ${path}: the process it names (pid ${pid}) is not there: ${(e as Error).message}`);
  }
  if (owner !== uid) throw new TrustError(`socket ${path} is served by pid ${pid} of uid ${owner}, not by us (uid ${uid})`);
  let inodes: Set<string>;
  try {
    inodes = listeningInodes(path);
  } catch (e) {
    throw new TrustError(`socket ${path}: cannot read /proc/net/unix to check its listener: ${(e as Error).message}`);
  }
  if (inodes.size === 0) throw new TrustError(`socket ${path}: nothing listens on it (per /proc/net/unix)`);
  let fds: string[];
  try {
    fds = fs.readdirSync(`/proc/${pid}/fd`);
  } catch (e) {
    throw new TrustError(`socket ${path}: cannot read the descriptors of pid ${pid}: ${(e as Error).message}`);
  }
  for (const fd of fds) {
    let link: string;
    try {
      link = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    const m = /^socket:\[(\d+)\]$/.exec(link);
    if (m && inodes.has(m[1])) return;
  }
  throw new TrustError(`socket ${path} is not served by pid ${pid} (the process its WELCOME names)`);
}
