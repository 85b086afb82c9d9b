//! The emulator's CRM data: objects by type, property definitions, unique
//! properties, and search filtering.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Value, json};

/// A property definition, as `GET /crm/v3/properties/{type}` returns it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertyDef {
    pub name: String,
    pub label: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub field_type: String,
    pub has_unique_value: bool,
}

/// `(name, type, unique)` of a built-in property.
type PropSpec = (&'static str, &'static str, bool);

fn prop(name: &str, kind: &str, unique: bool) -> PropertyDef {
    PropertyDef {
        name: name.into(),
        label: name.replace('_', " "),
        kind: kind.into(),
        field_type: if kind == "number" {
            "number".into()
        } else {
            "text".into()
        },
        has_unique_value: unique,
    }
}

/// One record.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: u64,
    pub properties: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub archived: bool,
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl Record {
    /// The record as HubSpot returns it, with the requested properties (or
    /// the defaults HubSpot returns when none are asked for).
    pub fn to_json(&self, wanted: Option<&[String]>) -> Value {
        let mut props = serde_json::Map::new();
        let defaults = ["createdate", "lastmodifieddate", "hs_object_id"];
        let names: Vec<String> = match wanted {
            Some(w) if !w.is_empty() => w.to_vec(),
            _ => self
                .properties
                .keys()
                .filter(|k| {
                    defaults.contains(&k.as_str())
                        || k.as_str() == "email"
                        || k.as_str() == "name"
                        || k.as_str() == "domain"
                })
                .cloned()
                .collect(),
        };
        for n in names {
            let v = self.properties.get(&n).cloned();
            props.insert(n, v.map(Value::String).unwrap_or(Value::Null));
        }
        let mut out = json!({
            "id": self.id.to_string(),
            "properties": props,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "archived": self.archived,
        });
        if self.archived {
            out["archivedAt"] = json!(iso(self.updated_at));
        }
        out
    }
}

/// All objects of one type.
#[derive(Debug, Default)]
pub struct ObjectType {
    pub records: BTreeMap<u64, Record>,
    pub properties: BTreeMap<String, PropertyDef>,
    /// Live record ids by lower-cased value, for unique properties and
    /// `domain` (the lookups upsert, create and matching need), so large
    /// emulated CRMs answer in constant time.
    index: HashMap<String, HashMap<String, BTreeSet<u64>>>,
}

impl ObjectType {
    fn indexed(&self, property: &str) -> bool {
        property == "domain"
            || self
                .properties
                .get(property)
                .is_some_and(|d| d.has_unique_value && d.name != "hs_object_id")
    }

    fn unindex(&mut self, id: u64) {
        let Some(r) = self.records.get(&id) else {
            return;
        };
        for (k, v) in &r.properties {
            if let Some(ix) = self.index.get_mut(k)
                && let Some(ids) = ix.get_mut(&v.to_lowercase())
            {
                ids.remove(&id);
            }
        }
    }

    fn reindex(&mut self, id: u64) {
        let Some(r) = self.records.get(&id) else {
            return;
        };
        if r.archived {
            return;
        }
        let pairs: Vec<(String, String)> = r
            .properties
            .iter()
            .filter(|(k, v)| !v.is_empty() && self.indexed(k))
            .map(|(k, v)| (k.clone(), v.to_lowercase()))
            .collect();
        for (k, v) in pairs {
            self.index
                .entry(k)
                .or_default()
                .entry(v)
                .or_default()
                .insert(id);
        }
    }

    /// Add a record (or replace one with the same id).
    pub fn insert(&mut self, record: Record) {
        let id = record.id;
        self.unindex(id);
        self.records.insert(id, record);
        self.reindex(id);
    }

    /// Change a record through `f`, keeping the index right.
    pub fn modify<T>(&mut self, id: u64, f: impl FnOnce(&mut Record) -> T) -> Option<T> {
        self.unindex(id);
        let out = self.records.get_mut(&id).map(f);
        self.reindex(id);
        out
    }

    /// Add a property definition (indexing existing values if it is unique).
    pub fn define(&mut self, def: PropertyDef) {
        let name = def.name.clone();
        self.properties.insert(name.clone(), def);
        if self.indexed(&name) {
            let ids: Vec<u64> = self.records.keys().copied().collect();
            for id in ids {
                self.reindex(id);
            }
        }
    }

    /// Live records whose `property` equals `value` (case-insensitively).
    pub fn ids_by(&self, property: &str, value: &str) -> Vec<u64> {
        if self.indexed(property) {
            return self
                .index
                .get(property)
                .and_then(|ix| ix.get(&value.to_lowercase()))
                .map(|ids| ids.iter().copied().collect())
                .unwrap_or_default();
        }
        self.records
            .values()
            .filter(|r| {
                !r.archived
                    && r.properties
                        .get(property)
                        .is_some_and(|v| v.eq_ignore_ascii_case(value))
            })
            .map(|r| r.id)
            .collect()
    }
}

