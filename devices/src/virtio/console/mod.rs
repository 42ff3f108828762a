//! virtio-console (device type 3) as virtio-serial with MULTIPORT: a bus of ports
//! numbered 0..max_ports, port 0 usually a console (`virtconsole`, the guest's hvc0) and
//! the others named channels (`virtserialport,name=`, /dev/virtio-ports/NAME).
//!
//! Each port is a byte stream to a host backend: guest output goes to the port's
//! `Write`, host input arrives through `push_input` and waits in a bounded buffer until
//! the guest has both opened the port and offered buffers. The control queues carry the
//! port handshake (DEVICE_READY, PORT_ADD, PORT_READY, CONSOLE_PORT, PORT_NAME,
//! PORT_OPEN); the guest opening or closing a port reaches the machine through
//! `ConsoleEvents` (QMP VSERPORT_CHANGE). Behaviour follows QEMU's
//! `hw/char/virtio-serial-bus.c`.
//!
//! Queue layout (virtio 1.2, 5.3.2): 0/1 are port 0's receive/transmit queues, 2/3 the
//! control receive/transmit queues, then 2+2n/3+2n for port n >= 1.
//!
//! The control queues (MULTIPORT's port discovery, naming and open/close handshake)
//! live in `control`; this file holds the ports, their data queues (input buffered
//! for the guest, output to each port's sink), the config space and the
//! [`VirtioDevice`] impl. `control` uses only this file's items. No locks: the device
//! is driven through `&mut self`.

mod control;

use control::{control_msg, CONTROL_HDR_LEN};

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::sync::Arc;

use crate::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT, Reader, Writer};

use super::{
    state_kind, ActivateError, DeviceError, VirtioDevice, VirtioDeviceState, VirtioInterrupt,
    TYPE_CONSOLE, VIRTIO_F_VERSION_1,
};

pub const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
pub const VIRTIO_CONSOLE_F_MULTIPORT: u64 = 1 << 1;
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;

/// Control events (virtio 1.2, 5.3.6.2).
pub const VIRTIO_CONSOLE_DEVICE_READY: u16 = 0;
pub const VIRTIO_CONSOLE_PORT_ADD: u16 = 1;
pub const VIRTIO_CONSOLE_PORT_REMOVE: u16 = 2;
pub const VIRTIO_CONSOLE_PORT_READY: u16 = 3;
pub const VIRTIO_CONSOLE_CONSOLE_PORT: u16 = 4;
pub const VIRTIO_CONSOLE_RESIZE: u16 = 5;
pub const VIRTIO_CONSOLE_PORT_OPEN: u16 = 6;
pub const VIRTIO_CONSOLE_PORT_NAME: u16 = 7;

pub const CONTROL_RX_QUEUE: usize = 2;
pub const CONTROL_TX_QUEUE: usize = 3;
pub const QUEUE_SIZE: u16 = 128;

/// QEMU's default `max_ports`.
pub const DEFAULT_MAX_PORTS: u32 = 31;
/// Two queues per port plus the control pair must fit virtio-pci's 1024 queues.
pub const MAX_PORTS_LIMIT: u32 = 511;
/// Host input held per port while the guest is not reading.
pub const INPUT_BUFFER_LIMIT: usize = 64 * 1024;

const MAX_OUTPUT_CHUNK: usize = 64 * 1024;

/// What the console tells the machine.
pub trait ConsoleEvents: Send + Sync {
    /// The guest opened (`open`) or closed a port: QMP VSERPORT_CHANGE {id, open}.
    fn port_open_changed(&self, port: u32, open: bool);
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("virtio-serial port number {nr} is out of range: the bus has max_ports={max}")]
    PortOutOfRange { nr: u32, max: u32 },
    #[error("virtio-serial port number {0} is already in use; pick another nr=")]
    PortInUse(u32),
    #[error("port number 0 on virtio-serial devices is reserved for virtconsole devices")]
    PortZeroReserved,
    #[error("virtio-serial bus has no free port left (max_ports={0}); raise max_ports")]
    NoFreePort(u32),
    #[error("virtio-serial has no port {0}")]
    NoSuchPort(u32),
    #[error("virtio-serial port name '{0}' is already in use")]
    NameInUse(String),
    #[error("max_ports must be 1..={MAX_PORTS_LIMIT}, not {0}")]
    MaxPorts(u32),
    #[error(transparent)]
    Device(#[from] DeviceError),
}

