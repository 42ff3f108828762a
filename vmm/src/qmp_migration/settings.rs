//! The migration settings a QMP client sets and the migration engine reads: the
//! capabilities (`migrate-set-capabilities`, `query-migrate-capabilities`) and the
//! parameters (`migrate-set-parameters`, `query-migrate-parameters`), with QEMU's
//! defaults, checks and error texts. No KVM and no I/O: the store only.
//!
//! Invariants:
//! - the stored values always pass QEMU's checks (`migrate_params_check`,
//!   `migrate_caps_check`): a change is checked on a copy of the whole set, then
//!   applied whole, so a refused command changes nothing;
//! - capabilities cannot change while a migration runs; parameters can (QEMU applies
//!   `max-bandwidth` and `downtime-limit` to the running migration), so the engine
//!   reads them again after each change;
//! - `multifd` is fixed once an incoming migration has started (QEMU 8.1+: the
//!   destination has already decided how many channels to accept).

use migration::convergence::Limits;
use monitor::QmpError;

use super::types::{
    MigrateSetParameters, MigrationCapability, MigrationCapabilityStatus, MigrationParameters,
};

/// QEMU's `MAX_MIGRATE_DOWNTIME`, in milliseconds (2000 s).
const MAX_DOWNTIME_MS: u64 = 2000 * 1000;

pub use crate::announce::Announce;

/// The parameters, all present (QEMU's `MigrationState.parameters`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Params {
    announce_initial: u64,
    announce_max: u64,
    announce_rounds: u64,
    announce_step: u64,
    throttle_trigger_threshold: u8,
    cpu_throttle_initial: u8,
    cpu_throttle_increment: u8,
    cpu_throttle_tailslow: bool,
    max_bandwidth: u64,
    downtime_limit: u64,
    multifd_channels: u8,
    max_cpu_throttle: u8,
}

impl Default for Params {
    /// QEMU's defaults (`migration/options.c`), as QEMU 7.2's
    /// `query-migrate-parameters` answers them.
    fn default() -> Self {
        Params {
            announce_initial: 50,
            announce_max: 550,
            announce_rounds: 5,
            announce_step: 100,
            throttle_trigger_threshold: 50,
            cpu_throttle_initial: 20,
            cpu_throttle_increment: 10,
            cpu_throttle_tailslow: false,
            max_bandwidth: 128 << 20,
            downtime_limit: 300,
            multifd_channels: 2,
            max_cpu_throttle: 99,
        }
    }
}

/// QEMU's `QERR_INVALID_PARAMETER_VALUE`. QEMU names the parameter by its C field
/// (underscores), not its QMP name; so does Kestrel.
fn invalid(name: &str, expects: &str) -> QmpError {
    QmpError::generic(format!("Parameter '{name}' expects {expects}"))
}

