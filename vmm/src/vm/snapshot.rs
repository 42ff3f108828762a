//! What a migration carries of one boot besides RAM: the guest clock, KVM's in-kernel
//! state (PICs, IOAPIC, PIT, kvmclock), every vCPU, the legacy devices and every PCI
//! function, each as one named, versioned blob of JSON (the stream's Device sections).
//!
//! Invariants: [`Vm::state_names`] and [`Vm::save_state`] list the parts in one order,
//! the order [`Vm::restore_state`] expects, so a destination built from the same
//! command line matches the source part by part (the stream's configuration check
//! compares the names before any state is applied). State is taken with the vCPUs
//! paused and the I/O thread held, after in-flight block requests completed; nothing
//! of the host (fds, taps, images) is in it. A restore applies to a boot that has not
//! run: a part that does not parse or that its model refuses stops the restore with
//! the part's name in the error.

use std::sync::Mutex;

use arch::state::{self as kstate, VcpuState, VmState, STATE_VERSION};
use devices::timer::GuestClock;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Vm;
use crate::pci::{Attached, Migratable};

/// One part's saved state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceBlob {
    pub name: String,
    pub version: u16,
    pub state: Vec<u8>,
}

/// The version of the device parts' JSON (the models' state structs).
const DEVICE_VERSION: u16 = 1;

#[derive(Clone, Copy)]
enum Part {
    Clock,
    Kvm,
    Vcpu(usize),
    Serial(usize),
    I8042,
    Rtc,
    AcpiPm,
    Ged,
    Pci(usize),
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn to_json<S: Serialize>(name: &str, s: &S) -> Result<Vec<u8>, String> {
    serde_json::to_vec(s).map_err(|e| format!("{name}: cannot encode its state: {e}"))
}

fn from_json<T: DeserializeOwned>(b: &DeviceBlob) -> Result<T, String> {
    serde_json::from_slice(&b.state).map_err(|e| format!("{}: invalid state: {e}", b.name))
}

impl Vm {
    fn parts(&self) -> Vec<(String, Part)> {
        let mut v = vec![
            ("clock".to_string(), Part::Clock),
            ("kvm".into(), Part::Kvm),
        ];
        v.extend((0..self.vcpus.len()).map(|i| (format!("cpu{i}"), Part::Vcpu(i))));
        v.extend((0..self.serials.len()).map(|i| (format!("serial{i}"), Part::Serial(i))));
        v.push(("i8042".into(), Part::I8042));
        v.push(("rtc".into(), Part::Rtc));
        v.push(("acpi-pm".into(), Part::AcpiPm));
        v.push(("acpi-ged".into(), Part::Ged));
        if let Some(p) = &self.pci {
            v.extend(p.migratable.iter().enumerate().map(|(i, (addr, name, _))| {
                (
                    format!("pci {:02x}.{} {name}", addr.device, addr.function),
                    Part::Pci(i),
                )
            }));
        }
        v
    }

    /// The names of the parts, in stream order (the Config section's device list).
    pub fn state_names(&self) -> Vec<String> {
        self.parts().into_iter().map(|(n, _)| n).collect()
    }

    /// Holds the I/O thread and completes in-flight block requests, so that no device
    /// changes guest memory or its state until [`Vm::resume`]. The vCPUs must be paused.
    pub fn quiesce(&self) -> Result<(), String> {
        let Some(pci) = &self.pci else {
            return Ok(());
        };
        pci.pause_io()?;
        for a in &pci.attached {
            if let Attached::Block { qdev_id, model, .. } = a {
                lock(model)
                    .quiesce()
                    .map_err(|e| format!("disk '{qdev_id}': {e}"))?;
            }
        }
        Ok(())
    }

    /// Every part's state; the vCPUs paused and the boot quiesced ([`Vm::quiesce`]).
    pub fn save_state(&self) -> Result<Vec<DeviceBlob>, String> {
        let msrs = match self.vcpus.first() {
            Some(v) => {
                let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("/dev/kvm: {e}"))?;
                v.run_job(move |fd| kstate::msrs_to_save(&kvm, fd))?
                    .map_err(|e| format!("cpu0: {e}"))?
            }
            None => Vec::new(),
        };
        let msrs = std::sync::Arc::new(msrs);
        let mut out = Vec::new();
        for (name, part) in self.parts() {
            let (version, state) = match part {
                Part::Clock => (
                    DEVICE_VERSION,
                    to_json(&name, &self.timers.clock().now_ns())?,
                ),
                Part::Kvm => {
                    let s = kstate::save_vm(&self.vm_fd).map_err(|e| format!("{name}: {e}"))?;
                    (STATE_VERSION, to_json(&name, &s)?)
                }
                Part::Vcpu(i) => {
                    let m = msrs.clone();
                    let s = self.vcpus[i]
                        .run_job(move |fd| kstate::save_vcpu(fd, &m))?
                        .map_err(|e| format!("{name}: {e}"))?;
                    (STATE_VERSION, to_json(&name, &s)?)
                }
                Part::Serial(i) => (
                    DEVICE_VERSION,
                    to_json(&name, &lock(&self.serials[i]).state())?,
                ),
                Part::I8042 => (DEVICE_VERSION, to_json(&name, &lock(&self.i8042).state())?),
                Part::Rtc => (DEVICE_VERSION, to_json(&name, &lock(&self.rtc).state())?),
                Part::AcpiPm => (
                    DEVICE_VERSION,
                    to_json(&name, &lock(&self.acpi_pm).state())?,
                ),
                Part::Ged => (DEVICE_VERSION, to_json(&name, &lock(&self.ged).state())?),
                Part::Pci(i) => (DEVICE_VERSION, self.save_pci(i, &name)?),
            };
            out.push(DeviceBlob {
                name,
                version,
                state,
            });
        }
        Ok(out)
    }

