//! One QMP connection, independent of its transport: bytes in, validated requests out;
//! replies and events in, bytes out.
//!
//! A session owns the framing of its input, its negotiation state (a new connection is
//! in capabilities-negotiation mode and hears no events), the envelope checks of
//! qmp-protocol.md §5.1 (answered here, with QEMU's texts and the request's `id`), and a
//! bounded output queue. Running commands needs the machine, so it is the `Monitor`'s
//! job: it pulls [`Request`]s with [`Session::next_request`] and hands replies back with
//! [`Session::respond`].
//!
//! Wire format of output (§2): one JSON object per line ending in CRLF, ASCII only.

use crate::events::Event;
use crate::framing::{JsonStreamer, Limits};
use crate::json;
use crate::machine::VersionInfo;
use crate::qmp_error::QmpError;
use serde_json::{json, Map, Value};

/// The capabilities-negotiation state of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Negotiation {
    /// `qmp_capabilities` succeeded: commands run and events are delivered.
    pub negotiated: bool,
    /// The greeting offered `oob`.
    pub oob_offered: bool,
    /// The client enabled `oob`: `exec-oob` is accepted.
    pub oob_enabled: bool,
}

/// A request that passed the envelope checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub name: String,
    pub args: Map<String, Value>,
    /// Echoed verbatim in the reply.
    pub id: Option<Value>,
    /// Sent with `exec-oob`.
    pub oob: bool,
}

/// Default bound of a session's unsent output. QEMU has none; a client that stops
/// reading would otherwise make events pile up forever.
pub const DEFAULT_MAX_OUTPUT: usize = 16 << 20;

/// One connection.
#[derive(Debug)]
pub struct Session {
    input: JsonStreamer,
    negotiation: Negotiation,
    out: Vec<u8>,
    /// Bytes of `out` already handed to the transport.
    sent: usize,
    max_output: usize,
    overflowed: bool,
}

impl Session {
    /// A new connection: the greeting is queued at once.
    pub fn new(version: &VersionInfo, offer_oob: bool, limits: Limits, max_output: usize) -> Self {
        let mut s = Session {
            input: JsonStreamer::new(limits),
            negotiation: Negotiation {
                oob_offered: offer_oob,
                ..Negotiation::default()
            },
            out: Vec::new(),
            sent: 0,
            max_output,
            overflowed: false,
        };
        s.enqueue(encode_greeting(version, offer_oob));
        s
    }

    pub fn negotiation(&self) -> Negotiation {
        self.negotiation
    }

    pub fn negotiation_mut(&mut self) -> &mut Negotiation {
        &mut self.negotiation
    }

    /// Feeds bytes read from the transport.
    pub fn push_input(&mut self, bytes: &[u8]) {
        self.input.feed(bytes);
    }

    /// The next request to run. Framing and envelope errors met on the way are answered
    /// here and skipped.
    pub fn next_request(&mut self) -> Option<Request> {
        while let Some(frame) = self.input.next_frame() {
            match frame {
                // No id: the input did not parse (§7).
                Err(e) => self.respond(None, Err(QmpError::generic(e.desc))),
                Ok(value) => match check_envelope(value, self.negotiation.oob_enabled) {
                    Ok(req) => return Some(req),
                    Err((id, e)) => self.respond(id, Err(e)),
                },
            }
        }
        None
    }

    /// Queues the reply to a request.
    pub fn respond(&mut self, id: Option<Value>, result: Result<Value, QmpError>) {
        self.enqueue(encode_response(id.as_ref(), &result));
    }

    /// Queues an event if the session is in command mode; in negotiation mode events are
    /// dropped, not kept for later (§4).
    pub fn push_event(&mut self, ev: &Event) {
        if self.negotiation.negotiated {
            self.enqueue(encode_event(ev));
        }
    }

    fn enqueue(&mut self, line: String) {
        if self.overflowed {
            return;
        }
        if self.pending_len() + line.len() > self.max_output {
            // The client does not read: stop queueing and let the owner drop it.
            self.overflowed = true;
            return;
        }
        self.out.extend_from_slice(line.as_bytes());
    }

