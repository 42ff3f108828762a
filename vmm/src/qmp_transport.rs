//! QMP transports: the monitor endpoints of the command line (`-qmp`, `-mon`) opened as
//! listening or connected sockets or stdio, the byte streams of their sessions
//! (descriptors passed with SCM_RIGHTS included), and QEMU's `pretty=on` output form.
//! Nothing here knows the event loop: `event_loop` registers these with its manager.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use crate::chardev::Backend;

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
    pub fn read_fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Stdio => 0,
        }
    }

    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(true),
            Stream::Tcp(s) => s.set_nonblocking(true),
            // stdio stays blocking for writes (a terminal or pipe we own); reads are only
            // done when epoll says readable.
            Stream::Stdio => Ok(()),
        }
    }

    /// Reads bytes, and on a unix socket the file descriptors sent with them.
    pub fn read_with_fds(&mut self, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
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

    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
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

impl QmpListener {
    pub fn as_raw_fd(&self) -> RawFd {
        match self {
            QmpListener::Unix(l) => l.as_raw_fd(),
            QmpListener::Tcp(l) => l.as_raw_fd(),
        }
    }

    pub fn set_nonblocking(&self) -> io::Result<()> {
        match self {
            QmpListener::Unix(l) => l.set_nonblocking(true),
            QmpListener::Tcp(l) => l.set_nonblocking(true),
        }
    }
}

impl Stream {
    /// For the last output before the process ends: blocking writes that give up after
    /// `timeout`, so a slow reader still gets it and a stuck one cannot hold the exit.
    pub fn set_blocking_with_timeout(&self, timeout: std::time::Duration) {
        match self {
            Stream::Unix(s) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(timeout));
            }
            Stream::Tcp(s) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(timeout));
            }
            Stream::Stdio => {}
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

/// Pretty-prints each CRLF-terminated JSON message the way QEMU's `pretty=on` does
/// (4-space indentation), keeping one message per CRLF-terminated block.
pub fn prettify(out: &[u8]) -> Vec<u8> {
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
