//! `-object`: the QOM objects the command line can create. Kestrel has QEMU's host
//! memory backends, which name guest RAM for `-machine memory-backend=ID` and for
//! migration: `memory-backend-ram`, `memory-backend-file` (`mem-path=` a file, or a
//! directory to hold an unlinked one) and `memory-backend-memfd`. Errors are QEMU's
//! words; another `qom-type` is refused as QEMU refuses an unknown one.

use std::path::PathBuf;

use serde::Deserialize;

use super::keyvalue;
use super::values::{is_identifier, Size};

/// Where a memory backend's pages live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryKind {
    /// Anonymous memory (`memory-backend-ram`).
    Ram,
    /// A file, or an unlinked file in a directory (`memory-backend-file`).
    File { mem_path: PathBuf },
    /// A memfd (`memory-backend-memfd`).
    Memfd,
}

impl MemoryKind {
    /// The QOM type name.
    pub fn qom_type(&self) -> &'static str {
        match self {
            MemoryKind::Ram => "memory-backend-ram",
            MemoryKind::File { .. } => "memory-backend-file",
            MemoryKind::Memfd => "memory-backend-memfd",
        }
    }
}

/// One `-object memory-backend-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryBackend {
    pub id: String,
    pub kind: MemoryKind,
    /// Bytes; never zero.
    pub size: u64,
    /// MAP_SHARED (`share=on`): the memory can be seen by another process through the
    /// file or memfd. Off by default, but on by default for memfd, as in QEMU.
    pub share: bool,
    /// Allocate every page at startup (`prealloc=on`).
    pub prealloc: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RamOpts {
    id: String,
    size: Size,
    share: Option<bool>,
    prealloc: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOpts {
    id: String,
    size: Size,
    #[serde(rename = "mem-path")]
    mem_path: PathBuf,
    share: Option<bool>,
    prealloc: Option<bool>,
}

/// `-object`'s value: the implied first word is the QOM type.
#[derive(Debug, Deserialize)]
enum ObjectOpts {
    #[serde(rename = "memory-backend-ram")]
    Ram(RamOpts),
    #[serde(rename = "memory-backend-file")]
    File(FileOpts),
    #[serde(rename = "memory-backend-memfd")]
    Memfd(RamOpts),
}

/// Parses one `-object` value.
pub fn parse_object(arg: &str) -> Result<MemoryBackend, String> {
    let o: ObjectOpts = keyvalue::from_str(arg, Some("qom-type")).map_err(|e| e.to_string())?;
    let (id, kind, size, share, prealloc) = match o {
        ObjectOpts::Ram(r) => (r.id, MemoryKind::Ram, r.size, r.share, r.prealloc),
        ObjectOpts::Memfd(r) => (
            r.id,
            MemoryKind::Memfd,
            r.size,
            Some(r.share.unwrap_or(true)),
            r.prealloc,
        ),
        ObjectOpts::File(f) => (
            f.id,
            MemoryKind::File {
                mem_path: f.mem_path,
            },
            f.size,
            f.share,
            f.prealloc,
        ),
    };
    if !is_identifier(&id) {
        return Err("Parameter 'id' expects an identifier".into());
    }
    if size.0 == 0 {
        return Err(format!(
            "property 'size' of {} doesn't take value '0'",
            kind.qom_type()
        ));
    }
    Ok(MemoryBackend {
        id,
        kind,
        size: size.0,
        share: share.unwrap_or(false),
        prealloc: prealloc.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_memory_backends_with_qemus_defaults() {
        let r = parse_object("memory-backend-ram,id=mem0,size=512M").unwrap();
        assert_eq!(
            r,
            MemoryBackend {
                id: "mem0".into(),
                kind: MemoryKind::Ram,
                size: 512 << 20,
                share: false,
                prealloc: false,
            }
        );
        let f = parse_object(
            "memory-backend-file,id=f,size=1G,mem-path=/dev/shm/x,share=on,prealloc=on",
        )
        .unwrap();
        assert_eq!(
            f.kind,
            MemoryKind::File {
                mem_path: "/dev/shm/x".into()
            }
        );
        assert!(f.share && f.prealloc);
        assert_eq!(f.size, 1 << 30);
        let m = parse_object("memory-backend-memfd,id=m,size=64M").unwrap();
        assert!(m.share, "memfd is shared unless share=off");
        assert!(
            !parse_object("memory-backend-memfd,id=m,size=64M,share=off")
                .unwrap()
                .share
        );
    }

    #[test]
    fn errors_are_qemus() {
        for (arg, msg) in [
            ("memory-backend-ram,id=mem0", "Parameter 'size' is missing"),
            (
                "memory-backend-file,id=mem0,size=64M",
                "Parameter 'mem-path' is missing",
            ),
            (
                "memory-backend-ram,id=mem0,size=64M,bogus=1",
                "Invalid parameter 'bogus'",
            ),
            ("memory-backend-ram,size=64M", "Parameter 'id' is missing"),
            (
                "memory-backend-foo,id=x,size=64M",
                "Parameter 'qom-type' does not accept value 'memory-backend-foo'",
            ),
            (
                "memory-backend-ram,id=m,size=64M,share=maybe",
                "Parameter 'share' expects 'on' or 'off'",
            ),
            (
                "memory-backend-ram,id=m,size=0",
                "property 'size' of memory-backend-ram doesn't take value '0'",
            ),
        ] {
            let e = parse_object(arg).unwrap_err();
            assert!(e.contains(msg), "{arg}: {e}");
        }
    }
}
