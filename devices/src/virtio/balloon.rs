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

use std::io::Read;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT, Reader};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::queue_util::{pop, queue_err, read_config_bytes, signal};
use super::{
    ActivateError, DeviceError, VirtioDevice, VirtioInterrupt, TYPE_BALLOON, VIRTIO_F_VERSION_1,
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
const STAT_ENTRY_LEN: usize = 10;
/// Linux sends a handful; more than this in one buffer is not a statistics buffer.
const MAX_STAT_ENTRIES: usize = 1024;
/// Page numbers are read from a buffer this many bytes at a time.
const PFN_CHUNK: usize = 1024;
const NS_PER_SEC: u64 = 1_000_000_000;

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

    fn arm_poll(&mut self) {
        let deadline = self
            .clock
            .now_ns()
            .saturating_add(u64::from(self.stats_interval_secs) * NS_PER_SEC);
        self.poll_deadline = Some(deadline);
        self.timer.arm(Some(deadline));
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..4].copy_from_slice(&self.num_pages.to_le_bytes());
        c[4..8].copy_from_slice(&self.actual.to_le_bytes());
        // free_page_hint_cmd_id (8..12) stays 0: free page hinting is not offered.
        c[12..16].copy_from_slice(&self.poison_val.to_le_bytes());
        c
    }

    fn note_discard_error(&mut self, e: std::io::Error) {
        if !self.warned_discard {
            self.warned_discard = true;
            log::warn!("virtio-balloon: cannot give guest memory back to the host: {e}");
        }
    }

    /// Inflate (`inflate`) or deflate queue: buffers of le32 page numbers.
    fn process_pfns(&mut self, index: usize, inflate: bool) -> Result<(), DeviceError> {
        let Some((mem, interrupt, q)) = queue_of(&mut self.active, index) else {
            return Ok(());
        };
        let mut used = false;
        let mut pages = 0u64;
        let mut error = None;
        while let Some(chain) = pop(q, mem)? {
            used = true;
            let head = chain.head_index();
            match Reader::new(mem, chain) {
                Ok(mut r) => {
                    let (n, e) = apply_pfns(mem, &mut r, inflate);
                    pages += n;
                    error = error.or(e);
                }
                Err(e) => log::debug!("virtio-balloon: malformed page list: {e}"),
            }
            q.add_used(mem, head, 0).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), index)?;
        }
        if inflate {
            self.inflated_pages = self.inflated_pages.saturating_add(pages);
        } else {
            self.inflated_pages = self.inflated_pages.saturating_sub(pages);
        }
        if let Some(e) = error {
            self.note_discard_error(e);
        }
        Ok(())
    }

    /// New statistics buffers: record their values and hold the last one.
    fn process_stats(&mut self, index: usize) -> Result<(), DeviceError> {
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

    /// Free page reports: every descriptor is a range of free guest memory.
    fn process_reports(&mut self, index: usize) -> Result<(), DeviceError> {
        let Some((mem, interrupt, q)) = queue_of(&mut self.active, index) else {
            return Ok(());
        };
        let mut used = false;
        let mut bytes = 0u64;
        let mut error = None;
        while let Some(chain) = pop(q, mem)? {
            used = true;
            let head = chain.head_index();
            // Linux offers the ranges device-writable, the spec does not say: either
            // direction is taken, the device never reads or writes their contents.
            for desc in chain {
                let start = desc.addr().0;
                let Some(end) = start.checked_add(u64::from(desc.len())) else {
                    continue;
                };
                let Some(start) = start.checked_next_multiple_of(BALLOON_PAGE_SIZE) else {
                    continue;
                };
                let end = end & !(BALLOON_PAGE_SIZE - 1);
                if start < end {
                    let (n, e) = discard_range(mem, start, end);
                    bytes += n;
                    error = error.or(e);
                }
            }
            q.add_used(mem, head, 0).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), index)?;
        }
        self.reported_bytes = self.reported_bytes.saturating_add(bytes);
        if let Some(e) = error {
            self.note_discard_error(e);
        }
        Ok(())
    }
}

