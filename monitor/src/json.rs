//! Output JSON encoding. QEMU's writer, not serde_json's: the output is pure ASCII
//! (everything outside 0x20..0x7E is a `\uXXXX` escape with uppercase hex, astral
//! characters as surrogate pairs), members are separated by `", "` and keys by `": "`,
//! exactly as QEMU prints them, so that byte-for-byte comparisons with QEMU transcripts
//! and naive clients keep working.

use serde_json::{Map, Value};
use std::fmt::Write as _;

/// Serializes `v` as one line of ASCII JSON into `out`.
pub fn write_value(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map.iter()),
    }
}

fn write_object<'a>(out: &mut String, members: impl Iterator<Item = (&'a String, &'a Value)>) {
    out.push('{');
    for (i, (k, v)) in members.enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, k);
        out.push_str(": ");
        write_value(out, v);
    }
    out.push('}');
}

fn write_number(out: &mut String, n: &serde_json::Number) {
    // serde_json's Number cannot hold a non-finite float, so whatever it prints is valid
    // JSON; QEMU would print a bare `inf` here (spec §6 says not to copy that).
    let _ = write!(out, "{n}");
}

/// Writes a JSON string literal with QEMU's escaping rules (`/` is not escaped, DEL is).
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (' '..'\u{7f}').contains(&c) => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04X}", unit);
                }
            }
        }
    }
    out.push('"');
}

/// Convenience: one value to an ASCII string.
pub fn to_ascii_string(v: &Value) -> String {
    let mut s = String::new();
    write_value(&mut s, v);
    s
}

/// An object with members in the given order, for the envelopes (serde_json's `Map`
/// sorts its keys).
pub fn ordered_object(members: &[(&str, &Value)]) -> String {
    let mut s = String::new();
    write_object_pairs(&mut s, members);
    s
}

/// Appends an object with members in the given order.
pub fn write_object_pairs(out: &mut String, members: &[(&str, &Value)]) {
    out.push('{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        write_str(out, k);
        out.push_str(": ");
        write_value(out, v);
    }
    out.push('}');
}

/// Builds a `Map` from a list of pairs; a small helper for tests and handlers.
pub fn map_of(pairs: Vec<(&str, Value)>) -> Map<String, Value> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_ascii_is_escaped_like_qemu() {
        let v = json!("a\u{e9}\u{1F600}\u{7f}/\u{1}\"\\\n");
        assert_eq!(
            to_ascii_string(&v),
            r#""a\u00E9\uD83D\uDE00\u007F/\u0001\"\\\n""#
        );
    }

    #[test]
    fn separators_match_qemu() {
        let v = json!({"a": [1, 2, {"b": null}], "c": true, "d": {}, "e": []});
        assert_eq!(
            to_ascii_string(&v),
            r#"{"a": [1, 2, {"b": null}], "c": true, "d": {}, "e": []}"#
        );
    }

    #[test]
    fn ordered_object_keeps_order() {
        let id = json!(1);
        let ret = json!({});
        assert_eq!(
            ordered_object(&[("return", &ret), ("id", &id)]),
            r#"{"return": {}, "id": 1}"#
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(to_ascii_string(&json!(1.5)), "1.5");
        assert_eq!(to_ascii_string(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(to_ascii_string(&json!(-3)), "-3");
    }
}
