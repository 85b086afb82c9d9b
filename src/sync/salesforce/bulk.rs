//! Bulk API 2.0 ingest jobs: the [`Jobs`] side of the Salesforce
//! destination, for runs of [`Account::bulk_threshold`] rows or more.
//!
//! One job: `POST /jobs/ingest` (state `Open`), one CSV upload `PUT
//! /jobs/ingest/{id}/batches` (at most 100 MB before Salesforce's base64
//! encoding, which must stay under 150 MB), `PATCH {"state":
//! "UploadComplete"}`, polls of `GET /jobs/ingest/{id}` with backoff until
//! `JobComplete`, `Failed` or `Aborted`, then `successfulResults/`,
//! `failedResults/` and `unprocessedrecords/`, whose rows come back in no
//! particular order and are matched to the sent rows by the key column.
//!
//! In Bulk CSV an empty cell leaves a field as it is; `#N/A` clears it.
//! A job can be uploaded to once: a second upload is refused with "Found
//! multiple contents", which is how a lost upload reply is settled. Each
//! 10,000 records processed spend one of the org's bulk batches (15,000
//! per rolling 24 hours, `DailyBulkApiBatches` in `/limits`).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::Salesforce;
use crate::http::{Call, CallError};
use crate::sync::destination::{Fate, Jobs, Op, Outcome, Outgoing, Refusal, Written};

/// Records per job: ten of Salesforce's internal 10,000-record batches.
pub const JOB_ROWS: usize = 100_000;
/// CSV bytes per job: under the 100 MB Salesforce advises before base64.
pub const JOB_BYTES: usize = 90 << 20;
/// Records per bulk batch, as Salesforce counts them against the daily allowance.
pub const BATCH_RECORDS: usize = 10_000;
/// Jobs processing at once.
const JOBS_IN_FLIGHT: usize = 3;

/// The value that clears a field in Bulk CSV (an empty cell leaves it alone).
const CLEAR: &str = "#N/A";

/// Bulk batches a job of `rows` records spends.
pub fn batches_for(rows: usize) -> u64 {
    rows.div_ceil(BATCH_RECORDS) as u64
}

/// The CSV of one job: the key column (`Id` for update), then every
/// property any row sets. A property a row leaves out is an empty cell
/// (unchanged); an empty value is `#N/A` (cleared).
pub fn job_csv(op: Op, key_property: &str, rows: &[Outgoing]) -> Result<Vec<u8>, String> {
    let key_column = match op {
        Op::Upsert => key_property.to_string(),
        _ => "Id".to_string(),
    };
    let mut columns: Vec<&str> = Vec::new();
    for r in rows {
        for k in r.properties.keys() {
            if !k.eq_ignore_ascii_case(&key_column) && !columns.contains(&k.as_str()) {
                columns.push(k);
            }
        }
    }
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(Vec::with_capacity(rows.len() * 64));
    let header: Vec<&str> = std::iter::once(key_column.as_str())
        .chain(columns.iter().copied())
        .collect();
    w.write_record(&header).map_err(|e| e.to_string())?;
    for r in rows {
        let key = match op {
            Op::Upsert => r
                .properties
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key_property))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| r.key.clone()),
            _ => r.id.clone().unwrap_or_default(),
        };
        let mut record = vec![key];
        for c in &columns {
            record.push(match r.properties.get(*c) {
                None => String::new(),
                Some(v) if v.is_empty() => CLEAR.to_string(),
                Some(v) => v.clone(),
            });
        }
        w.write_record(&record).map_err(|e| e.to_string())?;
    }
    w.into_inner().map_err(|e| e.to_string())
}

/// `REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --`
/// → (code, message with the fields).
pub fn parse_error(e: &str) -> (String, String) {
    let e = e.trim().trim_end_matches("--").trim();
    let Some((code, rest)) = e.split_once(':') else {
        return ("UNKNOWN_ERROR".into(), e.to_string());
    };
    let is_code = !code.is_empty()
        && code
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !is_code {
        return ("UNKNOWN_ERROR".into(), e.to_string());
    }
    // The fields follow the last colon, when they look like field names.
    let message = match rest.rsplit_once(':') {
        Some((m, fields))
            if !fields.trim().is_empty()
                && fields
                    .split(',')
                    .all(|f| f.trim().chars().all(|c| c.is_alphanumeric() || c == '_')) =>
        {
            format!("{} (fields: {})", m.trim(), fields.trim())
        }
        _ => rest.trim().to_string(),
    };
    (code.to_string(), message)
}

