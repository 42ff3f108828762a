//! Live migration: the stream format, transports (tcp, unix, fd, exec, file), precopy
//! with dirty tracking, and device state.
//!
//! Today: [`protocol`], the stream format (framing, checksums, caps, RAM with zero
//! markers, configuration check, device sections), tested with guest memory in a vector;
//! [`convergence`], precopy's switchover and auto-converge decision on a fake clock; and
//! [`dirty`], the union of KVM's dirty log and guest memory's bitmap as page runs; and
//! [`transport`], QEMU's migration URIs (tcp, unix, fd, exec, file) opened as cancellable
//! byte streams for the source and the destination, with multifd channels on tcp and
//! unix. Precopy, vCPU and device state and the QMP surface are still to come (see the
//! migration issue).

pub mod convergence;
pub mod dirty;
pub mod protocol;
pub mod transport;

#[cfg(test)]
mod tests;
