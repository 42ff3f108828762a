//! Migration on the main thread: the QMP commands and events (here), and what the
//! machine does at each step a migration's thread reports (`steps`), over the
//! machine's [`MigrationCtl`](crate::migrate::MigrationCtl): `migrate`, `migrate-incoming`,
//! `migrate_cancel`, `migrate-continue`, `query-migrate`, the capability and parameter
//! commands, `query-migrationthreads`, and the MIGRATION and MIGRATION_PASS events.
//! `migrate-pause`, `migrate-recover` and `migrate-start-postcopy` are not registered:
//! Kestrel has no postcopy, and a client gets CommandNotFound as from a QEMU without it.

use monitor::events::EventBus;
use monitor::{CommandContext, Empty, QmpError, QmpType, Registry};
use serde_json::Value;

pub mod steps;

use crate::machine::Machine;
use crate::qmp_devices::{lock, machine};
use crate::qmp_migration::types::{
    MigrateArgs, MigrateContinueArgs, MigrateIncomingArgs, MigrateSetCapabilitiesArgs,
    MigrateSetParameters, MigrationEvent, MigrationInfo, MigrationPassEvent, MigrationStats,
    MigrationStatus, MigrationThreadInfo,
};
use steps as control;

fn emitter<'a>(events: &'a mut EventBus) -> impl FnMut(&str, Value) + 'a {
    move |name: &str, data: Value| events.emit(name, &data)
}

/// Splits the context into the machine and an event emitter.
fn parts<'a>(
    ctx: &'a mut CommandContext<'_>,
) -> Result<(&'a mut Machine, impl FnMut(&str, Value) + 'a), QmpError> {
    let m = ctx
        .machine
        .as_any_mut()
        .downcast_mut::<Machine>()
        .ok_or_else(|| QmpError::generic("internal error: not Kestrel's machine"))?;
    Ok((m, emitter(ctx.events)))
}

fn parse_uri(uri: &str) -> Result<migration::transport::MigrationUri, QmpError> {
    migration::transport::parse(uri).map_err(|e| QmpError::generic(e.to_string()))
}

/// The `fd:NAME` descriptor, taken from the `getfd` store.
fn named_fd(
    m: &mut Machine,
    uri: &migration::transport::MigrationUri,
) -> Result<Option<std::os::fd::OwnedFd>, QmpError> {
    match uri {
        migration::transport::MigrationUri::Fd(name) => {
            m.fds().take_named(name).map(Some).ok_or_else(|| {
                QmpError::generic(format!("File descriptor named '{name}' has not been found"))
            })
        }
        _ => Ok(None),
    }
}

