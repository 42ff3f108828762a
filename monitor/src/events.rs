//! Asynchronous events: the `Event` value with its timestamp, the clock it is taken
//! from, QEMU's rate limiting (qmp-protocol.md §8.1) and the bus that collects events
//! for the monitor to deliver to every negotiated session.
//!
//! Throttling happens once, before delivery, like QEMU's `monitor_qapi_event_queue`: the
//! first event of a key goes out at once and opens a 1 s window; events raised inside the
//! window replace each other; when the window closes the last one goes out (with its
//! own, earlier, timestamp) and a new window opens. The clock is a trait so tests drive
//! windows deterministically.

use crate::runstate::{CoreEvent, GuestPanicAction, ShutdownCause, WatchdogAction};
use crate::schema::{
    Empty, MemberSchema, ObjectSchema, QmpType, SchemaFn, TypeSchema, UnionSchema,
};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `{"seconds", "microseconds"}`: host wall-clock time when the event was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    pub seconds: i64,
    pub microseconds: i64,
}

impl Timestamp {
    /// What QEMU sends when the host time cannot be read.
    pub const UNKNOWN: Timestamp = Timestamp {
        seconds: -1,
        microseconds: -1,
    };
}

/// Time sources: monotonic for throttle windows, wall-clock for timestamps.
pub trait Clock: Send {
    fn monotonic(&self) -> Duration;
    fn wall(&self) -> Timestamp;
}

/// The host clocks.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }

    fn wall(&self) -> Timestamp {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                microseconds: i64::from(d.subsec_micros()),
            },
            Err(_) => Timestamp::UNKNOWN,
        }
    }
}

/// One event as delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    /// `None` when the event has no data members: the `data` key is then left out.
    pub data: Option<Map<String, Value>>,
    pub timestamp: Timestamp,
}

impl Event {
    /// An event with typed data; empty data (e.g. `Empty`) leaves `data` out.
    pub fn new<D: Serialize>(name: &str, data: &D, timestamp: Timestamp) -> Self {
        let data = match serde_json::to_value(data) {
            Ok(Value::Object(m)) if !m.is_empty() => Some(m),
            _ => None,
        };
        Event {
            name: name.to_string(),
            data,
            timestamp,
        }
    }
}

/// QEMU's rate-limited events and the data member that keys them (§8.1); `None` keys by
/// name alone.
pub const THROTTLED_EVENTS: [(&str, Option<&str>); 9] = [
    ("RTC_CHANGE", None),
    ("WATCHDOG", None),
    ("BALLOON_CHANGE", None),
    ("QUORUM_FAILURE", None),
    ("QUORUM_REPORT_BAD", Some("node-name")),
    ("VSERPORT_CHANGE", Some("id")),
    ("MEMORY_DEVICE_SIZE_CHANGE", Some("qom-path")),
    ("BLOCK_IO_ERROR", Some("qom-path")),
    ("HV_BALLOON_STATUS_REPORT", None),
];

/// One event per key per second.
pub const THROTTLE_PERIOD: Duration = Duration::from_millis(1000);

type ThrottleKey = (String, Option<String>);

#[derive(Debug)]
struct Window {
    end: Duration,
    pending: Option<Event>,
}

/// The rate limiter alone, on explicit times.
#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    windows: HashMap<ThrottleKey, Window>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(THROTTLE_PERIOD)
    }
}

impl Throttle {
    pub fn new(period: Duration) -> Self {
        Throttle {
            period,
            windows: HashMap::new(),
        }
    }

    fn key(ev: &Event) -> Option<ThrottleKey> {
        let (_, member) = THROTTLED_EVENTS.iter().find(|(n, _)| *n == ev.name)?;
        let sub = member.and_then(|m| {
            ev.data.as_ref().and_then(|d| d.get(m)).map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
        });
        Some((ev.name.clone(), sub))
    }

    /// Offers an event raised at `now`: returns it if it goes out now, or keeps it
    /// (replacing an older one of its key) until its window closes.
    pub fn offer(&mut self, ev: Event, now: Duration) -> Option<Event> {
        let Some(key) = Self::key(&ev) else {
            return Some(ev);
        };
        match self.windows.get_mut(&key) {
            Some(w) => {
                w.pending = Some(ev);
                None
            }
            None => {
                self.windows.insert(
                    key,
                    Window {
                        end: now + self.period,
                        pending: None,
                    },
                );
                Some(ev)
            }
        }
    }