    fn save_pci(&self, i: usize, name: &str) -> Result<Vec<u8>, String> {
        let Some((_, _, m)) = self.pci.as_ref().and_then(|p| p.migratable.get(i)) else {
            return Err(format!("{name}: no such device"));
        };
        match m {
            Migratable::Virtio(d) => {
                let s = lock(d).state().map_err(|e| format!("{name}: {e}"))?;
                to_json(name, &s)
            }
            Migratable::Watchdog(d) => to_json(name, &lock(d).state()),
            Migratable::Plain(d) => to_json(name, &lock(d).config().state()),
        }
    }

    /// Applies `blobs` (as [`Vm::save_state`] made them on the source) to this boot,
    /// which has not run yet.
    pub fn restore_state(&self, blobs: &[DeviceBlob]) -> Result<(), String> {
        let parts = self.parts();
        if blobs.len() != parts.len() {
            return Err(format!(
                "the stream has {} device states, this machine {}",
                blobs.len(),
                parts.len()
            ));
        }
        for ((name, part), b) in parts.into_iter().zip(blobs) {
            if b.name != name {
                return Err(format!(
                    "the stream has '{}' where this machine has '{name}'",
                    b.name
                ));
            }
            let want = match part {
                Part::Kvm | Part::Vcpu(_) => STATE_VERSION,
                _ => DEVICE_VERSION,
            };
            if b.version != want {
                return Err(format!(
                    "{name}: state version {} (this Kestrel reads {want})",
                    b.version
                ));
            }
            let bad = |e: String| format!("{name}: {e}");
            match part {
                Part::Clock => self.timers.clock().set_now(from_json(b)?),
                Part::Kvm => {
                    let s: VmState = from_json(b)?;
                    kstate::restore_vm(&self.vm_fd, &s).map_err(|e| bad(e.to_string()))?;
                }
                Part::Vcpu(i) => {
                    let s: VcpuState = from_json(b)?;
                    self.vcpus[i]
                        .run_job(move |fd| kstate::restore_vcpu(fd, &s))?
                        .map_err(|e| bad(e.to_string()))?;
                }
                Part::Serial(i) => lock(&self.serials[i])
                    .restore(&from_json(b)?)
                    .map_err(|e| bad(e.to_string()))?,
                Part::I8042 => lock(&self.i8042)
                    .restore(&from_json(b)?)
                    .map_err(|e| bad(e.to_string()))?,
                Part::Rtc => lock(&self.rtc)
                    .restore(&from_json(b)?)
                    .map_err(|e| bad(e.to_string()))?,
                Part::AcpiPm => lock(&self.acpi_pm)
                    .restore(&from_json(b)?)
                    .map_err(|e| bad(e.to_string()))?,
                Part::Ged => lock(&self.ged)
                    .restore(&from_json(b)?)
                    .map_err(|e| bad(e.to_string()))?,
                Part::Pci(i) => self.restore_pci(i, b).map_err(bad)?,
            }
        }
        Ok(())
    }

    fn restore_pci(&self, i: usize, b: &DeviceBlob) -> Result<(), String> {
        let Some(pci) = &self.pci else {
            return Err("no such device".into());
        };
        let Some((addr, _, m)) = pci.migratable.get(i) else {
            return Err("no such device".into());
        };
        let before = match m {
            Migratable::Virtio(d) => {
                let mut d = lock(d);
                let before = devices::pci::PciDevice::bars(&*d);
                d.restore(&from_json(b)?).map_err(|e| e.to_string())?;
                before
            }
            Migratable::Watchdog(d) => {
                let mut d = lock(d);
                let before = devices::pci::PciDevice::bars(&*d);
                d.restore(&from_json(b)?).map_err(|e| e.to_string())?;
                before
            }
            Migratable::Plain(d) => {
                let mut d = lock(d);
                let before = d.bars();
                d.config_mut()
                    .restore(&from_json(b)?)
                    .map_err(|e| e.to_string())?;
                before
            }
        };
        // BARs where the guest had them, doorbells registered there, then one kick per
        // queue so the device serves what its rings hold.
        pci.bus.refresh_bars(*addr, &before);
        if matches!(m, Migratable::Virtio(_)) {
            pci.kick_all(*addr);
        }
        Ok(())
    }
}
