//! The contract between the syncer and a CRM.
//!
//! A [`Destination`] does three things: check that the object and properties
//! exist (and whether the match property holds unique values), look records
//! up by match key, and write one batch. The syncer owns everything else:
//! diffing, ownership policies, splitting rejected batches, retrying creates
//! safely, logging and committing progress.
//!
//! Errors: a call the vendor refused as a whole returns
//! [`CallError::Rejected`] (the syncer splits the batch to find the bad
//! rows, unless [`Destination::refuses_every_row`] says splitting cannot
//! help); per-record failures inside a successful reply (HubSpot's 207) come
//! back as [`Outcome`]s; [`CallError::Auth`] and [`CallError::DailyLimit`]
//! stop the sync; [`CallError::Transient`] means the retries ran out (or,
//! for a create, that the reply was lost: the write may have happened).
//!
//! Unknown is an outcome ([`Fate::Unknown`]): a write whose reply was lost
//! or did not mention a record is neither confirmed nor refused. The syncer
//! logs it as `unknown` and settles it with a read before writing that
//! record again. A reply that cannot be read is never evidence: a lookup
//! whose reply is malformed or does not account for every key is an error,
//! not "nothing found".

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::http::CallError;

/// A write operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Create or update by the (unique) match property.
    Upsert,
    /// Create new records (not idempotent: the syncer looks before resending).
    Create,
    /// Update by CRM id.
    Update,
    /// Update by the (unique) match property.
    UpdateByKey,
    /// Archive by CRM id.
    Archive,
}

impl Op {
    /// The word in `ferry.sync_log.operation`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Create => "create",
            Op::Update | Op::UpdateByKey => "update",
            Op::Archive => "archive",
        }
    }
}

/// The form in which keys are compared: trimmed and lower-cased, because
/// CRMs store unique values normalized (HubSpot lower-cases emails), so a
/// reply's key need not equal the sent key byte for byte.
pub fn normalize_key(key: &str) -> String {
    key.trim().to_lowercase()
}

/// A record to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The match key (normalized).
    pub key: String,
    /// The CRM id, for `Update` and `Archive`.
    pub id: Option<String>,
    /// Property values as the CRM expects them (strings; `""` clears).
    pub properties: BTreeMap<String, String>,
    /// An earlier write of this record, begun at this time, may have been
    /// applied without ferry hearing back: a record the CRM created since
    /// then was created by this sync, even if this write finds it existing.
    pub pending_since: Option<DateTime<Utc>>,
}

impl Outgoing {
    pub fn new(key: String, id: Option<String>, properties: BTreeMap<String, String>) -> Outgoing {
        Outgoing {
            key,
            id,
            properties,
            pending_since: None,
        }
    }
}

/// What happened to one record of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub key: String,
    pub fate: Fate,
}

/// One record's fate in a write.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// The CRM confirmed the write.
    Written(Written),
    /// The CRM did not accept the record.
    Refused(Refusal),
    /// Nobody knows: the reply was lost, or did not mention the record. The
    /// write may have been applied; it must be settled by a read before the
    /// record is written again (a create is never sent blind twice).
    Unknown(String),
}

/// A confirmed write.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub id: String,
    /// The CRM created the record in this write.
    pub created: bool,
}

/// A record the CRM did not accept.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub category: String,
    pub message: String,
    /// The vendor's reply about this record, as JSON.
    pub response: Option<String>,
    /// Retrying later may succeed (a transient failure), as opposed to a
    /// rejection that needs a fix in the data or the mapping.
    pub transient: bool,
}

impl Refusal {
    /// A write whose outcome is unknown, where that cannot be settled later
    /// (an update or archive: idempotent, so it is simply sent again).
    pub fn no_result(why: String) -> Refusal {
        Refusal {
            category: "NO_RESULT".into(),
            message: why,
            response: None,
            transient: true,
        }
    }
}

/// A record found by a lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    pub id: String,
    pub properties: BTreeMap<String, String>,
    pub created_at: Option<DateTime<Utc>>,
}

/// What a lookup found: records by [`normalize_key`], and keys the CRM's
/// reply did not account for (neither found nor reported missing), with why.
/// An unresolved key is neither present nor absent: nothing is written for it.
#[derive(Debug, Clone, Default)]
pub struct Lookup {
    pub found: HashMap<String, Vec<Existing>>,
    pub unresolved: HashMap<String, String>,
}

/// A CRM the syncer can write to.
#[async_trait]
pub trait Destination: Send + Sync {
    /// Records per write call at most.
    fn max_batch(&self) -> usize;

    /// Whether a whole-batch refusal applies to every record alike (an
    /// unknown property, an unknown object type, a redirect off the vendor's
    /// host), so that splitting the batch cannot isolate a bad record and
    /// would only spend calls. Default: no (the syncer splits).
    fn refuses_every_row(&self, _error: &CallError) -> bool {
        false
    }

    /// How long after a write the CRM's search can still miss it (HubSpot's
    /// search index lags writes). A create whose fate is unknown is settled
    /// by search only after this long; zero for lookups that read the
    /// record store directly.
    fn search_lag(&self, _unique: bool) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Check that `object` exists with every one of `properties` and the match
    /// property; return whether the match property holds unique values.
    /// Errors name the missing property and say what to do.
    async fn prepare(
        &self,
        object: &str,
        key_property: &str,
        properties: &[String],
    ) -> Result<bool>;

    /// Find records by match key, with the current values of `properties`.
    /// `found` is keyed by [`normalize_key`]; a key may match several records
    /// when the property is not unique. A key in neither `found` nor
    /// `unresolved` was reported absent by the CRM. A reply that cannot be
    /// read is an error (never "not found"); a readable reply that is silent
    /// about some keys puts those in `unresolved`, and the rest stand.
    async fn lookup(
        &self,
        object: &str,
        key_property: &str,
        unique: bool,
        keys: &[String],
        properties: &[String],
    ) -> Result<Lookup, CallError>;

    /// Write one batch (at most [`Destination::max_batch`] records). Every
    /// record gets an outcome; a record a 2xx reply does not mention is
    /// [`Fate::Unknown`] (the write may have happened, so it is neither
    /// confirmed nor sent again blind).
    async fn write(
        &self,
        object: &str,
        op: Op,
        key_property: &str,
        rows: &[Outgoing],
    ) -> Result<Vec<Outcome>, CallError>;

    /// API calls sent so far, and 429s seen.
    fn usage(&self) -> (u64, u64);
}
