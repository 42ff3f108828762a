//! The outgoing migration's thread: connect, copy RAM in passes while the guest runs,
//! ask the main thread to stop the guest and hand over the device state, send the
//! rest, and report how it ended.
//!
//! ```text
//!  main thread                          migration thread
//!  migrate: dirty log on, spawn  ──▶    connect (status setup → active)
//!                                       pass 1: all RAM; pass N: what N-1 dirtied
//!                                       (MIGRATION_PASS after each); until what is
//!                                       dirty fits downtime-limit at the measured rate
//!  Switchover: stop vCPUs, hold I/O, ◀── Report::Switchover(reply)
//!  save device state, drop image locks ─▶ reply
//!                                       final pass, device sections, End, finish
//!  completed: postmigrate           ◀── Report::Ended(Ok)   (or Err: resume guest)
//! ```
//!
//! Invariants: the thread never touches the machine; it reads guest memory and the
//! dirty log (the VM fd and memory of the boot the migration started on) and talks to
//! the main thread only through [`Report`]s. The guest is stopped only between the
//! Switchover reply and the end report, and nothing after the reply can leave it
//! stopped: the main thread resumes it on any failure. RAM written by vCPUs or devices
//! during a pass is in the next pass's log; the final pass runs with both stopped.
//! With multifd, a page always travels on the same channel (by its 2 MiB block), so a
//! later copy of a page can never overtake an earlier one.

use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use devices::GuestMemoryMmap;
use kvm_ioctls::VmFd;
use migration::convergence::{Convergence, Decision, Limits, Pass};
use migration::dirty::RegionLog;
use migration::protocol::{MachineConfig, RamCounts, StreamWriter, PAGE_SIZE};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

use super::ram::MemRam;
use crate::vm::DeviceBlob;

/// The byte streams of one migration: the main channel, multifd's extra ones, and how
/// to end them (an `exec:` command's exit status, for one).
pub struct Channels {
    pub main: Box<dyn Write + Send>,
    pub extra: Vec<Box<dyn Write + Send>>,
    pub finish: Box<dyn FnOnce() -> Result<(), String> + Send>,
}

/// What the main thread answers a switchover with: the device state, and when the
/// guest stopped (the downtime starts there).
pub type SwitchoverReply = Result<(Vec<DeviceBlob>, Instant), String>;

/// What the thread tells the main thread.
pub enum Report {
    /// Connected: status active.
    Active,
    /// A pass ended (MIGRATION_PASS), with its number (dirty-sync-count).
    Pass(u64),
    /// Set the vCPU throttle to this percentage (auto-converge).
    Throttle(u8),
    /// Stop the guest and send its state through `reply`.
    Switchover(mpsc::Sender<SwitchoverReply>),
    /// The migration ended; Ok carries the downtime.
    Ended(Result<Duration, String>),
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Report::Active => write!(f, "Active"),
            Report::Pass(n) => write!(f, "Pass({n})"),
            Report::Throttle(p) => write!(f, "Throttle({p})"),
            Report::Switchover(_) => write!(f, "Switchover"),
            Report::Ended(r) => write!(f, "Ended({r:?})"),
        }
    }
}

/// Parameters the client may change while the migration runs.
pub struct Live {
    /// Bytes per second; 0 is unlimited.
    pub max_bandwidth: AtomicU64,
    pub limits: Mutex<Limits>,
}

/// The numbers query-migrate shows, updated as the thread goes.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub ram: RamCounts,
    pub total: u64,
    pub remaining: u64,
    pub dirty_sync_count: u64,
    pub dirty_pages_rate: u64,
    /// Bytes per second over the last pass.
    pub bandwidth: f64,
    pub precopy_bytes: u64,
    pub downtime_bytes: u64,
    pub multifd_bytes: u64,
    pub expected_downtime_ms: u64,
    pub pages_per_second: u64,
    pub throttle: u8,
}

/// What the thread works on.
pub struct Source {
    pub mem: GuestMemoryMmap,
    pub vm_fd: Arc<VmFd>,
    pub config: MachineConfig,
    pub live: Arc<Live>,
    pub stats: Arc<Mutex<Stats>>,
    pub cancelled: Arc<AtomicBool>,
}

