//! The main thread's half of a migration: starting one (from `migrate` and
//! `migrate-incoming`), cancelling it, and acting on what its thread reports. Status
//! changes go through [`set_status`], which emits MIGRATION when the `events`
//! capability is on, as QEMU does.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use migration::protocol::MachineConfig;
use migration::transport::{self, MigrationUri};
use monitor::{MachineEvent, Monitor, QmpError, RunState};
use serde_json::{json, Value};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use crate::machine::Machine;
use crate::migrate::incoming::{self, IncomingChannels, IncomingReport};
use crate::migrate::source::{self, Channels, Report, Source};
use crate::migrate::{throttle, IncomingRun, MigrationReport, OutgoingRun};
use crate::qmp_migration::types::MigrationStatus;
use crate::ControlEvent;

/// Raises a QMP event (a handler's event bus, or the monitor itself).
pub type Emit<'a> = &'a mut dyn FnMut(&str, Value);

/// QEMU's refusal while a migration runs.
pub const IN_PROGRESS: &str = "There's a migration process in progress";

/// Moves to `status`, with MIGRATION if the client asked for events.
pub fn set_status(machine: &mut Machine, status: MigrationStatus, emit: Emit<'_>) {
    let ctl = &mut machine.migration;
    if ctl.status == status {
        return;
    }
    ctl.status = status;
    if ctl.settings.events() {
        emit("MIGRATION", json!({ "status": status }));
    }
}

fn machine_config(
    machine: &Machine,
) -> Result<(MachineConfig, devices::GuestMemoryMmap), QmpError> {
    let vm = machine
        .current_vm()
        .ok_or_else(|| QmpError::generic("the machine has no VM to migrate"))?;
    let mem = vm.memory().clone();
    let cfg = MachineConfig {
        ram: mem
            .iter()
            .map(|r| (r.start_addr().raw_value(), r.len()))
            .collect(),
        vcpus: vm.vcpus().len() as u32,
        devices: vm.state_names(),
    };
    Ok((cfg, mem))
}

/// `migrate`: checks, turns on dirty logging and starts the thread (status setup).
pub fn start_outgoing(
    machine: &mut Machine,
    runstate: RunState,
    uri: MigrationUri,
    fd: Option<OwnedFd>,
    emit: Emit<'_>,
) -> Result<(), QmpError> {
    if machine.migration.is_active() {
        return Err(QmpError::generic(IN_PROGRESS));
    }
    if runstate == RunState::InMigrate {
        return Err(QmpError::generic(
            "Guest is waiting for an incoming migration",
        ));
    }
    let settings = &machine.migration.settings;
    let extra = if settings.multifd() {
        if !uri.supports_multi_channels() {
            return Err(QmpError::generic(
                "Migration requires multi-channel URIs (e.g. tcp)",
            ));
        }
        usize::from(settings.multifd_channels())
    } else {
        0
    };
    let (config, mem) = machine_config(machine)?;
    let vm = machine
        .current_vm()
        .ok_or_else(|| QmpError::generic("the machine has no VM to migrate"))?;
    let vm_fd = vm.vm_fd().clone();
    crate::dirty_log::register_slots(&vm_fd, &mem, true).map_err(QmpError::generic)?;

    let ctl = &mut machine.migration;
    // A destination whose incoming migration completed may migrate on.
    ctl.incoming = None;
    ctl.id += 1;
    let id = ctl.id;
    let live = Arc::new(source::Live {
        max_bandwidth: ctl.settings.max_bandwidth().unwrap_or(0).into(),
        limits: Mutex::new(ctl.settings.limits()),
    });
    let run = OutgoingRun {
        started: Instant::now(),
        active_at: None,
        ended_at: None,
        downtime: None,
        error: None,
        cancelled: Arc::new(AtomicBool::new(false)),
        cancel_hook: Arc::new(Mutex::new(None)),
        stats: Arc::new(Mutex::new(source::Stats::default())),
        live: live.clone(),
        pending: None,
        stopped_at: None,
        state_before: None,
        throttle: None,
        thread: None,
        tid: Arc::new(std::sync::atomic::AtomicI32::new(0)),
    };
    let src = Source {
        mem,
        vm_fd,
        config,
        live,
        stats: run.stats.clone(),
        cancelled: run.cancelled.clone(),
    };
    let hook = run.cancel_hook.clone();
    let connect = Box::new(move || -> Result<Channels, String> {
        let mut out = transport::connect(&uri, fd).map_err(|e| e.to_string())?;
        *hook.lock().unwrap_or_else(|p| p.into_inner()) = Some(out.canceller());
        let extra = out.connect_extra(extra).map_err(|e| e.to_string())?;
        let main = std::mem::replace(&mut out.writer, Box::new(std::io::sink()));
        Ok(Channels {
            main,
            extra,
            finish: Box::new(move || out.finish().map_err(|e| e.to_string())),
        })
    });
    let tx = machine.events_sender();
    let tid = run.tid.clone();
    let thread = std::thread::Builder::new()
        .name("live_migration".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            tid.store(unsafe { libc::gettid() }, Ordering::Release);
            let report = |r: Report| {
                let _ = tx.send(ControlEvent::Migration {
                    id,
                    report: MigrationReport::Out(r),
                });
            };
            let r = src.run(connect, &report);
            report(Report::Ended(r));
        })
        .map_err(|e| QmpError::generic(format!("cannot start the migration thread: {e}")))?;
    let mut run = run;
    run.thread = Some(thread);
    machine.migration.out = Some(run);
    set_status(machine, MigrationStatus::Setup, emit);
    Ok(())
}

