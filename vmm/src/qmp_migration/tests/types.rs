//! The wire types: member names against QEMU's real answers, the `migrate` and
//! `migrate-incoming` argument checks, `channels_to_uri`, and the schema.

use serde_json::{json, Value};

use super::{err_text, parse};
use crate::qmp_migration::types::{
    channels_to_uri, MigrateArgs, MigrateContinueArgs, MigrateIncomingArgs,
    MigrateSetCapabilitiesArgs, MigrationCapability, MigrationChannel, MigrationEvent,
    MigrationInfo, MigrationPassEvent, MigrationStatus, MigrationThreadInfo,
};

/// QEMU 7.2's `query-migrate` after a completed migration (`exec:cat > /dev/null`).
const QEMU_7_2_COMPLETED: &str = r#"{"status": "completed", "setup-time": 3, "downtime": 2, "total-time": 21, "ram": {"total": 34086912, "postcopy-requests": 0, "dirty-sync-count": 2, "multifd-bytes": 0, "pages-per-second": 0, "downtime-bytes": 275645, "page-size": 4096, "remaining": 0, "postcopy-bytes": 0, "mbps": 172.16933333333336, "transferred": 275645, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 0, "duplicate": 8273, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 200704, "normal": 49}}"#;

/// QEMU 7.2's `query-migrate` during a migration.
const QEMU_7_2_ACTIVE: &str = r#"{"expected-downtime": 300, "status": "active", "setup-time": 1, "total-time": 1462, "ram": {"total": 34086912, "postcopy-requests": 0, "dirty-sync-count": 1, "multifd-bytes": 0, "pages-per-second": 30, "downtime-bytes": 168717, "page-size": 4096, "remaining": 237568, "postcopy-bytes": 0, "mbps": 0.98639999999999994, "transferred": 168717, "dirty-sync-missed-zero-copy": 0, "precopy-bytes": 0, "duplicate": 8241, "dirty-pages-rate": 0, "skipped": 0, "normal-bytes": 94208, "normal": 23}}"#;

/// QEMU's answer, less 7.2's `skipped` (always 0, removed in 9.1).
fn qemu_answer(text: &str) -> Value {
    let mut v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    if let Some(ram) = v.get_mut("ram").and_then(Value::as_object_mut) {
        ram.remove("skipped");
    }
    v
}

#[test]
fn migration_info_has_qemus_member_names() {
    for text in [QEMU_7_2_COMPLETED, QEMU_7_2_ACTIVE] {
        let qemu = qemu_answer(text);
        // Unknown members are refused, so this parses only if every name matches.
        let info: MigrationInfo = serde_json::from_value(qemu.clone()).expect("QEMU's names");
        assert_eq!(serde_json::to_value(&info).ok(), Some(qemu));
    }
    // Before the first migration the answer is empty.
    assert_eq!(
        serde_json::to_value(MigrationInfo::default()).ok(),
        Some(json!({}))
    );
    // The members QEMU's answers above do not show.
    let info = MigrationInfo {
        status: Some(MigrationStatus::Failed),
        cpu_throttle_percentage: Some(20),
        error_desc: Some("x".into()),
        blocked_reasons: Some(vec!["y".into()]),
        socket_address: Some(Vec::new()),
        ..MigrationInfo::default()
    };
    assert_eq!(
        serde_json::to_value(&info).ok(),
        Some(
            json!({"status": "failed", "cpu-throttle-percentage": 20, "error-desc": "x",
                    "blocked-reasons": ["y"], "socket-address": []})
        )
    );
}

#[test]
fn event_data_and_thread_info() {
    // As QEMU 7.2 sent them.
    assert_eq!(
        serde_json::to_value(MigrationEvent {
            status: MigrationStatus::PreSwitchover
        })
        .ok(),
        Some(json!({"status": "pre-switchover"}))
    );
    assert_eq!(
        serde_json::to_value(MigrationPassEvent { pass: 2 }).ok(),
        Some(json!({"pass": 2}))
    );
    assert_eq!(
        serde_json::to_value(MigrationThreadInfo {
            name: "mig/src/main".into(),
            thread_id: 7
        })
        .ok(),
        Some(json!({"name": "mig/src/main", "thread-id": 7}))
    );
}

