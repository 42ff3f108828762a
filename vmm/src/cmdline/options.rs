//! The option table and the argument loop. One [`OptSpec`] per option drives parsing and the
//! help text; an option with a `key=value` argument reads it with `keyvalue::from_str` into
//! its own `#[serde(deny_unknown_fields)]` struct, defined next to its handler.

use std::path::PathBuf;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Unexpected, Visitor};

use super::chardev::{parse_chardev, parse_serial, SerialSpec};
use super::devices::{
    parse_blockdev, parse_device, parse_drive, parse_netdev, resolve_node, BlockNode, DeviceSpec,
};
use super::keyvalue::{self, parse_bool};
use super::smp::parse_smp;
use super::values::{parse_uuid, MegSize, Size};
use super::{
    Action, ChardevBackend, CmdlineError, Config, CpuModel, MonitorSpec, MACHINE_TYPE,
    MAX_SERIAL_PORTS,
};

/// A `set-action` enum value from its wire name, with QEMU's error.
macro_rules! enum_value {
    ($ty:ty, $name:expr, $v:expr) => {
        <$ty>::from_wire($v)
            .ok_or_else(|| format!("Parameter '{}' does not accept value '{}'", $name, $v))
    };
}

/// An option as the user typed it (`-m` or `--m`) and its argument, kept for error messages.
#[derive(Clone)]
pub(super) struct Origin {
    option: String,
    arg: Option<String>,
}

impl Origin {
    fn arg(&self) -> &str {
        self.arg.as_deref().unwrap_or("")
    }

    fn error(&self, message: impl Into<String>) -> CmdlineError {
        CmdlineError::Invalid {
            option: self.option.clone(),
            arg: self.arg.clone(),
            message: message.into(),
        }
    }
}

/// What the argument loop does after an option.
pub(super) enum Flow {
    Continue,
    Stop(Action),
}

/// Handles one occurrence of an option; the error is the problem, without the option name.
type Handler = fn(&mut Builder, &Origin) -> Result<Flow, String>;

/// One command-line option.
pub(super) struct OptSpec {
    /// Without the leading `-`.
    name: &'static str,
    aliases: &'static [&'static str],
    /// The argument's synopsis for the help text; `Some` means the option takes one.
    arg: Option<&'static str>,
    help: &'static str,
    handler: Handler,
}

/// Every option, in help-text order.
static OPTIONS: &[OptSpec] = &[
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
        arg: Some("[type=]kestrel[,accel=kvm]"),
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

fn lookup(name: &str) -> Option<&'static OptSpec> {
    OPTIONS
        .iter()
        .find(|o| o.name == name || o.aliases.contains(&name))
}

fn is_help(s: &str) -> bool {
    s == "help" || s == "?"
}

fn non_empty_path(o: &Origin) -> Result<PathBuf, String> {
    if o.arg().is_empty() {
        return Err("no file name given".into());
    }
    Ok(PathBuf::from(o.arg()))
}

/// The configuration being built, and what must wait for the whole command line.
#[derive(Default)]
pub(super) struct Builder {
    cfg: Config,
    serials: Vec<(Origin, SerialSpec)>,
    /// Where each of `cfg.chardevs` came from, in the same order.
    chardev_origins: Vec<Origin>,
    /// The `-accel` / `-enable-kvm` that chose the accelerator.
    accel_option: Option<Origin>,
    /// Whether `-machine accel=` was given.
    machine_accel: bool,
    /// `-qmp`/`-mon`, resolved against the chardevs at the end.
    monitors: Vec<(Origin, SerialSpec, bool)>,
    /// `-device`s, resolved against drives, netdevs and chardevs at the end.
    devices: Vec<(Origin, DeviceSpec)>,
    blockdevs: Vec<BlockNode>,
}

