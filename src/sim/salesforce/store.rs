//! The emulated org: sObjects with field definitions, records, required
//! fields, unique and external-ID fields, validation rules, and the SOQL
//! subset ferry sends.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// One field of an sObject, as `describe` reports it.
#[derive(Debug, Clone)]
pub struct FieldDef {
    /// Canonical spelling (`LastName`, `Ferry_Lead_Score__c`).
    pub name: String,
    /// `id`, `string`, `email`, `double`, `boolean`, `datetime`, `reference`.
    pub kind: String,
    pub external_id: bool,
    pub unique: bool,
    /// Required on create (`nillable: false`, createable, no default).
    pub required: bool,
    pub createable: bool,
    pub updateable: bool,
    pub case_sensitive: bool,
    pub length: usize,
}

impl FieldDef {
    pub fn new(name: &str, kind: &str) -> FieldDef {
        FieldDef {
            name: name.into(),
            kind: kind.into(),
            external_id: false,
            unique: false,
            required: false,
            createable: true,
            updateable: true,
            case_sensitive: false,
            length: 255,
        }
    }

    fn describe(&self) -> Value {
        json!({
            "name": self.name,
            "label": self.name.trim_end_matches("__c").replace('_', " "),
            "type": self.kind,
            "externalId": self.external_id,
            "idLookup": self.external_id || self.kind == "id",
            "unique": self.unique,
            "nillable": !self.required,
            "createable": self.createable,
            "updateable": self.updateable,
            "caseSensitive": self.case_sensitive,
            "length": if self.kind == "string" || self.kind == "email" { self.length } else { 0 },
        })
    }
}

/// A validation rule: records whose `field` fails `check` are refused with
/// `FIELD_CUSTOM_VALIDATION_EXCEPTION` and `message`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub field: String,
    pub check: Check,
    pub message: String,
}

#[derive(Debug, Clone)]
pub enum Check {
    /// A number at most this.
    AtMost(f64),
    /// Not this exact text.
    Not(String),
}

/// One record.
#[derive(Debug, Clone)]
pub struct Record {
    pub id: String,
    /// By canonical field name.
    pub values: BTreeMap<String, Value>,
    pub deleted: bool,
    pub created: DateTime<Utc>,
    pub modstamp: DateTime<Utc>,
}

/// One sObject type.
#[derive(Debug, Clone)]
pub struct SObject {
    pub name: String,
    /// The id prefix (`00Q` for Lead).
    pub prefix: String,
    /// By lower-cased name (field names are case-insensitive in the API).
    pub fields: BTreeMap<String, FieldDef>,
    pub records: BTreeMap<String, Record>,
    pub rules: Vec<Rule>,
    /// Live records by the folded value of each unique or external-ID
    /// field (as Salesforce indexes them), so matching is not a scan.
    index: HashMap<String, HashMap<String, Vec<String>>>,
}

impl SObject {
    fn new(name: &str, prefix: &str, fields: Vec<FieldDef>) -> SObject {
        let mut all = vec![
            FieldDef {
                createable: false,
                updateable: false,
                ..FieldDef::new("Id", "id")
            },
            FieldDef {
                createable: false,
                updateable: false,
                ..FieldDef::new("IsDeleted", "boolean")
            },
            FieldDef {
                createable: false,
                updateable: false,
                ..FieldDef::new("CreatedDate", "datetime")
            },
            FieldDef {
                createable: false,
                updateable: false,
                ..FieldDef::new("SystemModstamp", "datetime")
            },
        ];
        all.extend(fields);
        let mut o = SObject {
            name: name.into(),
            prefix: prefix.into(),
            fields: BTreeMap::new(),
            records: BTreeMap::new(),
            rules: Vec::new(),
            index: HashMap::new(),
        };
        for f in all {
            o.define(f);
        }
        o
    }

    pub fn define(&mut self, f: FieldDef) {
        // Salesforce indexes unique and external-ID fields, and Email.
        let indexed = f.unique || f.external_id || f.kind == "email";
        let name = f.name.clone();
        self.fields.insert(f.name.to_lowercase(), f);
        self.index.remove(&name);
        if indexed {
            let mut idx: HashMap<String, Vec<String>> = HashMap::new();
            for r in self.records.values().filter(|r| !r.deleted) {
                if let Some(v) = r.values.get(&name) {
                    idx.entry(self.fold(&name, &text(v)))
                        .or_default()
                        .push(r.id.clone());
                }
            }
            self.index.insert(name, idx);
        }
    }

    /// A value as the index holds it.
    fn fold(&self, field: &str, value: &str) -> String {
        match self.field(field) {
            Some(f) if f.case_sensitive => value.to_string(),
            _ => value.to_lowercase(),
        }
    }

    /// The (field, folded value) entries of record `id` in the index.
    fn entries(&self, id: &str) -> Vec<(String, String)> {
        let Some(r) = self.records.get(id) else {
            return Vec::new();
        };
        self.index
            .keys()
            .filter_map(|f| r.values.get(f).map(|v| (f.clone(), self.fold(f, &text(v)))))
            .collect()
    }

