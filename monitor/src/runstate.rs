//! The VM run state machine (spec/runstate.md): the 16 `RunState`s, the one table of
//! allowed transitions, `ShutdownCause`, the `set-action` / `watchdog-set-action`
//! settings, and the decisions QEMU takes on stop, cont, reset, shutdown, power button,
//! panic, watchdog expiry, suspend and wake-up.
//!
//! The decisions are pure: each `VmState::plan_*` returns a [`Plan`], the ordered list of
//! what must happen (machine operations, state changes, events). Nothing here touches a
//! machine; the monitor runs the plan against the `Machine` trait, so every event
//! sequence of the spec is testable here on plain values. Every state change in a plan
//! has been checked against the table; one that is not allowed is an error, never a
//! silent change.

use crate::qmp_error::QmpError;
use serde_json::Value;

crate::qmp_enum! {
    /// `RunState`, in wire order (seed 001).
    pub enum RunState {
        Debug = "debug",
        InMigrate = "inmigrate",
        InternalError = "internal-error",
        IoError = "io-error",
        Paused = "paused",
        PostMigrate = "postmigrate",
        Prelaunch = "prelaunch",
        FinishMigrate = "finish-migrate",
        RestoreVm = "restore-vm",
        Running = "running",
        SaveVm = "save-vm",
        Shutdown = "shutdown",
        Suspended = "suspended",
        Watchdog = "watchdog",
        GuestPanicked = "guest-panicked",
        Colo = "colo",
    }
}

impl RunState {
    /// QEMU's "live": the guest clock ticks, and stopping emits STOP.
    pub fn is_live(self) -> bool {
        matches!(self, RunState::Running | RunState::Suspended)
    }

    /// QEMU's `runstate_needs_reset`: `cont` is refused until `system_reset`.
    pub fn needs_reset(self) -> bool {
        matches!(self, RunState::Shutdown | RunState::InternalError)
    }
}

use RunState as S;

