//! i6300ESB watchdog unit tests: PCI identity, the lock and config registers, the
//! unlock sequence, both stages on a manual guest clock, reboot and free-run modes, and
//! migration.

use super::*;
use crate::pci::config::{BAR0, INTERRUPT_PIN};
use crate::timer::{ManualClock, ManualTimer};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Default)]
struct CountingSink(AtomicUsize);

impl CountingSink {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl WatchdogSink for CountingSink {
    fn expired(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

const SEC: u64 = 1_000_000_000;
/// One stage with Linux's default 30 s heartbeat: (30 << 9) << 15 PCI clocks.
const HALF_30: u64 = 15_252_014_545;

struct Rig {
    clock: Arc<ManualClock>,
    timer: Arc<ManualTimer>,
    sink: Arc<CountingSink>,
    dev: I6300Esb,
}

impl Rig {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(1_000));
        let timer = Arc::new(ManualTimer::default());
        let sink = Arc::new(CountingSink::default());
        let dev = I6300Esb::new(clock.clone(), timer.clone(), sink.clone()).unwrap();
        Self {
            clock,
            timer,
            sink,
            dev,
        }
    }

    fn now(&self) -> u64 {
        self.clock.now_ns()
    }

    /// A configuration write of `len` bytes at byte offset `off`, as the bus
    /// hands it to the device.
    fn cfg_write(&mut self, off: usize, len: usize, v: u32) {
        let shift = 8 * (off % 4);
        let mask = (u32::MAX >> (32 - 8 * len)) << shift;
        self.dev.write_config(off / 4, v << shift, mask);
    }

    fn cfg_read(&mut self, off: usize, len: usize) -> u32 {
        let shift = 8 * (off % 4);
        (self.dev.read_config(off / 4) >> shift) & (u32::MAX >> (32 - 8 * len))
    }

    fn w8(&mut self, off: u64, v: u8) {
        self.dev.write_bar(0, off, &[v]);
    }

    fn w16(&mut self, off: u64, v: u16) {
        self.dev.write_bar(0, off, &v.to_le_bytes());
    }

    fn w32(&mut self, off: u64, v: u32) {
        self.dev.write_bar(0, off, &v.to_le_bytes());
    }

