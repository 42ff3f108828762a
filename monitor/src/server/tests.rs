//! Tests of the [`Monitor`](super::Monitor) end to end, bytes in and bytes out against a
//! [`FakeMachine`]: the harness `H` and its helpers live here; the tests are grouped by
//! subject in the child modules.

use super::*;
use crate::events::ManualClock;
use crate::machine::HotpluggableCpu;
use crate::qmp_error::QmpError;
use crate::runstate::ShutdownAction;
use crate::schema::Empty;
use crate::testing::{Call, FakeMachine};
use serde_json::json;
use std::collections::BTreeSet;

mod commands;
mod delivery;
mod protocol;
mod run_control;

struct H {
    mon: Monitor,
    m: FakeMachine,
    id: SessionId,
    clock: ManualClock,
}

impl H {
    fn with_config(config: MonitorConfig) -> Self {
        let clock = ManualClock::new();
        let mut mon = Monitor::with_clock(config, Box::new(clock.clone()));
        let id = mon.connect();
        let mut h = H {
            mon,
            m: FakeMachine::default(),
            id,
            clock,
        };
        h.read();
        h
    }

    /// A fresh monitor whose VM runs, with one connected, not negotiated session.
    fn new() -> Self {
        let mut h = Self::with_config(MonitorConfig::new(VersionInfo::new(9, 2, 0, "")));
        h.mon.handle(MachineEvent::Start, &mut h.m).expect("start");
        h.m.calls.clear();
        h
    }

    fn negotiated() -> Self {
        let mut h = Self::new();
        assert_eq!(
            h.send(r#"{"execute":"qmp_capabilities"}"#),
            vec![json!({"return": {}})]
        );
        h
    }

    /// Output lines of the session, checked for the wire rules (one object per
    /// CRLF-terminated line, ASCII only).
    fn read_lines_of(&mut self, id: SessionId) -> Vec<String> {
        let out = self.mon.take_output(id).expect("session exists");
        assert!(out.is_ascii(), "output is ASCII");
        let out = String::from_utf8(out).unwrap_or_default();
        assert!(
            out.is_empty() || out.ends_with("\r\n"),
            "CRLF at the end: {out:?}"
        );
        out.split_terminator("\r\n")
            .map(|l| {
                assert!(
                    !l.contains('\n') && !l.contains('\r'),
                    "one line per message"
                );
                l.to_string()
            })
            .collect()
    }

    fn read_of(&mut self, id: SessionId) -> Vec<Value> {
        self.read_lines_of(id)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid JSON {l}: {e}")))
            .collect()
    }

    fn read(&mut self) -> Vec<Value> {
        self.read_of(self.id)
    }

    fn send_bytes(&mut self, b: &[u8]) -> Vec<Value> {
        self.mon.receive(self.id, b, &mut self.m).expect("receive");
        self.read()
    }

    fn send(&mut self, s: &str) -> Vec<Value> {
        self.send_bytes(s.as_bytes())
    }

    /// Runs a command that must succeed and produce no event.
    fn ok(&mut self, name: &str, args: Value) -> Value {
        let out = self.send(&json!({"execute": name, "arguments": args}).to_string());
        assert_eq!(out.len(), 1, "{name}: {out:?}");
        out[0]
            .get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{name} failed: {}", out[0]))
    }

    /// Runs a command that must fail; returns (class, desc).
    fn err(&mut self, name: &str, args: Value) -> (String, String) {
        let out = self.send(&json!({"execute": name, "arguments": args, "id": "e"}).to_string());
        let last = out.last().cloned().unwrap_or(Value::Null);
        assert_eq!(last["id"], "e", "id echoed on errors: {last}");
        (
            last["error"]["class"].as_str().unwrap_or("").to_string(),
            last["error"]["desc"].as_str().unwrap_or("").to_string(),
        )
    }

    fn status(&mut self) -> String {
        self.ok("query-status", json!({}))["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    fn hmp(&mut self, line: &str) -> String {
        self.ok("human-monitor-command", json!({"command-line": line}))
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn event_names(v: &[Value]) -> Vec<String> {
    v.iter()
        .filter_map(|e| e.get("event").and_then(Value::as_str).map(str::to_string))
        .collect()
}

fn generic(desc: &str) -> (String, String) {
    ("GenericError".into(), desc.into())
}

crate::qmp_struct! {
    #[derive(Debug)]
    struct EchoArgs {
        text: String = "text",
        times: Option<u32> = "times",
    }
}
