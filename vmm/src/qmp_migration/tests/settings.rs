//! The settings store: defaults, refusals with QEMU's texts, all-or-nothing changes and
//! the values the engine reads.

use serde_json::{json, Value};

use super::{err_text, parse};
use crate::qmp_migration::settings::{
    Announce, MigrationSettings, MIGRATION_ACTIVE, MULTIFD_AFTER_INCOMING,
};
use crate::qmp_migration::types::{
    MigrateSetCapabilitiesArgs, MigrateSetParameters, MigrationCapability,
    MigrationCapabilityStatus,
};

/// QEMU 7.2's `query-migrate-parameters` before any change.
const QEMU_7_2_PARAMETERS: &str = r#"{"cpu-throttle-tailslow": false, "xbzrle-cache-size": 67108864, "cpu-throttle-initial": 20, "announce-max": 550, "decompress-threads": 2, "compress-threads": 8, "compress-level": 1, "multifd-channels": 2, "multifd-zstd-level": 1, "announce-initial": 50, "block-incremental": false, "compress-wait-thread": true, "downtime-limit": 300, "tls-authz": "", "multifd-compression": "none", "announce-rounds": 5, "announce-step": 100, "tls-creds": "", "multifd-zlib-level": 1, "max-cpu-throttle": 99, "max-postcopy-bandwidth": 0, "tls-hostname": "", "throttle-trigger-threshold": 50, "max-bandwidth": 134217728, "x-checkpoint-delay": 20000, "cpu-throttle-increment": 10}"#;

/// The capability names of QEMU 7.2's `query-migrate-capabilities`, in its order.
const QEMU_7_2_CAPABILITIES: &[&str] = &[
    "xbzrle",
    "rdma-pin-all",
    "auto-converge",
    "zero-blocks",
    "compress",
    "events",
    "postcopy-ram",
    "x-colo",
    "release-ram",
    "block",
    "return-path",
    "pause-before-switchover",
    "multifd",
    "dirty-bitmaps",
    "postcopy-blocktime",
    "late-block-activate",
    "x-ignore-shared",
    "validate-uuid",
    "background-snapshot",
    "zero-copy-send",
    "postcopy-preempt",
];

fn to_json<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

/// Runs `migrate-set-parameters` as a client would: validation, then the store.
fn set_params(s: &mut MigrationSettings, args: Value) -> Result<(), monitor::QmpError> {
    let p: MigrateSetParameters = parse(args)?;
    s.set_parameters(p)
}

fn set_caps(s: &mut MigrationSettings, args: Value, active: bool) -> Result<(), monitor::QmpError> {
    let a: MigrateSetCapabilitiesArgs = parse(args)?;
    s.set_capabilities(&a.capabilities, active)
}

fn caps_json(s: &MigrationSettings) -> Value {
    to_json(&s.capabilities())
}

#[test]
fn settings_default_parameters_are_qemu_7_2s() {
    let qemu: Value = serde_json::from_str(QEMU_7_2_PARAMETERS).unwrap_or(Value::Null);
    let ours = to_json(&MigrationSettings::new().parameters());
    let ours = ours.as_object().cloned().unwrap_or_default();
    assert_eq!(
        ours.len(),
        12,
        "every parameter is always present: {ours:?}"
    );
    for (name, value) in &ours {
        assert_eq!(Some(value), qemu.get(name), "{name}");
    }
}

#[test]
fn settings_default_capabilities_are_off_in_qemus_order() {
    let caps = MigrationSettings::new().capabilities();
    let names: Vec<&str> = caps.iter().map(|c| c.capability.as_str()).collect();
    assert_eq!(
        names,
        [
            "auto-converge",
            "events",
            "pause-before-switchover",
            "multifd"
        ]
    );
    assert!(caps.iter().all(|c| !c.state));
    // Kestrel's list is QEMU's, with the unsupported ones left out.
    let qemu_order: Vec<&str> = QEMU_7_2_CAPABILITIES
        .iter()
        .copied()
        .filter(|n| names.contains(n))
        .collect();
    assert_eq!(names, qemu_order);
    assert_eq!(
        caps_json(&MigrationSettings::new())[1],
        json!({"capability": "events", "state": false})
    );
}

