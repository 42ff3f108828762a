//! Tests of the run-state machine on plain values: the state and cause enums, the whole
//! 16x16 transition table against the spec, and every plan (stop, cont, reset, shutdown,
//! quit, panic, watchdog, suspend, wake-up) with its steps and events in order.

use super::*;
use serde_json::json;

#[test]
fn sixteen_states_in_wire_order() {
    assert_eq!(
        RunState::VALUES,
        &[
            "debug",
            "inmigrate",
            "internal-error",
            "io-error",
            "paused",
            "postmigrate",
            "prelaunch",
            "finish-migrate",
            "restore-vm",
            "running",
            "save-vm",
            "shutdown",
            "suspended",
            "watchdog",
            "guest-panicked",
            "colo"
        ]
    );
}

/// The spec's table, written out independently of `TRANSITIONS`, so a typo in either
/// shows up.
fn spec_table() -> Vec<(RunState, Vec<RunState>)> {
    let names = |s: &str| -> Vec<RunState> {
        s.split(", ")
            .map(|n| RunState::from_wire(n).unwrap_or_else(|| panic!("bad name {n}")))
            .collect()
    };
    vec![
        (S::Prelaunch, names("inmigrate, suspended, running, finish-migrate")),
        (S::Debug, names("running, finish-migrate, prelaunch, suspended")),
        (
            S::InMigrate,
            names("internal-error, io-error, paused, running, shutdown, suspended, watchdog, guest-panicked, finish-migrate, prelaunch, postmigrate, colo"),
        ),
        (S::InternalError, names("paused, finish-migrate, prelaunch")),
        (S::IoError, names("running, finish-migrate, prelaunch")),
        (S::Paused, names("running, finish-migrate, postmigrate, prelaunch, colo, suspended")),
        (S::PostMigrate, names("running, finish-migrate, prelaunch")),
        (
            S::FinishMigrate,
            names("running, paused, postmigrate, prelaunch, colo, internal-error, io-error, shutdown, suspended, watchdog, guest-panicked"),
        ),
        (S::RestoreVm, names("running, prelaunch, suspended")),
        (S::Colo, names("running, prelaunch, shutdown")),
        (
            S::Running,
            names("debug, internal-error, io-error, paused, finish-migrate, restore-vm, save-vm, shutdown, watchdog, guest-panicked, colo, suspended"),
        ),
        (S::SaveVm, names("running, suspended")),
        (S::Shutdown, names("paused, finish-migrate, prelaunch, colo")),
        (
            S::Suspended,
            names("running, finish-migrate, prelaunch, colo, paused, save-vm, restore-vm, shutdown"),
        ),
        (S::Watchdog, names("running, finish-migrate, prelaunch, colo")),
        (S::GuestPanicked, names("running, finish-migrate, prelaunch")),
    ]
}

#[test]
fn every_pair_of_the_16x16_matches_the_spec() {
    let table = spec_table();
    let mut allowed = 0;
    for &from in RunState::ALL {
        let row = table
            .iter()
            .find(|(f, _)| *f == from)
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        for &to in RunState::ALL {
            let want = from == to || row.contains(&to);
            let got = transition(from, to);
            assert_eq!(got.is_ok(), want, "{from} -> {to}");
            if let Err(e) = got {
                assert_eq!(
                    e.to_string(),
                    format!("invalid runstate transition: '{from}' -> '{to}'")
                );
            }
            if from != to && want {
                allowed += 1;
            }
        }
    }
    assert_eq!(allowed, 85);
    assert_eq!(TRANSITIONS.len(), 85);
}

#[test]
fn shutdown_cause_guest_flag() {
    let guest: Vec<&str> = ShutdownCause::ALL
        .iter()
        .filter(|c| c.is_guest())
        .map(|c| c.as_str())
        .collect();
    assert_eq!(
        guest,
        [
            "guest-shutdown",
            "guest-reset",
            "guest-panic",
            "subsystem-reset",
            "snapshot-load"
        ]
    );
}

fn vm(state: RunState, actions: Actions) -> VmState {
    let mut v = VmState::new(state, actions);
    v.autostart = true;
    v
}

fn run(v: &mut VmState, p: &Plan) {
    for s in &p.steps {
        v.apply(s)
            .unwrap_or_else(|e| panic!("plan step refused: {e}"));
    }
}

