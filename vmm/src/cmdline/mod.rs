//! The QEMU-compatible command line: turns `kestrel`'s arguments into a [`Config`] (or a
//! request for help or the version).
//!
//! Every option is one entry of the table in `options.rs` (name, whether it takes an
//! argument, help line, handler); the table drives both parsing and [`help_text`]. Every
//! `key=value,...` argument is read by the one serde deserializer in `keyvalue.rs` into a
//! `#[serde(deny_unknown_fields)]` struct, so adding an option (`-qmp`, `-device`, ...) is one
//! table entry and one struct.
//!
//! As in QEMU, `-opt` and `--opt` are the same option, `-opt=value` is not an option, an
//! option's argument is always the next word (even if it starts with `-`), and `-h` /
//! `-version` act as soon as they are seen. Errors are one line naming the option, in QEMU
//! 7.2's wording where QEMU has one.

mod chardev;
pub mod devices;
mod keyvalue;
pub mod objects;
mod options;
mod smp;
mod values;

use std::path::PathBuf;

pub use smp::Smp;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Build and run this machine.
    Run(Box<Config>),
    /// Print [`version_text`] and exit successfully.
    Version,
    /// Print [`help_text`] and exit successfully (`-h`, and `help` given to `-machine`,
    /// `-cpu` or `-accel`, whose choices the help text lists).
    Help,
}

/// A command-line error. Display is one line naming the option, e.g.
/// `-m foo: Parameter 'size' expects a non-negative number ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    /// An option Kestrel does not know (`-foo: invalid option`).
    #[error("{0}: invalid option")]
    UnknownOption(String),
    /// An option that takes an argument was last on the line.
    #[error("{0}: requires an argument")]
    MissingArgument(String),
    /// A word that is not an option; QEMU would take it as a disk image (`-hda`).
    #[error("{0}: bare arguments (QEMU's implicit -hda disk image) are not supported")]
    Positional(String),
    /// An option's argument is wrong; `option` is spelled as the user typed it.
    #[error("{option}{}: {message}", .arg.as_deref().map(|a| format!(" {a}")).unwrap_or_default())]
    Invalid {
        option: String,
        arg: Option<String>,
        message: String,
    },
    /// Options that cannot be combined; the message names them.
    #[error("{0}")]
    Conflict(String),
}

/// Default guest RAM, as QEMU's.
pub const DEFAULT_MEM_SIZE: u64 = 128 << 20;

/// Most serial ports (COM1..COM4 on the ISA bus).
pub const MAX_SERIAL_PORTS: usize = 4;

/// `-incoming`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    Defer,
    Uri(String),
}

/// The machine to build, everything the command line said, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Guest RAM in bytes, rounded up to 8 KiB as QEMU does; default 128 MiB.
    pub mem_size: u64,
    pub smp: Smp,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// The kernel command line (`-append`); empty by default.
    pub append: String,
    /// Serial ports in order: COM1, COM2, ... A `-serial chardev:ID` is resolved to a copy
    /// of that chardev's backend (the chardev still appears in `chardevs`).
    ///
    /// Without `-serial` and `-nodefaults`, COM1 is `Stdio`: where QEMU would make a `vc`
    /// (a graphical text console) Kestrel, which has no graphical console, uses stdio; with
    /// `-daemonize` it is `Null` instead, stdio being gone. `-serial none` adds no port and,
    /// as in QEMU, uses up no COM number.
    pub serials: Vec<ChardevBackend>,
    /// For each of `serials`, the `-chardev` id it uses (`-serial chardev:ID`), if any.
    pub serial_chardevs: Vec<Option<String>>,
    /// Every `-chardev`, in command-line order; ids are unique.
    pub chardevs: Vec<Chardev>,
    /// QMP monitors (`-qmp`, `-qmp-pretty`, `-mon mode=control`), in command-line order.
    pub monitors: Vec<MonitorSpec>,
    /// `-device`s, plus one virtio-blk-pci per `-drive if=virtio`, in command-line order;
    /// every `drive=`/`netdev=`/`chardev=` they name exists and is used once.
    pub devices: Vec<devices::DeviceSpec>,
    /// Block backends the devices use (`-drive`, or resolved `-blockdev` raw/file pairs).
    pub drives: Vec<devices::DriveSpec>,
    /// `-netdev`s.
    pub netdevs: Vec<devices::NetdevSpec>,
    pub nographic: bool,
    /// `-display none`.
    pub display_none: bool,
    pub nodefaults: bool,
    pub no_reboot: bool,
    pub no_shutdown: bool,
    /// `-name NAME` or `-name guest=NAME`.
    pub name: Option<String>,
    /// `-name ...,process=NAME`: the name for the process (prctl PR_SET_NAME).
    pub process_name: Option<String>,
    /// `-name ...,debug-threads=on`: name threads after their role.
    pub debug_threads: bool,
    pub uuid: Option<[u8; 16]>,
    /// Every `-object memory-backend-*`, in command-line order; ids are unique.
    pub memory_backends: Vec<objects::MemoryBackend>,
    /// `-machine memory-backend=ID`: the backend that is guest RAM (it exists, and
    /// `mem_size` is its size).
    pub memory_backend: Option<String>,
    /// `-S`: do not start the vCPUs until the monitor says `cont`.
    pub start_paused: bool,
    /// `-incoming URI` (listen at startup) or `-incoming defer` (`migrate-incoming`
    /// says where): the machine waits in `inmigrate` for a migration stream.
    pub incoming: Option<Incoming>,
    pub machine: Machine,
    pub cpu: Cpu,
    pub daemonize: bool,
    pub pidfile: Option<PathBuf>,
    /// `-rtc`.
    pub rtc: RtcOpts,
    /// The `set-action` settings the command line asks for (`-no-reboot`,
    /// `-no-shutdown`, `-action`, `-watchdog-action`), applied in order.
    pub actions: monitor::Actions,
}

