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
//! A destination declares what it can do ([`Capabilities`]: operations,
//! rows and bytes per call, concurrency), how its keys compare
//! ([`Destination::normalize_key`]), the rate budgets it spends that other
//! ferry processes on the same account must share
//! ([`Destination::budgets`]), and how a call error that ends a run reads
//! to the user ([`Destination::stop_error`]). An [`Account`] is one
//! `[destinations.<name>]`: every sync to it gets its [`Destination`] from
//! the same account, so they share one client and one budget. Nothing
//! vendor-specific lives in the syncer.
//!
//! Unknown is an outcome ([`Fate::Unknown`]): a write whose reply was lost
//! or did not mention a record is neither confirmed nor refused. The syncer
//! logs it as `unknown` and settles it with a read before writing that
//! record again. A reply that cannot be read is never evidence: a lookup
//! whose reply is malformed or does not account for every key is an error,
//! not "nothing found".

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::http::CallError;
use crate::http::limit::RateLimiter;

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

/// What a destination can do. The syncer never sends an operation not in
/// `ops`, more than `max_batch` records or `max_bytes` of values in one
/// call, or more than `max_in_flight` calls at once.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// The vendor's name, for messages.
    pub vendor: &'static str,
    pub ops: &'static [Op],
    /// Records per write call at most.
    pub max_batch: usize,
    /// Bytes of property values per write call at most (`None`: no limit
    /// below what `max_batch` implies).
    pub max_bytes: Option<usize>,
    /// Write calls in flight at once, at most.
    pub max_in_flight: usize,
    /// Columns of a lake copy of the object (`crm_copy`) that hold the
    /// record's id, in order of preference.
    pub id_columns: &'static [&'static str],
}

