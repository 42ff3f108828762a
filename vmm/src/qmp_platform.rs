//! QMP for the platform devices: the balloon (`balloon`, `query-balloon`,
//! BALLOON_CHANGE, and its statistics through `qom-get`/`qom-set`), the RTC
//! (`rtc-reset-reinjection`, RTC_CHANGE) and the ACPI OSPM status reports
//! (`query-acpi-ospm-status`, ACPI_DEVICE_OST).
//!
//! Kestrel's QOM tree is small: `/machine/peripheral/ID` (or
//! `/machine/peripheral-anon/device[N]`) for each `-device`, and the RTC (the path
//! RTC_CHANGE names), with the properties QEMU's tools use: `type` everywhere, on the
//! balloon `guest-stats` and `guest-stats-polling-interval`, on the RTC `date` (also
//! `/machine`'s `rtc-time`). A path may be given whole or as the device id alone, as
//! QEMU's partial paths allow.

use monitor::{Empty, ErrorClass, QmpError, Registry};
use serde_json::{json, Value};

use crate::cmdline::devices::DeviceSpec;
use crate::machine::Machine;
use crate::pci::Attached;

/// Where RTC_CHANGE says the RTC is.
pub const RTC_QOM_PATH: &str = "/machine/unattached/device[0]";

use crate::qmp_devices::{lock, machine};

monitor::qmp_struct! {
    /// `BalloonInfo`, also BALLOON_CHANGE's data.
    #[derive(Debug, Clone)]
    pub struct BalloonInfo {
        pub actual: i64 = "actual",
    }
}

monitor::qmp_struct! {
    /// Arguments of `balloon`.
    #[derive(Debug, Clone)]
    pub struct BalloonArgs {
        pub value: i64 = "value",
    }
}

monitor::qmp_struct! {
    /// RTC_CHANGE's data.
    #[derive(Debug, Clone)]
    pub struct RtcChangeEvent {
        pub offset: i64 = "offset",
        pub qom_path: String = "qom-path",
    }
}

monitor::qmp_struct! {
    /// Arguments of `qom-get`.
    #[derive(Debug, Clone)]
    pub struct QomGetArgs {
        pub path: String = "path",
        pub property: String = "property",
    }
}

monitor::qmp_struct! {
    /// Arguments of `qom-set`.
    #[derive(Debug, Clone)]
    pub struct QomSetArgs {
        pub path: String = "path",
        pub property: String = "property",
        pub value: Value = "value",
    }
}

monitor::qmp_struct! {
    /// `ACPIOSTInfo`.
    #[derive(Debug, Clone)]
    pub struct AcpiOstInfo {
        pub device: Option<String> = "device",
        pub slot: String = "slot",
        pub slot_type: String = "slot-type",
        pub source: i64 = "source",
        pub status: i64 = "status",
    }
}

fn no_balloon() -> QmpError {
    QmpError::new(
        ErrorClass::DeviceNotActive,
        "No balloon device has been activated",
    )
}

type BalloonModel = std::sync::Arc<std::sync::Mutex<devices::virtio::balloon::VirtioBalloon>>;

fn balloon(m: &Machine) -> Result<BalloonModel, QmpError> {
    m.current_vm()
        .and_then(|v| v.pci())
        .and_then(|p| {
            p.attached.iter().find_map(|a| match a {
                Attached::Balloon { model, .. } => Some(model.clone()),
                _ => None,
            })
        })
        .ok_or_else(no_balloon)
}

/// `balloon value=N`: the guest should have N bytes of RAM left.
fn set_balloon(m: &Machine, value: i64) -> Result<(), QmpError> {
    let model = balloon(m)?;
    if value <= 0 {
        // QEMU names the argument by its internal name here.
        return Err(QmpError::generic("Parameter 'target' expects a size"));
    }
    let ram = m.ram_size();
    let target = (value as u64).min(ram);
    let pages = (ram - target) >> 12;
    lock(&model).set_target_pages(u32::try_from(pages).unwrap_or(u32::MAX));
    Ok(())
}

