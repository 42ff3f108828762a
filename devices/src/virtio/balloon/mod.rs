//! virtio-balloon (device type 5, virtio 1.2 5.5), as QEMU's
//! `-device virtio-balloon-pci,deflate-on-oom=,free-page-reporting=`.
//!
//! The host sets a target (`num_pages`, in 4 KiB balloon pages) and the guest driver
//! inflates or deflates towards it, writing how far it got to `actual`; the machine turns
//! a new `actual` into QMP BALLOON_CHANGE through [`BalloonEvents`]. Pages the guest
//! inflates are given back to the host with `madvise(MADV_DONTNEED)`: on the anonymous
//! private mappings guest RAM lives in they read back as zeros when the guest touches
//! them again after deflating, so deflating needs no work beyond the accounting.
//!
//! The statistics queue follows QEMU: the driver queues one buffer of {tag, value}
//! entries after DRIVER_OK, the device records the values and keeps the buffer; with a
//! polling interval set, the device's timer returns the buffer so the driver refills it
//! with fresh values (qom-get `guest-stats`, set with `guest-stats-polling-interval`).
//!
//! With free page reporting the driver hands over ranges of free memory on the
//! reporting queue; each descriptor's own address and length is the range, which the
//! device discards like inflated pages.
//!
//! Queue layout (5.5.2): a queue exists only when its feature was negotiated and the
//! driver numbers the ones that exist consecutively: inflateq, deflateq, then statsq
//! (STATS_VQ), then reporting_vq (REPORTING). A driver that did not take STATS_VQ has its
//! reporting queue at index 2.
//!
//! Split by queue: `pages` handles the page queues (inflate, deflate, free page
//! reporting) and the discarding of guest memory behind them; `stats` handles the
//! statistics queue, its polling timer and the QMP `guest-stats` view. Neither uses
//! the other. This file holds [`VirtioBalloon`], its config space, migration state and
//! the [`VirtioDevice`] impl that routes each queue to its handler. No locks: the
//! device is driven through `&mut self`.

mod pages;
mod stats;

pub use stats::{BalloonStats, STAT_COUNT, STAT_NAMES};

use std::sync::Arc;

use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use virtio_queue::Queue;

use super::queue_util::read_config_bytes;
use super::state_kind;
use super::{
    ActivateError, DeviceError, VirtioDevice, VirtioDeviceState, VirtioInterrupt, TYPE_BALLOON,
    VIRTIO_F_VERSION_1,
};

use crate::timer::{GuestClock, Timer};

/// Feature bits (virtio 1.2, 5.5.3).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u64 = 1 << 0;
pub const VIRTIO_BALLOON_F_STATS_VQ: u64 = 1 << 1;
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u64 = 1 << 2;
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u64 = 1 << 3;
pub const VIRTIO_BALLOON_F_PAGE_POISON: u64 = 1 << 4;
pub const VIRTIO_BALLOON_F_REPORTING: u64 = 1 << 5;

/// Balloon page numbers are in 4 KiB units whatever the guest's page size.
pub const VIRTIO_BALLOON_PFN_SHIFT: u32 = 12;
pub const BALLOON_PAGE_SIZE: u64 = 1 << VIRTIO_BALLOON_PFN_SHIFT;

pub const QUEUE_SIZE: u16 = 128;
/// num_pages, actual, free_page_hint_cmd_id, poison_val.
pub const CONFIG_LEN: usize = 16;

/// `-device virtio-balloon-pci` properties that change what the device offers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonConfig {
    /// `deflate-on-oom=on`: offer F_DEFLATE_ON_OOM (the guest deflates under OOM itself).
    pub deflate_on_oom: bool,
    /// `free-page-reporting=on`: offer F_REPORTING and its queue.
    pub free_page_reporting: bool,
}

/// What the balloon tells the machine.
pub trait BalloonEvents: Send + Sync {
    /// The driver wrote a new `actual` (pages in the balloon): QMP BALLOON_CHANGE.
    fn actual_changed(&self, actual_pages: u32);
}

/// The host wall clock in seconds since the Unix epoch (for the statistics'
/// `last-update`).
pub type WallClock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The real wall clock.
pub fn system_wall_clock() -> WallClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    })
}

