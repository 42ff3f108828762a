//! The 16550A UART (COM1 at 0x3f8, COM2 at 0x2f8; window of 8 ports): rust-vmm
//! `vm-superio`'s `Serial` does the register logic; this wrapper plugs it into the
//! port bus, the machine's interrupt line and a host writer, and keeps a serde mirror
//! of its state for migration.
//!
//! The output writer is called on the vCPU thread for every byte the guest sends, so it
//! must not block (a non-blocking socket or pipe, a file, a buffer): a byte it refuses
//! (`WouldBlock`, a closed peer) is dropped and counted, and the UART carries on as a
//! real one does with nothing listening on the line.

use std::convert::Infallible;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use vm_superio::serial::{Error as SerialError, SerialEvents};
use vm_superio::{Serial, SerialState, Trigger};

use super::{read_bytes, write_bytes, LegacyError};
use crate::{BusDevice, Interrupt};

/// Receive FIFO depth of vm-superio's 16550A.
const FIFO_SIZE: usize = 64;

/// The guest-visible registers and receive FIFO of the UART, as vm-superio's
/// `SerialState` holds them.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Bytes received from the host and not yet read by the guest (at most 64).
    pub in_buffer: Vec<u8>,
}

impl Default for SerialDeviceState {
    fn default() -> Self {
        SerialState::default().into()
    }
}

impl From<SerialState> for SerialDeviceState {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialDeviceState> for SerialState {
    fn from(s: &SerialDeviceState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// vm-superio's `Trigger` over our `Interrupt`. It never reports failure to
/// vm-superio: the register state is already updated when the trigger fires, and an
/// error there would make vm-superio drop the writer on restore; a failed pulse
/// (the irqfd is gone) is counted instead.
#[derive(Clone)]
struct IrqTrigger {
    irq: Arc<dyn Interrupt>,
    failures: Arc<AtomicU64>,
}

impl Trigger for IrqTrigger {
    type E = Infallible;

    fn trigger(&self) -> Result<(), Infallible> {
        if self.irq.trigger().is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

struct Notifier(Arc<dyn Interrupt>);

/// Tells the host side, when one is set, that the guest drained the receive FIFO.
#[derive(Clone, Default)]
struct Events {
    input_space: Arc<ArcSwapOption<Notifier>>,
}

impl SerialEvents for Events {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(n) = &*self.input_space.load() {
            let _ = n.0.trigger();
        }
    }
}

type Output = Box<dyn Write + Send>;

/// A 16550A UART on the port bus.
pub struct SerialDevice {
    serial: Serial<IrqTrigger, Events, Output>,
    // Clones of what `serial` holds, to rebuild it on restore.
    trigger: IrqTrigger,
    events: Events,
    lost_output_bytes: u64,
}

impl SerialDevice {
    /// Length of the port window (THR/RBR .. SCR).
    pub const WINDOW_LEN: u64 = 8;

    /// A UART in its power-on state that raises `irq` and writes the guest's output to `out`.
    pub fn new(irq: Arc<dyn Interrupt>, out: Box<dyn Write + Send>) -> Self {
        let trigger = IrqTrigger {
            irq,
            failures: Arc::default(),
        };
        let events = Events::default();
        Self {
            serial: Serial::with_events(trigger.clone(), events.clone(), out),
            trigger,
            events,
            lost_output_bytes: 0,
        }
    }

    /// A UART in a saved state. Interrupts that were pending in it are raised again.
    pub fn from_state(
        state: &SerialDeviceState,
        irq: Arc<dyn Interrupt>,
        out: Box<dyn Write + Send>,
    ) -> Result<Self, LegacyError> {
        let mut dev = Self::new(irq, out);
        dev.restore(state)?;
        Ok(dev)
    }

    /// The guest-visible state, for migration.
    pub fn state(&self) -> SerialDeviceState {
        self.serial.state().into()
    }

    /// Replaces the guest-visible state, keeping the interrupt line and the writer.
    /// On error the device is unchanged.
    pub fn restore(&mut self, state: &SerialDeviceState) -> Result<(), LegacyError> {
        if state.in_buffer.len() > FIFO_SIZE {
            return Err(LegacyError::InvalidState {
                device: "serial",
                reason: format!(
                    "{} bytes in the receive FIFO, which holds {FIFO_SIZE}",
                    state.in_buffer.len()
                ),
            });
        }
        let placeholder = Serial::with_events(
            self.trigger.clone(),
            self.events.clone(),
            Box::new(io::sink()) as Output,
        );
        let out = std::mem::replace(&mut self.serial, placeholder).into_writer();
        match Serial::from_state(
            &SerialState::from(state),
            self.trigger.clone(),
            self.events.clone(),
            out,
        ) {
            Ok(s) => {
                self.serial = s;
                Ok(())
            }
            // Not reached: the FIFO length is checked above and the trigger cannot fail.
            Err(e) => Err(LegacyError::InvalidState {
                device: "serial",
                reason: e.to_string(),
            }),
        }
    }

    /// Queues host input for the guest: takes as many bytes as the receive FIFO has room
    /// for (none while the guest holds the UART in loopback) and returns how many it took.
    /// Raises the interrupt if the guest enabled the received-data interrupt.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.serial.enqueue_raw_bytes(bytes) {
            Ok(n) => Ok(n),
            Err(SerialError::FullFifo) => Ok(0),
            Err(SerialError::IOError(e)) => Err(e),
        }
    }

    /// Free room in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.serial.fifo_capacity()
    }

