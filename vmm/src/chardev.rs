//! Character device backends (`-chardev`, `-serial`): where a guest's byte stream goes
//! and where its input comes from. A backend outlives the VM built on it, so a guest
//! reboot keeps the same console connection.

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

/// Where a chardev's bytes go and come from: the command line's description, used as is.
pub use crate::cmdline::ChardevBackend as Backend;

#[derive(Debug, thiserror::Error)]
pub enum ChardevError {
    #[error("could not open chardev file '{path}': {err}")]
    File { path: String, err: io::Error },
    #[error("could not listen on '{addr}': {err}")]
    Listen { addr: String, err: io::Error },
    #[error("could not connect to '{addr}': {err}")]
    Connect { addr: String, err: io::Error },
}

/// Receives the bytes a backend reads from its host side.
pub type InputSink = Arc<dyn Fn(&[u8]) + Send + Sync>;

enum Out {
    Stdout,
    File(std::fs::File),
    /// The currently connected peer of a socket backend, if any.
    Peer(Arc<Mutex<Option<Box<dyn Write + Send>>>>),
    Null,
}

/// An opened backend: a writer shared by every device built on it across reboots, and
/// an input side that forwards host bytes to whichever sink is current.
pub struct Chardev {
    out: Arc<Mutex<Out>>,
    sink: Arc<Mutex<Option<InputSink>>>,
}

impl Chardev {
    /// Opens `b`. A server socket with `wait` blocks here until a client connects, as
    /// QEMU's `wait=on` does.
    /// For stdio, `quit` is called when the user types Ctrl-A x (QEMU's
    /// -nographic escape), and Ctrl-A Ctrl-A sends one Ctrl-A to the guest.
    pub fn open(
        b: &Backend,
        quit: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Result<Chardev, ChardevError> {
        let sink: Arc<Mutex<Option<InputSink>>> = Arc::new(Mutex::new(None));
        let out = match b {
            Backend::Stdio => {
                match quit {
                    Some(q) => spawn_reader(EscapeFilter::new(io::stdin(), q), sink.clone()),
                    None => spawn_reader(io::stdin(), sink.clone()),
                }
                Out::Stdout
            }
            Backend::Null => Out::Null,
            Backend::File { path, append } => {
                let f = OpenOptions::new()
                    .create(true)
                    .write(true)
                    .append(*append)
                    .truncate(!*append)
                    .open(path)
                    .map_err(|err| ChardevError::File {
                        path: path.display().to_string(),
                        err,
                    })?;
                Out::File(f)
            }
            Backend::UnixSocket { path, server, wait } => {
                let peer = Arc::new(Mutex::new(None));
                if *server {
                    let l = listen_unix(path)?;
                    serve(l, peer.clone(), sink.clone(), *wait)?;
                } else {
                    let s = UnixStream::connect(path).map_err(|err| ChardevError::Connect {
                        addr: path.display().to_string(),
                        err,
                    })?;
                    attach(s, &peer, &sink)?;
                }
                Out::Peer(peer)
            }
            Backend::TcpSocket {
                host,
                port,
                server,
                wait,
            } => {
                let addr = format!("{host}:{port}");
                let peer = Arc::new(Mutex::new(None));
                if *server {
                    let l = TcpListener::bind(&addr).map_err(|err| ChardevError::Listen {
                        addr: addr.clone(),
                        err,
                    })?;
                    serve(l, peer.clone(), sink.clone(), *wait)?;
                } else {
                    let s = TcpStream::connect(&addr).map_err(|err| ChardevError::Connect {
                        addr: addr.clone(),
                        err,
                    })?;
                    attach(s, &peer, &sink)?;
                }
                Out::Peer(peer)
            }
        };
        Ok(Chardev {
            out: Arc::new(Mutex::new(out)),
            sink,
        })
    }

    /// A writer for a device's output. Errors from a gone peer drop the bytes: a guest
    /// must never stall on its console.
    pub fn writer(&self) -> Box<dyn Write + Send> {
        Box::new(ChardevWriter(self.out.clone()))
    }

    /// Routes host input to `sink` from now on (replacing the previous one).
    pub fn set_input(&self, sink: InputSink) {
        *self.sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(sink);
    }
}

struct ChardevWriter(Arc<Mutex<Out>>);

impl Write for ChardevWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *out {
            Out::Stdout => {
                let mut s = io::stdout().lock();
                let _ = s.write_all(buf);
                let _ = s.flush();
            }
            Out::File(f) => {
                let _ = f.write_all(buf);
            }
            Out::Peer(p) => {
                let mut p = p.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(w) = p.as_mut() {
                    if w.write_all(buf).is_err() {
                        *p = None;
                    }
                }
            }
            Out::Null => {}
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn listen_unix(path: &Path) -> Result<UnixListener, ChardevError> {
    // A stale socket file from an earlier run would make bind fail; QEMU removes it too.
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if m.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    UnixListener::bind(path).map_err(|err| ChardevError::Listen {
        addr: path.display().to_string(),
        err,
    })
}

trait Listener: Send + 'static {
    type S: Read + Write + Send + 'static + TryCloneStream;
    fn accept_one(&self) -> io::Result<Self::S>;
}

trait TryCloneStream: Sized {
    fn try_clone_stream(&self) -> io::Result<Self>;
}

impl TryCloneStream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

impl TryCloneStream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

impl Listener for UnixListener {
    type S = UnixStream;
    fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
}

impl Listener for TcpListener {
    type S = TcpStream;
    fn accept_one(&self) -> io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
}

fn attach<S: Read + Write + Send + 'static + TryCloneStream>(
    s: S,
    peer: &Arc<Mutex<Option<Box<dyn Write + Send>>>>,
    sink: &Arc<Mutex<Option<InputSink>>>,
) -> Result<(), ChardevError> {
    let r = s.try_clone_stream().map_err(|err| ChardevError::Connect {
        addr: "socket".into(),
        err,
    })?;
    *peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(s));
    let _ = read_loop(r, sink.clone());
    Ok(())
}

