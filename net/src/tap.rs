//! The tap backend: a `/dev/net/tun` file in TAP mode (Ethernet frames, no packet-info
//! prefix), with a virtio-net header on every frame when the tap was opened with
//! IFF_VNET_HDR, non-blocking so the event loop never waits on it.
//!
//! Interface-level settings that tun handles on its own fd (MAC, carrier, offloads) go
//! through that fd, so they work whatever network namespace the tap lives in; the
//! administrative up/down state needs an `AF_INET` socket and therefore the caller's
//! namespace to be the tap's.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::{Error, NetBackend, Offloads, VNET_HDR_LEN, VNET_HDR_LEN_LEGACY};

/// `_IOW('T', 226, int)`: not in the libc crate yet.
const TUNSETCARRIER: u64 = 0x4004_54e2;

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    vnet_hdr: bool,
    /// The header length frames have at the `NetBackend` interface; on the wire too
    /// when `vnet_hdr`.
    hdr_len: usize,
    supported: Offloads,
}

fn zeroed_ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of integers, sockaddrs
    // and a pointer); all-zero is a valid value for each.
    unsafe { std::mem::zeroed() }
}

fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn ifreq_with_name(name: &str) -> Result<libc::ifreq, Error> {
    let valid = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if !valid {
        return Err(Error::InvalidName(name.to_string()));
    }
    let mut ifr = zeroed_ifreq();
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

impl Tap {
    /// Opens tap `name`, creating it if it does not exist (as QEMU's `ifname=`). A name
    /// with `%d` (or an empty one, meaning `tap%d`) lets the kernel pick the number.
    /// The tap carries a 12-byte virtio-net header and starts with no offloads.
    pub fn open(name: &str) -> Result<Tap, Error> {
        Self::open_with(name, true)
    }

    /// As `open`, choosing whether frames carry a virtio-net header (QEMU's
    /// `vnet_hdr=on|off`; without one there are no offloads).
    pub fn open_with(name: &str, vnet_hdr: bool) -> Result<Tap, Error> {
        let name = if name.is_empty() { "tap%d" } else { name };
        let mut ifr = ifreq_with_name(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(Error::OpenTun)?;
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        ifr.ifr_ifru.ifru_flags = flags as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which lives for the call.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr) };
        if r < 0 {
            return Err(Error::CreateTap {
                name: name.to_string(),
                err: last_err(),
            });
        }
        Self::finish(file, ifreq_name(&ifr), vnet_hdr)
    }

    /// Takes over a tap fd opened elsewhere (QEMU's `fd=`, e.g. passed with `getfd` or by
    /// libvirt). Its virtio-net header setting is kept: without one, frames are moved
    /// without offloads.
    pub fn from_fd(fd: OwnedFd) -> Result<Tap, Error> {
        let raw = fd.as_raw_fd();
        let not_tap = |reason: String| Error::NotATap { fd: raw, reason };
        let mut ifr = zeroed_ifreq();
        // SAFETY: TUNGETIFF writes one ifreq, which lives for the call.
        let r = unsafe { libc::ioctl(raw, libc::TUNGETIFF as _, &mut ifr) };
        if r < 0 {
            return Err(not_tap(format!("TUNGETIFF: {}", last_err())));
        }
        // SAFETY: TUNGETIFF filled ifru_flags.
        let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags }) & 0xffff;
        if flags & libc::IFF_TAP == 0 {
            return Err(not_tap(
                "it is a tun (IP) device, not a tap (Ethernet)".into(),
            ));
        }
        if flags & libc::IFF_NO_PI == 0 {
            return Err(not_tap(
                "it was opened with a packet-info prefix (IFF_NO_PI unset)".into(),
            ));
        }
        // SAFETY: plain fcntl on an fd we own.
        let fl = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        // SAFETY: as above.
        if fl < 0 || unsafe { libc::fcntl(raw, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
            return Err(not_tap(format!(
                "cannot make it non-blocking: {}",
                last_err()
            )));
        }
        let file = File::from(fd);
        Self::finish(file, ifreq_name(&ifr), flags & libc::IFF_VNET_HDR != 0)
    }

    fn finish(file: File, name: String, vnet_hdr: bool) -> Result<Tap, Error> {
        let mut tap = Tap {
            file,
            name,
            vnet_hdr,
            hdr_len: VNET_HDR_LEN,
            supported: Offloads::NONE,
        };
        if vnet_hdr {
            tap.set_vnet_hdr_len(VNET_HDR_LEN)?;
            tap.supported = tap.probe_offloads();
            tap.set_offloads(Offloads::NONE)?;
        }
        Ok(tap)
    }

    /// Tries offload sets the way QEMU does: the kernel refuses the ones it lacks.
    fn probe_offloads(&self) -> Offloads {
        let mut s = Offloads::NONE;
        let base = Offloads {
            csum: true,
            ..Offloads::NONE
        };
        if self.tun_set_offload(base.tun_flags()).is_err() {
            return s;
        }
        s.csum = true;
        let tso = Offloads {
            tso4: true,
            tso6: true,
            ecn: true,
            ..base
        };
        if self.tun_set_offload(tso.tun_flags()).is_ok() {
            s.tso4 = true;
            s.tso6 = true;
            s.ecn = true;
        }
        let ufo = Offloads { ufo: true, ..base };
        s.ufo = self.tun_set_offload(ufo.tun_flags()).is_ok();
        let uso = Offloads {
            uso4: true,
            uso6: true,
            ..base
        };
        if self.tun_set_offload(uso.tun_flags()).is_ok() {
            s.uso4 = true;
            s.uso6 = true;
        }
        s
    }

    fn tun_set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD as _,
                flags as libc::c_ulong,
            )
        };
        if r < 0 {
            Err(last_err())
        } else {
            Ok(())
        }
    }

    fn ioctl_err(&self, what: &'static str) -> Error {
        Error::Ioctl {
            name: self.name.clone(),
            what,
            err: last_err(),
        }
    }

    /// The interface name the kernel gave the tap.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether frames carry a virtio-net header (IFF_VNET_HDR).
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Length of the virtio-net header on each frame (0 without one).
    pub fn vnet_hdr_len(&self) -> usize {
        if self.vnet_hdr {
            self.hdr_len
        } else {
            0
        }
    }

    /// Sets the virtio-net header length (10, legacy, or 12) with TUNSETVNETHDRSZ.
    pub fn set_vnet_hdr_len(&mut self, len: usize) -> Result<(), Error> {
        if len != VNET_HDR_LEN && len != VNET_HDR_LEN_LEGACY {
            return Err(Error::VnetHdrLen(len));
        }
        if !self.vnet_hdr {
            return Err(Error::NoVnetHdr {
                name: self.name.clone(),
                what: "setting the virtio-net header length",
            });
        }
        let v: libc::c_int = len as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int, which lives for the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ as _, &v) };
        if r < 0 {
            return Err(self.ioctl_err("TUNSETVNETHDRSZ"));
        }
        self.hdr_len = len;
        Ok(())
    }

    /// Offloads this tap can enable (none without a virtio-net header).
    pub fn supported_offloads(&self) -> Offloads {
        self.supported
    }

    /// Enables exactly these offloads on frames the tap hands us (TUNSETOFFLOAD).
    pub fn set_offloads(&self, offloads: Offloads) -> Result<(), Error> {
        if offloads != Offloads::NONE && !self.vnet_hdr {
            return Err(Error::NoVnetHdr {
                name: self.name.clone(),
                what: "enabling offloads",
            });
        }
        self.tun_set_offload(offloads.tun_flags())
            .map_err(|err| Error::Ioctl {
                name: self.name.clone(),
                what: "TUNSETOFFLOAD",
                err,
            })
    }

    /// Reads one frame (with its header, if any). `WouldBlock` when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Writes one frame (with its header, if any).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        (&self.file).write(frame)
    }

    /// Writes one frame gathered from several buffers (e.g. a header and a payload).
    pub fn write_frame_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(bufs)
    }

    /// The host side's MAC address.
    pub fn mac(&self) -> Result<[u8; 6], Error> {
        let mut ifr = zeroed_ifreq();
        // SAFETY: SIOCGIFHWADDR on a tun fd writes one ifreq, which lives for the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut ifr) };
        if r < 0 {
            return Err(self.ioctl_err("SIOCGIFHWADDR"));
        }
        let mut mac = [0u8; 6];
        // SAFETY: the kernel filled ifru_hwaddr.
        let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
        for (m, d) in mac.iter_mut().zip(data.iter()) {
            *m = *d as u8;
        }
        Ok(mac)
    }

    /// Sets the host side's MAC address.
    pub fn set_mac(&self, mac: [u8; 6]) -> Result<(), Error> {
        let mut ifr = zeroed_ifreq();
        // SAFETY: writing plain data into a zeroed union member.
        unsafe {
            ifr.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (d, m) in ifr.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
                *d = m as libc::c_char;
            }
        }
        // SAFETY: SIOCSIFHWADDR on a tun fd reads one ifreq, which lives for the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::SIOCSIFHWADDR as _, &ifr) };
        if r < 0 {
            return Err(self.ioctl_err("SIOCSIFHWADDR"));
        }
        Ok(())
    }

    /// Sets the carrier the host sees on the interface (`NO-CARRIER` when off), e.g. to
    /// mirror the guest's link state.
    pub fn set_carrier(&self, on: bool) -> Result<(), Error> {
        let v: libc::c_int = on.into();
        // SAFETY: TUNSETCARRIER reads one int, which lives for the call.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETCARRIER as _, &v) };
        if r < 0 {
            return Err(self.ioctl_err("TUNSETCARRIER"));
        }
        Ok(())
    }

    fn flags_socket(&self) -> Result<OwnedFd, Error> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if s < 0 {
            return Err(self.ioctl_err("socket(AF_INET)"));
        }
        // SAFETY: `s` is a new fd nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(s) })
    }

    fn get_flags(&self, sock: &OwnedFd) -> Result<libc::ifreq, Error> {
        let mut ifr = ifreq_with_name(&self.name)?;
        // SAFETY: SIOCGIFFLAGS writes one ifreq, which lives for the call.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut ifr) };
        if r < 0 {
            return Err(self.ioctl_err("SIOCGIFFLAGS"));
        }
        Ok(ifr)
    }

    /// Whether the interface is administratively up on the host. The caller must be in
    /// the tap's network namespace.
    pub fn is_up(&self) -> Result<bool, Error> {
        let sock = self.flags_socket()?;
        let ifr = self.get_flags(&sock)?;
        // SAFETY: SIOCGIFFLAGS filled ifru_flags.
        Ok(i32::from(unsafe { ifr.ifr_ifru.ifru_flags }) & libc::IFF_UP != 0)
    }

    /// Brings the interface up or down on the host (`ip link set NAME up|down`). The
    /// caller must be in the tap's network namespace.
    pub fn set_up(&self, up: bool) -> Result<(), Error> {
        let sock = self.flags_socket()?;
        let mut ifr = self.get_flags(&sock)?;
        // SAFETY: SIOCGIFFLAGS filled ifru_flags; we change only that member.
        unsafe {
            let f = ifr.ifr_ifru.ifru_flags;
            ifr.ifr_ifru.ifru_flags = if up {
                f | libc::IFF_UP as i16
            } else {
                f & !(libc::IFF_UP as i16)
            };
        }
        // SAFETY: SIOCSIFFLAGS reads one ifreq, which lives for the call.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &ifr) };
        if r < 0 {
            return Err(self.ioctl_err("SIOCSIFFLAGS"));
        }
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// A tap without IFF_VNET_HDR gets a zeroed header synthesised on receive and stripped
/// on send; its header length still follows `set_vnet_hdr_len` for the device's sake.
impl NetBackend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.vnet_hdr {
            return self.read_frame(buf);
        }
        let hdr = self.hdr_len;
        if buf.len() <= hdr {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "receive buffer smaller than the virtio-net header",
            ));
        }
        let (h, data) = buf.split_at_mut(hdr);
        let n = self.read_frame(data)?;
        h.fill(0);
        Ok(hdr + n)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let data = if self.vnet_hdr {
            frame
        } else {
            frame.get(self.hdr_len..).unwrap_or_default()
        };
        // A tap takes a frame whole or not at all.
        self.write_frame(data).map(|_| ())
    }

    fn set_vnet_hdr_len(&mut self, len: usize) -> io::Result<()> {
        if self.vnet_hdr {
            Tap::set_vnet_hdr_len(self, len).map_err(io::Error::from)
        } else if len == VNET_HDR_LEN || len == VNET_HDR_LEN_LEGACY {
            self.hdr_len = len;
            Ok(())
        } else {
            Err(Error::VnetHdrLen(len).into())
        }
    }

    fn supported_offloads(&self) -> Offloads {
        self.supported
    }

    fn set_offloads(&mut self, offloads: Offloads) -> io::Result<()> {
        Tap::set_offloads(self, offloads).map_err(io::Error::from)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::time::{Duration, Instant};

    /// Runs `f` on a thread in a network namespace of its own, created with
    /// unshare(CLONE_NEWNET); the namespace and every tap in it vanish when the thread
    /// ends. Returns false (and says so) where namespaces or tun are not available.
    fn in_netns(f: impl FnOnce() + Send + 'static) -> bool {
        let t = std::thread::spawn(move || {
            // SAFETY: unshare affects only this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!(
                    "skipped: cannot create a network namespace: {}",
                    io::Error::last_os_error()
                );
                return false;
            }
            if !std::path::Path::new("/dev/net/tun").exists() {
                eprintln!("skipped: no /dev/net/tun");
                return false;
            }
            f();
            true
        });
        match t.join() {
            Ok(ran) => ran,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    fn ifindex(name: &str) -> u32 {
        let c = CString::new(name).unwrap();
        // SAFETY: a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) }
    }

    const ETHERTYPE_TEST: u16 = 0x88b5; // IEEE local experimental

    fn test_frame(tag: u8, len: usize) -> Vec<u8> {
        let mut f = vec![0xff; 6]; // broadcast
        f.extend_from_slice(&[0x52, 0x54, 0x00, 0x12, 0x34, tag]);
        f.extend_from_slice(&ETHERTYPE_TEST.to_be_bytes());
        while f.len() < len {
            f.push((f.len() as u8).wrapping_mul(7) ^ tag);
        }
        f
    }

    fn is_test_frame(frame: &[u8]) -> bool {
        frame.len() >= 14 && frame[12..14] == ETHERTYPE_TEST.to_be_bytes()
    }

    struct PacketSocket(OwnedFd);

    impl PacketSocket {
        fn bind(ifname: &str) -> PacketSocket {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2).
            let s = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    proto.into(),
                )
            };
            assert!(s >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
            // SAFETY: a new fd nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(s) };
            // SAFETY: sockaddr_ll is plain data.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex(ifname) as i32;
            // SAFETY: bind reads one sockaddr_ll of the size given.
            let r = unsafe {
                libc::bind(
                    s,
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(r, 0, "bind: {}", io::Error::last_os_error());
            PacketSocket(fd)
        }

        fn send(&self, frame: &[u8]) {
            // SAFETY: send reads `frame`, which lives for the call.
            let r = unsafe {
                libc::send(
                    self.0.as_raw_fd(),
                    frame.as_ptr() as *const libc::c_void,
                    frame.len(),
                    0,
                )
            };
            assert_eq!(
                r,
                frame.len() as isize,
                "send: {}",
                io::Error::last_os_error()
            );
        }

        /// The next test frame seen on the interface, within two seconds.
        fn recv_test_frame(&self) -> Vec<u8> {
            let mut buf = vec![0u8; 65536];
            wait_for(self.0.as_raw_fd(), |_| {
                // SAFETY: recv writes at most buf.len() bytes into buf.
                let n = unsafe {
                    libc::recv(
                        self.0.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    return None;
                }
                let f = &buf[..n as usize];
                is_test_frame(f).then(|| f.to_vec())
            })
        }
    }

    /// Polls `fd` and calls `try_read` until it yields, for at most two seconds.
    fn wait_for<T>(fd: RawFd, mut try_read: impl FnMut(RawFd) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(v) = try_read(fd) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for a frame");
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd, which lives for the call.
            unsafe { libc::poll(&mut p, 1, left.as_millis() as i32) };
        }
    }

    fn read_test_frame(tap: &mut Tap) -> Vec<u8> {
        let mut buf = vec![0u8; crate::MAX_FRAME_LEN];
        let fd = tap.as_raw_fd();
        wait_for(fd, |_| match tap.recv(&mut buf) {
            Ok(n) if is_test_frame(&buf[VNET_HDR_LEN.min(n)..n]) => Some(buf[..n].to_vec()),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("tap read: {e}"),
        })
    }

    #[test]
    fn open_by_name_creates_the_interface_with_a_vnet_header() {
        in_netns(|| {
            assert_eq!(ifindex("kt0"), 0);
            let tap = Tap::open("kt0").unwrap();
            assert_eq!(tap.name(), "kt0");
            assert!(ifindex("kt0") > 0);
            assert!(tap.has_vnet_hdr());
            assert_eq!(tap.vnet_hdr_len(), VNET_HDR_LEN);
            let mut v: libc::c_int = 0;
            // SAFETY: TUNGETVNETHDRSZ writes one int.
            let r = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNGETVNETHDRSZ as _, &mut v) };
            assert_eq!(r, 0);
            assert_eq!(v, 12);
            // Non-blocking: nothing queued reads as WouldBlock.
            let mut buf = [0u8; 2048];
            let e = tap.read_frame(&mut buf).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::WouldBlock);

            let plain = Tap::open_with("kt9", false).unwrap();
            assert!(!plain.has_vnet_hdr());
            assert_eq!(plain.vnet_hdr_len(), 0);
            assert_eq!(plain.supported_offloads(), Offloads::NONE);

            // A template name lets the kernel number it.
            let t2 = Tap::open("ktx%d").unwrap();
            assert_eq!(t2.name(), "ktx0");
            let t3 = Tap::open("").unwrap();
            assert!(t3.name().starts_with("tap"), "{}", t3.name());
            drop(tap);
            // Not persistent: closing the last fd removes it.
            assert_eq!(ifindex("kt0"), 0);
        });
    }

    #[test]
    fn invalid_names_are_refused_before_touching_the_kernel() {
        for bad in ["a/b", "sixteen-chars-xx", "has space", "a:b"] {
            match Tap::open(bad) {
                Err(Error::InvalidName(n)) => assert_eq!(n, bad),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn offloads_are_probed_and_set() {
        in_netns(|| {
            let tap = Tap::open("kt0").unwrap();
            let s = tap.supported_offloads();
            // Every kernel we run on has these.
            assert!(s.csum && s.tso4 && s.tso6, "{s:?}");
            tap.set_offloads(s).unwrap();
            tap.set_offloads(Offloads {
                csum: true,
                tso4: true,
                ..Offloads::NONE
            })
            .unwrap();
            tap.set_offloads(Offloads::NONE).unwrap();
            // Segmentation without checksum offload is refused by the kernel.
            let e = tap
                .set_offloads(Offloads {
                    tso4: true,
                    ..Offloads::NONE
                })
                .unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::Ioctl {
                        what: "TUNSETOFFLOAD",
                        ..
                    }
                ),
                "{e}"
            );
        });
    }

    #[test]
    fn frames_go_both_ways_with_their_vnet_header() {
        in_netns(|| {
            let mut tap = Tap::open("kt0").unwrap();
            tap.set_up(true).unwrap();
            assert!(tap.is_up().unwrap());
            let sock = PacketSocket::bind("kt0");

            // Guest to host: what we write (header + frame) arrives as the frame.
            let frame = test_frame(1, 200);
            let mut with_hdr = vec![0u8; VNET_HDR_LEN];
            with_hdr.extend_from_slice(&frame);
            tap.send(&with_hdr).unwrap();
            assert_eq!(sock.recv_test_frame(), frame);

            // Host to guest: the frame comes out of the tap behind an empty header
            // (no offloads enabled, so no checksum or GSO flags).
            let frame = test_frame(2, 1400);
            sock.send(&frame);
            let got = read_test_frame(&mut tap);
            assert_eq!(&got[..VNET_HDR_LEN], &[0u8; VNET_HDR_LEN]);
            assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);

            // Legacy header length.
            tap.set_vnet_hdr_len(VNET_HDR_LEN_LEGACY).unwrap();
            let frame = test_frame(3, 100);
            sock.send(&frame);
            let mut buf = vec![0u8; 4096];
            let got = wait_for(tap.as_raw_fd(), |_| match tap.read_frame(&mut buf) {
                Ok(n) if is_test_frame(&buf[10.min(n)..n]) => Some(buf[..n].to_vec()),
                _ => None,
            });
            assert_eq!(&got[10..], &frame[..]);
            assert!(matches!(
                tap.set_vnet_hdr_len(11),
                Err(Error::VnetHdrLen(11))
            ));

            tap.set_up(false).unwrap();
            assert!(!tap.is_up().unwrap());
        });
    }

    #[test]
    fn mac_and_carrier() {
        in_netns(|| {
            let tap = Tap::open("kt0").unwrap();
            let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
            tap.set_mac(mac).unwrap();
            assert_eq!(tap.mac().unwrap(), mac);
            tap.set_up(true).unwrap();
            let carrier = || {
                std::fs::read_to_string("/sys/class/net/kt0/carrier")
                    .map(|s| s.trim() == "1")
                    .ok()
            };
            tap.set_carrier(false).unwrap();
            // /sys shows the namespace of whoever mounted it; only check where it is ours.
            if let Some(c) = carrier() {
                assert!(!c);
            }
            tap.set_carrier(true).unwrap();
        });
    }

    fn raw_tun_fd(name: &str, flags: i32) -> OwnedFd {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .unwrap();
        let mut ifr = ifreq_with_name(name).unwrap();
        ifr.ifr_ifru.ifru_flags = flags as i16;
        // SAFETY: TUNSETIFF on an ifreq that lives for the call.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF as _, &mut ifr) };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        f.into()
    }

    #[test]
    fn from_fd_keeps_the_fds_header_setting() {
        in_netns(|| {
            let fd = raw_tun_fd("kt1", libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR);
            let tap = Tap::from_fd(fd).unwrap();
            assert_eq!(tap.name(), "kt1");
            assert!(tap.has_vnet_hdr());
            assert!(tap.supported_offloads().csum);

            // Without a header: the backend synthesises one, offers no offloads.
            let fd = raw_tun_fd("kt2", libc::IFF_TAP | libc::IFF_NO_PI);
            let mut tap = Tap::from_fd(fd).unwrap();
            assert!(!tap.has_vnet_hdr());
            assert_eq!(tap.supported_offloads(), Offloads::NONE);
            assert!(matches!(
                tap.set_offloads(Offloads::ALL),
                Err(Error::NoVnetHdr { .. })
            ));
            tap.set_up(true).unwrap();
            let sock = PacketSocket::bind("kt2");
            let frame = test_frame(4, 300);
            let mut with_hdr = vec![0u8; VNET_HDR_LEN];
            with_hdr.extend_from_slice(&frame);
            tap.send(&with_hdr).unwrap();
            assert_eq!(sock.recv_test_frame(), frame);
            sock.send(&frame);
            let got = read_test_frame(&mut tap);
            assert_eq!(got.len(), VNET_HDR_LEN + frame.len());
            assert_eq!(&got[VNET_HDR_LEN..], &frame[..]);

            // A tun (IP) device and a non-tun fd are refused.
            let fd = raw_tun_fd("kt3", libc::IFF_TUN | libc::IFF_NO_PI);
            assert!(matches!(Tap::from_fd(fd), Err(Error::NotATap { .. })));
            let devnull: OwnedFd = File::open("/dev/null").unwrap().into();
            assert!(matches!(Tap::from_fd(devnull), Err(Error::NotATap { .. })));
        });
    }
}
