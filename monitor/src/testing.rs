//! A fake `Machine` for tests, here and in the vmm: it records every call and answers
//! the queries from plain fields.

use crate::machine::{
    CpuInfo, CpuInstanceProperties, HotpluggableCpu, IoThreadInfo, KvmInfo, Machine, MachineInfo,
    MemoryInfo, SysEmuTarget, NIL_UUID,
};
use crate::qmp_error::MachineError;
use crate::runstate::ShutdownCause;
use std::any::Any;

/// A call the monitor made on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    PauseVcpus,
    ResumeVcpus,
    Reset(ShutdownCause),
    PowerButton,
    InjectNmi,
    Wakeup,
    WatchdogDebug,
    Exit(i32),
}

/// Records calls; every field is a knob.
#[derive(Debug, Clone)]
pub struct FakeMachine {
    pub calls: Vec<Call>,
    pub name: Option<String>,
    pub uuid: String,
    pub kvm: KvmInfo,
    pub target: SysEmuTarget,
    pub cpus: Vec<CpuInfo>,
    pub hotpluggable: Option<Vec<HotpluggableCpu>>,
    pub machines: Vec<MachineInfo>,
    pub wakeup_support: bool,
    pub memory: MemoryInfo,
    pub iothreads: Vec<IoThreadInfo>,
    pub dump_running: bool,
    pub nmi_supported: bool,
    /// Make `pause_vcpus` fail with this text.
    pub fail_pause: Option<String>,
}

impl Default for FakeMachine {
    fn default() -> Self {
        let props = |core| CpuInstanceProperties {
            socket_id: Some(0),
            core_id: Some(core),
            thread_id: Some(0),
            ..CpuInstanceProperties::default()
        };
        FakeMachine {
            calls: Vec::new(),
            name: None,
            uuid: NIL_UUID.to_string(),
            kvm: KvmInfo {
                enabled: true,
                present: true,
            },
            target: SysEmuTarget::X86_64,
            cpus: vec![
                CpuInfo {
                    index: 0,
                    thread_id: 1000,
                    qom_path: "/machine/unattached/device[0]".into(),
                    props: Some(props(0)),
                },
                CpuInfo {
                    index: 1,
                    thread_id: 1001,
                    qom_path: "/machine/unattached/device[1]".into(),
                    props: Some(props(1)),
                },
            ],
            hotpluggable: None,
            machines: vec![MachineInfo {
                name: "microvm".into(),
                alias: None,
                is_default: Some(true),
                cpu_max: 288,
                hotpluggable_cpus: false,
                numa_mem_supported: false,
                deprecated: false,
                default_cpu_type: Some("host-x86_64-cpu".into()),
                default_ram_id: Some("microvm.ram".into()),
                acpi: true,
                compat_props: Some(Vec::new()),
            }],
            wakeup_support: false,
            memory: MemoryInfo {
                base_memory: 128 << 20,
                plugged_memory: None,
            },
            iothreads: Vec::new(),
            dump_running: false,
            nmi_supported: true,
            fail_pause: None,
        }
    }
}

impl Machine for FakeMachine {
    fn pause_vcpus(&mut self) -> Result<(), MachineError> {
        if let Some(msg) = &self.fail_pause {
            return Err(MachineError::Failed(msg.clone()));
        }
        self.calls.push(Call::PauseVcpus);
        Ok(())
    }
    fn resume_vcpus(&mut self) -> Result<(), MachineError> {
        self.calls.push(Call::ResumeVcpus);
        Ok(())
    }
    fn reset(&mut self, cause: ShutdownCause) -> Result<(), MachineError> {
        self.calls.push(Call::Reset(cause));
        Ok(())
    }
    fn power_button(&mut self) -> Result<(), MachineError> {
        self.calls.push(Call::PowerButton);
        Ok(())
    }
    fn inject_nmi(&mut self) -> Result<(), MachineError> {
        if !self.nmi_supported {
            return Err(MachineError::Unsupported);
        }
        self.calls.push(Call::InjectNmi);
        Ok(())
    }
    fn request_exit(&mut self, status: i32) {
        self.calls.push(Call::Exit(status));
    }
    fn wakeup(&mut self) -> Result<(), MachineError> {
        self.calls.push(Call::Wakeup);
        Ok(())
    }
    fn watchdog_debug(&mut self) {
        self.calls.push(Call::WatchdogDebug);
    }
    fn name(&self) -> Option<String> {
        self.name.clone()
    }
    fn uuid(&self) -> String {
        self.uuid.clone()
    }
    fn kvm(&self) -> KvmInfo {
        self.kvm
    }
    fn target(&self) -> SysEmuTarget {
        self.target
    }
    fn cpus(&self) -> Vec<CpuInfo> {
        self.cpus.clone()
    }
    fn hotpluggable_cpus(&self) -> Option<Vec<HotpluggableCpu>> {
        self.hotpluggable.clone()
    }
    fn machine_types(&self) -> Vec<MachineInfo> {
        self.machines.clone()
    }
    fn wakeup_suspend_support(&self) -> bool {
        self.wakeup_support
    }
    fn memory(&self) -> MemoryInfo {
        self.memory
    }
    fn iothreads(&self) -> Vec<IoThreadInfo> {
        self.iothreads.clone()
    }
    fn dump_in_progress(&self) -> bool {
        self.dump_running
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
