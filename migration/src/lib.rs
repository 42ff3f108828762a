//! Live migration: the stream format, transports (tcp, unix, fd, exec, file), precopy
//! with dirty tracking, and device state. Empty until the migration issue fills it.
