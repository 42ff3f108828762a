//! The machine: what outlives a single boot (configuration, chardev backends) and the
//! monitor's view of it (`monitor::Machine`). The run-state policy (-S, -no-reboot,
//! -no-shutdown, set-action) lives in the monitor's run-state machine; this type only
//! carries out what it decides. A guest or QMP reset builds a fresh `Vm`.

use std::any::Any;
use std::sync::Arc;

use kvm_ioctls::Kvm;
use monitor::machine::MachineInfo;
use monitor::{CpuInfo, CpuInstanceProperties, KvmInfo, MachineError, MemoryInfo, ShutdownCause};

use crate::chardev::Chardev;
use crate::fdpass::FdStore;
use crate::vm::{Vm, VmConfig, VmError};
use crate::ControlSender;

/// Identity the monitor reports.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    pub name: Option<String>,
    pub uuid: Option<[u8; 16]>,
}

pub struct Machine {
    kvm: Kvm,
    cfg: VmConfig,
    identity: Identity,
    serials: Vec<Arc<Chardev>>,
    /// `-chardev`s used by devices (virtio-serial ports), by id; they outlive boots.
    chardevs: std::collections::HashMap<String, Arc<Chardev>>,
    events_tx: ControlSender,
    vm: Option<Vm>,
    /// virtio-serial ports the guest has open (by port id), from VSERPORT_CHANGE.
    open_ports: std::collections::HashSet<String>,
    /// The disks' image locks, held for the machine's life (see `pci::lock_drives`)
    /// except from a migration's switchover on (and, on a destination, until its
    /// stream loaded): `None` while not held.
    image_locks: Option<Vec<std::fs::File>>,
    /// Live migration (outgoing or incoming).
    pub migration: crate::migrate::MigrationCtl,
    /// The RTC's clock (`-rtc`), and for `clock=vm` the guest clock that runs with the vCPUs.
    rtc_clock: Arc<dyn devices::legacy::rtc::Clock>,
    rtc_watch: Option<Arc<crate::timers::VmClock>>,
    generation: u64,
    running: bool,
    exit: Option<i32>,
    fds: FdStore,
}

impl Machine {
    /// Builds the machine with its vCPUs parked.
    pub fn new(
        cfg: VmConfig,
        identity: Identity,
        serials: Vec<Arc<Chardev>>,
        chardevs: std::collections::HashMap<String, Arc<Chardev>>,
        events_tx: ControlSender,
        incoming: bool,
    ) -> Result<Machine, VmError> {
        let kvm = Kvm::new().map_err(VmError::Kvm)?;
        let (rtc_clock, rtc_watch) = crate::rtc_clock::rtc_clock(&cfg.rtc);
        // A destination takes its disks only once the source has let go of them.
        let image_locks = if incoming {
            None
        } else {
            Some(crate::pci::lock_drives(&cfg.devices, &cfg.drives)?)
        };
        let mut m = Machine {
            open_ports: Default::default(),
            image_locks,
            migration: crate::migrate::MigrationCtl::new(incoming),
            rtc_clock,
            rtc_watch,
            kvm,
            cfg,
            identity,
            serials,
            chardevs,
            events_tx,
            vm: None,
            generation: 0,
            running: false,
            exit: None,
            fds: FdStore::default(),
        };
        m.rebuild()?;
        Ok(m)
    }

    fn rebuild(&mut self) -> Result<(), VmError> {
        // Drop the old VM (joining its vCPU threads) before building the next; its RTC
        // lives on in the next.
        let rtc_state = self.vm.as_ref().map(|v| v.rtc_state());
        // The new boot's guest has opened nothing yet.
        self.open_ports.clear();
        let watchdog_timed_out = self.vm.as_ref().is_some_and(|v| v.watchdog_timed_out());
        self.vm = None;
        self.generation += 1;
        self.vm = Some(Vm::build(
            &self.kvm,
            &self.cfg,
            &self.serials,
            &self.chardevs,
            self.events_tx.clone(),
            self.generation,
            crate::vm::RtcBoot {
                clock: self.rtc_clock.clone(),
                state: rtc_state,
                watchdog_timed_out,
            },
        )?);
        Ok(())
    }

