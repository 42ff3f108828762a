//! A worker thread of one boot running an `event-manager` loop until its owner drops
//! it: the boot's I/O thread and its timer thread. Dropping the [`Worker`] writes its
//! stop eventfd, whose subscriber ends the loop, and joins the thread, so nothing of an
//! old boot runs once the boot is gone.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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

/// A running worker thread; dropping it stops and joins the thread.
pub struct Worker {
    stop: Arc<EventFd>,
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
            handle: Some(handle),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
