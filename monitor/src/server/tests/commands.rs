//! The core commands through the monitor: machine queries, `set-action`, HMP, and the
//! registry as `query-commands` and `query-qmp-schema` show it, including commands the
//! vmm plugs in.

use super::*;

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
    let out =
        h.send(r#"{"execute":"human-monitor-command","arguments":{"command-line":"s"},"id":1}"#);
    assert_eq!(event_names(&out), ["STOP"]);
    assert_eq!(out[1], json!({"return": "", "id": 1}));
    assert_eq!(h.hmp("info status"), "VM status: paused\r\n");
    let out = h.send(r#"{"execute":"human-monitor-command","arguments":{"command-line":"cont"}}"#);
    assert_eq!(event_names(&out), ["RESUME"]);
    let out = h
        .send(r#"{"execute":"human-monitor-command","arguments":{"command-line":"system_reset"}}"#);
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
    let out = h.send(r#"{"execute":"human-monitor-command","arguments":{"command-line":"quit"}}"#);
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
