//! Per-device I/O statistics, kept in the shape of QMP `query-blockstats` (BlockDeviceStats)
//! so the monitor reports them field for field. Accounting follows QEMU: a successful
//! operation adds to `*_operations`, `*_bytes` and `*_total_time_ns`; a failed one only to
//! `failed_*` (and the time); a request the device refused before it reached the image
//! (out of range, malformed) to `invalid_*`. Write-zeroes counts as a write, discard as
//! unmap.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Which counter family an operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Read,
    Write,
    Flush,
    Discard,
}

/// A snapshot of one device's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub rd_bytes: u64,
    pub wr_bytes: u64,
    pub unmap_bytes: u64,
    pub rd_operations: u64,
    pub wr_operations: u64,
    pub flush_operations: u64,
    pub unmap_operations: u64,
    pub rd_total_time_ns: u64,
    pub wr_total_time_ns: u64,
    pub flush_total_time_ns: u64,
    pub unmap_total_time_ns: u64,
    pub failed_rd_operations: u64,
    pub failed_wr_operations: u64,
    pub failed_flush_operations: u64,
    pub failed_unmap_operations: u64,
    pub invalid_rd_operations: u64,
    pub invalid_wr_operations: u64,
    pub invalid_flush_operations: u64,
    pub invalid_unmap_operations: u64,
    /// One past the highest byte offset written so far (QEMU's `wr_highest_offset`).
    pub wr_highest_offset: u64,
    /// When the last operation finished; `None` before the first.
    pub last_access: Option<Instant>,
}

impl BlockStats {
    /// `idle_time_ns` of query-blockstats: time since the last access, if any.
    pub fn idle_time_ns(&self) -> Option<u64> {
        self.last_access.map(|t| duration_ns(t.elapsed()))
    }

    /// Accounts a finished operation.
    pub fn record(&mut self, kind: OpKind, bytes: u64, elapsed: Duration, ok: bool) {
        let ns = duration_ns(elapsed);
        let (ops, byt, time, failed) = match kind {
            OpKind::Read => (
                &mut self.rd_operations,
                &mut self.rd_bytes,
                &mut self.rd_total_time_ns,
                &mut self.failed_rd_operations,
            ),
            OpKind::Write => (
                &mut self.wr_operations,
                &mut self.wr_bytes,
                &mut self.wr_total_time_ns,
                &mut self.failed_wr_operations,
            ),
            OpKind::Flush => (
                &mut self.flush_operations,
                &mut 0u64,
                &mut self.flush_total_time_ns,
                &mut self.failed_flush_operations,
            ),
            OpKind::Discard => (
                &mut self.unmap_operations,
                &mut self.unmap_bytes,
                &mut self.unmap_total_time_ns,
                &mut self.failed_unmap_operations,
            ),
        };
        *time = time.saturating_add(ns);
        if ok {
            *ops += 1;
            *byt = byt.saturating_add(bytes);
        } else {
            *failed += 1;
        }
        self.last_access = Some(Instant::now());
    }

    /// Accounts a request refused before it reached the image.
    pub fn record_invalid(&mut self, kind: OpKind) {
        match kind {
            OpKind::Read => self.invalid_rd_operations += 1,
            OpKind::Write => self.invalid_wr_operations += 1,
            OpKind::Flush => self.invalid_flush_operations += 1,
            OpKind::Discard => self.invalid_unmap_operations += 1,
        }
        self.last_access = Some(Instant::now());
    }

    fn note_write_end(&mut self, end: u64) {
        self.wr_highest_offset = self.wr_highest_offset.max(end);
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A shared handle on a device's counters: the device updates them on its event-loop
/// thread, the monitor snapshots them for query-blockstats. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatsHandle(Arc<Mutex<BlockStats>>);

impl StatsHandle {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BlockStats> {
        // A panic elsewhere while holding the lock leaves plain counters: still usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the counters now.
    pub fn snapshot(&self) -> BlockStats {
        self.lock().clone()
    }

    pub fn record(&self, kind: OpKind, bytes: u64, elapsed: Duration, ok: bool) {
        self.lock().record(kind, bytes, elapsed, ok);
    }

    pub fn record_invalid(&self, kind: OpKind) {
        self.lock().record_invalid(kind);
    }

    pub(crate) fn record_write_end(&self, end: u64) {
        self.lock().note_write_end(end);
    }

    /// Zeroes every counter (QMP has no such command; tests and hot-unplug reuse do).
    pub fn reset(&self) {
        *self.lock() = BlockStats::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_follows_qemu() {
        let s = StatsHandle::new();
        assert_eq!(s.snapshot().idle_time_ns(), None);
        s.record(OpKind::Read, 4096, Duration::from_nanos(10), true);
        s.record(OpKind::Read, 4096, Duration::from_nanos(5), false);
        s.record(OpKind::Flush, 0, Duration::from_nanos(7), true);
        s.record_invalid(OpKind::Discard);
        s.record_write_end(8192);
        s.record_write_end(4096);
        let v = s.snapshot();
        assert_eq!(v.rd_operations, 1);
        assert_eq!(v.rd_bytes, 4096);
        assert_eq!(v.failed_rd_operations, 1);
        assert_eq!(v.rd_total_time_ns, 15);
        assert_eq!(v.flush_operations, 1);
        assert_eq!(v.invalid_unmap_operations, 1);
        assert_eq!(v.wr_highest_offset, 8192);
        assert!(v.idle_time_ns().is_some());
        s.reset();
        assert_eq!(s.snapshot(), BlockStats::default());
    }
}
