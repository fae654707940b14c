/**
 * Frames of the shellper protocol (SPEC.md §4–§6): types, payload limits,
 * payload encodings, and a strict parser for one whole frame.
 *
 * A frame is `[type u8][length u32 BE][payload]`. Types 0x01–0x0A are codev's
 * v1 (raw bytes or one JSON object); 0x20–0x2A are the lease frames, whose
 * payloads are postcard. Decoding is strict: a payload over its type's limit,
 * a payload that does not decode, or bytes after the structure are errors.
 * Unknown types decode to `{ kind: "UNKNOWN" }` (up to 16 MiB) so callers can
 * ignore them, as SPEC.md §4 requires.
 */
import { DecodeError, Reader, Writer } from "./postcard";

const KiB = 1024;
const MiB = 1024 * KiB;

/** Largest payload of an unknown frame type that is skipped rather than refused. */
export const UNKNOWN_LIMIT = 16 * MiB;
/** Header size: one type byte and a big-endian u32 length. */
export const HEADER_LEN = 5;

/** Frame type numbers (SPEC.md §6). */
export const FrameType = {
  DATA: 0x01,
  RESIZE: 0x02,
  SIGNAL: 0x03,
  EXIT: 0x04,
  REPLAY: 0x05,
  PING: 0x06,
  PONG: 0x07,
  HELLO: 0x08,
  WELCOME: 0x09,
  SPAWN: 0x0a,
  ACQUIRE: 0x20,
  GRANT: 0x21,
  RENEW: 0x22,
  RENEWED: 0x23,
  RELEASE: 0x24,
  RELEASED: 0x25,
  TERMINATED: 0x26,
  STATUS_REQUEST: 0x27,
  STATUS: 0x28,
  REVOKED: 0x29,
  ERROR: 0x2a,
} as const;
export type FrameKind = keyof typeof FrameType;

const KIND_OF = new Map<number, FrameKind>(
  Object.entries(FrameType).map(([k, v]) => [v, k as FrameKind]),
);

/** Payload limit of each known type, in bytes (SPEC.md §6). */
export const LIMITS: Record<FrameKind, number> = {
  DATA: 16 * MiB,
  RESIZE: 64 * KiB,
  SIGNAL: 64 * KiB,
  EXIT: 64 * KiB,
  REPLAY: 16 * MiB,
  PING: 0,
  PONG: 0,
  HELLO: 1 * MiB,
  WELCOME: 1 * MiB,
  SPAWN: 1 * MiB,
  ACQUIRE: 4 * KiB,
  GRANT: 4 * KiB,
  RENEW: 4 * KiB,
  RENEWED: 4 * KiB,
  RELEASE: 4 * KiB,
  RELEASED: 4 * KiB,
  TERMINATED: 4 * KiB,
  STATUS_REQUEST: 4 * KiB,
  STATUS: 256 * KiB,
  REVOKED: 4 * KiB,
  ERROR: 4 * KiB,
};

/** The payload limit for a type byte: a known type's limit, else {@link UNKNOWN_LIMIT}. */
export function limitOf(type: number): number {
  const kind = KIND_OF.get(type);
  return kind === undefined ? UNKNOWN_LIMIT : LIMITS[kind];
}

/** The kind of a type byte, `undefined` for an unknown type. */
export function kindOf(type: number): FrameKind | undefined {
  return KIND_OF.get(type);
}

// ---------------------------------------------------------------- JSON (v1)

/** A JSON object as received: known fields typed, unknown ones kept. */
type Json<T> = T & { [extra: string]: unknown };

export type Resize = Json<{ cols: number; rows: number }>;
export type Signal = Json<{ signal: number }>;
export type Exit = Json<{ code: number | null; signal: string | null }>;
export type ClientTypeName = "tower" | "terminal" | "status";
export type Hello = Json<{
  version: number;
  clientType?: ClientTypeName;
  lease?: number;
  replay?: boolean;
  data?: boolean;
}>;
export type WelcomeLease = Json<{ version: number; leased: boolean; shellperPid: number }>;
export type Welcome = Json<{
  version: number;
  pid: number;
  cols: number;
  rows: number;
  startTime: number;
  lastDataAt?: number;
  alwaysSendsReplay?: boolean;
  lease?: WelcomeLease;
}>;
export type Spawn = Json<{
  command: string;
  args: string[];
  cwd: string;
  env: Record<string, string>;
}>;

