//! QMP commands about the machine's devices and their backends: `query-pci`,
//! `query-block`, `query-blockstats`, `query-rx-filter`, `set_link`, `query-chardev`,
//! `query-chardev-backends`, and the device events in the schema. Each answers from the
//! live device models of the current boot.

use monitor::{CommandContext, Empty, ErrorClass, QmpError, Registry};

use crate::machine::Machine;
use crate::pci::Attached;

pub(crate) fn machine<'a>(ctx: &'a mut CommandContext<'_>) -> Result<&'a mut Machine, QmpError> {
    ctx.machine
        .as_any_mut()
        .downcast_mut::<Machine>()
        .ok_or_else(|| QmpError::generic("internal error: not Kestrel's machine"))
}

pub(crate) fn lock<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

monitor::qmp_struct! {
    /// `PciDeviceClass`.
    #[derive(Debug, Clone)]
    pub struct PciDeviceClass {
        pub desc: Option<String> = "desc",
        pub class: i64 = "class",
    }
}

monitor::qmp_struct! {
    /// `PciDeviceId`.
    #[derive(Debug, Clone)]
    pub struct PciDeviceId {
        pub device: i64 = "device",
        pub vendor: i64 = "vendor",
        pub subsystem: Option<i64> = "subsystem",
        pub subsystem_vendor: Option<i64> = "subsystem-vendor",
    }
}

monitor::qmp_struct! {
    /// `PciMemoryRegion`.
    #[derive(Debug, Clone)]
    pub struct PciMemoryRegion {
        pub bar: i64 = "bar",
        pub ty: String = "type",
        pub address: i64 = "address",
        pub size: i64 = "size",
        pub prefetch: Option<bool> = "prefetch",
        pub mem_type_64: Option<bool> = "mem_type_64",
    }
}

monitor::qmp_struct! {
    /// `PciDeviceInfo`.
    #[derive(Debug, Clone)]
    pub struct PciDeviceInfo {
        pub bus: i64 = "bus",
        pub slot: i64 = "slot",
        pub function: i64 = "function",
        pub class_info: PciDeviceClass = "class_info",
        pub id: PciDeviceId = "id",
        pub irq: Option<i64> = "irq",
        pub irq_pin: i64 = "irq_pin",
        pub qdev_id: String = "qdev_id",
        pub regions: Vec<PciMemoryRegion> = "regions",
    }
}

monitor::qmp_struct! {
    /// `PciInfo`.
    #[derive(Debug, Clone)]
    pub struct PciInfo {
        pub bus: i64 = "bus",
        pub devices: Vec<PciDeviceInfo> = "devices",
    }
}

fn class_desc(code: u16) -> Option<String> {
    Some(
        match code {
            0x0100 => "SCSI controller",
            0x0180 => "Storage controller",
            0x0200 => "Ethernet controller",
            0x0600 => "Host bridge",
            0x0780 => "Communication controller",
            0x00ff => "Unclassified device",
            _ => return None,
        }
        .to_string(),
    )
}

fn query_pci(m: &Machine) -> Vec<PciInfo> {
    let Some(pci) = m.current_vm().and_then(|v| v.pci()) else {
        return Vec::new();
    };
    let devices = pci
        .bus
        .info()
        .into_iter()
        .map(|d| PciDeviceInfo {
            bus: i64::from(d.bus),
            slot: i64::from(d.slot),
            function: i64::from(d.function),
            class_info: PciDeviceClass {
                desc: class_desc(d.class_code()),
                class: i64::from(d.class_code()),
            },
            id: PciDeviceId {
                device: i64::from(d.device_id),
                vendor: i64::from(d.vendor_id),
                subsystem: Some(i64::from(d.subsystem_id)),
                subsystem_vendor: Some(i64::from(d.subsystem_vendor_id)),
            },
            irq: d.irq.map(i64::from),
            irq_pin: i64::from(d.irq_pin),
            qdev_id: d.qdev_id.clone(),
            regions: d
                .bars
                .iter()
                .map(|b| {
                    let io = b.kind == devices::pci::BarKind::Io;
                    PciMemoryRegion {
                        bar: i64::from(b.index),
                        ty: if io { "io" } else { "memory" }.into(),
                        // QEMU shows an unmapped BAR at -1.
                        address: b.mapped.map(|a| a as i64).unwrap_or(-1),
                        size: b.size as i64,
                        prefetch: (!io).then_some(b.prefetchable),
                        mem_type_64: (!io).then_some(b.kind == devices::pci::BarKind::Memory64),
                    }
                })
                .collect(),
        })
        .collect();
    vec![PciInfo { bus: 0, devices }]
}