/// `migrate_cancel`: the thread stops at its next step and reports the end.
pub fn cancel(machine: &mut Machine, emit: Emit<'_>) {
    if !machine.migration.is_active() || machine.migration.out.is_none() {
        return;
    }
    if let Some(run) = &mut machine.migration.out {
        run.cancelled.store(true, Ordering::Release);
        if let Some(c) = run
            .cancel_hook
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            c.cancel();
        }
        // A switchover held for migrate-continue is let go: the thread sees it refused.
        run.pending = None;
    }
    set_status(machine, MigrationStatus::Cancelling, emit);
}

/// The switchover's second half: take the device state and give up the disks. After
/// pre-switchover the status is `device`, as QEMU's (which shows it only then).
fn hand_over(machine: &mut Machine, reply: mpsc::Sender<source::SwitchoverReply>, emit: Emit<'_>) {
    if machine.migration.status == MigrationStatus::PreSwitchover {
        set_status(machine, MigrationStatus::Device, emit);
    }
    let stopped_at = machine
        .migration
        .out
        .as_ref()
        .and_then(|r| r.stopped_at)
        .unwrap_or_else(Instant::now);
    let state = match machine.current_vm() {
        Some(vm) => vm.quiesce().and_then(|()| vm.save_state()),
        None => Err("the machine has no VM".into()),
    };
    if state.is_ok() {
        machine.release_image_locks();
    }
    let _ = reply.send(state.map(|s| (s, stopped_at)));
}

/// `migrate-continue`: lets a switchover held by pause-before-switchover go on.
pub fn continue_switchover(
    machine: &mut Machine,
    state: MigrationStatus,
    emit: Emit<'_>,
) -> Result<(), QmpError> {
    if machine.migration.status != state {
        return Err(QmpError::generic(format!(
            "Migration not in expected state: {}",
            status_name(machine.migration.status)
        )));
    }
    let pending = machine
        .migration
        .out
        .as_mut()
        .and_then(|r| r.pending.take());
    match pending {
        Some(reply) => {
            hand_over(machine, reply, emit);
            Ok(())
        }
        None => Err(QmpError::generic(format!(
            "Migration not in expected state: {}",
            status_name(machine.migration.status)
        ))),
    }
}

