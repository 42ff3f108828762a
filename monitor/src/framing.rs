//! Input framing: turns an unframed byte stream into complete JSON values, the way
//! QEMU's `json-lexer.c` / `json-streamer.c` / `json-parser.c` do.
//!
//! The input of a QMP connection is a stream of JSON texts with no delimiter: a request
//! may arrive one byte at a time, several may share one read, and a pretty-printed one
//! spans many lines. Three stages, mirroring QEMU so that errors and recovery match it
//! byte for byte (qmp-protocol.md §2 and §7):
//!
//! * a **lexer**, a state machine over bytes, cuts tokens. A byte it cannot place is a
//!   `stray` error; it then skips input until a structural character (`{}[]:,`) or a
//!   control character (the resynchronisation a client forces with e.g. 0x1B);
//! * a **streamer** counts braces and brackets and collects the tokens of one message
//!   until they balance (a lone scalar is a message of its own);
//! * a **parser** builds the value from the tokens of one message and reports the first
//!   syntax error with QEMU's wording.
//!
//! QEMU extensions kept: single-quoted strings, `\'` escape, modified UTF-8 `C0 80` for
//! NUL; duplicate keys are an error.
//!
//! Limits (QEMU's: 64 MiB, 2 Mi tokens, depth 1024) are checked as bytes arrive. A
//! message that crosses one is answered with QEMU's error at once, then the rest of that
//! message is skipped *without being stored* until its brackets balance, after which the
//! stream continues normally. (QEMU instead resets its counters and parses the tail as new
//! input, which produces a cascade of spurious errors; we deliberately do not.)

use serde_json::{Map, Number, Value};
use std::collections::VecDeque;

/// QEMU's `MAX_TOKEN_SIZE`: the bytes of all tokens of one message.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// QEMU's `MAX_TOKEN_COUNT`.
pub const MAX_TOKENS: usize = 2 << 20;
/// QEMU's `MAX_NESTING`.
pub const MAX_DEPTH: usize = 1024;

/// Per-message bounds; the defaults are QEMU's. Tests lower them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_tokens: usize,
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: MAX_MESSAGE_BYTES,
            max_tokens: MAX_TOKENS,
            max_depth: MAX_DEPTH,
        }
    }
}

/// A framing failure; `desc` is the exact text QEMU sends as a GenericError.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{desc}")]
pub struct FrameError {
    pub desc: String,
}

impl FrameError {
    fn parse(reason: impl std::fmt::Display) -> Self {
        FrameError {
            desc: format!("JSON parse error, {reason}"),
        }
    }
    fn limit(desc: &str) -> Self {
        FrameError {
            desc: desc.to_string(),
        }
    }
}

/// One framed input: a complete JSON value or the error that replaced it.
pub type Frame = Result<Value, FrameError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lex {
    Start,
    Recovery,
    DqString,
    DqEscape,
    SqString,
    SqEscape,
    Zero,
    NegNonzero,
    Nonzero,
    Mantissa,
    MantissaDigits,
    ExpE,
    ExpSign,
    ExpDigits,
    Keyword,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    LCurly,
    RCurly,
    LSquare,
    RSquare,
    Colon,
    Comma,
    Integer,
    Float,
    Keyword,
    String,
}

/// What one byte does to the lexer. "Lookahead" outcomes leave the byte unconsumed,
/// to be fed again in the next state, as QEMU's `LOOKAHEAD` flag does.
enum Step {
    /// Consumed; the token continues in this state.
    Continue(Lex),
    /// Consumed; it completes a token (structural character or closing quote).
    Done(Kind),
    /// Not consumed: the token ended just before this byte.
    Ended(Kind),
    /// Consumed and ignored (whitespace between tokens).
    Skip,
    /// Consumed; the byte cannot start or continue a token here.
    Error,
    /// Not consumed: error recovery ends before this byte.
    Resync,
}

fn is_structural(b: u8) -> Option<Kind> {
    Some(match b {
        b'{' => Kind::LCurly,
        b'}' => Kind::RCurly,
        b'[' => Kind::LSquare,
        b']' => Kind::RSquare,
        b':' => Kind::Colon,
        b',' => Kind::Comma,
        _ => return None,
    })
}