monitor::qmp_struct! {
    /// `ImageInfo` (the parts a raw image has).
    #[derive(Debug, Clone)]
    pub struct ImageInfo {
        pub filename: String = "filename",
        pub format: String = "format",
        pub virtual_size: i64 = "virtual-size",
        pub actual_size: Option<i64> = "actual-size",
    }
}

monitor::qmp_struct! {
    /// `BlockdevCacheInfo`.
    #[derive(Debug, Clone)]
    pub struct BlockdevCacheInfo {
        pub writeback: bool = "writeback",
        pub direct: bool = "direct",
        pub no_flush: bool = "no-flush",
    }
}

monitor::qmp_struct! {
    /// `BlockDeviceInfo` (throttling is not offered, so its limits are 0).
    #[derive(Debug, Clone)]
    pub struct BlockDeviceInfo {
        pub file: String = "file",
        pub node_name: Option<String> = "node-name",
        pub ro: bool = "ro",
        pub drv: String = "drv",
        pub backing_file_depth: i64 = "backing_file_depth",
        pub encrypted: bool = "encrypted",
        pub detect_zeroes: String = "detect_zeroes",
        pub bps: i64 = "bps",
        pub bps_rd: i64 = "bps_rd",
        pub bps_wr: i64 = "bps_wr",
        pub iops: i64 = "iops",
        pub iops_rd: i64 = "iops_rd",
        pub iops_wr: i64 = "iops_wr",
        pub image: ImageInfo = "image",
        pub cache: BlockdevCacheInfo = "cache",
        pub write_threshold: i64 = "write_threshold",
    }
}

monitor::qmp_struct! {
    /// `BlockInfo`.
    #[derive(Debug, Clone)]
    pub struct BlockInfo {
        pub device: String = "device",
        pub qdev: Option<String> = "qdev",
        pub ty: String = "type",
        pub removable: bool = "removable",
        pub locked: bool = "locked",
        pub io_status: Option<String> = "io-status",
        pub inserted: Option<BlockDeviceInfo> = "inserted",
    }
}

fn qdev_path(qdev_id: &str, i: usize) -> String {
    if qdev_id.is_empty() {
        format!("/machine/peripheral-anon/device[{i}]/virtio-backend")
    } else {
        format!("/machine/peripheral/{qdev_id}/virtio-backend")
    }
}

fn query_block(m: &Machine) -> Vec<BlockInfo> {
    let Some(pci) = m.current_vm().and_then(|v| v.pci()) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for (i, a) in pci.attached.iter().enumerate() {
        let Attached::Block {
            qdev_id,
            drive,
            model,
            ..
        } = a
        else {
            continue;
        };
        let blk = lock(model);
        let disk = blk.disk();
        let cache = disk.cache_mode();
        let actual = std::fs::metadata(disk.path()).ok().map(|md| {
            use std::os::unix::fs::MetadataExt;
            (md.blocks() * 512) as i64
        });
        v.push(BlockInfo {
            device: drive.id.clone(),
            qdev: Some(qdev_path(qdev_id, i)),
            ty: "unknown".into(),
            removable: false,
            locked: false,
            io_status: Some(
                if blk.held_requests() > 0 {
                    "failed"
                } else {
                    "ok"
                }
                .into(),
            ),
            inserted: Some(BlockDeviceInfo {
                file: disk.path().display().to_string(),
                node_name: Some(drive.id.clone()),
                ro: disk.read_only(),
                drv: "raw".into(),
                backing_file_depth: 0,
                encrypted: false,
                detect_zeroes: "off".into(),
                bps: 0,
                bps_rd: 0,
                bps_wr: 0,
                iops: 0,
                iops_rd: 0,
                iops_wr: 0,
                image: ImageInfo {
                    filename: disk.path().display().to_string(),
                    format: "raw".into(),
                    virtual_size: disk.size() as i64,
                    actual_size: actual,
                },
                cache: BlockdevCacheInfo {
                    writeback: !cache.dsync(),
                    direct: cache.direct(),
                    no_flush: cache.ignores_flush(),
                },
                write_threshold: 0,
            }),
        });
    }
    v
}