/// How much of RAM one progress step writes: stats and cancellation are looked at
/// between steps.
const STEP_BYTES: u64 = 64 << 20;
/// Multifd's unit: a page goes on channel (address / BLOCK) % channels.
const BLOCK: u64 = 2 << 20;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Limits the write rate to `max_bandwidth`, shared by every channel of a migration:
/// a write may go out once the bytes before it fit the rate since the window began
/// (a window restarts after a second with nothing owed, so an idle spell is not saved
/// up as a burst). Changes to the limit apply from the next write.
pub struct RateLimit {
    live: Arc<Live>,
    window: Mutex<(Instant, u64)>,
    cancelled: Arc<AtomicBool>,
}

impl RateLimit {
    /// The most one write may carry at this rate: a tenth of a second's worth.
    fn chunk(&self) -> usize {
        match self.live.max_bandwidth.load(Ordering::Relaxed) {
            0 => 256 << 10,
            bw => usize::try_from(bw / 10)
                .unwrap_or(usize::MAX)
                .clamp(4096, 256 << 10),
        }
    }

    fn account(&self, n: u64) -> std::io::Result<()> {
        let cancelled = || std::io::Error::other("migration cancelled");
        if self.cancelled.load(Ordering::Acquire) {
            return Err(cancelled());
        }
        let bw = self.live.max_bandwidth.load(Ordering::Relaxed);
        if bw == 0 {
            return Ok(());
        }
        let due = {
            let mut w = lock(&self.window);
            let now = Instant::now();
            let owed = Duration::from_secs_f64(w.1 as f64 / bw as f64);
            if now > w.0 + owed + Duration::from_secs(1) {
                *w = (now, 0);
            }
            w.1 += n;
            w.0 + Duration::from_secs_f64(w.1 as f64 / bw as f64)
        };
        // Sleep in slices, so a cancel is seen within 100 ms.
        loop {
            let now = Instant::now();
            if now >= due {
                return Ok(());
            }
            if self.cancelled.load(Ordering::Acquire) {
                return Err(cancelled());
            }
            std::thread::sleep((due - now).min(Duration::from_millis(100)));
        }
    }
}

struct Limited {
    inner: Box<dyn Write + Send>,
    rate: Arc<RateLimit>,
}

