/**
 * shellper-lease: the shellper lease protocol (SPEC.md) for Node Towers.
 *
 * - {@link frames}: the frame codec, every frame type, strict like the Rust decoder.
 * - {@link LeaseHolder}: holds one shellper's lease (acquire, renew, detach, terminate, events).
 * - {@link Tower}: a scope, its lock and registry, many holders on one timer, spawn and adopt.
 * - {@link spawnShellper}: leased-mode spawn (token and config on stdin, info line).
 */
export * as frames from "./frames";
export { FrameDecoder, FrameError, encodeFrame, parseFrame, type Frame } from "./frames";
export { DecodeError, Reader, Writer } from "./postcard";
export { Connection, LeaseError, queryStatus } from "./conn";
export {
  LeaseHolder,
  MAX_WIRE_MS,
  MIN_RENEW_MS,
  MIN_TTL_MS,
  clampGrant,
  wireMs,
  type GrantTimes,
  type HolderEvents,
  type HolderOptions,
  type HolderState,
} from "./holder";
export { Scheduler } from "./sched";
export {
  InstanceLock,
  Scope,
  ScopeError,
  ScopeLockedError,
  defaultScopeDir,
  newShellperId,
  parseRegistry,
  type Registry,
  type RegistryEntry,
} from "./scope";
export {
  SpawnError,
  invocation,
  spawnShellper,
  type LeaseSettings,
  type ShellperConfig,
  type SpawnMode,
  type SpawnOptions,
  type Spawned,
} from "./spawn";
export { Token } from "./token";
export { TrustError, checkListener, checkSocketPath, listeningInodes } from "./trust";
export { Tower, type AdoptReport, type Session, type SpawnRequest, type TowerEvents, type TowerOptions } from "./tower";
export { procStat, sameProcessAlive, waitGone } from "./proc";
