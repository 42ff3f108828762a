//! The options that say what happens at run time: `-action`, `-watchdog-action` (through
//! the table) and `-rtc`, with QEMU's wording for the action values and the RTC base
//! date.

use super::{kv_err, Builder, Flow, Origin};
use crate::cmdline::keyvalue;

// ---- -action, -watchdog-action, -rtc ----

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionOpts {
    reboot: Option<String>,
    shutdown: Option<String>,
    panic: Option<String>,
    watchdog: Option<String>,
}

pub(super) fn opt_action(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let a: ActionOpts = keyvalue::from_str(o.arg(), None).map_err(kv_err)?;
    let mut next = b.cfg.actions;
    if let Some(v) = a.reboot {
        next.reboot = enum_value!(monitor::runstate::RebootAction, "reboot", &v)?;
    }
    if let Some(v) = a.shutdown {
        next.shutdown = enum_value!(monitor::runstate::ShutdownAction, "shutdown", &v)?;
    }
    if let Some(v) = a.panic {
        next.panic = enum_value!(monitor::runstate::PanicAction, "panic", &v)?;
    }
    if let Some(v) = a.watchdog {
        next.watchdog = enum_value!(monitor::runstate::WatchdogAction, "watchdog", &v)?;
    }
    b.cfg.actions = next;
    Ok(Flow::Continue)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RtcArgs {
    base: Option<String>,
    clock: Option<String>,
    driftfix: Option<String>,
}

/// `YYYY-MM-DDTHH:MM:SS` or `YYYY-MM-DD` (UTC), as QEMU's `-rtc base=` takes it.
fn parse_rtc_date(s: &str) -> Option<i64> {
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut d = date.split('-');
    let year: i64 = d.next()?.parse().ok()?;
    let month: u8 = d.next()?.parse().ok()?;
    let day: u8 = d.next()?.parse().ok()?;
    if d.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let (mut hour, mut minute, mut second) = (0u8, 0u8, 0u8);
    if let Some(t) = time {
        let mut f = t.split(':');
        hour = f.next()?.parse().ok()?;
        minute = f.next()?.parse().ok()?;
        second = f.next()?.parse().ok()?;
        if f.next().is_some() || hour > 23 || minute > 59 || second > 59 {
            return None;
        }
    }
    if !(1970..=9999).contains(&year) {
        return None;
    }
    let t = devices::legacy::RtcDateTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
    };
    // A day past the month's end (31 April) would carry silently: refuse it.
    (devices::legacy::RtcDateTime::from_unix(t.to_unix()) == t).then(|| t.to_unix())
}

pub(super) fn opt_rtc(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let a: RtcArgs = keyvalue::from_str(o.arg(), None).map_err(kv_err)?;
    if let Some(base) = a.base {
        b.cfg.rtc.base = match base.as_str() {
            "utc" => crate::cmdline::RtcBase::Utc,
            "localtime" => crate::cmdline::RtcBase::Localtime,
            other => crate::cmdline::RtcBase::Date(parse_rtc_date(other).ok_or_else(|| {
                format!("invalid datetime format '{other}' (valid formats: '2006-06-17T16:01:21' or '2006-06-17')")
            })?),
        };
    }
    if let Some(clock) = a.clock {
        b.cfg.rtc.clock = match clock.as_str() {
            "host" => crate::cmdline::RtcClock::Host,
            "rt" => crate::cmdline::RtcClock::Rt,
            "vm" => crate::cmdline::RtcClock::Vm,
            other => {
                return Err(format!(
                    "invalid option value '{other}' for 'clock' (host, rt or vm)"
                ))
            }
        };
    }
    if let Some(d) = a.driftfix {
        b.cfg.rtc.slew = match d.as_str() {
            "slew" => true,
            "none" => false,
            other => {
                return Err(format!(
                    "invalid option value '{other}' for 'driftfix' (none or slew)"
                ))
            }
        };
    }
    Ok(Flow::Continue)
}