/// Reads le32 page numbers from `r` (a trailing partial one is ignored); discards the
/// pages when inflating. Returns how many pages were inside guest memory and the first
/// discard error.
fn apply_pfns(
    mem: &GuestMemoryMmap,
    r: &mut Reader<'_>,
    inflate: bool,
) -> (u64, Option<std::io::Error>) {
    let mut buf = [0u8; PFN_CHUNK];
    let mut pages = 0u64;
    let mut error = None;
    // Contiguous pages are discarded with one call: [start, end).
    let mut run: Option<(u64, u64)> = None;
    let flush = |(start, end): (u64, u64), error: &mut Option<std::io::Error>| {
        let (_, e) = discard_range(mem, start, end);
        if error.is_none() {
            *error = e;
        }
    };
    loop {
        let n = r.available_bytes().min(PFN_CHUNK) / 4 * 4;
        if n == 0 || r.read_exact(&mut buf[..n]).is_err() {
            break;
        }
        for c in buf[..n].chunks_exact(4) {
            let pfn = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            let gpa = u64::from(pfn) << VIRTIO_BALLOON_PFN_SHIFT;
            if !page_in_memory(mem, gpa) {
                log::debug!("virtio-balloon: page {pfn:#x} is not guest memory");
                continue;
            }
            pages += 1;
            if !inflate {
                continue;
            }
            run = match run {
                Some((start, end)) if end == gpa => Some((start, end + BALLOON_PAGE_SIZE)),
                other => {
                    if let Some(done) = other {
                        flush(done, &mut error);
                    }
                    Some((gpa, gpa + BALLOON_PAGE_SIZE))
                }
            };
        }
    }
    if let Some(done) = run {
        flush(done, &mut error);
    }
    (pages, error)
}

/// Whether the whole balloon page at `gpa` is inside one guest memory region.
fn page_in_memory(mem: &GuestMemoryMmap, gpa: u64) -> bool {
    mem.find_region(GuestAddress(gpa))
        .is_some_and(|r| gpa + (BALLOON_PAGE_SIZE - 1) <= r.last_addr().0)
}

