//! A worker thread of one boot running an `event-manager` loop until its owner drops
//! it: the boot's I/O thread and its timer thread. Dropping the [`Worker`] writes its
//! stop eventfd, whose subscriber ends the loop, and joins the thread, so nothing of an
//! old boot runs once the boot is gone.
//!
//! A worker can also be held ([`Worker::pause`]): its thread parks inside the loop,
//! between two events, until [`Worker::resume`]; what arrives meanwhile waits in the
//! epoll set. Migration holds the I/O thread so that no device touches guest memory
//! or its own state while that state is saved. The gate's mutex is a leaf lock.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// What a worker's loop serves.
pub type Subscribers = Vec<Box<dyn MutEventSubscriber + Send>>;

/// The stop eventfd: ends the loop.
struct Stop {
    fd: Arc<EventFd>,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for Stop {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.fd.as_ref(), EventSet::IN));
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        self.stopped.store(true, Ordering::Release);
    }
}

/// The hold: `held` is what the owner asked, `parked` what the thread acknowledged.
#[derive(Default)]
struct Gate {
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (bool, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The hold eventfd: parks the thread while the gate is held.
struct Hold {
    fd: Arc<EventFd>,
    gate: Arc<Gate>,
}

impl MutEventSubscriber for Hold {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.fd.as_ref(), EventSet::IN));
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        let _ = self.fd.read();
        let mut g = self.gate.lock();
        while g.0 {
            g.1 = true;
            self.gate.cv.notify_all();
            g = self.gate.cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
        g.1 = false;
    }
}

/// A running worker thread; dropping it stops and joins the thread.
pub struct Worker {
    stop: Arc<EventFd>,
    hold: Arc<EventFd>,
    gate: Arc<Gate>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Spawns thread `name` serving `subs`; `what` names its job in the one line printed
    /// if its epoll cannot be created.
    pub fn spawn(name: &str, what: &'static str, subs: Subscribers) -> io::Result<Worker> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let stopper = Box::new(Stop {
            fd: stop.clone(),
            stopped: Arc::new(AtomicBool::new(false)),
        });
        let hold = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let gate = Arc::new(Gate::default());
        let holder = Box::new(Hold {
            fd: hold.clone(),
            gate: gate.clone(),
        });
        let label = name.to_string();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let Ok(mut em) = EventManager::<Box<dyn MutEventSubscriber + Send>>::new() else {
                    eprintln!("kestrel: {label}: cannot create epoll; {what}");
                    return;
                };
                let stopped = stopper.stopped.clone();
                em.add_subscriber(stopper);
                em.add_subscriber(holder);
                for s in subs {
                    em.add_subscriber(s);
                }
                while !stopped.load(Ordering::Acquire) {
                    if em.run().is_err() {
                        return;
                    }
                }
            })?;
        Ok(Worker {
            stop,
            hold,
            gate,
            handle: Some(handle),
        })
    }

    /// Parks the thread between two events and waits until it is parked (at most five
    /// seconds: a thread stuck in one event is reported, not waited for forever).
    pub fn pause(&self) -> Result<(), String> {
        let mut g = self.gate.lock();
        g.0 = true;
        let _ = self.hold.write(1);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !g.1 {
            let now = std::time::Instant::now();
            if now >= deadline || self.handle.as_ref().is_none_or(|h| h.is_finished()) {
                return Err("a worker thread did not stop".into());
            }
            g = self
                .gate
                .cv
                .wait_timeout(g, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        Ok(())
    }

    /// Lets a paused thread go on (nothing if it was not paused).
    pub fn resume(&self) {
        let mut g = self.gate.lock();
        g.0 = false;
        self.gate.cv.notify_all();
        drop(g);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.resume();
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    struct Echo {
        fd: Arc<EventFd>,
        tx: mpsc::Sender<u64>,
    }

    impl MutEventSubscriber for Echo {
        fn init(&mut self, ops: &mut EventOps) {
            let _ = ops.add(Events::new(self.fd.as_ref(), EventSet::IN));
        }
        fn process(&mut self, _: Events, _: &mut EventOps) {
            if let Ok(v) = self.fd.read() {
                let _ = self.tx.send(v);
            }
        }
    }

    #[test]
    fn a_paused_worker_serves_nothing_until_resumed_and_then_what_waited() {
        let fd = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let (tx, rx) = mpsc::channel();
        let w = Worker::spawn(
            "worker-test",
            "test",
            vec![Box::new(Echo { fd: fd.clone(), tx })],
        )
        .unwrap();
        fd.write(1).unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        w.pause().unwrap();
        fd.write(2).unwrap();
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "served while paused"
        );
        w.resume();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 2);
        // Dropping a paused worker still stops and joins it.
        w.pause().unwrap();
        drop(w);
    }

    use std::time::Duration;
}
