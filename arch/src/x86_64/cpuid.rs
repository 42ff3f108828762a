//! The CPUID a guest sees: what KVM supports on this host, adjusted by one table of
//! what a VMM owes its guest (topology, APIC ids, the hypervisor leaf) and by the
//! features `-cpu` names. Every adjustment carries its reason.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// A CPUID register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A named feature bit, as `-cpu MODEL,+name` spells it.
#[derive(Clone, Copy, Debug)]
pub struct Feature {
    pub name: &'static str,
    pub leaf: u32,
    pub index: u32,
    pub reg: Reg,
    pub bit: u32,
}

const fn f(name: &'static str, leaf: u32, index: u32, reg: Reg, bit: u32) -> Feature {
    Feature {
        name,
        leaf,
        index,
        reg,
        bit,
    }
}

/// The features `-cpu` can add or remove, by QEMU's names.
pub const FEATURES: &[Feature] = &[
    f("fpu", 1, 0, Reg::Edx, 0),
    f("tsc", 1, 0, Reg::Edx, 4),
    f("msr", 1, 0, Reg::Edx, 5),
    f("pae", 1, 0, Reg::Edx, 6),
    f("cx8", 1, 0, Reg::Edx, 8),
    f("apic", 1, 0, Reg::Edx, 9),
    f("sep", 1, 0, Reg::Edx, 11),
    f("mtrr", 1, 0, Reg::Edx, 12),
    f("pge", 1, 0, Reg::Edx, 13),
    f("cmov", 1, 0, Reg::Edx, 15),
    f("pat", 1, 0, Reg::Edx, 16),
    f("clflush", 1, 0, Reg::Edx, 19),
    f("mmx", 1, 0, Reg::Edx, 23),
    f("fxsr", 1, 0, Reg::Edx, 24),
    f("sse", 1, 0, Reg::Edx, 25),
    f("sse2", 1, 0, Reg::Edx, 26),
    f("ht", 1, 0, Reg::Edx, 28),
    f("sse3", 1, 0, Reg::Ecx, 0),
    f("pclmulqdq", 1, 0, Reg::Ecx, 1),
    f("ssse3", 1, 0, Reg::Ecx, 9),
    f("fma", 1, 0, Reg::Ecx, 12),
    f("cx16", 1, 0, Reg::Ecx, 13),
    f("pcid", 1, 0, Reg::Ecx, 17),
    f("sse4.1", 1, 0, Reg::Ecx, 19),
    f("sse4.2", 1, 0, Reg::Ecx, 20),
    f("x2apic", 1, 0, Reg::Ecx, 21),
    f("movbe", 1, 0, Reg::Ecx, 22),
    f("popcnt", 1, 0, Reg::Ecx, 23),
    f("tsc-deadline", 1, 0, Reg::Ecx, 24),
    f("aes", 1, 0, Reg::Ecx, 25),
    f("xsave", 1, 0, Reg::Ecx, 26),
    f("avx", 1, 0, Reg::Ecx, 28),
    f("f16c", 1, 0, Reg::Ecx, 29),
    f("rdrand", 1, 0, Reg::Ecx, 30),
    f("hypervisor", 1, 0, Reg::Ecx, 31),
    f("fsgsbase", 7, 0, Reg::Ebx, 0),
    f("bmi1", 7, 0, Reg::Ebx, 3),
    f("avx2", 7, 0, Reg::Ebx, 5),
    f("smep", 7, 0, Reg::Ebx, 7),
    f("bmi2", 7, 0, Reg::Ebx, 8),
    f("erms", 7, 0, Reg::Ebx, 9),
    f("invpcid", 7, 0, Reg::Ebx, 10),
    f("avx512f", 7, 0, Reg::Ebx, 16),
    f("rdseed", 7, 0, Reg::Ebx, 18),
    f("adx", 7, 0, Reg::Ebx, 19),
    f("smap", 7, 0, Reg::Ebx, 20),
    f("clflushopt", 7, 0, Reg::Ebx, 23),
    f("clwb", 7, 0, Reg::Ebx, 24),
    f("sha-ni", 7, 0, Reg::Ebx, 29),
    f("umip", 7, 0, Reg::Ecx, 2),
    f("pku", 7, 0, Reg::Ecx, 3),
    f("la57", 7, 0, Reg::Ecx, 16),
    f("rdpid", 7, 0, Reg::Ecx, 22),
    f("fsrm", 7, 0, Reg::Edx, 4),
    f("xsaveopt", 0xd, 1, Reg::Eax, 0),
    f("xsavec", 0xd, 1, Reg::Eax, 1),
    f("xsaves", 0xd, 1, Reg::Eax, 3),
    f("lahf-lm", 0x8000_0001, 0, Reg::Ecx, 0),
    f("abm", 0x8000_0001, 0, Reg::Ecx, 5),
    f("syscall", 0x8000_0001, 0, Reg::Edx, 11),
    f("nx", 0x8000_0001, 0, Reg::Edx, 20),
    f("pdpe1gb", 0x8000_0001, 0, Reg::Edx, 26),
    f("rdtscp", 0x8000_0001, 0, Reg::Edx, 27),
    f("lm", 0x8000_0001, 0, Reg::Edx, 29),
    f("invtsc", 0x8000_0007, 0, Reg::Edx, 8),
    // The kernel runs an AMD FXSAVE-leak workaround (FNCLEX/EMMS) unless this is set;
    // instruction emulators without those instructions need it (see resources/guest).
    f("xsaveerptr", 0x8000_0008, 0, Reg::Ebx, 2),
];

