//! The platform devices with a real guest: the i6300esb watchdog and its actions, the
//! CMOS RTC (RTC_CHANGE, `-rtc base=`, alarm interrupts), virtio-balloon (the guest
//! gives memory back and Kestrel's RSS falls) and pvpanic-pci. Each boot costs 10-55 s
//! on the emulated KVM of the CI machines, so each test checks what it can of one boot;
//! they are `#[ignore]`d in plain `cargo test` (`make test` runs them).
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{guest, Qmp, Vm, BOOT_TIMEOUT};
use serde_json::{json, Value};

fn boot(name: &str, initrd_busybox: bool, words: &str, extra: &[&str]) -> (Vm, Qmp) {
    let g = guest();
    let sock = common::temp_path(&format!("{name}.qmp"));
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut args = vec!["-qmp", qmp.as_str()];
    args.extend_from_slice(extra);
    let initrd = if initrd_busybox { &g.busybox } else { &g.tiny };
    let vm = Vm::boot(&g, initrd, words, &args);
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    (vm, q)
}

fn status(q: &mut Qmp) -> Value {
    q.ok("query-status", Value::Null)["status"].clone()
}

/// The guest's `watchdog` daemon arms the i6300esb with a 2 s timeout and feeds it only
/// every 10 s, so it expires 2 s after each feed. Five expiries, five actions, one
/// process: `pause` (WATCHDOG, STOP, state `watchdog`; `cont` resumes), `reset` (the guest
/// reboots: RESET guest-reset), `inject-nmi` (the guest logs the NMI), `debug` (a line on
/// stderr, the guest runs on), `poweroff` (the process exits at once, no SHUTDOWN).
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn watchdog_expiry_carries_out_pause_reset_and_poweroff() {
    let (mut vm, mut q) = boot(
        "wdt",
        true,
        "guest.run=watchdog,-T,2,-t,10,-F,/dev/watchdog",
        &[
            "-m",
            "128",
            "-device",
            "i6300esb,id=wdt0",
            "-action",
            "watchdog=pause",
        ],
    );
    let w = q.event("WATCHDOG");
    assert_eq!(w["data"], json!({"action": "pause"}));
    q.event("STOP");
    assert_eq!(status(&mut q), "watchdog");
    assert!(
        vm.console().contains("GUEST-RUN watchdog"),
        "{}",
        vm.console()
    );
    let pci = q.ok("query-pci", Value::Null);
    let dev = pci[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["qdev_id"] == "wdt0")
        .cloned()
        .unwrap_or_else(|| panic!("{pci}"));
    assert_eq!(dev["id"]["vendor"], 0x8086);
    assert_eq!(dev["id"]["device"], 0x25ab);

    // reset: the daemon feeds again 10 s after the last feed; 2 s later it fires.
    q.ok("watchdog-set-action", json!({"action": "reset"}));
    q.ok("cont", Value::Null);
    q.event("RESUME");
    let w = q.event("WATCHDOG");
    assert_eq!(w["data"], json!({"action": "reset"}));
    let r = q.event("RESET");
    assert_eq!(r["data"], json!({"guest": true, "reason": "guest-reset"}));
    assert_eq!(status(&mut q), "running");
    vm.wait_for_count("GUEST-UP", 2, BOOT_TIMEOUT);

    // inject-nmi: the guest logs an NMI and runs on; debug: a line on stderr, nothing else.
    q.ok("set-action", json!({"watchdog": "inject-nmi"}));
    let w = q.event("WATCHDOG");
    assert_eq!(w["data"], json!({"action": "inject-nmi"}));
    vm.wait_for("NMI received", BOOT_TIMEOUT);
    q.ok("watchdog-set-action", json!({"action": "debug"}));
    let w = q.event("WATCHDOG");
    assert_eq!(w["data"], json!({"action": "debug"}));
    assert_eq!(status(&mut q), "running");
    assert!(vm.stderr().contains("watchdog"), "{}", vm.stderr());

    // poweroff: gone at once, without a SHUTDOWN event.
    q.ok("set-action", json!({"watchdog": "poweroff"}));
    let w = q.event("WATCHDOG");
    assert_eq!(w["data"], json!({"action": "poweroff"}));
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    assert!(
        !q.events.iter().any(|e| e["event"] == "SHUTDOWN"),
        "{:?}",
        q.events
    );
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The guest sets its clock to 2030 and writes it to the RTC (`hwclock -w`): RTC_CHANGE
/// reports the offset from the host's time. An RTC alarm 2 s ahead raises IRQ 8, which the
/// guest counts in /proc/interrupts. `rtc-reset-reinjection` answers.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn guest_clock_changes_and_alarms_reach_the_rtc() {
    let target: i64 = 1_893_456_000; // 2030-01-01T00:00:00Z
    let (mut vm, mut q) = boot(
        "rtc",
        true,
        "guest.run=date,-u,-s,2030.01.01-00:00:00 guest.run=hwclock,-w,-u \
         guest.run=echo,+2,>/sys/class/rtc/rtc0/wakealarm guest.run=sleep,4 \
         guest.run=grep,rtc0,/proc/interrupts guest.poweroff",
        &["-m", "128"],
    );
    let ev = q.event("RTC_CHANGE");
    let expect = target - unix_now();
    let offset = ev["data"]["offset"].as_i64().unwrap();
    // hwclock writes the guest's time a little after `date -s` set it to the target.
    assert!(
        (-2..=30).contains(&(offset - expect)),
        "offset {offset}, expected a little over {expect}: {ev}"
    );
    assert_eq!(ev["data"]["qom-path"], "/machine/unattached/device[0]");
    q.ok("rtc-reset-reinjection", Value::Null);
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    let irqs = vm
        .run_output("grep rtc0 /proc/interrupts")
        .unwrap_or_else(|| panic!("{}", vm.console()));
    let count: u64 = irqs
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("{irqs}"));
    assert!(count >= 1, "the alarm raised IRQ 8: {irqs}");
}

