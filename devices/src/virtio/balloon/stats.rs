//! The statistics queue (virtio 1.2, 5.5.6.3): the buffer the guest fills, the poll
//! that hands it back every `guest-stats-polling-interval` seconds, and the QMP view
//! of what it reported.
//!
//! Invariant: at most one statistics buffer is held; the timer is armed only while an
//! interval is set and a buffer is held.

use std::io::Read;

use serde::Serialize;
use virtio_queue::{QueueT, Reader};

use super::{queue_of, QueueRole, VirtioBalloon};
use crate::virtio::queue_util::{pop, queue_err, signal};
use crate::virtio::DeviceError;

/// Statistics tags (5.5.6.3) by their QEMU names, as qom-get `guest-stats` lists them.
pub const STAT_NAMES: [&str; STAT_COUNT] = [
    "stat-swap-in",
    "stat-swap-out",
    "stat-major-faults",
    "stat-minor-faults",
    "stat-free-memory",
    "stat-total-memory",
    "stat-available-memory",
    "stat-disk-caches",
    "stat-htlb-pgalloc",
    "stat-htlb-pgfail",
];
pub const STAT_COUNT: usize = 10;

/// One statistics entry: le16 tag, le64 value, packed.
pub(super) const STAT_ENTRY_LEN: usize = 10;
/// Linux sends a handful; more than this in one buffer is not a statistics buffer.
pub(super) const MAX_STAT_ENTRIES: usize = 1024;
pub(super) const NS_PER_SEC: u64 = 1_000_000_000;

/// The guest's memory statistics, as qom-get `guest-stats` reports them: every known
/// statistic, -1 for one the guest never reported, and when the guest last reported
/// (0: never; QEMU then fails the qom-get with "guest hasn't updated any stats yet").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BalloonStats {
    /// Host wall-clock seconds since the Unix epoch of the last report.
    pub last_update: i64,
    /// Indexed by tag, named by [`STAT_NAMES`].
    pub values: [i64; STAT_COUNT],
}

impl Default for BalloonStats {
    fn default() -> Self {
        BalloonStats {
            last_update: 0,
            values: [-1; STAT_COUNT],
        }
    }
}

impl BalloonStats {
    /// The value of the statistic with QEMU name `name` (`stat-free-memory`, ...).
    pub fn get(&self, name: &str) -> Option<i64> {
        STAT_NAMES
            .iter()
            .position(|n| *n == name)
            .map(|i| self.values[i])
    }

    /// (name, value) of every statistic, in tag order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, i64)> + '_ {
        STAT_NAMES.iter().copied().zip(self.values.iter().copied())
    }
}

/// `{"last-update": N, "stats": {"stat-swap-in": N, ...}}`, QEMU's `guest-stats`.
impl Serialize for BalloonStats {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeStruct};

        struct Values<'a>(&'a BalloonStats);
        impl Serialize for Values<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(STAT_COUNT))?;
                for (name, value) in self.0.iter() {
                    m.serialize_entry(name, &value)?;
                }
                m.end()
            }
        }

        let mut st = s.serialize_struct("BalloonStats", 2)?;
        st.serialize_field("last-update", &self.last_update)?;
        st.serialize_field("stats", &Values(self))?;
        st.end()
    }
}

impl VirtioBalloon {
    /// Statistics polling interval (`guest-stats-polling-interval`), 0 turns it off.
    pub fn set_stats_interval_secs(&mut self, secs: u32) {
        self.stats_interval_secs = secs;
        if secs == 0 {
            self.poll_deadline = None;
            self.timer.arm(None);
        } else if self.held_stats.is_some() {
            self.arm_poll();
        }
        // Without a buffer to return, polling starts when the driver offers one.
    }

    pub fn stats_interval_secs(&self) -> u32 {
        self.stats_interval_secs
    }

    pub fn stats(&self) -> BalloonStats {
        self.stats
    }

    /// The machine calls this when the timer's deadline has passed: the held
    /// statistics buffer goes back to the driver, which refills it.
    pub fn timer_fired(&mut self) -> Result<(), DeviceError> {
        let Some(deadline) = self.poll_deadline else {
            return Ok(());
        };
        if self.clock.now_ns() < deadline {
            self.timer.arm(Some(deadline));
            return Ok(());
        }
        self.poll_deadline = None;
        self.timer.arm(None);
        if self.stats_interval_secs == 0 {
            return Ok(());
        }
        let Some(index) = self.queue_index(QueueRole::Stats) else {
            return Ok(());
        };
        let Some((mem, interrupt, q)) = queue_of(&mut self.active, index) else {
            return Ok(());
        };
        let Some(head) = self.held_stats.take() else {
            return Ok(());
        };
        q.add_used(mem, head, 0).map_err(queue_err)?;
        signal(q, mem, interrupt.as_ref(), index)
    }

    pub(super) fn arm_poll(&mut self) {
        let deadline = self
            .clock
            .now_ns()
            .saturating_add(u64::from(self.stats_interval_secs) * NS_PER_SEC);
        self.poll_deadline = Some(deadline);
        self.timer.arm(Some(deadline));
    }

    /// New statistics buffers: record their values and hold the last one.
    pub(super) fn process_stats(&mut self, index: usize) -> Result<(), DeviceError> {
        let Some((mem, interrupt, q)) = queue_of(&mut self.active, index) else {
            return Ok(());
        };
        let mut returned = false;
        let mut received = false;
        while let Some(chain) = pop(q, mem)? {
            received = true;
            let head = chain.head_index();
            // A driver following the spec has one buffer out; an earlier one goes back.
            if let Some(old) = self.held_stats.replace(head) {
                q.add_used(mem, old, 0).map_err(queue_err)?;
                returned = true;
            }
            match Reader::new(mem, chain) {
                Ok(mut r) => {
                    parse_stats(&mut r, &mut self.stats.values);
                    self.stats.last_update = (self.wall)();
                }
                Err(e) => log::debug!("virtio-balloon: malformed statistics buffer: {e}"),
            }
        }
        if returned {
            signal(q, mem, interrupt.as_ref(), index)?;
        }
        if received && self.stats_interval_secs != 0 {
            self.arm_poll();
        }
        Ok(())
    }
}

/// Records {le16 tag, le64 value} entries; unknown tags and a truncated tail are
/// ignored.
pub(super) fn parse_stats(
    r: &mut Reader<'_, crate::GuestBitmapSlice<'_>>,
    values: &mut [i64; STAT_COUNT],
) {
    let mut e = [0u8; STAT_ENTRY_LEN];
    for _ in 0..MAX_STAT_ENTRIES {
        if r.available_bytes() < STAT_ENTRY_LEN || r.read_exact(&mut e).is_err() {
            break;
        }
        let tag = usize::from(u16::from_le_bytes([e[0], e[1]]));
        let mut v = [0u8; 8];
        v.copy_from_slice(&e[2..]);
        let value = u64::from_le_bytes(v);
        if let Some(slot) = values.get_mut(tag) {
            *slot = i64::try_from(value).unwrap_or(i64::MAX);
        } else {
            log::debug!("virtio-balloon: ignored statistic with tag {tag}");
        }
    }
}