monitor::qmp_struct! {
    /// `BlockDeviceStats` (no zoned devices, merging or latency histograms here).
    #[derive(Debug, Clone, Default)]
    pub struct BlockDeviceStats {
        pub rd_bytes: u64 = "rd_bytes",
        pub wr_bytes: u64 = "wr_bytes",
        pub zone_append_bytes: u64 = "zone_append_bytes",
        pub unmap_bytes: u64 = "unmap_bytes",
        pub rd_operations: u64 = "rd_operations",
        pub wr_operations: u64 = "wr_operations",
        pub zone_append_operations: u64 = "zone_append_operations",
        pub flush_operations: u64 = "flush_operations",
        pub unmap_operations: u64 = "unmap_operations",
        pub rd_total_time_ns: u64 = "rd_total_time_ns",
        pub wr_total_time_ns: u64 = "wr_total_time_ns",
        pub zone_append_total_time_ns: u64 = "zone_append_total_time_ns",
        pub flush_total_time_ns: u64 = "flush_total_time_ns",
        pub unmap_total_time_ns: u64 = "unmap_total_time_ns",
        pub wr_highest_offset: u64 = "wr_highest_offset",
        pub rd_merged: u64 = "rd_merged",
        pub wr_merged: u64 = "wr_merged",
        pub zone_append_merged: u64 = "zone_append_merged",
        pub unmap_merged: u64 = "unmap_merged",
        pub idle_time_ns: Option<u64> = "idle_time_ns",
        pub failed_rd_operations: u64 = "failed_rd_operations",
        pub failed_wr_operations: u64 = "failed_wr_operations",
        pub failed_zone_append_operations: u64 = "failed_zone_append_operations",
        pub failed_flush_operations: u64 = "failed_flush_operations",
        pub failed_unmap_operations: u64 = "failed_unmap_operations",
        pub invalid_rd_operations: u64 = "invalid_rd_operations",
        pub invalid_wr_operations: u64 = "invalid_wr_operations",
        pub invalid_zone_append_operations: u64 = "invalid_zone_append_operations",
        pub invalid_flush_operations: u64 = "invalid_flush_operations",
        pub invalid_unmap_operations: u64 = "invalid_unmap_operations",
        pub account_invalid: bool = "account_invalid",
        pub account_failed: bool = "account_failed",
        pub timed_stats: Vec<monitor::Empty> = "timed_stats",
    }
}

monitor::qmp_struct! {
    /// `BlockStats`.
    #[derive(Debug, Clone)]
    pub struct BlockStats {
        pub device: Option<String> = "device",
        pub node_name: Option<String> = "node-name",
        pub qdev: Option<String> = "qdev",
        pub stats: BlockDeviceStats = "stats",
    }
}

monitor::qmp_struct! {
    /// Arguments of `query-blockstats`.
    #[derive(Debug, Clone)]
    pub struct BlockstatsArgs {
        pub query_nodes: Option<bool> = "query-nodes",
    }
}

fn query_blockstats(m: &Machine) -> Vec<BlockStats> {
    let Some(pci) = m.current_vm().and_then(|v| v.pci()) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for (i, a) in pci.attached.iter().enumerate() {
        let Attached::Block {
            qdev_id,
            drive,
            model,
            ..
        } = a
        else {
            continue;
        };
        let s = lock(model).stats().snapshot();
        v.push(BlockStats {
            device: Some(drive.id.clone()),
            node_name: Some(drive.id.clone()),
            qdev: Some(qdev_path(qdev_id, i)),
            stats: BlockDeviceStats {
                rd_bytes: s.rd_bytes,
                wr_bytes: s.wr_bytes,
                unmap_bytes: s.unmap_bytes,
                rd_operations: s.rd_operations,
                wr_operations: s.wr_operations,
                flush_operations: s.flush_operations,
                unmap_operations: s.unmap_operations,
                rd_total_time_ns: s.rd_total_time_ns,
                wr_total_time_ns: s.wr_total_time_ns,
                flush_total_time_ns: s.flush_total_time_ns,
                unmap_total_time_ns: s.unmap_total_time_ns,
                wr_highest_offset: s.wr_highest_offset,
                idle_time_ns: s.idle_time_ns(),
                failed_rd_operations: s.failed_rd_operations,
                failed_wr_operations: s.failed_wr_operations,
                failed_flush_operations: s.failed_flush_operations,
                failed_unmap_operations: s.failed_unmap_operations,
                invalid_rd_operations: s.invalid_rd_operations,
                invalid_wr_operations: s.invalid_wr_operations,
                invalid_flush_operations: s.invalid_flush_operations,
                invalid_unmap_operations: s.invalid_unmap_operations,
                account_invalid: true,
                account_failed: true,
                ..Default::default()
            },
        });
    }
    v
}

