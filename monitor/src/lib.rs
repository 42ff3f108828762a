//! QMP, QEMU's machine protocol, implemented natively: wire framing and encoding,
//! sessions and capabilities negotiation, the typed command registry with schema
//! introspection, events with QEMU's throttling, and the VM run-state machine.
//!
//! There is no KVM here. The machine is reached through the [`Machine`] trait, which the
//! vmm implements; everything in this crate is tested against a fake machine
//! ([`testing::FakeMachine`]).
//!
//! Using it from the vmm's event loop:
//!
//! ```
//! use monitor::{Monitor, MonitorConfig, VersionInfo, MachineEvent};
//! use monitor::testing::FakeMachine;
//!
//! # fn main() -> Result<(), monitor::Error> {
//! let mut machine = FakeMachine::default();              // the vmm's `impl Machine`
//! let mut mon = Monitor::new(MonitorConfig::new(VersionInfo::new(9, 2, 0, "")));
//! mon.handle(MachineEvent::Start, &mut machine)?;        // no -S: start running
//!
//! let id = mon.connect();                                // a client connected
//! let greeting = mon.take_output(id)?;                   // write this to its socket
//! assert!(greeting.starts_with(b"{\"QMP\""));
//! // Bytes read from the socket, in any split:
//! mon.receive(id, br#"{"execute":"qmp_capabilities"}{"execute":"stop","id":1}"#, &mut machine)?;
//! let out = String::from_utf8_lossy(mon.output(id)?).into_owned();
//! let written = out.len();                               // say the socket took it all
//! mon.consume_output(id, written)?;
//! let lines: Vec<&str> = out.split_terminator("\r\n").collect();
//! assert_eq!(lines[0], r#"{"return": {}}"#);
//! assert!(lines[1].contains(r#""event": "STOP""#));       // the event before the reply
//! assert_eq!(lines[2], r#"{"return": {}, "id": 1}"#);
//!
//! // The machine reports things; throttled events need a timer.
//! mon.handle(MachineEvent::WatchdogExpired, &mut machine)?;
//! if let Some(after) = mon.next_timeout() {
//!     let _ = after;                                     // arm a timer, then:
//!     mon.on_timer();
//! }
//! for dead in mon.overflowed_sessions() {                // clients that stopped reading
//!     mon.disconnect(dead)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Specification: `shared/spec/qmp-protocol.md` and `shared/spec/runstate.md`.

// Lets the declarative macros name this crate the same way inside and outside it.
extern crate self as monitor;

pub mod commands;
mod control;
pub mod error;
pub mod events;
pub mod framing;
mod hmp;
pub mod json;
pub mod machine;
mod qmp_error;
pub mod registry;
pub mod runstate;
pub mod schema;
pub mod server;
pub mod session;
pub mod testing;

pub use crate::error::Error;
pub use crate::events::{Clock, Event, ManualClock, SystemClock, Timestamp};
pub use crate::machine::{
    CpuInfo, CpuInstanceProperties, HotpluggableCpu, IoThreadInfo, KvmInfo, Machine, MachineInfo,
    MemoryInfo, SysEmuTarget, VersionInfo,
};
pub use crate::qmp_error::{ErrorClass, MachineError, QmpError};
pub use crate::registry::{CommandContext, Registry};
pub use crate::runstate::{Actions, RunState, ShutdownCause};
pub use crate::schema::{Empty, QmpType};
pub use crate::server::{MachineEvent, Monitor, MonitorConfig, SessionId};

#[doc(hidden)]
pub mod __private {
    pub use serde;
}
