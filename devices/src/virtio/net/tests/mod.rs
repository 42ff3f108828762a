//! virtio-net unit tests: a fake backend and event sink, helpers to build frames and
//! control commands, and the test groups.

use super::ctrl::*;
use super::testutil::{memory, read, Irq, Vq};
use super::*;
use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use vm_memory::{Bytes, GuestAddress};

const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

#[derive(Default)]
struct FakeState {
    to_guest: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
    offloads: Vec<Offloads>,
    hdr_len: usize,
}

struct FakeBackend {
    state: Arc<Mutex<FakeState>>,
    supported: Offloads,
}

impl NetBackend for FakeBackend {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state.lock().unwrap().to_guest.pop_front() {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.state.lock().unwrap().sent.push(frame.to_vec());
        Ok(())
    }
    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()> {
        self.state.lock().unwrap().hdr_len = len;
        Ok(())
    }
    fn supported_offloads(&self) -> Offloads {
        self.supported
    }
    fn set_offloads(&mut self, o: Offloads) -> io::Result<()> {
        self.state.lock().unwrap().offloads.push(o);
        Ok(())
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(42)
    }
}

#[derive(Default)]
struct Events(AtomicUsize);

impl NetEvents for Events {
    fn rx_filter_changed(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct Env {
    state: Arc<Mutex<FakeState>>,
    irq: Arc<Irq>,
    events: Arc<Events>,
}

fn device(supported: Offloads) -> (VirtioNet, Env) {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let events = Arc::new(Events::default());
    let dev = VirtioNet::new(
        Box::new(FakeBackend {
            state: state.clone(),
            supported,
        }),
        NetConfig {
            name: "net0".into(),
            mac: MAC,
        },
        events.clone(),
    );
    let env = Env {
        state,
        irq: Arc::new(Irq::default()),
        events,
    };
    (dev, env)
}

fn activate(dev: &mut VirtioNet, env: &Env, mem: &GuestMemoryMmap, vqs: &[&Vq], features: u64) {
    dev.ack_features(features);
    let queues = vqs.iter().map(|v| v.queue()).collect();
    dev.activate(mem.clone(), env.irq.clone(), queues).unwrap();
}

const BASIC: u64 = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_CTRL_VQ | VIRTIO_NET_F_CTRL_RX;

fn eth_frame(dst: [u8; 6], len: usize, tag: u8) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    while f.len() < len {
        f.push((f.len() as u8) ^ tag);
    }
    f
}

fn with_hdr(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; VNET_HDR_LEN];
    v[0] = 1; // NEEDS_CSUM: the header passes through untouched
    v.extend_from_slice(frame);
    v
}

/// Sends a control command; returns the ack byte (0xee if none was written).
fn ctrl(
    dev: &mut VirtioNet,
    mem: &GuestMemoryMmap,
    cq: &mut Vq,
    at: u64,
    class: u8,
    cmd: u8,
    data: &[u8],
) -> u8 {
    let mut req = vec![class, cmd];
    req.extend_from_slice(data);
    mem.write_slice(&req, GuestAddress(at)).unwrap();
    mem.write_obj(0xeeu8, GuestAddress(at + 0x800)).unwrap();
    cq.add(&[
        (at, 2, false),
        (at + 2, data.len() as u32, false),
        (at + 0x800, 1, true),
    ]);
    dev.process_queue(CTRL_QUEUE).unwrap();
    mem.read_obj(GuestAddress(at + 0x800)).unwrap()
}

fn mac_table(uni: &[[u8; 6]], multi: &[[u8; 6]]) -> Vec<u8> {
    let mut d = (uni.len() as u32).to_le_bytes().to_vec();
    uni.iter().for_each(|m| d.extend_from_slice(m));
    d.extend_from_slice(&(multi.len() as u32).to_le_bytes());
    multi.iter().for_each(|m| d.extend_from_slice(m));
    d
}

mod ctrl;
mod datapath;
mod device;
mod state;
