//! JSON records to Arrow, with a predictable shape.
//!
//! - Scalars become typed columns: booleans, 64-bit integers, doubles, text.
//!   Integers and doubles in one column make it a double.
//! - A top-level object is flattened one level: `{"company": {"name": ..}}`
//!   becomes the column `company__name`.
//! - Anything deeper, and every array, is kept as JSON text in its column, for
//!   models to unpack with the JSON functions.
//! - A column's type is that of its first non-null value; values of another
//!   kind in the same batch land in a variant column `<column>__<type>`, the
//!   same rule the lake applies across batches.
//! - Strings are never guessed into dates: staging models cast them.
//! - Columns appear in first-seen order; keys of one object are taken in
//!   alphabetical order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, NullArray, StringBuilder,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde_json::{Map, Value};

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Float,
    Text,
}

impl Kind {
    fn slug(self) -> &'static str {
        match self {
            Kind::Bool => "bool",
            Kind::Int => "bigint",
            Kind::Float => "double",
            Kind::Text => "text",
        }
    }
}

/// A scalar of one flattened column, borrowing its text from the page's
/// bytes where the JSON had no escapes.
#[derive(Debug, Clone)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// An integer above `i64::MAX`: a double in its column, exact as a
    /// cursor.
    Big(u64),
    Text(Cow<'a, str>),
    /// An array or a deeper object, kept as its JSON text.
    Json(String),
}

impl<'a> Val<'a> {
    fn kind(&self) -> Option<Kind> {
        match self {
            Val::Null => None,
            Val::Bool(_) => Some(Kind::Bool),
            Val::Int(_) => Some(Kind::Int),
            Val::Float(_) | Val::Big(_) => Some(Kind::Float),
            Val::Text(_) | Val::Json(_) => Some(Kind::Text),
        }
    }

    fn from_value(v: Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(b),
            Value::Number(n) => number(&n),
            Value::String(s) => Val::Text(Cow::Owned(s)),
            // Arrays and nested objects are kept as JSON text.
            other => Val::Json(other.to_string()),
        }
    }

    /// The JSON value this came from (a cursor's value).
    fn to_value(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Int(i) => Value::from(*i),
            Val::Float(f) => Value::from(*f),
            Val::Big(u) => Value::from(*u),
            Val::Text(t) => Value::String(t.to_string()),
            Val::Json(j) => serde_json::from_str(j).unwrap_or(Value::Null),
        }
    }
}

fn number<'a>(n: &serde_json::Number) -> Val<'a> {
    match (n.as_i64(), n.as_u64()) {
        (Some(i), _) => Val::Int(i),
        (None, Some(u)) => Val::Big(u),
        (None, None) => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

struct Column<'a> {
    name: String,
    /// `name[..top_len]` is the record's key the column came from; when
    /// `nested`, `name[top_len + 2..]` is the key inside that key's object.
    top_len: usize,
    nested: bool,
    /// The record key's number (see [`Columns::tops`]).
    top: usize,
    /// `row + 1` of the last record the streaming decoder gave this column
    /// a value in: a second value in one record is a duplicate.
    stamp: usize,
    values: Vec<Val<'a>>,
}

impl Column<'_> {
    /// Whether this is the column of `top` (and `inner` in it), reached by
    /// that path: a column named `a__b` made from the key `a__b` is not the
    /// column of `b` inside `a`, although the two share a name.
    fn is(&self, top: &str, inner: Option<&str>) -> bool {
        let name = self.name.as_bytes();
        match inner {
            None => !self.nested && self.name == top,
            Some(inner) => {
                self.nested
                    && self.top_len == top.len()
                    && name.len() == top.len() + 2 + inner.len()
                    && &name[..top.len()] == top.as_bytes()
                    && &name[top.len() + 2..] == inner.as_bytes()
            }
        }
    }
}

/// Flattened values gathered into columns, row by row.
#[derive(Default)]
struct Columns<'a> {
    rows: usize,
    columns: Vec<Column<'a>>,
    index: HashMap<String, usize>,
    /// Record keys that made columns, numbered in first-seen order, and
    /// `row + 1` of the last record the streaming decoder saw each in.
    tops: HashMap<String, usize>,
    top_stamps: Vec<usize>,
}

