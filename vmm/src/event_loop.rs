//! The event loop: one thread (the main one) owns the machine, the QMP monitor and every
//! monitor connection, and waits in epoll for: control events (from vCPU threads and the
//! signal thread, announced on an eventfd), new QMP clients, client bytes, and the
//! monitor's throttle timer. Running everything that touches the machine on this one
//! thread means monitor commands need no locks against each other; vCPU threads never
//! wait for it (they only send on a channel).
//!
//! Connections are non-blocking. Output leaves the monitor's bounded per-session queue
//! only as fast as the socket takes it, so a client that stops reading overflows its own
//! queue and is dropped, without ever blocking the machine or other clients.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use monitor::{MachineEvent, Monitor, RunState, SessionId};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::chardev::Backend;
use crate::machine::Machine;
use crate::vm_events::VmEvent;
use crate::ControlEvent;

/// The most file descriptors accepted with one message (as QEMU: 253 would be the
/// kernel's limit; a client passing more is misbehaving).
const MAX_FDS_PER_MESSAGE: usize = 16;

/// A QMP monitor's listening endpoint.
pub enum QmpListener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// A QMP monitor configured on the command line, opened.
pub struct QmpEndpoint {
    pub kind: EndpointKind,
    pub pretty: bool,
}

pub enum EndpointKind {
    /// A server socket; `first` is a client already accepted (wait=on).
    Listen {
        listener: QmpListener,
        first: Option<Stream>,
    },
    /// A client socket (server=off) or stdio: one connection for the process's life.
    Connected(Stream),
}

pub enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Stdio,
}

impl Stream {
    fn read_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Stdio => 0,
        }
    }

    fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
            // stdio stays blocking for writes (a terminal or pipe we own); reads are only
            // done when epoll says readable.
            Stream::Stdio => Ok(()),
        }
    }

    /// Reads bytes, and on a unix socket the file descriptors sent with them.
    fn read_with_fds(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => {
                let mut raw = [-1; MAX_FDS_PER_MESSAGE];
                let mut iov = [libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: buf.len(),
                }];
                // SAFETY: the iovec points at `buf`, valid for writes of its length.
                let (n, nfds) = unsafe { s.recv_with_fds(&mut iov, &mut raw) }
                    .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
                for fd in raw.iter().take(nfds) {
                    // SAFETY: the kernel just gave us these descriptors; we own them now.
                    fds.push(unsafe { OwnedFd::from_raw_fd(*fd) });
                }
                Ok(n)
            }
            Stream::Tcp(s) => s.read(buf),
            Stream::Stdio => io::stdin().read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
            Stream::Stdio => {
                let mut o = io::stdout().lock();
                o.write_all(buf)?;
                o.flush()?;
                Ok(buf.len())
            }
        }
    }
}

/// Opens a `-qmp`/`-mon` endpoint. A server with `wait` accepts its first client here,
/// before the machine starts, as QEMU's `wait=on` does.
pub fn open_endpoint(b: &Backend, pretty: bool) -> Result<QmpEndpoint, String> {
    let kind = match b {
        Backend::Stdio => EndpointKind::Connected(Stream::Stdio),
        Backend::UnixSocket {
            path,
            server: true,
            wait,
        } => {
            if let Ok(m) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if m.file_type().is_socket() {
                    let _ = std::fs::remove_file(path);
                }
            }
            let l = UnixListener::bind(path)
                .map_err(|e| format!("cannot listen on QMP socket '{}': {e}", path.display()))?;
            let first = if *wait {
                let (s, _) = l.accept().map_err(|e| format!("QMP accept: {e}"))?;
                Some(Stream::Unix(s))
            } else {
                None
            };
            EndpointKind::Listen {
                listener: QmpListener::Unix(l),
                first,
            }
        }
        Backend::UnixSocket {
            path,
            server: false,
            ..
        } => {
            EndpointKind::Connected(Stream::Unix(UnixStream::connect(path).map_err(|e| {
                format!("cannot connect to QMP socket '{}': {e}", path.display())
            })?))
        }
        Backend::TcpSocket {
            host,
            port,
            server: true,
            wait,
        } => {
            let addr = format!("{host}:{port}");
            let l = TcpListener::bind(&addr)
                .map_err(|e| format!("cannot listen on QMP address {addr}: {e}"))?;
            let first = if *wait {
                let (s, _) = l.accept().map_err(|e| format!("QMP accept: {e}"))?;
                Some(Stream::Tcp(s))
            } else {
                None
            };
            EndpointKind::Listen {
                listener: QmpListener::Tcp(l),
                first,
            }
        }
        Backend::TcpSocket {
            host,
            port,
            server: false,
            ..
        } => {
            let addr = format!("{host}:{port}");
            EndpointKind::Connected(Stream::Tcp(
                TcpStream::connect(&addr)
                    .map_err(|e| format!("cannot connect to QMP address {addr}: {e}"))?,
            ))
        }
        Backend::File { .. } | Backend::Null => {
            return Err("a QMP monitor needs a socket or stdio, not a file or null".into())
        }
    };
    Ok(QmpEndpoint { kind, pretty })
}

