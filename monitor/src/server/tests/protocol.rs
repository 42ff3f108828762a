//! The wire protocol: greeting, negotiation mode, `id` echoing, envelope and argument
//! errors, split and batched input, and `exec-oob`.

use super::*;

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
