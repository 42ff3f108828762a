//! QMP conformance against the real binary, modelled on QEMU's tests/qtest/qmp-test.c:
//! greeting, negotiation, malformed input and recovery, id echo, run control with its
//! events, several monitors, a client that never reads. The guest is a tiny hand-written
//! kernel, so these run in plain `cargo test`.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::{temp_path, tiny_kernel, Qmp, Vm};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

struct Fixture {
    vm: Vm,
    sock: std::path::PathBuf,
}

fn start(name: &str, msg: &str, extra: &[&str]) -> Fixture {
    let k = tiny_kernel(name, msg, None);
    let sock = temp_path(&format!("{name}.qmp"));
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut args = vec![
        "-nodefaults",
        "-serial",
        "stdio",
        "-m",
        "32",
        "-kernel",
        k.to_str().unwrap(),
        "-qmp",
        &qmp,
    ];
    args.extend_from_slice(extra);
    let vm = Vm::start(&args);
    Fixture { vm, sock }
}

fn error(r: &Value) -> (String, String) {
    let e = r
        .get("error")
        .unwrap_or_else(|| panic!("expected an error: {r}"));
    (
        e["class"].as_str().unwrap().to_string(),
        e["desc"].as_str().unwrap().to_string(),
    )
}

fn generic(r: &Value, desc: &str) {
    assert_eq!(error(r), ("GenericError".into(), desc.into()), "{r}");
}

