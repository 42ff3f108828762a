//! Update-ended, alarm and periodic interrupts, coalescing and slew reinjection,
//! RTC_CHANGE, interrupt state migration, and garbage at every index.

use super::*;

/// Fires the timer until guest time passes `until_ns`, reading C after each fire
/// like an interrupt handler; returns the guest times (ns) of the pulses.
fn run_acking(r: &mut Rig, until_ns: u64) -> Vec<u64> {
    let mut pulses = Vec::new();
    while r.deadline().is_some_and(|t| t <= until_ns) {
        let before = r.irqs();
        assert!(r.fire());
        if r.irqs() > before {
            pulses.push(r.now());
            r.rd(0x0c);
        }
    }
    pulses
}

#[test]
fn update_ended_interrupt_once_per_second() {
    let mut r = rig(T0, false);
    // No periodic rate, so PF stays out of register C.
    r.wr(0x0a, 0x20);
    r.wr(0x0b, 0x12);
    assert_eq!(r.deadline(), Some(SEC), "the next turnover");
    for i in 1..=3 {
        assert!(r.fire());
        assert_eq!(r.now(), i * SEC);
        assert_eq!(r.irqs(), i as usize);
        assert_eq!(r.rd(0x0c), 0x90);
        assert_eq!(r.rd(0x0c), 0x00);
        assert_eq!(r.deadline(), Some((i + 1) * SEC));
    }
    r.advance_ns(SEC / 2);
    assert_eq!(r.rd(0x0c), 0);
    assert_eq!(r.irqs(), 3);
    assert_eq!(r.rd(0x00), 0x12, "13:05:12");
}

#[test]
fn update_flag_without_uie_is_polled_not_interrupted() {
    let mut r = rig(T0, false);
    r.wr(0x0a, 0x20);
    assert_eq!(r.deadline(), None);
    r.advance_ns(SEC);
    assert_eq!(r.rd(0x0c), 0x10);
    assert_eq!(r.rd(0x0c), 0x00);
    // No updates while SET is held, and SET clears UIE.
    r.wr(0x0b, 0x92);
    assert_eq!(r.rd(0x0b), 0x82);
    r.advance_ns(2 * SEC);
    assert_eq!(r.rd(0x0c), 0x00);
    r.wr(0x0b, 0x02);
    r.advance_ns(SEC / 2);
    assert_eq!(r.rd(0x0c), 0x00);
    r.advance_ns(SEC / 2);
    assert_eq!(r.rd(0x0c), 0x10);
    assert_eq!(r.irqs(), 0);
    assert!(r.p.events.take().is_empty(), "SET without a time write");
    // A pending flag raises IRQF as soon as it is enabled.
    r.advance_ns(SEC);
    r.wr(0x0b, 0x12);
    assert_eq!(r.irqs(), 1);
    assert_eq!(r.rd(0x0c), 0x90);
}

