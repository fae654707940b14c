/**
 * The few /proc reads a Tower needs (Linux): a process's start time in clock
 * ticks (field 22 of `/proc/PID/stat`), which with the pid identifies one
 * process even after its pid is recycled (SPEC.md §2).
 */
import { readFileSync } from "node:fs";

/** What `/proc/PID/stat` says about a process, parsed after the last `)`. */
export interface ProcStat {
  pid: number;
  state: string;
  ppid: number;
  startTicks: bigint;
}

/** Reads `/proc/PID/stat`; `undefined` when the process does not exist. */
export function procStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, "latin1");
  } catch {
    return undefined;
  }
  // comm may hold spaces and parentheses: the fields start after the last ')'.
  const close = text.lastIndexOf(")");
  if (close < 0) return undefined;
  const f = text.slice(close + 2).split(" ");
  // f[0] is field 3 (state); field N is f[N - 3].
  if (f.length < 20) return undefined;
  return { pid, state: f[0], ppid: Number(f[1]), startTicks: BigInt(f[19]) };
}

/**
 * True when `pid` is the process that started at `startTicks` and has not
 * exited (a zombie counts as gone: it runs nothing).
 */
export function sameProcessAlive(pid: number, startTicks: bigint): boolean {
  const st = procStat(pid);
  return st !== undefined && st.startTicks === startTicks && st.state !== "Z" && st.state !== "X";
}

/** Resolves once `pid`/`startTicks` is gone, or rejects after `timeoutMs`. */
export async function waitGone(pid: number, startTicks: bigint, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (sameProcessAlive(pid, startTicks)) {
    if (performance.now() >= deadline) {
      throw new Error(`process ${pid} still alive after ${timeoutMs} ms`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}
