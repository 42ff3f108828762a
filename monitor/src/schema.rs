//! The QAPI type system in miniature: every argument and return type describes itself
//! (`QmpType::schema()`), and that one description drives both argument validation with
//! QEMU's exact error texts and `query-qmp-schema` introspection, so neither can drift
//! from the Rust types.
//!
//! Types are declared once with [`qmp_struct!`](crate::qmp_struct) or
//! [`qmp_enum!`](crate::qmp_enum), which emit the Rust type (with serde derives and the
//! wire names) and its schema together. Primitives, `Option`, `Vec` and `serde_json::Value`
//! have hand-written impls here.
//!
//! Validation runs on the JSON *before* serde sees it, because serde's messages differ
//! from QEMU's (qmp-protocol.md §5.2): missing and unexpected members, wrong JSON types,
//! enum values and integer ranges are all reported here, with the full path of nested
//! members (`actions[0].data.x`), and in QEMU's order (members in declaration order, then
//! unexpected keys).
//!
//! This module holds the type descriptions, the built-in impls and the two macros;
//! validation is in `validate` and introspection in `introspect`, both below it.

use serde_json::Value;

mod introspect;
mod validate;

pub use introspect::{introspect, Entity, SchemaInfo, SchemaList};
pub use validate::{parse_args, validate};

/// Integer widths. QAPI reports them all as `int` in the schema, but checks the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntKind {
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
}

impl IntKind {
    /// Range of the narrow widths and QEMU's name for them in range errors.
    fn narrow_range(self) -> Option<(i128, i128, &'static str)> {
        Some(match self {
            IntKind::I8 => (i8::MIN as i128, i8::MAX as i128, "int8_t"),
            IntKind::I16 => (i16::MIN as i128, i16::MAX as i128, "int16_t"),
            IntKind::I32 => (i32::MIN as i128, i32::MAX as i128, "int32_t"),
            IntKind::U8 => (0, u8::MAX as i128, "uint8_t"),
            IntKind::U16 => (0, u16::MAX as i128, "uint16_t"),
            IntKind::U32 => (0, u32::MAX as i128, "uint32_t"),
            IntKind::I64 | IntKind::U64 => return None,
        })
    }

    fn unsigned(self) -> bool {
        matches!(
            self,
            IntKind::U8 | IntKind::U16 | IntKind::U32 | IntKind::U64
        )
    }
}

/// QAPI built-in types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Str,
    Int(IntKind),
    Number,
    Bool,
    Null,
    Any,
}

impl Builtin {
    /// Name in the schema (QEMU never masks built-in names).
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Str => "str",
            Builtin::Int(_) => "int",
            Builtin::Number => "number",
            Builtin::Bool => "bool",
            Builtin::Null => "null",
            Builtin::Any => "any",
        }
    }

    /// `json-type` of `SchemaInfoBuiltin`.
    pub fn json_type(self) -> &'static str {
        match self {
            Builtin::Str => "string",
            Builtin::Int(_) => "int",
            Builtin::Number => "number",
            Builtin::Bool => "boolean",
            Builtin::Null => "null",
            Builtin::Any => "value",
        }
    }
}

/// A lazily evaluated schema, so recursive types do not recurse at construction.
pub type SchemaFn = fn() -> TypeSchema;

/// One member of an object type.
#[derive(Debug, Clone)]
pub struct MemberSchema {
    pub name: &'static str,
    pub ty: SchemaFn,
    pub optional: bool,
}

impl MemberSchema {
    /// A member whose type and optionality come from the Rust field type.
    pub fn of<T: QmpType>(name: &'static str) -> Self {
        MemberSchema {
            name,
            ty: T::schema,
            optional: T::OPTIONAL,
        }
    }
}

/// The variant part of a flat union: the value of member `tag` (an enum) selects which
/// extra members are allowed.
#[derive(Debug, Clone)]
pub struct UnionSchema {
    pub tag: &'static str,
    pub variants: Vec<(&'static str, SchemaFn)>,
}

#[derive(Debug, Clone)]
pub struct ObjectSchema {
    pub name: &'static str,
    pub members: Vec<MemberSchema>,
    pub union: Option<UnionSchema>,
}

/// The description of one QAPI type.
#[derive(Debug, Clone)]
pub enum TypeSchema {
    Builtin(Builtin),
    Enum {
        name: &'static str,
        values: &'static [&'static str],
    },
    Array(SchemaFn),
    Object(ObjectSchema),
    /// A value of one of several types, chosen by its JSON type (e.g. `StrOrNull`).
    Alternate {
        name: &'static str,
        members: Vec<SchemaFn>,
    },
}

impl TypeSchema {
    /// The unmasked type name, also the identity used to emit each type once.
    pub fn name(&self) -> String {
        match self {
            TypeSchema::Builtin(b) => b.name().to_string(),
            TypeSchema::Enum { name, .. } => name.to_string(),
            TypeSchema::Array(elem) => format!("[{}]", elem().name()),
            TypeSchema::Object(o) => o.name.to_string(),
            TypeSchema::Alternate { name, .. } => name.to_string(),
        }
    }
}

/// A Rust type with a QAPI description.
pub trait QmpType {
    /// `Option<T>` members may be left out.
    const OPTIONAL: bool = false;

    fn schema() -> TypeSchema;

