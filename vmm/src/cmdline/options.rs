//! The option table and the argument loop. One [`OptSpec`] per option drives parsing and the
//! help text; an option with a `key=value` argument reads it with `keyvalue::from_str` into
//! its own `#[serde(deny_unknown_fields)]` struct, defined next to its handler.
//!
//! This module holds the argument loop, the [`Builder`] that collects the configuration
//! and the checks that wait for the whole command line, and the help text. The table is
//! in `table`; the handlers are grouped by subject in `machine` (machine, memory, CPUs,
//! display), `consoles` (serial ports, chardevs, monitors) and `runtime` (actions, RTC);
//! `resolve` checks the device references. Handlers reach the builder's private fields
//! as children of this module; none of them uses another, only `table` names them.

use std::path::PathBuf;

use super::chardev::SerialSpec;
use super::devices::{BlockNode, DeviceSpec};
use super::keyvalue;
use super::{Action, ChardevBackend, CmdlineError, Config, MonitorSpec};

/// A `set-action` enum value from its wire name, with QEMU's error.
macro_rules! enum_value {
    ($ty:ty, $name:expr, $v:expr) => {
        <$ty>::from_wire($v)
            .ok_or_else(|| format!("Parameter '{}' does not accept value '{}'", $name, $v))
    };
}

// Declared after `enum_value!` so the handlers see it.
mod consoles;
mod machine;
mod resolve;
mod runtime;
mod table;

use resolve::resolve_devices;
use table::OPTIONS;

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
    /// Whether `-m` was given (a memory backend then must match its size).
    mem_explicit: bool,
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
            mem_explicit,
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
        if let Some(id) = &cfg.memory_backend {
            let backend = cfg
                .memory_backends
                .iter()
                .find(|m| m.id == *id)
                .ok_or_else(|| {
                    CmdlineError::Conflict(format!("Memory backend '{id}' not found"))
                })?;
            if mem_explicit && backend.size != cfg.mem_size {
                return Err(CmdlineError::Conflict(
                    "Machine memory size does not match the size of the memory backend".into(),
                ));
            }
            cfg.mem_size = backend.size;
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

#[cfg(test)]
mod tests;