impl<'a> Columns<'a> {
    fn new(rows: usize) -> Columns<'a> {
        Columns {
            rows,
            ..Columns::default()
        }
    }

    /// Put `v` in column `name` (record key `top`, and `inner` in its
    /// object) at `row`. `guess` is where the column probably is: records
    /// of one page mostly share their keys and order, so the `n`th value of
    /// a record usually goes where the `n`th of the previous record went,
    /// and no hashing is needed.
    fn put(
        &mut self,
        top: &str,
        inner: Option<&str>,
        name: &str,
        v: Val<'a>,
        row: usize,
        guess: &mut usize,
    ) {
        let i = match self.columns.get(*guess) {
            Some(c) if c.name == name => *guess,
            _ => match self.index.get(name) {
                Some(&i) => i,
                None => {
                    let next = self.tops.len();
                    let t = *self.tops.entry(top.to_string()).or_insert(next);
                    if t == self.top_stamps.len() {
                        self.top_stamps.push(0);
                    }
                    self.columns.push(Column {
                        name: name.to_string(),
                        top_len: top.len(),
                        nested: inner.is_some(),
                        top: t,
                        stamp: 0,
                        values: Vec::with_capacity(self.rows.max(row + 1)),
                    });
                    self.index.insert(name.to_string(), self.columns.len() - 1);
                    self.columns.len() - 1
                }
            },
        };
        *guess = i + 1;
        let col = &mut self.columns[i];
        if col.values.len() < row {
            col.values.resize(row, Val::Null);
        }
        if col.values.len() == row {
            col.values.push(v);
        } else {
            // The same flattened name twice in one record: the later one wins.
            col.values[row] = v;
        }
    }

    /// The column of record key `top` (and `inner` in its object), trying
    /// `guess` first; `name` is scratch space.
    fn find(
        &self,
        top: &str,
        inner: Option<&str>,
        guess: Option<usize>,
        name: &mut String,
    ) -> Option<usize> {
        if let Some(g) = guess
            && self.columns.get(g).is_some_and(|c| c.is(top, inner))
        {
            return Some(g);
        }
        name.clear();
        name.push_str(top);
        if let Some(inner) = inner {
            name.push_str("__");
            name.push_str(inner);
        }
        let &i = self.index.get(name.as_str())?;
        self.columns[i].is(top, inner).then_some(i)
    }

    /// Put one record's entries (top-level keys sorted, as a JSON map).
    fn put_record(&mut self, entries: Vec<(Cow<'a, str>, Entry<'a>)>, row: usize) {
        let mut name = String::new();
        let mut guess = 0;
        for (key, entry) in entries {
            match entry {
                Entry::Object(inner) => {
                    for (k2, v2) in inner {
                        name.clear();
                        name.push_str(&key);
                        name.push_str("__");
                        name.push_str(&k2);
                        self.put(&key, Some(&k2), &name, v2, row, &mut guess);
                    }
                }
                Entry::Scalar(v) => self.put(&key, None, &key, v, row, &mut guess),
            }
        }
    }

    fn finish(self) -> Result<RecordBatch> {
        let rows = self.rows;
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        let mut taken: std::collections::HashSet<String> =
            self.columns.iter().map(|c| c.name.clone()).collect();
        for mut col in self.columns {
            col.values.resize(rows, Val::Null);
            let primary = col.values.iter().find_map(Val::kind);
            let Some(primary) = primary else {
                fields.push(Field::new(&col.name, DataType::Null, true));
                arrays.push(Arc::new(NullArray::new(rows)));
                continue;
            };
            let numeric = matches!(primary, Kind::Int | Kind::Float);
            let has_float = numeric
                && col
                    .values
                    .iter()
                    .any(|v| matches!(v, Val::Float(_) | Val::Big(_)));
            let column_kind = if has_float { Kind::Float } else { primary };
            let belongs =
                |k: Kind| k == column_kind || (column_kind == Kind::Float && k == Kind::Int);
            // Values of other kinds, by kind, in first-seen order.
            let mut variants: Vec<Kind> = Vec::new();
            for v in &col.values {
                if let Some(k) = v.kind()
                    && !belongs(k)
                    && !variants.contains(&k)
                {
                    variants.push(k);
                }
            }
            let (f, a) = build(&col.name, column_kind, &col.values, belongs);
            fields.push(f);
            arrays.push(a);
            for k in variants {
                let mut name = format!("{}__{}", col.name, k.slug());
                while taken.contains(&name) {
                    name.push('_');
                }
                taken.insert(name.clone());
                let (f, a) = build(&name, k, &col.values, |x| x == k);
                fields.push(f);
                arrays.push(a);
            }
        }
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        Ok(batch)
    }
}

/// A top-level value of a record: a scalar, or an object flattened one
/// level (its keys sorted).
enum Entry<'a> {
    Scalar(Val<'a>),
    Object(Vec<(Cow<'a, str>, Val<'a>)>),
}

/// Convert JSON objects to one record batch. Every record must be an object
/// (callers reject the others with a reason before calling).
pub fn to_batch(records: Vec<Map<String, Value>>) -> Result<RecordBatch> {
    let mut columns = Columns::new(records.len());
    for (row, record) in records.into_iter().enumerate() {
        let entries = record
            .into_iter()
            .map(|(key, value)| {
                let entry = match value {
                    Value::Object(inner) => Entry::Object(
                        inner
                            .into_iter()
                            .map(|(k, v)| (Cow::Owned(k), Val::from_value(v)))
                            .collect(),
                    ),
                    v => Entry::Scalar(Val::from_value(v)),
                };
                (Cow::Owned(key), entry)
            })
            .collect();
        columns.put_record(entries, row);
    }
    columns.finish()
}

/// A page of records decoded straight from its JSON text.
pub struct Decoded {
    /// The objects, as [`to_batch`] makes them (`None` if there were none).
    pub batch: Option<RecordBatch>,
    /// Records that are not objects: (position in the page from 0, value).
    pub others: Vec<(usize, Value)>,
    /// Records that are not valid JSON although the page's text is shaped
    /// like it (a lone surrogate as JavaScript's `JSON.stringify` writes it,
    /// a number out of range): (position, why, the record's text).
    pub invalid: Vec<(usize, String, String)>,
    /// Records in the page, objects or not.
    pub records: usize,
    /// The largest value at the cursor path, compared by `after`.
    pub cursor: Option<Value>,
}

