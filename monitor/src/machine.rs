//! The machine as the monitor sees it: the `Machine` trait the vmm implements, and the
//! QAPI types of the machine-level query commands. Nothing here knows about KVM; tests
//! use a fake machine.

use crate::qmp_error::MachineError;
use crate::runstate::ShutdownCause;
use std::any::Any;

crate::qmp_struct! {
    /// `VersionTriple`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VersionTriple {
        pub major: i64 = "major",
        pub minor: i64 = "minor",
        pub micro: i64 = "micro",
    }
}

crate::qmp_struct! {
    /// `VersionInfo`: the greeting's `version` and `query-version`'s return.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VersionInfo {
        pub qemu: VersionTriple = "qemu",
        pub package: String = "package",
    }
}

impl VersionInfo {
    pub fn new(major: i64, minor: i64, micro: i64, package: &str) -> Self {
        VersionInfo {
            qemu: VersionTriple {
                major,
                minor,
                micro,
            },
            package: package.to_string(),
        }
    }
}

crate::qmp_struct! {
    /// `KvmInfo`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct KvmInfo {
        pub enabled: bool = "enabled",
        pub present: bool = "present",
    }
}

crate::qmp_enum! {
    /// `SysEmuTarget`.
    pub enum SysEmuTarget {
        Rx = "rx",
        Avr = "avr",
        Loongarch64 = "loongarch64",
        Aarch64 = "aarch64",
        Alpha = "alpha",
        Arm = "arm",
        Hppa = "hppa",
        I386 = "i386",
        M68k = "m68k",
        Microblaze = "microblaze",
        Microblazeel = "microblazeel",
        Mips = "mips",
        Mips64 = "mips64",
        Mips64el = "mips64el",
        Mipsel = "mipsel",
        Or1k = "or1k",
        Ppc = "ppc",
        Ppc64 = "ppc64",
        Riscv32 = "riscv32",
        Riscv64 = "riscv64",
        S390x = "s390x",
        Sh4 = "sh4",
        Sh4eb = "sh4eb",
        Sparc = "sparc",
        Sparc64 = "sparc64",
        Tricore = "tricore",
        X86_64 = "x86_64",
        Xtensa = "xtensa",
        Xtensaeb = "xtensaeb",
    }
}

crate::qmp_struct! {
    /// `CpuInstanceProperties`: where a vCPU sits in the topology.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct CpuInstanceProperties {
        pub node_id: Option<i64> = "node-id",
        pub drawer_id: Option<i64> = "drawer-id",
        pub book_id: Option<i64> = "book-id",
        pub socket_id: Option<i64> = "socket-id",
        pub die_id: Option<i64> = "die-id",
        pub cluster_id: Option<i64> = "cluster-id",
        pub module_id: Option<i64> = "module-id",
        pub core_id: Option<i64> = "core-id",
        pub thread_id: Option<i64> = "thread-id",
    }
}

/// One vCPU as the vmm describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    pub index: i64,
    /// Host thread id (`gettid`) of the vCPU thread.
    pub thread_id: i64,
    pub qom_path: String,
    pub props: Option<CpuInstanceProperties>,
}

crate::qmp_struct! {
    /// `CpuInfoFast`, the element of `query-cpus-fast` (the s390x-only variant members
    /// are never produced on our targets).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CpuInfoFast {
        pub cpu_index: i64 = "cpu-index",
        pub qom_path: String = "qom-path",
        pub thread_id: i64 = "thread-id",
        pub props: Option<CpuInstanceProperties> = "props",
        pub target: SysEmuTarget = "target",
    }
}

crate::qmp_struct! {
    /// `HotpluggableCPU`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HotpluggableCpu {
        pub ty: String = "type",
        pub props: CpuInstanceProperties = "props",
        pub vcpus_count: i64 = "vcpus-count",
        pub qom_path: Option<String> = "qom-path",
    }
}

crate::qmp_struct! {
    /// `CompatProperty`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CompatProperty {
        pub qom_type: String = "qom-type",
        pub property: String = "property",
        pub value: String = "value",
    }
}

crate::qmp_struct! {
    /// `MachineInfo`, the element of `query-machines`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MachineInfo {
        pub name: String = "name",
        pub alias: Option<String> = "alias",
        pub is_default: Option<bool> = "is-default",
        pub cpu_max: i64 = "cpu-max",
        pub hotpluggable_cpus: bool = "hotpluggable-cpus",
        pub numa_mem_supported: bool = "numa-mem-supported",
        pub deprecated: bool = "deprecated",
        pub default_cpu_type: Option<String> = "default-cpu-type",
        pub default_ram_id: Option<String> = "default-ram-id",
        pub acpi: bool = "acpi",
        pub compat_props: Option<Vec<CompatProperty>> = "compat-props",
    }
}

