//! The option table: one [`OptSpec`](super::OptSpec) per option, in help-text order. It
//! drives both the argument loop (name, aliases, whether an argument follows, handler)
//! and the help text. Options whose handling is a line or two are handled inline here;
//! the others name a handler in `machine`, `consoles` or `runtime`.

use super::consoles::{opt_chardev, opt_mon, opt_qmp, opt_serial};
use super::machine::{
    opt_accel, opt_cpu, opt_display, opt_enable_kvm, opt_m, opt_machine, opt_name, opt_object,
    opt_smp, opt_uuid,
};
use super::runtime::{opt_action, opt_rtc};
use super::{non_empty_path, Flow, OptSpec};
use crate::cmdline::devices::{parse_blockdev, parse_device, parse_drive, parse_netdev, BlockNode};
use crate::cmdline::Action;

/// Every option, in help-text order.
pub(super) static OPTIONS: &[OptSpec] = &[
    OptSpec {
        name: "h",
        aliases: &["help"],
        arg: None,
        help: "display this help and exit",
        handler: |_, _| Ok(Flow::Stop(Action::Help)),
    },
    OptSpec {
        name: "version",
        aliases: &[],
        arg: None,
        help: "display version information and exit",
        handler: |_, _| Ok(Flow::Stop(Action::Version)),
    },
    OptSpec {
        name: "machine",
        aliases: &["M"],
        arg: Some("[type=]kestrel[,accel=kvm][,memory-backend=ID]"),
        help: "select the machine: 'kestrel' (the default and only one)",
        handler: opt_machine,
    },
    OptSpec {
        name: "cpu",
        aliases: &[],
        arg: Some("host|max|qemu64[,+flag|-flag|flag=on|off...]"),
        help: "select the CPU model (default qemu64) and CPUID feature flags",
        handler: opt_cpu,
    },
    OptSpec {
        name: "accel",
        aliases: &[],
        arg: Some("[accel=]kvm"),
        help: "select the accelerator: kvm (the default and only one)",
        handler: opt_accel,
    },
    OptSpec {
        name: "enable-kvm",
        aliases: &[],
        arg: None,
        help: "use KVM (same as -accel kvm; always the case)",
        handler: opt_enable_kvm,
    },
    OptSpec {
        name: "smp",
        aliases: &[],
        arg: Some("[cpus=]n[,maxcpus=n][,sockets=n][,cores=n][,threads=n][,dies=1][,clusters=1]"),
        help: "set the number of vCPUs (default 1) and their topology",
        handler: opt_smp,
    },
    OptSpec {
        name: "m",
        aliases: &[],
        arg: Some("[size=]megs[k|M|G|T]"),
        help: "set the guest RAM size (default 128M; a bare number is MiB)",
        handler: opt_m,
    },
    OptSpec {
        name: "object",
        aliases: &[],
        arg: Some("memory-backend-ram|file|memfd,id=ID,size=SIZE[,mem-path=PATH][,share=on|off][,prealloc=on|off]"),
        help: "create a memory backend for -machine memory-backend=ID",
        handler: opt_object,
    },
    OptSpec {
        name: "name",
        aliases: &[],
        arg: Some("[guest=]name[,process=name][,debug-threads=on|off]"),
        help: "set the guest name (and the process name, thread naming)",
        handler: opt_name,
    },
    OptSpec {
        name: "uuid",
        aliases: &[],
        arg: Some("%08x-%04x-%04x-%04x-%012x"),
        help: "set the system UUID",
        handler: opt_uuid,
    },
    OptSpec {
        name: "nographic",
        aliases: &[],
        arg: None,
        help: "no graphical output (Kestrel never has any); the default serial port is on stdio",
        handler: |b, _| {
            b.cfg.nographic = true;
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "display",
        aliases: &[],
        arg: Some("none"),
        help: "select the display: none (the only one)",
        handler: opt_display,
    },
    OptSpec {
        name: "nodefaults",
        aliases: &[],
        arg: None,
        help: "create no default devices (no default serial port)",
        handler: |b, _| {
            b.cfg.nodefaults = true;
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "no-user-config",
        aliases: &[],
        arg: None,
        help: "accepted and ignored: Kestrel reads no configuration files",
        handler: |_, _| Ok(Flow::Continue),
    },
    OptSpec {
        name: "kernel",
        aliases: &[],
        arg: Some("bzImage"),
        help: "boot this Linux kernel image",
        handler: |b, o| {
            b.cfg.kernel = Some(non_empty_path(o)?);
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "append",
        aliases: &[],
        arg: Some("cmdline"),
        help: "use 'cmdline' as the kernel command line",
        handler: |b, o| {
            b.cfg.append = o.arg().to_string();
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "initrd",
        aliases: &[],
        arg: Some("file"),
        help: "use 'file' as the initial RAM disk",
        handler: |b, o| {
            b.cfg.initrd = Some(non_empty_path(o)?);
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "serial",
        aliases: &[],
        arg: Some("dev"),
        help: "connect the next serial port (COM1..COM4) to dev: stdio, file:PATH, \
               unix:PATH[,server=on][,wait=off], tcp:HOST:PORT[,server=on][,wait=off], null, \
               none, chardev:ID",
        handler: opt_serial,
    },
    OptSpec {
        name: "chardev",
        aliases: &[],
        arg: Some("backend,id=id[,...]"),
        help: "define a character device: stdio | file,path=PATH[,append=on] | \
               socket,path=PATH|host=HOST,port=PORT[,server=on][,wait=off] | null",
        handler: opt_chardev,
    },
    OptSpec {
        name: "qmp",
        aliases: &[],
        arg: Some("dev"),
        help: "a QMP monitor on dev (as -serial: unix:PATH,server=on,wait=off, tcp:HOST:PORT,..., stdio, chardev:ID)",
        handler: |b, o| opt_qmp(b, o, false),
    },
    OptSpec {
        name: "qmp-pretty",
        aliases: &[],
        arg: Some("dev"),
        help: "like -qmp, with pretty-printed responses",
        handler: |b, o| opt_qmp(b, o, true),
    },
    OptSpec {
        name: "mon",
        aliases: &[],
        arg: Some("[chardev=]id[,mode=control][,pretty=on|off]"),
        help: "a monitor on chardev id; Kestrel's monitors are QMP (mode=control)",
        handler: opt_mon,
    },
    OptSpec {
        name: "device",
        aliases: &[],
        arg: Some("driver[,prop=value...]"),
        help: "add a device: virtio-blk-pci,drive=ID[,serial=,num-queues=] | virtio-net-pci,netdev=ID[,mac=] | \
               virtio-serial-pci | virtconsole,chardev=ID | virtserialport,chardev=ID,name=NAME | \
               pvpanic[,ioport=0x505]; \
               all take id= and PCI ones addr=SLOT[.FN]",
        handler: |b, o| {
            b.devices.push((o.clone(), parse_device(o.arg())?));
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "drive",
        aliases: &[],
        arg: Some("[file=]path[,format=raw][,if=virtio|none][,id=][,cache=][,aio=][,readonly=on][,discard=unmap][,serial=][,werror=][,rerror=]"),
        help: "a raw disk image; if=virtio (the default) also adds a virtio-blk-pci device for it",
        handler: |b, o| {
            let d = parse_drive(o.arg(), b.cfg.drives.len())?;
            if b.cfg.drives.iter().any(|x| x.id == d.id) {
                return Err(format!("drive with id '{}' already exists", d.id));
            }
            b.cfg.drives.push(d);
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "blockdev",
        aliases: &[],
        arg: Some("driver=file,filename=P,node-name=N[,...] | driver=raw,file=N,node-name=M"),
        help: "a block graph node: a file, or a raw format node over one",
        handler: |b, o| {
            let n = parse_blockdev(o.arg())?;
            let name = match &n {
                BlockNode::File { node_name, .. } | BlockNode::Raw { node_name, .. } => node_name.clone(),
            };
            if b.blockdevs.iter().any(|x| match x {
                BlockNode::File { node_name, .. } | BlockNode::Raw { node_name, .. } => *node_name == name,
            }) {
                return Err(format!("Duplicate nodes with node-name='{name}'"));
            }
            b.blockdevs.push(n);
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "netdev",
        aliases: &[],
        arg: Some("tap,id=ID[,ifname=NAME][,script=no][,downscript=no][,vhost=off]"),
        help: "a network backend: a tap device",
        handler: |b, o| {
            let n = parse_netdev(o.arg())?;
            if b.cfg.netdevs.iter().any(|x| x.id == n.id) {
                return Err(format!("Duplicate ID '{}' for netdev", n.id));
            }
            b.cfg.netdevs.push(n);
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "S",
        aliases: &[],
        arg: None,
        help: "do not start the vCPUs at startup (QMP `cont` starts them)",
        handler: |b, _| {
            b.cfg.start_paused = true;
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "incoming",
        aliases: &[],
        arg: Some("tcp:HOST:PORT|unix:PATH|fd:NAME|exec:CMD|file:PATH[,offset=N]|defer"),
        help: "wait for an incoming migration (defer: wait for QMP migrate-incoming)",
        handler: |b, o| {
            let v = o.arg();
            b.cfg.incoming = Some(if v == "defer" {
                crate::cmdline::Incoming::Defer
            } else {
                migration::transport::parse(v).map_err(|e| e.to_string())?;
                crate::cmdline::Incoming::Uri(v.to_string())
            });
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "no-reboot",
        aliases: &[],
        arg: None,
        help: "exit instead of rebooting",
        handler: |b, _| {
            b.cfg.no_reboot = true;
            b.cfg.actions.reboot = monitor::runstate::RebootAction::Shutdown;
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "no-shutdown",
        aliases: &[],
        arg: None,
        help: "stop the machine instead of exiting when the guest shuts down",
        handler: |b, _| {
            b.cfg.no_shutdown = true;
            b.cfg.actions.shutdown = monitor::runstate::ShutdownAction::Pause;
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "action",
        aliases: &[],
        arg: Some("reboot=reset|shutdown,shutdown=poweroff|pause,panic=pause|shutdown|exit-failure|none,watchdog=ACTION"),
        help: "what the machine does on a guest reboot, shutdown, panic or watchdog expiry",
        handler: opt_action,
    },
    OptSpec {
        name: "watchdog-action",
        aliases: &[],
        arg: Some("reset|shutdown|poweroff|pause|debug|none|inject-nmi"),
        help: "what an expired watchdog does (default reset)",
        handler: |b, o| {
            b.cfg.actions.watchdog =
                enum_value!(monitor::runstate::WatchdogAction, "watchdog-action", o.arg())?;
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "rtc",
        aliases: &[],
        arg: Some("[base=utc|localtime|date][,clock=host|rt|vm][,driftfix=none|slew]"),
        help: "the guest's real-time clock: where it starts, what it runs on",
        handler: opt_rtc,
    },
    OptSpec {
        name: "daemonize",
        aliases: &[],
        arg: None,
        help: "detach from the terminal once the machine is set up (stdio cannot be used)",
        handler: |b, _| {
            b.cfg.daemonize = true;
            Ok(Flow::Continue)
        },
    },
    OptSpec {
        name: "pidfile",
        aliases: &[],
        arg: Some("file"),
        help: "write the process id to 'file'",
        handler: |b, o| {
            b.cfg.pidfile = Some(non_empty_path(o)?);
            Ok(Flow::Continue)
        },
    },
];