#[test]
fn stop_and_cont() {
    let mut v = vm(S::Running, Actions::default());
    let p = v.plan_stop().expect("stop");
    assert_eq!(p.events(), vec![&CoreEvent::Stop]);
    assert_eq!(p.machine_ops(), vec![MachineOp::PauseVcpus]);
    run(&mut v, &p);
    assert_eq!(v.state(), S::Paused);
    // A second stop: nothing.
    assert_eq!(v.plan_stop().expect("stop"), Plan::default());
    let p = v.plan_cont().expect("cont");
    assert_eq!(p.events(), vec![&CoreEvent::Resume]);
    assert_eq!(p.machine_ops(), vec![MachineOp::ResumeVcpus]);
    run(&mut v, &p);
    assert_eq!(
        v.status(),
        StatusInfo {
            running: true,
            status: S::Running
        }
    );
    // cont while running: no event.
    assert_eq!(v.plan_cont().expect("cont"), Plan::default());
}

#[test]
fn stop_in_prelaunch_changes_nothing() {
    let v = vm(S::Prelaunch, Actions::default());
    assert_eq!(v.plan_stop().expect("stop"), Plan::default());
}

#[test]
fn stop_and_cont_in_inmigrate_toggle_autostart() {
    let mut v = vm(S::InMigrate, Actions::default());
    let p = v.plan_stop().expect("stop");
    assert_eq!(p.steps, vec![Step::Autostart(false)]);
    run(&mut v, &p);
    assert!(!v.autostart());
    let p = v.plan_cont().expect("cont");
    assert_eq!(p.steps, vec![Step::Autostart(true)]);
    run(&mut v, &p);
    assert!(v.autostart());
    assert_eq!(v.state(), S::InMigrate);
}

#[test]
fn cont_refusals() {
    for s in [S::Shutdown, S::InternalError] {
        assert_eq!(
            vm(s, Actions::default())
                .plan_cont()
                .err()
                .map(|e| e.desc)
                .as_deref(),
            Some("Resetting the Virtual Machine is required")
        );
    }
    assert_eq!(
        vm(S::FinishMigrate, Actions::default())
            .plan_cont()
            .err()
            .map(|e| e.desc)
            .as_deref(),
        Some("Migration is not finalized yet")
    );
    assert_eq!(
        vm(S::Suspended, Actions::default()).plan_cont().ok(),
        Some(Plan::default())
    );
}

#[test]
fn cont_is_allowed_from_every_other_state() {
    for &s in RunState::ALL {
        let v = vm(s, Actions::default());
        match s {
            S::Shutdown | S::InternalError | S::FinishMigrate => {
                assert!(v.plan_cont().is_err())
            }
            _ => assert!(v.plan_cont().is_ok(), "cont from {s}"),
        }
    }
}

#[test]
fn stopped_from_suspended_returns_to_suspended() {
    let mut v = vm(S::Suspended, Actions::default());
    let p = v.plan_stop().expect("stop");
    assert_eq!(p.events(), vec![&CoreEvent::Stop]);
    run(&mut v, &p);
    assert_eq!(v.state(), S::Paused);
    let p = v.plan_cont().expect("cont");
    run(&mut v, &p);
    assert_eq!(v.state(), S::Suspended);
    assert!(!p.machine_ops().contains(&MachineOp::ResumeVcpus));
}

#[test]
fn system_reset_while_paused_goes_to_prelaunch() {
    let mut v = vm(S::Paused, Actions::default());
    let p = v
        .plan_reset_request(ShutdownCause::HostQmpSystemReset)
        .expect("reset");
    assert_eq!(
        p.events(),
        vec![&CoreEvent::Reset(ShutdownCause::HostQmpSystemReset)]
    );
    assert_eq!(
        p.machine_ops(),
        vec![MachineOp::Reset(ShutdownCause::HostQmpSystemReset)]
    );
    run(&mut v, &p);
    assert_eq!(v.state(), S::Prelaunch);
    let p = v.plan_cont().expect("cont");
    run(&mut v, &p);
    assert_eq!(v.state(), S::Running);
}

#[test]
fn guest_reboot_keeps_running() {
    let mut v = vm(S::Running, Actions::default());
    let p = v
        .plan_reset_request(ShutdownCause::GuestReset)
        .expect("reset");
    assert_eq!(
        p.events(),
        vec![&CoreEvent::Reset(ShutdownCause::GuestReset)]
    );
    run(&mut v, &p);
    assert_eq!(v.state(), S::Running);
}

#[test]
fn subsystem_reset_emits_nothing_and_ignores_reboot_action() {
    let v = vm(S::Running, Actions::from_cli(true, false));
    let p = v
        .plan_reset_request(ShutdownCause::SubsystemReset)
        .expect("reset");
    assert!(p.events().is_empty());
    assert_eq!(
        p.machine_ops(),
        vec![MachineOp::Reset(ShutdownCause::SubsystemReset)]
    );
}

