//! The transports over real sockets, pipes, files and shell commands.

use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpListener as StdTcpListener;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use super::*;

/// A directory under the system's temp dir, removed with what it holds when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("kestrel-mig-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `len` bytes that differ from one offset to the next, seeded so channels differ.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

fn read_all(mut reader: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    out
}

fn error_of<T>(result: Result<T, TransportError>) -> String {
    failure(result).to_string()
}

fn failure<T>(result: Result<T, TransportError>) -> TransportError {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn uri(text: &str) -> MigrationUri {
    parse(text).unwrap()
}

#[test]
fn every_protocol_parses_and_prints_back() {
    let cases = [
        (
            "tcp:localhost:4444",
            MigrationUri::Tcp {
                host: "localhost".into(),
                port: 4444,
            },
        ),
        (
            "tcp:10.0.0.2:0",
            MigrationUri::Tcp {
                host: "10.0.0.2".into(),
                port: 0,
            },
        ),
        (
            "tcp:[::1]:4444",
            MigrationUri::Tcp {
                host: "::1".into(),
                port: 4444,
            },
        ),
        (
            "tcp::4444",
            MigrationUri::Tcp {
                host: String::new(),
                port: 4444,
            },
        ),
        (
            "unix:/run/mig.sock",
            MigrationUri::Unix("/run/mig.sock".into()),
        ),
        ("fd:migfd", MigrationUri::Fd("migfd".into())),
        (
            "exec:gzip -c > /tmp/vm.gz",
            MigrationUri::Exec("gzip -c > /tmp/vm.gz".into()),
        ),
        (
            "file:/tmp/vm",
            MigrationUri::File {
                path: "/tmp/vm".into(),
                offset: 0,
            },
        ),
        (
            "file:/tmp/vm,offset=4096",
            MigrationUri::File {
                path: "/tmp/vm".into(),
                offset: 4096,
            },
        ),
    ];
    for (text, expected) in cases {
        let parsed = parse(text).unwrap();
        assert_eq!(parsed, expected, "{text}");
        assert_eq!(parsed.to_string(), text);
    }
}

#[test]
fn file_offsets_take_hex_and_units_like_qemu() {
    let offset = |text: &str| match parse(&format!("file:/f,offset={text}")).unwrap() {
        MigrationUri::File { offset, .. } => offset,
        other => panic!("{other:?}"),
    };
    assert_eq!(offset("0x1000"), 4096);
    assert_eq!(offset("0X10"), 16);
    assert_eq!(offset("4k"), 4096);
    assert_eq!(offset("2M"), 2 << 20);
    assert_eq!(offset("1G"), 1 << 30);
    assert_eq!(offset("0"), 0);
    // Printed in decimal, and a 0 offset is not printed at all.
    assert_eq!(uri("file:/f,offset=0x10").to_string(), "file:/f,offset=16");
    assert_eq!(uri("file:/f,offset=0").to_string(), "file:/f");
}

#[test]
fn malformed_uris_get_qemus_errors() {
    let cases = [
        (
            "rdma:host:4444",
            "unknown migration protocol: rdma:host:4444",
        ),
        ("/tmp/vm", "unknown migration protocol: /tmp/vm"),
        ("", "unknown migration protocol: "),
        ("unix:", "invalid Unix socket address"),
        ("fd:", "invalid file descriptor address"),
        ("tcp:host", "error parsing address 'host'"),
        ("tcp:host:", "error parsing address 'host:'"),
        ("tcp::", "error parsing port in address ':'"),
        ("tcp:[::1:4444", "error parsing IPv6 address '[::1:4444'"),
        ("tcp:[::1]", "error parsing IPv6 address '[::1]'"),
        (
            "tcp:host:http",
            "port 'http' in address 'host:http' is not a number from 0 to 65535",
        ),
        (
            "tcp:host:65536",
            "port '65536' in address 'host:65536' is not a number from 0 to 65535",
        ),
        (
            "tcp:host:1,ipv4",
            "unsupported option ',ipv4' in address 'host:1,ipv4'",
        ),
        (
            "file:/f,offset=",
            "file URI has bad offset : Invalid argument",
        ),
        (
            "file:/f,offset=abc",
            "file URI has bad offset abc: Invalid argument",
        ),
        (
            "file:/f,offset=0x",
            "file URI has bad offset 0x: Invalid argument",
        ),
        (
            "file:/f,offset=12q",
            "file URI has bad offset 12q: Invalid argument",
        ),
        (
            "file:/f,offset=-1",
            "file URI has bad offset -1: Invalid argument",
        ),
        (
            "file:/f,offset=99999999999999999999",
            "file URI has bad offset 99999999999999999999: Numerical result out of range",
        ),
        (
            "file:/f,offset=32E",
            "file URI has bad offset 32E: Numerical result out of range",
        ),
    ];
    for (text, message) in cases {
        assert_eq!(error_of(parse(text)), message, "{text}");
    }
}

/// Sends `data` over a fresh connection to the listener at `uri` and checks that the
/// destination reads exactly it.
fn send_and_compare(uri: &MigrationUri, data: &[u8]) {
    let listener = listen(uri, None).unwrap();
    let address = listener.local_address().unwrap();
    let reader = thread::spawn(move || {
        let mut incoming = listener.accept().unwrap();
        let got = read_all(&mut incoming.reader);
        incoming.finish().unwrap();
        got
    });
    let mut outgoing = connect(&address, None).unwrap();
    outgoing.writer.write_all(data).unwrap();
    outgoing.finish().unwrap();
    assert!(
        reader.join().unwrap() == data,
        "the destination read other bytes"
    );
}

#[test]
fn tcp_on_a_picked_port_carries_8_mib() {
    let listener = listen(&uri("tcp:127.0.0.1:0"), None).unwrap();
    match listener.local_address() {
        Some(MigrationUri::Tcp { host, port }) => {
            assert_eq!(host, "127.0.0.1");
            assert_ne!(port, 0, "query-migrate must show the port picked");
        }
        other => panic!("{other:?}"),
    }
    drop(listener);
    send_and_compare(&uri("tcp:127.0.0.1:0"), &pattern(8 << 20, 1));
}

#[test]
fn tcp_on_any_address_reports_it() {
    let listener = listen(&uri("tcp:0.0.0.0:0"), None).unwrap();
    let Some(MigrationUri::Tcp { host, port }) = listener.local_address() else {
        panic!("no tcp address");
    };
    assert_eq!(host, "0.0.0.0");
    // A source reaches it on the loopback address.
    let mut outgoing = connect(
        &MigrationUri::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        None,
    )
    .unwrap();
    let mut incoming = listener.accept().unwrap();
    outgoing.writer.write_all(b"hello").unwrap();
    outgoing.finish().unwrap();
    assert_eq!(read_all(&mut incoming.reader), b"hello");
}

#[test]
fn unix_in_a_temp_dir_carries_8_mib_and_removes_its_socket() {
    let dir = TempDir::new();
    let path = dir.path("mig.sock");
    let unix = MigrationUri::Unix(path.clone());
    assert_eq!(
        listen(&unix, None).unwrap().local_address(),
        Some(unix.clone())
    );
    assert!(!path.exists(), "a dropped listener leaves its socket file");
    send_and_compare(&unix, &pattern(8 << 20, 2));
    assert!(
        !path.exists(),
        "a finished migration leaves its socket file"
    );
}

#[test]
fn unix_listen_replaces_a_stale_socket_but_not_a_file() {
    let dir = TempDir::new();
    let stale = dir.path("stale.sock");
    drop(StdUnixListener::bind(&stale).unwrap()); // leaves the socket file behind
    assert!(stale.exists());
    send_and_compare(&MigrationUri::Unix(stale), b"after a crash");

    let file = dir.path("regular");
    fs::write(&file, b"keep me").unwrap();
    let message = error_of(listen(&MigrationUri::Unix(file.clone()), None));
    assert_eq!(
        message,
        format!(
            "Failed to bind socket to {}: Address already in use",
            file.display()
        )
    );
    assert_eq!(fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn unix_errors_name_the_path() {
    let dir = TempDir::new();
    let missing = dir.path("nobody.sock");
    assert_eq!(
        error_of(connect(&MigrationUri::Unix(missing.clone()), None)),
        format!(
            "Failed to connect to '{}': No such file or directory",
            missing.display()
        )
    );
    let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
    assert_eq!(
        error_of(listen(&MigrationUri::Unix(long.clone()), None)),
        format!("UNIX socket path '{}' is too long", long.display())
    );
}

/// Main channel plus `extra` multifd channels on `uri`; each channel says which it is in
/// its first byte, since the destination may accept them in another order.
fn multifd(uri: &MigrationUri, extra: usize) {
    let listener = listen(uri, None).unwrap();
    let address = listener.local_address().unwrap();
    let reader = thread::spawn(move || {
        let mut incoming = listener.accept().unwrap();
        let mut channels = incoming.accept_extra(extra).unwrap();
        channels.insert(
            0,
            std::mem::replace(&mut incoming.reader, Box::new(io::empty())),
        );
        // Read all at once: a writer blocks while its channel is not read.
        let readers: Vec<_> = channels
            .into_iter()
            .map(|channel| thread::spawn(move || read_all(channel)))
            .collect();
        let got: Vec<Vec<u8>> = readers.into_iter().map(|r| r.join().unwrap()).collect();
        incoming.finish().unwrap();
        got
    });
    let mut outgoing = connect(&address, None).unwrap();
    let mut channels = outgoing.connect_extra(extra).unwrap();
    assert_eq!(channels.len(), extra);
    thread::scope(|s| {
        for (i, channel) in channels.iter_mut().enumerate() {
            s.spawn(move || {
                channel.write_all(&[i as u8 + 1]).unwrap();
                channel.write_all(&pattern(1 << 20, i as u8 + 1)).unwrap();
            });
        }
        outgoing.writer.write_all(&[0]).unwrap();
        outgoing.writer.write_all(&pattern(1 << 20, 0)).unwrap();
    });
    drop(channels);
    outgoing.finish().unwrap();
    let mut got = reader.join().unwrap();
    got.sort();
    for (i, channel) in got.iter().enumerate() {
        assert_eq!(channel[0] as usize, i, "channel {i} missing");
        assert!(
            channel[1..] == pattern(1 << 20, i as u8),
            "channel {i} carried other bytes"
        );
    }
}

#[test]
fn multifd_channels_over_tcp() {
    multifd(&uri("tcp:127.0.0.1:0"), 3);
}

#[test]
fn multifd_channels_over_unix() {
    let dir = TempDir::new();
    multifd(&MigrationUri::Unix(dir.path("multifd.sock")), 2);
}

#[test]
fn multifd_is_refused_on_single_channel_transports() {
    let dir = TempDir::new();
    let file = MigrationUri::File {
        path: dir.path("vm"),
        offset: 0,
    };
    let expected = "Migration requires multi-channel URIs (e.g. tcp)";
    let outgoing = connect(&file, None).unwrap();
    assert_eq!(error_of(outgoing.connect_extra(1)), expected);
    let outgoing = connect(&uri("exec:cat > /dev/null"), None).unwrap();
    assert_eq!(error_of(outgoing.connect_extra(1)), expected);
    let mut incoming = listen(&file, None).unwrap().accept().unwrap();
    assert_eq!(error_of(incoming.accept_extra(1)), expected);
    assert!(!file.supports_multi_channels());
    assert!(uri("tcp:h:1").supports_multi_channels());
}

#[test]
fn exec_out_writes_the_commands_stdin_and_exec_in_reads_its_stdout() {
    let dir = TempDir::new();
    let file = dir.path("vm state");
    let data = pattern(3 << 20, 3);
    let out = MigrationUri::Exec(format!("cat > '{}'", file.display()));
    let mut outgoing = connect(&out, None).unwrap();
    outgoing.writer.write_all(&data).unwrap();
    outgoing.finish().unwrap();
    assert!(
        fs::read(&file).unwrap() == data,
        "the command wrote other bytes"
    );

    let inc = MigrationUri::Exec(format!("cat '{}'", file.display()));
    let listener = listen(&inc, None).unwrap();
    assert_eq!(listener.local_address(), None);
    let mut incoming = listener.accept().unwrap();
    assert!(
        read_all(&mut incoming.reader) == data,
        "read other bytes from the command"
    );
    incoming.finish().unwrap();
}

#[test]
fn an_exec_command_that_fails_is_reported_by_finish() {
    let mut outgoing = connect(&uri("exec:cat > /dev/null; exit 1"), None).unwrap();
    outgoing.writer.write_all(b"state").unwrap();
    assert_eq!(
        error_of(outgoing.finish()),
        "exec command 'cat > /dev/null; exit 1' exited with status 1"
    );

    let mut incoming = listen(&uri("exec:exit 3"), None).unwrap().accept().unwrap();
    assert!(read_all(&mut incoming.reader).is_empty());
    assert_eq!(
        error_of(incoming.finish()),
        "exec command 'exit 3' exited with status 3"
    );

    let outgoing = connect(&uri("exec:kill -TERM $$"), None).unwrap();
    assert_eq!(
        error_of(outgoing.finish()),
        "exec command 'kill -TERM $$' was killed by signal 15"
    );
}

#[test]
fn file_without_offset_replaces_the_file_and_reads_back() {
    let dir = TempDir::new();
    let path = dir.path("vm");
    fs::write(&path, vec![0xee; 1 << 20]).unwrap();
    let file = MigrationUri::File {
        path: path.clone(),
        offset: 0,
    };
    let data = pattern(100_000, 4);
    let mut outgoing = connect(&file, None).unwrap();
    outgoing.writer.write_all(&data).unwrap();
    outgoing.finish().unwrap();
    assert!(
        fs::read(&path).unwrap() == data,
        "old bytes after the stream survived"
    );

    let mut incoming = listen(&file, None).unwrap().accept().unwrap();
    assert!(read_all(&mut incoming.reader) == data);
    incoming.finish().unwrap();
}

#[test]
fn file_with_offset_keeps_what_is_before_it_and_reads_from_it() {
    let dir = TempDir::new();
    let path = dir.path("vm");
    let mut old = vec![b'A'; 4096];
    old.extend(vec![b'Z'; 1 << 20]);
    fs::write(&path, &old).unwrap();
    let file = uri(&format!("file:{},offset=0x1000", path.display()));
    let data = pattern(10_000, 5);
    let mut outgoing = connect(&file, None).unwrap();
    outgoing.writer.write_all(&data).unwrap();
    outgoing.finish().unwrap();
    let written = fs::read(&path).unwrap();
    assert_eq!(
        written.len(),
        4096 + data.len(),
        "old bytes after the stream survived"
    );
    assert!(
        written[..4096].iter().all(|&b| b == b'A'),
        "bytes before the offset changed"
    );
    assert!(written[4096..] == data);

    let mut incoming = listen(&file, None).unwrap().accept().unwrap();
    assert!(
        read_all(&mut incoming.reader) == data,
        "did not read from the offset"
    );
}

#[test]
fn file_errors_name_the_file() {
    let dir = TempDir::new();
    let missing = dir.path("no/such/dir/vm");
    let file = MigrationUri::File {
        path: missing.clone(),
        offset: 0,
    };
    let expected = format!(
        "Unable to open {}: No such file or directory",
        missing.display()
    );
    assert_eq!(error_of(connect(&file, None)), expected);
    assert_eq!(error_of(listen(&file, None)), expected);
}

/// A pipe's read and write ends.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a writable array of two ints for pipe2 to fill.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 succeeded, so both are open descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

#[test]
fn fd_carries_a_socketpair_end_and_a_pipe_end() {
    let fd = uri("fd:migfd");
    let data = pattern(1 << 20, 6);

    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut outgoing = connect(&fd, Some(OwnedFd::from(ours))).unwrap();
    let reader = thread::spawn(move || read_all(theirs));
    outgoing.writer.write_all(&data).unwrap();
    outgoing.finish().unwrap();
    assert!(reader.join().unwrap() == data);

    let (read_end, write_end) = pipe();
    let listener = listen(&fd, Some(read_end)).unwrap();
    assert_eq!(listener.local_address(), None);
    let mut incoming = listener.accept().unwrap();
    let sent = data.clone();
    let writer = thread::spawn(move || fs::File::from(write_end).write_all(&sent));
    assert!(read_all(&mut incoming.reader) == data);
    writer.join().unwrap().unwrap();
    incoming.finish().unwrap();

    let (read_end, write_end) = pipe();
    let mut outgoing = connect(&fd, Some(write_end)).unwrap();
    let reader = thread::spawn(move || read_all(fs::File::from(read_end)));
    outgoing.writer.write_all(&data).unwrap();
    outgoing.finish().unwrap();
    assert!(reader.join().unwrap() == data);
}

#[test]
fn an_unresolved_fd_is_reported_with_its_name() {
    assert_eq!(
        error_of(connect(&uri("fd:migfd"), None)),
        "File descriptor named 'migfd' has not been found"
    );
}

/// Writes until the writer fails; cancels once it is (most likely) blocked on a peer
/// that never reads; the write must fail with "Migration cancelled".
fn cancel_unblocks_a_blocked_writer(mut outgoing: Outgoing) {
    let canceller = outgoing.canceller();
    let (done, finished) = mpsc::channel();
    let writer = thread::spawn(move || {
        let chunk = vec![0x5a; 1 << 16];
        let err = loop {
            if let Err(e) = outgoing.writer.write_all(&chunk) {
                break e;
            }
        };
        let _ = done.send(());
        (err, outgoing)
    });
    thread::sleep(Duration::from_millis(300));
    assert!(!canceller.is_cancelled());
    canceller.cancel();
    // A guard against a hang, not a timing check.
    finished
        .recv_timeout(Duration::from_secs(20))
        .expect("the writer stayed blocked");
    let (err, outgoing) = writer.join().unwrap();
    assert_eq!(err.to_string(), "Migration cancelled");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
    assert!(canceller.is_cancelled());
    assert_eq!(error_of(outgoing.finish()), "Migration cancelled");
}

#[test]
fn cancel_unblocks_a_tcp_writer_whose_peer_never_reads() {
    let listener = listen(&uri("tcp:127.0.0.1:0"), None).unwrap();
    let outgoing = connect(&listener.local_address().unwrap(), None).unwrap();
    let _incoming = listener.accept().unwrap();
    cancel_unblocks_a_blocked_writer(outgoing);
}

#[test]
fn cancel_unblocks_a_unix_writer_whose_peer_never_reads() {
    let dir = TempDir::new();
    let listener = listen(&MigrationUri::Unix(dir.path("m.sock")), None).unwrap();
    let outgoing = connect(&listener.local_address().unwrap(), None).unwrap();
    let _incoming = listener.accept().unwrap();
    cancel_unblocks_a_blocked_writer(outgoing);
}

#[test]
fn cancel_kills_an_exec_command_that_never_reads() {
    cancel_unblocks_a_blocked_writer(connect(&uri("exec:sleep 600"), None).unwrap());
}

#[test]
fn cancel_unblocks_a_socket_passed_as_fd() {
    let (ours, _theirs) = UnixStream::pair().unwrap();
    cancel_unblocks_a_blocked_writer(connect(&uri("fd:m"), Some(OwnedFd::from(ours))).unwrap());
}

/// Cancels an accept that waits for a source that never comes.
fn cancel_unblocks_accept(uri: &MigrationUri) {
    let listener = listen(uri, None).unwrap();
    let canceller = listener.canceller();
    let (done, finished) = mpsc::channel();
    let accept = thread::spawn(move || {
        let result = listener.accept().map(drop);
        let _ = done.send(());
        result
    });
    thread::sleep(Duration::from_millis(200));
    canceller.cancel();
    finished
        .recv_timeout(Duration::from_secs(20))
        .expect("accept stayed blocked");
    assert_eq!(error_of(accept.join().unwrap()), "Migration cancelled");
}

#[test]
fn cancel_unblocks_accept_on_tcp_and_unix() {
    cancel_unblocks_accept(&uri("tcp:127.0.0.1:0"));
    let dir = TempDir::new();
    cancel_unblocks_accept(&MigrationUri::Unix(dir.path("a.sock")));
}

#[test]
fn cancel_ends_a_read_on_a_silent_source() {
    let listener = listen(&uri("tcp:127.0.0.1:0"), None).unwrap();
    let _outgoing = connect(&listener.local_address().unwrap(), None).unwrap();
    let mut incoming = listener.accept().unwrap();
    let canceller = incoming.canceller();
    let reader = thread::spawn(move || {
        let mut byte = [0];
        incoming.reader.read(&mut byte).map_err(|e| e.to_string())
    });
    thread::sleep(Duration::from_millis(200));
    canceller.cancel();
    assert_eq!(
        reader.join().unwrap(),
        Err("Migration cancelled".to_string())
    );
}

/// A port nothing listens on: bound, then closed.
fn closed_port() -> u16 {
    let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn connecting_to_a_closed_port_is_refused() {
    let port = closed_port();
    let err = failure(connect(
        &MigrationUri::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        None,
    ));
    assert_eq!(
        err.to_string(),
        format!("Failed to connect to '127.0.0.1:{port}': Connection refused")
    );
    assert_eq!(err.io_kind(), Some(io::ErrorKind::ConnectionRefused));
}

#[test]
fn listening_on_a_port_in_use_fails_at_once() {
    let taken = StdTcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = failure(listen(
        &MigrationUri::Tcp {
            host: "127.0.0.1".into(),
            port,
        },
        None,
    ));
    assert_eq!(
        err.to_string(),
        "Failed to find an available port: Address already in use"
    );
    assert_eq!(err.io_kind(), Some(io::ErrorKind::AddrInUse));
}

#[test]
fn an_unknown_host_is_a_resolution_error() {
    let message = error_of(connect(&uri("tcp:no-such-host.invalid:4444"), None));
    assert!(
        message.starts_with("address resolution failed for no-such-host.invalid:4444: "),
        "{message}"
    );
}