#[test]
fn greeting_negotiation_and_malformed_input() {
    let f = start("conformance", "TINY\n", &["-S"]);
    let mut q = Qmp::connect(&f.sock);
    let g = &q.greeting["QMP"];
    assert_eq!(g["capabilities"], json!(["oob"]));
    assert!(g["version"]["qemu"]["major"].is_i64());
    assert!(g["version"]["package"]
        .as_str()
        .unwrap()
        .contains("Kestrel"));

    // Before negotiation, only qmp_capabilities exists.
    let r = q.cmd("query-status", Value::Null);
    assert_eq!(
        error(&r),
        (
            "CommandNotFound".into(),
            "Expecting capabilities negotiation with 'qmp_capabilities'".into()
        )
    );
    let r = q.cmd("qmp_capabilities", json!({"enable": ["bogus"]}));
    generic(&r, "Parameter 'enable[0]' does not accept value 'bogus'");
    q.ok("qmp_capabilities", Value::Null);
    let r = q.cmd("qmp_capabilities", Value::Null);
    assert_eq!(
        error(&r),
        (
            "CommandNotFound".into(),
            "Capabilities negotiation is already complete, command ignored".into()
        )
    );

    // The envelope.
    q.send_raw(b"[1, 2]");
    generic(&q.reply(), "QMP input must be a JSON object");
    q.send_raw(br#"{"execute": 1, "id": "x"}"#);
    let r = q.reply();
    generic(&r, "QMP input member 'execute' must be a string");
    assert_eq!(r["id"], "x");
    q.send_raw(br#"{"id": 1}"#);
    generic(&q.reply(), "QMP input lacks member 'execute'");
    q.send_raw(br#"{"execute": "query-status", "arguments": []}"#);
    generic(&q.reply(), "QMP input member 'arguments' must be an object");
    q.send_raw(br#"{"execute": "query-status", "foo": 1, "id": 7}"#);
    let r = q.reply();
    generic(&r, "QMP input member 'foo' is unexpected");
    assert_eq!(r["id"], 7);
    q.send_raw(br#"{"exec-oob": "query-status", "id": 8}"#);
    generic(&q.reply(), "QMP input member 'exec-oob' is unexpected");
    let r = q.cmd("no-such-command", Value::Null);
    assert_eq!(
        error(&r),
        (
            "CommandNotFound".into(),
            "The command no-such-command has not been found".into()
        )
    );

    // Arguments.
    generic(
        &q.cmd("watchdog-set-action", json!({})),
        "Parameter 'action' is missing",
    );
    generic(
        &q.cmd("watchdog-set-action", json!({"action": 1})),
        "Invalid parameter type for 'action', expected: string",
    );
    generic(
        &q.cmd("watchdog-set-action", json!({"action": "bogus"})),
        "Parameter 'action' does not accept value 'bogus'",
    );
    generic(
        &q.cmd("query-status", json!({"x": 1})),
        "Parameter 'x' is unexpected",
    );

    // Bad JSON: an error without id, then the stream recovers.
    q.send_raw(br#"{ "execute": }"#);
    let r = q.reply();
    let (class, desc) = error(&r);
    assert_eq!(class, "GenericError");
    assert!(desc.starts_with("JSON parse error"), "{desc}");
    assert!(r.get("id").is_none());
    assert!(q.ok("query-version", Value::Null)["qemu"].is_object());

    // An incomplete object waits; a control character throws it away.
    q.send_raw(br#"{"execute": "query-status""#);
    q.send_raw(b"\x1b");
    let (_, desc) = error(&q.reply());
    assert!(desc.starts_with("JSON parse error"), "{desc}");
    assert_eq!(q.ok("query-status", Value::Null)["status"], "prelaunch");
}

#[test]
fn framing_and_id_echo() {
    let f = start("framing", "TINY\n", &["-S"]);
    let mut q = Qmp::connect(&f.sock);
    q.negotiate();
    // Byte by byte.
    for b in br#"{"execute":"query-status","id":"bytewise"}"# {
        q.send_raw(&[*b]);
    }
    let r = q.reply();
    assert_eq!(r["id"], "bytewise");
    assert_eq!(r["return"]["running"], false);
    // Back to back, no separator, pretty-printed, strings with braces.
    q.send_raw(
        b"{\"execute\":\"query-name\",\"id\":\"a{}\"}{\n  \"execute\": \"query-uuid\",\n  \"id\": \"\\\"}\"\n}",
    );
    assert_eq!(q.reply()["id"], "a{}");
    assert_eq!(q.reply()["id"], "\"}");
    // Any JSON value comes back as it went.
    for id in [
        json!({"a": [1, 2]}),
        json!(true),
        json!(null),
        json!(1.5),
        json!([]),
        json!(-3),
    ] {
        let m = json!({"execute": "query-kvm", "id": id.clone()});
        q.send_raw(m.to_string().as_bytes());
        let r = q.reply();
        assert_eq!(r["id"], id, "{r}");
        assert_eq!(r["return"], json!({"enabled": true, "present": true}));
    }
    // A huge message is refused without being buffered whole, and the session lives on.
    let mut big = br#"{"execute": "query-status", "arguments": {"x": ""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 80 << 20));
    big.extend_from_slice(br#""}}"#);
    q.send_raw(&big);
    let (_, desc) = error(&q.reply());
    assert!(desc.contains("JSON"), "{desc}");
    loop {
        // The tail of the oversized message may produce further parse errors; then it recovers.
        let r = q.cmd("query-status", Value::Null);
        if r.get("return").is_some() {
            break;
        }
    }
}

#[test]
fn run_control_with_events_on_two_monitors() {
    let tcp_port = 40000 + (std::process::id() % 20000) as u16;
    let tcp = format!("tcp:127.0.0.1:{tcp_port},server=on,wait=off");
    let mut f = start(
        "runctl",
        "TINY-UP\n",
        &[
            "-S",
            "-name",
            "runctl",
            "-uuid",
            "550e8400-e29b-41d4-a716-446655440000",
            "-smp",
            "2",
            "-qmp",
            &tcp,
        ],
    );
    let mut a = Qmp::connect(&f.sock);
    a.negotiate();
    // The second monitor speaks TCP.
    let start = std::time::Instant::now();
    let s = loop {
        if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", tcp_port)) {
            break s;
        }
        assert!(start.elapsed() < T);
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut b = TcpQmp::new(s);
    b.cmd(r#"{"execute":"qmp_capabilities"}"#);

    assert_eq!(
        a.ok("query-status", Value::Null),
        json!({"running": false, "status": "prelaunch"})
    );
    assert_eq!(a.ok("query-name", Value::Null), json!({"name": "runctl"}));
    assert_eq!(
        a.ok("query-uuid", Value::Null),
        json!({"UUID": "550e8400-e29b-41d4-a716-446655440000"})
    );
    let cpus = a.ok("query-cpus-fast", Value::Null);
    let cpus = cpus.as_array().unwrap();
    assert_eq!(cpus.len(), 2);
    for (i, c) in cpus.iter().enumerate() {
        assert_eq!(c["cpu-index"], i);
        let tid = c["thread-id"].as_i64().unwrap();
        // The thread id is a real thread of this process.
        assert!(
            std::path::Path::new(&format!("/proc/{}/task/{tid}", f.vm.child.id())).exists(),
            "thread {tid}"
        );
    }
    assert_eq!(
        a.ok("query-memory-size-summary", Value::Null)["base-memory"],
        32 << 20
    );
    assert!(f.vm.console().is_empty(), "-S: no guest code ran yet");

    a.ok("cont", Value::Null);
    a.event("RESUME");
    f.vm.wait_for("TINY-UP", T);
    assert_eq!(a.ok("query-status", Value::Null)["status"], "running");
    a.ok("stop", Value::Null);
    a.event("STOP");
    assert_eq!(
        a.ok("query-status", Value::Null),
        json!({"running": false, "status": "paused"})
    );
    // A reset while paused leaves the machine in prelaunch (spec/runstate.md); the
    // guest starts over when continued.
    a.ok("system_reset", Value::Null);
    let reset = a.event("RESET");
    assert_eq!(
        reset["data"],
        json!({"guest": false, "reason": "host-qmp-system-reset"})
    );
    assert_eq!(a.ok("query-status", Value::Null)["status"], "prelaunch");
    a.ok("cont", Value::Null);
    f.vm.wait_for_count("TINY-UP", 2, T);
    // The other monitor heard everything too, with timestamps.
    for name in ["RESUME", "STOP", "RESET", "RESUME"] {
        let e = b.event();
        assert_eq!(e["event"], name, "{e}");
        assert!(e["timestamp"]["seconds"].as_i64().unwrap() > 0);
        assert!((0..1_000_000).contains(&e["timestamp"]["microseconds"].as_i64().unwrap()));
    }
    let r = a.cmd("quit", Value::Null);
    assert_eq!(r["return"], json!({}));
    let shutdown = a.event("SHUTDOWN");
    assert_eq!(
        shutdown["data"],
        json!({"guest": false, "reason": "host-qmp-quit"})
    );
    assert_eq!(f.vm.wait_exit(T).code(), Some(0));
}

#[test]
fn a_client_that_never_reads_does_not_stop_others() {
    let f = start("noread", "TINY\n", &["-S"]);
    let mut stuck = Qmp::connect(&f.sock);
    stuck.negotiate();
    let mut good = Qmp::connect(&f.sock);
    good.negotiate();
    // The stuck client floods requests and never reads a reply.
    let writer = {
        let mut s = stuck.stream.try_clone().unwrap();
        std::thread::spawn(move || {
            use std::io::Write;
            let req = br#"{"execute":"query-qmp-schema"}"#;
            for _ in 0..20000 {
                if s.write_all(req).is_err() {
                    return true; // dropped by the server
                }
            }
            false
        })
    };
    for _ in 0..50 {
        assert_eq!(good.ok("query-status", Value::Null)["status"], "prelaunch");
    }
    assert!(
        writer.join().unwrap(),
        "the non-reading client is disconnected once its queue is full"
    );
    assert_eq!(good.ok("query-status", Value::Null)["status"], "prelaunch");
}

#[test]
fn introspection_matches_dispatch() {
    let f = start("schema", "TINY\n", &["-S"]);
    let mut q = Qmp::connect(&f.sock);
    q.negotiate();
    let cmds: Vec<String> = q
        .ok("query-commands", Value::Null)
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    let schema = q.ok("query-qmp-schema", Value::Null);
    let in_schema: Vec<&str> = schema
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["meta-type"] == "command")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    let mut a = cmds.clone();
    a.sort();
    let mut b: Vec<String> = in_schema.iter().map(|s| s.to_string()).collect();
    b.sort();
    assert_eq!(
        a, b,
        "query-commands and query-qmp-schema list the same commands"
    );
    for c in [
        "qmp_capabilities",
        "query-status",
        "stop",
        "cont",
        "system_reset",
        "system_powerdown",
        "quit",
        "getfd",
        "add-fd",
        "query-fdsets",
        "human-monitor-command",
    ] {
        assert!(cmds.iter().any(|x| x == c), "{c} registered");
    }
    // Every listed command dispatches (none answers CommandNotFound).
    for c in &cmds {
        if [
            "qmp_capabilities",
            "quit",
            "system_powerdown",
            "cont",
            "stop",
            "system_reset",
            "system_wakeup",
            "inject-nmi",
        ]
        .contains(&c.as_str())
        {
            continue; // they act on the machine: exercised elsewhere
        }
        let r = q.cmd(c, Value::Null);
        if let Some(e) = r.get("error") {
            assert_ne!(e["class"], "CommandNotFound", "{c}: {r}");
        }
    }
}

#[test]
fn human_monitor_command() {
    let f = start("hmp", "TINY\n", &["-S", "-name", "hmpguest"]);
    let mut q = Qmp::connect(&f.sock);
    q.negotiate();
    let hmp =
        |q: &mut Qmp, line: &str| q.ok("human-monitor-command", json!({"command-line": line}));
    assert_eq!(
        hmp(&mut q, "info status"),
        "VM status: paused (prelaunch)\r\n"
    );
    assert_eq!(hmp(&mut q, "info name"), "hmpguest\r\n");
    assert!(hmp(&mut q, "info version")
        .as_str()
        .unwrap()
        .starts_with("9.2.0"));
    assert_eq!(hmp(&mut q, "bogus"), "unknown command: 'bogus'\r\n");
    let regs = hmp(&mut q, "info registers");
    let regs = regs.as_str().unwrap();
    // The tiny guest was never started: vCPU 0 sits at its PVH entry, 32-bit protected mode.
    assert!(regs.starts_with("RAX="), "{regs}");
    assert!(regs.contains("RIP=0000000000100000 "), "{regs}");
    assert!(regs.contains("CR0=00000011 "), "{regs}");
    assert_eq!(hmp(&mut q, "cont"), "");
    q.event("RESUME");
    assert_eq!(hmp(&mut q, "stop"), "");
    q.event("STOP");
    assert_eq!(hmp(&mut q, "info status"), "VM status: paused\r\n");
}

#[test]
fn fd_passing_over_the_unix_socket() {
    use std::os::fd::AsRawFd;
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    let f = start("fdpass", "TINY\n", &["-S"]);
    let mut q = Qmp::connect(&f.sock);
    q.negotiate();
    generic(
        &q.cmd("getfd", json!({"fdname": "x"})),
        "No file descriptor supplied via SCM_RIGHTS",
    );
    let file = std::fs::File::open("/dev/null").unwrap();
    let msg = br#"{"execute": "getfd", "arguments": {"fdname": "disk0"}}"#;
    q.stream.send_with_fd(&msg[..], file.as_raw_fd()).unwrap();
    assert_eq!(q.reply()["return"], json!({}));
    q.ok("closefd", json!({"fdname": "disk0"}));
    generic(
        &q.cmd("closefd", json!({"fdname": "disk0"})),
        "File descriptor named 'disk0' not found",
    );
    let msg = br#"{"execute": "add-fd", "arguments": {"fdset-id": 3, "opaque": "rw"}}"#;
    q.stream.send_with_fd(&msg[..], file.as_raw_fd()).unwrap();
    let r = q.reply()["return"].clone();
    assert_eq!(r["fdset-id"], 3);
    let fd = r["fd"].as_i64().unwrap();
    assert_eq!(
        q.ok("query-fdsets", Value::Null),
        json!([{"fdset-id": 3, "fds": [{"fd": fd, "opaque": "rw"}]}])
    );
    q.ok("remove-fd", json!({"fdset-id": 3, "fd": fd}));
    assert_eq!(q.ok("query-fdsets", Value::Null), json!([]));
}

/// The second monitor, over TCP: only events matter there.
struct TcpQmp {
    r: std::io::BufReader<std::net::TcpStream>,
    w: std::net::TcpStream,
}

impl TcpQmp {
    fn new(s: std::net::TcpStream) -> TcpQmp {
        s.set_read_timeout(Some(T)).unwrap();
        let mut q = TcpQmp {
            r: std::io::BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        assert!(q.line().get("QMP").is_some());
        q
    }

    fn line(&mut self) -> Value {
        use std::io::BufRead;
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap()
    }

    fn cmd(&mut self, m: &str) -> Value {
        use std::io::Write;
        self.w.write_all(m.as_bytes()).unwrap();
        loop {
            let v = self.line();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    fn event(&mut self) -> Value {
        loop {
            let v = self.line();
            if v.get("event").is_some() {
                return v;
            }
        }
    }
}

/// `wait=on` holds the machine until a client connects; `-mon ...,pretty=on` gives
/// indented responses; `-qmp stdio` speaks on standard input and output.
#[test]
fn wait_on_pretty_mon_and_stdio() {
    use std::io::{BufRead, Read, Write};
    let k = tiny_kernel("waiton", "TINY-WAIT\n", None);
    let sock = temp_path("waiton.qmp");
    let chardev = format!("socket,id=mon0,path={},server=on,wait=on", sock.display());
    let mut vm = Vm::start(&[
        "-nodefaults",
        "-serial",
        "stdio",
        "-m",
        "32",
        "-kernel",
        k.to_str().unwrap(),
        "-chardev",
        &chardev,
        "-mon",
        "chardev=mon0,mode=control,pretty=on",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vm.console().is_empty(),
        "nothing runs before the monitor's client connects"
    );
    let start = std::time::Instant::now();
    let mut s = loop {
        if let Ok(s) = std::os::unix::net::UnixStream::connect(&sock) {
            break s;
        }
        assert!(start.elapsed() < T);
        std::thread::sleep(Duration::from_millis(20));
    };
    vm.wait_for("TINY-WAIT", T);
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(br#"{"execute":"qmp_capabilities"}{"execute":"query-status","id":1}"#)
        .unwrap();
    let mut got = String::new();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    while !got.contains("\"id\": 1") || !got.ends_with("}\r\n") {
        let mut l = String::new();
        assert!(r.read_line(&mut l).unwrap() > 0, "closed: {got}");
        got.push_str(&l);
    }
    assert!(
        got.contains("{\n    \"return\": {\n        \"running\": true,"),
        "pretty: {got}"
    );
    drop(r);
    drop(s);
    drop(vm);

    // -qmp stdio.
    let mut child = std::process::Command::new(common::kestrel())
        .args([
            "-nodefaults",
            "-S",
            "-m",
            "32",
            "-kernel",
            k.to_str().unwrap(),
            "-qmp",
            "stdio",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"execute":"qmp_capabilities"}{"execute":"query-status"}{"execute":"quit"}"#)
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let lines: Vec<&str> = out.split_terminator("\r\n").collect();
    assert!(lines[0].starts_with("{\"QMP\""), "{out}");
    assert_eq!(lines[1], "{\"return\": {}}");
    assert_eq!(
        lines[2],
        "{\"return\": {\"running\": false, \"status\": \"prelaunch\"}}"
    );
    assert!(lines[3].contains("\"SHUTDOWN\""), "{out}");
}

/// pvpanic SHUTDOWN (QEMU 9.1): GUEST_PVSHUTDOWN without data, then the guest poweroff
/// it asks for: SHUTDOWN(guest-shutdown) and exit 0.
#[test]
fn pvpanic_shutdown_is_a_guest_poweroff() {
    let k = tiny_kernel("pvshutdown", "TINY-PVSHUTDOWN\n", Some((0x505, 4)));
    let sock = temp_path("pvshutdown.qmp");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut vm = Vm::start(&[
        "-nodefaults",
        "-m",
        "32",
        "-S",
        "-kernel",
        k.to_str().unwrap(),
        "-device",
        "pvpanic",
        "-qmp",
        &qmp,
    ]);
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    q.ok("cont", Value::Null);
    let e = q.event("GUEST_PVSHUTDOWN");
    assert!(e.get("data").is_none(), "{e}");
    let s = q.event("SHUTDOWN");
    assert_eq!(
        s["data"],
        json!({"guest": true, "reason": "guest-shutdown"})
    );
    assert_eq!(vm.wait_exit(T).code(), Some(0));
}

/// pvpanic: a guest that writes PANICKED to port 0x505 gets the panic action: by
/// default GUEST_PANICKED(poweroff) and SHUTDOWN(guest-panic); with set-action panic=pause,
/// GUEST_PANICKED(pause) and the machine stopped in guest-panicked.
#[test]
fn pvpanic_reports_a_guest_panic_with_its_action() {
    let k = tiny_kernel("pvpanic", "TINY-PANIC\n", Some((0x505, 1)));
    for pause in [false, true] {
        let sock = temp_path(&format!("pvpanic-{pause}.qmp"));
        let qmp = format!("unix:{},server=on,wait=off", sock.display());
        let mut vm = Vm::start(&[
            "-nodefaults",
            "-serial",
            "stdio",
            "-m",
            "32",
            "-S",
            "-kernel",
            k.to_str().unwrap(),
            "-device",
            "pvpanic",
            "-qmp",
            &qmp,
        ]);
        let mut q = Qmp::connect(&sock);
        q.negotiate();
        if pause {
            q.ok("set-action", json!({"panic": "pause"}));
        }
        q.ok("cont", Value::Null);
        let p = q.event("GUEST_PANICKED");
        if pause {
            assert_eq!(p["data"]["action"], "pause", "{p}");
            q.event("STOP");
            assert_eq!(
                q.ok("query-status", Value::Null),
                json!({"running": false, "status": "guest-panicked"})
            );
            q.ok("quit", Value::Null);
        } else {
            assert_eq!(p["data"]["action"], "poweroff", "{p}");
            let s = q.event("SHUTDOWN");
            assert_eq!(s["data"], json!({"guest": true, "reason": "guest-panic"}));
        }
        assert_eq!(vm.wait_exit(T).code(), Some(0));
        assert_eq!(vm.console(), "TINY-PANIC\n");
    }
}

/// The platform devices' QMP surface, checked against QEMU 7.2's answers without a guest
/// driver: balloon and query-balloon, the balloon's QOM properties and their errors,
/// query-acpi-ospm-status, rtc-reset-reinjection, and the devices on the PCI bus.
#[test]
fn platform_device_commands_answer_as_qemu() {
    let f = start(
        "platform",
        "TINY\n",
        &[
            "-S",
            "-device",
            "virtio-balloon-pci,id=balloon0",
            "-device",
            "i6300esb,id=wdt",
            "-device",
            "pvpanic-pci",
        ],
    );
    let mut q = Qmp::connect(&f.sock);
    q.negotiate();
    let mib = 1u64 << 20;
    assert_eq!(
        q.ok("query-balloon", Value::Null),
        json!({"actual": 32 * mib})
    );
    for bad in [0i64, -5] {
        generic(
            &q.cmd("balloon", json!({"value": bad})),
            "Parameter 'target' expects a size",
        );
    }
    q.ok("balloon", json!({"value": 16 * mib}));
    // No driver yet: nothing inflated.
    assert_eq!(
        q.ok("query-balloon", Value::Null),
        json!({"actual": 32 * mib})
    );

    let stats = q.ok(
        "qom-get",
        json!({"path": "balloon0", "property": "guest-stats"}),
    );
    assert_eq!(stats["last-update"], 0);
    assert_eq!(stats["stats"]["stat-free-memory"], json!(u64::MAX));
    assert_eq!(stats["stats"].as_object().unwrap().len(), 10);
    let interval =
        json!({"path": "/machine/peripheral/balloon0", "property": "guest-stats-polling-interval"});
    assert_eq!(q.ok("qom-get", interval.clone()), json!(0));
    let mut set = interval.clone();
    set["value"] = json!(-1);
    generic(
        &q.cmd("qom-set", set.clone()),
        "timer value must be greater than zero",
    );
    set["value"] = json!("x");
    generic(
        &q.cmd("qom-set", set.clone()),
        "Invalid parameter type for 'guest-stats-polling-interval', expected: integer",
    );
    set["value"] = json!(3);
    q.ok("qom-set", set);
    assert_eq!(q.ok("qom-get", interval), json!(3));

    let r = q.cmd("qom-get", json!({"path": "nope", "property": "type"}));
    assert_eq!(
        error(&r),
        ("DeviceNotFound".into(), "Device 'nope' not found".into())
    );
    generic(
        &q.cmd("qom-get", json!({"path": "balloon0", "property": "nope"})),
        "Property 'virtio-balloon-pci.nope' not found",
    );
    assert_eq!(
        q.ok("qom-get", json!({"path": "wdt", "property": "type"})),
        "i6300esb"
    );
    assert_eq!(
        q.ok(
            "qom-get",
            json!({"path": "/machine/peripheral-anon/device[0]", "property": "type"})
        ),
        "pvpanic-pci"
    );
    generic(
        &q.cmd(
            "qom-set",
            json!({"path": "balloon0", "property": "type", "value": "x"}),
        ),
        "Property 'virtio-balloon-pci.type' is not writable",
    );
    // The RTC is where RTC_CHANGE says it is; its date is the host's UTC date here.
    let tm = q.ok(
        "qom-get",
        json!({"path": "/machine/unattached/device[0]", "property": "date"}),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let year = 1970 + (now as f64 / 31_556_952.0) as i64;
    assert!(
        (year - 1901..=year - 1899).contains(&tm["tm_year"].as_i64().unwrap()),
        "{tm}"
    );
    assert!((0..12).contains(&tm["tm_mon"].as_i64().unwrap()), "{tm}");
    assert_eq!(
        q.ok(
            "qom-get",
            json!({"path": "/machine", "property": "rtc-time"})
        )["tm_year"],
        tm["tm_year"]
    );
    assert_eq!(q.ok("query-acpi-ospm-status", Value::Null), json!([]));
    assert_eq!(q.ok("rtc-reset-reinjection", Value::Null), json!({}));

    let pci = q.ok("query-pci", Value::Null);
    let ids: Vec<(u64, u64)> = pci[0]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["id"]["vendor"].as_u64().unwrap(),
                d["id"]["device"].as_u64().unwrap(),
            )
        })
        .collect();
    for want in [(0x1af4, 0x1045), (0x8086, 0x25ab), (0x1b36, 0x0011)] {
        assert!(ids.contains(&want), "{want:x?} in {ids:x?}");
    }
    q.ok("quit", Value::Null);
    drop(f);

    // Without a balloon device.
    let f = start("noballoon", "TINY\n", &["-S"]);
    let mut q = Qmp::connect(&f.sock);
    q.negotiate();
    for (cmd, args) in [
        ("query-balloon", Value::Null),
        ("balloon", json!({"value": mib})),
    ] {
        assert_eq!(
            error(&q.cmd(cmd, args)),
            (
                "DeviceNotActive".into(),
                "No balloon device has been activated".into()
            )
        );
    }
    q.ok("quit", Value::Null);
}

/// query-chardev's frontend-open as QEMU 7.2 answers it: a serial port's and a monitor's
/// chardev are open, a virtio-serial port's only while the guest has it open (not under
/// -S), an unused chardev not at all.
#[test]
fn chardev_frontend_open_follows_the_frontend() {
    let k = tiny_kernel("frontend", "TINY\n", None);
    let sock = temp_path("frontend.qmp");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let _vm = Vm::start(&[
        "-nodefaults",
        "-S",
        "-m",
        "32",
        "-kernel",
        k.to_str().unwrap(),
        "-chardev",
        "null,id=s0",
        "-serial",
        "chardev:s0",
        "-chardev",
        "null,id=p0",
        "-device",
        "virtio-serial-pci",
        "-device",
        "virtserialport,chardev=p0,name=x",
        "-chardev",
        "null,id=unused",
        "-qmp",
        &qmp,
    ]);
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    let list = q.ok("query-chardev", Value::Null);
    let open = |label: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["label"] == label)
            .unwrap_or_else(|| panic!("{label} in {list}"))["frontend-open"]
            .clone()
    };
    assert_eq!(open("s0"), json!(true));
    assert_eq!(open("p0"), json!(false));
    assert_eq!(open("unused"), json!(false));
    assert_eq!(open("compat_monitor0"), json!(true));
    q.ok("quit", Value::Null);
}