/// Accepts clients one after another (one connected at a time, as QEMU's socket
/// chardev does); with `wait`, the first is accepted before returning.
fn serve<L: Listener>(
    l: L,
    peer: Arc<Mutex<Option<Box<dyn Write + Send>>>>,
    sink: Arc<Mutex<Option<InputSink>>>,
    wait: bool,
) -> Result<(), ChardevError> {
    let first = if wait {
        Some(l.accept_one().map_err(|err| ChardevError::Listen {
            addr: "socket".into(),
            err,
        })?)
    } else {
        None
    };
    thread::Builder::new()
        .name("chardev-accept".into())
        .spawn(move || {
            let mut next = first;
            loop {
                let s = match next.take() {
                    Some(s) => s,
                    None => match l.accept_one() {
                        Ok(s) => s,
                        Err(_) => return,
                    },
                };
                let Ok(r) = s.try_clone_stream() else {
                    continue;
                };
                *peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(s));
                // Serve this client until it hangs up, then accept the next.
                if let Ok(h) = read_loop(r, sink.clone()) {
                    let _ = h.join();
                }
                *peer.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
        })
        .map_err(|err| ChardevError::Listen {
            addr: "socket".into(),
            err,
        })?;
    Ok(())
}

fn read_loop<R: Read + Send + 'static>(
    mut r: R,
    sink: Arc<Mutex<Option<InputSink>>>,
) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("chardev-in".into())
        .spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let s = sink.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        if let Some(s) = s {
                            s(&buf[..n]);
                        }
                    }
                }
            }
        })
}

/// Strips QEMU's Ctrl-A escapes from terminal input.
struct EscapeFilter<R> {
    inner: R,
    quit: Arc<dyn Fn() + Send + Sync>,
    pending_escape: bool,
}

const CTRL_A: u8 = 0x01;

impl<R: Read> EscapeFilter<R> {
    fn new(inner: R, quit: Arc<dyn Fn() + Send + Sync>) -> Self {
        Self {
            inner,
            quit,
            pending_escape: false,
        }
    }

    /// Filters `buf` in place; returns the length that remains for the guest.
    fn filter(&mut self, buf: &mut [u8]) -> usize {
        let mut w = 0;
        for i in 0..buf.len() {
            let b = buf[i];
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => (self.quit)(),
                    CTRL_A => {
                        buf[w] = CTRL_A;
                        w += 1;
                    }
                    _ => {}
                }
            } else if b == CTRL_A {
                self.pending_escape = true;
            } else {
                buf[w] = b;
                w += 1;
            }
        }
        w
    }
}

impl<R: Read> Read for EscapeFilter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.inner.read(buf)?;
            if n == 0 {
                return Ok(0);
            }
            let k = self.filter(&mut buf[..n]);
            if k > 0 {
                return Ok(k);
            }
        }
    }
}

fn spawn_reader<R: Read + Send + 'static>(r: R, sink: Arc<Mutex<Option<InputSink>>>) {
    let _ = read_loop(r, sink);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("kestrel-chardev-{}-{name}", std::process::id()))
    }

    #[test]
    fn ctrl_a_x_quits_and_ctrl_a_ctrl_a_passes_one() {
        let quits = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let q = quits.clone();
        let input: &[u8] = b"ab\x01\x01c\x01xd\x01";
        let mut f = EscapeFilter::new(
            input,
            Arc::new(move || {
                q.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }),
        );
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"ab\x01cd");
        assert_eq!(quits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn file_backend_writes_and_truncates() {
        let p = tmp("file");
        std::fs::write(&p, "old contents").unwrap();
        let c = Chardev::open(
            &Backend::File {
                path: p.clone(),
                append: false,
            },
            None,
        )
        .unwrap();
        c.writer().write_all(b"hello").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hello");
        let c = Chardev::open(
            &Backend::File {
                path: p.clone(),
                append: true,
            },
            None,
        )
        .unwrap();
        c.writer().write_all(b" world").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "hello world");
        std::fs::remove_file(&p).ok();
        let err = Chardev::open(
            &Backend::File {
                path: "/nonexistent/dir/x".into(),
                append: false,
            },
            None,
        );
        assert!(err.is_err());
    }

    #[test]
    fn unix_server_carries_both_directions_and_survives_reconnect() {
        let p = tmp("sock");
        let c = Chardev::open(
            &Backend::UnixSocket {
                path: p.clone(),
                server: true,
                wait: false,
            },
            None,
        )
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let tx = Mutex::new(tx);
        c.set_input(Arc::new(move |b: &[u8]| {
            let _ = tx.lock().unwrap().send(b.to_vec());
        }));
        // No client yet: output is dropped, not blocked.
        c.writer().write_all(b"lost").unwrap();
        for round in 0..2 {
            let mut s = UnixStream::connect(&p).unwrap();
            s.write_all(b"in").unwrap();
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b"in");
            // The accept thread has attached this client by the time input flowed.
            c.writer()
                .write_all(format!("out{round}").as_bytes())
                .unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, format!("out{round}").as_bytes());
        }
        std::fs::remove_file(&p).ok();
    }
}
