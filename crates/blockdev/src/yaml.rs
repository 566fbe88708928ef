//! A small YAML value tree that remembers the line every value came from.
//!
//! `serde_json::Value` would lose positions, and every error about a user's block-device
//! config must name the line it is about. serde-saphyr's `Spanned<T>` gives each value's
//! location, so the tree is built from spanned values through one visitor.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

/// A YAML value with the (1-based) line it started on; 0 when unknown.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Y {
    pub line: u32,
    pub v: V,
    /// For a scalar that YAML resolved to a boolean or number, the text as written, so that a
    /// partition named `no` or a type written `0x83` keeps its spelling.
    pub raw: Option<String>,
    /// Byte range in the source, when known.
    span: Option<(usize, usize)>,
}

/// The shape of a YAML value. Mapping keys are kept as text, in document order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum V {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Y>),
    Map(Vec<(String, Y)>),
}

impl Y {
    /// The value as a mapping, if it is one.
    pub fn as_map(&self) -> Option<&[(String, Y)]> {
        match &self.v {
            V::Map(m) => Some(m),
            _ => None,
        }
    }

    /// A plain value (for building trees in code).
    pub fn new(line: u32, v: V) -> Self {
        Y {
            line,
            v,
            raw: None,
            span: None,
        }
    }

    /// A scalar as text: strings as they are, other scalars as written (or formatted).
    pub fn scalar_text(&self) -> Option<String> {
        if let Some(raw) = &self.raw {
            return Some(raw.clone());
        }
        match &self.v {
            V::Str(s) => Some(s.clone()),
            V::Int(i) => Some(i.to_string()),
            V::Float(f) => Some(f.to_string()),
            V::Bool(b) => Some(b.to_string()),
            V::Null | V::Seq(_) | V::Map(_) => None,
        }
    }

    /// A short description of the value's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match &self.v {
            V::Null => "nothing",
            V::Bool(_) => "a boolean",
            V::Int(_) => "an integer",
            V::Float(_) => "a number",
            V::Str(_) => "a string",
            V::Seq(_) => "a list",
            V::Map(_) => "a mapping",
        }
    }

    /// Converts to JSON (used for the canonical form that seeds derived identifiers).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.v {
            V::Null => serde_json::Value::Null,
            V::Bool(b) => serde_json::Value::Bool(*b),
            V::Int(i) => i64::try_from(*i)
                .map_or_else(|_| serde_json::Value::String(i.to_string()), Into::into),
            V::Float(f) => serde_json::Number::from_f64(*f)
                .map_or_else(|| serde_json::Value::String(f.to_string()), Into::into),
            V::Str(s) => serde_json::Value::String(s.clone()),
            V::Seq(items) => items.iter().map(Y::to_json).collect(),
            V::Map(entries) => entries
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        }
    }
}

/// The unspanned payload; its sequences and mappings hold spanned children.
struct Inner(V);

impl<'de> Deserialize<'de> for Inner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(InnerVisitor)
    }
}

impl<'de> Deserialize<'de> for Y {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Inner>::deserialize(d)?;
        let span = s.referenced.span();
        let span = match (span.byte_offset(), span.byte_len()) {
            (Some(o), Some(l)) => usize::try_from(o).ok().zip(usize::try_from(l).ok()),
            _ => None,
        };
        Ok(Y {
            line: u32::try_from(s.referenced.line()).unwrap_or(0),
            v: s.value.0,
            raw: None,
            span,
        })
    }
}

struct InnerVisitor;

