//! When precopy stops copying and switches over: the decision QEMU makes after each
//! pass over dirty RAM, on a clock the caller supplies (so it is tested with a fake one).
//!
//! After each pass the source knows how many bytes it sent in how long (the bandwidth)
//! and how many bytes are dirty now (what remains). If what remains can be sent within
//! `downtime-limit` at that bandwidth, the source stops the guest and sends the rest:
//! that time is the downtime. Otherwise another pass runs. With `auto-converge`, a guest
//! that dirties more than half of what a pass sends (`throttle-trigger-threshold`, 50%)
//! in two passes (not necessarily consecutive, as QEMU counts them) is slowed down: its vCPUs are throttled to
//! `cpu-throttle-initial` percent, then `cpu-throttle-increment` more each time it
//! happens again, up to `cpu-throttle-max` (QEMU's `mig_throttle_guest_down`).
//! Kestrel has no postcopy, so without auto-converge a guest that never converges keeps
//! precopy running, as in QEMU, until the client cancels or raises `downtime-limit`.

use std::time::Duration;

/// The migration parameters this decision reads (query-migrate-parameters' names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `downtime-limit`, in milliseconds (QEMU's default 300).
    pub downtime_limit_ms: u64,
    /// The `auto-converge` capability.
    pub auto_converge: bool,
    /// `throttle-trigger-threshold`, percent (default 50).
    pub throttle_trigger_threshold: u8,
    /// `cpu-throttle-initial`, percent (default 20).
    pub cpu_throttle_initial: u8,
    /// `cpu-throttle-increment`, percent (default 10).
    pub cpu_throttle_increment: u8,
    /// `cpu-throttle-max`, percent (default 99).
    pub cpu_throttle_max: u8,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            downtime_limit_ms: 300,
            auto_converge: false,
            throttle_trigger_threshold: 50,
            cpu_throttle_initial: 20,
            cpu_throttle_increment: 10,
            cpu_throttle_max: 99,
        }
    }
}

/// What one pass did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Bytes sent during the pass.
    pub sent_bytes: u64,
    /// How long the pass took.
    pub elapsed: Duration,
    /// Bytes the guest dirtied during the pass (the next pass's work).
    pub dirtied_bytes: u64,
}

/// What to do after a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// What remains fits the downtime limit: stop the guest and send it.
    Switchover,
    /// Copy again.
    AnotherPass,
    /// Copy again, with the guest's vCPUs throttled to this percentage.
    Throttle(u8),
}

/// The state the decision keeps across passes.
#[derive(Clone, Debug, Default)]
pub struct Convergence {
    limits: Limits,
    /// Bytes per second over the last pass.
    bandwidth: f64,
    /// Passes in which the guest dirtied too much since the last throttle step.
    high_dirty_passes: u32,
    /// The throttle now applied, percent (0: none).
    throttle: u8,
    passes: u64,
}

impl Convergence {
    pub fn new(limits: Limits) -> Self {
        Convergence {
            limits,
            ..Default::default()
        }
    }

