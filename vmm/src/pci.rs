//! The machine's PCI devices: the root bus on the port and MMIO buses, and each virtio
//! device built from its `-device` and backend, plugged into KVM: MSI-X vectors as GSI
//! routes with irqfds (`irq::Routing`), INTx as a resampled level irqfd, and every queue
//! doorbell as an ioeventfd served by this boot's I/O thread. BARs are placed by us, as
//! firmware would, and re-plugged wherever the guest moves them.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use arch::layout;
use devices::pci::i6300esb::I6300Esb;
use devices::pci::{
    BarAllocator, BarKind, BarRemap, BarRemapHandler, MsiMessage, MsiTrigger, PciAddress,
    PciBarRegion, PciBus, PciConfigIo, PciConfigMmio, SharedPciDevice,
};
use devices::virtio::balloon::{system_wall_clock, BalloonConfig, VirtioBalloon};
use devices::virtio::block::{VirtioBlock, VirtioBlockConfig};
use devices::virtio::console::{ConsoleConfig, ConsoleEvents, PortConfig, VirtioConsole};
use devices::virtio::net::{NetConfig, NetEvents, VirtioNet};
use devices::virtio::pci::VirtioPciDevice;
use devices::virtio::{ActivateError, DeviceError, VirtioDevice, VirtioInterrupt};
use devices::GuestMemoryMmap;
use devices::{Bus, Interrupt};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::chardev::Chardev;
use crate::cmdline::devices::{DeviceSpec, DriveSpec, NetdevSpec};
use crate::io_thread::{IoDevice, QueueKick, SharedIoDevice, StaticFd};
use crate::irq::{MsiVector, Routing};
use crate::vm_events::VmEvent;
use crate::{ControlEvent, ControlSender};

/// A model shared between its transport and the machine: the transport drives it as a
/// `VirtioDevice`, QMP reaches it directly (stats, link state, filters, held requests).
/// Lock order: transport, then model.
struct Shared<T>(Arc<Mutex<T>>);

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<T: VirtioDevice> VirtioDevice for Shared<T> {
    fn device_type(&self) -> u32 {
        lock(&self.0).device_type()
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        lock(&self.0).queue_max_sizes()
    }
    fn features(&self) -> u64 {
        lock(&self.0).features()
    }
    fn ack_features(&mut self, f: u64) {
        lock(&self.0).ack_features(f)
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        lock(&self.0).read_config(offset, data)
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        lock(&self.0).write_config(offset, data)
    }
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        lock(&self.0).activate(mem, interrupt, queues)
    }
    fn reset(&mut self) {
        lock(&self.0).reset()
    }
    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        lock(&self.0).process_queue(index)
    }
    fn event_fds(&self) -> Vec<(RawFd, u32)> {
        lock(&self.0).event_fds()
    }
    fn process_event(&mut self, token: u32) -> Result<(), DeviceError> {
        lock(&self.0).process_event(token)
    }
    fn queue_positions(&self) -> Vec<(u16, u16)> {
        lock(&self.0).queue_positions()
    }
    fn save_state(&self) -> Result<devices::virtio::VirtioDeviceState, String> {
        lock(&self.0).save_state()
    }
    fn restore_state(&mut self, state: &devices::virtio::VirtioDeviceState) -> Result<(), String> {
        lock(&self.0).restore_state(state)
    }
}

/// The I/O thread's view of a virtio-pci function.
impl IoDevice for VirtioPciDevice {
    fn process_queue(&mut self, queue: usize) {
        VirtioPciDevice::process_queue(self, queue as u16)
    }
    fn event_fds(&self) -> Vec<(RawFd, u32)> {
        VirtioPciDevice::event_fds(self)
    }
    fn process_event(&mut self, token: u32) {
        if token == RESAMPLE_TOKEN {
            self.resample_intx();
        } else {
            VirtioPciDevice::process_event(self, token)
        }
    }
}

/// Token of a device's INTx resample fd (device tokens are small numbers).
const RESAMPLE_TOKEN: u32 = u32::MAX;

/// MSI-X of one function: a GSI and irqfd per vector.
struct KvmMsi {
    routing: Arc<Routing>,
    vectors: Vec<MsiVector>,
}