monitor::qmp_enum! {
    /// `RxState`.
    pub enum RxState {
        Normal = "normal",
        None = "none",
        All = "all",
    }
}

monitor::qmp_struct! {
    /// `RxFilterInfo`.
    #[derive(Debug, Clone)]
    pub struct RxFilterInfo {
        pub name: String = "name",
        pub promiscuous: bool = "promiscuous",
        pub multicast: RxState = "multicast",
        pub unicast: RxState = "unicast",
        pub vlan: RxState = "vlan",
        pub broadcast_allowed: bool = "broadcast-allowed",
        pub multicast_overflow: bool = "multicast-overflow",
        pub unicast_overflow: bool = "unicast-overflow",
        pub main_mac: String = "main-mac",
        pub vlan_table: Vec<i64> = "vlan-table",
        pub unicast_table: Vec<String> = "unicast-table",
        pub multicast_table: Vec<String> = "multicast-table",
    }
}

monitor::qmp_struct! {
    /// Arguments of `query-rx-filter`.
    #[derive(Debug, Clone)]
    pub struct RxFilterArgs {
        pub name: Option<String> = "name",
    }
}

fn rx_state(s: devices::virtio::net::RxState) -> RxState {
    match s {
        devices::virtio::net::RxState::Normal => RxState::Normal,
        devices::virtio::net::RxState::None => RxState::None,
        devices::virtio::net::RxState::All => RxState::All,
    }
}

