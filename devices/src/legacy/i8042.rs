//! The i8042 PS/2 controller (ports 0x60 data and 0x64 status/command; a window of 5
//! at 0x60), with no keyboard or mouse attached. It exists for what Linux does with it:
//! probe the controller (self test, command byte, port tests) and reset the machine
//! (`reboot=k`: pulse the reset line with 0xFE, or clear bit 0 of the output port).
//!
//! The controller has both ports; nothing is plugged into either. Bytes the guest sends
//! to a device are dropped (no reply; Linux's atkbd probe times out asynchronously).
//! The auxiliary port's loopback (0xD3) answers with the AUX status bit, but IRQ12 is
//! not wired, so Linux's AUX interrupt test fails after 250 ms and it registers no
//! mouse port (pass `i8042.noaux` to skip that wait). Offsets 1..3 (port 0x61, system
//! control port B) belong to KVM's in-kernel PIT speaker device and read 0 here.

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{read_bytes, write_bytes, LegacyError};
use crate::{BusDevice, ExitRequest, ExitRequests, Interrupt};

const DATA: u8 = 0;
const STATUS_COMMAND: u8 = 4;

// Status register.
const STS_OBF: u8 = 1 << 0;
const STS_SYS: u8 = 1 << 2;
const STS_CMD: u8 = 1 << 3;
const STS_UNLOCKED: u8 = 1 << 4;
const STS_AUX: u8 = 1 << 5;

// Controller command byte (CTR).
const CTR_KBD_INT: u8 = 1 << 0;
const CTR_SYS: u8 = 1 << 2;
const CTR_KBD_DISABLE: u8 = 1 << 4;
const CTR_AUX_DISABLE: u8 = 1 << 5;
const CTR_XLATE: u8 = 1 << 6;

// Output port.
const OUT_RESET_N: u8 = 1 << 0;
const OUT_A20: u8 = 1 << 1;
const OUT_KBD_OBF: u8 = 1 << 4;
const OUT_AUX_OBF: u8 = 1 << 5;

// Commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT: u8 = 0xc0;
const CMD_READ_OUTPUT: u8 = 0xd0;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_WRITE_KBD_OBUF: u8 = 0xd2;
const CMD_WRITE_AUX_OBUF: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_PULSE_FIRST: u8 = 0xf0;

const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;

/// A real 8042 has a one-byte output buffer; a few more let a command's answer and a
/// queued byte coexist. Further bytes are dropped, as a controller that is not read drops them.
const OUT_QUEUE_MAX: usize = 16;

/// After the firmware's setup: keyboard interrupt on, system flag set, scan-code
/// translation on, the mouse port off.
const DEFAULT_CTR: u8 = CTR_KBD_INT | CTR_SYS | CTR_XLATE | CTR_AUX_DISABLE;

/// One byte waiting in the output buffer and the port it came from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutByte {
    pub value: u8,
    pub aux: bool,
}

/// The guest-visible state of the controller.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct I8042State {
    /// The controller command byte (read with 0x20, written with 0x60).
    pub ctr: u8,
    /// The output port (0xD0/0xD1) without its buffer-full bits, which are derived.
    pub output_port: u8,
    /// A command waiting for its parameter on the data port.
    pub pending_command: Option<u8>,
    /// Whether the last guest write went to the command port (status bit 3).
    pub last_write_was_command: bool,
    /// Bytes for the guest to read from the data port, oldest first.
    pub out_queue: Vec<OutByte>,
}

impl Default for I8042State {
    fn default() -> Self {
        Self {
            ctr: DEFAULT_CTR,
            output_port: OUT_RESET_N | OUT_A20,
            pending_command: None,
            last_write_was_command: false,
            out_queue: Vec::new(),
        }
    }
}

/// The i8042 controller on the port bus.
pub struct I8042Device {
    exit: Arc<ExitRequests>,
    irq: Arc<dyn Interrupt>,
    ctr: u8,
    output_port: u8,
    pending_command: Option<u8>,
    last_write_was_command: bool,
    out_queue: VecDeque<OutByte>,
}

impl I8042Device {
    /// Length of the port window at 0x60.
    pub const WINDOW_LEN: u64 = 5;

    /// A controller in its post-firmware state. It asks `exit` for a reset when the guest
    /// pulses the reset line, and pulses `irq` (IRQ1) when a byte for the keyboard
    /// channel becomes readable and the guest enabled the keyboard interrupt.
    pub fn new(exit: Arc<ExitRequests>, irq: Arc<dyn Interrupt>) -> Self {
        let s = I8042State::default();
        Self {
            exit,
            irq,
            ctr: s.ctr,
            output_port: s.output_port,
            pending_command: s.pending_command,
            last_write_was_command: s.last_write_was_command,
            out_queue: VecDeque::new(),
        }
    }

