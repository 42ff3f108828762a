//! The migration URIs: what parses, what prints back, and the errors.

use super::*;

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
