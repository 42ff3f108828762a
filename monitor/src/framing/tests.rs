//! Tests of the framing: messages split and batched at every byte, lexer errors and
//! resynchronisation, parser errors with QEMU's texts, strings and numbers as QEMU reads
//! them, and the size, token and depth limits.

use super::*;
use serde_json::json;

fn frames(input: &[u8]) -> Vec<Frame> {
    let mut s = JsonStreamer::default();
    s.feed(input);
    std::iter::from_fn(|| s.next_frame()).collect()
}

fn err(desc: &str) -> Frame {
    Err(FrameError {
        desc: desc.to_string(),
    })
}

#[test]
fn one_object() {
    assert_eq!(
        frames(br#"{"execute": "stop"}"#),
        vec![Ok(json!({"execute": "stop"}))]
    );
}

#[test]
fn back_to_back_without_separator() {
    assert_eq!(
        frames(br#"{"a":1}{"b":[2]}  {"c":{}}"#),
        vec![
            Ok(json!({"a": 1})),
            Ok(json!({"b": [2]})),
            Ok(json!({"c": {}}))
        ]
    );
}

#[test]
fn byte_by_byte_equals_whole() {
    let input =
        br#"{"execute":"x","arguments":{"s":"}{][\"'","n":[1,-2.5e3,true,null]},"id":{"a":[]}} "#;
    let whole = frames(input);
    let mut s = JsonStreamer::default();
    let mut split = Vec::new();
    for b in input.iter() {
        s.feed(std::slice::from_ref(b));
        split.extend(std::iter::from_fn(|| s.next_frame()));
    }
    assert_eq!(whole, split);
    assert_eq!(
        whole,
        vec![Ok(
            json!({"execute": "x", "arguments": {"s": "}{][\"'", "n": [1, -2500.0, true, null]}, "id": {"a": []}})
        )]
    );
}

#[test]
fn every_split_point_gives_the_same_frames() {
    let input = br#"{"a":"x\"}y"} [1,{"b":'q'}] {"c":1.5}"#;
    let whole = frames(input);
    assert_eq!(whole.len(), 3);
    for cut in 0..input.len() {
        let mut s = JsonStreamer::default();
        s.feed(&input[..cut]);
        s.feed(&input[cut..]);
        let got: Vec<Frame> = std::iter::from_fn(|| s.next_frame()).collect();
        assert_eq!(got, whole, "split at {cut}");
    }
}

#[test]
fn pretty_printed_across_lines() {
    let input = b"{\n  \"execute\": \"query-status\",\r\n\t\"id\": [\n 1,\n 2\n ]\n}\n\n";
    assert_eq!(
        frames(input),
        vec![Ok(json!({"execute": "query-status", "id": [1, 2]}))]
    );
}

#[test]
fn incomplete_object_waits() {
    let mut s = JsonStreamer::default();
    s.feed(br#"{"execute": "stop", "id": 1"#);
    assert!(s.next_frame().is_none());
    assert!(s.has_partial_input());
    s.feed(b"}");
    assert_eq!(
        s.next_frame(),
        Some(Ok(json!({"execute": "stop", "id": 1})))
    );
    assert!(!s.has_partial_input());
}

#[test]
fn scalars_are_messages() {
    // A number needs a terminator to be known complete; a string does not.
    let mut s = JsonStreamer::default();
    s.feed(b"42");
    assert!(s.next_frame().is_none());
    s.feed(b" \"s\"");
    assert_eq!(s.next_frame(), Some(Ok(json!(42))));
    assert_eq!(s.next_frame(), Some(Ok(json!("s"))));
}

#[test]
fn qemu_parse_error_texts() {
    let cases: &[(&[u8], &str)] = &[
        (b"{ \"execute\": }", "JSON parse error, expecting value"),
        (b"{\"a\":1,\"a\":2}", "JSON parse error, duplicate key"),
        (b"\xff", "JSON parse error, stray '\u{fffd}'"),
        (b"{1:2}", "JSON parse error, key is not a string in object"),
        (b"{\"a\" 1}", "JSON parse error, missing : in object pair"),
        (
            b"{\"a\":1 \"b\":2}",
            "JSON parse error, expected separator in dict",
        ),
        (b"[1 2]", "JSON parse error, expected separator in list"),
        (b"]", "JSON parse error, expecting value"),
        (b"{]", "JSON parse error, expecting value"),
        (b"True", "JSON parse error, stray 'T'"),
        (b"\x1b", "JSON parse error, stray '\u{1b}'"),
        (
            b"\"\\q\"",
            "JSON parse error, invalid escape sequence in string",
        ),
        (
            b"\"\\ud800\"",
            "JSON parse error, \\ud800 is not a valid Unicode character",
        ),
        (
            b"\"\\ud83d\\u0041\"",
            "JSON parse error, \\ud83d is not a valid Unicode character",
        ),
        (
            b"\"\\udc00\"",
            "JSON parse error, \\udc00 is not a valid Unicode character",
        ),
        (
            b"\"\\u12\"",
            "JSON parse error, \\u12\" is not a valid Unicode character",
        ),
        (
            b"\"\\uFFFF\"",
            "JSON parse error, \\uFFFF is not a valid Unicode character",
        ),
        (
            b"\"\\uFDD0\"",
            "JSON parse error, \\uFDD0 is not a valid Unicode character",
        ),
        (
            b"\"ab\xc3\"",
            "JSON parse error, invalid UTF-8 sequence in string",
        ),
        (
            b"\"\xef\xbf\xbf\"",
            "JSON parse error, invalid UTF-8 sequence in string",
        ),
        (
            b"\"\xed\xa0\x80\"",
            "JSON parse error, invalid UTF-8 sequence in string",
        ),
        (b"{\"a\":  \xff", "JSON parse error, stray '\u{fffd}'"),
        (b"[\"a\\\x01", "JSON parse error, stray '\"a\\\u{1}'"),
        (b"[1 , tru\x01", "JSON parse error, stray '\u{1}'"),
        (b"garbage ", "JSON parse error, invalid keyword 'garbage'"),
    ];
    for (input, want) in cases {
        let got = frames(input);
        assert_eq!(
            got.first(),
            Some(&err(want)),
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn stray_in_string_reports_the_token_then_recovers() {
    // QEMU: the string so far is the stray text, recovery skips to the next
    // structural character, and the leftover '}' is an error of its own.
    let got = frames(b"{\"id\":\"ab\x01\"}");
    assert_eq!(
        got,
        vec![
            err("JSON parse error, stray '\"ab\u{1}'"),
            err("JSON parse error, expecting value")
        ]
    );
}

#[test]
fn qemu_string_extensions() {
    assert_eq!(frames(b"'sq\\'x'"), vec![Ok(json!("sq'x"))]);
    assert_eq!(frames(b"'a\"b'"), vec![Ok(json!("a\"b"))]);
    assert_eq!(frames(b"\"\\/\\u0022\""), vec![Ok(json!("/\""))]);
    assert_eq!(frames(b"\"\xc0\x80\""), vec![Ok(json!("\u{0}"))]);
    assert_eq!(frames(b"\"\\u0000\""), vec![Ok(json!("\u{0}"))]);
    assert_eq!(
        frames(b"\"\\ud83d\\ude00\xc3\xa9\""),
        vec![Ok(json!("\u{1F600}\u{e9}"))]
    );
}

#[test]
fn numbers_follow_qemu() {
    assert_eq!(
        frames(b"[18446744073709551615]"),
        vec![Ok(json!([u64::MAX]))]
    );
    assert_eq!(
        frames(b"[-9223372036854775808]"),
        vec![Ok(json!([i64::MIN]))]
    );
    assert_eq!(
        frames(b"[-9223372036854775809]"),
        vec![Ok(json!([-9223372036854775809.0f64]))]
    );
    assert_eq!(frames(b"[1E+2, -0, 0.5]"), vec![Ok(json!([100.0, 0, 0.5]))]);
    assert_eq!(
        frames(b"[1e400, -1e400]"),
        vec![Ok(json!([f64::MAX, -f64::MAX]))]
    );
    // "0e5" is the integer 0 followed by the keyword "e" and the integer 5.
    assert_eq!(
        frames(b"{\"a\":0e5}"),
        vec![err("JSON parse error, expected separator in dict")]
    );
}

#[test]
fn recovery_after_bad_json() {
    let got = frames(br#"{"a":1} garbage {"b":2}"#);
    assert_eq!(
        got,
        vec![
            Ok(json!({"a": 1})),
            err("JSON parse error, invalid keyword 'garbage'"),
            Ok(json!({"b": 2}))
        ]
    );
}

#[test]
fn control_character_discards_a_truncated_request() {
    let mut s = JsonStreamer::default();
    s.feed(br#"{"execute":"query-status", "id":1"#);
    assert!(s.next_frame().is_none());
    s.feed(b"\x1b");
    assert_eq!(
        s.next_frame(),
        Some(err("JSON parse error, stray '\u{1b}'"))
    );
    s.feed(br#"{"execute":"stop"}"#);
    assert_eq!(s.next_frame(), Some(Ok(json!({"execute": "stop"}))));
    assert_eq!(s.next_frame(), None);
}

#[test]
fn recovery_skips_to_structural_character() {
    // After the stray 'T', "rue 01 -x" is skipped up to the '{'.
    let got = frames(b"True 01 -x {\"a\":1}");
    assert_eq!(
        got,
        vec![err("JSON parse error, stray 'T'"), Ok(json!({"a": 1}))]
    );
}

#[test]
fn a_bad_byte_ends_a_number_or_keyword_first() {
    // QEMU's TERMINAL states end the token at any byte; the byte is then a stray
    // of its own (found by comparing with QEMU 7.2 on random input).
    assert_eq!(
        frames(b"null\xff"),
        vec![Ok(json!(null)), err("JSON parse error, stray '\u{fffd}'")]
    );
    assert_eq!(
        frames(b"tru\xff"),
        vec![
            err("JSON parse error, invalid keyword 'tru'"),
            err("JSON parse error, stray '\u{fffd}'")
        ]
    );
    assert_eq!(
        frames(b"-2.5e3\xff"),
        vec![
            Ok(json!(-2500.0)),
            err("JSON parse error, stray '\u{fffd}'")
        ]
    );
}

#[test]
fn lexer_errors_in_numbers() {
    assert_eq!(frames(b"01"), vec![err("JSON parse error, stray '01'")]);
    assert_eq!(frames(b"-x"), vec![err("JSON parse error, stray '-x'")]);
    assert_eq!(frames(b"1.e"), vec![err("JSON parse error, stray '1.e'")]);
}

fn small(max_message_bytes: usize, max_tokens: usize, max_depth: usize) -> JsonStreamer {
    JsonStreamer::new(Limits {
        max_message_bytes,
        max_tokens,
        max_depth,
    })
}

#[test]
fn oversize_message_is_refused_once_and_not_buffered() {
    let mut s = small(64, 1000, 100);
    s.feed(br#"{"execute":"x","arguments":{"s":""#);
    let filler = vec![b'a'; 10_000];
    s.feed(&filler);
    assert_eq!(s.next_frame(), Some(err("JSON token size limit exceeded")));
    assert!(s.is_discarding());
    // Memory stays bounded while the message continues.
    assert!(s.buf.len() <= 64);
    s.feed(br#"", "t": "}]"}, "id": 1}"#);
    assert_eq!(
        s.next_frame(),
        None,
        "rest of the refused message produces nothing"
    );
    assert!(!s.is_discarding());
    s.feed(br#"{"execute":"ok"}"#);
    assert_eq!(s.next_frame(), Some(Ok(json!({"execute": "ok"}))));
    assert_eq!(s.next_frame(), None);
}

#[test]
fn oversize_lone_string_is_refused() {
    let mut s = small(16, 1000, 100);
    let mut input = b"\"".to_vec();
    input.extend(vec![b'x'; 100]);
    input.extend(b"\" {\"a\":1}");
    s.feed(&input);
    assert_eq!(s.next_frame(), Some(err("JSON token size limit exceeded")));
    assert_eq!(s.next_frame(), Some(Ok(json!({"a": 1}))));
    assert_eq!(s.next_frame(), None);
}

#[test]
fn nesting_limit_refuses_then_recovers() {
    let mut s = small(1 << 20, 1 << 20, 4);
    s.feed(b"[[[[1]]]] [[[[[1]]]]] {\"a\":1}");
    assert_eq!(s.next_frame(), Some(Ok(json!([[[[1]]]]))));
    assert_eq!(
        s.next_frame(),
        Some(err("JSON nesting depth limit exceeded"))
    );
    assert_eq!(s.next_frame(), Some(Ok(json!({"a": 1}))));
    assert_eq!(s.next_frame(), None);
}

#[test]
fn default_nesting_limit_is_qemus() {
    let ok = format!("{}{}", "[".repeat(1024), "]".repeat(1024));
    assert!(matches!(frames(ok.as_bytes()).as_slice(), [Ok(_)]));
    let deep = format!("{}{} {{}}", "[".repeat(1025), "]".repeat(1025));
    assert_eq!(
        frames(deep.as_bytes()),
        vec![err("JSON nesting depth limit exceeded"), Ok(json!({}))]
    );
}

#[test]
fn token_count_limit() {
    let mut s = small(1 << 20, 5, 100);
    s.feed(b"[1,2,3,4,5,6] [1]");
    assert_eq!(s.next_frame(), Some(err("JSON token count limit exceeded")));
    assert_eq!(s.next_frame(), Some(Ok(json!([1]))));
    assert_eq!(s.next_frame(), None);
}

#[test]
fn control_character_ends_discarding() {
    let mut s = small(8, 1000, 100);
    s.feed(b"{\"aaaaaaaaaaaa\"");
    assert_eq!(s.next_frame(), Some(err("JSON token size limit exceeded")));
    s.feed(b"\x1b{\"a\":1}");
    assert_eq!(
        s.next_frame(),
        Some(err("JSON parse error, stray '\u{1b}'"))
    );
    assert_eq!(s.next_frame(), Some(Ok(json!({"a": 1}))));
}