/// Split `items` into calls of at most `max_rows` items and, when
/// `max_bytes` is set, at most that many bytes by `size` (an item larger
/// than the limit goes alone: the vendor's refusal then names it).
pub fn batches<T>(
    items: Vec<T>,
    max_rows: usize,
    max_bytes: Option<usize>,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let max_rows = max_rows.max(1);
    let mut out = Vec::new();
    let mut current: Vec<T> = Vec::new();
    let mut bytes = 0usize;
    for item in items {
        let n = size(&item);
        let full = current.len() >= max_rows
            || max_bytes.is_some_and(|max| !current.is_empty() && bytes + n > max);
        if full {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += n;
        current.push(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A rate budget a destination spends; other ferry processes using the same
/// account join it through the lake ([`crate::http::shared`]).
pub struct SharedBudget {
    /// Names the account (and endpoint) across processes.
    pub key: String,
    pub limiter: Arc<RateLimiter>,
    pub daily_limit: Option<u64>,
}

/// One configured destination account (`[destinations.<name>]`): shared by
/// every sync to it, so they share its client and its rate budget.
pub trait Account: Send + Sync {
    /// The destination as one sync uses it (with the sync's own budget,
    /// `requests_per_10s`, if it sets one).
    fn destination(&self, sync: &super::config::Sync) -> Box<dyn Destination>;
}

/// Why a destination's credentials could not be resolved.
pub enum AuthProblem {
    /// The table is wrong (none given, two given): the user fixes ferry.toml.
    Config(String),
    /// A `${VAR}` is not set: calls fail with this, other commands work.
    Secret(Error),
}

/// Resolves a `${VAR}` setting of ferry.toml (or says which is unset, where).
/// Interpolates a setting's `${VAR}`s: `(key within the table, such as
/// "jwt.private_key"; the value as written)`.
pub type SecretFn<'a> = dyn Fn(&str, &str) -> Result<crate::project::secret::Secret> + 'a;

/// Open the account `config` describes.
pub fn open(config: &super::config::Destination) -> Result<Arc<dyn Account>> {
    match config.kind {
        super::config::DestinationKind::Hubspot => Ok(Arc::new(super::hubspot::Shared(Arc::new(
            super::hubspot::Account::new(config)?,
        )))),
        super::config::DestinationKind::Salesforce => Ok(Arc::new(super::salesforce::Shared(
            Arc::new(super::salesforce::Account::new(config)?),
        ))),
    }
}

/// Writes as asynchronous jobs (Salesforce's Bulk API 2.0), for runs
/// large enough that a job costs fewer calls than synchronous batches.
///
/// The contract, in the order the syncer follows it:
///
/// 1. [`Jobs::open`] creates an empty job and returns its id; no record has
///    been sent yet.
/// 2. The syncer records the id and the job's rows in the lake (durably).
/// 3. [`Jobs::upload`] sends the rows and closes the job, so the vendor
///    starts processing it. An error means the job holds no data that will
///    be processed (the destination aborts it when it cannot tell).
/// 4. [`Jobs::finish`] waits for the job to end and returns every row's
///    outcome (rows the results do not mention are [`Fate::Unknown`]), or
///    `None` when the job never started processing (it was still open:
///    the run stopped before step 3 finished); the destination has then
///    aborted it and the rows are simply sent again.
///
/// A run killed after step 2 leaves the record behind: the next run calls
/// `finish` for it before diffing, so a job that was processing is awaited
/// and read, never uploaded a second time. Only idempotent operations
/// (upsert by key, update by id) go in jobs.
#[async_trait]
pub trait Jobs: Send + Sync {
    /// Rows in a run from which jobs are used instead of calls.
    fn threshold(&self) -> usize;
    /// Operations a job can carry.
    fn ops(&self) -> &'static [Op];
    /// Rows and bytes of values per job, at most.
    fn max_rows(&self) -> usize;
    fn max_bytes(&self) -> usize;
    /// Jobs processing at once, at most.
    fn max_in_flight(&self) -> usize;
    /// Whether the vendor's allowance (Salesforce: bulk batches per 24
    /// hours) still covers a job of `rows` records; if not, they go by calls.
    fn affordable(&self, rows: usize) -> bool;
    async fn open(&self, object: &str, op: Op, key_property: &str) -> Result<String, CallError>;
    async fn upload(
        &self,
        job: &str,
        op: Op,
        key_property: &str,
        rows: &[Outgoing],
    ) -> Result<(), CallError>;
    async fn finish(
        &self,
        job: &str,
        op: Op,
        key_property: &str,
        rows: &[Outgoing],
    ) -> Result<Option<Vec<Outcome>>, CallError>;
    /// Abort a job (best effort: a job already processing cannot be).
    async fn abort(&self, job: &str) -> Result<(), CallError>;
}

/// Audiences: a named set of records the CRM's users act on (a HubSpot
/// list, a Salesforce campaign's members). Membership is by CRM id; adding
/// a member twice or removing a non-member is harmless, so a batch whose
/// reply was lost is simply sent again.
#[async_trait]
pub trait Audiences: Send + Sync {
    /// Record ids per membership call, at most.
    fn max_members(&self) -> usize;
    /// The id of the audience `name` for records of `object`, created if
    /// absent (unless `create` is false: then `None`).
    async fn audience(
        &self,
        object: &str,
        name: &str,
        create: bool,
    ) -> Result<Option<String>, CallError>;
    /// Add records by id. Each id's outcome: `Written` (a member now) or
    /// `Refused` (no such record...).
    async fn add(
        &self,
        audience: &str,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Fate)>, CallError>;
    /// Remove records by id; a record that was not a member is removed.
    async fn remove(
        &self,
        audience: &str,
        object: &str,
        ids: &[String],
    ) -> Result<Vec<(String, Fate)>, CallError>;
}

/// A CRM the syncer can write to.
#[async_trait]
pub trait Destination: Send + Sync {
    /// Audiences, if the CRM has them.
    fn audiences(&self) -> Option<&dyn Audiences> {
        None
    }

    /// Asynchronous jobs, if the CRM has them.
    fn jobs(&self) -> Option<&dyn Jobs> {
        None
    }

    /// What it can do.
    fn capabilities(&self) -> Capabilities;

    /// The form in which keys are compared. Default: trimmed and
    /// lower-cased, as CRMs store unique values normalized (HubSpot
    /// lower-cases emails), so a reply's key need not equal the sent key.
    fn normalize_key(&self, key: &str) -> String {
        normalize_key(key)
    }

    /// Whether the model's values of this match property are compared
    /// case-insensitively in the diff (the CRM treats them so). Default:
    /// emails and domains.
    fn case_insensitive(&self, property: &str) -> bool {
        matches!(property.to_ascii_lowercase().as_str(), "email" | "domain")
    }

    /// Budgets to share with other processes on the same account.
    fn budgets(&self) -> Vec<SharedBudget> {
        Vec::new()
    }

    /// A call error that ends a run, as the user reads it: who must act
    /// and what to do.
    fn stop_error(&self, e: CallError) -> Error {
        let vendor = self.capabilities().vendor.to_string();
        match e {
            CallError::Auth { .. } => Error::Vendor {
                vendor,
                message: format!("refused the credentials ({}): check them in [destinations]", e.message()),
                retryable: false,
            },
            CallError::DailyLimit => Error::Vendor {
                vendor,
                message: "the daily API budget is spent; progress so far is saved: run again after it resets".into(),
                retryable: true,
            },
            e @ CallError::Transient { .. } => Error::Vendor {
                vendor,
                message: e.message(),
                retryable: true,
            },
            e @ CallError::Rejected { .. } => Error::Input(format!("{vendor}: {}", e.message())),
        }
    }

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

    /// Write one batch (at most [`Capabilities::max_batch`] records). Every
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Batches keep every item once, in order, within the row limit,
        /// and within the byte limit unless one item alone exceeds it.
        #[test]
        fn batches_respect_rows_and_bytes(sizes in prop::collection::vec(0usize..50, 0..80),
                                          rows in 1usize..10, bytes in prop::option::of(1usize..120)) {
            let items: Vec<(usize, usize)> = sizes.iter().copied().enumerate().collect();
            let out = batches(items.clone(), rows, bytes, |(_, n)| *n);
            let flat: Vec<(usize, usize)> = out.iter().flatten().copied().collect();
            prop_assert_eq!(flat, items);
            for b in &out {
                prop_assert!(!b.is_empty() && b.len() <= rows);
                let total: usize = b.iter().map(|(_, n)| n).sum();
                if let Some(max) = bytes {
                    prop_assert!(total <= max || b.len() == 1, "{} bytes in {:?}", total, b);
                }
            }
        }
    }
}