/// Every allowed `(from, to)` pair, exactly `runstate_transitions_def` of QEMU 9.x
/// (spec/runstate.md §2, 85 pairs, the 9.0 suspended-state pairs included). Setting the
/// current state again is allowed separately and is not listed.
pub const TRANSITIONS: [(RunState, RunState); 85] = [
    (S::Prelaunch, S::InMigrate),
    (S::Prelaunch, S::Suspended),
    (S::Prelaunch, S::Running),
    (S::Prelaunch, S::FinishMigrate),
    (S::Debug, S::Running),
    (S::Debug, S::FinishMigrate),
    (S::Debug, S::Prelaunch),
    (S::Debug, S::Suspended),
    (S::InMigrate, S::InternalError),
    (S::InMigrate, S::IoError),
    (S::InMigrate, S::Paused),
    (S::InMigrate, S::Running),
    (S::InMigrate, S::Shutdown),
    (S::InMigrate, S::Suspended),
    (S::InMigrate, S::Watchdog),
    (S::InMigrate, S::GuestPanicked),
    (S::InMigrate, S::FinishMigrate),
    (S::InMigrate, S::Prelaunch),
    (S::InMigrate, S::PostMigrate),
    (S::InMigrate, S::Colo),
    (S::InternalError, S::Paused),
    (S::InternalError, S::FinishMigrate),
    (S::InternalError, S::Prelaunch),
    (S::IoError, S::Running),
    (S::IoError, S::FinishMigrate),
    (S::IoError, S::Prelaunch),
    (S::Paused, S::Running),
    (S::Paused, S::FinishMigrate),
    (S::Paused, S::PostMigrate),
    (S::Paused, S::Prelaunch),
    (S::Paused, S::Colo),
    (S::Paused, S::Suspended),
    (S::PostMigrate, S::Running),
    (S::PostMigrate, S::FinishMigrate),
    (S::PostMigrate, S::Prelaunch),
    (S::FinishMigrate, S::Running),
    (S::FinishMigrate, S::Paused),
    (S::FinishMigrate, S::PostMigrate),
    (S::FinishMigrate, S::Prelaunch),
    (S::FinishMigrate, S::Colo),
    (S::FinishMigrate, S::InternalError),
    (S::FinishMigrate, S::IoError),
    (S::FinishMigrate, S::Shutdown),
    (S::FinishMigrate, S::Suspended),
    (S::FinishMigrate, S::Watchdog),
    (S::FinishMigrate, S::GuestPanicked),
    (S::RestoreVm, S::Running),
    (S::RestoreVm, S::Prelaunch),
    (S::RestoreVm, S::Suspended),
    (S::Colo, S::Running),
    (S::Colo, S::Prelaunch),
    (S::Colo, S::Shutdown),
    (S::Running, S::Debug),
    (S::Running, S::InternalError),
    (S::Running, S::IoError),
    (S::Running, S::Paused),
    (S::Running, S::FinishMigrate),
    (S::Running, S::RestoreVm),
    (S::Running, S::SaveVm),
    (S::Running, S::Shutdown),
    (S::Running, S::Watchdog),
    (S::Running, S::GuestPanicked),
    (S::Running, S::Colo),
    (S::Running, S::Suspended),
    (S::SaveVm, S::Running),
    (S::SaveVm, S::Suspended),
    (S::Shutdown, S::Paused),
    (S::Shutdown, S::FinishMigrate),
    (S::Shutdown, S::Prelaunch),
    (S::Shutdown, S::Colo),
    (S::Suspended, S::Running),
    (S::Suspended, S::FinishMigrate),
    (S::Suspended, S::Prelaunch),
    (S::Suspended, S::Colo),
    (S::Suspended, S::Paused),
    (S::Suspended, S::SaveVm),
    (S::Suspended, S::RestoreVm),
    (S::Suspended, S::Shutdown),
    (S::Watchdog, S::Running),
    (S::Watchdog, S::FinishMigrate),
    (S::Watchdog, S::Prelaunch),
    (S::Watchdog, S::Colo),
    (S::GuestPanicked, S::Running),
    (S::GuestPanicked, S::FinishMigrate),
    (S::GuestPanicked, S::Prelaunch),
];

/// A transition missing from [`TRANSITIONS`]. QEMU aborts on it; we refuse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid runstate transition: '{from}' -> '{to}'")]
pub struct TransitionError {
    pub from: RunState,
    pub to: RunState,
}

impl From<TransitionError> for QmpError {
    fn from(e: TransitionError) -> Self {
        QmpError::generic(e.to_string())
    }
}

/// Whether `from -> to` is allowed (setting the current state again always is).
pub fn transition(from: RunState, to: RunState) -> Result<(), TransitionError> {
    if from == to || TRANSITIONS.contains(&(from, to)) {
        Ok(())
    } else {
        Err(TransitionError { from, to })
    }
}

crate::qmp_enum! {
    /// `ShutdownCause`, in wire order; the order matters (`guest` is "from guest-shutdown on").
    pub enum ShutdownCause {
        None = "none",
        HostError = "host-error",
        HostQmpQuit = "host-qmp-quit",
        HostQmpSystemReset = "host-qmp-system-reset",
        HostSignal = "host-signal",
        HostUi = "host-ui",
        GuestShutdown = "guest-shutdown",
        GuestReset = "guest-reset",
        GuestPanic = "guest-panic",
        SubsystemReset = "subsystem-reset",
        SnapshotLoad = "snapshot-load",
    }
}

impl ShutdownCause {
    /// The `guest` member of SHUTDOWN and RESET.
    pub fn is_guest(self) -> bool {
        self as u8 >= ShutdownCause::GuestShutdown as u8
    }

    /// RESET is not emitted for these causes.
    fn emits_reset_event(self) -> bool {
        !matches!(
            self,
            ShutdownCause::None | ShutdownCause::SubsystemReset | ShutdownCause::SnapshotLoad
        )
    }
}

