#!/usr/bin/env node
/**
 * node-tower: a reference Tower built on this package (the Node counterpart
 * of minitower). Holds the leases of every shellper of a scope it has a
 * token for, spawns more on request, prints one JSON line per event, and on
 * SIGINT/SIGTERM detaches (default) or terminates everything it holds.
 *
 *   node-tower --scope DIR [--shellper BIN] [--ttl DUR] [--window DUR]
 *              [--claim DUR] [--kill-grace DUR] [--spawn N]
 *              [--on-exit detach|terminate] [--name NAME] [-- CMD ARGS…]
 *
 * Durations: `500ms`, `3s`, `10m`, or plain milliseconds.
 */
import { parseArgs } from "node:util";
import { Tower } from "../index";

const USAGE = `node-tower: a reference Tower on shellper-lease (the Node counterpart of minitower)

Usage: node-tower [--scope DIR] [--shellper BIN] [--ttl DUR] [--window DUR]
                  [--claim DUR] [--kill-grace DUR] [--spawn N]
                  [--on-exit detach|terminate] [--name NAME] [-- CMD ARGS...]

Holds the lease of every shellper listed in the scope's registry that is still
alive (adopting it with the stored token), spawns --spawn N new shellpers
running CMD, and prints one JSON line per event (adopted, spawned, ready,
granted, unresponsive, responsive, lapsed, revoked, exited, lost, refused).
Shellpers get their token and config on stdin (--config-stdin): nothing of
the config, the environment included, is in their argv. Before sending a token
it checks that the socket and its directory are ours and that the process the
socket's WELCOME names runs as us and holds the listening socket.
On SIGINT/SIGTERM it detaches (default: the shellpers wait for the next Tower
during their window) or, with --on-exit terminate, kills every tree it holds.

Options:
  --scope DIR        scope directory (default: $XDG_RUNTIME_DIR/shellper,
                     else $TMPDIR/shellper-UID)
  --shellper BIN     the shellper binary (default: shellper on PATH)
  --ttl, --window, --claim, --kill-grace DUR
                     lease settings of new shellpers: 500ms, 3s, 10m, 1h
                     or plain milliseconds
  --spawn N          spawn N shellpers running CMD (default 0)
  --on-exit WHAT     detach (default) or terminate
  --name NAME        holder name shown by leasectl (default node-tower@PID)
  -h, --help         this text
`;

function duration(s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const m = /^(\d+)(ms|s|m|h)?$/.exec(s.trim());
  if (!m) throw new Error(`bad duration ${JSON.stringify(s)} (use 500ms, 3s, 10m)`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? "ms") as "ms" | "s" | "m" | "h"];
  return Number(m[1]) * unit;
}

function out(obj: Record<string, unknown>): void {
  process.stdout.write(
    JSON.stringify(obj, (_k, v) => (typeof v === "bigint" ? Number(v) : v)) + "\n",
  );
}

async function main(): Promise<number> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      scope: { type: "string" },
      shellper: { type: "string" },
      ttl: { type: "string" },
      window: { type: "string" },
      claim: { type: "string" },
      "kill-grace": { type: "string" },
      spawn: { type: "string", default: "0" },
      "on-exit": { type: "string", default: "detach" },
      name: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const onExit = values["on-exit"];
  if (onExit !== "detach" && onExit !== "terminate") throw new Error("--on-exit is detach or terminate");
  const n = Number(values.spawn);
  if (!Number.isInteger(n) || n < 0) throw new Error("--spawn takes a count");
  const lease: Record<string, number> = {};
  for (const [k, key] of [
    ["ttl", "ttlMs"],
    ["window", "windowMs"],
    ["claim", "claimMs"],
    ["kill-grace", "killGraceMs"],
  ] as const) {
    const v = duration(values[k] as string | undefined);
    if (v !== undefined) lease[key] = v;
  }
  const tower = Tower.open({
    ...(values.scope ? { scope: values.scope } : {}),
    ...(values.shellper ? { shellperBin: values.shellper } : {}),
    ...(values.name ? { name: values.name } : {}),
    lease,
  });
  for (const ev of ["granted", "unresponsive", "responsive", "lapsed", "revoked", "exited", "lost", "refused"] as const) {
    tower.on(ev, (id: string, info: object) => out({ event: ev, id, ...info }));
  }
  tower.on("registryError", (id: string, e: Error) => out({ event: "registry_error", id, error: e.message }));
  const adopt = await tower.adoptAll();
  for (const id of adopt.adopted) out({ event: "adopted", id, pid: tower.sessions.get(id)?.entry.pid });
  for (const id of adopt.gone) out({ event: "gone", id });
  for (const f of adopt.failed) out({ event: "adopt_failed", id: f.id, error: f.error.message });
  if (n > 0) {
    if (positionals.length === 0) throw new Error("--spawn needs a command after --");
    const [command, ...args] = positionals;
    for (let i = 0; i < n; i++) {
      const s = await tower.spawn({ command, args });
      out({ event: "spawned", id: s.id, pid: s.entry.pid, child_pid: s.holder.welcomeInfo?.pid });
    }
  }
  out({ event: "ready", held: tower.sessions.size, pid: process.pid });

  return await new Promise<number>((resolve) => {
    // Stay up until signalled, even when nothing is held any more (signal
    // handlers alone do not keep Node's event loop alive).
    const keepAlive = setInterval(() => undefined, 1 << 30);
    let stopping = false;
    const stop = async (sig: string) => {
      if (stopping) return;
      stopping = true;
      if (onExit === "terminate") {
        for (const [id, r] of await tower.terminateAll()) {
          out(r instanceof Error ? { event: "terminate_failed", id, error: r.message } : { event: "terminated", id, ...r });
        }
      } else {
        await tower.detachAll();
      }
      tower.close();
      clearInterval(keepAlive);
      out({ event: "bye", signal: sig });
      resolve(0);
    };
    process.on("SIGINT", () => void stop("SIGINT"));
    process.on("SIGTERM", () => void stop("SIGTERM"));
  });
}

main().then(
  (code) => process.exit(code),
  (e: Error) => {
    process.stderr.write(`node-tower: ${e.message}\n`);
    process.exit(1);
  },
);
