//! File descriptors passed over a unix-socket monitor with SCM_RIGHTS: `getfd`/`closefd`
//! (named descriptors) and `add-fd`/`remove-fd`/`query-fdsets` (numbered fd sets), as
//! QEMU keeps them. The event loop offers the descriptors that arrived with a message
//! before the monitor runs its commands; whatever no command claims stays with that
//! connection for the next message. The QMP commands that reach this store through
//! the machine are registered by `qmp_commands`, above both.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use monitor::QmpError;

#[derive(Default)]
pub struct FdStore {
    /// Received with the message being executed, not yet claimed.
    offered: Vec<OwnedFd>,
    named: BTreeMap<String, OwnedFd>,
    sets: BTreeMap<i64, Vec<(OwnedFd, Option<String>)>>,
}

const NO_FD: &str = "No file descriptor supplied via SCM_RIGHTS";

impl FdStore {
    pub fn offer(&mut self, fds: Vec<OwnedFd>) {
        self.offered.extend(fds);
    }

    pub fn take_unclaimed(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.offered)
    }

    fn claim(&mut self) -> Result<OwnedFd, QmpError> {
        if self.offered.is_empty() {
            return Err(QmpError::generic(NO_FD));
        }
        Ok(self.offered.remove(0))
    }

    pub fn getfd(&mut self, name: &str) -> Result<(), QmpError> {
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(QmpError::generic(
                "Parameter 'fdname' expects a name not starting with a digit",
            ));
        }
        let fd = self.claim()?;
        // A name given again replaces (and closes) the old descriptor, as in QEMU.
        self.named.insert(name.to_string(), fd);
        Ok(())
    }

    pub fn closefd(&mut self, name: &str) -> Result<(), QmpError> {
        self.named
            .remove(name)
            .map(drop)
            .ok_or_else(|| QmpError::generic(format!("File descriptor named '{name}' not found")))
    }

    /// Takes a named descriptor out of the store, as QEMU's `monitor_get_fd` does for
    /// the commands that use one by name (`migrate fd:NAME`).
    pub fn take_named(&mut self, name: &str) -> Option<OwnedFd> {
        self.named.remove(name)
    }

    pub fn add_fd(
        &mut self,
        set: Option<i64>,
        opaque: Option<String>,
    ) -> Result<(i64, i64), QmpError> {
        if let Some(id) = set {
            if id < 0 {
                return Err(QmpError::generic(
                    "Parameter 'fdset-id' expects a non-negative value",
                ));
            }
        }
        let fd = self.claim()?;
        let id = set.unwrap_or_else(|| {
            // The lowest unused id, as QEMU picks.
            (0..).find(|i| !self.sets.contains_key(i)).unwrap_or(0)
        });
        let raw = i64::from(fd.as_raw_fd());
        self.sets.entry(id).or_default().push((fd, opaque));
        Ok((id, raw))
    }

    pub fn remove_fd(&mut self, set: i64, fd: Option<i64>) -> Result<(), QmpError> {
        let not_found = || {
            let what = match fd {
                Some(f) => format!("fdset-id:{set}, fd:{f}"),
                None => format!("fdset-id:{set}"),
            };
            QmpError::generic(format!("File descriptor named '{what}' not found"))
        };
        let fds = self.sets.get_mut(&set).ok_or_else(not_found)?;
        match fd {
            Some(f) => {
                let i = fds
                    .iter()
                    .position(|(o, _)| i64::from(o.as_raw_fd()) == f)
                    .ok_or_else(not_found)?;
                fds.remove(i);
            }
            None => fds.clear(),
        }
        if fds.is_empty() {
            self.sets.remove(&set);
        }
        Ok(())
    }

    pub fn fdsets(&self) -> Vec<FdsetInfo> {
        self.sets
            .iter()
            .map(|(id, fds)| FdsetInfo {
                fdset_id: *id,
                fds: fds
                    .iter()
                    .map(|(fd, opaque)| FdsetFdInfo {
                        fd: i64::from(fd.as_raw_fd()),
                        opaque: opaque.clone(),
                    })
                    .collect(),
            })
            .collect()
    }
}

