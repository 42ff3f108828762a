//! Guest RAM from QEMU's memory backends, with tiny hand-written guests (no `make
//! guest`): the guest runs from a file-backed RAM whose file then holds what was loaded
//! into it, and `query-memdev` answers as QEMU 7.2 does for the same objects.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::{temp_path, tiny_kernel, Qmp, Vm};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// QEMU 7.2's `query-memdev` for the same memory options, sorted by id.
fn qemu_memdevs(extra: &[&str]) -> Vec<Value> {
    let sock = temp_path("qemu-memdev.qmp");
    let _ = std::fs::remove_file(&sock);
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut child = common::tool("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-M",
            "microvm",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-qmp",
        ])
        .arg(&qmp)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    let list = q.ok("query-memdev", Value::Null);
    let _ = child.kill();
    let _ = child.wait();
    sorted(list)
}

fn sorted(v: Value) -> Vec<Value> {
    let mut l = v.as_array().unwrap().clone();
    l.sort_by_key(|m| m["id"].as_str().unwrap_or("").to_string());
    l
}

#[test]
#[ignore = "needs QEMU (make deps): run by `make test`"]
fn a_guest_runs_from_a_shared_file_and_query_memdev_answers_as_qemu() {
    let file = temp_path("guest-ram.img");
    let _ = std::fs::remove_file(&file);
    let objects = [
        "-object".to_string(),
        format!(
            "memory-backend-file,id=ram,size=32M,mem-path={},share=on",
            file.display()
        ),
        "-object".to_string(),
        "memory-backend-memfd,id=spare,size=16M".to_string(),
        "-machine".to_string(),
        "memory-backend=ram".to_string(),
    ];
    let objects: Vec<&str> = objects.iter().map(String::as_str).collect();
    let k = tiny_kernel("memfile", "TINY-FROM-A-FILE\n", None);
    let sock = temp_path("memfile.qmp");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut args = vec![
        "-nodefaults",
        "-serial",
        "stdio",
        "-kernel",
        k.to_str().unwrap(),
        "-qmp",
        &qmp,
    ];
    args.extend_from_slice(&objects);
    let mut vm = Vm::start(&args);
    vm.wait_for("TINY-FROM-A-FILE", T);
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    let ours = sorted(q.ok("query-memdev", Value::Null));
    assert_eq!(
        ours[0],
        json!({"id": "ram", "size": 32 << 20, "merge": true, "dump": true, "prealloc": false,
               "share": true, "reserve": true, "host-nodes": [], "policy": "default"})
    );
    assert_eq!(ours, qemu_memdevs(&objects), "as QEMU 7.2 answers");
    // Guest RAM is the file: the kernel's code, which Kestrel loaded at 1 MiB of guest
    // memory, is at 1 MiB of the file (the tiny kernel's code starts 4 KiB into its ELF).
    let data = std::fs::read(&file).unwrap();
    assert_eq!(data.len(), 32 << 20);
    let code = &std::fs::read(&k).unwrap()[0x1000..];
    assert_eq!(
        &data[0x10_0000..0x10_0000 + code.len()],
        code,
        "the loaded kernel is in the backing file"
    );
    q.ok("quit", Value::Null);
    assert_eq!(vm.wait_exit(T).code(), Some(0));
    std::fs::remove_file(&file).ok();
}

#[test]
#[ignore = "needs QEMU (make deps): run by `make test`"]
fn plain_m_is_the_machines_own_ram_backend() {
    let k = tiny_kernel("memplain", "TINY-PLAIN\n", None);
    let sock = temp_path("memplain.qmp");
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut vm = Vm::start(&[
        "-nodefaults",
        "-m",
        "48",
        "-kernel",
        k.to_str().unwrap(),
        "-qmp",
        &qmp,
    ]);
    let mut q = Qmp::connect(&sock);
    q.negotiate();
    let ours = sorted(q.ok("query-memdev", Value::Null));
    let mut qemu = qemu_memdevs(&["-m", "48"]);
    assert_eq!(qemu[0]["id"], "microvm.ram");
    assert_eq!(
        ours[0]["id"], "kestrel.ram",
        "named after the machine, as QEMU names it"
    );
    qemu[0]["id"] = json!("kestrel.ram");
    assert_eq!(ours, qemu);
    q.ok("quit", Value::Null);
    assert_eq!(vm.wait_exit(T).code(), Some(0));
}

#[test]
fn a_bad_backend_fails_at_startup_with_qemus_words() {
    let k = tiny_kernel("membad", "", None);
    let (code, _, err) = common::run_to_exit(&[
        "-nodefaults",
        "-kernel",
        k.to_str().unwrap(),
        "-object",
        "memory-backend-file,id=m,size=64M,mem-path=/nonexistent/dir/x",
        "-machine",
        "memory-backend=m",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "can't open backing store /nonexistent/dir/x for guest RAM: No such file or directory"
        ),
        "{err}"
    );
    let (code, _, err) = common::run_to_exit(&[
        "-nodefaults",
        "-m",
        "128",
        "-kernel",
        k.to_str().unwrap(),
        "-object",
        "memory-backend-ram,id=m,size=64M",
        "-machine",
        "memory-backend=m",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("Machine memory size does not match the size of the memory backend"),
        "{err}"
    );
}
