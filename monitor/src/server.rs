//! The `Monitor`: owns the sessions, the command registry, the run state and the event
//! bus; the vmm's event loop only moves bytes between sockets and sessions and calls in
//! when the machine reports something.
//!
//! ```text
//!  socket ──bytes──▶ receive(id) ─▶ Session: framing, envelope ─▶ Registry::dispatch
//!                                                                   │  (Machine trait)
//!  socket ◀─bytes── output(id)  ◀─ Session queue ◀─ events (all negotiated sessions),
//!                                                   then the reply (this session)
//!  vmm ──▶ handle(MachineEvent) / emit(Event) / on_timer() ──▶ events to every session
//! ```
//!
//! Ordering: events raised while a command runs are delivered before its reply (§8).

use crate::control::execute_plan;
use crate::error::Error;
use crate::events::{Clock, Event, EventBus, SystemClock};
use crate::framing::Limits;
use crate::machine::{Machine, VersionInfo};
use crate::registry::{CommandContext, Registry};
use crate::runstate::{Actions, Plan, RunState, ShutdownCause, VmState};
use crate::session::{Session, DEFAULT_MAX_OUTPUT};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Identifies a connection; never reused within a `Monitor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// Settings of a monitor.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// The greeting's version and `query-version`.
    pub version: VersionInfo,
    /// Offer the `oob` capability in the greeting.
    pub offer_oob: bool,
    /// Input limits per message.
    pub limits: Limits,
    /// Bound of each session's unsent output; past it the session is to be dropped.
    pub max_output_bytes: usize,
    /// Mask type names in `query-qmp-schema`, as QEMU does unless `-compat unmask`.
    pub mask_schema: bool,
    /// The state the VM starts in (QEMU: always `prelaunch`).
    pub initial_state: RunState,
    /// `-no-reboot`, `-no-shutdown`, `-action`.
    pub actions: Actions,
}

impl MonitorConfig {
    pub fn new(version: VersionInfo) -> Self {
        MonitorConfig {
            version,
            offer_oob: true,
            limits: Limits::default(),
            max_output_bytes: DEFAULT_MAX_OUTPUT,
            mask_schema: true,
            initial_state: RunState::Prelaunch,
            actions: Actions::default(),
        }
    }
}

/// Things that happen to the machine outside any command, reported by the vmm. Each is
/// decided by the run-state machine and carried out through the `Machine` trait.
#[derive(Debug, Clone, PartialEq)]
pub enum MachineEvent {
    /// The machine is built and should run (no `-S`); RESUME, `running`.
    Start,
    /// Guest reboot request (ACPI, keyboard controller, triple fault).
    GuestReset,
    /// Guest poweroff request (ACPI S5, pvpanic shutdown).
    GuestShutdown,
    /// Guest panic, with its `GuestPanicInformation` if the device has one.
    GuestPanic(Option<Value>),
    /// The guest entered ACPI S3.
    GuestSuspend,
    /// A wake-up source fired while suspended.
    GuestWakeup,
    /// The watchdog device expired.
    WatchdogExpired,
    /// SIGINT/SIGTERM/SIGHUP.
    HostSignal,
    /// A fatal host-side error.
    HostError,
    /// The machine stops into `state` (io-error, internal-error, debug...).
    Stop(RunState),
}

/// The QMP server side: N sessions, one registry, one VM.
pub struct Monitor {
    config: MonitorConfig,
    registry: Registry,
    vm: VmState,
    events: EventBus,
    sessions: BTreeMap<SessionId, Session>,
    next_id: u64,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("vm", &self.vm)
            .field("sessions", &self.sessions.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Monitor {
    /// A monitor with every core command, on the host clocks.
    pub fn new(config: MonitorConfig) -> Self {
        Self::with_clock(config, Box::new(SystemClock::default()))
    }

    /// Same, with an injected clock (tests drive throttling with it).
    pub fn with_clock(config: MonitorConfig, clock: Box<dyn Clock>) -> Self {
        Monitor {
            vm: VmState::new(config.initial_state, config.actions),
            registry: Registry::with_core(),
            events: EventBus::new(clock),
            sessions: BTreeMap::new(),
            next_id: 0,
            config,
        }
    }

    /// Register the vmm's own commands and events here before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn vm(&self) -> &VmState {
        &self.vm
    }

    pub fn runstate(&self) -> RunState {
        self.vm.state()
    }

    /// A new connection; its greeting is already in its output.
    pub fn connect(&mut self) -> SessionId {
        let id = SessionId(self.next_id);
        self.next_id += 1;
        let session = Session::new(
            &self.config.version,
            self.config.offer_oob,
            self.config.limits,
            self.config.max_output_bytes,
        );
        self.sessions.insert(id, session);
        id
    }

    /// The connection closed: its pending input and output are dropped.
    pub fn disconnect(&mut self, id: SessionId) -> Result<(), Error> {
        self.sessions
            .remove(&id)
            .map(|_| ())
            .ok_or(Error::UnknownSession(id.0))
    }

    pub fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    fn session(&self, id: SessionId) -> Result<&Session, Error> {
        self.sessions.get(&id).ok_or(Error::UnknownSession(id.0))
    }

    fn session_mut(&mut self, id: SessionId) -> Result<&mut Session, Error> {
        self.sessions
            .get_mut(&id)
            .ok_or(Error::UnknownSession(id.0))
    }

    /// Bytes read from connection `id`: every complete request in them is run now.
    pub fn receive(
        &mut self,
        id: SessionId,
        bytes: &[u8],
        machine: &mut dyn Machine,
    ) -> Result<(), Error> {
        self.session_mut(id)?.push_input(bytes);
        loop {
            let session = self.session_mut(id)?;
            // A session past its output bound is about to be dropped: leave the rest of
            // its requests unrun, as QEMU drops a closed connection's queued requests.
            if session.is_overflowed() {
                break;
            }
            let Some(req) = session.next_request() else {
                break;
            };
            let mut negotiation = session.negotiation();
            let result = {
                let mut ctx = CommandContext {
                    machine: &mut *machine,
                    vm: &mut self.vm,
                    events: &mut self.events,
                    session: &mut negotiation,
                    registry: &self.registry,
                    version: &self.config.version,
                    mask_schema: self.config.mask_schema,
                };
                self.registry
                    .dispatch(&req.name, req.args, req.oob, &mut ctx)
            };
            // Events first (to every negotiated session, this one included), then the
            // reply; a session that just negotiated hears nothing raised before.
            self.deliver_events();
            let session = self.session_mut(id)?;
            *session.negotiation_mut() = negotiation;
            session.respond(req.id, result);
        }
        Ok(())
    }

    /// Output waiting for connection `id`.
    pub fn output(&self, id: SessionId) -> Result<&[u8], Error> {
        Ok(self.session(id)?.output())
    }

    /// `n` bytes of [`output`](Self::output) were written to the socket.
    pub fn consume_output(&mut self, id: SessionId, n: usize) -> Result<(), Error> {
        self.session_mut(id)?.consume_output(n);
        Ok(())
    }

    /// Takes all output waiting for connection `id`.
    pub fn take_output(&mut self, id: SessionId) -> Result<Vec<u8>, Error> {
        Ok(self.session_mut(id)?.take_output())
    }

    /// Backpressure hint: stop reading from `id` while false.
    pub fn wants_input(&self, id: SessionId) -> bool {
        self.session(id).map(Session::wants_input).unwrap_or(false)
    }

    /// Sessions whose client stopped reading and overflowed their output bound; close
    /// their sockets and [`disconnect`](Self::disconnect) them.
    pub fn overflowed_sessions(&self) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.is_overflowed())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Raises an event with typed data (device events such as RTC_CHANGE); throttled
    /// where QEMU throttles, then delivered to every negotiated session.
    pub fn emit<D: Serialize>(&mut self, name: &str, data: &D) {
        self.events.emit(name, data);
        self.deliver_events();
    }

    /// Raises an already built event.
    pub fn emit_event(&mut self, ev: Event) {
        self.events.emit_event(ev);
        self.deliver_events();
    }

    /// Time until [`on_timer`](Self::on_timer) must run (a throttle window closes).
    pub fn next_timeout(&self) -> Option<Duration> {
        self.events.next_deadline()
    }

    /// Delivers throttled events whose window closed.
    pub fn on_timer(&mut self) {
        self.events.poll();
        self.deliver_events();
    }

    /// Something happened to the machine: decide with the run-state machine, act through
    /// `machine`, emit the events. Returns the exit status if the process must now end
    /// (after flushing the sessions' output); `machine.request_exit` was called too.
    pub fn handle(
        &mut self,
        what: MachineEvent,
        machine: &mut dyn Machine,
    ) -> Result<Option<i32>, Error> {
        let plan: Plan = match what {
            MachineEvent::Start => self.vm.plan_start()?,
            MachineEvent::GuestReset => self.vm.plan_reset_request(ShutdownCause::GuestReset)?,
            MachineEvent::GuestShutdown => self
                .vm
                .plan_shutdown_request(ShutdownCause::GuestShutdown)?,
            MachineEvent::GuestPanic(info) => self.vm.plan_guest_panic(info)?,
            MachineEvent::GuestSuspend => self.vm.plan_suspend()?,
            MachineEvent::GuestWakeup => self.vm.plan_wakeup(true)?,
            MachineEvent::WatchdogExpired => self.vm.plan_watchdog_expired()?,
            MachineEvent::HostSignal => self.vm.plan_shutdown_request(ShutdownCause::HostSignal)?,
            MachineEvent::HostError => self.vm.plan_shutdown_request(ShutdownCause::HostError)?,
            MachineEvent::Stop(state) => self.vm.plan_vm_stop(state)?,
        };
        let result = execute_plan(&plan, &mut self.vm, machine, &mut self.events);
        self.deliver_events();
        result.map_err(Error::from)?;
        Ok(plan.exit_status())
    }

    /// Changes the run state directly (e.g. `inmigrate` for `-incoming`, `postmigrate`
    /// after migration); checked against the table, no event.
    pub fn set_runstate(&mut self, to: RunState) -> Result<(), Error> {
        self.vm.set_state(to).map_err(Error::from)
    }

    /// Sets `inmigrate`'s autostart flag (`-incoming` without `-S` starts the guest
    /// once the stream is loaded).
    pub fn set_autostart(&mut self, on: bool) -> Result<(), Error> {
        self.vm
            .apply(&crate::runstate::Step::Autostart(on))
            .map_err(Error::from)
    }

    fn deliver_events(&mut self) {
        let ready = self.events.take_ready();
        for ev in &ready {
            for s in self.sessions.values_mut() {
                s.push_event(ev);
            }
        }
    }
}

#[cfg(test)]
mod tests;