/// Rows of a result CSV as (header, records). Unreadable CSV is an error:
/// it is not evidence of any record's fate.
fn read_csv(bytes: &[u8], which: &str) -> Result<(Vec<String>, Vec<Vec<String>>), CallError> {
    let bad = |e: String| CallError::Transient {
        message: format!("Salesforce's {which} for the job is not readable CSV ({e})"),
        attempts: 1,
    };
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut r = csv::ReaderBuilder::new().flexible(false).from_reader(bytes);
    let header: Vec<String> = r
        .headers()
        .map_err(|e| bad(e.to_string()))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut out = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| bad(e.to_string()))?;
        out.push(rec.iter().map(str::to_string).collect());
    }
    Ok((header, out))
}

fn column(header: &[String], name: &str) -> Option<usize> {
    header.iter().position(|h| h.eq_ignore_ascii_case(name))
}

/// What an ended job reports: its three result sets (CSV) and its error.
#[derive(Debug, Default)]
pub struct JobResults<'a> {
    pub successful: &'a [u8],
    pub failed: &'a [u8],
    pub unprocessed: &'a [u8],
    pub error: Option<&'a str>,
}

/// Every row's outcome from the three result sets. A row none mentions is
/// unknown; a result naming no sent row is ignored.
pub fn job_outcomes(
    op: Op,
    key_property: &str,
    rows: &[Outgoing],
    normalize: &dyn Fn(&str) -> String,
    results: &JobResults<'_>,
) -> Result<Vec<Outcome>, CallError> {
    let JobResults {
        successful,
        failed,
        unprocessed,
        error: job_error,
    } = *results;
    let key_column = match op {
        Op::Upsert => key_property,
        _ => "Id",
    };
    // The value each row was sent under, normalized → its index.
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let sent = match op {
            Op::Upsert => r
                .properties
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key_property))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| r.key.clone()),
            _ => r.id.clone().unwrap_or_default(),
        };
        index.insert(normalize(&sent), i);
    }
    let mut fates: Vec<Option<Fate>> = vec![None; rows.len()];
    let missing_column = |which: &str| CallError::Transient {
        message: format!("Salesforce's {which} has no {key_column} column"),
        attempts: 1,
    };
    let (h, recs) = read_csv(successful, "successfulResults")?;
    if !recs.is_empty() {
        let k = column(&h, key_column).ok_or_else(|| missing_column("successfulResults"))?;
        let id = column(&h, "sf__Id");
        let created = column(&h, "sf__Created");
        for rec in recs {
            let Some(&i) = rec.get(k).and_then(|v| index.get(&normalize(v))) else {
                continue;
            };
            let id = id.and_then(|c| rec.get(c)).cloned().unwrap_or_default();
            fates[i] = Some(if id.is_empty() {
                Fate::Unknown("Salesforce reported success without an id".into())
            } else {
                Fate::Written(Written {
                    id,
                    created: op == Op::Upsert
                        && created
                            .and_then(|c| rec.get(c))
                            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
                })
            });
        }
    }
    let (h, recs) = read_csv(failed, "failedResults")?;
    if !recs.is_empty() {
        let k = column(&h, key_column).ok_or_else(|| missing_column("failedResults"))?;
        let err = column(&h, "sf__Error");
        for rec in recs {
            let Some(&i) = rec.get(k).and_then(|v| index.get(&normalize(v))) else {
                continue;
            };
            let raw = err.and_then(|c| rec.get(c)).cloned().unwrap_or_default();
            let (code, message) = parse_error(&raw);
            fates[i] = Some(Fate::Refused(Refusal {
                transient: matches!(
                    code.as_str(),
                    "UNABLE_TO_LOCK_ROW" | "SERVER_UNAVAILABLE" | "REQUEST_RUNNING_TOO_LONG"
                ),
                category: code,
                message,
                response: Some(json!({"sf__Error": raw}).to_string()),
            }));
        }
    }
    let (h, recs) = read_csv(unprocessed, "unprocessedrecords")?;
    if !recs.is_empty() {
        let k = column(&h, key_column).ok_or_else(|| missing_column("unprocessedrecords"))?;
        for rec in recs {
            let Some(&i) = rec.get(k).and_then(|v| index.get(&normalize(v))) else {
                continue;
            };
            fates[i].get_or_insert(Fate::Refused(Refusal {
                category: "NOT_PROCESSED".into(),
                message: match job_error {
                    Some(e) => format!("the Bulk job ended before processing this record ({e}); it is sent again next run"),
                    None => "the Bulk job ended before processing this record; it is sent again next run".into(),
                },
                response: None,
                transient: true,
            }));
        }
    }
    Ok(rows
        .iter()
        .zip(fates)
        .map(|(r, f)| Outcome {
            key: r.key.clone(),
            fate: f.unwrap_or_else(|| {
                Fate::Unknown("the Bulk job's results do not mention this record".into())
            }),
        })
        .collect())
}

