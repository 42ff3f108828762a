//! The I/O thread of one boot: an `event-manager` loop with one subscriber per virtio
//! device, over its queue notifications (KVM ioeventfds, so a queue kick never reaches
//! a vCPU thread or the VMM's exit path) and its own host fds (io_uring completions, a
//! tap turning readable), on a [`Worker`] thread. It is
//! owned by the `Vm`: a reset drops the Vm, which stops and joins this thread, so no
//! device of an old boot is ever driven again.
//!
//! Device processing runs here and not on the monitor's thread, so a slow disk never
//! delays a QMP reply and a busy monitor never delays I/O. A device is locked only for
//! one `process_*` call; vCPUs take the same lock for register accesses.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::worker::{Subscribers, Worker};

/// What the I/O thread needs of a device.
pub trait IoDevice: Send {
    /// The guest kicked queue `queue`.
    fn process_queue(&mut self, queue: usize);
    /// Host fds to watch (valid once the driver activated the device), with tokens.
    fn event_fds(&self) -> Vec<(RawFd, u32)>;
    fn process_event(&mut self, token: u32);
}

pub type SharedIoDevice = Arc<Mutex<dyn IoDevice>>;

/// A queue notification: the ioeventfd KVM signals on the guest's write to the notify
/// address, and which device queue it belongs to.
pub struct QueueKick {
    pub eventfd: EventFd,
    pub device: usize,
    pub queue: usize,
}

/// A host fd watched from the start (e.g. an INTx resample eventfd), served by the
/// device's `process_event(token)`; `owner` keeps the fd open as long as the thread.
pub struct StaticFd {
    pub fd: RawFd,
    pub device: usize,
    pub token: u32,
    pub owner: Option<EventFd>,
}

/// The running I/O thread; dropping it stops and joins the thread.
pub struct IoThread {
    worker: Worker,
}

impl IoThread {
    /// Holds the thread between two events until [`Self::resume`].
    pub fn pause(&self) -> Result<(), String> {
        self.worker.pause()
    }

    pub fn resume(&self) {
        self.worker.resume()
    }
}

fn lock(d: &SharedIoDevice) -> std::sync::MutexGuard<'_, dyn IoDevice + 'static> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

impl IoThread {
    pub fn spawn(
        name: String,
        devices: Vec<SharedIoDevice>,
        kicks: Vec<QueueKick>,
        statics: Vec<StaticFd>,
    ) -> std::io::Result<IoThread> {
        let mut subs: Vec<DeviceSubscriber> = devices
            .into_iter()
            .map(|device| DeviceSubscriber {
                device,
                kicks: Vec::new(),
                statics: Vec::new(),
                own_fds_added: false,
            })
            .collect();
        for k in kicks {
            if let Some(s) = subs.get_mut(k.device) {
                s.kicks.push((k.eventfd, k.queue));
            }
        }
        for st in statics {
            if let Some(s) = subs.get_mut(st.device) {
                s.statics.push(st);
            }
        }
        let subs: Subscribers = subs
            .into_iter()
            .map(|s| Box::new(s) as Box<dyn MutEventSubscriber + Send>)
            .collect();
        Worker::spawn(&name, "virtio devices will not work", subs).map(|w| IoThread { worker: w })
    }
}

/// Tokens of a device subscriber's events: queue kicks, static fds, the device's own fds.
const KICK: u32 = 0;
const STATIC: u32 = 1 << 30;
const OWN: u32 = 2 << 30;
const TOKEN_MASK: u32 = (1 << 30) - 1;

/// One virtio device: its queue notifiers, its static fds and, once the driver has
/// activated it, the device's own host fds.
struct DeviceSubscriber {
    device: SharedIoDevice,
    /// The ioeventfd of each kicked queue.
    kicks: Vec<(EventFd, usize)>,
    statics: Vec<StaticFd>,
    own_fds_added: bool,
}

impl DeviceSubscriber {
    /// A device's own fds become valid when the driver activates it; they are picked up
    /// at its first queue kick (a driver always kicks after DRIVER_OK, rx queues
    /// included). They are edge-triggered: a device drains what it can and keeps the
    /// rest (a tap frame with no rx buffer to go to) until its queue is kicked again,
    /// which a level-triggered registration would turn into a busy loop.
    fn add_own_fds(&mut self, ops: &mut EventOps) {
        if self.own_fds_added {
            return;
        }
        let fds = lock(&self.device).event_fds();
        if fds.is_empty() {
            return;
        }
        self.own_fds_added = true;
        for (fd, token) in fds {
            let set = EventSet::IN | EventSet::EDGE_TRIGGERED;
            let _ = ops.add(Events::with_data_raw(fd, OWN | (token & TOKEN_MASK), set));
        }
    }
}

impl MutEventSubscriber for DeviceSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        for (i, (k, _)) in self.kicks.iter().enumerate() {
            let _ = ops.add(Events::with_data(k, KICK | i as u32, EventSet::IN));
        }
        for (i, s) in self.statics.iter().enumerate() {
            let _ = ops.add(Events::with_data_raw(s.fd, STATIC | i as u32, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let data = events.data();
        let index = (data & TOKEN_MASK) as usize;
        match data & !TOKEN_MASK {
            KICK => {
                let Some((k, queue)) = self.kicks.get(index) else {
                    return;
                };
                let _ = k.read();
                lock(&self.device).process_queue(*queue);
                self.add_own_fds(ops);
            }
            STATIC => {
                // A static eventfd (INTx resample) is cleared here; the device's own fds
                // are drained by the device.
                let Some(s) = self.statics.get(index) else {
                    return;
                };
                if let Some(owner) = &s.owner {
                    let _ = owner.read();
                }
                lock(&self.device).process_event(s.token);
            }
            _ => lock(&self.device).process_event(data & TOKEN_MASK),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::mpsc;

    struct Fake {
        log: mpsc::Sender<String>,
        extra: Arc<EventFd>,
    }

    impl IoDevice for Fake {
        fn process_queue(&mut self, queue: usize) {
            let _ = self.log.send(format!("queue {queue}"));
        }
        fn event_fds(&self) -> Vec<(RawFd, u32)> {
            vec![(self.extra.as_raw_fd(), 7)]
        }
        fn process_event(&mut self, token: u32) {
            let _ = self.extra.read();
            let _ = self.log.send(format!("event {token}"));
        }
    }

    #[test]
    fn kicks_reach_queues_and_device_fds_follow_activation() {
        let (tx, rx) = mpsc::channel();
        let extra = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let dev: SharedIoDevice = Arc::new(Mutex::new(Fake {
            log: tx,
            extra: extra.clone(),
        }));
        let k0 = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let k1 = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (w0, w1) = (k0.try_clone().unwrap(), k1.try_clone().unwrap());
        let t = IoThread::spawn(
            "io-test".into(),
            vec![dev],
            vec![
                QueueKick {
                    eventfd: k0,
                    device: 0,
                    queue: 0,
                },
                QueueKick {
                    eventfd: k1,
                    device: 0,
                    queue: 1,
                },
            ],
            vec![],
        )
        .unwrap();
        let wait = || rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap();
        w1.write(1).unwrap();
        assert_eq!(wait(), "queue 1");
        w0.write(1).unwrap();
        assert_eq!(wait(), "queue 0");
        // Registered after the first kick: now the device's own fd is served.
        extra.write(1).unwrap();
        assert_eq!(wait(), "event 7");
        drop(t); // joins
        assert!(w0.write(1).is_ok());
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "stopped thread serves nothing"
        );
    }
}
