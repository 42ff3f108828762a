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

use crate::qmp_error::QmpError;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};

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

// ---------------------------------------------------------------------------------------
// Validation

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
    check_members(map, &obj.members, path, &mut known)?;
    if let Some(union) = &obj.union {
        let case = map
            .get(union.tag)
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(case) = case {
            if let Some((_, variant)) = union.variants.iter().find(|(c, _)| *c == case) {
                if let TypeSchema::Object(v) = variant() {
                    check_members(map, &v.members, path, &mut known)?;
                }
            }
        }
    }
    // QEMU reports unexpected members only after every declared one was visited.
    if let Some(extra) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(QmpError::generic(format!(
            "Parameter '{}' is unexpected",
            join(path, extra)
        )));
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

// ---------------------------------------------------------------------------------------
// Introspection (query-qmp-schema)

/// An entity of the schema: a command or an event.
pub enum Entity<'a> {
    Command {
        name: &'a str,
        args: SchemaFn,
        ret: SchemaFn,
        allow_oob: bool,
        features: &'a [&'static str],
    },
    Event {
        name: &'a str,
        data: SchemaFn,
    },
}

/// Builds `[SchemaInfo]` as QEMU does: entities first, then every type they reach, each
/// once. With `mask` (QEMU's default) non-builtin type names become numbers, so clients
/// cannot depend on them; `"0"` is always the empty object.
pub fn introspect(entities: &[Entity<'_>], mask: bool) -> Vec<Value> {
    let mut b = Introspector {
        mask,
        names: HashMap::new(),
        next: 0,
        queue: VecDeque::new(),
    };
    b.type_ref(&Empty::schema());
    let mut out = Vec::new();
    for e in entities {
        out.push(match e {
            Entity::Command {
                name,
                args,
                ret,
                allow_oob,
                features,
            } => {
                let mut m = Map::new();
                m.insert("name".into(), json!(name));
                m.insert("meta-type".into(), json!("command"));
                m.insert("arg-type".into(), json!(b.type_ref(&args())));
                m.insert("ret-type".into(), json!(b.type_ref(&ret())));
                if *allow_oob {
                    m.insert("allow-oob".into(), json!(true));
                }
                if !features.is_empty() {
                    m.insert("features".into(), json!(features));
                }
                Value::Object(m)
            }
            Entity::Event { name, data } => json!({
                "name": name,
                "meta-type": "event",
                "arg-type": b.type_ref(&data()),
            }),
        });
    }
    while let Some((masked, ty)) = b.queue.pop_front() {
        let entry = b.type_entry(&masked, &ty);
        out.push(entry);
    }
    out
}

struct Introspector {
    mask: bool,
    names: HashMap<String, String>,
    next: u32,
    queue: VecDeque<(String, TypeSchema)>,
}

impl Introspector {
    /// The name a reference to `ty` shows; the first reference queues its definition.
    fn type_ref(&mut self, ty: &TypeSchema) -> String {
        let real = ty.name();
        if let Some(n) = self.names.get(&real) {
            return n.clone();
        }
        let shown = match ty {
            TypeSchema::Builtin(_) => real.clone(),
            TypeSchema::Array(elem) => format!("[{}]", self.type_ref(&elem())),
            _ if self.mask => {
                let n = self.next.to_string();
                self.next += 1;
                n
            }
            _ => real.clone(),
        };
        self.names.insert(real, shown.clone());
        self.queue.push_back((shown.clone(), ty.clone()));
        shown
    }

    fn type_entry(&mut self, name: &str, ty: &TypeSchema) -> Value {
        match ty {
            TypeSchema::Builtin(b) => json!({
                "name": name, "meta-type": "builtin", "json-type": b.json_type(),
            }),
            TypeSchema::Enum { values, .. } => json!({
                "name": name,
                "meta-type": "enum",
                "members": values.iter().map(|v| json!({"name": v})).collect::<Vec<_>>(),
                "values": values,
            }),
            TypeSchema::Array(elem) => json!({
                "name": name, "meta-type": "array", "element-type": self.type_ref(&elem()),
            }),
            TypeSchema::Alternate { members, .. } => {
                let members: Vec<Value> = members
                    .iter()
                    .map(|m| json!({"type": self.type_ref(&m())}))
                    .collect();
                json!({"name": name, "meta-type": "alternate", "members": members})
            }
            TypeSchema::Object(o) => {
                let members: Vec<Value> = o
                    .members
                    .iter()
                    .map(|m| {
                        let mut e = Map::new();
                        e.insert("name".into(), json!(m.name));
                        e.insert("type".into(), json!(self.type_ref(&(m.ty)())));
                        if m.optional {
                            // QEMU marks optional members with a null default.
                            e.insert("default".into(), Value::Null);
                        }
                        Value::Object(e)
                    })
                    .collect();
                let mut e = Map::new();
                e.insert("name".into(), json!(name));
                e.insert("meta-type".into(), json!("object"));
                e.insert("members".into(), Value::Array(members));
                if let Some(u) = &o.union {
                    e.insert("tag".into(), json!(u.tag));
                    let variants: Vec<Value> = u
                        .variants
                        .iter()
                        .map(|(case, t)| json!({"case": case, "type": self.type_ref(&t())}))
                        .collect();
                    e.insert("variants".into(), Value::Array(variants));
                }
                Value::Object(e)
            }
        }
    }
}

/// `SchemaInfo`, the element type of `query-qmp-schema`'s return, described by hand: it
/// is a union the entries above are built directly as JSON for.
pub struct SchemaInfo;

crate::qmp_enum! {
    /// `SchemaMetaType`.
    pub enum SchemaMetaType {
        Builtin = "builtin",
        Enum = "enum",
        Array = "array",
        Object = "object",
        Alternate = "alternate",
        Command = "command",
        Event = "event",
    }
}

crate::qmp_enum! {
    /// `JSONType`.
    pub enum JsonType {
        String = "string",
        Number = "number",
        Int = "int",
        Boolean = "boolean",
        Null = "null",
        Object = "object",
        Array = "array",
        Value = "value",
    }
}

crate::qmp_struct! {
    pub struct SchemaInfoBuiltin { pub json_type: JsonType = "json-type" }
}
crate::qmp_struct! {
    pub struct SchemaInfoEnumMember {
        pub name: String = "name",
        pub features: Option<Vec<String>> = "features",
    }
}
crate::qmp_struct! {
    pub struct SchemaInfoEnum {
        pub members: Vec<SchemaInfoEnumMember> = "members",
        pub values: Vec<String> = "values",
    }
}
crate::qmp_struct! {
    pub struct SchemaInfoArray { pub element_type: String = "element-type" }
}
crate::qmp_struct! {
    pub struct SchemaInfoObjectMember {
        pub name: String = "name",
        pub ty: String = "type",
        pub default: Option<Value> = "default",
        pub features: Option<Vec<String>> = "features",
    }
}
crate::qmp_struct! {
    pub struct SchemaInfoObjectVariant {
        pub case: String = "case",
        pub ty: String = "type",
    }
}
crate::qmp_struct! {
    pub struct SchemaInfoObject {
        pub members: Vec<SchemaInfoObjectMember> = "members",
        pub tag: Option<String> = "tag",
        pub variants: Option<Vec<SchemaInfoObjectVariant>> = "variants",
    }
}
crate::qmp_struct! {
    pub struct SchemaInfoAlternateMember { pub ty: String = "type" }
}
crate::qmp_struct! {
    pub struct SchemaInfoAlternate { pub members: Vec<SchemaInfoAlternateMember> = "members" }
}
crate::qmp_struct! {
    pub struct SchemaInfoCommand {
        pub arg_type: String = "arg-type",
        pub ret_type: String = "ret-type",
        pub allow_oob: Option<bool> = "allow-oob",
    }
}
crate::qmp_struct! {
    pub struct SchemaInfoEvent { pub arg_type: String = "arg-type" }
}

impl QmpType for SchemaInfo {
    fn schema() -> TypeSchema {
        TypeSchema::Object(ObjectSchema {
            name: "SchemaInfo",
            members: vec![
                MemberSchema::of::<String>("name"),
                MemberSchema::of::<SchemaMetaType>("meta-type"),
                MemberSchema::of::<Option<Vec<String>>>("features"),
            ],
            union: Some(UnionSchema {
                tag: "meta-type",
                variants: vec![
                    ("builtin", SchemaInfoBuiltin::schema),
                    ("enum", SchemaInfoEnum::schema),
                    ("array", SchemaInfoArray::schema),
                    ("object", SchemaInfoObject::schema),
                    ("alternate", SchemaInfoAlternate::schema),
                    ("command", SchemaInfoCommand::schema),
                    ("event", SchemaInfoEvent::schema),
                ],
            }),
        })
    }
}

/// The return of `query-qmp-schema`: the introspection entries, already JSON.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(transparent)]
pub struct SchemaList(pub Vec<Value>);

impl QmpType for SchemaList {
    fn schema() -> TypeSchema {
        TypeSchema::Array(SchemaInfo::schema)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::qmp_enum! {
        enum Action { Reset = "reset", Shutdown = "shutdown" }
    }

    crate::qmp_struct! {
        #[derive(Debug, PartialEq)]
        struct Inner {
            flag: bool = "flag",
            n: Option<u8> = "n",
        }
    }

    crate::qmp_struct! {
        #[derive(Debug, PartialEq)]
        struct Args {
            action: Action = "action",
            size: Option<i64> = "size",
            big: Option<u64> = "big",
            list: Option<Vec<Inner>> = "list",
            any: Option<Value> = "any",
            num: Option<f64> = "num",
            name: Option<String> = "name",
        }
    }

    fn check(v: Value) -> Result<Args, QmpError> {
        match v {
            Value::Object(m) => parse_args::<Args>(m),
            _ => unreachable!("tests pass objects"),
        }
    }

    fn desc(v: Value) -> String {
        match check(v) {
            Err(e) => e.desc,
            Ok(a) => format!("unexpectedly accepted: {a:?}"),
        }
    }

    #[test]
    fn accepts_good_arguments() {
        let a = check(json!({"action": "reset", "size": -5, "list": [{"flag": true, "n": 3}], "any": [1], "num": 2}))
            .expect("valid");
        assert_eq!(a.action, Action::Reset);
        assert_eq!(a.size, Some(-5));
        assert_eq!(
            a.list,
            Some(vec![Inner {
                flag: true,
                n: Some(3)
            }])
        );
        assert_eq!(a.num, Some(2.0));
        assert_eq!(a.name, None);
    }

    #[test]
    fn qemu_argument_error_texts() {
        let cases = [
            (json!({}), "Parameter 'action' is missing"),
            (
                json!({"action": "reset", "x": 1}),
                "Parameter 'x' is unexpected",
            ),
            (
                json!({"action": 5}),
                "Invalid parameter type for 'action', expected: string",
            ),
            (
                json!({"action": "bogus"}),
                "Parameter 'action' does not accept value 'bogus'",
            ),
            (
                json!({"action": "reset", "size": "1"}),
                "Invalid parameter type for 'size', expected: integer",
            ),
            (
                json!({"action": "reset", "size": 1.5}),
                "Invalid parameter type for 'size', expected: integer",
            ),
            (
                json!({"action": "reset", "size": 1.0}),
                "Invalid parameter type for 'size', expected: integer",
            ),
            (
                json!({"action": "reset", "size": 9223372036854775808u64}),
                "Invalid parameter type for 'size', expected: integer",
            ),
            (
                json!({"action": "reset", "name": null}),
                "Invalid parameter type for 'name', expected: string",
            ),
            (
                json!({"action": "reset", "num": "x"}),
                "Invalid parameter type for 'num', expected: number",
            ),
            (
                json!({"action": "reset", "list": {}}),
                "Invalid parameter type for 'list', expected: array",
            ),
            (
                json!({"action": "reset", "list": [1]}),
                "Invalid parameter type for 'list[0]', expected: object",
            ),
            (
                json!({"action": "reset", "list": [{}]}),
                "Parameter 'list[0].flag' is missing",
            ),
            (
                json!({"action": "reset", "list": [{"flag": true}, {"flag": 1}]}),
                "Invalid parameter type for 'list[1].flag', expected: boolean",
            ),
            (
                json!({"action": "reset", "list": [{"flag": true, "zz": 1}]}),
                "Parameter 'list[0].zz' is unexpected",
            ),
            (
                json!({"action": "reset", "list": [{"flag": true, "n": 300}]}),
                "Parameter 'list[0].n' expects uint8_t",
            ),
            (
                json!({"action": "reset", "list": [{"flag": true, "n": -1}]}),
                "Parameter 'list[0].n' expects uint8_t",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(desc(input.clone()), want, "input {input}");
        }
    }

    #[test]
    fn declared_members_are_checked_before_unexpected_ones() {
        // QEMU visits declared members first: a type error beats an unknown key, and a
        // missing member beats both.
        assert_eq!(
            desc(json!({"zz": 1, "action": 1})),
            "Invalid parameter type for 'action', expected: string"
        );
        assert_eq!(desc(json!({"zz": 1})), "Parameter 'action' is missing");
    }

    #[test]
    fn negative_u64_wraps_like_qemu() {
        let a = check(json!({"action": "shutdown", "big": -1})).expect("QEMU accepts it");
        assert_eq!(a.big, Some(u64::MAX));
        let a =
            check(json!({"action": "shutdown", "big": 18446744073709551615u64})).expect("in range");
        assert_eq!(a.big, Some(u64::MAX));
    }

    #[test]
    fn enum_inside_list_names_the_element() {
        crate::qmp_struct! {
            struct Caps { enable: Option<Vec<Action>> = "enable" }
        }
        let e = parse_args::<Caps>(
            json!({"enable": ["foo"]})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(
            e.err().map(|e| e.desc).as_deref(),
            Some("Parameter 'enable[0]' does not accept value 'foo'")
        );
    }

    #[test]
    fn union_variant_members() {
        crate::qmp_enum! { enum Driver { File = "file", Null = "null-co" } }
        crate::qmp_struct! { struct FileOpts { filename: String = "filename" } }
        struct Opts;
        impl QmpType for Opts {
            fn schema() -> TypeSchema {
                TypeSchema::Object(ObjectSchema {
                    name: "Opts",
                    members: vec![MemberSchema::of::<Driver>("driver")],
                    union: Some(UnionSchema {
                        tag: "driver",
                        variants: vec![("file", FileOpts::schema)],
                    }),
                })
            }
        }
        let run = |v: Value| {
            let mut v = v;
            validate(&mut v, &Opts::schema(), "").err().map(|e| e.desc)
        };
        assert_eq!(run(json!({"driver": "file", "filename": "x"})), None);
        assert_eq!(
            run(json!({"driver": "file"})).as_deref(),
            Some("Parameter 'filename' is missing")
        );
        // A member of another variant is refused.
        assert_eq!(
            run(json!({"driver": "null-co", "filename": "x"})).as_deref(),
            Some("Parameter 'filename' is unexpected")
        );
    }

    #[test]
    fn alternate_branches() {
        struct StrOrNull;
        impl QmpType for StrOrNull {
            fn schema() -> TypeSchema {
                TypeSchema::Alternate {
                    name: "StrOrNull",
                    members: vec![String::schema, QNull::schema],
                }
            }
        }
        let mut v = json!(null);
        assert!(validate(&mut v, &StrOrNull::schema(), "backing").is_ok());
        let mut v = json!("x");
        assert!(validate(&mut v, &StrOrNull::schema(), "backing").is_ok());
        let mut v = json!(1);
        assert_eq!(
            validate(&mut v, &StrOrNull::schema(), "backing")
                .err()
                .map(|e| e.desc)
                .as_deref(),
            Some("Invalid parameter type for 'backing', expected: StrOrNull")
        );
    }

    #[test]
    fn serialization_omits_absent_members() {
        let i = Inner {
            flag: false,
            n: None,
        };
        assert_eq!(serde_json::to_value(&i).ok(), Some(json!({"flag": false})));
    }

    #[test]
    fn introspection_masks_and_deduplicates() {
        let entities = [
            Entity::Command {
                name: "cmd-a",
                args: Args::schema,
                ret: Empty::schema,
                allow_oob: false,
                features: &[],
            },
            Entity::Command {
                name: "cmd-b",
                args: Empty::schema,
                ret: <Vec<Inner>>::schema,
                allow_oob: true,
                features: &["unstable"],
            },
            Entity::Event {
                name: "EV",
                data: Inner::schema,
            },
        ];
        let s = introspect(&entities, true);
        let by_name = |n: &str| {
            s.iter()
                .find(|e| e["name"] == n)
                .cloned()
                .unwrap_or(Value::Null)
        };
        assert_eq!(
            by_name("0"),
            json!({"name": "0", "meta-type": "object", "members": []})
        );
        let a = by_name("cmd-a");
        assert_eq!(a["ret-type"], "0");
        let args = by_name(a["arg-type"].as_str().unwrap_or(""));
        assert_eq!(args["meta-type"], "object");
        assert_eq!(args["members"][0]["name"], "action");
        assert_eq!(
            args["members"][1],
            json!({"name": "size", "type": "int", "default": null})
        );
        let action = by_name(args["members"][0]["type"].as_str().unwrap_or(""));
        assert_eq!(action["values"], json!(["reset", "shutdown"]));
        let b = by_name("cmd-b");
        assert_eq!(b["allow-oob"], true);
        assert_eq!(b["features"], json!(["unstable"]));
        assert_eq!(b["arg-type"], "0");
        let list = by_name(b["ret-type"].as_str().unwrap_or(""));
        assert_eq!(list["meta-type"], "array");
        // Inner is listed once although three places use it.
        let inner = list["element-type"].as_str().unwrap_or("").to_string();
        assert_eq!(s.iter().filter(|e| e["name"] == inner.as_str()).count(), 1);
        assert_eq!(by_name("EV")["arg-type"], inner.as_str());
        // Every referenced type is defined.
        for e in &s {
            for key in ["arg-type", "ret-type", "element-type"] {
                if let Some(t) = e.get(key).and_then(Value::as_str) {
                    assert!(s.iter().any(|d| d["name"] == t), "{t} not defined");
                }
            }
        }
        // Builtins keep their names; no type is called by its Rust name when masked.
        assert_eq!(by_name("int")["json-type"], "int");
        assert!(s
            .iter()
            .all(|e| e["name"] != "Inner" && e["name"] != "Args"));
        let unmasked = introspect(&entities, false);
        assert!(unmasked.iter().any(|e| e["name"] == "Inner"));
    }
}
