//! Webhook reconciliation: vendors drop webhook deliveries (they give up
//! after a few retries; endpoints are down during deploys), so a webhook
//! source whose vendor also has an API is checked against it.
//!
//! One run covers a window `[from, to)`: from the end of the last window (or
//! `lookback` ago), to `settle` before now (events still on their way are
//! the next window's). It extracts the API stream (`reconcile.with`, an
//! incremental extraction like any other), then compares: every object the
//! API says changed in the window must have an event at or after its change
//! (less a minute of clock skew). Each one without is landed in
//! `<source>.events` as an event of type `reconciled`, carrying the API's
//! record as payload, with the event id `reconciled:<key>:<updated_at>`, so
//! models reading the events see the change the webhook lost. The window's
//! end is stored (`_ferry/webhooks/<source>/reconcile.json`) only after
//! those events are landed; a crash re-checks the window, and the landed
//! events count as seen.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{Envelope, envelope_batch};
use crate::error::{Error, Result};
use crate::lake::layout::{META, RunId, StreamRef};
use crate::lake::log::batch_rows_json;
use crate::lake::{Lake, Lander};
use crate::project::Project;

/// Clock skew allowed between the vendor's event time and its record's
/// last-modified time.
const SKEW_SECONDS: i64 = 60;

/// What one reconciliation found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Objects the API says changed in the window.
    pub changed: u64,
    /// Of those, the ones a webhook event covered.
    pub seen: u64,
    /// The ones no event covered, landed as `reconciled` events.
    pub landed: u64,
    /// API rows extracted for the window.
    pub extracted: u64,
}