    fn r16(&mut self, off: u64) -> u16 {
        let mut b = [0; 2];
        self.dev.read_bar(0, off, &mut b);
        u16::from_le_bytes(b)
    }

    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0; 4];
        self.dev.read_bar(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn unlock(&mut self) {
        self.w16(ESB_RELOAD_REG, 0x80);
        self.w16(ESB_RELOAD_REG, 0x86);
    }

    /// Linux's esb_initdevice and esb_timer_set_heartbeat; returns whether the
    /// driver saw the TIMEOUT flag (its WDIOF_CARDRESET boot status).
    fn linux_probe(&mut self, heartbeat: u32) -> bool {
        self.cfg_write(ESB_CONFIG_REG, 2, 0x0003);
        let _ = self.cfg_read(ESB_LOCK_REG, 1);
        self.cfg_write(ESB_LOCK_REG, 1, 0);
        self.unlock();
        let triggered = self.r16(ESB_RELOAD_REG) & ESB_WDT_TIMEOUT != 0;
        self.unlock();
        self.w16(ESB_RELOAD_REG, ESB_WDT_TIMEOUT | ESB_WDT_RELOAD);
        self.linux_set_heartbeat(heartbeat);
        triggered
    }

    fn linux_set_heartbeat(&mut self, heartbeat: u32) {
        self.unlock();
        self.w32(ESB_TIMER1_REG, heartbeat << 9);
        self.unlock();
        self.w32(ESB_TIMER2_REG, heartbeat << 9);
        self.ping();
    }

    /// esb_timer_start.
    fn linux_start(&mut self, nowayout: bool) {
        self.ping();
        let lock = ESB_WDT_ENABLE | if nowayout { ESB_WDT_LOCK } else { 0 };
        self.cfg_write(ESB_LOCK_REG, 1, u32::from(lock));
    }

    /// esb_timer_keepalive.
    fn ping(&mut self) {
        self.unlock();
        self.w16(ESB_RELOAD_REG, ESB_WDT_RELOAD);
    }

    /// Moves the clock to `t`, calling the device back at every deadline passed
    /// on the way, as the machine would.
    fn run_until(&mut self, t: u64) {
        for _ in 0..10_000 {
            match self.timer.deadline() {
                Some(d) if d <= t => {
                    self.clock.set(d.max(self.now()));
                    self.dev.timer_fired();
                }
                _ => break,
            }
        }
        self.clock.set(t);
    }
}

#[test]
fn pci_identity_and_bar0() {
    let mut r = Rig::new();
    assert_eq!(r.cfg_read(0, 4), 0x25ab_8086);
    assert_eq!(r.cfg_read(0x08, 4) >> 8, 0x08_80_00);
    assert_eq!(r.cfg_read(INTERRUPT_PIN, 1), 1, "INTA");
    let bars = r.dev.bars();
    assert_eq!(bars.len(), 1);
    assert_eq!(bars[0].index, 0);
    assert_eq!(bars[0].kind, BarKind::Memory32);
    assert_eq!(bars[0].size, 16);
    r.cfg_write(BAR0, 4, 0xffff_ffff);
    assert_eq!(r.cfg_read(BAR0, 4), 0xffff_fff0);
    // Power-on registers.
    assert_eq!(r.cfg_read(ESB_CONFIG_REG, 2), 0);
    assert_eq!(r.cfg_read(ESB_LOCK_REG, 1), 0);
    assert_eq!(r.r32(ESB_TIMER1_REG), ESB_PRELOAD_RESET);
    assert_eq!(r.r32(ESB_TIMER2_REG), ESB_PRELOAD_RESET);
    assert_eq!(r.timer.deadline(), None);
}

#[test]
fn linux_driver_sequence_arms_half_the_heartbeat() {
    let mut r = Rig::new();
    assert!(!r.linux_probe(30));
    assert_eq!(r.cfg_read(ESB_CONFIG_REG, 2), 0x0003);
    assert_eq!(r.r32(ESB_TIMER1_REG), 30 << 9);
    assert_eq!(r.r32(ESB_TIMER2_REG), 30 << 9);
    assert_eq!(r.timer.deadline(), None, "not counting until enabled");
    r.clock.advance(SEC);
    r.linux_start(false);
    assert_eq!(r.cfg_read(ESB_LOCK_REG, 1), u32::from(ESB_WDT_ENABLE));
    let armed = r.timer.deadline().unwrap() - r.now();
    assert_eq!(armed, HALF_30);
    assert!((15 * SEC..16 * SEC).contains(&armed), "about heartbeat/2");
}

#[test]
fn both_stages_expire_then_the_sink_fires_once_at_the_heartbeat() {
    let mut r = Rig::new();
    r.linux_probe(30);
    r.linux_start(false);
    let t0 = r.now();
    r.run_until(t0 + HALF_30 - 1);
    assert_eq!(r.dev.regs.stage, 1);
    r.run_until(t0 + HALF_30);
    assert_eq!(r.dev.regs.stage, 2);
    assert_eq!(r.timer.deadline(), Some(t0 + 2 * HALF_30));
    assert_eq!(r.sink.count(), 0);
    assert_eq!(r.dev.regs.gintsr, 0, "Linux disables the stage-1 interrupt");
    r.run_until(t0 + 2 * HALF_30 - 1);
    assert_eq!(r.sink.count(), 0);
    r.run_until(t0 + 2 * HALF_30);
    assert_eq!(r.sink.count(), 1);
    assert!((30 * SEC..31 * SEC).contains(&(2 * HALF_30)));
    assert_eq!(r.timer.deadline(), None, "not re-armed");
    assert!(r.dev.timed_out());
    assert_eq!(r.r16(ESB_RELOAD_REG) & ESB_WDT_TIMEOUT, ESB_WDT_TIMEOUT);
    r.run_until(t0 + 1000 * SEC);
    r.dev.timer_fired();
    assert_eq!(r.sink.count(), 1, "exactly once");
    // Still enabled: a ping starts it over.
    r.ping();
    assert_eq!(r.timer.deadline(), Some(r.now() + HALF_30));
    r.run_until(r.now() + 2 * HALF_30);
    assert_eq!(r.sink.count(), 2);
}

#[test]
fn a_late_callback_does_not_stretch_stage_two() {
    let mut r = Rig::new();
    r.linux_probe(30);
    r.linux_start(false);
    let t0 = r.now();
    r.clock.set(t0 + HALF_30 + 3 * SEC);
    r.dev.timer_fired();
    assert_eq!(r.timer.deadline(), Some(t0 + 2 * HALF_30));
    r.clock.set(t0 + 2 * HALF_30 + 20 * SEC);
    r.dev.timer_fired();
    assert_eq!(r.sink.count(), 1);
}

#[test]
fn pings_keep_it_from_firing() {
    let mut r = Rig::new();
    r.linux_probe(30);
    r.linux_start(false);
    let t0 = r.now();
    for i in 1..=20 {
        r.run_until(t0 + i * 10 * SEC);
        r.ping();
        assert_eq!(r.timer.deadline(), Some(r.now() + HALF_30));
    }
    // A ping during stage 2 starts stage 1 again.
    r.run_until(r.now() + HALF_30 + SEC);
    assert_eq!(r.dev.regs.stage, 2);
    r.ping();
    assert_eq!(r.dev.regs.stage, 1);
    assert_eq!(r.timer.deadline(), Some(r.now() + HALF_30));
    r.run_until(r.now() + 2 * HALF_30 - 1);
    assert_eq!(r.sink.count(), 0);
    r.run_until(r.now() + 1);
    assert_eq!(r.sink.count(), 1);
}

#[test]
fn writes_without_the_unlock_sequence_are_ignored() {
    let mut r = Rig::new();
    r.linux_probe(30);
    r.linux_start(false);
    let deadline = r.timer.deadline();
    r.w32(ESB_TIMER1_REG, 5);
    r.w32(ESB_TIMER2_REG, 5);
    assert_eq!(r.r32(ESB_TIMER1_REG), 30 << 9);
    assert_eq!(r.r32(ESB_TIMER2_REG), 30 << 9);
    // The steps reversed, only the first step, or a wrong second value.
    r.w16(ESB_RELOAD_REG, 0x86);
    r.w16(ESB_RELOAD_REG, 0x80);
    r.w32(ESB_TIMER1_REG, 5);
    assert_eq!(r.r32(ESB_TIMER1_REG), 30 << 9);
    r.w16(ESB_RELOAD_REG, 0x80);
    r.w16(ESB_RELOAD_REG, 0x87);
    r.w32(ESB_TIMER1_REG, 5);
    assert_eq!(r.r32(ESB_TIMER1_REG), 30 << 9);
    assert_eq!(r.dev.regs.unlock, 1);
    // As in QEMU, stray writes between the steps do not undo the first one.
    r.w16(ESB_RELOAD_REG, 0x86);
    r.w32(ESB_TIMER1_REG, 30 << 9);
    assert_eq!(r.dev.regs.unlock, 0);
    // A ping without the sequence does not reload.
    r.clock.advance(SEC);
    r.w16(ESB_RELOAD_REG, ESB_WDT_RELOAD);
    assert_eq!(r.timer.deadline(), deadline);
    // One unlock, one write: the second write is locked again.
    r.unlock();
    r.w32(ESB_TIMER1_REG, 0x123);
    r.w32(ESB_TIMER1_REG, 0x456);
    assert_eq!(r.r32(ESB_TIMER1_REG), 0x123);
    // Writing one preload uses up the unlock for the other and for the reload.
    r.unlock();
    r.w32(ESB_TIMER2_REG, 0x777);
    r.w16(ESB_RELOAD_REG, ESB_WDT_RELOAD);
    assert_eq!(r.timer.deadline(), deadline);
    // GINTSR is not behind the lock and leaves an unlock in place.
    r.unlock();
    r.w32(ESB_GINTSR_REG, 1);
    r.w32(ESB_TIMER2_REG, 0xfff_ffff);
    assert_eq!(r.r32(ESB_TIMER2_REG), ESB_PRELOAD_MASK, "20 bits kept");
    // The old driver unlocks with byte writes; a byte write may also reload.
    r.w8(ESB_RELOAD_REG, 0x80);
    r.w8(ESB_RELOAD_REG, 0x86);
    r.w8(ESB_RELOAD_REG + 1, (ESB_WDT_RELOAD >> 8) as u8);
    assert_eq!(r.timer.deadline(), Some(r.now() + preload_ns(0x123, false)));
    // Byte-wide preload writes merge into the register.
    r.unlock();
    r.w8(ESB_TIMER1_REG + 2, 0xff);
    assert_eq!(r.r32(ESB_TIMER1_REG), 0xf_0123);
}

#[test]
fn one_mhz_scale() {
    let mut r = Rig::new();
    r.cfg_write(ESB_CONFIG_REG, 2, u32::from(ESB_WDT_FREQ_1MHZ | 3));
    r.unlock();
    r.w32(ESB_TIMER1_REG, 1000);
    r.unlock();
    r.w32(ESB_TIMER2_REG, 33_000);
    r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
    let t0 = r.now();
    // 1000 << 5 clocks at 33 MHz.
    assert_eq!(r.timer.deadline(), Some(t0 + 969_696));
    r.run_until(t0 + 969_696);
    // 33_000 << 5 clocks: exactly 32 ms.
    assert_eq!(r.timer.deadline(), Some(t0 + 969_696 + 32_000_000));
    r.run_until(t0 + SEC);
    assert_eq!(r.sink.count(), 1);
    assert_eq!(preload_ns(1, false), 992_969);
}

#[test]
fn reboot_disabled_never_fires() {
    let mut r = Rig::new();
    r.linux_probe(2);
    r.cfg_write(ESB_CONFIG_REG, 2, u32::from(ESB_WDT_REBOOT_DISABLE | 3));
    r.linux_start(false);
    r.run_until(r.now() + 100 * SEC);
    assert_eq!(r.sink.count(), 0);
    assert_eq!(r.timer.deadline(), None, "stops after stage 2");
    assert!(!r.dev.timed_out());
    // Free-running: stage 1 over and over, still no reboot.
    r.cfg_write(ESB_LOCK_REG, 1, 0);
    r.cfg_write(
        ESB_LOCK_REG,
        1,
        u32::from(ESB_WDT_ENABLE | ESB_WDT_FREE_RUN),
    );
    r.run_until(r.now() + 100 * SEC);
    assert!(r.timer.deadline().is_some());
    assert_eq!(r.sink.count(), 0);
}

#[test]
fn disabling_disarms() {
    let mut r = Rig::new();
    r.linux_probe(30);
    r.linux_start(false);
    assert!(r.timer.deadline().is_some());
    r.cfg_write(ESB_LOCK_REG, 1, 0);
    assert_eq!(r.timer.deadline(), None);
    // A callback that was already on its way does nothing.
    r.clock.advance(100 * SEC);
    r.dev.timer_fired();
    assert_eq!(r.timer.deadline(), None);
    assert_eq!(r.sink.count(), 0);
    // Pings while disabled do not start it.
    r.ping();
    assert_eq!(r.timer.deadline(), None);
    // Re-enabling writes of ENABLE keep the running count.
    r.linux_start(false);
    let d = r.timer.deadline();
    r.clock.advance(SEC);
    r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
    assert_eq!(r.timer.deadline(), d);
}

#[test]
fn lock_bit_freezes_enable() {
    let mut r = Rig::new();
    r.linux_probe(30);
    r.linux_start(true);
    assert_eq!(
        r.cfg_read(ESB_LOCK_REG, 1),
        u32::from(ESB_WDT_ENABLE | ESB_WDT_LOCK)
    );
    let d = r.timer.deadline();
    r.cfg_write(ESB_LOCK_REG, 1, 0);
    r.cfg_write(ESB_LOCK_REG, 4, 0);
    assert_eq!(
        r.cfg_read(ESB_LOCK_REG, 1),
        u32::from(ESB_WDT_ENABLE | ESB_WDT_LOCK)
    );
    assert_eq!(r.timer.deadline(), d);
    // Pings and new preloads still work.
    r.linux_set_heartbeat(10);
    assert!(r.timer.deadline().is_some());
    // A device reset unlocks and disables.
    r.dev.reset();
    assert_eq!(r.cfg_read(ESB_LOCK_REG, 1), 0);
    assert_eq!(r.timer.deadline(), None);
    // Locking while disabled keeps it disabled.
    r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_LOCK));
    r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
    assert_eq!(r.cfg_read(ESB_LOCK_REG, 1), u32::from(ESB_WDT_LOCK));
    assert_eq!(r.timer.deadline(), None);
}

