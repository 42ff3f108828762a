//! QMP for guest RAM's backends: `query-memdev`, answering as QEMU 7.2 does: every
//! `-object memory-backend-*` in command-line order, then, when plain `-m` made guest
//! RAM, the machine's own `kestrel.ram` (QEMU's `pc.ram`/`microvm.ram`). Kestrel has no
//! NUMA policy, so `host-nodes` is empty and `policy` `default`; memory is mergeable
//! and dumpable and swap is reserved, QEMU's defaults.

use monitor::{Empty, Registry};

use crate::memory::MemdevInfo;

monitor::qmp_enum! {
    /// `HostMemPolicy`.
    pub enum HostMemPolicy {
        Default = "default",
        Preferred = "preferred",
        Bind = "bind",
        Interleave = "interleave",
    }
}

monitor::qmp_struct! {
    /// `Memdev`.
    #[derive(Debug, Clone)]
    pub struct Memdev {
        pub id: Option<String> = "id",
        pub size: u64 = "size",
        pub merge: bool = "merge",
        pub dump: bool = "dump",
        pub prealloc: bool = "prealloc",
        pub share: bool = "share",
        pub reserve: Option<bool> = "reserve",
        pub host_nodes: Vec<u16> = "host-nodes",
        pub policy: HostMemPolicy = "policy",
    }
}

fn memdev(m: &MemdevInfo) -> Memdev {
    Memdev {
        id: Some(m.id.clone()),
        size: m.size,
        merge: true,
        dump: true,
        prealloc: m.prealloc,
        share: m.share,
        reserve: Some(true),
        host_nodes: Vec::new(),
        policy: HostMemPolicy::Default,
    }
}

/// Registers `query-memdev` over the machine's backends.
pub fn register(r: &mut Registry, backends: Vec<MemdevInfo>) -> Result<(), monitor::Error> {
    let list: Vec<Memdev> = backends.iter().map(memdev).collect();
    r.register("query-memdev", move |_, _: Empty| Ok(list.clone()))?;
    Ok(())
}