// ---------------------------------------------------------------- postcard

export interface HolderInfo {
  /** Free-form; a shellper keeps at most 256 bytes of it. */
  name: string;
  pid: number;
}
export interface Acquire {
  /** The 32 token bytes. */
  token: Uint8Array;
  holder: HolderInfo;
}
export interface Grant {
  epoch: bigint;
  ttl_ms: bigint;
  window_ms: bigint;
  renew_every_ms: bigint;
  expires_in_ms: bigint;
}
export interface Renew {
  epoch: bigint;
  seq: bigint;
}
export interface Renewed {
  epoch: bigint;
  seq: bigint;
  expires_in_ms: bigint;
}
export type ReleaseMode = { mode: "Terminate" } | { mode: "Detach"; hold_ms: bigint };
export interface Release {
  epoch: bigint;
  mode: ReleaseMode;
}
export interface Released {
  epoch: bigint;
  kill_in_ms: bigint;
}
export const TERMINATE_REASONS = [
  "ClaimExpired",
  "WindowExpired",
  "Requested",
  "Signal",
  "ChildExitedUnheld",
] as const;
export type TerminateReason = (typeof TERMINATE_REASONS)[number];
export interface Terminated {
  reason: TerminateReason;
  signalled: number;
  survivors: number;
  elapsed_ms: bigint;
  sweeps: number;
}
export interface Revoked {
  old_epoch: bigint;
  new_epoch: bigint;
}
export const ERROR_CODES = [
  "BadToken",
  "StaleEpoch",
  "NotHolder",
  "NotLeased",
  "Terminating",
  "Protocol",
  "Forbidden",
  "Busy",
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];
export interface ErrorMsg {
  code: ErrorCode;
  message: string;
}
export const CLIENT_TYPES = ["Tower", "Terminal", "Status"] as const;
export const PHASES = ["Unclaimed", "Held", "Lapsed", "Terminating", "Exited"] as const;
export type Phase = (typeof PHASES)[number];
export type ChildState =
  | { state: "Running" }
  | { state: "Exited"; code?: number; signal?: number };
export interface ClientInfo {
  kind: (typeof CLIENT_TYPES)[number];
  pid: number;
  holder: boolean;
}
export const COUNTER_NAMES = [
  "acquires",
  "renewals",
  "rejected_tokens",
  "stale_epochs",
  "revocations",
  "lapses",
  "stalls",
  "protocol_errors",
] as const;
export type Counters = Record<(typeof COUNTER_NAMES)[number], bigint>;
export interface Status {
  version: string;
  shellper_pid: number;
  shellper_start_ticks: bigint;
  started_at_ms: bigint;
  child_pid?: number;
  child: ChildState;
  command: string;
  args: string[];
  cwd: string;
  phase: Phase;
  leased: boolean;
  epoch: bigint;
  holder?: HolderInfo;
  holder_peer_pid?: number;
  expires_in_ms?: bigint;
  kill_in_ms?: bigint;
  claim_in_ms?: bigint;
  ttl_ms: bigint;
  window_ms: bigint;
  claim_ms: bigint;
  kill_grace_ms: bigint;
  clients: ClientInfo[];
  counters: Counters;
}

/** One decoded frame. */
export type Frame =
  | { kind: "DATA"; data: Uint8Array }
  | { kind: "REPLAY"; data: Uint8Array }
  | { kind: "RESIZE"; msg: Resize }
  | { kind: "SIGNAL"; msg: Signal }
  | { kind: "EXIT"; msg: Exit }
  | { kind: "PING" }
  | { kind: "PONG" }
  | { kind: "HELLO"; msg: Hello }
  | { kind: "WELCOME"; msg: Welcome }
  | { kind: "SPAWN"; msg: Spawn }
  | { kind: "ACQUIRE"; msg: Acquire }
  | { kind: "GRANT"; msg: Grant }
  | { kind: "RENEW"; msg: Renew }
  | { kind: "RENEWED"; msg: Renewed }
  | { kind: "RELEASE"; msg: Release }
  | { kind: "RELEASED"; msg: Released }
  | { kind: "TERMINATED"; msg: Terminated }
  | { kind: "STATUS_REQUEST" }
  | { kind: "STATUS"; msg: Status }
  | { kind: "REVOKED"; msg: Revoked }
  | { kind: "ERROR"; msg: ErrorMsg }
  | { kind: "UNKNOWN"; type: number; length: number };