    /// Whether the value is left out when serialized (`None` members are omitted, as
    /// QEMU omits absent optional members).
    fn is_absent(&self) -> bool {
        false
    }
}

/// Used by `qmp_struct!` as serde's `skip_serializing_if`.
pub fn is_absent<T: QmpType>(v: &T) -> bool {
    v.is_absent()
}

macro_rules! builtin_impl {
    ($($t:ty => $b:expr),* $(,)?) => {
        $(impl QmpType for $t {
            fn schema() -> TypeSchema {
                TypeSchema::Builtin($b)
            }
        })*
    };
}

builtin_impl! {
    String => Builtin::Str,
    bool => Builtin::Bool,
    f64 => Builtin::Number,
    i8 => Builtin::Int(IntKind::I8),
    i16 => Builtin::Int(IntKind::I16),
    i32 => Builtin::Int(IntKind::I32),
    i64 => Builtin::Int(IntKind::I64),
    u8 => Builtin::Int(IntKind::U8),
    u16 => Builtin::Int(IntKind::U16),
    u32 => Builtin::Int(IntKind::U32),
    u64 => Builtin::Int(IntKind::U64),
    Value => Builtin::Any,
}

impl<T: QmpType> QmpType for Option<T> {
    const OPTIONAL: bool = true;
    fn schema() -> TypeSchema {
        T::schema()
    }
    fn is_absent(&self) -> bool {
        self.is_none()
    }
}

impl<T: QmpType> QmpType for Vec<T> {
    fn schema() -> TypeSchema {
        TypeSchema::Array(T::schema)
    }
}

impl<T: QmpType> QmpType for Box<T> {
    const OPTIONAL: bool = T::OPTIONAL;
    fn schema() -> TypeSchema {
        T::schema()
    }
}

/// The JSON `null` type (QAPI `null`), for alternates such as `StrOrNull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QNull;

impl serde::Serialize for QNull {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> serde::Deserialize<'de> for QNull {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|_| QNull)
    }
}

impl QmpType for QNull {
    fn schema() -> TypeSchema {
        TypeSchema::Builtin(Builtin::Null)
    }
}

/// The empty object: the arguments of commands without arguments and the `{}` return.
/// QEMU calls it `q_empty` and always lists it first (as `"0"` when masked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

pub const EMPTY_NAME: &str = "q_empty";

impl QmpType for Empty {
    fn schema() -> TypeSchema {
        TypeSchema::Object(ObjectSchema {
            name: EMPTY_NAME,
            members: Vec::new(),
            union: None,
        })
    }
}

/// Declares a QMP object type: the struct (serde derives, wire names, unknown members
/// refused, absent optionals omitted) and its `QmpType` schema, from one declaration.
///
/// ```
/// monitor::qmp_struct! {
///     /// Arguments of `human-monitor-command`.
///     #[derive(Debug, Clone, PartialEq)]
///     pub struct HmpArgs {
///         pub command_line: String = "command-line",
///         pub cpu_index: Option<i64> = "cpu-index",
///     }
/// }
/// let s = <HmpArgs as monitor::schema::QmpType>::schema();
/// assert_eq!(s.name(), "HmpArgs");
/// ```
#[macro_export]
macro_rules! qmp_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $fvis:vis $field:ident : $ty:ty = $wire:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive($crate::__private::serde::Serialize, $crate::__private::serde::Deserialize)]
        #[serde(crate = "::monitor::__private::serde", deny_unknown_fields)]
        $vis struct $name {
            $(
                $(#[$fmeta])*
                #[serde(rename = $wire, skip_serializing_if = "::monitor::schema::is_absent")]
                $fvis $field: $ty,
            )*
        }

        impl $crate::schema::QmpType for $name {
            fn schema() -> $crate::schema::TypeSchema {
                $crate::schema::TypeSchema::Object($crate::schema::ObjectSchema {
                    name: stringify!($name),
                    members: vec![$($crate::schema::MemberSchema::of::<$ty>($wire)),*],
                    union: None,
                })
            }
        }
    };
}

/// Declares a QMP enum: the Rust enum with its wire names, `as_str`/`from_wire`, the
/// list of values in wire order, and its `QmpType` schema.
///
/// ```
/// monitor::qmp_enum! {
///     pub enum Colour { Red = "red", DarkBlue = "dark-blue" }
/// }
/// assert_eq!(Colour::DarkBlue.as_str(), "dark-blue");
/// assert_eq!(Colour::from_wire("red"), Some(Colour::Red));
/// ```
#[macro_export]
macro_rules! qmp_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $wire:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash,
                 $crate::__private::serde::Serialize, $crate::__private::serde::Deserialize)]
        #[serde(crate = "::monitor::__private::serde")]
        $vis enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $wire)]
                $variant,
            )*
        }

        #[allow(dead_code)]
        impl $name {
            /// Every value, in wire (definition) order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
            /// Every wire name, in definition order.
            pub const VALUES: &'static [&'static str] = &[$($wire),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire),*
                }
            }

            pub fn from_wire(s: &str) -> Option<Self> {
                match s {
                    $($wire => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::schema::QmpType for $name {
            fn schema() -> $crate::schema::TypeSchema {
                $crate::schema::TypeSchema::Enum {
                    name: stringify!($name),
                    values: Self::VALUES,
                }
            }
        }
    };
}

#[cfg(test)]
mod tests;
