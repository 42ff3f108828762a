//! Live migration, the machine's side: the one migration (outgoing or incoming) a
//! machine runs at a time, its status as QMP sees it, and what the main thread does at
//! each step the migration thread reports (see `source.rs` for the sequence).
//!
//! [`MigrationCtl`] lives on the `Machine` and is driven only from the main thread, by
//! `crate::migrate_ops`: QMP commands (`migrate`, `migrate_cancel`, `migrate-continue`,
//! `migrate-incoming`) and the thread's reports, which arrive as
//! `ControlEvent::Migration` tagged with the migration's id (a report of an earlier
//! migration is ignored). This module knows no `Machine`. Invariants: the
//! guest is stopped by a migration only between a switchover and the end report, and
//! any end but `completed` gives it back its image locks and its run state; an
//! incoming migration applies nothing to the machine unless its whole stream loaded.

pub mod incoming;
pub mod ram;
pub mod source;
pub mod throttle;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::qmp_migration::settings::MigrationSettings;
use crate::qmp_migration::types::MigrationStatus;

/// A report of the migration thread, for the main thread.
#[derive(Debug)]
pub enum MigrationReport {
    Out(source::Report),
    In(incoming::IncomingReport),
}

/// The outgoing migration that runs (or ran last).
pub struct OutgoingRun {
    pub started: Instant,
    pub active_at: Option<Instant>,
    pub ended_at: Option<Instant>,
    pub downtime: Option<Duration>,
    pub error: Option<String>,
    pub cancelled: Arc<AtomicBool>,
    pub cancel_hook: Arc<Mutex<Option<migration::transport::Canceller>>>,
    pub stats: Arc<Mutex<source::Stats>>,
    pub live: Arc<source::Live>,
    /// The switchover waiting for `migrate-continue` (pause-before-switchover).
    pub pending: Option<mpsc::Sender<source::SwitchoverReply>>,
    /// When the guest stopped for the switchover.
    pub stopped_at: Option<Instant>,
    /// The run state before the switchover, to go back to on failure.
    pub state_before: Option<monitor::RunState>,
    pub throttle: Option<throttle::Throttle>,
    pub thread: Option<std::thread::JoinHandle<()>>,
    /// The migration thread's host thread id (query-migrationthreads).
    pub tid: Arc<std::sync::atomic::AtomicI32>,
}

/// The incoming migration this machine waits for or loads.
pub struct IncomingRun {
    pub exit_on_error: bool,
    /// The address the listener got (`socket-address` of query-migrate).
    pub address: Option<migration::transport::MigrationUri>,
}

/// What the machine knows about migration.
pub struct MigrationCtl {
    pub settings: MigrationSettings,
    pub status: MigrationStatus,
    /// Id of the current migration; reports carry it.
    pub id: u64,
    pub out: Option<OutgoingRun>,
    pub incoming: Option<IncomingRun>,
    /// `-incoming` was given (`migrate-incoming` is allowed once).
    pub incoming_expected: bool,
    /// How many multifd channels an incoming migration accepts after its main one (0:
    /// multifd off), read when the source connects.
    pub incoming_channels: Arc<AtomicU64>,
}

impl MigrationCtl {
    pub fn new(incoming_expected: bool) -> Self {
        MigrationCtl {
            settings: MigrationSettings::new(),
            status: MigrationStatus::None,
            id: 0,
            out: None,
            incoming: None,
            incoming_expected,
            incoming_channels: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether an outgoing migration is under way (capabilities cannot change, another
    /// cannot start). An incoming one does not count, as in QEMU.
    pub fn is_active(&self) -> bool {
        self.incoming.is_none()
            && matches!(
                self.status,
                MigrationStatus::Setup
                    | MigrationStatus::Active
                    | MigrationStatus::PreSwitchover
                    | MigrationStatus::Device
                    | MigrationStatus::Cancelling
            )
    }

    /// `query-migrationthreads`: the migration thread while a migration runs.
    pub fn thread_ids(&self) -> Vec<(String, i32)> {
        match &self.out {
            Some(run) if self.is_active() => {
                let tid = run.tid.load(Ordering::Acquire);
                if tid > 0 {
                    vec![("live_migration".to_string(), tid)]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// The live parameters a running migration reads, refreshed after
    /// `migrate-set-parameters`.
    pub fn refresh_live(&self) {
        let n = if self.settings.multifd() {
            u64::from(self.settings.multifd_channels())
        } else {
            0
        };
        self.incoming_channels.store(n, Ordering::Release);
        if let Some(o) = &self.out {
            o.live.max_bandwidth.store(
                self.settings.max_bandwidth().unwrap_or(0),
                Ordering::Relaxed,
            );
            *o.live.limits.lock().unwrap_or_else(|p| p.into_inner()) = self.settings.limits();
        }
    }
}
