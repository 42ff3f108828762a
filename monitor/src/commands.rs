//! The machine-level commands that need only the `Machine` trait: negotiation,
//! introspection, run control, the machine queries, `set-action`, `inject-nmi` and
//! `human-monitor-command`, and `Registry::with_core`, which registers them with the core
//! events. The plan executor and the run-control actions these commands share with HMP
//! live below, in `control`; `execute_plan` is re-exported here.

use crate::control::{
    cpus_fast, do_cont, do_inject_nmi, do_quit, do_stop, do_system_powerdown, do_system_reset,
    do_system_wakeup,
};
use crate::machine::{
    CurrentMachineParams, HotpluggableCpu, IoThreadInfo, KvmInfo, MachineInfo, MemoryInfo,
    NameInfo, TargetInfo, UuidInfo, VersionInfo,
};
use crate::qmp_error::QmpError;
use crate::registry::{CommandContext, Registry};
use crate::runstate::{PanicAction, RebootAction, ShutdownAction, StatusInfo, WatchdogAction};
use crate::schema::{Empty, SchemaList};

pub use crate::control::execute_plan;
pub use crate::registry::QMP_CAPABILITIES;

crate::qmp_enum! {
    /// `QMPCapability`.
    pub enum QmpCapability { Oob = "oob" }
}

crate::qmp_struct! {
    /// Arguments of `qmp_capabilities`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct QmpCapabilitiesArgs {
        pub enable: Option<Vec<QmpCapability>> = "enable",
    }
}

crate::qmp_struct! {
    /// `CommandInfo`, the element of `query-commands`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CommandInfo {
        pub name: String = "name",
    }
}

crate::qmp_struct! {
    /// Arguments of `query-machines`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct QueryMachinesArgs {
        pub compat_props: Option<bool> = "compat-props",
    }
}

crate::qmp_struct! {
    /// Arguments of `set-action`: omitted ones are left unchanged.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SetActionArgs {
        pub reboot: Option<RebootAction> = "reboot",
        pub shutdown: Option<ShutdownAction> = "shutdown",
        pub panic: Option<PanicAction> = "panic",
        pub watchdog: Option<WatchdogAction> = "watchdog",
    }
}

crate::qmp_struct! {
    /// Arguments of `watchdog-set-action`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WatchdogSetActionArgs {
        pub action: WatchdogAction = "action",
    }
}

crate::qmp_struct! {
    /// Arguments of `human-monitor-command`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HumanMonitorCommandArgs {
        pub command_line: String = "command-line",
        pub cpu_index: Option<i64> = "cpu-index",
    }
}

fn qmp_capabilities(
    ctx: &mut CommandContext<'_>,
    args: QmpCapabilitiesArgs,
) -> Result<Empty, QmpError> {
    if ctx.session.negotiated {
        return Err(QmpError::command_not_found(
            "Capabilities negotiation is already complete, command ignored",
        ));
    }
    let enable = args.enable.unwrap_or_default();
    let unavailable: Vec<&str> = enable
        .iter()
        .filter(|c| match c {
            QmpCapability::Oob => !ctx.session.oob_offered,
        })
        .map(|c| c.as_str())
        .collect();
    if !unavailable.is_empty() {
        return Err(QmpError::generic(format!(
            "Capability {} not available",
            unavailable.join(", ")
        )));
    }
    ctx.session.oob_enabled = enable.contains(&QmpCapability::Oob);
    ctx.session.negotiated = true;
    Ok(Empty {})
}

impl Registry {
    /// The registry with every command and event this crate implements.
    pub fn with_core() -> Self {
        let mut r = Self::new();
        register_core(&mut r);
        for (name, data) in crate::events::core_events() {
            // The core lists are fixed and duplicate-free; a failure is a bug caught by
            // the tests, not something to stop for.
            let _ = r.register_event(name, data);
        }
        r
    }
}