impl Write for Limited {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(&buf[..buf.len().min(self.rate.chunk())])?;
        self.rate.account(n as u64)?;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type Writer = StreamWriter<BufWriter<Limited>>;

fn io_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Source {
    /// Runs the migration to its end; returns the downtime.
    pub fn run(
        self,
        connect: Box<dyn FnOnce() -> Result<Channels, String> + Send>,
        report: &dyn Fn(Report),
    ) -> Result<Duration, String> {
        let channels = connect()?;
        if self.cancelled.load(Ordering::Acquire) {
            return Err("migration cancelled".into());
        }
        let rate = Arc::new(RateLimit {
            live: self.live.clone(),
            window: Mutex::new((Instant::now(), 0)),
            cancelled: self.cancelled.clone(),
        });
        let wrap = |w: Box<dyn Write + Send>| -> Result<Writer, String> {
            StreamWriter::new(BufWriter::with_capacity(
                1 << 20,
                Limited {
                    inner: w,
                    rate: rate.clone(),
                },
            ))
            .map_err(io_err)
        };
        let mut main = wrap(channels.main)?;
        let mut extra = channels
            .extra
            .into_iter()
            .map(wrap)
            .collect::<Result<Vec<_>, _>>()?;
        report(Report::Active);
        main.config(&self.config).map_err(io_err)?;

        let total: u64 = self.mem.iter().map(|r| r.len()).sum();
        lock(&self.stats).total = total;
        // What was dirty before the first pass is sent by it anyway.
        crate::dirty_log::read(&self.vm_fd, &self.mem)?;
        let mut runs: Vec<(u64, u64)> = self
            .mem
            .iter()
            .flat_map(|r| RegionLog::all(r.start_addr().raw_value(), r.len() / PAGE_SIZE).runs())
            .collect();
        let mut conv = Convergence::new(*lock(&self.live.limits));
        // What the last pass's read found dirty: sent by the next pass, or by the final
        // one together with what was dirtied after the read.
        let mut pending: Vec<RegionLog>;
        loop {
            let start = Instant::now();
            let before = self.sent(&main, &extra);
            self.send(&mut main, &mut extra, &runs, false)?;
            let sent = self.sent(&main, &extra) - before;
            pending = crate::dirty_log::read(&self.vm_fd, &self.mem)?;
            runs = pending.iter().flat_map(RegionLog::runs).collect();
            let dirty: u64 = pending.iter().map(RegionLog::count).sum::<u64>() * PAGE_SIZE;
            let elapsed = start.elapsed();
            conv.set_limits(*lock(&self.live.limits));
            let decision = conv.after_pass(
                Pass {
                    sent_bytes: sent,
                    elapsed,
                    dirtied_bytes: dirty,
                },
                dirty,
            );
            {
                let mut s = lock(&self.stats);
                s.remaining = dirty;
                s.dirty_sync_count = conv.passes();
                s.bandwidth = conv.bandwidth();
                s.expected_downtime_ms = conv.expected_downtime_ms(dirty).min(i64::MAX as u64);
                let secs = elapsed.as_secs_f64().max(1e-6);
                s.dirty_pages_rate = ((dirty / PAGE_SIZE) as f64 / secs) as u64;
                s.pages_per_second =
                    ((s.ram.zero_pages + s.ram.data_pages) as f64 / secs.max(1e-3)) as u64;
                s.throttle = conv.throttle();
            }
            report(Report::Pass(conv.passes()));
            match decision {
                Decision::Switchover => break,
                Decision::AnotherPass => {}
                Decision::Throttle(p) => report(Report::Throttle(p)),
            }
            if self.cancelled.load(Ordering::Acquire) {
                return Err("migration cancelled".into());
            }
        }

        // Switchover: the main thread stops the guest and hands over its state.
        let (tx, rx) = mpsc::channel();
        report(Report::Switchover(tx));
        let (blobs, stopped_at) = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(r) => break r?,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.cancelled.load(Ordering::Acquire) {
                        return Err("migration cancelled".into());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("migration cancelled".into())
                }
            }
        };
        let precopy = self.sent(&main, &extra);
        lock(&self.stats).precopy_bytes = precopy;
        let now = crate::dirty_log::read(&self.vm_fd, &self.mem)?;
        let runs = final_runs(&pending, now);
        self.send(&mut main, &mut extra, &runs, true)?;
        for w in extra {
            w.end()
                .map_err(io_err)?
                .into_inner()
                .map_err(|e| e.error().to_string())?;
        }
        for (i, b) in blobs.iter().enumerate() {
            let index = u32::try_from(i).map_err(io_err)?;
            main.device(index, &b.name, b.version, &RawJson(&b.state))
                .map_err(io_err)?;
        }
        let sent = main.bytes();
        main.end()
            .map_err(io_err)?
            .into_inner()
            .map_err(|e| e.error().to_string())?
            .flush()
            .map_err(io_err)?;
        (channels.finish)()?;
        let downtime = stopped_at.elapsed();
        let mut s = lock(&self.stats);
        s.downtime_bytes = sent.saturating_sub(precopy);
        s.remaining = 0;
        Ok(downtime)
    }

    fn sent(&self, main: &Writer, extra: &[Writer]) -> u64 {
        main.bytes() + extra.iter().map(StreamWriter::bytes).sum::<u64>()
    }

    /// Sends `runs`, in steps, over the main channel or spread over multifd's.
    fn send(
        &self,
        main: &mut Writer,
        extra: &mut [Writer],
        runs: &[(u64, u64)],
        final_pass: bool,
    ) -> Result<(), String> {
        let ram = MemRam(&self.mem);
        for step in steps(runs, STEP_BYTES / PAGE_SIZE) {
            if !final_pass && self.cancelled.load(Ordering::Acquire) {
                return Err("migration cancelled".into());
            }
            let counts = if extra.is_empty() {
                main.ram(&ram, &step).map_err(io_err)?
            } else {
                let parts = spread(&step, extra.len());
                let results: Vec<Result<RamCounts, String>> = std::thread::scope(|s| {
                    let handles: Vec<_> = extra
                        .iter_mut()
                        .zip(&parts)
                        .map(|(w, part)| {
                            let ram = &ram;
                            s.spawn(move || w.ram(ram, part).map_err(io_err))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join()
                                .unwrap_or_else(|_| Err("a multifd sender failed".into()))
                        })
                        .collect()
                });
                let mut sum = RamCounts::default();
                for r in results {
                    let c = r?;
                    sum.zero_pages += c.zero_pages;
                    sum.data_pages += c.data_pages;
                    sum.bytes += c.bytes;
                }
                lock(&self.stats).multifd_bytes += sum.bytes;
                sum
            };
            let mut s = lock(&self.stats);
            s.ram.zero_pages += counts.zero_pages;
            s.ram.data_pages += counts.data_pages;
            s.ram.bytes += counts.bytes;
            let step_pages: u64 = step.iter().map(|r| r.1).sum();
            s.remaining = s.remaining.saturating_sub(step_pages * PAGE_SIZE);
        }
        Ok(())
    }
}