/// QEMU's lexer table as a function. Number and keyword tokens end at any byte that
/// cannot continue them (QEMU's `TERMINAL`); that byte is then lexed afresh.
fn step(state: Lex, b: u8) -> Step {
    use Lex::*;
    let terminal = Step::Ended;
    match state {
        Start => match b {
            b'"' => Step::Continue(DqString),
            b'\'' => Step::Continue(SqString),
            b'0' => Step::Continue(Zero),
            b'1'..=b'9' => Step::Continue(Nonzero),
            b'-' => Step::Continue(NegNonzero),
            b'a'..=b'z' => Step::Continue(Keyword),
            b' ' | b'\t' | b'\r' | b'\n' => Step::Skip,
            _ => match is_structural(b) {
                Some(k) => Step::Done(k),
                None => Step::Error,
            },
        },
        Recovery => match b {
            b'\t' => Step::Continue(Recovery),
            0..=0x1f | 0xfe | 0xff => Step::Resync,
            _ if is_structural(b).is_some() => Step::Resync,
            _ => Step::Continue(Recovery),
        },
        DqString | SqString => {
            let quote = if state == DqString { b'"' } else { b'\'' };
            let escape = if state == DqString {
                DqEscape
            } else {
                SqEscape
            };
            match b {
                _ if b == quote => Step::Done(Kind::String),
                b'\\' => Step::Continue(escape),
                0x20..=0xfd => Step::Continue(state),
                _ => Step::Error,
            }
        }
        // Escapes are only checked by the parser (QEMU: "invalid escape sequence").
        DqEscape => match b {
            0x20..=0xfd => Step::Continue(DqString),
            _ => Step::Error,
        },
        SqEscape => match b {
            0x20..=0xfd => Step::Continue(SqString),
            _ => Step::Error,
        },
        Zero => match b {
            b'0'..=b'9' => Step::Error,
            b'.' => Step::Continue(Mantissa),
            _ => terminal(Kind::Integer),
        },
        NegNonzero => match b {
            b'0' => Step::Continue(Zero),
            b'1'..=b'9' => Step::Continue(Nonzero),
            _ => Step::Error,
        },
        Nonzero => match b {
            b'0'..=b'9' => Step::Continue(Nonzero),
            b'e' | b'E' => Step::Continue(ExpE),
            b'.' => Step::Continue(Mantissa),
            _ => terminal(Kind::Integer),
        },
        Mantissa => match b {
            b'0'..=b'9' => Step::Continue(MantissaDigits),
            _ => Step::Error,
        },
        MantissaDigits => match b {
            b'0'..=b'9' => Step::Continue(MantissaDigits),
            b'e' | b'E' => Step::Continue(ExpE),
            _ => terminal(Kind::Float),
        },
        ExpE => match b {
            b'+' | b'-' => Step::Continue(ExpSign),
            b'0'..=b'9' => Step::Continue(ExpDigits),
            _ => Step::Error,
        },
        ExpSign => match b {
            b'0'..=b'9' => Step::Continue(ExpDigits),
            _ => Step::Error,
        },
        ExpDigits => match b {
            b'0'..=b'9' => Step::Continue(ExpDigits),
            _ => terminal(Kind::Float),
        },
        Keyword => match b {
            b'a'..=b'z' => Step::Continue(Keyword),
            _ => terminal(Kind::Keyword),
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

/// The incremental splitter: feed bytes, pop complete values (or errors).
#[derive(Debug)]
pub struct JsonStreamer {
    limits: Limits,
    state: Lex,
    /// Bytes of the current message's tokens, including the token being lexed (from
    /// `tok_start`). Whitespace is never stored, so this is what the limit counts.
    buf: Vec<u8>,
    tok_start: usize,
    tokens: Vec<Tok>,
    braces: i64,
    brackets: i64,
    /// Set after a limit error: the rest of the message is lexed (to find its end) but
    /// not stored.
    discarding: bool,
    out: VecDeque<Frame>,
}

impl Default for JsonStreamer {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl JsonStreamer {
    pub fn new(limits: Limits) -> Self {
        JsonStreamer {
            limits,
            state: Lex::Start,
            buf: Vec::new(),
            tok_start: 0,
            tokens: Vec::new(),
            braces: 0,
            brackets: 0,
            discarding: false,
            out: VecDeque::new(),
        }
    }

    /// Feeds bytes; complete frames become available through [`next_frame`](Self::next_frame).
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.feed_byte(b);
        }
    }

    /// The next complete value or error, in input order.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.out.pop_front()
    }

    /// Whether part of a message has been received but not completed.
    pub fn has_partial_input(&self) -> bool {
        !self.tokens.is_empty() || self.tok_start < self.buf.len() || self.discarding
    }

    fn feed_byte(&mut self, b: u8) {
        // A lookahead byte is fed again in the new state; at most twice in practice,
        // since every lookahead step lands in Start, which consumes.
        loop {
            match step(self.state, b) {
                Step::Continue(next) => {
                    if self.state != Lex::Recovery && next != Lex::Recovery {
                        self.push_token_byte(b);
                    }
                    self.state = next;
                    return;
                }
                Step::Done(kind) => {
                    self.push_token_byte(b);
                    self.state = Lex::Start;
                    self.token_complete(kind);
                    return;
                }
                Step::Ended(kind) => {
                    self.state = Lex::Start;
                    self.token_complete(kind);
                }
                Step::Skip => return,
                Step::Error => {
                    // QEMU quotes the token so far, bad byte included. While discarding
                    // nothing was kept, so only the bad byte can be shown.
                    let text = if self.discarding {
                        String::from_utf8_lossy(&[b]).into_owned()
                    } else {
                        self.push_token_byte(b);
                        String::from_utf8_lossy(&self.buf[self.tok_start.min(self.buf.len())..])
                            .into_owned()
                    };
                    self.emit(Err(FrameError::parse(format_args!("stray '{text}'"))));
                    self.discarding = false;
                    self.state = Lex::Recovery;
                    return;
                }
                Step::Resync => self.state = Lex::Start,
            }
        }
    }

    fn push_token_byte(&mut self, b: u8) {
        if self.discarding {
            return;
        }
        if self.buf.len() + 1 > self.limits.max_message_bytes {
            self.start_discarding("JSON token size limit exceeded");
            return;
        }
        self.buf.push(b);
    }

    /// The size limit was crossed inside a token: answer now and skip the rest of the
    /// message, counting its brackets from where they were to find its end.
    fn start_discarding(&mut self, desc: &str) {
        let (braces, brackets) = (self.braces, self.brackets);
        self.emit(Err(FrameError::limit(desc)));
        self.braces = braces;
        self.brackets = brackets;
        self.discarding = true;
    }

    fn token_complete(&mut self, kind: Kind) {
        match kind {
            Kind::LCurly => self.braces += 1,
            Kind::RCurly => self.braces -= 1,
            Kind::LSquare => self.brackets += 1,
            Kind::RSquare => self.brackets -= 1,
            _ => {}
        }
        let open = (self.braces > 0 || self.brackets > 0) && self.braces >= 0 && self.brackets >= 0;
        if self.discarding {
            if !open {
                // The refused message ended: back to normal framing.
                self.discarding = false;
                self.braces = 0;
                self.brackets = 0;
            }
            return;
        }
        if self.tokens.len() + 1 > self.limits.max_tokens {
            self.refuse_open_message("JSON token count limit exceeded", open);
            return;
        }
        let depth = self.braces.max(0) as u64 + self.brackets.max(0) as u64;
        if depth > self.limits.max_depth as u64 {
            self.refuse_open_message("JSON nesting depth limit exceeded", open);
            return;
        }
        self.tokens.push(Tok {
            kind,
            start: self.tok_start,
            end: self.buf.len(),
        });
        self.tok_start = self.buf.len();
        if open {
            return;
        }
        let parsed = Parser::new(&self.buf, &self.tokens).parse_message();
        self.emit(parsed);
    }

    /// A limit was crossed by a completed token: answer now, skip the rest.
    fn refuse_open_message(&mut self, desc: &str, open: bool) {
        let (braces, brackets) = (self.braces, self.brackets);
        self.emit(Err(FrameError::limit(desc)));
        if open {
            self.braces = braces;
            self.brackets = brackets;
            self.discarding = true;
        }
    }

    #[cfg(test)]
    fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Queues a frame and resets the per-message state (QEMU's `out_emit`).
    fn emit(&mut self, frame: Frame) {
        self.out.push_back(frame);
        self.buf.clear();
        self.tokens.clear();
        self.tok_start = 0;
        self.braces = 0;
        self.brackets = 0;
    }
}

/// Recursive-descent parser over the tokens of one message (QEMU's `json-parser.c`).
/// Only the first error is reported, with QEMU's text. Depth is bounded by the
/// streamer's nesting limit.
struct Parser<'a> {
    buf: &'a [u8],
    tokens: &'a [Tok],
    pos: usize,
}

type PResult<T> = Result<T, String>;

impl<'a> Parser<'a> {
    fn new(buf: &'a [u8], tokens: &'a [Tok]) -> Self {
        Parser {
            buf,
            tokens,
            pos: 0,
        }
    }

    fn parse_message(mut self) -> Frame {
        // The streamer ends a message exactly where its value ends, so a successful
        // parse always consumes every token.
        self.parse_value().map_err(FrameError::parse)
    }

    fn peek(&self) -> Option<Tok> {
        self.tokens.get(self.pos).copied()
    }

    fn pop(&mut self) -> PResult<Tok> {
        let t = self.peek().ok_or_else(|| "premature EOI".to_string())?;
        self.pos += 1;
        Ok(t)
    }

    fn text(&self, t: Tok) -> &'a [u8] {
        &self.buf[t.start..t.end]
    }

    fn parse_value(&mut self) -> PResult<Value> {
        let t = self.peek().ok_or_else(|| "premature EOI".to_string())?;
        match t.kind {
            Kind::LCurly => self.parse_object(),
            Kind::LSquare => self.parse_array(),
            Kind::String => {
                self.pos += 1;
                parse_string(self.text(t)).map(Value::String)
            }
            Kind::Integer | Kind::Float => {
                self.pos += 1;
                Ok(parse_number(self.text(t), t.kind))
            }
            Kind::Keyword => {
                self.pos += 1;
                match self.text(t) {
                    b"true" => Ok(Value::Bool(true)),
                    b"false" => Ok(Value::Bool(false)),
                    b"null" => Ok(Value::Null),
                    other => Err(format!(
                        "invalid keyword '{}'",
                        String::from_utf8_lossy(other)
                    )),
                }
            }
            _ => Err("expecting value".to_string()),
        }
    }

    fn parse_object(&mut self) -> PResult<Value> {
        self.pos += 1; // '{'
        let mut map = Map::new();
        let first = self.peek().ok_or_else(|| "premature EOI".to_string())?;
        if first.kind == Kind::RCurly {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.parse_pair(&mut map)?;
            let t = self.pop()?;
            match t.kind {
                Kind::RCurly => return Ok(Value::Object(map)),
                Kind::Comma => {}
                _ => return Err("expected separator in dict".to_string()),
            }
        }
    }

    fn parse_pair(&mut self, map: &mut Map<String, Value>) -> PResult<()> {
        let key = match self.parse_value()? {
            Value::String(s) => s,
            _ => return Err("key is not a string in object".to_string()),
        };
        if self.pop()?.kind != Kind::Colon {
            return Err("missing : in object pair".to_string());
        }
        let value = self.parse_value()?;
        if map.contains_key(&key) {
            return Err("duplicate key".to_string());
        }
        map.insert(key, value);
        Ok(())
    }

    fn parse_array(&mut self) -> PResult<Value> {
        self.pos += 1; // '['
        let mut items = Vec::new();
        let first = self.peek().ok_or_else(|| "premature EOI".to_string())?;
        if first.kind == Kind::RSquare {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            items.push(self.parse_value()?);
            let t = self.pop()?;
            match t.kind {
                Kind::RSquare => return Ok(Value::Array(items)),
                Kind::Comma => {}
                _ => return Err("expected separator in list".to_string()),
            }
        }
    }
}