    /// Where other threads report to the main thread.
    pub fn events_sender(&self) -> ControlSender {
        self.events_tx.clone()
    }

    /// Gives up the disks' image locks (the switchover of an outgoing migration: the
    /// destination takes them next).
    pub fn release_image_locks(&mut self) {
        self.image_locks = None;
    }

    /// Takes the disks' image locks again if they are not held (a failed migration, a
    /// `cont` after one, a destination whose stream loaded).
    pub fn retake_image_locks(&mut self) -> Result<(), String> {
        if self.image_locks.is_none() {
            let locks = crate::pci::lock_drives(&self.cfg.devices, &self.cfg.drives)
                .map_err(|e| e.to_string())?;
            self.image_locks = Some(locks);
        }
        Ok(())
    }

    /// Announces the guest's NICs on their networks (after an incoming migration), per
    /// the `announce-*` parameters.
    pub fn announce(&self) {
        let params = self.migration.settings.announce();
        if let Some(pci) = self.vm.as_ref().and_then(|v| v.pci()) {
            crate::announce::start(pci, params);
        }
    }

    /// The boot that events must come from to count (older ones were reset away).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The exit status the monitor asked for, if any.
    pub fn exit_requested(&self) -> Option<i32> {
        self.exit
    }

    /// Descriptors that arrived with the message about to be executed.
    pub fn offer_fds(&mut self, fds: Vec<std::os::fd::OwnedFd>) {
        self.fds.offer(fds);
    }

    /// Descriptors no command of that message claimed.
    pub fn take_unclaimed_fds(&mut self) -> Vec<std::os::fd::OwnedFd> {
        self.fds.take_unclaimed()
    }

    pub fn fds(&mut self) -> &mut FdStore {
        &mut self.fds
    }

    /// The current boot's VM, for the vmm's own QMP commands.
    pub fn current_vm(&self) -> Option<&Vm> {
        self.vm.as_ref()
    }

    /// The guest opened or closed virtio-serial port `id`.
    pub fn set_port_open(&mut self, id: &str, open: bool) {
        if open {
            self.open_ports.insert(id.to_string());
        } else {
            self.open_ports.remove(id);
        }
    }

    /// Whether the guest has virtio-serial port `id` open.
    pub fn port_open(&self, id: &str) -> bool {
        self.open_ports.contains(id)
    }

    /// Guest RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.cfg.mem_size
    }

    /// What `query-balloon` and BALLOON_CHANGE call `actual`: the RAM the guest has
    /// left with `pages` 4 KiB pages in the balloon.
    pub fn balloon_actual_bytes(&self, pages: u32) -> i64 {
        let left = self.cfg.mem_size.saturating_sub(u64::from(pages) << 12);
        i64::try_from(left).unwrap_or(i64::MAX)
    }

    /// The `-device`s, in command-line order.
    pub fn device_specs(&self) -> &[crate::cmdline::devices::DeviceSpec] {
        &self.cfg.devices
    }

    /// What the guest's RTC shows now.
    pub fn rtc_time(&self) -> Option<devices::legacy::RtcDateTime> {
        self.vm.as_ref().map(|v| v.rtc_time())
    }

    /// `rtc-reset-reinjection`: forget the periodic RTC interrupts the guest still owes.
    pub fn rtc_reset_reinjection(&self) {
        if let Some(vm) = &self.vm {
            vm.rtc_reset_reinjection();
        }
    }

    fn vm(&self) -> Result<&Vm, MachineError> {
        self.vm
            .as_ref()
            .ok_or_else(|| MachineError::Failed("the machine failed to reset and has no VM".into()))
    }
}

fn uuid_string(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[0..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..16].concat()
    )
}

impl monitor::Machine for Machine {
    fn pause_vcpus(&mut self) -> Result<(), MachineError> {
        self.vm()?.pause();
        if let Some(w) = &self.rtc_watch {
            w.stop();
        }
        self.running = false;
        Ok(())
    }

