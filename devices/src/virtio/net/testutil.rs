//! Driver-side helpers shared by the virtio device tests.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use crate::virtio::VirtioInterrupt;

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const VQ_SIZE: u16 = 64;

#[derive(Default)]
pub struct Irq {
    pub queues: Mutex<Vec<u16>>,
    pub config: AtomicUsize,
}

impl VirtioInterrupt for Irq {
    fn trigger_queue(&self, queue: u16) -> io::Result<()> {
        self.queues.lock().unwrap().push(queue);
        Ok(())
    }
    fn trigger_config(&self) -> io::Result<()> {
        self.config.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A driver-side queue: chains are written at increasing descriptor indices.
pub struct Vq<'a> {
    pub mock: MockSplitQueue<'a, GuestMemoryMmap>,
    next: u16,
}

impl<'a> Vq<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, at: u64) -> Self {
        Vq {
            mock: MockSplitQueue::create(mem, GuestAddress(at), VQ_SIZE),
            next: 0,
        }
    }

    /// Offers a chain of (address, length, device-writable) buffers.
    pub fn add(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let start = self.next;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { F_WRITE } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= F_NEXT;
                }
                SplitDescriptor::new(addr, len, flags, start + i as u16 + 1).into()
            })
            .collect();
        self.mock.add_desc_chains(&descs, start).unwrap();
        self.next += bufs.len() as u16;
        start
    }

    /// (head, len) of every used entry so far.
    pub fn used(&self) -> Vec<(u16, u32)> {
        let n = self.mock.used().idx().load();
        (0..n)
            .map(|i| {
                let e = self.mock.used().ring().ref_at(i as usize).unwrap().load();
                (e.id() as u16, e.len())
            })
            .collect()
    }

    pub fn queue(&self) -> Queue {
        self.mock.create_queue().unwrap()
    }
}

pub fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

pub fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}
