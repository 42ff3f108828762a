//! The machine: what outlives a single boot (configuration, chardev backends, the
//! process-level policy of -no-reboot/-no-shutdown/-S) and the control loop that reacts
//! to the guest and the host. A guest reset builds a fresh `Vm`.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use kvm_ioctls::Kvm;

use crate::chardev::Chardev;
use crate::vcpu::VmEvent;
use crate::vm::{Vm, VmConfig, VmError};
use crate::ControlEvent;

/// What the guest's reset and poweroff do, from the command line.
#[derive(Clone, Copy, Debug, Default)]
pub struct Policy {
    pub no_reboot: bool,
    pub no_shutdown: bool,
    pub start_paused: bool,
}

/// How the process ends.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Exit with this status.
    Exit(i32),
}

pub struct Machine {
    kvm: Kvm,
    cfg: VmConfig,
    serials: Vec<Arc<Chardev>>,
    policy: Policy,
    events_tx: Sender<ControlEvent>,
    events: Receiver<ControlEvent>,
    vm: Option<Vm>,
    generation: u64,
    running: bool,
}

impl Machine {
    pub fn new(
        cfg: VmConfig,
        serials: Vec<Arc<Chardev>>,
        policy: Policy,
        events_tx: Sender<ControlEvent>,
        events: Receiver<ControlEvent>,
    ) -> Result<Machine, VmError> {
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        let mut m = Machine {
            kvm,
            cfg,
            serials,
            policy,
            events_tx,
            events,
            vm: None,
            generation: 0,
            running: false,
        };
        m.boot()?;
        Ok(m)
    }

    fn boot(&mut self) -> Result<(), VmError> {
        // Drop the old VM (joining its vCPU threads) before building the next.
        self.vm = None;
        self.generation += 1;
        self.vm = Some(Vm::build(
            &self.kvm,
            &self.cfg,
            &self.serials,
            self.events_tx.clone(),
            self.generation,
        )?);
        Ok(())
    }

    fn resume(&mut self) {
        if let Some(vm) = &self.vm {
            vm.resume();
            self.running = true;
        }
    }

    fn pause(&mut self) {
        if let Some(vm) = &self.vm {
            vm.pause();
        }
        self.running = false;
    }

    /// Runs until the machine ends; returns how.
    pub fn run(&mut self) -> Ending {
        if !self.policy.start_paused {
            self.resume();
        }
        loop {
            let Ok(ev) = self.events.recv() else {
                return Ending::Exit(0);
            };
            match ev {
                ControlEvent::Vm { generation, event } if generation == self.generation => {
                    if let Some(end) = self.on_guest(event) {
                        return end;
                    }
                }
                ControlEvent::Vm { .. } => {} // from a boot that was already replaced
                ControlEvent::Continue => {
                    if !self.running {
                        self.resume();
                    }
                }
                ControlEvent::Quit => return Ending::Exit(0),
                ControlEvent::Signal(sig) => {
                    eprintln!("kestrel: terminating on signal {sig}");
                    return Ending::Exit(0);
                }
            }
        }
    }

    fn on_guest(&mut self, event: VmEvent) -> Option<Ending> {
        match event {
            VmEvent::PowerOff => {
                if self.policy.no_shutdown {
                    // QEMU's -no-shutdown: stop the guest, keep the process for the monitor.
                    self.pause();
                    None
                } else {
                    Some(Ending::Exit(0))
                }
            }
            VmEvent::Reset => {
                if self.policy.no_reboot {
                    return Some(Ending::Exit(0));
                }
                self.pause();
                match self.boot() {
                    Ok(()) => {
                        self.resume();
                        None
                    }
                    Err(e) => {
                        eprintln!("kestrel: guest reset failed: {e}");
                        Some(Ending::Exit(1))
                    }
                }
            }
            VmEvent::Fatal(msg) => {
                eprintln!("kestrel: {msg}");
                self.pause();
                Some(Ending::Exit(1))
            }
        }
    }

    #[allow(dead_code)] // read by the QMP monitor's query-cpus-fast
    pub fn vcpu_thread_ids(&self) -> Vec<(u8, i32)> {
        self.vm
            .as_ref()
            .map(|v| v.vcpu_thread_ids())
            .unwrap_or_default()
    }
}
