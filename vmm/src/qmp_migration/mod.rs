//! QMP for live migration: the wire types (`types`) and the settings store
//! (`settings`) that `migrate-set-capabilities`, `migrate-set-parameters` and their
//! queries read and write, and that the migration engine reads when it runs.
//!
//! Both follow QEMU (9.2 for the shapes, 7.2's observed answers for defaults and error
//! texts) but list only what Kestrel honours, so `query-qmp-schema` describes exactly
//! what is accepted. The commands are registered by `crate::migrate_ops`.

pub mod settings;
pub mod types;

#[cfg(test)]
mod tests;
