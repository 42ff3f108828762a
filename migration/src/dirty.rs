//! Which guest pages a precopy pass sends: per RAM region, the union of KVM's dirty
//! log (what vCPUs wrote) and guest memory's own bitmap (what device models wrote,
//! vm-memory's `AtomicBitmap`), turned into runs of pages for
//! [`StreamWriter::ram`](crate::protocol::StreamWriter::ram).
//!
//! Both logs have the same layout: one bit per 4 KiB page of the region, bit `i % 64`
//! of word `i / 64` for page `i` (KVM_GET_DIRTY_LOG's and `AtomicBitmap::get_and_reset`'s
//! form). Both are read-and-cleared by their owners, so a page written after the read
//! is in the next pass's log: nothing written during precopy is lost, and the final
//! pass, with the vCPUs and devices stopped, sends the rest.

use crate::protocol::PAGE_SIZE;

/// One RAM region's dirty pages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionLog {
    /// Guest address of the region's first page.
    pub base: u64,
    /// Pages in the region (bits past this in the last word are ignored).
    pub pages: u64,
    pub words: Vec<u64>,
}

impl RegionLog {
    /// Every page of the region: the first pass sends all of RAM.
    pub fn all(base: u64, pages: u64) -> RegionLog {
        RegionLog {
            base,
            pages,
            words: vec![u64::MAX; pages.div_ceil(64) as usize],
        }
    }

    /// A log read from KVM or a bitmap; words beyond the region are an error of the
    /// caller's and are dropped, missing ones count as clean.
    pub fn from_words(base: u64, pages: u64, mut words: Vec<u64>) -> RegionLog {
        words.resize(pages.div_ceil(64) as usize, 0);
        RegionLog { base, pages, words }
    }

    /// Adds the pages of `other`, a log of the same region.
    pub fn merge(&mut self, other: &[u64]) {
        for (w, o) in self.words.iter_mut().zip(other) {
            *w |= *o;
        }
    }

    /// Word `i` without the bits past the region's last page.
    fn valid(&self, i: usize) -> u64 {
        let first_page = i as u64 * 64;
        if first_page >= self.pages {
            return 0;
        }
        match self.pages - first_page {
            left if left >= 64 => self.words[i],
            left => self.words[i] & ((1u64 << left) - 1),
        }
    }

    /// How many pages are dirty.
    pub fn count(&self) -> u64 {
        (0..self.words.len())
            .map(|i| u64::from(self.valid(i).count_ones()))
            .sum()
    }

    /// The dirty pages as runs of (guest address, page count), in address order.
    pub fn runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for i in 0..self.words.len() {
            let mut w = self.valid(i);
            while w != 0 {
                let bit = w.trailing_zeros() as u64;
                // The run of ones starting at `bit`.
                let len = (!(w >> bit)).trailing_zeros() as u64;
                let page = i as u64 * 64 + bit;
                let gpa = self.base + page * PAGE_SIZE;
                match runs.last_mut() {
                    Some((start, n)) if *start + *n * PAGE_SIZE == gpa => *n += len,
                    _ => runs.push((gpa, len)),
                }
                w &= if bit + len >= 64 {
                    0
                } else {
                    !(((1u64 << len) - 1) << bit)
                };
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;
    use vm_memory::bitmap::AtomicBitmap;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn vcpu_and_device_writes_merge_into_one_set_of_runs() {
        // A 200-page region at 1 MiB.
        let base = 1 << 20;
        // What KVM_GET_DIRTY_LOG gives: pages 0-1 and 63-64 (across a word boundary).
        let kvm = vec![0b11 | 1 << 63, 1, 0, 0];
        // What vm-memory's bitmap holds after devices wrote pages 2 and 100-102.
        let device = AtomicBitmap::new(200 * P as usize, NonZeroUsize::new(P as usize).unwrap());
        device.set_addr_range(2 * P as usize, 1);
        device.set_addr_range(100 * P as usize, 3 * P as usize);
        let mut log = RegionLog::from_words(base, 200, kvm);
        log.merge(&device.get_and_reset());
        assert_eq!(
            log.runs(),
            [(base, 3), (base + 63 * P, 2), (base + 100 * P, 3)]
        );
        assert_eq!(log.count(), 8);
        // Read-and-clear: the device bitmap is empty for the next pass.
        assert!(device.get_and_reset().iter().all(|w| *w == 0));
    }

    #[test]
    fn the_first_pass_is_all_of_ram_and_stops_at_the_region_end() {
        let log = RegionLog::all(0, 130);
        assert_eq!(log.runs(), [(0, 130)]);
        assert_eq!(log.count(), 130);
        let log = RegionLog::all(0, 128);
        assert_eq!(log.runs(), [(0, 128)]);
        // Stray bits past the region in a log are not pages.
        let log = RegionLog::from_words(0, 3, vec![u64::MAX]);
        assert_eq!(log.runs(), [(0, 3)]);
        assert_eq!(RegionLog::from_words(0, 64, vec![]).count(), 0);
    }

    #[test]
    fn alternating_pages_are_separate_runs() {
        let log = RegionLog::from_words(0, 64, vec![0xaaaa_aaaa_aaaa_aaaa]);
        let runs = log.runs();
        assert_eq!(runs.len(), 32);
        assert!(runs.iter().all(|(gpa, n)| *n == 1 && (gpa / P) % 2 == 1));
    }
}
