//! The lease token: 256 random bits shared by a Tower and one shellper.
//!
//! The token is the only thing that lets a process acquire a shellper's lease.
//! It travels once over the shellper's stdin at spawn, then inside ACQUIRE
//! frames; it is never placed in argv or the environment (both are readable by
//! every process of the user through /proc).

use std::fmt;

/// Length of a token in bytes.
pub const TOKEN_LEN: usize = 32;

/// A 256-bit lease token. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Token(pub [u8; TOKEN_LEN]);

/// A token string that is not 64 hexadecimal digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a lease token is 64 hexadecimal digits; got {len} characters{detail}")]
pub struct TokenParseError {
    len: usize,
    detail: &'static str,
}

impl Token {
    /// Builds a token from raw bytes (the caller supplies the randomness: this
    /// crate does no IO).
    pub fn from_bytes(bytes: [u8; TOKEN_LEN]) -> Self {
        Token(bytes)
    }

    /// Constant-time comparison: the time taken does not depend on where the
    /// first differing byte is, so a local attacker cannot probe the token
    /// byte by byte through response timing.
    pub fn ct_eq(&self, other: &Token) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0.iter().zip(other.0.iter()) {
            diff |= a ^ b;
        }
        std::hint::black_box(diff) == 0
    }

    /// Lowercase hex, 64 characters (the form used on stdin and in registries).
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(TOKEN_LEN * 2);
        for b in self.0 {
            s.push(HEX[(b >> 4) as usize] as char);
            s.push(HEX[(b & 0xf) as usize] as char);
        }
        s
    }

    /// Parses 64 hex digits (either case); surrounding whitespace is trimmed.
    pub fn from_hex(s: &str) -> Result<Self, TokenParseError> {
        let s = s.trim();
        if s.len() != TOKEN_LEN * 2 {
            return Err(TokenParseError {
                len: s.len(),
                detail: "",
            });
        }
        let mut out = [0u8; TOKEN_LEN];
        let bytes = s.as_bytes();
        for (i, slot) in out.iter_mut().enumerate() {
            let hi = hex_val(bytes[2 * i]);
            let lo = hex_val(bytes[2 * i + 1]);
            match (hi, lo) {
                (Some(h), Some(l)) => *slot = (h << 4) | l,
                _ => {
                    return Err(TokenParseError {
                        len: s.len(),
                        detail: " (non-hex character)",
                    });
                }
            }
        }
        Ok(Token(out))
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let t = Token([0xab; 32]);
        assert_eq!(Token::from_hex(&t.to_hex()), Ok(t.clone()));
        assert_eq!(
            Token::from_hex(&format!("  {}\n", t.to_hex().to_uppercase())),
            Ok(t)
        );
        assert!(Token::from_hex("abc").is_err());
        assert!(Token::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn ct_eq_compares_all_bytes() {
        let a = Token([1; 32]);
        let mut b = a.clone();
        assert!(a.ct_eq(&b));
        b.0[31] = 2;
        assert!(!a.ct_eq(&b));
        assert_eq!(format!("{a:?}"), "Token(<redacted>)");
    }
}
