//! The main event loop: the main thread owns the machine and the QMP monitor and runs
//! rust-vmm's `event-manager` over one subscriber per source:
//! - [`Control`]: the control eventfd, announcing what vCPU threads, device models and
//!   the console sent on the control channel;
//! - [`Signals`]: a signalfd for SIGTERM, SIGINT and SIGHUP (blocked in every thread);
//! - [`Listener`]: each QMP server socket;
//! - [`Session`]: each QMP connection.
//!
//! Running everything that touches the machine on this one thread means monitor
//! commands need no locks against each other; vCPU threads never wait for it (they
//! only send on a channel). Subscribers reach the machine and the monitor through one
//! `Rc<RefCell<Core>>`, borrowed only inside a `process` call, never across one.
//!
//! What event-manager does not do, and this loop keeps as its own small pieces:
//! - the monitor's throttle timer is the `run_with_timeout` deadline (the monitor knows
//!   its next deadline; a timerfd would only restate it);
//! - subscribers cannot add or remove subscribers from inside `process`, so a listener
//!   queues what it accepted and a session queues its own end in [`Core`], and the loop
//!   applies both between runs;
//! - output to every session is flushed between runs (an event reaches all of them),
//!   switching a session's interest to EPOLLOUT through `event_ops` while its socket is
//!   full;
//! - right after serving a request the loop polls for a moment before sleeping (see
//!   `POLL_AFTER_ACTIVITY`).
//!
//! Chardev input (the serial console, socket chardevs) stays on its reader threads: the
//! UART takes input only as fast as the guest drains its FIFO, and that wait must not
//! stall the monitor.
//!
//! Connections are non-blocking. Output leaves the monitor's bounded per-session queue
//! only as fast as the socket takes it, so a client that stops reading overflows its own
//! queue and is dropped, without ever blocking the machine or other clients.

use std::cell::RefCell;
use std::io::{self, ErrorKind};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use event_manager::{
    EventManager, EventOps, Events, MutEventSubscriber, SubscriberId, SubscriberOps,
};
use monitor::{MachineEvent, Monitor, SessionId};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::machine::Machine;
use crate::qmp_transport::{prettify, EndpointKind, QmpEndpoint, QmpListener, Stream};
use crate::ControlEvent;

/// How long the loop polls for the next request after serving one (see `run`).
const POLL_AFTER_ACTIVITY: std::time::Duration = std::time::Duration::from_micros(50);

type Subscriber = Rc<RefCell<dyn MutEventSubscriber>>;

/// What every subscriber of the main loop shares.
struct Core {
    machine: Machine,
    mon: Monitor,
    /// Set when the process must end, with its exit status.
    exit: Option<i32>,
    /// Clients accepted by a listener, to become sessions between runs.
    accepted: Vec<(Stream, bool)>,
    /// Sessions that ended (hang-up, error, protocol failure), to remove between runs.
    ended: Vec<SessionId>,
    /// A client's request was served in the last run.
    active: bool,
}

type SharedCore = Rc<RefCell<Core>>;

/// The control channel's eventfd: drains the channel and acts on each event.
struct Control {
    core: SharedCore,
    wake: Arc<EventFd>,
    rx: Receiver<ControlEvent>,
}

impl MutEventSubscriber for Control {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.wake.as_ref(), EventSet::IN)) {
            eprintln!("kestrel: event loop: cannot watch the control channel: {e:?}");
        }
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.wake.read();
        let mut core = self.core.borrow_mut();
        let core = &mut *core;
        while let Ok(c) = self.rx.try_recv() {
            let (machine, mon) = (&mut core.machine, &mut core.mon);
            let done = match c {
                ControlEvent::Migration { id, report } => {
                    crate::migrate_ops::steps::on_report(id, report, machine, mon)
                }
                c => crate::control::on_control(c, machine, mon),
            };
            if let Some(status) = done {
                core.exit.get_or_insert(status);
                return;
            }
        }
    }
}

/// SIGTERM, SIGINT and SIGHUP through a signalfd: they end the machine as QEMU's do.
struct Signals {
    core: SharedCore,
    fd: OwnedFd,
}

impl Signals {
    /// A signalfd for `set`, which the caller has blocked in every thread.
    fn new(core: SharedCore, set: &libc::sigset_t) -> io::Result<Signals> {
        // SAFETY: `set` is a valid signal set; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signals { core, fd })
    }