impl MsiTrigger for KvmMsi {
    fn update_vector(&self, index: u16, msg: MsiMessage, masked: bool) {
        if let Some(v) = self.vectors.get(usize::from(index)) {
            if let Err(e) = self.routing.update(v.gsi, msg.addr, msg.data, masked) {
                eprintln!("kestrel: MSI route for GSI {}: {e}", v.gsi);
            }
        }
    }

    fn trigger(&self, index: u16) -> std::io::Result<()> {
        match self.vectors.get(usize::from(index)) {
            Some(v) => v.irqfd.write(1),
            None => Ok(()),
        }
    }
}

/// A level-triggered INTx line: an irqfd KVM deasserts on EOI, telling us through the
/// resample fd so the device can re-assert if its ISR is still set.
struct IntxLine(EventFd);

impl Interrupt for IntxLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// A function's queue doorbell eventfds, and the addresses they are registered at now.
type Doorbells = (Vec<EventFd>, Vec<u64>);

/// Plugs BARs into the buses, and queue doorbells into KVM, wherever they decode.
///
/// It holds the buses weakly: the port bus holds the configuration mechanism, which
/// holds the PCI bus, which holds this handler, so strong references would make a cycle
/// and keep every device (and its open image) alive after the boot is dropped.
struct BarPlumbing {
    vm: Arc<VmFd>,
    pio: std::sync::Weak<Bus>,
    mmio: std::sync::Weak<Bus>,
    /// Per function (by PCI address): the doorbell eventfds and where they are registered.
    kicks: Mutex<HashMap<u8, Doorbells>>,
}