#[test]
fn alarm_fires_at_the_matching_second_only() {
    // 13:05:12 in BCD, 24 hours.
    let mut r = rig(T0, false);
    r.wr(0x0a, 0x20);
    r.wr(0x05, 0x13);
    r.wr(0x03, 0x05);
    r.wr(0x01, 0x12);
    r.advance_ns(2 * SEC);
    assert_eq!(r.rd(0x0c), 0x10, "not at 13:05:11");
    r.advance_ns(SEC);
    assert_eq!(r.rd(0x0c), 0x30, "AF without AIE, no interrupt");
    assert_eq!(r.irqs(), 0);

    let mut r = rig(T0, false);
    r.wr(0x05, 0x13);
    r.wr(0x03, 0x05);
    r.wr(0x01, 0x12);
    r.wr(0x0b, 0x22);
    assert_eq!(r.deadline(), Some(3 * SEC));
    assert_eq!(run_acking(&mut r, 200 * SEC), [3 * SEC]);
    assert_eq!(r.irqs(), 1);

    // Any hour and minute, second 30: every minute at :30.
    let mut r = rig(T0, false);
    r.wr(0x05, 0xc0);
    r.wr(0x03, 0xff);
    r.wr(0x01, 0x30);
    r.wr(0x0b, 0x22);
    assert_eq!(
        run_acking(&mut r, 150 * SEC),
        [21 * SEC, 81 * SEC, 141 * SEC]
    );

    // Any hour, 06:00: hourly.
    let mut r = rig(T0, false);
    r.wr(0x05, 0xc3);
    r.wr(0x03, 0x06);
    r.wr(0x01, 0x00);
    r.wr(0x0b, 0x22);
    assert_eq!(run_acking(&mut r, 3700 * SEC), [51 * SEC, 3651 * SEC]);

    // 12 hours (1 PM is 0x81) and binary.
    let mut r = rig(T0, false);
    r.wr(0x0b, 0x20);
    r.wr(0x05, 0x81);
    r.wr(0x03, 0x05);
    r.wr(0x01, 0x15);
    assert_eq!(run_acking(&mut r, 100 * SEC), [6 * SEC]);
    r.wr(0x05, 0x01);
    r.wr(0x03, 0xc0);
    r.wr(0x01, 0xc0);
    assert!(run_acking(&mut r, 200 * SEC).is_empty(), "1 AM is not 1 PM");
    let mut r = rig(T0, false);
    r.wr(0x0b, 0x26);
    r.wr(0x05, 13);
    r.wr(0x03, 5);
    r.wr(0x01, 20);
    assert_eq!(run_acking(&mut r, 100 * SEC), [11 * SEC]);
}

#[test]
fn periodic_1024hz_ticks_over_one_second() {
    let mut r = rig(T0, false);
    r.wr(0x0b, 0x42);
    assert_eq!(r.deadline(), Some(976_563), "1/1024 s, rounded up");
    let mut ticks = 0;
    while r.deadline().is_some_and(|t| t <= SEC) {
        assert!(r.fire());
        assert_eq!(r.rd(0x0c) & 0xc0, 0xc0);
        ticks += 1;
    }
    assert_eq!((ticks, r.irqs()), (1024, 1024));
    assert_eq!(r.now(), SEC, "the 1024th tick is on the second");
    // Served half a period late, the ticks keep their phase.
    let late = r.deadline().unwrap_or_default() - r.now() + 500_000;
    r.advance_ns(late);
    r.d.timer_fired();
    assert_eq!(r.irqs(), 1025);
    assert_eq!(r.deadline(), Some(cycles_to_ns(32_768 + 64)));
    // The other rates.
    for (a, period_ns) in [
        (0x21, 3_906_250),
        (0x22, 7_812_500),
        (0x23, 122_071),
        (0x2f, 500_000_000),
    ] {
        let mut r = rig(T0, false);
        r.wr(0x0a, a);
        r.wr(0x0b, 0x42);
        assert_eq!(r.deadline(), Some(period_ns), "register A {a:#x}");
    }
}

#[test]
fn periodic_stops_with_the_divider_or_rate_zero() {
    let mut r = rig(T0, false);
    r.advance_ns(2_000_000);
    assert_eq!(r.rd(0x0c), 0x40, "PF without PIE");
    r.wr(0x0b, 0x42);
    assert!(r.deadline().is_some());
    for a in [0x20, 0x66, 0x06] {
        r.wr(0x0a, a);
        assert_eq!(r.deadline(), None, "register A {a:#x}");
        r.advance_ns(10_000_000);
        assert_eq!(r.rd(0x0c), 0, "register A {a:#x}");
    }
    r.wr(0x0a, 0x26);
    assert!(r.deadline().is_some());
    r.advance_ns(2_000_000);
    assert_eq!(r.rd(0x0c), 0xc0);
}

