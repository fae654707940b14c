//! The lease token: 256 random bits shared by a Tower and one shellper.
//!
//! The token is the only thing that lets a process acquire a shellper's lease.
//! It travels once over the shellper's stdin at spawn, then inside ACQUIRE
//! frames; it is never placed in argv or the environment (both are readable by
//! every process of the user through /proc).
//!
//! In memory it never prints (`Debug` is redacted), compares in constant time
//! ([`subtle`]) and is zeroed when dropped ([`zeroize`]); its hex form
//! ([`Token::to_hex`]) is zeroed when dropped too. On the wire (postcard) it is
//! 32 raw bytes; in a registry file it is 64 lowercase hex digits
//! ([`serde_hex`]).

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// Length of a token in bytes.
pub const TOKEN_LEN: usize = 32;

/// A 256-bit lease token. `Debug` never prints the secret, `==` is the
/// constant-time [`Token::ct_eq`] (a derived `PartialEq` would compare with
/// `memcmp`, which stops at the first differing byte), and the bytes are
/// zeroed when the token is dropped (every clone too).
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[repr(transparent)]
pub struct Token(pub [u8; TOKEN_LEN]);

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.ct_eq(other)
    }
}

impl Eq for Token {}

impl Drop for Token {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl Zeroize for Token {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

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
    /// byte by byte through response timing. [`subtle`]'s compare (an
    /// OR-fold of the byte differences behind an optimisation barrier).
    pub fn ct_eq(&self, other: &Token) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// Lowercase hex, 64 characters (the form used on stdin and in
    /// registries), zeroed when dropped.
    pub fn to_hex(&self) -> Zeroizing<String> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = Zeroizing::new(String::with_capacity(TOKEN_LEN * 2));
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

/// Serde as 64 lowercase hex digits (`#[serde(with = "serde_hex")]`): the
/// registry's form. Deserializing accepts either case (as
/// [`Token::from_hex`]); the text read is zeroed after parsing.
pub mod serde_hex {
    use super::Token;
    use zeroize::Zeroizing;

    /// Writes the token as hex.
    pub fn serialize<S: serde::Serializer>(t: &Token, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_hex())
    }

    /// Reads a hex token.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Token, D::Error> {
        let text = Zeroizing::new(<String as serde::Deserialize>::deserialize(d)?);
        Token::from_hex(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects() {
        let t = Token([0xab; 32]);
        assert_eq!(Token::from_hex(&t.to_hex()), Ok(t.clone()));
        assert_eq!(t.to_hex().as_str(), "ab".repeat(32));
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

    /// `==` is `ct_eq`: a difference at any single byte or bit position is
    /// seen, and equal tokens compare equal.
    #[test]
    fn eq_is_the_constant_time_compare() {
        let a = Token(core::array::from_fn(|i| i as u8));
        assert!(a == a.clone());
        for i in 0..TOKEN_LEN {
            for bit in 0..8 {
                let mut b = a.clone();
                b.0[i] ^= 1 << bit;
                assert!(a != b && !a.ct_eq(&b), "byte {i} bit {bit}");
            }
        }
    }

    /// A dropped token leaves zeros where its bytes were.
    #[test]
    fn drop_zeroes_the_bytes() {
        let mut slot = std::mem::MaybeUninit::new(Token([0x5a; TOKEN_LEN]));
        // SAFETY: `slot` holds an initialised token, dropped exactly once;
        // its storage stays ours and a `[u8; 32]` (the transparent token's
        // only field) is valid for any bytes.
        let after = unsafe {
            slot.assume_init_drop();
            std::ptr::read(slot.as_ptr().cast::<[u8; TOKEN_LEN]>())
        };
        assert_eq!(after, [0; TOKEN_LEN]);
        let mut t = Token([1; TOKEN_LEN]);
        t.zeroize();
        assert_eq!(t.0, [0; TOKEN_LEN]);
    }

    #[test]
    fn serde_hex_is_the_registry_form() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct E {
            #[serde(with = "serde_hex")]
            token: Token,
        }
        let e = E {
            token: Token(core::array::from_fn(|i| i as u8)),
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(
            json,
            r#"{"token":"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"}"#
        );
        let back: E = serde_json::from_str(&json.to_uppercase().replace("TOKEN", "token")).unwrap();
        assert!(back.token == e.token);
        let err = serde_json::from_str::<E>(r#"{"token":"nothex"}"#)
            .err()
            .unwrap();
        assert!(err.to_string().contains("64 hexadecimal digits"), "{err}");
    }

    /// No derived comparison can creep back in: `PartialEq` for `Token` is
    /// written by hand on top of `ct_eq`.
    #[test]
    fn token_does_not_derive_partial_eq() {
        let src = include_str!("token.rs");
        let decl = src.find("pub struct Token(").expect("declaration");
        let derive = src[..decl].rfind("#[derive(").expect("derive");
        assert!(
            !src[derive..decl].contains("PartialEq"),
            "a derived PartialEq compares with an early exit"
        );
        assert!(src.contains("impl PartialEq for Token"));
    }
}