impl Salesforce {
    fn job_path(&self, job: &str) -> String {
        self.path(&format!("/jobs/ingest/{job}"))
    }

    async fn job_info(&self, job: &str) -> Result<Value, CallError> {
        self.send(Call::get(self.job_path(job))).await
    }

    async fn set_state(&self, job: &str, state: &str) -> Result<Value, CallError> {
        let body = json!({"state": state});
        self.send(Call {
            method: reqwest::Method::PATCH,
            ..Call::post(self.job_path(job), &body, true)
        })
        .await
    }

    async fn results(&self, job: &str, which: &str) -> Result<bytes::Bytes, CallError> {
        let mut call = Call::get(format!("{}/{which}/", self.job_path(job)));
        call.raw_reply = true;
        if let Some(own) = &self.own {
            call = call.limited_by(own);
        }
        Ok(self.account.client.send(call).await?.raw)
    }
}

fn operation(op: Op) -> &'static str {
    match op {
        Op::Upsert => "upsert",
        Op::Create => "insert",
        Op::Archive => "delete",
        Op::Update | Op::UpdateByKey => "update",
    }
}

#[async_trait]
impl Jobs for Salesforce {
    fn threshold(&self) -> usize {
        self.account.bulk_threshold
    }

    fn ops(&self) -> &'static [Op] {
        &[Op::Upsert, Op::Update]
    }

    fn max_rows(&self) -> usize {
        JOB_ROWS
    }

    fn max_bytes(&self) -> usize {
        JOB_BYTES
    }

    fn max_in_flight(&self) -> usize {
        JOBS_IN_FLIGHT
    }

    fn affordable(&self, rows: usize) -> bool {
        let need = batches_for(rows);
        let Ok(mut left) = self.account.bulk_batches.lock() else {
            return false;
        };
        match *left {
            None => true,
            Some(n) if n >= need => {
                *left = Some(n - need);
                true
            }
            Some(_) => false,
        }
    }

    async fn open(&self, object: &str, op: Op, key_property: &str) -> Result<String, CallError> {
        let mut body = json!({
            "object": object,
            "operation": operation(op),
            "contentType": "CSV",
            "lineEnding": "LF",
            "columnDelimiter": "COMMA",
        });
        if op == Op::Upsert {
            body["externalIdFieldName"] = json!(key_property);
        }
        // Opening twice leaves an empty job behind, nothing more.
        let reply = self
            .send(Call::post(self.path("/jobs/ingest"), &body, true))
            .await?;
        match reply["id"].as_str() {
            Some(id) if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()) => {
                Ok(id.to_string())
            }
            _ => Err(CallError::Transient {
                message: format!(
                    "Salesforce's reply to creating a Bulk job has no job id: {reply}"
                ),
                attempts: 1,
            }),
        }
    }

    async fn upload(
        &self,
        job: &str,
        op: Op,
        key_property: &str,
        rows: &[Outgoing],
    ) -> Result<(), CallError> {
        let csv = bytes::Bytes::from(job_csv(op, key_property, rows).map_err(|e| {
            CallError::Rejected {
                status: 0,
                body: json!({"message": format!("cannot write the job's CSV: {e}")}),
            }
        })?);
        let uploaded = self.upload_once(job, csv).await;
        let closed = match uploaded {
            Ok(()) => self.close(job).await,
            Err(e) => Err(e),
        };
        if let Err(e) = closed {
            // Nothing of this job is processed: abort it, so the rows can
            // go again in another.
            if let Err(a) = self.set_state(job, "Aborted").await {
                tracing::warn!(
                    job,
                    "could not abort the Bulk job after a failed upload: {}",
                    a.message()
                );
            }
            return Err(e);
        }
        Ok(())
    }

    async fn finish(
        &self,
        job: &str,
        op: Op,
        key_property: &str,
        rows: &[Outgoing],
    ) -> Result<Option<Vec<Outcome>>, CallError> {
        let mut pause = Duration::from_millis(200);
        let mut last_state = String::new();
        let shown = crate::console::waiting(format!("Salesforce Bulk job {job}"), None);
        loop {
            let info = match self.job_info(job).await {
                Ok(i) => i,
                // Salesforce deletes jobs 7 days after they end.
                Err(CallError::Rejected { status: 404, .. }) => {
                    return Ok(Some(
                        rows.iter()
                            .map(|r| Outcome {
                                key: r.key.clone(),
                                fate: Fate::Unknown(format!(
                                    "Bulk job {job} is gone from Salesforce, so its results cannot be read"
                                )),
                            })
                            .collect(),
                    ));
                }
                Err(e) => return Err(e),
            };
            let state = info["state"].as_str().unwrap_or("").to_string();
            if state != last_state {
                tracing::info!(
                    job,
                    state = %state,
                    processed = info["numberRecordsProcessed"].as_u64().unwrap_or(0),
                    failed = info["numberRecordsFailed"].as_u64().unwrap_or(0),
                    "Bulk job {job} {state}"
                );
                crate::console::update(
                    &shown,
                    format!(
                        "Salesforce Bulk job {job} {state}, {} of {} records processed",
                        crate::console::thousands(
                            info["numberRecordsProcessed"].as_u64().unwrap_or(0)
                        ),
                        crate::console::thousands(rows.len() as u64)
                    ),
                );
                last_state = state.clone();
            }
            match state.as_str() {
                // Never closed: the run that opened it stopped mid-upload.
                "Open" => {
                    self.set_state(job, "Aborted").await?;
                    return Ok(None);
                }
                "UploadComplete" | "InProgress" => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 3 / 2).min(Duration::from_secs(10));
                }
                "JobComplete" | "Failed" | "Aborted" => {
                    if state != "JobComplete"
                        && let Some(m) = info["errorMessage"].as_str()
                    {
                        tracing::warn!(job, "Bulk job {job} ended {state}: {m}");
                    }
                    let successful = self.results(job, "successfulResults").await?;
                    let failed = self.results(job, "failedResults").await?;
                    let unprocessed = self.results(job, "unprocessedrecords").await?;
                    let normalize = |k: &str| crate::sync::destination::normalize_key(k);
                    return job_outcomes(
                        op,
                        key_property,
                        rows,
                        &normalize,
                        &JobResults {
                            successful: &successful,
                            failed: &failed,
                            unprocessed: &unprocessed,
                            error: info["errorMessage"].as_str(),
                        },
                    )
                    .map(Some);
                }
                other => {
                    return Err(CallError::Transient {
                        message: format!(
                            "Bulk job {job} is in a state ferry does not know: {other:?}"
                        ),
                        attempts: 1,
                    });
                }
            }
        }
    }

    async fn abort(&self, job: &str) -> Result<(), CallError> {
        self.set_state(job, "Aborted").await.map(|_| ())
    }
}