/** A frame that violates the protocol: over its limit, undecodable, trailing bytes, truncated. */
export class FrameError extends Error {
  constructor(
    readonly reason: "oversized" | "undecodable" | "trailing" | "truncated",
    message: string,
  ) {
    super(message);
    this.name = "FrameError";
  }
}

/** Longest holder name on the wire (SPEC.md §6.2). */
export const HOLDER_NAME_MAX = 256;

// ------------------------------------------------------------ JSON checking

const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const enc = new TextEncoder();

type Check = (v: unknown) => boolean;
const isInt =
  (min: number, max: number): Check =>
  (v) =>
    typeof v === "number" && Number.isInteger(v) && v >= min && v <= max;
const U16 = isInt(0, 0xffff);
const U32 = isInt(0, 0xffffffff);
const I32 = isInt(-(2 ** 31), 2 ** 31 - 1);
const I64 = isInt(Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER);
const STR: Check = (v) => typeof v === "string";
const BOOL: Check = (v) => typeof v === "boolean";
const nullable =
  (c: Check): Check =>
  (v) =>
    v === null || c(v);
const STR_ARRAY: Check = (v) => Array.isArray(v) && v.every(STR);
const STR_MAP: Check = (v) =>
  typeof v === "object" && v !== null && !Array.isArray(v) && Object.values(v).every(STR);
const CLIENT_TYPE: Check = (v) => v === "tower" || v === "terminal" || v === "status";
const OBJ: Check = (v) => typeof v === "object" && v !== null && !Array.isArray(v);

/**
 * Field name → [check, presence]: `"required"`, `"optional"` (may be absent,
 * `null` is a type error), or `"nullable"` (may be absent or `null`). The
 * shapes follow the Rust decoder: integer widths, which fields default.
 */
type Presence = "required" | "optional" | "nullable";
type Shape = Record<string, [Check, Presence]>;
const U64 = isInt(0, Number.MAX_SAFE_INTEGER);
const SHAPES: Partial<Record<FrameKind, Shape>> = {
  RESIZE: { cols: [U16, "required"], rows: [U16, "required"] },
  SIGNAL: { signal: [I32, "required"] },
  EXIT: { code: [nullable(I32), "nullable"], signal: [nullable(STR), "nullable"] },
  HELLO: {
    version: [U32, "required"],
    clientType: [CLIENT_TYPE, "optional"],
    lease: [U32, "nullable"],
    replay: [BOOL, "nullable"],
    data: [BOOL, "nullable"],
  },
  WELCOME: {
    version: [U32, "required"],
    pid: [I64, "required"],
    cols: [U16, "required"],
    rows: [U16, "required"],
    startTime: [U64, "required"],
    lastDataAt: [U64, "nullable"],
    alwaysSendsReplay: [BOOL, "optional"],
    lease: [OBJ, "nullable"],
  },
  SPAWN: {
    command: [STR, "required"],
    args: [STR_ARRAY, "optional"],
    cwd: [STR, "required"],
    env: [STR_MAP, "optional"],
  },
};
const WELCOME_LEASE: Shape = {
  version: [U32, "required"],
  leased: [BOOL, "required"],
  shellperPid: [U32, "required"],
};

function checkShape(what: string, obj: Record<string, unknown>, shape: Shape): void {
  for (const [field, [check, presence]] of Object.entries(shape)) {
    const v = obj[field];
    if (v === undefined || (v === null && presence === "nullable")) {
      if (presence === "required") throw new DecodeError(`${what}: missing field ${field}`);
      continue;
    }
    if (!check(v)) throw new DecodeError(`${what}: bad value for ${field}: ${JSON.stringify(v)}`);
  }
}

