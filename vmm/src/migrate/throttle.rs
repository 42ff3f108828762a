//! Auto-converge's vCPU throttle: a thread that, every time slice, makes each vCPU
//! sleep for its throttled share, as QEMU's `cpu_throttle` does (a 10 ms slice; at P
//! percent a vCPU runs 10 ms and sleeps 10 ms * P / (100 - P)).
//!
//! Invariants: the throttle only ever delays vCPUs, never stops one for good; dropping
//! the [`Throttle`] stops and joins its thread, after which no vCPU is held.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::vcpu::ThrottleHandle;

const SLICE: Duration = Duration::from_millis(10);

/// A running throttle.
pub struct Throttle {
    percent: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long a vCPU sleeps per slice at `percent`.
pub fn sleep_for(percent: u8) -> Duration {
    let p = u32::from(percent.min(99));
    SLICE * p / (100 - p)
}

impl Throttle {
    pub fn start(vcpus: Vec<ThrottleHandle>, percent: u8) -> std::io::Result<Throttle> {
        let pct = Arc::new(AtomicU8::new(percent));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (pct.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("mig-throttle".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    let sleep = sleep_for(p.load(Ordering::Relaxed));
                    for v in &vcpus {
                        v.throttle(sleep);
                    }
                    std::thread::sleep(SLICE + sleep);
                }
            })?;
        Ok(Throttle {
            percent: pct,
            stop,
            thread: Some(thread),
        })
    }

    pub fn set(&self, percent: u8) {
        self.percent.store(percent, Ordering::Relaxed);
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_sleeps_its_share_of_each_slice() {
        assert_eq!(sleep_for(0), Duration::ZERO);
        assert_eq!(sleep_for(20), Duration::from_micros(2500));
        assert_eq!(sleep_for(50), SLICE);
        // 99% at most, as QEMU's cpu-throttle-max allows.
        assert_eq!(sleep_for(100), sleep_for(99));
    }
}