impl Params {
    /// `migrate_params_test_apply`: the set with `p`'s members replaced.
    fn with(mut self, p: &MigrateSetParameters) -> Self {
        fn set<T: Copy>(dst: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *dst = v;
            }
        }
        set(&mut self.announce_initial, p.announce_initial);
        set(&mut self.announce_max, p.announce_max);
        set(&mut self.announce_rounds, p.announce_rounds);
        set(&mut self.announce_step, p.announce_step);
        set(
            &mut self.throttle_trigger_threshold,
            p.throttle_trigger_threshold,
        );
        set(&mut self.cpu_throttle_initial, p.cpu_throttle_initial);
        set(&mut self.cpu_throttle_increment, p.cpu_throttle_increment);
        set(&mut self.cpu_throttle_tailslow, p.cpu_throttle_tailslow);
        set(&mut self.max_bandwidth, p.max_bandwidth);
        set(&mut self.downtime_limit, p.downtime_limit);
        set(&mut self.multifd_channels, p.multifd_channels);
        set(&mut self.max_cpu_throttle, p.max_cpu_throttle);
        self
    }

    /// `migrate_params_check` for Kestrel's parameters, in QEMU's order, on the whole
    /// resulting set (so `max-cpu-throttle` is compared with the new
    /// `cpu-throttle-initial` even when only one of them changes). `max-bandwidth` has
    /// no check: QEMU's bound is SIZE_MAX, the whole uint64 range on 64-bit hosts.
    fn check(&self) -> Result<(), QmpError> {
        if !(1..=100).contains(&self.throttle_trigger_threshold) {
            return Err(invalid(
                "throttle_trigger_threshold",
                "an integer in the range of 1 to 100",
            ));
        }
        if !(1..=99).contains(&self.cpu_throttle_initial) {
            return Err(invalid(
                "cpu_throttle_initial",
                "an integer in the range of 1 to 99",
            ));
        }
        if !(1..=99).contains(&self.cpu_throttle_increment) {
            return Err(invalid(
                "cpu_throttle_increment",
                "an integer in the range of 1 to 99",
            ));
        }
        if self.downtime_limit > MAX_DOWNTIME_MS {
            // QEMU stringifies its macro expression.
            return Err(invalid(
                "downtime_limit",
                "an integer in the range of 0 to (2000 * 1000) ms",
            ));
        }
        if self.multifd_channels < 1 {
            return Err(invalid("multifd_channels", "a value between 1 and 255"));
        }
        if self.max_cpu_throttle < self.cpu_throttle_initial || self.max_cpu_throttle > 99 {
            return Err(invalid(
                "max_cpu_throttle",
                "an integer in the range of cpu_throttle_initial to 99",
            ));
        }
        if self.announce_initial > 100_000 {
            return Err(invalid("announce_initial", "a value between 0 and 100000"));
        }
        if self.announce_max > 100_000 {
            return Err(invalid("announce_max", "a value between 0 and 100000"));
        }
        if self.announce_rounds > 1000 {
            return Err(invalid("announce_rounds", "a value between 0 and 1000"));
        }
        if !(1..=10_000).contains(&self.announce_step) {
            // QEMU refuses 0 but says 0 is allowed.
            return Err(invalid("announce_step", "a value between 0 and 10000"));
        }
        Ok(())
    }
}

/// The capabilities, one flag each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Caps {
    auto_converge: bool,
    events: bool,
    pause_before_switchover: bool,
    multifd: bool,
}

impl Caps {
    fn get(&self, c: MigrationCapability) -> bool {
        match c {
            MigrationCapability::AutoConverge => self.auto_converge,
            MigrationCapability::Events => self.events,
            MigrationCapability::PauseBeforeSwitchover => self.pause_before_switchover,
            MigrationCapability::Multifd => self.multifd,
        }
    }

    fn set(&mut self, c: MigrationCapability, on: bool) {
        let flag = match c {
            MigrationCapability::AutoConverge => &mut self.auto_converge,
            MigrationCapability::Events => &mut self.events,
            MigrationCapability::PauseBeforeSwitchover => &mut self.pause_before_switchover,
            MigrationCapability::Multifd => &mut self.multifd,
        };
        *flag = on;
    }
}

/// QEMU's `QERR_MIGRATION_ACTIVE`.
pub const MIGRATION_ACTIVE: &str = "There's a migration process in progress";

/// QEMU 8.1+'s refusal to have multifd on once the incoming side has started.
pub const MULTIFD_AFTER_INCOMING: &str = "Multifd must be set before incoming starts";

/// The capabilities and parameters of this process's migrations, outgoing and
/// incoming. Starts with QEMU's defaults; changed only by the two set commands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MigrationSettings {
    caps: Caps,
    params: Params,
    incoming_started: bool,
}

impl MigrationSettings {
    pub fn new() -> Self {
        Self::default()
    }

    /// `query-migrate-capabilities`: every supported capability, in wire order.
    pub fn capabilities(&self) -> Vec<MigrationCapabilityStatus> {
        MigrationCapability::ALL
            .iter()
            .map(|&capability| MigrationCapabilityStatus {
                capability,
                state: self.caps.get(capability),
            })
            .collect()
    }

    /// `migrate-set-capabilities`. `migration_active`: an outgoing migration is
    /// between `setup` and its end (QEMU's `migration_is_running`), when nothing may
    /// change. Entries apply in order (a later one for the same capability wins), all
    /// or none.
    ///
    /// Of QEMU's `migrate_caps_check`, only one rule involves Kestrel's capabilities
    /// alone: multifd cannot be on once an incoming migration has started (see
    /// [`set_incoming_started`](Self::set_incoming_started)). QEMU 7.2's "multifd is
    /// not supported by current protocol" depends on the transport and belongs to
    /// `migrate`/`migrate-incoming`.
    pub fn set_capabilities(
        &mut self,
        caps: &[MigrationCapabilityStatus],
        migration_active: bool,
    ) -> Result<(), QmpError> {
        if migration_active {
            return Err(QmpError::generic(MIGRATION_ACTIVE));
        }
        let mut new = self.caps;
        for c in caps {
            new.set(c.capability, c.state);
        }
        if new.multifd && self.incoming_started {
            return Err(QmpError::generic(MULTIFD_AFTER_INCOMING));
        }
        self.caps = new;
        Ok(())
    }

