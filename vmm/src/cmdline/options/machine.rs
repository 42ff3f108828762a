//! The options that shape the machine: `-m`, `-object` (memory backends), `-smp`,
//! `-name`, `-uuid`, `-machine`, `-accel`, `-enable-kvm`, `-cpu` and `-display`. Each reads its `key=value` argument
//! into its own `deny_unknown_fields` struct and records the result in the builder's
//! `Config`; QEMU values Kestrel does not have are refused as unsupported, not unknown.

use super::{is_help, kv_err, Builder, Flow, Origin};
use crate::cmdline::keyvalue::{self, parse_bool};
use crate::cmdline::objects::parse_object;
use crate::cmdline::smp::parse_smp;
use crate::cmdline::values::{parse_uuid, MegSize, Size};
use crate::cmdline::{Action, CpuModel, MACHINE_TYPE};
use serde::de::{self, Deserialize, Deserializer, MapAccess, Unexpected, Visitor};

// ---- -m ----

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MemOpts {
    size: Option<MegSize>,
    slots: Option<u64>,
    maxmem: Option<Size>,
}

pub(super) fn opt_m(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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
    b.mem_explicit = true;
    Ok(Flow::Continue)
}

// ---- -smp ----

pub(super) fn opt_smp(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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

pub(super) fn opt_name(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let n: NameOpts = keyvalue::from_str(o.arg(), Some("guest")).map_err(kv_err)?;
    b.cfg.name = n.guest;
    b.cfg.process_name = n.process;
    b.cfg.debug_threads = n.debug_threads.unwrap_or(false);
    Ok(Flow::Continue)
}

// ---- -uuid ----

pub(super) fn opt_uuid(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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
    #[serde(rename = "memory-backend")]
    memory_backend: Option<String>,
}

pub(super) fn opt_machine(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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
    if let Some(id) = m.memory_backend {
        b.cfg.memory_backend = Some(id);
    }
    Ok(Flow::Continue)
}

// ---- -object ----

pub(super) fn opt_object(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    if is_help(o.arg()) {
        return Ok(Flow::Stop(Action::Help));
    }
    let m = parse_object(o.arg())?;
    if b.cfg.memory_backends.iter().any(|x| x.id == m.id) {
        return Err(format!("Duplicate ID '{}' for object", m.id));
    }
    b.cfg.memory_backends.push(m);
    Ok(Flow::Continue)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccelOpts {
    accel: String,
}

pub(super) fn opt_accel(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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

pub(super) fn opt_enable_kvm(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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

pub(super) fn opt_cpu(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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

pub(super) fn opt_display(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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