/// Each refusal, with the text QEMU 7.2 answered for the same arguments.
#[test]
fn settings_parameter_refusals_have_qemus_texts() {
    let cases = [
        (json!({"cpu-throttle-initial": 0}), "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
        (json!({"cpu-throttle-initial": 100}), "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
        (json!({"cpu-throttle-increment": 0}), "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"),
        (json!({"cpu-throttle-increment": 100}), "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99"),
        (json!({"throttle-trigger-threshold": 0}), "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100"),
        (json!({"throttle-trigger-threshold": 101}), "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100"),
        (json!({"max-cpu-throttle": 0}), "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
        (json!({"max-cpu-throttle": 100}), "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
        (json!({"multifd-channels": 0}), "Parameter 'multifd_channels' expects a value between 1 and 255"),
        (json!({"multifd-channels": 256}), "Parameter 'multifd-channels' expects uint8_t"),
        (json!({"downtime-limit": 2000001}), "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"),
        (json!({"downtime-limit": -1}), "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"),
        (json!({"announce-initial": 100001}), "Parameter 'announce_initial' expects a value between 0 and 100000"),
        (json!({"announce-initial": -1}), "Parameter 'announce_initial' expects a value between 0 and 100000"),
        (json!({"announce-max": 100001}), "Parameter 'announce_max' expects a value between 0 and 100000"),
        (json!({"announce-rounds": 1001}), "Parameter 'announce_rounds' expects a value between 0 and 1000"),
        (json!({"announce-step": 0}), "Parameter 'announce_step' expects a value between 0 and 10000"),
        (json!({"announce-step": 10001}), "Parameter 'announce_step' expects a value between 0 and 10000"),
        (json!({"cpu-throttle-initial": 256}), "Parameter 'cpu-throttle-initial' expects uint8_t"),
        (json!({"cpu-throttle-initial": -1}), "Parameter 'cpu-throttle-initial' expects uint8_t"),
        // Two bad values: QEMU reports the first in its check order.
        (json!({"multifd-channels": 0, "cpu-throttle-initial": 0}), "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99"),
        (json!({"cpu-throttle-initial": 33, "multifd-channels": 0}), "Parameter 'multifd_channels' expects a value between 1 and 255"),
        (json!({"bogus": 1}), "Parameter 'bogus' is unexpected"),
        (json!({"cpu-throttle-tailslow": 1}), "Invalid parameter type for 'cpu-throttle-tailslow', expected: boolean"),
        // QEMU parameters Kestrel does not honour are not accepted.
        (json!({"xbzrle-cache-size": 67108864}), "Parameter 'xbzrle-cache-size' is unexpected"),
        (json!({"tls-creds": ""}), "Parameter 'tls-creds' is unexpected"),
    ];
    for (args, text) in cases {
        let mut s = MigrationSettings::new();
        let before = s.clone();
        assert_eq!(
            err_text(set_params(&mut s, args.clone())).as_deref(),
            Some(text),
            "{args}"
        );
        assert_eq!(
            s, before,
            "a refused change leaves everything as it was: {args}"
        );
    }
}

#[test]
fn settings_parameters_qemu_accepts() {
    let mut s = MigrationSettings::new();
    // QEMU 7.2 accepted each of these.
    for args in [
        json!({"max-bandwidth": 18446744073709551615u64}),
        json!({"max-bandwidth": 2199023255552u64}),
        json!({"announce-initial": 0}),
        json!({"announce-max": 0}),
        json!({"announce-rounds": 0}),
        json!({}),
    ] {
        assert_eq!(err_text(set_params(&mut s, args.clone())), None, "{args}");
    }
    // A negative size wraps, as QEMU's uint64 does.
    assert_eq!(
        err_text(set_params(&mut s, json!({"max-bandwidth": -1}))),
        None
    );
    assert_eq!(s.parameters().max_bandwidth, Some(u64::MAX));
    // QEMU 7.2's answer after this very command.
    let r = set_params(
        &mut s,
        json!({"announce-initial": 1, "announce-max": 1, "announce-rounds": 1,
               "announce-step": 1, "downtime-limit": 0, "max-bandwidth": 0}),
    );
    assert_eq!(err_text(r), None);
    let p = to_json(&s.parameters());
    for (k, v) in [
        ("announce-initial", 1),
        ("announce-max", 1),
        ("announce-rounds", 1),
        ("announce-step", 1),
        ("downtime-limit", 0),
        ("max-bandwidth", 0),
        ("cpu-throttle-initial", 20),
    ] {
        assert_eq!(p[k], json!(v), "{k}");
    }
}

#[test]
fn settings_parameters_are_all_or_nothing() {
    let mut s = MigrationSettings::new();
    let r = set_params(
        &mut s,
        json!({"downtime-limit": 1000, "cpu-throttle-initial": 33, "multifd-channels": 0}),
    );
    assert!(r.is_err());
    assert_eq!(s.parameters(), MigrationSettings::new().parameters());

    // The check runs on the whole resulting set: max-cpu-throttle is compared with
    // the new cpu-throttle-initial even when only one of them is given.
    assert_eq!(
        err_text(set_params(&mut s, json!({"max-cpu-throttle": 50}))),
        None
    );
    assert_eq!(
        err_text(set_params(&mut s, json!({"cpu-throttle-initial": 60}))).as_deref(),
        Some("Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99")
    );
    assert_eq!(s.parameters().cpu_throttle_initial, Some(20));
    // Both at once is fine.
    let r = set_params(
        &mut s,
        json!({"cpu-throttle-initial": 60, "max-cpu-throttle": 70}),
    );
    assert_eq!(err_text(r), None);
    assert_eq!(s.limits().cpu_throttle_initial, 60);
    assert_eq!(s.limits().cpu_throttle_max, 70);
}

#[test]
fn settings_capability_changes() {
    let mut s = MigrationSettings::new();
    let on = |c: &str| json!({"capabilities": [{"capability": c, "state": true}]});
    assert_eq!(err_text(set_caps(&mut s, on("events"), false)), None);
    assert!(s.events());
    assert_eq!(
        caps_json(&s)[1],
        json!({"capability": "events", "state": true})
    );

    // While a migration runs nothing changes.
    assert_eq!(
        err_text(set_caps(&mut s, on("multifd"), true)).as_deref(),
        Some(MIGRATION_ACTIVE)
    );
    assert_eq!(MIGRATION_ACTIVE, "There's a migration process in progress");
    assert!(!s.multifd());

    // Entries apply in order; the last for a capability wins (as QEMU 7.2 did).
    let args = json!({"capabilities": [
        {"capability": "multifd", "state": true},
        {"capability": "auto-converge", "state": true},
        {"capability": "multifd", "state": false},
    ]});
    assert_eq!(err_text(set_caps(&mut s, args, false)), None);
    assert!(!s.multifd());
    assert!(s.auto_converge());
    assert!(s.limits().auto_converge);
    assert_eq!(
        err_text(set_caps(&mut s, json!({"capabilities": []}), false)),
        None
    );
    assert!(s.events() && s.auto_converge());
}

#[test]
fn settings_multifd_is_fixed_once_incoming_started() {
    let mut s = MigrationSettings::new();
    s.set_incoming_started(true);
    let caps = [
        MigrationCapabilityStatus {
            capability: MigrationCapability::Events,
            state: true,
        },
        MigrationCapabilityStatus {
            capability: MigrationCapability::Multifd,
            state: true,
        },
    ];
    assert_eq!(
        err_text(s.set_capabilities(&caps, false)).as_deref(),
        Some(MULTIFD_AFTER_INCOMING)
    );
    assert!(!s.events(), "all or nothing");
    assert_eq!(err_text(s.set_capabilities(&caps[..1], false)), None);
    assert!(s.events());
    s.set_incoming_started(false);
    assert_eq!(err_text(s.set_capabilities(&caps, false)), None);
    assert!(s.multifd());
}

#[test]
fn settings_capability_arguments_are_validated_by_the_schema() {
    let mut s = MigrationSettings::new();
    let cases = [
        // An unsupported QEMU capability is refused as an unknown value. (QEMU 7.2
        // names the member alone, 'capability'; the monitor gives the full path, as
        // it does for every nested member.)
        (
            json!({"capabilities": [{"capability": "xbzrle", "state": true}]}),
            "Parameter 'capabilities[0].capability' does not accept value 'xbzrle'",
        ),
        (
            json!({"capabilities": [{"capability": "postcopy-ram", "state": false}]}),
            "Parameter 'capabilities[0].capability' does not accept value 'postcopy-ram'",
        ),
        // These three are QEMU 7.2's texts exactly.
        (
            json!({"capabilities": [{"capability": "events"}]}),
            "Parameter 'capabilities[0].state' is missing",
        ),
        (
            json!({"capabilities": [{"capability": "events", "state": true, "x": 1}]}),
            "Parameter 'capabilities[0].x' is unexpected",
        ),
        (json!({}), "Parameter 'capabilities' is missing"),
    ];
    for (args, text) in cases {
        assert_eq!(
            err_text(set_caps(&mut s, args.clone(), false)).as_deref(),
            Some(text),
            "{args}"
        );
    }
    assert_eq!(s, MigrationSettings::new());
}

#[test]
fn settings_getters_for_the_engine() {
    let mut s = MigrationSettings::new();
    assert_eq!(s.max_bandwidth(), Some(134_217_728));
    assert_eq!(s.downtime_limit_ms(), 300);
    assert_eq!(s.multifd_channels(), 2);
    assert!(!s.cpu_throttle_tailslow());
    assert!(!s.pause_before_switchover());
    assert_eq!(
        s.announce(),
        Announce {
            initial_ms: 50,
            max_ms: 550,
            rounds: 5,
            step_ms: 100
        }
    );
    // The defaults are the convergence decision's own.
    assert_eq!(s.limits(), migration::convergence::Limits::default());

    let r = set_params(
        &mut s,
        json!({"max-bandwidth": 0, "downtime-limit": 50, "throttle-trigger-threshold": 80,
               "cpu-throttle-increment": 5, "cpu-throttle-tailslow": true,
               "multifd-channels": 8, "announce-step": 7}),
    );
    assert_eq!(err_text(r), None);
    let r = set_caps(
        &mut s,
        json!({"capabilities": [{"capability": "pause-before-switchover", "state": true}]}),
        false,
    );
    assert_eq!(err_text(r), None);
    assert_eq!(s.max_bandwidth(), None, "0 is no limit");
    assert_eq!(s.downtime_limit_ms(), 50);
    assert_eq!(s.multifd_channels(), 8);
    assert!(s.cpu_throttle_tailslow());
    assert!(s.pause_before_switchover());
    assert_eq!(s.announce().step_ms, 7);
    let l = s.limits();
    assert_eq!(
        (
            l.downtime_limit_ms,
            l.throttle_trigger_threshold,
            l.cpu_throttle_increment
        ),
        (50, 80, 5)
    );

    // Parameters change while migrating (the engine applies them live).
    assert_eq!(
        err_text(set_params(&mut s, json!({"downtime-limit": 1000}))),
        None
    );
    assert_eq!(s.downtime_limit_ms(), 1000);
}
