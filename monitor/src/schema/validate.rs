//! Argument validation, run on the JSON before serde sees it so that every error has
//! QEMU's text (qmp-protocol.md §5.2): missing and unexpected members, wrong JSON types,
//! enum values and integer ranges, with the full path of nested members and in QEMU's
//! order (declared members first, then unexpected keys). [`parse_args`] then converts
//! the validated object to the typed struct.

use super::{Builtin, IntKind, MemberSchema, ObjectSchema, QmpType, TypeSchema};
use crate::qmp_error::QmpError;
use serde_json::{Map, Value};

fn join(path: &str, member: &str) -> String {
    if path.is_empty() {
        member.to_string()
    } else {
        format!("{path}.{member}")
    }
}

fn wrong_type(path: &str, expected: &str) -> QmpError {
    QmpError::generic(format!(
        "Invalid parameter type for '{}', expected: {expected}",
        shown(path)
    ))
}

/// QEMU prints `null` where it has no name (a top-level value).
fn shown(path: &str) -> &str {
    if path.is_empty() {
        "null"
    } else {
        path
    }
}

/// Checks `value` against `schema`, reporting the first problem with QEMU's text.
/// `path` is the full name of the value (`""` for the top-level arguments object).
/// Negative numbers given for 64-bit unsigned members are rewritten to their two's
/// complement, as QEMU accepts them "for backward compatibility".
pub fn validate(value: &mut Value, schema: &TypeSchema, path: &str) -> Result<(), QmpError> {
    match schema {
        TypeSchema::Builtin(b) => validate_builtin(value, *b, path),
        TypeSchema::Enum { values, .. } => match value {
            Value::String(s) if values.contains(&s.as_str()) => Ok(()),
            Value::String(s) => Err(QmpError::generic(format!(
                "Parameter '{}' does not accept value '{s}'",
                shown(path)
            ))),
            _ => Err(wrong_type(path, "string")),
        },
        TypeSchema::Array(elem) => match value {
            Value::Array(items) => {
                let elem = elem();
                for (i, item) in items.iter_mut().enumerate() {
                    validate(item, &elem, &format!("{}[{i}]", shown(path)))?;
                }
                Ok(())
            }
            _ => Err(wrong_type(path, "array")),
        },
        TypeSchema::Object(obj) => match value {
            Value::Object(map) => validate_object(map, obj, path),
            _ => Err(wrong_type(path, "object")),
        },
        TypeSchema::Alternate { name, members } => {
            for m in members {
                let m = m();
                if alternate_branch_matches(&m, value) {
                    return validate(value, &m, path);
                }
            }
            Err(wrong_type(path, name))
        }
    }
}

/// QEMU picks an alternate's branch by the JSON type of the value alone.
fn alternate_branch_matches(schema: &TypeSchema, value: &Value) -> bool {
    matches!(
        (schema, value),
        (TypeSchema::Builtin(Builtin::Any), _)
            | (
                TypeSchema::Builtin(Builtin::Str) | TypeSchema::Enum { .. },
                Value::String(_)
            )
            | (
                TypeSchema::Builtin(Builtin::Int(_) | Builtin::Number),
                Value::Number(_)
            )
            | (TypeSchema::Builtin(Builtin::Bool), Value::Bool(_))
            | (TypeSchema::Builtin(Builtin::Null), Value::Null)
            | (TypeSchema::Array(_), Value::Array(_))
            | (TypeSchema::Object(_), Value::Object(_))
    )
}

fn validate_builtin(value: &mut Value, b: Builtin, path: &str) -> Result<(), QmpError> {
    match (b, &*value) {
        (Builtin::Any, _) => Ok(()),
        (Builtin::Str, Value::String(_)) => Ok(()),
        (Builtin::Str, _) => Err(wrong_type(path, "string")),
        (Builtin::Bool, Value::Bool(_)) => Ok(()),
        (Builtin::Bool, _) => Err(wrong_type(path, "boolean")),
        (Builtin::Null, Value::Null) => Ok(()),
        (Builtin::Null, _) => Err(wrong_type(path, "null")),
        (Builtin::Number, Value::Number(_)) => Ok(()),
        (Builtin::Number, _) => Err(wrong_type(path, "number")),
        (Builtin::Int(kind), _) => validate_int(value, kind, path),
    }
}

