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
    streams: Vec<SalesforceStream>,
}

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

    /// The fields to read: the stream's, or every field `describe` lists
    /// (compound address and location fields cannot be queried by name in
    /// every API version, so they are left out), with `Id`, `IsDeleted` and
    /// `SystemModstamp` always.
    async fn fields(&self, s: &SalesforceStream) -> Result<Vec<String>> {
        let mut fields = match &s.fields {
            Some(f) => f.clone(),
            None => {
                let reply = self
                    .get(self.path(&format!("/sobjects/{}/describe", s.object)))
                    .await?;
                reply.body["fields"]
                    .as_array()
                    .ok_or_else(|| Error::Vendor {
                        vendor: "Salesforce".into(),
                        message: format!("describe of {} has no fields list", s.object),
                        retryable: true,
                    })?
                    .iter()
                    .filter(|f| !matches!(f["type"].as_str(), Some("address" | "location")))
                    .filter_map(|f| f["name"].as_str().map(str::to_string))
                    .collect()
            }
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
        let soql = match since {
            None => format!(
                "{select} WHERE SystemModstamp < {} ORDER BY SystemModstamp",
                soql_time(until)
            ),
            Some(lo) if lo >= until => return Ok(Some(json!({ "since": lo.to_rfc3339() }))),
            Some(lo) => format!(
                "{select} WHERE SystemModstamp >= {} AND SystemModstamp < {} ORDER BY SystemModstamp",
                soql_time(lo),
                soql_time(until)
            ),
        };
        self.query_all(&s, &soql, run).await?;
        Ok(Some(json!({ "since": until.to_rfc3339() })))
    }
}
