//! Salesforce as an extraction source: each stream is an sObject, read by
//! SOQL through the REST query API (`nextRecordsUrl` paging), with its
//! fields from `describe`.
//!
//! - First run: every record (`queryAll`, so deleted ones in the recycle
//!   bin land too, with `IsDeleted = true`).
//! - Later runs: `queryAll ... WHERE SystemModstamp >= since AND
//!   SystemModstamp < until ORDER BY SystemModstamp`: changes and deletions
//!   alike (a deletion moves `SystemModstamp`). `until` lags the run's
//!   start by the lag margin, because a transaction's `SystemModstamp` can
//!   precede its commit: a record written just before the run may not be
//!   visible yet, and the next run reads from `until`. Records at the
//!   boundary come again (duplicates, never gaps).
//! - A query cursor is a server-side snapshot: pages do not skip records
//!   that change meanwhile. The cursor moves only after every page landed.
//! - Large reads go by Bulk API 2.0 query jobs: a `SELECT COUNT()` with the
//!   run's filter first (one call); at `bulk_threshold` records or more the
//!   same query (without `ORDER BY`, which Bulk queries refuse) becomes a
//!   `queryAll` job, polled with backoff until `JobComplete`, whose CSV
//!   results are read page by page (`maxRecords`, `Sforce-Locator`) and
//!   typed by `describe` (CSV carries only text: empty cells are nulls).
//!   A run killed meanwhile creates a new job next time: a read is safe to
//!   repeat, and the cursor has not moved. The job is deleted once read.
//! - Relationships are their own streams: junction objects
//!   (`OpportunityContactRole`, `AccountContactRelation`, `CampaignMember`)
//!   are sObjects like any other, and lookups (`AccountId`) land as columns.

pub mod config;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::config::{SalesforceStream, SourceSpec};
use super::{Source, StreamRun};
use crate::error::{Error, Result};
use crate::http::{Call, Client, RetryPolicy};

pub struct SalesforceSource {
    name: String,
    client: Client,
    version: String,
    lag_margin: Duration,
    bulk_threshold: u64,
    streams: Vec<SalesforceStream>,
}

/// Rows per page of a query job's results: a wide object's page stays a
/// few tens of MB, read well within a call's timeout.
const RESULT_PAGE: usize = 10_000;
/// The longest pause between polls of a query job.
const MAX_POLL: Duration = Duration::from_secs(10);

/// SOQL's datetime literal.
fn soql_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

impl SalesforceSource {
    pub fn new(spec: &SourceSpec) -> Result<SalesforceSource> {
        let SourceSpec::Salesforce {
            name,
            url,
            api_version,
            auth,
            lag_margin,
            bulk_threshold,
            streams,
        } = spec
        else {
            return Err(Error::Internal("not a Salesforce source".into()));
        };
        // The same budget as every sync to this org in this process.
        let key = crate::http::account_key("salesforce", url, auth);
        let limiter = crate::http::account_budget(&key, 1_000, Duration::from_secs(10), None);
        let client = Client::new(
            url,
            auth.clone(),
            crate::sync::salesforce::VENDOR,
            limiter,
            RetryPolicy::default(),
        )
        .map_err(Error::Input)?;
        Ok(SalesforceSource {
            name: name.clone(),
            client,
            version: api_version.clone(),
            lag_margin: *lag_margin,
            bulk_threshold: *bulk_threshold,
            streams: streams.clone(),
        })
    }

    fn path(&self, rest: &str) -> String {
        format!("/services/data/{}{rest}", self.version)
    }

    async fn get(&self, path: String) -> Result<crate::http::Reply> {
        self.client
            .send(Call::get(path))
            .await
            .map_err(|e| e.into_error("Salesforce", "check [jwt] or [oauth] in [sources]"))
    }

