//! Run control through the monitor: stop/cont, reset, power-down, quit, guest panic,
//! suspend and wake-up, and the initial `prelaunch` state, with their events in order.

use super::*;

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