    /// Limits may change while migrating (migrate-set-parameters); the next decision
    /// uses them.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Bytes per second measured over the last pass (query-migrate's `mbps` * 1e6/8).
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth
    }

    /// The throttle applied now (query-migrate's `cpu-throttle-percentage`).
    pub fn throttle(&self) -> u8 {
        self.throttle
    }

    /// Passes decided so far (query-migrate's `dirty-sync-count`).
    pub fn passes(&self) -> u64 {
        self.passes
    }

    /// The downtime sending `remaining` bytes would take at the measured bandwidth
    /// (query-migrate's `expected-downtime`), in milliseconds.
    pub fn expected_downtime_ms(&self, remaining: u64) -> u64 {
        if self.bandwidth <= 0.0 {
            return u64::MAX;
        }
        ((remaining as f64 / self.bandwidth) * 1000.0).ceil() as u64
    }

    /// Decides after `pass`, with `remaining` dirty bytes left to send.
    pub fn after_pass(&mut self, pass: Pass, remaining: u64) -> Decision {
        self.passes += 1;
        let secs = pass.elapsed.as_secs_f64();
        if secs > 0.0 && pass.sent_bytes > 0 {
            self.bandwidth = pass.sent_bytes as f64 / secs;
        }
        if remaining == 0 || self.expected_downtime_ms(remaining) <= self.limits.downtime_limit_ms {
            return Decision::Switchover;
        }
        if !self.limits.auto_converge {
            return Decision::AnotherPass;
        }
        // QEMU's trigger: dirtied more than the threshold share of what was sent.
        let threshold =
            pass.sent_bytes as u128 * u128::from(self.limits.throttle_trigger_threshold);
        if u128::from(pass.dirtied_bytes) * 100 > threshold {
            self.high_dirty_passes += 1;
        }
        if self.high_dirty_passes >= 2 {
            self.high_dirty_passes = 0;
            let max = self.limits.cpu_throttle_max.min(99);
            self.throttle = if self.throttle == 0 {
                self.limits.cpu_throttle_initial.min(max)
            } else {
                self.throttle
                    .saturating_add(self.limits.cpu_throttle_increment)
                    .min(max)
            };
            return Decision::Throttle(self.throttle);
        }
        Decision::AnotherPass
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn pass(sent_mb: u64, ms: u64, dirtied_mb: u64) -> Pass {
        Pass {
            sent_bytes: sent_mb * MB,
            elapsed: Duration::from_millis(ms),
            dirtied_bytes: dirtied_mb * MB,
        }
    }

    #[test]
    fn switches_over_once_the_rest_fits_the_downtime_limit() {
        let mut c = Convergence::new(Limits::default());
        // 1000 MB/s: 300 ms holds 300 MB.
        assert_eq!(
            c.after_pass(pass(1000, 1000, 400), 400 * MB),
            Decision::AnotherPass
        );
        assert_eq!(c.expected_downtime_ms(400 * MB), 400);
        assert_eq!(
            c.after_pass(pass(400, 400, 100), 100 * MB),
            Decision::Switchover
        );
        assert_eq!(c.passes(), 2);
        // A stricter limit set while migrating applies to the next decision.
        let mut c = Convergence::new(Limits::default());
        c.set_limits(Limits {
            downtime_limit_ms: 50,
            ..Limits::default()
        });
        assert_eq!(
            c.after_pass(pass(1000, 1000, 100), 100 * MB),
            Decision::AnotherPass
        );
    }

    #[test]
    fn nothing_left_always_switches_over() {
        let mut c = Convergence::new(Limits::default());
        assert_eq!(
            c.after_pass(
                Pass {
                    sent_bytes: 0,
                    elapsed: Duration::ZERO,
                    dirtied_bytes: 0
                },
                0
            ),
            Decision::Switchover
        );
    }

    #[test]
    fn a_guest_that_never_converges_keeps_copying_without_auto_converge() {
        let mut c = Convergence::new(Limits::default());
        for _ in 0..100 {
            assert_eq!(
                c.after_pass(pass(500, 1000, 900), 900 * MB),
                Decision::AnotherPass
            );
        }
        assert_eq!(c.throttle(), 0);
    }

    #[test]
    fn auto_converge_throttles_after_two_hot_passes_then_steps_up_to_the_max() {
        let mut c = Convergence::new(Limits {
            auto_converge: true,
            cpu_throttle_max: 45,
            ..Limits::default()
        });
        // Dirtying 60% of what is sent: over the 50% threshold.
        assert_eq!(
            c.after_pass(pass(500, 1000, 300), 900 * MB),
            Decision::AnotherPass
        );
        assert_eq!(
            c.after_pass(pass(500, 1000, 300), 900 * MB),
            Decision::Throttle(20)
        );
        // A cool pass resets the count.
        assert_eq!(
            c.after_pass(pass(500, 1000, 100), 900 * MB),
            Decision::AnotherPass
        );
        assert_eq!(
            c.after_pass(pass(500, 1000, 300), 900 * MB),
            Decision::AnotherPass
        );
        assert_eq!(
            c.after_pass(pass(500, 1000, 300), 900 * MB),
            Decision::Throttle(30)
        );
        for _ in 0..2 {
            c.after_pass(pass(500, 1000, 300), 900 * MB);
        }
        assert_eq!(c.throttle(), 40);
        for _ in 0..2 {
            c.after_pass(pass(500, 1000, 300), 900 * MB);
        }
        assert_eq!(c.throttle(), 45, "capped at cpu-throttle-max");
        // Throttled enough, it converges: 500 MB/s, 100 MB left fits 300 ms.
        assert_eq!(
            c.after_pass(pass(500, 1000, 100), 100 * MB),
            Decision::Switchover
        );
    }
}
