//! Run control shared by QMP and HMP: the executor that carries out a run-state
//! [`Plan`] against the `Machine` trait, and the run-control actions (`stop`, `cont`,
//! `system_reset`, ...) that both `commands` (QMP) and `hmp` call, so both paths raise
//! the same events.
//!
//! Below `commands` and `hmp`, above `registry` (for `CommandContext`): it registers
//! nothing and names neither of its callers.

use crate::events::EventBus;
use crate::machine::{CpuInfoFast, Machine};
use crate::qmp_error::QmpError;
use crate::registry::CommandContext;
use crate::runstate::{MachineOp, Plan, ShutdownCause, Step, VmState};
use crate::schema::Empty;

/// Carries out a plan: machine operations through the trait, state changes through the
/// table, events onto the bus. Stops at the first failure; what ran before stays done.
pub fn execute_plan(
    plan: &Plan,
    vm: &mut VmState,
    machine: &mut dyn Machine,
    events: &mut EventBus,
) -> Result<(), QmpError> {
    for step in &plan.steps {
        match step {
            Step::Machine(op) => match op {
                MachineOp::PauseVcpus => machine.pause_vcpus()?,
                MachineOp::ResumeVcpus => machine.resume_vcpus()?,
                MachineOp::Reset(cause) => machine.reset(*cause)?,
                MachineOp::PowerButton => machine.power_button()?,
                MachineOp::InjectNmi => machine.inject_nmi()?,
                MachineOp::Wakeup => machine.wakeup()?,
                MachineOp::WatchdogDebug => machine.watchdog_debug(),
                MachineOp::Exit(status) => machine.request_exit(*status),
            },
            Step::State(_) | Step::Autostart(_) => vm.apply(step)?,
            Step::Emit(ev) => events.emit_core(ev),
        }
    }
    Ok(())
}

fn run_plan(ctx: &mut CommandContext<'_>, plan: Result<Plan, QmpError>) -> Result<Empty, QmpError> {
    let plan = plan?;
    execute_plan(&plan, ctx.vm, ctx.machine, ctx.events)?;
    Ok(Empty {})
}

fn check_no_dump(ctx: &CommandContext<'_>) -> Result<(), QmpError> {
    if ctx.machine.dump_in_progress() {
        return Err(QmpError::generic(
            "There is a dump in process, please wait.",
        ));
    }
    Ok(())
}

pub(crate) fn do_stop(ctx: &mut CommandContext<'_>) -> Result<Empty, QmpError> {
    check_no_dump(ctx)?;
    let plan = ctx.vm.plan_stop().map_err(QmpError::from);
    run_plan(ctx, plan)
}

pub(crate) fn do_cont(ctx: &mut CommandContext<'_>) -> Result<Empty, QmpError> {
    check_no_dump(ctx)?;
    let plan = ctx.vm.plan_cont();
    run_plan(ctx, plan)
}

pub(crate) fn do_system_reset(ctx: &mut CommandContext<'_>) -> Result<Empty, QmpError> {
    let plan = ctx
        .vm
        .plan_reset_request(ShutdownCause::HostQmpSystemReset)
        .map_err(QmpError::from);
    run_plan(ctx, plan)
}

pub(crate) fn do_system_powerdown(ctx: &mut CommandContext<'_>) -> Result<Empty, QmpError> {
    let plan = Ok(ctx.vm.plan_powerdown());
    run_plan(ctx, plan)
}

pub(crate) fn do_quit(ctx: &mut CommandContext<'_>) -> Result<Empty, QmpError> {
    let plan = ctx.vm.plan_quit().map_err(QmpError::from);
    run_plan(ctx, plan)
}

pub(crate) fn do_system_wakeup(ctx: &mut CommandContext<'_>) -> Result<Empty, QmpError> {
    let supported = ctx.machine.wakeup_suspend_support();
    let plan = ctx.vm.plan_wakeup(supported);
    run_plan(ctx, plan)
}

pub(crate) fn do_inject_nmi(ctx: &mut CommandContext<'_>) -> Result<Empty, QmpError> {
    ctx.machine.inject_nmi()?;
    Ok(Empty {})
}

pub(crate) fn cpus_fast(machine: &dyn Machine) -> Vec<CpuInfoFast> {
    let target = machine.target();
    machine
        .cpus()
        .into_iter()
        .map(|c| CpuInfoFast {
            cpu_index: c.index,
            qom_path: c.qom_path,
            thread_id: c.thread_id,
            props: c.props,
            target,
        })
        .collect()
}
