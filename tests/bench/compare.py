#!/usr/bin/env python3
"""Side-by-side figures: our shellper against dtach, tmux and a Node PTY
server, every row measured in the same run (run through compare.sh, which
installs the peers and builds the binaries).

Rows (BENCHMARKS.md says what each means and what limits it):
  memory     idle session holding `bash`: peak RSS (VmHWM), steady RSS
             (VmRSS after idling) and PSS with 10 sessions running
  spawn      exec -> socket accepting, and -> the child's first output
             readable through the session's socket
  teardown   a 50-process escape tree: our explicit terminate against
             `tmux kill-session` and `kill` of the dtach master
  reaction   Tower SIGKILLed -> shellper lapsed; deadline -> last
             descendant gone
  scale      tower-client's hold_bench at several counts (Tower CPU, RSS,
             adoption), and one long hold at the largest count
  terminal   sessions under real terminal use (issue 18): RSS after a
             chatty program (a million small flushed writes), nobody
             attached and one client reading; RSS holding a full replay
             (10,000 lines; 8 MiB without a newline); output throughput to
             one client reading as fast as it can and CPU seconds per
             100 MB, against reading the PTY directly; ours alone: the echo
             flood and the partial-frame attack, peak and after

Every process started here carries SHELLPER_LEAK_TAG=<run tag> in its
environment; whatever happens, everything tagged is SIGKILLed at exit.
"""

import argparse
import atexit
import json
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

TAG_VAR = "SHELLPER_LEAK_TAG"
RUN_TAG = f"bench-compare-{os.getpid()}"
TOKEN = bytes([0x42] * 32)
BASH = ["bash", "--norc", "--noprofile"]

# The 50-process escape tree of shellper/examples/bench.rs: background jobs
# in their own groups (set -m), setsid, double-forked setsid daemons, nohup,
# HUP-ignoring processes. Nothing ignores TERM.
ESCAPE_TREE = r"""set -m
for i in $(seq 1 10); do sleep 1000 & done
for i in $(seq 1 10); do setsid sleep 1000 & done
for i in $(seq 1 10); do ( ( setsid sleep 1000 & ) & ) ; done
for i in $(seq 1 10); do nohup sleep 1000 >/dev/null 2>&1 & done
for i in $(seq 1 9); do (trap '' HUP; exec sleep 1000) & done
wait"""
# A smaller one for the reaction runs (five processes, same kinds).
SMALL_TREE = r"""set -m
sleep 1000 & setsid sleep 1000 & ( ( setsid sleep 1000 & ) & )
nohup sleep 1000 >/dev/null 2>&1 & (trap '' HUP; exec sleep 1000) &
wait"""

now = time.monotonic


# ---------------------------------------------------------------- /proc