impl Builder {
    fn finish(self) -> Result<Config, CmdlineError> {
        let Builder {
            mut cfg,
            serials,
            chardev_origins,
            accel_option,
            machine_accel,
            monitors,
            devices,
            blockdevs,
        } = self;
        if cfg.daemonize && cfg.nographic {
            return Err(CmdlineError::Conflict(
                "-nographic cannot be used with -daemonize".into(),
            ));
        }
        if accel_option.is_some() && machine_accel {
            return Err(CmdlineError::Conflict(
                "The -accel and \"-machine accel=\" options are incompatible".into(),
            ));
        }
        if cfg.daemonize {
            for (chardev, origin) in cfg.chardevs.iter().zip(&chardev_origins) {
                if chardev.backend == ChardevBackend::Stdio {
                    return Err(origin.error("cannot use stdio with -daemonize"));
                }
            }
        }
        let mut used: Vec<&str> = Vec::new();
        let chardev_id = |spec: &SerialSpec| match spec {
            SerialSpec::Chardev(id) => Some(id.clone()),
            _ => None,
        };
        for (origin, spec) in &serials {
            if let Some(backend) = chardev_for(&cfg, origin, spec, &mut used)? {
                cfg.serials.push(backend);
                cfg.serial_chardevs.push(chardev_id(spec));
            }
        }
        for (origin, spec, pretty) in &monitors {
            if let Some(backend) = chardev_for(&cfg, origin, spec, &mut used)? {
                cfg.monitors.push(MonitorSpec {
                    backend,
                    chardev: chardev_id(spec),
                    pretty: *pretty,
                });
            }
        }
        if serials.is_empty() && !cfg.nodefaults {
            // QEMU's default is a `vc` console; Kestrel has none, so stdio (null once
            // daemonized, as a `vc` nobody displays would be).
            cfg.serials.push(if cfg.daemonize {
                ChardevBackend::Null
            } else {
                ChardevBackend::Stdio
            });
            cfg.serial_chardevs.push(None);
        }
        resolve_devices(&mut cfg, devices, &blockdevs, &used)?;
        // One terminal cannot carry two byte streams (QEMU would need mon:stdio muxing).
        let stdio_users = cfg
            .serials
            .iter()
            .chain(cfg.monitors.iter().map(|m| &m.backend))
            .filter(|b| **b == ChardevBackend::Stdio)
            .count();
        if stdio_users > 1 {
            return Err(CmdlineError::Conflict(
                "cannot use stdio by multiple character devices (give -serial none or -nodefaults with -qmp stdio)".into(),
            ));
        }
        Ok(cfg)
    }
}

/// The backend a `-serial`/`-qmp`/`-mon` names: its own, or a `-chardev`'s by id (each
/// chardev used once, recorded in `used`); `None` for `-serial none`.
fn chardev_for<'a>(
    cfg: &Config,
    origin: &Origin,
    spec: &'a SerialSpec,
    used: &mut Vec<&'a str>,
) -> Result<Option<ChardevBackend>, CmdlineError> {
    let backend = match spec {
        SerialSpec::None => return Ok(None),
        SerialSpec::Backend(b) => b.clone(),
        SerialSpec::Chardev(id) => {
            let chardev = cfg
                .chardevs
                .iter()
                .find(|c| c.id == *id)
                .ok_or_else(|| origin.error(format!("chardev '{id}' not found")))?;
            if used.contains(&id.as_str()) {
                return Err(origin.error(format!("chardev '{id}' is already in use")));
            }
            used.push(id);
            chardev.backend.clone()
        }
    };
    if cfg.daemonize && backend == ChardevBackend::Stdio {
        return Err(origin.error("cannot use stdio with -daemonize"));
    }
    Ok(Some(backend))
}

/// Parses the arguments (without `argv[0]`).
pub(super) fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Action, CmdlineError> {
    let mut b = Builder::default();
    let mut args = args.into_iter();
    while let Some(word) = args.next() {
        let Some(name) = word.strip_prefix('-') else {
            return Err(CmdlineError::Positional(word));
        };
        // `--opt` is `-opt`; `-opt=value` is no option at all, as in QEMU.
        let name = name.strip_prefix('-').unwrap_or(name);
        let Some(spec) = lookup(name) else {
            return Err(CmdlineError::UnknownOption(word));
        };
        let arg = match spec.arg {
            Some(_) => match args.next() {
                Some(a) => Some(a),
                None => return Err(CmdlineError::MissingArgument(word)),
            },
            None => None,
        };
        let origin = Origin { option: word, arg };
        match (spec.handler)(&mut b, &origin).map_err(|m| origin.error(m))? {
            Flow::Continue => {}
            Flow::Stop(action) => return Ok(action),
        }
    }
    b.finish().map(|cfg| Action::Run(Box::new(cfg)))
}