    fn pending_len(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Output not yet taken by the transport.
    pub fn output(&self) -> &[u8] {
        &self.out[self.sent..]
    }

    /// Marks `n` bytes of [`output`](Self::output) as written.
    pub fn consume_output(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.out.len());
        // Compact once the written part dominates, so the buffer does not grow forever.
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        } else if self.sent > self.out.len() / 2 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
    }

    /// Takes all pending output.
    pub fn take_output(&mut self) -> Vec<u8> {
        let v = self.out.split_off(self.sent);
        self.out.clear();
        self.sent = 0;
        v
    }

    /// The output bound was crossed; the session should be closed.
    pub fn is_overflowed(&self) -> bool {
        self.overflowed
    }

    /// Backpressure hint: reading more input now would only grow the output.
    pub fn wants_input(&self) -> bool {
        !self.overflowed && self.pending_len() < self.max_output / 2
    }
}

/// §5.1, in QEMU's order: the object's members one by one, then the presence of
/// `execute`. The error carries the request's `id` when it had one.
pub fn check_envelope(
    value: Value,
    oob_enabled: bool,
) -> Result<Request, (Option<Value>, QmpError)> {
    let Value::Object(mut obj) = value else {
        return Err((None, QmpError::generic("QMP input must be a JSON object")));
    };
    let id = obj.remove("id");
    let mut exec_key: Option<&str> = None;
    for (key, v) in &obj {
        let key = key.as_str();
        match key {
            "execute" | "exec-oob" if key == "execute" || oob_enabled => {
                if !v.is_string() {
                    return Err((
                        id,
                        QmpError::generic(format!("QMP input member '{key}' must be a string")),
                    ));
                }
                if let Some(other) = exec_key {
                    return Err((
                        id,
                        QmpError::generic(format!(
                            "QMP input member '{key}' clashes with '{other}'"
                        )),
                    ));
                }
                exec_key = Some(if key == "execute" {
                    "execute"
                } else {
                    "exec-oob"
                });
            }
            "arguments" => {
                if !v.is_object() {
                    return Err((
                        id,
                        QmpError::generic("QMP input member 'arguments' must be an object"),
                    ));
                }
            }
            _ => {
                return Err((
                    id,
                    QmpError::generic(format!("QMP input member '{key}' is unexpected")),
                ));
            }
        }
    }
    let Some(exec_key) = exec_key else {
        return Err((id, QmpError::generic("QMP input lacks member 'execute'")));
    };
    let name = match obj.remove(exec_key) {
        Some(Value::String(s)) => s,
        // Checked above; kept total rather than panicking.
        _ => return Err((id, QmpError::generic("QMP input lacks member 'execute'"))),
    };
    let args = match obj.remove("arguments") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    Ok(Request {
        name,
        args,
        id,
        oob: exec_key == "exec-oob",
    })
}

fn line(mut s: String) -> String {
    s.push_str("\r\n");
    s
}

/// `{"QMP": {"version": ..., "capabilities": [...]}}`, member for member as QEMU
/// writes it (order carries no meaning, but naive clients match the greeting as text).
pub fn encode_greeting(version: &VersionInfo, offer_oob: bool) -> String {
    let caps = json!(if offer_oob { vec!["oob"] } else { vec![] });
    let q = &version.qemu;
    let (micro, minor, major) = (json!(q.micro), json!(q.minor), json!(q.major));
    let mut triple = String::new();
    json::write_object_pairs(
        &mut triple,
        &[("micro", &micro), ("minor", &minor), ("major", &major)],
    );
    let mut version_s = String::from("{\"qemu\": ");
    version_s.push_str(&triple);
    version_s.push_str(", \"package\": ");
    json::write_str(&mut version_s, &version.package);
    version_s.push('}');
    let mut s = String::from("{\"QMP\": {\"version\": ");
    s.push_str(&version_s);
    s.push_str(", \"capabilities\": ");
    json::write_value(&mut s, &caps);
    s.push_str("}}");
    line(s)
}