/// [`decode_records`], except that a page whose array holds records that
/// are not valid JSON still decodes: those records are set aside in
/// [`Decoded::invalid`] with the reason and their text, and the others
/// decode as a page of their own. Text that is not an array of values at all
/// is still an error.
pub fn decode_records_lenient(
    json: &str,
    cursor: Option<(&str, &After)>,
) -> std::result::Result<Decoded, serde_json::Error> {
    let first = match decode_records(json, cursor) {
        Ok(d) => return Ok(d),
        Err(e) => e,
    };
    // Splitting only checks the shape: escapes and numbers are not
    // interpreted, so each record can be tried alone.
    let Ok(raw) = serde_json::from_str::<Vec<&serde_json::value::RawValue>>(json) else {
        return Err(first);
    };
    let path: Option<Vec<&str>> = cursor.map(|(p, _)| p.split('.').collect());
    let (mut good, mut at_, mut invalid) = (Vec::new(), Vec::new(), Vec::new());
    let mut invalid_cursor: Option<Value> = None;
    for (i, r) in raw.iter().enumerate() {
        // A tree of values fails exactly where the column decoder does
        // (escapes, numbers, depth), without building a batch per record.
        match serde_json::from_str::<Value>(r.get()) {
            Ok(_) => {
                good.push(r.get());
                at_.push(i);
            }
            Err(e) => {
                let lone = lone_surrogates(r.get());
                let why = match lone.first() {
                    Some(&u) => format!(
                        "a lone surrogate {} in a string (JSON escapes \\ud800-\\udfff only in pairs): {e}",
                        &r.get()[u..u + 6]
                    ),
                    None => e.to_string(),
                };
                // The record's cursor still counts (read with U+FFFD for
                // each lone surrogate): it is kept, in quarantine, so a
                // cursor past it loses nothing, and the next run does not
                // fetch and quarantine it again.
                if let (Some(path), Some((_, after))) = (&path, cursor)
                    && !lone.is_empty()
                    && let Ok(v) = serde_json::from_str::<Value>(&repaired(r.get(), &lone))
                    && let Some(c) = at(&v, path).filter(|c| !c.is_null())
                    && invalid_cursor.as_ref().is_none_or(|b| after(c, b))
                {
                    invalid_cursor = Some(c.clone());
                }
                invalid.push((i, why, r.get().to_string()))
            }
        }
    }
    let mut out = decode_records(&format!("[{}]", good.join(",")), cursor)?;
    for (i, _) in &mut out.others {
        *i = at_[*i];
    }
    if let (Some(c), Some((_, after))) = (invalid_cursor, cursor)
        && out.cursor.as_ref().is_none_or(|b| after(&c, b))
    {
        out.cursor = Some(c);
    }
    out.invalid = invalid;
    out.records = raw.len();
    Ok(out)
}

/// Where in `text` each `\uXXXX` escape of a UTF-16 surrogate (D800-DFFF)
/// that is not half of a high-low pair starts.
fn lone_surrogates(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let unit = |at: usize| -> Option<u16> {
        let hex = text.get(at + 2..at + 6)?;
        (b.get(at) == Some(&b'\\') && b.get(at + 1) == Some(&b'u'))
            .then(|| u16::from_str_radix(hex, 16).ok())
            .flatten()
    };
    let (mut out, mut i) = (Vec::new(), 0);
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(i) {
            Some(0xD800..=0xDBFF) if matches!(unit(i + 6), Some(0xDC00..=0xDFFF)) => i += 12,
            Some(0xD800..=0xDFFF) => {
                out.push(i);
                i += 6;
            }
            Some(_) => i += 6,
            // Any other escape is two characters (`\\` among them).
            None => i += 2,
        }
    }
    out
}

/// `text` with the escapes at `lone` (from [`lone_surrogates`]) written
/// as U+FFFD, the replacement character.
fn repaired(text: &str, lone: &[usize]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for &at in lone {
        out.push_str(&text[from..at]);
        out.push_str("\\ufffd");
        from = at + 6;
    }
    out.push_str(&text[from..]);
    out
}

/// Whether a cursor value is after another.
pub type After = dyn Fn(&Value, &Value) -> bool;

/// Decode a JSON array of records (a page's `results`) into the batch
/// [`to_batch`] would make from the parsed records, without building a
/// tree of values: keys and text borrow from `json` where they can. With
/// `cursor` (a dotted path and an order), also the page's largest value
/// at that path.
pub fn decode_records(
    json: &str,
    cursor: Option<(&str, &After)>,
) -> std::result::Result<Decoded, serde_json::Error> {
    use serde::de::DeserializeSeed;
    let path: Option<Vec<&str>> = cursor.map(|(p, _)| p.split('.').collect());
    let mut sink = Sink {
        columns: Columns::new(0),
        groups: Vec::new(),
        flat: Vec::new(),
        resolved: Vec::new(),
        last: Vec::new(),
        name: String::new(),
        path: path.as_deref(),
        after: cursor.map(|(_, a)| a),
        out: Decoded {
            batch: None,
            others: Vec::new(),
            invalid: Vec::new(),
            records: 0,
            cursor: None,
        },
    };
    let mut de = serde_json::Deserializer::from_str(json);
    RecordsInto(&mut sink).deserialize(&mut de)?;
    de.end()?;
    let Sink {
        columns, mut out, ..
    } = sink;
    if columns.rows > 0 {
        out.batch = Some(columns.finish().map_err(serde::de::Error::custom)?);
    }
    Ok(out)
}

/// One top-level entry of the record being decoded: a scalar (one value
/// in [`Sink::flat`]) or an object (its values, `flat[start..end]`).
struct Group<'a> {
    key: Cow<'a, str>,
    object: bool,
    start: usize,
    end: usize,
}

/// One value of the record being decoded (`inner` is its key inside its
/// group's object; empty for a scalar).
struct Flat<'a> {
    inner: Cow<'a, str>,
    val: Val<'a>,
}

