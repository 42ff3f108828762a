//! virtio-blk (device type 2, virtio 1.2 section 5.2) over a [`block::RawImage`].
//!
//! A request is one descriptor chain: a 16-byte header (type, ioprio, sector) the device
//! reads, then data (device-readable for writes, discard and write-zeroes segments;
//! device-writable for reads and GET_ID), then one device-writable status byte, the last
//! byte of the chain. Framing is not assumed (virtio 1.x): the header may share or span
//! descriptors, so the chain is treated as two byte streams, readable then writable.
//!
//! Requests are asynchronous: `process_queue` parses and submits them to the image's
//! engine, tagged with a request id; `process_event` (the engine's completion fd)
//! finishes them: status byte, used ring, queue interrupt. A host error is handled by
//! the `rerror=`/`werror=` policy: report (IOERR to the guest), ignore (OK), or stop —
//! the request is held, the machine is told through [`BlockErrorHandler`] to pause into
//! `io-error`, and [`VirtioBlock::retry_held`] resubmits it on `cont`.
//!
//! A malformed chain fails its request with IOERR when there is a status byte to write,
//! and is otherwise returned to the guest untouched (used length 0); nothing a guest
//! puts in a chain panics the device or reaches memory outside the guest's.
//!
//! The module is split by concern; each piece owns one part of a request's life:
//! - `request`: parsing a descriptor chain into a `ReqOp` (pure; guest memory only);
//! - `engine`: submission to the image's I/O engine, completion, used ring, interrupts;
//! - `config`: feature bits, the config space and the device's construction parameters;
//! - `errors`: the `rerror=`/`werror=` policy and the QMP BLOCK_IO_ERROR surface.
//!
//! Dependencies run one way: `errors` <- `config` <- `request` <- `engine`; this file
//! holds the device state they share ([`VirtioBlock`], `Active`) and the
//! [`VirtioDevice`] impl that dispatches into them. Nothing here takes a lock: the
//! device is driven from one thread at a time (`&mut self`).

mod config;
mod engine;
mod errors;
mod request;

pub use config::{
    VirtioBlockConfig, MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SECTORS,
    MAX_WRITE_ZEROES_SEG, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES,
};

pub use errors::{
    BlockErrorHandler, BlockIoError, ErrorPolicy, IoErrorAction, IoOperation, VirtioBlockError,
};

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;

use crate::GuestMemoryMmap;
use block::{RawImage, StatsHandle, SECTOR_SIZE};
use virtio_queue::{Queue, QueueT};

use super::queue_util::read_config_bytes;
use config::{build_config, CONFIG_LEN};
use engine::Request;

use super::{
    state_kind, ActivateError, DeviceError, VirtioDevice, VirtioDeviceState, VirtioInterrupt,
    TYPE_BLOCK, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

/// Request types (5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The flag of a write-zeroes segment that allows deallocating the range.
pub const VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// GET_ID returns this many bytes (not NUL-terminated when the serial fills them).
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// The token of the engine's completion fd in `event_fds`/`process_event`.
pub const COMPLETION_TOKEN: u32 = 0;

pub const DEFAULT_QUEUE_SIZE: u16 = 256;

/// The guest-visible state of a virtio-blk device, for migration. The config space has
/// nothing the driver can write (no CONFIG_WCE), and the queues are the transport's, so
/// the negotiated features are all of it. Saved only with no request in flight or held:
/// a popped request's chain cannot be rebuilt from its head on the destination.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockState {
    pub acked_features: u64,
}

/// What the driver handed over at DRIVER_OK.
struct Active {
    /// Shared with the buffers of requests in flight, which keep it mapped.
    mem: Arc<GuestMemoryMmap>,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
    /// Queues with buffers added to the used ring since their last interrupt check.
    used: Vec<bool>,
}

pub struct VirtioBlock {
    disk: RawImage,
    cfg: VirtioBlockConfig,
    stats: StatsHandle,
    avail_features: u64,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    error_handler: Option<Arc<dyn BlockErrorHandler>>,
    active: Option<Active>,
    inflight: HashMap<u64, Request>,
    held: Vec<Request>,
    next_id: u64,
    warned_malformed: bool,
}

impl std::fmt::Debug for VirtioBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("id", &self.cfg.id)
            .field("disk", &self.disk)
            .field("inflight", &self.inflight.len())
            .field("held", &self.held.len())
            .finish()
    }
}