/// `-rtc base=DATE`: the guest's clock starts at DATE (the kernel reads the RTC at boot),
/// and `clock=vm` keeps it from running while the VM is stopped before it started.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn rtc_base_date_is_the_guests_time() {
    let g = guest();
    let mut vm = Vm::boot(
        &g,
        &g.tiny,
        "guest.cat=/sys/class/rtc/rtc0/date guest.cat=/sys/class/rtc/rtc0/since_epoch guest.poweroff",
        &["-m", "128", "-rtc", "base=2006-06-17T16:01:21,clock=vm"],
    );
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    let c = vm.console().replace("\r\n", "\n");
    assert!(
        c.contains("GUEST-CAT /sys/class/rtc/rtc0/date\n2006-06-17\n"),
        "{c}"
    );
    let since: i64 = c
        .split("GUEST-CAT /sys/class/rtc/rtc0/since_epoch\n")
        .nth(1)
        .and_then(|s| s.lines().next())
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("{c}"));
    // The guest has run for well under 5 minutes of guest time.
    assert!(
        (1_150_560_081..1_150_560_081 + 300).contains(&since),
        "{since}"
    );
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Balloon a 192 MiB guest down to 64 MiB: the guest fills and frees 64 MiB first, so
/// those pages are resident on the host; then `balloon` makes it inflate, BALLOON_CHANGE
/// and `query-balloon` follow the balloon to the target, the guest's MemTotal falls, and
/// Kestrel's RSS falls with the pages handed back (MADV_DONTNEED). Statistics come through
/// `qom-get guest-stats` once `guest-stats-polling-interval` is set.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn balloon_returns_guest_memory_to_the_host() {
    let mib = 1u64 << 20;
    let (mut vm, mut q) = boot(
        "balloon",
        true,
        "guest.run=dd,if=/dev/zero,of=/tmp/fill,bs=1M,count=64 guest.run=rm,/tmp/fill \
         guest.run=echo,BALLOON-READY \
         guest.run=until,[,$(grep,MemTotal,/proc/meminfo|tr,-dc,0-9),-lt,60000,];,do,sleep,1;,done \
         guest.run=grep,MemTotal,/proc/meminfo guest.run=sleep,600",
        &["-m", "192", "-device", "virtio-balloon-pci,id=balloon0"],
    );
    assert_eq!(
        q.ok("query-balloon", Value::Null),
        json!({"actual": 192 * mib})
    );
    q.ok(
        "qom-set",
        json!({"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval", "value": 2}),
    );
    assert_eq!(
        q.ok(
            "qom-get",
            json!({"path": "balloon0", "property": "guest-stats-polling-interval"})
        ),
        json!(2)
    );
    vm.wait_for("BALLOON-READY", BOOT_TIMEOUT);
    let pid = vm.child.id();
    let before = rss_kib(pid);

    q.ok("balloon", json!({"value": 64 * mib}));
    let start = Instant::now();
    loop {
        let actual = q.ok("query-balloon", Value::Null)["actual"]
            .as_u64()
            .unwrap();
        if actual == 64 * mib {
            break;
        }
        assert!(
            start.elapsed() < BOOT_TIMEOUT,
            "balloon stuck at {actual}\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The last BALLOON_CHANGE (throttled to one a second) carries the final size.
    let mut last = q.event("BALLOON_CHANGE");
    let start = Instant::now();
    while last["data"]["actual"] != json!(64 * mib) {
        assert!(start.elapsed() < Duration::from_secs(10), "{last}");
        last = q.event("BALLOON_CHANGE");
    }
    let after = rss_kib(pid);
    assert!(
        after + 48 * 1024 < before,
        "RSS {before} KiB -> {after} KiB: the inflated pages went back to the host"
    );

    let stats = q.ok(
        "qom-get",
        json!({"path": "/machine/peripheral/balloon0", "property": "guest-stats"}),
    );
    assert!(stats["last-update"].as_i64().unwrap() > 0, "{stats}");
    let total = stats["stats"]["stat-total-memory"].as_i64().unwrap();
    assert!(total > 0 && total < 192 * mib as i64, "{stats}");

    vm.wait_for("GUEST-RUN sleep 600", BOOT_TIMEOUT);
    q.ok("quit", Value::Null);
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    let mem = vm
        .run_output("grep MemTotal /proc/meminfo")
        .unwrap_or_else(|| panic!("{}", vm.console()));
    let kb: u64 = mem
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    // 192 MiB less the kernel's own, less the 128 MiB in the balloon.
    assert!(kb < 60_000, "MemTotal after ballooning: {mem}");
}

/// pvpanic-pci: the guest's pvpanic-pci driver finds the device, and a kernel panic gives
/// GUEST_PANICKED with `-action panic=pause`: the machine stops in `guest-panicked`.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn pvpanic_pci_reports_a_panic_and_pauses() {
    let (mut vm, mut q) = boot(
        "pvpanic-pci",
        false,
        "rdinit=/no-such-init",
        &[
            "-m",
            "128",
            "-device",
            "pvpanic-pci",
            "-action",
            "panic=pause",
        ],
    );
    let p = q.event("GUEST_PANICKED");
    assert_eq!(p["data"]["action"], "pause", "{p}");
    q.event("STOP");
    assert_eq!(status(&mut q), "guest-panicked");
    // It stays stopped at the panic: the reboot the guest's kernel asks for right after
    // (panic=-1 on its command line) never happens, as in QEMU.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(status(&mut q), "guest-panicked");
    assert!(
        !q.events
            .iter()
            .any(|e| e["event"] == "SHUTDOWN" || e["event"] == "RESET"),
        "{:?}",
        q.events
    );
    q.ok("quit", Value::Null);
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
    assert!(vm.console().contains("Kernel panic"), "{}", vm.console());
}