    /// Closes the windows that ended by `now`: their stored events are returned (in
    /// window order) and reopen a window; windows with nothing stored are dropped.
    pub fn expire(&mut self, now: Duration) -> Vec<Event> {
        let mut due: Vec<(Duration, ThrottleKey)> = self
            .windows
            .iter()
            .filter(|(_, w)| w.end <= now)
            .map(|(k, w)| (w.end, k.clone()))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, key) in due {
            let pending = self.windows.get_mut(&key).and_then(|w| w.pending.take());
            match pending {
                Some(ev) => {
                    if let Some(w) = self.windows.get_mut(&key) {
                        w.end = now + self.period;
                    }
                    out.push(ev);
                }
                None => {
                    self.windows.remove(&key);
                }
            }
        }
        out
    }

    /// When the earliest window closes, if any is open.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.windows.values().map(|w| w.end).min()
    }
}

/// Collects the events raised while the monitor works, throttled, ready for delivery.
pub struct EventBus {
    clock: Box<dyn Clock>,
    throttle: Throttle,
    ready: Vec<Event>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("throttle", &self.throttle)
            .field("ready", &self.ready)
            .finish()
    }
}

impl EventBus {
    pub fn new(clock: Box<dyn Clock>) -> Self {
        EventBus {
            clock,
            throttle: Throttle::default(),
            ready: Vec::new(),
        }
    }

    /// Raises an event now with typed data.
    pub fn emit<D: Serialize>(&mut self, name: &str, data: &D) {
        let ev = Event::new(name, data, self.clock.wall());
        self.emit_event(ev);
    }

    /// Raises an already built event (its timestamp is kept).
    pub fn emit_event(&mut self, ev: Event) {
        if let Some(ev) = self.throttle.offer(ev, self.clock.monotonic()) {
            self.ready.push(ev);
        }
    }

    /// Raises one of the run-state events.
    pub fn emit_core(&mut self, ev: &CoreEvent) {
        let (name, data) = core_event_parts(ev);
        let ev = Event {
            name: name.to_string(),
            data,
            timestamp: self.clock.wall(),
        };
        self.emit_event(ev);
    }

    /// Moves events whose throttle window closed to the ready list.
    pub fn poll(&mut self) {
        let now = self.clock.monotonic();
        let expired = self.throttle.expire(now);
        self.ready.extend(expired);
    }

    /// Takes the events ready for delivery, in order.
    pub fn take_ready(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.ready)
    }

    /// Time from now until a throttle window closes, if one is open.
    pub fn next_deadline(&self) -> Option<Duration> {
        let now = self.clock.monotonic();
        self.throttle.next_deadline().map(|d| d.saturating_sub(now))
    }

    pub fn wall(&self) -> Timestamp {
        self.clock.wall()
    }
}

crate::qmp_struct! {
    /// Data of SHUTDOWN and RESET.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ShutdownEventData {
        pub guest: bool = "guest",
        pub reason: ShutdownCause = "reason",
    }
}

crate::qmp_struct! {
    /// Data of WATCHDOG.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WatchdogEventData {
        pub action: WatchdogAction = "action",
    }
}

crate::qmp_struct! {
    /// Data of GUEST_PANICKED and GUEST_CRASHLOADED.
    #[derive(Debug, Clone, PartialEq)]
    pub struct GuestPanickedEventData {
        pub action: GuestPanicAction = "action",
        pub info: Option<GuestPanicInformation> = "info",
    }
}

/// `GuestPanicInformation`, a union on `type` (`hyper-v`, `s390`); the device that
/// detected the panic builds the JSON.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct GuestPanicInformation(pub Value);

crate::qmp_enum! {
    pub enum GuestPanicInformationType { HyperV = "hyper-v", S390 = "s390" }
}

crate::qmp_enum! {
    pub enum S390CrashReason {
        Unknown = "unknown",
        DisabledWait = "disabled-wait",
        ExtintLoop = "extint-loop",
        PgmintLoop = "pgmint-loop",
        OpintLoop = "opint-loop",
    }
}

crate::qmp_struct! {
    pub struct GuestPanicInformationHyperV {
        pub arg1: u64 = "arg1",
        pub arg2: u64 = "arg2",
        pub arg3: u64 = "arg3",
        pub arg4: u64 = "arg4",
        pub arg5: u64 = "arg5",
    }
}

crate::qmp_struct! {
    pub struct GuestPanicInformationS390 {
        pub core: u32 = "core",
        pub psw_mask: u64 = "psw-mask",
        pub psw_addr: u64 = "psw-addr",
        pub reason: S390CrashReason = "reason",
    }
}

impl QmpType for GuestPanicInformation {
    fn schema() -> TypeSchema {
        TypeSchema::Object(ObjectSchema {
            name: "GuestPanicInformation",
            members: vec![MemberSchema::of::<GuestPanicInformationType>("type")],
            union: Some(UnionSchema {
                tag: "type",
                variants: vec![
                    ("hyper-v", GuestPanicInformationHyperV::schema),
                    ("s390", GuestPanicInformationS390::schema),
                ],
            }),
        })
    }
}

