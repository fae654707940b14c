/**
 * One timer for many leases: a min-heap of deadlines on the monotonic clock
 * (`performance.now()`, which like libuv's timers follows CLOCK_MONOTONIC and
 * so does not advance during a system suspend, SPEC.md §8.1). A Tower holding
 * hundreds of shellpers arms a single `setTimeout` for the earliest deadline
 * instead of one timer per lease.
 */

/** Milliseconds on the monotonic clock. */
export function now(): number {
  return performance.now();
}

/** A scheduled callback; {@link cancel} makes it a no-op. */
export interface Scheduled {
  readonly at: number;
  cancel(): void;
}

interface Entry {
  at: number;
  seq: number;
  fn: () => void;
  cancelled: boolean;
}

/** Longest single setTimeout (Node caps delays at 2^31-1 ms). */
const MAX_DELAY = 2 ** 31 - 1;

export class Scheduler {
  private heap: Entry[] = [];
  private seq = 0;
  private timer: NodeJS.Timeout | undefined;
  private armedAt = Infinity;
  private live = 0;

  /** Runs `fn` at monotonic time `at` (ms); entries due together run in scheduling order. */
  at(at: number, fn: () => void): Scheduled {
    const e: Entry = { at, seq: this.seq++, fn, cancelled: false };
    this.push(e);
    this.live++;
    if (at < this.armedAt) this.arm();
    return {
      at,
      cancel: () => {
        if (!e.cancelled) {
          e.cancelled = true;
          this.live--;
          if (this.live === 0) this.disarm();
        }
      },
    };
  }

  /** Runs `fn` after `ms` milliseconds. */
  after(ms: number, fn: () => void): Scheduled {
    return this.at(now() + ms, fn);
  }

  /** Number of pending (not cancelled) entries. */
  get pending(): number {
    return this.live;
  }

  private arm(): void {
    this.disarm();
    while (this.heap.length > 0 && this.heap[0].cancelled) this.pop();
    if (this.heap.length === 0) return;
    const at = this.heap[0].at;
    this.armedAt = at;
    this.timer = setTimeout(() => this.fire(), Math.min(MAX_DELAY, Math.max(0, at - now())));
  }

  private disarm(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.armedAt = Infinity;
  }

  private fire(): void {
    this.timer = undefined;
    this.armedAt = Infinity;
    const t = now();
    // Run everything due; callbacks may schedule more (run in a later pass).
    const due: Entry[] = [];
    while (this.heap.length > 0 && this.heap[0].at <= t) {
      const e = this.pop();
      if (!e.cancelled) due.push(e);
    }
    for (const e of due) {
      if (e.cancelled) continue;
      e.cancelled = true;
      this.live--;
      e.fn();
    }
    if (this.timer === undefined) this.arm();
  }

  private less(a: Entry, b: Entry): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  private push(e: Entry): void {
    const h = this.heap;
    h.push(e);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(h[i], h[p])) break;
      [h[i], h[p]] = [h[p], h[i]];
      i = p;
    }
  }

  private pop(): Entry {
    const h = this.heap;
    const top = h[0];
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l], h[m])) m = l;
        if (r < h.length && this.less(h[r], h[m])) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m], h[i]];
        i = m;
      }
    }
    return top;
  }
}