/// Registers every command of this module. Called by `Registry::with_core`.
pub(crate) fn register_core(r: &mut Registry) {
    // Registration of a fixed, duplicate-free list cannot fail; `reg` keeps the list
    // readable and a test checks every name is present.
    fn reg<'r, A, R, F>(
        r: &'r mut Registry,
        name: &'static str,
        f: F,
    ) -> Option<&'r mut crate::registry::CommandDef>
    where
        A: crate::schema::QmpType + serde::de::DeserializeOwned + 'static,
        R: crate::schema::QmpType + serde::Serialize + 'static,
        F: Fn(&mut CommandContext<'_>, A) -> Result<R, QmpError> + Send + Sync + 'static,
    {
        r.register(name, f).ok()
    }

    reg(r, QMP_CAPABILITIES, qmp_capabilities);
    reg(r, "query-version", |ctx, _: Empty| {
        Ok::<VersionInfo, QmpError>(ctx.version.clone())
    });
    reg(r, "query-commands", |ctx, _: Empty| {
        Ok::<_, QmpError>(
            ctx.registry
                .command_names()
                .into_iter()
                .map(|n| CommandInfo {
                    name: n.to_string(),
                })
                .collect::<Vec<_>>(),
        )
    });
    reg(r, "query-qmp-schema", |ctx, _: Empty| {
        Ok::<_, QmpError>(SchemaList(ctx.registry.introspect(ctx.mask_schema)))
    });
    reg(r, "query-status", |ctx, _: Empty| {
        Ok::<StatusInfo, QmpError>(ctx.vm.status())
    });
    reg(r, "stop", |ctx, _: Empty| do_stop(ctx));
    reg(r, "cont", |ctx, _: Empty| do_cont(ctx));
    reg(r, "system_reset", |ctx, _: Empty| do_system_reset(ctx));
    reg(r, "system_powerdown", |ctx, _: Empty| {
        do_system_powerdown(ctx)
    });
    reg(r, "system_wakeup", |ctx, _: Empty| do_system_wakeup(ctx));
    reg(r, "quit", |ctx, _: Empty| do_quit(ctx));
    reg(r, "query-name", |ctx, _: Empty| {
        Ok::<_, QmpError>(NameInfo {
            name: ctx.machine.name(),
        })
    });
    reg(r, "query-uuid", |ctx, _: Empty| {
        Ok::<_, QmpError>(UuidInfo {
            uuid: ctx.machine.uuid(),
        })
    });
    reg(r, "query-kvm", |ctx, _: Empty| {
        Ok::<KvmInfo, QmpError>(ctx.machine.kvm())
    });
    reg(r, "query-cpus-fast", |ctx, _: Empty| {
        Ok::<_, QmpError>(cpus_fast(&*ctx.machine))
    });
    reg(r, "query-target", |ctx, _: Empty| {
        Ok::<_, QmpError>(TargetInfo {
            arch: ctx.machine.target(),
        })
    });
    if let Some(c) = reg(r, "query-machines", |ctx, args: QueryMachinesArgs| {
        let with_compat = args.compat_props.unwrap_or(false);
        Ok::<Vec<MachineInfo>, QmpError>(
            ctx.machine
                .machine_types()
                .into_iter()
                .map(|mut m| {
                    if !with_compat {
                        m.compat_props = None;
                    }
                    m
                })
                .collect(),
        )
    }) {
        c.features(&["unstable"]);
    }
    reg(r, "query-current-machine", |ctx, _: Empty| {
        Ok::<_, QmpError>(CurrentMachineParams {
            wakeup_suspend_support: ctx.machine.wakeup_suspend_support(),
        })
    });
    reg(r, "query-memory-size-summary", |ctx, _: Empty| {
        Ok::<MemoryInfo, QmpError>(ctx.machine.memory())
    });
    reg(r, "query-iothreads", |ctx, _: Empty| {
        Ok::<Vec<IoThreadInfo>, QmpError>(ctx.machine.iothreads())
    });
    reg(r, "query-hotpluggable-cpus", |ctx, _: Empty| {
        ctx.machine
            .hotpluggable_cpus()
            .ok_or_else(|| {
                QmpError::generic("The feature 'query-hotpluggable-cpus' is not enabled")
            })
            .map(|v: Vec<HotpluggableCpu>| v)
    });
    reg(r, "set-action", |ctx, args: SetActionArgs| {
        let a = &mut ctx.vm.actions;
        if let Some(v) = args.reboot {
            a.reboot = v;
        }
        if let Some(v) = args.panic {
            a.panic = v;
        }
        if let Some(v) = args.watchdog {
            a.watchdog = v;
        }
        // QEMU applies shutdown last "in case the panic action needs to be altered";
        // our panic decision reads both at panic time, so the order only mirrors QEMU.
        if let Some(v) = args.shutdown {
            a.shutdown = v;
        }
        Ok::<_, QmpError>(Empty {})
    });
    reg(
        r,
        "watchdog-set-action",
        |ctx, args: WatchdogSetActionArgs| {
            ctx.vm.actions.watchdog = args.action;
            Ok::<_, QmpError>(Empty {})
        },
    );
    reg(r, "inject-nmi", |ctx, _: Empty| do_inject_nmi(ctx));
    if let Some(c) = reg(
        r,
        "human-monitor-command",
        |ctx, args: HumanMonitorCommandArgs| {
            crate::hmp::run(ctx, &args.command_line, args.cpu_index)
        },
    ) {
        c.features(&["savevm-monitor-nodes"]);
    }
}

/// Every command `register_core` provides.
pub const CORE_COMMANDS: [&str; 25] = [
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-qmp-schema",
    "query-status",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "system_wakeup",
    "quit",
    "query-name",
    "query-uuid",
    "query-kvm",
    "query-cpus-fast",
    "query-target",
    "query-machines",
    "query-current-machine",
    "query-memory-size-summary",
    "query-iothreads",
    "query-hotpluggable-cpus",
    "set-action",
    "watchdog-set-action",
    "inject-nmi",
    "human-monitor-command",
];