def proc_kib(pid, key):
    """A `kB` field of /proc/PID/status (VmHWM:, VmRSS:), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def live(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def tagged(tag):
    """Live pids whose environment carries TAG_VAR=tag (exact)."""
    want = f"{TAG_VAR}={tag}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if want in f.read().split(b"\0") and live(int(d)):
                    out.append(int(d))
        except OSError:
            pass
    return out


def tagged_prefix(prefix):
    want = f"{TAG_VAR}={prefix}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if any(e.startswith(want) for e in f.read().split(b"\0")) and live(int(d)):
                    out.append(int(d))
        except OSError:
            pass
    return out


def kill_all_tagged():
    for _ in range(20):
        pids = tagged_prefix(RUN_TAG)
        if not pids:
            return
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


def descendants(root):
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return [p for p in out if live(p)]


def tag_env(tag, extra=None):
    env = dict(os.environ)
    env[TAG_VAR] = tag
    env["TERM"] = "xterm"
    env.pop("TMUX", None)
    if extra:
        env.update(extra)
    return env


def wait_count(fn, n, timeout):
    """Polls fn() (a list) until it has at least n items."""
    end = now() + timeout
    got = fn()
    while len(got) < n and now() < end:
        time.sleep(0.02)
        got = fn()
    return got


def wait_gone(pids, timeout):
    """Waits for every pid to exit (pidfd readable: exit, not reap).
    Returns (time the last one exited or None, survivors)."""
    fds, last = {}, None
    for p in pids:
        try:
            fds[os.pidfd_open(p)] = p
        except OSError:
            last = now()  # already gone
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    end = now() + timeout
    while fds and now() < end:
        for fd, _ in poller.poll(max(1, int((end - now()) * 1000))):
            last = now()
            poller.unregister(fd)
            os.close(fd)
            del fds[fd]
    survivors = list(fds.values())
    for fd in fds:
        os.close(fd)
    return last, survivors


# ----------------------------------------------------------- our protocol


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pstr(s):
    b = s.encode()
    return varint(len(b)) + b


class Reader:
    """Postcard decoding of the few fields read here (SPEC.md §5)."""

    def __init__(self, b):
        self.b, self.i = b, 0

    def u(self):
        n = shift = 0
        while True:
            c = self.b[self.i]
            self.i += 1
            n |= (c & 0x7F) << shift
            shift += 7
            if not c & 0x80:
                return n

    def byte(self):
        self.i += 1
        return self.b[self.i - 1]

    def s(self):
        n = self.u()
        self.i += n
        return self.b[self.i - n : self.i].decode()

    def opt(self, f):
        return f() if self.byte() else None


def parse_status(p):
    r = Reader(p)
    r.s(), r.u(), r.u(), r.u()  # version, pid, start ticks, started_at
    r.opt(r.u)  # child_pid
    if r.u() == 1:  # ChildState::Exited
        r.opt(r.u), r.opt(r.u)
    r.s()
    [r.s() for _ in range(r.u())]
    r.s()
    phase = r.u()
    r.byte(), r.u()  # leased, epoch
    r.opt(lambda: (r.s(), r.u()))
    r.opt(r.u)
    expires, kill_in = r.opt(r.u), r.opt(r.u)
    return {"phase": phase, "expires_in_ms": expires, "kill_in_ms": kill_in}


PHASE_LAPSED = 2
T_DATA, T_REPLAY, T_HELLO, T_WELCOME = 0x01, 0x05, 0x08, 0x09
T_ACQUIRE, T_GRANT, T_RENEW, T_RELEASE, T_TERMINATED = 0x20, 0x21, 0x22, 0x24, 0x26
T_STATUS_REQ, T_STATUS, T_ERROR = 0x27, 0x28, 0x2A


class Conn:
    def __init__(self, path, timeout=5.0):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def send(self, t, p=b""):
        self.s.sendall(bytes([t]) + struct.pack(">I", len(p)) + p)

    def recv(self):
        while True:
            if len(self.buf) >= 5:
                n = struct.unpack(">I", self.buf[1:5])[0]
                if len(self.buf) >= 5 + n:
                    t, p = self.buf[0], self.buf[5 : 5 + n]
                    self.buf = self.buf[5 + n :]
                    return t, p
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("shellper closed the connection")
            self.buf += chunk

    def recv_type(self, *types):
        while True:
            t, p = self.recv()
            if t in types:
                return t, p
            if t == T_ERROR:
                raise RuntimeError(f"ERROR frame {p!r}")

    def hello(self, kind, **kw):
        self.send(T_HELLO, json.dumps({"version": 1, "clientType": kind, **kw}).encode())
        self.recv_type(T_WELCOME)

    def close(self):
        self.s.close()


def hold(path):
    """A holder connection: HELLO + ACQUIRE. Returns (conn, epoch)."""
    c = Conn(path)
    c.hello("tower", lease=1, replay=False, data=False)
    c.send(T_ACQUIRE, TOKEN + pstr("compare") + varint(os.getpid()))
    _, p = c.recv_type(T_GRANT)
    return c, Reader(p).u()


def status(c):
    c.send(T_STATUS_REQ)
    return parse_status(c.recv_type(T_STATUS)[1])


# ------------------------------------------------------------- sessions


class Session:
    """One session of one kind: `pid` is the process that holds the PTY
    (our shellper, the dtach master, the tmux server, the Node program)."""

    def __init__(self, kind, sock, pid, accept_ms, extra=None):
        self.kind, self.sock, self.pid, self.accept_ms = kind, sock, pid, accept_ms
        self.extra = extra or {}


def start_ours(bins, d, i, tag, cmd, lease=("6s", "10m", "60s", "3s")):
    sock = f"{d}/sh-{i:08x}.sock"
    ttl, window, claim, grace = lease
    t0 = now()
    p = subprocess.Popen(
        [f"{bins}/shellper", "--socket", sock, "--ttl", ttl, "--window", window,
         "--claim", claim, "--kill-grace", grace, "--token-stdin", "--", *cmd],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=tag_env(tag))
    p.stdin.write(TOKEN.hex().encode() + b"\n")
    p.stdin.close()
    info = json.loads(p.stdout.readline())
    accept = (now() - t0) * 1000
    p.stdout.close()
    return Session("ours", sock, info["pid"], accept, {"t0": t0, "popen": p})


def first_output_ours(s):
    c = Conn(s.sock)
    c.hello("terminal")
    while True:
        t, p = c.recv_type(T_REPLAY, T_DATA)
        if p:
            c.close()
            return


def stop_ours(s):
    try:
        os.kill(s.pid, signal.SIGTERM)
    except OSError:
        pass
    s.extra["popen"].wait()


def dtach_packet(t, ln=0, rows=24, cols=80):
    return struct.pack("BB4H", t, ln, rows, cols, 0, 0)


def start_dtach(d, i, tag, cmd):
    sock = f"{d}/dt-{i}.sock"
    t0 = now()
    subprocess.run(["dtach", "-n", sock, "-z", *cmd], env=tag_env(tag), check=True)
    accept = (now() - t0) * 1000
    master = [p for p in tagged(tag) if comm(p) == "dtach"]
    return Session("dtach", sock, master[0], accept, {"t0": t0})


def first_output_dtach(s):
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(5)
    c.connect(s.sock)
    # MSG_ATTACH, then MSG_REDRAW with REDRAW_CTRL_L: what `dtach -a` sends.
    c.sendall(dtach_packet(1) + dtach_packet(4, 2))
    c.recv(4096)
    c.close()


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def tmux(sock, *args, env=None, check=True):
    return subprocess.run(["tmux", "-S", sock, "-f", "/dev/null", *args], env=env,
                          check=check, capture_output=True, text=True)


def start_tmux(d, i, tag, cmd, sock=None, name=None):
    sock = sock or f"{d}/tm-{i}.sock"
    t0 = now()
    tmux(sock, "new-session", "-d", "-s", name or f"s{i}", "-x", "80", "-y", "24",
         "-e", f"{TAG_VAR}={tag}", " ".join(cmd), env=tag_env(tag))
    accept = (now() - t0) * 1000
    pid = int(tmux(sock, "display-message", "-p", "#{pid}").stdout.strip())
    return Session("tmux", sock, pid, accept, {"t0": t0, "name": name or f"s{i}"})


def first_output_tmux(s):
    end = now() + 5
    while now() < end:
        out = tmux(s.sock, "capture-pane", "-p", "-t", s.extra["name"]).stdout
        if out.strip():
            return
        time.sleep(0.001)
    raise RuntimeError("tmux pane stayed empty")


def start_node(node_dir, d, i, tag, cmd):
    sock = f"{d}/nd-{i}.sock"
    t0 = now()
    p = subprocess.Popen(
        ["node", os.path.join(os.path.dirname(__file__), "node_floor.js"), sock, *cmd],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=tag_env(tag, {"NODE_PATH": os.path.join(node_dir, "node_modules")}))
    info = json.loads(p.stdout.readline())
    accept = (now() - t0) * 1000
    return Session("node", sock, info["pid"], accept, {"t0": t0, "popen": p})


def first_output_node(s):
    c = socket.socket(socket.AF_UNIX)
    c.settimeout(5)
    c.connect(s.sock)
    c.recv(4096)
    c.close()


def stop_tagged(tag, sig=signal.SIGKILL):
    for p in tagged(tag):
        try:
            os.kill(p, sig)
        except OSError:
            pass
    wait_gone(tagged(tag), 2)


# ------------------------------------------------------------- measures


def stats(xs):
    """median, min, max, p99 (nearest rank) of a non-empty list."""
    xs = sorted(xs)
    return {"n": len(xs), "median": statistics.median(xs), "min": xs[0], "max": xs[-1],
            "p50": xs[(len(xs) - 1) // 2], "p99": xs[min(len(xs) - 1, int(len(xs) * 0.99))]}


class Bench:
    def __init__(self, args):
        self.a = args
        self.dir = tempfile.mkdtemp(prefix="bench-compare-")
        os.chmod(self.dir, 0o700)
        self.seq = 0
        self.results = {}

    def tag(self):
        self.seq += 1
        return f"{RUN_TAG}-{self.seq}"

    def kinds(self):
        ks = ["ours", "dtach", "tmux"]
        if self.a.node_dir:
            ks.append("node")
        return ks

    def start(self, kind, i, tag, cmd):
        if kind == "ours":
            return start_ours(self.a.bins, self.dir, i, tag, cmd)
        if kind == "dtach":
            return start_dtach(self.dir, i, tag, cmd)
        if kind == "tmux":
            return start_tmux(self.dir, i, tag, cmd)
        return start_node(self.a.node_dir, self.dir, i, tag, cmd)

    def first_output(self, s):
        return {"ours": first_output_ours, "dtach": first_output_dtach,
                "tmux": first_output_tmux, "node": first_output_node}[s.kind](s)

    # memory --------------------------------------------------------
    def memory(self):
        n = self.a.sessions
        out = {}
        for kind in self.kinds():
            tag = self.tag()
            sessions, holders = [], []
            for i in range(n):
                s = self.start(kind, i, tag, BASH)
                self.first_output(s)  # a terminal attached once, like a user
                if kind == "ours":
                    holders.append(hold(s.sock)[0])  # held, like under a Tower
                sessions.append(s)
            time.sleep(self.a.idle)
            out[kind] = self.mem_of(sessions, 1)
            for h in holders:
                h.close()
            stop_tagged(tag)
            for s in sessions:
                if "popen" in s.extra:
                    s.extra["popen"].wait()
        # tmux: 10 sessions in one server.
        tag = self.tag()
        sock = f"{self.dir}/tm-shared.sock"
        sessions = [start_tmux(self.dir, i, tag, BASH, sock=sock, name=f"s{i}") for i in range(n)]
        first_output_tmux(sessions[-1])
        time.sleep(self.a.idle)
        out["tmux-shared"] = self.mem_of(sessions[:1], n)
        stop_tagged(tag)
        # The smallest dynamic program on this libc, for scale.
        tag = self.tag()
        p = subprocess.Popen(["sleep", "1000"], env=tag_env(tag))
        time.sleep(0.3)
        out["sleep"] = self.mem_of([Session("sleep", None, p.pid, 0)], 1)
        p.kill()
        p.wait()
        self.results["memory"] = out

    @staticmethod
    def mem_of(sessions, per):
        pids = [s.pid for s in sessions]
        return {
            "hwm": stats([proc_kib(p, "VmHWM:") / per for p in pids]),
            "rss": stats([proc_kib(p, "VmRSS:") / per for p in pids]),
            "pss": stats([pss_kib(p) / per for p in pids]),
            "sessions": len(pids) * per,
        }

    # spawn to ready -------------------------------------------------
    def spawn(self):
        out = {}
        for kind in self.kinds():
            acc, first = [], []
            for i in range(self.a.runs):
                tag = self.tag()
                s = self.start(kind, 1000 + i, tag, BASH)
                self.first_output(s)
                first.append((now() - s.extra["t0"]) * 1000)
                acc.append(s.accept_ms)
                stop_tagged(tag)
                if "popen" in s.extra:
                    s.extra["popen"].wait()
            out[kind] = {"accept": stats(acc), "output": stats(first)}
        self.results["spawn"] = out

    # tear-down --------------------------------------------------------
    def teardown(self):
        out = {}
        cmd = ["bash", "-c", ESCAPE_TREE]
        for kind in ["ours", "dtach", "tmux"]:
            times, surv, sizes = [], [], []
            for i in range(self.a.teardown_runs):
                tag = self.tag()
                if kind == "tmux":
                    # tmux runs the command through `sh -c`: quote the script.
                    s = start_tmux(self.dir, 2000 + i, tag,
                                   ["bash", "-c", shquote(ESCAPE_TREE)])
                else:
                    s = self.start(kind, 2000 + i, tag, cmd)
                holder = hold(s.sock) if kind == "ours" else None
                tree = wait_count(lambda: [p for p in tagged(tag) if p != s.pid], 50, 15)
                time.sleep(0.2)
                tree = [p for p in tagged(tag) if p != s.pid]
                t0 = now()
                if kind == "ours":
                    c, epoch = holder
                    c.send(T_RELEASE, varint(epoch) + varint(0))
                elif kind == "dtach":
                    os.kill(s.pid, signal.SIGTERM)
                else:
                    tmux(s.sock, "kill-session", "-t", s.extra["name"])
                last, left = wait_gone(tree, self.a.settle)
                times.append(((last or t0) - t0) * 1000)
                surv.append(len(left))
                sizes.append(len(tree))
                if holder:
                    holder[0].close()
                stop_tagged(tag)
                if "popen" in s.extra:
                    s.extra["popen"].wait()
            out[kind] = {"ms": stats(times), "survivors": stats(surv), "tree": stats(sizes)}
        self.results["teardown"] = out

    # reaction -------------------------------------------------------
    def reaction(self):
        eof, precision, gone_after = [], [], []
        window_ms = 250
        for i in range(self.a.reaction_runs):
            tag = self.tag()
            s = start_ours(self.a.bins, self.dir, 3000 + i, tag, ["bash", "-c", SMALL_TREE],
                           lease=("200ms", f"{window_ms}ms", "10s", "200ms"))
            tree = wait_count(lambda: descendants(s.pid), 6, 10)
            r, w = os.pipe()
            tower = os.fork()
            if tower == 0:  # the Tower: holds and renews until SIGKILLed
                try:
                    os.close(r)
                    c, epoch = hold(s.sock)
                    os.write(w, b"1")
                    seq = 0
                    while True:
                        seq += 1
                        c.send(T_RENEW, varint(epoch) + varint(seq))
                        time.sleep(0.06)
                        c.s.setblocking(False)
                        try:
                            c.s.recv(65536)
                        except BlockingIOError:
                            pass
                        c.s.setblocking(True)
                finally:
                    os._exit(1)
            os.close(w)
            os.read(r, 1)
            os.close(r)
            st = Conn(s.sock)
            st.hello("status")
            time.sleep(0.1)
            t_kill = now()
            os.kill(tower, signal.SIGKILL)
            os.waitpid(tower, 0)
            lapse_at = None
            while lapse_at is None and now() - t_kill < 2:
                t_s = now()
                snap = status(st)
                t_r = now()
                if snap["phase"] == PHASE_LAPSED and snap["kill_in_ms"] is not None:
                    # kill_in = (lapse + window) - now, at the shellper
                    lapse_at = (t_s + t_r) / 2 + (snap["kill_in_ms"] - window_ms) / 1000
                else:
                    time.sleep(0.002)
            st.close()
            if lapse_at is None:
                raise RuntimeError("the shellper never lapsed")
            eof.append(max(0.0, (lapse_at - t_kill) * 1000))
            last, left = wait_gone(tree, 5)
            if left:
                raise RuntimeError(f"{len(left)} survivors after the window")
            precision.append((last - (lapse_at + window_ms / 1000)) * 1000)
            gone_after.append(len(tree))
            stop_tagged(tag)
            s.extra["popen"].wait()
        self.results["reaction"] = {"eof": stats(eof), "precision": stats(precision),
                                    "tree": stats(gone_after), "window_ms": window_ms}

    # scale ----------------------------------------------------------
    def scale(self):
        rows = []
        for n in self.a.scale:
            rows.append(self.hold_bench(n, self.a.hold))
        self.results["scale"] = rows
        if self.a.long_count:
            self.results["long"] = self.hold_bench(self.a.long_count, self.a.long_hold)

    # terminal use (issue 18) -----------------------------------------
    def terminal(self):
        out = {}
        n = self.a.chatty_lines
        chatty = f"perl -e '$|=1; print \"chatty line $_ of the program\\n\" for 1..{n}'"
        ks = self.kinds()
        out["chatty_idle"] = {k: self.run_program(k, chatty, attach=False) for k in ks}
        out["chatty_attached"] = {k: self.run_program(k, chatty, attach=True) for k in ks}
        lines = "perl -e 'print \"x\" x 80, \"\\n\" for 1..12000'"
        out["replay_lines"] = {k: self.run_program(k, lines, attach=False) for k in ks}
        mib8 = f"head -c {9 << 20} /dev/zero | tr '\\0' x"
        out["replay_bytes"] = {k: self.run_program(k, mib8, attach=False) for k in ks}
        bulk = f"head -c {self.a.bulk_bytes} /dev/zero | tr '\\0' x"
        out["throughput"] = {"direct": self.direct_pty(bulk)}
        for k in ks:
            out["throughput"][k] = self.run_program(k, bulk, attach=True, count=True)
        out["echo_flood"] = self.echo_flood()
        out["partial_frames"] = self.partial_frames()
        out["tower_flood"] = self.tower_flood()
        self.results["terminal"] = out

    def tower_flood(self):
        """minitower holding N sessions that each stream output for a
        minute: its RSS once they are all held, and at the end."""
        n, secs = self.a.tower_sessions, self.a.tower_secs
        minitower = os.path.join(self.a.bins, "minitower")
        if not os.path.exists(minitower):
            return {"error": f"{minitower} not built"}
        tag = self.tag()
        scope = tempfile.mkdtemp(dir=self.dir)
        stream = "while :; do seq 1 200; sleep 0.05; done"
        p = subprocess.Popen(
            [minitower, "--scope", scope, "--spawn", str(n), "--on-exit", "terminate",
             "--kill-grace", "200ms", "--", "sh", "-c", stream],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=tag_env(tag))
        held = wait_count(lambda: [q for q in tagged(tag) if comm(q) == "shellper"], n, 120)
        time.sleep(2)
        start = proc_kib(p.pid, "VmRSS:")
        t0 = now()
        samples = []
        while now() - t0 < secs:
            time.sleep(1)
            samples.append(proc_kib(p.pid, "VmRSS:"))
        shellpers = [proc_kib(q, "VmRSS:") for q in held]
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        stop_tagged(tag)
        return {"n": len(held), "secs": secs, "start": start, "end": samples[-1],
                "peak": max(samples), "hwm": None,
                "shellper_rss": stats([x for x in shellpers if x]) if any(shellpers) else None}

    def session_cmd(self, program, d):
        """sh: wait for GO, run the program, mark DONE, then stay (so every
        peer keeps the session and its history)."""
        return ["sh", "-c", f"while [ ! -e {d}/go ]; do sleep 0.02; done; {program}; "
                            f"touch {d}/done; exec sleep 100000"]

    def run_program(self, kind, program, attach, count=False):
        tag = self.tag()
        d = tempfile.mkdtemp(dir=self.dir)
        cmd = self.session_cmd(program, d)
        if kind == "tmux":
            s = start_tmux(self.dir, 5000 + self.seq, tag, ["sh", "-c", shquote(cmd[2])])
        else:
            s = self.start(kind, 5000 + self.seq, tag, cmd)
        holder = hold(s.sock)[0] if kind == "ours" else None
        reader = Drain(kind, s) if attach else None
        time.sleep(0.3)
        cpu0 = cpu_secs(s.pid)
        t0 = now()
        open(f"{d}/go", "w").close()
        deadline = t0 + self.a.program_timeout
        while not os.path.exists(f"{d}/done") and now() < deadline:
            time.sleep(0.01)
        produced = now()
        res = {}
        if count and reader:
            # Relayed: until the reader has the bytes (frame headers and
            # the terminal's own bytes make the count a little high).
            reader.wait_for(self.a.bulk_bytes, deadline)
            t1 = now()
            res["secs"] = t1 - t0
            res["mb_s"] = self.a.bulk_bytes / 1e6 / (t1 - t0)
            res["cpu_per_100mb"] = (cpu_secs(s.pid) - cpu0) * 1e8 / self.a.bulk_bytes
            res["received"] = reader.bytes
        res["timed_out"] = produced >= deadline
        time.sleep(self.a.settle_after)
        res["rss"] = proc_kib(s.pid, "VmRSS:")
        res["hwm"] = proc_kib(s.pid, "VmHWM:")
        if reader:
            reader.stop()
        if holder:
            holder.close()
        stop_tagged(tag)
        if "popen" in s.extra:
            s.extra["popen"].wait()
        return res

    def direct_pty(self, program):
        """The physical limit: the same program on a PTY, its master read
        directly as fast as possible (no session program in between)."""
        import pty
        m, sl = pty.openpty()
        t0 = now()
        p = subprocess.Popen(["sh", "-c", program], stdout=sl, stderr=sl, stdin=sl,
                             env=tag_env(self.tag()), start_new_session=True)
        os.close(sl)
        got = 0
        while True:
            try:
                b = os.read(m, 65536)
            except OSError:
                break
            if not b:
                break
            got += len(b)
        t1 = now()
        p.wait()
        os.close(m)
        return {"secs": t1 - t0, "mb_s": got / 1e6 / (t1 - t0), "received": got}

    def echo_flood(self):
        """Ours: 20 × 1 MiB DATA of typed lines to `cat >/dev/null` (the tty
        echoes every keystroke; cat takes the lines, so input keeps
        flowing), a holder and a terminal attached and reading; RSS at the
        peak and after the terminal left."""
        tag = self.tag()
        s = start_ours(self.a.bins, self.dir, 6000, tag, ["sh", "-c", "exec cat >/dev/null"])
        holder = hold(s.sock)[0]
        time.sleep(0.3)
        idle = proc_kib(s.pid, "VmRSS:")
        term = Conn(s.sock)
        term.hello("terminal")
        reader = Drain("raw", None, term.s)
        payload = bytes([T_DATA]) + struct.pack(">I", 1 << 20) + (b"a" * 63 + b"\n") * (1 << 14)
        sent = [0]

        # Its own socket object: the reader's short timeout is per object.
        out_sock = term.s.dup()
        out_sock.settimeout(60)

        def send():
            try:
                for _ in range(self.a.flood_mib):
                    out_sock.sendall(payload)
                    sent[0] += 1
            except OSError:
                pass

        import threading
        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        peak = 0
        end = now() + self.a.flood_secs
        while now() < end and (sender.is_alive() or not cpu_idle(s.pid)):
            peak = max(peak, proc_kib(s.pid, "VmRSS:"))
            time.sleep(0.05)
        peak = max(peak, proc_kib(s.pid, "VmRSS:"))
        reader.stop()
        term.close()
        out_sock.close()
        sender.join(2)
        time.sleep(self.a.settle_after)
        after = proc_kib(s.pid, "VmRSS:")
        holder.close()
        stop_tagged(tag)
        s.extra["popen"].wait()
        return {"idle": idle, "peak": peak, "after": after, "sent_mib": sent[0],
                "mib": self.a.flood_mib}

    def partial_frames(self):
        """Ours: 12 connections each say HELLO, then send 15 MiB of a
        16 MiB DATA frame and stop. RSS with them connected, and after."""
        tag = self.tag()
        s = start_ours(self.a.bins, self.dir, 6001, tag, ["sleep", "100000"])
        holder = hold(s.sock)[0]
        time.sleep(0.3)
        idle = proc_kib(s.pid, "VmRSS:")
        conns = []
        chunk = b"a" * (1 << 20)
        for _ in range(self.a.partial_conns):
            c = Conn(s.sock, timeout=2.0)
            # No REPLAY, no DATA: what is measured is what they send.
            c.hello("terminal", replay=False, data=False)
            c.s.sendall(bytes([T_DATA]) + struct.pack(">I", 16 << 20))
            for _ in range(15):
                try:
                    c.s.sendall(chunk)
                except (socket.timeout, OSError):
                    break  # the shellper stopped reading: what we want
            conns.append(c)
        time.sleep(0.5)
        peak = proc_kib(s.pid, "VmRSS:")
        for c in conns:
            c.close()
        time.sleep(self.a.settle_after)
        after = proc_kib(s.pid, "VmRSS:")
        holder.close()
        stop_tagged(tag)
        s.extra["popen"].wait()
        return {"idle": idle, "peak": peak, "after": after, "conns": self.a.partial_conns}

    def hold_bench(self, n, secs):
        env = tag_env(self.tag(), {"BENCH_JSON": "1", "BENCH_IDLE_SECS": str(self.a.idle_baseline)})
        p = subprocess.run([self.a.hold_bench, str(n), str(secs)], env=env,
                           capture_output=True, text=True)
        line = [x for x in p.stdout.splitlines() if x.startswith("{")]
        if p.returncode != 0 or not line:
            return {"n": n, "error": (p.stdout + p.stderr)[-400:]}
        return json.loads(line[-1])


def cpu_secs(pid):
    """utime + stime of a process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


