//! The QMP wire types of live migration, with QEMU's type and member names, member
//! order and integer widths (`qapi/migration.json`, `qapi/sockets.json`), so that
//! validation errors and `query-qmp-schema` read as QEMU's.
//!
//! What this module owns:
//! - the answers and event data: `MigrationInfo` (`query-migrate`), `MigrationStats`,
//!   `MigrationThreadInfo`, `MigrationEvent` (MIGRATION), `MigrationPassEvent`
//!   (MIGRATION_PASS);
//! - capabilities and parameters: `MigrationCapability` lists only the capabilities
//!   Kestrel honours, so the schema refuses any other name with QEMU's "does not accept
//!   value" error and `query-qmp-schema` tells libvirt the truth; `MigrationParameters`
//!   and `MigrateSetParameters` likewise carry only the parameters Kestrel honours;
//! - the arguments of `migrate`, `migrate-incoming` and `migrate-continue`, including
//!   QEMU 9.x's `channels`, and [`channels_to_uri`], which turns a channel into the
//!   URI the migration engine parses, so the engine has one input form.
//!
//! Unions (`MigrationAddress` on `transport`, `SocketAddress` on `type`) are Rust enums
//! that serde tags internally, with a hand-written `QmpType` giving the flat-union
//! schema; `qmp_struct!` cannot express them. The monitor's validation runs on the JSON
//! first, so a bad tag or member is refused with QEMU's text before serde sees it.

use monitor::schema::{MemberSchema, ObjectSchema, SchemaFn, TypeSchema, UnionSchema};
use monitor::{QmpError, QmpType};
use serde::{Deserialize, Serialize};

monitor::qmp_enum! {
    /// `MigrationStatus`, QEMU 9.2's full list in wire order. Kestrel never reaches
    /// the postcopy and COLO states, but they are valid values (`migrate-continue`
    /// takes one, and the schema must match QEMU's).
    pub enum MigrationStatus {
        None = "none",
        Setup = "setup",
        Cancelling = "cancelling",
        Cancelled = "cancelled",
        Active = "active",
        PostcopyActive = "postcopy-active",
        PostcopyPaused = "postcopy-paused",
        PostcopyRecoverSetup = "postcopy-recover-setup",
        PostcopyRecover = "postcopy-recover",
        Completed = "completed",
        Failed = "failed",
        Colo = "colo",
        PreSwitchover = "pre-switchover",
        Device = "device",
        WaitUnplug = "wait-unplug",
    }
}

monitor::qmp_struct! {
    /// `MigrationStats`: the `ram` block of `query-migrate` (QEMU 9.2's members;
    /// 7.2's `skipped` is gone).
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct MigrationStats {
        pub transferred: i64 = "transferred",
        pub remaining: i64 = "remaining",
        pub total: i64 = "total",
        pub duplicate: i64 = "duplicate",
        pub normal: i64 = "normal",
        pub normal_bytes: i64 = "normal-bytes",
        pub dirty_pages_rate: i64 = "dirty-pages-rate",
        /// Megabits per second.
        pub mbps: f64 = "mbps",
        pub dirty_sync_count: i64 = "dirty-sync-count",
        pub postcopy_requests: i64 = "postcopy-requests",
        pub page_size: i64 = "page-size",
        pub multifd_bytes: u64 = "multifd-bytes",
        pub pages_per_second: u64 = "pages-per-second",
        pub precopy_bytes: u64 = "precopy-bytes",
        pub downtime_bytes: u64 = "downtime-bytes",
        pub postcopy_bytes: u64 = "postcopy-bytes",
        pub dirty_sync_missed_zero_copy: u64 = "dirty-sync-missed-zero-copy",
    }
}

