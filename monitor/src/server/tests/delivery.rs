//! Event delivery: throttling (global and per key), which sessions receive events, and
//! slow readers whose output overflows.

use super::*;

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