/// Column where help lines start their description.
const HELP_COLUMN: usize = 32;

pub(super) fn help_text() -> String {
    let mut out = String::from(
        "usage: kestrel [options]\n\
         Kestrel: a KVM virtual machine monitor with a QEMU-compatible command line and QMP.\n\
         Options may be spelled -opt or --opt.\n\n",
    );
    for o in OPTIONS {
        let mut synopsis = format!("-{}", o.name);
        for a in o.aliases {
            synopsis.push_str(&format!(", -{a}"));
        }
        if let Some(arg) = o.arg {
            synopsis.push(' ');
            synopsis.push_str(arg);
        }
        out.push_str(&format!("{synopsis:<HELP_COLUMN$} {}\n", o.help));
    }
    out
}

fn kv_err(e: keyvalue::KvError) -> String {
    e.to_string()
}

// ---- -m ----

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MemOpts {
    size: Option<MegSize>,
    slots: Option<u64>,
    maxmem: Option<Size>,
}

fn opt_m(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let m: MemOpts = keyvalue::from_str(o.arg(), Some("size")).map_err(kv_err)?;
    if m.slots.is_some() || m.maxmem.is_some() {
        return Err("memory hotplug ('slots', 'maxmem') is not supported".into());
    }
    let size = m.size.ok_or("Parameter 'size' is missing")?.0;
    if size == 0 {
        return Err("memory size must be greater than zero".into());
    }
    // QEMU rounds up to 8 KiB.
    b.cfg.mem_size = size
        .checked_next_multiple_of(8192)
        .ok_or("ram size too large")?;
    Ok(Flow::Continue)
}

// ---- -smp ----

fn opt_smp(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    b.cfg.smp = parse_smp(o.arg())?;
    Ok(Flow::Continue)
}

// ---- -name ----

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NameOpts {
    guest: Option<String>,
    process: Option<String>,
    #[serde(rename = "debug-threads")]
    debug_threads: Option<bool>,
}

fn opt_name(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let n: NameOpts = keyvalue::from_str(o.arg(), Some("guest")).map_err(kv_err)?;
    b.cfg.name = n.guest;
    b.cfg.process_name = n.process;
    b.cfg.debug_threads = n.debug_threads.unwrap_or(false);
    Ok(Flow::Continue)
}

// ---- -uuid ----

fn opt_uuid(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let uuid = parse_uuid(o.arg()).ok_or("failed to parse UUID string: wrong format")?;
    b.cfg.uuid = Some(uuid);
    Ok(Flow::Continue)
}

// ---- -machine, -accel, -enable-kvm ----

/// Accelerators QEMU has: refused as unsupported rather than unknown.
const QEMU_ACCELS: &[&str] = &["tcg", "xen", "hax", "hvf", "nvmm", "whpx", "qtest"];