/// The whole CRM.
#[derive(Debug)]
pub struct Crm {
    pub types: BTreeMap<String, ObjectType>,
    /// Lists (Lists API v3) by list id.
    pub lists: BTreeMap<u64, List>,
    /// Record ids sent to `memberships/add`, counted over every call.
    pub membership_adds_sent: u64,
    /// Associations, both directions: (from type, from id) → (to type, to id).
    pub associations: BTreeMap<(String, u64), BTreeSet<(String, u64)>>,
    next_id: u64,
    /// How long search misses an API write.
    pub search_lag: Duration,
    /// Records search does not see as they are yet: until the instant, it
    /// sees the version before the write (`None`: not at all).
    stale: HashMap<String, HashMap<u64, (Instant, Option<Record>)>>,
}

/// A list of records of one object type.
#[derive(Debug, Clone)]
pub struct List {
    pub id: u64,
    pub name: String,
    /// `0-1` contacts, `0-2` companies, ...
    pub object_type_id: String,
    /// `MANUAL`, `SNAPSHOT` or `DYNAMIC` (members set by filters: the
    /// memberships API refuses to change them).
    pub processing_type: String,
    pub members: BTreeSet<u64>,
}

impl List {
    pub fn to_json(&self) -> Value {
        json!({
            "listId": self.id.to_string(),
            "name": self.name,
            "objectTypeId": self.object_type_id,
            "processingType": self.processing_type,
            "processingStatus": "COMPLETE",
            "listVersion": 1,
            "size": self.members.len(),
        })
    }
}

/// The object type a Lists API type id names.
pub fn kind_of_type_id(type_id: &str) -> &str {
    match type_id {
        "0-1" => "contacts",
        "0-2" => "companies",
        "0-3" => "deals",
        "0-5" => "tickets",
        other => other,
    }
}

impl Default for Crm {
    fn default() -> Self {
        let mut types = BTreeMap::new();
        let common = [
            ("createdate", "datetime", false),
            ("lastmodifieddate", "datetime", false),
            ("hs_lastmodifieddate", "datetime", false),
            ("hs_object_id", "number", true),
            ("hubspot_owner_id", "enumeration", false),
        ];
        let specific: [(&str, &[PropSpec]); 3] = [
            (
                "contacts",
                &[
                    ("email", "string", true),
                    ("hs_additional_emails", "string", false),
                    ("firstname", "string", false),
                    ("lastname", "string", false),
                    ("jobtitle", "string", false),
                    ("company", "string", false),
                    ("country", "string", false),
                    ("state", "string", false),
                    ("phone", "string", false),
                    ("lifecyclestage", "enumeration", false),
                    ("hs_lead_status", "enumeration", false),
                ],
            ),
            (
                "companies",
                &[
                    ("name", "string", false),
                    ("domain", "string", false),
                    ("industry", "enumeration", false),
                    ("country", "string", false),
                    ("numberofemployees", "number", false),
                    ("annualrevenue", "number", false),
                ],
            ),
            (
                "deals",
                &[
                    ("dealname", "string", false),
                    ("amount", "number", false),
                    ("dealstage", "enumeration", false),
                    ("pipeline", "enumeration", false),
                    ("closedate", "datetime", false),
                ],
            ),
        ];
        for (t, props) in specific {
            let mut ot = ObjectType::default();
            for (n, k, u) in common.iter().chain(props.iter()) {
                ot.define(prop(n, k, *u));
            }
            types.insert(t.to_string(), ot);
        }
        Crm {
            types,
            lists: BTreeMap::new(),
            membership_adds_sent: 0,
            associations: BTreeMap::new(),
            next_id: 1001,
            search_lag: Duration::ZERO,
            stale: HashMap::new(),
        }
    }
}

impl Crm {
    /// An API write changed record `id` of `kind`, which was `before`
    /// (`None`: it is new): search keeps showing `before` until the index
    /// catches up, `search_lag` from now (a later write pushes it further).
    pub fn wrote(&mut self, kind: &str, id: u64, before: Option<Record>) {
        if self.search_lag.is_zero() {
            return;
        }
        let due = Instant::now() + self.search_lag;
        self.stale
            .entry(kind.to_string())
            .or_default()
            .entry(id)
            .and_modify(|e| e.0 = due)
            .or_insert((due, before));
    }

    /// Forget versions the index has caught up with.
    pub fn settle_index(&mut self) {
        let now = Instant::now();
        for records in self.stale.values_mut() {
            records.retain(|_, (due, _)| *due > now);
        }
        self.stale.retain(|_, records| !records.is_empty());
    }