#[test]
fn no_reboot_turns_resets_into_shutdowns() {
    // -no-reboot: guest reboot and system_reset both become SHUTDOWN with their cause.
    let v = vm(S::Running, Actions::from_cli(true, false));
    for cause in [ShutdownCause::GuestReset, ShutdownCause::HostQmpSystemReset] {
        let p = v.plan_reset_request(cause).expect("reset");
        assert_eq!(p.events(), vec![&CoreEvent::Shutdown(cause)]);
        assert_eq!(p.exit_status(), Some(0));
    }
    // -no-reboot -no-shutdown: SHUTDOWN then STOP, state shutdown.
    let mut v = vm(S::Running, Actions::from_cli(true, true));
    let p = v
        .plan_reset_request(ShutdownCause::GuestReset)
        .expect("reset");
    assert_eq!(
        p.events(),
        vec![
            &CoreEvent::Shutdown(ShutdownCause::GuestReset),
            &CoreEvent::Stop
        ]
    );
    assert_eq!(p.exit_status(), None);
    run(&mut v, &p);
    assert_eq!(v.state(), S::Shutdown);
}

#[test]
fn guest_poweroff_with_no_shutdown_then_reset_then_cont() {
    let mut v = vm(S::Running, Actions::from_cli(false, true));
    let p = v
        .plan_shutdown_request(ShutdownCause::GuestShutdown)
        .expect("shutdown");
    assert_eq!(
        p.events(),
        vec![
            &CoreEvent::Shutdown(ShutdownCause::GuestShutdown),
            &CoreEvent::Stop
        ]
    );
    run(&mut v, &p);
    assert_eq!(v.state(), S::Shutdown);
    assert!(v.plan_cont().is_err());
    let p = v
        .plan_reset_request(ShutdownCause::HostQmpSystemReset)
        .expect("reset");
    assert_eq!(
        p.events(),
        vec![&CoreEvent::Reset(ShutdownCause::HostQmpSystemReset)]
    );
    run(&mut v, &p);
    assert_eq!(v.state(), S::Prelaunch);
    let p = v.plan_cont().expect("cont");
    assert_eq!(p.events(), vec![&CoreEvent::Resume]);
    run(&mut v, &p);
    assert_eq!(v.state(), S::Running);
}

#[test]
fn guest_poweroff_default_exits() {
    let v = vm(S::Running, Actions::default());
    let p = v
        .plan_shutdown_request(ShutdownCause::GuestShutdown)
        .expect("shutdown");
    assert_eq!(
        p.events(),
        vec![&CoreEvent::Shutdown(ShutdownCause::GuestShutdown)]
    );
    assert_eq!(p.exit_status(), Some(0));
}

#[test]
fn quit_and_signals_ignore_shutdown_pause() {
    let v = vm(S::Running, Actions::from_cli(false, true));
    let p = v.plan_quit().expect("quit");
    assert_eq!(
        p.events(),
        vec![&CoreEvent::Shutdown(ShutdownCause::HostQmpQuit)]
    );
    assert_eq!(p.exit_status(), Some(0));
    let p = v
        .plan_shutdown_request(ShutdownCause::HostSignal)
        .expect("signal");
    assert_eq!(p.exit_status(), Some(0));
}

#[test]
fn panic_matrix() {
    use GuestPanicAction as G;
    let info =
        Some(json!({"type": "hyper-v", "arg1": 1, "arg2": 2, "arg3": 3, "arg4": 4, "arg5": 5}));
    // (panic, shutdown) -> (GUEST_PANICKED action, follow-up events, final state, exit)
    let cases = [
        (
            PanicAction::Pause,
            ShutdownAction::Poweroff,
            G::Pause,
            vec![CoreEvent::Stop],
            S::GuestPanicked,
            None,
        ),
        (
            PanicAction::Pause,
            ShutdownAction::Pause,
            G::Pause,
            vec![CoreEvent::Stop],
            S::GuestPanicked,
            None,
        ),
        (
            PanicAction::Shutdown,
            ShutdownAction::Pause,
            G::Pause,
            vec![CoreEvent::Stop],
            S::GuestPanicked,
            None,
        ),
        (
            PanicAction::Shutdown,
            ShutdownAction::Poweroff,
            G::Poweroff,
            vec![
                CoreEvent::Stop,
                CoreEvent::Shutdown(ShutdownCause::GuestPanic),
            ],
            S::GuestPanicked,
            Some(0),
        ),
        (
            PanicAction::ExitFailure,
            ShutdownAction::Poweroff,
            G::Poweroff,
            vec![
                CoreEvent::Stop,
                CoreEvent::Shutdown(ShutdownCause::GuestPanic),
            ],
            S::GuestPanicked,
            Some(1),
        ),
        (
            PanicAction::ExitFailure,
            ShutdownAction::Pause,
            G::Poweroff,
            vec![
                CoreEvent::Stop,
                CoreEvent::Shutdown(ShutdownCause::GuestPanic),
            ],
            S::GuestPanicked,
            None,
        ),
        (
            PanicAction::None,
            ShutdownAction::Poweroff,
            G::Run,
            vec![],
            S::Running,
            None,
        ),
        (
            PanicAction::None,
            ShutdownAction::Pause,
            G::Run,
            vec![],
            S::Running,
            None,
        ),
    ];
    for (panic, shutdown, action, rest, state, exit) in cases {
        let actions = Actions {
            panic,
            shutdown,
            ..Actions::default()
        };
        let mut v = vm(S::Running, actions);
        let p = v.plan_guest_panic(info.clone()).expect("panic");
        let mut want = vec![CoreEvent::GuestPanicked {
            action,
            info: info.clone(),
        }];
        want.extend(rest);
        assert_eq!(
            p.events(),
            want.iter().collect::<Vec<_>>(),
            "{panic} / {shutdown}"
        );
        assert_eq!(p.exit_status(), exit, "{panic} / {shutdown}");
        run(&mut v, &p);
        assert_eq!(v.state(), state, "{panic} / {shutdown}");
    }
}

