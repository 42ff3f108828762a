//! x86_64: memory layout, CPUID, registers, boot protocols and firmware tables.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
pub mod state;
