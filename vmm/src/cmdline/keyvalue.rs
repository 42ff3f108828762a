//! A serde `Deserializer` for QEMU's `key=value,...` option strings, so every option value is
//! a `#[derive(Deserialize)]` struct and the syntax is parsed in exactly one place.
//!
//! The grammar is QemuOpts':
//! - items are separated by `,`; `,,` is a literal comma (inside keys and values alike);
//! - an item is `key=value` (split at the first `=`, so a value may contain `=`);
//! - the first item, when it has no `=` and the option has an "implied" key, is that key's
//!   value (`-smp 4` is `cpus=4`, `-chardev socket,...` is `backend=socket,...`);
//! - any other item without `=` is a bare key: `server` means `server=on`, and, for a struct
//!   that has a field `wait` but none called `nowait`, the old spelling `nowait` means
//!   `wait=off`;
//! - one trailing comma is ignored, as QemuOpts does.
//!
//! Unlike QemuOpts (last one wins) a key given twice is an error: it is almost always a typo.
//!
//! Values are typed by the target: booleans accept on/off, yes/no, true/false; integers are
//! decimal or `0x` hex; strings and paths are taken verbatim. An enum at the top level is
//! selected by the implied key's value (`-chardev socket,...` picks the `Socket` variant)
//! and the remaining items fill that variant.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess,
    VariantAccess, Visitor,
};

/// What went wrong in one keyvalue string. Display is QemuOpts' wording, without the option
/// name (the command-line layer prefixes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// A key the option does not have.
    UnknownKey(String),
    /// The same key twice (after resolving implied keys and `no` prefixes).
    DuplicateKey(String),
    /// A required key is absent.
    MissingKey(String),
    /// The value of `key` could not be read as `expected`.
    InvalidValue {
        key: Option<String>,
        expected: String,
    },
    /// The implied key selects a variant that does not exist (e.g. an unknown chardev backend).
    UnknownVariant { key: Option<String>, value: String },
    /// Anything else.
    Message(String),
}

impl KvError {
    /// Names the key a value error belongs to, if it does not name one yet.
    fn with_key(self, key: &str) -> Self {
        match self {
            KvError::InvalidValue {
                key: None,
                expected,
            } => KvError::InvalidValue {
                key: Some(key.to_string()),
                expected,
            },
            KvError::UnknownVariant { key: None, value } => KvError::UnknownVariant {
                key: Some(key.to_string()),
                value,
            },
            other => other,
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvError::UnknownKey(k) => write!(f, "Invalid parameter '{k}'"),
            KvError::DuplicateKey(k) => write!(f, "Parameter '{k}' is given more than once"),
            KvError::MissingKey(k) => write!(f, "Parameter '{k}' is missing"),
            KvError::InvalidValue {
                key: Some(k),
                expected,
            } => write!(f, "Parameter '{k}' expects {expected}"),
            KvError::InvalidValue {
                key: None,
                expected,
            } => write!(f, "expected {expected}"),
            KvError::UnknownVariant {
                key: Some(k),
                value,
            } => write!(f, "Parameter '{k}' does not accept value '{value}'"),
            KvError::UnknownVariant { key: None, value } => {
                write!(f, "value '{value}' is not accepted")
            }
            KvError::Message(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for KvError {}

impl de::Error for KvError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        KvError::Message(msg.to_string())
    }

    fn invalid_type(_unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        KvError::InvalidValue {
            key: None,
            expected: exp.to_string(),
        }
    }

    fn invalid_value(_unexp: de::Unexpected<'_>, exp: &dyn de::Expected) -> Self {
        KvError::InvalidValue {
            key: None,
            expected: exp.to_string(),
        }
    }

    fn unknown_variant(variant: &str, _expected: &'static [&'static str]) -> Self {
        KvError::UnknownVariant {
            key: None,
            value: variant.to_string(),
        }
    }

    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        KvError::UnknownKey(field.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        KvError::MissingKey(field.to_string())
    }

    fn duplicate_field(field: &'static str) -> Self {
        KvError::DuplicateKey(field.to_string())
    }
}

/// The value side of one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `key` alone, without `=`.
    Bare,
    /// `key=value` (or the implied key's value).
    Str(String),
}