function decodeJson(kind: FrameKind, payload: Uint8Array): Record<string, unknown> {
  let text: string;
  try {
    text = utf8.decode(payload);
  } catch {
    throw new DecodeError(`${kind}: payload is not UTF-8`);
  }
  let v: unknown;
  try {
    // JSON.parse accepts surrounding whitespace and rejects anything else
    // after the value, which is the rule of SPEC.md §5.
    v = JSON.parse(text);
  } catch (e) {
    throw new DecodeError(`${kind}: ${(e as Error).message}`);
  }
  if (!OBJ(v)) throw new DecodeError(`${kind}: payload is not a JSON object`);
  const obj = v as Record<string, unknown>;
  const shape = SHAPES[kind];
  if (shape) checkShape(kind, obj, shape);
  if (kind === "WELCOME" && OBJ(obj.lease)) {
    checkShape("WELCOME.lease", obj.lease as Record<string, unknown>, WELCOME_LEASE);
  }
  return obj;
}

// -------------------------------------------------------- postcard payloads

// A longer holder name is not a decoding error (the frame's 4 KiB limit
// bounds it); a shellper keeps its first 256 bytes. See truncateHolderName.
function readHolder(r: Reader): HolderInfo {
  return { name: r.string("holder name"), pid: r.u32("holder pid") };
}
function writeHolder(w: Writer, h: HolderInfo): void {
  w.string(h.name).u32(h.pid, "holder pid");
}

/** `name` cut to at most {@link HOLDER_NAME_MAX} bytes of UTF-8, at a character boundary. */
export function truncateHolderName(name: string): string {
  if (enc.encode(name).length <= HOLDER_NAME_MAX) return name;
  let out = "";
  let bytes = 0;
  for (const ch of name) {
    const n = enc.encode(ch).length;
    if (bytes + n > HOLDER_NAME_MAX) break;
    out += ch;
    bytes += n;
  }
  return out;
}

function decodePostcard(kind: FrameKind, payload: Uint8Array): Frame {
  const r = new Reader(payload);
  let f: Frame;
  switch (kind) {
    case "ACQUIRE":
      f = { kind, msg: { token: r.fixed(32, "token"), holder: readHolder(r) } };
      break;
    case "GRANT":
      f = {
        kind,
        msg: {
          epoch: r.u64("epoch"),
          ttl_ms: r.u64("ttl_ms"),
          window_ms: r.u64("window_ms"),
          renew_every_ms: r.u64("renew_every_ms"),
          expires_in_ms: r.u64("expires_in_ms"),
        },
      };
      break;
    case "RENEW":
      f = { kind, msg: { epoch: r.u64("epoch"), seq: r.u64("seq") } };
      break;
    case "RENEWED":
      f = {
        kind,
        msg: { epoch: r.u64("epoch"), seq: r.u64("seq"), expires_in_ms: r.u64("expires_in_ms") },
      };
      break;
    case "RELEASE": {
      const epoch = r.u64("epoch");
      const v = r.variant(2, "ReleaseMode");
      const mode: ReleaseMode =
        v === 0 ? { mode: "Terminate" } : { mode: "Detach", hold_ms: r.u64("hold_ms") };
      f = { kind, msg: { epoch, mode } };
      break;
    }
    case "RELEASED":
      f = { kind, msg: { epoch: r.u64("epoch"), kill_in_ms: r.u64("kill_in_ms") } };
      break;
    case "TERMINATED":
      f = {
        kind,
        msg: {
          reason: TERMINATE_REASONS[r.variant(TERMINATE_REASONS.length, "TerminateReason")],
          signalled: r.u32("signalled"),
          survivors: r.u32("survivors"),
          elapsed_ms: r.u64("elapsed_ms"),
          sweeps: r.u32("sweeps"),
        },
      };
      break;
    case "STATUS_REQUEST":
      f = { kind };
      break;
    case "STATUS":
      f = { kind, msg: readStatus(r) };
      break;
    case "REVOKED":
      f = { kind, msg: { old_epoch: r.u64("old_epoch"), new_epoch: r.u64("new_epoch") } };
      break;
    case "ERROR":
      f = {
        kind,
        msg: {
          code: ERROR_CODES[r.variant(ERROR_CODES.length, "ErrorCode")],
          message: r.string("message"),
        },
      };
      break;
    default:
      throw new Error(`not a postcard frame: ${kind}`);
  }
  r.finish(kind);
  return f;
}