    fn unindex(&mut self, id: &str) {
        for (f, v) in self.entries(id) {
            if let Some(ids) = self.index.get_mut(&f).and_then(|m| m.get_mut(&v)) {
                ids.retain(|x| x != id);
            }
        }
    }

    fn reindex(&mut self, id: &str) {
        if self.records.get(id).is_none_or(|r| r.deleted) {
            return;
        }
        for (f, v) in self.entries(id) {
            if let Some(m) = self.index.get_mut(&f) {
                m.entry(v).or_default().push(id.to_string());
            }
        }
    }

    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.get(&name.to_lowercase())
    }

    pub fn describe(&self) -> Value {
        json!({
            "name": self.name,
            "keyPrefix": self.prefix,
            "createable": true,
            "updateable": true,
            "deletable": true,
            "fields": self.fields.values().map(FieldDef::describe).collect::<Vec<_>>(),
        })
    }

    /// Live records whose `field` equals `value` (case-insensitively
    /// unless the field is case-sensitive).
    fn find(&self, field: &FieldDef, value: &str) -> Vec<String> {
        if let Some(idx) = self.index.get(&field.name) {
            return idx
                .get(&self.fold(&field.name, value))
                .cloned()
                .unwrap_or_default();
        }
        self.records
            .values()
            .filter(|r| !r.deleted)
            .filter(|r| {
                r.values.get(&field.name).is_some_and(|v| {
                    let t = text(v);
                    if field.case_sensitive {
                        t == value
                    } else {
                        t.eq_ignore_ascii_case(value)
                    }
                })
            })
            .map(|r| r.id.clone())
            .collect()
    }
}

/// A value as text (numbers as Salesforce prints them).
pub fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A per-record error, as Salesforce writes it.
pub fn record_error(code: &str, message: &str, fields: &[String]) -> Value {
    json!({"statusCode": code, "message": message, "fields": fields})
}

/// A whole-request error: `[{"message", "errorCode", "fields"}]`.
#[derive(Debug, Clone)]
pub struct RequestError {
    pub code: &'static str,
    pub message: String,
}

/// The org.
#[derive(Debug, Clone)]
pub struct Org {
    pub objects: BTreeMap<String, SObject>,
    next_id: u64,
}

impl Default for Org {
    fn default() -> Self {
        let s = |n: &str| FieldDef::new(n, "string");
        let required = |n: &str| FieldDef {
            required: true,
            ..FieldDef::new(n, "string")
        };
        let email = FieldDef::new("Email", "email");
        let objects = [
            SObject::new(
                "Lead",
                "00Q",
                vec![
                    s("FirstName"),
                    required("LastName"),
                    required("Company"),
                    email.clone(),
                    s("Status"),
                    s("Title"),
                    s("Country"),
                    s("State"),
                    s("LeadSource"),
                    FieldDef::new("OwnerId", "reference"),
                    FieldDef::new("IsConverted", "boolean"),
                    FieldDef::new("Ferry_Lead_Score__c", "double"),
                ],
            ),
            SObject::new(
                "Contact",
                "003",
                vec![
                    s("FirstName"),
                    required("LastName"),
                    email,
                    s("Title"),
                    s("MailingCountry"),
                    s("MailingState"),
                    s("LeadSource"),
                    FieldDef::new("OwnerId", "reference"),
                    FieldDef::new("AccountId", "reference"),
                    FieldDef::new("Ferry_Lead_Score__c", "double"),
                ],
            ),
            SObject::new(
                "Account",
                "001",
                vec![
                    required("Name"),
                    s("Website"),
                    s("Industry"),
                    FieldDef::new("NumberOfEmployees", "int"),
                    s("BillingCountry"),
                ],
            ),
            SObject::new(
                "Campaign",
                "701",
                vec![
                    required("Name"),
                    FieldDef::new("IsActive", "boolean"),
                    s("Type"),
                    s("Status"),
                ],
            ),
            SObject::new(
                "CampaignMember",
                "00v",
                vec![
                    FieldDef {
                        required: true,
                        ..FieldDef::new("CampaignId", "reference")
                    },
                    FieldDef::new("ContactId", "reference"),
                    FieldDef::new("LeadId", "reference"),
                    s("Status"),
                ],
            ),
            SObject::new(
                "Opportunity",
                "006",
                vec![
                    required("Name"),
                    required("StageName"),
                    FieldDef::new("Amount", "double"),
                    FieldDef::new("AccountId", "reference"),
                    FieldDef::new("CloseDate", "date"),
                    // Salesforce derives these from the stage's settings.
                    FieldDef::new("IsWon", "boolean"),
                    FieldDef::new("IsClosed", "boolean"),
                ],
            ),
            // The junction between an opportunity and the contacts on it.
            SObject::new(
                "OpportunityContactRole",
                "00K",
                vec![
                    FieldDef {
                        required: true,
                        ..FieldDef::new("OpportunityId", "reference")
                    },
                    FieldDef {
                        required: true,
                        ..FieldDef::new("ContactId", "reference")
                    },
                    s("Role"),
                    FieldDef::new("IsPrimary", "boolean"),
                ],
            ),
        ];
        Org {
            objects: objects.into_iter().map(|o| (o.name.clone(), o)).collect(),
            next_id: 1,
        }
    }
}