crate::qmp_enum! {
    /// `RebootAction`: what a reset request does.
    pub enum RebootAction { Reset = "reset", Shutdown = "shutdown" }
}

crate::qmp_enum! {
    /// `ShutdownAction`: what a shutdown request does.
    pub enum ShutdownAction { Poweroff = "poweroff", Pause = "pause" }
}

crate::qmp_enum! {
    /// `PanicAction`: what a guest panic does.
    pub enum PanicAction {
        Pause = "pause",
        Shutdown = "shutdown",
        ExitFailure = "exit-failure",
        None = "none",
    }
}

crate::qmp_enum! {
    /// `WatchdogAction`: what an expired watchdog does.
    pub enum WatchdogAction {
        Reset = "reset",
        Shutdown = "shutdown",
        Poweroff = "poweroff",
        Pause = "pause",
        Debug = "debug",
        None = "none",
        InjectNmi = "inject-nmi",
    }
}

crate::qmp_enum! {
    /// `GuestPanicAction`, the `action` of GUEST_PANICKED.
    pub enum GuestPanicAction { Pause = "pause", Poweroff = "poweroff", Run = "run" }
}

/// The four `set-action` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    pub reboot: RebootAction,
    pub shutdown: ShutdownAction,
    pub panic: PanicAction,
    pub watchdog: WatchdogAction,
}

impl Default for Actions {
    /// QEMU's defaults (`set_action_defaults` in the catalogue).
    fn default() -> Self {
        Actions {
            reboot: RebootAction::Reset,
            shutdown: ShutdownAction::Poweroff,
            panic: PanicAction::Shutdown,
            watchdog: WatchdogAction::Reset,
        }
    }
}

impl Actions {
    /// The settings implied by `-no-reboot` / `-no-shutdown`.
    pub fn from_cli(no_reboot: bool, no_shutdown: bool) -> Self {
        Actions {
            reboot: if no_reboot {
                RebootAction::Shutdown
            } else {
                RebootAction::Reset
            },
            shutdown: if no_shutdown {
                ShutdownAction::Pause
            } else {
                ShutdownAction::Poweroff
            },
            ..Actions::default()
        }
    }
}

crate::qmp_struct! {
    /// `StatusInfo`, the return of `query-status`. (No `singlestep`: removed in 9.0.)
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StatusInfo {
        pub running: bool = "running",
        pub status: RunState = "status",
    }
}

/// Events the run-state decisions raise (data per events.md).
#[derive(Debug, Clone, PartialEq)]
pub enum CoreEvent {
    Stop,
    Resume,
    Reset(ShutdownCause),
    Shutdown(ShutdownCause),
    Powerdown,
    Suspend,
    Wakeup,
    Watchdog(WatchdogAction),
    GuestPanicked {
        action: GuestPanicAction,
        /// `GuestPanicInformation`, as the device that saw the panic describes it.
        info: Option<Value>,
    },
}

/// What the machine must do; the vmm implements each through the `Machine` trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineOp {
    /// Stop all vCPUs and wait until they are parked.
    PauseVcpus,
    /// Let the vCPUs run again.
    ResumeVcpus,
    /// Reset the machine (devices and vCPUs) to its power-on state; the vCPUs keep
    /// their run/park state around it.
    Reset(ShutdownCause),
    /// Press the ACPI power button; the guest decides what to do.
    PowerButton,
    /// NMI to the first vCPU (every vCPU on x86).
    InjectNmi,
    /// Wake the guest from S3 and let its vCPUs run.
    Wakeup,
    /// Print QEMU's "watchdog: timer fired" diagnostic (watchdog action `debug`).
    WatchdogDebug,
    /// Terminate the process with this status once the monitor output is flushed.
    Exit(i32),
}