/// The guest-visible state, for snapshots and migration. The queues are the
/// transport's; a statistics buffer held at save time is not part of it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonState {
    pub acked_features: u64,
    pub num_pages: u32,
    pub actual: u32,
    pub poison_val: u32,
    pub stats_interval_secs: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BalloonError {
    #[error("invalid virtio-balloon state: {0}")]
    InvalidState(String),
}

/// What a transport queue index is used for, given the negotiated features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueRole {
    Inflate,
    Deflate,
    Stats,
    Reporting,
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
}

/// Guest memory, the interrupt and queue `index` of an active device.
fn queue_of(
    active: &mut Option<Active>,
    index: usize,
) -> Option<(&GuestMemoryMmap, &Arc<dyn VirtioInterrupt>, &mut Queue)> {
    let a = active.as_mut()?;
    let q = a.queues.get_mut(index)?;
    Some((&a.mem, &a.interrupt, q))
}

/// The virtio-balloon device model.
pub struct VirtioBalloon {
    avail_features: u64,
    acked_features: u64,
    /// Target balloon size in pages, set by the host.
    num_pages: u32,
    /// Balloon size the driver reports.
    actual: u32,
    poison_val: u32,
    events: Arc<dyn BalloonEvents>,
    clock: Arc<dyn GuestClock>,
    timer: Arc<dyn Timer>,
    wall: WallClock,
    /// Statistics polling interval in seconds, 0 = off.
    stats_interval_secs: u32,
    /// When the held statistics buffer is next returned to the driver.
    poll_deadline: Option<u64>,
    stats: BalloonStats,
    /// Head of the statistics buffer the device holds.
    held_stats: Option<u16>,
    inflated_pages: u64,
    reported_bytes: u64,
    warned_discard: bool,
    active: Option<Active>,
}

impl VirtioBalloon {
    /// A balloon with target 0. `clock` and `timer` drive statistics polling, `wall`
    /// stamps the statistics.
    pub fn new(
        config: BalloonConfig,
        events: Arc<dyn BalloonEvents>,
        clock: Arc<dyn GuestClock>,
        timer: Arc<dyn Timer>,
        wall: WallClock,
    ) -> Self {
        let mut avail_features = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ;
        if config.deflate_on_oom {
            avail_features |= VIRTIO_BALLOON_F_DEFLATE_ON_OOM;
        }
        if config.free_page_reporting {
            avail_features |= VIRTIO_BALLOON_F_REPORTING;
        }
        VirtioBalloon {
            avail_features,
            acked_features: 0,
            num_pages: 0,
            actual: 0,
            poison_val: 0,
            events,
            clock,
            timer,
            wall,
            stats_interval_secs: 0,
            poll_deadline: None,
            stats: BalloonStats::default(),
            held_stats: None,
            inflated_pages: 0,
            reported_bytes: 0,
            warned_discard: false,
            active: None,
        }
    }

    /// Sets the target balloon size (config `num_pages`) and tells an active driver.
    pub fn set_target_pages(&mut self, pages: u32) {
        self.num_pages = pages;
        if let Some(a) = &self.active {
            if let Err(e) = a.interrupt.trigger_config() {
                log::warn!("virtio-balloon: cannot signal the new target: {e}");
            }
        }
    }

    pub fn target_pages(&self) -> u32 {
        self.num_pages
    }

    /// The balloon size the driver last reported.
    pub fn actual_pages(&self) -> u32 {
        self.actual
    }

    /// Pages inflated minus pages deflated since the driver came up (pages outside
    /// guest memory are not counted).
    pub fn inflated_pages(&self) -> u64 {
        self.inflated_pages
    }

    /// Bytes of guest memory discarded through free page reporting.
    pub fn reported_bytes(&self) -> u64 {
        self.reported_bytes
    }

    /// The role of transport queue `index` under the negotiated features.
    pub fn queue_role(&self, index: usize) -> Option<QueueRole> {
        self.roles().get(index).copied().flatten()
    }

