/**
 * The subset of the postcard wire format that the lease frames use (SPEC.md §5).
 *
 * Strict like the Rust decoder: a varint longer than its type allows, or whose
 * last byte carries bits beyond the type's width, is an error; `bool` and the
 * `option` tag accept only 0 and 1; strings must be valid UTF-8; and the frame
 * decoders reject bytes left over after the structure ({@link Reader.finish}).
 *
 * `u64` values are `bigint` so that every value survives a round trip exactly;
 * `u16`, `u32` and `i32` are `number`.
 */

/** A payload that does not decode (undecodable or trailing bytes). */
export class DecodeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "DecodeError";
  }
}

const U64_MAX = (1n << 64n) - 1n;
const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const utf8enc = new TextEncoder();

/** Reads postcard values from one payload; every read is bounds-checked. */
export class Reader {
  private pos = 0;
  constructor(private readonly buf: Uint8Array) {}

  private byte(what: string): number {
    if (this.pos >= this.buf.length) {
      throw new DecodeError(`unexpected end of payload reading ${what}`);
    }
    return this.buf[this.pos++];
  }

  /** An unsigned LEB128 varint of at most `bits` bits (16, 32 or 64). */
  private varint(bits: number, what: string): bigint {
    const maxBytes = Math.ceil(bits / 7);
    // Bits the last possible byte may carry: 16 -> 2, 32 -> 4, 64 -> 1.
    const lastBits = bits - 7 * (maxBytes - 1);
    let out = 0n;
    for (let i = 0; i < maxBytes; i++) {
      const b = this.byte(what);
      out |= BigInt(b & 0x7f) << BigInt(7 * i);
      if ((b & 0x80) === 0) {
        if (i === maxBytes - 1 && b >= 1 << lastBits) {
          throw new DecodeError(`varint overflows u${bits} in ${what}`);
        }
        return out;
      }
    }
    throw new DecodeError(`varint longer than ${maxBytes} bytes in ${what}`);
  }

  u16(what = "u16"): number {
    return Number(this.varint(16, what));
  }
  u32(what = "u32"): number {
    return Number(this.varint(32, what));
  }
  u64(what = "u64"): bigint {
    return this.varint(64, what);
  }
  /** zigzag over a u32 varint. */
  i32(what = "i32"): number {
    const z = Number(this.varint(32, what));
    return (z >>> 1) ^ -(z & 1);
  }
  /** zigzag over a u64 varint. */
  i64(what = "i64"): bigint {
    const z = this.varint(64, what);
    return (z >> 1n) ^ -(z & 1n);
  }
  bool(what = "bool"): boolean {
    const b = this.byte(what);
    if (b > 1) throw new DecodeError(`bool byte ${b} in ${what}`);
    return b === 1;
  }
  /** A length that must fit in the rest of the payload (no huge allocations). */
  private len(what: string): number {
    const n = this.varint(64, `${what} length`);
    const rest = BigInt(this.buf.length - this.pos);
    if (n > rest) {
      throw new DecodeError(`${what} length ${n} exceeds the ${rest} bytes left`);
    }
    return Number(n);
  }
  string(what = "string"): string {
    const n = this.len(what);
    const bytes = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    try {
      return utf8.decode(bytes);
    } catch {
      throw new DecodeError(`invalid UTF-8 in ${what}`);
    }
  }
  /** Fixed-size byte array (no length prefix). */
  fixed(n: number, what = "bytes"): Uint8Array {
    if (this.buf.length - this.pos < n) {
      throw new DecodeError(`unexpected end of payload reading ${what}`);
    }
    const out = new Uint8Array(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return out;
  }
  option<T>(read: () => T, what = "option"): T | undefined {
    const tag = this.byte(`${what} tag`);
    if (tag === 0) return undefined;
    if (tag === 1) return read();
    throw new DecodeError(`option tag ${tag} in ${what}`);
  }
  seq<T>(read: () => T, what = "seq"): T[] {
    const n = this.varint(64, `${what} count`);
    // Every item takes at least one byte: a count beyond the bytes left is
    // a lie, refused before looping.
    if (n > BigInt(this.buf.length - this.pos)) {
      throw new DecodeError(`${what} count ${n} exceeds the bytes left`);
    }
    const out: T[] = [];
    for (let i = 0n; i < n; i++) out.push(read());
    return out;
  }
  /** An enum variant index (a u32 varint), checked against `count` variants. */
  variant(count: number, what: string): number {
    const v = this.u32(`${what} variant`);
    if (v >= count) throw new DecodeError(`unknown ${what} variant ${v}`);
    return v;
  }
  /** Rejects bytes left over after the structure. */
  finish(what: string): void {
    if (this.pos !== this.buf.length) {
      throw new DecodeError(
        `${this.buf.length - this.pos} trailing byte(s) after ${what}`,
      );
    }
  }
}

/** Builds one postcard payload. Values out of range throw a RangeError. */
export class Writer {
  private readonly parts: number[] = [];

  private varint(v: bigint, bits: number, what: string): this {
    if (v < 0n || v >= 1n << BigInt(bits)) {
      throw new RangeError(`${what} ${v} does not fit in u${bits}`);
    }
    do {
      let b = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) b |= 0x80;
      this.parts.push(b);
    } while (v !== 0n);
    return this;
  }
  private int(v: number, what: string): bigint {
    if (!Number.isSafeInteger(v)) throw new RangeError(`${what} ${v} is not an integer`);
    return BigInt(v);
  }

  u16(v: number, what = "u16"): this {
    return this.varint(this.int(v, what), 16, what);
  }
  u32(v: number, what = "u32"): this {
    return this.varint(this.int(v, what), 32, what);
  }
  u64(v: bigint | number, what = "u64"): this {
    const b = typeof v === "bigint" ? v : this.int(v, what);
    if (b > U64_MAX) throw new RangeError(`${what} ${v} does not fit in u64`);
    return this.varint(b, 64, what);
  }
  i32(v: number, what = "i32"): this {
    if (!Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 31) {
      throw new RangeError(`${what} ${v} does not fit in i32`);
    }
    return this.varint(BigInt(((v << 1) ^ (v >> 31)) >>> 0), 32, what);
  }
  i64(v: bigint, what = "i64"): this {
    if (v < -(1n << 63n) || v >= 1n << 63n) {
      throw new RangeError(`${what} ${v} does not fit in i64`);
    }
    return this.varint(BigInt.asUintN(64, (v << 1n) ^ (v >> 63n)), 64, what);
  }
  bool(v: boolean): this {
    this.parts.push(v ? 1 : 0);
    return this;
  }
  string(s: string): this {
    const bytes = utf8enc.encode(s);
    this.varint(BigInt(bytes.length), 64, "string length");
    for (const b of bytes) this.parts.push(b);
    return this;
  }
  fixed(bytes: Uint8Array, n: number, what = "bytes"): this {
    if (bytes.length !== n) {
      throw new RangeError(`${what} must be ${n} bytes, got ${bytes.length}`);
    }
    for (const b of bytes) this.parts.push(b);
    return this;
  }
  option<T>(v: T | undefined | null, write: (v: T) => void): this {
    if (v === undefined || v === null) {
      this.parts.push(0);
    } else {
      this.parts.push(1);
      write(v);
    }
    return this;
  }
  seq<T>(items: readonly T[], write: (v: T) => void): this {
    this.varint(BigInt(items.length), 64, "seq count");
    for (const it of items) write(it);
    return this;
  }
  variant(index: number): this {
    return this.u32(index, "variant");
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}
