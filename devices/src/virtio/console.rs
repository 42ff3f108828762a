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

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT, Reader, Writer};
use vm_memory::GuestMemoryMmap;

use super::{
    ActivateError, DeviceError, VirtioDevice, VirtioInterrupt, TYPE_CONSOLE, VIRTIO_F_VERSION_1,
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

const CONTROL_HDR_LEN: usize = 8;
/// Control messages from the guest carry at most a header and a short value.
const MAX_CONTROL_MSG: usize = 4096;
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

fn control_msg(id: u32, event: u16, value: u16, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTROL_HDR_LEN + data.len());
    m.extend_from_slice(&id.to_le_bytes());
    m.extend_from_slice(&event.to_le_bytes());
    m.extend_from_slice(&value.to_le_bytes());
    m.extend_from_slice(data);
    m
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

    /// Sends queued control messages while the guest offers buffers.
    fn flush_control(&mut self) -> Result<(), DeviceError> {
        let Some(Active {
            mem,
            interrupt,
            queues,
        }) = self.active.as_mut()
        else {
            return Ok(());
        };
        let Some(q) = queues.get_mut(CONTROL_RX_QUEUE) else {
            return Ok(());
        };
        let mut used = false;
        while let Some(msg) = self.control_out.front() {
            let Some(chain) = pop(q, mem)? else {
                break;
            };
            used = true;
            let head = chain.head_index();
            let written = match Writer::new(mem, chain) {
                Ok(mut w) if w.available_bytes() >= CONTROL_HDR_LEN => {
                    // A name longer than the buffer is cut, as the guest would cut it.
                    let n = w.available_bytes().min(msg.len());
                    w.write_all(&msg[..n]).map(|()| n).unwrap_or(0)
                }
                _ => 0,
            };
            if written > 0 {
                self.control_out.pop_front();
            }
            q.add_used(mem, head, written as u32).map_err(queue_err)?;
        }
        if used {
            signal(q, mem, interrupt.as_ref(), CONTROL_RX_QUEUE)?;
        }
        Ok(())
    }

    /// Handles the guest's control messages.
    fn process_control(&mut self) -> Result<(), DeviceError> {
        let mut msgs = Vec::new();
        {
            let Some(Active {
                mem,
                interrupt,
                queues,
            }) = self.active.as_mut()
            else {
                return Ok(());
            };
            let Some(q) = queues.get_mut(CONTROL_TX_QUEUE) else {
                return Ok(());
            };
            let mut used = false;
            while let Some(chain) = pop(q, mem)? {
                used = true;
                let head = chain.head_index();
                if let Ok(mut r) = Reader::new(mem, chain) {
                    let n = r.available_bytes().min(MAX_CONTROL_MSG);
                    let mut m = vec![0u8; n];
                    if n >= CONTROL_HDR_LEN && r.read_exact(&mut m).is_ok() {
                        msgs.push(m);
                    } else {
                        log::debug!("virtio-serial: short control message ({n} bytes)");
                    }
                }
                q.add_used(mem, head, 0).map_err(queue_err)?;
            }
            if used {
                signal(q, mem, interrupt.as_ref(), CONTROL_TX_QUEUE)?;
            }
        }
        for m in msgs {
            let id = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
            let event = u16::from_le_bytes([m[4], m[5]]);
            let value = u16::from_le_bytes([m[6], m[7]]);
            self.control_message(id, event, value)?;
        }
        self.flush_control()
    }

    fn control_message(&mut self, id: u32, event: u16, value: u16) -> Result<(), DeviceError> {
        match event {
            VIRTIO_CONSOLE_DEVICE_READY => {
                if value == 0 {
                    log::warn!("virtio-serial: the guest driver failed to initialise");
                    return Ok(());
                }
                self.driver_ready = true;
                for &nr in self.ports.keys() {
                    self.control_out
                        .push_back(control_msg(nr, VIRTIO_CONSOLE_PORT_ADD, 1, &[]));
                }
            }
            VIRTIO_CONSOLE_PORT_READY => {
                let Some(port) = self.ports.get_mut(&id) else {
                    log::debug!("virtio-serial: PORT_READY for unknown port {id}");
                    return Ok(());
                };
                if value == 0 {
                    log::warn!("virtio-serial: the guest failed to set up port {id}");
                    return Ok(());
                }
                port.guest_ready = true;
                if port.console {
                    self.control_out.push_back(control_msg(
                        id,
                        VIRTIO_CONSOLE_CONSOLE_PORT,
                        1,
                        &[],
                    ));
                }
                if let Some(name) = &port.name {
                    let mut data = name.as_bytes().to_vec();
                    data.push(0);
                    self.control_out
                        .push_back(control_msg(id, VIRTIO_CONSOLE_PORT_NAME, 1, &data));
                }
                if port.host_connected {
                    self.control_out
                        .push_back(control_msg(id, VIRTIO_CONSOLE_PORT_OPEN, 1, &[]));
                }
            }
            VIRTIO_CONSOLE_PORT_OPEN => {
                let Some(port) = self.ports.get_mut(&id) else {
                    log::debug!("virtio-serial: PORT_OPEN for unknown port {id}");
                    return Ok(());
                };
                let open = value != 0;
                port.guest_connected = open;
                self.events.port_open_changed(id, open);
                if open {
                    self.flush_input(id)?;
                }
            }
            other => log::debug!("virtio-serial: ignored control event {other} for port {id}"),
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
}

#[cfg(test)]
mod tests {
    use super::super::net::testutil::{memory, read, Irq, Vq};
    use super::*;
    use std::sync::Mutex;
    use vm_memory::{Bytes, GuestAddress};

    const MAX_PORTS: u32 = 4;
    const NAME: &str = "org.kestrel.test";

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn take(&self) -> Vec<u8> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    #[derive(Default)]
    struct Events(Mutex<Vec<(u32, bool)>>);

    impl ConsoleEvents for Events {
        fn port_open_changed(&self, port: u32, open: bool) {
            self.0.lock().unwrap().push((port, open));
        }
    }

    impl Events {
        fn take(&self) -> Vec<(u32, bool)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// A console on port 0, a named port 1 and an unnamed port 2.
    fn device() -> (VirtioConsole, Vec<Sink>, Arc<Events>) {
        let sinks = vec![Sink::default(), Sink::default(), Sink::default()];
        let events = Arc::new(Events::default());
        let dev = VirtioConsole::new(
            ConsoleConfig {
                max_ports: MAX_PORTS,
                cols: 80,
                rows: 25,
            },
            vec![
                PortConfig::serial(Some(NAME.into()), Box::new(sinks[1].clone())),
                PortConfig::console(Box::new(sinks[0].clone())),
                PortConfig::serial(None, Box::new(sinks[2].clone())),
            ],
            events.clone(),
        )
        .unwrap();
        (dev, sinks, events)
    }

    /// The driver's side: all queues, control buffers and helpers to talk.
    struct Driver<'a> {
        mem: &'a GuestMemoryMmap,
        vqs: Vec<Vq<'a>>,
        /// Control receive buffers: head -> address.
        ctrl_bufs: Vec<(u16, u64)>,
        seen: usize,
        next_addr: u64,
    }

    impl<'a> Driver<'a> {
        fn new(mem: &'a GuestMemoryMmap, queues: usize) -> Self {
            let vqs = (0..queues)
                .map(|i| Vq::new(mem, i as u64 * 0x1_0000))
                .collect();
            Driver {
                mem,
                vqs,
                ctrl_bufs: Vec::new(),
                seen: 0,
                next_addr: 0x20_0000,
            }
        }

        fn alloc(&mut self, len: u64) -> u64 {
            let a = self.next_addr;
            self.next_addr += len.div_ceil(0x1000) * 0x1000;
            a
        }

        fn activate(&self, dev: &mut VirtioConsole, irq: &Arc<Irq>, features: u64) {
            dev.ack_features(features);
            let queues = self.vqs.iter().map(|v| v.queue()).collect();
            dev.activate(self.mem.clone(), irq.clone(), queues).unwrap();
        }

        fn offer_control_buffers(&mut self, n: usize) {
            for _ in 0..n {
                let a = self.alloc(256);
                let head = self.vqs[CONTROL_RX_QUEUE].add(&[(a, 256, true)]);
                self.ctrl_bufs.push((head, a));
            }
        }

        /// Control messages the device sent since the last call: (id, event, value, data).
        fn control_msgs(&mut self) -> Vec<(u32, u16, u16, Vec<u8>)> {
            let used = self.vqs[CONTROL_RX_QUEUE].used();
            let new = used[self.seen..].to_vec();
            self.seen = used.len();
            new.into_iter()
                .map(|(head, len)| {
                    let addr = self.ctrl_bufs.iter().find(|b| b.0 == head).unwrap().1;
                    let m = read(self.mem, addr, len as usize);
                    let id = u32::from_le_bytes(m[0..4].try_into().unwrap());
                    let ev = u16::from_le_bytes(m[4..6].try_into().unwrap());
                    let val = u16::from_le_bytes(m[6..8].try_into().unwrap());
                    (id, ev, val, m[8..].to_vec())
                })
                .collect()
        }

        fn send_control(&mut self, dev: &mut VirtioConsole, id: u32, event: u16, value: u16) {
            let a = self.alloc(8);
            self.mem
                .write_slice(&control_msg(id, event, value, &[]), GuestAddress(a))
                .unwrap();
            self.vqs[CONTROL_TX_QUEUE].add(&[(a, 8, false)]);
            dev.process_queue(CONTROL_TX_QUEUE).unwrap();
        }

        /// The guest writes `data` on port `nr`.
        fn write_port(&mut self, dev: &mut VirtioConsole, nr: u32, data: &[u8]) {
            let a = self.alloc(data.len() as u64);
            self.mem.write_slice(data, GuestAddress(a)).unwrap();
            let (_, tx) = port_queues(nr);
            self.vqs[tx].add(&[(a, data.len() as u32, false)]);
            dev.process_queue(tx).unwrap();
        }

        /// The guest offers a receive buffer on port `nr`; returns its address.
        fn offer_rx(&mut self, dev: &mut VirtioConsole, nr: u32, len: u32) -> u64 {
            let a = self.alloc(len.into());
            let (rx, _) = port_queues(nr);
            self.vqs[rx].add(&[(a, len, true)]);
            dev.process_queue(rx).unwrap();
            a
        }

        /// Bringing the driver up as Linux does: DEVICE_READY, then PORT_READY for each
        /// added port.
        fn handshake(&mut self, dev: &mut VirtioConsole) -> Vec<(u32, u16, u16, Vec<u8>)> {
            self.offer_control_buffers(16);
            dev.process_queue(CONTROL_RX_QUEUE).unwrap();
            self.send_control(dev, 0, VIRTIO_CONSOLE_DEVICE_READY, 1);
            let added = self.control_msgs();
            let mut all = added.clone();
            for (id, ev, _, _) in added {
                assert_eq!(ev, VIRTIO_CONSOLE_PORT_ADD);
                self.send_control(dev, id, VIRTIO_CONSOLE_PORT_READY, 1);
                all.extend(self.control_msgs());
            }
            all
        }
    }

    const MULTI: u64 = VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_MULTIPORT;

    fn queues() -> usize {
        2 * MAX_PORTS as usize + 2
    }

    #[test]
    fn config_space_and_queue_layout() {
        let (dev, _, _) = device();
        assert_eq!(dev.device_type(), TYPE_CONSOLE);
        assert_eq!(dev.queue_max_sizes().len(), queues());
        assert_ne!(dev.features() & VIRTIO_CONSOLE_F_MULTIPORT, 0);
        let mut c = [0u8; 12];
        dev.read_config(0, &mut c);
        assert_eq!(u16::from_le_bytes([c[0], c[1]]), 80);
        assert_eq!(u16::from_le_bytes([c[2], c[3]]), 25);
        assert_eq!(u32::from_le_bytes([c[4], c[5], c[6], c[7]]), MAX_PORTS);
        assert_eq!(port_queues(0), (0, 1));
        assert_eq!(port_queues(1), (4, 5));
        assert_eq!(port_queues(3), (8, 9));
        assert_eq!(dev.ports(), vec![0, 1, 2]);
    }

    #[test]
    fn device_ready_handshake_announces_ports_console_names_and_open_hosts() {
        let mem = memory();
        let (mut dev, _, _) = device();
        let irq = Arc::new(Irq::default());
        let mut drv = Driver::new(&mem, queues());
        drv.activate(&mut dev, &irq, MULTI);
        let msgs = drv.handshake(&mut dev);
        let mut name = NAME.as_bytes().to_vec();
        name.push(0);
        assert_eq!(
            msgs,
            vec![
                (0, VIRTIO_CONSOLE_PORT_ADD, 1, vec![]),
                (1, VIRTIO_CONSOLE_PORT_ADD, 1, vec![]),
                (2, VIRTIO_CONSOLE_PORT_ADD, 1, vec![]),
                (0, VIRTIO_CONSOLE_CONSOLE_PORT, 1, vec![]),
                (0, VIRTIO_CONSOLE_PORT_OPEN, 1, vec![]),
                (1, VIRTIO_CONSOLE_PORT_NAME, 1, name),
                (1, VIRTIO_CONSOLE_PORT_OPEN, 1, vec![]),
                (2, VIRTIO_CONSOLE_PORT_OPEN, 1, vec![]),
            ]
        );
        assert!(irq
            .queues
            .lock()
            .unwrap()
            .contains(&(CONTROL_RX_QUEUE as u16)));
    }

    #[test]
    fn control_messages_wait_for_guest_buffers() {
        let mem = memory();
        let (mut dev, _, _) = device();
        let irq = Arc::new(Irq::default());
        let mut drv = Driver::new(&mem, queues());
        drv.activate(&mut dev, &irq, MULTI);
        drv.send_control(&mut dev, 0, VIRTIO_CONSOLE_DEVICE_READY, 1);
        assert!(drv.control_msgs().is_empty());
        drv.offer_control_buffers(2);
        dev.process_queue(CONTROL_RX_QUEUE).unwrap();
        assert_eq!(drv.control_msgs().len(), 2);
        drv.offer_control_buffers(2);
        dev.process_queue(CONTROL_RX_QUEUE).unwrap();
        assert_eq!(
            drv.control_msgs(),
            vec![(2, VIRTIO_CONSOLE_PORT_ADD, 1, vec![])]
        );
    }

    #[test]
    fn data_flows_both_ways_once_the_guest_opens_the_port() {
        let mem = memory();
        let (mut dev, sinks, events) = device();
        let irq = Arc::new(Irq::default());
        let mut drv = Driver::new(&mem, queues());
        drv.activate(&mut dev, &irq, MULTI);
        drv.handshake(&mut dev);

        // Host input before the guest opens the port waits.
        assert_eq!(dev.push_input(1, b"early ").unwrap(), 6);
        let a = drv.offer_rx(&mut dev, 1, 64);
        let (rxq, _) = port_queues(1);
        assert!(drv.vqs[rxq].used().is_empty());

        drv.send_control(&mut dev, 1, VIRTIO_CONSOLE_PORT_OPEN, 1);
        assert_eq!(events.take(), vec![(1, true)]);
        assert_eq!(dev.guest_connected(1), Some(true));
        assert_eq!(drv.vqs[rxq].used().len(), 1);
        assert_eq!(read(&mem, a, 6), b"early ");

        // Input larger than the buffer spreads over the next buffers as they come.
        assert_eq!(dev.push_input(1, b"hello world").unwrap(), 11);
        let b = drv.offer_rx(&mut dev, 1, 5);
        let c = drv.offer_rx(&mut dev, 1, 64);
        let used = drv.vqs[rxq].used();
        assert_eq!(used.iter().map(|u| u.1).collect::<Vec<_>>(), vec![6, 5, 6]);
        assert_eq!(read(&mem, b, 5), b"hello");
        assert_eq!(read(&mem, c, 6), b" world");

        // Guest output reaches the port's backend, and only that port's.
        drv.write_port(&mut dev, 1, b"from the guest");
        assert_eq!(sinks[1].take(), b"from the guest");
        drv.write_port(&mut dev, 0, b"console line\n");
        assert_eq!(sinks[0].take(), b"console line\n");
        assert!(sinks[2].take().is_empty());

        // The guest closes the port.
        drv.send_control(&mut dev, 1, VIRTIO_CONSOLE_PORT_OPEN, 0);
        assert_eq!(events.take(), vec![(1, false)]);
        dev.push_input(1, b"late").unwrap();
        drv.offer_rx(&mut dev, 1, 64);
        assert_eq!(drv.vqs[rxq].used().len(), 3, "not delivered while closed");

        // The host side going away: the guest is told, and its output is discarded.
        dev.set_host_connected(2, false).unwrap();
        assert_eq!(
            drv.control_msgs(),
            vec![(2, VIRTIO_CONSOLE_PORT_OPEN, 0, vec![])]
        );
        drv.write_port(&mut dev, 2, b"nobody listens");
        assert!(sinks[2].take().is_empty());
        dev.set_host_connected(2, true).unwrap();
        assert_eq!(
            drv.control_msgs(),
            vec![(2, VIRTIO_CONSOLE_PORT_OPEN, 1, vec![])]
        );

        // Reset closes what the guest had open.
        drv.send_control(&mut dev, 0, VIRTIO_CONSOLE_PORT_OPEN, 1);
        assert_eq!(events.take(), vec![(0, true)]);
        dev.reset();
        assert_eq!(events.take(), vec![(0, false)]);
        assert_eq!(dev.guest_connected(0), Some(false));
    }

    #[test]
    fn host_input_is_bounded() {
        let (mut dev, _, _) = device();
        let big = vec![b'x'; INPUT_BUFFER_LIMIT + 100];
        assert_eq!(dev.push_input(2, &big).unwrap(), INPUT_BUFFER_LIMIT);
        assert_eq!(dev.push_input(2, b"more").unwrap(), 0);
        assert!(matches!(
            dev.push_input(3, b"x"),
            Err(ConsoleError::NoSuchPort(3))
        ));
        assert!(matches!(
            dev.set_host_connected(9, true),
            Err(ConsoleError::NoSuchPort(9))
        ));
    }

    #[test]
    fn port_numbers_follow_qemu_rules() {
        let ev: Arc<dyn ConsoleEvents> = Arc::new(Events::default());
        let cfg = ConsoleConfig {
            max_ports: 3,
            ..ConsoleConfig::default()
        };
        let out = || -> Box<dyn Write + Send> { Box::new(std::io::sink()) };
        // A serial port alone starts at 1; a later console still gets 0.
        let d = VirtioConsole::new(
            cfg,
            vec![PortConfig::serial(None, out()), PortConfig::console(out())],
            ev.clone(),
        )
        .unwrap();
        assert_eq!(d.ports(), vec![0, 1]);
        // A second console takes the next free number.
        let d = VirtioConsole::new(
            cfg,
            vec![PortConfig::console(out()), PortConfig::console(out())],
            ev.clone(),
        )
        .unwrap();
        assert_eq!(d.ports(), vec![0, 1]);
        let with_nr = |nr, console| PortConfig {
            nr: Some(nr),
            name: None,
            console,
            output: out(),
        };
        let err = |ports| VirtioConsole::new(cfg, ports, ev.clone()).err().unwrap();
        assert!(matches!(
            err(vec![with_nr(0, false)]),
            ConsoleError::PortZeroReserved
        ));
        assert!(matches!(
            err(vec![with_nr(3, false)]),
            ConsoleError::PortOutOfRange { nr: 3, max: 3 }
        ));
        assert!(matches!(
            err(vec![with_nr(1, false), with_nr(1, true)]),
            ConsoleError::PortInUse(1)
        ));
        assert!(matches!(
            err(vec![
                PortConfig::serial(None, out()),
                PortConfig::serial(None, out()),
                PortConfig::serial(None, out())
            ]),
            ConsoleError::NoFreePort(3)
        ));
        assert!(matches!(
            err(vec![
                PortConfig::serial(Some("a".into()), out()),
                PortConfig::serial(Some("a".into()), out())
            ]),
            ConsoleError::NameInUse(_)
        ));
        for bad in [0, MAX_PORTS_LIMIT + 1] {
            let c = ConsoleConfig {
                max_ports: bad,
                ..cfg
            };
            assert!(matches!(
                VirtioConsole::new(c, vec![], ev.clone()),
                Err(ConsoleError::MaxPorts(_))
            ));
        }
    }

    #[test]
    fn ports_plugged_and_unplugged_at_run_time_are_announced() {
        let mem = memory();
        let (mut dev, _, _) = device();
        let irq = Arc::new(Irq::default());
        let mut drv = Driver::new(&mem, queues());
        drv.activate(&mut dev, &irq, MULTI);
        drv.handshake(&mut dev);
        let sink = Sink::default();
        let nr = dev
            .add_port(PortConfig::serial(
                Some("hot".into()),
                Box::new(sink.clone()),
            ))
            .unwrap();
        assert_eq!(nr, 3);
        assert_eq!(
            drv.control_msgs(),
            vec![(3, VIRTIO_CONSOLE_PORT_ADD, 1, vec![])]
        );
        drv.send_control(&mut dev, 3, VIRTIO_CONSOLE_PORT_READY, 1);
        let msgs = drv.control_msgs();
        assert_eq!(msgs[0].1, VIRTIO_CONSOLE_PORT_NAME);
        assert_eq!(msgs[0].3, b"hot\0");
        drv.write_port(&mut dev, 3, b"hi");
        assert_eq!(sink.take(), b"hi");
        dev.remove_port(3).unwrap();
        assert_eq!(
            drv.control_msgs(),
            vec![(3, VIRTIO_CONSOLE_PORT_REMOVE, 1, vec![])]
        );
        // Output on the unplugged port's queue is consumed and discarded.
        drv.write_port(&mut dev, 3, b"gone");
        assert!(sink.take().is_empty());
        assert!(matches!(
            dev.remove_port(3),
            Err(ConsoleError::NoSuchPort(3))
        ));
    }

    #[test]
    fn without_multiport_port_zero_is_a_plain_console() {
        let mem = memory();
        let (mut dev, sinks, events) = device();
        let irq = Arc::new(Irq::default());
        let mut drv = Driver::new(&mem, 2);
        drv.activate(
            &mut dev,
            &irq,
            VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_EMERG_WRITE,
        );
        drv.write_port(&mut dev, 0, b"boot\n");
        assert_eq!(sinks[0].take(), b"boot\n");
        dev.push_input(0, b"ls\n").unwrap();
        let a = drv.offer_rx(&mut dev, 0, 16);
        assert_eq!(read(&mem, a, 3), b"ls\n");
        assert!(events.take().is_empty());
        // Emergency write: one character straight to port 0.
        dev.write_config(8, &[b'!', 0, 0, 0]);
        assert_eq!(sinks[0].take(), b"!");
    }

    #[test]
    fn malformed_requests_are_dropped() {
        let mem = memory();
        let (mut dev, sinks, events) = device();
        let irq = Arc::new(Irq::default());
        let mut drv = Driver::new(&mem, queues());
        // Too few queues for multiport.
        dev.ack_features(MULTI);
        let e = dev
            .activate(
                mem.clone(),
                irq.clone(),
                vec![drv.vqs[0].queue(), drv.vqs[1].queue()],
            )
            .unwrap_err();
        assert!(matches!(e, ActivateError::QueueCount { got: 2, want: 10 }));
        drv.activate(&mut dev, &irq, MULTI);
        drv.handshake(&mut dev);

        // A short control message, one outside memory, one for a port that does not
        // exist, an unknown event: all consumed, nothing happens.
        drv.vqs[CONTROL_TX_QUEUE].add(&[(0x30_0000, 3, false)]);
        drv.vqs[CONTROL_TX_QUEUE].add(&[(0x4000_0000, 8, false)]);
        dev.process_queue(CONTROL_TX_QUEUE).unwrap();
        drv.send_control(&mut dev, 3, VIRTIO_CONSOLE_PORT_OPEN, 1);
        drv.send_control(&mut dev, 77, VIRTIO_CONSOLE_PORT_READY, 1);
        drv.send_control(&mut dev, 1, 99, 1);
        assert!(events.take().is_empty());
        assert!(drv.control_msgs().is_empty());

        // Port transmit chains outside memory or write-only; then a good one.
        let (rxq, txq) = port_queues(1);
        drv.vqs[txq].add(&[(0x4000_0000, 16, false)]);
        drv.vqs[txq].add(&[(0x30_0000, 16, true)]);
        dev.process_queue(txq).unwrap();
        drv.write_port(&mut dev, 1, b"ok");
        assert_eq!(sinks[1].take(), b"ok");
        assert_eq!(drv.vqs[txq].used().len(), 3);

        // A receive chain outside memory is returned empty; input goes to the next.
        drv.send_control(&mut dev, 1, VIRTIO_CONSOLE_PORT_OPEN, 1);
        drv.vqs[rxq].add(&[(0x4000_0000, 16, false)]);
        dev.push_input(1, b"data").unwrap();
        let a = drv.offer_rx(&mut dev, 1, 16);
        assert_eq!(
            drv.vqs[rxq].used().iter().map(|u| u.1).collect::<Vec<_>>(),
            vec![0, 4]
        );
        assert_eq!(read(&mem, a, 4), b"data");

        // Unknown queue indices past the layout are harmless.
        dev.process_queue(1000).unwrap();
    }
}