/// A device's saved JSON, written as it is.
struct RawJson<'a>(&'a [u8]);

impl serde::Serialize for RawJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v: serde_json::Value =
            serde_json::from_slice(self.0).map_err(serde::ser::Error::custom)?;
        v.serialize(s)
    }
}

/// `runs` cut into steps of at most `max_pages` pages.
pub fn steps(runs: &[(u64, u64)], max_pages: u64) -> Vec<Vec<(u64, u64)>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut n = 0;
    for &(mut gpa, mut pages) in runs {
        while pages > 0 {
            let take = pages.min(max_pages - n);
            cur.push((gpa, take));
            n += take;
            gpa += take * PAGE_SIZE;
            pages -= take;
            if n == max_pages {
                out.push(std::mem::take(&mut cur));
                n = 0;
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `runs` split by 2 MiB block over `channels` channels: block b goes on b % channels.
pub fn spread(runs: &[(u64, u64)], channels: usize) -> Vec<Vec<(u64, u64)>> {
    let mut out = vec![Vec::new(); channels.max(1)];
    for &(mut gpa, mut pages) in runs {
        while pages > 0 {
            let block = gpa / BLOCK;
            let to_end = ((block + 1) * BLOCK - gpa) / PAGE_SIZE;
            let take = pages.min(to_end);
            let n = out.len() as u64;
            out[(block % n) as usize].push((gpa, take));
            gpa += take * PAGE_SIZE;
            pages -= take;
        }
    }
    out
}

/// The final pass's pages: what the last live pass found dirty (not sent yet) and what
/// was written since, with the guest stopped. Leaving out either loses guest writes.
fn final_runs(pending: &[RegionLog], mut now: Vec<RegionLog>) -> Vec<(u64, u64)> {
    for (n, p) in now.iter_mut().zip(pending) {
        n.merge(&p.words);
    }
    now.iter().flat_map(RegionLog::runs).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_cut_runs_without_losing_or_repeating_a_page() {
        let runs = [(0, 5), (0x10_0000, 3)];
        let s = steps(&runs, 4);
        assert_eq!(s, vec![vec![(0, 4)], vec![(0x4000, 1), (0x10_0000, 3)],]);
    }

    #[test]
    fn spread_keeps_each_2mib_block_on_one_channel() {
        // 3 MiB from 1 MiB: half of block 0, then block 1 whole.
        let s = spread(&[(1 << 20, 768)], 2);
        assert_eq!(s[0], vec![(1 << 20, 256)]);
        assert_eq!(s[1], vec![(2 << 20, 512)]);
        // The same page in a later pass lands on the same channel.
        let again = spread(&[(0x1f_f000, 1)], 2);
        assert_eq!(again[0], vec![(0x1f_f000, 1)]);
    }

    #[test]
    fn the_final_pass_sends_what_the_last_live_pass_left_and_what_came_after() {
        // Region at 1 MiB, 128 pages: the last live pass's read found pages 3 and 70
        // dirty; with the guest stopped, the final read finds 4 and 100.
        let base = 1 << 20;
        let mut pending = RegionLog::from_words(base, 128, vec![0, 0]);
        pending.merge(&[1 << 3, 1 << 6]);
        let mut now = RegionLog::from_words(base, 128, vec![0, 0]);
        now.merge(&[1 << 4, 1 << 36]);
        let p = |n: u64| base + n * PAGE_SIZE;
        assert_eq!(
            final_runs(&[pending], vec![now]),
            vec![(p(3), 2), (p(70), 1), (p(100), 1)]
        );
    }
}
