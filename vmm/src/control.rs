//! What the rest of the process tells the machine, turned into monitor actions: a
//! [`ControlEvent`] from a vCPU, a device of the current boot, the console's Ctrl-A x or
//! a signal becomes a runstate transition (`MachineEvent`) or a QMP event. Reports of a
//! boot that a reset has since replaced are dropped by their generation.

use monitor::{MachineEvent, Monitor, RunState};

use crate::machine::Machine;
use crate::vm_events::VmEvent;
use crate::ControlEvent;

/// Acts on one control event; `Some(status)` when the process must end.
pub fn on_control(c: ControlEvent, machine: &mut Machine, mon: &mut Monitor) -> Option<i32> {
    let what = match c {
        ControlEvent::Vm { generation, .. } if generation != machine.generation() => return None,
        // A panicked guest whose panic action paused it is stopped at the panic in
        // QEMU, where pvpanic stops the vCPU inside the write. Here the vCPU runs on
        // until the pause lands and may already have asked for the reboot its kernel
        // does after a panic (panic=N): the guest would never have got there, so the
        // request is dropped and the machine stays in guest-panicked for the monitor.
        ControlEvent::Vm {
            event: VmEvent::Reset | VmEvent::PowerOff,
            ..
        } if mon.runstate() == RunState::GuestPanicked => return None,
        ControlEvent::Vm { event, .. } => match event {
            VmEvent::Reset => MachineEvent::GuestReset,
            VmEvent::PowerOff => MachineEvent::GuestShutdown,
            VmEvent::Fatal(msg) => {
                // QEMU prints the error and stops in internal-error, for the monitor to see.
                eprintln!("kestrel: {msg}");
                MachineEvent::Stop(RunState::InternalError)
            }
            VmEvent::BlockIoError(e) => {
                use crate::qmp_devices::BlockIoErrorEvent;
                mon.emit(
                    "BLOCK_IO_ERROR",
                    &BlockIoErrorEvent {
                        qom_path: format!("/machine/peripheral/{}/virtio-backend", e.device),
                        device: e.device.clone(),
                        node_name: Some(e.device.clone()),
                        operation: e.operation.as_str().into(),
                        action: e.action.as_str().into(),
                        nospace: Some(e.nospace),
                        reason: e.reason.clone(),
                    },
                );
                if e.action != devices::virtio::block::IoErrorAction::Stop
                    || mon.runstate() == RunState::IoError
                {
                    return None;
                }
                MachineEvent::Stop(RunState::IoError)
            }
            VmEvent::NicRxFilterChanged { name, path } => {
                let ev = crate::qmp_devices::NicRxFilterChangedEvent {
                    name: Some(name),
                    path,
                };
                mon.emit("NIC_RX_FILTER_CHANGED", &ev);
                return None;
            }
            VmEvent::GuestPanic(devices::legacy::pvpanic::PanicEvent::Panicked) => {
                MachineEvent::GuestPanic(None)
            }
            VmEvent::GuestPanic(devices::legacy::pvpanic::PanicEvent::Shutdown) => {
                // QEMU 9.1: the event, then an ordinary guest poweroff request.
                mon.emit("GUEST_PVSHUTDOWN", &monitor::Empty {});
                MachineEvent::GuestShutdown
            }
            VmEvent::GuestPanic(devices::legacy::pvpanic::PanicEvent::CrashLoaded) => {
                // A kdump kernel took over: the guest keeps running (QEMU: action run).
                mon.emit("GUEST_CRASHLOADED", &serde_json::json!({"action": "run"}));
                return None;
            }
            VmEvent::VserportChange { id, open } => {
                machine.set_port_open(&id, open);
                mon.emit(
                    "VSERPORT_CHANGE",
                    &crate::qmp_devices::VserportChangeEvent { id, open },
                );
                return None;
            }
            VmEvent::WatchdogExpired => MachineEvent::WatchdogExpired,
            VmEvent::BalloonChange { actual_pages } => {
                mon.emit(
                    "BALLOON_CHANGE",
                    &crate::qmp_platform::BalloonInfo {
                        actual: machine.balloon_actual_bytes(actual_pages),
                    },
                );
                return None;
            }
            VmEvent::RtcChange { offset } => {
                mon.emit(
                    "RTC_CHANGE",
                    &crate::qmp_platform::RtcChangeEvent {
                        offset,
                        qom_path: crate::qmp_platform::RTC_QOM_PATH.into(),
                    },
                );
                return None;
            }
        },
        // Routed to `migrate_ops` by the event loop.
        ControlEvent::Migration { .. } => return None,
        ControlEvent::Quit => return Some(0),
    };
    apply(what, machine, mon)
}

/// Hands `what` to the monitor's runstate machine; `Some(status)` when the process must
/// end. A refused transition is reported on stderr and changes nothing.
pub fn apply(what: MachineEvent, machine: &mut Machine, mon: &mut Monitor) -> Option<i32> {
    match mon.handle(what, machine) {
        Ok(Some(status)) => Some(status),
        Ok(None) => machine.exit_requested(),
        Err(e) => {
            eprintln!("kestrel: {e}");
            machine.exit_requested()
        }
    }
}
