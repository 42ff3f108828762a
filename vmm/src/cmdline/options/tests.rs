//! Tests of the command line as a whole: every option's parsing and QEMU's error texts,
//! the checks that wait for the whole command line (chardev, device and backend
//! references, stdio users, -daemonize conflicts), and the help text.

use super::super::{Accel, Chardev, Cpu, CpuModel, Smp};
use super::*;

fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(String::from).collect()
}

fn run(line: &str) -> Config {
    match parse(args(line)) {
        Ok(Action::Run(cfg)) => *cfg,
        other => panic!("{line}: {other:?}"),
    }
}

fn err(line: &str) -> String {
    match parse(args(line)) {
        Ok(a) => panic!("{line}: accepted as {a:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults() {
    let c = run("");
    assert_eq!(c.mem_size, 128 << 20);
    assert_eq!(c.smp, Smp::default());
    assert_eq!(c.serials, vec![ChardevBackend::Stdio]);
    assert_eq!(c.machine.kind, "kestrel");
    assert_eq!(c.machine.accel, Accel::Kvm);
    assert_eq!(c.cpu, Cpu::default());
    assert_eq!(c.cpu.model, CpuModel::Qemu64);
    assert_eq!(c.append, "");
    assert!(!c.start_paused && !c.daemonize && !c.nodefaults);
}

#[test]
fn memory() {
    assert_eq!(run("-m 512").mem_size, 512 << 20);
    assert_eq!(run("-m 512M").mem_size, 512 << 20);
    assert_eq!(run("-m 2G").mem_size, 2 << 30);
    assert_eq!(run("-m 1.5G").mem_size, 3 << 29);
    assert_eq!(run("-m size=1024k").mem_size, 1 << 20);
    assert_eq!(run("--m 1T").mem_size, 1 << 40);
    assert_eq!(run("-m 100b").mem_size, 8192);
    assert_eq!(run("-m 1G -m 256").mem_size, 256 << 20);
}

#[test]
fn smp() {
    let c = run("-smp 4");
    assert_eq!((c.smp.cpus, c.smp.cores, c.smp.maxcpus), (4, 4, 4));
    let c = run("-smp cpus=8,sockets=2,cores=2,threads=2,maxcpus=8");
    assert_eq!(
        c.smp,
        Smp {
            cpus: 8,
            sockets: 2,
            dies: 1,
            cores: 2,
            threads: 2,
            maxcpus: 8
        }
    );
}

#[test]
fn boot_files() {
    let c = run("-kernel /b/vmlinuz -initrd /b/initrd.img -append console=ttyS0");
    assert_eq!(c.kernel, Some(PathBuf::from("/b/vmlinuz")));
    assert_eq!(c.initrd, Some(PathBuf::from("/b/initrd.img")));
    assert_eq!(c.append, "console=ttyS0");
    // The argument is the next word, whatever it looks like.
    let c = parse(vec![
        "-append".to_string(),
        "-m 1 root=/dev/vda, quiet".to_string(),
    ]);
    match c {
        Ok(Action::Run(c)) => assert_eq!(c.append, "-m 1 root=/dev/vda, quiet"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn serials_and_chardevs() {
    let c = run(
        "-chardev socket,id=mon0,path=/tmp/m.sock,server=on,wait=off \
         -serial stdio -serial file:/tmp/com2 -serial chardev:mon0 -serial null",
    );
    assert_eq!(
        c.serials,
        vec![
            ChardevBackend::Stdio,
            ChardevBackend::File {
                path: "/tmp/com2".into(),
                append: false
            },
            ChardevBackend::UnixSocket {
                path: "/tmp/m.sock".into(),
                server: true,
                wait: false
            },
            ChardevBackend::Null,
        ]
    );
    assert_eq!(
        c.chardevs,
        vec![Chardev {
            id: "mon0".into(),
            backend: ChardevBackend::UnixSocket {
                path: "/tmp/m.sock".into(),
                server: true,
                wait: false
            }
        }]
    );
    // A chardev may be defined after the -serial that names it, as in QEMU.
    let c = run("-serial chardev:c -chardev null,id=c");
    assert_eq!(c.serials, vec![ChardevBackend::Null]);
    let c = run("-serial tcp:127.0.0.1:4444,server=on,wait=off");
    assert_eq!(
        c.serials,
        vec![ChardevBackend::TcpSocket {
            host: "127.0.0.1".into(),
            port: 4444,
            server: true,
            wait: false
        }]
    );
    let c = run("-serial unix:/tmp/s,server,nowait");
    assert_eq!(
        c.serials,
        vec![ChardevBackend::UnixSocket {
            path: "/tmp/s".into(),
            server: true,
            wait: false
        }]
    );
    // `none` uses up no COM number.
    assert_eq!(run("-serial none").serials, vec![]);
    assert_eq!(
        run("-serial none -serial null").serials,
        vec![ChardevBackend::Null]
    );
    assert_eq!(run("-nodefaults").serials, vec![]);
    assert_eq!(
        run("-nodefaults -serial stdio").serials,
        vec![ChardevBackend::Stdio]
    );
    assert_eq!(run("-daemonize").serials, vec![ChardevBackend::Null]);
    assert_eq!(
        run("-serial null -serial null -serial null -serial none -serial null")
            .serials
            .len(),
        4
    );
}

#[test]
fn devices_and_backends_resolve() {
    let c = run("-drive file=/tmp/a.img,if=none,id=d0 -device virtio-blk-pci,drive=d0,id=disk0 \
                 -blockdev driver=file,filename=/tmp/b.img,node-name=f1 -blockdev driver=raw,file=f1,node-name=r1 \
                 -device virtio-blk-pci,drive=r1 -drive file=/tmp/c.img \
                 -netdev tap,id=n0,ifname=kt0,script=no,downscript=no -device virtio-net-pci,netdev=n0 \
                 -chardev null,id=c0 -device virtio-serial-pci -device virtconsole,chardev=c0");
    assert_eq!(c.devices.len(), 6, "{:?}", c.devices);
    let files: Vec<&str> = c.drives.iter().map(|d| d.file.to_str().unwrap()).collect();
    assert_eq!(files, ["/tmp/a.img", "/tmp/b.img", "/tmp/c.img"]);
    assert!(matches!(&c.devices[5], DeviceSpec::VirtioBlk { drive, .. } if drive == "virtio1"));
    assert!(err("-device virtio-blk-pci,drive=nope").contains("can't find value 'nope'"));
    assert!(err("-drive file=/a,id=d -device virtio-blk-pci,drive=d")
        .contains("automatically connected"));
    assert!(err(
        "-drive file=/a,if=none,id=d -device virtio-blk-pci,drive=d -device virtio-blk-pci,drive=d"
    )
    .contains("already in use"));
    assert!(err("-device virtio-net-pci,netdev=n9").contains("n9"));
    assert!(err(
        "-netdev tap,id=n -device virtio-net-pci,netdev=n -device virtio-net-pci,netdev=n"
    )
    .contains("in use"));
    assert!(err("-chardev null,id=c -device virtconsole,chardev=c").contains("virtio-serial"));
    assert!(err("-device virtio-serial-pci -device virtconsole,chardev=zz").contains("zz"));
    assert!(err("-chardev null,id=c -serial chardev:c -device virtio-serial-pci -device virtconsole,chardev=c")
        .contains("already in use"));
    assert!(err("-drive file=/a,if=none,id=a -drive file=/b,if=none,id=b -device virtio-blk-pci,drive=a,addr=3 \
                 -device virtio-blk-pci,drive=b,addr=3").contains("in use"));
    assert!(err("-drive file=/a,id=x -drive file=/b,id=x").contains("already exists"));
    assert!(err("-netdev tap,id=n -netdev tap,id=n").contains("Duplicate"));
}

#[test]
fn qmp_monitors() {
    let c = run("-qmp unix:/tmp/q.sock,server=on,wait=off -qmp-pretty tcp:127.0.0.1:4444,server,nowait \
                 -chardev socket,id=m0,path=/tmp/m.sock,server=on,wait=off -mon chardev=m0,mode=control,pretty=on");
    assert_eq!(c.monitors.len(), 3);
    assert_eq!(
        c.monitors[0],
        MonitorSpec {
            backend: ChardevBackend::UnixSocket {
                path: "/tmp/q.sock".into(),
                server: true,
                wait: false
            },
            chardev: None,
            pretty: false
        }
    );
    assert_eq!(
        c.monitors[1].backend,
        ChardevBackend::TcpSocket {
            host: "127.0.0.1".into(),
            port: 4444,
            server: true,
            wait: false
        }
    );
    assert!(c.monitors[1].pretty);
    assert!(c.monitors[2].pretty);
    let c = run("-nodefaults -qmp stdio");
    assert_eq!(c.monitors[0].backend, ChardevBackend::Stdio);
    assert!(err("-mon chardev=nope").contains("chardev 'nope' not found"));
    assert!(err("-chardev null,id=x -mon x,mode=readline").contains("readline"));
    assert!(err("-chardev null,id=x -mon x,mode=bogus").contains("bogus"));
    assert!(err("-chardev null,id=x -serial chardev:x -mon x").contains("already in use"));
    assert!(
        err("-qmp stdio").contains("stdio"),
        "default serial and -qmp both on stdio"
    );
    assert!(err("-mon mode=control").contains("chardev"));
    assert!(err("-qmp none").contains("monitor"));
}

#[test]
fn flags() {
    let c = run(
        "-nographic -nodefaults -no-reboot -no-shutdown -S -no-user-config \
         --enable-kvm -pidfile /run/k.pid -display none",
    );
    assert!(c.nographic && c.nodefaults && c.no_reboot && c.no_shutdown);
    assert!(c.start_paused && c.display_none);
    assert!(run("-daemonize").daemonize);
    assert_eq!(c.pidfile, Some(PathBuf::from("/run/k.pid")));
    let c = run("-nographic");
    assert_eq!(c.serials, vec![ChardevBackend::Stdio]);
}

#[test]
fn actions_in_command_line_order() {
    use monitor::runstate::{PanicAction, RebootAction, ShutdownAction, WatchdogAction};
    assert_eq!(run("").actions, monitor::Actions::default());
    let c = run("-no-reboot -action panic=pause,watchdog=inject-nmi");
    assert_eq!(c.actions.reboot, RebootAction::Shutdown);
    assert_eq!(c.actions.shutdown, ShutdownAction::Poweroff);
    assert_eq!(c.actions.panic, PanicAction::Pause);
    assert_eq!(c.actions.watchdog, WatchdogAction::InjectNmi);
    let c = run("-action watchdog=pause -watchdog-action poweroff -no-shutdown");
    assert_eq!(c.actions.watchdog, WatchdogAction::Poweroff);
    assert_eq!(c.actions.shutdown, ShutdownAction::Pause);
    let c = run("-action reboot=shutdown,shutdown=pause");
    assert_eq!(c.actions.reboot, RebootAction::Shutdown);
    assert_eq!(c.actions.shutdown, ShutdownAction::Pause);
    assert_eq!(
        err("-action panic=bogus"),
        "-action panic=bogus: Parameter 'panic' does not accept value 'bogus'"
    );
    assert!(err("-watchdog-action explode").contains("'explode'"));
    assert!(err("-action frob=1").contains("frob"));
}

#[test]
fn rtc_options() {
    use super::super::{RtcBase, RtcClock, RtcOpts};
    assert_eq!(run("").rtc, RtcOpts::default());
    let c = run("-rtc base=localtime,clock=vm,driftfix=slew");
    assert_eq!(
        c.rtc,
        RtcOpts {
            base: RtcBase::Localtime,
            clock: RtcClock::Vm,
            slew: true
        }
    );
    assert_eq!(
        run("-rtc base=2006-06-17T16:01:21").rtc.base,
        RtcBase::Date(1_150_560_081)
    );
    assert_eq!(
        run("-rtc base=2006-06-17,clock=rt").rtc,
        RtcOpts {
            base: RtcBase::Date(1_150_502_400),
            clock: RtcClock::Rt,
            slew: false
        }
    );
    for bad in [
        "base=2006-02-30",
        "base=2006-13-01",
        "base=2006-06-17T25:00:00",
        "base=yesterday",
        "clock=wall",
        "driftfix=fast",
        "speed=2",
    ] {
        assert!(
            parse(args(&format!("-rtc {bad}"))).is_err(),
            "-rtc {bad} must be refused"
        );
    }
}

#[test]
fn name_and_uuid() {
    assert_eq!(run("-name vm1").name.as_deref(), Some("vm1"));
    let c = run("-name guest=vm,,1,debug-threads=on,process=kvm-vm1");
    assert_eq!(c.name.as_deref(), Some("vm,1"));
    assert!(c.debug_threads);
    assert_eq!(c.process_name.as_deref(), Some("kvm-vm1"));
    let c = run("-uuid 12345678-1234-5678-9abc-def012345678");
    assert_eq!(
        c.uuid,
        Some([
            0x12, 0x34, 0x56, 0x78, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34,
            0x56, 0x78
        ])
    );
}

#[test]
fn machine_accel_cpu() {
    assert_eq!(run("-machine kestrel").machine.kind, "kestrel");
    assert_eq!(run("-M type=kestrel,accel=kvm").machine.accel, Accel::Kvm);
    assert_eq!(run("-machine accel=kvm:tcg").machine.accel, Accel::Kvm);
    assert_eq!(run("-machine accel=kvm -M kestrel").machine.kind, "kestrel");
    assert_eq!(run("-accel kvm").machine.accel, Accel::Kvm);
    assert_eq!(
        run("-accel accel=kvm -enable-kvm").machine.accel,
        Accel::Kvm
    );
    for line in [
        "-M help",
        "-machine ?",
        "-cpu help",
        "-accel help",
        "-display help",
    ] {
        assert_eq!(parse(args(line)), Ok(Action::Help), "{line}");
    }
    let c = run("-cpu host,+vmx,-avx512f,x2apic=off,pdpe1gb=on,hypervisor");
    assert_eq!(c.cpu.model, CpuModel::Host);
    assert_eq!(
        c.cpu.flags,
        vec![
            ("vmx".to_string(), true),
            ("avx512f".to_string(), false),
            ("x2apic".to_string(), false),
            ("pdpe1gb".to_string(), true),
            ("hypervisor".to_string(), true),
        ]
    );
    assert_eq!(run("-cpu max").cpu.model, CpuModel::Max);
    assert_eq!(
        run("-cpu qemu64,-sse4.2").cpu.flags,
        vec![("sse4.2".to_string(), false)]
    );
    assert_eq!(run("-cpu model=host").cpu.model, CpuModel::Host);
}

#[test]
fn help_and_version() {
    assert_eq!(parse(args("-h")), Ok(Action::Help));
    assert_eq!(parse(args("--help")), Ok(Action::Help));
    assert_eq!(parse(args("-version")), Ok(Action::Version));
    assert_eq!(parse(args("--version -foo")), Ok(Action::Version));
    // Options before -h are still checked, as in QEMU.
    assert!(parse(args("-foo -h")).is_err());
    let help = help_text();
    for o in OPTIONS {
        assert!(help.contains(&format!("-{}", o.name)), "{}", o.name);
    }
    // One line per option plus the header.
    assert_eq!(help.lines().count(), OPTIONS.len() + 4);
    assert!(help.contains("-no-user-config"));
    assert!(super::super::version_text().starts_with("Kestrel version 0.1.0"));
}

#[test]
fn option_syntax_errors() {
    assert_eq!(err("-foo"), "-foo: invalid option");
    assert_eq!(err("--foo"), "--foo: invalid option");
    assert_eq!(err("-m=512"), "-m=512: invalid option");
    assert_eq!(err("---m 512"), "---m: invalid option");
    assert_eq!(err("-"), "-: invalid option");
    assert_eq!(err("-kernel"), "-kernel: requires an argument");
    assert_eq!(err("-m 1G -m"), "-m: requires an argument");
    assert!(err("disk.img").starts_with("disk.img: bare arguments"));
}

/// Every bad value names the option (as typed) and its argument.
#[test]
fn value_errors_name_the_option() {
    for (line, msg) in [
        ("-m foo", "-m foo: Parameter 'size' expects a non-negative number below 2^64, optional suffix k, M, G, T, P or E"),
        ("--m foo", "--m foo: Parameter 'size' expects"),
        ("-m 1Z", "-m 1Z: Parameter 'size' expects"),
        ("-m -5", "-m -5: Parameter 'size' expects"),
        ("-m 17179869184G", "-m 17179869184G: Parameter 'size' expects a size below 2^64 bytes"),
        ("-m 0", "-m 0: memory size must be greater than zero"),
        ("-m bar=1", "-m bar=1: Invalid parameter 'bar'"),
        ("-m 512,foo", "-m 512,foo: Invalid parameter 'foo'"),
        ("-m 512,size=1G", "-m 512,size=1G: Parameter 'size' is given more than once"),
        ("-m 512,slots=2,maxmem=1G", "-m 512,slots=2,maxmem=1G: memory hotplug"),
        ("-m slots=2", "-m slots=2: memory hotplug"),
        ("-m maxmem=x", "-m maxmem=x: Parameter 'maxmem' expects"),
        ("-smp foo", "-smp foo: Parameter 'cpus' expects"),
        ("-smp cpus=2,sockets=3", "-smp cpus=2,sockets=3: Invalid CPU topology: product of the hierarchy must match maxcpus"),
        ("-smp 4,maxcpus=8", "-smp 4,maxcpus=8: CPU hotplug is not supported"),
        ("-smp 4,foo=1", "-smp 4,foo=1: Invalid parameter 'foo'"),
        ("-smp 4,cpus=2", "-smp 4,cpus=2: Parameter 'cpus' is given more than once"),
        ("-serial bogus", "-serial bogus: 'bogus' is not a valid char driver"),
        ("-serial chardev:nope", "-serial chardev:nope: chardev 'nope' not found"),
        ("-serial tcp:h:99999", "-serial tcp:h:99999: port '99999' is not a number"),
        ("-serial unix:/s,wait=maybe", "-serial unix:/s,wait=maybe: Parameter 'wait' expects 'on' or 'off'"),
        ("-serial null -serial null -serial null -serial null -serial stdio", "-serial stdio: too many serial ports"),
        ("-chardev null,id=c -serial chardev:c -serial chardev:c", "-serial chardev:c: chardev 'c' is already in use"),
        ("-chardev stdio", "-chardev stdio: chardev: no id specified"),
        ("-chardev foo,id=x", "-chardev foo,id=x: 'foo' is not a valid char driver name"),
        ("-chardev stdio,id=x,bogus=1", "-chardev stdio,id=x,bogus=1: Invalid parameter 'bogus'"),
        ("-chardev socket,id=x,path=/a,server=maybe", "-chardev socket,id=x,path=/a,server=maybe: Parameter 'server' expects 'on' or 'off'"),
        ("-chardev stdio,id=x -chardev null,id=x", "-chardev null,id=x: Duplicate ID 'x' for chardev"),
        ("-display gtk", "-display gtk: display 'gtk' is not supported"),
        ("-display foo", "-display foo: Parameter 'type' does not accept value 'foo'"),
        ("-display none,foo=1", "-display none,foo=1: Invalid parameter 'foo'"),
        ("-uuid xyz", "-uuid xyz: failed to parse UUID string: wrong format"),
        ("-name guest=x,foo=1", "-name guest=x,foo=1: Invalid parameter 'foo'"),
        ("-name x,debug-threads=2", "-name x,debug-threads=2: Parameter 'debug-threads' expects 'on' or 'off'"),
        ("-machine pc", "-machine pc: unsupported machine type 'pc'"),
        ("-M kestrel,foo=1", "-M kestrel,foo=1: Invalid parameter 'foo'"),
        ("-machine accel=tcg", "-machine accel=tcg: accelerator 'tcg' is not supported by Kestrel"),
        ("-machine accel=kvm:foo", "-machine accel=kvm:foo: invalid accelerator foo"),
        ("-accel foo", "-accel foo: invalid accelerator foo"),
        ("-accel tcg", "-accel tcg: accelerator 'tcg' is not supported by Kestrel"),
        ("-accel kvm,foo=1", "-accel kvm,foo=1: Invalid parameter 'foo'"),
        ("-cpu foo", "-cpu foo: unable to find CPU model 'foo'"),
        ("-cpu host,fpu=maybe", "-cpu host,fpu=maybe: Parameter 'fpu' expects 'on' or 'off'"),
        ("-cpu host,+fpu=on", "-cpu host,+fpu=on: '+fpu' takes no value"),
        ("-cpu host,+fpu,-fpu", "-cpu host,+fpu,-fpu: CPU flag 'fpu' is given more than once"),
        ("-cpu host,+", "-cpu host,+: Invalid parameter '+'"),
        ("-cpu host,a/b", "-cpu host,a/b: Invalid parameter 'a/b'"),
        ("-cpu fpu=on", "-cpu fpu=on: Parameter 'model' is missing"),
        ("-cpu host,model=max", "-cpu host,model=max: Parameter 'model' is given more than once"),
    ] {
        let e = err(line);
        assert!(e.starts_with(msg), "{line}: got {e:?}, want {msg:?}");
        assert!(!e.contains('\n'), "{line}: multi-line {e:?}");
    }
    assert_eq!(
        parse(vec!["-kernel".to_string(), String::new()]).map_err(|e| e.to_string()),
        Err("-kernel : no file name given".to_string())
    );
}

#[test]
fn cross_option_errors() {
    assert_eq!(
        err("-daemonize -nographic"),
        "-nographic cannot be used with -daemonize"
    );
    assert_eq!(
        err("-daemonize -serial stdio"),
        "-serial stdio: cannot use stdio with -daemonize"
    );
    assert_eq!(
        err("-chardev stdio,id=x -daemonize"),
        "-chardev stdio,id=x: cannot use stdio with -daemonize"
    );
    assert_eq!(
        err("-accel kvm -machine accel=kvm"),
        "The -accel and \"-machine accel=\" options are incompatible"
    );
    assert_eq!(
        err("-enable-kvm -M accel=kvm"),
        "The -accel and \"-machine accel=\" options are incompatible"
    );
}

#[test]
fn never_panics() {
    let words = [
        "-m",
        "-smp",
        "-serial",
        "-chardev",
        "-cpu",
        "-machine",
        "-name",
        "-uuid",
        "-display",
        "-accel",
        ",",
        ",,",
        "=",
        "",
        "a=b",
        "+",
        "-",
        "--",
        "help",
        "0",
        "1G",
        "socket",
        "tcp:",
        "unix:",
        "é",
        "\u{0}",
        "id=x",
        "kvm",
        "host,+a",
        "chardev:x",
        "null,id=x",
        "18446744073709551616",
        "-h",
    ];
    // Every ordered pair and triple of the words above.
    for a in words {
        for b in words {
            let _ = parse(vec![a.to_string(), b.to_string()]);
            for c in words {
                let _ = parse(vec![a.to_string(), b.to_string(), c.to_string()]);
            }
        }
    }
}

#[test]
fn memory_backends_name_guest_ram() {
    let c = run("-object memory-backend-ram,id=mem0,size=256M -machine memory-backend=mem0");
    assert_eq!(c.mem_size, 256 << 20, "RAM takes the backend's size");
    assert_eq!(c.memory_backend.as_deref(), Some("mem0"));
    assert_eq!(c.memory_backends.len(), 1);
    let c = run("-m 256 -object memory-backend-memfd,id=m,size=256M -M kestrel,memory-backend=m");
    assert_eq!(c.mem_size, 256 << 20);
    // A backend nobody uses is created all the same (QEMU lists it in query-memdev).
    let c = run("-m 64 -object memory-backend-ram,id=spare,size=16M");
    assert_eq!((c.mem_size, c.memory_backend), (64 << 20, None));
    assert_eq!(
        err("-m 128 -object memory-backend-ram,id=mem0,size=64M -machine memory-backend=mem0"),
        "Machine memory size does not match the size of the memory backend"
    );
    assert_eq!(
        err("-object memory-backend-ram,id=mem0,size=64M -machine memory-backend=nope"),
        "Memory backend 'nope' not found"
    );
    assert_eq!(
        err("-object memory-backend-ram,id=a,size=64M -object memory-backend-ram,id=a,size=64M"),
        "-object memory-backend-ram,id=a,size=64M: Duplicate ID 'a' for object"
    );
    assert_eq!(
        err("-object memory-backend-foo,id=x,size=64M"),
        "-object memory-backend-foo,id=x,size=64M: Parameter 'qom-type' does not accept value 'memory-backend-foo'"
    );
}