pub fn feature(name: &str) -> Option<&'static Feature> {
    // QEMU accepts both '-' and '_' in feature names.
    let n = name.replace('_', "-");
    FEATURES.iter().find(|f| f.name == n)
}

/// The CPU models `-cpu` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuModel {
    /// Everything KVM supports on this host.
    Host,
    /// QEMU's baseline x86-64 model: the host's support reduced to QEMU's qemu64 features.
    Qemu64,
}

/// qemu64's features (QEMU target/i386/cpu.c, "qemu64"), beyond which `Qemu64` hides.
const QEMU64_FEATURES: &[&str] = &[
    "fpu",
    "tsc",
    "msr",
    "pae",
    "cx8",
    "apic",
    "sep",
    "mtrr",
    "pge",
    "cmov",
    "pat",
    "clflush",
    "mmx",
    "fxsr",
    "sse",
    "sse2",
    "sse3",
    "cx16",
    "hypervisor",
    "lahf-lm",
    "syscall",
    "nx",
    "lm",
    "x2apic",
    "tsc-deadline",
];

/// The topology and identity one vCPU's CPUID must report.
#[derive(Clone, Debug)]
pub struct CpuidConfig {
    pub cpu_index: u8,
    pub num_cpus: u8,
    pub threads_per_core: u8,
    pub cores_per_socket: u8,
    pub model: CpuModel,
    /// `-cpu` feature overrides, applied last, in order.
    pub overrides: Vec<(&'static Feature, bool)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuidError {
    #[error("CPU feature '{0}' is not known; see the README's -cpu table")]
    UnknownFeature(String),
}

/// Resolves `-cpu` flags to the feature table.
pub fn resolve_overrides(
    flags: &[(String, bool)],
) -> Result<Vec<(&'static Feature, bool)>, CpuidError> {
    flags
        .iter()
        .map(|(n, on)| {
            feature(n)
                .map(|f| (f, *on))
                .ok_or_else(|| CpuidError::UnknownFeature(n.clone()))
        })
        .collect()
}

fn reg_mut(e: &mut kvm_cpuid_entry2, r: Reg) -> &mut u32 {
    match r {
        Reg::Eax => &mut e.eax,
        Reg::Ebx => &mut e.ebx,
        Reg::Ecx => &mut e.ecx,
        Reg::Edx => &mut e.edx,
    }
}

fn set_bit(e: &mut kvm_cpuid_entry2, r: Reg, bit: u32, on: bool) {
    let v = reg_mut(e, r);
    if on {
        *v |= 1 << bit;
    } else {
        *v &= !(1 << bit);
    }
}

fn entry_mut(c: &mut CpuId, leaf: u32, index: u32) -> Option<&mut kvm_cpuid_entry2> {
    c.as_mut_slice().iter_mut().find(|e| {
        e.function == leaf && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
    })
}

/// The KVM paravirtual signature, "KVMKVMKVM\0\0\0", in EBX/ECX/EDX of leaf 0x4000_0000.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Bits of the count fields needed to hold `n` distinct ids.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// The topology one vCPU reports, derived once from its `CpuidConfig`.
struct Topo {
    apic_id: u32,
    threads: u32,
    cores: u32,
}

impl Topo {
    fn logical_per_pkg(&self) -> u32 {
        self.threads * self.cores
    }
}

/// One adjustment of KVM's supported CPUID: which leaves, why, and what it does.
struct Adjustment {
    leaves: &'static [u32],
    reason: &'static str,
    apply: fn(&mut kvm_cpuid_entry2, &Topo),
}

/// Every change Kestrel makes to what KVM reports, in one table.
const ADJUSTMENTS: &[Adjustment] = &[
    Adjustment {
        leaves: &[1],
        reason: "EBX carries the initial APIC id, the logical CPUs per package and the CLFLUSH \
                 size; the kernel numbers CPUs by these. HTT tells it to trust the count.",
        apply: |e, t| {
            e.ebx = (t.apic_id << 24) | (t.logical_per_pkg().min(255) << 16) | (8 << 8);
            set_bit(e, Reg::Edx, 28, t.logical_per_pkg() > 1);
        },
    },
    Adjustment {
        leaves: &[1],
        reason: "The hypervisor bit: the guest runs on a hypervisor and may use kvmclock and \
                 its paravirtual features.",
        apply: |e, _| set_bit(e, Reg::Ecx, 31, true),
    },
    Adjustment {
        leaves: &[1],
        reason: "TSC-deadline timer: KVM's in-kernel LAPIC emulates it even where the host \
                 does not report it.",
        apply: |e, _| set_bit(e, Reg::Ecx, 24, true),
    },
    Adjustment {
        leaves: &[4],
        reason: "Cache topology: cores per package, and how many threads share each cache \
                 level, must match -smp.",
        apply: |e, t| {
            let level = (e.eax >> 5) & 7;
            let sharing = if level >= 3 {
                t.logical_per_pkg()
            } else {
                t.threads
            };
            e.eax &= 0x3ff;
            if e.eax & 0x1f != 0 {
                e.eax |= ((t.cores - 1) << 26) | ((sharing - 1) << 14);
            }
        },
    },
    Adjustment {
        leaves: &[6],
        reason: "No thermal or power-management interface is emulated; keep only the \
                 APERF/MPERF bit, which KVM decides.",
        apply: |e, _| {
            e.eax = 0;
            e.ecx &= 1;
        },
    },
    Adjustment {
        leaves: &[0xa],
        reason: "No PMU is set up for the guest; a guest probing one would only waste exits.",
        apply: |e, _| {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        },
    },
    Adjustment {
        leaves: &[0xb, 0x1f],
        reason: "Extended topology: level 0 is SMT, level 1 is core, EDX is the x2APIC id; \
                 must match -smp and the APIC ids of the MADT and MP table.",
        apply: |e, t| {
            let smt_bits = id_bits(t.threads);
            e.edx = t.apic_id;
            match e.index {
                0 => {
                    e.eax = smt_bits;
                    e.ebx = t.threads;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = smt_bits + id_bits(t.cores);
                    e.ebx = t.logical_per_pkg();
                    e.ecx = 2 << 8;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
            e.ecx |= e.index & 0xff;
        },
    },
    Adjustment {
        leaves: &[0x4000_0000],
        reason: "Identify as KVM (\"KVMKVMKVM\") so the guest uses kvmclock and KVM's \
                 paravirtual features.",
        apply: |e, _| {
            e.ebx = KVM_SIGNATURE[0];
            e.ecx = KVM_SIGNATURE[1];
            e.edx = KVM_SIGNATURE[2];
        },
    },
    Adjustment {
        leaves: &[0x8000_0008],
        reason: "XSAVEERPTR: without it Linux runs an AMD FXSAVE-leak workaround (FNCLEX, \
                 EMMS) that instruction emulators lack; KVM's FPU handling does not leak.",
        apply: |e, _| set_bit(e, Reg::Ebx, 2, true),
    },
];

/// The adjustment table, for documentation and tests: (leaves, reason).
pub fn adjustments() -> impl Iterator<Item = (&'static [u32], &'static str)> {
    ADJUSTMENTS.iter().map(|a| (a.leaves, a.reason))
}

/// Applies the VMM's adjustments to KVM's supported CPUID for one vCPU: the table above,
/// then the `-cpu` model, then the `-cpu` flags.
pub fn filter(cpuid: &mut CpuId, cfg: &CpuidConfig) {
    let topo = Topo {
        apic_id: u32::from(cfg.cpu_index),
        threads: u32::from(cfg.threads_per_core.max(1)),
        cores: u32::from(cfg.cores_per_socket.max(1)),
    };
    for e in cpuid.as_mut_slice().iter_mut() {
        let leaf = e.function;
        for a in ADJUSTMENTS.iter().filter(|a| a.leaves.contains(&leaf)) {
            (a.apply)(e, &topo);
        }
    }

    if cfg.model == CpuModel::Qemu64 {
        for feat in FEATURES {
            if !QEMU64_FEATURES.contains(&feat.name) && feat.name != "xsaveerptr" {
                if let Some(e) = entry_mut(cpuid, feat.leaf, feat.index) {
                    set_bit(e, feat.reg, feat.bit, false);
                }
            }
        }
        // With XSAVE hidden, extended state and AVX-family leaves go with it.
        if let Some(e) = entry_mut(cpuid, 1, 0) {
            set_bit(e, Reg::Ecx, 27, false); // OSXSAVE
        }
    }

    for (feat, on) in &cfg.overrides {
        match entry_mut(cpuid, feat.leaf, feat.index) {
            Some(e) => set_bit(e, feat.reg, feat.bit, *on),
            None if *on => {
                // The leaf is absent from KVM's table: it can't be provided.
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, flags: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax: 0,
            ebx: 0,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn sample() -> CpuId {
        let mut l1 = entry(1, 0, 0);
        l1.ecx = (1 << 26) | (1 << 23) | (1 << 13); // xsave, popcnt, cx16
        l1.edx = 1;
        let mut l7 = entry(7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        l7.ebx = 1 << 16;
        CpuId::from_entries(&[
            l1,
            l7,
            entry(0xb, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
            entry(0xb, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
            entry(0x4000_0000, 0, 0),
            entry(0x8000_0008, 0, 0),
        ])
        .unwrap()
    }

    fn get(c: &CpuId, leaf: u32, index: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == leaf && e.index == index)
            .unwrap()
    }

    fn cfg(cpu_index: u8) -> CpuidConfig {
        CpuidConfig {
            cpu_index,
            num_cpus: 4,
            threads_per_core: 2,
            cores_per_socket: 2,
            model: CpuModel::Host,
            overrides: vec![],
        }
    }

    #[test]
    fn apic_ids_and_topology() {
        let mut c = sample();
        filter(&mut c, &cfg(3));
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "initial APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical CPUs per package");
        assert_ne!(l1.edx & (1 << 28), 0, "HTT");
        assert_ne!(l1.ecx & (1 << 31), 0, "hypervisor bit");
        let smt = get(&c, 0xb, 0);
        let core = get(&c, 0xb, 1);
        assert_eq!((smt.eax, smt.ebx, smt.edx), (1, 2, 3));
        assert_eq!((smt.ecx >> 8) & 0xff, 1, "level type SMT");
        assert_eq!((core.eax, core.ebx), (2, 4));
        assert_eq!((core.ecx >> 8) & 0xff, 2, "level type core");
    }

    #[test]
    fn hypervisor_leaf_says_kvm() {
        let mut c = sample();
        filter(&mut c, &cfg(0));
        let h = get(&c, 0x4000_0000, 0);
        let sig: Vec<u8> = [h.ebx, h.ecx, h.edx]
            .iter()
            .flat_map(|r| r.to_le_bytes())
            .collect();
        assert_eq!(&sig[..9], b"KVMKVMKVM");
        assert_ne!(get(&c, 0x8000_0008, 0).ebx & 4, 0, "xsaveerptr");
    }

    #[test]
    fn qemu64_hides_newer_features_and_flags_override() {
        let mut c = sample();
        let mut k = cfg(0);
        k.model = CpuModel::Qemu64;
        k.overrides =
            resolve_overrides(&[("popcnt".into(), true), ("cx16".into(), false)]).unwrap();
        filter(&mut c, &k);
        let l1 = get(&c, 1, 0);
        assert_eq!(l1.ecx & (1 << 26), 0, "xsave hidden by qemu64");
        assert_ne!(l1.ecx & (1 << 23), 0, "+popcnt re-added");
        assert_eq!(l1.ecx & (1 << 13), 0, "-cx16 removed");
        assert_eq!(get(&c, 7, 0).ebx & (1 << 16), 0, "avx512f hidden");
    }

    #[test]
    fn unknown_feature_is_an_error() {
        assert_eq!(
            resolve_overrides(&[("warp-drive".into(), true)]).unwrap_err(),
            CpuidError::UnknownFeature("warp-drive".into())
        );
        assert!(feature("lahf_lm").is_some());
    }

    #[test]
    fn every_adjustment_says_why() {
        for (leaves, reason) in adjustments() {
            assert!(!leaves.is_empty());
            assert!(reason.len() > 30, "{leaves:x?}: {reason}");
        }
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut c = sample();
        let mut k = cfg(0);
        k.threads_per_core = 1;
        k.cores_per_socket = 1;
        k.num_cpus = 1;
        filter(&mut c, &k);
        assert_eq!(get(&c, 1, 0).edx & (1 << 28), 0);
    }
}