    /// The object's fields and their types, from `describe` (compound
    /// address and location fields cannot be queried by name in every API
    /// version, so they are left out).
    async fn describe(&self, object: &str) -> Result<Vec<(String, String)>> {
        let reply = self
            .get(self.path(&format!("/sobjects/{object}/describe")))
            .await?;
        Ok(reply.body["fields"]
            .as_array()
            .ok_or_else(|| Error::Vendor {
                vendor: "Salesforce".into(),
                message: format!("describe of {object} has no fields list"),
                retryable: true,
            })?
            .iter()
            // Compound fields cannot be queried by name in every API
            // version; binary (base64) ones not by Bulk queries, and they
            // are file bodies, not data to model.
            .filter(|f| !matches!(f["type"].as_str(), Some("address" | "location" | "base64")))
            .filter_map(|f| {
                Some((
                    f["name"].as_str()?.to_string(),
                    f["type"].as_str().unwrap_or("string").to_string(),
                ))
            })
            .collect())
    }

    /// The fields to read: the stream's, or every field `describe` lists,
    /// with `Id`, `IsDeleted` and `SystemModstamp` always.
    async fn fields(&self, s: &SalesforceStream) -> Result<Vec<String>> {
        let mut fields = match &s.fields {
            Some(f) => f.clone(),
            None => self
                .describe(&s.object)
                .await?
                .into_iter()
                .map(|(name, _)| name)
                .collect(),
        };
        for must in ["Id", "IsDeleted", "SystemModstamp"] {
            if !fields.iter().any(|f| f.eq_ignore_ascii_case(must)) {
                fields.push(must.to_string());
            }
        }
        Ok(fields)
    }

    /// Land every page of `soql` (through `queryAll`).
    async fn query_all(
        &self,
        s: &SalesforceStream,
        soql: &str,
        run: &mut StreamRun<'_>,
    ) -> Result<u64> {
        let q: String = url::form_urlencoded::byte_serialize(soql.as_bytes()).collect();
        let mut next = Some(self.path(&format!("/queryAll?q={q}")));
        let mut landed = 0;
        while let Some(path) = next.take() {
            let reply = self.get(path).await?;
            let records = reply.body["records"]
                .as_array()
                .ok_or_else(|| Error::Vendor {
                    vendor: "Salesforce".into(),
                    message: format!("{}: the query reply has no records list", s.name),
                    retryable: true,
                })?;
            let rows: Vec<Value> = records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    if let Some(m) = r.as_object_mut() {
                        m.remove("attributes");
                    }
                    r
                })
                .collect();
            landed += rows.len() as u64;
            run.push(rows, reply.bytes).await?;
            if reply.body["done"].as_bool() == Some(false) {
                let url = reply.body["nextRecordsUrl"]
                    .as_str()
                    .ok_or_else(|| Error::Vendor {
                        vendor: "Salesforce".into(),
                        message: format!(
                            "{}: a page says it is not done but gives no nextRecordsUrl",
                            s.name
                        ),
                        retryable: true,
                    })?;
                next = Some(url.to_string());
            }
        }
        Ok(landed)
    }
}

impl SalesforceSource {
    /// Records matching `filter` (deleted ones included, as `queryAll` reads them).
    async fn count(&self, object: &str, filter: &str) -> Result<u64> {
        let soql = format!("SELECT COUNT() FROM {object} {filter}");
        let q: String = url::form_urlencoded::byte_serialize(soql.as_bytes()).collect();
        let reply = self.get(self.path(&format!("/queryAll?q={q}"))).await?;
        reply.body["totalSize"]
            .as_u64()
            .ok_or_else(|| Error::Vendor {
                vendor: "Salesforce".into(),
                message: format!("the COUNT() of {object} answered no totalSize"),
                retryable: true,
            })
    }

