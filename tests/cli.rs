//! The command line as a user meets it: bad input gets one clear line on stderr and
//! exit status 1, as QEMU does; -version and -h answer and exit 0. No guest needed.
#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

mod common;
use common::run_to_exit;

fn fails_with(args: &[&str], needle: &str) {
    let (code, _out, err) = run_to_exit(args);
    assert_eq!(code, 1, "{args:?}: exit status; stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: want one line on stderr, got {err:?}"
    );
    assert!(lines[0].starts_with("kestrel: "), "{args:?}: {err:?}");
    assert!(
        err.contains(needle),
        "{args:?}: {err:?} should mention {needle:?}"
    );
}

fn not_a_kernel(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("kestrel-cli-{name}-{}", std::process::id()));
    std::fs::write(
        &p,
        b"#!/bin/sh\necho this is a shell script, not a kernel\n",
    )
    .unwrap();
    p
}

#[test]
fn unknown_option() {
    fails_with(&["-frobnicate"], "-frobnicate");
}

#[test]
fn malformed_values() {
    fails_with(&["-m", "lots"], "-m");
    fails_with(&["-smp", "cpus=two"], "-smp");
    fails_with(&["-serial", "bogus"], "bogus");
    fails_with(&["-machine", "pc-i440fx-99"], "pc-i440fx-99");
    fails_with(&["-accel", "tcg"], "tcg");
    fails_with(&["-uuid", "not-a-uuid"], "uuid");
}

#[test]
fn missing_argument() {
    fails_with(&["-kernel"], "-kernel");
}

#[test]
fn missing_kernel_file() {
    fails_with(&["-kernel", "/nonexistent/vmlinux"], "/nonexistent/vmlinux");
}

#[test]
fn no_kernel_at_all() {
    fails_with(&["-m", "64"], "-kernel");
}

#[test]
fn file_that_is_not_a_kernel() {
    let p = not_a_kernel("notkernel");
    fails_with(
        &["-nodefaults", "-kernel", p.to_str().unwrap()],
        "not an ELF vmlinux",
    );
    std::fs::remove_file(p).ok();
}

#[test]
fn missing_initrd() {
    let p = not_a_kernel("initrd-check");
    fails_with(
        &[
            "-kernel",
            p.to_str().unwrap(),
            "-initrd",
            "/nonexistent/initrd",
        ],
        "/nonexistent/initrd",
    );
    std::fs::remove_file(p).ok();
}

#[test]
fn version_and_help() {
    let (code, out, _) = run_to_exit(&["-version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("Kestrel version "), "{out}");
    let (code, out, _) = run_to_exit(&["-h"]);
    assert_eq!(code, 0);
    for opt in [
        "-m ",
        "-smp",
        "-kernel",
        "-append",
        "-serial",
        "-chardev",
        "-no-reboot",
    ] {
        assert!(out.contains(opt), "help lacks {opt}: {out}");
    }
}