struct Conn {
    stream: Stream,
    session: SessionId,
    pretty: bool,
    /// Bytes taken from the monitor's queue, not yet written.
    out: Vec<u8>,
    /// Descriptors received (SCM_RIGHTS) and not yet claimed by a command.
    fds: Vec<OwnedFd>,
    /// Registered for EPOLLOUT (the socket was full).
    want_out: bool,
}

enum Source {
    Listener { l: QmpListener, pretty: bool },
    Conn(Box<Conn>),
}

const CONTROL_TOKEN: u64 = 0;

/// How long the loop polls for the next request after serving one (see `run`).
const POLL_AFTER_ACTIVITY: std::time::Duration = std::time::Duration::from_micros(50);

pub struct EventLoop {
    epoll: Epoll,
    control: Arc<EventFd>,
    sources: HashMap<u64, Source>,
    next_token: u64,
    /// A client's request was served in the last iteration.
    recently_active: bool,
}

/// Pretty-prints each CRLF-terminated JSON message the way QEMU's `pretty=on` does
/// (4-space indentation), keeping one message per CRLF-terminated block.
fn prettify(out: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(out.len() * 2);
    for line in out.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<serde_json::Value>(line) {
            Ok(val) => {
                let mut ser = serde_json::Serializer::with_formatter(
                    &mut v,
                    serde_json::ser::PrettyFormatter::with_indent(b"    "),
                );
                if serde::Serialize::serialize(&val, &mut ser).is_err() {
                    v.extend_from_slice(line);
                }
            }
            Err(_) => v.extend_from_slice(line),
        }
        v.extend_from_slice(b"\r\n");
    }
    ascii_escape(&v)
}

/// serde_json writes UTF-8; QMP's wire is ASCII with \u escapes. Non-ASCII can only occur
/// inside JSON strings, so escaping every such character keeps the text valid.
fn ascii_escape(v: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(v);
    let mut out = Vec::with_capacity(v.len());
    for ch in s.chars() {
        if ch.is_ascii() {
            out.push(ch as u8);
        } else {
            let mut units = [0u16; 2];
            for u in ch.encode_utf16(&mut units) {
                out.extend_from_slice(format!("\\u{u:04x}").as_bytes());
            }
        }
    }
    out
}