monitor::qmp_struct! {
    /// Arguments of `getfd` and `closefd`.
    #[derive(Debug, Clone)]
    pub struct FdNameArgs {
        pub fdname: String = "fdname",
    }
}

monitor::qmp_struct! {
    /// Arguments of `add-fd`.
    #[derive(Debug, Clone)]
    pub struct AddFdArgs {
        pub fdset_id: Option<i64> = "fdset-id",
        pub opaque: Option<String> = "opaque",
    }
}

monitor::qmp_struct! {
    /// `AddfdInfo`.
    #[derive(Debug, Clone)]
    pub struct AddfdInfo {
        pub fdset_id: i64 = "fdset-id",
        pub fd: i64 = "fd",
    }
}

monitor::qmp_struct! {
    /// Arguments of `remove-fd`.
    #[derive(Debug, Clone)]
    pub struct RemoveFdArgs {
        pub fdset_id: i64 = "fdset-id",
        pub fd: Option<i64> = "fd",
    }
}

monitor::qmp_struct! {
    /// `FdsetFdInfo`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct FdsetFdInfo {
        pub fd: i64 = "fd",
        pub opaque: Option<String> = "opaque",
    }
}

monitor::qmp_struct! {
    /// `FdsetInfo`.
    #[derive(Debug, Clone, PartialEq)]
    pub struct FdsetInfo {
        pub fdset_id: i64 = "fdset-id",
        pub fds: Vec<FdsetFdInfo> = "fds",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn getfd_needs_a_passed_descriptor_and_closefd_forgets_it() {
        let mut s = FdStore::default();
        assert_eq!(s.getfd("a").unwrap_err().desc, NO_FD);
        s.offer(vec![fd(), fd()]);
        s.getfd("a").unwrap();
        assert!(s.named.contains_key("a"));
        assert!(s
            .getfd("9lives")
            .unwrap_err()
            .desc
            .contains("not starting with a digit"));
        // A command that uses a named descriptor takes it: it is gone from the store.
        s.offer(vec![fd()]);
        s.getfd("b").unwrap();
        assert!(s.take_named("b").is_some());
        assert!(s.take_named("b").is_none());
        assert_eq!(
            s.take_unclaimed().len(),
            1,
            "the second descriptor stays unclaimed"
        );
        s.closefd("a").unwrap();
        assert_eq!(
            s.closefd("a").unwrap_err().desc,
            "File descriptor named 'a' not found"
        );
    }

    #[test]
    fn fdsets_add_query_remove() {
        let mut s = FdStore::default();
        assert_eq!(s.add_fd(None, None).unwrap_err().desc, NO_FD);
        s.offer(vec![fd(), fd(), fd()]);
        let (id0, fd0) = s.add_fd(None, Some("first".into())).unwrap();
        assert_eq!(id0, 0);
        let (id1, _) = s.add_fd(Some(5), None).unwrap();
        assert_eq!(id1, 5);
        let (id2, _) = s.add_fd(None, None).unwrap();
        assert_eq!(id2, 1, "lowest unused id");
        assert!(s
            .add_fd(Some(-1), None)
            .unwrap_err()
            .desc
            .contains("non-negative"));
        let sets = s.fdsets();
        assert_eq!(sets.len(), 3);
        assert_eq!(
            sets[0].fds[0],
            FdsetFdInfo {
                fd: fd0,
                opaque: Some("first".into())
            }
        );
        assert_eq!(
            s.remove_fd(0, Some(fd0 + 1000)).unwrap_err().desc,
            format!(
                "File descriptor named 'fdset-id:0, fd:{}' not found",
                fd0 + 1000
            )
        );
        s.remove_fd(0, Some(fd0)).unwrap();
        assert_eq!(
            s.remove_fd(0, None).unwrap_err().desc,
            "File descriptor named 'fdset-id:0' not found"
        );
        s.remove_fd(5, None).unwrap();
        assert_eq!(s.fdsets().len(), 1);
    }
}
