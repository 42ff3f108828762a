//! Calendar arithmetic, the register file (BCD/binary, 12/24 hours, setting the
//! clock, UIP, NVRAM), hostile clocks and writes, and state round trips.

use super::*;

#[test]
fn calendar_conversions_agree() {
    for secs in [0, T0, 951_782_400, 4_107_542_400, -86_400, 253_402_300_799] {
        assert_eq!(RtcDateTime::from_unix(secs).to_unix(), secs);
    }
    let t = RtcDateTime::from_unix(T0);
    assert_eq!((t.year, t.month, t.day), (2024, 2, 29));
    assert_eq!((t.hour, t.minute, t.second), (13, 5, 9));
    assert_eq!(t.day_of_week(), 5);
    // Out-of-range fields carry over.
    let odd = RtcDateTime {
        year: 2025,
        month: 2,
        day: 31,
        hour: 0,
        minute: 0,
        second: 0,
    };
    assert_eq!(RtcDateTime::from_unix(odd.to_unix()).day, 3);
}

#[test]
fn bcd_24h_by_default() {
    let (mut d, _) = rtc_at(T0);
    assert_eq!(
        time_regs(&mut d),
        [0x09, 0x05, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20]
    );
    assert_eq!(rd(&mut d, 0x0a), 0x26);
    assert_eq!(rd(&mut d, 0x0b), 0x02);
    assert_eq!(rd(&mut d, 0x0c), 0x00);
    assert_eq!(rd(&mut d, 0x0d), 0x80);
}

#[test]
fn binary_mode_and_reg_b_toggles() {
    let (mut d, _) = rtc_at(T0);
    wr(&mut d, 0x0b, 0x06);
    assert_eq!(rd(&mut d, 0x0b), 0x06);
    assert_eq!(time_regs(&mut d), [9, 5, 13, 5, 29, 2, 24, 20]);
    wr(&mut d, 0x0b, 0x02);
    assert_eq!(rd(&mut d, 0x00), 0x09);
    // Interrupt enables read back; SET clears UIE.
    wr(&mut d, 0x0b, 0x72);
    assert_eq!(rd(&mut d, 0x0b), 0x72);
    wr(&mut d, 0x0b, 0xf2);
    assert_eq!(rd(&mut d, 0x0b), 0xe2);
    wr(&mut d, 0x0b, 0x02);
    assert_eq!(rd(&mut d, 0x0c), 0, "no time passed: no flags");
    // Register A keeps its low seven bits; C and D are read-only.
    wr(&mut d, 0x0a, 0xa6);
    assert_eq!(rd(&mut d, 0x0a), 0x26);
    wr(&mut d, 0x0c, 0xff);
    wr(&mut d, 0x0d, 0x00);
    assert_eq!((rd(&mut d, 0x0c), rd(&mut d, 0x0d)), (0, 0x80));
    assert_eq!(d.guest_offset_secs(), 0);
}

#[test]
fn twelve_hour_mode_sets_the_pm_bit() {
    let (mut d, c) = rtc_at(T0);
    wr(&mut d, 0x0b, 0x00);
    assert_eq!(rd(&mut d, 0x04), 0x81, "1 PM in BCD");
    wr(&mut d, 0x0b, 0x04);
    assert_eq!(rd(&mut d, 0x04), 0x81, "1 PM in binary");
    let midnight = T0 - 13 * 3600 - 5 * 60 - 9;
    c.set_nanos(midnight * 1_000_000_000);
    wr(&mut d, 0x0b, 0x00);
    assert_eq!(rd(&mut d, 0x04), 0x12, "12 AM");
    c.advance_secs(12 * 3600);
    assert_eq!(rd(&mut d, 0x04), 0x92, "12 PM");
    c.advance_secs(11 * 3600);
    assert_eq!(rd(&mut d, 0x04), 0x91, "11 PM");
    // Writing 3 PM in 12-hour mode.
    wr(&mut d, 0x04, 0x83);
    wr(&mut d, 0x0b, 0x02);
    assert_eq!(rd(&mut d, 0x04), 0x15);
    assert_eq!(d.guest_offset_secs(), -8 * 3600);
}

#[test]
fn setting_the_clock_like_linux_moves_the_offset() {
    // 2025-01-31 23:59:58; Linux writes year, month, day, hour, minute, second with SET held.
    let now = 1_738_367_998;
    let (mut d, c) = rtc_at(now);
    wr(&mut d, 0x0b, 0x82);
    c.advance_secs(3);
    assert_eq!(rd(&mut d, 0x00), 0x58, "frozen while SET is held");
    for (i, v) in [
        (0x09, 0x25),
        (0x08, 0x02),
        (0x07, 0x15),
        (0x04, 0x08),
        (0x02, 0x30),
        (0x00, 0x00),
    ] {
        wr(&mut d, i, v);
    }
    assert_eq!(d.guest_offset_secs(), 0, "not committed before SET clears");
    wr(&mut d, 0x0b, 0x02);
    let target = 1_739_608_200; // 2025-02-15 08:30:00
    assert_eq!(d.guest_offset_secs(), target - (now + 3));
    assert_eq!(
        time_regs(&mut d),
        [0x00, 0x30, 0x08, 0x07, 0x15, 0x02, 0x25, 0x20]
    );
    c.advance_secs(5);
    assert_eq!(rd(&mut d, 0x00), 0x05, "and it runs from there");
}