/// What one record of a write came to.
pub type Result1 = std::result::Result<(String, bool), Value>;

impl Org {
    pub fn object(&self, name: &str) -> Option<&SObject> {
        self.objects
            .values()
            .find(|o| o.name.eq_ignore_ascii_case(name))
    }

    pub fn object_mut(&mut self, name: &str) -> Option<&mut SObject> {
        self.objects
            .values_mut()
            .find(|o| o.name.eq_ignore_ascii_case(name))
    }

    /// Set a record's `CreatedDate` and `SystemModstamp` (loading history).
    pub fn backdate(
        &mut self,
        object: &str,
        id: &str,
        created: DateTime<Utc>,
        modstamp: DateTime<Utc>,
    ) {
        if let Some(r) = self.object_mut(object).and_then(|o| o.records.get_mut(id)) {
            r.created = created;
            r.modstamp = modstamp;
        }
    }

    fn new_id(&mut self, prefix: &str) -> String {
        let n = self.next_id;
        self.next_id += 1;
        // 15 characters plus a 3-character checksum-like suffix.
        format!("{prefix}{n:0>12}AAA")
    }

    /// The record's fields, canonically named and typed; an unknown field
    /// or a value of the wrong type refuses the whole request (Salesforce
    /// answers 400 before writing anything).
    fn coerce(
        &self,
        object: &SObject,
        record: &serde_json::Map<String, Value>,
    ) -> std::result::Result<BTreeMap<String, Value>, RequestError> {
        let mut out = BTreeMap::new();
        for (k, v) in record {
            if k == "attributes" {
                continue;
            }
            let Some(f) = object.field(k) else {
                return Err(RequestError {
                    code: "INVALID_FIELD",
                    message: format!("No such column '{k}' on sobject of type {}", object.name),
                });
            };
            let bad = || RequestError {
                code: "JSON_PARSER_ERROR",
                message: format!(
                    "Cannot deserialize instance of {} from {} value {v} or request may be missing a required field",
                    f.kind,
                    match v {
                        Value::String(_) => "VALUE_STRING",
                        Value::Number(_) => "VALUE_NUMBER",
                        Value::Bool(_) => "VALUE_BOOLEAN",
                        _ => "START_OBJECT",
                    }
                ),
            };
            let value = match (f.kind.as_str(), v) {
                (_, Value::Null) => Value::Null,
                ("double", Value::Number(n)) => json!(n.as_f64().unwrap_or_default()),
                ("double", Value::String(s)) => {
                    json!(s.trim().parse::<f64>().map_err(|_| bad())?)
                }
                ("boolean", Value::Bool(b)) => json!(b),
                ("boolean", Value::String(s)) if s == "true" || s == "false" => json!(s == "true"),
                ("int", Value::Number(n)) => json!(n.as_i64().ok_or_else(bad)?),
                ("int", Value::String(s)) => json!(s.trim().parse::<i64>().map_err(|_| bad())?),
                // ISO 8601 only, as Salesforce parses them.
                ("datetime", Value::String(s)) => {
                    json!(sf_time(parse_time(s).ok_or_else(bad)?))
                }
                ("date", Value::String(s)) => {
                    let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| bad())?;
                    json!(d.format("%Y-%m-%d").to_string())
                }
                (_, Value::String(s))
                    if !matches!(f.kind.as_str(), "double" | "boolean" | "int") =>
                {
                    json!(s)
                }
                _ => return Err(bad()),
            };
            out.insert(f.name.clone(), value);
        }
        Ok(out)
    }

    /// Per-record checks: required fields (on create), lengths, validation
    /// rules, unique values.
    fn check(
        object: &SObject,
        id: Option<&str>,
        values: &BTreeMap<String, Value>,
        creating: bool,
    ) -> std::result::Result<(), Value> {
        if creating {
            let missing: Vec<String> = object
                .fields
                .values()
                .filter(|f| f.required && values.get(&f.name).is_none_or(|v| text(v).is_empty()))
                .map(|f| f.name.clone())
                .collect();
            if !missing.is_empty() {
                return Err(record_error(
                    "REQUIRED_FIELD_MISSING",
                    &format!("Required fields are missing: [{}]", missing.join(", ")),
                    &missing,
                ));
            }
        }
        for (k, v) in values {
            let Some(f) = object.field(k) else { continue };
            let t = text(v);
            if (f.kind == "string" || f.kind == "email") && t.chars().count() > f.length {
                return Err(record_error(
                    "STRING_TOO_LONG",
                    &format!(
                        "{}: data value too large: {t} (max length={})",
                        f.name, f.length
                    ),
                    std::slice::from_ref(&f.name),
                ));
            }
            if f.kind == "email" && !t.is_empty() && !t.contains('@') {
                return Err(record_error(
                    "INVALID_EMAIL_ADDRESS",
                    &format!("{}: invalid email address: {t}", f.name),
                    std::slice::from_ref(&f.name),
                ));
            }
            if (f.unique || f.external_id) && !t.is_empty() {
                let clash: Vec<String> = object
                    .find(f, &t)
                    .into_iter()
                    .filter(|other| Some(other.as_str()) != id)
                    .collect();
                if let Some(other) = clash.first() {
                    return Err(record_error(
                        "DUPLICATE_VALUE",
                        &format!(
                            "duplicate value found: {} duplicates value on record with id: {other}",
                            f.name
                        ),
                        std::slice::from_ref(&f.name),
                    ));
                }
            }
        }
        for rule in &object.rules {
            let Some(v) = values.get(&rule.field) else {
                continue;
            };
            let broken = match &rule.check {
                Check::AtMost(max) => v.as_f64().is_some_and(|n| n > *max),
                Check::Not(t) => text(v) == *t,
            };
            if broken {
                return Err(record_error(
                    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
                    &rule.message,
                    std::slice::from_ref(&rule.field),
                ));
            }
        }
        Ok(())
    }

    fn apply(
        &mut self,
        object: &str,
        id: Option<String>,
        values: BTreeMap<String, Value>,
    ) -> (String, bool) {
        let now = Utc::now();
        let prefix = self
            .object(object)
            .map(|o| o.prefix.clone())
            .unwrap_or_default();
        let (id, created) = match id {
            Some(id) => (id, false),
            None => (self.new_id(&prefix), true),
        };
        if let Some(o) = self.object_mut(object) {
            o.unindex(&id);
            let r = o.records.entry(id.clone()).or_insert_with(|| Record {
                id: id.clone(),
                values: BTreeMap::new(),
                deleted: false,
                created: now,
                modstamp: now,
            });
            for (k, v) in values {
                r.values.insert(k, v);
            }
            r.modstamp = now;
            o.reindex(&id);
        }
        (id, created)
    }

    /// Insert `records` (sObject Collections create).
    pub fn insert(
        &mut self,
        object: &str,
        records: &[serde_json::Map<String, Value>],
    ) -> std::result::Result<Vec<Result1>, RequestError> {
        let o = self.object(object).ok_or_else(|| unknown_object(object))?;
        let coerced = records
            .iter()
            .map(|r| self.coerce(o, r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut out = Vec::new();
        for values in coerced {
            let checked = match self.object(object) {
                Some(o) => Org::check(o, None, &values, true),
                None => Err(record_error("NOT_FOUND", "the object is gone", &[])),
            }
            .and_then(|()| self.member_check(object, &values));
            out.push(checked.map(|()| self.apply(object, None, values)));
        }
        Ok(out)
    }

    /// Update `records` by their `Id`.
    pub fn update(
        &mut self,
        records: &[serde_json::Map<String, Value>],
    ) -> std::result::Result<Vec<Result1>, RequestError> {
        let mut out = Vec::new();
        for r in records {
            let id = r
                .get("Id")
                .or_else(|| r.get("id"))
                .map(text)
                .unwrap_or_default();
            let object = r["attributes"]["type"]
                .as_str()
                .map(str::to_string)
                .or_else(|| {
                    self.objects
                        .values()
                        .find(|o| id.starts_with(&o.prefix))
                        .map(|o| o.name.clone())
                });
            let Some(o) = object.as_deref().and_then(|n| self.object(n)) else {
                out.push(Err(record_error(
                    "MALFORMED_ID",
                    &format!("malformed id {id}"),
                    &[],
                )));
                continue;
            };
            let name = o.name.clone();
            let mut fields = r.clone();
            fields.remove("Id");
            fields.remove("id");
            let values = self.coerce(o, &fields)?;
            let checked = match o.records.get(&id) {
                None => Err(record_error(
                    "INVALID_CROSS_REFERENCE_KEY",
                    &format!("invalid cross reference id {id}"),
                    &[],
                )),
                Some(rec) if rec.deleted => {
                    Err(record_error("ENTITY_IS_DELETED", "entity is deleted", &[]))
                }
                Some(_) => Org::check(o, Some(&id), &values, false),
            };
            out.push(checked.map(|()| self.apply(&name, Some(id.clone()), values)));
        }
        Ok(out)
    }

    /// Upsert `records` by the external-ID field `key` (or `Id`).
    pub fn upsert(
        &mut self,
        object: &str,
        key: &str,
        records: &[serde_json::Map<String, Value>],
    ) -> std::result::Result<Vec<Result1>, RequestError> {
        let o = self.object(object).ok_or_else(|| unknown_object(object))?;
        let Some(kf) = o
            .field(key)
            .cloned()
            .filter(|f| f.external_id || f.kind == "id")
        else {
            return Err(RequestError {
                code: "INVALID_FIELD",
                message: format!(
                    "Field {key} is not an External ID or indexed field for {}",
                    o.name
                ),
            });
        };
        let coerced = records
            .iter()
            .map(|r| self.coerce(o, r))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // Two records of one request with the same key: both refused.
        let keys: Vec<String> = coerced
            .iter()
            .map(|v| v.get(&kf.name).map(text).unwrap_or_default().to_lowercase())
            .collect();
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for k in &keys {
            *counts.entry(k.as_str()).or_default() += 1;
        }
        let repeated: Vec<bool> = keys.iter().map(|k| counts[k.as_str()] > 1).collect();
        let mut out = Vec::new();
        for (i, values) in coerced.into_iter().enumerate() {
            let value = values.get(&kf.name).map(text).unwrap_or_default();
            if value.is_empty() {
                out.push(Err(record_error(
                    "MISSING_ARGUMENT",
                    &format!("{} not specified", kf.name),
                    std::slice::from_ref(&kf.name),
                )));
                continue;
            }
            if repeated[i] {
                out.push(Err(record_error(
                    "DUPLICATE_EXTERNAL_ID",
                    &format!("Duplicate external id specified: {value}"),
                    std::slice::from_ref(&kf.name),
                )));
                continue;
            }
            let Some(o) = self.object(object) else {
                out.push(Err(record_error("NOT_FOUND", "the object is gone", &[])));
                continue;
            };
            let found = if kf.kind == "id" {
                o.records
                    .get(&value)
                    .filter(|r| !r.deleted)
                    .map(|r| vec![r.id.clone()])
                    .unwrap_or_default()
            } else {
                o.find(&kf, &value)
            };
            out.push(match found.as_slice() {
                [] => Org::check(o, None, &values, true).map(|()| self.apply(object, None, values)),
                [id] => {
                    let id = id.clone();
                    Org::check(o, Some(&id), &values, false)
                        .map(|()| self.apply(object, Some(id), values))
                }
                many => Err(record_error(
                    "DUPLICATE_EXTERNAL_ID",
                    &format!(
                        "{}: more than one record found for external id field: {:?}",
                        kf.name, many
                    ),
                    std::slice::from_ref(&kf.name),
                )),
            });
        }
        Ok(out)
    }

    /// A campaign member names a live campaign and a live contact or lead,
    /// once per campaign (Salesforce: `DUPLICATE_VALUE`, "Already a
    /// campaign member.").
    fn member_check(
        &self,
        object: &str,
        values: &BTreeMap<String, Value>,
    ) -> std::result::Result<(), Value> {
        if !object.eq_ignore_ascii_case("CampaignMember") {
            return Ok(());
        }
        let live = |id: &str| {
            self.objects
                .values()
                .any(|o| o.records.get(id).is_some_and(|r| !r.deleted))
        };
        let field = |name: &str| values.get(name).map(text).filter(|v| !v.is_empty());
        let campaign = field("CampaignId").unwrap_or_default();
        let (who_field, who) = match (field("ContactId"), field("LeadId")) {
            (Some(c), _) => ("ContactId", c),
            (None, Some(l)) => ("LeadId", l),
            (None, None) => {
                return Err(record_error(
                    "REQUIRED_FIELD_MISSING",
                    "Required fields are missing: [ContactId or LeadId]",
                    &["ContactId".into(), "LeadId".into()],
                ));
            }
        };
        for (f, id) in [("CampaignId", &campaign), (who_field, &who)] {
            if !live(id) {
                return Err(record_error(
                    "INVALID_CROSS_REFERENCE_KEY",
                    &format!("invalid cross reference id {id}"),
                    &[f.to_string()],
                ));
            }
        }
        let dup = self.object("CampaignMember").is_some_and(|o| {
            o.records.values().any(|r| {
                !r.deleted
                    && r.values.get("CampaignId").map(text).as_deref() == Some(campaign.as_str())
                    && r.values.get(who_field).map(text).as_deref() == Some(who.as_str())
            })
        });
        if dup {
            return Err(record_error(
                "DUPLICATE_VALUE",
                "Already a campaign member.",
                &[who_field.to_string()],
            ));
        }
        Ok(())
    }

    /// One Bulk API 2.0 batch of records: like the Collections call of the
    /// same operation, except that a value a field cannot hold (or an
    /// unknown field) fails only its own record, as Bulk does.
    pub fn bulk(
        &mut self,
        object: &str,
        operation: &str,
        external_id: Option<&str>,
        records: &[serde_json::Map<String, Value>],
    ) -> Vec<Result1> {
        let Some(o) = self.object(object) else {
            let e = unknown_object(object);
            return records
                .iter()
                .map(|_| Err(record_error(e.code, &e.message, &[])))
                .collect();
        };
        let mut out: Vec<Option<Result1>> = vec![None; records.len()];
        let mut good = Vec::new();
        let mut at = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let mut probe = r.clone();
            if operation != "upsert" {
                probe.remove("Id");
            }
            match self.coerce(o, &probe) {
                Ok(_) => {
                    good.push(r.clone());
                    at.push(i);
                }
                Err(e) => out[i] = Some(Err(record_error(e.code, &e.message, &[]))),
            }
        }
        let done = match operation {
            "upsert" => self.upsert(object, external_id.unwrap_or("Id"), &good),
            "update" => self.update(&good),
            "insert" => self.insert(object, &good),
            _ => {
                let ids: Vec<String> = good
                    .iter()
                    .map(|r| r.get("Id").map(text).unwrap_or_default())
                    .collect();
                Ok(self.delete(&ids))
            }
        };
        match done {
            Ok(results) => {
                for (i, r) in at.into_iter().zip(results) {
                    out[i] = Some(r);
                }
            }
            Err(e) => {
                for i in at {
                    out[i] = Some(Err(record_error(e.code, &e.message, &[])));
                }
            }
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(record_error("UNKNOWN_EXCEPTION", "not processed", &[])))
            })
            .collect()
    }

    /// Delete records by id (to the recycle bin: `queryAll` still sees them).
    pub fn delete(&mut self, ids: &[String]) -> Vec<Result1> {
        let now = Utc::now();
        ids.iter()
            .map(|id| {
                for o in self.objects.values_mut() {
                    if o.records.get(id).is_some_and(|r| r.deleted) {
                        return Err(record_error("ENTITY_IS_DELETED", "entity is deleted", &[]));
                    }
                    if o.records.contains_key(id) {
                        o.unindex(id);
                        if let Some(r) = o.records.get_mut(id) {
                            r.deleted = true;
                            r.modstamp = now;
                        }
                        return Ok((id.clone(), false));
                    }
                }
                Err(record_error(
                    "INVALID_CROSS_REFERENCE_KEY",
                    &format!("invalid cross reference id {id}"),
                    &[],
                ))
            })
            .collect()
    }

    /// Run a SOQL query; `all` includes deleted records (`queryAll`).
    pub fn query(
        &self,
        soql: &str,
        all: bool,
    ) -> std::result::Result<(String, Vec<Value>), RequestError> {
        let mut q = parse_soql(soql)?;
        // `SELECT COUNT() FROM ...`: the caller counts the rows.
        if q.is_count() {
            q.fields = vec!["Id".into()];
        }
        let o = self.object(&q.from).ok_or_else(|| RequestError {
            code: "INVALID_TYPE",
            message: format!("sObject type '{}' is not supported.", q.from),
        })?;
        let mut fields = Vec::new();
        for f in &q.fields {
            let def = o.field(f).ok_or_else(|| RequestError {
                code: "INVALID_FIELD",
                message: format!("No such column '{f}' on entity '{}'.", o.name),
            })?;
            fields.push(def.clone());
        }
        for c in &q.conditions {
            if o.field(&c.field).is_none() {
                return Err(RequestError {
                    code: "INVALID_FIELD",
                    message: format!("No such column '{}' on entity '{}'.", c.field, o.name),
                });
            }
        }
        // An IN or = on an indexed field narrows the scan (deleted records
        // are not indexed: queryAll scans).
        let narrowed: Option<Vec<&Record>> = q.conditions.iter().find_map(|c| {
            let f = o.field(&c.field)?;
            if all || !o.index.contains_key(&f.name) || !(c.op == "in" || c.op == "=") {
                return None;
            }
            let mut ids: Vec<String> = Vec::new();
            for l in &c.values {
                let Literal::Text(t) = l else { return None };
                ids.extend(o.find(f, t));
            }
            ids.sort();
            ids.dedup();
            Some(ids.iter().filter_map(|id| o.records.get(id)).collect())
        });
        let candidates: Vec<&Record> = match narrowed {
            Some(rows) => rows,
            None => o.records.values().collect(),
        };
        let mut rows: Vec<&Record> = candidates
            .into_iter()
            .filter(|r| all || !r.deleted)
            .filter(|r| q.conditions.iter().all(|c| c.holds(o, r)))
            .collect();
        if let Some((field, desc)) = &q.order {
            let name = o.field(field).map(|f| f.name.clone()).unwrap_or_default();
            rows.sort_by(|a, b| {
                let (x, y) = (value_of(a, &name), value_of(b, &name));
                let ord = compare(&x, &y);
                if *desc { ord.reverse() } else { ord }
            });
        }
        if let Some(n) = q.limit {
            rows.truncate(n);
        }
        let records = rows
            .into_iter()
            .map(|r| {
                let mut m = serde_json::Map::new();
                m.insert(
                    "attributes".into(),
                    json!({"type": o.name, "url": format!("/services/data/v60.0/sobjects/{}/{}", o.name, r.id)}),
                );
                for f in &fields {
                    m.insert(f.name.clone(), value_of(r, &f.name));
                }
                Value::Object(m)
            })
            .collect();
        Ok((o.name.clone(), records))
    }
}

