/**
 * One connection to a shellper's socket: framing, the HELLO/WELCOME
 * handshake (SPEC.md §7), request/response waits with timeouts, and the
 * read-only STATUS query. Every connect and every wait has a deadline.
 */
import { EventEmitter } from "node:events";
import * as net from "node:net";
import {
  FrameDecoder,
  FrameError,
  encodeFrame,
  type ClientTypeName,
  type ErrorCode,
  type Frame,
  type Status,
  type Welcome,
} from "./frames";

/** A refusal from the shellper (an ERROR frame), or a protocol failure. */
export class LeaseError extends Error {
  constructor(
    readonly code: ErrorCode | "Timeout" | "Closed" | "NotLeased",
    message: string,
  ) {
    super(message);
    this.name = "LeaseError";
  }
}

export interface ConnectOptions {
  /** Connect + handshake deadline (default 3000 ms). */
  timeoutMs?: number;
  clientType?: ClientTypeName;
  /** Ask for REPLAY / DATA (a lease connection asks for neither). */
  replay?: boolean;
  data?: boolean;
}

interface Waiter {
  match: (f: Frame) => boolean;
  resolve: (f: Frame) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

/**
 * A framed connection. Frames go first to pending {@link waitFor} calls (the
 * first that matches consumes the frame), then to `frame` listeners. PING is
 * answered with PONG; unknown frame types are ignored. `close` fires once,
 * with the protocol error if the stream broke the rules.
 */
export class Connection extends EventEmitter {
  private readonly decoder = new FrameDecoder();
  private waiters: Waiter[] = [];
  private closedWith: Error | undefined;
  private isClosed = false;

  private constructor(private readonly sock: net.Socket) {
    super();
    sock.on("data", (chunk: Buffer) => this.onData(chunk));
    sock.on("error", (e) => this.finish(e));
    sock.on("end", () => {
      try {
        this.decoder.end();
        this.finish(undefined);
      } catch (e) {
        this.finish(e as Error);
      }
    });
    sock.on("close", () => this.finish(undefined));
  }

  /** Connects to `path` and completes the handshake; resolves with the WELCOME. */
  static async open(path: string, opts: ConnectOptions & { lease?: boolean } = {}): Promise<{ conn: Connection; welcome: Welcome }> {
    const timeoutMs = opts.timeoutMs ?? 3000;
    const sock = await new Promise<net.Socket>((resolve, reject) => {
      const s = net.createConnection({ path });
      const timer = setTimeout(() => {
        s.destroy();
        reject(new LeaseError("Timeout", `connect to ${path}: no answer in ${timeoutMs} ms`));
      }, timeoutMs);
      s.once("connect", () => {
        clearTimeout(timer);
        s.removeAllListeners("error");
        resolve(s);
      });
      s.once("error", (e) => {
        clearTimeout(timer);
        reject(new LeaseError("Closed", `connect to ${path}: ${e.message}`));
      });
    });
    const conn = new Connection(sock);
    try {
      conn.send({
        kind: "HELLO",
        msg: {
          version: 1,
          clientType: opts.clientType ?? "tower",
          ...(opts.lease === false ? {} : { lease: 1 }),
          replay: opts.replay ?? false,
          data: opts.data ?? false,
        },
      });
      const w = await conn.waitFor((f) => f.kind === "WELCOME", timeoutMs, "WELCOME");
      return { conn, welcome: (w as Extract<Frame, { kind: "WELCOME" }>).msg };
    } catch (e) {
      conn.close();
      throw e;
    }
  }

  get closed(): boolean {
    return this.isClosed;
  }

  send(f: Frame): void {
    if (this.isClosed) throw new LeaseError("Closed", `cannot send ${f.kind}: connection closed`);
    this.sock.write(encodeFrame(f));
  }

  /**
   * Waits for the first frame that `match` accepts. An ERROR frame rejects
   * the wait when `errorsReject` (default true) and no earlier waiter takes it.
   */
  waitFor(match: (f: Frame) => boolean, timeoutMs: number, what: string, errorsReject = true): Promise<Frame> {
    if (this.isClosed) {
      return Promise.reject(
        new LeaseError("Closed", `waiting for ${what}: connection closed${this.closedWith ? `: ${this.closedWith.message}` : ""}`),
      );
    }
    return new Promise<Frame>((resolve, reject) => {
      const w: Waiter = {
        match: (f) => match(f) || (errorsReject && f.kind === "ERROR"),
        resolve: (f) => {
          if (f.kind === "ERROR" && !match(f)) {
            reject(new LeaseError(f.msg.code, `${what}: ${f.msg.code}: ${f.msg.message}`));
          } else {
            resolve(f);
          }
        },
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((x) => x !== w);
          reject(new LeaseError("Timeout", `no ${what} within ${timeoutMs} ms`));
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /** Closes the connection (no frame is sent). */
  close(): void {
    this.sock.destroy();
    this.finish(undefined);
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.sock.destroy();
      this.finish(e instanceof FrameError ? e : new Error(String(e)));
      return;
    }
    for (const f of frames) {
      if (f.kind === "UNKNOWN") continue;
      if (f.kind === "PING") {
        if (!this.isClosed) this.sock.write(encodeFrame({ kind: "PONG" }));
        continue;
      }
      const i = this.waiters.findIndex((w) => w.match(f));
      if (i >= 0) {
        const [w] = this.waiters.splice(i, 1);
        clearTimeout(w.timer);
        w.resolve(f);
        continue;
      }
      this.emit("frame", f);
    }
  }

  private finish(err: Error | undefined): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.closedWith = err;
    this.sock.destroy();
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) {
      clearTimeout(w.timer);
      w.reject(new LeaseError("Closed", `connection closed${err ? `: ${err.message}` : ""}`));
    }
    this.emit("close", err);
  }
}

/** Reads a shellper's STATUS on a connection of its own (no token needed). */
export async function queryStatus(socketPath: string, timeoutMs = 3000): Promise<Status> {
  const { conn } = await Connection.open(socketPath, { clientType: "status", timeoutMs });
  try {
    conn.send({ kind: "STATUS_REQUEST" });
    const f = await conn.waitFor((f) => f.kind === "STATUS", timeoutMs, "STATUS");
    return (f as Extract<Frame, { kind: "STATUS" }>).msg;
  } finally {
    conn.close();
  }
}
