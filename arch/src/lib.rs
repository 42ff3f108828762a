//! Architecture support: the guest memory map, CPUID and MSR policy, vCPU register
//! setup for each boot protocol, and the firmware tables (e820, MP, ACPI) a Linux
//! guest reads at boot. Only x86_64 for now; aarch64 will sit beside it.

pub mod x86_64;

pub use x86_64::*;
