//! The destination's side: [`listen`] binds (or, for fd, exec and file, opens the stream
//! at once), [`Listener::accept`] waits for the main connection, and
//! [`Incoming::accept_extra`] takes the multifd channels on the same listener.
//!
//! Invariants: an accept blocks in `poll(2)` on the listening socket and a wake socket
//! the [`Canceller`] writes to, so a cancel ends it at once; a unix socket file is
//! removed when its listener goes, unless another socket replaced it meanwhile.

use std::fs::{self, File};
use std::io::{self, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use super::cancel::{wait_readable, Cancel, Canceller, Guarded, Hook};
use super::{
    check_unix_path, fd_stream, open_error, resolve, seek_to, ExecChild, MigrationUri,
    TransportError, MULTI_CHANNEL_ERROR,
};

/// A bound listening socket, with the wake end a cancel writes to.
struct SocketListener {
    kind: ListenKind,
    wake: UnixStream,
    cancel: Arc<Cancel>,
}

enum ListenKind {
    Tcp(TcpListener),
    /// The socket file's device and inode tell whether the path is still ours at the end.
    Unix {
        listener: UnixListener,
        path: PathBuf,
        id: Option<(u64, u64)>,
    },
}

impl SocketListener {
    fn new(kind: ListenKind, cancel: &Arc<Cancel>) -> Result<Self, TransportError> {
        let fail = |e: io::Error| TransportError::io("Failed to listen on socket", &e);
        let (wake, waker) = UnixStream::pair().map_err(fail)?;
        waker.set_nonblocking(true).map_err(fail)?;
        match &kind {
            ListenKind::Tcp(listener) => listener.set_nonblocking(true),
            ListenKind::Unix { listener, .. } => listener.set_nonblocking(true),
        }
        .map_err(fail)?;
        cancel.add(Hook::Wake(waker));
        Ok(SocketListener {
            kind,
            wake,
            cancel: cancel.clone(),
        })
    }

    fn local_address(&self) -> Option<MigrationUri> {
        match &self.kind {
            ListenKind::Tcp(listener) => {
                let addr = listener.local_addr().ok()?;
                Some(MigrationUri::Tcp {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                })
            }
            ListenKind::Unix { path, .. } => Some(MigrationUri::Unix(path.clone())),
        }
    }

    /// Waits for the next connection; fails with "Migration cancelled" after a cancel.
    fn accept(&self) -> Result<Box<dyn Read + Send>, TransportError> {
        let fail = |e: &io::Error| TransportError::io("Failed to accept migration connection", e);
        loop {
            if self.cancel.is_cancelled() {
                return Err(TransportError::new("Migration cancelled"));
            }
            let fd = match &self.kind {
                ListenKind::Tcp(listener) => listener.as_fd(),
                ListenKind::Unix { listener, .. } => listener.as_fd(),
            };
            wait_readable(fd, &self.wake).map_err(|e| fail(&e))?;
            if self.cancel.is_cancelled() {
                return Err(TransportError::new("Migration cancelled"));
            }
            let accepted: io::Result<Box<dyn Read + Send>> = match &self.kind {
                ListenKind::Tcp(listener) => listener.accept().and_then(|(stream, _)| {
                    stream.set_nonblocking(false)?;
                    self.cancel.add_shutdown(stream.as_fd())?;
                    Ok(Box::new(Guarded {
                        inner: stream,
                        cancel: self.cancel.clone(),
                    }) as _)
                }),
                ListenKind::Unix { listener, .. } => listener.accept().and_then(|(stream, _)| {
                    stream.set_nonblocking(false)?;
                    self.cancel.add_shutdown(stream.as_fd())?;
                    Ok(Box::new(Guarded {
                        inner: stream,
                        cancel: self.cancel.clone(),
                    }) as _)
                }),
            };
            match accepted {
                Ok(reader) => return Ok(reader),
                // Woken for a connection that went away before we took it: wait again.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => return Err(fail(&e)),
            }
        }
    }
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        if let ListenKind::Unix {
            path, id: Some(id), ..
        } = &self.kind
        {
            if socket_id(path) == Some(*id) {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// The device and inode of a socket file, None if the path is no socket.
fn socket_id(path: &Path) -> Option<(u64, u64)> {
    let meta = fs::symlink_metadata(path).ok()?;
    meta.file_type()
        .is_socket()
        .then(|| (meta.dev(), meta.ino()))
}

/// Binds HOST:PORT as QEMU does: the first of its addresses that binds wins; an empty
/// host is any address, IPv6 (dual stack) first.
fn tcp_listen(host: &str, port: u16) -> Result<TcpListener, TransportError> {
    let addrs = if host.is_empty() {
        vec![
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        ]
    } else {
        resolve(host, port)?
    };
    let mut in_use = None;
    let mut other = None;
    for addr in addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => in_use = Some(e),
            Err(e) => other = Some(e),
        }
    }
    Err(match (in_use, other) {
        (Some(e), _) => TransportError::io("Failed to find an available port", &e),
        (None, Some(e)) => TransportError::io("Failed to bind socket", &e),
        (None, None) => TransportError::new("Failed to create a socket"),
    })
}

/// Binds PATH as QEMU does, which first removes what is at PATH; this removes only a
/// socket file (a stale one from an earlier run), so that a regular file is never lost
/// and binding over it fails instead.
fn unix_listen(path: &Path) -> Result<ListenKind, TransportError> {
    check_unix_path(path)?;
    if socket_id(path).is_some() {
        if let Err(e) = fs::remove_file(path) {
            if e.kind() != io::ErrorKind::NotFound {
                let what = format!("Failed to unlink socket {}", path.display());
                return Err(TransportError::io(what, &e));
            }
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| {
        TransportError::io(
            format_args!("Failed to bind socket to {}", path.display()),
            &e,
        )
    })?;
    let id = socket_id(path);
    Ok(ListenKind::Unix {
        listener,
        path: path.to_path_buf(),
        id,
    })
}

/// The destination's channel before its main connection arrived.
pub struct Listener {
    source: Source,
    cancel: Arc<Cancel>,
}

enum Source {
    Socket(SocketListener),
    /// fd, exec and file: the stream is open already.
    Ready {
        reader: Box<dyn Read + Send>,
        child: Option<ExecChild>,
    },
}

/// Opens the destination's channel for `uri`: binds a tcp or unix socket (failing now if
/// the address is taken), or opens the fd, exec or file stream. `fd` is the descriptor
/// an `fd:` URI names, resolved by the caller; other URIs do not use it and close it.
pub fn listen(uri: &MigrationUri, fd: Option<OwnedFd>) -> Result<Listener, TransportError> {
    let cancel = Arc::new(Cancel::default());
    let source = match uri {
        MigrationUri::Tcp { host, port } => Source::Socket(SocketListener::new(
            ListenKind::Tcp(tcp_listen(host, *port)?),
            &cancel,
        )?),
        MigrationUri::Unix(path) => {
            Source::Socket(SocketListener::new(unix_listen(path)?, &cancel)?)
        }
        MigrationUri::Fd(name) => Source::Ready {
            reader: Box::new(fd_stream(name, fd, &cancel)?),
            child: None,
        },
        MigrationUri::Exec(command) => {
            let mut spawned = ExecChild::spawn(command, Stdio::null(), Stdio::piped())?;
            let stdout = spawned.stdout.take();
            let exec = ExecChild::new(spawned, command, &cancel);
            let stdout = stdout.ok_or_else(|| {
                TransportError::new(format!("Unable to run '{command}': no stdout pipe"))
            })?;
            let reader = Box::new(Guarded {
                inner: stdout,
                cancel: cancel.clone(),
            });
            Source::Ready {
                reader,
                child: Some(exec),
            }
        }
        MigrationUri::File { path, offset } => {
            let mut file = File::open(path).map_err(|e| open_error(path, &e))?;
            seek_to(&mut file, path, *offset)?;
            let reader = Box::new(Guarded {
                inner: file,
                cancel: cancel.clone(),
            });
            Source::Ready {
                reader,
                child: None,
            }
        }
    };
    Ok(Listener { source, cancel })
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.local_address())
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Where the socket listens, as a URI (tcp: the bound address and port, so port 0
    /// shows the port picked; unix: the path); None for fd, exec and file.
    pub fn local_address(&self) -> Option<MigrationUri> {
        match &self.source {
            Source::Socket(listener) => listener.local_address(),
            Source::Ready { .. } => None,
        }
    }

    /// The handle that cancels this transport (the accept, then the streams) from
    /// another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Waits for the main connection (tcp, unix) or returns the open stream at once (fd,
    /// exec, file). Fails with "Migration cancelled" after a cancel.
    pub fn accept(self) -> Result<Incoming, TransportError> {
        let Listener { source, cancel } = self;
        match source {
            Source::Socket(listener) => {
                let reader = listener.accept()?;
                Ok(Incoming {
                    reader,
                    listener: Some(listener),
                    cancel,
                    child: None,
                })
            }
            Source::Ready { reader, child } => Ok(Incoming {
                reader,
                listener: None,
                cancel,
                child,
            }),
        }
    }
}

/// The destination's end of a migration: the stream to read, and what it takes to close it.
pub struct Incoming {
    /// The main channel, unbuffered; wrap it in a `BufReader`. It fails with
    /// "Migration cancelled" once the [`Canceller`] fired.
    pub reader: Box<dyn Read + Send>,
    listener: Option<SocketListener>,
    cancel: Arc<Cancel>,
    child: Option<ExecChild>,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let command = self.child.as_ref().map(|c| c.command.as_str());
        f.debug_struct("Incoming")
            .field("address", &self.local_address())
            .field("exec", &command)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    /// The handle that cancels this transport from another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Where the socket listens (see [`Listener::local_address`]).
    pub fn local_address(&self) -> Option<MigrationUri> {
        self.listener
            .as_ref()
            .and_then(SocketListener::local_address)
    }

    /// Accepts `count` more connections on the same listener, for multifd (tcp and unix
    /// only). A cancel ends the wait.
    pub fn accept_extra(
        &mut self,
        count: usize,
    ) -> Result<Vec<Box<dyn Read + Send>>, TransportError> {
        let listener = self
            .listener
            .as_ref()
            .ok_or_else(|| TransportError::new(MULTI_CHANNEL_ERROR))?;
        (0..count).map(|_| listener.accept()).collect()
    }

    /// Ends the destination's side: closes the channels and the listener, then for exec
    /// waits for the command and fails if it did not exit with status 0 (a command
    /// killed by SIGPIPE because the stream was closed before its end is not a failure).
    /// After a cancel it fails with "Migration cancelled".
    pub fn finish(mut self) -> Result<(), TransportError> {
        self.reader = Box::new(io::empty());
        self.listener = None;
        let status = match &self.child {
            Some(child) => child.wait()?,
            None => None,
        };
        if self.cancel.is_cancelled() {
            return Err(TransportError::new("Migration cancelled"));
        }
        if let (Some(child), Some(status)) = (&self.child, status) {
            if status.signal() == Some(libc::SIGPIPE) {
                return Ok(());
            }
            if let Some(err) = child.failure(status) {
                return Err(err);
            }
        }
        Ok(())
    }
}