#[test]
fn migration_status_is_qemus_list() {
    assert_eq!(
        MigrationStatus::VALUES,
        [
            "none",
            "setup",
            "cancelling",
            "cancelled",
            "active",
            "postcopy-active",
            "postcopy-paused",
            "postcopy-recover-setup",
            "postcopy-recover",
            "completed",
            "failed",
            "colo",
            "pre-switchover",
            "device",
            "wait-unplug"
        ]
    );
    let a: Result<MigrateContinueArgs, _> = parse(json!({"state": "pre-switchover"}));
    assert_eq!(
        a.ok().map(|a| a.state),
        Some(MigrationStatus::PreSwitchover)
    );
    assert_eq!(
        err_text(parse::<MigrateContinueArgs>(json!({"state": "paused"}))).as_deref(),
        Some("Parameter 'state' does not accept value 'paused'")
    );
}

fn migrate(args: Value) -> Result<String, monitor::QmpError> {
    parse::<MigrateArgs>(args)?.target_uri()
}

fn incoming(args: Value) -> Result<String, monitor::QmpError> {
    parse::<MigrateIncomingArgs>(args)?.source_uri()
}

fn chan(addr: Value) -> Value {
    json!({"channels": [{"channel-type": "main", "addr": addr}]})
}

#[test]
fn channels_become_uris() {
    let cases = [
        (
            json!({"transport": "socket", "type": "inet", "host": "10.0.0.1", "port": "4444"}),
            "tcp:10.0.0.1:4444",
        ),
        (
            json!({"transport": "socket", "type": "inet", "host": "::1", "port": "4444"}),
            "tcp:[::1]:4444",
        ),
        (
            json!({"transport": "socket", "type": "unix", "path": "/run/mig.sock"}),
            "unix:/run/mig.sock",
        ),
        (
            json!({"transport": "socket", "type": "vsock", "cid": "3", "port": "1234"}),
            "vsock:3:1234",
        ),
        (
            json!({"transport": "socket", "type": "fd", "str": "migfd"}),
            "fd:migfd",
        ),
        (
            json!({"transport": "file", "filename": "/tmp/state", "offset": 4096}),
            "file:/tmp/state,offset=4096",
        ),
        // What QEMU makes of `exec:CMD` gives back `CMD`.
        (
            json!({"transport": "exec", "args": ["/bin/sh", "-c", "cat > /tmp/x"]}),
            "exec:cat > /tmp/x",
        ),
        // Any other argv is quoted so that /bin/sh runs the same argv.
        (
            json!({"transport": "exec", "args": ["nc", "-U", "/run/a b", "it's"]}),
            r"exec:nc -U '/run/a b' 'it'\''s'",
        ),
        (json!({"transport": "exec", "args": ["x", ""]}), "exec:x ''"),
    ];
    for (addr, uri) in cases {
        assert_eq!(
            migrate(chan(addr.clone())).ok().as_deref(),
            Some(uri),
            "{addr}"
        );
        assert_eq!(
            incoming(chan(addr.clone())).ok().as_deref(),
            Some(uri),
            "{addr}"
        );
        // The channel serializes back to what the client sent.
        let c: Result<MigrationChannel, _> =
            parse(json!({"channel-type": "main", "addr": addr.clone()}));
        assert_eq!(
            c.ok().and_then(|c| serde_json::to_value(c).ok()),
            Some(json!({"channel-type": "main", "addr": addr}))
        );
    }
    assert_eq!(
        migrate(json!({"uri": "tcp:h:1"})).ok().as_deref(),
        Some("tcp:h:1")
    );
}

