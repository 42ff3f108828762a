//! The stream format against guest memory held in a vector.

use std::cell::RefCell;
use std::io::{self, Read, Write};

use crate::protocol::*;

/// Guest RAM at guest address 0, in a vector.
struct VecRam(RefCell<Vec<u8>>);

impl VecRam {
    fn new(bytes: usize) -> VecRam {
        VecRam(RefCell::new(vec![0; bytes]))
    }
    fn range(&self, gpa: u64, len: u64) -> std::ops::Range<usize> {
        gpa as usize..(gpa + len) as usize
    }
}

impl GuestRam for VecRam {
    fn is_zero(&self, gpa: u64, len: u64) -> io::Result<bool> {
        Ok(self.0.borrow()[self.range(gpa, len)]
            .iter()
            .all(|b| *b == 0))
    }
    fn read_into(&self, gpa: u64, len: u64, w: &mut dyn Write) -> io::Result<()> {
        w.write_all(&self.0.borrow()[self.range(gpa, len)])
    }
    fn write_from(&self, gpa: u64, len: u64, r: &mut dyn Read) -> io::Result<()> {
        let range = self.range(gpa, len);
        r.read_exact(&mut self.0.borrow_mut()[range])
    }
    fn zero(&self, gpa: u64, len: u64) -> io::Result<()> {
        let range = self.range(gpa, len);
        self.0.borrow_mut()[range].fill(0);
        Ok(())
    }
    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa.checked_add(len)
            .is_some_and(|end| end <= self.0.borrow().len() as u64)
    }
}

const MIB: usize = 1 << 20;

fn config() -> MachineConfig {
    MachineConfig {
        ram: vec![(0, MIB as u64)],
        vcpus: 2,
        devices: vec!["serial0".into(), "disk0".into()],
    }
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct UartState {
    ier: u8,
    lcr: u8,
    scratch: Vec<u8>,
}

/// A source with some pages written (pseudo-random bytes) and the rest zero.
fn source_ram() -> VecRam {
    let ram = VecRam::new(MIB);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for page in [0u64, 1, 2, 7, 100, 255] {
        let range = ram.range(page * PAGE_SIZE, PAGE_SIZE);
        for b in &mut ram.0.borrow_mut()[range] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    ram
}

/// A whole stream: config, all RAM, two devices, end.
fn stream(ram: &VecRam) -> (Vec<u8>, RamCounts) {
    let mut w = StreamWriter::new(Vec::new()).unwrap();
    w.config(&config()).unwrap();
    let counts = w.ram(ram, &[(0, (MIB as u64) / PAGE_SIZE)]).unwrap();
    let uart = UartState {
        ier: 0x0f,
        lcr: 0x03,
        scratch: vec![1, 2, 3],
    };
    w.device(0, "serial0", 3, &uart).unwrap();
    w.device(1, "disk0", 1, &serde_json::json!({"features": 42}))
        .unwrap();
    (w.end().unwrap(), counts)
}

/// Reads a whole stream into `ram`; the sections other than Ram.
fn load(bytes: &[u8], ram: &VecRam) -> Result<Vec<Section>> {
    let mut r = StreamReader::new(bytes)?;
    let mut out = Vec::new();
    loop {
        match r.next(ram)? {
            Section::End => return Ok(out),
            Section::Ram(_) => {}
            other => out.push(other),
        }
    }
}

#[test]
fn a_stream_round_trips_ram_config_and_device_state() {
    let src = source_ram();
    let (bytes, counts) = stream(&src);
    assert_eq!(counts.data_pages, 6);
    assert_eq!(counts.zero_pages, 256 - 6, "zero pages go as markers");
    // 6 pages of data plus framing: far below the 1 MiB of RAM.
    assert!(bytes.len() < 6 * 4096 + 2048, "{} bytes", bytes.len());

    let dst = VecRam::new(MIB);
    dst.0.borrow_mut().fill(0xaa); // stale contents must be overwritten, zeros included
    let sections = load(&bytes, &dst).unwrap();
    assert!(
        *dst.0.borrow() == *src.0.borrow(),
        "RAM arrives byte for byte"
    );
    assert_eq!(sections[0], Section::Config(config()));
    config().check_source(&config()).unwrap();
    let Section::Device {
        index,
        name,
        version,
        state,
    } = &sections[1]
    else {
        panic!("{:?}", sections[1]);
    };
    assert_eq!((*index, name.as_str(), *version), (0, "serial0", 3));
    let uart: UartState = serde_json::from_slice(state).unwrap();
    assert_eq!(uart.scratch, [1, 2, 3]);
    assert!(matches!(&sections[2], Section::Device { name, .. } if name == "disk0"));
}

#[test]
fn every_truncation_is_refused() {
    let src = source_ram();
    let (bytes, _) = stream(&src);
    for cut in 0..bytes.len() {
        let dst = VecRam::new(MIB);
        let e = load(&bytes[..cut], &dst).expect_err("a cut stream never completes");
        assert!(matches!(e, StreamError::Truncated(_)), "cut at {cut}: {e}");
    }
}

#[test]
fn every_flipped_byte_is_refused() {
    // A stream small enough to flip every byte: two data pages and some zero pages.
    let src = VecRam::new(64 * 1024);
    src.0.borrow_mut()[5000] = 1;
    src.0.borrow_mut()[40000] = 2;
    let mut w = StreamWriter::new(Vec::new()).unwrap();
    w.config(&config()).unwrap();
    w.ram(&src, &[(0, 16)]).unwrap();
    w.device(0, "serial0", 1, &[1u8, 2, 3]).unwrap();
    let bytes = w.end().unwrap();
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x10;
        let dst = VecRam::new(64 * 1024);
        assert!(
            load(&bad, &dst).is_err(),
            "a flip at byte {i} of {} went unnoticed",
            bytes.len()
        );
    }
}

#[test]
fn wrong_magic_version_and_flags_are_refused_with_their_reason() {
    let (bytes, _) = stream(&source_ram());
    let dst = VecRam::new(MIB);
    let mut b = bytes.clone();
    b[0] = b'Q';
    assert_eq!(
        load(&b, &dst).unwrap_err().to_string(),
        "not a Kestrel migration stream (bad magic number)"
    );
    let mut b = bytes.clone();
    b[8] = 7;
    assert_eq!(
        load(&b, &dst).unwrap_err().to_string(),
        "migration stream format version 7 is not supported (this Kestrel reads version 1)"
    );
    let mut b = bytes;
    b[12] = 1;
    assert!(load(&b, &dst)
        .unwrap_err()
        .to_string()
        .contains("unknown stream flags 0x1"));
}

#[test]
fn a_differently_configured_destination_says_what_differs() {
    let here = config();
    let mut src = config();
    src.vcpus = 4;
    assert_eq!(
        here.check_source(&src).unwrap_err().to_string(),
        "migration stream: the source machine differs from this one: the source has 4 vCPUs, this machine 2 (-smp must match)"
    );
    let mut src = config();
    src.ram = vec![(0, 2 * MIB as u64)];
    assert!(here
        .check_source(&src)
        .unwrap_err()
        .to_string()
        .contains("the source has 2 MiB of RAM in 1 regions, this machine 1 MiB in 1"));
    let mut src = config();
    src.devices = vec!["serial0".into(), "net0".into()];
    assert!(here
        .check_source(&src)
        .unwrap_err()
        .to_string()
        .contains("devices only on the source: [net0]; only here: [disk0]"));
    let mut src = config();
    src.devices.reverse();
    assert!(here
        .check_source(&src)
        .unwrap_err()
        .to_string()
        .contains("in another order"));
}

/// Hand-made sections: a header with a payload and a correct checksum.
fn section(kind: u16, id: u32, payload: &[u8], announced_len: u64) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&kind.to_le_bytes());
    s.extend_from_slice(&1u16.to_le_bytes());
    s.extend_from_slice(&id.to_le_bytes());
    s.extend_from_slice(&announced_len.to_le_bytes());
    s.extend_from_slice(payload);
    let crc = crc32fast::hash(&s);
    s.extend_from_slice(&crc.to_le_bytes());
    s
}

