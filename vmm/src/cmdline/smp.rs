//! `-smp`: the vCPU count and topology, with missing values computed as QEMU 7.2 computes
//! them (`machine_parse_smp_config`, preferring cores over sockets as machines since 6.2 do).

use serde::Deserialize;

use super::keyvalue;

/// Most vCPUs a Kestrel machine has: xAPIC IDs and the MP table stop at 255, as for QEMU's pc.
pub const MAX_CPUS: u32 = 255;

/// The resolved vCPU topology. `sockets * dies * cores * threads == maxcpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Smp {
    /// vCPUs present at boot.
    pub cpus: u32,
    pub sockets: u32,
    /// Always 1: Kestrel's topology has no dies (accepted as `dies=1` because libvirt passes it).
    pub dies: u32,
    pub cores: u32,
    pub threads: u32,
    /// vCPUs possible; equal to `cpus` since vCPU hotplug is not supported.
    pub maxcpus: u32,
}

impl Default for Smp {
    fn default() -> Self {
        Smp {
            cpus: 1,
            sockets: 1,
            dies: 1,
            cores: 1,
            threads: 1,
            maxcpus: 1,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmpOpts {
    cpus: Option<u64>,
    sockets: Option<u64>,
    dies: Option<u64>,
    clusters: Option<u64>,
    cores: Option<u64>,
    threads: Option<u64>,
    maxcpus: Option<u64>,
}

/// Parses and resolves the value of `-smp`. The error is the problem, without the option name.
pub fn parse_smp(arg: &str) -> Result<Smp, String> {
    let o: SmpOpts = keyvalue::from_str(arg, Some("cpus")).map_err(|e| e.to_string())?;
    resolve(&o)
}

fn resolve(o: &SmpOpts) -> Result<Smp, String> {
    let given = [
        o.cpus, o.sockets, o.dies, o.clusters, o.cores, o.threads, o.maxcpus,
    ];
    // QEMU 7.2 only warns (deprecated) and treats 0 as absent; later QEMU refuses it.
    if given.contains(&Some(0)) {
        return Err(
            "Invalid CPU topology: CPU topology parameters must be greater than zero".into(),
        );
    }
    if o.dies.unwrap_or(1) > 1 {
        return Err("dies not supported by this machine's CPU topology".into());
    }
    if o.clusters.unwrap_or(1) > 1 {
        return Err("clusters not supported by this machine's CPU topology".into());
    }
    // u128 so that no product of 64-bit inputs can overflow.
    let mut cpus = u128::from(o.cpus.unwrap_or(0));
    let mut sockets = u128::from(o.sockets.unwrap_or(0));
    let mut cores = u128::from(o.cores.unwrap_or(0));
    let mut threads = u128::from(o.threads.unwrap_or(0));
    let mut maxcpus = u128::from(o.maxcpus.unwrap_or(0));

    if cpus == 0 && maxcpus == 0 {
        sockets = sockets.max(1);
        cores = cores.max(1);
        threads = threads.max(1);
    } else {
        if maxcpus == 0 {
            maxcpus = cpus;
        }
        // Divisors below are products of values already forced to at least 1.
        if cores == 0 {
            sockets = sockets.max(1);
            threads = threads.max(1);
            cores = maxcpus / (sockets * threads);
        } else if sockets == 0 {
            threads = threads.max(1);
            sockets = maxcpus / (cores * threads);
        }
        if threads == 0 {
            threads = maxcpus / (sockets * cores);
        }
    }
    if maxcpus == 0 {
        maxcpus = sockets * cores * threads;
    }
    if cpus == 0 {
        cpus = maxcpus;
    }

    let hierarchy = format!("sockets ({sockets}) * cores ({cores}) * threads ({threads})");
    if sockets * cores * threads != maxcpus {
        return Err(format!(
            "Invalid CPU topology: product of the hierarchy must match maxcpus: \
             {hierarchy} != maxcpus ({maxcpus})"
        ));
    }
    if maxcpus < cpus {
        return Err(format!(
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: \
             {hierarchy} == maxcpus ({maxcpus}) < smp_cpus ({cpus})"
        ));
    }
    if maxcpus > u128::from(MAX_CPUS) {
        return Err(format!(
            "Invalid SMP CPUs {maxcpus}. The max CPUs supported by machine 'kestrel' is {MAX_CPUS}"
        ));
    }
    if maxcpus != cpus {
        return Err(format!(
            "CPU hotplug is not supported: maxcpus ({maxcpus}) must equal cpus ({cpus})"
        ));
    }
    let to_u32 = |v: u128| u32::try_from(v).map_err(|_| format!("value {v} is too large"));
    Ok(Smp {
        cpus: to_u32(cpus)?,
        sockets: to_u32(sockets)?,
        dies: 1,
        cores: to_u32(cores)?,
        threads: to_u32(threads)?,
        maxcpus: to_u32(maxcpus)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smp(arg: &str) -> (u32, u32, u32, u32, u32) {
        match parse_smp(arg) {
            Ok(s) => (s.cpus, s.sockets, s.cores, s.threads, s.maxcpus),
            Err(e) => panic!("{arg}: {e}"),
        }
    }

    fn smp_err(arg: &str) -> String {
        match parse_smp(arg) {
            Ok(s) => panic!("{arg}: accepted as {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn resolves_like_qemu() {
        assert_eq!(smp("4"), (4, 1, 4, 1, 4));
        assert_eq!(smp("cpus=4"), (4, 1, 4, 1, 4));
        assert_eq!(smp("sockets=2"), (2, 2, 1, 1, 2));
        assert_eq!(smp("cores=3"), (3, 1, 3, 1, 3));
        assert_eq!(smp("threads=2"), (2, 1, 1, 2, 2));
        assert_eq!(smp("8,sockets=2"), (8, 2, 4, 1, 8));
        assert_eq!(smp("8,cores=2"), (8, 4, 2, 1, 8));
        assert_eq!(smp("8,sockets=2,cores=2"), (8, 2, 2, 2, 8));
        assert_eq!(smp("8,threads=2"), (8, 1, 4, 2, 8));
        assert_eq!(smp("sockets=2,cores=2,threads=2"), (8, 2, 2, 2, 8));
        assert_eq!(smp("maxcpus=4"), (4, 1, 4, 1, 4));
        assert_eq!(
            smp("4,sockets=4,dies=1,clusters=1,cores=1,threads=1,maxcpus=4"),
            (4, 4, 1, 1, 4)
        );
        assert_eq!(smp("255").0, 255);
    }

    #[test]
    fn errors_in_qemu_wording() {
        assert_eq!(
            smp_err("cpus=2,sockets=3"),
            "Invalid CPU topology: product of the hierarchy must match maxcpus: \
             sockets (3) * cores (0) * threads (1) != maxcpus (2)"
        );
        assert_eq!(
            smp_err("sockets=2,cores=2,threads=2,cpus=4"),
            "Invalid CPU topology: product of the hierarchy must match maxcpus: \
             sockets (2) * cores (2) * threads (2) != maxcpus (4)"
        );
        assert_eq!(
            smp_err("cpus=4,maxcpus=2"),
            "Invalid CPU topology: maxcpus must be equal to or greater than smp: \
             sockets (1) * cores (2) * threads (1) == maxcpus (2) < smp_cpus (4)"
        );
        assert_eq!(
            smp_err("256"),
            "Invalid SMP CPUs 256. The max CPUs supported by machine 'kestrel' is 255"
        );
        assert!(smp_err("4,maxcpus=8").contains("CPU hotplug is not supported"));
        assert!(smp_err("0").contains("must be greater than zero"));
        assert!(smp_err("2,dies=2").contains("dies not supported"));
        assert!(smp_err("2,clusters=2").contains("clusters not supported"));
        assert_eq!(smp_err("4,foo=1"), "Invalid parameter 'foo'");
        assert!(smp_err("foo").starts_with("Parameter 'cpus' expects"));
        assert!(smp_err("cpus=-1").starts_with("Parameter 'cpus' expects"));
        assert!(smp_err("4,cpus=4").contains("more than once"));
        assert!(smp_err(
            "18446744073709551615,sockets=18446744073709551615,cores=18446744073709551615"
        )
        .contains("Invalid CPU topology"));
        assert!(
            smp_err("sockets=4294967296,cores=4294967296,threads=4294967296")
                .contains("Invalid SMP CPUs")
        );
    }
}
