//! Migration transports: QEMU's migration URIs turned into connected byte streams, for
//! the source ([`connect`] → [`Outgoing`]) and the destination ([`listen`] →
//! [`Listener`] → [`Incoming`]). The stream format is [`crate::protocol`]'s; this module
//! owns only the channels under it: the sockets, the exec child, the files, and the
//! descriptors the caller passed in.
//!
//! | URI | source writes to | destination reads from | multifd |
//! |---|---|---|---|
//! | `tcp:HOST:PORT` | a connection | the first accepted connection | yes |
//! | `unix:PATH` | a connection | the first accepted connection | yes |
//! | `fd:NAME` | the descriptor (socket, pipe, file) | the descriptor | no |
//! | `exec:CMD` | `/bin/sh -c CMD`'s stdin | its stdout | no |
//! | `file:PATH[,offset=N]` | PATH from byte N (kept before N, cut after) | PATH from byte N | no |
//!
//! Invariants:
//! - `listen` binds at once, so `-incoming` fails at startup on a taken address; for
//!   fd, exec and file there is nothing to accept and the stream opens at once too.
//! - Every stream handed out is wrapped so that, once its [`Canceller`] fired, it fails
//!   with "Migration cancelled" instead of blocking: sockets are shut down, a blocked
//!   accept is woken, the exec child's process group is killed. A write blocked on a
//!   passed pipe whose reader never reads is the one thing a cancel cannot wake.
//! - An exec child is reaped by `finish` (which reports a failed exit) or killed and
//!   reaped when its `Outgoing`/`Incoming` is dropped: none outlives the transport.
//! - A unix listener first removes a stale socket file at its path, as QEMU does (but,
//!   unlike QEMU, never a file of another kind), and unlinks its own socket when it
//!   goes, if the path still names it.
//! - Errors use QEMU's wording where QEMU has one, with the OS reason as `strerror`
//!   gives it, and nothing a user controls makes this module panic.

mod cancel;
mod incoming;
mod uri;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

pub use cancel::Canceller;
use cancel::{Cancel, ChildSlot, Guarded, Hook};
pub use incoming::{listen, Incoming, Listener};
pub use uri::{parse, MigrationUri};

/// QEMU's refusal of more channels on a transport that has only one.
const MULTI_CHANNEL_ERROR: &str = "Migration requires multi-channel URIs (e.g. tcp)";

/// A transport failure, worded for the user (QEMU's wording where it has one).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    message: String,
    kind: Option<io::ErrorKind>,
}

impl TransportError {
    fn new(message: impl Into<String>) -> Self {
        TransportError {
            message: message.into(),
            kind: None,
        }
    }

    /// `context: reason`, the reason as strerror words it (without Rust's "(os error N)").
    fn io(context: impl std::fmt::Display, err: &io::Error) -> Self {
        TransportError {
            message: format!("{context}: {}", reason(err)),
            kind: Some(err.kind()),
        }
    }

    /// The kind of the OS error behind this one, if there is one.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.kind
    }
}

/// An I/O error's text as strerror gives it: Rust's " (os error N)" suffix removed.
fn reason(err: &io::Error) -> String {
    let text = err.to_string();
    match (err.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_string(),
        _ => text,
    }
}

/// The exec child of one transport, and its command (for messages). Dropping it kills
/// and reaps the child unless `wait` reaped it.
struct ExecChild {
    slot: Arc<ChildSlot>,
    command: String,
}

