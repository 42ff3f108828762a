//! The lexer: QEMU's `json-lexer.c` state table as a function over bytes. It cuts
//! tokens and says which bytes it cannot place (`stray`), after which the streamer skips
//! to a structural or control character. No state beyond the current [`Lex`] state.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lex {
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
pub(super) enum Kind {
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
pub(super) enum Step {
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

pub(super) fn is_structural(b: u8) -> Option<Kind> {
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
pub(super) fn step(state: Lex, b: u8) -> Step {
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
