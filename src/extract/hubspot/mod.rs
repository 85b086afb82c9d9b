//! HubSpot as an extraction source: CRM objects with their properties as
//! columns, and their associations.
//!
//! - First run: a full load through the list endpoint (`after` paging, 100
//!   per page), with the chosen properties or all of them (properties API).
//! - Later runs: the search endpoint on the last-modified property
//!   (`lastmodifieddate` for contacts, `hs_lastmodifieddate` otherwise) over
//!   `[since, run start)`. A search query can page through at most 10,000
//!   results (a known way other extractors silently lose rows), and offset
//!   paging over records that change meanwhile skips some; so each query asks
//!   for the oldest 200 records at or after a moving lower bound (keyset
//!   paging), and a single millisecond holding more than a page is read in
//!   record-id order. Search has its own budget of 4 requests per second. The
//!   cursor moves with the lower bound once the pages before it are landed.
//! - Associations (`associations = ["companies"]`): for each 1,000 records
//!   read, one `POST /crm/v4/associations/{from}/{to}/batch/read` (and before
//!   each checkpoint, so a cursor never covers records whose associations
//!   are unread), landed as
//!   `<stream>_<type>` rows (`from_id`, `to_id`, `type_id`); a record's
//!   current associations are its rows from its latest landing.

pub mod config;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::config::{HubspotStream, SourceSpec};
use super::{Source, StreamRun};
use crate::error::{Error, Result};
use crate::http::{Call, CallError, Client, RateLimiter};

/// Records per search request (HubSpot's maximum).
const SEARCH_PAGE: u64 = 200;

/// Ids per associations batch read (HubSpot's maximum): the associations of
/// ten list pages (or five search pages) in one call, so a full load spends
/// 1.1 calls per 100 records instead of 2.
const ASSOCIATION_BATCH: usize = 1000;

pub struct HubspotSource {
    name: String,
    client: Client,
    search: Arc<RateLimiter>,
    lag_margin: Duration,
    streams: Vec<HubspotStream>,
}

fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn millis(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn from_millis(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(iso)
        .unwrap_or_default()
}

impl HubspotSource {
    pub fn new(spec: &SourceSpec) -> Result<HubspotSource> {
        let SourceSpec::Hubspot {
            name,
            url,
            auth,
            requests_per_10s,
            search_per_second,
            lag_margin,
            streams,
        } = spec
        else {
            return Err(Error::Internal("not a HubSpot source".into()));
        };
        // The same budget as every sync to this account in this process.
        let key = crate::http::account_key("hubspot", url, auth);
        let limiter =
            crate::http::account_budget(&key, *requests_per_10s, Duration::from_secs(10), None);
        let search = crate::http::account_budget(
            &format!("{key} search"),
            *search_per_second,
            Duration::from_secs(1),
            None,
        );
        let client = Client::new(
            url,
            auth.clone(),
            crate::sync::hubspot::VENDOR,
            limiter,
            Default::default(),
        )
        .map_err(Error::Input)?;
        Ok(HubspotSource {
            name: name.clone(),
            client,
            search,
            lag_margin: *lag_margin,
            streams: streams.clone(),
        })
    }

    /// The account's rate budget (shared with syncs to the same account).
    pub fn limiter(&self) -> &Arc<RateLimiter> {
        self.client.limiter()
    }

    /// The search endpoint's own budget (4 per second per account).
    pub fn search_limiter(&self) -> &Arc<RateLimiter> {
        &self.search
    }

    fn fail(&self, e: CallError) -> Error {
        e.into_error(
            &format!("{} (HubSpot)", self.name),
            &format!(
                "check token in [sources.{}] and its crm.objects.*.read scopes",
                self.name
            ),
        )
    }

    async fn get(&self, path: String) -> Result<crate::http::Reply> {
        self.client
            .send(Call::get(path))
            .await
            .map_err(|e| self.fail(e))
    }

    async fn post(&self, path: String, body: &Value, search: bool) -> Result<crate::http::Reply> {
        let mut call = Call::post(path, body, true);
        if search {
            call = call.limited_by(&self.search);
        }
        self.client.send(call).await.map_err(|e| self.fail(e))
    }

    async fn all_properties(&self, object: &str) -> Result<Vec<String>> {
        let reply = self.get(format!("/crm/v3/properties/{object}")).await?;
        let mut names: Vec<String> = reply.body["results"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        Ok(names)
    }

    /// One HubSpot record as a row: id, timestamps, and each property as a column.
    fn row(r: &Value) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), r["id"].clone());
        if let Some(props) = r["properties"].as_object() {
            for (k, v) in props {
                if k != "id" {
                    m.insert(k.clone(), v.clone());
                }
            }
        }
        m.insert("created_at".into(), r["createdAt"].clone());
        m.insert("updated_at".into(), r["updatedAt"].clone());
        m.insert("archived".into(), r["archived"].clone());
        Value::Object(m)
    }

    /// Land a page of records; their ids join `ids`, whose associations are
    /// read once a batch is full.
    async fn page(
        &self,
        s: &HubspotStream,
        results: &[Value],
        bytes: usize,
        run: &mut StreamRun<'_>,
        ids: &mut Vec<Value>,
    ) -> Result<()> {
        let rows: Vec<Value> = results.iter().map(Self::row).collect();
        run.push(rows, bytes).await?;
        if !s.associations.is_empty() {
            ids.extend(results.iter().map(|r| json!({"id": r["id"]})));
            if ids.len() >= ASSOCIATION_BATCH {
                self.associations(s, ids, run).await?;
            }
        }
        Ok(())
    }

    /// Read and land the associations of the records in `ids` (at most
    /// [`ASSOCIATION_BATCH`] at a time), emptying it.
    async fn associations(
        &self,
        s: &HubspotStream,
        ids: &mut Vec<Value>,
        run: &mut StreamRun<'_>,
    ) -> Result<()> {
        while !ids.is_empty() {
            let batch: Vec<Value> = ids.drain(..ids.len().min(ASSOCIATION_BATCH)).collect();
            for to in &s.associations {
                self.associations_of(s, &batch, to, run).await?;
            }
        }
        Ok(())
    }

    async fn associations_of(
        &self,
        s: &HubspotStream,
        ids: &[Value],
        to: &str,
        run: &mut StreamRun<'_>,
    ) -> Result<()> {
        {
            let body = json!({ "inputs": ids });
            let mut reply = self
                .post(
                    format!("/crm/v4/associations/{}/{to}/batch/read", s.object),
                    &body,
                    false,
                )
                .await?;
            let mut links = Vec::new();
            let link = |from: &Value, t: &Value| {
                json!({
                    "from_id": from,
                    "to_id": super::text(&t["toObjectId"]),
                    "type_id": t["associationTypes"][0]["typeId"],
                })
            };
            for r in self.results(&mut reply, s)? {
                for t in r["to"].as_array().into_iter().flatten() {
                    links.push(link(&r["from"]["id"], t));
                }
                // A record with more associations than fit a batch page:
                // page through its own list (v4 pages per record).
                let mut after = r["paging"]["next"]["after"].as_str().map(str::to_string);
                let mut pages = 0u32;
                while let Some(a) = after.take() {
                    pages += 1;
                    if pages > 100_000 {
                        return Err(Error::Vendor {
                            vendor: format!("{} (HubSpot)", self.name),
                            message: format!(
                                "{}: associations of record {} kept paging",
                                s.name, r["from"]["id"]
                            ),
                            retryable: false,
                        });
                    }
                    let id = super::text(&r["from"]["id"]);
                    let mut page = self
                        .get(format!(
                            "/crm/v4/objects/{}/{id}/associations/{to}?limit=500&after={a}",
                            s.object
                        ))
                        .await?;
                    for t in self.results(&mut page, s)? {
                        links.push(link(&r["from"]["id"], &t));
                    }
                    after = page.body["paging"]["next"]["after"]
                        .as_str()
                        .filter(|n| *n != a)
                        .map(str::to_string);
                }
            }
            run.push_sibling(&format!("{}_{to}", s.name), links).await?;
        }
        Ok(())
    }

    async fn full_load(
        &self,
        s: &HubspotStream,
        props: &[String],
        run: &mut StreamRun<'_>,
        ids: &mut Vec<Value>,
    ) -> Result<()> {
        let mut after: Option<String> = None;
        loop {
            let mut path = format!(
                "/crm/v3/objects/{}?limit=100&properties={}",
                s.object,
                props.join(",")
            );
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let mut reply = self.get(path).await?;
            let results = self.results(&mut reply, s)?;
            self.page(s, &results, reply.bytes, run, ids).await?;
            match reply.body["paging"]["next"]["after"].as_str() {
                Some(a) if after.as_deref() == Some(a) => {
                    return Err(Error::Vendor {
                        vendor: format!("{} (HubSpot)", self.name),
                        message: format!(
                            "{}: the list endpoint returned the same next page ({a}) twice; stopping instead of looping",
                            s.name
                        ),
                        retryable: true,
                    });
                }
                Some(a) => after = Some(a.to_string()),
                None => return Ok(()),
            }
        }
    }

    /// A reply's `results` (moved out of the reply, not copied); a reply
    /// without them is unreadable, not empty.
    fn results(&self, reply: &mut crate::http::Reply, s: &HubspotStream) -> Result<Vec<Value>> {
        match reply.body.get_mut("results").map(Value::take) {
            Some(Value::Array(a)) => Ok(a),
            _ => Err(Error::Vendor {
                vendor: format!("{} (HubSpot)", self.name),
                message: format!(
                    "{}: a reply without a results list; nothing was landed from it and the cursor did not move",
                    s.name
                ),
                retryable: true,
            }),
        }
    }

    /// Records archived since `lo` (`archived=true` lists only archived
    /// records, with `archivedAt`): landed with `archived = true`, so models
    /// drop them and a sync does not recreate what someone deleted.
    async fn archived_since(
        &self,
        s: &HubspotStream,
        props: &[String],
        lo: i64,
        run: &mut StreamRun<'_>,
    ) -> Result<()> {
        let mut after: Option<String> = None;
        loop {
            let mut path = format!(
                "/crm/v3/objects/{}?limit=100&archived=true&properties={}",
                s.object,
                props.join(",")
            );
            if let Some(a) = &after {
                path.push_str(&format!("&after={a}"));
            }
            let mut reply = self.get(path).await?;
            let results: Vec<Value> = self
                .results(&mut reply, s)?
                .into_iter()
                .filter(|r| {
                    r["archivedAt"]
                        .as_str()
                        .or(r["updatedAt"].as_str())
                        .and_then(millis)
                        .is_none_or(|t| t >= lo)
                })
                .map(|mut r| {
                    r["archived"] = json!(true);
                    r
                })
                .collect();
            if !results.is_empty() {
                let rows: Vec<Value> = results.iter().map(Self::row).collect();
                run.push(rows, reply.bytes).await?;
            }
            match reply.body["paging"]["next"]["after"].as_str() {
                Some(a) if after.as_deref() == Some(a) => return Ok(()),
                Some(a) => after = Some(a.to_string()),
                None => return Ok(()),
            }
        }
    }

    fn search_body(props: &[String], filters: Vec<Value>, sort: &str, limit: u64) -> Value {
        json!({
            "filterGroups": [{"filters": filters}],
            "sorts": [{"propertyName": sort, "direction": "ASCENDING"}],
            "properties": props,
            "limit": limit,
        })
    }

    /// Records modified in one millisecond when more than a page share it:
    /// read them in id order with `hs_object_id > last`.
    async fn same_instant(
        &self,
        s: &HubspotStream,
        props: &[String],
        cursor: &str,
        at: i64,
        run: &mut StreamRun<'_>,
        ids: &mut Vec<Value>,
    ) -> Result<()> {
        let mut last = 0u64;
        loop {
            let filters = vec![
                json!({"propertyName": cursor, "operator": "EQ", "value": from_millis(at)}),
                json!({"propertyName": "hs_object_id", "operator": "GT", "value": last.to_string()}),
            ];
            let body = Self::search_body(props, filters, "hs_object_id", SEARCH_PAGE);
            let mut reply = self
                .post(format!("/crm/v3/objects/{}/search", s.object), &body, true)
                .await?;
            let results = self.results(&mut reply, s)?;
            if results.is_empty() {
                return Ok(());
            }
            let next = results
                .iter()
                .filter_map(|r| super::text(&r["id"]).parse::<u64>().ok())
                .max()
                .unwrap_or(last);
            if next <= last {
                // Ids that are not numbers (or do not grow) would page forever.
                return Err(Error::Vendor {
                    vendor: format!("{} (HubSpot)", self.name),
                    message: format!(
                        "{}: records modified at {} have ids that do not page in order (last {last}); stopping instead of looping",
                        s.name,
                        from_millis(at)
                    ),
                    retryable: false,
                });
            }
            last = next;
            self.page(s, &results, reply.bytes, run, ids).await?;
        }
    }

    /// Everything modified in `[lo, hi)`. Each query asks for the oldest 200
    /// records modified at or after `cur` and then moves `cur` to the newest
    /// one seen (keyset paging): no query pages past HubSpot's 10,000-result
    /// cap, and a record edited meanwhile (it moves past `hi`, to the next
    /// run) cannot shift the pages and hide another, as `after` offsets would.
    async fn incremental(
        &self,
        s: &HubspotStream,
        props: &[String],
        cursor: &str,
        (lo, hi): (i64, i64),
        run: &mut StreamRun<'_>,
        ids: &mut Vec<Value>,
    ) -> Result<()> {
        let mut cur = lo;
        while cur < hi {
            let filters = vec![
                json!({"propertyName": cursor, "operator": "GTE", "value": from_millis(cur)}),
                json!({"propertyName": cursor, "operator": "LT", "value": from_millis(hi)}),
            ];
            let body = Self::search_body(props, filters, cursor, SEARCH_PAGE);
            let mut reply = self
                .post(format!("/crm/v3/objects/{}/search", s.object), &body, true)
                .await?;
            let results = self.results(&mut reply, s)?;
            let last = results
                .iter()
                .filter_map(|r| r["properties"][cursor].as_str().and_then(millis))
                .max();
            let full = results.len() as u64 >= SEARCH_PAGE;
            self.page(s, &results, reply.bytes, run, ids).await?;
            if !full {
                break;
            }
            match last {
                // More than a page share the instant `cur`: read it in id order.
                Some(t) if t <= cur => {
                    self.same_instant(s, props, cursor, cur, run, ids).await?;
                    cur += 1;
                }
                // Records at `t` come again on the next page: duplicates, never gaps.
                Some(t) => cur = t,
                None => {
                    return Err(Error::Input(format!(
                        "{}: HubSpot search results lack {cursor}; cannot page incrementally",
                        s.name
                    )));
                }
            }
            // Everything modified before `cur` is fetched (associations
            // included); it is the cursor once landed.
            self.associations(s, ids, run).await?;
            run.checkpoint(json!({ "since": from_millis(cur) }));
        }
        Ok(())
    }
}