fn status_name(s: MigrationStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `migrate-incoming` (and `-incoming URI`): listens now, loads in a thread.
pub fn start_incoming(
    machine: &mut Machine,
    uri: MigrationUri,
    fd: Option<OwnedFd>,
    exit_on_error: bool,
    emit: Emit<'_>,
) -> Result<(), QmpError> {
    if machine.migration.incoming.is_some() {
        return Err(QmpError::generic(
            "The incoming migration has already been started",
        ));
    }
    let listener = transport::listen(&uri, fd).map_err(|e| QmpError::generic(e.to_string()))?;
    let (config, mem) = machine_config(machine)?;
    let ctl = &mut machine.migration;
    ctl.settings.set_incoming_started(true);
    ctl.refresh_live();
    ctl.id += 1;
    let id = ctl.id;
    let channels = ctl.incoming_channels.clone();
    ctl.incoming = Some(IncomingRun {
        exit_on_error,
        address: listener.local_address(),
    });
    let tx = machine.events_sender();
    std::thread::Builder::new()
        .name("mig-incoming".into())
        .spawn(move || {
            let report = |r: IncomingReport| {
                let _ = tx.send(ControlEvent::Migration {
                    id,
                    report: MigrationReport::In(r),
                });
            };
            let r = (|| -> Result<_, String> {
                let mut inc = listener.accept().map_err(|e| e.to_string())?;
                report(IncomingReport::Active);
                let n = channels.load(Ordering::Acquire) as usize;
                let extra = if n > 0 {
                    inc.accept_extra(n).map_err(|e| e.to_string())?
                } else {
                    Vec::new()
                };
                let main = std::mem::replace(&mut inc.reader, Box::new(std::io::empty()));
                incoming::load(&mem, &config, IncomingChannels { main, extra })
            })();
            report(IncomingReport::Done(r));
        })
        .map_err(|e| QmpError::generic(format!("cannot start the migration thread: {e}")))?;
    set_status(machine, MigrationStatus::Setup, emit);
    Ok(())
}

/// Acts on a report of migration `id`; `Some(status)` when the process must end.
pub fn on_report(
    id: u64,
    report: MigrationReport,
    machine: &mut Machine,
    mon: &mut Monitor,
) -> Option<i32> {
    if id != machine.migration.id {
        return None;
    }
    match report {
        MigrationReport::Out(r) => on_outgoing(r, machine, mon),
        MigrationReport::In(r) => on_incoming(r, machine, mon),
    }
}

fn emitter(mon: &mut Monitor) -> impl FnMut(&str, Value) + '_ {
    move |name: &str, data: Value| mon.emit(name, &data)
}

fn on_outgoing(r: Report, machine: &mut Machine, mon: &mut Monitor) -> Option<i32> {
    match r {
        Report::Active => {
            if let Some(run) = &mut machine.migration.out {
                run.active_at = Some(Instant::now());
            }
            if machine.migration.status == MigrationStatus::Setup {
                set_status(machine, MigrationStatus::Active, &mut emitter(mon));
            }
        }
        Report::Pass(n) => {
            if machine.migration.settings.events() {
                mon.emit("MIGRATION_PASS", &json!({ "pass": n }));
            }
        }
        Report::Throttle(p) => {
            let handles: Vec<_> = machine
                .current_vm()
                .map(|vm| vm.vcpus().iter().map(|v| v.throttle_handle()).collect())
                .unwrap_or_default();
            if let Some(run) = &mut machine.migration.out {
                match &run.throttle {
                    Some(t) => t.set(p),
                    None => run.throttle = throttle::Throttle::start(handles, p).ok(),
                }
            }
        }
        Report::Switchover(reply) => {
            if machine.migration.status == MigrationStatus::Cancelling {
                return None; // dropping `reply` refuses the switchover
            }
            let before = mon.runstate();
            if let Some(run) = &mut machine.migration.out {
                run.throttle = None;
                run.state_before = Some(before);
            }
            let stopped = if before.is_live() {
                crate::control::apply(MachineEvent::Stop(RunState::FinishMigrate), machine, mon);
                mon.runstate() == RunState::FinishMigrate
            } else {
                mon.set_runstate(RunState::FinishMigrate).is_ok()
            };
            if !stopped {
                let _ = reply.send(Err(format!(
                    "cannot stop the guest for the switchover in state {}",
                    status_name_rs(before)
                )));
                return None;
            }
            if let Some(run) = &mut machine.migration.out {
                run.stopped_at = Some(Instant::now());
            }
            if machine.migration.settings.pause_before_switchover() {
                if let Some(run) = &mut machine.migration.out {
                    run.pending = Some(reply);
                }
                set_status(machine, MigrationStatus::PreSwitchover, &mut emitter(mon));
            } else {
                hand_over(machine, reply, &mut emitter(mon));
            }
        }
        Report::Ended(result) => return end_outgoing(result, machine, mon),
    }
    None
}