/// Where the guest's RTC starts: the host's UTC time, its local time, or a given date
/// (seconds since the Unix epoch, UTC) from which it then runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtcBase {
    #[default]
    Utc,
    Localtime,
    Date(i64),
}

/// The clock the RTC runs on: `host` follows the host's wall clock (including changes
/// to it), `rt` the host's monotonic clock, `vm` the guest clock (stops while paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtcClock {
    #[default]
    Host,
    Rt,
    Vm,
}

/// `-rtc base=,clock=,driftfix=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtcOpts {
    pub base: RtcBase,
    pub clock: RtcClock,
    /// `driftfix=slew`: re-inject periodic interrupts the guest missed.
    pub slew: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mem_size: DEFAULT_MEM_SIZE,
            smp: Smp::default(),
            kernel: None,
            initrd: None,
            append: String::new(),
            serials: Vec::new(),
            serial_chardevs: Vec::new(),
            chardevs: Vec::new(),
            monitors: Vec::new(),
            devices: Vec::new(),
            drives: Vec::new(),
            netdevs: Vec::new(),
            nographic: false,
            display_none: false,
            nodefaults: false,
            no_reboot: false,
            no_shutdown: false,
            name: None,
            process_name: None,
            debug_threads: false,
            uuid: None,
            memory_backends: Vec::new(),
            memory_backend: None,
            start_paused: false,
            incoming: None,
            machine: Machine::default(),
            cpu: Cpu::default(),
            daemonize: false,
            pidfile: None,
            rtc: RtcOpts::default(),
            actions: monitor::Actions::default(),
        }
    }
}

/// Where a character device's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevBackend {
    Stdio,
    /// Output to a file (input is nothing), truncated unless `append`.
    File {
        path: PathBuf,
        append: bool,
    },
    /// `server`: listen rather than connect; `wait`: as a server, block startup until a
    /// client connects (default true, as in QEMU).
    UnixSocket {
        path: PathBuf,
        server: bool,
        wait: bool,
    },
    /// An empty host means all interfaces (as a server).
    TcpSocket {
        host: String,
        port: u16,
        server: bool,
        wait: bool,
    },
    /// Discards output, never has input.
    Null,
}

/// One `-chardev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chardev {
    pub id: String,
    pub backend: ChardevBackend,
}

/// A QMP monitor on a character device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorSpec {
    pub backend: ChardevBackend,
    /// The `-chardev` id it uses, if it names one (`-mon chardev=ID`, `-qmp chardev:ID`).
    pub chardev: Option<String>,
    /// `pretty=on` / `-qmp-pretty`: responses pretty-printed (still one message per line end).
    pub pretty: bool,
}

/// The only machine type.
pub const MACHINE_TYPE: &str = "kestrel";

/// The machine type and accelerator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Always [`MACHINE_TYPE`].
    pub kind: String,
    pub accel: Accel,
}

impl Default for Machine {
    fn default() -> Self {
        Machine {
            kind: MACHINE_TYPE.to_string(),
            accel: Accel::Kvm,
        }
    }
}

/// The accelerator; KVM is the only one (and the default, where QEMU's is tcg).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    #[default]
    Kvm,
}

/// The CPU model the guest sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuModel {
    /// The host's CPUID, as KVM supports it.
    Host,
    /// Everything KVM supports (for KVM, the same as `host`).
    Max,
    /// QEMU's default x86-64 baseline.
    #[default]
    Qemu64,
}

impl CpuModel {
    /// The name as written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CpuModel::Host => "host",
            CpuModel::Max => "max",
            CpuModel::Qemu64 => "qemu64",
        }
    }
}

