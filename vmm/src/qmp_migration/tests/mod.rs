//! Tests of what a QMP client sees, against answers recorded from a real QEMU 7.2
//! (`qemu-system-x86_64 -M none -nodefaults -display none -qmp stdio`, Debian
//! 1:7.2+dfsg-7+deb12u18). Arguments go through the monitor's `parse_args`, the same
//! validation a registered command's arguments get, so schema refusals are tested too.

use monitor::schema::parse_args;
use monitor::QmpError;
use serde::de::DeserializeOwned;
use serde_json::Value;

mod settings;
mod types;

/// Validates and converts `args` as the registry does for a command taking `A`.
fn parse<A: monitor::QmpType + DeserializeOwned>(args: Value) -> Result<A, QmpError> {
    let Value::Object(map) = args else {
        return Err(QmpError::generic("test arguments must be an object"));
    };
    parse_args(map)
}

/// The error text of a result, or `None` when it succeeded.
fn err_text<T>(r: Result<T, QmpError>) -> Option<String> {
    r.err().map(|e| e.desc)
}
