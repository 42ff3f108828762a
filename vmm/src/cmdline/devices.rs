//! Devices and their backends: `-device`, `-drive`, `-blockdev`, `-netdev`. Each value is
//! parsed by the one keyvalue parser into a `deny_unknown_fields` struct; the references
//! between them (`drive=`, `netdev=`, `chardev=`, `file=` of a raw node) are resolved when
//! the whole command line is known.

use std::path::PathBuf;

use serde::Deserialize;

use super::keyvalue::{self, parse_bool, KvError};

/// A PCI slot and function on bus 0 (`addr=SLOT[.FN]`, hex as QEMU reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciAddr {
    pub slot: u8,
    pub function: u8,
}

pub fn parse_pci_addr(s: &str) -> Result<PciAddr, String> {
    let bad = || {
        format!("Property 'addr' doesn't take value '{s}' (expected SLOT[.FN] in hex, slot 0-1f, function 0-7)")
    };
    let (slot, func) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let hex = |v: &str| u8::from_str_radix(v.trim_start_matches("0x"), 16).ok();
    let slot = hex(slot).filter(|v| *v < 32).ok_or_else(bad)?;
    let function = match func {
        Some(f) => hex(f).filter(|v| *v < 8).ok_or_else(bad)?,
        None => 0,
    };
    Ok(PciAddr { slot, function })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Host page cache, flushes honoured (QEMU's default).
    #[default]
    Writeback,
    /// O_DIRECT: no host page cache.
    None,
    /// Every write is durable before it completes (O_DSYNC).
    Writethrough,
    /// Flushes are ignored.
    Unsafe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AioEngine {
    #[default]
    IoUring,
    Threads,
}

/// What a host I/O error does (`werror=`, `rerror=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    Report,
    Ignore,
    Stop,
    /// Stop on ENOSPC, report other errors.
    Enospc,
}

/// A block backend, from `-drive` or a `-blockdev` raw-over-file pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// `-drive id=` or the `-blockdev` node name devices refer to.
    pub id: String,
    pub file: PathBuf,
    pub read_only: bool,
    pub cache: CacheMode,
    pub aio: AioEngine,
    pub discard: bool,
    pub serial: Option<String>,
    pub werror: ErrorAction,
    pub rerror: ErrorAction,
    /// `if=virtio`: a virtio-blk-pci device is created for it (QEMU's shorthand).
    pub auto_device: bool,
    /// `file.locking=` / `locking=`: QEMU's image locking.
    pub locking: FileLocking,
}

/// QEMU's `locking=on|off|auto` of a file node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileLocking {
    On,
    Off,
    #[default]
    Auto,
}

fn locking(s: Option<String>) -> Result<FileLocking, String> {
    Ok(match s.as_deref() {
        None | Some("auto") => FileLocking::Auto,
        Some(v) => match parse_bool(v) {
            Some(true) => FileLocking::On,
            Some(false) => FileLocking::Off,
            None => {
                return Err(format!(
                    "Parameter 'locking' does not accept value '{v}' (on, off or auto)"
                ))
            }
        },
    })
}

/// A network backend (`-netdev tap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetdevSpec {
    pub id: String,
    pub ifname: Option<String>,
}

/// A `-device`.
#[derive(Debug, Clone, PartialEq, Eq)]
// Named after QEMU's drivers, which are all virtio ones until the platform devices land.
#[allow(clippy::enum_variant_names)]
pub enum DeviceSpec {
    VirtioBlk {
        id: Option<String>,
        addr: Option<PciAddr>,
        drive: String,
        serial: Option<String>,
        num_queues: u16,
        /// `share-rw=on`: other users of the image may write it too.
        share_rw: bool,
    },
    VirtioNet {
        id: Option<String>,
        addr: Option<PciAddr>,
        netdev: String,
        mac: Option<[u8; 6]>,
    },
    VirtioSerial {
        id: Option<String>,
        addr: Option<PciAddr>,
        max_ports: u32,
    },
    /// The ISA pvpanic device (`pvpanic`), at an I/O port.
    Pvpanic { id: Option<String>, ioport: u16 },
    /// The PCI pvpanic device (`pvpanic-pci`).
    PvpanicPci {
        id: Option<String>,
        addr: Option<PciAddr>,
    },
    /// The Intel 6300ESB watchdog (`i6300esb`).
    I6300esb {
        id: Option<String>,
        addr: Option<PciAddr>,
    },
    /// `virtio-balloon-pci`.
    VirtioBalloon {
        id: Option<String>,
        addr: Option<PciAddr>,
        deflate_on_oom: bool,
        free_page_reporting: bool,
    },
    /// `virtconsole` (console: true) or `virtserialport`, on the virtio-serial device.
    VirtioSerialPort {
        id: Option<String>,
        chardev: String,
        name: Option<String>,
        console: bool,
    },
}