impl EventLoop {
    pub fn new(control: Arc<EventFd>) -> io::Result<EventLoop> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            control.as_raw_fd(),
            EpollEvent::new(EventSet::IN, CONTROL_TOKEN),
        )?;
        Ok(EventLoop {
            epoll,
            control,
            sources: HashMap::new(),
            next_token: 1,
            recently_active: false,
        })
    }

    fn add(&mut self, fd: RawFd, src: Source) -> io::Result<u64> {
        let t = self.next_token;
        self.next_token += 1;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, t))?;
        self.sources.insert(t, src);
        Ok(t)
    }

    /// Registers an endpoint; its already-connected client (if any) gets its greeting.
    pub fn add_endpoint(&mut self, ep: QmpEndpoint, mon: &mut Monitor) -> io::Result<()> {
        match ep.kind {
            EndpointKind::Listen { listener, first } => {
                let fd = match &listener {
                    QmpListener::Unix(l) => {
                        l.set_nonblocking(true)?;
                        l.as_raw_fd()
                    }
                    QmpListener::Tcp(l) => {
                        l.set_nonblocking(true)?;
                        l.as_raw_fd()
                    }
                };
                self.add(
                    fd,
                    Source::Listener {
                        l: listener,
                        pretty: ep.pretty,
                    },
                )?;
                if let Some(s) = first {
                    self.add_conn(s, ep.pretty, mon)?;
                }
            }
            EndpointKind::Connected(s) => self.add_conn(s, ep.pretty, mon)?,
        }
        Ok(())
    }

    fn add_conn(&mut self, stream: Stream, pretty: bool, mon: &mut Monitor) -> io::Result<()> {
        stream.set_nonblocking()?;
        let fd = stream.read_fd();
        let session = mon.connect();
        let conn = Conn {
            stream,
            session,
            pretty,
            out: Vec::new(),
            fds: Vec::new(),
            want_out: false,
        };
        self.add(fd, Source::Conn(Box::new(conn)))?;
        Ok(())
    }

    fn remove(&mut self, token: u64, mon: &mut Monitor) {
        if let Some(Source::Conn(c)) = self.sources.remove(&token) {
            let fd = c.stream.read_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            let _ = mon.disconnect(c.session);
            // Dropping the stream closes the socket (stdio stays open).
        }
    }

    /// Writes what the monitor has for every connection, as far as the sockets take it;
    /// drops connections that overflowed or failed.
    fn flush_all(&mut self, mon: &mut Monitor) {
        let overflowed = mon.overflowed_sessions();
        let mut dead = Vec::new();
        for (t, src) in self.sources.iter_mut() {
            let Source::Conn(c) = src else { continue };
            if overflowed.contains(&c.session) {
                dead.push(*t);
                continue;
            }
            match flush_conn(c, mon) {
                Ok(blocked) => {
                    if blocked != c.want_out {
                        c.want_out = blocked;
                        let mut ev = EventSet::IN;
                        if blocked {
                            ev |= EventSet::OUT;
                        }
                        let _ = self.epoll.ctl(
                            ControlOperation::Modify,
                            c.stream.read_fd(),
                            EpollEvent::new(ev, *t),
                        );
                    }
                }
                Err(_) => dead.push(*t),
            }
        }
        for t in dead {
            self.remove(t, mon);
        }
    }

    /// Runs until the machine must end; returns the exit status.
    pub fn run(
        &mut self,
        machine: &mut Machine,
        mon: &mut Monitor,
        ctl: &Receiver<ControlEvent>,
    ) -> i32 {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            self.flush_all(mon);
            if let Some(status) = machine.exit_requested() {
                self.flush_final(mon);
                return status;
            }
            let timeout = mon
                .next_timeout()
                .map(|d| d.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(-1);
            // Right after serving a client, poll briefly before sleeping: a client issuing
            // commands one after another sends its next within microseconds, and waking a
            // sleeping thread costs more than that on virtualised hosts (QEMU's aio
            // polling does the same). Bounded, so an idle monitor costs nothing.
            let mut n = 0;
            if self.recently_active {
                let until = std::time::Instant::now() + POLL_AFTER_ACTIVITY;
                while n == 0 && std::time::Instant::now() < until {
                    n = self.epoll.wait(0, &mut events).unwrap_or(0);
                    if n == 0 {
                        std::hint::spin_loop();
                    }
                }
                self.recently_active = false;
            }
            let n = match if n > 0 {
                Ok(n)
            } else {
                self.epoll.wait(timeout, &mut events)
            } {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("kestrel: event loop: {e}");
                    return 1;
                }
            };
            mon.on_timer();
            for ev in events.iter().take(n) {
                let token = ev.data();
                if token == CONTROL_TOKEN {
                    let _ = self.control.read();
                    while let Ok(c) = ctl.try_recv() {
                        if let Some(status) = self.on_control(c, machine, mon) {
                            self.flush_final(mon);
                            return status;
                        }
                    }
                    continue;
                }
                self.on_source(token, ev.event_set(), machine, mon);
            }
        }
    }

    /// Last output (e.g. the reply to `quit`, the SHUTDOWN event) before the process ends:
    /// sockets are switched to blocking with a short timeout so a slow reader still gets it.
    fn flush_final(&mut self, mon: &mut Monitor) {
        for src in self.sources.values_mut() {
            if let Source::Conn(c) = src {
                let to = Some(std::time::Duration::from_millis(500));
                match &c.stream {
                    Stream::Unix(s) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(to);
                    }
                    Stream::Tcp(s) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(to);
                    }
                    Stream::Stdio => {}
                }
                let _ = flush_conn(c, mon);
            }
        }
    }

    fn on_control(
        &mut self,
        c: ControlEvent,
        machine: &mut Machine,
        mon: &mut Monitor,
    ) -> Option<i32> {
        let what = match c {
            ControlEvent::Vm { generation, .. } if generation != machine.generation() => {
                return None
            }
            // A panicked guest whose panic action paused it is stopped at the panic in
            // QEMU, where pvpanic stops the vCPU inside the write. Here the vCPU runs on
            // until the pause lands and may already have asked for the reboot its kernel
            // does after a panic (panic=N): the guest would never have got there, so the
            // request is dropped and the machine stays in guest-panicked for the monitor.
            ControlEvent::Vm {
                event: VmEvent::Reset | VmEvent::PowerOff,
                ..
            } if mon.runstate() == RunState::GuestPanicked => return None,
            ControlEvent::Vm { event, .. } => match event {
                VmEvent::Reset => MachineEvent::GuestReset,
                VmEvent::PowerOff => MachineEvent::GuestShutdown,
                VmEvent::Fatal(msg) => {
                    // QEMU prints the error and stops in internal-error, for the monitor to see.
                    eprintln!("kestrel: {msg}");
                    MachineEvent::Stop(RunState::InternalError)
                }
                VmEvent::BlockIoError(e) => {
                    use crate::qmp_devices::BlockIoErrorEvent;
                    mon.emit(
                        "BLOCK_IO_ERROR",
                        &BlockIoErrorEvent {
                            qom_path: format!("/machine/peripheral/{}/virtio-backend", e.device),
                            device: e.device.clone(),
                            node_name: Some(e.device.clone()),
                            operation: e.operation.as_str().into(),
                            action: e.action.as_str().into(),
                            nospace: Some(e.nospace),
                            reason: e.reason.clone(),
                        },
                    );
                    if e.action != devices::virtio::block::IoErrorAction::Stop
                        || mon.runstate() == RunState::IoError
                    {
                        return None;
                    }
                    MachineEvent::Stop(RunState::IoError)
                }
                VmEvent::NicRxFilterChanged { name, path } => {
                    let ev = crate::qmp_devices::NicRxFilterChangedEvent {
                        name: Some(name),
                        path,
                    };
                    mon.emit("NIC_RX_FILTER_CHANGED", &ev);
                    return None;
                }
                VmEvent::GuestPanic(devices::legacy::pvpanic::PanicEvent::Panicked) => {
                    MachineEvent::GuestPanic(None)
                }
                VmEvent::GuestPanic(devices::legacy::pvpanic::PanicEvent::Shutdown) => {
                    // QEMU 9.1: the event, then an ordinary guest poweroff request.
                    mon.emit("GUEST_PVSHUTDOWN", &monitor::Empty {});
                    MachineEvent::GuestShutdown
                }
                VmEvent::GuestPanic(devices::legacy::pvpanic::PanicEvent::CrashLoaded) => {
                    // A kdump kernel took over: the guest keeps running (QEMU: action run).
                    mon.emit("GUEST_CRASHLOADED", &serde_json::json!({"action": "run"}));
                    return None;
                }
                VmEvent::VserportChange { id, open } => {
                    machine.set_port_open(&id, open);
                    mon.emit(
                        "VSERPORT_CHANGE",
                        &crate::qmp_devices::VserportChangeEvent { id, open },
                    );
                    return None;
                }
                VmEvent::WatchdogExpired => MachineEvent::WatchdogExpired,
                VmEvent::BalloonChange { actual_pages } => {
                    mon.emit(
                        "BALLOON_CHANGE",
                        &crate::qmp_platform::BalloonInfo {
                            actual: machine.balloon_actual_bytes(actual_pages),
                        },
                    );
                    return None;
                }
                VmEvent::RtcChange { offset } => {
                    mon.emit(
                        "RTC_CHANGE",
                        &crate::qmp_platform::RtcChangeEvent {
                            offset,
                            qom_path: crate::qmp_platform::RTC_QOM_PATH.into(),
                        },
                    );
                    return None;
                }
            },
            ControlEvent::Quit => return Some(0),
            ControlEvent::Signal(sig) => {
                eprintln!("kestrel: terminating on signal {sig}");
                MachineEvent::HostSignal
            }
        };
        match mon.handle(what, machine) {
            Ok(Some(status)) => Some(status),
            Ok(None) => machine.exit_requested(),
            Err(e) => {
                eprintln!("kestrel: {e}");
                machine.exit_requested()
            }
        }
    }

    fn on_source(&mut self, token: u64, set: EventSet, machine: &mut Machine, mon: &mut Monitor) {
        match self.sources.get_mut(&token) {
            Some(Source::Listener { l, pretty }) => {
                let pretty = *pretty;
                let accepted = match l {
                    QmpListener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
                    QmpListener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
                };
                if let Ok(s) = accepted {
                    if let Err(e) = self.add_conn(s, pretty, mon) {
                        eprintln!("kestrel: QMP connection: {e}");
                    }
                }
            }
            Some(Source::Conn(c))
                if set.contains(EventSet::IN)
                    || set.contains(EventSet::HANG_UP)
                    || set.contains(EventSet::ERROR) =>
            {
                let mut buf = [0u8; 8192];
                match c.stream.read_with_fds(&mut buf, &mut c.fds) {
                    Ok(0) => self.remove(token, mon),
                    Ok(n) => {
                        self.recently_active = true;
                        machine.offer_fds(std::mem::take(&mut c.fds));
                        let r = mon.receive(c.session, &buf[..n], machine);
                        // Descriptors no command claimed stay with this connection.
                        c.fds = machine.take_unclaimed_fds();
                        if r.is_err() {
                            self.remove(token, mon);
                        }
                    }
                    Err(e)
                        if e.kind() == ErrorKind::WouldBlock
                            || e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => self.remove(token, mon),
                }
            }
            Some(Source::Conn(_)) => {}
            None => {}
        }
    }
}

