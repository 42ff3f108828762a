//! virtio-console unit tests: single-port console, MULTIPORT discovery and the
//! open/close handshake, input buffering, output, hot-plug, malformed traffic.

use super::*;
use crate::virtio::net::testutil::{memory, read, Irq, Vq};
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

    fn activate(&self, dev: &mut dyn VirtioDevice, irq: &Arc<Irq>, features: u64) {
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

    fn send_control(&mut self, dev: &mut dyn VirtioDevice, id: u32, event: u16, value: u16) {
        let a = self.alloc(8);
        self.mem
            .write_slice(&control_msg(id, event, value, &[]), GuestAddress(a))
            .unwrap();
        self.vqs[CONTROL_TX_QUEUE].add(&[(a, 8, false)]);
        dev.process_queue(CONTROL_TX_QUEUE).unwrap();
    }

    /// The guest writes `data` on port `nr`.
    fn write_port(&mut self, dev: &mut dyn VirtioDevice, nr: u32, data: &[u8]) {
        let a = self.alloc(data.len() as u64);
        self.mem.write_slice(data, GuestAddress(a)).unwrap();
        let (_, tx) = port_queues(nr);
        self.vqs[tx].add(&[(a, data.len() as u32, false)]);
        dev.process_queue(tx).unwrap();
    }

    /// The guest offers a receive buffer on port `nr`; returns its address.
    fn offer_rx(&mut self, dev: &mut dyn VirtioDevice, nr: u32, len: u32) -> u64 {
        let a = self.alloc(len.into());
        let (rx, _) = port_queues(nr);
        self.vqs[rx].add(&[(a, len, true)]);
        dev.process_queue(rx).unwrap();
        a
    }

    /// Bringing the driver up as Linux does: DEVICE_READY, then PORT_READY for each
    /// added port.
    fn handshake(&mut self, dev: &mut dyn VirtioDevice) -> Vec<(u32, u16, u16, Vec<u8>)> {
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

mod state;