impl BarRemapHandler for BarPlumbing {
    fn bar_remapped(&self, r: &BarRemap, device: &SharedPciDevice) {
        let bus = if r.kind == BarKind::Io {
            &self.pio
        } else {
            &self.mmio
        };
        // Gone only while the boot is being dropped: nothing left to plug into.
        let Some(bus) = bus.upgrade() else {
            return;
        };
        let mut kicks = lock(&self.kicks);
        let entry = kicks.get_mut(&r.address.devfn());
        if let Some(old) = r.old {
            bus.remove(old);
            if let Some((fds, at)) = entry {
                for (i, addr) in at.drain(..).enumerate() {
                    if let Some(fd) = fds.get(i) {
                        let _ = self.vm.unregister_ioevent(
                            fd,
                            &IoEventAddress::Mmio(addr),
                            NoDatamatch,
                        );
                    }
                }
            }
        }
        if let Some(new) = r.new {
            if let Err(e) = bus.insert(PciBarRegion::shared(device.clone(), r.bar), new, r.size) {
                eprintln!(
                    "kestrel: PCI {:02x}.{}: BAR {} at {new:#x}: {e}",
                    r.address.device, r.address.function, r.bar
                );
                return;
            }
            if let Some((fds, at)) = kicks.get_mut(&r.address.devfn()) {
                for (addr, q) in lock(device).notify_addresses() {
                    if let Some(fd) = fds.get(usize::from(q)) {
                        match self
                            .vm
                            .register_ioevent(fd, &IoEventAddress::Mmio(addr), NoDatamatch)
                        {
                            Ok(()) => at.push(addr),
                            Err(e) => eprintln!("kestrel: ioeventfd at {addr:#x}: {e}"),
                        }
                    }
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    #[error("{0}")]
    Msg(String),
}

fn err(e: impl std::fmt::Display) -> PciSetupError {
    PciSetupError::Msg(e.to_string())
}

/// What QMP needs to know about each device.
pub enum Attached {
    Block {
        qdev_id: String,
        drive: DriveSpec,
        model: Arc<Mutex<VirtioBlock>>,
    },
    Net {
        qdev_id: String,
        model: Arc<Mutex<VirtioNet>>,
    },
    /// virtio-serial: its ports report through VSERPORT_CHANGE.
    Console,
    /// virtio-balloon: `balloon`, `query-balloon`, its statistics through QOM.
    Balloon { model: Arc<Mutex<VirtioBalloon>> },
}

/// A function whose state migration carries, by kind of state.
pub enum Migratable {
    Virtio(Arc<Mutex<VirtioPciDevice>>),
    Watchdog(Arc<Mutex<I6300Esb>>),
    /// A function with no state but its configuration space (pvpanic-pci).
    Plain(SharedPciDevice),
}

/// The PCI side of one boot.
pub struct PciDevices {
    pub bus: Arc<PciBus>,
    pub attached: Vec<Attached>,
    pub watchdog: Option<Arc<Mutex<I6300Esb>>>,
    /// Every function with its address and qdev id (or type), in bus order of creation.
    pub migratable: Vec<(PciAddress, String, Migratable)>,
    plumbing: Arc<BarPlumbing>,
    // Dropped last: stops the I/O thread before the devices' fds go.
    io: crate::io_thread::IoThread,
}

impl PciDevices {
    /// Holds the I/O thread between two events (migration saves the devices' state).
    pub fn pause_io(&self) -> Result<(), String> {
        self.io.pause()
    }

    pub fn resume_io(&self) {
        self.io.resume()
    }

    /// Kicks every queue of the function at `addr` once, as its driver would: a device
    /// restored by migration serves what its rings hold and starts watching its host
    /// fds without waiting for the guest's next kick.
    pub fn kick_all(&self, addr: PciAddress) {
        if let Some((fds, _)) = lock(&self.plumbing.kicks).get(&addr.devfn()) {
            for fd in fds {
                let _ = fd.write(1);
            }
        }
    }
}

struct NetNotify {
    tx: ControlSender,
    generation: u64,
    name: String,
    path: String,
}

impl NetEvents for NetNotify {
    fn rx_filter_changed(&self) {
        let _ = self.tx.send(ControlEvent::Vm {
            generation: self.generation,
            event: VmEvent::NicRxFilterChanged {
                name: self.name.clone(),
                path: self.path.clone(),
            },
        });
    }
}

struct PortNotify {
    tx: ControlSender,
    generation: u64,
    /// Port number -> the port's qdev id.
    ids: Vec<(u32, String)>,
}

impl ConsoleEvents for PortNotify {
    fn port_open_changed(&self, port: u32, open: bool) {
        if let Some((_, id)) = self.ids.iter().find(|(n, _)| *n == port) {
            let _ = self.tx.send(ControlEvent::Vm {
                generation: self.generation,
                event: VmEvent::VserportChange {
                    id: id.clone(),
                    open,
                },
            });
        }
    }
}

impl PciContext<'_> {
    /// Device reports of this boot, for the event loop.
    fn boot_events(&self) -> crate::vm_events::BootEvents {
        crate::vm_events::BootEvents {
            tx: self.events.clone(),
            generation: self.generation,
        }
    }
}

/// Everything `build` needs from the machine.
pub struct PciContext<'a> {
    pub vm: Arc<VmFd>,
    pub mem: &'a GuestMemoryMmap,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub events: ControlSender,
    pub generation: u64,
    /// Opened chardevs by id (for virtio-serial ports).
    pub chardevs: &'a HashMap<String, Arc<Chardev>>,
    /// The boot's guest clock and timers (watchdog, balloon statistics).
    pub timers: &'a mut crate::timers::Timers,
    /// The previous boot ended because the watchdog fired: its TIMEOUT flag survives
    /// the reset, so the guest's driver can tell.
    pub watchdog_timed_out: bool,
}

type SerialPortSpec = (Option<String>, String, Option<String>, bool);
type PendingSerial = (
    Option<String>,
    Option<crate::cmdline::devices::PciAddr>,
    u32,
);

/// Builds the devices one by one, keeping what the I/O thread will need.
struct Builder<'a> {
    ctx: PciContext<'a>,
    routing: Arc<Routing>,
    bus: Arc<PciBus>,
    plumbing: Arc<BarPlumbing>,
    bars: BarAllocator,
    io_devices: Vec<SharedIoDevice>,
    kicks: Vec<QueueKick>,
    statics: Vec<StaticFd>,
    attached: Vec<Attached>,
    /// virtio-serial ports belong to the virtio-serial device before them.
    pending_serial: Option<PendingSerial>,
    serial_ports: Vec<SerialPortSpec>,
    watchdog: Option<Arc<Mutex<I6300Esb>>>,
    migratable: Vec<(PciAddress, String, Migratable)>,
}

/// A function's name in the migration stream: its qdev id, or its kind and slot.
fn label(qdev_id: &str, kind: &str) -> String {
    if qdev_id.is_empty() {
        kind.to_string()
    } else {
        qdev_id.to_string()
    }
}

impl Builder<'_> {
    /// The `addr=` asked for, or the first free slot.
    fn address(
        &self,
        want: Option<crate::cmdline::devices::PciAddr>,
    ) -> Result<PciAddress, PciSetupError> {
        match want {
            Some(a) => PciAddress::new(0, a.slot, a.function).map_err(err),
            None => self.bus.free_slot().ok_or_else(|| err("no free PCI slot")),
        }
    }