impl<'de> Visitor<'de> for InnerVisitor {
    type Value = Inner;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Inner, E> {
        Ok(Inner(V::Null))
    }
    fn visit_none<E: de::Error>(self) -> Result<Inner, E> {
        Ok(Inner(V::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Inner, D::Error> {
        Inner::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Inner, E> {
        Ok(Inner(V::Bool(b)))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Inner, E> {
        Ok(Inner(V::Int(i128::from(i))))
    }
    fn visit_u64<E: de::Error>(self, i: u64) -> Result<Inner, E> {
        Ok(Inner(V::Int(i128::from(i))))
    }
    fn visit_i128<E: de::Error>(self, i: i128) -> Result<Inner, E> {
        Ok(Inner(V::Int(i)))
    }
    fn visit_u128<E: de::Error>(self, i: u128) -> Result<Inner, E> {
        Ok(Inner(
            i128::try_from(i).map_or_else(|_| V::Str(i.to_string()), V::Int),
        ))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Inner, E> {
        Ok(Inner(V::Float(f)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Inner, E> {
        Ok(Inner(V::Str(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Inner, E> {
        Ok(Inner(V::Str(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inner, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Y>()? {
            items.push(item);
        }
        Ok(Inner(V::Seq(items)))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Inner, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Y>()? {
            let key = key.scalar_text().unwrap_or_default();
            let value = map.next_value::<Y>()?;
            entries.push((key, value));
        }
        Ok(Inner(V::Map(entries)))
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub(crate) struct YamlError {
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub message: String,
}

fn position_suffix() -> regex::Regex {
    regex::Regex::new(r"\s*\(?\s*at line \d+,? column \d+\s*\)?\s*$").expect("valid regex")
}

/// Records the source text of resolved (non-string) scalars.
fn keep_raw(y: &mut Y, text: &str) {
    match &mut y.v {
        V::Bool(_) | V::Int(_) | V::Float(_) => {
            y.raw = y
                .span
                .and_then(|(o, l)| text.get(o..o + l))
                .map(str::trim)
                .filter(|t| !t.is_empty() && !t.starts_with(['*', '&', '!']))
                .map(str::to_owned);
        }
        V::Seq(items) => items.iter_mut().for_each(|i| keep_raw(i, text)),
        V::Map(entries) => entries.iter_mut().for_each(|(_, v)| keep_raw(v, text)),
        V::Null | V::Str(_) => {}
    }
}

/// Parses one YAML document into a spanned tree.
pub(crate) fn parse(text: &str) -> Result<Y, YamlError> {
    let mut doc = parse_tree(text)?;
    keep_raw(&mut doc, text);
    Ok(doc)
}

fn parse_tree(text: &str) -> Result<Y, YamlError> {
    serde_saphyr::from_str::<Y>(text).map_err(|e| {
        let loc = e.location();
        let line = loc
            .map(|l| u32::try_from(l.line()).unwrap_or(0))
            .filter(|l| *l > 0);
        let column = loc
            .map(|l| u32::try_from(l.column()).unwrap_or(0))
            .filter(|c| *c > 0);
        let rendered = e.without_snippet().to_string();
        let first = rendered
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("invalid YAML");
        // The position is reported separately; drop the parser's own copy of it.
        let message = position_suffix()
            .replace(first, "")
            .trim_end_matches(['.', ','])
            .to_owned();
        YamlError {
            line,
            column,
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_kept() {
        let y = parse("- a:\n    name: x\n- b:\n    size: 1\n").unwrap();
        let V::Seq(items) = &y.v else { panic!() };
        assert_eq!(items.len(), 2);
        let m = items[1].as_map().unwrap();
        assert_eq!(m[0].0, "b");
        assert_eq!(m[0].1.as_map().unwrap()[0].1.line, 4);
        assert_eq!(items[1].line, 3);
    }

    #[test]
    fn errors_have_positions() {
        let e = parse("- a: [1, 2\n- b: 3\n").unwrap_err();
        assert!(e.line.is_some(), "{e:?}");
        assert!(!e.message.contains('\n'));
        assert!(!e.message.contains("at line"), "{e:?}");
    }

    #[test]
    fn resolved_scalars_keep_their_spelling() {
        let y =
            parse("- {name: no, type: 0x83, size: 1024, t: 8300}\n- b: [y, on, 1.50]\n").unwrap();
        let V::Seq(items) = &y.v else { panic!() };
        let m = items[0].as_map().unwrap();
        let texts: Vec<String> = m.iter().map(|(_, v)| v.scalar_text().unwrap()).collect();
        assert_eq!(texts, ["no", "0x83", "1024", "8300"]);
        assert_eq!(m[0].1.v, V::Bool(false));
        let V::Seq(b) = &items[1].as_map().unwrap()[0].1.v else {
            panic!()
        };
        let texts: Vec<String> = b.iter().map(|v| v.scalar_text().unwrap()).collect();
        assert_eq!(texts, ["y", "on", "1.50"]);
    }

    #[test]
    fn scalars() {
        let y = parse("a: 0x83\nb: '0x83'\nc: 8300\nd: ~\ne: yes\nf: 1.5\n").unwrap();
        let m = y.as_map().unwrap();
        eprintln!("{m:?}");
        assert_eq!(m[1].1.v, V::Str("0x83".into()));
        assert_eq!(m[2].1.v, V::Int(8300));
        assert_eq!(m[3].1.v, V::Null);
    }
}
