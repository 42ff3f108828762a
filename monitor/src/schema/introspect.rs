//! Introspection (`query-qmp-schema`): [`introspect`] walks the registered commands and
//! events and every type they reach, each once, as QEMU lists them, and masks type names
//! unless told not to. `SchemaInfo` and `SchemaList` describe the result itself.

use super::{Empty, MemberSchema, ObjectSchema, QmpType, SchemaFn, TypeSchema, UnionSchema};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};

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