fn validate_int(value: &mut Value, kind: IntKind, path: &str) -> Result<(), QmpError> {
    let Value::Number(n) = &*value else {
        return Err(wrong_type(path, "integer"));
    };
    // A float is never an integer, even 1.0 (QEMU keeps the JSON token type).
    let v: i128 = if let Some(i) = n.as_i64() {
        i as i128
    } else if let Some(u) = n.as_u64() {
        if !kind.unsigned() {
            // QEMU reads signed members as int64 first; a larger value is a type error.
            return Err(wrong_type(path, "integer"));
        }
        u as i128
    } else {
        return Err(wrong_type(path, "integer"));
    };
    // Unsigned members are read as uint64, where QEMU lets negative values wrap.
    let v = if kind.unsigned() && v < 0 {
        (v as i64 as u64) as i128
    } else {
        v
    };
    if let Some((min, max, cname)) = kind.narrow_range() {
        if v < min || v > max {
            return Err(QmpError::generic(format!(
                "Parameter '{}' expects {cname}",
                shown(path)
            )));
        }
    }
    if kind == IntKind::U64 {
        if let Ok(u) = u64::try_from(v) {
            *value = Value::Number(u.into());
        }
    }
    Ok(())
}

fn validate_object(
    map: &mut Map<String, Value>,
    obj: &ObjectSchema,
    path: &str,
) -> Result<(), QmpError> {
    let mut known: Vec<&'static str> = Vec::with_capacity(obj.members.len());
    check_flat(map, obj, path, &mut known)?;
    // QEMU reports unexpected members only after every declared one was visited.
    if let Some(extra) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(QmpError::generic(format!(
            "Parameter '{}' is unexpected",
            join(path, extra)
        )));
    }
    Ok(())
}

/// Checks the members of `obj` and, when it is a union, those of the variant its tag
/// selects, recursively: a variant may itself be a union (QEMU's `MigrationAddress`
/// has the variant `socket`, a `SocketAddress`, which is a union on `type`), and all
/// their members sit flat in the one JSON object.
fn check_flat(
    map: &mut Map<String, Value>,
    obj: &ObjectSchema,
    path: &str,
    known: &mut Vec<&'static str>,
) -> Result<(), QmpError> {
    check_members(map, &obj.members, path, known)?;
    let Some(union) = &obj.union else {
        return Ok(());
    };
    let case = map
        .get(union.tag)
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(case) = case {
        if let Some((_, variant)) = union.variants.iter().find(|(c, _)| *c == case) {
            if let TypeSchema::Object(v) = variant() {
                check_flat(map, &v, path, known)?;
            }
        }
    }
    Ok(())
}

fn check_members(
    map: &mut Map<String, Value>,
    members: &[MemberSchema],
    path: &str,
    known: &mut Vec<&'static str>,
) -> Result<(), QmpError> {
    for m in members {
        known.push(m.name);
        let child = join(path, m.name);
        match map.get_mut(m.name) {
            None if m.optional => {}
            None => {
                return Err(QmpError::generic(format!("Parameter '{child}' is missing")));
            }
            Some(v) => validate(v, &(m.ty)(), &child)?,
        }
    }
    Ok(())
}

/// Validates a command's `arguments` object and converts it to the typed struct.
pub fn parse_args<A>(args: Map<String, Value>) -> Result<A, QmpError>
where
    A: QmpType + serde::de::DeserializeOwned,
{
    let mut value = Value::Object(args);
    validate(&mut value, &A::schema(), "")?;
    // After validation serde can only fail on a constraint the schema cannot express;
    // report it rather than panic.
    serde_json::from_value(value).map_err(|e| QmpError::generic(e.to_string()))
}