    /// The engine says whether an incoming migration has started (QEMU's
    /// `migrate_incoming_started`: from `migrate-incoming` accepting until its
    /// cleanup).
    pub fn set_incoming_started(&mut self, started: bool) {
        self.incoming_started = started;
    }

    /// `query-migrate-parameters`: every member present.
    pub fn parameters(&self) -> MigrationParameters {
        let p = &self.params;
        MigrationParameters {
            announce_initial: Some(p.announce_initial),
            announce_max: Some(p.announce_max),
            announce_rounds: Some(p.announce_rounds),
            announce_step: Some(p.announce_step),
            throttle_trigger_threshold: Some(p.throttle_trigger_threshold),
            cpu_throttle_initial: Some(p.cpu_throttle_initial),
            cpu_throttle_increment: Some(p.cpu_throttle_increment),
            cpu_throttle_tailslow: Some(p.cpu_throttle_tailslow),
            max_bandwidth: Some(p.max_bandwidth),
            downtime_limit: Some(p.downtime_limit),
            multifd_channels: Some(p.multifd_channels),
            max_cpu_throttle: Some(p.max_cpu_throttle),
        }
    }

    /// `migrate-set-parameters`: checks the resulting set as QEMU does and applies it
    /// whole, or changes nothing. Allowed while migrating.
    pub fn set_parameters(&mut self, p: MigrateSetParameters) -> Result<(), QmpError> {
        let new = self.params.with(&p);
        new.check()?;
        self.params = new;
        Ok(())
    }

    /// The `events` capability: emit MIGRATION on each status change.
    pub fn events(&self) -> bool {
        self.caps.events
    }

    /// The `auto-converge` capability.
    #[cfg(test)]
    pub fn auto_converge(&self) -> bool {
        self.caps.auto_converge
    }

    /// The `pause-before-switchover` capability: stop in `pre-switchover` until
    /// `migrate-continue`.
    pub fn pause_before_switchover(&self) -> bool {
        self.caps.pause_before_switchover
    }

    /// The `multifd` capability.
    pub fn multifd(&self) -> bool {
        self.caps.multifd
    }

    /// `multifd-channels`, at least 1.
    pub fn multifd_channels(&self) -> u8 {
        self.params.multifd_channels
    }

    /// `max-bandwidth` in bytes per second; `None` for 0, which QEMU takes as no
    /// limit (`RATE_LIMIT_DISABLED`). QEMU lifts the limit for the final stage (the
    /// guest is stopped then).
    pub fn max_bandwidth(&self) -> Option<u64> {
        Some(self.params.max_bandwidth).filter(|&b| b != 0)
    }

    /// `downtime-limit`, milliseconds.
    #[cfg(test)]
    pub fn downtime_limit_ms(&self) -> u64 {
        self.params.downtime_limit
    }

    /// `cpu-throttle-tailslow`.
    #[cfg(test)]
    pub fn cpu_throttle_tailslow(&self) -> bool {
        self.params.cpu_throttle_tailslow
    }

    /// The self-announce schedule.
    pub fn announce(&self) -> Announce {
        Announce {
            initial_ms: self.params.announce_initial,
            max_ms: self.params.announce_max,
            rounds: self.params.announce_rounds,
            step_ms: self.params.announce_step,
        }
    }

    /// What the precopy switchover decision reads.
    pub fn limits(&self) -> Limits {
        Limits {
            downtime_limit_ms: self.params.downtime_limit,
            auto_converge: self.caps.auto_converge,
            throttle_trigger_threshold: self.params.throttle_trigger_threshold,
            cpu_throttle_initial: self.params.cpu_throttle_initial,
            cpu_throttle_increment: self.params.cpu_throttle_increment,
            cpu_throttle_max: self.params.max_cpu_throttle,
        }
    }
}