impl Org {
    /// A query's rows as a Bulk API 2.0 query job writes them: the header
    /// (fields as the object names them) and each value as text, null as
    /// an empty cell.
    pub fn query_rows(
        &self,
        soql: &str,
        all: bool,
    ) -> std::result::Result<(Vec<String>, Vec<Vec<String>>), RequestError> {
        let q = parse_soql(soql)?;
        let (object, records) = self.query(soql, all)?;
        let o = self
            .object(&object)
            .ok_or_else(|| unknown_object(&object))?;
        let header: Vec<String> = q
            .fields
            .iter()
            .map(|f| {
                o.field(f)
                    .map(|d| d.name.clone())
                    .unwrap_or_else(|| f.clone())
            })
            .collect();
        // Bulk results write datetimes in UTC with a `Z`, where the REST
        // API writes `+0000`.
        let datetime: Vec<bool> = header
            .iter()
            .map(|h| o.field(h).is_some_and(|f| f.kind == "datetime"))
            .collect();
        let rows = records
            .iter()
            .map(|r| {
                header
                    .iter()
                    .zip(&datetime)
                    .map(|(h, dt)| {
                        let v = text(&r[h.as_str()]);
                        match parse_time(&v) {
                            Some(t) if *dt => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                            _ => v,
                        }
                    })
                    .collect()
            })
            .collect();
        Ok((header, rows))
    }
}