fn query_balloon(m: &Machine) -> Result<BalloonInfo, QmpError> {
    let model = balloon(m)?;
    let actual = lock(&model).actual_pages();
    Ok(BalloonInfo {
        actual: m.balloon_actual_bytes(actual),
    })
}

/// A `-device` as the QOM tree names it.
struct QomDevice {
    path: String,
    id: Option<String>,
    type_name: &'static str,
}

fn type_name(d: &DeviceSpec) -> &'static str {
    match d {
        DeviceSpec::VirtioBlk { .. } => "virtio-blk-pci",
        DeviceSpec::VirtioNet { .. } => "virtio-net-pci",
        DeviceSpec::VirtioSerial { .. } => "virtio-serial-pci",
        DeviceSpec::Pvpanic { .. } => "pvpanic",
        DeviceSpec::PvpanicPci { .. } => "pvpanic-pci",
        DeviceSpec::I6300esb { .. } => "i6300esb",
        DeviceSpec::VirtioBalloon { .. } => "virtio-balloon-pci",
        DeviceSpec::VirtioSerialPort { console: true, .. } => "virtconsole",
        DeviceSpec::VirtioSerialPort { .. } => "virtserialport",
    }
}

fn device_id(d: &DeviceSpec) -> Option<&str> {
    match d {
        DeviceSpec::VirtioBlk { id, .. }
        | DeviceSpec::VirtioNet { id, .. }
        | DeviceSpec::VirtioSerial { id, .. }
        | DeviceSpec::Pvpanic { id, .. }
        | DeviceSpec::PvpanicPci { id, .. }
        | DeviceSpec::I6300esb { id, .. }
        | DeviceSpec::VirtioBalloon { id, .. }
        | DeviceSpec::VirtioSerialPort { id, .. } => id.as_deref(),
    }
}

fn qom_devices(m: &Machine) -> Vec<QomDevice> {
    let mut anon = 0;
    let fixed = [
        QomDevice {
            path: "/machine".into(),
            id: None,
            type_name: "kestrel-machine",
        },
        QomDevice {
            path: RTC_QOM_PATH.into(),
            id: None,
            type_name: "mc146818rtc",
        },
    ];
    fixed
        .into_iter()
        .chain(m.device_specs().iter().map(|d| {
            let id = device_id(d).map(str::to_string);
            let path = match &id {
                Some(id) => format!("/machine/peripheral/{id}"),
                None => {
                    anon += 1;
                    format!("/machine/peripheral-anon/device[{}]", anon - 1)
                }
            };
            QomDevice {
                path,
                id,
                type_name: type_name(d),
            }
        }))
        .collect()
}

/// QEMU's `struct tm` as the RTC's `date` property gives it.
fn rtc_tm(m: &Machine) -> Result<Value, QmpError> {
    let t = m
        .rtc_time()
        .ok_or_else(|| QmpError::generic("the machine has no RTC"))?;
    Ok(json!({
        "tm_year": t.year - 1900,
        "tm_mon": i64::from(t.month) - 1,
        "tm_mday": t.day,
        "tm_hour": t.hour,
        "tm_min": t.minute,
        "tm_sec": t.second,
    }))
}

fn resolve(m: &Machine, path: &str) -> Result<QomDevice, QmpError> {
    let not_found = || {
        QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{path}' not found"),
        )
    };
    let mut matches = qom_devices(m).into_iter().filter(|d| {
        d.path == path
            || (!path.starts_with('/')
                && (d.id.as_deref() == Some(path) || d.path.ends_with(&format!("/{path}"))))
    });
    let first = matches.next().ok_or_else(not_found)?;
    if matches.next().is_some() {
        return Err(QmpError::generic(format!("Path '{path}' is ambiguous")));
    }
    Ok(first)
}

fn no_property(d: &QomDevice, property: &str) -> QmpError {
    QmpError::generic(format!("Property '{}.{property}' not found", d.type_name))
}