    /// Puts a virtio model on the bus: transport, MSI-X vectors, INTx line, BARs,
    /// doorbell eventfds.
    fn place(
        &mut self,
        model: Box<dyn VirtioDevice>,
        want: Option<crate::cmdline::devices::PciAddr>,
        qdev_id: &str,
    ) -> Result<PciAddress, PciSetupError> {
        let addr = self.address(want)?;
        let queues = model.queue_max_sizes().len();
        let vectors = (0..=queues)
            .map(|_| self.routing.allocate())
            .collect::<Result<Vec<_>, _>>()
            .map_err(err)?;
        let msi = Arc::new(KvmMsi {
            routing: self.routing.clone(),
            vectors,
        });
        let gsi = addr
            .intx_gsi(1)
            .ok_or_else(|| err("no INTx line for the slot"))?;
        let intx = EventFd::new(libc::EFD_NONBLOCK).map_err(err)?;
        let resample = EventFd::new(libc::EFD_NONBLOCK).map_err(err)?;
        self.ctx
            .vm
            .register_irqfd_with_resample(&intx, &resample, gsi)
            .map_err(err)?;
        let dev = VirtioPciDevice::new(
            model,
            self.ctx.mem.clone(),
            msi,
            Some(Arc::new(IntxLine(intx))),
        )
        .map_err(err)?;
        let dev = Arc::new(Mutex::new(dev));
        self.bars.assign(&mut *lock(&dev)).map_err(err)?;
        let index = self.io_devices.len();
        let mut fds = Vec::new();
        for q in 0..queues {
            let e = EventFd::new(libc::EFD_NONBLOCK).map_err(err)?;
            self.kicks.push(QueueKick {
                eventfd: e.try_clone().map_err(err)?,
                device: index,
                queue: q,
            });
            fds.push(e);
        }
        self.statics.push(StaticFd {
            fd: resample.as_raw_fd(),
            device: index,
            token: RESAMPLE_TOKEN,
            owner: Some(resample),
        });
        lock(&self.plumbing.kicks).insert(addr.devfn(), (fds, Vec::new()));
        let shared: SharedPciDevice = dev.clone();
        self.bus
            .add_device(addr, shared, qdev_id.to_string())
            .map_err(err)?;
        self.io_devices.push(dev.clone());
        self.migratable
            .push((addr, label(qdev_id, "virtio"), Migratable::Virtio(dev)));
        Ok(addr)
    }

    /// Puts a plain PCI function (no virtio, no interrupt) on the bus and places its BARs.
    fn place_plain(
        &mut self,
        dev: Arc<Mutex<dyn devices::pci::PciDevice>>,
        want: Option<crate::cmdline::devices::PciAddr>,
        qdev_id: &str,
    ) -> Result<PciAddress, PciSetupError> {
        let addr = self.address(want)?;
        self.bars.assign(&mut *lock(&dev)).map_err(err)?;
        self.bus
            .add_device(addr, dev.clone(), qdev_id.to_string())
            .map_err(err)?;
        self.migratable
            .push((addr, label(qdev_id, "pci"), Migratable::Plain(dev)));
        Ok(addr)
    }