fn unknown_object(name: &str) -> RequestError {
    RequestError {
        code: "NOT_FOUND",
        message: format!(
            "The requested resource does not exist: sObject type '{name}' is not supported."
        ),
    }
}

fn value_of(r: &Record, field: &str) -> Value {
    match field {
        "Id" => json!(r.id),
        "IsDeleted" => json!(r.deleted),
        "CreatedDate" => json!(sf_time(r.created)),
        "SystemModstamp" => json!(sf_time(r.modstamp)),
        _ => r.values.get(field).cloned().unwrap_or(Value::Null),
    }
}

/// Salesforce's datetime form: `2024-01-31T12:00:00.000+0000`.
pub fn sf_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string()
}

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => text(a).to_lowercase().cmp(&text(b).to_lowercase()),
    }
}

/// A parsed query: the subset ferry sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Soql {
    pub fields: Vec<String>,
    pub from: String,
    pub conditions: Vec<Condition>,
    pub order: Option<(String, bool)>,
    pub limit: Option<usize>,
}

impl Soql {
    /// `SELECT COUNT() FROM ...`.
    pub fn is_count(&self) -> bool {
        matches!(self.fields.as_slice(), [c, o, e] if c.eq_ignore_ascii_case("count") && o == "(" && e == ")")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: String,
    pub op: String,
    pub values: Vec<Literal>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Text(String),
    Number(f64),
    Bool(bool),
    Time(DateTime<Utc>),
    Null,
}

impl Condition {
    fn holds(&self, o: &SObject, r: &Record) -> bool {
        let name = o
            .field(&self.field)
            .map(|f| f.name.clone())
            .unwrap_or_default();
        let v = value_of(r, &name);
        let cmp = |lit: &Literal| -> Option<std::cmp::Ordering> {
            match lit {
                Literal::Null => None,
                Literal::Text(t) => Some(text(&v).to_lowercase().cmp(&t.to_lowercase())),
                Literal::Number(n) => v.as_f64().map(|x| x.total_cmp(n)),
                Literal::Bool(b) => v.as_bool().map(|x| x.cmp(b)),
                Literal::Time(t) => v.as_str().and_then(parse_time).map(|x| x.cmp(t)),
            }
        };
        use std::cmp::Ordering::*;
        match self.op.as_str() {
            "in" => self.values.iter().any(|l| cmp(l) == Some(Equal)),
            "not in" => !self.values.iter().any(|l| cmp(l) == Some(Equal)),
            "=" if self.values == [Literal::Null] => v.is_null(),
            "!=" if self.values == [Literal::Null] => !v.is_null(),
            op => {
                let Some(o) = self.values.first().and_then(cmp) else {
                    return false;
                };
                match op {
                    "=" => o == Equal,
                    "!=" => o != Equal,
                    "<" => o == Less,
                    "<=" => o != Greater,
                    ">" => o == Greater,
                    ">=" => o != Less,
                    _ => false,
                }
            }
        }
    }
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.3f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn malformed(why: impl Into<String>) -> RequestError {
    RequestError {
        code: "MALFORMED_QUERY",
        message: why.into(),
    }
}

/// Tokens: words, quoted strings, punctuation.
fn tokens(soql: &str) -> std::result::Result<Vec<String>, RequestError> {
    let mut out = Vec::new();
    let mut chars = soql.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut s = String::from("'");
            loop {
                match chars.next() {
                    None => return Err(malformed("unterminated string literal")),
                    Some('\\') => match chars.next() {
                        Some(e) => s.push(e),
                        None => return Err(malformed("unterminated string literal")),
                    },
                    Some('\'') => break,
                    Some(x) => s.push(x),
                }
            }
            out.push(s);
        } else if "(),".contains(c) {
            out.push(c.to_string());
            chars.next();
        } else if "=<>!".contains(c) {
            let mut op = String::new();
            while let Some(&d) = chars.peek() {
                if "=<>!".contains(d) {
                    op.push(d);
                    chars.next();
                } else {
                    break;
                }
            }
            out.push(op);
        } else {
            let mut w = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_whitespace() || "(),'=<>!".contains(d) {
                    break;
                }
                w.push(d);
                chars.next();
            }
            out.push(w);
        }
    }
    Ok(out)
}

