//! Character device backends: `-chardev BACKEND,id=ID,...` and the legacy `-serial` spellings
//! (`stdio`, `file:PATH`, `unix:PATH,...`, `tcp:HOST:PORT,...`, `chardev:ID`, ...).

use std::path::PathBuf;

use serde::Deserialize;

use super::keyvalue::{self, KvError};
use super::values::is_identifier;
use super::{Chardev, ChardevBackend};

/// Backends QEMU has and Kestrel does not: named in errors as unsupported rather than unknown.
const QEMU_ONLY_BACKENDS: &[&str] = &[
    "vc",
    "pty",
    "pipe",
    "udp",
    "serial",
    "tty",
    "parallel",
    "parport",
    "ringbuf",
    "memory",
    "msmouse",
    "wctablet",
    "braille",
    "testdev",
    "spicevmc",
    "spiceport",
    "qemu-vdagent",
    "dbus",
    "mux",
    "console",
];

const SUPPORTED: &str = "stdio, file, socket or null";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdOpts {
    id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOpts {
    id: Option<String>,
    path: Option<PathBuf>,
    append: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SocketOpts {
    id: Option<String>,
    path: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    server: Option<bool>,
    wait: Option<bool>,
}

/// `-chardev`'s value: the implied first word picks the backend.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ChardevOpts {
    Stdio(IdOpts),
    File(FileOpts),
    Socket(SocketOpts),
    Null(IdOpts),
}

fn backend_error(e: KvError) -> String {
    match e {
        KvError::UnknownVariant { value, .. } if QEMU_ONLY_BACKENDS.contains(&value.as_str()) => {
            format!("char driver '{value}' is not supported by Kestrel (use {SUPPORTED})")
        }
        KvError::UnknownVariant { value, .. } => {
            format!("'{value}' is not a valid char driver name")
        }
        other => other.to_string(),
    }
}

/// Validates a socket's address and mode; shared by `-chardev socket` and `-serial unix:/tcp:`.
fn socket_backend(
    path: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    server: Option<bool>,
    wait: Option<bool>,
) -> Result<ChardevBackend, String> {
    let server_on = server.unwrap_or(false);
    if !server_on && wait.is_some() {
        return Err("'wait' option is incompatible with socket in client connect mode".into());
    }
    let wait = wait.unwrap_or(true);
    match (path, host, port) {
        (Some(_), Some(_), _) => Err("only one of 'path' and 'host' may be given".into()),
        (Some(_), None, Some(_)) => Err("'port' is only valid with 'host'".into()),
        (Some(path), None, None) if path.as_os_str().is_empty() => {
            Err("'path' must not be empty".into())
        }
        (Some(path), None, None) => Ok(ChardevBackend::UnixSocket {
            path,
            server: server_on,
            wait,
        }),
        (None, Some(_), None) => Err("socket: no port given".into()),
        (None, Some(host), Some(port)) => Ok(ChardevBackend::TcpSocket {
            host,
            port,
            server: server_on,
            wait,
        }),
        (None, None, _) => Err("socket needs 'path' (unix) or 'host' and 'port' (tcp)".into()),
    }
}

/// Parses the value of `-chardev`. The error is the problem, without the option name.
pub fn parse_chardev(arg: &str) -> Result<Chardev, String> {
    let opts: ChardevOpts = keyvalue::from_str(arg, Some("backend")).map_err(backend_error)?;
    let (id, backend) = match opts {
        ChardevOpts::Stdio(o) => (o.id, ChardevBackend::Stdio),
        ChardevOpts::Null(o) => (o.id, ChardevBackend::Null),
        ChardevOpts::File(o) => {
            let path = match o.path {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => return Err("file: no filename given (use path=FILE)".into()),
            };
            let append = o.append.unwrap_or(false);
            (o.id, ChardevBackend::File { path, append })
        }
        ChardevOpts::Socket(o) => {
            let backend = socket_backend(o.path, o.host, o.port, o.server, o.wait)?;
            (o.id, backend)
        }
    };
    let id = id.ok_or("chardev: no id specified")?;
    if !is_identifier(&id) {
        return Err(
            "Parameter 'id' expects an identifier (letters, digits, '-', '.', '_', starting with a letter)"
                .into(),
        );
    }
    Ok(Chardev { id, backend })
}

/// What one `-serial` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialSpec {
    /// `none`: no port (and, as in QEMU, no COM number used up).
    None,
    Backend(ChardevBackend),
    /// `chardev:ID`, resolved once every `-chardev` is known.
    Chardev(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnixCompat {
    path: Option<PathBuf>,
    server: Option<bool>,
    wait: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TcpCompat {
    /// `HOST:PORT`, the implied first item.
    addr: Option<String>,
    server: Option<bool>,
    wait: Option<bool>,
}

/// Splits `HOST:PORT`; the host may be empty (all interfaces) or a bracketed IPv6 address.
fn split_host_port(addr: &str) -> Result<(String, u16), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("'{addr}' is not HOST:PORT"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("port '{port}' is not a number between 0 and 65535"))?;
    Ok((host.to_string(), port))
}

/// Parses the value of `-serial`. The error is the problem, without the option name.
pub fn parse_serial(arg: &str) -> Result<SerialSpec, String> {
    let unsupported =
        |name: &str| format!("char driver '{name}' is not supported by Kestrel (use {SUPPORTED})");
    match arg {
        "none" => return Ok(SerialSpec::None),
        "null" => return Ok(SerialSpec::Backend(ChardevBackend::Null)),
        "stdio" => return Ok(SerialSpec::Backend(ChardevBackend::Stdio)),
        _ => {}
    }
    if let Some(path) = arg.strip_prefix("file:") {
        // As in QEMU, everything after `file:` is the path, commas included.
        if path.is_empty() {
            return Err("file: no filename given".into());
        }
        return Ok(SerialSpec::Backend(ChardevBackend::File {
            path: PathBuf::from(path),
            append: false,
        }));
    }
    if let Some(id) = arg.strip_prefix("chardev:") {
        if id.is_empty() {
            return Err("chardev: no id given".into());
        }
        return Ok(SerialSpec::Chardev(id.to_string()));
    }
    if let Some(rest) = arg.strip_prefix("unix:") {
        let o: UnixCompat = keyvalue::from_str(rest, Some("path")).map_err(|e| e.to_string())?;
        let path = o.path.ok_or("unix: no socket path given")?;
        return socket_backend(Some(path), None, None, o.server, o.wait).map(SerialSpec::Backend);
    }
    if let Some(rest) = arg.strip_prefix("tcp:") {
        let o: TcpCompat = keyvalue::from_str(rest, Some("addr")).map_err(|e| e.to_string())?;
        let addr = o.addr.ok_or("tcp: expected tcp:HOST:PORT")?;
        let (host, port) = split_host_port(&addr)?;
        return socket_backend(None, Some(host), Some(port), o.server, o.wait)
            .map(SerialSpec::Backend);
    }
    if arg.starts_with("mon:") {
        return Err("the monitor multiplexer 'mon:' is not supported yet".into());
    }
    if let Some((prefix, _)) = arg.split_once(':') {
        if matches!(
            prefix,
            "pipe" | "udp" | "telnet" | "websocket" | "vc" | "COM"
        ) {
            return Err(unsupported(prefix));
        }
    }
    if QEMU_ONLY_BACKENDS.contains(&arg) || arg.starts_with("/dev/") {
        return Err(unsupported(arg));
    }
    Err(format!("'{arg}' is not a valid char driver"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chardev(s: &str) -> Chardev {
        match parse_chardev(s) {
            Ok(c) => c,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn backend(s: &str) -> ChardevBackend {
        match parse_serial(s) {
            Ok(SerialSpec::Backend(b)) => b,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn chardev_backends() {
        assert_eq!(
            chardev("stdio,id=c0"),
            Chardev {
                id: "c0".into(),
                backend: ChardevBackend::Stdio
            }
        );
        assert_eq!(chardev("null,id=n").backend, ChardevBackend::Null);
        assert_eq!(
            chardev("file,id=f,path=/tmp/log,,1,append=on").backend,
            ChardevBackend::File {
                path: "/tmp/log,1".into(),
                append: true
            }
        );
        assert_eq!(
            chardev("socket,id=s,path=/run/s.sock,server=on,wait=off").backend,
            ChardevBackend::UnixSocket {
                path: "/run/s.sock".into(),
                server: true,
                wait: false
            }
        );
        assert_eq!(
            chardev("socket,id=s,path=/run/s.sock,server,nowait").backend,
            ChardevBackend::UnixSocket {
                path: "/run/s.sock".into(),
                server: true,
                wait: false
            }
        );
        assert_eq!(
            chardev("socket,id=s,host=127.0.0.1,port=4444").backend,
            ChardevBackend::TcpSocket {
                host: "127.0.0.1".into(),
                port: 4444,
                server: false,
                wait: true
            }
        );
        assert_eq!(
            chardev("backend=socket,id=s,host=,port=1,server=yes").backend,
            ChardevBackend::TcpSocket {
                host: String::new(),
                port: 1,
                server: true,
                wait: true
            }
        );
    }

    #[test]
    fn chardev_errors() {
        for (arg, msg) in [
            ("stdio", "chardev: no id specified"),
            ("foo,id=x", "'foo' is not a valid char driver name"),
            ("pty,id=x", "char driver 'pty' is not supported"),
            ("stdio,id=x,bogus=1", "Invalid parameter 'bogus'"),
            ("stdio,id=x,path=/a", "Invalid parameter 'path'"),
            ("null,id=x,id=y", "Parameter 'id' is given more than once"),
            ("null,id=1x", "Parameter 'id' expects an identifier"),
            ("socket,id=x", "socket needs 'path'"),
            ("socket,id=x,host=h", "no port given"),
            ("socket,id=x,port=1", "socket needs 'path'"),
            (
                "socket,id=x,path=/a,host=h,port=1",
                "only one of 'path' and 'host'",
            ),
            (
                "socket,id=x,path=/a,port=1",
                "'port' is only valid with 'host'",
            ),
            ("socket,id=x,host=h,port=99999", "Parameter 'port' expects"),
            (
                "socket,id=x,path=/a,server=maybe",
                "Parameter 'server' expects 'on' or 'off'",
            ),
            (
                "socket,id=x,path=/a,wait=off",
                "'wait' option is incompatible",
            ),
            ("file,id=x", "no filename given"),
            ("id=x", "Parameter 'backend' is missing"),
            ("", "Parameter 'backend' is missing"),
        ] {
            match parse_chardev(arg) {
                Ok(c) => panic!("{arg}: accepted as {c:?}"),
                Err(e) => assert!(e.contains(msg), "{arg}: {e}"),
            }
        }
    }

    #[test]
    fn serial_spellings() {
        assert_eq!(parse_serial("none"), Ok(SerialSpec::None));
        assert_eq!(backend("null"), ChardevBackend::Null);
        assert_eq!(backend("stdio"), ChardevBackend::Stdio);
        assert_eq!(
            backend("file:/tmp/a,append=on"),
            ChardevBackend::File {
                path: "/tmp/a,append=on".into(),
                append: false
            }
        );
        assert_eq!(
            backend("unix:/tmp/s,server=on,wait=off"),
            ChardevBackend::UnixSocket {
                path: "/tmp/s".into(),
                server: true,
                wait: false
            }
        );
        assert_eq!(
            backend("unix:/tmp/s,server,nowait"),
            ChardevBackend::UnixSocket {
                path: "/tmp/s".into(),
                server: true,
                wait: false
            }
        );
        assert_eq!(
            backend("tcp:localhost:4444"),
            ChardevBackend::TcpSocket {
                host: "localhost".into(),
                port: 4444,
                server: false,
                wait: true
            }
        );
        assert_eq!(
            backend("tcp::4444,server=on,wait=off"),
            ChardevBackend::TcpSocket {
                host: String::new(),
                port: 4444,
                server: true,
                wait: false
            }
        );
        assert_eq!(
            backend("tcp:[::1]:4444,server"),
            ChardevBackend::TcpSocket {
                host: "::1".into(),
                port: 4444,
                server: true,
                wait: true
            }
        );
        assert_eq!(
            parse_serial("chardev:c0"),
            Ok(SerialSpec::Chardev("c0".into()))
        );
    }

    #[test]
    fn serial_errors() {
        for (arg, msg) in [
            ("bogus", "'bogus' is not a valid char driver"),
            (
                "stdio,server=on",
                "'stdio,server=on' is not a valid char driver",
            ),
            ("pty", "char driver 'pty' is not supported"),
            ("/dev/ttyS0", "char driver '/dev/ttyS0' is not supported"),
            ("telnet::4444", "char driver 'telnet' is not supported"),
            ("mon:stdio", "'mon:' is not supported"),
            ("file:", "no filename given"),
            ("unix:", "no socket path given"),
            ("unix:/a,bogus=1", "Invalid parameter 'bogus'"),
            ("unix:/a,wait=off", "'wait' option is incompatible"),
            ("tcp:foo", "'foo' is not HOST:PORT"),
            ("tcp:h:99999", "port '99999' is not a number"),
            ("tcp:h:x", "port 'x' is not a number"),
            ("tcp:", "expected tcp:HOST:PORT"),
            ("chardev:", "no id given"),
            ("", "'' is not a valid char driver"),
        ] {
            match parse_serial(arg) {
                Ok(s) => panic!("{arg}: accepted as {s:?}"),
                Err(e) => assert!(e.contains(msg), "{arg}: {e}"),
            }
        }
    }
}