#[test]
fn timer_is_disarmed_when_nothing_is_enabled() {
    let mut r = rig(T0, false);
    assert_eq!(r.deadline(), None);
    r.wr(0x0b, 0x72);
    assert!(r.deadline().is_some());
    r.wr(0x0b, 0x02);
    assert_eq!(r.deadline(), None);
    // An alarm no time matches (BCD 0x60 seconds).
    r.wr(0x01, 0x60);
    r.wr(0x0b, 0x22);
    assert_eq!(r.deadline(), None);
    // Updates stopped: UIE and AIE wait for nothing.
    r.wr(0x01, 0xc0);
    r.wr(0x0b, 0x32);
    assert!(r.deadline().is_some());
    r.wr(0x0a, 0x76);
    assert_eq!(r.deadline(), None);
    r.wr(0x0a, 0x26);
    r.wr(0x0b, 0xb2);
    assert_eq!(r.deadline(), None, "SET held");
    r.wr(0x0b, 0x02);
    assert_eq!(r.deadline(), None);
}

#[test]
fn coalesced_ticks_are_lost_without_slew() {
    let mut r = rig(T0, false);
    r.wr(0x0b, 0x42);
    for _ in 0..10 {
        assert!(r.fire());
    }
    assert_eq!((r.irqs(), r.d.coalesced_ticks()), (1, 0));
    assert_eq!(r.rd(0x0c), 0xc0);
    for _ in 0..5 {
        assert!(r.fire());
        r.rd(0x0c);
    }
    assert_eq!(r.irqs(), 6);
    assert_eq!(r.now(), cycles_to_ns(15 * 32), "no extra deadlines");
}

#[test]
fn slew_reinjects_owed_ticks_after_the_ack() {
    let mut r = rig(T0, true);
    r.wr(0x0b, 0x42);
    while r.now() < cycles_to_ns(10 * 32) {
        assert!(r.fire());
    }
    assert_eq!((r.irqs(), r.d.coalesced_ticks()), (1, 9));
    assert_eq!(r.rd(0x0c), 0xc0);
    // Nine periods of two pulses: regular ticks and owed ones between them.
    let pulses = run_acking(&mut r, cycles_to_ns(19 * 32));
    let expect: Vec<u64> = (0..18).map(|i| cycles_to_ns(336 + i * 16)).collect();
    assert_eq!(pulses, expect);
    assert_eq!(r.d.coalesced_ticks(), 0);
    assert_eq!(
        r.deadline(),
        Some(cycles_to_ns(20 * 32)),
        "back to the rate"
    );

    // rtc-reset-reinjection forgets the debt.
    for _ in 0..5 {
        assert!(r.fire());
    }
    assert!(r.d.coalesced_ticks() > 0);
    r.d.reset_reinjection();
    assert_eq!(r.d.coalesced_ticks(), 0);
    r.rd(0x0c);
    let start = r.now();
    assert_eq!(run_acking(&mut r, start + cycles_to_ns(3 * 32)).len(), 3);

    // A long stall owes at most MAX_OWED_TICKS.
    r.advance_ns(10 * SEC);
    assert!(r.fire());
    assert_eq!(r.d.coalesced_ticks(), MAX_OWED_TICKS);
    r.wr(0x0b, 0x02);
    assert_eq!(r.deadline(), None, "owed ticks wait for PIE");
}

#[test]
fn rtc_change_reports_the_new_offset_once() {
    let mut r = rig(T0, false);
    // Linux sets 14:05:09 on the same day: an hour ahead.
    r.wr(0x0b, 0x82);
    for (i, v) in [(0x09, 0x24), (0x08, 0x02), (0x07, 0x29), (0x04, 0x14)] {
        r.wr(i, v);
    }
    r.wr(0x00, 0x09);
    r.wr(0x02, 0x05);
    assert!(r.p.events.take().is_empty(), "not before SET clears");
    r.wr(0x0b, 0x02);
    assert_eq!(r.p.events.take(), [3600]);
    assert_eq!(r.d.guest_offset_secs(), 3600);
    // SET raised and dropped without a write: nothing.
    r.wr(0x0b, 0x82);
    r.advance_ns(3 * SEC);
    r.wr(0x0b, 0x02);
    assert!(r.p.events.take().is_empty());
    assert_eq!(r.d.guest_offset_secs(), 3600);
    // A direct minute write moves the offset at once.
    r.wr(0x02, 0x06);
    assert_eq!(r.p.events.take(), [3660]);
    assert_eq!(r.rd(0x02), 0x06);
}