/// One port as the machine describes it.
pub struct PortConfig {
    /// Port number (`nr=`); None picks one as QEMU does (a console gets 0 if free, any
    /// other port the lowest free from 1).
    pub nr: Option<u32>,
    /// The guest-visible name (`name=`, /dev/virtio-ports/NAME).
    pub name: Option<String>,
    /// A console port (`virtconsole`): the guest makes it an hvc terminal.
    pub console: bool,
    /// Where guest output goes.
    pub output: Box<dyn Write + Send>,
}

impl PortConfig {
    /// `-device virtconsole`.
    pub fn console(output: Box<dyn Write + Send>) -> Self {
        PortConfig {
            nr: None,
            name: None,
            console: true,
            output,
        }
    }

    /// `-device virtserialport,name=NAME`.
    pub fn serial(name: Option<String>, output: Box<dyn Write + Send>) -> Self {
        PortConfig {
            nr: None,
            name,
            console: false,
            output,
        }
    }
}

/// Bus-wide settings (`-device virtio-serial,max_ports=`).
#[derive(Clone, Copy, Debug)]
pub struct ConsoleConfig {
    pub max_ports: u32,
    /// Console size in config space (informational: offered without F_SIZE, as QEMU).
    pub cols: u16,
    pub rows: u16,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            max_ports: DEFAULT_MAX_PORTS,
            cols: 0,
            rows: 0,
        }
    }
}

/// One port as the guest set it up, for migration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsolePortState {
    pub nr: u32,
    /// The guest has the port open (PORT_OPEN).
    pub guest_connected: bool,
    /// The guest driver set the port up (PORT_READY).
    pub guest_ready: bool,
}

/// The guest-visible state of a virtio-serial device, for migration: negotiated
/// features, the MULTIPORT handshake (DEVICE_READY, each port's PORT_READY and
/// PORT_OPEN), and the control messages not yet delivered to the guest. Host input
/// buffered for a port is not in it (it belongs to the source's chardev).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsoleState {
    pub acked_features: u64,
    /// The driver sent DEVICE_READY.
    pub driver_ready: bool,
    /// Every port of the bus, by number; the destination must have the same ports.
    pub ports: Vec<ConsolePortState>,
    /// Control messages queued for the guest, oldest first.
    pub control_out: Vec<Vec<u8>>,
}

/// Control messages to the guest a restored state may hold: one per port event at most
/// a few times over, far below this.
const MAX_RESTORED_CONTROL: usize = 4 * MAX_PORTS_LIMIT as usize + 16;

struct Port {
    name: Option<String>,
    console: bool,
    output: Box<dyn Write + Send>,
    /// The host backend is connected (a socket chardev has a peer).
    host_connected: bool,
    /// The guest has the port open.
    guest_connected: bool,
    /// The guest driver set the port up (PORT_READY).
    guest_ready: bool,
    input: VecDeque<u8>,
}

struct Active {
    mem: GuestMemoryMmap,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
}

use super::queue_util::{pop, queue_err, read_config_bytes, signal};

/// Receive and transmit queue indices of port `nr`.
pub fn port_queues(nr: u32) -> (usize, usize) {
    if nr == 0 {
        (0, 1)
    } else {
        let base = 2 + 2 * nr as usize;
        (base, base + 1)
    }
}

enum QueueRole {
    PortRx(u32),
    PortTx(u32),
    ControlRx,
    ControlTx,
}

fn queue_role(index: usize) -> QueueRole {
    match index {
        0 => QueueRole::PortRx(0),
        1 => QueueRole::PortTx(0),
        CONTROL_RX_QUEUE => QueueRole::ControlRx,
        CONTROL_TX_QUEUE => QueueRole::ControlTx,
        i => {
            let nr = (i / 2 - 1) as u32;
            if i % 2 == 0 {
                QueueRole::PortRx(nr)
            } else {
                QueueRole::PortTx(nr)
            }
        }
    }
}