/// One `key[=value]` item, commas unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub value: Value,
}

/// Splits `input` at single commas, turning `,,` into `,`.
fn split_items(input: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = input.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    // A trailing comma leaves an empty last item; QemuOpts ignores it, and so does "".
    if !cur.is_empty() || items.is_empty() {
        items.push(cur);
    }
    if input.is_empty() {
        items.clear();
    }
    items
}

/// Tokenizes `input` into items, giving the first `=`-less item the `implied` key.
pub fn tokenize(input: &str, implied: Option<&str>) -> Result<Vec<Item>, KvError> {
    let mut out = Vec::new();
    for (i, raw) in split_items(input).into_iter().enumerate() {
        if raw.is_empty() {
            return Err(KvError::UnknownKey(String::new()));
        }
        let item = match (i, implied, raw.split_once('=')) {
            (0, Some(key), None) => Item {
                key: key.to_string(),
                value: Value::Str(raw),
            },
            (_, _, Some((k, v))) => Item {
                key: k.to_string(),
                value: Value::Str(v.to_string()),
            },
            (_, _, None) => Item {
                key: raw,
                value: Value::Bare,
            },
        };
        if item.key.is_empty() {
            return Err(KvError::UnknownKey(String::new()));
        }
        out.push(item);
    }
    Ok(out)
}

fn check_duplicates(items: &[Item]) -> Result<(), KvError> {
    for (i, item) in items.iter().enumerate() {
        if items[..i].iter().any(|o| o.key == item.key) {
            return Err(KvError::DuplicateKey(item.key.clone()));
        }
    }
    Ok(())
}

/// Deserializes a QEMU keyvalue string into `T`. `implied` names the key of a leading
/// `=`-less item (`Some("cpus")` for `-smp`), or `None` if the option has none.
pub fn from_str<T: DeserializeOwned>(
    input: &str,
    implied: Option<&'static str>,
) -> Result<T, KvError> {
    let items = tokenize(input, implied)?;
    T::deserialize(Deserializer { items, implied })
}

/// Parses a QEMU boolean, as QemuOpts and the QAPI visitors accept it.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// Parses a decimal or `0x` hex integer with an optional leading `-`.
fn parse_int(s: &str) -> Option<i128> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (radix, digits) = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => (16, hex),
        None => (10, digits),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let v = i128::from_str_radix(digits, radix).ok()?;
    Some(if neg { -v } else { v })
}

/// The whole keyvalue string.
pub struct Deserializer {
    items: Vec<Item>,
    implied: Option<&'static str>,
}

impl Deserializer {
    /// Resolves the old `noKEY` spelling against the struct's fields, then refuses duplicates.
    fn normalize_for(&mut self, fields: &[&str]) -> Result<(), KvError> {
        for item in &mut self.items {
            if item.value != Value::Bare || fields.contains(&item.key.as_str()) {
                continue;
            }
            if let Some(base) = item.key.strip_prefix("no") {
                if fields.contains(&base) {
                    item.key = base.to_string();
                    item.value = Value::Str("off".to_string());
                }
            }
        }
        check_duplicates(&self.items)
    }
}