#[test]
fn timeout_flag_reads_and_clears_on_write_one() {
    let mut r = Rig::new();
    r.linux_probe(1);
    r.linux_start(false);
    r.run_until(r.now() + 2 * SEC);
    assert_eq!(r.sink.count(), 1);
    assert_eq!(r.r16(ESB_RELOAD_REG), ESB_WDT_TIMEOUT | ESB_WDT_TIMEOUT_OLD);
    // Not without the unlock, and not by writing 0.
    r.w16(ESB_RELOAD_REG, ESB_WDT_TIMEOUT);
    r.unlock();
    r.w16(ESB_RELOAD_REG, 0);
    assert!(r.dev.timed_out());
    // A reset keeps it: the driver of the next boot reads it and clears it.
    r.dev.reset();
    assert!(r.dev.timed_out());
    assert!(r.linux_probe(30));
    assert!(!r.dev.timed_out());
    assert_eq!(r.r16(ESB_RELOAD_REG), 0);
    // The old driver's bit 12 clears it too.
    r.dev.regs.timed_out = true;
    r.unlock();
    r.w16(ESB_RELOAD_REG, 0x1100);
    assert!(!r.dev.timed_out());
}

#[test]
fn stage_one_sets_the_interrupt_status_unless_disabled() {
    let mut r = Rig::new();
    r.unlock();
    r.w32(ESB_TIMER1_REG, 10);
    r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
    r.run_until(r.now() + preload_ns(10, false));
    assert_eq!(r.dev.regs.stage, 2);
    assert_eq!(r.r32(ESB_GINTSR_REG), ESB_GINTSR_STAGE1);
    r.w32(ESB_GINTSR_REG, 0);
    assert_eq!(r.r32(ESB_GINTSR_REG), ESB_GINTSR_STAGE1);
    r.w8(ESB_GINTSR_REG, 1);
    assert_eq!(r.r32(ESB_GINTSR_REG), 0);
}