    /// A controller in a saved state.
    pub fn from_state(
        state: &I8042State,
        exit: Arc<ExitRequests>,
        irq: Arc<dyn Interrupt>,
    ) -> Result<Self, LegacyError> {
        let mut d = Self::new(exit, irq);
        d.restore(state)?;
        Ok(d)
    }

    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            output_port: self.output_port,
            pending_command: self.pending_command,
            last_write_was_command: self.last_write_was_command,
            out_queue: self.out_queue.iter().copied().collect(),
        }
    }

    /// Replaces the guest-visible state; on error the device is unchanged. A byte the
    /// guest had not read yet is signalled again.
    pub fn restore(&mut self, state: &I8042State) -> Result<(), LegacyError> {
        if state.out_queue.len() > OUT_QUEUE_MAX {
            return Err(LegacyError::InvalidState {
                device: "i8042",
                reason: format!(
                    "{} bytes in the output buffer, which holds {OUT_QUEUE_MAX}",
                    state.out_queue.len()
                ),
            });
        }
        self.ctr = state.ctr;
        self.output_port = state.output_port & !(OUT_KBD_OBF | OUT_AUX_OBF);
        self.pending_command = state.pending_command;
        self.last_write_was_command = state.last_write_was_command;
        self.out_queue = state.out_queue.iter().copied().collect();
        self.signal_front();
        Ok(())
    }

    fn status(&self) -> u8 {
        let mut s = STS_UNLOCKED;
        // The input buffer is consumed at once: IBF (bit 1) never reads set, so
        // Linux's kb_wait() before `reboot=k` and i8042_wait_write() never spin.
        if let Some(b) = self.out_queue.front() {
            s |= STS_OBF;
            if b.aux {
                s |= STS_AUX;
            }
        }
        if self.ctr & CTR_SYS != 0 {
            s |= STS_SYS;
        }
        if self.last_write_was_command {
            s |= STS_CMD;
        }
        s
    }

    fn output_port(&self) -> u8 {
        let mut p = self.output_port;
        match self.out_queue.front() {
            Some(b) if b.aux => p |= OUT_AUX_OBF,
            Some(_) => p |= OUT_KBD_OBF,
            None => {}
        }
        p
    }

    /// Pulses IRQ1 for the byte now at the head of the output buffer. A byte for the
    /// AUX channel would go to IRQ12, which is not wired.
    fn signal_front(&self) {
        if let Some(b) = self.out_queue.front() {
            if !b.aux && self.ctr & CTR_KBD_INT != 0 {
                // A failed pulse cannot be reported to the guest; the byte still reads.
                let _ = self.irq.trigger();
            }
        }
    }

    fn push(&mut self, value: u8, aux: bool) {
        if self.out_queue.len() >= OUT_QUEUE_MAX {
            return;
        }
        self.out_queue.push_back(OutByte { value, aux });
        if self.out_queue.len() == 1 {
            self.signal_front();
        }
    }

    fn read_data(&mut self) -> u8 {
        match self.out_queue.pop_front() {
            Some(b) => {
                self.signal_front();
                b.value
            }
            // An empty 8042 returns the last byte on real hardware; nothing relies on it.
            None => 0,
        }
    }

    fn write_output_port(&mut self, v: u8) {
        self.output_port = v & !(OUT_KBD_OBF | OUT_AUX_OBF);
        if v & OUT_RESET_N == 0 {
            self.exit.request(ExitRequest::Reset);
        }
    }

    fn write_command(&mut self, cmd: u8) {
        self.last_write_was_command = true;
        // A new command abandons one still waiting for its parameter.
        self.pending_command = None;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr, false),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT | CMD_WRITE_KBD_OBUF | CMD_WRITE_AUX_OBUF
            | CMD_WRITE_AUX => self.pending_command = Some(cmd),
            CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLE,
            CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLE,
            CMD_AUX_TEST | CMD_KBD_TEST => self.push(PORT_TEST_OK, false),
            CMD_SELF_TEST => {
                self.ctr |= CTR_SYS;
                self.push(SELF_TEST_OK, false);
            }
            CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLE,
            CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLE,
            // Input port: bit 7 set = keyboard not inhibited.
            CMD_READ_INPUT => self.push(0x80, false),
            CMD_READ_OUTPUT => self.push(self.output_port(), false),
            // Pulse output lines: a clear bit in the low nibble pulses that line, and
            // line 0 is the CPU reset (0xFE is the usual "pulse reset").
            c if c >= CMD_PULSE_FIRST && c & OUT_RESET_N == 0 => {
                self.exit.request(ExitRequest::Reset)
            }
            _ => {}
        }
    }

    fn write_data(&mut self, v: u8) {
        self.last_write_was_command = false;
        match self.pending_command.take() {
            Some(CMD_WRITE_CTR) => {
                let was = self.ctr;
                self.ctr = v;
                // Enabling the interrupt with a byte already waiting raises it.
                if was & CTR_KBD_INT == 0 {
                    self.signal_front();
                }
            }
            Some(CMD_WRITE_OUTPUT) => self.write_output_port(v),
            Some(CMD_WRITE_KBD_OBUF) => self.push(v, false),
            Some(CMD_WRITE_AUX_OBUF) => self.push(v, true),
            // To the mouse (0xD4) or, with no command pending, to the keyboard: nothing
            // is attached, so the byte goes nowhere.
            _ => {}
        }
    }
}