/// Writes the connection's pending output; returns whether the socket is full.
fn flush_conn(c: &mut Conn, mon: &mut Monitor) -> io::Result<bool> {
    loop {
        if c.out.is_empty() {
            let pending = mon
                .output(c.session)
                .map_err(|e| io::Error::other(e.to_string()))?;
            if pending.is_empty() {
                return Ok(false);
            }
            let n = pending.len();
            c.out = if c.pretty {
                prettify(pending)
            } else {
                pending.to_vec()
            };
            mon.consume_output(c.session, n)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        match c.stream.write(&c.out) {
            Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_output_is_ascii() {
        let p = prettify("{\"return\": \"h\u{e9}\u{1f600}\"}\r\n".as_bytes());
        assert_eq!(
            String::from_utf8(p).unwrap(),
            "{\n    \"return\": \"h\\u00e9\\ud83d\\ude00\"\n}\r\n"
        );
    }

    #[test]
    fn pretty_output_keeps_one_message_per_crlf_block() {
        let p = prettify(b"{\"return\": {}, \"id\": 1}\r\n{\"event\": \"STOP\"}\r\n");
        let s = String::from_utf8(p).unwrap();
        assert_eq!(
            s,
            "{\n    \"return\": {},\n    \"id\": 1\n}\r\n{\n    \"event\": \"STOP\"\n}\r\n"
        );
    }
}
