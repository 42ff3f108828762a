//! One boot of the guest: the KVM VM, its memory, buses, devices and vCPU threads,
//! built from the machine's configuration. A guest reset throws the whole `Vm` away and
//! builds a new one on the same chardev backends, so nothing of the old boot's device
//! or interrupt-controller state can leak into the next.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use arch::boot::{self, BootError};
use arch::cpuid::{self, CpuModel, CpuidConfig};
use arch::layout;
use arch::regs::{self, BootProtocol};
use devices::legacy::acpi_ged::{AcpiGed, ACPI_GED_EVENT_POWER_BUTTON};
use devices::legacy::acpi_pm::AcpiPmDevice;
use devices::legacy::i8042::I8042Device;
use devices::legacy::pvpanic::Pvpanic;
use devices::legacy::rtc::{CmosRtc, RtcConfig};
use devices::legacy::serial::SerialDevice;
use devices::GuestMemoryMmap;
use devices::{Bus, ExitRequests, Interrupt, SharedDevice};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::chardev::Chardev;
use crate::vcpu::{Vcpu, VcpuContext};
use crate::vm_events::BootEvents;
use crate::ControlSender;

/// What a boot needs to know, resolved from the command line.
#[derive(Clone, Debug)]
pub struct VmConfig {
    pub mem_size: u64,
    pub num_cpus: u8,
    pub threads_per_core: u8,
    pub cores_per_socket: u8,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub cpu_model: CpuModel,
    pub cpu_flags: Vec<(String, bool)>,
    /// `-name debug-threads=on`: name vCPU threads as QEMU does ("CPU 0/KVM").
    pub debug_thread_names: bool,
    /// PCI devices and the backends they use.
    pub devices: Vec<crate::cmdline::devices::DeviceSpec>,
    pub drives: Vec<crate::cmdline::devices::DriveSpec>,
    pub netdevs: Vec<crate::cmdline::devices::NetdevSpec>,
    /// `-rtc` (the clock itself is the machine's: it outlives boots).
    pub rtc: crate::cmdline::RtcOpts,
    /// What guest RAM is mapped from (opened once, mapped again by every boot).
    pub ram: Arc<crate::memory::RamBacking>,
}