impl DeviceSpec {
    /// The `addr=` a PCI device asked for.
    pub fn pci_addr(&self) -> Option<PciAddr> {
        match self {
            DeviceSpec::VirtioBlk { addr, .. }
            | DeviceSpec::VirtioNet { addr, .. }
            | DeviceSpec::VirtioSerial { addr, .. }
            | DeviceSpec::PvpanicPci { addr, .. }
            | DeviceSpec::I6300esb { addr, .. }
            | DeviceSpec::VirtioBalloon { addr, .. } => *addr,
            DeviceSpec::Pvpanic { .. } | DeviceSpec::VirtioSerialPort { .. } => None,
        }
    }
}

fn err(e: KvError) -> String {
    e.to_string()
}

fn addr(a: Option<String>) -> Result<Option<PciAddr>, String> {
    a.map(|s| parse_pci_addr(&s)).transpose()
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("Property 'mac' doesn't take value '{s}' (expected xx:xx:xx:xx:xx:xx)");
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return Err(bad());
        }
        m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if m[0] & 1 != 0 {
        return Err(format!(
            "Property 'mac' doesn't take value '{s}' (a multicast address)"
        ));
    }
    Ok(m)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BlkOpts {
    id: Option<String>,
    addr: Option<String>,
    drive: Option<String>,
    serial: Option<String>,
    #[serde(rename = "num-queues")]
    num_queues: Option<u16>,
    #[serde(rename = "share-rw")]
    share_rw: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetOpts {
    id: Option<String>,
    addr: Option<String>,
    netdev: Option<String>,
    mac: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SerialOpts {
    id: Option<String>,
    addr: Option<String>,
    max_ports: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PortOpts {
    id: Option<String>,
    chardev: Option<String>,
    name: Option<String>,
    /// QEMU's `bus=virtio-serial0.0`: accepted, there is one virtio-serial bus.
    bus: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PvpanicOpts {
    id: Option<String>,
    ioport: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PciOpts {
    id: Option<String>,
    addr: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BalloonOpts {
    id: Option<String>,
    addr: Option<String>,
    deflate_on_oom: Option<bool>,
    free_page_reporting: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum DeviceOpts {
    VirtioBlkPci(BlkOpts),
    VirtioNetPci(NetOpts),
    VirtioSerialPci(SerialOpts),
    Virtconsole(PortOpts),
    Virtserialport(PortOpts),
    Pvpanic(PvpanicOpts),
    PvpanicPci(PciOpts),
    I6300esb(PciOpts),
    VirtioBalloonPci(BalloonOpts),
    /// QEMU's alias of virtio-balloon-pci on PC machines.
    VirtioBalloon(BalloonOpts),
}

/// Devices QEMU has that later Kestrel issues add; named as unsupported, not unknown.
const NOT_YET: &[&str] = &[
    "virtio-blk-device",
    "virtio-net-device",
    "e1000",
    "virtio-scsi-pci",
    "nvme",
];

/// Parses `-device`. The error is the problem, without the option name.
pub fn parse_device(arg: &str) -> Result<DeviceSpec, String> {
    let opts: DeviceOpts = keyvalue::from_str(arg, Some("driver")).map_err(|e| match e {
        KvError::UnknownVariant { value, .. } if NOT_YET.contains(&value.as_str()) => {
            format!("device '{value}' is not supported by Kestrel yet")
        }
        KvError::UnknownVariant { value, .. } => {
            format!("'{value}' is not a valid device model name")
        }
        other => other.to_string(),
    })?;
    Ok(match opts {
        DeviceOpts::VirtioBlkPci(o) => DeviceSpec::VirtioBlk {
            id: o.id,
            addr: addr(o.addr)?,
            drive: o
                .drive
                .filter(|d| !d.is_empty())
                .ok_or("Property 'drive' is required")?,
            serial: o.serial,
            num_queues: match o.num_queues {
                Some(0) => return Err("Property 'num-queues' must be at least 1".into()),
                Some(n) if n > 64 => return Err("Property 'num-queues' must be at most 64".into()),
                Some(n) => n,
                None => 1,
            },
            share_rw: o.share_rw.unwrap_or(false),
        },
        DeviceOpts::VirtioNetPci(o) => DeviceSpec::VirtioNet {
            id: o.id,
            addr: addr(o.addr)?,
            netdev: o
                .netdev
                .filter(|d| !d.is_empty())
                .ok_or("Property 'netdev' is required")?,
            mac: o.mac.map(|m| parse_mac(&m)).transpose()?,
        },
        DeviceOpts::VirtioSerialPci(o) => DeviceSpec::VirtioSerial {
            id: o.id,
            addr: addr(o.addr)?,
            max_ports: match o.max_ports {
                Some(n) if n == 0 || n > 31 => {
                    return Err("Property 'max_ports' must be 1-31".into())
                }
                Some(n) => n,
                None => 31,
            },
        },
        DeviceOpts::Virtconsole(o) | DeviceOpts::Virtserialport(o)
            if o.bus
                .as_deref()
                .is_some_and(|b| !b.starts_with("virtio-serial")) =>
        {
            return Err(format!("Bus '{}' not found", o.bus.unwrap_or_default()))
        }
        DeviceOpts::Pvpanic(o) => {
            DeviceSpec::Pvpanic {
                id: o.id,
                ioport: match o.ioport {
                    None => 0x505,
                    Some(p) => {
                        let v = match p.strip_prefix("0x") {
                            Some(h) => u16::from_str_radix(h, 16).ok(),
                            None => p.parse().ok(),
                        };
                        v.filter(|v| *v >= 0x100)
                        .ok_or_else(|| format!("Property 'ioport' doesn't take value '{p}' (an I/O port from 0x100)"))?
                    }
                },
            }
        }
        DeviceOpts::PvpanicPci(o) => DeviceSpec::PvpanicPci {
            id: o.id,
            addr: addr(o.addr)?,
        },
        DeviceOpts::I6300esb(o) => DeviceSpec::I6300esb {
            id: o.id,
            addr: addr(o.addr)?,
        },
        DeviceOpts::VirtioBalloonPci(o) | DeviceOpts::VirtioBalloon(o) => {
            DeviceSpec::VirtioBalloon {
                id: o.id,
                addr: addr(o.addr)?,
                deflate_on_oom: o.deflate_on_oom.unwrap_or(false),
                free_page_reporting: o.free_page_reporting.unwrap_or(false),
            }
        }
        DeviceOpts::Virtconsole(o) => port(o, true)?,
        DeviceOpts::Virtserialport(o) => port(o, false)?,
    })
}

fn port(o: PortOpts, console: bool) -> Result<DeviceSpec, String> {
    Ok(DeviceSpec::VirtioSerialPort {
        id: o.id,
        chardev: o
            .chardev
            .filter(|c| !c.is_empty())
            .ok_or("Property 'chardev' is required")?,
        name: o.name,
        console,
    })
}

fn cache_mode(s: &str) -> Result<CacheMode, String> {
    Ok(match s {
        "writeback" => CacheMode::Writeback,
        "none" | "directsync" => CacheMode::None,
        "writethrough" => CacheMode::Writethrough,
        "unsafe" => CacheMode::Unsafe,
        other => return Err(format!("invalid cache option '{other}'")),
    })
}

fn aio(s: &str) -> Result<AioEngine, String> {
    Ok(match s {
        "io_uring" => AioEngine::IoUring,
        "threads" => AioEngine::Threads,
        "native" => {
            return Err(
                "aio=native (Linux AIO) is not supported by Kestrel: use io_uring or threads"
                    .into(),
            )
        }
        other => return Err(format!("Parameter 'aio' does not accept value '{other}'")),
    })
}

fn error_action(key: &str, s: Option<String>) -> Result<ErrorAction, String> {
    Ok(match s.as_deref() {
        None | Some("report") => ErrorAction::Report,
        Some("ignore") => ErrorAction::Ignore,
        Some("stop") => ErrorAction::Stop,
        Some("enospc") => ErrorAction::Enospc,
        Some(other) => return Err(format!("'{other}' invalid {key} argument")),
    })
}

fn discard(s: Option<String>) -> Result<bool, String> {
    Ok(match s.as_deref() {
        None | Some("ignore") | Some("off") => false,
        Some("unmap") | Some("on") => true,
        Some(other) => return Err(format!("Invalid discard option: '{other}'")),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriveOpts {
    file: Option<PathBuf>,
    format: Option<String>,
    #[serde(rename = "if")]
    interface: Option<String>,
    id: Option<String>,
    cache: Option<String>,
    aio: Option<String>,
    readonly: Option<bool>,
    discard: Option<String>,
    serial: Option<String>,
    werror: Option<String>,
    rerror: Option<String>,
    #[serde(rename = "file.locking")]
    file_locking: Option<String>,
}

/// Parses `-drive`; `index` numbers anonymous drives (`virtio0`, ... as QEMU names them).
pub fn parse_drive(arg: &str, index: usize) -> Result<DriveSpec, String> {
    let o: DriveOpts = keyvalue::from_str(arg, Some("file")).map_err(err)?;
    let file = o
        .file
        .filter(|f| !f.as_os_str().is_empty())
        .ok_or("a drive needs file=PATH")?;
    match o.format.as_deref() {
        None | Some("raw") => {}
        Some(f) => {
            return Err(format!(
                "format '{f}' is not supported by Kestrel yet (raw only)"
            ))
        }
    }
    let auto_device = match o.interface.as_deref() {
        None | Some("virtio") => true,
        Some("none") => false,
        Some(other) => {
            return Err(format!(
                "interface '{other}' is not supported by Kestrel (use if=virtio or if=none)"
            ))
        }
    };
    let werror = error_action("werror", o.werror)?;
    let rerror = error_action("rerror", o.rerror)?;
    if rerror == ErrorAction::Enospc {
        return Err("'enospc' invalid rerror argument (reads never run out of space)".into());
    }
    Ok(DriveSpec {
        id: o.id.unwrap_or_else(|| format!("virtio{index}")),
        file,
        read_only: o.readonly.unwrap_or(false),
        cache: o
            .cache
            .as_deref()
            .map(cache_mode)
            .transpose()?
            .unwrap_or_default(),
        aio: o.aio.as_deref().map(aio).transpose()?.unwrap_or_default(),
        discard: discard(o.discard)?,
        serial: o.serial,
        werror,
        rerror,
        auto_device,
        locking: locking(o.file_locking)?,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNodeOpts {
    #[serde(rename = "node-name")]
    node_name: Option<String>,
    filename: Option<PathBuf>,
    #[serde(rename = "read-only")]
    read_only: Option<bool>,
    #[serde(rename = "cache.direct")]
    cache_direct: Option<bool>,
    #[serde(rename = "cache.no-flush")]
    cache_no_flush: Option<bool>,
    aio: Option<String>,
    discard: Option<String>,
    locking: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeOpts {
    #[serde(rename = "node-name")]
    node_name: Option<String>,
    file: Option<String>,
    #[serde(rename = "read-only")]
    read_only: Option<bool>,
    discard: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum BlockdevOpts {
    File(FileNodeOpts),
    Raw(RawNodeOpts),
}

/// A `-blockdev` node before the graph is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockNode {
    File {
        node_name: String,
        filename: PathBuf,
        read_only: bool,
        cache: CacheMode,
        aio: AioEngine,
        discard: bool,
        locking: FileLocking,
    },
    Raw {
        node_name: String,
        file: String,
        read_only: bool,
        discard: Option<bool>,
    },
}

pub fn parse_blockdev(arg: &str) -> Result<BlockNode, String> {
    let o: BlockdevOpts = keyvalue::from_str(arg, Some("driver")).map_err(|e| match e {
        KvError::UnknownVariant { value, .. } => {
            format!("block driver '{value}' is not supported by Kestrel (use file and raw)")
        }
        other => other.to_string(),
    })?;
    let need_name = |n: Option<String>| {
        n.filter(|s| !s.is_empty())
            .ok_or("Parameter 'node-name' is required by Kestrel")
    };
    Ok(match o {
        BlockdevOpts::File(f) => BlockNode::File {
            node_name: need_name(f.node_name)?.to_string(),
            filename: f
                .filename
                .filter(|p| !p.as_os_str().is_empty())
                .ok_or("Parameter 'filename' is missing")?,
            read_only: f.read_only.unwrap_or(false),
            cache: match (
                f.cache_direct.unwrap_or(false),
                f.cache_no_flush.unwrap_or(false),
            ) {
                (_, true) => CacheMode::Unsafe,
                (true, false) => CacheMode::None,
                (false, false) => CacheMode::Writeback,
            },
            aio: f.aio.as_deref().map(aio).transpose()?.unwrap_or_default(),
            discard: discard(f.discard)?,
            locking: locking(f.locking)?,
        },
        BlockdevOpts::Raw(r) => BlockNode::Raw {
            node_name: need_name(r.node_name)?.to_string(),
            file: r
                .file
                .filter(|s| !s.is_empty())
                .ok_or("Parameter 'file' is missing")?,
            read_only: r.read_only.unwrap_or(false),
            discard: r.discard.map(|d| discard(Some(d))).transpose()?,
        },
    })
}

/// The drive a device's `drive=` names among the `-blockdev` nodes: a raw node over a
/// file node, or a file node directly (QEMU accepts both).
pub fn resolve_node(nodes: &[BlockNode], name: &str) -> Result<Option<DriveSpec>, String> {
    let find_file = |n: &str| {
        nodes.iter().find_map(|b| match b {
            BlockNode::File {
                node_name,
                filename,
                read_only,
                cache,
                aio,
                discard,
                locking,
            } if node_name == n => Some((
                filename.clone(),
                *read_only,
                *cache,
                *aio,
                *discard,
                *locking,
            )),
            _ => None,
        })
    };
    for b in nodes {
        match b {
            BlockNode::Raw {
                node_name,
                file,
                read_only,
                discard,
            } if node_name == name => {
                let (filename, ro, cache, aio, d, lock) = find_file(file)
                    .ok_or_else(|| format!("Cannot find device='' nor node-name='{file}'"))?;
                let mut s = spec(
                    name,
                    filename,
                    *read_only || ro,
                    cache,
                    aio,
                    discard.unwrap_or(d),
                );
                s.locking = lock;
                return Ok(Some(s));
            }
            BlockNode::File { node_name, .. } if node_name == name => {
                let (filename, ro, cache, aio, d, lock) =
                    find_file(name).ok_or("internal: node vanished")?;
                let mut s = spec(name, filename, ro, cache, aio, d);
                s.locking = lock;
                return Ok(Some(s));
            }
            _ => {}
        }
    }
    Ok(None)
}

fn spec(
    name: &str,
    file: PathBuf,
    read_only: bool,
    cache: CacheMode,
    aio: AioEngine,
    discard: bool,
) -> DriveSpec {
    DriveSpec {
        id: name.to_string(),
        file,
        read_only,
        cache,
        aio,
        discard,
        serial: None,
        werror: ErrorAction::Enospc,
        rerror: ErrorAction::Report,
        auto_device: false,
        locking: FileLocking::Auto,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TapOpts {
    id: Option<String>,
    ifname: Option<String>,
    script: Option<String>,
    downscript: Option<String>,
    vhost: Option<bool>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
enum NetdevOpts {
    Tap(TapOpts),
}

pub fn parse_netdev(arg: &str) -> Result<NetdevSpec, String> {
    let o: NetdevOpts = keyvalue::from_str(arg, Some("type")).map_err(|e| match e {
        KvError::UnknownVariant { value, .. } => {
            format!("network backend '{value}' is not supported by Kestrel (use tap)")
        }
        other => other.to_string(),
    })?;
    let NetdevOpts::Tap(t) = o;
    for (k, v) in [("script", &t.script), ("downscript", &t.downscript)] {
        if let Some(v) = v {
            if v != "no" {
                return Err(format!("{k}={v}: Kestrel runs no network scripts; create the tap beforehand and give {k}=no"));
            }
        }
    }
    if t.vhost == Some(true) {
        return Err(
            "vhost=on is not supported by Kestrel: the virtio-net datapath is in the VMM".into(),
        );
    }
    Ok(NetdevSpec {
        id: t
            .id
            .filter(|i| !i.is_empty())
            .ok_or("Parameter 'id' is missing")?,
        ifname: t.ifname,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices() {
        assert_eq!(
            parse_device(
                "virtio-blk-pci,drive=d0,id=disk0,addr=0x4,serial=abc,num-queues=2,share-rw=on"
            )
            .unwrap(),
            DeviceSpec::VirtioBlk {
                id: Some("disk0".into()),
                addr: Some(PciAddr {
                    slot: 4,
                    function: 0
                }),
                drive: "d0".into(),
                serial: Some("abc".into()),
                num_queues: 2,
                share_rw: true,
            }
        );
        assert_eq!(
            parse_device("virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,addr=05.0").unwrap(),
            DeviceSpec::VirtioNet {
                id: None,
                addr: Some(PciAddr {
                    slot: 5,
                    function: 0
                }),
                netdev: "n0".into(),
                mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
            }
        );
        assert!(matches!(
            parse_device("virtio-serial-pci").unwrap(),
            DeviceSpec::VirtioSerial { max_ports: 31, .. }
        ));
        assert!(matches!(
            parse_device("virtconsole,chardev=c0,name=org.test.0").unwrap(),
            DeviceSpec::VirtioSerialPort { console: true, .. }
        ));
        assert!(matches!(
            parse_device("virtserialport,chardev=c0,bus=virtio-serial0.0").unwrap(),
            DeviceSpec::VirtioSerialPort { console: false, .. }
        ));
    }

    #[test]
    fn device_errors() {
        assert!(parse_device("virtio-blk-pci")
            .unwrap_err()
            .contains("drive"));
        assert!(parse_device("virtio-blk-pci,drive=d,num-queues=0")
            .unwrap_err()
            .contains("num-queues"));
        assert!(parse_device("virtio-blk-pci,drive=d,bogus=1")
            .unwrap_err()
            .contains("bogus"));
        assert!(
            parse_device("virtio-net-pci,netdev=n,mac=01:00:00:00:00:00")
                .unwrap_err()
                .contains("multicast")
        );
        assert!(parse_device("virtio-net-pci,netdev=n,mac=zz")
            .unwrap_err()
            .contains("mac"));
        assert!(parse_device("virtio-blk-pci,drive=d,addr=0x20")
            .unwrap_err()
            .contains("addr"));
        assert!(parse_device("virtio-blk-pci,drive=d,addr=3.8")
            .unwrap_err()
            .contains("addr"));
        assert!(parse_device("frobnicator")
            .unwrap_err()
            .contains("not a valid device"));
        assert!(parse_device("nvme")
            .unwrap_err()
            .contains("not supported by Kestrel yet"));
        assert!(parse_device("virtio-balloon-pci,deflate-on-oom=maybe")
            .unwrap_err()
            .contains("deflate-on-oom"));
        assert!(parse_device("i6300esb,bogus=1")
            .unwrap_err()
            .contains("bogus"));
        assert!(parse_device("virtconsole,chardev=c,bus=pci.0")
            .unwrap_err()
            .contains("Bus"));
    }

    #[test]
    fn platform_devices() {
        assert_eq!(
            parse_device("i6300esb,id=w,addr=5").unwrap(),
            DeviceSpec::I6300esb {
                id: Some("w".into()),
                addr: Some(PciAddr {
                    slot: 5,
                    function: 0
                }),
            }
        );
        assert_eq!(
            parse_device("pvpanic-pci").unwrap(),
            DeviceSpec::PvpanicPci {
                id: None,
                addr: None
            }
        );
        for d in ["virtio-balloon-pci", "virtio-balloon"] {
            assert_eq!(
                parse_device(&format!(
                    "{d},id=b,deflate-on-oom=on,free-page-reporting=on"
                ))
                .unwrap(),
                DeviceSpec::VirtioBalloon {
                    id: Some("b".into()),
                    addr: None,
                    deflate_on_oom: true,
                    free_page_reporting: true,
                }
            );
        }
        assert_eq!(
            parse_device("virtio-balloon-pci").unwrap(),
            DeviceSpec::VirtioBalloon {
                id: None,
                addr: None,
                deflate_on_oom: false,
                free_page_reporting: false,
            }
        );
    }

    #[test]
    fn drives() {
        let d = parse_drive("file=/tmp/d.img,format=raw,if=none,id=d0,cache=none,aio=threads,readonly=on,discard=unmap,serial=S1,werror=stop,rerror=ignore,file.locking=off", 0).unwrap();
        assert_eq!(
            d,
            DriveSpec {
                id: "d0".into(),
                file: "/tmp/d.img".into(),
                read_only: true,
                cache: CacheMode::None,
                aio: AioEngine::Threads,
                discard: true,
                serial: Some("S1".into()),
                werror: ErrorAction::Stop,
                rerror: ErrorAction::Ignore,
                auto_device: false,
                locking: FileLocking::Off,
            }
        );
        assert_eq!(
            parse_drive("file=/x,file.locking=on", 0).unwrap().locking,
            FileLocking::On
        );
        assert_eq!(parse_drive("/x", 0).unwrap().locking, FileLocking::Auto);
        assert!(parse_drive("file=/x,file.locking=maybe", 0)
            .unwrap_err()
            .contains("locking"));
        let d = parse_drive("/tmp/x.img", 3).unwrap();
        assert_eq!(
            (d.id.as_str(), d.auto_device, d.cache, d.aio),
            ("virtio3", true, CacheMode::Writeback, AioEngine::IoUring)
        );
        assert!(parse_drive("file=/x,format=qcow2", 0)
            .unwrap_err()
            .contains("qcow2"));
        assert!(parse_drive("file=/x,if=ide", 0)
            .unwrap_err()
            .contains("ide"));
        assert!(parse_drive("file=/x,cache=bogus", 0)
            .unwrap_err()
            .contains("cache"));
        assert!(parse_drive("file=/x,aio=native", 0)
            .unwrap_err()
            .contains("native"));
        assert!(parse_drive("file=/x,werror=bogus", 0)
            .unwrap_err()
            .contains("werror"));
        assert!(parse_drive("file=/x,rerror=enospc", 0)
            .unwrap_err()
            .contains("rerror"));
        assert!(parse_drive("format=raw", 0).unwrap_err().contains("file"));
    }

    #[test]
    fn blockdev_graph() {
        let nodes = vec![
            parse_blockdev(
                "driver=file,filename=/tmp/b.img,node-name=f0,cache.direct=on,aio=io_uring,locking=off",
            )
            .unwrap(),
            parse_blockdev("driver=raw,file=f0,node-name=r0,read-only=on").unwrap(),
        ];
        let d = resolve_node(&nodes, "r0").unwrap().unwrap();
        assert_eq!(
            (d.file.to_str().unwrap(), d.read_only, d.cache, d.locking),
            ("/tmp/b.img", true, CacheMode::None, FileLocking::Off)
        );
        let d = resolve_node(&nodes, "f0").unwrap().unwrap();
        assert!(!d.read_only);
        assert_eq!(resolve_node(&nodes, "nope").unwrap(), None);
        let dangling = vec![parse_blockdev("driver=raw,file=missing,node-name=r").unwrap()];
        assert!(resolve_node(&dangling, "r")
            .unwrap_err()
            .contains("missing"));
        assert!(parse_blockdev("driver=qcow2,node-name=q")
            .unwrap_err()
            .contains("qcow2"));
        assert!(parse_blockdev("driver=file,filename=/x")
            .unwrap_err()
            .contains("node-name"));
    }

    #[test]
    fn netdevs() {
        assert_eq!(
            parse_netdev("tap,id=n0,ifname=ktap0,script=no,downscript=no,vhost=off").unwrap(),
            NetdevSpec {
                id: "n0".into(),
                ifname: Some("ktap0".into())
            }
        );
        assert!(parse_netdev("tap,id=n0,script=/etc/qemu-ifup")
            .unwrap_err()
            .contains("script"));
        assert!(parse_netdev("tap,id=n0,vhost=on")
            .unwrap_err()
            .contains("vhost"));
        assert!(parse_netdev("user,id=n0").unwrap_err().contains("user"));
        assert!(parse_netdev("tap").unwrap_err().contains("id"));
    }
}