    fn next(&self) -> Option<i32> {
        // SAFETY: an all-zero signalfd_siginfo is a valid value of this plain C struct.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is that large.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl MutEventSubscriber for Signals {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.fd, EventSet::IN)) {
            eprintln!("kestrel: event loop: cannot watch for signals: {e:?}");
        }
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        while let Some(sig) = self.next() {
            eprintln!("kestrel: terminating on signal {sig}");
            let mut core = self.core.borrow_mut();
            let core = &mut *core;
            let exit =
                crate::control::apply(MachineEvent::HostSignal, &mut core.machine, &mut core.mon);
            if let Some(status) = exit {
                core.exit.get_or_insert(status);
            }
        }
    }
}

/// A QMP server socket: accepts clients for the loop to turn into sessions.
struct Listener {
    core: SharedCore,
    l: QmpListener,
    pretty: bool,
}

impl MutEventSubscriber for Listener {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new_raw(self.l.as_raw_fd(), EventSet::IN)) {
            eprintln!("kestrel: event loop: cannot watch a QMP socket: {e:?}");
        }
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let accepted = match &self.l {
            QmpListener::Unix(l) => l.accept().map(|(s, _)| Stream::Unix(s)),
            QmpListener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        };
        if let Ok(s) = accepted {
            self.core.borrow_mut().accepted.push((s, self.pretty));
        }
    }
}

/// One QMP connection: its bytes in, the monitor's output out.
struct Session {
    core: SharedCore,
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

impl Session {
    fn end(&self) {
        self.core.borrow_mut().ended.push(self.session);
    }

