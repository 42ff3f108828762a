//! x86_64: memory layout, CPUID, registers, boot protocols and firmware tables.

pub mod layout;