    /// Land `soql`'s rows through a Bulk API 2.0 `queryAll` job.
    async fn bulk_query(
        &self,
        s: &SalesforceStream,
        soql: &str,
        run: &mut StreamRun<'_>,
    ) -> Result<u64> {
        let vendor = |message: String, retryable: bool| Error::Vendor {
            vendor: "Salesforce".into(),
            message,
            retryable,
        };
        let types: std::collections::HashMap<String, String> = self
            .describe(&s.object)
            .await?
            .into_iter()
            .map(|(n, t)| (n.to_ascii_lowercase(), t))
            .collect();
        let body = json!({
            "operation": "queryAll",
            "query": soql,
            "contentType": "CSV",
            "columnDelimiter": "COMMA",
            "lineEnding": "LF",
        });
        // A create whose reply was lost leaves a job nobody reads: it
        // costs one of the day's 10,000 query jobs, and nothing else.
        let created = self
            .client
            .send(Call::post(self.path("/jobs/query"), &body, true))
            .await
            .map_err(|e| e.into_error("Salesforce", "check [jwt] or [oauth] in [sources]"))?;
        let job = created.body["id"]
            .as_str()
            .ok_or_else(|| {
                vendor(
                    format!("{}: the query job was created without an id", s.name),
                    true,
                )
            })?
            .to_string();
        let mut pause = Duration::from_millis(250);
        let mut last = String::new();
        let shown = crate::console::waiting(format!("Salesforce Bulk query job {job}"), None);
        loop {
            let info = self
                .get(self.path(&format!("/jobs/query/{job}")))
                .await?
                .body;
            let state = info["state"].as_str().unwrap_or("").to_string();
            if state != last {
                tracing::info!(job, stream = %s.name, "Bulk query job {job} {state}");
                crate::console::update(&shown, format!("Salesforce Bulk query job {job} {state}"));
                last = state.clone();
            }
            match state.as_str() {
                "UploadComplete" | "InProgress" => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 3 / 2).min(MAX_POLL);
                }
                "JobComplete" => {
                    drop(shown);
                    break;
                }
                other => {
                    return Err(vendor(
                        format!(
                            "{}: Bulk query job {job} ended {other}: {}; the next run queries again",
                            s.name,
                            info["errorMessage"].as_str().unwrap_or("no reason given")
                        ),
                        true,
                    ));
                }
            }
        }
        let mut landed = 0;
        let mut locator: Option<String> = None;
        loop {
            let path = match &locator {
                None => format!("/jobs/query/{job}/results?maxRecords={RESULT_PAGE}"),
                Some(l) => {
                    let l: String = url::form_urlencoded::byte_serialize(l.as_bytes()).collect();
                    format!("/jobs/query/{job}/results?maxRecords={RESULT_PAGE}&locator={l}")
                }
            };
            let mut call = Call::get(self.path(&path));
            call.raw_reply = true;
            let reply =
                self.client.send(call).await.map_err(|e| {
                    e.into_error("Salesforce", "check [jwt] or [oauth] in [sources]")
                })?;
            let rows = typed_rows(&reply.raw, &types).map_err(|e| {
                vendor(
                    format!("{}: Bulk query job {job}'s results: {e}", s.name),
                    true,
                )
            })?;
            landed += rows.len() as u64;
            run.push(rows, reply.bytes).await?;
            let next = reply
                .headers
                .get("sforce-locator")
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .ok_or_else(|| {
                    vendor(
                        format!(
                            "{}: a page of job {job}'s results has no Sforce-Locator header",
                            s.name
                        ),
                        true,
                    )
                })?;
            if next.is_empty() || next == "null" {
                break;
            }
            if locator.as_deref() == Some(next) {
                return Err(vendor(
                    format!(
                        "{}: job {job}'s results name the same page twice ({next})",
                        s.name
                    ),
                    true,
                ));
            }
            locator = Some(next.to_string());
        }
        // Results are kept 7 days; nothing needs them once landed.
        let mut delete = Call::get(self.path(&format!("/jobs/query/{job}")));
        delete.method = reqwest::Method::DELETE;
        if let Err(e) = self.client.send(delete).await {
            tracing::warn!(job, "could not delete the Bulk query job: {}", e.message());
        }
        Ok(landed)
    }
}