function readStatus(r: Reader): Status {
  const version = r.string("version");
  const shellper_pid = r.u32("shellper_pid");
  const shellper_start_ticks = r.u64("shellper_start_ticks");
  const started_at_ms = r.u64("started_at_ms");
  const child_pid = r.option(() => r.u32("child_pid"), "child_pid");
  const childV = r.variant(2, "ChildState");
  let child: ChildState = { state: "Running" };
  if (childV === 1) {
    const code = r.option(() => r.i32("code"), "code");
    const signal = r.option(() => r.i32("signal"), "signal");
    child = { state: "Exited" };
    if (code !== undefined) child.code = code;
    if (signal !== undefined) child.signal = signal;
  }
  const command = r.string("command");
  const args = r.seq(() => r.string("arg"), "args");
  const cwd = r.string("cwd");
  const phase = PHASES[r.variant(PHASES.length, "Phase")];
  const leased = r.bool("leased");
  const epoch = r.u64("epoch");
  const holder = r.option(() => readHolder(r), "holder");
  const holder_peer_pid = r.option(() => r.u32("holder_peer_pid"), "holder_peer_pid");
  const expires_in_ms = r.option(() => r.u64("expires_in_ms"), "expires_in_ms");
  const kill_in_ms = r.option(() => r.u64("kill_in_ms"), "kill_in_ms");
  const claim_in_ms = r.option(() => r.u64("claim_in_ms"), "claim_in_ms");
  const ttl_ms = r.u64("ttl_ms");
  const window_ms = r.u64("window_ms");
  const claim_ms = r.u64("claim_ms");
  const kill_grace_ms = r.u64("kill_grace_ms");
  const clients = r.seq(
    () => ({
      kind: CLIENT_TYPES[r.variant(CLIENT_TYPES.length, "ClientType")],
      pid: r.u32("client pid"),
      holder: r.bool("client holder"),
    }),
    "clients",
  );
  const counters = {} as Counters;
  for (const name of COUNTER_NAMES) counters[name] = r.u64(name);
  const s: Status = {
    version,
    shellper_pid,
    shellper_start_ticks,
    started_at_ms,
    child,
    command,
    args,
    cwd,
    phase,
    leased,
    epoch,
    ttl_ms,
    window_ms,
    claim_ms,
    kill_grace_ms,
    clients,
    counters,
  };
  // Optional fields are set only when present, so a decoded value compares
  // equal to one built by hand without them.
  if (child_pid !== undefined) s.child_pid = child_pid;
  if (holder !== undefined) s.holder = holder;
  if (holder_peer_pid !== undefined) s.holder_peer_pid = holder_peer_pid;
  if (expires_in_ms !== undefined) s.expires_in_ms = expires_in_ms;
  if (kill_in_ms !== undefined) s.kill_in_ms = kill_in_ms;
  if (claim_in_ms !== undefined) s.claim_in_ms = claim_in_ms;
  return s;
}

function writeStatus(w: Writer, s: Status): void {
  w.string(s.version)
    .u32(s.shellper_pid)
    .u64(s.shellper_start_ticks)
    .u64(s.started_at_ms)
    .option(s.child_pid, (v) => w.u32(v));
  if (s.child.state === "Running") {
    w.variant(0);
  } else {
    const c = s.child;
    w.variant(1)
      .option(c.code, (v) => w.i32(v))
      .option(c.signal, (v) => w.i32(v));
  }
  w.string(s.command)
    .seq(s.args, (a) => w.string(a))
    .string(s.cwd)
    .variant(variantIndex(PHASES, s.phase, "Phase"))
    .bool(s.leased)
    .u64(s.epoch)
    .option(s.holder, (h) => writeHolder(w, h))
    .option(s.holder_peer_pid, (v) => w.u32(v))
    .option(s.expires_in_ms, (v) => w.u64(v))
    .option(s.kill_in_ms, (v) => w.u64(v))
    .option(s.claim_in_ms, (v) => w.u64(v))
    .u64(s.ttl_ms)
    .u64(s.window_ms)
    .u64(s.claim_ms)
    .u64(s.kill_grace_ms)
    .seq(s.clients, (c) => {
      w.variant(variantIndex(CLIENT_TYPES, c.kind, "ClientType")).u32(c.pid).bool(c.holder);
    });
  for (const name of COUNTER_NAMES) w.u64(s.counters[name]);
}

function variantIndex<T extends string>(all: readonly T[], v: T, what: string): number {
  const i = all.indexOf(v);
  if (i < 0) throw new RangeError(`unknown ${what} ${v}`);
  return i;
}

// ------------------------------------------------------------ public codec