/// What a new boot inherits: the machine's RTC clock, the previous boot's RTC state
/// (guest offset, NVRAM), which a reset keeps as a battery-backed RTC does, and the
/// watchdog's TIMEOUT flag, which survives a warm reset on the real chip.
pub struct RtcBoot {
    pub clock: Arc<dyn devices::legacy::rtc::Clock>,
    pub state: Option<devices::legacy::rtc::RtcState>,
    /// The watchdog's TIMEOUT flag at the end of the previous boot.
    pub watchdog_timed_out: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("failed to initialize kvm: {0}")]
    Kvm(kvm_ioctls::Error),
    #[error("KVM: {what}: {err}")]
    KvmOp {
        what: &'static str,
        err: kvm_ioctls::Error,
    },
    #[error("cannot allocate {size} bytes of guest memory: {err}")]
    Memory { size: u64, err: String },
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("{0}")]
    Cpuid(#[from] cpuid::CpuidError),
    #[error("{0}")]
    Regs(#[from] regs::RegsError),
    #[error("ACPI tables: {0}")]
    Acpi(#[from] arch::acpi::AcpiError),
    #[error("MP table: {0}")]
    Mptable(#[from] arch::mptable::MptableError),
    #[error("device setup: {0}")]
    Device(String),
    #[error("cannot start vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Pci(#[from] crate::pci::PciSetupError),
}

/// An ISA interrupt line backed by an irqfd: a trigger is one write, no exit to the VMM.
struct IrqFd(EventFd);

impl Interrupt for IrqFd {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

fn irqfd(vm: &VmFd, gsi: u32) -> Result<Arc<IrqFd>, VmError> {
    let e =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Device(format!("eventfd: {e}")))?;
    vm.register_irqfd(&e, gsi).map_err(|err| VmError::KvmOp {
        what: "registering an irqfd",
        err,
    })?;
    Ok(Arc::new(IrqFd(e)))
}

const SERIAL_PORTS: [(u16, u32); 4] = [
    (layout::COM1_PORT, layout::COM1_IRQ),
    (layout::COM2_PORT, layout::COM2_IRQ),
    (0x3e8, layout::COM1_IRQ),
    (0x2e8, layout::COM2_IRQ),
];

mod snapshot;
pub use snapshot::DeviceBlob;

pub struct Vm {
    // Field order is drop order: vCPU threads stop, then the I/O thread, before the VM fd
    // and memory go.
    vcpus: Vec<Vcpu>,
    timers: crate::timers::Timers,
    pci: Option<crate::pci::PciDevices>,
    vm_fd: Arc<VmFd>,
    mem: GuestMemoryMmap,
    _pio: Arc<Bus>,
    _mmio: Arc<Bus>,
    ged: Arc<Mutex<AcpiGed>>,
    rtc: Arc<Mutex<CmosRtc>>,
    serials: Vec<Arc<Mutex<SerialDevice>>>,
    i8042: Arc<Mutex<I8042Device>>,
    acpi_pm: Arc<Mutex<AcpiPmDevice>>,
}

impl Vm {
    /// Builds the VM and its vCPU threads, all parked.
    pub fn build(
        kvm: &Kvm,
        cfg: &VmConfig,
        serial_backends: &[Arc<Chardev>],
        chardevs: &std::collections::HashMap<String, Arc<Chardev>>,
        events: ControlSender,
        generation: u64,
        rtc_boot: RtcBoot,
    ) -> Result<Vm, VmError> {
        let kop = |what| move |err| VmError::KvmOp { what, err };
        let vm_fd = Arc::new(kvm.create_vm().map_err(VmError::Kvm)?);

        let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(cfg.mem_size)
            .into_iter()
            .map(|(a, l)| (GuestAddress(a), l as usize))
            .collect();
        let mem = cfg.ram.map(&ranges).map_err(|err| VmError::Memory {
            size: cfg.mem_size,
            err,
        })?;
        crate::dirty_log::register_slots(&vm_fd, &mem, false).map_err(|err| VmError::Memory {
            size: cfg.mem_size,
            err,
        })?;

        vm_fd
            .set_tss_address(0xfffb_d000)
            .map_err(kop("setting the TSS address"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kop("creating the in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd
            .create_pit2(pit)
            .map_err(kop("creating the in-kernel PIT"))?;

        // Firmware tables and the kernel.
        let kernel = boot::load_kernel(&mem, &cfg.kernel)?;
        boot::write_cmdline(&mem, &cfg.cmdline, boot::cmdline_max(&kernel))?;
        let initrd = match &cfg.initrd {
            Some(p) => Some(boot::load_initrd(
                &mem,
                p,
                kernel.kernel_end,
                boot::initrd_addr_max(&kernel),
            )?),
            None => None,
        };
        arch::mptable::setup_mptable(&mem, cfg.num_cpus)?;
        let mut acpi_cfg = arch::acpi::AcpiConfig::new(cfg.num_cpus);
        acpi_cfg.com1 = !serial_backends.is_empty();
        acpi_cfg.pci = cfg.devices.iter().any(crate::pci::is_pci);
        let pvpanic_port = cfg.devices.iter().find_map(|d| match d {
            crate::cmdline::devices::DeviceSpec::Pvpanic { ioport, .. } => Some(*ioport),
            _ => None,
        });
        acpi_cfg.pvpanic = pvpanic_port;
        let rsdp = arch::acpi::create_acpi_tables(&mem, &acpi_cfg)?;
        let e820 = boot::e820_map(&mem);
        regs::write_boot_structures(&mem, kernel.protocol)?;
        let boot_info = match kernel.protocol {
            BootProtocol::Pvh => boot::write_pvh_info(&mem, &e820, initrd, Some(rsdp.raw_value()))?,
            BootProtocol::Linux64 => {
                boot::write_zero_page(&mem, &kernel, cfg.cmdline.len() + 1, &e820, initrd)?
            }
        };

        // Devices.
        let boot_events = BootEvents {
            tx: events.clone(),
            generation,
        };
        let mut timers = crate::timers::Timers::new();
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());
        let exit_requests = Arc::new(ExitRequests::new());
        let mut serials = Vec::new();
        for (i, backend) in serial_backends.iter().enumerate().take(SERIAL_PORTS.len()) {
            let (port, irq) = SERIAL_PORTS[i];
            let dev = Arc::new(Mutex::new(SerialDevice::new(
                irqfd(&vm_fd, irq)?,
                backend.writer(),
            )));
            let shared: SharedDevice = dev.clone();
            pio.insert(shared, u64::from(port), 8)
                .map_err(|e| VmError::Device(e.to_string()))?;
            serials.push(dev.clone());
            let input = dev.clone();
            backend.set_input(Arc::new(move |bytes: &[u8]| feed_serial(&input, bytes)));
        }
        let add = |d: SharedDevice, base: u16, len: u64| {
            pio.insert(d, u64::from(base), len)
                .map_err(|e| VmError::Device(e.to_string()))
        };
        let i8042 = Arc::new(Mutex::new(I8042Device::new(
            exit_requests.clone(),
            irqfd(&vm_fd, layout::I8042_IRQ)?,
        )));
        add(i8042.clone(), layout::I8042_PORT, I8042Device::WINDOW_LEN)?;
        let (rtc_timer, rtc_timer_id) = timers
            .timer()
            .map_err(|e| VmError::Device(format!("RTC timer: {e}")))?;
        let rtc_config = || -> Result<RtcConfig, VmError> {
            Ok(RtcConfig {
                clock: rtc_boot.clock.clone(),
                guest_clock: timers.clock(),
                timer: rtc_timer.clone(),
                irq: irqfd(&vm_fd, layout::RTC_IRQ)?,
                events: Arc::new(boot_events.clone()),
                slew: cfg.rtc.slew,
            })
        };
        let rtc = match &rtc_boot.state {
            Some(state) => CmosRtc::from_state(state, rtc_config()?).or_else(|e| {
                eprintln!("kestrel: RTC state of the previous boot: {e}");
                Ok::<_, VmError>(CmosRtc::new(rtc_config()?))
            })?,
            None => CmosRtc::new(rtc_config()?),
        };
        let rtc = Arc::new(Mutex::new(rtc));
        let r = rtc.clone();
        timers.set_callback(rtc_timer_id, move || {
            r.lock().unwrap_or_else(|p| p.into_inner()).timer_fired()
        });
        add(rtc.clone(), layout::RTC_PORT, CmosRtc::WINDOW_LEN)?;
        let acpi_pm = Arc::new(Mutex::new(AcpiPmDevice::new(exit_requests.clone())));
        add(
            acpi_pm.clone(),
            layout::ACPI_PM_PORT_BASE,
            layout::ACPI_PM_PORT_LEN,
        )?;

        if let Some(port) = pvpanic_port {
            add(
                Arc::new(Mutex::new(Pvpanic::new(Arc::new(boot_events.clone())))),
                port,
                Pvpanic::WINDOW_LEN,
            )?;
        }
        let ged = Arc::new(Mutex::new(AcpiGed::new(irqfd(
            &vm_fd,
            layout::ACPI_GED_IRQ,
        )?)));
        mmio.insert(ged.clone(), layout::ACPI_GED_ADDR, layout::ACPI_GED_LEN)
            .map_err(|e| VmError::Device(e.to_string()))?;

        let pci = crate::pci::build(
            crate::pci::PciContext {
                vm: vm_fd.clone(),
                mem: &mem,
                pio: pio.clone(),
                mmio: mmio.clone(),
                events: events.clone(),
                generation,
                chardevs,
                timers: &mut timers,
                watchdog_timed_out: rtc_boot.watchdog_timed_out,
            },
            &cfg.devices,
            &cfg.drives,
            &cfg.netdevs,
        )?;

        // vCPUs.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kop("reading supported CPUID"))?;
        let overrides = cpuid::resolve_overrides(&cfg.cpu_flags)?;
        let mut vcpus = Vec::with_capacity(cfg.num_cpus as usize);
        for i in 0..cfg.num_cpus {
            let fd = vm_fd
                .create_vcpu(u64::from(i))
                .map_err(kop("creating a vCPU"))?;
            let mut c = supported.clone();
            cpuid::filter(
                &mut c,
                &CpuidConfig {
                    cpu_index: i,
                    num_cpus: cfg.num_cpus,
                    threads_per_core: cfg.threads_per_core,
                    cores_per_socket: cfg.cores_per_socket,
                    model: cfg.cpu_model,
                    overrides: overrides.clone(),
                },
            );
            fd.set_cpuid2(&c).map_err(kop("setting CPUID"))?;
            regs::setup_vcpu(&fd, kernel.protocol, kernel.entry, boot_info)?;
            let ctx = VcpuContext {
                pio: pio.clone(),
                mmio: mmio.clone(),
                exit_requests: exit_requests.clone(),
                events: events.clone(),
                generation,
            };
            let name = if cfg.debug_thread_names {
                format!("CPU {i}/KVM")
            } else {
                format!("vcpu{i}")
            };
            vcpus.push(Vcpu::spawn(i, name, fd, ctx).map_err(VmError::Thread)?);
        }

        timers
            .start()
            .map_err(|e| VmError::Device(format!("timer thread: {e}")))?;
        Ok(Vm {
            vcpus,
            timers,
            pci,
            vm_fd,
            mem,
            _pio: pio,
            _mmio: mmio,
            ged,
            rtc,
            serials,
            i8042,
            acpi_pm,
        })
    }

    /// Guest RAM, for migration.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The KVM VM, for migration's dirty log.
    pub fn vm_fd(&self) -> &Arc<VmFd> {
        &self.vm_fd
    }

    /// Every vCPU thread, for auto-converge's throttle.
    pub fn vcpus(&self) -> &[Vcpu] {
        &self.vcpus
    }

    /// Lets the I/O thread go on after [`Vm::quiesce`] (a migration that did not
    /// complete).
    pub fn resume_io(&self) {
        if let Some(p) = &self.pci {
            p.resume_io();
        }
    }

    pub fn resume(&self) {
        // The I/O thread may have been held by a migration that did not complete.
        if let Some(p) = &self.pci {
            p.resume_io();
        }
        self.timers.resume();
        for v in &self.vcpus {
            v.resume();
        }
    }

    /// Pauses every vCPU and waits until each has left KVM_RUN.
    pub fn pause(&self) {
        for v in &self.vcpus {
            v.request_pause();
        }
        for v in &self.vcpus {
            v.wait_paused();
        }
        self.timers.pause();
    }

    /// Presses the ACPI power button (a GED event the guest's button driver reports).
    pub fn press_power_button(&self) -> std::io::Result<()> {
        self.ged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .notify(ACPI_GED_EVENT_POWER_BUTTON)
    }

    /// An NMI to every vCPU, as QEMU's inject-nmi does on x86.
    pub fn inject_nmi(&self) {
        for v in &self.vcpus {
            v.inject_nmi();
        }
    }

    /// HMP `info registers` for one vCPU.
    pub fn registers(&self, index: usize) -> Result<String, String> {
        self.vcpus
            .get(index)
            .ok_or_else(|| format!("CPU {index} does not exist"))?
            .registers()
    }

    /// Whether the watchdog fired and the guest has not cleared its TIMEOUT flag.
    pub fn watchdog_timed_out(&self) -> bool {
        self.pci
            .as_ref()
            .and_then(|p| p.watchdog.as_ref())
            .is_some_and(|w| w.lock().unwrap_or_else(|p| p.into_inner()).timed_out())
    }

    /// The RTC's state, for the next boot.
    pub fn rtc_state(&self) -> devices::legacy::rtc::RtcState {
        self.rtc.lock().unwrap_or_else(|p| p.into_inner()).state()
    }

    /// The guest's RTC date and time now.
    pub fn rtc_time(&self) -> devices::legacy::RtcDateTime {
        self.rtc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .guest_time()
    }

    /// `rtc-reset-reinjection`.
    pub fn rtc_reset_reinjection(&self) {
        self.rtc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reset_reinjection();
    }

    /// The PCI devices of this boot, if any.
    pub fn pci(&self) -> Option<&crate::pci::PciDevices> {
        self.pci.as_ref()
    }

    pub fn vcpu_thread_ids(&self) -> Vec<(u8, i32)> {
        self.vcpus
            .iter()
            .map(|v| (v.index(), v.thread_id()))
            .collect()
    }
}

/// Hands host input to the UART, waiting while its FIFO is full: the guest drains it at
/// its own pace; input nobody reads for ten seconds is dropped rather than held forever.
fn feed_serial(dev: &Arc<Mutex<SerialDevice>>, mut bytes: &[u8]) {
    let mut idle = 0;
    while !bytes.is_empty() && idle < 2000 {
        let n = dev
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(bytes)
            .unwrap_or(0);
        bytes = &bytes[n..];
        if n == 0 {
            idle += 1;
            std::thread::sleep(std::time::Duration::from_millis(5));
        } else {
            idle = 0;
        }
    }
}