/// One step of a plan, executed in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Machine(MachineOp),
    /// Enter this state; checked against the table when planned and when applied.
    State(RunState),
    /// The "start when the incoming migration completes" flag of `inmigrate`.
    Autostart(bool),
    Emit(CoreEvent),
}

/// An ordered list of steps. An empty plan means "nothing happens".
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    fn push(&mut self, s: Step) {
        self.steps.push(s);
    }

    fn extend(&mut self, other: Plan) {
        self.steps.extend(other.steps);
    }

    /// The events of the plan, in order (handy for callers and tests).
    pub fn events(&self) -> Vec<&CoreEvent> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Emit(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    /// The machine operations of the plan, in order.
    pub fn machine_ops(&self) -> Vec<MachineOp> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Machine(op) => Some(*op),
                _ => None,
            })
            .collect()
    }

    /// The exit status, if the plan ends the process.
    pub fn exit_status(&self) -> Option<i32> {
        self.machine_ops().into_iter().find_map(|op| match op {
            MachineOp::Exit(s) => Some(s),
            _ => None,
        })
    }
}

/// The run-state half of the VM as the monitor keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmState {
    state: RunState,
    pub actions: Actions,
    /// Meaningful in `inmigrate` only: run once the migration completes.
    autostart: bool,
    /// The VM was `suspended` when it was stopped, so `cont` returns it there.
    was_suspended: bool,
}

impl Default for VmState {
    fn default() -> Self {
        VmState::new(RunState::Prelaunch, Actions::default())
    }
}

impl VmState {
    /// Every VM begins in `prelaunch` (runstate.md §1); the vmm moves it to `running`
    /// (no `-S`) or `inmigrate` (`-incoming`) through [`plan_start`](Self::plan_start) or
    /// [`set_state`](Self::set_state).
    pub fn new(initial: RunState, actions: Actions) -> Self {
        VmState {
            state: initial,
            actions,
            autostart: true,
            was_suspended: false,
        }
    }

    pub fn state(&self) -> RunState {
        self.state
    }

    pub fn autostart(&self) -> bool {
        self.autostart
    }

    pub fn status(&self) -> StatusInfo {
        StatusInfo {
            running: self.state == RunState::Running,
            status: self.state,
        }
    }

    /// Changes the state through the table.
    pub fn set_state(&mut self, to: RunState) -> Result<(), TransitionError> {
        transition(self.state, to)?;
        let from = self.state;
        if from.is_live() && !to.is_live() {
            self.was_suspended = from == RunState::Suspended;
        } else if to.is_live() || to == RunState::Prelaunch {
            // Started again, or reset: nothing to return to.
            self.was_suspended = false;
        }
        self.state = to;
        Ok(())
    }

    /// Applies the run-state steps of a plan (machine operations and events are the
    /// caller's). Used to simulate the state a plan leads to, and by the executor.
    pub fn apply(&mut self, step: &Step) -> Result<(), TransitionError> {
        match step {
            Step::State(s) => self.set_state(*s),
            Step::Autostart(a) => {
                self.autostart = *a;
                Ok(())
            }
            Step::Machine(_) | Step::Emit(_) => Ok(()),
        }
    }

    fn after(&self, plan: &Plan) -> Result<VmState, TransitionError> {
        let mut sim = self.clone();
        for s in &plan.steps {
            sim.apply(s)?;
        }
        Ok(sim)
    }

    /// QEMU's `vm_stop(to)`: a live VM stops (vCPUs parked, STOP); a stopped VM is left
    /// as it is, in particular its state does not change.
    pub fn plan_vm_stop(&self, to: RunState) -> Result<Plan, TransitionError> {
        let mut p = Plan::default();
        if self.state.is_live() {
            transition(self.state, to)?;
            p.push(Step::Machine(MachineOp::PauseVcpus));
            p.push(Step::State(to));
            p.push(Step::Emit(CoreEvent::Stop));
        }
        Ok(p)
    }