    /// Writes the connection's pending output; returns whether the socket is full.
    fn flush(&mut self, mon: &mut Monitor) -> io::Result<bool> {
        loop {
            if self.out.is_empty() {
                let pending = mon
                    .output(self.session)
                    .map_err(|e| io::Error::other(e.to_string()))?;
                if pending.is_empty() {
                    return Ok(false);
                }
                let n = pending.len();
                self.out = if self.pretty {
                    prettify(pending)
                } else {
                    pending.to_vec()
                };
                mon.consume_output(self.session, n)
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
            match self.stream.write(&self.out) {
                Ok(0) => return Err(io::Error::from(ErrorKind::WriteZero)),
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl MutEventSubscriber for Session {
    fn init(&mut self, ops: &mut EventOps) {
        if ops
            .add(Events::new_raw(self.stream.read_fd(), EventSet::IN))
            .is_err()
        {
            self.end();
        }
    }

    fn process(&mut self, events: Events, _: &mut EventOps) {
        let set = events.event_set();
        if !set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            return; // EPOLLOUT alone: the loop flushes every session after this run
        }
        let mut buf = [0u8; 8192];
        match self.stream.read_with_fds(&mut buf, &mut self.fds) {
            Ok(0) => self.end(),
            Ok(n) => {
                let mut core = self.core.borrow_mut();
                let core = &mut *core;
                core.active = true;
                core.machine.offer_fds(std::mem::take(&mut self.fds));
                let r = core.mon.receive(self.session, &buf[..n], &mut core.machine);
                // Descriptors no command claimed stay with this connection.
                self.fds = core.machine.take_unclaimed_fds();
                if r.is_err() {
                    core.ended.push(self.session);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {}
            Err(_) => self.end(),
        }
    }
}

pub struct EventLoop {
    em: EventManager<Subscriber>,
    core: SharedCore,
    sessions: Vec<(SubscriberId, Rc<RefCell<Session>>)>,
}

impl EventLoop {
    /// The loop over `machine` and `mon`: `wake` announces the control channel `rx`, and
    /// `signals` (blocked in every thread) end the machine.
    pub fn new(
        machine: Machine,
        mon: Monitor,
        wake: Arc<EventFd>,
        rx: Receiver<ControlEvent>,
        signals: &libc::sigset_t,
    ) -> io::Result<EventLoop> {
        let mut em: EventManager<Subscriber> =
            EventManager::new().map_err(|e| io::Error::other(format!("{e:?}")))?;
        let core = Rc::new(RefCell::new(Core {
            machine,
            mon,
            exit: None,
            accepted: Vec::new(),
            ended: Vec::new(),
            active: false,
        }));
        em.add_subscriber(Rc::new(RefCell::new(Control {
            core: core.clone(),
            wake,
            rx,
        })));
        em.add_subscriber(Rc::new(RefCell::new(Signals::new(core.clone(), signals)?)));
        Ok(EventLoop {
            em,
            core,
            sessions: Vec::new(),
        })
    }

    /// Runs `f` on the machine and the monitor (before the loop runs: starting the
    /// machine, say).
    pub fn with_machine<T>(&self, f: impl FnOnce(&mut Machine, &mut Monitor) -> T) -> T {
        let mut core = self.core.borrow_mut();
        let core = &mut *core;
        f(&mut core.machine, &mut core.mon)
    }

    /// Registers an endpoint; its already-connected client (if any) gets its greeting.
    pub fn add_endpoint(&mut self, ep: QmpEndpoint) -> io::Result<()> {
        match ep.kind {
            EndpointKind::Listen { listener, first } => {
                listener.set_nonblocking()?;
                self.em.add_subscriber(Rc::new(RefCell::new(Listener {
                    core: self.core.clone(),
                    l: listener,
                    pretty: ep.pretty,
                })));
                if let Some(s) = first {
                    self.add_session(s, ep.pretty)?;
                }
            }
            EndpointKind::Connected(s) => self.add_session(s, ep.pretty)?,
        }
        Ok(())
    }

    fn add_session(&mut self, stream: Stream, pretty: bool) -> io::Result<()> {
        stream.set_nonblocking()?;
        let session = self.core.borrow_mut().mon.connect();
        let s = Rc::new(RefCell::new(Session {
            core: self.core.clone(),
            stream,
            session,
            pretty,
            out: Vec::new(),
            fds: Vec::new(),
            want_out: false,
        }));
        let id = self.em.add_subscriber(s.clone());
        self.sessions.push((id, s));
        Ok(())
    }

    fn remove_session(&mut self, session: SessionId) {
        let Some(i) = self
            .sessions
            .iter()
            .position(|(_, s)| s.borrow().session == session)
        else {
            return;
        };
        let (id, _) = self.sessions.swap_remove(i);
        // Dropping the subscriber closes its socket (stdio stays open).
        let _ = self.em.remove_subscriber(id);
        let _ = self.core.borrow_mut().mon.disconnect(session);
    }

    /// Applies what subscribers queued: new sessions, ended ones, and every session's
    /// output, as far as the sockets take it.
    fn settle(&mut self) {
        let accepted = std::mem::take(&mut self.core.borrow_mut().accepted);
        for (s, pretty) in accepted {
            if let Err(e) = self.add_session(s, pretty) {
                eprintln!("kestrel: QMP connection: {e}");
            }
        }
        let mut dead = std::mem::take(&mut self.core.borrow_mut().ended);
        {
            let mut core = self.core.borrow_mut();
            let overflowed = core.mon.overflowed_sessions();
            for (id, s) in &self.sessions {
                let mut s = s.borrow_mut();
                if overflowed.contains(&s.session) {
                    dead.push(s.session);
                    continue;
                }
                match s.flush(&mut core.mon) {
                    Ok(blocked) if blocked != s.want_out => {
                        s.want_out = blocked;
                        let mut set = EventSet::IN;
                        if blocked {
                            set |= EventSet::OUT;
                        }
                        if let Ok(ops) = self.em.event_ops(*id) {
                            let _ = ops.modify(Events::new_raw(s.stream.read_fd(), set));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => dead.push(s.session),
                }
            }
        }
        for s in dead {
            self.remove_session(s);
        }
    }

    /// Runs until the machine must end; returns the exit status.
    pub fn run(&mut self) -> i32 {
        loop {
            self.settle();
            let exit = {
                let core = self.core.borrow();
                core.exit.or_else(|| core.machine.exit_requested())
            };
            if let Some(status) = exit {
                self.flush_final();
                return status;
            }
            let timeout = self
                .core
                .borrow()
                .mon
                .next_timeout()
                .map(|d| d.as_millis().min(i32::MAX as u128) as i32)
                .unwrap_or(-1);
            // Right after serving a client, poll briefly before sleeping: a client issuing
            // commands one after another sends its next within microseconds, and waking a
            // sleeping thread costs more than that on virtualised hosts (QEMU's aio
            // polling does the same). Bounded, so an idle monitor costs nothing.
            let mut n = 0;
            if std::mem::take(&mut self.core.borrow_mut().active) {
                let until = std::time::Instant::now() + POLL_AFTER_ACTIVITY;
                while n == 0 && std::time::Instant::now() < until {
                    n = self.em.run_with_timeout(0).unwrap_or(0);
                    if n == 0 {
                        std::hint::spin_loop();
                    }
                }
            }
            if n == 0 {
                if let Err(e) = self.em.run_with_timeout(timeout) {
                    eprintln!("kestrel: event loop: {e:?}");
                    return 1;
                }
            }
            self.core.borrow_mut().mon.on_timer();
        }
    }

    /// Last output (e.g. the reply to `quit`, the SHUTDOWN event) before the process ends:
    /// sockets are switched to blocking with a short timeout so a slow reader still gets it.
    fn flush_final(&mut self) {
        let mut core = self.core.borrow_mut();
        for (_, s) in &self.sessions {
            let mut s = s.borrow_mut();
            s.stream
                .set_blocking_with_timeout(std::time::Duration::from_millis(500));
            let _ = s.flush(&mut core.mon);
        }
    }
}