fn query_rx_filter(m: &Machine, name: Option<&str>) -> Result<Vec<RxFilterInfo>, QmpError> {
    let nics: Vec<_> = m
        .current_vm()
        .and_then(|v| v.pci())
        .map(|p| {
            p.attached
                .iter()
                .filter_map(|a| match a {
                    Attached::Net { qdev_id, model, .. } => Some((qdev_id.clone(), model.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(n) = name {
        if !nics.iter().any(|(q, _)| q == n) {
            return Err(QmpError::generic(format!("net client({n}) isn't a NIC")));
        }
    }
    Ok(nics
        .into_iter()
        .filter(|(q, _)| name.is_none_or(|n| n == q))
        .map(|(_, model)| {
            let f = lock(&model).rx_filter();
            RxFilterInfo {
                name: f.name,
                promiscuous: f.promiscuous,
                multicast: rx_state(f.multicast),
                unicast: rx_state(f.unicast),
                vlan: rx_state(f.vlan),
                broadcast_allowed: f.broadcast_allowed,
                multicast_overflow: f.multicast_overflow,
                unicast_overflow: f.unicast_overflow,
                main_mac: f.main_mac,
                vlan_table: f.vlan_table.into_iter().map(i64::from).collect(),
                unicast_table: f.unicast_table,
                multicast_table: f.multicast_table,
            }
        })
        .collect())
}

monitor::qmp_struct! {
    /// Arguments of `set_link`.
    #[derive(Debug, Clone)]
    pub struct SetLinkArgs {
        pub name: String = "name",
        pub up: bool = "up",
    }
}

fn set_link(m: &Machine, name: &str, up: bool) -> Result<(), QmpError> {
    let model = m.current_vm().and_then(|v| v.pci()).and_then(|p| {
        p.attached.iter().find_map(|a| match a {
            Attached::Net { qdev_id, model, .. } if qdev_id == name => Some(model.clone()),
            _ => None,
        })
    });
    let Some(model) = model else {
        return Err(QmpError::new(
            ErrorClass::DeviceNotFound,
            format!("Device '{name}' not found"),
        ));
    };
    let r = lock(&model).set_link(up);
    r.map_err(|e| QmpError::generic(e.to_string()))
}

monitor::qmp_struct! {
    /// `ChardevInfo`.
    #[derive(Debug, Clone)]
    pub struct ChardevInfo {
        pub label: String = "label",
        pub filename: String = "filename",
        pub frontend_open: bool = "frontend-open",
    }
}

monitor::qmp_struct! {
    /// `ChardevBackendInfo`.
    #[derive(Debug, Clone)]
    pub struct ChardevBackendInfo {
        pub name: String = "name",
    }
}

/// Registers the device commands; `chardevs` is what `query-chardev` lists (labels and
/// QEMU-style filenames, fixed at startup).
/// Who has a chardev open, for `query-chardev`'s `frontend-open`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    /// A serial port or monitor: always.
    Open,
    /// A virtio-serial port (by its id in VSERPORT_CHANGE): while the guest has it open.
    Port(String),
    /// Nothing uses it.
    Unused,
}

/// One `query-chardev` entry.
#[derive(Debug, Clone)]
pub struct ChardevLabel {
    pub label: String,
    pub filename: String,
    pub frontend: Frontend,
}

pub fn register(r: &mut Registry, chardevs: Vec<ChardevLabel>) -> Result<(), monitor::Error> {
    r.register("query-pci", |ctx, _: Empty| Ok(query_pci(machine(ctx)?)))?;
    r.register("query-block", |ctx, _: Empty| {
        Ok(query_block(machine(ctx)?))
    })?;
    r.register("query-blockstats", |ctx, _: BlockstatsArgs| {
        Ok(query_blockstats(machine(ctx)?))
    })?;
    r.register("query-rx-filter", |ctx, a: RxFilterArgs| {
        query_rx_filter(machine(ctx)?, a.name.as_deref())
    })?;
    r.register("set_link", |ctx, a: SetLinkArgs| {
        set_link(machine(ctx)?, &a.name, a.up).map(|_| Empty {})
    })?;
    r.register("query-chardev", move |ctx, _: Empty| {
        let m = machine(ctx)?;
        Ok(chardevs
            .iter()
            .map(|c| ChardevInfo {
                label: c.label.clone(),
                filename: c.filename.clone(),
                frontend_open: match &c.frontend {
                    Frontend::Open => true,
                    Frontend::Port(id) => m.port_open(id),
                    Frontend::Unused => false,
                },
            })
            .collect::<Vec<_>>())
    })?;
    r.register("query-chardev-backends", |_, _: Empty| {
        Ok(["file", "null", "socket", "stdio"]
            .iter()
            .map(|n| ChardevBackendInfo {
                name: n.to_string(),
            })
            .collect::<Vec<_>>())
    })?;
    Ok(())
}

monitor::qmp_struct! {
    /// BLOCK_IO_ERROR's data.
    #[derive(Debug, Clone)]
    pub struct BlockIoErrorEvent {
        pub qom_path: String = "qom-path",
        pub device: String = "device",
        pub node_name: Option<String> = "node-name",
        pub operation: String = "operation",
        pub action: String = "action",
        pub nospace: Option<bool> = "nospace",
        pub reason: String = "reason",
    }
}

monitor::qmp_struct! {
    /// NIC_RX_FILTER_CHANGED's data.
    #[derive(Debug, Clone)]
    pub struct NicRxFilterChangedEvent {
        pub name: Option<String> = "name",
        pub path: String = "path",
    }
}

monitor::qmp_struct! {
    /// VSERPORT_CHANGE's data.
    #[derive(Debug, Clone)]
    pub struct VserportChangeEvent {
        pub id: String = "id",
        pub open: bool = "open",
    }
}

/// The device events, for `query-qmp-schema`.
pub fn register_events(r: &mut Registry) -> Result<(), monitor::Error> {
    use monitor::QmpType;
    r.register_event("BLOCK_IO_ERROR", BlockIoErrorEvent::schema)?;
    r.register_event("NIC_RX_FILTER_CHANGED", NicRxFilterChangedEvent::schema)?;
    r.register_event("VSERPORT_CHANGE", VserportChangeEvent::schema)?;
    Ok(())
}