impl Report {
    pub fn describe(&self) -> String {
        match (self.from, self.to) {
            (Some(f), Some(t)) => format!(
                "{} objects changed in the API from {} to {}; webhooks delivered {}, missed {} (landed as reconciled events)",
                self.changed,
                f.format("%Y-%m-%d %H:%M:%S"),
                t.format("%H:%M:%S UTC"),
                self.seen,
                self.landed
            ),
            _ => "nothing to reconcile yet (the window has not settled)".into(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct WindowState {
    to: DateTime<Utc>,
}

fn state_path(source: &str) -> Path {
    Path::from_iter([META, "webhooks", source, "reconcile.json"])
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Reconcile webhook source `source` for the window ending `settle` before `now`.
pub async fn run(
    project: &Project,
    lake: &Lake,
    source: &str,
    now: DateTime<Utc>,
) -> Result<Report> {
    let spec = project
        .webhooks
        .get(source)
        .ok_or_else(|| Error::Input(format!("{source} is not a webhook source")))?;
    let r = spec.reconcile.as_ref().ok_or_else(|| {
        Error::Input(format!(
            "webhook source {source} has no reconcile = {{ with = \"<source>.<stream>\" }}"
        ))
    })?;
    let from = match lake.store().get(&state_path(source)).await {
        Ok(g) => {
            let bytes = g.bytes().await?;
            serde_json::from_slice::<WindowState>(&bytes)
                .map(|s| s.to)
                .map_err(|e| {
                    Error::Table(format!(
                        "{}: {e}; delete it to reconcile from the lookback",
                        state_path(source)
                    ))
                })?
        }
        Err(object_store::Error::NotFound { .. }) => {
            now - chrono::Duration::from_std(r.lookback).unwrap_or_default()
        }
        Err(e) => return Err(e.into()),
    };
    let to = now - chrono::Duration::from_std(r.settle).unwrap_or_default();
    let mut report = Report::default();
    if to <= from {
        return Ok(report);
    }
    report.from = Some(from);
    report.to = Some(to);

    // Poll the API: its records changed since the stream's cursor land first.
    let with = format!("{}.{}", r.source, r.stream);
    let summaries =
        crate::extract::extract(project, lake, std::slice::from_ref(&with), |_| {}).await?;
    report.extracted = summaries.iter().map(|s| s.rows).sum();

    let ctx = crate::engine::session(lake).await?;
    let api = format!("{}.{}", ident(&r.source), ident(&r.stream));
    // Every object with a version changed in the window (its latest such
    // version): one that changes again after the window is still checked.
    let changed_sql = format!(
        "select cast({key} as varchar) as k, max(to_timestamp(cast({upd} as varchar))) as updated_at \
         from {api} \
         where to_timestamp(cast({upd} as varchar)) >= to_timestamp({from}) \
           and to_timestamp(cast({upd} as varchar)) < to_timestamp({to}) \
         group by 1",
        key = ident(&r.key),
        upd = ident(&r.updated_at),
        from = lit(&from.to_rfc3339()),
        to = lit(&to.to_rfc3339()),
    );
    let changed = batch_rows_json(&ctx.sql(&changed_sql).await?.collect().await?)?;
    report.changed = changed.len() as u64;
    if changed.is_empty() {
        save(lake, source, to).await?;
        return Ok(report);
    }
    let events = StreamRef::new(source, "events")?;
    let seen: BTreeMap<String, DateTime<Utc>> = if ctx
        .table_exist(format!("{}.events", ident(source)).as_str())?
    {
        let sql = format!(
            "select {ek} as k, max(fired_at) as last from {}.events where fired_at >= to_timestamp({}) group by 1",
            ident(source),
            lit(&(from - chrono::Duration::seconds(SKEW_SECONDS)).to_rfc3339()),
            ek = ident(&r.event_key),
        );
        batch_rows_json(&ctx.sql(&sql).await?.collect().await?)?
            .into_iter()
            .filter_map(|row| {
                let k = row["k"].as_str()?.to_string();
                let t = parse_ts(row["last"].as_str()?)?;
                Some((k, t))
            })
            .collect()
    } else {
        BTreeMap::new()
    };
    let mut missed: Vec<(String, DateTime<Utc>)> = Vec::new();
    for row in &changed {
        let (Some(k), Some(updated)) = (
            row["k"].as_str(),
            row["updated_at"].as_str().and_then(parse_ts),
        ) else {
            continue;
        };
        match seen.get(k) {
            Some(last) if *last >= updated - chrono::Duration::seconds(SKEW_SECONDS) => {
                report.seen += 1
            }
            _ => missed.push((k.to_string(), updated)),
        }
    }
    if !missed.is_empty() {
        // The API's record of each missed object, as the event's payload.
        let mut records: BTreeMap<String, String> = BTreeMap::new();
        for chunk in missed.chunks(500) {
            let keys = chunk
                .iter()
                .map(|(k, _)| lit(k))
                .collect::<Vec<_>>()
                .join(", ");
            // The newest stored version of each.
            let sql = format!(
                "select * exclude (rn) from (select *, row_number() over (partition by cast({key} as varchar) \
                 order by to_timestamp(cast({upd} as varchar)) desc) as rn from {api} \
                 where cast({key} as varchar) in ({keys})) where rn = 1",
                key = ident(&r.key),
                upd = ident(&r.updated_at),
            );
            for row in batch_rows_json(&ctx.sql(&sql).await?.collect().await?)? {
                let Some(k) = row.get(&r.key).map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                }) else {
                    continue;
                };
                records.insert(k, row.to_string());
            }
        }
        let system = format!("{:?}", spec.preset).to_lowercase();
        let envelopes: Vec<Envelope> = missed
            .iter()
            .map(|(k, updated)| {
                let id = format!("reconciled:{k}:{}", updated.timestamp_millis());
                Envelope {
                    identity: format!("{source}\u{1f}reconciled\u{1f}{id}"),
                    event_id: id,
                    event_type: Some("reconciled".into()),
                    source_system: system.clone(),
                    account_id: (r.event_key == "account_id").then(|| k.clone()),
                    contact_id: (r.event_key == "contact_id").then(|| k.clone()),
                    payload: records.get(k).cloned().unwrap_or_else(|| "{}".into()),
                    fired_at: Some(*updated),
                    received_at: now,
                }
            })
            .collect();
        let batch = envelope_batch(&envelopes)?;
        Lander::new(lake.clone(), RunId::new())
            .land_batches(&events, Default::default(), [batch])
            .await?;
        report.landed = envelopes.len() as u64;
        tracing::warn!(
            source,
            missed = report.landed,
            "webhooks missed {} of {} changes; landed them from the API",
            report.landed,
            report.changed
        );
    }
    save(lake, source, to).await?;
    Ok(report)
}

fn parse_ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(&s.replace(' ', "T"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|n| n.and_utc())
        })
}

async fn save(lake: &Lake, source: &str, to: DateTime<Utc>) -> Result<()> {
    let bytes =
        serde_json::to_vec(&WindowState { to }).map_err(|e| Error::Internal(e.to_string()))?;
    lake.store()
        .put(&state_path(source), PutPayload::from(bytes))
        .await?;
    Ok(())
}
