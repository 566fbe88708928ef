//! A small, order-keeping document tree with line numbers, parsed from YAML or JSON.
//!
//! Element files such as `package-installs.yaml` are free-form maps whose semantics are
//! checked after parsing, and every complaint must point at a line. serde's derive would lose
//! both the key order (which decides the output order of the squash) and the positions, so
//! files are read into this tree first: YAML through serde-saphyr's `Spanned`, JSON through
//! serde_json (positions are then looked up by re-reading the text as YAML, best effort).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A value with the 1-based line it starts on, when known.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: Option<usize>,
    pub value: Value,
}

/// The value of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Keys are stringified scalars, with the line of the key.
    Map(Vec<(String, Option<usize>, Node)>),
}

impl Value {
    /// Python truthiness, as DIB's `if not params` uses it.
    pub fn is_falsy(&self) -> bool {
        match self {
            Value::Null => true,
            Value::Bool(b) => !b,
            Value::Int(i) => *i == 0,
            Value::Float(f) => *f == 0.0,
            Value::Str(s) => s.is_empty(),
            Value::Seq(v) => v.is_empty(),
            Value::Map(m) => m.is_empty(),
        }
    }

    /// Python's `str()` of a scalar; `None` for sequences and maps.
    pub fn python_str(&self) -> Option<String> {
        Some(match self {
            Value::Null => "None".to_string(),
            Value::Bool(true) => "True".to_string(),
            Value::Bool(false) => "False".to_string(),
            Value::Int(i) => i.to_string(),
            Value::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
                format!("{f:.1}")
            }
            Value::Float(f) => f.to_string(),
            Value::Str(s) => s.clone(),
            Value::Seq(_) | Value::Map(_) => return None,
        })
    }

    /// A short description of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a map",
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Seq(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", item.value)?;
                }
                f.write_str("]")
            }
            Value::Map(entries) => {
                f.write_str("{")?;
                for (i, (k, _, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k:?}: {}", v.value)?;
                }
                f.write_str("}")
            }
            other => f.write_str(&other.python_str().unwrap_or_default()),
        }
    }
}

/// Parse errors, with positions when the parser gave them.
#[derive(Debug)]
pub(crate) struct ParseError {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Parses YAML text. Duplicate keys keep the last value, as PyYAML does.
pub(crate) fn parse_yaml(text: &str) -> Result<Node, ParseError> {
    if text.trim().is_empty() {
        return Ok(Node {
            line: None,
            value: Value::Null,
        });
    }
    let options = serde_saphyr::options! {
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::LastWins,
    };
    match serde_saphyr::from_str_with_options::<Spanned<Value>>(text, options) {
        Ok(spanned) => Ok(Node {
            line: line_of(spanned.referenced),
            value: spanned.value,
        }),
        Err(err) => {
            let loc = err.location();
            Err(ParseError {
                line: loc.and_then(line_of),
                column: loc
                    .and_then(|l| usize::try_from(l.column()).ok())
                    .filter(|c| *c > 0),
                message: first_line(&err.without_snippet().to_string()),
            })
        }
    }
}

/// Parses JSON text; positions of the top-level keys are filled in from a YAML reading of
/// the same text when that succeeds.
pub(crate) fn parse_json(text: &str) -> Result<Node, ParseError> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|err| ParseError {
        line: Some(err.line()).filter(|l| *l > 0),
        column: Some(err.column()).filter(|c| *c > 0),
        message: strip_position(&err.to_string()),
    })?;
    let mut node = from_json(json);
    if let (Ok(yaml), Value::Map(entries)) = (parse_yaml(text), &mut node.value) {
        if let Value::Map(yaml_entries) = yaml.value {
            for (key, key_line, value) in entries.iter_mut() {
                if let Some((_, yaml_line, yaml_value)) =
                    yaml_entries.iter().find(|(k, _, _)| k == key)
                {
                    *key_line = *yaml_line;
                    value.line = yaml_value.line.or(*yaml_line);
                    copy_item_lines(value, yaml_value);
                }
            }
        }
    }
    Ok(node)
}

/// Copies the lines of list items from a YAML reading onto the JSON tree.
fn copy_item_lines(json: &mut Node, yaml: &Node) {
    if let (Value::Seq(items), Value::Seq(yaml_items)) = (&mut json.value, &yaml.value) {
        for (item, yaml_item) in items.iter_mut().zip(yaml_items) {
            item.line = yaml_item.line;
        }
    }
}

fn from_json(value: serde_json::Value) -> Node {
    let value = match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i128::from(i)),
            (None, Some(u), _) => Value::Int(i128::from(u)),
            (None, None, Some(f)) => Value::Float(f),
            (None, None, None) => Value::Str(n.to_string()),
        },
        serde_json::Value::String(s) => Value::Str(s),
        serde_json::Value::Array(items) => Value::Seq(items.into_iter().map(from_json).collect()),
        serde_json::Value::Object(map) => Value::Map(
            map.into_iter()
                .map(|(k, v)| (k, None, from_json(v)))
                .collect(),
        ),
    };
    Node { line: None, value }
}