/// A reply: `id` first in errors and last in successes, as QEMU writes them.
pub fn encode_response(id: Option<&Value>, result: &Result<Value, QmpError>) -> String {
    let mut members: Vec<(&str, Value)> = Vec::with_capacity(2);
    match result {
        Ok(v) => {
            members.push(("return", v.clone()));
            if let Some(id) = id {
                members.push(("id", id.clone()));
            }
        }
        Err(e) => {
            if let Some(id) = id {
                members.push(("id", id.clone()));
            }
            members.push(("error", json!({"class": e.class.as_str(), "desc": e.desc})));
        }
    }
    let refs: Vec<(&str, &Value)> = members.iter().map(|(k, v)| (*k, v)).collect();
    line(json::ordered_object(&refs))
}

/// `{"timestamp": {...}, "event": NAME[, "data": {...}]}`; `data` is left out when empty.
pub fn encode_event(ev: &Event) -> String {
    let (secs, usecs) = (
        json!(ev.timestamp.seconds),
        json!(ev.timestamp.microseconds),
    );
    let mut s = String::from("{\"timestamp\": ");
    json::write_object_pairs(&mut s, &[("seconds", &secs), ("microseconds", &usecs)]);
    s.push_str(", \"event\": ");
    json::write_str(&mut s, &ev.name);
    if let Some(d) = &ev.data {
        s.push_str(", \"data\": ");
        json::write_value(&mut s, &Value::Object(d.clone()));
    }
    s.push('}');
    line(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Timestamp;

    fn session() -> Session {
        Session::new(
            &VersionInfo::new(9, 2, 0, ""),
            true,
            Limits::default(),
            DEFAULT_MAX_OUTPUT,
        )
    }

    fn lines(s: &mut Session) -> Vec<String> {
        let out = String::from_utf8(s.take_output()).unwrap_or_default();
        assert!(
            out.is_empty() || out.ends_with("\r\n"),
            "CRLF-terminated: {out:?}"
        );
        out.split_terminator("\r\n").map(str::to_string).collect()
    }

    fn envelope_err(v: Value, oob: bool) -> (Option<Value>, String) {
        match check_envelope(v, oob) {
            Err((id, e)) => (id, e.desc),
            Ok(r) => (None, format!("accepted: {r:?}")),
        }
    }

    #[test]
    fn greeting_is_first_and_one_crlf_line() {
        let mut s = session();
        let out = lines(&mut s);
        assert_eq!(
            out,
            vec![
                r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 9}, "package": ""}, "capabilities": ["oob"]}}"#
            ]
        );
        let s2 = Session::new(
            &VersionInfo::new(1, 0, 0, "x"),
            false,
            Limits::default(),
            1000,
        );
        assert!(String::from_utf8_lossy(s2.output()).contains(r#""capabilities": []"#));
    }

    #[test]
    fn envelope_errors_have_qemu_texts() {
        let cases = [
            (json!([1, 2]), None, "QMP input must be a JSON object"),
            (json!("str"), None, "QMP input must be a JSON object"),
            (json!(42), None, "QMP input must be a JSON object"),
            (
                json!({"execute": 1, "id": 3}),
                Some(json!(3)),
                "QMP input member 'execute' must be a string",
            ),
            (
                json!({"execute": "x", "arguments": [], "id": 3}),
                Some(json!(3)),
                "QMP input member 'arguments' must be an object",
            ),
            (
                json!({"execute": "x", "arguments": null, "id": 3}),
                Some(json!(3)),
                "QMP input member 'arguments' must be an object",
            ),
            (
                json!({"execute": "x", "foo": 1, "id": 4}),
                Some(json!(4)),
                "QMP input member 'foo' is unexpected",
            ),
            (
                json!({"id": 1}),
                Some(json!(1)),
                "QMP input lacks member 'execute'",
            ),
            (
                json!({"arguments": {}}),
                None,
                "QMP input lacks member 'execute'",
            ),
            (
                json!({"exec-oob": "x", "id": 1}),
                Some(json!(1)),
                "QMP input member 'exec-oob' is unexpected",
            ),
        ];
        for (input, id, desc) in cases {
            assert_eq!(
                envelope_err(input.clone(), false),
                (id, desc.to_string()),
                "input {input}"
            );
        }
    }

    #[test]
    fn exec_oob_envelope_when_enabled() {
        assert_eq!(
            envelope_err(json!({"exec-oob": 1}), true),
            (
                None,
                "QMP input member 'exec-oob' must be a string".to_string()
            )
        );
        assert_eq!(
            envelope_err(json!({"exec-oob": "x", "execute": "y"}), true),
            (
                None,
                "QMP input member 'execute' clashes with 'exec-oob'".to_string()
            )
        );
        let r = check_envelope(json!({"exec-oob": "migrate-pause", "id": 42}), true)
            .map_err(|(_, e)| e);
        assert_eq!(
            r,
            Ok(Request {
                name: "migrate-pause".into(),
                args: Map::new(),
                id: Some(json!(42)),
                oob: true
            })
        );
        // QEMU 7.2 and the spec do not require an id with exec-oob.
        assert!(check_envelope(json!({"exec-oob": "x"}), true).is_ok());
    }

    #[test]
    fn parse_errors_have_no_id_and_framing_recovers() {
        let mut s = session();
        lines(&mut s);
        s.push_input(b"{ \"execute\": } [1] {\"execute\":\"stop\",\"id\":\"a\"}");
        let req = s.next_request();
        assert_eq!(
            req.map(|r| (r.name, r.id)),
            Some(("stop".to_string(), Some(json!("a"))))
        );
        assert_eq!(
            lines(&mut s),
            vec![
                r#"{"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}"#,
                r#"{"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}"#,
            ]
        );
    }

    #[test]
    fn response_layout_matches_qemu() {
        assert_eq!(
            encode_response(Some(&json!(1)), &Ok(json!({}))),
            "{\"return\": {}, \"id\": 1}\r\n"
        );
        assert_eq!(
            encode_response(Some(&json!("x")), &Err(QmpError::command_not_found("nope"))),
            "{\"id\": \"x\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"nope\"}}\r\n"
        );
        assert_eq!(
            encode_response(None, &Ok(json!("s\u{e9}"))),
            "{\"return\": \"s\\u00E9\"}\r\n"
        );
    }

    #[test]
    fn event_layout() {
        let ev = Event {
            name: "STOP".into(),
            data: None,
            timestamp: Timestamp {
                seconds: 1,
                microseconds: 2,
            },
        };
        assert_eq!(
            encode_event(&ev),
            "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n"
        );
        let ev = Event {
            data: json!({"guest": false}).as_object().cloned(),
            ..ev
        };
        assert!(
            encode_event(&ev).ends_with("\"event\": \"STOP\", \"data\": {\"guest\": false}}\r\n")
        );
    }

    #[test]
    fn events_only_after_negotiation() {
        let mut s = session();
        lines(&mut s);
        let ev = Event {
            name: "STOP".into(),
            data: None,
            timestamp: Timestamp::UNKNOWN,
        };
        s.push_event(&ev);
        assert!(lines(&mut s).is_empty());
        s.negotiation_mut().negotiated = true;
        s.push_event(&ev);
        assert_eq!(lines(&mut s).len(), 1);
    }

    #[test]
    fn output_bound_marks_overflow() {
        let mut s = Session::new(&VersionInfo::new(9, 2, 0, ""), true, Limits::default(), 300);
        assert!(!s.is_overflowed());
        assert!(s.wants_input());
        s.negotiation_mut().negotiated = true;
        let ev = Event {
            name: "STOP".into(),
            data: None,
            timestamp: Timestamp::UNKNOWN,
        };
        for _ in 0..10 {
            s.push_event(&ev);
        }
        assert!(s.is_overflowed());
        assert!(!s.wants_input());
        assert!(s.output().len() <= 300);
    }

    #[test]
    fn partial_writes() {
        let mut s = session();
        let total = s.output().len();
        let first = s.output()[..10].to_vec();
        s.consume_output(10);
        assert_eq!(s.output().len(), total - 10);
        assert_ne!(s.output()[..10], first[..]);
        s.consume_output(total);
        assert!(s.output().is_empty());
    }
}
