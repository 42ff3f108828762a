//! Self-announcement after an incoming migration: each NIC sends QEMU's RARP frame
//! from the guest's MAC out of its backend, `announce-rounds` times: at once, then after
//! `announce-initial` ms, then `announce-step` ms longer each round, capped at
//! `announce-max` (QEMU's `qemu_announce_self_once` and `qemu_announce_timer_step`),
//! so the network learns where the guest is now. It runs on its own thread and holds each NIC's lock for one frame.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use devices::virtio::net::VirtioNet;

use crate::pci::{Attached, PciDevices};

/// The self-announce schedule after an incoming migration (QEMU's
/// `AnnounceParameters`): `rounds` RARPs in all: one at once, the next after `initial_ms`,
/// each gap after that `step_ms` longer than the last, at most `max_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub rounds: u64,
    pub step_ms: u64,
}

/// The delays before each round, in milliseconds.
pub fn schedule(p: &Announce) -> Vec<u64> {
    (0..p.rounds)
        .map(|i| {
            if i == 0 {
                0
            } else {
                p.initial_ms
                    .saturating_add(p.step_ms.saturating_mul(i - 1))
                    .min(p.max_ms)
            }
        })
        .collect()
}

/// Starts announcing the NICs of `pci`.
pub fn start(pci: &PciDevices, params: Announce) {
    // Weak: a guest reset or quit during the rounds drops the boot's NICs and closes
    // their taps at once (the next boot opens the same tap, which a lingering reference
    // would keep busy); the rounds then end.
    let nics: Vec<Weak<Mutex<VirtioNet>>> = pci
        .attached
        .iter()
        .filter_map(|a| match a {
            Attached::Net { model, .. } => Some(Arc::downgrade(model)),
            _ => None,
        })
        .collect();
    if nics.is_empty() {
        return;
    }
    let delays = schedule(&params);
    let spawned = std::thread::Builder::new()
        .name("announce".into())
        .spawn(move || {
            for d in delays {
                std::thread::sleep(Duration::from_millis(d));
                for n in &nics {
                    let Some(n) = n.upgrade() else { return };
                    let r = n.lock().unwrap_or_else(|p| p.into_inner()).announce();
                    if let Err(e) = r {
                        eprintln!("kestrel: announcing the guest's MAC: {e}");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("kestrel: cannot start announcing: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_follow_qemus_timer_steps() {
        let p = Announce {
            initial_ms: 50,
            max_ms: 550,
            rounds: 5,
            step_ms: 100,
        };
        assert_eq!(schedule(&p), [0, 50, 150, 250, 350]);
        let capped = Announce { max_ms: 200, ..p };
        assert_eq!(schedule(&capped), [0, 50, 150, 200, 200]);
    }
}