/**
 * Decodes the payload of a frame of type `type`. Throws {@link FrameError}
 * (`oversized` or `undecodable`/`trailing`) when the payload breaks the rules.
 */
export function decodePayload(type: number, payload: Uint8Array): Frame {
  const kind = kindOf(type);
  if (kind === undefined) {
    if (payload.length > UNKNOWN_LIMIT) {
      throw new FrameError("oversized", `unknown frame 0x${hex2(type)} of ${payload.length} bytes`);
    }
    return { kind: "UNKNOWN", type, length: payload.length };
  }
  if (payload.length > LIMITS[kind]) {
    throw new FrameError(
      "oversized",
      `${kind} payload of ${payload.length} bytes is over its ${LIMITS[kind]}-byte limit`,
    );
  }
  try {
    switch (kind) {
      case "DATA":
      case "REPLAY":
        return { kind, data: payload };
      case "PING":
      case "PONG":
        return { kind };
      case "RESIZE":
        return { kind, msg: decodeJson(kind, payload) as Resize };
      case "SIGNAL":
        return { kind, msg: decodeJson(kind, payload) as Signal };
      case "EXIT":
        return { kind, msg: decodeJson(kind, payload) as Exit };
      case "HELLO":
        return { kind, msg: decodeJson(kind, payload) as Hello };
      case "WELCOME":
        return { kind, msg: decodeJson(kind, payload) as Welcome };
      case "SPAWN":
        return { kind, msg: decodeJson(kind, payload) as Spawn };
      default:
        return decodePostcard(kind, payload);
    }
  } catch (e) {
    if (e instanceof DecodeError) {
      const trailing = e.message.includes("trailing");
      throw new FrameError(trailing ? "trailing" : "undecodable", `${kind}: ${e.message}`);
    }
    throw e;
  }
}

/** The payload bytes of a frame. */
export function encodePayload(f: Frame): Uint8Array {
  switch (f.kind) {
    case "DATA":
    case "REPLAY":
      return f.data;
    case "PING":
    case "PONG":
    case "STATUS_REQUEST":
      return new Uint8Array(0);
    case "RESIZE":
    case "SIGNAL":
    case "EXIT":
    case "HELLO":
    case "WELCOME":
    case "SPAWN":
      return enc.encode(JSON.stringify(f.msg));
    case "UNKNOWN":
      throw new RangeError("an unknown frame has no payload to encode");
    default:
      break;
  }
  const w = new Writer();
  switch (f.kind) {
    case "ACQUIRE":
      w.fixed(f.msg.token, 32, "token");
      writeHolder(w, f.msg.holder);
      break;
    case "GRANT": {
      const m = f.msg;
      w.u64(m.epoch).u64(m.ttl_ms).u64(m.window_ms).u64(m.renew_every_ms).u64(m.expires_in_ms);
      break;
    }
    case "RENEW":
      w.u64(f.msg.epoch).u64(f.msg.seq);
      break;
    case "RENEWED":
      w.u64(f.msg.epoch).u64(f.msg.seq).u64(f.msg.expires_in_ms);
      break;
    case "RELEASE":
      w.u64(f.msg.epoch);
      if (f.msg.mode.mode === "Terminate") w.variant(0);
      else w.variant(1).u64(f.msg.mode.hold_ms);
      break;
    case "RELEASED":
      w.u64(f.msg.epoch).u64(f.msg.kill_in_ms);
      break;
    case "TERMINATED": {
      const m = f.msg;
      w.variant(variantIndex(TERMINATE_REASONS, m.reason, "TerminateReason"))
        .u32(m.signalled)
        .u32(m.survivors)
        .u64(m.elapsed_ms)
        .u32(m.sweeps);
      break;
    }
    case "STATUS":
      writeStatus(w, f.msg);
      break;
    case "REVOKED":
      w.u64(f.msg.old_epoch).u64(f.msg.new_epoch);
      break;
    case "ERROR":
      w.variant(variantIndex(ERROR_CODES, f.msg.code, "ErrorCode")).string(f.msg.message);
      break;
  }
  return w.bytes();
}