    /// The version of `r` search sees (after [`Crm::settle_index`]).
    pub fn indexed<'a>(&'a self, kind: &str, r: &'a Record) -> Option<&'a Record> {
        if self.stale.is_empty() {
            return Some(r);
        }
        match self.stale.get(kind).and_then(|m| m.get(&r.id)) {
            Some((_, before)) => before.as_ref(),
            None => Some(r),
        }
    }

    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Create a record of `kind` with `props` (HubSpot's own properties
    /// `hs_object_id`, `createdate` and `lastmodifieddate` are set here).
    pub fn create(&mut self, kind: &str, mut props: BTreeMap<String, String>) -> Record {
        // An empty string means "no value", as in an update.
        props.retain(|_, v| !v.is_empty());
        let id = self.next_id();
        let at = Utc::now();
        let stamp = iso(at);
        props.insert("hs_object_id".into(), id.to_string());
        props.insert("createdate".into(), stamp.clone());
        props.insert("lastmodifieddate".into(), stamp.clone());
        props.insert("hs_lastmodifieddate".into(), stamp);
        let r = Record {
            id,
            properties: props,
            created_at: at,
            updated_at: at,
            archived: false,
        };
        if let Some(t) = self.types.get_mut(kind) {
            t.insert(r.clone());
        }
        r
    }

    /// Associate two records (both directions, as HubSpot shows them).
    pub fn associate(&mut self, from: &str, from_id: u64, to: &str, to_id: u64) {
        self.associations
            .entry((from.to_string(), from_id))
            .or_default()
            .insert((to.to_string(), to_id));
        self.associations
            .entry((to.to_string(), to_id))
            .or_default()
            .insert((from.to_string(), from_id));
    }

    /// Set when a record was created and last modified (for loading
    /// historical data, such as `ferry demo`'s generated CRM).
    pub fn backdate(
        &mut self,
        kind: &str,
        id: u64,
        created: DateTime<Utc>,
        updated: DateTime<Utc>,
    ) {
        if let Some(t) = self.types.get_mut(kind) {
            t.modify(id, |r| {
                r.created_at = created;
                r.properties.insert("createdate".into(), iso(created));
            });
        }
        self.touch(kind, id, updated);
    }

    /// Add a custom property (as Settings → Properties in HubSpot does).
    pub fn define_property(&mut self, kind: &str, name: &str, field_kind: &str) {
        if let Some(t) = self.types.get_mut(kind) {
            t.define(prop(name, field_kind, false));
        }
    }

    /// Mark a record modified at `at` (as an edit in HubSpot would).
    pub fn touch(&mut self, kind: &str, id: u64, at: DateTime<Utc>) {
        let stamp = iso(at);
        if let Some(t) = self.types.get_mut(kind) {
            t.modify(id, |r| {
                r.updated_at = at;
                r.properties
                    .insert("lastmodifieddate".into(), stamp.clone());
                r.properties.insert("hs_lastmodifieddate".into(), stamp);
            });
        }
    }

    /// Find a live record of `kind` whose `property` equals `value` (`hs_object_id`
    /// and the record id are the same thing).
    pub fn find_by(&self, kind: &str, property: &str, value: &str) -> Option<u64> {
        let ot = self.types.get(kind)?;
        if property == "hs_object_id" {
            return value
                .parse::<u64>()
                .ok()
                .filter(|id| ot.records.get(id).is_some_and(|r| !r.archived));
        }
        ot.ids_by(property, value).first().copied()
    }
}

/// Whether a record passes one search filter.
pub fn matches(record: &Record, filter: &Value) -> Result<bool, String> {
    let name = filter["propertyName"]
        .as_str()
        .ok_or("each filter needs a propertyName")?;
    let op = filter["operator"]
        .as_str()
        .ok_or("each filter needs an operator")?;
    let actual = if name == "hs_object_id" {
        Some(record.id.to_string())
    } else {
        record.properties.get(name).cloned()
    };
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let cmp = |a: &str, b: &str| -> std::cmp::Ordering {
        match (a.parse::<f64>(), b.parse::<f64>()) {
            (Ok(x), Ok(y)) => x.total_cmp(&y),
            _ => a.cmp(b),
        }
    };
    use std::cmp::Ordering::*;
    Ok(match op {
        "HAS_PROPERTY" => actual.is_some_and(|a| !a.is_empty()),
        "NOT_HAS_PROPERTY" => actual.is_none_or(|a| a.is_empty()),
        _ => {
            let Some(a) = actual else {
                return Ok(op == "NEQ" || op == "NOT_IN");
            };
            let v = text(&filter["value"]);
            match op {
                "EQ" => a.eq_ignore_ascii_case(&v),
                "NEQ" => !a.eq_ignore_ascii_case(&v),
                "LT" => cmp(&a, &v) == Less,
                "LTE" => cmp(&a, &v) != Greater,
                "GT" => cmp(&a, &v) == Greater,
                "GTE" => cmp(&a, &v) != Less,
                "BETWEEN" => {
                    let hi = text(&filter["highValue"]);
                    cmp(&a, &v) != Less && cmp(&a, &hi) != Greater
                }
                "IN" | "NOT_IN" => {
                    let values = filter["values"].as_array().ok_or("IN needs values")?;
                    let found = values.iter().any(|x| text(x).eq_ignore_ascii_case(&a));
                    found == (op == "IN")
                }
                "CONTAINS_TOKEN" => a
                    .to_lowercase()
                    .split(|c: char| !c.is_alphanumeric())
                    .any(|t| t == v.to_lowercase().trim_matches('*')),
                other => return Err(format!("unknown operator {other}")),
            }
        }
    })
}
