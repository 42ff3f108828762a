//! A QMP server over a unix socket with a fake machine: for trying QMP clients
//! (qmp-shell, qemu.qmp, socat) against the monitor, and for comparing transcripts with
//! QEMU. One client at a time, as QEMU serves a socket monitor.
//!
//! `cargo run -p monitor --example qmp_server -- /tmp/kestrel-qmp.sock [-S] [-name NAME]`

use monitor::testing::{Call, FakeMachine};
use monitor::{MachineEvent, Monitor, MonitorConfig, VersionInfo};
use std::io::{Read, Write};
use std::os::unix::net::UnixListener;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "/tmp/kestrel-qmp.sock".into());
    let paused = args.iter().any(|a| a == "-S");
    let mut machine = FakeMachine::default();
    if let Some(i) = args.iter().position(|a| a == "-name") {
        machine.name = args.get(i + 1).cloned();
    }
    let mut mon = Monitor::new(MonitorConfig::new(VersionInfo::new(9, 2, 0, "")));
    if !paused {
        mon.handle(MachineEvent::Start, &mut machine)?;
    }
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    for stream in listener.incoming() {
        let mut stream = stream?;
        let id = mon.connect();
        stream.write_all(&mon.take_output(id)?)?;
        let mut buf = [0u8; 65536];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            mon.receive(id, &buf[..n], &mut machine)?;
            stream.write_all(&mon.take_output(id)?)?;
            if let Some(Call::Exit(status)) =
                machine.calls.iter().find(|c| matches!(c, Call::Exit(_)))
            {
                std::process::exit(*status);
            }
        }
        mon.disconnect(id)?;
    }
    Ok(())
}