_last_cpu = {}


def cpu_idle(pid):
    """True once the process used no CPU since the previous call."""
    c = cpu_secs(pid)
    idle = _last_cpu.get(pid) == c
    _last_cpu[pid] = c
    return idle


class Drain:
    """A client attached to a session, reading everything as fast as it
    can on a thread: ours (HELLO terminal, then raw bytes), dtach (attach
    packet), the Node floor (raw), tmux (a control-mode client), or an
    already connected socket ("raw")."""

    def __init__(self, kind, s, sock=None):
        import threading
        self.bytes, self.proc, self.done = 0, None, False
        if kind == "raw":
            self.sock = sock
        elif kind == "ours":
            c = Conn(s.sock)
            c.hello("terminal")
            self.sock = c.s
        elif kind == "dtach":
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(s.sock)
            self.sock.sendall(dtach_packet(1))
        elif kind == "node":
            self.sock = socket.socket(socket.AF_UNIX)
            self.sock.connect(s.sock)
        else:  # tmux
            self.sock = None
            self.proc = subprocess.Popen(
                ["tmux", "-S", s.sock, "-f", "/dev/null", "-C", "attach", "-t", s.extra["name"]],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.done:
            try:
                if self.sock is not None:
                    self.sock.settimeout(0.2)
                    b = self.sock.recv(1 << 16)
                else:
                    b = self.proc.stdout.read1(1 << 16)
            except socket.timeout:
                continue
            except (OSError, ValueError):
                return
            if not b:
                return
            self.bytes += len(b)

    def wait_for(self, n, deadline):
        while self.bytes < n and now() < deadline and self.t.is_alive():
            time.sleep(0.005)

    def stop(self):
        self.done = True
        if self.proc:
            self.proc.kill()
            self.proc.wait()
        elif self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.t.join(2)
        if self.sock is not None:
            self.sock.close()


def shquote(s):
    return "'" + s.replace("'", "'\\''") + "'"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bins", required=True, help="directory with shellper")
    ap.add_argument("--hold-bench", required=True, help="tower-client's hold_bench example")
    ap.add_argument("--node-dir", default="", help="npm prefix holding node-pty ('' = no Node row)")
    ap.add_argument("--node-note", default="", help="why the Node row is missing")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="", help="write the raw results here")
    ap.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    a = ap.parse_args()
    q = a.quick
    a.sessions = 2 if q else 10
    a.runs = 2 if q else 20
    a.teardown_runs = 1 if q else 10
    a.reaction_runs = 3 if q else 60
    a.idle = 0.5 if q else 2.0
    a.settle = 1.0 if q else 2.0
    a.scale = [10] if q else [10, 50, 100, 250, 500]
    a.hold = 3 if q else 20
    a.idle_baseline = 1 if q else 5
    a.long_count = 0 if q else int(os.environ.get("BENCH_LONG_COUNT", "1000"))
    a.long_hold = 60
    a.chatty_lines = 20000 if q else 1000000
    a.bulk_bytes = (10 if q else 100) * 1000 * 1000
    a.program_timeout = 120
    a.settle_after = 1.5
    a.flood_mib = 4 if q else 20
    a.flood_secs = 15
    a.partial_conns = 4 if q else 12
    a.tower_sessions = 10 if q else 100
    a.tower_secs = 5 if q else 60
    atexit.register(kill_all_tagged)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b = Bench(a)
    steps = [b.memory, b.spawn, b.teardown, b.reaction, b.scale, b.terminal]
    if a.only:
        steps = [st for st in steps if st.__name__ in a.only.split(",")]
    try:
        for step in steps:
            t = now()
            step()
            print(f"  {step.__name__}: {now() - t:.0f} s", file=sys.stderr)
    finally:
        kill_all_tagged()
        subprocess.run(["rm", "-rf", b.dir])
    b.results["node_note"] = a.node_note
    b.results["quick"] = q
    if a.json:
        with open(a.json, "w") as f:
            json.dump(b.results, f, indent=1)
    print_table(b.results)
    return 0