crate::qmp_enum! {
    pub enum MemoryFailureRecipient { Hypervisor = "hypervisor", Guest = "guest" }
}

crate::qmp_enum! {
    pub enum MemoryFailureAction {
        Ignore = "ignore",
        Inject = "inject",
        Fatal = "fatal",
        Reset = "reset",
    }
}

crate::qmp_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MemoryFailureFlags {
        pub action_required: bool = "action-required",
        pub recursive: bool = "recursive",
    }
}

crate::qmp_struct! {
    /// Data of MEMORY_FAILURE.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MemoryFailureEventData {
        pub recipient: MemoryFailureRecipient = "recipient",
        pub action: MemoryFailureAction = "action",
        pub flags: MemoryFailureFlags = "flags",
    }
}

/// Name and data of a run-state event.
pub fn core_event_parts(ev: &CoreEvent) -> (&'static str, Option<Map<String, Value>>) {
    let shutdown_data = |c: ShutdownCause| {
        json!({"guest": c.is_guest(), "reason": c.as_str()})
            .as_object()
            .cloned()
    };
    match ev {
        CoreEvent::Stop => ("STOP", None),
        CoreEvent::Resume => ("RESUME", None),
        CoreEvent::Powerdown => ("POWERDOWN", None),
        CoreEvent::Suspend => ("SUSPEND", None),
        CoreEvent::Wakeup => ("WAKEUP", None),
        CoreEvent::Reset(c) => ("RESET", shutdown_data(*c)),
        CoreEvent::Shutdown(c) => ("SHUTDOWN", shutdown_data(*c)),
        CoreEvent::Watchdog(a) => (
            "WATCHDOG",
            json!({"action": a.as_str()}).as_object().cloned(),
        ),
        CoreEvent::GuestPanicked { action, info } => {
            let mut m = Map::new();
            m.insert("action".into(), json!(action.as_str()));
            if let Some(info) = info {
                m.insert("info".into(), info.clone());
            }
            ("GUEST_PANICKED", Some(m))
        }
    }
}

/// The core events (events.md, tier core, plus WATCHDOG) with their data types, for
/// `query-qmp-schema`. Device events are registered by the vmm with their devices.
pub fn core_events() -> Vec<(&'static str, SchemaFn)> {
    vec![
        ("SHUTDOWN", ShutdownEventData::schema),
        ("POWERDOWN", Empty::schema),
        ("RESET", ShutdownEventData::schema),
        ("STOP", Empty::schema),
        ("RESUME", Empty::schema),
        ("SUSPEND", Empty::schema),
        ("SUSPEND_DISK", Empty::schema),
        ("WAKEUP", Empty::schema),
        ("WATCHDOG", WatchdogEventData::schema),
        ("GUEST_PANICKED", GuestPanickedEventData::schema),
        ("GUEST_CRASHLOADED", GuestPanickedEventData::schema),
        ("GUEST_PVSHUTDOWN", Empty::schema),
        ("MEMORY_FAILURE", MemoryFailureEventData::schema),
    ]
}