/// The columns of a page being decoded, fed one record at a time as the
/// parser streams past, and the record being decoded, in document order.
struct Sink<'a, 'p> {
    columns: Columns<'a>,
    groups: Vec<Group<'a>>,
    flat: Vec<Flat<'a>>,
    /// The column of each value of the record, in order.
    resolved: Vec<usize>,
    /// The previous record's `resolved`: the columns to try first.
    last: Vec<usize>,
    name: String,
    path: Option<&'p [&'p str]>,
    after: Option<&'p After>,
    out: Decoded,
}

impl<'a> Sink<'a, '_> {
    /// The record just parsed becomes a row.
    fn place(&mut self) {
        if let (Some(path), Some(after)) = (self.path, self.after)
            && let Some(v) = self.cursor_value(path).filter(|v| !v.is_null())
            && self.out.cursor.as_ref().is_none_or(|b| after(&v, b))
        {
            self.out.cursor = Some(v);
        }
        let row = self.columns.rows;
        self.columns.rows += 1;
        if self.resolve(row) {
            let columns = &mut self.columns.columns;
            for (f, &c) in self.flat.drain(..).zip(&self.resolved) {
                let col = &mut columns[c];
                if col.values.len() < row {
                    col.values.resize(row, Val::Null);
                }
                col.values.push(f.val);
            }
            std::mem::swap(&mut self.last, &mut self.resolved);
        } else {
            // A new key, a key twice, or an empty object: the record is put
            // as a JSON map holds it (keys sorted, the last of equal keys).
            let mut flat = std::mem::take(&mut self.flat).into_iter();
            let entries = self
                .groups
                .drain(..)
                .map(|g| {
                    let entry = if g.object {
                        Entry::Object(sorted(
                            flat.by_ref()
                                .take(g.end - g.start)
                                .map(|f| (f.inner, f.val))
                                .collect(),
                        ))
                    } else {
                        Entry::Scalar(flat.next().map_or(Val::Null, |f| f.val))
                    };
                    (g.key, entry)
                })
                .collect();
            self.columns.put_record(sorted(entries), row);
        }
        self.groups.clear();
        self.flat.clear();
    }

    /// Find the column of every value of the record, and whether the record
    /// can be put in document order: every column exists, and no column and
    /// no key is given twice (then the order cannot change the row).
    fn resolve(&mut self, row: usize) -> bool {
        let stamp = row + 1;
        self.resolved.clear();
        for g in &self.groups {
            if g.object && g.start == g.end {
                return false;
            }
            for (n, f) in (g.start..g.end).zip(&self.flat[g.start..g.end]) {
                let inner = g.object.then_some(&*f.inner);
                let guess = self.last.get(n).copied();
                let Some(c) = self.columns.find(&g.key, inner, guess, &mut self.name) else {
                    return false;
                };
                let col = &mut self.columns.columns[c];
                if col.stamp == stamp {
                    return false;
                }
                col.stamp = stamp;
                if n == g.start {
                    let top = &mut self.columns.top_stamps[col.top];
                    if *top == stamp {
                        return false;
                    }
                    *top = stamp;
                }
                self.resolved.push(c);
            }
        }
        true
    }

    /// The value at the cursor path in the record just parsed (the last of
    /// equal keys, as in a JSON map).
    fn cursor_value(&self, path: &[&str]) -> Option<Value> {
        let (first, rest) = path.split_first()?;
        let g = self.groups.iter().rev().find(|g| g.key == *first)?;
        let vals = &self.flat[g.start..g.end];
        match (g.object, rest) {
            (true, []) => Some(Value::Object(
                vals.iter()
                    .map(|f| (f.inner.to_string(), f.val.to_value()))
                    .collect(),
            )),
            (true, [second, deeper @ ..]) => {
                let v = vals
                    .iter()
                    .rev()
                    .find(|f| f.inner == *second)?
                    .val
                    .to_value();
                at(&v, deeper).cloned()
            }
            (false, deeper) => at(&vals.first()?.val.to_value(), deeper).cloned(),
        }
    }
}

/// A page's array of records, streamed into a [`Sink`].
struct RecordsInto<'s, 'a, 'p>(&'s mut Sink<'a, 'p>);

impl<'de> serde::de::DeserializeSeed<'de> for RecordsInto<'_, 'de, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RecordsInto<'_, 'de, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of records")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        while let Some(r) = seq.next_element_seed(RecordInto(&mut *self.0))? {
            let i = self.0.out.records;
            self.0.out.records += 1;
            match r {
                Some(other) => self.0.out.others.push((i, other)),
                None => self.0.place(),
            }
        }
        Ok(())
    }
}

/// One record: an object's entries pushed to the sink's record (`None`),
/// or any other value as it is.
struct RecordInto<'s, 'a, 'p>(&'s mut Sink<'a, 'p>);

