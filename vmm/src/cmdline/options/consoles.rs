//! The character-device options and what sits on them: `-serial`, `-chardev`, `-qmp` and
//! `-mon`. Backends named by chardev id are only recorded here; the builder resolves them
//! against the `-chardev`s once the whole command line is read.

use super::{kv_err, Builder, Flow, Origin};
use crate::cmdline::chardev::{parse_chardev, parse_serial, SerialSpec};
use crate::cmdline::keyvalue;
use crate::cmdline::MAX_SERIAL_PORTS;

// ---- -serial, -chardev ----

pub(super) fn opt_serial(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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

pub(super) fn opt_chardev(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
    let chardev = parse_chardev(o.arg())?;
    if b.cfg.chardevs.iter().any(|c| c.id == chardev.id) {
        return Err(format!("Duplicate ID '{}' for chardev", chardev.id));
    }
    b.cfg.chardevs.push(chardev);
    b.chardev_origins.push(o.clone());
    Ok(Flow::Continue)
}

// ---- -qmp, -mon ----

pub(super) fn opt_qmp(b: &mut Builder, o: &Origin, pretty: bool) -> Result<Flow, String> {
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

pub(super) fn opt_mon(b: &mut Builder, o: &Origin) -> Result<Flow, String> {
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
