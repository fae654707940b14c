/**
 * The lease token: 256 random bits, written to the shellper's stdin as 64
 * lowercase hex digits and sent raw (32 bytes) in ACQUIRE. Never put it in
 * argv, the environment or a log: `toString`, `toJSON` and `inspect` redact it.
 */
import { randomBytes } from "node:crypto";
import { inspect } from "node:util";

export class Token {
  private constructor(private readonly raw: Uint8Array) {}

  /** A fresh token from the system's CSPRNG. */
  static random(): Token {
    return new Token(new Uint8Array(randomBytes(32)));
  }

  /** From 64 hex digits (as stored in registry.json). */
  static fromHex(hex: string): Token {
    if (!/^[0-9a-fA-F]{64}$/.test(hex)) throw new RangeError("a token is 64 hexadecimal digits");
    return new Token(new Uint8Array(Buffer.from(hex, "hex")));
  }

  static fromBytes(bytes: Uint8Array): Token {
    if (bytes.length !== 32) throw new RangeError("a token is 32 bytes");
    return new Token(Uint8Array.from(bytes));
  }

  /** The 32 raw bytes (a copy). */
  get bytes(): Uint8Array {
    return Uint8Array.from(this.raw);
  }

  /** 64 lowercase hex digits: for the shellper's stdin and the registry only. */
  revealHex(): string {
    return Buffer.from(this.raw).toString("hex");
  }

  toString(): string {
    return "Token(<redacted>)";
  }
  toJSON(): string {
    return "<redacted>";
  }
  [inspect.custom](): string {
    return this.toString();
  }
}