/// QEMU's number rule: an integer token is an int64 if it fits, else a uint64, else a
/// double; a float token is a double. Doubles out of range are clamped: QEMU prints a
/// bare `inf`, which is not JSON (spec §6 asks us not to copy that).
fn parse_number(text: &[u8], kind: Kind) -> Value {
    let s = String::from_utf8_lossy(text);
    if kind == Kind::Integer {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Number(i.into());
        }
        if let Ok(u) = s.parse::<u64>() {
            return Value::Number(u.into());
        }
    }
    let f = s.parse::<f64>().unwrap_or(0.0);
    let f = if f.is_infinite() {
        f64::MAX.copysign(f)
    } else {
        f
    };
    Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn hex4(bytes: &[u8]) -> Option<u32> {
    if bytes.len() < 4 {
        return None;
    }
    let mut v = 0u32;
    for &b in &bytes[..4] {
        v = v * 16 + (b as char).to_digit(16)?;
    }
    Some(v)
}

/// QEMU refuses noncharacters and surrogates both as escapes and as raw UTF-8.
fn is_valid_codepoint(cp: u32) -> bool {
    cp <= 0x10ffff
        && !(0xfdd0..=0xfdef).contains(&cp)
        && (cp & 0xfffe) != 0xfffe
        && !(0xd800..=0xdfff).contains(&cp)
}