monitor::qmp_struct! {
    /// `MigrationInfo`, the answer of `query-migrate`: every member optional, `{}`
    /// before the first migration. Members for features Kestrel lacks (xbzrle, vfio,
    /// postcopy blocktime, dirty-limit) are left out of the type.
    #[derive(Debug, Clone, PartialEq, Default)]
    pub struct MigrationInfo {
        pub status: Option<MigrationStatus> = "status",
        pub ram: Option<MigrationStats> = "ram",
        pub total_time: Option<i64> = "total-time",
        pub expected_downtime: Option<i64> = "expected-downtime",
        pub downtime: Option<i64> = "downtime",
        pub setup_time: Option<i64> = "setup-time",
        pub cpu_throttle_percentage: Option<i64> = "cpu-throttle-percentage",
        pub error_desc: Option<String> = "error-desc",
        pub blocked_reasons: Option<Vec<String>> = "blocked-reasons",
        pub socket_address: Option<Vec<SocketAddress>> = "socket-address",
    }
}

monitor::qmp_struct! {
    /// `MigrationThreadInfo`, an element of `query-migrationthreads`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MigrationThreadInfo {
        pub name: String = "name",
        pub thread_id: i64 = "thread-id",
    }
}

monitor::qmp_struct! {
    /// Data of the MIGRATION event.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MigrationEvent {
        pub status: MigrationStatus = "status",
    }
}

monitor::qmp_struct! {
    /// Data of the MIGRATION_PASS event.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MigrationPassEvent {
        pub pass: i64 = "pass",
    }
}

monitor::qmp_enum! {
    /// `MigrationCapability`: only what Kestrel supports, in QEMU's relative order
    /// (QEMU's list is xbzrle, rdma-pin-all, auto-converge, zero-blocks, events, ...,
    /// pause-before-switchover, multifd, ...).
    pub enum MigrationCapability {
        AutoConverge = "auto-converge",
        Events = "events",
        PauseBeforeSwitchover = "pause-before-switchover",
        Multifd = "multifd",
    }
}

monitor::qmp_struct! {
    /// `MigrationCapabilityStatus`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MigrationCapabilityStatus {
        pub capability: MigrationCapability = "capability",
        pub state: bool = "state",
    }
}

monitor::qmp_struct! {
    /// Arguments of `migrate-set-capabilities`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MigrateSetCapabilitiesArgs {
        pub capabilities: Vec<MigrationCapabilityStatus> = "capabilities",
    }
}

monitor::qmp_struct! {
    /// `MigrationParameters`, the answer of `query-migrate-parameters`. QEMU declares
    /// every member optional but always fills them all; so does Kestrel.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct MigrationParameters {
        pub announce_initial: Option<u64> = "announce-initial",
        pub announce_max: Option<u64> = "announce-max",
        pub announce_rounds: Option<u64> = "announce-rounds",
        pub announce_step: Option<u64> = "announce-step",
        pub throttle_trigger_threshold: Option<u8> = "throttle-trigger-threshold",
        pub cpu_throttle_initial: Option<u8> = "cpu-throttle-initial",
        pub cpu_throttle_increment: Option<u8> = "cpu-throttle-increment",
        pub cpu_throttle_tailslow: Option<bool> = "cpu-throttle-tailslow",
        pub max_bandwidth: Option<u64> = "max-bandwidth",
        pub downtime_limit: Option<u64> = "downtime-limit",
        pub multifd_channels: Option<u8> = "multifd-channels",
        pub max_cpu_throttle: Option<u8> = "max-cpu-throttle",
    }
}

monitor::qmp_struct! {
    /// `MigrateSetParameters`, the arguments of `migrate-set-parameters`: what is
    /// given changes, the rest stays.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct MigrateSetParameters {
        pub announce_initial: Option<u64> = "announce-initial",
        pub announce_max: Option<u64> = "announce-max",
        pub announce_rounds: Option<u64> = "announce-rounds",
        pub announce_step: Option<u64> = "announce-step",
        pub throttle_trigger_threshold: Option<u8> = "throttle-trigger-threshold",
        pub cpu_throttle_initial: Option<u8> = "cpu-throttle-initial",
        pub cpu_throttle_increment: Option<u8> = "cpu-throttle-increment",
        pub cpu_throttle_tailslow: Option<bool> = "cpu-throttle-tailslow",
        pub max_bandwidth: Option<u64> = "max-bandwidth",
        pub downtime_limit: Option<u64> = "downtime-limit",
        pub multifd_channels: Option<u8> = "multifd-channels",
        pub max_cpu_throttle: Option<u8> = "max-cpu-throttle",
    }
}

