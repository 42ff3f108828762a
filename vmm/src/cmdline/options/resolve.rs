//! The device checks that need the whole command line: every `-device` reference to a
//! drive, block node, netdev or chardev resolved, QEMU's implicit virtio-blk-pci for
//! `-drive if=virtio` added, unused drives dropped, and each backend and PCI address used
//! at most once.

use super::Origin;
use crate::cmdline::devices::{resolve_node, BlockNode, DeviceSpec};
use crate::cmdline::{CmdlineError, Config};

// ---- -device, -drive, -blockdev, -netdev ----

/// Checks every reference between devices and backends, adds QEMU's implicit
/// virtio-blk-pci for `-drive if=virtio`, keeps only the drives devices use, and makes
/// sure each backend and PCI address is used once.
pub(super) fn resolve_devices(
    cfg: &mut Config,
    devices: Vec<(Origin, DeviceSpec)>,
    blockdevs: &[BlockNode],
    used_chardevs: &[&str],
) -> Result<(), CmdlineError> {
    let mut drives_used: Vec<String> = Vec::new();
    let mut netdevs_used: Vec<String> = Vec::new();
    let mut chardevs_used: Vec<String> = Vec::new();
    let mut addrs = Vec::new();
    let mut resolved_drives = Vec::new();
    let mut have_serial_bus = false;
    let mut out = Vec::new();
    for (origin, d) in devices {
        match &d {
            DeviceSpec::VirtioBlk { drive, .. } => {
                if drives_used.contains(drive) {
                    return Err(origin.error(format!(
                        "Drive '{drive}' is already in use by another device"
                    )));
                }
                let spec = match cfg.drives.iter().find(|x| x.id == *drive) {
                    Some(x) if x.auto_device => {
                        return Err(origin.error(format!(
                            "Drive '{drive}' is already in use because it has been automatically connected to another device (did you need 'if=none' in the drive options?)"
                        )))
                    }
                    Some(x) => x.clone(),
                    None => resolve_node(blockdevs, drive)
                        .map_err(|e| origin.error(e))?
                        .ok_or_else(|| origin.error(format!("Property 'drive' can't find value '{drive}'")))?,
                };
                drives_used.push(drive.clone());
                resolved_drives.push(spec);
            }
            DeviceSpec::VirtioNet { netdev, .. } => {
                if !cfg.netdevs.iter().any(|n| n.id == *netdev) {
                    return Err(
                        origin.error(format!("Property 'netdev' can't find value '{netdev}'"))
                    );
                }
                if netdevs_used.contains(netdev) {
                    return Err(origin.error(format!(
                        "Property 'netdev' can't take value '{netdev}', it's in use"
                    )));
                }
                netdevs_used.push(netdev.clone());
            }
            DeviceSpec::VirtioSerial { .. } => have_serial_bus = true,
            DeviceSpec::VirtioBalloon { .. } => {
                if out
                    .iter()
                    .any(|d| matches!(d, DeviceSpec::VirtioBalloon { .. }))
                {
                    return Err(origin.error("Only one balloon device is supported"));
                }
            }
            DeviceSpec::I6300esb { .. } => {
                if out.iter().any(|d| matches!(d, DeviceSpec::I6300esb { .. })) {
                    return Err(origin.error("only one i6300esb watchdog is supported"));
                }
            }
            DeviceSpec::PvpanicPci { .. } => {}
            DeviceSpec::Pvpanic { .. } => {
                if out.iter().any(|d| matches!(d, DeviceSpec::Pvpanic { .. })) {
                    return Err(origin.error("only one pvpanic device is supported"));
                }
            }
            DeviceSpec::VirtioSerialPort { chardev, .. } => {
                if !have_serial_bus {
                    return Err(origin.error("No 'virtio-serial-bus' bus found for device (add -device virtio-serial-pci before it)"));
                }
                if !cfg.chardevs.iter().any(|c| c.id == *chardev) {
                    return Err(origin.error(format!("chardev '{chardev}' not found")));
                }
                if chardevs_used.contains(chardev) || used_chardevs.contains(&chardev.as_str()) {
                    return Err(origin.error(format!("chardev '{chardev}' is already in use")));
                }
                chardevs_used.push(chardev.clone());
            }
        }
        if let Some(a) = d.pci_addr() {
            if addrs.contains(&a) {
                return Err(origin.error(format!(
                    "PCI: slot {} function {} not available, in use",
                    a.slot, a.function
                )));
            }
            addrs.push(a);
        }
        out.push(d);
    }
    // `-drive if=virtio`: QEMU's shorthand for a drive plus its own virtio-blk-pci.
    for d in cfg.drives.iter().filter(|d| d.auto_device) {
        out.push(DeviceSpec::VirtioBlk {
            id: None,
            addr: None,
            drive: d.id.clone(),
            serial: d.serial.clone(),
            num_queues: 1,
            share_rw: false,
        });
        resolved_drives.push(d.clone());
    }
    cfg.drives = resolved_drives;
    cfg.devices = out;
    Ok(())
}
