//! Typed reading of the spanned TOML tree.
//!
//! We walk `toml::de::DeTable` by hand instead of deriving `Deserialize`: serde
//! stops at the first wrong type, while `switchyard check` must list every
//! problem at once, each with its place. Every getter here reports what is wrong
//! into a [`Sink`] and returns `None`, so callers fall back to a default and keep
//! going.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use crate::config::{ConfigError, ConfigErrors};

pub(super) type Span = Range<usize>;

/// Problems found so far, by byte offset; placed on lines only at the end, when
/// they are also put in file order.
pub(super) struct Sink<'s> {
    src: &'s str,
    errors: Vec<(Option<usize>, String)>,
}

impl<'s> Sink<'s> {
    pub(super) fn new(src: &'s str) -> Self {
        Sink {
            src,
            errors: Vec::new(),
        }
    }

    pub(super) fn at(&mut self, span: &Span, message: impl Into<String>) {
        self.errors.push((Some(span.start), message.into()));
    }

    /// For problems of the file as a whole (say, no listener at all).
    pub(super) fn nowhere(&mut self, message: impl Into<String>) {
        self.errors.push((None, message.into()));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// 1-based line of a byte offset, for messages that point at a second place.
    pub(super) fn line_of(&self, offset: usize) -> usize {
        line_col(self.src, offset).0
    }

    pub(super) fn finish(mut self, file: &str) -> ConfigErrors {
        self.errors.sort_by_key(|(at, _)| at.map_or(0, |o| o + 1));
        self.errors.dedup();
        let src = self.src;
        ConfigErrors(
            self.errors
                .into_iter()
                .map(|(at, message)| {
                    let (line, column) = at.map_or((0, 0), |o| line_col(src, o));
                    ConfigError {
                        file: file.to_string(),
                        line,
                        column,
                        message,
                    }
                })
                .collect(),
        )
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A table being read. `ctx` says where it is in the model (`upstream "foo": `) so
/// that every message about it can say so; `kind` names it in unknown-key messages.
pub(super) struct Table<'a, 'i> {
    pub(super) map: &'a DeTable<'i>,
    pub(super) span: Span,
    pub(super) kind: &'static str,
    pub(super) ctx: String,
}

pub(super) type Value<'a, 'i> = &'a Spanned<DeValue<'i>>;

impl<'a, 'i> Table<'a, 'i> {
    pub(super) fn err(&self, sink: &mut Sink<'_>, span: &Span, message: impl AsRef<str>) {
        sink.at(span, format!("{}{}", self.ctx, message.as_ref()));
    }

    pub(super) fn get(&self, key: &str) -> Option<Value<'a, 'i>> {
        self.map.get(key)
    }

    /// Reports every key not in `allowed`, listing the allowed ones: a misspelt key
    /// would otherwise be silently ignored and its default used.
    pub(super) fn check_keys(&self, sink: &mut Sink<'_>, allowed: &[&str]) {
        for (key, _) in self.map.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                let msg = format!(
                    "unknown key {:?} in {} (expected one of: {})",
                    key.get_ref(),
                    self.kind,
                    allowed.join(", ")
                );
                self.err(sink, &key.span(), msg);
            }
        }
    }

    pub(super) fn wrong_type(&self, sink: &mut Sink<'_>, key: &str, v: Value<'_, '_>, want: &str) {
        let msg = format!(
            "wrong type for {key}: expected {want}, found {}",
            v.get_ref().type_str()
        );
        self.err(sink, &v.span(), msg);
    }

    pub(super) fn missing(&self, sink: &mut Sink<'_>, key: &str) {
        let msg = format!("missing key {key:?} in {}", self.kind);
        self.err(sink, &self.span, msg);
    }

    pub(super) fn str(&self, sink: &mut Sink<'_>, key: &str) -> Option<(&'a str, Span)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::String(s) => Some((s.as_ref(), v.span())),
            _ => {
                self.wrong_type(sink, key, v, "a string");
                None
            }
        }
    }

    pub(super) fn bool(&self, sink: &mut Sink<'_>, key: &str) -> Option<(bool, Span)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some((*b, v.span())),
            _ => {
                self.wrong_type(sink, key, v, "a boolean");
                None
            }
        }
    }

    /// An integer within `min..=max`, converted to the field's type.
    pub(super) fn int<T: TryFrom<i128>>(
        &self,
        sink: &mut Sink<'_>,
        key: &str,
        min: i128,
        max: i128,
    ) -> Option<T> {
        let v = self.get(key)?;
        int_value(self, sink, key, v, min, max)
    }

    pub(super) fn duration(&self, sink: &mut Sink<'_>, key: &str) -> Option<Duration> {
        let v = self.get(key)?;
        let DeValue::String(s) = v.get_ref() else {
            self.wrong_type(sink, key, v, "a duration string such as \"2s\"");
            return None;
        };
        match humantime::parse_duration(s) {
            Ok(d) => Some(d),
            // humantime's own messages ("expected number at 0") assume one knows its
            // grammar; an example says more.
            Err(_) => {
                let msg = format!(
                    "bad duration {s:?} for {key} (expected a number and a unit, as in \"500ms\", \"2s\" or \"1m\")"
                );
                self.err(sink, &v.span(), msg);
                None
            }
        }
    }

    pub(super) fn array(&self, sink: &mut Sink<'_>, key: &str) -> Option<(&'a DeArray<'i>, Span)> {
        let v = self.get(key)?;
        match v.get_ref() {
            DeValue::Array(a) => Some((a, v.span())),
            _ => {
                self.wrong_type(sink, key, v, "an array");
                None
            }
        }
    }

    /// A sub-table, read with its own `kind` and a context extended by `ctx`.
    pub(super) fn table(
        &self,
        sink: &mut Sink<'_>,
        key: &str,
        kind: &'static str,
    ) -> Option<Table<'a, 'i>> {
        let v = self.get(key)?;
        let ctx = format!("{}{kind}: ", self.ctx);
        as_table(self, sink, key, v, kind, ctx)
    }
}

/// `v` as a table, or a wrong-type report against `parent`.
pub(super) fn as_table<'a, 'i>(
    parent: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    key: &str,
    v: Value<'a, 'i>,
    kind: &'static str,
    ctx: String,
) -> Option<Table<'a, 'i>> {
    match v.get_ref() {
        DeValue::Table(map) => Some(Table {
            map,
            span: v.span(),
            kind,
            ctx,
        }),
        _ => {
            parent.wrong_type(sink, key, v, "a table");
            None
        }
    }
}

/// An integer value within `min..=max`; `key` names it in messages.
pub(super) fn int_value<T: TryFrom<i128>>(
    t: &Table<'_, '_>,
    sink: &mut Sink<'_>,
    key: &str,
    v: Value<'_, '_>,
    min: i128,
    max: i128,
) -> Option<T> {
    let DeValue::Integer(i) = v.get_ref() else {
        t.wrong_type(sink, key, v, "an integer");
        return None;
    };
    let n = i128::from_str_radix(i.as_str(), i.radix()).ok();
    match n {
        Some(n) if (min..=max).contains(&n) => T::try_from(n).ok(),
        _ => {
            let msg = format!("{key} {i} out of range {min}..={max}");
            t.err(sink, &v.span(), msg);
            None
        }
    }
}