/// The virtio-serial device model.
pub struct VirtioConsole {
    config: ConsoleConfig,
    ports: BTreeMap<u32, Port>,
    events: Arc<dyn ConsoleEvents>,
    acked_features: u64,
    /// The driver sent DEVICE_READY.
    driver_ready: bool,
    /// Control messages waiting for a guest buffer on the control receive queue.
    control_out: VecDeque<Vec<u8>>,
    active: Option<Active>,
}

impl VirtioConsole {
    /// A bus with `ports` (numbered per `PortConfig::nr`), each host side connected.
    pub fn new(
        config: ConsoleConfig,
        ports: Vec<PortConfig>,
        events: Arc<dyn ConsoleEvents>,
    ) -> Result<Self, ConsoleError> {
        if config.max_ports == 0 || config.max_ports > MAX_PORTS_LIMIT {
            return Err(ConsoleError::MaxPorts(config.max_ports));
        }
        let mut dev = VirtioConsole {
            config,
            ports: BTreeMap::new(),
            events,
            acked_features: 0,
            driver_ready: false,
            control_out: VecDeque::new(),
            active: None,
        };
        for p in ports {
            dev.insert_port(p)?;
        }
        Ok(dev)
    }

    fn insert_port(&mut self, p: PortConfig) -> Result<u32, ConsoleError> {
        let max = self.config.max_ports;
        let nr = match p.nr {
            Some(0) if !p.console => return Err(ConsoleError::PortZeroReserved),
            Some(nr) if nr >= max => return Err(ConsoleError::PortOutOfRange { nr, max }),
            Some(nr) if self.ports.contains_key(&nr) => return Err(ConsoleError::PortInUse(nr)),
            Some(nr) => nr,
            None => {
                let first = if p.console && !self.ports.contains_key(&0) {
                    0
                } else {
                    1
                };
                (first..max)
                    .find(|n| !self.ports.contains_key(n))
                    .ok_or(ConsoleError::NoFreePort(max))?
            }
        };
        if let Some(name) = &p.name {
            if self.ports.values().any(|q| q.name.as_ref() == Some(name)) {
                return Err(ConsoleError::NameInUse(name.clone()));
            }
        }
        self.ports.insert(
            nr,
            Port {
                name: p.name,
                console: p.console,
                output: p.output,
                host_connected: true,
                guest_connected: false,
                guest_ready: false,
                input: VecDeque::new(),
            },
        );
        Ok(nr)
    }

    /// Port numbers in use.
    pub fn ports(&self) -> Vec<u32> {
        self.ports.keys().copied().collect()
    }

    /// Whether the guest has port `nr` open.
    pub fn guest_connected(&self, nr: u32) -> Option<bool> {
        self.ports.get(&nr).map(|p| p.guest_connected)
    }

    /// Plugs a port in at run time (device_add virtserialport); the guest learns of it
    /// at once if its driver is up. Returns the port number.
    pub fn add_port(&mut self, port: PortConfig) -> Result<u32, ConsoleError> {
        let nr = self.insert_port(port)?;
        if self.driver_ready {
            self.control_out
                .push_back(control_msg(nr, VIRTIO_CONSOLE_PORT_ADD, 1, &[]));
            self.flush_control()?;
        }
        Ok(nr)
    }

    /// Unplugs a port (device_del): the guest is told, pending input is dropped.
    pub fn remove_port(&mut self, nr: u32) -> Result<(), ConsoleError> {
        self.ports.remove(&nr).ok_or(ConsoleError::NoSuchPort(nr))?;
        if self.driver_ready {
            self.control_out
                .push_back(control_msg(nr, VIRTIO_CONSOLE_PORT_REMOVE, 1, &[]));
            self.flush_control()?;
        }
        Ok(())
    }

    /// Host bytes for the guest on port `nr`. Returns how many were taken: input beyond
    /// `INPUT_BUFFER_LIMIT` not yet read by the guest is refused.
    pub fn push_input(&mut self, nr: u32, data: &[u8]) -> Result<usize, ConsoleError> {
        let port = self
            .ports
            .get_mut(&nr)
            .ok_or(ConsoleError::NoSuchPort(nr))?;
        let room = INPUT_BUFFER_LIMIT.saturating_sub(port.input.len());
        let n = room.min(data.len());
        port.input.extend(&data[..n]);
        self.flush_input(nr)?;
        Ok(n)
    }

