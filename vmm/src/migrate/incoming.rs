//! The incoming migration's thread: accept the source's connection(s), check that the
//! stream is for this machine, load RAM straight into guest memory and collect the
//! device state; the main thread applies that state and starts the guest.
//!
//! Invariants: the guest does not run while the stream loads (the machine is in
//! `inmigrate`, its vCPUs parked). Nothing is applied to the machine unless the
//! stream ended with a valid End section on every channel: a truncated, corrupted or
//! foreign stream ends in an error that names what was wrong. Multifd channels carry
//! only RAM and each ends with its own End; all of them are joined before the device
//! state is handed over, so no page can land after the guest resumed.

use std::io::{BufReader, Read};

use devices::GuestMemoryMmap;
use migration::protocol::{MachineConfig, Section, StreamReader};

use super::ram::MemRam;
use crate::vm::DeviceBlob;

/// The byte streams of an incoming migration.
pub struct IncomingChannels {
    pub main: Box<dyn Read + Send>,
    pub extra: Vec<Box<dyn Read + Send>>,
}

/// What the incoming thread tells the main thread.
#[derive(Debug)]
pub enum IncomingReport {
    /// The source connected: status active.
    Active,
    /// The stream ended: the device state to apply, or why it cannot be used.
    Done(Result<Vec<DeviceBlob>, String>),
}

const BUF: usize = 1 << 20;

/// Loads a stream into `mem` for a machine described by `config`.
pub fn load(
    mem: &GuestMemoryMmap,
    config: &MachineConfig,
    channels: IncomingChannels,
) -> Result<Vec<DeviceBlob>, String> {
    let ram = MemRam(mem);
    let err = |e: migration::protocol::StreamError| e.to_string();
    std::thread::scope(|s| {
        let ram = &ram;
        let extra: Vec<_> = channels
            .extra
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                s.spawn(move || -> Result<(), String> {
                    let mut rd =
                        StreamReader::new(BufReader::with_capacity(BUF, r)).map_err(err)?;
                    loop {
                        match rd.next(ram).map_err(err)? {
                            Section::Ram(_) => {}
                            Section::End => return Ok(()),
                            _ => {
                                return Err(format!(
                                    "migration stream: multifd channel {} carries more than RAM",
                                    i + 1
                                ))
                            }
                        }
                    }
                })
            })
            .collect();
        let main = load_main(ram, config, channels.main);
        let mut result = main;
        for h in extra {
            let r = h
                .join()
                .unwrap_or_else(|_| Err("a multifd receiver failed".into()));
            if result.is_ok() {
                r?;
            }
        }
        if let Ok(blobs) = &mut result {
            if blobs.len() != config.devices.len() {
                result = Err(format!(
                    "migration stream: {} device states for {} devices",
                    blobs.len(),
                    config.devices.len()
                ));
            }
        }
        result
    })
}

fn load_main(
    ram: &MemRam<'_>,
    config: &MachineConfig,
    r: Box<dyn Read + Send>,
) -> Result<Vec<DeviceBlob>, String> {
    let err = |e: migration::protocol::StreamError| e.to_string();
    let mut rd = StreamReader::new(BufReader::with_capacity(BUF, r)).map_err(err)?;
    match rd.next(ram).map_err(err)? {
        Section::Config(source) => config.check_source(&source).map_err(err)?,
        _ => {
            return Err(
                "migration stream: it does not start with the machine's configuration".into(),
            )
        }
    }
    let mut blobs = Vec::new();
    loop {
        match rd.next(ram).map_err(err)? {
            Section::Ram(_) => {}
            Section::Device {
                index,
                name,
                version,
                state,
            } => {
                if usize::try_from(index).ok() != Some(blobs.len()) {
                    return Err(format!(
                        "migration stream: device section {index} out of order"
                    ));
                }
                blobs.push(DeviceBlob {
                    name,
                    version,
                    state,
                });
            }
            Section::End => return Ok(blobs),
            Section::Config(_) => {
                return Err("migration stream: a second configuration section".into())
            }
        }
    }
}
