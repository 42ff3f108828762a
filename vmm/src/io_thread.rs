//! The I/O thread of one boot: an epoll loop over the virtio queue notifications
//! (KVM ioeventfds, so a queue kick never reaches a vCPU thread or the VMM's exit path)
//! and the devices' own host fds (io_uring completions, a tap turning readable). It is
//! owned by the `Vm`: a reset drops the Vm, which stops and joins this thread, so no
//! device of an old boot is ever driven again.
//!
//! Device processing runs here and not on the monitor's thread, so a slow disk never
//! delays a QMP reply and a busy monitor never delays I/O. A device is locked only for
//! one `process_*` call; vCPUs take the same lock for register accesses.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

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

enum Source {
    Kick { device: usize, queue: usize },
    DeviceFd { device: usize, token: u32 },
    Stop,
}

pub struct IoThread {
    stop: Arc<EventFd>,
    handle: Option<JoinHandle<()>>,
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
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || run(devices, kicks, statics, s))?;
        Ok(IoThread {
            stop,
            handle: Some(handle),
        })
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    devices: Vec<SharedIoDevice>,
    kicks: Vec<QueueKick>,
    statics: Vec<StaticFd>,
    stop: Arc<EventFd>,
) {
    let Ok(epoll) = Epoll::new() else {
        eprintln!("kestrel: I/O thread: cannot create epoll; virtio devices will not work");
        return;
    };
    let mut sources: HashMap<u64, Source> = HashMap::new();
    let mut next = 0u64;
    // Device fds are edge-triggered: a device drains what it can and keeps the rest
    // (a tap frame with no rx buffer to go to) until its queue is kicked again, which a
    // level-triggered registration would turn into a busy loop.
    let mut add = |fd: RawFd, src: Source, sources: &mut HashMap<u64, Source>| {
        let t = next;
        next += 1;
        let set = match src {
            Source::DeviceFd { .. } => EventSet::IN | EventSet::EDGE_TRIGGERED,
            _ => EventSet::IN,
        };
        if epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(set, t))
            .is_ok()
        {
            sources.insert(t, src);
        }
    };
    add(stop.as_raw_fd(), Source::Stop, &mut sources);
    for k in &kicks {
        add(
            k.eventfd.as_raw_fd(),
            Source::Kick {
                device: k.device,
                queue: k.queue,
            },
            &mut sources,
        );
    }
    for s in &statics {
        add(
            s.fd,
            Source::DeviceFd {
                device: s.device,
                token: s.token,
            },
            &mut sources,
        );
    }
    // A device's own fds become valid when the driver activates it; they are picked up
    // at its first queue kick (a driver always kicks after DRIVER_OK, rx queues included).
    let mut fds_added = vec![false; devices.len()];
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        for ev in events.iter().take(n) {
            match sources.get(&ev.data()) {
                Some(Source::Stop) => return,
                Some(Source::Kick { device, queue }) => {
                    let (device, queue) = (*device, *queue);
                    if let Some(k) = kicks
                        .iter()
                        .find(|k| k.device == device && k.queue == queue)
                    {
                        let _ = k.eventfd.read();
                    }
                    let Some(d) = devices.get(device) else {
                        continue;
                    };
                    lock(d).process_queue(queue);
                    if !fds_added[device] {
                        let fds = lock(d).event_fds();
                        if !fds.is_empty() {
                            fds_added[device] = true;
                            for (fd, token) in fds {
                                add(fd, Source::DeviceFd { device, token }, &mut sources);
                            }
                        }
                    }
                }
                Some(Source::DeviceFd { device, token }) => {
                    // A static eventfd (INTx resample) is cleared here; a device's own
                    // fds are drained by the device.
                    if let Some(owner) = statics
                        .iter()
                        .find(|s| s.device == *device && s.token == *token)
                        .and_then(|s| s.owner.as_ref())
                    {
                        let _ = owner.read();
                    }
                    if let Some(d) = devices.get(*device) {
                        lock(d).process_event(*token);
                    }
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