/// A clock for tests: both clocks advance only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now: std::sync::Arc<std::sync::Mutex<Duration>>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, d: Duration) {
        if let Ok(mut t) = self.now.lock() {
            *t += d;
        }
    }

    fn get(&self) -> Duration {
        self.now.lock().map(|t| *t).unwrap_or_default()
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Duration {
        self.get()
    }

    /// Wall time starts at 1_700_000_000 s so timestamps look real.
    fn wall(&self) -> Timestamp {
        let t = self.get();
        Timestamp {
            seconds: 1_700_000_000 + t.as_secs() as i64,
            microseconds: i64::from(t.subsec_micros()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(name: &str, data: Value, at_ms: u64) -> Event {
        Event {
            name: name.to_string(),
            data: data.as_object().cloned(),
            timestamp: Timestamp {
                seconds: 0,
                microseconds: (at_ms * 1000) as i64,
            },
        }
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn unthrottled_events_pass() {
        let mut t = Throttle::default();
        for i in 0..5 {
            assert!(t.offer(ev("STOP", Value::Null, i), MS * i as u32).is_some());
        }
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn burst_gives_first_at_once_and_last_at_window_end() {
        let mut t = Throttle::default();
        let first = ev("RTC_CHANGE", json!({"offset": 1, "qom-path": "/rtc"}), 0);
        assert_eq!(t.offer(first.clone(), Duration::ZERO), Some(first));
        for i in 2..=5u64 {
            let e = ev(
                "RTC_CHANGE",
                json!({"offset": i, "qom-path": "/rtc"}),
                i * 100,
            );
            assert_eq!(t.offer(e, MS * (i as u32 * 100)), None, "inside the window");
        }
        assert_eq!(t.next_deadline(), Some(MS * 1000));
        assert!(t.expire(MS * 999).is_empty(), "window not over yet");
        let out = t.expire(MS * 1000);
        assert_eq!(out.len(), 1);
        // The last one of the burst, with its own timestamp.
        assert_eq!(
            out[0].data.as_ref().and_then(|d| d.get("offset")),
            Some(&json!(5))
        );
        assert_eq!(out[0].timestamp.microseconds, 500_000);
        // A new window opened at delivery; an event inside it waits again.
        assert_eq!(t.next_deadline(), Some(MS * 2000));
        assert_eq!(
            t.offer(ev("RTC_CHANGE", json!({"offset": 6}), 1500), MS * 1500),
            None
        );
        assert_eq!(t.expire(MS * 2000).len(), 1);
        // A window with nothing stored closes; the next event goes out at once.
        assert!(t.expire(MS * 3000).is_empty());
        assert_eq!(t.next_deadline(), None);
        assert!(t
            .offer(ev("RTC_CHANGE", json!({"offset": 7}), 3100), MS * 3100)
            .is_some());
    }

    #[test]
    fn keys_are_separate() {
        let mut t = Throttle::default();
        let a = |o: bool, at| ev("VSERPORT_CHANGE", json!({"id": "a", "open": o}), at);
        let b = |o: bool, at| ev("VSERPORT_CHANGE", json!({"id": "b", "open": o}), at);
        assert!(t.offer(a(true, 0), Duration::ZERO).is_some());
        assert!(t.offer(b(true, 1), MS).is_some(), "other id: own window");
        assert!(t.offer(a(false, 2), MS * 2).is_none());
        assert!(t.offer(b(false, 3), MS * 3).is_none());
        let out = t.expire(MS * 1001);
        let ids: Vec<_> = out
            .iter()
            .map(|e| e.data.as_ref().and_then(|d| d.get("id")).cloned())
            .collect();
        assert_eq!(ids, vec![Some(json!("a")), Some(json!("b"))]);
    }

    #[test]
    fn name_keyed_events_share_a_window_across_data() {
        let mut t = Throttle::default();
        assert!(t
            .offer(
                ev("WATCHDOG", json!({"action": "reset"}), 0),
                Duration::ZERO
            )
            .is_some());
        assert!(t
            .offer(ev("WATCHDOG", json!({"action": "pause"}), 1), MS)
            .is_none());
    }

    #[test]
    fn bus_with_fake_clock() {
        let clock = ManualClock::new();
        let mut bus = EventBus::new(Box::new(clock.clone()));
        bus.emit_core(&CoreEvent::Watchdog(WatchdogAction::Reset));
        bus.emit_core(&CoreEvent::Watchdog(WatchdogAction::Pause));
        bus.emit_core(&CoreEvent::Stop);
        let ready = bus.take_ready();
        let names: Vec<&str> = ready.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["WATCHDOG", "STOP"]);
        assert_eq!(ready[1].data, None, "STOP has no data member");
        assert_eq!(bus.next_deadline(), Some(Duration::from_secs(1)));
        clock.advance(Duration::from_millis(400));
        bus.poll();
        assert!(bus.take_ready().is_empty());
        assert_eq!(bus.next_deadline(), Some(Duration::from_millis(600)));
        clock.advance(Duration::from_millis(600));
        bus.poll();
        let ready = bus.take_ready();
        assert_eq!(ready.len(), 1);
        assert_eq!(
            ready[0].data,
            json!({"action": "pause"}).as_object().cloned()
        );
        assert_eq!(ready[0].timestamp.seconds, 1_700_000_000, "raised at t=0");
    }

    #[test]
    fn shutdown_event_data() {
        let (name, data) = core_event_parts(&CoreEvent::Shutdown(ShutdownCause::HostQmpQuit));
        assert_eq!(name, "SHUTDOWN");
        assert_eq!(
            data,
            json!({"guest": false, "reason": "host-qmp-quit"})
                .as_object()
                .cloned()
        );
        let (_, data) = core_event_parts(&CoreEvent::Reset(ShutdownCause::GuestReset));
        assert_eq!(
            data,
            json!({"guest": true, "reason": "guest-reset"})
                .as_object()
                .cloned()
        );
    }

    #[test]
    fn typed_event_data_omits_empty() {
        let e = Event::new("STOP", &Empty {}, Timestamp::UNKNOWN);
        assert_eq!(e.data, None);
        let e = Event::new(
            "WATCHDOG",
            &WatchdogEventData {
                action: WatchdogAction::Pause,
            },
            Timestamp::UNKNOWN,
        );
        assert_eq!(e.data, json!({"action": "pause"}).as_object().cloned());
    }
}