fn qom_get(m: &Machine, path: &str, property: &str) -> Result<Value, QmpError> {
    let d = resolve(m, path)?;
    match (d.type_name, property) {
        (t, "type") => Ok(json!(t)),
        ("mc146818rtc", "date") | ("kestrel-machine", "rtc-time") => rtc_tm(m),
        ("virtio-balloon-pci", "guest-stats-polling-interval") => {
            let b = balloon(m)?;
            let v = lock(&b).stats_interval_secs();
            Ok(json!(v))
        }
        ("virtio-balloon-pci", "guest-stats") => {
            let b = balloon(m)?;
            let s = lock(&b).stats();
            // uint64 as in QEMU: a statistic the guest never reported is all ones, and
            // before the first report `last-update` is 0.
            let stats: serde_json::Map<String, Value> = s
                .iter()
                .map(|(name, v)| {
                    (
                        name.to_string(),
                        json!(u64::try_from(v).unwrap_or(u64::MAX)),
                    )
                })
                .collect();
            Ok(json!({"stats": stats, "last-update": s.last_update}))
        }
        _ => Err(no_property(&d, property)),
    }
}

fn qom_set(m: &Machine, path: &str, property: &str, value: &Value) -> Result<(), QmpError> {
    let d = resolve(m, path)?;
    match (d.type_name, property) {
        (_, "type") | ("mc146818rtc", "date") | ("kestrel-machine", "rtc-time") => {
            Err(QmpError::generic(format!(
                "Property '{}.{property}' is not writable",
                d.type_name
            )))
        }
        ("virtio-balloon-pci", "guest-stats-polling-interval") => {
            let v = value.as_i64().ok_or_else(|| {
                QmpError::generic(
                    "Invalid parameter type for 'guest-stats-polling-interval', expected: integer",
                )
            })?;
            if v < 0 {
                return Err(QmpError::generic("timer value must be greater than zero"));
            }
            let v = u32::try_from(v).map_err(|_| QmpError::generic("timer value is too big"))?;
            let b = balloon(m)?;
            lock(&b).set_stats_interval_secs(v);
            Ok(())
        }
        ("virtio-balloon-pci", "guest-stats") => Err(QmpError::generic(
            "Property 'virtio-balloon-pci.guest-stats' is not writable",
        )),
        _ => Err(no_property(&d, property)),
    }
}

pub fn register(r: &mut Registry) -> Result<(), monitor::Error> {
    r.register("balloon", |ctx, a: BalloonArgs| {
        set_balloon(machine(ctx)?, a.value).map(|_| Empty {})
    })?;
    r.register("query-balloon", |ctx, _: Empty| {
        query_balloon(machine(ctx)?)
    })?;
    r.register("qom-get", |ctx, a: QomGetArgs| {
        qom_get(machine(ctx)?, &a.path, &a.property)
    })?;
    r.register("qom-set", |ctx, a: QomSetArgs| {
        qom_set(machine(ctx)?, &a.path, &a.property, &a.value).map(|_| Empty {})
    })?;
    // No Kestrel device has an _OST method (there is no hotplug for a guest to report
    // on), so the list is always empty, as on QEMU's microvm without memory hotplug.
    r.register("query-acpi-ospm-status", |_, _: Empty| {
        Ok(Vec::<AcpiOstInfo>::new())
    })?;
    r.register("rtc-reset-reinjection", |ctx, _: Empty| {
        machine(ctx)?.rtc_reset_reinjection();
        Ok(Empty {})
    })?;
    Ok(())
}

/// The events of this module, for `query-qmp-schema`.
pub fn register_events(r: &mut Registry) -> Result<(), monitor::Error> {
    use monitor::QmpType;
    r.register_event("BALLOON_CHANGE", BalloonInfo::schema)?;
    r.register_event("RTC_CHANGE", RtcChangeEvent::schema)?;
    Ok(())
}
