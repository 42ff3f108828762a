//! Real QMP clients against the real binary: the Rust `qapi` crate, and (with the Python
//! venv that `make deps` installs) qemu.qmp's QMPClient and its `qmp-shell`.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::{temp_path, tiny_kernel, Vm};
use std::path::PathBuf;
use std::time::Duration;

fn start(name: &str) -> (Vm, PathBuf) {
    let k = tiny_kernel(name, "TINY\n", None);
    let sock = temp_path(&format!("{name}.qmp"));
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let vm = Vm::start(&[
        "-nodefaults",
        "-S",
        "-m",
        "32",
        "-name",
        "clients",
        "-kernel",
        k.to_str().unwrap(),
        "-qmp",
        &qmp,
    ]);
    let start = std::time::Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "no QMP socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    (vm, sock)
}

#[test]
fn rust_qapi_crate_client() {
    use qapi::qmp;
    let (mut vm, sock) = start("qapi");
    let stream = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    let mut q = qapi::Qmp::from_stream(&stream);
    let info = q.handshake().unwrap();
    assert_eq!(info.version.qemu.major, 9);
    let st = q.execute(&qmp::query_status {}).unwrap();
    assert!(!st.running);
    assert_eq!(st.status, qmp::RunState::prelaunch);
    let name = q.execute(&qmp::query_name {}).unwrap();
    assert_eq!(name.name.as_deref(), Some("clients"));
    let cpus = q.execute(&qmp::query_cpus_fast {}).unwrap();
    assert_eq!(cpus.len(), 1);
    q.execute(&qmp::cont {}).unwrap();
    q.execute(&qmp::stop {}).unwrap();
    let events: Vec<String> = q.events().map(|e| format!("{e:?}")).collect();
    assert!(events.iter().any(|e| e.starts_with("RESUME")), "{events:?}");
    assert!(events.iter().any(|e| e.starts_with("STOP")), "{events:?}");
    let err = q
        .execute(&qmp::watchdog_set_action {
            action: qmp::WatchdogAction::pause,
        })
        .map(|_| ());
    assert!(err.is_ok(), "watchdog-set-action pause: {err:?}");
    q.execute(&qmp::quit {}).unwrap();
    assert_eq!(vm.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
#[ignore = "needs the qemu.qmp venv from `make deps`: run by `make test`"]
fn python_qemu_qmp_client() {
    let (mut vm, sock) = start("pyqmp");
    let out = common::python_script("qmp_client.py")
        .arg(&sock)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "query-status prelaunch",
        "event RESUME",
        "event STOP",
        "query-kvm ok",
        "event SHUTDOWN host-qmp-quit",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    assert_eq!(vm.wait_exit(Duration::from_secs(20)).code(), Some(0));
}

#[test]
#[ignore = "needs the qemu.qmp venv from `make deps`: run by `make test`"]
fn qmp_shell_scripted() {
    use std::io::Write;
    let shell = common::python().with_file_name("qmp-shell");
    assert!(
        shell.exists(),
        "{} missing: `make deps` installs it with PyPI's qemu.qmp",
        shell.display()
    );
    let (mut vm, sock) = start("qmpshell");
    let mut child = std::process::Command::new(&shell)
        .arg(&sock)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"query-status\nquery-name\nwatchdog-set-action action=none\nquit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("\"status\": \"prelaunch\""),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"name\": \"clients\""), "{stdout}");
    assert_eq!(vm.wait_exit(Duration::from_secs(20)).code(), Some(0));
}
