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
//!
//! This module holds the streamer ([`JsonStreamer`]) and the limits; the lexer is in
//! `lexer` and the parser in `parser`, which uses the lexer's token kinds.

use serde_json::Value;
use std::collections::VecDeque;

mod lexer;
mod parser;

use lexer::{step, Kind, Lex, Step};
use parser::Parser;

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

#[cfg(test)]
mod tests;