/// `-cpu MODEL[,+flag|-flag|flag=on|off...]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cpu {
    pub model: CpuModel,
    /// CPUID feature flags to turn on (`true`) or off, in command-line order, each at most
    /// once. Names are QEMU's (`vmx`, `avx2`, `x2apic`, ...), only checked syntactically
    /// here: the CPUID builder knows which exist.
    pub flags: Vec<(String, bool)>,
}

/// Parses the arguments (without `argv[0]`).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Action, CmdlineError> {
    options::parse(args)
}

/// The `-h` text: a usage line and one line per supported option.
pub fn help_text() -> String {
    options::help_text()
}

/// The `-version` text.
pub fn version_text() -> String {
    format!(
        "Kestrel version {} (QEMU-compatible command line and QMP)",
        env!("CARGO_PKG_VERSION")
    )
}

/// The `key=value` options and their parameters, as `query-command-line-options`
/// reports them (QEMU's QemuOpts group names, e.g. `smp-opts` for -smp). Each list is the
/// fields of that option's `deny_unknown_fields` struct, so the unit test below checks
/// that every listed parameter is accepted.
pub const OPTION_PARAMETERS: &[(&str, &[(&str, &str)])] = &[
    (
        "machine",
        &[
            ("type", "string"),
            ("accel", "string"),
            ("memory-backend", "string"),
        ],
    ),
    // QEMU's -object takes any QOM type's properties, so it lists none.
    ("object", &[]),
    ("accel", &[("accel", "string")]),
    (
        "smp-opts",
        &[
            ("cpus", "number"),
            ("sockets", "number"),
            ("dies", "number"),
            ("clusters", "number"),
            ("cores", "number"),
            ("threads", "number"),
            ("maxcpus", "number"),
        ],
    ),
    (
        "memory",
        &[("size", "size"), ("slots", "number"), ("maxmem", "size")],
    ),
    (
        "name",
        &[
            ("guest", "string"),
            ("process", "string"),
            ("debug-threads", "boolean"),
        ],
    ),
    (
        "chardev",
        &[
            ("backend", "string"),
            ("id", "string"),
            ("path", "string"),
            ("host", "string"),
            ("port", "string"),
            ("server", "boolean"),
            ("wait", "boolean"),
            ("append", "boolean"),
        ],
    ),
    (
        "mon",
        &[
            ("chardev", "string"),
            ("mode", "string"),
            ("pretty", "boolean"),
        ],
    ),
    (
        "rtc",
        &[
            ("base", "string"),
            ("clock", "string"),
            ("driftfix", "string"),
        ],
    ),
    (
        "action",
        &[
            ("reboot", "string"),
            ("shutdown", "string"),
            ("panic", "string"),
            ("watchdog", "string"),
        ],
    ),
];

#[cfg(test)]
mod option_parameter_tests {
    use super::*;

    fn accepts(line: &str) {
        let args: Vec<String> = line.split_whitespace().map(String::from).collect();
        if let Err(e) = parse(args) {
            let msg = e.to_string();
            assert!(
                !msg.contains("unexpected") && !msg.contains("nvalid parameter"),
                "{line}: {msg}"
            );
        }
    }

    #[test]
    fn every_reported_parameter_is_accepted() {
        for (opt, params) in OPTION_PARAMETERS {
            for (p, ty) in *params {
                let v = match *ty {
                    "boolean" => "on",
                    "number" => "1",
                    "size" => "64M",
                    _ => "x",
                };
                let line = match *opt {
                    "machine" if *p == "type" => "-machine type=kestrel".to_string(),
                    "machine" if *p == "memory-backend" => {
                        "-object memory-backend-ram,id=m,size=64M -machine memory-backend=m"
                            .to_string()
                    }
                    "machine" => "-machine kestrel,accel=kvm".to_string(),
                    "accel" => "-accel accel=kvm".to_string(),
                    "smp-opts" => format!("-smp {p}=1"),
                    "memory" => format!("-m {p}={v}"),
                    "name" => format!("-name {p}={v}"),
                    "chardev" if *p == "backend" || *p == "id" => "-chardev null,id=c".to_string(),
                    "chardev" if *p == "append" => {
                        "-chardev file,id=c,path=/tmp/x,append=on".to_string()
                    }
                    "chardev" => format!("-chardev socket,id=c,{p}={v}"),
                    "mon" => format!(
                        "-chardev null,id=c -mon chardev=c,{p}={}",
                        if *p == "mode" {
                            "control"
                        } else if *p == "chardev" {
                            "c"
                        } else {
                            v
                        }
                    ),
                    "rtc" => format!(
                        "-rtc {p}={}",
                        match *p {
                            "base" => "utc",
                            "clock" => "host",
                            _ => "slew",
                        }
                    ),
                    "action" => format!(
                        "-action {p}={}",
                        match *p {
                            "reboot" | "shutdown" => "shutdown",
                            _ => "pause",
                        }
                    ),
                    other => panic!("no sample for {other}"),
                };
                accepts(&line);
            }
        }
    }
}
