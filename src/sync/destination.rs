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
//! rows); per-record failures inside a successful reply (HubSpot's 207) come
//! back as [`Outcome`]s; [`CallError::Auth`] and [`CallError::DailyLimit`]
//! stop the sync; [`CallError::Transient`] means the retries ran out (or,
//! for a create, that the reply was lost and the syncer must look before
//! sending again).

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

/// A record to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The match key (normalized).
    pub key: String,
    /// The CRM id, for `Update` and `Archive`.
    pub id: Option<String>,
    /// Property values as the CRM expects them (strings; `""` clears).
    pub properties: BTreeMap<String, String>,
}

/// What happened to one record of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub key: String,
    pub result: Result<Written, Refusal>,
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

/// A record found by a lookup.
#[derive(Debug, Clone, PartialEq)]
pub struct Existing {
    pub id: String,
    pub properties: BTreeMap<String, String>,
    pub created_at: Option<DateTime<Utc>>,
}

/// A CRM the syncer can write to.
#[async_trait]
pub trait Destination: Send + Sync {
    /// Records per write call at most.
    fn max_batch(&self) -> usize;

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
    /// Keys are compared case-insensitively; a key may match several records
    /// when the property is not unique.
    async fn lookup(
        &self,
        object: &str,
        key_property: &str,
        unique: bool,
        keys: &[String],
        properties: &[String],
    ) -> Result<HashMap<String, Vec<Existing>>, CallError>;

    /// Write one batch (at most [`Destination::max_batch`] records). Every
    /// record gets an outcome; a record the reply does not mention is a
    /// transient refusal (its fate is unknown, so it is not confirmed).
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
