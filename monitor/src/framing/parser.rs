//! The parser: QEMU's `json-parser.c`, a recursive descent over the tokens of one
//! complete message, reporting the first syntax error with QEMU's wording; plus the
//! decoding of number and string tokens (QEMU's escapes and modified UTF-8).
//!
//! Invariant: it only sees messages the streamer balanced, so its depth is bounded by
//! the streamer's nesting limit.

use super::lexer::Kind;
use super::{Frame, FrameError, Tok};
use serde_json::{Map, Number, Value};

/// Recursive-descent parser over the tokens of one message (QEMU's `json-parser.c`).
/// Only the first error is reported, with QEMU's text. Depth is bounded by the
/// streamer's nesting limit.
pub(super) struct Parser<'a> {
    buf: &'a [u8],
    tokens: &'a [Tok],
    pos: usize,
}

type PResult<T> = Result<T, String>;

impl<'a> Parser<'a> {
    pub(super) fn new(buf: &'a [u8], tokens: &'a [Tok]) -> Self {
        Parser {
            buf,
            tokens,
            pos: 0,
        }
    }

    pub(super) fn parse_message(mut self) -> Frame {
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
