//! MSI-X (PCI Local Bus 3.0, 6.8.2): the capability's control bits, the vector table
//! and the pending-bit array, with per-vector and function masking.
//!
//! The model never builds interrupt messages itself. It reports to the machine
//! through [`MsiTrigger`]: every change of a vector's message or effective mask as
//! `update_vector` (the machine reprograms that vector's KVM GSI route), and every
//! interrupt to deliver as `trigger` (the machine writes that vector's irqfd). An
//! interrupt raised while its vector is masked sets the vector's pending bit instead,
//! and is delivered when the vector is unmasked.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::PciError;

pub const MSIX_CAP_ID: u8 = 0x11;
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Table Size is an 11-bit field holding N-1.
pub const MSIX_MAX_VECTORS: u16 = 2048;

const CTRL_ENABLE: u16 = 1 << 15;
const CTRL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_CTRL_MASKED: u32 = 1;

/// The message a vector sends: a DWORD write of `data` to `addr`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsiMessage {
    pub addr: u64,
    pub data: u32,
}

/// The machine's side of MSI-X, implemented by the vmm (KVM GSI routes and irqfds)
/// and by counters in tests. Called with the device's locks held: it must not call
/// back into the device.
pub trait MsiTrigger: Send + Sync {
    /// Vector `index` now sends `msg`, or is masked (by its own mask bit, the function
    /// mask, or MSI-X being disabled). Called on every change of either.
    fn update_vector(&self, index: u16, msg: MsiMessage, masked: bool);
    /// Deliver vector `index`. Only called while the vector is unmasked, after an
    /// `update_vector` that reported its current message.
    fn trigger(&self, index: u16) -> std::io::Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl Entry {
    fn word(&self, i: usize) -> u32 {
        match i {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.ctrl,
        }
    }

    fn set_word(&mut self, i: usize, v: u32) {
        match i {
            // The message address is dword aligned: its low two bits are hardwired to 0.
            0 => self.addr_lo = v & !0x3,
            1 => self.addr_hi = v,
            2 => self.data = v,
            // Only the mask bit is defined.
            _ => self.ctrl = v & VECTOR_CTRL_MASKED,
        }
    }

    fn message(&self) -> MsiMessage {
        MsiMessage {
            addr: (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo),
            data: self.data,
        }
    }
}

/// Plain state, for migration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsixState {
    entries: Vec<Entry>,
    pending: Vec<bool>,
    enabled: bool,
    function_mask: bool,
}

impl MsixState {
    /// The number of vectors, checked as [`Msix::restore`] checks it.
    pub fn vectors(&self) -> Result<u16, PciError> {
        let n = self.entries.len();
        if n == 0 || n > usize::from(MSIX_MAX_VECTORS) || self.pending.len() != n {
            return Err(PciError::MsixVectors(n.min(usize::from(u16::MAX)) as u16));
        }
        Ok(n as u16)
    }
}

/// One function's MSI-X table, PBA and control bits.
pub struct Msix {
    state: MsixState,
    trigger: Arc<dyn MsiTrigger>,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix").field("state", &self.state).finish()
    }
}