fn ms(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `query-migrate`'s answer.
fn info(m: &Machine) -> MigrationInfo {
    let ctl = &m.migration;
    let mut info = MigrationInfo {
        status: None,
        ram: None,
        total_time: None,
        expected_downtime: None,
        downtime: None,
        setup_time: None,
        cpu_throttle_percentage: None,
        error_desc: None,
        blocked_reasons: None,
        socket_address: None,
    };
    if ctl.status == MigrationStatus::None {
        return info;
    }
    info.status = Some(ctl.status);
    if let Some(addr) = ctl.incoming.as_ref().and_then(|i| i.address.as_ref()) {
        use crate::qmp_migration::types::{InetSocketAddress, SocketAddress, UnixSocketAddress};
        use migration::transport::MigrationUri;
        info.socket_address = match addr {
            MigrationUri::Tcp { host, port } => {
                Some(vec![SocketAddress::Inet(InetSocketAddress {
                    host: host.clone(),
                    port: port.to_string(),
                })])
            }
            MigrationUri::Unix(p) => Some(vec![SocketAddress::Unix(UnixSocketAddress {
                path: p.display().to_string(),
            })]),
            _ => None,
        };
    }
    if let Some(run) = ctl.out.as_ref().filter(|_| ctl.incoming.is_none()) {
        let s = lock(&run.stats).clone();
        let now = run.ended_at.unwrap_or_else(std::time::Instant::now);
        info.total_time = Some(ms(now - run.started));
        info.setup_time = run.active_at.map(|a| ms(a - run.started));
        info.downtime = run.downtime.map(ms);
        if ctl.is_active() {
            info.expected_downtime = Some(clamp(s.expected_downtime_ms));
        }
        if s.throttle > 0 {
            info.cpu_throttle_percentage = Some(i64::from(s.throttle));
        }
        info.error_desc = run
            .error
            .clone()
            .filter(|_| ctl.status == MigrationStatus::Failed);
        let page = migration::protocol::PAGE_SIZE;
        info.ram = Some(MigrationStats {
            transferred: clamp(s.ram.bytes),
            remaining: clamp(s.remaining),
            total: clamp(s.total),
            duplicate: clamp(s.ram.zero_pages),
            normal: clamp(s.ram.data_pages),
            normal_bytes: clamp(s.ram.data_pages * page),
            dirty_pages_rate: clamp(s.dirty_pages_rate),
            mbps: s.bandwidth * 8.0 / 1e6,
            dirty_sync_count: clamp(s.dirty_sync_count),
            postcopy_requests: 0,
            page_size: clamp(page),
            multifd_bytes: s.multifd_bytes,
            pages_per_second: s.pages_per_second,
            precopy_bytes: s.precopy_bytes,
            downtime_bytes: s.downtime_bytes,
            postcopy_bytes: 0,
            dirty_sync_missed_zero_copy: 0,
        });
    }
    info
}

/// Registers the migration commands and events.
pub fn register(r: &mut Registry) -> Result<(), monitor::Error> {
    r.register("migrate", |ctx, a: MigrateArgs| {
        let uri = a.target_uri()?;
        let runstate = ctx.vm.state();
        let (m, mut emit) = parts(ctx)?;
        let uri = parse_uri(&uri)?;
        let fd = named_fd(m, &uri)?;
        control::start_outgoing(m, runstate, uri, fd, &mut emit)?;
        Ok(Empty {})
    })?;
    r.register("migrate-incoming", |ctx, a: MigrateIncomingArgs| {
        let uri = a.source_uri()?;
        let exit_on_error = a.exit_on_error();
        let (m, mut emit) = parts(ctx)?;
        if !m.migration.incoming_expected {
            return Err(QmpError::generic(
                "'-incoming' was not specified on the command line",
            ));
        }
        let uri = parse_uri(&uri)?;
        let fd = named_fd(m, &uri)?;
        control::start_incoming(m, uri, fd, exit_on_error, &mut emit)?;
        Ok(Empty {})
    })?;
    r.register("migrate_cancel", |ctx, _: Empty| {
        let (m, mut emit) = parts(ctx)?;
        control::cancel(m, &mut emit);
        Ok(Empty {})
    })?;
    r.register("migrate-continue", |ctx, a: MigrateContinueArgs| {
        let (m, mut emit) = parts(ctx)?;
        control::continue_switchover(m, a.state, &mut emit)?;
        Ok(Empty {})
    })?;
    r.register("query-migrate", |ctx, _: Empty| Ok(info(machine(ctx)?)))?;
    r.register(
        "migrate-set-capabilities",
        |ctx, a: MigrateSetCapabilitiesArgs| {
            let m = machine(ctx)?;
            let active = m.migration.is_active();
            m.migration
                .settings
                .set_capabilities(&a.capabilities, active)?;
            m.migration.refresh_live();
            Ok(Empty {})
        },
    )?;
    r.register("query-migrate-capabilities", |ctx, _: Empty| {
        Ok(machine(ctx)?.migration.settings.capabilities())
    })?;
    r.register("migrate-set-parameters", |ctx, a: MigrateSetParameters| {
        let m = machine(ctx)?;
        m.migration.settings.set_parameters(a)?;
        m.migration.refresh_live();
        Ok(Empty {})
    })?;
    r.register("query-migrate-parameters", |ctx, _: Empty| {
        Ok(machine(ctx)?.migration.settings.parameters())
    })?;
    r.register("query-migrationthreads", |ctx, _: Empty| {
        let m = machine(ctx)?;
        Ok(m.migration
            .thread_ids()
            .into_iter()
            .map(|(name, tid)| MigrationThreadInfo {
                name,
                thread_id: i64::from(tid),
            })
            .collect::<Vec<_>>())
    })?;
    r.register_event("MIGRATION", MigrationEvent::schema)?;
    r.register_event("MIGRATION_PASS", MigrationPassEvent::schema)?;
    Ok(())
}