impl VirtioBlock {
    /// A virtio-blk device serving `disk`.
    pub fn new(disk: RawImage, cfg: VirtioBlockConfig) -> Result<Self, VirtioBlockError> {
        if cfg.num_queues == 0 || cfg.num_queues > 1024 {
            return Err(VirtioBlockError::NumQueues(cfg.num_queues));
        }
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size < 2 {
            return Err(VirtioBlockError::QueueSize(cfg.queue_size));
        }
        let ro = disk.read_only();
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_F_RING_INDIRECT_DESC
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE
            | VIRTIO_BLK_F_FLUSH;
        if ro {
            features |= VIRTIO_BLK_F_RO;
        } else {
            features |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        if cfg.num_queues > 1 {
            features |= VIRTIO_BLK_F_MQ;
        }
        if cfg.event_idx {
            features |= VIRTIO_F_RING_EVENT_IDX;
        }
        let config = build_config(&disk, &cfg);
        Ok(VirtioBlock {
            stats: disk.stats(),
            disk,
            cfg,
            avail_features: features,
            acked_features: 0,
            config,
            error_handler: None,
            active: None,
            inflight: HashMap::new(),
            held: Vec::new(),
            next_id: 0,
            warned_malformed: false,
        })
    }

    /// Where host I/O errors are reported (without one, `stop` still holds requests).
    pub fn set_error_handler(&mut self, handler: Arc<dyn BlockErrorHandler>) {
        self.error_handler = Some(handler);
    }

    /// The counters for query-blockstats.
    pub fn stats(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// The image (path, size, modes for query-block).
    pub fn disk(&self) -> &RawImage {
        &self.disk
    }

    pub fn config(&self) -> &VirtioBlockConfig {
        &self.cfg
    }

    /// Capacity in 512-byte sectors, as the guest sees it.
    pub fn capacity(&self) -> u64 {
        self.disk.size() / SECTOR_SIZE
    }

    /// Requests held by a `stop` error policy, waiting for `retry_held`.
    pub fn held_requests(&self) -> usize {
        self.held.len()
    }

    /// Requests submitted to the image and not completed yet.
    pub fn inflight_requests(&self) -> usize {
        self.inflight.len()
    }

    /// Waits for the requests in flight and completes them (status, used ring,
    /// interrupt), so [`Self::state`] can be taken: the machine calls it once the vCPUs
    /// are paused for migration.
    pub fn quiesce(&mut self) -> Result<(), DeviceError> {
        self.disk
            .drain()
            .map_err(|e| DeviceError::Backend(format!("{}: draining: {e}", self.cfg.id)))?;
        self.process_event(COMPLETION_TOKEN)
    }

    /// The state to migrate; fails while requests are in flight or held by a `stop`
    /// error policy (see [`BlockState`]).
    pub fn state(&self) -> Result<BlockState, VirtioBlockError> {
        if !self.inflight.is_empty() || !self.held.is_empty() {
            return Err(VirtioBlockError::InvalidState(format!(
                "{} requests in flight and {} held after an error; quiesce (or resume) first",
                self.inflight.len(),
                self.held.len()
            )));
        }
        Ok(BlockState {
            acked_features: self.acked_features,
        })
    }

    /// Loads saved state into a device that is not active yet.
    pub fn restore(&mut self, state: &BlockState) -> Result<(), VirtioBlockError> {
        if self.active.is_some() {
            return Err(VirtioBlockError::InvalidState(
                "restore into a device the driver already started".into(),
            ));
        }
        let extra = state.acked_features & !self.avail_features;
        if extra != 0 {
            return Err(VirtioBlockError::InvalidState(format!(
                "acked features {extra:#x} are not offered by this device"
            )));
        }
        self.acked_features = state.acked_features;
        Ok(())
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.cfg.queue_size; usize::from(self.cfg.num_queues)]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Nothing is writable without CONFIG_WCE, which is not offered.
        log::debug!(
            "{}: ignored config write of {} bytes at {offset}",
            self.cfg.id,
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<dyn VirtioInterrupt>,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        // A driver may use fewer queues than offered (Linux: one per CPU at most).
        if queues.is_empty() || queues.len() > usize::from(self.cfg.num_queues) {
            return Err(ActivateError::QueueCount {
                got: queues.len(),
                want: usize::from(self.cfg.num_queues),
            });
        }
        let event_idx = self.acked_features & VIRTIO_F_RING_EVENT_IDX != 0;
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let used = vec![false; queues.len()];
        self.active = Some(Active {
            mem: Arc::new(mem),
            interrupt,
            queues,
            used,
        });
        Ok(())
    }

    fn reset(&mut self) {
        // The guest may reuse its buffers as soon as the reset completes: no read may
        // land in them afterwards, so wait for what is in flight.
        if let Err(e) = self.disk.drain() {
            log::error!("{}: reset while I/O is stuck: {e}", self.cfg.id);
        }
        while self.disk.next_completion().is_some() {}
        self.inflight.clear();
        self.held.clear();
        self.active = None;
        self.acked_features = 0;
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceError> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let result = self.process_queue_on(&mut active, index);
        self.active = Some(active);
        result
    }

    fn event_fds(&self) -> Vec<(RawFd, u32)> {
        vec![(self.disk.completion_fd(), COMPLETION_TOKEN)]
    }

    fn process_event(&mut self, token: u32) -> Result<(), DeviceError> {
        if token != COMPLETION_TOKEN {
            return Ok(());
        }
        let Some(mut active) = self.active.take() else {
            // Completions after a reset belong to nobody.
            while self.disk.next_completion().is_some() {}
            return Ok(());
        };
        let result = self.complete_on(&mut active);
        self.active = Some(active);
        result
    }

    fn active_queues(&self) -> &[Queue] {
        self.active.as_ref().map_or(&[], |a| &a.queues)
    }

    fn save_state(&self) -> Result<VirtioDeviceState, String> {
        self.state()
            .map(VirtioDeviceState::Block)
            .map_err(|e| e.to_string())
    }

    fn restore_state(&mut self, state: &VirtioDeviceState) -> Result<(), String> {
        match state {
            VirtioDeviceState::Block(s) => self.restore(s).map_err(|e| e.to_string()),
            other => Err(format!("{} state for a virtio-blk", state_kind(other))),
        }
    }
}

#[cfg(test)]
mod tests;
