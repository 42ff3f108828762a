//! QEMU's migration URIs: `tcp:`, `unix:`, `fd:`, `exec:` and `file:`, parsed into
//! [`MigrationUri`] and printed back. Parsing names no host resource: it resolves no
//! address, opens no file and looks up no descriptor, so `migrate` and `-incoming` can
//! refuse a malformed URI before they touch anything.

use std::fmt;
use std::path::PathBuf;

use super::TransportError;

/// One migration URI, as `migrate`, `migrate-incoming` and `-incoming` take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationUri {
    /// `tcp:HOST:PORT`; HOST is a name, an IPv4 address or an IPv6 address (written in
    /// brackets, stored without them), empty for "any" when listening. Port 0 when
    /// listening picks a free port.
    Tcp { host: String, port: u16 },
    /// `unix:PATH`, a socket path.
    Unix(PathBuf),
    /// `fd:NAME`, a descriptor passed earlier with `getfd`; the caller resolves the name.
    Fd(String),
    /// `exec:CMD`, run by `/bin/sh -c CMD`.
    Exec(String),
    /// `file:PATH[,offset=N]`: the stream starts at byte N of the file.
    File { path: PathBuf, offset: u64 },
}

impl MigrationUri {
    /// Whether more channels (multifd) can be opened to the same place: only sockets
    /// that are reached by address can, as in QEMU.
    pub fn supports_multi_channels(&self) -> bool {
        matches!(self, MigrationUri::Tcp { .. } | MigrationUri::Unix(_))
    }
}

impl fmt::Display for MigrationUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationUri::Tcp { host, port } if host.contains(':') => {
                write!(f, "tcp:[{host}]:{port}")
            }
            MigrationUri::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            MigrationUri::Unix(path) => write!(f, "unix:{}", path.display()),
            MigrationUri::Fd(name) => write!(f, "fd:{name}"),
            MigrationUri::Exec(cmd) => write!(f, "exec:{cmd}"),
            MigrationUri::File { path, offset: 0 } => write!(f, "file:{}", path.display()),
            MigrationUri::File { path, offset } => {
                write!(f, "file:{},offset={offset}", path.display())
            }
        }
    }
}

/// Parses a migration URI with QEMU's syntax and, where QEMU has one, its error text.
pub fn parse(uri: &str) -> Result<MigrationUri, TransportError> {
    if let Some(rest) = uri.strip_prefix("tcp:") {
        let (host, port) = parse_inet(rest)?;
        Ok(MigrationUri::Tcp { host, port })
    } else if let Some(path) = uri.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(TransportError::new("invalid Unix socket address"));
        }
        Ok(MigrationUri::Unix(PathBuf::from(path)))
    } else if let Some(name) = uri.strip_prefix("fd:") {
        if name.is_empty() {
            return Err(TransportError::new("invalid file descriptor address"));
        }
        Ok(MigrationUri::Fd(name.to_string()))
    } else if let Some(cmd) = uri.strip_prefix("exec:") {
        Ok(MigrationUri::Exec(cmd.to_string()))
    } else if let Some(spec) = uri.strip_prefix("file:") {
        const OFFSET_OPTION: &str = ",offset=";
        match spec.find(OFFSET_OPTION) {
            Some(at) => {
                let text = &spec[at + OFFSET_OPTION.len()..];
                let offset = parse_size(text).map_err(|reason| {
                    TransportError::new(format!("file URI has bad offset {text}: {reason}"))
                })?;
                Ok(MigrationUri::File {
                    path: PathBuf::from(&spec[..at]),
                    offset,
                })
            }
            None => Ok(MigrationUri::File {
                path: PathBuf::from(spec),
                offset: 0,
            }),
        }
    } else {
        Err(TransportError::new(format!(
            "unknown migration protocol: {uri}"
        )))
    }
}

/// QEMU's `inet_parse` without its options: `HOST:PORT`, `[IPV6]:PORT` or `:PORT`.
fn parse_inet(addr: &str) -> Result<(String, u16), TransportError> {
    let (host, rest) = if let Some(port) = addr.strip_prefix(':') {
        if port.is_empty() || port.starts_with(',') {
            return Err(TransportError::new(format!(
                "error parsing port in address '{addr}'"
            )));
        }
        (String::new(), port)
    } else if let Some(v6) = addr.strip_prefix('[') {
        match v6.split_once("]:") {
            Some((host, port)) if !host.is_empty() && !port.is_empty() => (host.to_string(), port),
            _ => {
                return Err(TransportError::new(format!(
                    "error parsing IPv6 address '{addr}'"
                )))
            }
        }
    } else {
        match addr.split_once(':') {
            Some((host, port)) if !host.is_empty() && !port.is_empty() => (host.to_string(), port),
            _ => {
                return Err(TransportError::new(format!(
                    "error parsing address '{addr}'"
                )))
            }
        }
    };
    let (port, options) = match rest.split_once(',') {
        Some((port, options)) => (port, Some(options)),
        None => (rest, None),
    };
    if let Some(options) = options {
        return Err(TransportError::new(format!(
            "unsupported option ',{options}' in address '{addr}'"
        )));
    }
    let port = port.parse::<u16>().map_err(|_| {
        TransportError::new(format!(
            "port '{port}' in address '{addr}' is not a number from 0 to 65535"
        ))
    })?;
    Ok((host, port))
}

/// QEMU's `qemu_strtosz` for whole numbers: decimal or `0x` hexadecimal, with an
/// optional unit suffix (B, K, M, G, T, P, E; powers of 1024). The error is the reason
/// QEMU's `strerror` would give.
fn parse_size(text: &str) -> Result<u64, &'static str> {
    const INVALID: &str = "Invalid argument";
    const RANGE: &str = "Numerical result out of range";
    let (digits, radix) = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (text, 10),
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    let (number, suffix) = digits.split_at(end);
    if number.is_empty() {
        return Err(INVALID);
    }
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        "E" => 60,
        _ => return Err(INVALID),
    };
    let value = u64::from_str_radix(number, radix).map_err(|_| RANGE)?;
    value.checked_mul(1u64 << shift).ok_or(RANGE)
}