/// A Bulk query page's CSV as JSON records, typed by `describe`'s field
/// types (`types` keyed by lower-cased name): empty cells are nulls,
/// booleans and numbers as such, the rest text. A value that does not
/// parse as its type stays text, so nothing is lost.
pub fn typed_rows(
    csv_bytes: &[u8],
    types: &std::collections::HashMap<String, String>,
) -> std::result::Result<Vec<Value>, String> {
    let mut r = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(csv_bytes);
    let header: Vec<(String, String)> = r
        .headers()
        .map_err(|e| format!("the CSV header is unreadable: {e}"))?
        .iter()
        .map(|h| {
            let t = types
                .get(&h.to_ascii_lowercase())
                .cloned()
                .unwrap_or_default();
            (h.to_string(), t)
        })
        .collect();
    let mut out = Vec::new();
    for (i, rec) in r.records().enumerate() {
        let rec = rec.map_err(|e| format!("line {}: {e}", i + 2))?;
        let mut m = serde_json::Map::with_capacity(header.len());
        for ((name, kind), cell) in header.iter().zip(rec.iter()) {
            let v = if cell.is_empty() {
                Value::Null
            } else {
                match kind.as_str() {
                    "boolean" => match cell {
                        "true" => Value::Bool(true),
                        "false" => Value::Bool(false),
                        _ => Value::String(cell.into()),
                    },
                    "int" => cell
                        .parse::<i64>()
                        .map(Value::from)
                        .unwrap_or_else(|_| Value::String(cell.into())),
                    "double" | "currency" | "percent" => cell
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map(Value::Number)
                        .unwrap_or_else(|| Value::String(cell.into())),
                    _ => Value::String(cell.into()),
                }
            };
            m.insert(name.clone(), v);
        }
        out.push(Value::Object(m));
    }
    Ok(out)
}

#[async_trait]
impl Source for SalesforceSource {
    fn streams(&self) -> Vec<String> {
        self.streams.iter().map(|s| s.name.clone()).collect()
    }

    async fn extract(&self, stream: &str, run: &mut StreamRun<'_>) -> Result<Option<Value>> {
        let s = self
            .streams
            .iter()
            .find(|x| x.name == stream)
            .ok_or_else(|| Error::Input(format!("source {} has no stream {stream}", self.name)))?
            .clone();
        let fields = self.fields(&s).await?;
        let margin = chrono::TimeDelta::from_std(self.lag_margin).unwrap_or_default();
        let until = Utc::now() - margin;
        let since = run
            .cursor()
            .and_then(|c| c["since"].as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        let select = format!("SELECT {} FROM {}", fields.join(", "), s.object);
        let filter = match since {
            None => format!("WHERE SystemModstamp < {}", soql_time(until)),
            Some(lo) if lo >= until => return Ok(Some(json!({ "since": lo.to_rfc3339() }))),
            Some(lo) => format!(
                "WHERE SystemModstamp >= {} AND SystemModstamp < {}",
                soql_time(lo),
                soql_time(until)
            ),
        };
        let bulk = self.bulk_threshold == 0
            || self.count(&s.object, &filter).await? >= self.bulk_threshold;
        if bulk {
            self.bulk_query(&s, &format!("{select} {filter}"), run)
                .await?;
        } else {
            let soql = format!("{select} {filter} ORDER BY SystemModstamp");
            self.query_all(&s, &soql, run).await?;
        }
        Ok(Some(json!({ "since": until.to_rfc3339() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn types() -> std::collections::HashMap<String, String> {
        [
            ("isdeleted", "boolean"),
            ("score__c", "double"),
            ("employees", "int"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
    }

    #[test]
    fn bulk_csv_is_typed_as_the_rest_api_types_it() {
        let csv = "\"Id\",\"IsDeleted\",\"Score__c\",\"Employees\",\"Name\"\n\
                   \"00Q1\",\"false\",\"42.5\",\"12\",\"Acme, \"\"Inc\"\"\"\n\
                   \"00Q2\",\"true\",\"\",\"n/a\",\"\"\n";
        let rows = typed_rows(csv.as_bytes(), &types()).unwrap();
        assert_eq!(
            rows,
            vec![
                json!({"Id": "00Q1", "IsDeleted": false, "Score__c": 42.5, "Employees": 12, "Name": "Acme, \"Inc\""}),
                json!({"Id": "00Q2", "IsDeleted": true, "Score__c": null, "Employees": "n/a", "Name": null}),
            ],
            "empty cells are nulls; a value not of its type stays text"
        );
    }

    proptest! {
        #[test]
        fn bulk_csv_parsing_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = typed_rows(&bytes, &types());
        }
    }
}