    /// Builds the pending virtio-serial device with the ports given after it.
    fn flush_serial(&mut self) -> Result<(), PciSetupError> {
        let Some((id, want, max_ports)) = self.pending_serial.take() else {
            return Ok(());
        };
        let mut configs = Vec::new();
        let mut inputs = Vec::new();
        for (pid, chardev, name, console) in std::mem::take(&mut self.serial_ports) {
            let cd = self
                .ctx
                .chardevs
                .get(&chardev)
                .ok_or_else(|| err(format!("chardev '{chardev}' not found")))?
                .clone();
            let out = cd.writer();
            configs.push(if console {
                PortConfig::console(out)
            } else {
                PortConfig::serial(name, out)
            });
            inputs.push((pid.unwrap_or_else(|| chardev.clone()), cd));
        }
        let cfg = ConsoleConfig {
            max_ports,
            ..ConsoleConfig::default()
        };
        // Port numbers follow QEMU's rule (a console at 0, others from 1); the model
        // assigns them, so the id of each is filled in once it exists.
        let ids = Arc::new(Mutex::new(Vec::new()));
        let events = Arc::new(DeferredPortNotify {
            tx: self.ctx.events.clone(),
            generation: self.ctx.generation,
            ids: ids.clone(),
        });
        let console = VirtioConsole::new(cfg, configs, events).map_err(err)?;
        let numbers = console.ports();
        let model = Arc::new(Mutex::new(console));
        for ((pid, cd), nr) in inputs.into_iter().zip(numbers) {
            lock(&ids).push((nr, pid));
            let m = model.clone();
            cd.set_input(Arc::new(move |bytes: &[u8]| {
                // The port holds up to 64 KiB until the guest reads; past that, wait
                // (this is the chardev's reader thread), giving up after ten seconds.
                let mut rest = bytes;
                for _ in 0..2000 {
                    let n = lock(&m).push_input(nr, rest).unwrap_or(0);
                    rest = &rest[n..];
                    if rest.is_empty() {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }));
            let _ = lock(&model).set_host_connected(nr, true);
        }
        let qdev_id = id.unwrap_or_default();
        self.place(Box::new(Shared(model)), want, &qdev_id)?;
        self.attached.push(Attached::Console);
        Ok(())
    }

    fn block(
        &mut self,
        id: &Option<String>,
        addr: Option<crate::cmdline::devices::PciAddr>,
        d: &DriveSpec,
        serial: &Option<String>,
        num_queues: u16,
        share_rw: bool,
    ) -> Result<(), PciSetupError> {
        use crate::cmdline::devices::{AioEngine, CacheMode};
        let mut dc = block::DiskConfig::new(&d.file);
        dc.read_only = d.read_only;
        dc.cache = match d.cache {
            CacheMode::Writeback => block::CacheMode::Writeback,
            CacheMode::None => block::CacheMode::None,
            CacheMode::Writethrough => block::CacheMode::Writethrough,
            CacheMode::Unsafe => block::CacheMode::Unsafe,
        };
        dc.discard = if d.discard {
            block::DiscardMode::Unmap
        } else {
            block::DiscardMode::Ignore
        };
        dc.aio = match d.aio {
            AioEngine::IoUring => block::AioMode::IoUring,
            AioEngine::Threads => block::AioMode::Threads,
        };
        dc.serial = serial.clone().or_else(|| d.serial.clone());
        dc.share_rw = share_rw;
        // The machine holds the image's locks for the drive's lifetime (`lock_drives`).
        dc.locking = block::Locking::Off;
        let image =
            block::RawImage::open(&dc).map_err(|e| err(format!("drive '{}': {e}", d.id)))?;
        let qdev_id = id.clone().unwrap_or_default();
        let mut bc = VirtioBlockConfig::new(if qdev_id.is_empty() {
            d.id.clone()
        } else {
            qdev_id.clone()
        });
        bc.num_queues = num_queues;
        bc.werror = policy(d.werror);
        bc.rerror = policy(d.rerror);
        let mut blk = VirtioBlock::new(image, bc).map_err(err)?;
        blk.set_error_handler(Arc::new(self.ctx.boot_events()));
        let model = Arc::new(Mutex::new(blk));
        self.place(Box::new(Shared(model.clone())), addr, &qdev_id)?;
        self.attached.push(Attached::Block {
            qdev_id,
            drive: d.clone(),
            model,
        });
        Ok(())
    }

    fn net(
        &mut self,
        id: &Option<String>,
        addr: Option<crate::cmdline::devices::PciAddr>,
        n: &NetdevSpec,
        mac: Option<[u8; 6]>,
    ) -> Result<(), PciSetupError> {
        let tap = net::Tap::open(n.ifname.as_deref().unwrap_or(""))
            .map_err(|e| err(format!("netdev '{}': {e}", n.id)))?;
        let qdev_id = id.clone().unwrap_or_default();
        let nics = self
            .attached
            .iter()
            .filter(|a| matches!(a, Attached::Net { .. }))
            .count();
        let name = if qdev_id.is_empty() {
            format!("net{nics}")
        } else {
            qdev_id.clone()
        };
        // QEMU's default MACs: 52:54:00:12:34:56, then :57 and so on.
        let mac = mac.unwrap_or([
            0x52,
            0x54,
            0x00,
            0x12,
            0x34,
            0x56u8.wrapping_add(nics as u8),
        ]);
        let path = format!("/machine/peripheral/{name}/virtio-backend");
        let events = Arc::new(NetNotify {
            tx: self.ctx.events.clone(),
            generation: self.ctx.generation,
            name: name.clone(),
            path,
        });
        let model = Arc::new(Mutex::new(VirtioNet::new(
            Box::new(tap),
            NetConfig {
                name: name.clone(),
                mac,
            },
            events,
        )));
        self.place(Box::new(Shared(model.clone())), addr, &qdev_id)?;
        self.attached.push(Attached::Net {
            qdev_id: name,
            model,
        });
        Ok(())
    }
}

/// Builds the PCI bus and its devices, or nothing when there are none.
pub fn build(
    ctx: PciContext<'_>,
    specs: &[DeviceSpec],
    drives: &[DriveSpec],
    netdevs: &[NetdevSpec],
) -> Result<Option<PciDevices>, PciSetupError> {
    if !specs.iter().any(is_pci) {
        return Ok(None);
    }
    let routing = Arc::new(Routing::new(ctx.vm.clone()));
    let bus = Arc::new(PciBus::new());
    let plumbing = Arc::new(BarPlumbing {
        vm: ctx.vm.clone(),
        pio: Arc::downgrade(&ctx.pio),
        mmio: Arc::downgrade(&ctx.mmio),
        kicks: Mutex::new(HashMap::new()),
    });
    bus.set_remap_handler(plumbing.clone());
    ctx.pio
        .insert(
            Arc::new(Mutex::new(PciConfigIo::new(bus.clone()))),
            u64::from(layout::PCI_CONFIG_IO_PORT),
            layout::PCI_CONFIG_IO_LEN,
        )
        .map_err(err)?;
    ctx.mmio
        .insert(
            Arc::new(Mutex::new(PciConfigMmio::new(bus.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
        )
        .map_err(err)?;
    let bars = BarAllocator::new(
        layout::PCI_MMIO32_START..layout::PCI_MMIO32_END,
        layout::PCI_IO_START..layout::PCI_IO_END,
    );
    let mut b = Builder {
        ctx,
        routing,
        bus: bus.clone(),
        plumbing,
        bars,
        io_devices: Vec::new(),
        kicks: Vec::new(),
        statics: Vec::new(),
        attached: Vec::new(),
        pending_serial: None,
        serial_ports: Vec::new(),
        watchdog: None,
        migratable: Vec::new(),
    };
    for spec in specs {
        if !matches!(spec, DeviceSpec::VirtioSerialPort { .. }) {
            b.flush_serial()?;
        }
        match spec {
            DeviceSpec::VirtioBlk {
                id,
                addr,
                drive,
                serial,
                num_queues,
                share_rw,
            } => {
                let d = drives
                    .iter()
                    .find(|d| d.id == *drive)
                    .ok_or_else(|| err(format!("drive '{drive}' not found")))?;
                b.block(id, *addr, d, serial, *num_queues, *share_rw)?;
            }
            DeviceSpec::VirtioNet {
                id,
                addr,
                netdev,
                mac,
            } => {
                let n = netdevs
                    .iter()
                    .find(|n| n.id == *netdev)
                    .ok_or_else(|| err(format!("netdev '{netdev}' not found")))?;
                b.net(id, *addr, n, *mac)?;
            }
            DeviceSpec::VirtioSerial {
                id,
                addr,
                max_ports,
            } => {
                b.pending_serial = Some((id.clone(), *addr, *max_ports));
            }
            DeviceSpec::VirtioSerialPort {
                id,
                chardev,
                name,
                console,
            } => {
                b.serial_ports
                    .push((id.clone(), chardev.clone(), name.clone(), *console));
            }
            // ISA devices belong to the machine (vm.rs), not the PCI bus.
            DeviceSpec::Pvpanic { .. } => {}
            DeviceSpec::PvpanicPci { id, addr } => {
                let sink = Arc::new(b.ctx.boot_events());
                let dev = devices::legacy::pvpanic::PvpanicPci::new(sink).map_err(err)?;
                b.place_plain(
                    Arc::new(Mutex::new(dev)),
                    *addr,
                    id.as_deref().unwrap_or(""),
                )?;
            }
            DeviceSpec::I6300esb { id, addr } => {
                let (timer, tid) = b.ctx.timers.timer().map_err(err)?;
                let sink = Arc::new(b.ctx.boot_events());
                let mut dev = I6300Esb::new(b.ctx.timers.clock(), timer, sink).map_err(err)?;
                if b.ctx.watchdog_timed_out {
                    dev.set_timed_out();
                }
                let dev = Arc::new(Mutex::new(dev));
                let d = dev.clone();
                b.ctx
                    .timers
                    .set_callback(tid, move || lock(&d).timer_fired());
                b.place_plain(dev.clone(), *addr, id.as_deref().unwrap_or(""))?;
                if let Some(last) = b.migratable.last_mut() {
                    last.2 = Migratable::Watchdog(dev.clone());
                }
                b.watchdog = Some(dev);
            }
            DeviceSpec::VirtioBalloon {
                id,
                addr,
                deflate_on_oom,
                free_page_reporting,
            } => {
                let (timer, tid) = b.ctx.timers.timer().map_err(err)?;
                let events = Arc::new(b.ctx.boot_events());
                let model = Arc::new(Mutex::new(VirtioBalloon::new(
                    BalloonConfig {
                        deflate_on_oom: *deflate_on_oom,
                        free_page_reporting: *free_page_reporting,
                    },
                    events,
                    b.ctx.timers.clock(),
                    timer,
                    system_wall_clock(),
                )));
                let m = model.clone();
                b.ctx.timers.set_callback(tid, move || {
                    if let Err(e) = lock(&m).timer_fired() {
                        eprintln!("kestrel: balloon statistics: {e}");
                    }
                });
                let qdev_id = id.clone().unwrap_or_default();
                b.place(Box::new(Shared(model.clone())), *addr, &qdev_id)?;
                b.attached.push(Attached::Balloon { model });
            }
        }
    }
    b.flush_serial()?;
    let io = crate::io_thread::IoThread::spawn("io".into(), b.io_devices, b.kicks, b.statics)
        .map_err(err)?;
    Ok(Some(PciDevices {
        bus,
        attached: b.attached,
        watchdog: b.watchdog,
        migratable: b.migratable,
        plumbing: b.plumbing,
        io,
    }))
}

/// Takes QEMU's image locks for every disk, for the life of the machine (a reset
/// reopens the images but must never let go of them meanwhile): the files returned
/// hold the locks.
pub fn lock_drives(
    specs: &[DeviceSpec],
    drives: &[DriveSpec],
) -> Result<Vec<std::fs::File>, PciSetupError> {
    let mut held = Vec::new();
    for spec in specs {
        let DeviceSpec::VirtioBlk {
            drive, share_rw, ..
        } = spec
        else {
            continue;
        };
        let Some(d) = drives.iter().find(|d| d.id == *drive) else {
            continue;
        };
        let mode = match d.locking {
            crate::cmdline::devices::FileLocking::On => block::Locking::On,
            crate::cmdline::devices::FileLocking::Off => block::Locking::Off,
            crate::cmdline::devices::FileLocking::Auto => block::Locking::Auto,
        };
        let f = block::lock::lock_disk(&d.file, d.read_only, *share_rw, mode)
            .map_err(|e| err(format!("drive '{}': {e}", d.id)))?;
        held.extend(f);
    }
    Ok(held)
}

/// Whether a device sits on the PCI bus.
pub fn is_pci(d: &DeviceSpec) -> bool {
    !matches!(d, DeviceSpec::Pvpanic { .. })
}

/// Port-open notifications whose port numbers are known only once the model exists.
struct DeferredPortNotify {
    tx: ControlSender,
    generation: u64,
    ids: Arc<Mutex<Vec<(u32, String)>>>,
}

impl ConsoleEvents for DeferredPortNotify {
    fn port_open_changed(&self, port: u32, open: bool) {
        let ids = lock(&self.ids).clone();
        PortNotify {
            tx: self.tx.clone(),
            generation: self.generation,
            ids,
        }
        .port_open_changed(port, open)
    }
}

fn policy(a: crate::cmdline::devices::ErrorAction) -> devices::virtio::block::ErrorPolicy {
    use crate::cmdline::devices::ErrorAction as A;
    use devices::virtio::block::ErrorPolicy as P;
    match a {
        A::Report => P::Report,
        A::Ignore => P::Ignore,
        A::Stop => P::Stop,
        A::Enospc => P::Enospc,
    }
}