# ---------------------------------------------------------------- table


def mib(kib):
    return f"{kib / 1024:.2f}"


def spread(st, fmt=lambda v: f"{v:.1f}"):
    return f"{fmt(st['median'])} ({fmt(st['min'])}–{fmt(st['max'])})"


def print_table(r):
    names = {"ours": "shellper (ours)", "dtach": "dtach master", "tmux": "tmux server, one per session",
             "tmux-shared": "tmux server, all sessions in one (÷ count)", "node": "Node floor (node-pty + socket)",
             "sleep": "`sleep` (smallest dynamic program)"}
    if "memory" in r:
        mem = r["memory"]
        print("\n### Memory per idle session holding bash (MiB: median (min–max) over the sessions)\n")
        print(f"| session | peak RSS (VmHWM) | steady RSS | PSS, {mem['ours']['sessions']} running "
              "| peak vs ours |")
        print("|---|---|---|---|---|")
        ours = mem["ours"]["hwm"]["median"]
        for k in ["ours", "dtach", "tmux", "tmux-shared", "node", "sleep"]:
            if k not in mem:
                if k == "node":
                    print(f"| {names[k]} | not measured: {r['node_note'] or 'node-pty missing'} | | | |")
                continue
            m = mem[k]
            f = lambda v: mib(v)
            print(f"| {names[k]} | {spread(m['hwm'], f)} | {spread(m['rss'], f)} | {spread(m['pss'], f)} "
                  f"| ×{m['hwm']['median'] / ours:.2f} |")
    if "spawn" in r:
        sp = r["spawn"]
        print("\n### Spawn to ready (ms: median (min–max))\n")
        print("| session | socket accepting | first output readable | vs ours |")
        print("|---|---|---|---|")
        o = sp["ours"]["output"]["median"]
        for k in ["ours", "dtach", "tmux", "node"]:
            if k in sp:
                print(f"| {names[k].split(',')[0]} | {spread(sp[k]['accept'])} | {spread(sp[k]['output'])} "
                      f"| ×{sp[k]['output']['median'] / o:.2f} |")
    if "teardown" in r:
        td = r["teardown"]
        print("\n### Tear-down of a 50-process escape tree (median (min–max))\n")
        print("| how | tree size | until the last process died (ms) | survivors |")
        print("|---|---|---|---|")
        how = {"ours": "shellper: RELEASE Terminate (kill ladder)", "dtach": "`kill` of the dtach master",
               "tmux": "`tmux kill-session`"}
        for k in ["ours", "dtach", "tmux"]:
            t = td[k]
            print(f"| {how[k]} | {spread(t['tree'], lambda v: f'{v:.0f}')} | {spread(t['ms'])} "
                  f"| {spread(t['survivors'], lambda v: f'{v:.0f}')} |")
    if "reaction" in r:
        rc = r["reaction"]
        print(f"\n### Reaction (ms; {rc['eof']['n']} runs, window {rc['window_ms']} ms)\n")
        print("| what | p50 | p99 | min | max |")
        print("|---|---|---|---|---|")
        for k, label in [("eof", "Tower SIGKILLed → shellper lapsed (EOF detection)"),
                         ("precision", "deadline → last descendant gone (kill precision)")]:
            s = rc[k]
            print(f"| {label} | {s['p50']:.1f} | {s['p99']:.1f} | {s['min']:.1f} | {s['max']:.1f} |")
    if "scale" in r:
        print("\n### Scale (tower-client `hold_bench`: one Tower, N shellpers, default timings)\n")
        print("| N | Tower CPU (% of a core) | Tower RSS (MiB) | RSS per lease (KiB) | adoption (ms) "
              "| lapses | held for |")
        print("|---|---|---|---|---|---|---|")
        for row in r["scale"] + ([r["long"]] if r.get("long") else []):
            if "error" in row:
                print(f"| {row['n']} | failed: {row['error'][-120:]!r} | | | | | |")
                continue
            print(f"| {row['n']} | {row['cpu_pct']:.3f} | {row['tower_rss_kib'] / 1024:.1f} "
                  f"| {row['rss_per_lease_kib']:.1f} | {row['adopt_ms']:.1f} | {row['bad_events']} "
                  f"| {row['hold_secs']:.0f} s |")

    if "terminal" in r:
        print_terminal(r["terminal"])