impl Msix {
    /// `vectors` table entries (1..=2048), all masked, MSI-X disabled.
    pub fn new(vectors: u16, trigger: Arc<dyn MsiTrigger>) -> Result<Self, PciError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(PciError::MsixVectors(vectors));
        }
        let n = usize::from(vectors);
        let masked = Entry {
            addr_lo: 0,
            addr_hi: 0,
            data: 0,
            ctrl: VECTOR_CTRL_MASKED,
        };
        Ok(Self {
            state: MsixState {
                entries: vec![masked; n],
                pending: vec![false; n],
                enabled: false,
                function_mask: false,
            },
            trigger,
        })
    }

    pub fn num_vectors(&self) -> u16 {
        self.state.entries.len() as u16
    }

    /// Bytes the table occupies in its BAR.
    pub fn table_len(&self) -> u64 {
        self.state.entries.len() as u64 * MSIX_TABLE_ENTRY_SIZE
    }

    /// Bytes the PBA occupies in its BAR (whole qwords).
    pub fn pba_len(&self) -> u64 {
        (self.state.entries.len() as u64).div_ceil(64) * 8
    }

    /// The capability after its ID and next pointer, with its write mask, for
    /// [`super::PciConfiguration::add_capability`]. Offsets must be 8-byte aligned.
    pub fn capability(
        &self,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&(self.num_vectors() - 1).to_le_bytes());
        body.extend_from_slice(&((table_offset & !0x7) | u32::from(table_bar & 0x7)).to_le_bytes());
        body.extend_from_slice(&((pba_offset & !0x7) | u32::from(pba_bar & 0x7)).to_le_bytes());
        let wmask = ((CTRL_ENABLE | CTRL_FUNCTION_MASK).to_le_bytes()).to_vec();
        (body, wmask)
    }

    pub fn enabled(&self) -> bool {
        self.state.enabled
    }

    pub fn function_masked(&self) -> bool {
        self.state.function_mask
    }

    /// Whether vector `index` would be held pending now (true for a vector that does
    /// not exist).
    pub fn is_masked(&self, index: u16) -> bool {
        self.state
            .entries
            .get(usize::from(index))
            .is_none_or(|e| self.effective_mask(e))
    }

    pub fn is_pending(&self, index: u16) -> bool {
        self.state
            .pending
            .get(usize::from(index))
            .copied()
            .unwrap_or(false)
    }

    fn effective_mask(&self, e: &Entry) -> bool {
        !self.state.enabled || self.state.function_mask || e.ctrl & VECTOR_CTRL_MASKED != 0
    }

    fn snapshot(&self, index: usize) -> Option<(MsiMessage, bool)> {
        let e = self.state.entries.get(index)?;
        Some((e.message(), self.effective_mask(e)))
    }

    /// Reports `index`'s change against `before`, then delivers its pending interrupt
    /// if it is now unmasked.
    fn reconcile(&mut self, index: usize, before: Option<(MsiMessage, bool)>) {
        let Some(after) = self.snapshot(index) else {
            return;
        };
        if before != Some(after) {
            self.trigger.update_vector(index as u16, after.0, after.1);
        }
        if !after.1 && self.state.pending[index] {
            self.state.pending[index] = false;
            // The guest sees the interrupt or not; a failed irqfd write has nowhere
            // better to go from a register write.
            let _ = self.trigger.trigger(index as u16);
        }
    }

    /// The guest wrote the capability's Message Control word.
    pub fn set_control(&mut self, ctrl: u16) {
        let enabled = ctrl & CTRL_ENABLE != 0;
        let function_mask = ctrl & CTRL_FUNCTION_MASK != 0;
        if enabled == self.state.enabled && function_mask == self.state.function_mask {
            return;
        }
        let before: Vec<_> = (0..self.state.entries.len())
            .map(|i| self.snapshot(i))
            .collect();
        self.state.enabled = enabled;
        self.state.function_mask = function_mask;
        if !enabled {
            // Pending bits are meaningless without MSI-X; INTx takes over.
            self.state.pending.fill(false);
        }
        for (i, b) in before.into_iter().enumerate() {
            self.reconcile(i, b);
        }
    }

    /// Message Control as the capability holds it (Table Size included).
    pub fn control(&self) -> u16 {
        let mut c = self.num_vectors() - 1;
        if self.state.enabled {
            c |= CTRL_ENABLE;
        }
        if self.state.function_mask {
            c |= CTRL_FUNCTION_MASK;
        }
        c
    }

    /// A read of the table at `offset` (any size, any alignment; outside reads 0).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|off| {
                    let e = self.state.entries.get(usize::try_from(off / 16).ok()?)?;
                    let word = e.word((off % 16 / 4) as usize);
                    Some((word >> (8 * (off % 4))) as u8)
                })
                .unwrap_or(0);
        }
    }

    /// A write to the table at `offset`; each touched vector is reconciled once the
    /// whole access is applied, so a qword write of address and data is one update.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let mut touched: Vec<(usize, Option<(MsiMessage, bool)>)> = Vec::new();
        for (i, b) in data.iter().enumerate() {
            let Some(off) = offset.checked_add(i as u64) else {
                break;
            };
            let Ok(index) = usize::try_from(off / 16) else {
                break;
            };
            if index >= self.state.entries.len() {
                break;
            }
            if !touched.iter().any(|(t, _)| *t == index) {
                touched.push((index, self.snapshot(index)));
            }
            let w = (off % 16 / 4) as usize;
            let shift = 8 * (off % 4);
            let e = &mut self.state.entries[index];
            let v = (e.word(w) & !(0xff << shift)) | (u32::from(*b) << shift);
            e.set_word(w, v);
        }
        for (index, before) in touched {
            self.reconcile(index, before);
        }
    }

    /// A read of the pending-bit array (read-only: writes are ignored).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let mut v = 0u8;
            if let Some(first) = offset.checked_add(i as u64).and_then(|o| o.checked_mul(8)) {
                for bit in 0..8 {
                    let pending = usize::try_from(first + bit)
                        .ok()
                        .and_then(|v| self.state.pending.get(v))
                        .copied()
                        .unwrap_or(false);
                    if pending {
                        v |= 1 << bit;
                    }
                }
            }
            *b = v;
        }
    }

    /// Raise vector `index`: deliver it now, or set its pending bit while it is masked.
    /// Does nothing while MSI-X is disabled (the function uses INTx then) or for a
    /// vector the table does not have.
    pub fn fire(&mut self, index: u16) -> std::io::Result<()> {
        let i = usize::from(index);
        if !self.state.enabled || i >= self.state.entries.len() {
            return Ok(());
        }
        if self.effective_mask(&self.state.entries[i]) {
            self.state.pending[i] = true;
            return Ok(());
        }
        self.trigger.trigger(index)
    }

    pub fn state(&self) -> MsixState {
        self.state.clone()
    }

    /// Restores migrated state and reports every vector to the machine.
    pub fn restore(&mut self, state: MsixState) -> Result<(), PciError> {
        let n = state.entries.len();
        if n == 0 || n > usize::from(MSIX_MAX_VECTORS) || state.pending.len() != n {
            return Err(PciError::MsixVectors(n.min(usize::from(u16::MAX)) as u16));
        }
        self.state = state;
        for i in 0..n {
            self.reconcile(i, None);
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::Mutex;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) enum Event {
        Update(u16, MsiMessage, bool),
        Trigger(u16),
    }

    /// Records every call, in order.
    #[derive(Default)]
    pub(crate) struct Recorder(pub(crate) Mutex<Vec<Event>>);

    impl Recorder {
        pub(crate) fn take(&self) -> Vec<Event> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    impl MsiTrigger for Recorder {
        fn update_vector(&self, index: u16, msg: MsiMessage, masked: bool) {
            self.0
                .lock()
                .unwrap()
                .push(Event::Update(index, msg, masked));
        }
        fn trigger(&self, index: u16) -> std::io::Result<()> {
            self.0.lock().unwrap().push(Event::Trigger(index));
            Ok(())
        }
    }

    fn write32(m: &mut Msix, off: u64, v: u32) {
        m.write_table(off, &v.to_le_bytes());
    }

    fn read32(m: &Msix, off: u64) -> u32 {
        let mut b = [0; 4];
        m.read_table(off, &mut b);
        u32::from_le_bytes(b)
    }

    const MSG: MsiMessage = MsiMessage {
        addr: 0xfee0_1000,
        data: 0x4041,
    };

    fn program(m: &mut Msix, v: u64) {
        write32(m, v * 16, MSG.addr as u32);
        write32(m, v * 16 + 4, 0);
        write32(m, v * 16 + 8, MSG.data);
    }

    #[test]
    fn vector_count_is_checked() {
        let r = Arc::new(Recorder::default());
        assert!(Msix::new(0, r.clone()).is_err());
        assert!(Msix::new(2049, r.clone()).is_err());
        let m = Msix::new(3, r).unwrap();
        assert_eq!(m.table_len(), 48);
        assert_eq!(m.pba_len(), 8);
        let (body, wmask) = m.capability(0, 0x4000, 0, 0x5000);
        assert_eq!(body, [2, 0, 0x00, 0x40, 0, 0, 0x00, 0x50, 0, 0]);
        assert_eq!(wmask, [0, 0xc0]);
    }

    #[test]
    fn table_starts_masked_and_keeps_reserved_bits_zero() {
        let r = Arc::new(Recorder::default());
        let mut m = Msix::new(2, r.clone()).unwrap();
        assert_eq!(read32(&m, 12), 1);
        assert_eq!(read32(&m, 28), 1);
        write32(&mut m, 0, 0xfee0_0003);
        assert_eq!(read32(&m, 0), 0xfee0_0000);
        write32(&mut m, 12, 0xffff_ffff);
        assert_eq!(read32(&m, 12), 1);
        // Out of range: reads 0, writes ignored, no panic.
        assert_eq!(read32(&m, 32), 0);
        write32(&mut m, 32, 5);
        m.write_table(u64::MAX - 1, &[1, 2, 3, 4]);
        m.read_table(u64::MAX - 1, &mut [0; 4]);
        m.read_pba(u64::MAX, &mut [0; 8]);
        // MSI-X disabled: every change is reported masked.
        assert!(r
            .take()
            .iter()
            .all(|e| matches!(e, Event::Update(_, _, true))));
    }

    #[test]
    fn qword_write_updates_a_vector_once() {
        let r = Arc::new(Recorder::default());
        let mut m = Msix::new(2, r.clone()).unwrap();
        m.write_table(16, &0x0000_0001_fee0_0000u64.to_le_bytes());
        assert_eq!(
            r.take(),
            [Event::Update(
                1,
                MsiMessage {
                    addr: 0x1_fee0_0000,
                    data: 0
                },
                true
            )]
        );
    }

    #[test]
    fn masked_vector_sets_pending_and_fires_on_unmask() {
        let r = Arc::new(Recorder::default());
        let mut m = Msix::new(4, r.clone()).unwrap();
        // Disabled: nothing happens, nothing pends.
        m.fire(1).unwrap();
        assert!(!m.is_pending(1));
        m.set_control(CTRL_ENABLE);
        program(&mut m, 1);
        r.take();
        m.fire(1).unwrap();
        assert!(m.is_pending(1));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(pba[0], 0b10);
        m.write_table(8 * 1024, &[0xff]); // ignored: beyond the table
        assert!(r.take().is_empty(), "a masked vector does not fire");

        write32(&mut m, 16 + 12, 0); // unmask
        assert_eq!(
            r.take(),
            [Event::Update(1, MSG, false), Event::Trigger(1)],
            "route first, then the pending interrupt"
        );
        assert!(!m.is_pending(1));
        m.fire(1).unwrap();
        assert_eq!(r.take(), [Event::Trigger(1)]);
        m.fire(9).unwrap(); // no such vector
        assert!(r.take().is_empty());
    }

    #[test]
    fn function_mask_holds_every_vector() {
        let r = Arc::new(Recorder::default());
        let mut m = Msix::new(2, r.clone()).unwrap();
        program(&mut m, 0);
        write32(&mut m, 12, 0);
        m.set_control(CTRL_ENABLE);
        assert_eq!(r.take().last(), Some(&Event::Update(0, MSG, false)));
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        assert_eq!(r.take(), [Event::Update(0, MSG, true)]);
        m.fire(0).unwrap();
        assert!(m.is_pending(0));
        assert!(r.take().is_empty());
        m.set_control(CTRL_ENABLE);
        assert_eq!(r.take(), [Event::Update(0, MSG, false), Event::Trigger(0)]);
        assert_eq!(m.control(), CTRL_ENABLE | 1);
        // Disabling drops pending bits: INTx takes over.
        m.set_control(CTRL_ENABLE | CTRL_FUNCTION_MASK);
        m.fire(0).unwrap();
        m.set_control(0);
        assert!(!m.is_pending(0));
    }

    #[test]
    fn state_round_trips() {
        let r = Arc::new(Recorder::default());
        let mut m = Msix::new(2, r.clone()).unwrap();
        program(&mut m, 1);
        write32(&mut m, 28, 0);
        m.set_control(CTRL_ENABLE);
        let s = m.state();
        let r2 = Arc::new(Recorder::default());
        let mut m2 = Msix::new(2, r2.clone()).unwrap();
        m2.restore(s).unwrap();
        assert!(r2.take().contains(&Event::Update(1, MSG, false)));
        assert_eq!(read32(&m2, 16), MSG.addr as u32);
    }
}