#[test]
fn interrupt_state_round_trips_and_bad_state_is_rejected() {
    let mut r = rig(T0, true);
    r.wr(0x0b, 0x42);
    while r.now() < cycles_to_ns(6 * 32) {
        assert!(r.fire());
    }
    r.wr(0x0b, 0x82);
    r.wr(0x00, 0x30);
    let s = r.d.state();
    assert_eq!(
        (s.reg_c, s.coalesced_ticks, s.set_time_written),
        (0x40, 5, true)
    );
    let e = CmosRtc::from_state(&s, r.p.config(r.wall.clone()));
    let mut e = e.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.state(), s);
    assert_eq!(r.irqs(), 1, "restoring does not pulse");
    wr(&mut e, 0x0b, 0x42);
    assert_eq!(r.p.events.take(), [21]);
    assert_eq!(r.irqs(), 2, "PF pending, PIE back on");
    assert_eq!(rd(&mut e, 0x0c), 0xc0);

    let good = RtcState {
        reg_b: 0x42,
        reg_c: 0xc0,
        coalesced_ticks: MAX_OWED_TICKS,
        ..RtcState::default()
    };
    assert!(e.restore(&good).is_ok());
    for bad in [
        RtcState {
            reg_c: 0x01,
            ..good.clone()
        },
        RtcState {
            reg_c: 0x40,
            ..good.clone()
        },
        RtcState {
            reg_b: 0x02,
            ..good.clone()
        },
        RtcState {
            coalesced_ticks: MAX_OWED_TICKS + 1,
            ..good.clone()
        },
        RtcState {
            set_time_written: true,
            ..good.clone()
        },
        RtcState {
            reg_b: 0x92,
            reg_c: 0,
            frozen: Some(RtcDateTime::from_unix(T0)),
            ..good.clone()
        },
    ] {
        assert!(e.restore(&bad).is_err(), "{bad:?}");
    }
    assert_eq!(e.state(), good, "unchanged by failed restores");

    // A state saved before the interrupts existed still loads.
    let mut old = serde_json::to_value(RtcState::default()).unwrap_or_else(|e| panic!("{e}"));
    if let Some(o) = old.as_object_mut() {
        for k in ["reg_c", "coalesced_ticks", "set_time_written"] {
            assert!(o.remove(k).is_some());
        }
    }
    let old: RtcState = serde_json::from_value(old).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(old, RtcState::default());
}

#[test]
fn garbage_at_every_index_does_not_panic() {
    let clocks: [Arc<dyn Clock>; 3] = [
        FakeClock::at(T0),
        Arc::new(EdgeClock(i128::MAX)),
        Arc::new(EdgeClock(i128::MIN)),
    ];
    for (n, clock) in clocks.into_iter().enumerate() {
        let p = Parts {
            slew: true,
            guest: Arc::new(ManualClock::new(if n == 1 { u64::MAX - 7 } else { 0 })),
            ..Parts::default()
        };
        let mut d = CmosRtc::new(p.config(clock));
        for i in 0..=255u8 {
            for v in (0..=255u8).step_by(if n == 0 { 1 } else { 17 }) {
                wr(&mut d, i, v);
                rd(&mut d, i);
                if v % 64 == 0 {
                    p.guest.advance(123_456_789);
                    d.timer_fired();
                    d.write(0, &[0x0c, 0xff]);
                    let mut b = [0; 4];
                    d.read(0, &mut b);
                }
            }
        }
        let _ = d.coalesced_ticks();
        d.reset_reinjection();
    }
}