/// Decodes a string token (quotes included) with QEMU's escapes and errors.
fn parse_string(tok: &[u8]) -> PResult<String> {
    // The lexer guarantees the closing quote is the last byte.
    let body = &tok[1..tok.len().saturating_sub(1).max(1)];
    let mut out = String::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == b'\\' {
            let beg = i;
            let Some(&esc) = body.get(i + 1) else {
                return Err("invalid escape sequence in string".to_string());
            };
            i += 2;
            match esc {
                b'"' => out.push('"'),
                b'\'' => out.push('\''),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\u{8}'),
                b'f' => out.push('\u{c}'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let mut cp = hex4(&body[i..]);
                    i += 4;
                    if let Some(hi @ 0xd800..=0xdbff) = cp {
                        if body.get(i) == Some(&b'\\') && body.get(i + 1) == Some(&b'u') {
                            cp = match hex4(&body[(i + 2).min(body.len())..]) {
                                Some(lo @ 0xdc00..=0xdfff) => {
                                    i += 6;
                                    Some(0x10000 + ((hi & 0x3ff) << 10) + (lo & 0x3ff))
                                }
                                _ => None,
                            };
                        }
                    }
                    match cp
                        .filter(|&c| is_valid_codepoint(c))
                        .and_then(char::from_u32)
                    {
                        Some(c) => out.push(c),
                        None => {
                            // QEMU quotes the escape as written; the closing quote shows
                            // up when the escape is cut short, as in QEMU.
                            let end = (1 + i).min(tok.len());
                            let shown = &tok[1 + beg..end];
                            return Err(format!(
                                "{} is not a valid Unicode character",
                                String::from_utf8_lossy(shown)
                            ));
                        }
                    }
                }
                _ => return Err("invalid escape sequence in string".to_string()),
            }
            continue;
        }
        let (c, len) = decode_mod_utf8(&body[i..])
            .ok_or_else(|| "invalid UTF-8 sequence in string".to_string())?;
        out.push(c);
        i += len;
    }
    Ok(out)
}

/// Decodes one character of QEMU's modified UTF-8: standard UTF-8 without
/// noncharacters, plus the two-byte `C0 80` for NUL.
fn decode_mod_utf8(s: &[u8]) -> Option<(char, usize)> {
    let b0 = *s.first()?;
    if b0 < 0x80 {
        return Some((b0 as char, 1));
    }
    if b0 == 0xc0 && s.get(1) == Some(&0x80) {
        return Some(('\0', 2));
    }
    let len = match b0 {
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => return None,
    };
    let seq = s.get(..len)?;
    let c = std::str::from_utf8(seq).ok()?.chars().next()?;
    if !is_valid_codepoint(c as u32) {
        return None;
    }
    Some((c, len))
}

#[cfg(test)]
mod tests {
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
        let input = br#"{"execute":"x","arguments":{"s":"}{][\"'","n":[1,-2.5e3,true,null]},"id":{"a":[]}} "#;
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
}