    pub fn state(&self) -> BalloonState {
        BalloonState {
            acked_features: self.acked_features,
            num_pages: self.num_pages,
            actual: self.actual,
            poison_val: self.poison_val,
            stats_interval_secs: self.stats_interval_secs,
        }
    }

    /// Loads saved state into a device that is not active yet.
    pub fn restore(&mut self, state: &BalloonState) -> Result<(), BalloonError> {
        let extra = state.acked_features & !self.avail_features;
        if extra != 0 {
            return Err(BalloonError::InvalidState(format!(
                "acked features {extra:#x} are not offered by this device"
            )));
        }
        self.acked_features = state.acked_features;
        self.num_pages = state.num_pages;
        self.actual = state.actual;
        self.poison_val = state.poison_val;
        self.stats_interval_secs = state.stats_interval_secs;
        Ok(())
    }

    fn roles(&self) -> [Option<QueueRole>; 4] {
        let mut roles = [
            Some(QueueRole::Inflate),
            Some(QueueRole::Deflate),
            None,
            None,
        ];
        let mut n = 2;
        if self.acked_features & VIRTIO_BALLOON_F_STATS_VQ != 0 {
            roles[n] = Some(QueueRole::Stats);
            n += 1;
        }
        if self.acked_features & VIRTIO_BALLOON_F_REPORTING != 0 {
            roles[n] = Some(QueueRole::Reporting);
        }
        roles
    }

    fn queue_index(&self, role: QueueRole) -> Option<usize> {
        self.roles().iter().position(|r| *r == Some(role))
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&self.num_pages.to_le_bytes());
        c[4..8].copy_from_slice(&self.actual.to_le_bytes());
        // free_page_hint_cmd_id (8..12) stays 0: free page hinting is not offered.
        c[12..16].copy_from_slice(&self.poison_val.to_le_bytes());
        c
    }
}

impl VirtioDevice for VirtioBalloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let n = if self.avail_features & VIRTIO_BALLOON_F_REPORTING != 0 {
            4
        } else {
            3
        };
        vec![QUEUE_SIZE; n]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(offset) = usize::try_from(offset) else {
            return;
        };
        let mut c = self.config_bytes();
        for (i, &b) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i) else {
                break;
            };
            // Only actual and poison_val are the driver's to write.
            if (4..8).contains(&o) || (12..16).contains(&o) {
                c[o] = b;
            }
        }
        self.poison_val = u32::from_le_bytes([c[12], c[13], c[14], c[15]]);
        let actual = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        if actual != self.actual {
            self.actual = actual;
            self.events.actual_changed(actual);
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let want = self.roles().iter().flatten().count();
        if queues.len() < want {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want,
            });
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        // Linux queues (and kicks) its first statistics buffer before DRIVER_OK, when
        // the kick finds no active device: take it now.
        let stats = (0..want).find(|i| self.queue_role(*i) == Some(QueueRole::Stats));
        if let Some(i) = stats {
            self.process_stats(i)
                .map_err(|e| ActivateError::Failed(e.to_string()))?;
        }
        Ok(())
    }

    /// As QEMU: the target and the last reported `actual` survive a driver reset; the
    /// held statistics buffer, the poll and poison_val do not.
    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.poison_val = 0;
        self.held_stats = None;
        self.poll_deadline = None;
        self.timer.arm(None);
        self.inflated_pages = 0;
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        if self.active.is_none() {
            return Ok(());
        }
        match self.queue_role(index) {
            Some(QueueRole::Inflate) => self.process_pfns(index, true),
            Some(QueueRole::Deflate) => self.process_pfns(index, false),
            Some(QueueRole::Stats) => self.process_stats(index),
            Some(QueueRole::Reporting) => self.process_reports(index),
            None => Ok(()),
        }
    }

    fn active_queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues)
    }

    fn save_state(&self) -> Result<VirtioDeviceState, String> {
        Ok(VirtioDeviceState::Balloon(self.state()))
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), String> {
        match state {
            VirtioDeviceState::Balloon(s) => self.restore(s).map_err(|e| e.to_string()),
            other => Err(format!("{} state for a virtio-balloon", state_kind(other))),
        }
    }
}

#[cfg(test)]
mod tests;