crate::qmp_struct! {
    /// `CurrentMachineParams`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CurrentMachineParams {
        pub wakeup_suspend_support: bool = "wakeup-suspend-support",
    }
}

crate::qmp_struct! {
    /// `MemoryInfo` (bytes).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MemoryInfo {
        pub base_memory: u64 = "base-memory",
        pub plugged_memory: Option<u64> = "plugged-memory",
    }
}

crate::qmp_struct! {
    /// `IOThreadInfo`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct IoThreadInfo {
        pub id: String = "id",
        pub thread_id: i64 = "thread-id",
        pub poll_max_ns: i64 = "poll-max-ns",
        pub poll_grow: i64 = "poll-grow",
        pub poll_shrink: i64 = "poll-shrink",
        pub aio_max_batch: i64 = "aio-max-batch",
    }
}

crate::qmp_struct! {
    /// `NameInfo`: `name` is left out when the VM has none.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NameInfo {
        pub name: Option<String> = "name",
    }
}

crate::qmp_struct! {
    /// `UuidInfo`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UuidInfo {
        pub uuid: String = "UUID",
    }
}

crate::qmp_struct! {
    /// `TargetInfo`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct TargetInfo {
        pub arch: SysEmuTarget = "arch",
    }
}

/// The UUID QEMU reports when none was given.
pub const NIL_UUID: &str = "00000000-0000-0000-0000-000000000000";

/// What the monitor needs from the machine. The vmm implements it; the monitor calls it
/// only from the thread that drives the `Monitor`, one call at a time.
///
/// Run control methods are called in the order a run-state plan gives them; each must
/// have taken effect when it returns (e.g. `pause_vcpus` returns once every vCPU is
/// parked), because the reply to the client follows right after.
pub trait Machine {
    /// Stop every vCPU and wait until all are parked.
    fn pause_vcpus(&mut self) -> Result<(), MachineError>;
    /// Let the vCPUs run again.
    fn resume_vcpus(&mut self) -> Result<(), MachineError>;
    /// Reset devices and vCPUs to their power-on state. vCPUs keep their run/park state.
    fn reset(&mut self, cause: ShutdownCause) -> Result<(), MachineError>;
    /// Press the ACPI power button.
    fn power_button(&mut self) -> Result<(), MachineError>;
    /// NMI to the default CPU (all CPUs on x86). `Unsupported` gives QEMU's text.
    fn inject_nmi(&mut self) -> Result<(), MachineError>;
    /// End the process with `status` once the pending monitor output has been written
    /// (the reply to `quit` must still reach the client).
    fn request_exit(&mut self, status: i32);
    /// Leave ACPI S3 and let the vCPUs run.
    fn wakeup(&mut self) -> Result<(), MachineError> {
        Err(MachineError::Unsupported)
    }
    /// The register dump of HMP `info registers` for vCPU `cpu_index`, in QEMU's layout.
    fn cpu_registers(&mut self, cpu_index: i64) -> Result<String, MachineError> {
        let _ = cpu_index;
        Err(MachineError::Unsupported)
    }
    /// Watchdog action `debug`: QEMU prints this on stderr and does nothing else.
    fn watchdog_debug(&mut self) {
        eprintln!("watchdog: timer fired");
    }

    /// `-name`, if given.
    fn name(&self) -> Option<String>;
    /// `-uuid`, or [`NIL_UUID`].
    fn uuid(&self) -> String {
        NIL_UUID.to_string()
    }
    fn kvm(&self) -> KvmInfo;
    fn target(&self) -> SysEmuTarget {
        SysEmuTarget::X86_64
    }
    fn cpus(&self) -> Vec<CpuInfo>;
    /// CPU slots, or `None` when the machine type cannot hot-plug CPUs.
    fn hotpluggable_cpus(&self) -> Option<Vec<HotpluggableCpu>> {
        None
    }
    /// Machine types this binary can build, with their compat properties.
    fn machine_types(&self) -> Vec<MachineInfo>;
    fn wakeup_suspend_support(&self) -> bool {
        false
    }
    /// RAM in bytes: boot memory and hot-plugged memory (if hotplug is configured).
    fn memory(&self) -> MemoryInfo;
    fn iothreads(&self) -> Vec<IoThreadInfo> {
        Vec::new()
    }
    /// A background `dump-guest-memory` refuses `stop` and `cont` while it runs.
    fn dump_in_progress(&self) -> bool {
        false
    }
    /// Lets commands the vmm registers reach its concrete machine type.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