// ---- addresses -------------------------------------------------------------------

monitor::qmp_struct! {
    /// `InetSocketAddress`: only `host` and `port`; QEMU's `numeric`, `to`, `ipv4`,
    /// `ipv6`, `keep-alive` and `mptcp` are not accepted.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct InetSocketAddress {
        pub host: String = "host",
        pub port: String = "port",
    }
}

monitor::qmp_struct! {
    /// `UnixSocketAddress`: only `path` (no abstract namespace).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UnixSocketAddress {
        pub path: String = "path",
    }
}

monitor::qmp_struct! {
    /// `VsockSocketAddress`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VsockSocketAddress {
        pub cid: String = "cid",
        pub port: String = "port",
    }
}

monitor::qmp_struct! {
    /// `FdSocketAddress`: a file descriptor name (from `getfd`) or number.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FdSocketAddress {
        pub str: String = "str",
    }
}

monitor::qmp_enum! {
    /// `SocketAddressType`, the tag of `SocketAddress`.
    pub enum SocketAddressType {
        Inet = "inet",
        Unix = "unix",
        Vsock = "vsock",
        Fd = "fd",
    }
}

/// `SocketAddress`, a union on `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SocketAddress {
    #[serde(rename = "inet")]
    Inet(InetSocketAddress),
    #[serde(rename = "unix")]
    Unix(UnixSocketAddress),
    #[serde(rename = "vsock")]
    Vsock(VsockSocketAddress),
    #[serde(rename = "fd")]
    Fd(FdSocketAddress),
}

/// The schema of a flat union: its tag member, and one variant per tag value.
fn union_schema(
    name: &'static str,
    tag: MemberSchema,
    variants: Vec<(&'static str, SchemaFn)>,
) -> TypeSchema {
    let tag_name = tag.name;
    TypeSchema::Object(ObjectSchema {
        name,
        members: vec![tag],
        union: Some(UnionSchema {
            tag: tag_name,
            variants,
        }),
    })
}

impl QmpType for SocketAddress {
    fn schema() -> TypeSchema {
        union_schema(
            "SocketAddress",
            MemberSchema::of::<SocketAddressType>("type"),
            vec![
                ("inet", InetSocketAddress::schema),
                ("unix", UnixSocketAddress::schema),
                ("vsock", VsockSocketAddress::schema),
                ("fd", FdSocketAddress::schema),
            ],
        )
    }
}

monitor::qmp_struct! {
    /// `MigrationExecCommand`: the program and its arguments, run without a shell.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MigrationExecCommand {
        pub args: Vec<String> = "args",
    }
}

monitor::qmp_struct! {
    /// `FileMigrationArgs`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct FileMigrationArgs {
        pub filename: String = "filename",
        pub offset: u64 = "offset",
    }
}

monitor::qmp_enum! {
    /// `MigrationAddressType`, the tag of `MigrationAddress`.
    pub enum MigrationAddressType {
        Socket = "socket",
        Exec = "exec",
        Rdma = "rdma",
        File = "file",
    }
}

/// `MigrationAddress`, a union on `transport`. `rdma` is in the schema, as in every
/// QEMU build, and refused when used, as by a QEMU built without RDMA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "transport")]
pub enum MigrationAddress {
    #[serde(rename = "socket")]
    Socket(SocketAddress),
    #[serde(rename = "exec")]
    Exec(MigrationExecCommand),
    #[serde(rename = "rdma")]
    Rdma(InetSocketAddress),
    #[serde(rename = "file")]
    File(FileMigrationArgs),
}