#[test]
fn a_single_write_without_set_moves_the_offset_at_once() {
    let (mut d, _) = rtc_at(T0);
    wr(&mut d, 0x02, 0x07);
    assert_eq!(d.guest_offset_secs(), 120);
    wr(&mut d, 0x32, 0x19);
    assert_eq!(rd(&mut d, 0x09), 0x24);
    assert_eq!(rd(&mut d, 0x32), 0x19);
    let t = RtcDateTime::from_unix(T0 + d.guest_offset_secs());
    assert_eq!((t.year, t.month, t.day, t.minute), (1924, 2, 29, 7));
    // The day of week follows the date and ignores writes.
    wr(&mut d, 0x06, 0x01);
    assert_eq!(rd(&mut d, 0x06), 0x06, "29 Feb 1924 was a Friday");
}

#[test]
fn uip_only_just_before_the_second_turns() {
    let (mut d, c) = rtc_at(T0);
    assert_eq!(rd(&mut d, 0x0a) & 0x80, 0);
    c.set_nanos(T0 * 1_000_000_000 + 999_900_000);
    assert_eq!(rd(&mut d, 0x0a), 0xa6);
    c.set_nanos((T0 + 1) * 1_000_000_000);
    assert_eq!(rd(&mut d, 0x0a), 0x26);
    c.set_nanos(T0 * 1_000_000_000 + 999_900_000);
    wr(&mut d, 0x0b, 0x82);
    assert_eq!(rd(&mut d, 0x0a) & 0x80, 0, "not while SET is held");
    wr(&mut d, 0x0b, 0x02);
    wr(&mut d, 0x0a, 0x66);
    assert_eq!(rd(&mut d, 0x0a), 0x66, "not while the divider is in reset");
}

#[test]
fn nvram_round_trips_and_index_bit_7_is_ignored() {
    let (mut d, _) = rtc_at(T0);
    for i in 14u8..128 {
        if i != 0x32 {
            wr(&mut d, i, i ^ 0xa5);
        }
    }
    for i in 14u8..128 {
        if i != 0x32 {
            assert_eq!(rd(&mut d, i), i ^ 0xa5, "index {i:#x}");
        }
    }
    // 0x80 | 0x20 selects 0x20 (NMI masked).
    wr(&mut d, 0xa0, 0x11);
    assert_eq!(rd(&mut d, 0x20), 0x11);
    assert_eq!(rd(&mut d, 0x8e), 0x0e ^ 0xa5);
    assert_eq!(rd(&mut d, 0x80), 0x09, "0x80 is the seconds register");
    // The index port is write-only; stray and wide accesses are harmless.
    let mut two = [0u8; 2];
    d.read(0, &mut two);
    assert_eq!(two[0], 0xff);
    d.write(0, &[0x20, 0x33]);
    assert_eq!(rd(&mut d, 0x20), 0x33);
    let mut four = [0u8; 4];
    d.read(1, &mut four);
    assert_eq!(four[1..], [0xff; 3]);
    d.write(u64::MAX, &[1, 2]);
}

#[test]
fn absurd_host_clocks_and_garbage_writes_do_not_panic() {
    for n in [i128::MAX, i128::MIN, 0, -1] {
        let mut d = CmosRtc::new(Parts::default().config(Arc::new(EdgeClock(n))));
        for b in [0x00, 0x02, 0x06, 0x82, 0x86] {
            wr(&mut d, 0x0b, b);
            for i in 0..0x0e {
                wr(&mut d, i, 0xff);
                wr(&mut d, 0x32, 0xff);
                let _ = time_regs(&mut d);
            }
        }
    }
}

#[test]
fn state_round_trips() {
    let c = FakeClock::at(T0);
    let parts = Parts::default();
    let mut d = CmosRtc::new(parts.config(c.clone()));
    wr(&mut d, 0x40, 0x99);
    wr(&mut d, 0x01, 0x30);
    wr(&mut d, 0x0b, 0x86);
    wr(&mut d, 0x00, 30);
    let s = d.state();
    assert!(s.frozen.is_some());
    assert_eq!(s.index, 0x00);
    let mut e = CmosRtc::from_state(&s, parts.config(c.clone())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.state(), s);
    assert_eq!(rd(&mut e, 0x40), 0x99);
    assert_eq!(rd(&mut e, 0x01), 0x30);
    wr(&mut e, 0x0b, 0x06);
    assert_eq!(e.guest_offset_secs(), 21);
    assert_eq!(rd(&mut e, 0x00), 30);

    let mut bad = s.clone();
    bad.nvram.pop();
    assert!(e.restore(&bad).is_err());
    let mut bad = s.clone();
    bad.frozen = None;
    assert!(e.restore(&bad).is_err());
    let mut bad = s.clone();
    bad.guest_offset_secs = i64::MIN;
    assert!(e.restore(&bad).is_err());
    let mut bad = s.clone();
    bad.frozen = bad.frozen.map(|t| RtcDateTime {
        year: i64::MAX,
        ..t
    });
    assert!(e.restore(&bad).is_err());
    let mut bad = s;
    bad.index = 0x80;
    assert!(e.restore(&bad).is_err());
    assert_eq!(e.guest_offset_secs(), 21, "unchanged by failed restores");
}