impl<'de> serde::de::DeserializeSeed<'de> for RecordInto<'_, 'de, '_> {
    type Value = Option<Value>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RecordInto<'_, 'de, '_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a record")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let sink = self.0;
        while let Some(key) = map.next_key_seed(Text)? {
            let start = sink.flat.len();
            let object = map.next_value_seed(GroupInto(&mut sink.flat))?;
            sink.groups.push(Group {
                key,
                object,
                start,
                end: sink.flat.len(),
            });
        }
        Ok(None)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        RecordSeed.visit_seq(seq).map(Record::other)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
        Ok(Some(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok(Some(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Some(Value::String(v.to_string())))
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(Some(Value::Null))
    }
}

/// A record's top-level value, pushed as one scalar or as its object's
/// values (one level; deeper objects and arrays as JSON text), each made
/// by [`ScalarSeed`]. The value is whether it was an object.
struct GroupInto<'s, 'a>(&'s mut Vec<Flat<'a>>);

impl<'de> serde::de::DeserializeSeed<'de> for GroupInto<'_, 'de> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> GroupInto<'_, 'de> {
    fn scalar<E>(self, val: Val<'de>) -> std::result::Result<bool, E> {
        self.0.push(Flat {
            inner: Cow::Borrowed(""),
            val,
        });
        Ok(false)
    }
}

impl<'de> serde::de::Visitor<'de> for GroupInto<'_, 'de> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        while let Some(inner) = map.next_key_seed(Text)? {
            let val = map.next_value_seed(ScalarSeed)?;
            self.0.push(Flat { inner, val });
        }
        Ok(true)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let v = ScalarSeed.visit_seq(seq)?;
        self.scalar(v)
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<Self::Value, E> {
        self.scalar(ScalarSeed.visit_bool(v)?)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
        self.scalar(ScalarSeed.visit_i64(v)?)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
        self.scalar(ScalarSeed.visit_u64(v)?)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<Self::Value, E> {
        self.scalar(ScalarSeed.visit_f64(v)?)
    }
    fn visit_borrowed_str<E: serde::de::Error>(
        self,
        v: &'de str,
    ) -> std::result::Result<Self::Value, E> {
        self.scalar(ScalarSeed.visit_borrowed_str(v)?)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Self::Value, E> {
        self.scalar(ScalarSeed.visit_str(v)?)
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> std::result::Result<Self::Value, E> {
        self.scalar(ScalarSeed.visit_string(v)?)
    }
    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        self.scalar(ScalarSeed.visit_unit()?)
    }
}

/// Records decoded one JSON text at a time (the lines of a JSONL file)
/// into the batch [`to_batch`] would make from them.
#[derive(Default)]
pub struct Lines {
    columns: Columns<'static>,
}

impl Lines {
    pub fn new() -> Lines {
        Lines {
            columns: Columns::new(0),
        }
    }

    /// Objects pushed so far.
    pub fn rows(&self) -> usize {
        self.columns.rows
    }

    /// Decode one JSON text: `Ok(None)` when it was an object (now a row),
    /// `Ok(Some(value))` when it is valid JSON but not an object.
    pub fn push(&mut self, text: &str) -> std::result::Result<Option<Value>, serde_json::Error> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::from_str(text);
        let record = RecordSeed.deserialize(&mut de)?;
        de.end()?;
        match record {
            Record::Object(entries) => {
                let row = self.columns.rows;
                self.columns.rows += 1;
                self.columns.put_record(owned(entries), row);
                Ok(None)
            }
            Record::Other(v) => Ok(Some(v)),
        }
    }

    pub fn finish(self) -> Result<RecordBatch> {
        self.columns.finish()
    }
}

/// Entries that no longer borrow from their text.
fn owned(entries: Vec<(Cow<'_, str>, Entry<'_>)>) -> Vec<(Cow<'static, str>, Entry<'static>)> {
    let val = |v: Val<'_>| -> Val<'static> {
        match v {
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(b),
            Val::Int(i) => Val::Int(i),
            Val::Float(f) => Val::Float(f),
            Val::Big(u) => Val::Big(u),
            Val::Text(t) => Val::Text(Cow::Owned(t.into_owned())),
            Val::Json(j) => Val::Json(j),
        }
    };
    entries
        .into_iter()
        .map(|(k, e)| {
            let e = match e {
                Entry::Scalar(v) => Entry::Scalar(val(v)),
                Entry::Object(inner) => Entry::Object(
                    inner
                        .into_iter()
                        .map(|(k, v)| (Cow::Owned(k.into_owned()), val(v)))
                        .collect(),
                ),
            };
            (Cow::Owned(k.into_owned()), e)
        })
        .collect()
}

fn at<'v>(value: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(value, |v, k| match v {
        Value::Object(m) => m.get(*k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

enum Record<'a> {
    Object(Vec<(Cow<'a, str>, Entry<'a>)>),
    Other(Value),
}

impl Record<'_> {
    /// The value, unless the record is an object.
    fn other(self) -> Option<Value> {
        match self {
            Record::Other(v) => Some(v),
            Record::Object(_) => None,
        }
    }
}