    /// The host side of port `nr` connected or went away (a socket chardev's peer); the
    /// guest sees PORT_OPEN, and output to a disconnected host is discarded.
    pub fn set_host_connected(&mut self, nr: u32, connected: bool) -> Result<(), ConsoleError> {
        let port = self
            .ports
            .get_mut(&nr)
            .ok_or(ConsoleError::NoSuchPort(nr))?;
        if port.host_connected == connected {
            return Ok(());
        }
        port.host_connected = connected;
        if port.guest_ready && self.multiport() {
            self.control_out.push_back(control_msg(
                nr,
                VIRTIO_CONSOLE_PORT_OPEN,
                connected.into(),
                &[],
            ));
            self.flush_control()?;
        }
        Ok(())
    }

    /// The state to migrate (see [`ConsoleState`]).
    pub fn state(&self) -> ConsoleState {
        ConsoleState {
            acked_features: self.acked_features,
            driver_ready: self.driver_ready,
            ports: self
                .ports
                .iter()
                .map(|(&nr, p)| ConsolePortState {
                    nr,
                    guest_connected: p.guest_connected,
                    guest_ready: p.guest_ready,
                })
                .collect(),
            control_out: self.control_out.iter().cloned().collect(),
        }
    }

    /// Loads saved state into a device that is not active yet, built with the same
    /// ports (and any hot-plugged since added back).
    pub fn restore(&mut self, s: &ConsoleState) -> Result<(), String> {
        let bad = |why: String| Err(format!("invalid virtio-console state: {why}"));
        if self.active.is_some() {
            return bad("restore into a device the driver already started".into());
        }
        let extra = s.acked_features & !self.features();
        if extra != 0 {
            return bad(format!(
                "acked features {extra:#x} are not offered by this device"
            ));
        }
        let saved: Vec<u32> = s.ports.iter().map(|p| p.nr).collect();
        if saved != self.ports() {
            return bad(format!(
                "ports {saved:?}; this device has ports {:?}",
                self.ports()
            ));
        }
        if s.control_out.len() > MAX_RESTORED_CONTROL {
            return bad(format!("{} control messages queued", s.control_out.len()));
        }
        if let Some(m) = s
            .control_out
            .iter()
            .find(|m| m.len() < CONTROL_HDR_LEN || m.len() > MAX_OUTPUT_CHUNK)
        {
            return bad(format!("a {}-byte control message", m.len()));
        }
        self.acked_features = s.acked_features;
        self.driver_ready = s.driver_ready;
        for p in &s.ports {
            if let Some(port) = self.ports.get_mut(&p.nr) {
                port.guest_connected = p.guest_connected;
                port.guest_ready = p.guest_ready;
            }
        }
        self.control_out = s.control_out.iter().cloned().collect();
        Ok(())
    }