#[test]
fn channel_refusals() {
    let both = "'uri' and 'channels' arguments are mutually exclusive; exactly one of the two should be present in 'migrate' qmp command ";
    let neither = "neither 'uri' or 'channels' argument are specified in 'migrate' qmp command ";
    let inet = json!({"channel-type": "main",
                      "addr": {"transport": "socket", "type": "inet", "host": "h", "port": "1"}});
    let cases = [
        (json!({}), neither),
        (json!({"channels": []}), neither),
        (json!({"uri": "tcp:h:1", "channels": [inet.clone()]}), both),
        (json!({"uri": "tcp:h:1", "channels": []}), both),
        (
            json!({"channels": [inet.clone(), inet.clone()]}),
            "Channel list has more than one entries",
        ),
        (
            chan(json!({"transport": "rdma", "host": "h", "port": "1"})),
            "Parameter 'uri' expects a valid migration protocol",
        ),
        (
            chan(json!({"transport": "exec", "args": []})),
            "Parameter 'args' expects a non-empty list of a program and its arguments",
        ),
        (
            chan(json!({"transport": "file", "filename": "a,offset=1", "offset": 0})),
            "File name 'a,offset=1' cannot be expressed as a migration URI: it contains ',offset='",
        ),
        // Schema refusals.
        (
            json!({"channels": [{"channel-type": "cpr", "addr": inet["addr"].clone()}]}),
            "Parameter 'channels[0].channel-type' does not accept value 'cpr'",
        ),
        (
            chan(json!({"transport": "pipe"})),
            "Parameter 'channels[0].addr.transport' does not accept value 'pipe'",
        ),
        (
            chan(json!({"transport": "socket", "type": "unix"})),
            "Parameter 'channels[0].addr.path' is missing",
        ),
        (
            chan(
                json!({"transport": "socket", "type": "inet", "host": "h", "port": "1", "ipv4": true}),
            ),
            "Parameter 'channels[0].addr.ipv4' is unexpected",
        ),
        (
            chan(json!({"transport": "file", "filename": "f"})),
            "Parameter 'channels[0].addr.offset' is missing",
        ),
    ];
    for (args, text) in cases {
        assert_eq!(
            err_text(migrate(args.clone())).as_deref(),
            Some(text),
            "{args}"
        );
    }
    assert_eq!(
        err_text(incoming(json!({}))).as_deref(),
        Some(
            "neither 'uri' or 'channels' argument are specified in 'migrate-incoming' qmp command "
        )
    );
    assert_eq!(
        err_text(incoming(json!({"uri": "tcp:h:1", "channels": [inet]}))).as_deref(),
        Some("'uri' and 'channels' arguments are mutually exclusive; exactly one of the two should be present in 'migrate-incoming' qmp command ")
    );
    assert_eq!(err_text(channels_to_uri(&[])).as_deref(), Some(neither));
}

#[test]
fn migrate_legacy_and_deprecated_arguments() {
    let uri = |extra: Value| {
        let mut a = json!({"uri": "tcp:h:1"});
        if let (Some(a), Some(e)) = (a.as_object_mut(), extra.as_object()) {
            a.extend(e.clone());
        }
        migrate(a)
    };
    let block = "QEMU compiled without old-style (blk/-b, inc/-i) block migration";
    assert_eq!(err_text(uri(json!({"blk": true}))).as_deref(), Some(block));
    assert_eq!(err_text(uri(json!({"inc": true}))).as_deref(), Some(block));
    assert_eq!(
        err_text(uri(json!({"resume": true}))).as_deref(),
        Some("Cannot resume if there is no paused migration")
    );
    for ok in [
        json!({"detach": true}),
        json!({"detach": false}),
        json!({"blk": false, "inc": false, "resume": false}),
    ] {
        assert_eq!(uri(ok.clone()).ok().as_deref(), Some("tcp:h:1"), "{ok}");
    }
    assert_eq!(
        err_text(uri(json!({"detach": "yes"}))).as_deref(),
        Some("Invalid parameter type for 'detach', expected: boolean")
    );
    let a: Result<MigrateIncomingArgs, _> = parse(json!({"uri": "tcp:0:4444"}));
    assert_eq!(a.ok().map(|a| a.exit_on_error()), Some(true));
    let a: Result<MigrateIncomingArgs, _> =
        parse(json!({"uri": "tcp:0:4444", "exit-on-error": false}));
    assert_eq!(a.ok().map(|a| a.exit_on_error()), Some(false));
}

/// `query-qmp-schema` tells clients which capabilities exist: only Kestrel's.
#[test]
fn schema_lists_only_supported_capabilities() {
    let mut r = monitor::Registry::new();
    let registered = r.register(
        "migrate-set-capabilities",
        |_, _: MigrateSetCapabilitiesArgs| Ok(monitor::Empty {}),
    );
    assert!(registered.is_ok());
    let schema = r.introspect(false);
    let cap_enum = schema
        .iter()
        .find(|e| e["name"] == "MigrationCapability")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        cap_enum["values"],
        json!([
            "auto-converge",
            "events",
            "pause-before-switchover",
            "multifd"
        ])
    );
    assert_eq!(
        MigrationCapability::VALUES.len(),
        4,
        "the enum and the schema are one list"
    );
}