impl ExecChild {
    /// Runs `/bin/sh -c command` as the leader of a new process group, so that a cancel
    /// kills whatever the shell started too; stderr stays ours, as in QEMU.
    fn spawn(
        command: &str,
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<std::process::Child, TransportError> {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .stdin(stdin)
            .stdout(stdout)
            .process_group(0)
            .spawn()
            .map_err(|e| TransportError::io(format_args!("Unable to run '{command}'"), &e))
    }

    /// Takes the spawned child; a cancel kills it from now on.
    fn new(child: std::process::Child, command: &str, cancel: &Cancel) -> Self {
        let slot = Arc::new(ChildSlot::new(child));
        cancel.add(Hook::Kill(slot.clone()));
        ExecChild {
            slot,
            command: command.to_string(),
        }
    }

    /// Waits for the child to exit and reaps it; `Ok(None)` if it was reaped already.
    fn wait(&self) -> Result<Option<ExitStatus>, TransportError> {
        self.slot.wait().map_err(|e| {
            TransportError::io(format_args!("Unable to wait for '{}'", self.command), &e)
        })
    }

    /// The error for a child that did not exit with status 0.
    fn failure(&self, status: ExitStatus) -> Option<TransportError> {
        if let Some(code) = status.code() {
            (code != 0).then(|| {
                TransportError::new(format!(
                    "exec command '{}' exited with status {code}",
                    self.command
                ))
            })
        } else {
            let signal = status.signal().unwrap_or(0);
            Some(TransportError::new(format!(
                "exec command '{}' was killed by signal {signal}",
                self.command
            )))
        }
    }
}

impl Drop for ExecChild {
    fn drop(&mut self) {
        self.slot.kill_and_reap();
    }
}

/// Whether a descriptor is a socket (so a cancel can shut it down).
fn is_socket(file: &File) -> bool {
    file.metadata().is_ok_and(|m| m.file_type().is_socket())
}

/// Adds the shutdown hook of a stream socket, or fails with what the caller was doing.
fn guard_socket<T: AsFd>(
    socket: T,
    cancel: &Arc<Cancel>,
    what: impl std::fmt::Display,
) -> Result<Guarded<T>, TransportError> {
    cancel
        .add_shutdown(socket.as_fd())
        .map_err(|e| TransportError::io(what, &e))?;
    Ok(Guarded {
        inner: socket,
        cancel: cancel.clone(),
    })
}

/// Resolves HOST:PORT, with QEMU's message for a name that does not resolve.
fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, TransportError> {
    let failed = |why: String| {
        TransportError::new(format!(
            "address resolution failed for {host}:{port}: {why}"
        ))
    };
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| {
            let why = reason(&e);
            failed(
                why.strip_prefix("failed to lookup address information: ")
                    .unwrap_or(&why)
                    .to_string(),
            )
        })?
        .collect();
    if addrs.is_empty() {
        return Err(failed("no address".to_string()));
    }
    Ok(addrs)
}

/// Connects to the first of HOST:PORT's addresses that answers, as QEMU does; returns
/// the stream and the address that answered (where multifd channels go).
fn tcp_connect(host: &str, port: u16) -> Result<(TcpStream, SocketAddr), TransportError> {
    let mut last = None;
    for addr in resolve(host, port)? {
        match TcpStream::connect(addr) {
            Ok(stream) => return Ok((stream, addr)),
            Err(e) => last = Some(e),
        }
    }
    let err = last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrNotAvailable));
    Err(tcp_connect_error(host, port, &err))
}

fn tcp_connect_error(host: &str, port: u16, err: &io::Error) -> TransportError {
    TransportError::io(format_args!("Failed to connect to '{host}:{port}'"), err)
}

fn unix_connect(path: &Path) -> Result<UnixStream, TransportError> {
    check_unix_path(path)?;
    UnixStream::connect(path).map_err(|e| {
        TransportError::io(
            format_args!("Failed to connect to '{}'", path.display()),
            &e,
        )
    })
}

/// QEMU's limit: the path must fit in `sun_path` (with its terminating NUL, for std).
fn check_unix_path(path: &Path) -> Result<(), TransportError> {
    const SUN_PATH: usize = 108;
    if path.as_os_str().len() >= SUN_PATH {
        return Err(TransportError::new(format!(
            "UNIX socket path '{}' is too long",
            path.display()
        )));
    }
    Ok(())
}

fn open_error(path: &Path, err: &io::Error) -> TransportError {
    TransportError::io(format_args!("Unable to open {}", path.display()), err)
}

fn seek_to(file: &mut File, path: &Path, offset: u64) -> Result<(), TransportError> {
    file.seek(SeekFrom::Start(offset)).map(drop).map_err(|e| {
        TransportError::io(
            format_args!("Unable to seek to offset {offset} in {}", path.display()),
            &e,
        )
    })
}

/// Where the source opens its multifd channels.
enum Target {
    Tcp {
        addr: SocketAddr,
        host: String,
        port: u16,
    },
    Unix(PathBuf),
    Single,
}

/// The source's end of a migration: the stream to write, and what it takes to close it.
pub struct Outgoing {
    /// The main channel, unbuffered; wrap it in a `BufWriter`. It fails with
    /// "Migration cancelled" once the [`Canceller`] fired.
    pub writer: Box<dyn Write + Send>,
    target: Target,
    cancel: Arc<Cancel>,
    child: Option<ExecChild>,
}

