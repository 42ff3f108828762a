//! The wall clock the guest's RTC shows, from `-rtc base=,clock=`.
//!
//! Made once per process, not per boot: a guest reset keeps the RTC where it was, as on
//! a PC (the RTC is battery-backed), so `base=2006-06-17` is where the clock started
//! when the VMM did, not where it restarts at each reboot.
//!
//! * `clock=host` (default): the host's real-time clock, following changes to it.
//! * `clock=rt`: the host's monotonic clock from the start time on (immune to host
//!   clock changes).
//! * `clock=vm`: guest time: it stands still while the VM is stopped.
//!
//! `base=utc` starts at the host's UTC time, `base=localtime` at its local time (the
//! guest is told local time as if it were UTC, as Windows expects), `base=DATE` at DATE.

use std::sync::Arc;
use std::time::Instant;

use devices::legacy::rtc::{Clock, SystemClock};
use devices::timer::GuestClock;

use crate::timers::VmClock;

use crate::cmdline::{RtcBase, RtcClock, RtcOpts};

const NANOS: i128 = 1_000_000_000;

/// The host's offset from UTC now, in seconds (`tm_gmtoff`); 0 if it cannot be read.
fn local_utc_offset_secs() -> i64 {
    // SAFETY: `time` with a null pointer only returns the time; `localtime_r` fills the
    // zeroed `tm` we own and reads only `t`.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        tm.tm_gmtoff
    }
}

/// The RTC's clock: a source of elapsed time plus a fixed start.
pub struct RtcWallClock {
    /// Added to the source (nanoseconds).
    shift: i128,
    source: Source,
}

enum Source {
    Host,
    Monotonic(Instant),
    Guest(Arc<VmClock>),
}

impl Clock for RtcWallClock {
    fn now_unix_nanos(&self) -> i128 {
        let t = match &self.source {
            Source::Host => SystemClock.now_unix_nanos(),
            Source::Monotonic(start) => start.elapsed().as_nanos() as i128,
            Source::Guest(w) => i128::from(w.now_ns()),
        };
        t.saturating_add(self.shift)
    }
}

/// The clock for `opts`, and for `clock=vm` the guest clock (a machine-wide one, as the
/// RTC outlives boots) that the machine runs and stops with the vCPUs.
pub fn rtc_clock(opts: &RtcOpts) -> (Arc<dyn Clock>, Option<Arc<VmClock>>) {
    let host_now = SystemClock.now_unix_nanos();
    let start = match opts.base {
        RtcBase::Utc => host_now,
        RtcBase::Localtime => host_now + i128::from(local_utc_offset_secs()) * NANOS,
        RtcBase::Date(secs) => i128::from(secs) * NANOS,
    };
    let (source, watch) = match opts.clock {
        RtcClock::Host => (Source::Host, None),
        RtcClock::Rt => (Source::Monotonic(Instant::now()), None),
        RtcClock::Vm => {
            let w = Arc::new(VmClock::new());
            (Source::Guest(w.clone()), Some(w))
        }
    };
    let shift = match source {
        Source::Host => start - host_now,
        _ => start,
    };
    (Arc::new(RtcWallClock { shift, source }), watch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn secs(c: &Arc<dyn Clock>) -> i64 {
        (c.now_unix_nanos() / NANOS) as i64
    }

    #[test]
    fn bases_and_clocks() {
        let host = (SystemClock.now_unix_nanos() / NANOS) as i64;
        let (utc, w) = rtc_clock(&RtcOpts::default());
        assert!(w.is_none());
        assert!((secs(&utc) - host).abs() <= 1);

        let date = 1_150_560_081; // 2006-06-17T16:01:21
        let (c, w) = rtc_clock(&RtcOpts {
            base: RtcBase::Date(date),
            clock: RtcClock::Rt,
            slew: false,
        });
        assert!(w.is_none());
        assert!((secs(&c) - date).abs() <= 1);

        let (vm, w) = rtc_clock(&RtcOpts {
            base: RtcBase::Date(date),
            clock: RtcClock::Vm,
            slew: false,
        });
        let w = w.unwrap();
        let t0 = vm.now_unix_nanos();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(vm.now_unix_nanos(), t0, "stopped until the guest runs");
        w.run();
        std::thread::sleep(Duration::from_millis(20));
        w.stop();
        let t1 = vm.now_unix_nanos();
        assert!(t1 - t0 >= 15_000_000);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(vm.now_unix_nanos(), t1);

        let (local, _) = rtc_clock(&RtcOpts {
            base: RtcBase::Localtime,
            ..RtcOpts::default()
        });
        assert!((secs(&local) - host - local_utc_offset_secs()).abs() <= 1);
    }
}