    fn multiport(&self) -> bool {
        self.acked_features & VIRTIO_CONSOLE_F_MULTIPORT != 0
    }

    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0..2].copy_from_slice(&self.config.cols.to_le_bytes());
        c[2..4].copy_from_slice(&self.config.rows.to_le_bytes());
        c[4..8].copy_from_slice(&self.config.max_ports.to_le_bytes());
        c
    }

    /// Moves buffered host input of port `nr` into the guest's buffers.
    fn flush_input(&mut self, nr: u32) -> Result<(), DeviceError> {
        let (rxq, _) = port_queues(nr);
        let Some(Active {
            mem,
            interrupt,
            queues,
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let Some(port) = self.ports.get_mut(&nr) else {
            return Ok(());
        };
        if !port.guest_connected {
            return Ok(());
        }
        let Some(q) = queues.get_mut(rxq) else {
            return Ok(());
        };
        let mut used = false;
        while !port.input.is_empty() {
            let Some(chain) = pop(q, mem)? else {
                break;
            };
            used = true;
            let head = chain.head_index();
            let written = match Writer::new(mem, chain) {
                Ok(mut w) => {
                    let n = w.available_bytes().min(port.input.len());
                    let (a, b) = port.input.as_slices();
                    let (a, b) = if n <= a.len() {
                        (&a[..n], &b[..0])
                    } else {
                        (a, &b[..n - a.len()])
                    };
                    match w.write_all(a).and_then(|()| w.write_all(b)) {
                        Ok(()) => {
                            port.input.drain(..n);
                            n
                        }
                        Err(_) => 0,
                    }
                }
                Err(e) => {
                    log::debug!("virtio-serial port {nr}: malformed receive chain: {e}");
                    0
                }
            };
            q.add_used(mem, head, written as u32).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), rxq)?;
        }
        Ok(())
    }

    /// Takes what the guest wrote on port `nr` to the port's backend.
    fn process_output(&mut self, nr: u32) -> Result<(), DeviceError> {
        let (_, txq) = port_queues(nr);
        let Some(Active {
            mem,
            interrupt,
            queues,
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let Some(q) = queues.get_mut(txq) else {
            return Ok(());
        };
        let mut port = self.ports.get_mut(&nr);
        let mut used = false;
        let mut buf = Vec::new();
        while let Some(chain) = pop(q, mem)? {
            used = true;
            let head = chain.head_index();
            buf.clear();
            match Reader::new(mem, chain) {
                Ok(mut r) => {
                    let n = r.available_bytes().min(MAX_OUTPUT_CHUNK);
                    buf.resize(n, 0);
                    if r.read_exact(&mut buf).is_err() {
                        buf.clear();
                    }
                }
                Err(e) => log::debug!("virtio-serial port {nr}: malformed transmit chain: {e}"),
            }
            // A port the host is not connected to (or that was unplugged) discards.
            if let Some(p) = port.as_deref_mut().filter(|p| p.host_connected) {
                if let Err(e) = p.output.write_all(&buf).and_then(|()| p.output.flush()) {
                    log::debug!("virtio-serial port {nr}: backend write failed: {e}");
                }
            }
            q.add_used(mem, head, 0).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), txq)?;
        }
        Ok(())
    }
}

impl VirtioDevice for VirtioConsole {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE; 2 * self.config.max_ports as usize + 2]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_MULTIPORT | VIRTIO_CONSOLE_F_EMERG_WRITE
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // emerg_wr: one character for port 0, usable before the queues are.
        if offset == 8
            && !data.is_empty()
            && self.acked_features & VIRTIO_CONSOLE_F_EMERG_WRITE != 0
        {
            if let Some(p) = self.ports.get_mut(&0).filter(|p| p.host_connected) {
                let _ = p
                    .output
                    .write_all(&data[..1])
                    .and_then(|()| p.output.flush());
            }
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let want = if self.multiport() {
            2 * self.config.max_ports as usize + 2
        } else {
            2
        };
        if queues.len() < want {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want,
            });
        }
        if !self.multiport() {
            // Such a guest cannot say it opened port 0: it is open once the driver is.
            if let Some(p) = self.ports.get_mut(&0) {
                p.guest_connected = true;
            }
        }
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.driver_ready = false;
        self.control_out.clear();
        for (&nr, p) in self.ports.iter_mut() {
            p.guest_ready = false;
            if p.guest_connected {
                p.guest_connected = false;
                self.events.port_open_changed(nr, false);
            }
        }
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        if self.active.is_none() {
            return Ok(());
        }
        match queue_role(index) {
            QueueRole::ControlRx => self.flush_control(),
            QueueRole::ControlTx => self.process_control(),
            QueueRole::PortRx(nr) => self.flush_input(nr),
            QueueRole::PortTx(nr) => self.process_output(nr),
        }
    }

    fn active_queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues)
    }

    fn save_state(&self) -> Result<VirtioDeviceState, String> {
        Ok(VirtioDeviceState::Console(self.state()))
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), String> {
        match state {
            VirtioDeviceState::Console(s) => self.restore(s),
            other => Err(format!("{} state for a virtio-console", state_kind(other))),
        }
    }
}

#[cfg(test)]
mod tests;