impl Salesforce {
    /// Upload the job's CSV. A job takes one upload: when a reply is lost,
    /// sending again settles it (201: the first never landed; "Found
    /// multiple contents": it did).
    async fn upload_once(&self, job: &str, csv: bytes::Bytes) -> Result<(), CallError> {
        let path = format!("{}/batches", self.job_path(job));
        let mut tries = 0u32;
        loop {
            tries += 1;
            let mut call = Call {
                method: reqwest::Method::PUT,
                ..Call::get(path.clone())
            };
            call.raw = Some(("text/csv", csv.clone()));
            call.idempotent = false;
            match self.send(call).await {
                Ok(_) => return Ok(()),
                Err(CallError::Rejected { body, .. })
                    if tries > 1
                        && crate::http::error_message(&body)
                            .is_some_and(|m| m.contains("multiple contents")) =>
                {
                    return Ok(());
                }
                Err(e @ CallError::Transient { .. }) if tries < self.account.retry.max_attempts => {
                    tracing::debug!(
                        job,
                        "the Bulk upload's reply was lost ({}); sending again to settle it",
                        e.message()
                    );
                    tokio::time::sleep(self.account.retry.backoff(tries)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `UploadComplete`. A refusal after a lost reply is settled by the
    /// job's state: anything but `Open` means it was closed.
    async fn close(&self, job: &str) -> Result<(), CallError> {
        match self.set_state(job, "UploadComplete").await {
            Ok(_) => Ok(()),
            Err(e @ CallError::Rejected { .. }) => {
                let info = self.job_info(job).await?;
                match info["state"].as_str() {
                    Some("Open") | None => Err(e),
                    Some(_) => Ok(()),
                }
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn row(key: &str, props: &[(&str, &str)]) -> Outgoing {
        Outgoing::new(
            key.into(),
            None,
            props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn csv_clears_with_na_and_leaves_missing_cells_empty() {
        let rows = vec![
            row("a@x.io", &[("Email", "A@x.io"), ("Score__c", "")]),
            row("b@x.io", &[("Title", "VP, Sales \"Ops\"")]),
        ];
        let csv = String::from_utf8(job_csv(Op::Upsert, "Email", &rows).unwrap()).unwrap();
        assert_eq!(
            csv,
            "Email,Score__c,Title\nA@x.io,#N/A,\nb@x.io,,\"VP, Sales \"\"Ops\"\"\"\n"
        );
    }

    #[test]
    fn error_strings_read_as_code_and_message() {
        assert_eq!(
            parse_error(
                "REQUIRED_FIELD_MISSING:Required fields are missing: [LastName]:LastName --"
            ),
            (
                "REQUIRED_FIELD_MISSING".into(),
                "Required fields are missing: [LastName] (fields: LastName)".into()
            )
        );
        assert_eq!(
            parse_error(
                "DUPLICATE_VALUE:duplicate value found: Ext__c duplicates value on record with id: 003:--"
            ),
            (
                "DUPLICATE_VALUE".into(),
                "duplicate value found: Ext__c duplicates value on record with id: 003:".into()
            )
        );
        assert_eq!(parse_error("odd"), ("UNKNOWN_ERROR".into(), "odd".into()));
    }

    #[test]
    fn results_match_rows_by_key_in_any_order() {
        let rows = vec![row("a@x.io", &[]), row("b@x.io", &[]), row("c@x.io", &[])];
        let ok = b"\"sf__Id\",\"sf__Created\",\"Email\"\n\"003B\",\"true\",\"B@X.io\"\n\"003A\",\"false\",\"a@x.io\"\n";
        let failed = b"\"sf__Id\",\"sf__Error\",\"Email\"\n\"\",\"INVALID_EMAIL_ADDRESS:Email: invalid email address: c:Email --\",\"c@x.io\"\n";
        let n = |k: &str| k.to_lowercase();
        let out = job_outcomes(
            Op::Upsert,
            "Email",
            &rows,
            &n,
            &JobResults {
                successful: ok,
                failed,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            out[0].fate,
            Fate::Written(Written {
                id: "003A".into(),
                created: false
            })
        );
        assert_eq!(
            out[1].fate,
            Fate::Written(Written {
                id: "003B".into(),
                created: true
            })
        );
        match &out[2].fate {
            Fate::Refused(r) => assert_eq!(r.category, "INVALID_EMAIL_ADDRESS"),
            f => panic!("{f:?}"),
        }
    }

    proptest! {
        /// Any result bytes: no panic, and every row gets exactly one outcome.
        #[test]
        fn job_outcomes_never_panic(ok in prop::collection::vec(any::<u8>(), 0..200),
                                    failed in "[a-zA-Z_:,\"\n ]{0,120}", n in 0usize..4) {
            let rows: Vec<Outgoing> = (0..n).map(|i| row(&format!("k{i}"), &[])).collect();
            let norm = |k: &str| k.to_lowercase();
            if let Ok(out) = job_outcomes(Op::Upsert, "Email", &rows, &norm, &JobResults { successful: &ok, failed: failed.as_bytes(), ..Default::default() }) {
                prop_assert_eq!(out.len(), n);
            }
            let _ = parse_error(&failed);
        }

        /// What the CSV says is what was meant: each row reads back with
        /// its key and values (cleared values as #N/A).
        #[test]
        fn job_csv_round_trips(values in prop::collection::vec(("[a-z0-9@.]{1,8}", "[ -~]{0,12}"), 1..6)) {
            let rows: Vec<Outgoing> = values.iter().enumerate()
                .map(|(i, (k, v))| row(&format!("{k}{i}"), &[("Note__c", v.as_str())]))
                .collect();
            let csv = job_csv(Op::Upsert, "Email", &rows).unwrap();
            let (h, recs) = read_csv(&csv, "upload").unwrap();
            prop_assert_eq!(&h, &vec!["Email".to_string(), "Note__c".to_string()]);
            for (r, rec) in rows.iter().zip(&recs) {
                prop_assert_eq!(&rec[0], &r.key);
                let v = &r.properties["Note__c"];
                prop_assert_eq!(&rec[1], if v.is_empty() { CLEAR } else { v.as_str() });
            }
        }
    }
}
