//! Tests of the schema: the `QmpType` descriptions the macros emit, argument validation
//! with QEMU's error texts and paths, and `query-qmp-schema` introspection (masking,
//! order, every reachable type once).

use super::*;
use crate::qmp_error::QmpError;
use serde_json::json;

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
    let a = check(json!({"action": "shutdown", "big": 18446744073709551615u64})).expect("in range");
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

#[test]
fn union_variant_that_is_itself_a_union() {
    crate::qmp_enum! { enum Transport { Socket = "socket" } }
    crate::qmp_enum! { enum SockType { Inet = "inet", Unix = "unix" } }
    crate::qmp_struct! { struct Inet { host: String = "host", port: String = "port" } }
    crate::qmp_struct! { struct Unix { path: String = "path" } }
    struct Sock;
    impl QmpType for Sock {
        fn schema() -> TypeSchema {
            TypeSchema::Object(ObjectSchema {
                name: "Sock",
                members: vec![MemberSchema::of::<SockType>("type")],
                union: Some(UnionSchema {
                    tag: "type",
                    variants: vec![("inet", Inet::schema), ("unix", Unix::schema)],
                }),
            })
        }
    }
    struct Addr;
    impl QmpType for Addr {
        fn schema() -> TypeSchema {
            TypeSchema::Object(ObjectSchema {
                name: "Addr",
                members: vec![MemberSchema::of::<Transport>("transport")],
                union: Some(UnionSchema {
                    tag: "transport",
                    variants: vec![("socket", Sock::schema)],
                }),
            })
        }
    }
    let run = |v: Value| {
        let mut v = v;
        validate(&mut v, &Addr::schema(), "addr")
            .err()
            .map(|e| e.desc)
    };
    let ok = json!({"transport": "socket", "type": "inet", "host": "h", "port": "1"});
    assert_eq!(run(ok), None);
    assert_eq!(
        run(json!({"transport": "socket", "type": "unix"})).as_deref(),
        Some("Parameter 'addr.path' is missing")
    );
    assert_eq!(
        run(json!({"transport": "socket", "type": "unix", "path": "p", "host": "h"})).as_deref(),
        Some("Parameter 'addr.host' is unexpected")
    );
    assert_eq!(
        run(json!({"transport": "socket", "type": "vsock"})).as_deref(),
        Some("Parameter 'addr.type' does not accept value 'vsock'")
    );
}