impl BusDevice for I8042Device {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        read_bytes(offset, Self::WINDOW_LEN, data, |o| match o {
            DATA => self.read_data(),
            STATUS_COMMAND => self.status(),
            _ => 0,
        });
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        write_bytes(offset, Self::WINDOW_LEN, data, |o, v| match o {
            DATA => self.write_data(v),
            STATUS_COMMAND => self.write_command(v),
            _ => {}
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::testutil::CountingIrq;

    fn dev() -> (I8042Device, Arc<ExitRequests>, Arc<CountingIrq>) {
        let exit = Arc::new(ExitRequests::new());
        let irq = Arc::new(CountingIrq::default());
        (I8042Device::new(exit.clone(), irq.clone()), exit, irq)
    }

    fn rd(d: &mut I8042Device, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    fn cmd(d: &mut I8042Device, c: u8) {
        d.write(4, &[c]);
    }

    /// Linux's i8042_command(): wait for IBF clear, send, wait for OBF, read.
    fn command_with_reply(d: &mut I8042Device, c: u8, param: Option<u8>) -> Option<u8> {
        assert_eq!(rd(d, 4) & 0x02, 0, "input buffer never full");
        cmd(d, c);
        if let Some(p) = param {
            assert_eq!(rd(d, 4) & 0x02, 0);
            d.write(0, &[p]);
        }
        (rd(d, 4) & STS_OBF != 0).then(|| rd(d, 0))
    }

    #[test]
    fn reset_by_pulse_command() {
        let (mut d, exit, _) = dev();
        // Linux's kb_wait(): status bit 1 must read clear.
        assert_eq!(rd(&mut d, 4) & 0x02, 0);
        cmd(&mut d, 0xfe);
        assert_eq!(exit.take(), Some(ExitRequest::Reset));
        // 0xFF pulses no line; 0xF1 pulses lines 1-3 but not reset.
        cmd(&mut d, 0xff);
        cmd(&mut d, 0xf1);
        assert_eq!(exit.take(), None);
        cmd(&mut d, 0xf0);
        assert_eq!(exit.take(), Some(ExitRequest::Reset));
    }

    #[test]
    fn reset_by_output_port() {
        let (mut d, exit, _) = dev();
        assert_eq!(command_with_reply(&mut d, 0xd0, None), Some(0x03));
        assert_eq!(command_with_reply(&mut d, 0xd1, Some(0x03)), None);
        assert_eq!(exit.take(), None, "bit 0 set: no reset");
        assert_eq!(command_with_reply(&mut d, 0xd1, Some(0x02)), None);
        assert_eq!(exit.take(), Some(ExitRequest::Reset));
        assert_eq!(command_with_reply(&mut d, 0xd0, None), Some(0x02));
    }

    #[test]
    fn self_test_and_port_tests() {
        let (mut d, exit, irq) = dev();
        assert_eq!(command_with_reply(&mut d, 0xaa, None), Some(0x55));
        assert_eq!(command_with_reply(&mut d, 0xab, None), Some(0x00));
        assert_eq!(command_with_reply(&mut d, 0xa9, None), Some(0x00));
        assert_eq!(rd(&mut d, 4) & STS_OBF, 0, "flushed");
        assert_eq!(rd(&mut d, 4) & STS_SYS, STS_SYS);
        assert_eq!(rd(&mut d, 4) & STS_CMD, STS_CMD);
        assert_eq!(irq.count(), 3, "keyboard interrupt on by default");
        assert_eq!(exit.peek(), None);
    }

    #[test]
    fn command_byte_round_trips_and_ports_toggle() {
        let (mut d, _, irq) = dev();
        assert_eq!(command_with_reply(&mut d, 0x20, None), Some(DEFAULT_CTR));
        assert_eq!(command_with_reply(&mut d, 0x60, Some(0x44)), None);
        assert_eq!(rd(&mut d, 4) & STS_CMD, 0, "last write was data");
        let before = irq.count();
        assert_eq!(command_with_reply(&mut d, 0x20, None), Some(0x44));
        assert_eq!(irq.count(), before, "keyboard interrupt now off");
        cmd(&mut d, 0xad);
        cmd(&mut d, 0xa7);
        assert_eq!(command_with_reply(&mut d, 0x20, None), Some(0x44 | 0x30));
        cmd(&mut d, 0xae);
        cmd(&mut d, 0xa8);
        assert_eq!(command_with_reply(&mut d, 0x20, None), Some(0x44));
    }

    #[test]
    fn aux_loopback_sets_the_aux_bit_and_devices_are_absent() {
        let (mut d, _, irq) = dev();
        cmd(&mut d, 0xd3);
        d.write(0, &[0x5a]);
        assert_eq!(rd(&mut d, 4) & (STS_OBF | STS_AUX), STS_OBF | STS_AUX);
        assert_eq!(rd(&mut d, 0), 0x5a);
        assert_eq!(irq.count(), 0, "IRQ12 is not wired");
        // A byte to the keyboard or the mouse gets no answer.
        d.write(0, &[0xf2]);
        cmd(&mut d, 0xd4);
        d.write(0, &[0xf2]);
        assert_eq!(rd(&mut d, 4) & STS_OBF, 0);
        assert_eq!(rd(&mut d, 0), 0);
        // Enabling the keyboard interrupt with a byte waiting raises it.
        command_with_reply(&mut d, 0x60, Some(0x00));
        cmd(&mut d, 0xd2);
        d.write(0, &[0x11]);
        assert_eq!(irq.count(), 0);
        cmd(&mut d, 0x60);
        d.write(0, &[CTR_KBD_INT]);
        assert_eq!(irq.count(), 1);
        assert_eq!(rd(&mut d, 0), 0x11);
    }

    #[test]
    fn output_buffer_is_bounded_and_odd_accesses_are_harmless() {
        let (mut d, exit, _) = dev();
        for _ in 0..100 {
            cmd(&mut d, 0x20);
        }
        let mut n = 0;
        while rd(&mut d, 4) & STS_OBF != 0 {
            rd(&mut d, 0);
            n += 1;
        }
        assert_eq!(n, OUT_QUEUE_MAX);
        let mut four = [0u8; 4];
        d.read(1, &mut four);
        assert_eq!(four, [0, 0, 0, STS_UNLOCKED | STS_SYS | STS_CMD]);
        d.read(3, &mut four);
        assert_eq!(four[2..], [0xff, 0xff]);
        d.write(2, &[0xfe, 0xfe, 0xfe]);
        assert_eq!(exit.take(), Some(ExitRequest::Reset), "third byte hit 0x64");
        d.write(u64::MAX, &[0xfe; 4]);
        assert_eq!(exit.take(), None);
    }

    #[test]
    fn state_round_trips() {
        let (mut d, exit, _) = dev();
        cmd(&mut d, 0x60);
        cmd(&mut d, 0xaa);
        cmd(&mut d, 0xd1);
        let s = d.state();
        assert_eq!(s.pending_command, Some(0xd1));
        assert_eq!(
            s.out_queue,
            [OutByte {
                value: 0x55,
                aux: false
            }]
        );
        let irq = Arc::new(CountingIrq::default());
        let mut e = I8042Device::from_state(&s, exit.clone(), irq.clone())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.state(), s);
        assert_eq!(irq.count(), 1, "the unread byte is signalled again");
        e.write(0, &[0x00]);
        assert_eq!(exit.take(), Some(ExitRequest::Reset));
        let mut bad = s.clone();
        bad.out_queue = vec![
            OutByte {
                value: 0,
                aux: false
            };
            OUT_QUEUE_MAX + 1
        ];
        assert!(e.restore(&bad).is_err());
        assert_eq!(e.state().out_queue, s.out_queue);
    }
}