T_FLOOD = 15


def print_terminal(t):
    names = {"ours": "shellper (ours)", "dtach": "dtach master", "tmux": "tmux server",
             "node": "Node floor (node-pty + socket)", "direct": "the PTY read directly (the limit)"}
    print("\n### Under terminal use (issue 18; RSS in MiB of the process holding the session)\n")
    print("| session | chatty, nobody attached | chatty, one client reading | 10,000 lines held "
          "| 8 MiB without a newline held |")
    print("|---|---|---|---|---|")
    for k in ["ours", "dtach", "tmux", "node"]:
        if k not in t["chatty_idle"]:
            continue
        cells = []
        for row in ["chatty_idle", "chatty_attached", "replay_lines", "replay_bytes"]:
            m = t[row][k]
            cells.append(f"{mib(m['rss'])} (peak {mib(m['hwm'])})" + (" timed out" if m["timed_out"] else ""))
        print(f"| {names[k]} | " + " | ".join(cells) + " |")
    tp = t["throughput"]
    print("\n### Output relayed to one client reading as fast as it can\n")
    print("| path | MB/s | vs the PTY read directly | CPU s per 100 MB (session process) |")
    print("|---|---|---|---|")
    d = tp["direct"]["mb_s"]
    for k in ["direct", "ours", "dtach", "tmux", "node"]:
        if k not in tp:
            continue
        m = tp[k]
        cpu = f"{m['cpu_per_100mb']:.2f}" if "cpu_per_100mb" in m else "–"
        print(f"| {names[k]} | {m['mb_s']:.1f} | ×{m['mb_s'] / d:.2f} | {cpu} |")
    ef, pf = t["echo_flood"], t["partial_frames"]
    print("\n### Ours under floods (VmRSS, MiB)\n")
    print("| what | idle before | peak | after the clients left |")
    print("|---|---|---|---|")
    print(f"| echo flood: {ef['mib']} × 1 MiB DATA of typed lines to `cat` (the tty echoes; {ef['sent_mib']} MiB taken in "
          f"{T_FLOOD} s), a terminal reading "
          f"| {mib(ef['idle'])} | {mib(ef['peak'])} | {mib(ef['after'])} |")
    print(f"| partial frames: {pf['conns']} connections, HELLO then 15 MiB of a 16 MiB DATA frame "
          f"| {mib(pf['idle'])} | {mib(pf['peak'])} | {mib(pf['after'])} |")
    tf = t.get("tower_flood")
    if tf and "error" not in tf:
        print(f"\n### minitower holding {tf['n']} sessions that each stream output for {tf['secs']} s "
              "(VmRSS, MiB)\n")
        print("| minitower, all held | at the end | peak | each shellper at the end (median (min–max)) |")
        print("|---|---|---|---|")
        sr = spread(tf["shellper_rss"], mib) if tf["shellper_rss"] else "–"
        print(f"| {mib(tf['start'])} | {mib(tf['end'])} | {mib(tf['peak'])} | {sr} |")
    elif tf:
        print(f"\n(minitower flood not measured: {tf['error']})")


if __name__ == "__main__":
    sys.exit(main())