/// Entries sorted by key, the last of equal keys kept: the order and the
/// winner a JSON map (serde_json's, sorted) gives.
fn sorted<T>(mut entries: Vec<(Cow<'_, str>, T)>) -> Vec<(Cow<'_, str>, T)> {
    if entries.windows(2).all(|w| w[0].0 < w[1].0) {
        return entries;
    }
    // Stable: equal keys stay in input order, so the last is the latest,
    // and it takes the place of the first.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    entries
}

struct RecordSeed;

impl<'de> serde::de::DeserializeSeed<'de> for RecordSeed {
    type Value = Record<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A record: an object's entries, or any other value as it is.
impl<'de> serde::de::Visitor<'de> for RecordSeed {
    type Value = Record<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a record")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key_seed(Text)? {
            let entry = map.next_value_seed(EntrySeed)?;
            entries.push((key, entry));
        }
        Ok(Record::Object(sorted(entries)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        use serde::Deserialize;
        Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(Record::Other)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
        Ok(Record::Other(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok(Record::Other(Value::from(v)))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
        Ok(Record::Other(Value::from(v)))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok(Record::Other(Value::from(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Record::Other(Value::String(v.to_string())))
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(Record::Other(Value::Null))
    }
}

/// A string, borrowed from the input when it has no escapes.
struct Text;

impl<'de> serde::de::DeserializeSeed<'de> for Text {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Text {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

struct EntrySeed;

impl<'de> serde::de::DeserializeSeed<'de> for EntrySeed {
    type Value = Entry<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A record's top-level value: objects are flattened one level, their own
/// values as scalars (deeper objects and arrays as JSON text).
impl<'de> serde::de::Visitor<'de> for EntrySeed {
    type Value = Entry<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut inner = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key_seed(Text)? {
            let v = map.next_value_seed(ScalarSeed)?;
            inner.push((key, v));
        }
        Ok(Entry::Object(sorted(inner)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        ScalarSeed.visit_seq(seq).map(Entry::Scalar)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
        Ok(Entry::Scalar(Val::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok(Entry::Scalar(Val::Int(v)))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
        Ok(Entry::Scalar(number(&v.into())))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok(Entry::Scalar(float(v)))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(Entry::Scalar(Val::Text(Cow::Borrowed(v))))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Entry::Scalar(Val::Text(Cow::Owned(v.to_string()))))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
        Ok(Entry::Scalar(Val::Text(Cow::Owned(v))))
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(Entry::Scalar(Val::Null))
    }
}

/// A float as serde_json's own `Value` keeps it (a non-finite one is null).
fn float<'a>(v: f64) -> Val<'a> {
    match serde_json::Number::from_f64(v) {
        Some(n) => number(&n),
        None => Val::Null,
    }
}

struct ScalarSeed;

impl<'de> serde::de::DeserializeSeed<'de> for ScalarSeed {
    type Value = Val<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// A value one level down: scalars as they are, objects and arrays as
/// their JSON text.
impl<'de> serde::de::Visitor<'de> for ScalarSeed {
    type Value = Val<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        use serde::Deserialize;
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Val::Json(v.to_string()))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        use serde::Deserialize;
        let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Val::Json(v.to_string()))
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
        Ok(Val::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok(Val::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
        Ok(number(&v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok(float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(Val::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Val::Text(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
        Ok(Val::Text(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(Val::Null)
    }
}

/// Build one column of `kind` from the values whose kind passes `keep`.
fn build(name: &str, kind: Kind, values: &[Val], keep: impl Fn(Kind) -> bool) -> (Field, ArrayRef) {
    let take = |v: &Val| v.kind().is_some_and(&keep);
    let array: ArrayRef = match kind {
        Kind::Bool => {
            let mut b = BooleanBuilder::with_capacity(values.len());
            for v in values {
                match v {
                    Val::Bool(x) if take(v) => b.append_value(*x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Kind::Int => {
            let mut b = Int64Builder::with_capacity(values.len());
            for v in values {
                match v {
                    Val::Int(x) if take(v) => b.append_value(*x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Kind::Float => {
            let mut b = Float64Builder::with_capacity(values.len());
            for v in values {
                match v {
                    Val::Float(x) if take(v) => b.append_value(*x),
                    Val::Big(x) if take(v) => b.append_value(*x as f64),
                    Val::Int(x) if take(v) => b.append_value(*x as f64),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Kind::Text => {
            let bytes: usize = values
                .iter()
                .map(|v| match v {
                    Val::Text(t) => t.len(),
                    Val::Json(j) => j.len(),
                    _ => 0,
                })
                .sum();
            let mut b = StringBuilder::with_capacity(values.len(), bytes);
            for v in values {
                match v {
                    Val::Text(x) if take(v) => b.append_value(x),
                    Val::Json(x) if take(v) => b.append_value(x),
                    _ => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
    };
    let dt = array.data_type().clone();
    (Field::new(name, dt, true), array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float64Type, Int64Type};
    use proptest::prelude::*;
    use serde_json::json;

    fn objs(values: Vec<Value>) -> Vec<Map<String, Value>> {
        values
            .into_iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn escaped_text_and_nested_cursors_decode_like_parsed_records() {
        let text = r#"[{"id":"a\"b","p":{"t":"2024-01-02","deep":{"x":[1,2.5]}}},{"id":"c","p":{"t":"2024-03-01"}},7]"#;
        let after = |a: &Value, b: &Value| crate::extract::cursor_after(a, b);
        let d = decode_records(text, Some(("p.t", &after))).unwrap();
        let parsed: Vec<Value> = serde_json::from_str(text).unwrap();
        let objects = parsed
            .iter()
            .filter_map(|v| v.as_object().cloned())
            .collect();
        assert_eq!(d.batch.unwrap(), to_batch(objects).unwrap());
        assert_eq!(d.cursor, Some(json!("2024-03-01")));
        assert_eq!(d.others, vec![(2, json!(7))]);
        let d = decode_records(text, Some(("p.deep.x.1", &after))).unwrap();
        assert_eq!(d.cursor, Some(json!(2.5)));
        assert!(decode_records("[{\"a\":1}", None).is_err());
        // The client's shape check lets these through; decoding refuses them.
        assert!(decode_records(r#"[{"a":"\ud800"}]"#, None).is_err());
        assert!(decode_records(r#"[{"a":1e400}]"#, None).is_err());
        let big = decode_records(r#"[{"c":18446744073709551615}]"#, Some(("c", &after))).unwrap();
        assert_eq!(big.cursor, Some(json!(18446744073709551615u64)));
        assert!(decode_records("{\"a\":1}", None).is_err());
    }

    #[test]
    fn lone_surrogates_are_told_from_pairs_and_escaped_backslashes() {
        let lone = |t: &str| {
            lone_surrogates(t)
                .iter()
                .map(|&i| t[i..i + 6].to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(lone(r#"{"a":"x\ud800"}"#), [r"\ud800"]);
        assert_eq!(
            lone(r#"{"a":"\udc00y\ud800\ud800"}"#),
            [r"\udc00", r"\ud800", r"\ud800"]
        );
        assert!(lone(r#"{"a":"\ud83d\ude00 \u00e9"}"#).is_empty());
        assert_eq!(lone(r#"{"a":"\ud83d\u0041"}"#), [r"\ud83d"]);
        // An escaped backslash then the letters "ud800": no escape at all.
        assert!(lone(r#"{"a":"\\ud800"}"#).is_empty());
        assert!(lone(r#"{"a":"\ud8"}"#).is_empty());
        assert!(lone("\\").is_empty());
        let t = r#"{"a":"x\udc00y","t":"2024-05-01"}"#;
        assert_eq!(
            repaired(t, &lone_surrogates(t)),
            r#"{"a":"x\ufffdy","t":"2024-05-01"}"#
        );
        // The quarantined record's cursor counts.
        let after = |a: &Value, b: &Value| crate::extract::cursor_after(a, b);
        let d = decode_records_lenient(
            r#"[{"t":"2024-01-01"},{"a":"\ud800","t":"2024-05-01"},{"a":1e400,"t":"2024-09-01"}]"#,
            Some(("t", &after)),
        )
        .unwrap();
        assert_eq!(d.invalid.len(), 2);
        assert_eq!(d.cursor, Some(json!("2024-05-01")));
        let d = decode_records_lenient(r#"[{"a":"\udfff"},{"a":"ok"}]"#, None).unwrap();
        assert!(
            d.invalid[0]
                .1
                .starts_with(r"a lone surrogate \udfff in a string"),
            "{:?}",
            d.invalid
        );
    }

    #[test]
    fn flattens_one_level_and_keeps_deeper_as_json_text() {
        let b = to_batch(objs(vec![json!({
            "id": 1,
            "company": {"name": "Acme", "address": {"city": "Paris"}},
            "tags": ["a", "b"]
        })]))
        .unwrap();
        let s = b.schema();
        let names: Vec<_> = s.fields().iter().map(|f| f.name().as_str()).collect();
        // serde_json keeps object keys sorted, so columns come alphabetically.
        assert_eq!(names, ["company__address", "company__name", "id", "tags"]);
        let addr = b.column(0).as_string::<i32>().value(0);
        assert_eq!(addr, r#"{"city":"Paris"}"#);
        assert_eq!(b.column(3).as_string::<i32>().value(0), r#"["a","b"]"#);
    }

    #[test]
    fn ints_and_floats_make_a_double_and_missing_keys_are_null() {
        let b = to_batch(objs(vec![
            json!({"x": 1}),
            json!({"y": true}),
            json!({"x": 2.5}),
        ]))
        .unwrap();
        let x = b.column(0).as_primitive::<Float64Type>();
        assert_eq!(x.value(0), 1.0);
        assert!(x.is_null(1));
        assert_eq!(x.value(2), 2.5);
        assert!(b.column(1).is_null(0) && !b.column(1).is_null(1));
    }

    #[test]
    fn mixed_kinds_split_into_a_variant_column() {
        let b = to_batch(objs(vec![
            json!({"employees": 10}),
            json!({"employees": "10-50"}),
            json!({"employees": null}),
        ]))
        .unwrap();
        assert_eq!(b.schema().field(0).name(), "employees");
        assert_eq!(b.schema().field(1).name(), "employees__text");
        assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 10);
        assert!(b.column(0).is_null(1));
        assert_eq!(b.column(1).as_string::<i32>().value(1), "10-50");
    }

    fn leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            (-1e9f64..1e9).prop_map(|f| json!(f)),
            (i64::MAX as u64..=u64::MAX).prop_map(|u| json!(u)),
            "[a-z\"\\\\\u{e9}\n]{0,5}".prop_map(Value::String),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        leaf().prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Records as JSON text, keys possibly repeated (the last one wins in
    /// a JSON map) and possibly not objects.
    fn page() -> impl Strategy<Value = String> {
        let record = prop_oneof![
            4 => prop::collection::vec(("[a-d]|a__b|\"c", value()), 0..5).prop_map(|pairs| {
                let body: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{}:{}", Value::String(k.clone()), v))
                    .collect();
                format!("{{{}}}", body.join(","))
            }),
            1 => value().prop_map(|v| v.to_string()),
        ];
        prop::collection::vec(record, 0..12).prop_map(|r| format!("[{}]", r.join(" , ")))
    }

    fn decodes_like_the_parsed_records(text: &str) -> Result<(), TestCaseError> {
        let parsed: Vec<Value> = serde_json::from_str(text).unwrap();
        let objects: Vec<Map<String, Value>> = parsed
            .iter()
            .filter_map(|v| v.as_object().cloned())
            .collect();
        let after = |a: &Value, b: &Value| crate::extract::cursor_after(a, b);
        let nested = decode_records(text, Some(("a.b", &after))).unwrap();
        let mut best: Option<Value> = None;
        for o in &objects {
            if let Some(v) = o.get("a").and_then(|a| a.get("b")).filter(|v| !v.is_null())
                && best.as_ref().is_none_or(|b| after(v, b))
            {
                best = Some(v.clone());
            }
        }
        prop_assert_eq!(nested.cursor, best);
        let decoded = decode_records(text, Some(("b", &after))).unwrap();
        prop_assert_eq!(decoded.records, parsed.len());
        let expected = (!objects.is_empty()).then(|| to_batch(objects.clone()).unwrap());
        prop_assert_eq!(decoded.batch, expected);
        let others: Vec<(usize, Value)> = parsed
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_object())
            .map(|(i, v)| (i, v.clone()))
            .collect();
        prop_assert_eq!(decoded.others, others);
        let mut best: Option<Value> = None;
        for o in &objects {
            if let Some(v) = o.get("b").filter(|v| !v.is_null())
                && best.as_ref().is_none_or(|b| after(v, b))
            {
                best = Some(v.clone());
            }
        }
        prop_assert_eq!(decoded.cursor, best);
        Ok(())
    }

    fn similar_page() -> impl Strategy<Value = String> {
        const KEYS: &[&str] = &["id", "props", "a", "a__b", "when"];
        let record =
            prop::collection::vec((prop::sample::select(KEYS), value()), 3..7).prop_map(|pairs| {
                let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(","))
            });
        prop::collection::vec(record, 1..40).prop_map(|r| format!("[{}]", r.join(",")))
    }

    proptest! {
        /// Every non-null scalar of every record is found again in exactly
        /// one column of its row, whatever the mix of shapes and kinds.
        #[test]
        fn decoding_the_text_equals_converting_the_parsed_records(text in page()) {
            decodes_like_the_parsed_records(&text)?;
        }

        /// Records that share their keys, in any order, now and then one
        /// twice, a new one, or one whose flattened name collides
        /// (`a__b` beside `a: {b}`): the decoder puts most of them straight
        /// into their columns and must still make the batch a JSON map
        /// would.
        #[test]
        fn records_of_one_shape_in_any_order_decode_like_the_parsed_records(
            text in similar_page()
        ) {
            decodes_like_the_parsed_records(&text)?;
        }

        /// Records that are not valid JSON inside, anywhere in a page, are
        /// set aside with their text and position; the rest decode as the
        /// page without them would.
        #[test]
        fn invalid_records_are_set_aside_and_the_rest_decode_as_without_them(
            text in page(),
            at in prop::collection::vec((0usize..14, 0usize..3), 0..4),
        ) {
            let mut records: Vec<String> = serde_json::from_str::<Vec<Value>>(&text)
                .unwrap()
                .iter()
                .map(|v| v.to_string())
                .collect();
            let clean = format!("[{}]", records.join(","));
            let bad = [r#"{"a":"\ud800"}"#, r#"{"a":[1e400]}"#, r#"{"b":"\udc00x","c":1}"#];
            let mut inserted = Vec::new();
            let with_cursor = at.iter().any(|(_, which)| *which == 2);
            for (pos, which) in at {
                let pos = pos.min(records.len());
                records.insert(pos, bad[which].to_string());
                for p in inserted.iter_mut() {
                    if *p >= pos {
                        *p += 1;
                    }
                }
                inserted.push(pos);
            }
            inserted.sort();
            let dirty = format!("[{}]", records.join(" , "));
            let after = |a: &Value, b: &Value| crate::extract::cursor_after(a, b);
            let got = decode_records_lenient(&dirty, Some(("b", &after))).unwrap();
            let want = decode_records(&clean, Some(("b", &after))).unwrap();
            prop_assert_eq!(got.records, records.len());
            prop_assert_eq!(got.invalid.iter().map(|x| x.0).collect::<Vec<_>>(), inserted.clone());
            for (i, _, t) in &got.invalid {
                prop_assert_eq!(t, &records[*i]);
            }
            prop_assert_eq!(got.batch, want.batch);
            // The third bad record's cursor, read with U+FFFD, counts too.
            let mut cursor = want.cursor.clone();
            let c = json!("\u{fffd}x");
            if with_cursor && cursor.as_ref().is_none_or(|b| after(&c, b)) {
                cursor = Some(c);
            }
            prop_assert_eq!(got.cursor, cursor);
            let shift = |i: usize| {
                let mut j = i;
                for p in &inserted {
                    if *p <= j {
                        j += 1;
                    }
                }
                j
            };
            let others: Vec<(usize, Value)> =
                want.others.into_iter().map(|(i, v)| (shift(i), v)).collect();
            prop_assert_eq!(got.others, others);
        }

        #[test]
        fn decoding_lines_equals_converting_the_parsed_records(text in page()) {
            let parsed: Vec<Value> = serde_json::from_str(&text).unwrap();
            let mut lines = Lines::new();
            let mut objects = Vec::new();
            for v in &parsed {
                let other = lines.push(&v.to_string()).unwrap();
                match v {
                    Value::Object(m) => {
                        prop_assert!(other.is_none());
                        objects.push(m.clone());
                    }
                    v => prop_assert_eq!(other.as_ref(), Some(v)),
                }
            }
            prop_assert_eq!(lines.rows(), objects.len());
            if !objects.is_empty() {
                prop_assert_eq!(lines.finish().unwrap(), to_batch(objects).unwrap());
            }
        }

        #[test]
        fn no_value_is_lost(records in prop::collection::vec(
            prop::collection::btree_map("[a-d]", value(), 0..4), 1..20)) {
            let maps: Vec<Map<String, Value>> =
                records.iter().map(|m| m.clone().into_iter().collect()).collect();
            let batch = to_batch(maps.clone()).unwrap();
            prop_assert_eq!(batch.num_rows(), maps.len());
            for (row, rec) in maps.iter().enumerate() {
                let mut expected = 0;
                for (k, v) in rec {
                    match v {
                        Value::Object(inner) => expected += inner.values().filter(|x| !x.is_null()).count(),
                        Value::Null => {}
                        _ => expected += 1,
                    }
                    let _ = k;
                }
                let present = batch
                    .columns()
                    .iter()
                    .filter(|c| c.data_type() != &DataType::Null && !c.is_null(row))
                    .count();
                prop_assert_eq!(present, expected);
            }
        }
    }
}