fn header() -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

#[test]
fn oversized_foreign_and_unknown_sections_are_refused_before_use() {
    let dst = VecRam::new(64 * 1024);
    // A length over the cap is refused from the header, before any allocation.
    let mut b = header();
    b.extend(section(2, 0, &[], u64::MAX));
    assert!(matches!(
        load(&b, &dst).unwrap_err(),
        StreamError::TooLarge { len: u64::MAX, .. }
    ));
    // Pages outside this machine's RAM.
    let mut rec = Vec::new();
    rec.extend_from_slice(&(1u64 << 40).to_le_bytes());
    rec.extend_from_slice(&1u32.to_le_bytes());
    rec.extend_from_slice(&0u32.to_le_bytes());
    let mut b = header();
    b.extend(section(2, 0, &rec, rec.len() as u64));
    assert!(load(&b, &dst)
        .unwrap_err()
        .to_string()
        .contains("1 pages at 0x10000000000 are not guest RAM on this machine"));
    // An unknown kind.
    let mut b = header();
    b.extend(section(9, 0, &[], 0));
    assert_eq!(
        load(&b, &dst).unwrap_err().to_string(),
        "migration stream: unknown section kind 9"
    );
}

#[test]
fn ram_beyond_one_section_is_split_under_the_cap() {
    // 80 MiB of non-zero pages do not fit one 64 MiB section.
    let pages = 80 * 256;
    let src = VecRam::new(pages * PAGE_SIZE as usize);
    for (i, b) in src.0.borrow_mut().iter_mut().enumerate() {
        *b = (i / 4096) as u8 | 1;
    }
    let mut w = StreamWriter::new(Vec::new()).unwrap();
    let counts = w.ram(&src, &[(0, pages as u64)]).unwrap();
    assert_eq!(counts.data_pages, pages as u64);
    let bytes = w.end().unwrap();
    let dst = VecRam::new(pages * PAGE_SIZE as usize);
    let mut r = StreamReader::new(&bytes[..]).unwrap();
    let mut sections = 0;
    while let Section::Ram(c) = r.next(&dst).unwrap() {
        assert!(c.bytes <= MAX_RAM_LEN + 20);
        sections += 1;
    }
    assert_eq!(sections, 2);
    assert!(*dst.0.borrow() == *src.0.borrow());
}