fn host_page_size() -> usize {
    static SIZE: OnceLock<usize> = OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf reads a system constant.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Gives the host pages of guest range [start, end) back (the parts inside guest
/// memory, whole host pages only). Returns the bytes discarded and the first error.
fn discard_range(mem: &GuestMemoryMmap, start: u64, end: u64) -> (u64, Option<std::io::Error>) {
    let page = host_page_size();
    let mut done = 0u64;
    let mut error = None;
    for region in mem.iter() {
        let rs = region.start_addr().0;
        let re = rs.saturating_add(region.len());
        let (s, e) = (start.max(rs), end.min(re));
        if s >= e {
            continue;
        }
        let Ok(host) = mem.get_host_address(GuestAddress(s)) else {
            continue;
        };
        let Ok(len) = usize::try_from(e - s) else {
            continue;
        };
        let h = host as usize;
        let (Some(hs), Some(he)) = (h.checked_next_multiple_of(page), h.checked_add(len)) else {
            continue;
        };
        let he = he - he % page;
        if hs >= he {
            continue;
        }
        // SAFETY: [hs, he) lies inside this region's mapping (its host address plus a
        // length within the region). The guest gave these pages up; MADV_DONTNEED only
        // drops their contents, which the host reads and writes volatilely anyway.
        let r = unsafe { libc::madvise(hs as *mut libc::c_void, he - hs, libc::MADV_DONTNEED) };
        if r == 0 {
            done += (he - hs) as u64;
        } else if error.is_none() {
            error = Some(std::io::Error::last_os_error());
        }
    }
    (done, error)
}

/// Records {le16 tag, le64 value} entries; unknown tags and a truncated tail are
/// ignored.
fn parse_stats(r: &mut Reader<'_>, values: &mut [i64; STAT_COUNT]) {
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
}

#[cfg(test)]
mod tests {
    use super::super::net::testutil::{read, Irq, Vq, F_NEXT};
    use super::*;
    use crate::timer::{ManualClock, ManualTimer};
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Mutex;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use vm_memory::Bytes;

    /// A second RAM region past a hole.
    const HIGH: u64 = 0x200_0000;
    const PAGE: u64 = BALLOON_PAGE_SIZE;
    const T0: i64 = 1_700_000_000;
    const SEC: u64 = NS_PER_SEC;

    /// 16 MiB at 0, a hole, 1 MiB at 32 MiB.
    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x100_0000),
            (GuestAddress(HIGH), 0x10_0000),
        ])
        .unwrap()
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<u32>>);

    impl BalloonEvents for Events {
        fn actual_changed(&self, actual_pages: u32) {
            self.0.lock().unwrap().push(actual_pages);
        }
    }

    impl Events {
        fn take(&self) -> Vec<u32> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    struct Rig {
        dev: VirtioBalloon,
        irq: Arc<Irq>,
        events: Arc<Events>,
        clock: Arc<ManualClock>,
        timer: Arc<ManualTimer>,
        wall: Arc<AtomicI64>,
    }

    impl Rig {
        fn new(config: BalloonConfig) -> Self {
            let events = Arc::new(Events::default());
            let clock = Arc::new(ManualClock::new(0));
            let timer = Arc::new(ManualTimer::default());
            let wall = Arc::new(AtomicI64::new(T0));
            let w = wall.clone();
            let dev = VirtioBalloon::new(
                config,
                events.clone(),
                clock.clone(),
                timer.clone(),
                Arc::new(move || w.load(Ordering::SeqCst)),
            );
            Rig {
                dev,
                irq: Arc::new(Irq::default()),
                events,
                clock,
                timer,
                wall,
            }
        }

        fn config_u32(&self, offset: u64) -> u32 {
            let mut b = [0u8; 4];
            self.dev.read_config(offset, &mut b);
            u32::from_le_bytes(b)
        }

        fn irq_queues(&self) -> Vec<u16> {
            std::mem::take(&mut *self.irq.queues.lock().unwrap())
        }

        fn config_irqs(&self) -> usize {
            self.irq.config.load(Ordering::SeqCst)
        }
    }

    struct Driver<'a> {
        mem: &'a GuestMemoryMmap,
        vqs: Vec<Vq<'a>>,
        next_addr: u64,
    }

    impl<'a> Driver<'a> {
        fn new(mem: &'a GuestMemoryMmap, queues: usize) -> Self {
            Driver {
                mem,
                vqs: (0..queues)
                    .map(|i| Vq::new(mem, i as u64 * 0x1_0000))
                    .collect(),
                next_addr: 0x20_0000,
            }
        }

        fn activate(&self, rig: &mut Rig, features: u64) {
            rig.dev.ack_features(features);
            let queues = self.vqs.iter().map(|v| v.queue()).collect();
            rig.dev
                .activate(self.mem.clone(), rig.irq.clone(), queues)
                .unwrap();
        }

        /// Writes `data` to fresh guest memory; returns its address.
        fn put(&mut self, data: &[u8]) -> u64 {
            let a = self.next_addr;
            self.next_addr += (data.len() as u64).max(1).div_ceil(PAGE) * PAGE;
            self.mem.write_slice(data, GuestAddress(a)).unwrap();
            a
        }

        /// Offers `data` as one device-readable buffer on queue `q` and notifies.
        fn send(&mut self, rig: &mut Rig, q: usize, data: &[u8]) -> u16 {
            let a = self.put(data);
            let head = self.vqs[q].add(&[(a, data.len() as u32, false)]);
            rig.dev.process_queue(q).unwrap();
            head
        }

        fn send_pfns(&mut self, rig: &mut Rig, q: usize, pfns: &[u32]) -> u16 {
            let data: Vec<u8> = pfns.iter().flat_map(|p| p.to_le_bytes()).collect();
            self.send(rig, q, &data)
        }
    }

    fn fill(mem: &GuestMemoryMmap, addr: u64, len: u64, byte: u8) {
        mem.write_slice(&vec![byte; len as usize], GuestAddress(addr))
            .unwrap();
    }

    fn is_filled(mem: &GuestMemoryMmap, addr: u64, len: u64, byte: u8) -> bool {
        read(mem, addr, len as usize).iter().all(|&b| b == byte)
    }

    fn stat_entries(entries: &[(u16, u64)]) -> Vec<u8> {
        let mut v = Vec::new();
        for &(tag, value) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&value.to_le_bytes());
        }
        v
    }

    const STATS: u64 = VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_STATS_VQ;
    const BOTH: BalloonConfig = BalloonConfig {
        deflate_on_oom: true,
        free_page_reporting: true,
    };

    #[test]
    fn features_queues_and_config_layout() {
        let mut rig = Rig::new(BalloonConfig::default());
        assert_eq!(rig.dev.device_type(), TYPE_BALLOON);
        assert_eq!(rig.dev.features(), STATS);
        assert_eq!(rig.dev.queue_max_sizes(), vec![QUEUE_SIZE; 3]);
        let full = Rig::new(BOTH);
        assert_eq!(
            full.dev.features(),
            STATS | VIRTIO_BALLOON_F_DEFLATE_ON_OOM | VIRTIO_BALLOON_F_REPORTING
        );
        assert_eq!(full.dev.queue_max_sizes(), vec![QUEUE_SIZE; 4]);

        // Not active yet: the target is stored, nobody is interrupted.
        rig.dev.set_target_pages(0x0102_0304);
        assert_eq!(rig.config_irqs(), 0);
        rig.dev.write_config(4, &7u32.to_le_bytes());
        rig.dev.write_config(12, &0xaabb_ccddu32.to_le_bytes());
        let mut c = [0xffu8; CONFIG_LEN];
        rig.dev.read_config(0, &mut c);
        assert_eq!(
            c,
            [4, 3, 2, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0xcc, 0xbb, 0xaa]
        );
        assert_eq!(rig.events.take(), vec![7]);

        // num_pages and free_page_hint_cmd_id are the device's.
        rig.dev.write_config(0, &[9; 4]);
        rig.dev.write_config(8, &[9; 4]);
        assert_eq!(rig.config_u32(0), 0x0102_0304);
        assert_eq!(rig.config_u32(8), 0);
        // A write straddling num_pages and actual changes only actual's bytes.
        rig.dev.write_config(2, &[0xee, 0xee, 1, 1]);
        assert_eq!(rig.config_u32(0), 0x0102_0304);
        assert_eq!(rig.dev.actual_pages(), 0x0101);

        // Reads of any offset and length.
        let mut b = [0xffu8; 8];
        rig.dev.read_config(14, &mut b);
        assert_eq!(b, [0xbb, 0xaa, 0, 0, 0, 0, 0, 0]);
        rig.dev.read_config(u64::MAX, &mut b);
        assert_eq!(b, [0; 8]);
        rig.dev.read_config(1, &mut []);
        rig.dev.write_config(u64::MAX, &[1, 2, 3]);
        rig.dev.write_config(15, &[1, 2, 3, 4, 5]);
        assert_eq!(rig.config_u32(12), 0x01bb_ccdd);
    }

    #[test]
    fn target_and_actual_signal_only_what_changed() {
        let mem = memory();
        let mut rig = Rig::new(BalloonConfig::default());
        let drv = Driver::new(&mem, 3);
        drv.activate(&mut rig, STATS);

        rig.dev.set_target_pages(256);
        assert_eq!(rig.config_irqs(), 1);
        assert_eq!(rig.dev.target_pages(), 256);
        assert_eq!(rig.config_u32(0), 256);
        // QEMU signals every request, even one repeating the target.
        rig.dev.set_target_pages(256);
        assert_eq!(rig.config_irqs(), 2);

        rig.dev.write_config(4, &256u32.to_le_bytes());
        assert_eq!(rig.dev.actual_pages(), 256);
        assert_eq!(rig.events.take(), vec![256]);
        rig.dev.write_config(4, &256u32.to_le_bytes());
        assert!(rig.events.take().is_empty(), "same value, no event");
        rig.dev.write_config(4, &0u32.to_le_bytes());
        assert_eq!(rig.events.take(), vec![0]);
        // poison_val is not actual.
        rig.dev.write_config(12, &0xaau32.to_le_bytes());
        assert!(rig.events.take().is_empty());
        assert_eq!(rig.config_irqs(), 2, "driver writes do not interrupt");
    }

    #[test]
    fn inflate_discards_guest_pages_and_skips_pfns_outside_memory() {
        let mem = memory();
        let mut rig = Rig::new(BalloonConfig::default());
        let mut drv = Driver::new(&mem, 3);
        drv.activate(&mut rig, STATS);
        fill(&mem, 0x80_0000, 5 * PAGE, 0xab);
        fill(&mem, 0xff_f000, PAGE, 0xab);
        fill(&mem, HIGH + PAGE, PAGE, 0xab);

        let high = (HIGH >> VIRTIO_BALLOON_PFN_SHIFT) as u32;
        let head = drv.send_pfns(
            &mut rig,
            0,
            &[
                0x800,
                0x801,
                0x803,
                0xfff,        // the last page of the first region
                0x1000,       // the hole after it
                high + 1,     // the second region
                high + 0x100, // just past it
                u32::MAX,
            ],
        );
        assert_eq!(drv.vqs[0].used(), vec![(head, 0)]);
        assert_eq!(rig.irq_queues(), vec![0]);
        assert_eq!(rig.dev.inflated_pages(), 5);
        for page in [0x80_0000, 0x80_1000, 0x80_3000, 0xff_f000, HIGH + PAGE] {
            assert!(is_filled(&mem, page, PAGE, 0), "{page:#x} discarded");
        }
        for page in [0x80_2000, 0x80_4000] {
            assert!(is_filled(&mem, page, PAGE, 0xab), "{page:#x} untouched");
        }

        // Many buffers at once, more page numbers than one read takes.
        let pfns: Vec<u32> = (0x900..0x900 + 600).collect();
        fill(&mem, 0x90_0000, 600 * PAGE, 0xcd);
        drv.send_pfns(&mut rig, 0, &pfns);
        assert_eq!(rig.dev.inflated_pages(), 605);
        assert!(is_filled(&mem, 0x90_0000, 600 * PAGE, 0));
        assert_eq!(drv.vqs[0].used().len(), 2);
    }

    #[test]
    fn deflate_counts_pages_back_and_the_guest_uses_them_again() {
        let mem = memory();
        let mut rig = Rig::new(BalloonConfig::default());
        let mut drv = Driver::new(&mem, 3);
        drv.activate(&mut rig, STATS);
        fill(&mem, 0x80_0000, 3 * PAGE, 0xab);
        drv.send_pfns(&mut rig, 0, &[0x800, 0x801, 0x802]);
        assert_eq!(rig.dev.inflated_pages(), 3);

        let head = drv.send_pfns(&mut rig, 1, &[0x800, 0x801, 0x10_0000]);
        assert_eq!(drv.vqs[1].used(), vec![(head, 0)]);
        assert_eq!(rig.irq_queues(), vec![0, 1]);
        assert_eq!(
            rig.dev.inflated_pages(),
            1,
            "the page outside memory is not counted"
        );
        fill(&mem, 0x80_0000, PAGE, 0x11);
        assert!(is_filled(&mem, 0x80_0000, PAGE, 0x11));

        drv.send_pfns(&mut rig, 1, &[0x802, 0x803, 0x804]);
        assert_eq!(rig.dev.inflated_pages(), 0, "saturates");
    }

    #[test]
    fn a_stats_buffer_queued_before_driver_ok_is_taken_at_activation() {
        let mem = memory();
        let mut rig = Rig::new(BalloonConfig::default());
        let mut drv = Driver::new(&mem, 3);
        let buf = stat_entries(&[(4, 4096), (5, 8192)]);
        let a = drv.put(&buf);
        drv.vqs[2].add(&[(a, buf.len() as u32, false)]);
        drv.activate(&mut rig, STATS);
        let s = rig.dev.stats();
        assert_eq!(s.last_update, T0);
        assert_eq!(s.get("stat-free-memory"), Some(4096));
        assert_eq!(s.get("stat-total-memory"), Some(8192));
        assert!(drv.vqs[2].used().is_empty(), "the buffer is held");
    }

    #[test]
    fn stats_are_parsed_held_and_polled_by_the_timer() {
        let mem = memory();
        let mut rig = Rig::new(BalloonConfig::default());
        let mut drv = Driver::new(&mem, 3);
        drv.activate(&mut rig, STATS);
        assert_eq!(rig.dev.stats(), BalloonStats::default());
        assert_eq!(rig.dev.stats().get("stat-free-memory"), Some(-1));

        // Every tag, an unknown one, a value past i64 and a truncated tail.
        let mut entries: Vec<(u16, u64)> = (0..10).map(|t| (t, 100 + u64::from(t))).collect();
        entries.push((42, 7));
        entries.push((9, u64::MAX));
        let mut buf = stat_entries(&entries);
        buf.extend_from_slice(&[1, 0, 0xff, 0xff, 0xff]);
        let first = drv.send(&mut rig, 2, &buf);
        assert!(drv.vqs[2].used().is_empty(), "the buffer is held");
        assert!(rig.irq_queues().is_empty());
        let s = rig.dev.stats();
        assert_eq!(s.last_update, T0);
        assert_eq!(s.get("stat-swap-in"), Some(100));
        assert_eq!(s.get("stat-swap-out"), Some(101));
        assert_eq!(s.get("stat-htlb-pgalloc"), Some(108));
        assert_eq!(s.get("stat-htlb-pgfail"), Some(i64::MAX));
        assert_eq!(s.get("stat-bogus"), None);
        assert_eq!(
            s.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            STAT_NAMES.to_vec()
        );
        assert_eq!(rig.timer.deadline(), None, "no polling interval yet");

        rig.clock.set(SEC);
        rig.dev.set_stats_interval_secs(5);
        assert_eq!(rig.dev.stats_interval_secs(), 5);
        assert_eq!(rig.timer.deadline(), Some(6 * SEC));
        // Early: nothing happens, the deadline stays.
        rig.clock.set(5 * SEC);
        rig.dev.timer_fired().unwrap();
        assert!(drv.vqs[2].used().is_empty());
        assert_eq!(rig.timer.deadline(), Some(6 * SEC));
        // Due: the buffer goes back for a refill.
        rig.clock.set(6 * SEC);
        rig.dev.timer_fired().unwrap();
        assert_eq!(drv.vqs[2].used(), vec![(first, 0)]);
        assert_eq!(rig.irq_queues(), vec![2]);
        assert_eq!(rig.timer.deadline(), None);
        rig.dev.timer_fired().unwrap();
        assert_eq!(drv.vqs[2].used().len(), 1, "nothing held, nothing returned");

        // The driver's fresh values; what it does not report again keeps its value.
        rig.wall.store(T0 + 5, Ordering::SeqCst);
        let second = drv.send(&mut rig, 2, &stat_entries(&[(4, 4096), (6, 8192)]));
        let s = rig.dev.stats();
        assert_eq!(s.last_update, T0 + 5);
        assert_eq!(s.get("stat-free-memory"), Some(4096));
        assert_eq!(s.get("stat-available-memory"), Some(8192));
        assert_eq!(s.get("stat-swap-in"), Some(100));
        assert_eq!(rig.timer.deadline(), Some(11 * SEC), "re-armed");
        rig.clock.set(11 * SEC);
        rig.dev.timer_fired().unwrap();
        assert_eq!(drv.vqs[2].used(), vec![(first, 0), (second, 0)]);
    }

    #[test]
    fn stats_interval_zero_disarms_and_polling_waits_for_a_buffer() {
        let mem = memory();
        let mut rig = Rig::new(BalloonConfig::default());
        let mut drv = Driver::new(&mem, 3);
        drv.activate(&mut rig, STATS);

        // An interval without a buffer to return arms nothing until one comes.
        rig.dev.set_stats_interval_secs(10);
        assert_eq!(rig.timer.deadline(), None);
        rig.dev.timer_fired().unwrap();
        rig.clock.set(SEC);
        let head = drv.send(&mut rig, 2, &stat_entries(&[(5, 1 << 30)]));
        assert_eq!(rig.timer.deadline(), Some(11 * SEC));

        rig.dev.set_stats_interval_secs(0);
        assert_eq!(rig.timer.deadline(), None);
        rig.clock.set(100 * SEC);
        rig.dev.timer_fired().unwrap();
        assert!(drv.vqs[2].used().is_empty(), "still held");

        // A new interval counts from now.
        rig.dev.set_stats_interval_secs(2);
        assert_eq!(rig.timer.deadline(), Some(102 * SEC));
        rig.clock.set(102 * SEC);
        rig.dev.timer_fired().unwrap();
        assert_eq!(drv.vqs[2].used(), vec![(head, 0)]);
    }

    #[test]
    fn a_second_stats_buffer_returns_the_first() {
        let mem = memory();
        let mut rig = Rig::new(BalloonConfig::default());
        let mut drv = Driver::new(&mem, 3);
        drv.activate(&mut rig, STATS);
        let first = drv.send(&mut rig, 2, &stat_entries(&[(0, 1)]));
        drv.send(&mut rig, 2, &stat_entries(&[(0, 2)]));
        assert_eq!(drv.vqs[2].used(), vec![(first, 0)]);
        assert_eq!(rig.irq_queues(), vec![2]);
        assert_eq!(rig.dev.stats().get("stat-swap-in"), Some(2));
    }

    #[test]
    fn free_page_reporting_discards_the_ranges_and_returns_the_buffer() {
        let mem = memory();
        let mut rig = Rig::new(BOTH);
        let drv = Driver::new(&mem, 4);
        drv.activate(&mut rig, STATS | VIRTIO_BALLOON_F_REPORTING);
        assert_eq!(rig.dev.queue_role(3), Some(QueueRole::Reporting));
        fill(&mem, 0x90_0000, 4 * PAGE, 0xab);
        fill(&mem, HIGH, 2 * PAGE, 0xab);

        // Linux offers the ranges device-writable; the unaligned edges are kept.
        let mut vq = drv.vqs.into_iter().nth(3).unwrap();
        let head = vq.add(&[(0x90_0800, 0x2800, true), (HIGH, 0x1000, false)]);
        rig.dev.process_queue(3).unwrap();
        assert_eq!(vq.used(), vec![(head, 0)]);
        assert_eq!(rig.irq_queues(), vec![3]);
        assert_eq!(rig.dev.reported_bytes(), 3 * PAGE);
        assert!(is_filled(&mem, 0x90_0000, PAGE, 0xab));
        assert!(is_filled(&mem, 0x90_1000, 2 * PAGE, 0));
        assert!(is_filled(&mem, 0x90_3000, PAGE, 0xab));
        assert!(is_filled(&mem, HIGH, PAGE, 0));
        assert!(is_filled(&mem, HIGH + PAGE, PAGE, 0xab));

        // A range across the hole: only the memory parts go.
        fill(&mem, 0xff_f000, PAGE, 0xab);
        fill(&mem, HIGH + PAGE, PAGE, 0xab);
        vq.add(&[(0xff_f000, (HIGH + 2 * PAGE - 0xff_f000) as u32, true)]);
        rig.dev.process_queue(3).unwrap();
        assert_eq!(rig.dev.reported_bytes(), 6 * PAGE);
        assert!(is_filled(&mem, 0xff_f000, PAGE, 0));
        assert!(is_filled(&mem, HIGH + PAGE, PAGE, 0));
        assert_eq!(rig.dev.inflated_pages(), 0, "reporting is not ballooning");
    }

    #[test]
    fn queue_roles_follow_the_negotiated_features() {
        let mem = memory();
        let mut rig = Rig::new(BOTH);
        use QueueRole::*;
        let roles = |d: &VirtioBalloon| (0..5).map(|i| d.queue_role(i)).collect::<Vec<_>>();

        rig.dev.ack_features(STATS | VIRTIO_BALLOON_F_REPORTING);
        assert_eq!(
            roles(&rig.dev),
            vec![
                Some(Inflate),
                Some(Deflate),
                Some(Stats),
                Some(Reporting),
                None
            ]
        );
        rig.dev.ack_features(STATS);
        assert_eq!(
            roles(&rig.dev),
            vec![Some(Inflate), Some(Deflate), Some(Stats), None, None]
        );

        // A driver without STATS_VQ has its reporting queue at index 2.
        let mut drv = Driver::new(&mem, 3);
        drv.activate(&mut rig, VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING);
        assert_eq!(
            roles(&rig.dev),
            vec![Some(Inflate), Some(Deflate), Some(Reporting), None, None]
        );
        fill(&mem, 0x90_0000, PAGE, 0xab);
        let head = drv.vqs[2].add(&[(0x90_0000, PAGE as u32, true)]);
        rig.dev.process_queue(2).unwrap();
        assert_eq!(drv.vqs[2].used(), vec![(head, 0)]);
        assert!(is_filled(&mem, 0x90_0000, PAGE, 0));
        assert_eq!(rig.dev.reported_bytes(), PAGE);
        // No statistics queue: polling never returns anything.
        rig.dev.set_stats_interval_secs(1);
        rig.clock.set(10 * SEC);
        rig.dev.timer_fired().unwrap();
        drv.send_pfns(&mut rig, 0, &[0x900]);
        assert_eq!(rig.dev.inflated_pages(), 1);
        rig.dev.process_queue(3).unwrap();
    }

    #[test]
    fn activation_needs_the_queues_of_the_negotiated_features() {
        let mem = memory();
        let drv = Driver::new(&mem, 4);
        let q = |n: usize| drv.vqs[..n].iter().map(|v| v.queue()).collect::<Vec<_>>();
        let mut rig = Rig::new(BOTH);
        let irq = rig.irq.clone();
        for (features, want) in [
            (VIRTIO_F_VERSION_1, 2),
            (STATS, 3),
            (VIRTIO_F_VERSION_1 | VIRTIO_BALLOON_F_REPORTING, 3),
            (STATS | VIRTIO_BALLOON_F_REPORTING, 4),
        ] {
            rig.dev.ack_features(features);
            let e = rig
                .dev
                .activate(mem.clone(), irq.clone(), q(want - 1))
                .unwrap_err();
            assert!(
                matches!(e, ActivateError::QueueCount { got, want: w } if got == want - 1 && w == want),
                "{e}"
            );
            rig.dev.activate(mem.clone(), irq.clone(), q(want)).unwrap();
            rig.dev.reset();
        }
    }

    #[test]
    fn malformed_chains_are_returned_without_harm() {
        let mem = memory();
        let mut rig = Rig::new(BOTH);
        let mut drv = Driver::new(&mem, 4);
        // Nothing happens before activation.
        rig.dev.process_queue(0).unwrap();
        rig.dev.timer_fired().unwrap();
        drv.activate(&mut rig, STATS | VIRTIO_BALLOON_F_REPORTING);
        fill(&mem, 0x80_0000, 4 * PAGE, 0xab);
        let pfns = drv.put(&[0, 8, 0, 0, 1, 8, 0, 0]);

        // Inflate: outside memory, write-only, a length not a multiple of 4, a chain
        // whose next descriptor is past the table, one overflowing the address space.
        drv.vqs[0].add(&[(0x4000_0000, 8, false)]);
        drv.vqs[0].add(&[(pfns, 8, true)]);
        drv.vqs[0].add(&[(pfns, 6, false)]);
        let bad: Vec<RawDescriptor> = vec![SplitDescriptor::new(pfns + 4, 4, F_NEXT, 200).into()];
        drv.vqs[0].mock.add_desc_chains(&bad, 40).unwrap();
        drv.vqs[0].add(&[(u64::MAX - 3, 8, false)]);
        rig.dev.process_queue(0).unwrap();
        assert_eq!(drv.vqs[0].used().len(), 5);
        assert!(drv.vqs[0].used().iter().all(|u| u.1 == 0));
        assert_eq!(rig.dev.inflated_pages(), 2);
        assert!(is_filled(&mem, 0x80_0000, 2 * PAGE, 0));
        assert!(is_filled(&mem, 0x80_2000, 2 * PAGE, 0xab));

        // Deflate from outside memory: returned, nothing counted.
        drv.vqs[1].add(&[(0x4000_0000, 4, false)]);
        rig.dev.process_queue(1).unwrap();
        assert_eq!(drv.vqs[1].used().len(), 1);
        assert_eq!(rig.dev.inflated_pages(), 2);

        // Statistics outside memory: held, nothing recorded; polled back as usual.
        drv.vqs[2].add(&[(0x4000_0000, 20, false)]);
        rig.dev.process_queue(2).unwrap();
        assert_eq!(rig.dev.stats(), BalloonStats::default());
        rig.dev.set_stats_interval_secs(1);
        rig.clock.set(SEC);
        rig.dev.timer_fired().unwrap();
        assert_eq!(drv.vqs[2].used().len(), 1);

        // Reports outside memory, wrapping, empty: returned, nothing discarded.
        drv.vqs[3].add(&[
            (0x4000_0000, 0x1000, true),
            (u64::MAX - 0xfff, 0x2000, true),
        ]);
        drv.vqs[3].add(&[(0x80_2000, 0, true)]);
        drv.vqs[3].add(&[(0x80_2001, 0x1000, true)]);
        rig.dev.process_queue(3).unwrap();
        assert_eq!(drv.vqs[3].used().len(), 3);
        assert_eq!(rig.dev.reported_bytes(), 0);
        assert!(is_filled(&mem, 0x80_2000, 2 * PAGE, 0xab));

        // Unknown queues are harmless and the device still works.
        rig.dev.process_queue(4).unwrap();
        rig.dev.process_queue(usize::MAX).unwrap();
        drv.send_pfns(&mut rig, 0, &[0x802]);
        assert_eq!(rig.dev.inflated_pages(), 3);
        assert!(is_filled(&mem, 0x80_2000, PAGE, 0));
    }

    #[test]
    fn reset_keeps_the_target_and_drops_the_driver_state() {
        let mem = memory();
        let mut rig = Rig::new(BalloonConfig::default());
        let mut drv = Driver::new(&mem, 3);
        drv.activate(&mut rig, STATS);
        rig.dev.set_target_pages(100);
        rig.dev.write_config(4, &100u32.to_le_bytes());
        rig.dev.write_config(12, &0x55u32.to_le_bytes());
        rig.dev.set_stats_interval_secs(3);
        drv.send(&mut rig, 2, &stat_entries(&[(4, 1)]));
        drv.send_pfns(&mut rig, 0, &[0x800]);
        assert_eq!(rig.timer.deadline(), Some(3 * SEC));

        rig.dev.reset();
        assert_eq!(rig.timer.deadline(), None);
        assert_eq!(rig.dev.target_pages(), 100);
        assert_eq!(rig.dev.actual_pages(), 100);
        assert_eq!(rig.config_u32(12), 0);
        assert_eq!(rig.dev.inflated_pages(), 0);
        assert_eq!(rig.dev.state().acked_features, 0);
        assert_eq!(rig.dev.stats().get("stat-free-memory"), Some(1));
        let irqs = rig.config_irqs();
        rig.dev.set_target_pages(50);
        assert_eq!(rig.config_irqs(), irqs, "no driver to tell");
        rig.clock.set(10 * SEC);
        rig.dev.timer_fired().unwrap();
        rig.dev.process_queue(2).unwrap();

        // The driver comes back with fresh rings and a new statistics buffer.
        let mut drv = Driver::new(&mem, 3);
        drv.activate(&mut rig, STATS);
        let head = drv.send(&mut rig, 2, &stat_entries(&[(4, 2)]));
        assert_eq!(rig.timer.deadline(), Some(13 * SEC));
        rig.clock.set(13 * SEC);
        rig.dev.timer_fired().unwrap();
        assert_eq!(drv.vqs[2].used(), vec![(head, 0)]);
    }

    #[test]
    fn state_round_trips_and_stats_serialize_as_qemu_guest_stats() {
        let mut rig = Rig::new(BalloonConfig {
            deflate_on_oom: true,
            free_page_reporting: false,
        });
        rig.dev
            .ack_features(STATS | VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
        rig.dev.set_target_pages(1234);
        rig.dev.write_config(4, &1000u32.to_le_bytes());
        rig.dev.write_config(12, &7u32.to_le_bytes());
        rig.dev.set_stats_interval_secs(2);
        let s = rig.dev.state();
        assert_eq!(
            s,
            BalloonState {
                acked_features: STATS | VIRTIO_BALLOON_F_DEFLATE_ON_OOM,
                num_pages: 1234,
                actual: 1000,
                poison_val: 7,
                stats_interval_secs: 2,
            }
        );
        let json = serde_json::to_string(&s).unwrap();
        let back: BalloonState = serde_json::from_str(&json).unwrap();
        let mut other = Rig::new(BalloonConfig {
            deflate_on_oom: true,
            free_page_reporting: false,
        });
        other.dev.restore(&back).unwrap();
        assert_eq!(other.dev.state(), s);
        assert_eq!(other.config_u32(4), 1000);
        assert!(other.events.take().is_empty());
        let mut plain = Rig::new(BalloonConfig::default());
        assert!(matches!(
            plain.dev.restore(&s),
            Err(BalloonError::InvalidState(_))
        ));

        let mut stats = BalloonStats {
            last_update: T0,
            ..BalloonStats::default()
        };
        stats.values[4] = 4096;
        let v = serde_json::to_value(stats).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            format!(
                "{{\"last-update\":{T0},\"stats\":{{\"stat-swap-in\":-1,\"stat-swap-out\":-1,\
                 \"stat-major-faults\":-1,\"stat-minor-faults\":-1,\"stat-free-memory\":4096,\
                 \"stat-total-memory\":-1,\"stat-available-memory\":-1,\"stat-disk-caches\":-1,\
                 \"stat-htlb-pgalloc\":-1,\"stat-htlb-pgfail\":-1}}}}"
            )
        );
    }
}