/// Checks one accelerator name; `Ok(true)` for kvm.
fn check_accel(name: &str) -> Result<bool, String> {
    if name == "kvm" {
        Ok(true)
    } else if QEMU_ACCELS.contains(&name) {
        Err(format!(
            "accelerator '{name}' is not supported by Kestrel (only kvm)"
        ))
    } else {
        Err(format!("invalid accelerator {name}"))
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineOpts {
    #[serde(rename = "type")]
    kind: Option<String>,
    accel: Option<String>,
}

fn opt_machine(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let m: MachineOpts = keyvalue::from_str(o.arg(), Some("type")).map_err(kv_err)?;
    if let Some(kind) = &m.kind {
        if is_help(kind) {
            return Ok(Flow::Stop(Action::Help));
        }
        if kind != MACHINE_TYPE {
            return Err(format!(
                "unsupported machine type '{kind}' (Kestrel has only '{MACHINE_TYPE}'); \
                 use -machine help to list supported machines"
            ));
        }
    }
    if let Some(list) = &m.accel {
        // `accel=kvm:tcg` is a preference list; KVM, always available here, wins, so the
        // others are only checked for being real accelerator names.
        let mut kvm = false;
        let mut first_err = None;
        for name in list.split(':') {
            match check_accel(name) {
                Ok(k) => kvm |= k,
                Err(e) if QEMU_ACCELS.contains(&name) => {
                    first_err.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        if !kvm {
            return Err(first_err.unwrap_or_else(|| "no accelerator given".into()));
        }
        b.machine_accel = true;
    }
    Ok(Flow::Continue)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccelOpts {
    accel: String,
}

fn opt_accel(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let a: AccelOpts = keyvalue::from_str(o.arg(), Some("accel")).map_err(kv_err)?;
    if is_help(&a.accel) {
        return Ok(Flow::Stop(Action::Help));
    }
    check_accel(&a.accel)?;
    b.accel_option = Some(Origin {
        option: o.option.clone(),
        arg: o.arg.clone(),
    });
    Ok(Flow::Continue)
}

fn opt_enable_kvm(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    b.accel_option = Some(Origin {
        option: o.option.clone(),
        arg: None,
    });
    Ok(Flow::Continue)
}

// ---- -cpu ----

/// `-cpu`'s value: the implied model, then flags whose names are open-ended, so a map
/// rather than a struct (no field list for `deny_unknown_fields` to check).
#[derive(Debug)]
struct CpuOpts {
    model: Option<String>,
    flags: Vec<(String, bool)>,
}

/// A flag's value: absent (`+fpu`, `-fpu`, `fpu`) or on/off (`fpu=on`).
enum FlagValue {
    Bare,
    Set(bool),
}

impl<'de> Deserialize<'de> for FlagValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = FlagValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("'on' or 'off'")
            }
            fn visit_unit<E: de::Error>(self) -> Result<FlagValue, E> {
                Ok(FlagValue::Bare)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FlagValue, E> {
                parse_bool(v)
                    .map(FlagValue::Set)
                    .ok_or_else(|| E::invalid_value(Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

fn is_flag_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl<'de> Deserialize<'de> for CpuOpts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CpuOpts;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("MODEL[,+flag|-flag|flag=on|off...]")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CpuOpts, A::Error> {
                let mut opts = CpuOpts {
                    model: None,
                    flags: Vec::new(),
                };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "model" {
                        opts.model = Some(map.next_value()?);
                        continue;
                    }
                    let (name, sign) = match (key.strip_prefix('+'), key.strip_prefix('-')) {
                        (Some(n), _) => (n, Some(true)),
                        (_, Some(n)) => (n, Some(false)),
                        _ => (key.as_str(), None),
                    };
                    if !is_flag_name(name) {
                        return Err(de::Error::custom(format!("Invalid parameter '{key}'")));
                    }
                    let on = match (sign, map.next_value::<FlagValue>()?) {
                        (Some(s), FlagValue::Bare) => s,
                        (Some(_), FlagValue::Set(_)) => {
                            return Err(de::Error::custom(format!(
                                "'{key}' takes no value (use {name}=on|off instead)"
                            )))
                        }
                        (None, FlagValue::Bare) => true,
                        (None, FlagValue::Set(v)) => v,
                    };
                    if opts.flags.iter().any(|(n, _)| n == name) {
                        return Err(de::Error::custom(format!(
                            "CPU flag '{name}' is given more than once"
                        )));
                    }
                    opts.flags.push((name.to_string(), on));
                }
                Ok(opts)
            }
        }
        d.deserialize_map(V)
    }
}

fn opt_cpu(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let c: CpuOpts = keyvalue::from_str(o.arg(), Some("model")).map_err(kv_err)?;
    let model = c.model.ok_or("Parameter 'model' is missing")?;
    b.cfg.cpu.model = match model.as_str() {
        m if is_help(m) => return Ok(Flow::Stop(Action::Help)),
        "host" => CpuModel::Host,
        "max" => CpuModel::Max,
        "qemu64" => CpuModel::Qemu64,
        _ => return Err(format!("unable to find CPU model '{model}'")),
    };
    b.cfg.cpu.flags = c.flags;
    Ok(Flow::Continue)
}

// ---- -display ----

/// QEMU displays Kestrel does not have: refused as unsupported rather than unknown.
const QEMU_DISPLAYS: &[&str] = &[
    "gtk",
    "sdl",
    "vnc",
    "curses",
    "egl-headless",
    "spice-app",
    "dbus",
    "cocoa",
    "default",
];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DisplayOpts {
    #[serde(rename = "type")]
    kind: String,
}

fn opt_display(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let d: DisplayOpts = keyvalue::from_str(o.arg(), Some("type")).map_err(kv_err)?;
    match d.kind.as_str() {
        "none" => b.cfg.display_none = true,
        k if is_help(k) => return Ok(Flow::Stop(Action::Help)),
        k if QEMU_DISPLAYS.contains(&k) => {
            return Err(format!(
                "display '{k}' is not supported: Kestrel has no graphical console \
                 (use -display none or -nographic)"
            ))
        }
        k => return Err(format!("Parameter 'type' does not accept value '{k}'")),
    }
    Ok(Flow::Continue)
}

// ---- -serial, -chardev ----

fn opt_serial(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let spec = parse_serial(o.arg())?;
    let ports = b
        .serials
        .iter()
        .filter(|(_, s)| *s != SerialSpec::None)
        .count();
    if spec != SerialSpec::None && ports >= MAX_SERIAL_PORTS {
        return Err(format!(
            "too many serial ports (Kestrel has {MAX_SERIAL_PORTS}: COM1 to COM{MAX_SERIAL_PORTS})"
        ));
    }
    b.serials.push((o.clone(), spec));
    Ok(Flow::Continue)
}

fn opt_chardev(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let chardev = parse_chardev(o.arg())?;
    if b.cfg.chardevs.iter().any(|c| c.id == chardev.id) {
        return Err(format!("Duplicate ID '{}' for chardev", chardev.id));
    }
    b.cfg.chardevs.push(chardev);
    b.chardev_origins.push(o.clone());
    Ok(Flow::Continue)
}

// ---- -device, -drive, -blockdev, -netdev ----

/// Checks every reference between devices and backends, adds QEMU's implicit
/// virtio-blk-pci for `-drive if=virtio`, keeps only the drives devices use, and makes
/// sure each backend and PCI address is used once.
fn resolve_devices(
    cfg: &mut Config,
    devices: Vec<(Origin, DeviceSpec)>,
    blockdevs: &[BlockNode],
    used_chardevs: &[&str],
) -> Result<(), CmdlineError> {
    let mut drives_used: Vec<String> = Vec::new();
    let mut netdevs_used: Vec<String> = Vec::new();
    let mut chardevs_used: Vec<String> = Vec::new();
    let mut addrs = Vec::new();
    let mut resolved_drives = Vec::new();
    let mut have_serial_bus = false;
    let mut out = Vec::new();
    for (origin, d) in devices {
        match &d {
            DeviceSpec::VirtioBlk { drive, .. } => {
                if drives_used.contains(drive) {
                    return Err(origin.error(format!(
                        "Drive '{drive}' is already in use by another device"
                    )));
                }
                let spec = match cfg.drives.iter().find(|x| x.id == *drive) {
                    Some(x) if x.auto_device => {
                        return Err(origin.error(format!(
                            "Drive '{drive}' is already in use because it has been automatically connected to another device (did you need 'if=none' in the drive options?)"
                        )))
                    }
                    Some(x) => x.clone(),
                    None => resolve_node(blockdevs, drive)
                        .map_err(|e| origin.error(e))?
                        .ok_or_else(|| origin.error(format!("Property 'drive' can't find value '{drive}'")))?,
                };
                drives_used.push(drive.clone());
                resolved_drives.push(spec);
            }
            DeviceSpec::VirtioNet { netdev, .. } => {
                if !cfg.netdevs.iter().any(|n| n.id == *netdev) {
                    return Err(
                        origin.error(format!("Property 'netdev' can't find value '{netdev}'"))
                    );
                }
                if netdevs_used.contains(netdev) {
                    return Err(origin.error(format!(
                        "Property 'netdev' can't take value '{netdev}', it's in use"
                    )));
                }
                netdevs_used.push(netdev.clone());
            }
            DeviceSpec::VirtioSerial { .. } => have_serial_bus = true,
            DeviceSpec::VirtioBalloon { .. } => {
                if out
                    .iter()
                    .any(|d| matches!(d, DeviceSpec::VirtioBalloon { .. }))
                {
                    return Err(origin.error("Only one balloon device is supported"));
                }
            }
            DeviceSpec::I6300esb { .. } => {
                if out.iter().any(|d| matches!(d, DeviceSpec::I6300esb { .. })) {
                    return Err(origin.error("only one i6300esb watchdog is supported"));
                }
            }
            DeviceSpec::PvpanicPci { .. } => {}
            DeviceSpec::Pvpanic { .. } => {
                if out.iter().any(|d| matches!(d, DeviceSpec::Pvpanic { .. })) {
                    return Err(origin.error("only one pvpanic device is supported"));
                }
            }
            DeviceSpec::VirtioSerialPort { chardev, .. } => {
                if !have_serial_bus {
                    return Err(origin.error("No 'virtio-serial-bus' bus found for device (add -device virtio-serial-pci before it)"));
                }
                if !cfg.chardevs.iter().any(|c| c.id == *chardev) {
                    return Err(origin.error(format!("chardev '{chardev}' not found")));
                }
                if chardevs_used.contains(chardev) || used_chardevs.contains(&chardev.as_str()) {
                    return Err(origin.error(format!("chardev '{chardev}' is already in use")));
                }
                chardevs_used.push(chardev.clone());
            }
        }
        if let Some(a) = d.pci_addr() {
            if addrs.contains(&a) {
                return Err(origin.error(format!(
                    "PCI: slot {} function {} not available, in use",
                    a.slot, a.function
                )));
            }
            addrs.push(a);
        }
        out.push(d);
    }
    // `-drive if=virtio`: QEMU's shorthand for a drive plus its own virtio-blk-pci.
    for d in cfg.drives.iter().filter(|d| d.auto_device) {
        out.push(DeviceSpec::VirtioBlk {
            id: None,
            addr: None,
            drive: d.id.clone(),
            serial: d.serial.clone(),
            num_queues: 1,
            share_rw: false,
        });
        resolved_drives.push(d.clone());
    }
    cfg.drives = resolved_drives;
    cfg.devices = out;
    Ok(())
}

// ---- -action, -watchdog-action, -rtc ----

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionOpts {
    reboot: Option<String>,
    shutdown: Option<String>,
    panic: Option<String>,
    watchdog: Option<String>,
}

fn opt_action(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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

fn opt_rtc(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let a: RtcArgs = keyvalue::from_str(o.arg(), None).map_err(kv_err)?;
    if let Some(base) = a.base {
        b.cfg.rtc.base = match base.as_str() {
            "utc" => super::RtcBase::Utc,
            "localtime" => super::RtcBase::Localtime,
            other => super::RtcBase::Date(parse_rtc_date(other).ok_or_else(|| {
                format!("invalid datetime format '{other}' (valid formats: '2006-06-17T16:01:21' or '2006-06-17')")
            })?),
        };
    }
    if let Some(clock) = a.clock {
        b.cfg.rtc.clock = match clock.as_str() {
            "host" => super::RtcClock::Host,
            "rt" => super::RtcClock::Rt,
            "vm" => super::RtcClock::Vm,
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

// ---- -qmp, -mon ----

fn opt_qmp(b: &mut Builder, o: &Origin, pretty: bool) -> Result<Flow, String> {
    let spec = parse_serial(o.arg())?;
    if spec == SerialSpec::None {
        return Err("a monitor needs a character device".into());
    }
    b.monitors.push((o.clone(), spec, pretty));
    Ok(Flow::Continue)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MonOpts {
    chardev: Option<String>,
    mode: Option<String>,
    pretty: Option<bool>,
}

fn opt_mon(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let m: MonOpts = keyvalue::from_str(o.arg(), Some("chardev")).map_err(kv_err)?;
    let id = m
        .chardev
        .filter(|c| !c.is_empty())
        .ok_or("Parameter 'chardev' is missing")?;
    match m.mode.as_deref() {
        None | Some("control") => {}
        Some("readline") => {
            return Err(
                "mode=readline (the human monitor) is not supported by Kestrel: use mode=control (QMP); \
                 HMP commands go through QMP's human-monitor-command"
                    .into(),
            )
        }
        Some(other) => return Err(format!("Parameter 'mode' does not accept value '{other}'")),
    }
    b.monitors.push((
        o.clone(),
        SerialSpec::Chardev(id),
        m.pretty.unwrap_or(false),
    ));
    Ok(Flow::Continue)
}

#[cfg(test)]
mod tests {
    use super::super::{Accel, Chardev, Cpu, Smp};
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
        assert!(err("-drive file=/a,if=none,id=d -device virtio-blk-pci,drive=d -device virtio-blk-pci,drive=d")
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
}