fn line_of(loc: serde_saphyr::Location) -> Option<usize> {
    usize::try_from(loc.line()).ok().filter(|l| *l > 0)
}

/// The first line of a parser message, without the position (which is reported apart).
fn first_line(s: &str) -> String {
    strip_position(s.lines().next().unwrap_or_default().trim())
}

/// Drops a trailing " at line N, column M" / " at line N column M" from a parser message.
pub(crate) fn strip_position(message: &str) -> String {
    if let Some(i) = message.rfind(" at line ") {
        let tail = &message[i + " at line ".len()..];
        let positional = tail
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b',' || b == b' ' || b.is_ascii_lowercase());
        if positional && tail.contains("column") {
            return message[..i].to_string();
        }
    }
    message.to_string()
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(i128::from(v)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Int(i128::from(v)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i128::try_from(v).map_or_else(|_| Value::Str(v.to_string()), Value::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Value::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Value>>()? {
            items.push(Node {
                line: line_of(item.referenced),
                value: item.value,
            });
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(String, Option<usize>, Node)> = Vec::new();
        // Keys are read as their text: PyYAML and serde-saphyr disagree about which plain
        // words are booleans (`y`, `n`), and a package name is a name either way.
        while let Some(key) = map.next_key::<Spanned<Option<String>>>()? {
            let value = map.next_value::<Spanned<Value>>()?;
            let name = key.value.unwrap_or_else(|| "null".to_string());
            let node = Node {
                line: line_of(value.referenced),
                value: value.value,
            };
            // Last value wins, in the first key's position (like a Python dict).
            if let Some(existing) = entries.iter_mut().find(|(k, _, _)| *k == name) {
                existing.2 = node;
            } else {
                entries.push((name, line_of(key.referenced), node));
            }
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_keeps_order_and_lines() {
        let node = parse_yaml(
            "# comment\nzlib:\nabc:\n  phase: pre-install.d\nlist:\n  - arch: amd64\n  - {}\n",
        )
        .unwrap();
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        let keys: Vec<(&str, Option<usize>)> =
            entries.iter().map(|(k, l, _)| (k.as_str(), *l)).collect();
        assert_eq!(
            keys,
            [("zlib", Some(2)), ("abc", Some(3)), ("list", Some(5))]
        );
        assert_eq!(entries[0].2.value, Value::Null);
        let Value::Seq(items) = &entries[2].2.value else {
            panic!("not a list")
        };
        assert_eq!(items[0].line, Some(6));
        assert_eq!(items[1].line, Some(7));
    }

    #[test]
    fn yaml_scalars_and_errors() {
        let node = parse_yaml("a: yes\nb: 3\nc: 3.10\nd: ~\ne: '3'\n1: x\ny: 1\nyes: 2\nnull: 3\n")
            .unwrap();
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        let vals: Vec<&Value> = entries.iter().map(|(_, _, v)| &v.value).collect();
        assert_eq!(vals[0], &Value::Bool(true));
        assert_eq!(vals[1], &Value::Int(3));
        assert_eq!(vals[2].python_str().as_deref(), Some("3.1"));
        assert_eq!(vals[3], &Value::Null);
        assert_eq!(vals[4], &Value::Str("3".into()));
        let keys: Vec<&str> = entries.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d", "e", "1", "y", "yes", "null"]);

        let err = parse_yaml("a: 1\nb: [1, 2\nc: 3\n").err().unwrap();
        assert!(err.line.is_some());
        assert!(!err.message.is_empty());
        assert!(!err.message.contains(" at line "), "{}", err.message);
        assert_eq!(
            first_line("bad thing at line 9, column 1\nsnippet"),
            "bad thing"
        );
        assert_eq!(
            strip_position("expected value at line 3 column 1"),
            "expected value"
        );
        assert_eq!(
            strip_position("look at line 3 of the file"),
            "look at line 3 of the file"
        );
    }

    #[test]
    fn json_with_lines() {
        let node = parse_json("{\n  \"b\": null,\n  \"a\": [{\"arch\": \"x\"},\n        {}]\n}\n")
            .unwrap();
        let Value::Map(entries) = node.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].0, "b");
        assert_eq!(entries[0].1, Some(2));
        assert_eq!(entries[1].1, Some(3));
        let Value::Seq(items) = &entries[1].2.value else {
            panic!("not a list")
        };
        assert_eq!(items[1].line, Some(4));
        let err = parse_json("{\n \"a\": }\n").err().unwrap();
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn python_semantics() {
        assert!(Value::Seq(vec![]).is_falsy());
        assert!(Value::Str(String::new()).is_falsy());
        assert!(!Value::Str("x".into()).is_falsy());
        assert_eq!(Value::Float(3.0).python_str().as_deref(), Some("3.0"));
        assert_eq!(Value::Bool(true).python_str().as_deref(), Some("True"));
        assert_eq!(Value::Null.python_str().as_deref(), Some("None"));
    }
}
