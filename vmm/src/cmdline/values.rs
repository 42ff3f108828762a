//! Scalar value syntaxes shared by options: sizes with unit suffixes, UUIDs, identifiers.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Unexpected, Visitor};

const SIZE_EXPECTED: &str = "a non-negative number below 2^64, optional suffix k, M, G, T, P or E";

/// Why a size string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number with an optional unit suffix.
    Invalid,
    /// Does not fit in 64 bits.
    TooLarge,
}

/// Parses a QEMU size: digits, an optional fraction, an optional suffix `b`, `k`, `M`, `G`, `T`,
/// `P` or `E` (powers of 1024, any case). Without a suffix the value is in `default_unit` bytes,
/// which is how `-m 512` means 512 MiB. A fraction needs a unit larger than a byte, as in QEMU.
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, SizeError> {
    let int_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (int_part, rest) = s.split_at(int_end);
    if int_part.is_empty() {
        return Err(SizeError::Invalid);
    }
    let (frac_part, rest) = match rest.strip_prefix('.') {
        Some(after) => {
            let end = after
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(after.len());
            if end == 0 {
                return Err(SizeError::Invalid);
            }
            after.split_at(end)
        }
        None => ("", rest),
    };
    let unit: u64 = match rest {
        "" => default_unit,
        "b" | "B" => 1,
        "k" | "K" => 1 << 10,
        "m" | "M" => 1 << 20,
        "g" | "G" => 1 << 30,
        "t" | "T" => 1 << 40,
        "p" | "P" => 1 << 50,
        "e" | "E" => 1 << 60,
        _ => return Err(SizeError::Invalid),
    };
    if !frac_part.is_empty() && unit == 1 {
        return Err(SizeError::Invalid);
    }
    let mut value: u128 = 0;
    for d in int_part.bytes() {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(d - b'0')))
            .ok_or(SizeError::TooLarge)?;
        if value > u128::from(u64::MAX) {
            return Err(SizeError::TooLarge);
        }
    }
    let mut total = value * u128::from(unit);
    if !frac_part.is_empty() {
        // Beyond 18 digits a fraction cannot change a 64-bit byte count.
        let digits = &frac_part[..frac_part.len().min(18)];
        let mut num: u128 = 0;
        for d in digits.bytes() {
            num = num * 10 + u128::from(d - b'0');
        }
        let den = 10u128.pow(u32::try_from(digits.len()).unwrap_or(18));
        total += num * u128::from(unit) / den;
    }
    u64::try_from(total).map_err(|_| SizeError::TooLarge)
}

fn deserialize_size<'de, D: Deserializer<'de>>(d: D, default_unit: u64) -> Result<u64, D::Error> {
    struct V(u64);
    impl Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(SIZE_EXPECTED)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            match parse_size(v, self.0) {
                Ok(n) => Ok(n),
                Err(SizeError::Invalid) => Err(E::invalid_value(Unexpected::Str(v), &self)),
                Err(SizeError::TooLarge) => Err(E::invalid_value(
                    Unexpected::Str(v),
                    &"a size below 2^64 bytes",
                )),
            }
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            v.checked_mul(self.0).ok_or_else(|| {
                E::invalid_value(Unexpected::Unsigned(v), &"a size below 2^64 bytes")
            })
        }
    }
    d.deserialize_str(V(default_unit))
}

/// A size in bytes; a bare number is bytes (`maxmem=1073741824`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_size(d, 1).map(Size)
    }
}

/// A size in bytes whose bare number means MiB, as `-m 512` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MegSize(pub u64);

impl<'de> Deserialize<'de> for MegSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_size(d, 1 << 20).map(MegSize)
    }
}

/// Parses a UUID in the 8-4-4-4-12 hex form (either case), the only form QEMU accepts.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = (c as char).to_digit(16)?;
        let v = u8::try_from(v).ok()?;
        out[nibbles / 2] |= if nibbles % 2 == 0 { v << 4 } else { v };
        nibbles += 1;
    }
    Some(out)
}

/// QEMU's rule for object ids: letters, digits, `-`, `.`, `_`, starting with a letter.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        const M: u64 = 1 << 20;
        assert_eq!(parse_size("512", M), Ok(512 * M));
        assert_eq!(parse_size("512", 1), Ok(512));
        assert_eq!(parse_size("512M", 1), Ok(512 * M));
        assert_eq!(parse_size("512m", 1), Ok(512 * M));
        assert_eq!(parse_size("4k", M), Ok(4096));
        assert_eq!(parse_size("4K", M), Ok(4096));
        assert_eq!(parse_size("2G", 1), Ok(2 << 30));
        assert_eq!(parse_size("1T", 1), Ok(1 << 40));
        assert_eq!(parse_size("1E", 1), Ok(1 << 60));
        assert_eq!(parse_size("100b", M), Ok(100));
        assert_eq!(parse_size("1.5G", 1), Ok(3 << 29));
        assert_eq!(parse_size("1.5", M), Ok(3 << 19));
        assert_eq!(parse_size("0", M), Ok(0));
        assert_eq!(parse_size("1.5", 1), Err(SizeError::Invalid));
        assert_eq!(parse_size("1.5b", M), Err(SizeError::Invalid));
        for bad in [
            "", "foo", "M", "-5", "1Z", "1MB", "1.", ".5", " 1", "1 ", "0x10", "1.5.5",
        ] {
            assert_eq!(parse_size(bad, M), Err(SizeError::Invalid), "{bad:?}");
        }
        assert_eq!(parse_size("16E", 1), Err(SizeError::TooLarge));
        assert_eq!(parse_size("17179869184G", 1), Err(SizeError::TooLarge));
        assert_eq!(
            parse_size("99999999999999999999999999999999999999999999", 1),
            Err(SizeError::TooLarge)
        );
        assert_eq!(parse_size("18446744073709551615", 1), Ok(u64::MAX));
        assert_eq!(
            parse_size("18446744073709551616", 1),
            Err(SizeError::TooLarge)
        );
    }

    #[test]
    fn uuids() {
        assert_eq!(
            parse_uuid("12345678-9abc-DEF0-1234-56789abcdef0"),
            Some([
                0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc,
                0xde, 0xf0
            ])
        );
        for bad in [
            "",
            "xyz",
            "12345678123412341234123456789012",
            "12345678-1234-1234-1234-12345678901",
            "12345678-1234-1234-1234-1234567890abc",
            "1234567-81234-1234-1234-1234567890ab",
            "g2345678-1234-1234-1234-1234567890ab",
            "12345678-1234-1234-1234-1234567890a\u{e9}",
        ] {
            assert_eq!(parse_uuid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("char0"));
        assert!(is_identifier("a-b.c_d"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("1x"));
        assert!(!is_identifier("a,b"));
        assert!(!is_identifier("_a"));
    }
}