impl QmpType for MigrationAddress {
    fn schema() -> TypeSchema {
        union_schema(
            "MigrationAddress",
            MemberSchema::of::<MigrationAddressType>("transport"),
            vec![
                ("socket", SocketAddress::schema),
                ("exec", MigrationExecCommand::schema),
                ("rdma", InetSocketAddress::schema),
                ("file", FileMigrationArgs::schema),
            ],
        )
    }
}

monitor::qmp_enum! {
    /// `MigrationChannelType`: QEMU 9.2 has only `main` (10.0 adds `cpr`).
    pub enum MigrationChannelType {
        Main = "main",
    }
}

monitor::qmp_struct! {
    /// `MigrationChannel`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MigrationChannel {
        pub channel_type: MigrationChannelType = "channel-type",
        pub addr: MigrationAddress = "addr",
    }
}

// ---- command arguments -----------------------------------------------------------

monitor::qmp_struct! {
    /// Arguments of `migrate`: QEMU 9.2's `uri`, `channels`, `detach` (deprecated,
    /// ignored) and `resume`, plus QEMU 2.x–9.0's `blk` and `inc`, accepted for old
    /// clients and refused when true.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct MigrateArgs {
        pub uri: Option<String> = "uri",
        pub channels: Option<Vec<MigrationChannel>> = "channels",
        pub blk: Option<bool> = "blk",
        pub inc: Option<bool> = "inc",
        pub detach: Option<bool> = "detach",
        pub resume: Option<bool> = "resume",
    }
}

monitor::qmp_struct! {
    /// Arguments of `migrate-incoming`.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct MigrateIncomingArgs {
        pub uri: Option<String> = "uri",
        pub channels: Option<Vec<MigrationChannel>> = "channels",
        /// Default true: on failure, exit; false: stay in `failed` for inspection.
        pub exit_on_error: Option<bool> = "exit-on-error",
    }
}

monitor::qmp_struct! {
    /// Arguments of `migrate-continue`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MigrateContinueArgs {
        pub state: MigrationStatus = "state",
    }
}

/// QEMU's text when old-style block migration is asked for and not built in.
pub const NO_BLOCK_MIGRATION: &str =
    "QEMU compiled without old-style (blk/-b, inc/-i) block migration";

/// QEMU's text for `resume: true` without a paused postcopy migration (Kestrel has no
/// postcopy, so there never is one).
pub const NO_PAUSED_MIGRATION: &str = "Cannot resume if there is no paused migration";

impl MigrateArgs {
    /// The URI to migrate to, after QEMU 9.2's checks in its order: `uri` or
    /// `channels` (exactly one), then `resume`, then `blk`/`inc`. `detach` is
    /// ignored, as QEMU does (migration always runs in the background).
    pub fn target_uri(&self) -> Result<String, QmpError> {
        let uri = uri_or_channels("migrate", self.uri.as_deref(), self.channels.as_deref())?;
        if self.resume == Some(true) {
            return Err(QmpError::generic(NO_PAUSED_MIGRATION));
        }
        if self.blk == Some(true) || self.inc == Some(true) {
            return Err(QmpError::generic(NO_BLOCK_MIGRATION));
        }
        Ok(uri)
    }
}

impl MigrateIncomingArgs {
    /// The URI to listen on (`uri` or `channels`, exactly one, as QEMU 9.2 checks).
    pub fn source_uri(&self) -> Result<String, QmpError> {
        uri_or_channels(
            "migrate-incoming",
            self.uri.as_deref(),
            self.channels.as_deref(),
        )
    }

    /// `exit-on-error`, default true.
    pub fn exit_on_error(&self) -> bool {
        self.exit_on_error.unwrap_or(true)
    }
}