    /// Sets a line the device pulses when the guest has drained the receive FIFO, so the
    /// event loop can resume feeding input it held back when `enqueue_input` was short.
    /// It may also pulse when the FIFO was already empty.
    pub fn set_input_space_notifier(&self, notifier: Arc<dyn Interrupt>) {
        self.events
            .input_space
            .store(Some(Arc::new(Notifier(notifier))));
    }

    /// Bytes the guest sent that the writer refused (host diagnostics, not guest state).
    pub fn lost_output_bytes(&self) -> u64 {
        self.lost_output_bytes
    }

    /// Interrupt pulses that failed (host diagnostics, not guest state).
    pub fn failed_interrupts(&self) -> u64 {
        self.trigger.failures.load(Ordering::Relaxed)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let serial = &mut self.serial;
        read_bytes(offset, Self::WINDOW_LEN, data, |o| serial.read(o));
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Self {
            serial,
            lost_output_bytes,
            ..
        } = self;
        write_bytes(offset, Self::WINDOW_LEN, data, |o, v| {
            // The only error left is the writer's; the byte is lost and the UART goes on.
            if serial.write(o, v).is_err() {
                *lost_output_bytes += 1;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::legacy::testutil::{BrokenIrq, CountingIrq};

    const DATA: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const SCR: u64 = 7;
    const LSR_DR: u8 = 0x01;
    const LSR_THRE_TEMT: u8 = 0x60;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct ClosedSocket;

    impl Write for ClosedSocket {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
    }

    fn rd(d: &mut SerialDevice, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    fn wr(d: &mut SerialDevice, off: u64, v: u8) {
        d.write(off, &[v]);
    }

    fn dev() -> (SerialDevice, Arc<CountingIrq>, SharedBuf) {
        let irq = Arc::new(CountingIrq::default());
        let out = SharedBuf::default();
        let d = SerialDevice::new(irq.clone(), Box::new(out.clone()));
        (d, irq, out)
    }

    #[test]
    fn registers_behave_like_a_16550() {
        let (mut d, irq, _) = dev();
        assert_eq!(rd(&mut d, LSR), LSR_THRE_TEMT);
        assert_eq!(rd(&mut d, IIR) & 0x0f, 0x01, "no interrupt pending");
        // Only the four 16550 interrupt enables stick.
        wr(&mut d, IER, 0xf1);
        assert_eq!(rd(&mut d, IER), 0x01);
        assert_eq!(irq.count(), 0, "no data, no interrupt");
        // DLAB switches offsets 0 and 1 to the divisor latch.
        wr(&mut d, LCR, 0x83);
        wr(&mut d, DATA, 0x01);
        wr(&mut d, IER, 0x00);
        assert_eq!((rd(&mut d, DATA), rd(&mut d, IER)), (0x01, 0x00));
        assert_eq!(rd(&mut d, LCR), 0x83);
        wr(&mut d, LCR, 0x03);
        assert_eq!(rd(&mut d, IER), 0x01);
        wr(&mut d, SCR, 0x5a);
        assert_eq!(rd(&mut d, SCR), 0x5a);
        // A wide read is split into byte registers and stops at the window's end.
        let mut four = [0u8; 4];
        d.read(5, &mut four);
        assert_eq!(four, [LSR_THRE_TEMT, 0xb0, 0x5a, 0xff]);
        d.read(u64::MAX, &mut four);
        assert_eq!(four, [0xff; 4]);
        d.write(0x1000, &[1, 2, 3, 4]);
    }

    #[test]
    fn output_reaches_the_writer_and_raises_thre() {
        let (mut d, irq, out) = dev();
        wr(&mut d, IER, 0x02);
        let after_enable = irq.count();
        assert_eq!(after_enable, 1, "THRE asserts as soon as it is enabled");
        assert_eq!(rd(&mut d, IIR) & 0x0f, 0x02);
        for b in b"hi\n" {
            wr(&mut d, DATA, *b);
        }
        assert_eq!(out.0.lock().map(|v| v.clone()).unwrap_or_default(), b"hi\n");
        assert!(irq.count() > after_enable);
        assert_eq!(d.lost_output_bytes(), 0);
    }

    #[test]
    fn a_failing_writer_does_not_kill_the_device() {
        let irq = Arc::new(CountingIrq::default());
        let mut d = SerialDevice::new(irq.clone(), Box::new(ClosedSocket));
        wr(&mut d, IER, 0x02);
        rd(&mut d, IIR);
        wr(&mut d, DATA, b'x');
        wr(&mut d, DATA, b'y');
        assert_eq!(d.lost_output_bytes(), 2);
        assert_eq!(rd(&mut d, IIR) & 0x0f, 0x02, "THRE still raised");
        assert_eq!(rd(&mut d, LSR), LSR_THRE_TEMT);
        assert_eq!(d.enqueue_input(b"ok").ok(), Some(2));
        assert_eq!(rd(&mut d, DATA), b'o');
    }

    #[test]
    fn a_broken_interrupt_line_is_counted_not_fatal() {
        let mut d = SerialDevice::new(Arc::new(BrokenIrq), Box::new(io::sink()));
        wr(&mut d, IER, 0x01);
        assert_eq!(d.enqueue_input(b"a").ok(), Some(1));
        assert_eq!(d.failed_interrupts(), 1);
        assert_eq!(rd(&mut d, DATA), b'a');
    }

    #[test]
    fn input_respects_the_fifo_and_raises_rda() {
        let (mut d, irq, _) = dev();
        let notified = Arc::new(CountingIrq::default());
        d.set_input_space_notifier(notified.clone());
        wr(&mut d, IER, 0x01);
        assert_eq!(d.fifo_capacity(), 64);
        let input: Vec<u8> = (0..100).collect();
        assert_eq!(d.enqueue_input(&input).ok(), Some(64));
        assert_eq!(d.fifo_capacity(), 0);
        assert_eq!(d.enqueue_input(&input[64..]).ok(), Some(0));
        assert_eq!(d.enqueue_input(&[]).ok(), Some(0));
        assert_eq!(irq.count(), 1);
        assert_eq!(rd(&mut d, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut d, IIR) & 0x0f, 0x04, "received data available");
        for i in 0..64u8 {
            assert_eq!(rd(&mut d, DATA), i);
        }
        assert_eq!(rd(&mut d, LSR) & LSR_DR, 0);
        assert_eq!(d.fifo_capacity(), 64);
        assert!(notified.count() >= 1, "the host learns the FIFO drained");
        // Loopback: host input is not taken.
        wr(&mut d, 4, 0x10);
        assert_eq!(d.enqueue_input(b"x").ok(), Some(0));
    }

    #[test]
    fn state_round_trips() {
        let (mut d, _, _) = dev();
        wr(&mut d, LCR, 0x80);
        wr(&mut d, DATA, 0x03);
        wr(&mut d, LCR, 0x1b);
        wr(&mut d, SCR, 0x42);
        wr(&mut d, IER, 0x01);
        assert_eq!(d.enqueue_input(b"abc").ok(), Some(3));
        let s = d.state();
        assert_eq!(s.in_buffer, b"abc");
        assert_eq!(s.baud_divisor_low, 0x03);

        let irq = Arc::new(CountingIrq::default());
        let mut e = SerialDevice::from_state(&s, irq.clone(), Box::new(io::sink()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.state(), s);
        assert_eq!(irq.count(), 1, "the pending RDA interrupt is raised again");
        assert_eq!(rd(&mut e, DATA), b'a');

        // restore() keeps the writer; a bad state leaves the device as it was.
        let out = SharedBuf::default();
        let mut f = SerialDevice::new(Arc::new(CountingIrq::default()), Box::new(out.clone()));
        let mut bad = s.clone();
        bad.in_buffer = vec![0; 65];
        assert!(f.restore(&bad).is_err());
        assert_eq!(f.state(), SerialDeviceState::default());
        assert!(f.restore(&s).is_ok());
        assert_eq!(f.state(), s);
        wr(&mut f, DATA, b'z');
        assert_eq!(out.0.lock().map(|v| v.clone()).unwrap_or_default(), b"z");
    }
}