/// Opens the source's channel for `uri`. `fd` is the descriptor an `fd:` URI names,
/// resolved by the caller (QMP `getfd`); other URIs do not use it and close it.
pub fn connect(uri: &MigrationUri, fd: Option<OwnedFd>) -> Result<Outgoing, TransportError> {
    let cancel = Arc::new(Cancel::default());
    let mut child = None;
    let (writer, target): (Box<dyn Write + Send>, Target) = match uri {
        MigrationUri::Tcp { host, port } => {
            let (stream, addr) = tcp_connect(host, *port)?;
            let what = format!("Failed to connect to '{host}:{port}'");
            let writer = Box::new(guard_socket(stream, &cancel, what)?);
            let target = Target::Tcp {
                addr,
                host: host.clone(),
                port: *port,
            };
            (writer, target)
        }
        MigrationUri::Unix(path) => {
            let stream = unix_connect(path)?;
            let what = format!("Failed to connect to '{}'", path.display());
            (
                Box::new(guard_socket(stream, &cancel, what)?),
                Target::Unix(path.clone()),
            )
        }
        MigrationUri::Fd(name) => (Box::new(fd_stream(name, fd, &cancel)?), Target::Single),
        MigrationUri::Exec(command) => {
            let mut spawned = ExecChild::spawn(command, Stdio::piped(), Stdio::null())?;
            let stdin = spawned.stdin.take();
            let exec = ExecChild::new(spawned, command, &cancel);
            let stdin = stdin.ok_or_else(|| {
                TransportError::new(format!("Unable to run '{command}': no stdin pipe"))
            })?;
            child = Some(exec);
            (
                Box::new(Guarded {
                    inner: stdin,
                    cancel: cancel.clone(),
                }),
                Target::Single,
            )
        }
        MigrationUri::File { path, offset } => {
            // QEMU 9: keep what is before the offset, drop what is after it.
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(|e| open_error(path, &e))?;
            file.set_len(*offset).map_err(|e| {
                TransportError::io(
                    format_args!("failed to truncate migration file to offset {offset:x}"),
                    &e,
                )
            })?;
            seek_to(&mut file, path, *offset)?;
            (
                Box::new(Guarded {
                    inner: file,
                    cancel: cancel.clone(),
                }),
                Target::Single,
            )
        }
    };
    Ok(Outgoing {
        writer,
        target,
        cancel,
        child,
    })
}

/// The stream of an `fd:` URI: whatever the descriptor is (socket, pipe, file).
fn fd_stream(
    name: &str,
    fd: Option<OwnedFd>,
    cancel: &Arc<Cancel>,
) -> Result<Guarded<File>, TransportError> {
    let fd = fd.ok_or_else(|| {
        TransportError::new(format!("File descriptor named '{name}' has not been found"))
    })?;
    let file = File::from(fd);
    if is_socket(&file) {
        return guard_socket(file, cancel, format_args!("Unable to use fd '{name}'"));
    }
    Ok(Guarded {
        inner: file,
        cancel: cancel.clone(),
    })
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let command = self.child.as_ref().map(|c| c.command.as_str());
        f.debug_struct("Outgoing")
            .field("exec", &command)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Outgoing {
    /// The handle that cancels this transport from another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller(self.cancel.clone())
    }

    /// Opens `count` more channels to the same address, for multifd (tcp and unix
    /// only). A cancel fails them too.
    pub fn connect_extra(
        &self,
        count: usize,
    ) -> Result<Vec<Box<dyn Write + Send>>, TransportError> {
        let mut channels: Vec<Box<dyn Write + Send>> = Vec::with_capacity(count);
        for _ in 0..count {
            if self.cancel.is_cancelled() {
                return Err(TransportError::new("Migration cancelled"));
            }
            match &self.target {
                Target::Tcp { addr, host, port } => {
                    let stream =
                        TcpStream::connect(addr).map_err(|e| tcp_connect_error(host, *port, &e))?;
                    let what = format!("Failed to connect to '{host}:{port}'");
                    channels.push(Box::new(guard_socket(stream, &self.cancel, what)?));
                }
                Target::Unix(path) => {
                    let stream = unix_connect(path)?;
                    let what = format!("Failed to connect to '{}'", path.display());
                    channels.push(Box::new(guard_socket(stream, &self.cancel, what)?));
                }
                Target::Single => return Err(TransportError::new(MULTI_CHANNEL_ERROR)),
            }
        }
        Ok(channels)
    }

    /// Ends the source's side: flushes and closes the main channel, then for exec waits
    /// for the command and fails if it did not exit with status 0. After a cancel it
    /// fails with "Migration cancelled". Write errors (a full disk, a gone peer) came
    /// from the writer already; channels from `connect_extra` are the caller's to drop.
    pub fn finish(mut self) -> Result<(), TransportError> {
        let flushed = self.writer.flush();
        // Closing the stream is the end of file the exec command waits for.
        self.writer = Box::new(io::sink());
        let status = match &self.child {
            Some(child) => child.wait()?,
            None => None,
        };
        if self.cancel.is_cancelled() {
            return Err(TransportError::new("Migration cancelled"));
        }
        flushed.map_err(|e| TransportError::io("Unable to write migration stream", &e))?;
        if let (Some(child), Some(status)) = (&self.child, status) {
            if let Some(err) = child.failure(status) {
                return Err(err);
            }
        }
        Ok(())
    }
}