#[async_trait]
impl Source for HubspotSource {
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
        let cursor = if s.object == "contacts" {
            "lastmodifieddate"
        } else {
            "hs_lastmodifieddate"
        };
        let mut props = match &s.properties {
            Some(p) => p.clone(),
            None => self.all_properties(&s.object).await?,
        };
        if !props.iter().any(|p| p == cursor) {
            props.push(cursor.to_string());
        }
        // HubSpot sends every property as a string (null when unset): a
        // property nobody has filled in yet is still a text column, and an
        // object with no records is still a table.
        use arrow::datatypes::DataType;
        let mut columns: Vec<(String, DataType)> = vec![("id".into(), DataType::Utf8)];
        columns.extend(
            props
                .iter()
                .filter(|p| *p != "id")
                .map(|p| (p.clone(), DataType::Utf8)),
        );
        columns.extend([
            ("created_at".into(), DataType::Utf8),
            ("updated_at".into(), DataType::Utf8),
            ("archived".into(), DataType::Boolean),
        ]);
        run.declare(None, &columns).await?;
        for to in &s.associations {
            let links = [
                ("from_id".to_string(), DataType::Utf8),
                ("to_id".to_string(), DataType::Utf8),
                ("type_id".to_string(), DataType::Int64),
            ];
            run.declare(Some(&format!("{}_{to}", s.name)), &links)
                .await?;
        }
        // The run's upper bound: changes after it are the next run's. It
        // lags the clock by the margin, because HubSpot's search index lags
        // writes: a change made just before "now" may not be searchable yet,
        // and a window that ended at "now" would skip it for good.
        let margin = i64::try_from(self.lag_margin.as_millis()).unwrap_or(i64::MAX);
        let hi = Utc::now().timestamp_millis().saturating_sub(margin);
        let since = run
            .cursor()
            .and_then(|c| c["since"].as_str())
            .and_then(millis);
        let mut ids = Vec::new();
        let ids = &mut ids;
        match since {
            // The list endpoint reads the record store (no lag); the next
            // run searches from `hi`, so changes during the load are read
            // again (duplicates, never gaps).
            None => self.full_load(&s, &props, run, ids).await?,
            Some(lo) if lo >= hi => return Ok(Some(json!({ "since": from_millis(lo) }))),
            // Archived records first: the incremental read checkpoints its
            // cursor as it goes, and a failure after a checkpoint must not
            // leave deletions in the skipped range unread.
            Some(lo) => {
                self.archived_since(&s, &props, lo, run).await?;
                self.incremental(&s, &props, cursor, (lo, hi), run, ids)
                    .await?;
            }
        }
        self.associations(&s, ids, run).await?;
        Ok(Some(json!({ "since": from_millis(hi) })))
    }
}