fn literal(t: &str) -> std::result::Result<Literal, RequestError> {
    if let Some(s) = t.strip_prefix('\'') {
        return Ok(Literal::Text(s.to_string()));
    }
    match t.to_ascii_lowercase().as_str() {
        "true" => return Ok(Literal::Bool(true)),
        "false" => return Ok(Literal::Bool(false)),
        "null" => return Ok(Literal::Null),
        _ => {}
    }
    if let Some(time) = parse_time(t) {
        return Ok(Literal::Time(time));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(Literal::Time(
            d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc(),
        ));
    }
    t.parse::<f64>()
        .map(Literal::Number)
        .map_err(|_| malformed(format!("unexpected token: '{t}'")))
}

/// Parse `SELECT f, ... FROM Obj [WHERE c [AND c]...] [ORDER BY f [ASC|DESC]] [LIMIT n]`.
pub fn parse_soql(soql: &str) -> std::result::Result<Soql, RequestError> {
    let t = tokens(soql)?;
    let kw = |i: usize, w: &str| t.get(i).is_some_and(|x| x.eq_ignore_ascii_case(w));
    if !kw(0, "select") {
        return Err(malformed("the query must start with SELECT"));
    }
    let mut i = 1;
    let mut fields = Vec::new();
    while i < t.len() && !kw(i, "from") {
        if t[i] != "," {
            fields.push(t[i].clone());
        }
        i += 1;
    }
    if fields.is_empty() || !kw(i, "from") {
        return Err(malformed("expected: SELECT fields FROM object"));
    }
    let from = t
        .get(i + 1)
        .cloned()
        .ok_or_else(|| malformed("expected an object after FROM"))?;
    i += 2;
    let mut conditions = Vec::new();
    if kw(i, "where") {
        i += 1;
        loop {
            let field = t
                .get(i)
                .cloned()
                .ok_or_else(|| malformed("expected a condition after WHERE"))?;
            let (op, mut j) = if kw(i + 1, "not") && kw(i + 2, "in") {
                ("not in".to_string(), i + 3)
            } else {
                let op = t
                    .get(i + 1)
                    .cloned()
                    .ok_or_else(|| malformed("expected an operator"))?;
                (op.to_ascii_lowercase(), i + 2)
            };
            let mut values = Vec::new();
            if op == "in" || op == "not in" {
                if t.get(j).map(String::as_str) != Some("(") {
                    return Err(malformed("expected ( after IN"));
                }
                j += 1;
                while let Some(x) = t.get(j) {
                    match x.as_str() {
                        ")" => break,
                        "," => {}
                        v => values.push(literal(v)?),
                    }
                    j += 1;
                }
                if t.get(j).map(String::as_str) != Some(")") {
                    return Err(malformed("expected ) to close IN"));
                }
                j += 1;
            } else if ["=", "!=", "<", "<=", ">", ">="].contains(&op.as_str()) {
                values.push(literal(
                    t.get(j).ok_or_else(|| malformed("expected a value"))?,
                )?);
                j += 1;
            } else {
                return Err(malformed(format!("unexpected token: '{op}'")));
            }
            conditions.push(Condition { field, op, values });
            i = j;
            if kw(i, "and") {
                i += 1;
            } else {
                break;
            }
        }
    }
    let mut order = None;
    if kw(i, "order") && kw(i + 1, "by") {
        let f = t
            .get(i + 2)
            .cloned()
            .ok_or_else(|| malformed("expected a field after ORDER BY"))?;
        i += 3;
        let desc = if kw(i, "desc") {
            i += 1;
            true
        } else {
            if kw(i, "asc") {
                i += 1;
            }
            false
        };
        order = Some((f, desc));
    }
    let mut limit = None;
    if kw(i, "limit") {
        limit = Some(
            t.get(i + 1)
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| malformed("LIMIT takes a number"))?,
        );
        i += 2;
    }
    if let Some(rest) = t.get(i) {
        return Err(malformed(format!("unexpected token: '{rest}'")));
    }
    Ok(Soql {
        fields,
        from,
        conditions,
        order,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn soql_subset_parses_as_ferry_sends_it() {
        let q = parse_soql(
            "SELECT Id, Email FROM Lead WHERE Email IN ('a@x.com', 'b\\'c@x.com') AND SystemModstamp >= 2024-01-01T00:00:00Z ORDER BY SystemModstamp DESC LIMIT 5",
        )
        .unwrap();
        assert_eq!(q.fields, ["Id", "Email"]);
        assert_eq!(q.from, "Lead");
        assert_eq!(q.conditions[0].values[1], Literal::Text("b'c@x.com".into()));
        assert!(matches!(q.conditions[1].values[0], Literal::Time(_)));
        assert_eq!(q.order, Some(("SystemModstamp".into(), true)));
        assert_eq!(q.limit, Some(5));
        for bad in [
            "",
            "SELECT",
            "SELECT Id FROM",
            "SELECT Id FROM Lead WHERE",
            "SELECT Id FROM Lead WHERE Email IN ('a'",
            "SELECT Id FROM Lead LIMIT x",
            "SELECT Id FROM Lead extra",
        ] {
            assert_eq!(
                parse_soql(bad).unwrap_err().code,
                "MALFORMED_QUERY",
                "{bad}"
            );
        }
    }

    proptest! {
        /// Any text: a query or MALFORMED_QUERY, never a panic; and a
        /// query over the default org never panics either.
        #[test]
        fn soql_parser_never_panics(q in "(SELECT|FROM|WHERE|IN|AND|ORDER|BY|LIMIT|Id|Email|Lead|'[a-z]*'|\\(|\\)|,|=|<|>|!|[0-9]{1,4}|2024-01-01|true|null| ){0,24}") {
            let _ = parse_soql(&q);
            let _ = Org::default().query(&q, true);
        }
    }
}