impl<'de> de::Deserializer<'de> for Deserializer {
    type Error = KvError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        self.deserialize_map(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        check_duplicates(&self.items)?;
        visitor.visit_map(ItemsMap {
            items: self.items.into_iter(),
            pending: None,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, KvError> {
        self.normalize_for(fields)?;
        visitor.visit_map(ItemsMap {
            items: self.items.into_iter(),
            pending: None,
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, KvError> {
        check_duplicates(&self.items)?;
        let tag = self.implied.ok_or_else(|| {
            KvError::Message("internal: an enum option needs an implied key".to_string())
        })?;
        let pos = self
            .items
            .iter()
            .position(|i| i.key == tag)
            .ok_or_else(|| KvError::MissingKey(tag.to_string()))?;
        let item = self.items.remove(pos);
        let variant = match item.value {
            Value::Str(s) => s,
            Value::Bare => {
                return Err(KvError::InvalidValue {
                    key: Some(tag.to_string()),
                    expected: "a value".to_string(),
                })
            }
        };
        visitor.visit_enum(Enum {
            tag,
            variant,
            rest: Deserializer {
                items: self.items,
                implied: None,
            },
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct identifier ignored_any
    }
}

struct ItemsMap {
    items: std::vec::IntoIter<Item>,
    pending: Option<Item>,
}

impl<'de> MapAccess<'de> for ItemsMap {
    type Error = KvError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, KvError> {
        match self.items.next() {
            Some(item) => {
                let key: de::value::StringDeserializer<KvError> =
                    item.key.clone().into_deserializer();
                self.pending = Some(item);
                seed.deserialize(key).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, KvError> {
        let item = self
            .pending
            .take()
            .ok_or_else(|| KvError::Message("internal: value without key".to_string()))?;
        let key = item.key;
        seed.deserialize(ValueDeserializer {
            key: &key,
            value: item.value,
        })
        .map_err(|e| e.with_key(&key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

struct Enum {
    tag: &'static str,
    variant: String,
    rest: Deserializer,
}

impl<'de> EnumAccess<'de> for Enum {
    type Error = KvError;
    type Variant = Deserializer;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Deserializer), KvError> {
        let name: de::value::StringDeserializer<KvError> = self.variant.into_deserializer();
        let v = seed.deserialize(name).map_err(|e| e.with_key(self.tag))?;
        Ok((v, self.rest))
    }
}

impl<'de> VariantAccess<'de> for Deserializer {
    type Error = KvError;

    fn unit_variant(self) -> Result<(), KvError> {
        match self.items.first() {
            Some(item) => Err(KvError::UnknownKey(item.key.clone())),
            None => Ok(()),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, KvError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value, KvError> {
        Err(KvError::Message(
            "internal: tuple variants are not supported".to_string(),
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, KvError> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

/// The value of one item.
struct ValueDeserializer<'a> {
    key: &'a str,
    value: Value,
}

impl ValueDeserializer<'_> {
    fn invalid(&self, expected: &str) -> KvError {
        KvError::InvalidValue {
            key: Some(self.key.to_string()),
            expected: expected.to_string(),
        }
    }

    fn string(self) -> Result<String, KvError> {
        match self.value {
            Value::Str(s) => Ok(s),
            Value::Bare => Err(self.invalid("a value")),
        }
    }

    fn integer(self, min: i128, max: i128) -> Result<i128, KvError> {
        let expected = if min == 0 {
            format!("a non-negative integer below {}", max.saturating_add(1))
        } else {
            format!("an integer between {min} and {max}")
        };
        let key = self.key.to_string();
        let s = self.string().map_err(|e| e.with_key(&key))?;
        match parse_int(&s) {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(KvError::InvalidValue {
                key: Some(key),
                expected,
            }),
        }
    }
}

macro_rules! deserialize_integer {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
                let v = self.integer(i128::from(<$ty>::MIN), i128::from(<$ty>::MAX))?;
                let v = <$ty>::try_from(v).map_err(|_| KvError::Message("internal: integer range".into()))?;
                visitor.$visit(v)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'_> {
    type Error = KvError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        match self.value {
            Value::Bare => visitor.visit_unit(),
            Value::Str(s) => visitor.visit_string(s),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        match &self.value {
            Value::Bare => visitor.visit_bool(true),
            Value::Str(s) => match parse_bool(s) {
                Some(b) => visitor.visit_bool(b),
                None => Err(self.invalid("'on' or 'off'")),
            },
        }
    }

    deserialize_integer! {
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        let key = self.key.to_string();
        let s = self.string()?;
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => visitor.visit_f64(v),
            _ => Err(KvError::InvalidValue {
                key: Some(key),
                expected: "a number".to_string(),
            }),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        visitor.visit_string(self.string()?)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        visitor.visit_string(self.string()?)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        // A key that is present has a value; absent keys never reach here.
        visitor.visit_some(self)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        match self.value {
            Value::Bare => visitor.visit_unit(),
            Value::Str(_) => Err(self.invalid("no value")),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, KvError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, KvError> {
        // Unit-variant enums spelled as strings, e.g. `on|off|auto`.
        let s: de::value::StringDeserializer<KvError> = self.string()?.into_deserializer();
        visitor.visit_enum(s)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, KvError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 unit_struct seq tuple tuple_struct map struct
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sock {
        path: Option<PathBuf>,
        server: Option<bool>,
        wait: Option<bool>,
        port: Option<u16>,
        #[serde(rename = "debug-threads")]
        debug_threads: Option<bool>,
        count: Option<i32>,
    }

    fn sock(s: &str) -> Result<Sock, KvError> {
        from_str(s, Some("path"))
    }

    #[test]
    fn implied_key_and_values() {
        let s = sock("/tmp/a,server=on,wait=off,port=0x10").expect("parses");
        assert_eq!(s.path, Some(PathBuf::from("/tmp/a")));
        assert_eq!(s.server, Some(true));
        assert_eq!(s.wait, Some(false));
        assert_eq!(s.port, Some(16));
        // The implied key may also be spelled out, anywhere.
        let s = sock("server=on,path=/x").expect("parses");
        assert_eq!(s.path, Some(PathBuf::from("/x")));
        // Only the first item is implied.
        assert_eq!(sock("server=on,/x"), Err(KvError::UnknownKey("/x".into())));
    }

    #[test]
    fn escaped_commas() {
        let s = sock("/a,,b,,,server").expect("parses");
        assert_eq!(s.path, Some(PathBuf::from("/a,b,")));
        assert_eq!(s.server, Some(true));
        let s = sock("path=x,,y=z").expect("parses");
        assert_eq!(s.path, Some(PathBuf::from("x,y=z")));
        assert_eq!(split_items("a,,,,b"), vec!["a,,b".to_string()]);
    }

    #[test]
    fn booleans() {
        for (v, b) in [
            ("on", true),
            ("yes", true),
            ("true", true),
            ("off", false),
            ("no", false),
            ("false", false),
        ] {
            let s = sock(&format!("server={v}")).expect("parses");
            assert_eq!(s.server, Some(b), "{v}");
        }
        // Bare key is on; the old `noKEY` spelling is off.
        let s = sock("/p,server,nowait").expect("parses");
        assert_eq!((s.server, s.wait), (Some(true), Some(false)));
        let s = sock("/p,noserver").expect("parses");
        assert_eq!(s.server, Some(false));
        let e = sock("/p,server=maybe").expect_err("bad bool");
        assert_eq!(e.to_string(), "Parameter 'server' expects 'on' or 'off'");
        let s = sock("/p,debug-threads").expect("parses");
        assert_eq!(s.debug_threads, Some(true));
    }

    #[test]
    fn numbers() {
        assert_eq!(sock("port=65535").expect("parses").port, Some(65535));
        assert_eq!(sock("count=-3").expect("parses").count, Some(-3));
        let e = sock("port=65536").expect_err("range");
        assert_eq!(
            e.to_string(),
            "Parameter 'port' expects a non-negative integer below 65536"
        );
        assert!(sock("port=x").is_err());
        assert!(sock("port=").is_err());
        assert!(sock("port=-1").is_err());
        assert!(sock("count=1x").is_err());
        let e = sock("/p,port").expect_err("bare");
        assert_eq!(e.to_string(), "Parameter 'port' expects a value");
    }

    #[test]
    fn sizes() {
        use crate::cmdline::values::{MegSize, Size};
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct M {
            size: Option<MegSize>,
            maxmem: Option<Size>,
        }
        let m: M = from_str("512,maxmem=1G", Some("size")).expect("parses");
        assert_eq!(m.size.map(|s| s.0), Some(512 << 20));
        assert_eq!(m.maxmem.map(|s| s.0), Some(1 << 30));
        let m: M = from_str("size=2k,maxmem=4096", Some("size")).expect("parses");
        assert_eq!(m.size.map(|s| s.0), Some(2048));
        assert_eq!(m.maxmem.map(|s| s.0), Some(4096));
        let e = from_str::<M>("foo", Some("size")).expect_err("bad size");
        assert!(e
            .to_string()
            .starts_with("Parameter 'size' expects a non-negative number"));
    }

    #[test]
    fn unknown_duplicate_missing() {
        assert_eq!(sock("/p,bogus=1"), Err(KvError::UnknownKey("bogus".into())));
        assert_eq!(sock("/p,bogus"), Err(KvError::UnknownKey("bogus".into())));
        assert_eq!(sock("/p,=1"), Err(KvError::UnknownKey(String::new())));
        assert_eq!(sock(",server"), Err(KvError::UnknownKey(String::new())));
        assert_eq!(
            sock("/p,path=/q"),
            Err(KvError::DuplicateKey("path".into()))
        );
        assert_eq!(
            sock("/p,server,server=off"),
            Err(KvError::DuplicateKey("server".into()))
        );
        assert_eq!(
            sock("/p,wait,nowait"),
            Err(KvError::DuplicateKey("wait".into()))
        );
        assert_eq!(
            KvError::DuplicateKey("x".into()).to_string(),
            "Parameter 'x' is given more than once"
        );
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Req {
            id: String,
        }
        let e = from_str::<Req>("", None).expect_err("missing");
        assert_eq!(e.to_string(), "Parameter 'id' is missing");
        // A trailing comma is ignored; the empty string is no items.
        assert_eq!(sock("/p,").expect("parses").path, Some(PathBuf::from("/p")));
        assert_eq!(sock("").expect("parses").path, None);
    }

    #[test]
    fn enum_selected_by_implied_key() {
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Id {
            id: String,
        }
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(rename_all = "lowercase")]
        enum Backend {
            Null(Id),
            Socket(Sock2),
        }
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Sock2 {
            id: String,
            server: Option<bool>,
        }
        let b: Backend = from_str("null,id=a", Some("backend")).expect("parses");
        assert_eq!(b, Backend::Null(Id { id: "a".into() }));
        let b: Backend = from_str("id=a,backend=socket,server", Some("backend")).expect("parses");
        assert_eq!(
            b,
            Backend::Socket(Sock2 {
                id: "a".into(),
                server: Some(true)
            })
        );
        let e = from_str::<Backend>("pty,id=a", Some("backend")).expect_err("variant");
        assert_eq!(
            e,
            KvError::UnknownVariant {
                key: Some("backend".into()),
                value: "pty".into()
            }
        );
        let e = from_str::<Backend>("null,id=a,server", Some("backend")).expect_err("field");
        assert_eq!(e, KvError::UnknownKey("server".into()));
        let e = from_str::<Backend>("null,id=a,backend=null", Some("backend")).expect_err("dup");
        assert_eq!(e, KvError::DuplicateKey("backend".into()));
        let e = from_str::<Backend>("id=a", Some("backend")).expect_err("missing");
        assert_eq!(e, KvError::MissingKey("backend".into()));
    }

    #[test]
    fn never_panics_on_odd_input() {
        for s in [
            "",
            ",",
            ",,",
            ",,,",
            "=",
            "==",
            "a=",
            "=a",
            "a==b",
            "\u{0}",
            "é=ü,,ß",
            ",a",
            "a,,",
            "0x",
            "-",
            "--1",
            "0X1g",
        ] {
            let _ = sock(s);
            let _ = from_str::<std::collections::BTreeMap<String, String>>(s, Some("k"));
        }
    }
}