    fn resume_vcpus(&mut self) -> Result<(), MachineError> {
        // After an outgoing migration the disks belong to the destination: `cont` takes
        // them back, or fails as QEMU's does when the destination holds them.
        self.retake_image_locks().map_err(MachineError::Failed)?;
        // Requests a werror/rerror=stop policy held are retried on `cont`, as in QEMU.
        if let Some(pci) = self.vm.as_ref().and_then(|v| v.pci()) {
            for a in &pci.attached {
                if let crate::pci::Attached::Block { model, .. } = a {
                    let r = model.lock().unwrap_or_else(|p| p.into_inner()).retry_held();
                    if let Err(e) = r {
                        eprintln!("kestrel: retrying held block requests: {e}");
                    }
                }
            }
        }
        if let Some(w) = &self.rtc_watch {
            w.run();
        }
        self.vm()?.resume();
        self.running = true;
        Ok(())
    }

    fn reset(&mut self, _cause: ShutdownCause) -> Result<(), MachineError> {
        let was_running = self.running;
        if let Some(vm) = &self.vm {
            vm.pause();
        }
        self.rebuild()
            .map_err(|e| MachineError::Failed(format!("reset failed: {e}")))?;
        if was_running {
            self.vm()?.resume();
        }
        Ok(())
    }

    fn power_button(&mut self) -> Result<(), MachineError> {
        self.vm()?
            .press_power_button()
            .map_err(|e| MachineError::Failed(format!("cannot press the power button: {e}")))
    }

    fn inject_nmi(&mut self) -> Result<(), MachineError> {
        self.vm()?.inject_nmi();
        Ok(())
    }

    fn cpu_registers(&mut self, cpu_index: i64) -> Result<String, MachineError> {
        let i = usize::try_from(cpu_index)
            .map_err(|_| MachineError::Failed(format!("CPU {cpu_index} does not exist")))?;
        self.vm()?.registers(i).map_err(MachineError::Failed)
    }

    fn request_exit(&mut self, status: i32) {
        self.exit = Some(status);
    }

    fn name(&self) -> Option<String> {
        self.identity.name.clone()
    }

    fn uuid(&self) -> String {
        match &self.identity.uuid {
            Some(u) => uuid_string(u),
            None => monitor::machine::NIL_UUID.to_string(),
        }
    }

    fn kvm(&self) -> KvmInfo {
        // Kestrel only runs on KVM: if we got this far, it is present and in use.
        KvmInfo {
            enabled: true,
            present: true,
        }
    }

    fn cpus(&self) -> Vec<CpuInfo> {
        let threads = u32::from(self.cfg.threads_per_core.max(1));
        let cores = u32::from(self.cfg.cores_per_socket.max(1));
        self.vm
            .as_ref()
            .map(|vm| vm.vcpu_thread_ids())
            .unwrap_or_default()
            .into_iter()
            .map(|(i, tid)| {
                let i = u32::from(i);
                CpuInfo {
                    index: i64::from(i),
                    thread_id: i64::from(tid),
                    qom_path: format!("/machine/unattached/device[{i}]"),
                    props: Some(CpuInstanceProperties {
                        socket_id: Some(i64::from(i / (threads * cores))),
                        core_id: Some(i64::from((i / threads) % cores)),
                        thread_id: Some(i64::from(i % threads)),
                        ..Default::default()
                    }),
                }
            })
            .collect()
    }

    fn machine_types(&self) -> Vec<MachineInfo> {
        vec![MachineInfo {
            name: crate::cmdline::MACHINE_TYPE.to_string(),
            alias: None,
            is_default: Some(true),
            cpu_max: i64::from(arch::mptable::MAX_CPUS),
            hotpluggable_cpus: false,
            numa_mem_supported: false,
            deprecated: false,
            default_cpu_type: Some("qemu64-x86_64-cpu".into()),
            default_ram_id: Some("kestrel.ram".into()),
            acpi: true,
            compat_props: None,
        }]
    }

    fn memory(&self) -> MemoryInfo {
        MemoryInfo {
            base_memory: self.cfg.mem_size,
            plugged_memory: None,
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_formatted_8_4_4_4_12() {
        let u = [
            0x55, 0x0e, 0x84, 0x00, 0xe2, 0x9b, 0x41, 0xd4, 0xa7, 0x16, 0x44, 0x66, 0x55, 0x44,
            0x00, 0x00,
        ];
        assert_eq!(uuid_string(&u), "550e8400-e29b-41d4-a716-446655440000");
    }
}