/// Free page reporting: with `free-page-reporting=on` the guest hands the free memory it
/// has touched back on its own (Linux reports free 2 MiB blocks a few seconds after they
/// are freed), with no `balloon` command: after it fills and frees 64 MiB, Kestrel's RSS
/// falls back well under what the fill made resident.
#[test]
#[ignore = "boots a guest: run by `make test`"]
fn free_page_reporting_returns_freed_memory_unasked() {
    let (mut vm, mut q) = boot(
        "reporting",
        true,
        "guest.run=dd,if=/dev/zero,of=/tmp/fill,bs=1M,count=64 guest.run=rm,/tmp/fill \
         guest.run=echo,REPORT-READY guest.run=sleep,600",
        &[
            "-m",
            "192",
            "-device",
            "virtio-balloon-pci,id=b0,free-page-reporting=on",
        ],
    );
    vm.wait_for("GUEST-RUN dd", BOOT_TIMEOUT);
    let pid = vm.child.id();
    // While the 64 MiB file exists it is resident.
    let start = Instant::now();
    let mut peak = 0;
    while !vm.console().contains("GUEST-RUN rm") {
        peak = peak.max(rss_kib(pid));
        assert!(start.elapsed() < BOOT_TIMEOUT, "{}", vm.console());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(peak > 64 * 1024, "the fill made {peak} KiB resident");
    vm.wait_for("REPORT-READY", BOOT_TIMEOUT);
    let start = Instant::now();
    loop {
        let now = rss_kib(pid);
        if now + 40 * 1024 < peak {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "RSS still {now} KiB after the guest freed 64 MiB (peak {peak} KiB)"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Reported pages are free pages: the balloon itself did not grow.
    assert_eq!(
        q.ok("query-balloon", Value::Null),
        json!({"actual": 192u64 << 20})
    );
    q.ok("quit", Value::Null);
    assert_eq!(vm.wait_exit(BOOT_TIMEOUT).code(), Some(0));
}
