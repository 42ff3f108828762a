//! The `Monitor`: owns the sessions, the command registry, the run state and the event
//! bus; the vmm's event loop only moves bytes between sockets and sessions and calls in
//! when the machine reports something.
//!
//! ```text
//!  socket ──bytes──▶ receive(id) ─▶ Session: framing, envelope ─▶ Registry::dispatch
//!                                                                   │  (Machine trait)
//!  socket ◀─bytes── output(id)  ◀─ Session queue ◀─ events (all negotiated sessions),
//!                                                   then the reply (this session)
//!  vmm ──▶ handle(MachineEvent) / emit(Event) / on_timer() ──▶ events to every session
//! ```
//!
//! Ordering: events raised while a command runs are delivered before its reply (§8).

use crate::control::execute_plan;
use crate::error::Error;
use crate::events::{Clock, Event, EventBus, SystemClock};
use crate::framing::Limits;
use crate::machine::{Machine, VersionInfo};
use crate::registry::{CommandContext, Registry};
use crate::runstate::{Actions, Plan, RunState, ShutdownCause, VmState};
use crate::session::{Session, DEFAULT_MAX_OUTPUT};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Identifies a connection; never reused within a `Monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// Settings of a monitor.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// The greeting's version and `query-version`.
    pub version: VersionInfo,
    /// Offer the `oob` capability in the greeting.
    pub offer_oob: bool,
    /// Input limits per message.
    pub limits: Limits,
    /// Bound of each session's unsent output; past it the session is to be dropped.
    pub max_output_bytes: usize,
    /// Mask type names in `query-qmp-schema`, as QEMU does unless `-compat unmask`.
    pub mask_schema: bool,
    /// The state the VM starts in (QEMU: always `prelaunch`).
    pub initial_state: RunState,
    /// `-no-reboot`, `-no-shutdown`, `-action`.
    pub actions: Actions,
}

impl MonitorConfig {
    pub fn new(version: VersionInfo) -> Self {
        MonitorConfig {
            version,
            offer_oob: true,
            limits: Limits::default(),
            max_output_bytes: DEFAULT_MAX_OUTPUT,
            mask_schema: true,
            initial_state: RunState::Prelaunch,
            actions: Actions::default(),
        }
    }
}

/// Things that happen to the machine outside any command, reported by the vmm. Each is
/// decided by the run-state machine and carried out through the `Machine` trait.
#[derive(Debug, Clone, PartialEq)]
pub enum MachineEvent {
    /// The machine is built and should run (no `-S`); RESUME, `running`.
    Start,
    /// Guest reboot request (ACPI, keyboard controller, triple fault).
    GuestReset,
    /// Guest poweroff request (ACPI S5, pvpanic shutdown).
    GuestShutdown,
    /// Guest panic, with its `GuestPanicInformation` if the device has one.
    GuestPanic(Option<Value>),
    /// The guest entered ACPI S3.
    GuestSuspend,
    /// A wake-up source fired while suspended.
    GuestWakeup,
    /// The watchdog device expired.
    WatchdogExpired,
    /// SIGINT/SIGTERM/SIGHUP.
    HostSignal,
    /// A fatal host-side error.
    HostError,
    /// The machine stops into `state` (io-error, internal-error, debug...).
    Stop(RunState),
}

/// The QMP server side: N sessions, one registry, one VM.
pub struct Monitor {
    config: MonitorConfig,
    registry: Registry,
    vm: VmState,
    events: EventBus,
    sessions: BTreeMap<SessionId, Session>,
    next_id: u64,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("vm", &self.vm)
            .field("sessions", &self.sessions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Monitor {
    /// A monitor with every core command, on the host clocks.
    pub fn new(config: MonitorConfig) -> Self {
        Self::with_clock(config, Box::new(SystemClock::default()))
    }

    /// Same, with an injected clock (tests drive throttling with it).
    pub fn with_clock(config: MonitorConfig, clock: Box<dyn Clock>) -> Self {
        Monitor {
            vm: VmState::new(config.initial_state, config.actions),
            registry: Registry::with_core(),
            events: EventBus::new(clock),
            sessions: BTreeMap::new(),
            next_id: 0,
            config,
        }
    }

    /// Register the vmm's own commands and events here before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn vm(&self) -> &VmState {
        &self.vm
    }

    pub fn runstate(&self) -> RunState {
        self.vm.state()
    }

    /// A new connection; its greeting is already in its output.
    pub fn connect(&mut self) -> SessionId {
        let id = SessionId(self.next_id);
        self.next_id += 1;
        let session = Session::new(
            &self.config.version,
            self.config.offer_oob,
            self.config.limits,
            self.config.max_output_bytes,
        );
        self.sessions.insert(id, session);
        id
    }

    /// The connection closed: its pending input and output are dropped.
    pub fn disconnect(&mut self, id: SessionId) -> Result<(), Error> {
        self.sessions
            .remove(&id)
            .map(|_| ())
            .ok_or(Error::UnknownSession(id.0))
    }

    pub fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    fn session(&self, id: SessionId) -> Result<&Session, Error> {
        self.sessions.get(&id).ok_or(Error::UnknownSession(id.0))
    }

    fn session_mut(&mut self, id: SessionId) -> Result<&mut Session, Error> {
        self.sessions
            .get_mut(&id)
            .ok_or(Error::UnknownSession(id.0))
    }

    /// Bytes read from connection `id`: every complete request in them is run now.
    pub fn receive(
        &mut self,
        id: SessionId,
        bytes: &[u8],
        machine: &mut dyn Machine,
    ) -> Result<(), Error> {
        self.session_mut(id)?.push_input(bytes);
        loop {
            let session = self.session_mut(id)?;
            // A session past its output bound is about to be dropped: leave the rest of
            // its requests unrun, as QEMU drops a closed connection's queued requests.
            if session.is_overflowed() {
                break;
            }
            let Some(req) = session.next_request() else {
                break;
            };
            let mut negotiation = session.negotiation();
            let result = {
                let mut ctx = CommandContext {
                    machine: &mut *machine,
                    vm: &mut self.vm,
                    events: &mut self.events,
                    session: &mut negotiation,
                    registry: &self.registry,
                    version: &self.config.version,
                    mask_schema: self.config.mask_schema,
                };
                self.registry
                    .dispatch(&req.name, req.args, req.oob, &mut ctx)
            };
            // Events first (to every negotiated session, this one included), then the
            // reply; a session that just negotiated hears nothing raised before.
            self.deliver_events();
            let session = self.session_mut(id)?;
            *session.negotiation_mut() = negotiation;
            session.respond(req.id, result);
        }
        Ok(())
    }

    /// Output waiting for connection `id`.
    pub fn output(&self, id: SessionId) -> Result<&[u8], Error> {
        Ok(self.session(id)?.output())
    }

    /// `n` bytes of [`output`](Self::output) were written to the socket.
    pub fn consume_output(&mut self, id: SessionId, n: usize) -> Result<(), Error> {
        self.session_mut(id)?.consume_output(n);
        Ok(())
    }

    /// Takes all output waiting for connection `id`.
    pub fn take_output(&mut self, id: SessionId) -> Result<Vec<u8>, Error> {
        Ok(self.session_mut(id)?.take_output())
    }

    /// Backpressure hint: stop reading from `id` while false.
    pub fn wants_input(&self, id: SessionId) -> bool {
        self.session(id).map(Session::wants_input).unwrap_or(false)
    }

    /// Sessions whose client stopped reading and overflowed their output bound; close
    /// their sockets and [`disconnect`](Self::disconnect) them.
    pub fn overflowed_sessions(&self) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.is_overflowed())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Raises an event with typed data (device events such as RTC_CHANGE); throttled
    /// where QEMU throttles, then delivered to every negotiated session.
    pub fn emit<D: Serialize>(&mut self, name: &str, data: &D) {
        self.events.emit(name, data);
        self.deliver_events();
    }

    /// Raises an already built event.
    pub fn emit_event(&mut self, ev: Event) {
        self.events.emit_event(ev);
        self.deliver_events();
    }

    /// Time until [`on_timer`](Self::on_timer) must run (a throttle window closes).
    pub fn next_timeout(&self) -> Option<Duration> {
        self.events.next_deadline()
    }

    /// Delivers throttled events whose window closed.
    pub fn on_timer(&mut self) {
        self.events.poll();
        self.deliver_events();
    }

    /// Something happened to the machine: decide with the run-state machine, act through
    /// `machine`, emit the events. Returns the exit status if the process must now end
    /// (after flushing the sessions' output); `machine.request_exit` was called too.
    pub fn handle(
        &mut self,
        what: MachineEvent,
        machine: &mut dyn Machine,
    ) -> Result<Option<i32>, Error> {
        let plan: Plan = match what {
            MachineEvent::Start => self.vm.plan_start()?,
            MachineEvent::GuestReset => self.vm.plan_reset_request(ShutdownCause::GuestReset)?,
            MachineEvent::GuestShutdown => self
                .vm
                .plan_shutdown_request(ShutdownCause::GuestShutdown)?,
            MachineEvent::GuestPanic(info) => self.vm.plan_guest_panic(info)?,
            MachineEvent::GuestSuspend => self.vm.plan_suspend()?,
            MachineEvent::GuestWakeup => self.vm.plan_wakeup(true)?,
            MachineEvent::WatchdogExpired => self.vm.plan_watchdog_expired()?,
            MachineEvent::HostSignal => self.vm.plan_shutdown_request(ShutdownCause::HostSignal)?,
            MachineEvent::HostError => self.vm.plan_shutdown_request(ShutdownCause::HostError)?,
            MachineEvent::Stop(state) => self.vm.plan_vm_stop(state)?,
        };
        let result = execute_plan(&plan, &mut self.vm, machine, &mut self.events);
        self.deliver_events();
        result.map_err(Error::from)?;
        Ok(plan.exit_status())
    }

    /// Changes the run state directly (e.g. `inmigrate` for `-incoming`, `postmigrate`
    /// after migration); checked against the table, no event.
    pub fn set_runstate(&mut self, to: RunState) -> Result<(), Error> {
        self.vm.set_state(to).map_err(Error::from)
    }

    fn deliver_events(&mut self) {
        let ready = self.events.take_ready();
        for ev in &ready {
            for s in self.sessions.values_mut() {
                s.push_event(ev);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ManualClock;
    use crate::machine::HotpluggableCpu;
    use crate::qmp_error::QmpError;
    use crate::runstate::ShutdownAction;
    use crate::schema::Empty;
    use crate::testing::{Call, FakeMachine};
    use serde_json::json;
    use std::collections::BTreeSet;

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
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("invalid JSON {l}: {e}"))
                })
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
            let out =
                self.send(&json!({"execute": name, "arguments": args, "id": "e"}).to_string());
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

    #[test]
    fn monitor_can_move_to_the_event_loop_thread() {
        fn assert_send<T: Send>() {}
        assert_send::<Monitor>();
    }

    #[test]
    fn greeting() {
        let mut mon = Monitor::new(MonitorConfig::new(VersionInfo::new(9, 2, 0, "kestrel")));
        let id = mon.connect();
        let out = String::from_utf8(mon.take_output(id).unwrap_or_default()).unwrap_or_default();
        assert_eq!(
            out,
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 9}, \"package\": \"kestrel\"}, \"capabilities\": [\"oob\"]}}\r\n"
        );
    }

    #[test]
    fn negotiation_mode_rules() {
        let mut h = H::new();
        // Any command but qmp_capabilities, known or not: the fixed text, id echoed.
        for name in ["query-status", "no-such-command", "stop"] {
            assert_eq!(
                h.send(&format!(r#"{{"execute":"{name}","id":7}}"#)),
                vec![json!({"id": 7, "error": {"class": "CommandNotFound",
                    "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}})]
            );
        }
        assert_eq!(h.m.calls, vec![], "stop did not run");
        // Envelope errors keep their own texts in this mode too.
        assert_eq!(
            h.send(r#"{"id":1}"#),
            vec![
                json!({"id": 1, "error": {"class": "GenericError", "desc": "QMP input lacks member 'execute'"}})
            ]
        );
        assert_eq!(
            h.err("qmp_capabilities", json!({"foo": 1})),
            generic("Parameter 'foo' is unexpected")
        );
        // exec-oob is an unknown member until oob is enabled.
        assert_eq!(
            h.send(r#"{"exec-oob":"qmp_capabilities","id":1}"#),
            vec![
                json!({"id": 1, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}})
            ]
        );
        assert_eq!(
            h.err("qmp_capabilities", json!({"enable": ["foo"]})),
            generic("Parameter 'enable[0]' does not accept value 'foo'")
        );
        assert_eq!(
            h.err("qmp_capabilities", json!({"enable": "oob"})),
            generic("Invalid parameter type for 'enable', expected: array")
        );
        // No events while negotiating: not queued either.
        h.mon
            .handle(MachineEvent::GuestReset, &mut h.m)
            .expect("reset");
        assert_eq!(h.read(), Vec::<Value>::new());
        // Success, then the second call is refused.
        assert_eq!(
            h.send(r#"{"execute":"qmp_capabilities","arguments":{"enable":[]},"id":2}"#),
            vec![json!({"return": {}, "id": 2})]
        );
        assert_eq!(
            h.err("qmp_capabilities", json!({})),
            (
                "CommandNotFound".into(),
                "Capabilities negotiation is already complete, command ignored".into()
            )
        );
        // Argument errors still come first, as in QEMU.
        assert_eq!(
            h.err("qmp_capabilities", json!({"x": 1})),
            generic("Parameter 'x' is unexpected")
        );
        assert_eq!(
            h.ok("query-status", json!({})),
            json!({"running": true, "status": "running"})
        );
    }

    #[test]
    fn unoffered_capability_keeps_negotiation_mode() {
        let mut config = MonitorConfig::new(VersionInfo::new(9, 2, 0, ""));
        config.offer_oob = false;
        let mut h = H::with_config(config);
        assert_eq!(
            h.err("qmp_capabilities", json!({"enable": ["oob"]})),
            generic("Capability oob not available")
        );
        assert_eq!(h.err("query-status", json!({})).0, "CommandNotFound");
        assert_eq!(h.ok("qmp_capabilities", json!({})), json!({}));
    }

    #[test]
    fn id_is_echoed_verbatim() {
        let mut h = H::negotiated();
        let ids = [
            json!("a"),
            json!(1),
            json!(-5),
            json!(1.5),
            json!(u64::MAX),
            json!(true),
            json!(null),
            json!([]),
            json!({}),
            json!({"a": [1, 2, {"b": null}], "c": true}),
        ];
        for id in ids {
            let out = h.send(&json!({"execute": "query-status", "id": id}).to_string());
            assert_eq!(out.len(), 1);
            assert_eq!(out[0]["id"], id);
            // And on errors.
            let out = h.send(&json!({"execute": "nope", "id": id}).to_string());
            assert_eq!(out[0]["id"], id);
        }
    }

    #[test]
    fn non_ascii_id_comes_back_escaped() {
        let mut h = H::negotiated();
        h.mon
            .receive(
                h.id,
                "{\"execute\":\"query-status\",\"id\":\"a\u{e9}\u{1F600}\"}".as_bytes(),
                &mut h.m,
            )
            .expect("receive");
        let lines = h.read_lines_of(h.id);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].ends_with(r#""id": "a\u00E9\uD83D\uDE00"}"#),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn envelope_errors_in_command_mode() {
        let mut h = H::negotiated();
        let cases = [
            (
                r#"[1,2]"#,
                json!({"error": {"class": "GenericError", "desc": "QMP input must be a JSON object"}}),
            ),
            (
                r#"{"execute":1,"id":3}"#,
                json!({"id": 3, "error": {"class": "GenericError", "desc": "QMP input member 'execute' must be a string"}}),
            ),
            (
                r#"{"execute":"query-status","arguments":[],"id":3}"#,
                json!({"id": 3, "error": {"class": "GenericError", "desc": "QMP input member 'arguments' must be an object"}}),
            ),
            (
                r#"{"execute":"query-status","foo":1,"id":4}"#,
                json!({"id": 4, "error": {"class": "GenericError", "desc": "QMP input member 'foo' is unexpected"}}),
            ),
            (
                r#"{"execute":"no-such-command","id":7}"#,
                json!({"id": 7, "error": {"class": "CommandNotFound", "desc": "The command no-such-command has not been found"}}),
            ),
            (
                r#"{"exec-oob":"query-status","id":8}"#,
                json!({"id": 8, "error": {"class": "GenericError", "desc": "QMP input member 'exec-oob' is unexpected"}}),
            ),
            (
                r#"{ "execute": }"#,
                json!({"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}}),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(h.send(input), vec![want], "input {input}");
        }
    }

    #[test]
    fn argument_errors_for_real_commands() {
        let mut h = H::negotiated();
        assert_eq!(
            h.err("watchdog-set-action", json!({})),
            generic("Parameter 'action' is missing")
        );
        assert_eq!(
            h.err("watchdog-set-action", json!({"action": 5})),
            generic("Invalid parameter type for 'action', expected: string")
        );
        assert_eq!(
            h.err("set-action", json!({"panic": "bogus"})),
            generic("Parameter 'panic' does not accept value 'bogus'")
        );
        assert_eq!(
            h.err("set-action", json!({"reboot": null})),
            generic("Invalid parameter type for 'reboot', expected: string")
        );
        assert_eq!(
            h.err("query-status", json!({"x": 1})),
            generic("Parameter 'x' is unexpected")
        );
        assert_eq!(
            h.err(
                "human-monitor-command",
                json!({"command-line": "info status", "cpu-index": 1.0})
            ),
            generic("Invalid parameter type for 'cpu-index', expected: integer")
        );
        assert_eq!(
            h.err("query-machines", json!({"compat-props": "x"})),
            generic("Invalid parameter type for 'compat-props', expected: boolean")
        );
        // Nothing ran.
        assert_eq!(h.mon.vm().actions, Actions::default());
    }

    #[test]
    fn split_and_batched_requests() {
        let mut h = H::negotiated();
        let req = br#"{"execute":"query-status","id":1}"#;
        for b in &req[..req.len() - 1] {
            assert_eq!(h.send_bytes(std::slice::from_ref(b)), Vec::<Value>::new());
        }
        assert_eq!(h.send_bytes(&req[req.len() - 1..]).len(), 1);
        let out = h.send("{\"execute\":\"query-status\",\"id\":1}{\"execute\":\"query-kvm\",\"id\":2}\n{\n \"execute\": \"query-name\",\n \"id\": 3\n}");
        let ids: Vec<Value> = out.iter().map(|v| v["id"].clone()).collect();
        assert_eq!(ids, vec![json!(1), json!(2), json!(3)]);
        // A truncated request is thrown away with a control character.
        assert!(h.send(r#"{"execute":"stop""#).is_empty());
        let out = h.send("\x1b{\"execute\":\"query-status\",\"id\":9}");
        assert_eq!(out[0]["error"]["desc"], "JSON parse error, stray '\u{1b}'");
        assert_eq!(out[1]["id"], 9);
        assert!(h.m.calls.is_empty(), "the truncated stop never ran");
    }

    #[test]
    fn stop_cont_events_precede_replies() {
        let mut h = H::negotiated();
        let out = h.send(r#"{"execute":"stop","id":2}"#);
        assert_eq!(event_names(&out), ["STOP"]);
        assert!(out[0].get("data").is_none(), "STOP has no data member");
        assert_eq!(
            out[0]["timestamp"],
            json!({"seconds": 1_700_000_000, "microseconds": 0})
        );
        assert_eq!(out[1], json!({"return": {}, "id": 2}));
        assert_eq!(h.status(), "paused");
        assert_eq!(h.ok("query-status", json!({}))["running"], false);
        // Second stop: no event.
        assert_eq!(h.ok("stop", json!({})), json!({}));
        assert_eq!(h.m.calls, vec![Call::PauseVcpus]);
        let out = h.send(r#"{"execute":"cont"}"#);
        assert_eq!(event_names(&out), ["RESUME"]);
        assert_eq!(out[1], json!({"return": {}}));
        assert_eq!(
            h.ok("cont", json!({})),
            json!({}),
            "cont while running: no event"
        );
        assert_eq!(h.m.calls, vec![Call::PauseVcpus, Call::ResumeVcpus]);
    }

    #[test]
    fn stop_fails_cleanly_when_the_machine_fails() {
        let mut h = H::negotiated();
        h.m.fail_pause = Some("vCPU 1 did not park".into());
        assert_eq!(h.err("stop", json!({})), generic("vCPU 1 did not park"));
        assert_eq!(h.status(), "running");
        h.m.fail_pause = None;
        h.m.dump_running = true;
        assert_eq!(
            h.err("stop", json!({})),
            generic("There is a dump in process, please wait.")
        );
        assert_eq!(
            h.err("cont", json!({})),
            generic("There is a dump in process, please wait.")
        );
    }

    #[test]
    fn system_reset_while_paused_then_cont() {
        let mut h = H::negotiated();
        h.send(r#"{"execute":"stop"}"#);
        let out = h.send(r#"{"execute":"system_reset"}"#);
        assert_eq!(event_names(&out), ["RESET"]);
        assert_eq!(
            out[0]["data"],
            json!({"guest": false, "reason": "host-qmp-system-reset"})
        );
        assert_eq!(h.status(), "prelaunch");
        assert_eq!(h.hmp("info status"), "VM status: paused (prelaunch)\r\n");
        let out = h.send(r#"{"execute":"cont"}"#);
        assert_eq!(event_names(&out), ["RESUME"]);
        assert_eq!(h.status(), "running");
        assert!(h
            .m
            .calls
            .contains(&Call::Reset(ShutdownCause::HostQmpSystemReset)));
    }

    #[test]
    fn no_reboot_turns_system_reset_into_shutdown() {
        let mut h = H::negotiated();
        h.ok(
            "set-action",
            json!({"reboot": "shutdown", "shutdown": "pause"}),
        );
        let out = h.send(r#"{"execute":"system_reset"}"#);
        assert_eq!(event_names(&out), ["SHUTDOWN", "STOP"]);
        assert_eq!(
            out[0]["data"],
            json!({"guest": false, "reason": "host-qmp-system-reset"})
        );
        assert_eq!(h.status(), "shutdown");
        assert_eq!(
            h.err("cont", json!({})),
            generic("Resetting the Virtual Machine is required")
        );
    }

    #[test]
    fn powerdown_and_guest_shutdown_with_pause() {
        let mut h = H::negotiated();
        let out = h.send(r#"{"execute":"system_powerdown"}"#);
        assert_eq!(event_names(&out), ["POWERDOWN"]);
        assert_eq!(h.m.calls, vec![Call::PowerButton]);
        h.ok("set-action", json!({"shutdown": "pause"}));
        assert_eq!(h.mon.vm().actions.shutdown, ShutdownAction::Pause);
        // The guest reacts to the button.
        assert_eq!(
            h.mon.handle(MachineEvent::GuestShutdown, &mut h.m),
            Ok(None)
        );
        let out = h.read();
        assert_eq!(event_names(&out), ["SHUTDOWN", "STOP"]);
        assert_eq!(
            out[0]["data"],
            json!({"guest": true, "reason": "guest-shutdown"})
        );
        assert_eq!(h.status(), "shutdown");
        assert_eq!(
            h.err("cont", json!({})),
            generic("Resetting the Virtual Machine is required")
        );
        h.send(r#"{"execute":"system_reset"}"#);
        assert_eq!(h.status(), "prelaunch");
        h.send(r#"{"execute":"cont"}"#);
        assert_eq!(h.status(), "running");
    }

    #[test]
    fn quit_sends_shutdown_then_reply_and_requests_exit() {
        let mut h = H::negotiated();
        h.ok("set-action", json!({"shutdown": "pause"}));
        let out = h.send(r#"{"execute":"quit","id":"q"}"#);
        assert_eq!(event_names(&out), ["SHUTDOWN"]);
        assert_eq!(
            out[0]["data"],
            json!({"guest": false, "reason": "host-qmp-quit"})
        );
        assert_eq!(out[1], json!({"return": {}, "id": "q"}));
        assert_eq!(h.m.calls, vec![Call::Exit(0)]);
    }

    #[test]
    fn guest_panic_through_handle() {
        let mut h = H::negotiated();
        h.ok("set-action", json!({"panic": "exit-failure"}));
        let status = h.mon.handle(MachineEvent::GuestPanic(None), &mut h.m);
        assert_eq!(status, Ok(Some(1)));
        let out = h.read();
        assert_eq!(event_names(&out), ["GUEST_PANICKED", "STOP", "SHUTDOWN"]);
        assert_eq!(out[0]["data"], json!({"action": "poweroff"}));
        assert_eq!(
            out[2]["data"],
            json!({"guest": true, "reason": "guest-panic"})
        );
        assert_eq!(h.mon.runstate(), RunState::GuestPanicked);
    }

    #[test]
    fn watchdog_events_are_throttled() {
        let mut h = H::negotiated();
        h.ok("watchdog-set-action", json!({"action": "none"}));
        for _ in 0..3 {
            h.mon
                .handle(MachineEvent::WatchdogExpired, &mut h.m)
                .expect("watchdog");
            h.clock.advance(Duration::from_millis(100));
        }
        assert_eq!(event_names(&h.read()), ["WATCHDOG"]);
        assert_eq!(h.mon.next_timeout(), Some(Duration::from_millis(700)));
        h.ok("watchdog-set-action", json!({"action": "debug"}));
        h.mon
            .handle(MachineEvent::WatchdogExpired, &mut h.m)
            .expect("watchdog");
        assert!(h.read().is_empty());
        assert_eq!(
            h.m.calls,
            vec![Call::WatchdogDebug],
            "the action runs even when the event waits"
        );
        h.clock.advance(Duration::from_millis(700));
        h.mon.on_timer();
        let out = h.read();
        assert_eq!(event_names(&out), ["WATCHDOG"]);
        // The last one of the burst, stamped when it was raised (t = 300 ms).
        assert_eq!(out[0]["data"], json!({"action": "debug"}));
        assert_eq!(out[0]["timestamp"]["microseconds"], 300_000);
    }

    #[test]
    fn device_events_throttled_per_key() {
        let mut h = H::negotiated();
        for (id, open) in [
            ("a", true),
            ("b", true),
            ("a", false),
            ("b", false),
            ("a", true),
        ] {
            h.mon
                .emit("VSERPORT_CHANGE", &json!({"id": id, "open": open}));
        }
        let out = h.read();
        assert_eq!(out.len(), 2, "first of each id at once");
        h.clock.advance(Duration::from_secs(1));
        h.mon.on_timer();
        let out = h.read();
        let data: Vec<Value> = out.iter().map(|e| e["data"].clone()).collect();
        assert_eq!(
            data,
            vec![
                json!({"id": "a", "open": true}),
                json!({"id": "b", "open": false})
            ]
        );
        h.mon.emit("RESUME", &Empty {});
        assert_eq!(event_names(&h.read()), ["RESUME"]);
    }

    #[test]
    fn events_reach_every_negotiated_session_only() {
        let mut h = H::negotiated();
        let second = h.mon.connect();
        let third = h.mon.connect();
        h.read_of(second);
        h.read_of(third);
        h.mon
            .receive(second, br#"{"execute":"qmp_capabilities"}"#, &mut h.m)
            .expect("receive");
        assert_eq!(h.read_of(second), vec![json!({"return": {}})]);
        let out = h.send(r#"{"execute":"stop"}"#);
        assert_eq!(event_names(&out), ["STOP"]);
        assert_eq!(event_names(&h.read_of(second)), ["STOP"]);
        assert!(h.read_of(third).is_empty(), "not negotiated: nothing");
        // A reconnect starts over (greeting, negotiation) and sees the VM as it is.
        h.mon.disconnect(second).expect("disconnect");
        assert!(h.mon.output(second).is_err());
        let again = h.mon.connect();
        let greet = h.read_of(again);
        assert!(greet[0].get("QMP").is_some());
        h.mon
            .receive(again, br#"{"execute":"query-status","id":1}"#, &mut h.m)
            .expect("receive");
        assert_eq!(h.read_of(again)[0]["error"]["class"], "CommandNotFound");
        h.mon
            .receive(
                again,
                br#"{"execute":"qmp_capabilities"}{"execute":"query-status"}"#,
                &mut h.m,
            )
            .expect("receive");
        assert_eq!(h.read_of(again)[1]["return"]["status"], "paused");
    }

    #[test]
    fn slow_reader_overflows_and_is_reported() {
        let mut config = MonitorConfig::new(VersionInfo::new(9, 2, 0, ""));
        config.max_output_bytes = 1024;
        let mut h = H::with_config(config);
        h.send(r#"{"execute":"qmp_capabilities"}"#);
        let other = h.mon.connect();
        assert!(h.mon.overflowed_sessions().is_empty());
        for _ in 0..50 {
            h.mon.emit("RESUME", &Empty {});
        }
        // Both sessions stopped reading: the negotiated one overflows; the other one
        // gets no events and keeps its greeting.
        assert_eq!(h.mon.overflowed_sessions(), vec![h.id]);
        assert!(!h.mon.wants_input(h.id));
        assert!(h.mon.wants_input(other));
        assert!(h.mon.output(h.id).map(|o| o.len()).unwrap_or(usize::MAX) <= 1024);
    }

    #[test]
    fn requests_after_an_overflow_are_not_run() {
        let mut config = MonitorConfig::new(VersionInfo::new(9, 2, 0, ""));
        config.max_output_bytes = 600;
        let mut h = H::with_config(config);
        h.mon.handle(MachineEvent::Start, &mut h.m).expect("start");
        h.send(r#"{"execute":"qmp_capabilities"}"#);
        h.mon
            .receive(
                h.id,
                br#"{"execute":"query-qmp-schema"}{"execute":"stop"}"#,
                &mut h.m,
            )
            .expect("receive");
        assert_eq!(h.mon.overflowed_sessions(), vec![h.id]);
        assert!(
            h.m.calls.iter().all(|c| *c != Call::PauseVcpus),
            "stop did not run"
        );
        assert_eq!(h.mon.runstate(), RunState::Running);
    }

    #[test]
    fn machine_queries() {
        let mut h = H::negotiated();
        assert_eq!(
            h.ok("query-version", json!({})),
            json!({"qemu": {"major": 9, "minor": 2, "micro": 0}, "package": ""})
        );
        assert_eq!(h.ok("query-name", json!({})), json!({}));
        h.m.name = Some("vm1".into());
        assert_eq!(h.ok("query-name", json!({})), json!({"name": "vm1"}));
        assert_eq!(
            h.ok("query-uuid", json!({})),
            json!({"UUID": "00000000-0000-0000-0000-000000000000"})
        );
        assert_eq!(
            h.ok("query-kvm", json!({})),
            json!({"enabled": true, "present": true})
        );
        assert_eq!(h.ok("query-target", json!({})), json!({"arch": "x86_64"}));
        assert_eq!(
            h.ok("query-cpus-fast", json!({}))[1],
            json!({"cpu-index": 1, "qom-path": "/machine/unattached/device[1]", "thread-id": 1001,
                   "props": {"core-id": 1, "socket-id": 0, "thread-id": 0}, "target": "x86_64"})
        );
        let machines = h.ok("query-machines", json!({}));
        assert_eq!(machines[0]["name"], "microvm");
        assert!(
            machines[0].get("compat-props").is_none(),
            "only with compat-props: true"
        );
        assert_eq!(
            h.ok("query-machines", json!({"compat-props": true}))[0]["compat-props"],
            json!([])
        );
        assert_eq!(
            h.ok("query-current-machine", json!({})),
            json!({"wakeup-suspend-support": false})
        );
        assert_eq!(
            h.ok("query-memory-size-summary", json!({})),
            json!({"base-memory": 134217728})
        );
        assert_eq!(h.ok("query-iothreads", json!({})), json!([]));
        assert_eq!(
            h.err("query-hotpluggable-cpus", json!({})),
            generic("The feature 'query-hotpluggable-cpus' is not enabled")
        );
        h.m.hotpluggable = Some(vec![HotpluggableCpu {
            ty: "host-x86_64-cpu".into(),
            props: Default::default(),
            vcpus_count: 1,
            qom_path: None,
        }]);
        assert_eq!(
            h.ok("query-hotpluggable-cpus", json!({})),
            json!([{"type": "host-x86_64-cpu", "props": {}, "vcpus-count": 1}])
        );
        assert_eq!(h.ok("inject-nmi", json!({})), json!({}));
        h.m.nmi_supported = false;
        assert_eq!(
            h.err("inject-nmi", json!({})),
            generic("this feature or command is not currently supported")
        );
        assert_eq!(
            h.err("system_wakeup", json!({})),
            generic("wake-up from suspend is not supported by this guest")
        );
    }

    #[test]
    fn set_action_and_watchdog_set_action() {
        let mut h = H::negotiated();
        h.ok("set-action", json!({"reboot": "shutdown", "panic": "none"}));
        let a = h.mon.vm().actions;
        assert_eq!(a.reboot, crate::runstate::RebootAction::Shutdown);
        assert_eq!(a.panic, crate::runstate::PanicAction::None);
        assert_eq!(a.shutdown, ShutdownAction::Poweroff, "omitted: unchanged");
        h.ok("watchdog-set-action", json!({"action": "inject-nmi"}));
        h.mon
            .handle(MachineEvent::WatchdogExpired, &mut h.m)
            .expect("watchdog");
        assert_eq!(h.m.calls, vec![Call::InjectNmi]);
        assert_eq!(event_names(&h.read()), ["WATCHDOG"]);
    }

    #[test]
    fn suspend_and_wakeup() {
        let mut h = H::negotiated();
        h.m.wakeup_support = true;
        assert_eq!(
            h.err("system_wakeup", json!({})),
            generic("Unable to wake up: guest is not in suspended state")
        );
        h.mon
            .handle(MachineEvent::GuestSuspend, &mut h.m)
            .expect("suspend");
        assert_eq!(event_names(&h.read()), ["SUSPEND"]);
        assert_eq!(
            h.ok("cont", json!({})),
            json!({}),
            "cont is a no-op in suspended"
        );
        assert_eq!(h.status(), "suspended");
        let out = h.send(r#"{"execute":"system_wakeup"}"#);
        assert_eq!(event_names(&out), ["WAKEUP"]);
        assert_eq!(h.status(), "running");
    }

    #[test]
    fn hmp_commands() {
        let mut h = H::negotiated();
        h.m.name = Some("vm1".into());
        assert_eq!(h.hmp("info status"), "VM status: running\r\n");
        assert_eq!(h.hmp("  info   status  "), "VM status: running\r\n");
        assert_eq!(h.hmp("info version"), "9.2.0\r\n");
        assert_eq!(h.hmp("info name"), "vm1\r\n");
        assert_eq!(
            h.hmp("info uuid"),
            "00000000-0000-0000-0000-000000000000\r\n"
        );
        assert_eq!(h.hmp("info kvm"), "kvm support: enabled\r\n");
        assert_eq!(
            h.hmp("info cpus"),
            "* CPU #0: thread_id=1000\r\n  CPU #1: thread_id=1001\r\n"
        );
        assert_eq!(h.hmp(""), "");
        assert_eq!(h.hmp("foo"), "unknown command: 'foo'\r\n");
        assert_eq!(h.hmp("info foo"), "unknown command: 'info foo'\r\n");
        assert_eq!(
            h.hmp("stop extra"),
            "stop|s: extraneous characters at the end of line\r\nTry \"help stop\" for more information\r\n"
        );
        assert_eq!(
            h.hmp("info status x"),
            "status: extraneous characters at the end of line\r\nTry \"help info status\" for more information\r\n"
        );
        assert_eq!(h.hmp("help stop"), "stop|s  -- stop emulation\r\n");
        assert_eq!(
            h.hmp("help info status"),
            "info status  -- show the current VM status (running|paused)\r\n"
        );
        assert!(h
            .hmp("info")
            .contains("info version  -- show the version of QEMU\r\n"));
        assert_eq!(h.hmp("help nosuch"), "unknown command: 'nosuch'\r\n");
        // Run control through HMP raises the same events, before the reply.
        let out = h
            .send(r#"{"execute":"human-monitor-command","arguments":{"command-line":"s"},"id":1}"#);
        assert_eq!(event_names(&out), ["STOP"]);
        assert_eq!(out[1], json!({"return": "", "id": 1}));
        assert_eq!(h.hmp("info status"), "VM status: paused\r\n");
        let out =
            h.send(r#"{"execute":"human-monitor-command","arguments":{"command-line":"cont"}}"#);
        assert_eq!(event_names(&out), ["RESUME"]);
        let out = h.send(
            r#"{"execute":"human-monitor-command","arguments":{"command-line":"system_reset"}}"#,
        );
        assert_eq!(event_names(&out), ["RESET"]);
        assert_eq!(
            h.hmp("system_wakeup"),
            "Error: wake-up from suspend is not supported by this guest\r\n"
        );
        assert_eq!(
            h.err(
                "human-monitor-command",
                json!({"command-line": "info status", "cpu-index": 5})
            ),
            generic("Parameter 'cpu-index' expects a CPU number")
        );
        assert_eq!(
            h.ok(
                "human-monitor-command",
                json!({"command-line": "info cpus", "cpu-index": 1})
            ),
            json!("  CPU #0: thread_id=1000\r\n* CPU #1: thread_id=1001\r\n")
        );
        let out =
            h.send(r#"{"execute":"human-monitor-command","arguments":{"command-line":"quit"}}"#);
        assert_eq!(event_names(&out), ["SHUTDOWN"]);
        assert!(h.m.calls.contains(&Call::Exit(0)));
    }

    #[test]
    fn query_commands_lists_exactly_the_registry() {
        let mut h = H::negotiated();
        let listed: BTreeSet<String> = h
            .ok("query-commands", json!({}))
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let registered: BTreeSet<String> = h
            .mon
            .registry()
            .command_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(listed, registered);
        let core: BTreeSet<String> = crate::commands::CORE_COMMANDS
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(listed, core);
    }

    #[test]
    fn query_qmp_schema_covers_every_command_and_event() {
        let mut h = H::negotiated();
        let schema = h.ok("query-qmp-schema", json!({}));
        let entries = schema.as_array().cloned().unwrap_or_default();
        let find = |name: &str| entries.iter().find(|e| e["name"] == name).cloned();
        for name in h.mon.registry().command_names() {
            let e = find(name).unwrap_or_else(|| panic!("{name} missing from the schema"));
            assert_eq!(e["meta-type"], "command", "{name}");
            let args = find(e["arg-type"].as_str().unwrap_or(""))
                .unwrap_or_else(|| panic!("{name}: arg type"));
            assert_eq!(args["meta-type"], "object", "{name}");
            assert!(
                find(e["ret-type"].as_str().unwrap_or("")).is_some(),
                "{name}: ret type"
            );
        }
        for name in h.mon.registry().event_names() {
            let e = find(name).unwrap_or_else(|| panic!("{name} missing from the schema"));
            assert_eq!(e["meta-type"], "event");
        }
        // The argument type is the registered struct.
        let sa = find("set-action").unwrap_or_default();
        let args = find(sa["arg-type"].as_str().unwrap_or("")).unwrap_or_default();
        let members: Vec<Value> = args["members"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = members.iter().filter_map(|m| m["name"].as_str()).collect();
        assert_eq!(names, ["reboot", "shutdown", "panic", "watchdog"]);
        assert!(
            members
                .iter()
                .all(|m| m.get("default") == Some(&Value::Null)),
            "all optional"
        );
        let panic_ty = find(members[2]["type"].as_str().unwrap_or("")).unwrap_or_default();
        assert_eq!(
            panic_ty["values"],
            json!(["pause", "shutdown", "exit-failure", "none"])
        );
        // Commands without arguments and without data share the empty object "0".
        let qs = find("query-status").unwrap_or_default();
        assert_eq!(qs["arg-type"], "0");
        assert_eq!(find("stop").unwrap_or_default()["ret-type"], "0");
        let hmp = find("human-monitor-command").unwrap_or_default();
        assert_eq!(hmp["ret-type"], "str");
        assert_eq!(hmp["features"], json!(["savevm-monitor-nodes"]));
        // Type names are masked.
        assert!(entries.iter().all(|e| e["name"] != "StatusInfo"));
    }

    crate::qmp_struct! {
        #[derive(Debug)]
        struct EchoArgs {
            text: String = "text",
            times: Option<u32> = "times",
        }
    }

    #[test]
    fn vmm_commands_plug_in() {
        let mut h = H::negotiated();
        let r = h.mon.registry_mut();
        r.register("x-echo", |ctx: &mut CommandContext<'_>, a: EchoArgs| {
            // A vmm command reaches its concrete machine.
            let fake = ctx
                .machine
                .as_any_mut()
                .downcast_mut::<FakeMachine>()
                .ok_or_else(|| QmpError::generic("not the fake"))?;
            fake.calls.push(Call::PowerButton);
            Ok::<String, QmpError>(a.text.repeat(a.times.unwrap_or(1) as usize))
        })
        .expect("new name")
        .allow_oob();
        assert!(matches!(
            h.mon
                .registry_mut()
                .register("x-echo", |_, _: Empty| Ok::<_, QmpError>(Empty {})),
            Err(Error::DuplicateCommand(_))
        ));
        h.mon
            .registry_mut()
            .register("x-off", |_, _: Empty| Ok::<_, QmpError>(Empty {}))
            .expect("new")
            .set_enabled(false);
        assert_eq!(
            h.ok("x-echo", json!({"text": "ab", "times": 2})),
            json!("abab")
        );
        assert_eq!(h.m.calls, vec![Call::PowerButton]);
        assert_eq!(
            h.err("x-echo", json!({"times": 2})),
            generic("Parameter 'text' is missing")
        );
        assert_eq!(
            h.err("x-echo", json!({"text": "a", "times": -1})),
            generic("Parameter 'times' expects uint32_t")
        );
        assert_eq!(
            h.err("x-off", json!({})),
            (
                "CommandNotFound".into(),
                "The command x-off has been disabled for this instance".into()
            )
        );
        let schema = h.ok("query-qmp-schema", json!({}));
        let echo = schema
            .as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == "x-echo").cloned())
            .unwrap_or_default();
        assert_eq!(echo["allow-oob"], true);
        assert_eq!(echo["ret-type"], "str");
    }

    #[test]
    fn exec_oob_after_enabling_oob() {
        let mut h = H::new();
        h.mon
            .registry_mut()
            .register("x-ping", |_, _: Empty| Ok::<_, QmpError>(Empty {}))
            .expect("new")
            .allow_oob();
        h.send(r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#);
        assert_eq!(
            h.send(r#"{"exec-oob":"query-status","id":2}"#),
            vec![
                json!({"id": 2, "error": {"class": "GenericError", "desc": "The command query-status does not support OOB"}})
            ]
        );
        assert_eq!(
            h.send(r#"{"exec-oob":"x-ping","id":3}"#),
            vec![json!({"return": {}, "id": 3})]
        );
        assert_eq!(
            h.send(r#"{"exec-oob":"x-ping","execute":"x-ping"}"#)[0]["error"]["desc"],
            "QMP input member 'execute' clashes with 'exec-oob'"
        );
        // In-band commands still work.
        assert_eq!(h.status(), "running");
    }

    #[test]
    fn initial_prelaunch_and_set_runstate() {
        let mut h = H::with_config(MonitorConfig::new(VersionInfo::new(9, 2, 0, "")));
        h.send(r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(
            h.ok("query-status", json!({})),
            json!({"running": false, "status": "prelaunch"})
        );
        assert_eq!(
            h.ok("stop", json!({})),
            json!({}),
            "stop in prelaunch: no event"
        );
        h.mon
            .set_runstate(RunState::InMigrate)
            .expect("prelaunch -> inmigrate");
        assert!(
            h.mon.set_runstate(RunState::Debug).is_err(),
            "not in the table"
        );
        assert_eq!(h.ok("cont", json!({})), json!({}));
        assert_eq!(h.status(), "inmigrate");
    }
}