#[test]
fn early_timer_fired_rearms_and_does_not_fire() {
    let mut r = Rig::new();
    r.linux_probe(30);
    r.linux_start(false);
    let d = r.timer.deadline().unwrap();
    r.clock.set(d - 1);
    r.timer.arm(None);
    r.dev.timer_fired();
    assert_eq!(r.timer.deadline(), Some(d));
    assert_eq!(r.dev.regs.stage, 1);
    r.run_until(d + HALF_30 - 1);
    r.dev.timer_fired();
    assert_eq!(r.dev.regs.stage, 2);
    assert_eq!(r.timer.deadline(), Some(d + HALF_30));
    assert_eq!(r.sink.count(), 0);
}

#[test]
fn zero_preloads_still_take_a_tick() {
    let mut r = Rig::new();
    r.unlock();
    r.w32(ESB_TIMER1_REG, 0);
    r.unlock();
    r.w32(ESB_TIMER2_REG, 0);
    r.cfg_write(ESB_LOCK_REG, 1, u32::from(ESB_WDT_ENABLE));
    assert_eq!(r.timer.deadline(), Some(r.now() + preload_ns(1, false)));
    r.run_until(r.now() + 2 * preload_ns(1, false));
    assert_eq!(r.sink.count(), 1);
}

#[test]
fn guest_accesses_anywhere_never_panic() {
    let mut r = Rig::new();
    r.cfg_write(0x04, 2, u32::from(COMMAND_MEMORY));
    let offsets = [
        0,
        1,
        2,
        3,
        4,
        7,
        8,
        0xb,
        0xc,
        0xd,
        0xe,
        0xf,
        0x10,
        0x11,
        0x1000,
        u64::MAX / 2,
        u64::MAX - 3,
        u64::MAX - 1,
        u64::MAX,
    ];
    let mut seed = 0x1234_5678_9abc_def0u64;
    for bar in [0u8, 1, 5, 6, 7, 0xff] {
        for &off in &offsets {
            for len in 0..=9 {
                let mut buf = vec![0xa5u8; len];
                r.dev.read_bar(bar, off, &mut buf);
                if bar != 0 || off >= 16 {
                    assert!(buf.iter().all(|b| *b == 0), "{bar} {off:#x} {len}");
                }
                for v in [0x80u64, 0x86, 0x100, 0x300, u64::MAX, seed] {
                    let bytes = v.to_le_bytes();
                    let data: Vec<u8> = bytes.iter().cycle().take(len).copied().collect();
                    r.dev.write_bar(bar, off, &data);
                }
                seed = seed.rotate_left(13).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
        }
    }
    for reg in (0..1100).chain([usize::MAX - 1, usize::MAX]) {
        for mask in [0, 0xff, 0xff00, 0xffff, 0xffff_0000, 0xffff_ffff] {
            let _ = r.dev.read_config(reg);
            seed = seed.rotate_left(7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            // Leave the header alone so the BAR stays where it is.
            if reg >= 0x10 {
                r.dev.write_config(reg, seed as u32, mask);
            }
        }
    }
    for _ in 0..100 {
        r.clock.advance(seed % (2000 * SEC));
        r.dev.timer_fired();
        seed = seed.rotate_left(7).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    assert_eq!(r.dev.config().header().device_id, I6300ESB_DEVICE_ID);
}

/// A device counting in stage 2 with every register away from its reset value.
fn busy_rig() -> Rig {
    let mut r = Rig::new();
    r.cfg_write(0x04, 2, u32::from(COMMAND_MEMORY));
    r.cfg_write(BAR0, 4, 0xfebf_f000);
    r.cfg_write(0x3c, 1, 11);
    r.cfg_write(ESB_CONFIG_REG, 2, 0x0001);
    r.linux_set_heartbeat(30);
    r.unlock();
    r.w32(ESB_TIMER2_REG, 2 << 9);
    r.linux_start(true);
    r.run_until(r.now() + HALF_30 + SEC);
    r.unlock();
    r
}

#[test]
fn state_round_trips_and_the_count_carries_on() {
    let r = busy_rig();
    let s = r.dev.state();
    assert_eq!(s.stage, 2);
    assert_eq!(s.unlock, 2);
    assert_eq!(s.gintsr, ESB_GINTSR_STAGE1);
    assert_eq!(s.lock, ESB_WDT_ENABLE | ESB_WDT_LOCK);
    assert_eq!(s.pci.bar0, 0xfebf_f000);
    let left = s.remaining_ns.unwrap();
    assert_eq!(left, preload_ns(2 << 9, false) - SEC);
    let json = serde_json::to_string(&s).unwrap();
    let back: I6300EsbState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);

    // A new machine whose clock starts elsewhere.
    let mut n = Rig::new();
    n.clock.set(77 * SEC);
    n.dev.restore(&back).unwrap();
    assert_eq!(n.dev.state(), s);
    assert_eq!(n.timer.deadline(), Some(77 * SEC + left));
    assert_eq!(n.dev.bars()[0].mapped, Some(0xfebf_f000));
    assert_eq!(n.cfg_read(ESB_LOCK_REG, 1), 3);
    n.run_until(77 * SEC + left - 1);
    assert_eq!(n.sink.count(), 0);
    n.run_until(77 * SEC + left);
    assert_eq!(n.sink.count(), 1);

    // Restoring an idle state disarms.
    let idle = Rig::new().dev.state();
    n.dev.restore(&idle).unwrap();
    assert_eq!(n.timer.deadline(), None);
    assert_eq!(n.dev.state(), idle);
}

#[test]
fn restore_rejects_bad_state_and_leaves_the_device_alone() {
    let mut r = busy_rig();
    let good = r.dev.state();
    let deadline = r.timer.deadline();
    let bad: Vec<(&str, I6300EsbState)> = vec![
        (
            "preload 1",
            I6300EsbState {
                timer1_preload: 0x10_0000,
                ..good.clone()
            },
        ),
        (
            "preload 2",
            I6300EsbState {
                timer2_preload: u32::MAX,
                ..good.clone()
            },
        ),
        (
            "stage 0",
            I6300EsbState {
                stage: 0,
                ..good.clone()
            },
        ),
        (
            "stage 3",
            I6300EsbState {
                stage: 3,
                ..good.clone()
            },
        ),
        (
            "unlock",
            I6300EsbState {
                unlock: 3,
                ..good.clone()
            },
        ),
        (
            "config",
            I6300EsbState {
                config: 0x0100,
                ..good.clone()
            },
        ),
        (
            "lock",
            I6300EsbState {
                lock: 0x08,
                ..good.clone()
            },
        ),
        (
            "gintsr",
            I6300EsbState {
                gintsr: 2,
                ..good.clone()
            },
        ),
        (
            "counting while disabled",
            I6300EsbState {
                lock: 0,
                ..good.clone()
            },
        ),
        (
            "stage too long",
            I6300EsbState {
                remaining_ns: Some(u64::MAX),
                ..good.clone()
            },
        ),
        (
            "bar0",
            I6300EsbState {
                pci: I6300EsbPciState {
                    bar0: 0xfebf_f008,
                    ..good.pci
                },
                ..good.clone()
            },
        ),
        (
            "command",
            I6300EsbState {
                pci: I6300EsbPciState {
                    command: 0x8000,
                    ..good.pci
                },
                ..good.clone()
            },
        ),
    ];
    for (what, s) in bad {
        assert!(r.dev.restore(&s).is_err(), "{what}");
        assert_eq!(r.dev.state(), good, "{what}");
        assert_eq!(r.timer.deadline(), deadline, "{what}");
    }
    let e = r
        .dev
        .restore(&I6300EsbState {
            stage: 9,
            ..good.clone()
        })
        .unwrap_err();
    assert!(e.to_string().contains("stage 9"), "{e}");
    // Longest possible stage is accepted.
    let longest = I6300EsbState {
        remaining_ns: Some(preload_ns(ESB_PRELOAD_MASK, false)),
        ..good
    };
    r.dev.restore(&longest).unwrap();
}

#[test]
fn reset_returns_to_power_on_but_keeps_the_timeout_flag() {
    let mut r = busy_rig();
    r.dev.regs.timed_out = true;
    r.dev.reset();
    let s = r.dev.state();
    assert_eq!(s.config, 0);
    assert_eq!(s.lock, 0);
    assert_eq!(s.timer1_preload, ESB_PRELOAD_RESET);
    assert_eq!(s.timer2_preload, ESB_PRELOAD_RESET);
    assert_eq!(s.gintsr, 0);
    assert_eq!(s.unlock, 0);
    assert_eq!(s.stage, 1);
    assert_eq!(s.remaining_ns, None);
    assert!(s.timed_out);
    assert_eq!(r.timer.deadline(), None);
    // The PCI header is the bus's.
    assert_eq!(s.pci.bar0, 0xfebf_f000);
}