    /// QMP `stop`: in `inmigrate` only clears autostart.
    pub fn plan_stop(&self) -> Result<Plan, TransitionError> {
        if self.state == RunState::InMigrate {
            return Ok(Plan {
                steps: vec![Step::Autostart(false)],
            });
        }
        self.plan_vm_stop(RunState::Paused)
    }

    /// QEMU's `vm_start`: RESUME, then run (or return to `suspended` if the VM was
    /// stopped from there). Nothing when already running.
    pub fn plan_start(&self) -> Result<Plan, TransitionError> {
        let mut p = Plan::default();
        if self.state == RunState::Running {
            return Ok(p);
        }
        let to = if self.was_suspended && transition(self.state, RunState::Suspended).is_ok() {
            RunState::Suspended
        } else {
            RunState::Running
        };
        transition(self.state, to)?;
        // Machine first: if the vCPUs cannot be restarted, nothing else has happened.
        if to == RunState::Running {
            p.push(Step::Machine(MachineOp::ResumeVcpus));
        }
        p.push(Step::State(to));
        p.push(Step::Emit(CoreEvent::Resume));
        Ok(p)
    }

    /// QMP `cont`.
    pub fn plan_cont(&self) -> Result<Plan, QmpError> {
        match self.state {
            s if s.needs_reset() => Err(QmpError::generic(
                "Resetting the Virtual Machine is required",
            )),
            RunState::FinishMigrate => Err(QmpError::generic("Migration is not finalized yet")),
            // S3 is left only by a wake-up.
            RunState::Suspended => Ok(Plan::default()),
            RunState::InMigrate => Ok(Plan {
                steps: vec![Step::Autostart(true)],
            }),
            _ => Ok(self.plan_start()?),
        }
    }

    /// A reset request with `cause` (guest reboot, `system_reset`, watchdog `reset`).
    /// With reboot action `shutdown` it becomes a shutdown request with the same cause
    /// (except `subsystem-reset`). After the reset a VM that was not running (nor
    /// migrating) is in `prelaunch`.
    pub fn plan_reset_request(&self, cause: ShutdownCause) -> Result<Plan, TransitionError> {
        if self.actions.reboot == RebootAction::Shutdown && cause != ShutdownCause::SubsystemReset {
            return self.plan_shutdown_request(cause);
        }
        let mut p = Plan::default();
        p.push(Step::Machine(MachineOp::Reset(cause)));
        if cause.emits_reset_event() {
            p.push(Step::Emit(CoreEvent::Reset(cause)));
        }
        if !matches!(
            self.state,
            RunState::Running | RunState::InMigrate | RunState::FinishMigrate
        ) {
            transition(self.state, RunState::Prelaunch)?;
            p.push(Step::State(RunState::Prelaunch));
        }
        Ok(p)
    }

    /// A shutdown request with `cause`: SHUTDOWN, then the shutdown action. `quit` and
    /// host signals always power off, whatever the action says.
    pub fn plan_shutdown_request(&self, cause: ShutdownCause) -> Result<Plan, TransitionError> {
        let mut p = Plan::default();
        p.push(Step::Emit(CoreEvent::Shutdown(cause)));
        let forced = matches!(
            cause,
            ShutdownCause::HostQmpQuit | ShutdownCause::HostSignal
        );
        if self.actions.shutdown == ShutdownAction::Pause && !forced {
            p.extend(self.plan_vm_stop(RunState::Shutdown)?);
        } else {
            let status = if cause == ShutdownCause::GuestPanic
                && self.actions.panic == PanicAction::ExitFailure
            {
                1
            } else {
                0
            };
            p.push(Step::Machine(MachineOp::Exit(status)));
        }
        Ok(p)
    }

    /// QMP `quit`: SHUTDOWN(host-qmp-quit), then exit.
    pub fn plan_quit(&self) -> Result<Plan, TransitionError> {
        self.plan_shutdown_request(ShutdownCause::HostQmpQuit)
    }