/// QEMU 9.2's choice between `uri` and `channels` for `command`. As in QEMU, an empty
/// `channels` list counts as given when `uri` is also given, and as absent otherwise.
/// The texts (with their trailing space) are QEMU's.
fn uri_or_channels(
    command: &str,
    uri: Option<&str>,
    channels: Option<&[MigrationChannel]>,
) -> Result<String, QmpError> {
    match (uri, channels) {
        (Some(_), Some(_)) => Err(QmpError::generic(format!(
            "'uri' and 'channels' arguments are mutually exclusive; exactly one of the \
             two should be present in '{command}' qmp command "
        ))),
        (None, Some(c)) if !c.is_empty() => channels_to_uri(c),
        (Some(u), None) => Ok(u.to_string()),
        _ => Err(QmpError::generic(format!(
            "neither 'uri' or 'channels' argument are specified in '{command}' qmp command "
        ))),
    }
}

/// QEMU's error for a transport this build cannot use (QEMU built without RDMA says
/// it for `rdma`).
fn invalid_protocol() -> QmpError {
    QmpError::generic("Parameter 'uri' expects a valid migration protocol")
}

/// The URI equivalent to exactly one `main` channel, in the syntax QEMU's
/// `migrate_uri_parse` reads back into the same address: `tcp:HOST:PORT` (an IPv6
/// host in brackets), `unix:PATH`, `vsock:CID:PORT`, `fd:NAME`,
/// `file:PATH,offset=N`, and `exec:CMD`, where `["/bin/sh", "-c", CMD]` (what QEMU
/// makes of `exec:CMD`) gives back `CMD` and any other argument list is quoted for
/// `/bin/sh` so that the shell runs the same argv.
///
/// Refused: no channel or more than one (QEMU 9.2's "Channel list has more than one
/// entries"), `rdma`, an empty `exec` argument list, and a file name that the URI's
/// `,offset=` suffix would split.
pub fn channels_to_uri(channels: &[MigrationChannel]) -> Result<String, QmpError> {
    let channel = match channels {
        [] => {
            return Err(QmpError::generic(
                "neither 'uri' or 'channels' argument are specified in 'migrate' qmp command ",
            ))
        }
        [one] => one,
        _ => return Err(QmpError::generic("Channel list has more than one entries")),
    };
    // The only channel type is `main`: the schema refuses any other.
    let MigrationChannelType::Main = channel.channel_type;
    match &channel.addr {
        MigrationAddress::Socket(SocketAddress::Inet(a)) => Ok(format!("tcp:{}", inet(a))),
        MigrationAddress::Socket(SocketAddress::Unix(a)) => Ok(format!("unix:{}", a.path)),
        MigrationAddress::Socket(SocketAddress::Vsock(a)) => {
            Ok(format!("vsock:{}:{}", a.cid, a.port))
        }
        MigrationAddress::Socket(SocketAddress::Fd(a)) => Ok(format!("fd:{}", a.str)),
        MigrationAddress::Exec(e) => exec_uri(&e.args),
        MigrationAddress::Rdma(_) => Err(invalid_protocol()),
        MigrationAddress::File(f) => {
            if f.filename.contains(",offset=") {
                return Err(QmpError::generic(format!(
                    "File name '{}' cannot be expressed as a migration URI: it contains ',offset='",
                    f.filename
                )));
            }
            Ok(format!("file:{},offset={}", f.filename, f.offset))
        }
    }
}

/// `HOST:PORT`, with an IPv6 literal in brackets as QEMU's `inet_parse` expects.
fn inet(a: &InetSocketAddress) -> String {
    if a.host.contains(':') && !a.host.starts_with('[') {
        format!("[{}]:{}", a.host, a.port)
    } else {
        format!("{}:{}", a.host, a.port)
    }
}

fn exec_uri(args: &[String]) -> Result<String, QmpError> {
    match args {
        [] => Err(QmpError::generic(
            "Parameter 'args' expects a non-empty list of a program and its arguments",
        )),
        [sh, c, cmd] if sh == "/bin/sh" && c == "-c" => Ok(format!("exec:{cmd}")),
        _ => {
            let words: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
            Ok(format!("exec:{}", words.join(" ")))
        }
    }
}

/// One word for `/bin/sh`: bare when it has only characters the shell leaves alone,
/// otherwise single-quoted (a `'` inside becomes `'\''`).
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}