fn status_name_rs(s: RunState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn end_outgoing(
    result: Result<std::time::Duration, String>,
    machine: &mut Machine,
    mon: &mut Monitor,
) -> Option<i32> {
    let (cancelled, before) = match &mut machine.migration.out {
        Some(run) => {
            run.throttle = None;
            run.pending = None;
            run.ended_at = Some(Instant::now());
            if let Some(t) = run.thread.take() {
                let _ = t.join();
            }
            (run.cancelled.load(Ordering::Acquire), run.state_before)
        }
        None => (false, None),
    };
    if let Some(vm) = machine.current_vm() {
        if let Err(e) = crate::dirty_log::register_slots(vm.vm_fd(), vm.memory(), false) {
            eprintln!("kestrel: turning off the dirty log: {e}");
        }
    }
    match result {
        Ok(downtime) => {
            if let Some(run) = &mut machine.migration.out {
                run.downtime = Some(downtime);
            }
            set_status(machine, MigrationStatus::Completed, &mut emitter(mon));
            if let Err(e) = mon.set_runstate(RunState::PostMigrate) {
                eprintln!("kestrel: {e}");
            }
        }
        Err(e) => {
            if let Some(run) = &mut machine.migration.out {
                run.error = Some(e);
            }
            let status = if cancelled {
                MigrationStatus::Cancelled
            } else {
                MigrationStatus::Failed
            };
            // The guest goes back to what it was doing, with its disks.
            if mon.runstate() == RunState::FinishMigrate {
                if let Err(e) = machine.retake_image_locks() {
                    eprintln!("kestrel: after the failed migration: {e}");
                }
                if let Some(vm) = machine.current_vm() {
                    vm.resume_io();
                }
                match before {
                    Some(RunState::Running) => {
                        set_status(machine, status, &mut emitter(mon));
                        return crate::control::apply(MachineEvent::Start, machine, mon);
                    }
                    Some(s) => {
                        let _ = mon.set_runstate(s);
                    }
                    None => {}
                }
            }
            set_status(machine, status, &mut emitter(mon));
        }
    }
    None
}

fn on_incoming(r: IncomingReport, machine: &mut Machine, mon: &mut Monitor) -> Option<i32> {
    let blobs = match r {
        IncomingReport::Active => {
            set_status(machine, MigrationStatus::Active, &mut emitter(mon));
            return None;
        }
        IncomingReport::Done(r) => r,
    };
    let applied = blobs.and_then(|b| {
        let vm = machine
            .current_vm()
            .ok_or_else(|| "the machine has no VM".to_string())?;
        vm.restore_state(&b)?;
        machine.retake_image_locks()
    });
    let exit_on_error = machine
        .migration
        .incoming
        .as_ref()
        .is_none_or(|i| i.exit_on_error);
    match applied {
        Ok(()) => {
            set_status(machine, MigrationStatus::Completed, &mut emitter(mon));
            if mon.vm().autostart() {
                if let Some(code) = crate::control::apply(MachineEvent::Start, machine, mon) {
                    return Some(code);
                }
            } else if let Err(e) = mon.set_runstate(RunState::Paused) {
                eprintln!("kestrel: {e}");
            }
            machine.announce();
            None
        }
        Err(e) => {
            eprintln!("kestrel: load of migration failed: {e}");
            set_status(machine, MigrationStatus::Failed, &mut emitter(mon));
            exit_on_error.then_some(1)
        }
    }
}