    /// The power button (`system_powerdown`, watchdog `shutdown`): POWERDOWN at once, the
    /// guest decides the rest.
    pub fn plan_powerdown(&self) -> Plan {
        Plan {
            steps: vec![
                Step::Emit(CoreEvent::Powerdown),
                Step::Machine(MachineOp::PowerButton),
            ],
        }
    }

    /// A guest panic (runstate.md §7).
    pub fn plan_guest_panic(&self, info: Option<Value>) -> Result<Plan, TransitionError> {
        let a = self.actions;
        let mut p = Plan::default();
        let pause = a.panic == PanicAction::Pause
            || (a.panic == PanicAction::Shutdown && a.shutdown == ShutdownAction::Pause);
        if pause {
            p.push(Step::Emit(CoreEvent::GuestPanicked {
                action: GuestPanicAction::Pause,
                info,
            }));
            p.extend(self.plan_vm_stop(RunState::GuestPanicked)?);
        } else if matches!(a.panic, PanicAction::Shutdown | PanicAction::ExitFailure) {
            p.push(Step::Emit(CoreEvent::GuestPanicked {
                action: GuestPanicAction::Poweroff,
                info,
            }));
            p.extend(self.plan_vm_stop(RunState::GuestPanicked)?);
            let then = self.after(&p)?;
            p.extend(then.plan_shutdown_request(ShutdownCause::GuestPanic)?);
        } else {
            p.push(Step::Emit(CoreEvent::GuestPanicked {
                action: GuestPanicAction::Run,
                info,
            }));
        }
        Ok(p)
    }

    /// The watchdog expired: WATCHDOG{action} first, then the action (§5.2).
    pub fn plan_watchdog_expired(&self) -> Result<Plan, TransitionError> {
        let action = self.actions.watchdog;
        let mut p = Plan::default();
        p.push(Step::Emit(CoreEvent::Watchdog(action)));
        match action {
            WatchdogAction::Reset => p.extend(self.plan_reset_request(ShutdownCause::GuestReset)?),
            WatchdogAction::Shutdown => p.extend(self.plan_powerdown()),
            // Like QEMU's exit(0): no SHUTDOWN event.
            WatchdogAction::Poweroff => p.push(Step::Machine(MachineOp::Exit(0))),
            WatchdogAction::Pause => p.extend(self.plan_vm_stop(RunState::Watchdog)?),
            WatchdogAction::Debug => p.push(Step::Machine(MachineOp::WatchdogDebug)),
            WatchdogAction::None => {}
            WatchdogAction::InjectNmi => p.push(Step::Machine(MachineOp::InjectNmi)),
        }
        Ok(p)
    }

    /// The guest entered S3. Only a running guest can.
    pub fn plan_suspend(&self) -> Result<Plan, TransitionError> {
        transition(self.state, RunState::Suspended)?;
        let mut p = Plan::default();
        if self.state != RunState::Suspended {
            p.push(Step::Machine(MachineOp::PauseVcpus));
            p.push(Step::State(RunState::Suspended));
            p.push(Step::Emit(CoreEvent::Suspend));
        }
        Ok(p)
    }

    /// Wake-up from S3 (`system_wakeup` or a guest wake source): WAKEUP, no RESUME.
    pub fn plan_wakeup(&self, supported: bool) -> Result<Plan, QmpError> {
        if !supported {
            return Err(QmpError::generic(
                "wake-up from suspend is not supported by this guest",
            ));
        }
        if self.state != RunState::Suspended {
            return Err(QmpError::generic(
                "Unable to wake up: guest is not in suspended state",
            ));
        }
        Ok(Plan {
            steps: vec![
                Step::Machine(MachineOp::Wakeup),
                Step::State(RunState::Running),
                Step::Emit(CoreEvent::Wakeup),
            ],
        })
    }
}

#[cfg(test)]
mod tests;