/** A whole frame (header and payload). Throws a RangeError if the payload is over its limit. */
export function encodeFrame(f: Frame): Buffer {
  const type = f.kind === "UNKNOWN" ? f.type : FrameType[f.kind];
  const payload = encodePayload(f);
  const limit = limitOf(type);
  if (payload.length > limit) {
    throw new RangeError(`${f.kind} payload of ${payload.length} bytes is over its ${limit}-byte limit`);
  }
  const out = Buffer.allocUnsafe(HEADER_LEN + payload.length);
  out[0] = type;
  out.writeUInt32BE(payload.length, 1);
  out.set(payload, HEADER_LEN);
  return out;
}

/**
 * Parses exactly one frame from `bytes`: truncation, a length over the limit
 * and bytes after the frame are errors.
 */
export function parseFrame(bytes: Uint8Array): Frame {
  if (bytes.length < HEADER_LEN) {
    throw new FrameError("truncated", `frame header needs ${HEADER_LEN} bytes, got ${bytes.length}`);
  }
  const type = bytes[0];
  const len = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).readUInt32BE(1);
  const limit = limitOf(type);
  if (len > limit) {
    throw new FrameError("oversized", `frame 0x${hex2(type)} announces ${len} bytes, limit ${limit}`);
  }
  if (bytes.length < HEADER_LEN + len) {
    throw new FrameError("truncated", `frame 0x${hex2(type)} needs ${len} payload bytes, got ${bytes.length - HEADER_LEN}`);
  }
  if (bytes.length > HEADER_LEN + len) {
    throw new FrameError("trailing", `${bytes.length - HEADER_LEN - len} byte(s) after the frame`);
  }
  return decodePayload(type, bytes.subarray(HEADER_LEN));
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, "0");
}

/**
 * Incremental decoder for a byte stream: feed chunks with {@link push}, get
 * whole frames back. The length is checked against the type's limit as soon
 * as the header is in, before any payload is buffered; unknown frames are
 * skipped as their bytes arrive, never buffered.
 */
export class FrameDecoder {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private skip = 0;
  private failed: FrameError | undefined;

  /** Feeds bytes; returns the frames they complete (unknown ones included). */
  push(chunk: Uint8Array): Frame[] {
    if (this.failed) throw this.failed;
    let data = Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length);
    const out: Frame[] = [];
    if (this.skip > 0) {
      const n = Math.min(this.skip, data.length);
      this.skip -= n;
      data = data.subarray(n);
    }
    if (data.length > 0) {
      this.chunks.push(data);
      this.buffered += data.length;
    }
    try {
      for (;;) {
        if (this.skip > 0) {
          const all = this.take(Math.min(this.skip, this.buffered));
          this.skip -= all.length;
          if (this.skip > 0) break;
        }
        if (this.buffered < HEADER_LEN) break;
        const head = this.peek(HEADER_LEN);
        const type = head[0];
        const len = head.readUInt32BE(1);
        const limit = limitOf(type);
        if (len > limit) {
          throw new FrameError("oversized", `frame 0x${hex2(type)} announces ${len} bytes, limit ${limit}`);
        }
        if (kindOf(type) === undefined) {
          this.take(HEADER_LEN);
          out.push({ kind: "UNKNOWN", type, length: len });
          this.skip = len;
          continue;
        }
        if (this.buffered < HEADER_LEN + len) break;
        this.take(HEADER_LEN);
        out.push(decodePayload(type, this.take(len)));
      }
    } catch (e) {
      if (e instanceof FrameError) this.failed = e;
      throw e;
    }
    return out;
  }

  /** The stream ended: an error if it ended inside a frame. */
  end(): void {
    if (this.failed) throw this.failed;
    if (this.buffered > 0 || this.skip > 0) {
      throw new FrameError("truncated", "stream ended inside a frame");
    }
  }

  private peek(n: number): Buffer {
    if (this.chunks[0].length >= n) return this.chunks[0].subarray(0, n);
    const all = Buffer.concat(this.chunks);
    this.chunks = [all];
    return all.subarray(0, n);
  }

  private take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    let out: Buffer;
    if (this.chunks[0].length >= n) {
      out = this.chunks[0].subarray(0, n);
      this.chunks[0] = this.chunks[0].subarray(n);
    } else {
      const all = Buffer.concat(this.chunks);
      out = all.subarray(0, n);
      this.chunks = [all.subarray(n)];
    }
    if (this.chunks[0].length === 0) this.chunks.shift();
    this.buffered -= n;
    // A copy, so a frame never pins a large chunk of the stream.
    return Buffer.from(out);
  }
}