#[test]
fn watchdog_actions() {
    use WatchdogAction as W;
    let cases: Vec<(W, Vec<CoreEvent>, Vec<MachineOp>, RunState)> = vec![
        (
            W::Reset,
            vec![CoreEvent::Reset(ShutdownCause::GuestReset)],
            vec![MachineOp::Reset(ShutdownCause::GuestReset)],
            S::Running,
        ),
        (
            W::Shutdown,
            vec![CoreEvent::Powerdown],
            vec![MachineOp::PowerButton],
            S::Running,
        ),
        (W::Poweroff, vec![], vec![MachineOp::Exit(0)], S::Running),
        (
            W::Pause,
            vec![CoreEvent::Stop],
            vec![MachineOp::PauseVcpus],
            S::Watchdog,
        ),
        (W::Debug, vec![], vec![MachineOp::WatchdogDebug], S::Running),
        (W::None, vec![], vec![], S::Running),
        (W::InjectNmi, vec![], vec![MachineOp::InjectNmi], S::Running),
    ];
    for (action, events, ops, state) in cases {
        let mut v = vm(
            S::Running,
            Actions {
                watchdog: action,
                ..Actions::default()
            },
        );
        let p = v.plan_watchdog_expired().expect("watchdog");
        let mut want = vec![CoreEvent::Watchdog(action)];
        want.extend(events);
        assert_eq!(p.events(), want.iter().collect::<Vec<_>>(), "{action}");
        assert_eq!(p.machine_ops(), ops, "{action}");
        run(&mut v, &p);
        assert_eq!(v.state(), state, "{action}");
    }
    // watchdog=reset with -no-reboot: SHUTDOWN(guest-reset).
    let v = vm(S::Running, Actions::from_cli(true, false));
    let p = v.plan_watchdog_expired().expect("watchdog");
    assert_eq!(
        p.events(),
        vec![
            &CoreEvent::Watchdog(W::Reset),
            &CoreEvent::Shutdown(ShutdownCause::GuestReset)
        ]
    );
}

#[test]
fn suspend_and_wakeup() {
    let mut v = vm(S::Running, Actions::default());
    assert_eq!(
        v.plan_wakeup(true).err().map(|e| e.desc).as_deref(),
        Some("Unable to wake up: guest is not in suspended state")
    );
    let p = v.plan_suspend().expect("suspend");
    assert_eq!(p.events(), vec![&CoreEvent::Suspend]);
    run(&mut v, &p);
    assert_eq!(v.state(), S::Suspended);
    assert_eq!(
        v.plan_wakeup(false).err().map(|e| e.desc).as_deref(),
        Some("wake-up from suspend is not supported by this guest")
    );
    let p = v.plan_wakeup(true).expect("wakeup");
    assert_eq!(p.events(), vec![&CoreEvent::Wakeup]);
    run(&mut v, &p);
    assert_eq!(v.state(), S::Running);
    // Suspend from a stopped state is not in the table.
    assert!(vm(S::Shutdown, Actions::default()).plan_suspend().is_err());
}

#[test]
fn a_refused_transition_is_an_error_not_a_change() {
    let mut v = vm(S::SaveVm, Actions::default());
    // save-vm -> prelaunch is not in the table: the reset is refused as a whole.
    assert!(v
        .plan_reset_request(ShutdownCause::HostQmpSystemReset)
        .is_err());
    assert!(v.set_state(S::Paused).is_err());
    assert_eq!(v.state(), S::SaveVm);
}
