//! Alerts by severity, delivered to Slack (incoming webhooks, Block Kit with
//! a text fallback), PagerDuty (Events API v2: trigger, then resolve with
//! the same `dedup_key`) and generic JSON webhooks, routed by severity and
//! pipeline.
//!
//! | severity | rule | fires when | clears when |
//! |---|---|---|---|
//! | critical | `run_failed` | a scheduled run fails | the schedule's next run succeeds |
//! | critical | `credentials_refused` | a vendor answers 401/403 | a run gets through without |
//! | critical | `stalled` | a schedule that moves data moved nothing for `stalled_minutes` (15) | rows move again |
//! | warning | `error_rate` | a sync's or stream's rejected ÷ attempted passes `error_rate` (5%) | a run of it is back under |
//! | warning | `sla` | the last success is older than the schedule's `sla_minutes` | it succeeds |
//! | warning | `circuit_open` | a vendor's circuit breaker opened | no breaker open, none tripped since |
//! | warning | `budget` | `budget_warn` (80%) of an account's daily API budget is spent | below again (the day turned) |
//! | info | `digest` | once a day at `digest_at`: throughput, errors by category, dead-letter rows waiting | |
//!
//! One incident is one alert: an incident (rule + pipeline) is opened once,
//! kept in `_ferry/alerts/open.json`, and resolved once; while it is open,
//! the condition holding again sends nothing. A delivery that fails is
//! retried at the next evaluation; every attempt is a row in `ferry.alerts`.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::schedule::{self, Schedule};
use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lake::layout::META;
use crate::lake::tables::{self, AlertRow};
use crate::project::secret::{Secret, SecretSource};
use crate::run::Outcome;

/// `[alerts]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// Rejected ÷ attempted above which a sync or stream warns (default 0.05).
    pub error_rate: Option<f64>,
    /// Share of a daily API budget spent that warns (default 0.8).
    pub budget_warn: Option<f64>,
    /// Local time of the daily digest ("09:00"); no digest when unset.
    pub digest_at: Option<String>,
    /// Time zone of `digest_at` (default UTC).
    pub timezone: Option<String>,
    /// Who acts when a schedule names no owner.
    pub owner: Option<String>,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelSection>,
}

/// `[alerts.channels.<name>]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelSection {
    /// slack, pagerduty or webhook.
    #[serde(rename = "type")]
    pub kind: String,
    /// Slack: the incoming webhook URL (a secret: `${SLACK_WEBHOOK_URL}`).
    /// PagerDuty: the Events API URL (default PagerDuty's). Webhook: where to POST.
    pub url: Option<String>,
    /// PagerDuty: the integration's routing key (a secret).
    pub routing_key: Option<String>,
    /// Severities sent here (default all).
    #[serde(default)]
    pub severities: Vec<String>,
    /// Pipelines (schedules, `sync:<name>`, `stream:<source.stream>`) sent here (default all).
    #[serde(default)]
    pub pipelines: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }

    fn parse(s: &str) -> Option<Severity> {
        match s {
            "critical" => Some(Severity::Critical),
            "warning" => Some(Severity::Warning),
            "info" => Some(Severity::Info),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub enum ChannelKind {
    Slack {
        url: std::result::Result<Secret, String>,
    },
    PagerDuty {
        url: String,
        routing_key: std::result::Result<Secret, String>,
    },
    Webhook {
        url: std::result::Result<Secret, String>,
    },
}

#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    pub severities: BTreeSet<Severity>,
    pub pipelines: BTreeSet<String>,
}

impl Channel {
    fn accepts(&self, alert: &Alert) -> bool {
        (self.severities.is_empty() || self.severities.contains(&alert.severity))
            && (self.pipelines.is_empty()
                || self.pipelines.contains(&alert.pipeline)
                || alert
                    .schedule
                    .as_ref()
                    .is_some_and(|s| self.pipelines.contains(s)))
    }
}

/// `[alerts]`, resolved.
#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub error_rate: f64,
    pub budget_warn: f64,
    pub digest_at: Option<NaiveTime>,
    pub tz: Tz,
    pub owner: Option<String>,
    pub channels: Vec<Channel>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            error_rate: 0.05,
            budget_warn: 0.8,
            digest_at: None,
            tz: Tz::UTC,
            owner: None,
            channels: Vec::new(),
        }
    }
}

pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

impl AlertsConfig {
    /// Check `[alerts]`. Errors are `(dotted key under alerts, message)`.
    /// An unset secret does not fail the load: that channel's deliveries
    /// fail, and say which variable to set.
    pub fn resolve(
        a: &AlertsSection,
        secrets: &SecretSource,
        schedules: &BTreeMap<String, Schedule>,
    ) -> std::result::Result<AlertsConfig, (String, String)> {
        let share = |key: &str, v: Option<f64>, default: f64| match v {
            None => Ok(default),
            Some(x) if x > 0.0 && x <= 1.0 => Ok(x),
            Some(x) => Err((
                format!(".{key}"),
                format!("{key} = {x} must be a share between 0 and 1 (0.05 is 5%)"),
            )),
        };
        let digest_at = match &a.digest_at {
            None => None,
            Some(t) => Some(NaiveTime::parse_from_str(t.trim(), "%H:%M").map_err(|_| {
                (
                    ".digest_at".to_string(),
                    format!("digest_at = {t:?}: write a local time as \"HH:MM\", e.g. \"09:00\""),
                )
            })?),
        };
        let tz = match &a.timezone {
            None => Tz::UTC,
            Some(t) => Tz::from_str(t.trim()).map_err(|_| {
                (
                    ".timezone".to_string(),
                    format!("timezone = {t:?} is not an IANA time zone (e.g. \"Europe/Paris\")"),
                )
            })?,
        };
        let mut channels = Vec::new();
        for (name, c) in &a.channels {
            let at = format!(".channels.{name}");
            let secret = |v: &Option<String>, what: &str| match v {
                Some(raw) => secrets.interpolate(raw),
                None => Err(format!("channel {name} has no {what}")),
            };
            let kind = match c.kind.as_str() {
                "slack" => {
                    if c.url.is_none() {
                        return Err((at, "a slack channel needs url, the incoming webhook URL (write url = \"${SLACK_WEBHOOK_URL}\" and set it in the environment or secrets.toml)".into()));
                    }
                    ChannelKind::Slack {
                        url: secret(&c.url, "url"),
                    }
                }
                "pagerduty" => {
                    if c.routing_key.is_none() {
                        return Err((at, "a pagerduty channel needs routing_key, the integration key of an Events API v2 integration (write routing_key = \"${PAGERDUTY_ROUTING_KEY}\")".into()));
                    }
                    ChannelKind::PagerDuty {
                        url: c.url.clone().unwrap_or_else(|| PAGERDUTY_URL.to_string()),
                        routing_key: secret(&c.routing_key, "routing_key"),
                    }
                }
                "webhook" => {
                    if c.url.is_none() {
                        return Err((at, "a webhook channel needs url".into()));
                    }
                    ChannelKind::Webhook {
                        url: secret(&c.url, "url"),
                    }
                }
                other => {
                    return Err((
                        at,
                        format!("type = {other:?}: use \"slack\", \"pagerduty\" or \"webhook\""),
                    ));
                }
            };
            let mut severities = BTreeSet::new();
            for s in &c.severities {
                severities.insert(Severity::parse(s).ok_or_else(|| {
                    (
                        format!("{at}.severities"),
                        format!("severity {s:?}: use \"critical\", \"warning\" or \"info\""),
                    )
                })?);
            }
            for p in &c.pipelines {
                let known = schedules.contains_key(p)
                    || p.starts_with("sync:")
                    || p.starts_with("stream:")
                    || p.starts_with("vendor:")
                    || p.starts_with("account:");
                if !known {
                    return Err((
                        format!("{at}.pipelines"),
                        format!(
                            "pipeline {p:?} is not a schedule; name a schedule, sync:<name> or stream:<source.stream>"
                        ),
                    ));
                }
            }
            channels.push(Channel {
                name: name.clone(),
                kind,
                severities,
                pipelines: c.pipelines.iter().cloned().collect(),
            });
        }
        Ok(AlertsConfig {
            error_rate: share("error_rate", a.error_rate, 0.05)?,
            budget_warn: share("budget_warn", a.budget_warn, 0.8)?,
            digest_at,
            tz,
            owner: a.owner.clone(),
            channels,
        })
    }
}

/// A condition that holds now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alert {
    pub severity: Severity,
    pub rule: String,
    /// What it is about: a schedule, `sync:<name>`, `stream:<source.stream>`,
    /// `vendor:<name>` or `account:<...>`.
    pub pipeline: String,
    /// The schedule whose run raised it, for routing.
    pub schedule: Option<String>,
    pub summary: String,
    /// Counts and records involved.
    pub details: Value,
    pub owner: Option<String>,
    pub next_action: String,
}

impl Alert {
    pub fn key(&self) -> String {
        format!("{}:{}", self.rule, self.pipeline)
    }
}

/// An open incident (`_ferry/alerts/open.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Incident {
    alert: Alert,
    dedup_key: String,
    opened_at: DateTime<Utc>,
    /// Channels that have not acknowledged the trigger (or, once resolving,
    /// the resolve) yet.
    pending: BTreeSet<String>,
    /// The condition cleared: the resolve is being delivered.
    #[serde(default)]
    resolving: bool,
    /// The process delivering it, and since when: another process takes
    /// over deliveries a claim has left pending for 5 minutes.
    #[serde(default)]
    claimed_by: String,
    #[serde(default = "Utc::now")]
    claimed_at: DateTime<Utc>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct OpenState {
    incidents: BTreeMap<String, Incident>,
    /// The last day a digest went out (in the digest's time zone).
    last_digest: Option<chrono::NaiveDate>,
}

/// A delivery to make: incident key, channel, action.
type Delivery = (String, String, &'static str);

async fn load_open(lake: &Lake) -> Result<(OpenState, Option<object_store::UpdateVersion>)> {
    match lake.store().get(&open_path()).await {
        Ok(g) => {
            let version = object_store::UpdateVersion {
                e_tag: g.meta.e_tag.clone(),
                version: g.meta.version.clone(),
            };
            let bytes = g.bytes().await?;
            let state = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: unreadable ({e}); starting with no open incidents",
                    open_path()
                );
                OpenState::default()
            });
            Ok((state, Some(version)))
        }
        Err(object_store::Error::NotFound { .. }) => Ok((OpenState::default(), None)),
        Err(e) => Err(e.into()),
    }
}

/// Write `state` if nobody changed it since `version` was read.
async fn store_open(
    lake: &Lake,
    state: &OpenState,
    version: Option<object_store::UpdateVersion>,
) -> Result<bool> {
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::Internal(e.to_string()))?;
    let mode = match version {
        Some(v) => object_store::PutMode::Update(v),
        None => object_store::PutMode::Create,
    };
    let opts = object_store::PutOptions {
        mode,
        ..Default::default()
    };
    match lake
        .store()
        .put_opts(&open_path(), PutPayload::from(bytes), opts)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. })
        | Err(object_store::Error::Precondition { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn open_path() -> Path {
    Path::from_iter([META, "alerts", "open.json"])
}

/// A change of condition: raise (it holds) or clear (it no longer holds).
#[derive(Debug, Clone)]
pub enum Change {
    Raise(Alert),
    Clear { rule: String, pipeline: String },
}

/// Evaluates the rules and delivers alerts.
pub struct Alerter {
    project: Arc<crate::project::Project>,
    lake: Lake,
    http: reqwest::Client,
    /// The incidents as last read or written (shared by every `ferry serve`
    /// on the lake through `open.json`, updated conditionally).
    state: OpenState,
    /// This process, in incident claims.
    me: String,
    /// Circuit trips per vendor at the last evaluation, and the last trip.
    trips_seen: BTreeMap<String, i64>,
    last_trip: BTreeMap<String, DateTime<Utc>>,
}

impl Alerter {
    pub async fn open(project: Arc<crate::project::Project>, lake: Lake) -> Result<Alerter> {
        let (state, _) = load_open(&lake).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // A webhook URL carries its token: never follow it elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Alerter {
            project,
            lake,
            http,
            state,
            me: format!(
                "{}-{}-{}",
                crate::lake::lease::host(),
                std::process::id(),
                &uuid::Uuid::now_v7().simple().to_string()[24..]
            ),
            trips_seen: BTreeMap::new(),
            last_trip: BTreeMap::new(),
        })
    }

    /// Open incidents (as last read), as `(key, alert)`.
    pub fn open_incidents(&self) -> Vec<(String, Alert)> {
        self.state
            .incidents
            .iter()
            .filter(|(_, i)| !i.resolving)
            .map(|(k, i)| (k.clone(), i.alert.clone()))
            .collect()
    }

    fn config(&self) -> &AlertsConfig {
        &self.project.alerts
    }

    fn owner(&self, schedule: Option<&str>) -> Option<String> {
        schedule
            .and_then(|s| self.project.schedules.get(s))
            .and_then(|s| s.owner.clone())
            .or_else(|| self.config().owner.clone())
    }

    /// The changes a finished scheduled run brings.
    pub async fn on_run(&self, schedule: &str, outcome: &Outcome) -> Vec<Change> {
        let mut changes = Vec::new();
        let owner = self.owner(Some(schedule));
        let first_line = |s: &str| s.lines().next().unwrap_or("").to_string();
        if outcome.auth_refused {
            changes.push(Change::Raise(Alert {
                severity: Severity::Critical,
                rule: "credentials_refused".into(),
                pipeline: schedule.to_string(),
                schedule: Some(schedule.to_string()),
                summary: format!("{schedule}: a vendor refused ferry's credentials"),
                details: json!({"run_id": outcome.run_id, "error": outcome.error}),
                owner: owner.clone(),
                next_action: "A person must renew the credentials (expired, revoked or missing a scope): set the token in the environment or secrets.toml, then the next run goes on. Nothing more is sent until then.".into(),
            }));
        } else if outcome.ok {
            changes.push(Change::Clear {
                rule: "credentials_refused".into(),
                pipeline: schedule.to_string(),
            });
        }
        if !outcome.ok && !outcome.stopped {
            let failed: Vec<String> = outcome
                .stages
                .iter()
                .filter(|s| s.status == "failed")
                .map(|s| format!("{}: {}", s.name, first_line(&s.detail)))
                .collect();
            changes.push(Change::Raise(Alert {
                severity: Severity::Critical,
                rule: "run_failed".into(),
                pipeline: schedule.to_string(),
                schedule: Some(schedule.to_string()),
                summary: format!(
                    "{schedule}: run {} failed: {}",
                    outcome.run_id,
                    first_line(outcome.error.as_deref().unwrap_or("see its stages"))
                ),
                details: json!({"run_id": outcome.run_id, "failed_stages": failed}),
                owner: owner.clone(),
                next_action: format!(
                    "Read the stages: ferry query \"select stage, status, detail from ferry.run_stages where run_id = '{}'\"; fix the cause; the next scheduled run retries (each stage resumes from its committed state).",
                    outcome.run_id
                ),
            }));
        } else if outcome.ok {
            changes.push(Change::Clear {
                rule: "run_failed".into(),
                pipeline: schedule.to_string(),
            });
        }
        for p in outcome.stages.iter().flat_map(|s| s.pipelines.iter()) {
            let rate = if p.attempted == 0 {
                0.0
            } else {
                p.rejected as f64 / p.attempted as f64
            };
            if p.attempted > 0 && rate > self.config().error_rate {
                let samples = if let Some(sync) = p.pipeline.strip_prefix("sync:") {
                    dead_letter_samples(&self.lake, sync, p.run_id.as_deref()).await
                } else {
                    Vec::new()
                };
                let next_action = if let Some(sync) = p.pipeline.strip_prefix("sync:") {
                    format!(
                        "Each dead-lettered row carries its error: ferry query \"select key, error_category, error_message from ferry.sync_log where sync = '{sync}' and status in ('rejected', 'failed') order by at desc\". Fix the values in the model (or the CRM's property), then `ferry sync {sync} --retry-failed` sends them again."
                    )
                } else {
                    let stream = p.pipeline.trim_start_matches("stream:");
                    format!(
                        "Quarantined rows keep the vendor's record and the reason: ferry query \"select reason, record from ferry.quarantine where stream = '{stream}'\". Widen the stream's schema or fix the source, then land them again."
                    )
                };
                changes.push(Change::Raise(Alert {
                    severity: Severity::Warning,
                    rule: "error_rate".into(),
                    pipeline: p.pipeline.clone(),
                    schedule: Some(schedule.to_string()),
                    summary: format!(
                        "{}: {} of {} rows rejected ({:.1}%, over {:.0}%)",
                        p.pipeline,
                        p.rejected,
                        p.attempted,
                        rate * 100.0,
                        self.config().error_rate * 100.0
                    ),
                    details: json!({
                        "run_id": p.run_id,
                        "attempted": p.attempted,
                        "rejected": p.rejected,
                        "error_rate": rate,
                        "samples": samples,
                    }),
                    owner: owner.clone(),
                    next_action,
                }));
            } else if p.attempted > 0 {
                changes.push(Change::Clear {
                    rule: "error_rate".into(),
                    pipeline: p.pipeline.clone(),
                });
            }
        }
        changes
    }

    /// The changes the clock brings: stalled pipelines, missed SLAs, open
    /// circuits, spent budgets, and the daily digest (delivered here).
    pub async fn on_tick(&mut self, now: DateTime<Utc>) -> Result<Vec<Change>> {
        let mut changes = Vec::new();
        let schedules: Vec<Schedule> = self.project.schedules.values().cloned().collect();
        for s in &schedules {
            let Some(state) = schedule::load_state(&self.lake, &s.name).await? else {
                continue;
            };
            let owner = self.owner(Some(&s.name));
            if s.watches_throughput() && state.last_finished.is_some() {
                let since = state.last_moved_at.unwrap_or(state.since);
                let quiet = (now - since).num_minutes();
                // Running (twice at least since rows last moved) and dry for
                // the window: a daily job's quiet night is not a stall.
                if quiet >= s.stalled_minutes as i64 && state.runs_without_rows >= 2 {
                    changes.push(Change::Raise(Alert {
                        severity: Severity::Critical,
                        rule: "stalled".into(),
                        pipeline: s.name.clone(),
                        schedule: Some(s.name.clone()),
                        summary: format!(
                            "{}: nothing moved for {quiet} minutes (threshold {})",
                            s.name, s.stalled_minutes
                        ),
                        details: json!({
                            "last_moved_at": state.last_moved_at,
                            "last_run_id": state.last_run_id,
                            "last_status": state.last_status,
                        }),
                        owner: owner.clone(),
                        next_action: format!(
                            "Check that the vendor still sends data and the runs' figures: ferry schedules; ferry query \"select * from ferry.schedule_runs where schedule = '{}' order by started_at desc limit 5\".",
                            s.name
                        ),
                    }));
                } else {
                    changes.push(Change::Clear {
                        rule: "stalled".into(),
                        pipeline: s.name.clone(),
                    });
                }
            }
            if let Some(sla) = s.sla_minutes {
                let since = state.last_success_at.unwrap_or(state.since);
                let late = (now - since).num_minutes();
                if late > sla as i64 {
                    changes.push(Change::Raise(Alert {
                        severity: Severity::Warning,
                        rule: "sla".into(),
                        pipeline: s.name.clone(),
                        schedule: Some(s.name.clone()),
                        summary: format!(
                            "{}: last success {late} minutes ago (SLA {sla} minutes)",
                            s.name
                        ),
                        details: json!({
                            "last_success_at": state.last_success_at,
                            "last_status": state.last_status,
                            "last_error": state.last_error,
                        }),
                        owner: owner.clone(),
                        next_action: "Look at the latest runs and their errors (ferry schedules); fix what fails, or run the job by hand to catch up.".into(),
                    }));
                } else {
                    changes.push(Change::Clear {
                        rule: "sla".into(),
                        pipeline: s.name.clone(),
                    });
                }
            }
        }
        for (vendor, open, trips) in crate::metrics::circuits() {
            let pipeline = format!("vendor:{vendor}");
            let seen = self.trips_seen.insert(vendor.clone(), trips).unwrap_or(0);
            if trips > seen || open > 0 {
                self.last_trip.insert(vendor.clone(), now);
            }
            // Open while a breaker is open, and for 15 minutes after the
            // last trip: breakers close between runs, an outage does not.
            let recent = self
                .last_trip
                .get(&vendor)
                .is_some_and(|t| now - *t < chrono::Duration::minutes(15));
            if open > 0 || recent {
                changes.push(Change::Raise(Alert {
                    severity: Severity::Warning,
                    rule: "circuit_open".into(),
                    pipeline,
                    schedule: None,
                    summary: format!(
                        "{vendor}: circuit breaker opened ({open} open now): most recent calls failed"
                    ),
                    details: json!({"open": open, "trips_since_start": trips}),
                    owner: self.owner(None),
                    next_action: format!(
                        "ferry pauses calls to {vendor} and probes before resuming; check the vendor's status page. Nothing is lost: unsent rows go next run."
                    ),
                }));
            } else {
                changes.push(Change::Clear {
                    rule: "circuit_open".into(),
                    pipeline,
                });
            }
        }
        crate::http::publish_budgets();
        for (account, limit, remaining) in crate::metrics::budgets() {
            if limit == 0 {
                continue;
            }
            let spent = (limit - remaining.min(limit)) as f64 / limit as f64;
            let pipeline = format!("account:{account}");
            if spent >= self.config().budget_warn {
                changes.push(Change::Raise(Alert {
                    severity: Severity::Warning,
                    rule: "budget".into(),
                    pipeline,
                    schedule: None,
                    summary: format!(
                        "{account}: {:.0}% of today's API budget spent ({remaining} of {limit} calls left)",
                        spent * 100.0
                    ),
                    details: json!({"limit": limit, "remaining": remaining}),
                    owner: self.owner(None),
                    next_action: "Spread or thin the schedules that call this account (lower requests_per_10s, fewer runs); when the budget is spent, syncs stop cleanly and resume tomorrow.".into(),
                }));
            } else {
                changes.push(Change::Clear {
                    rule: "budget".into(),
                    pipeline,
                });
            }
        }
        if let Err(e) = self.digest(now).await {
            tracing::warn!("the daily digest was not sent: {e}");
        }
        Ok(changes)
    }

    /// Send the daily digest if its time has come today and it has not gone out.
    async fn digest(&mut self, now: DateTime<Utc>) -> Result<()> {
        let Some(at) = self.config().digest_at else {
            return Ok(());
        };
        let local = self.config().tz.from_utc_datetime(&now.naive_utc());
        let today = local.date_naive();
        if local.time() < at {
            return Ok(());
        }
        // Claim today's digest first, so it goes out once.
        let (mut shared, version) = load_open(&self.lake).await?;
        if shared.last_digest == Some(today) {
            return Ok(());
        }
        shared.last_digest = Some(today);
        if !store_open(&self.lake, &shared, version).await? {
            return Ok(());
        }
        self.state = shared;
        let details = digest_figures(&self.lake, now).await?;
        let alert = Alert {
            severity: Severity::Info,
            rule: "digest".into(),
            pipeline: self.project.name.clone(),
            schedule: None,
            summary: format!(
                "{} daily digest: {} rows extracted, {} records synced, {} rejected, {} dead-letter rows waiting",
                self.project.name,
                details["rows_extracted"],
                details["records_synced"],
                details["rejected"],
                details["dead_letter_waiting"]
            ),
            details,
            owner: self.owner(None),
            next_action: "Nothing to do unless a figure surprises you; dead-letter rows: ferry query \"select * from ferry.sync_log where status in ('rejected','failed')\".".into(),
        };
        let key = format!("digest:{today}");
        let mut rows = Vec::new();
        for c in self.config().channels.clone() {
            if !c.accepts(&alert) {
                continue;
            }
            let r = self.deliver(&c, &alert, "trigger", &key).await;
            rows.push(self.row(&alert, "trigger", &key, &c.name, r.map_err(|e| e.message)));
        }
        self.record(rows).await
    }

    /// Apply changes: open and announce new incidents, resolve cleared
    /// ones, retry deliveries that failed before. Each incident is claimed
    /// in `open.json` (a conditional update) before it is delivered, so two
    /// `ferry serve`s on one lake never announce it twice.
    pub async fn apply(&mut self, changes: Vec<Change>) -> Result<()> {
        let channels = self.config().channels.clone();
        let accepting = |alert: &Alert| -> BTreeSet<String> {
            channels
                .iter()
                .filter(|c| c.accepts(alert))
                .map(|c| c.name.clone())
                .collect()
        };
        // 1. Claim: record what changes, and what this process will deliver.
        let mut work: Vec<Delivery> = Vec::new();
        let mut unrouted: Vec<(Alert, &'static str, String)> = Vec::new();
        for _ in 0..8 {
            let (mut shared, version) = load_open(&self.lake).await?;
            work.clear();
            unrouted.clear();
            let now = Utc::now();
            let mut changed = false;
            for change in &changes {
                match change {
                    Change::Raise(alert) => {
                        let key = alert.key();
                        if shared.incidents.contains_key(&key) {
                            continue;
                        }
                        let pending = accepting(alert);
                        if pending.is_empty() {
                            unrouted.push((
                                alert.clone(),
                                "trigger",
                                format!("ferry:{}:{key}", self.project.name),
                            ));
                        }
                        tracing::warn!(severity = alert.severity.as_str(), rule = %alert.rule, pipeline = %alert.pipeline, "alert: {}", alert.summary);
                        shared.incidents.insert(
                            key.clone(),
                            Incident {
                                alert: alert.clone(),
                                dedup_key: format!("ferry:{}:{key}", self.project.name),
                                opened_at: now,
                                pending,
                                resolving: false,
                                claimed_by: self.me.clone(),
                                claimed_at: now,
                            },
                        );
                        changed = true;
                    }
                    Change::Clear { rule, pipeline } => {
                        let key = format!("{rule}:{pipeline}");
                        let Some(i) = shared.incidents.get_mut(&key) else {
                            continue;
                        };
                        if i.resolving {
                            continue;
                        }
                        tracing::info!(rule = %rule, pipeline = %pipeline, "resolved");
                        i.resolving = true;
                        i.pending = accepting(&i.alert);
                        i.claimed_by = self.me.clone();
                        i.claimed_at = now;
                        if i.pending.is_empty() {
                            unrouted.push((i.alert.clone(), "resolve", i.dedup_key.clone()));
                        }
                        changed = true;
                    }
                }
            }
            // Deliveries left pending by this process, or by one that has
            // not finished them for 5 minutes (it may be gone).
            for (key, i) in shared.incidents.iter_mut() {
                if i.pending.is_empty() {
                    continue;
                }
                let stale = now - i.claimed_at > chrono::Duration::minutes(5);
                if i.claimed_by != self.me && !stale {
                    continue;
                }
                if i.claimed_by != self.me {
                    i.claimed_by = self.me.clone();
                    i.claimed_at = now;
                    changed = true;
                }
                let action = if i.resolving { "resolve" } else { "trigger" };
                for c in &i.pending {
                    work.push((key.clone(), c.clone(), action));
                }
            }
            shared
                .incidents
                .retain(|_, i| !(i.resolving && i.pending.is_empty()));
            if !changed || store_open(&self.lake, &shared, version).await? {
                self.state = shared;
                break;
            }
        }
        // 2. Deliver.
        let mut rows = Vec::new();
        let mut done: Vec<(String, String)> = Vec::new();
        for (key, channel, action) in &work {
            let Some(i) = self.state.incidents.get(key).cloned() else {
                continue;
            };
            let Some(c) = channels.iter().find(|c| &c.name == channel) else {
                // The channel is gone from ferry.toml: nothing to deliver.
                done.push((key.clone(), channel.clone()));
                continue;
            };
            let r = self.deliver(c, &i.alert, action, &i.dedup_key).await;
            match &r {
                Ok(()) => done.push((key.clone(), channel.clone())),
                // A refusal (not 429 or 5xx) will not change by retrying.
                Err(e) if e.permanent => done.push((key.clone(), channel.clone())),
                Err(_) => {}
            }
            rows.push(self.row(
                &i.alert,
                action,
                &i.dedup_key,
                channel,
                r.map_err(|e| e.message),
            ));
        }
        for (alert, action, key) in unrouted {
            // No channel takes it: still on record.
            rows.push(self.row(&alert, action, &key, "", Ok(())));
        }
        // 3. Settle what was delivered.
        if !done.is_empty() {
            for _ in 0..8 {
                let (mut shared, version) = load_open(&self.lake).await?;
                for (key, channel) in &done {
                    if let Some(i) = shared.incidents.get_mut(key) {
                        i.pending.remove(channel);
                    }
                }
                shared
                    .incidents
                    .retain(|_, i| !(i.resolving && i.pending.is_empty()));
                if store_open(&self.lake, &shared, version).await? {
                    self.state = shared;
                    break;
                }
            }
        }
        self.record(rows).await
    }

    fn row(
        &self,
        alert: &Alert,
        action: &str,
        dedup_key: &str,
        channel: &str,
        result: std::result::Result<(), String>,
    ) -> AlertRow {
        AlertRow {
            at: tables::ts(Utc::now()),
            severity: alert.severity.as_str().into(),
            rule: alert.rule.clone(),
            pipeline: alert.pipeline.clone(),
            action: action.into(),
            dedup_key: dedup_key.into(),
            summary: alert.summary.clone(),
            details: alert.details.to_string(),
            owner: alert.owner.clone(),
            next_action: alert.next_action.clone(),
            channel: channel.into(),
            delivered: result.is_ok() && !channel.is_empty(),
            error: result.err(),
        }
    }

    async fn record(&self, rows: Vec<AlertRow>) -> Result<()> {
        let name = format!(
            "{}-{}",
            Utc::now().format("%Y%m%dT%H%M%S%.6fZ"),
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        );
        tables::append(
            &self.lake,
            tables::ALERTS,
            tables::alerts_schema(),
            &name,
            &rows,
        )
        .await
    }

    /// Send one alert to one channel: up to 3 attempts (429 and 5xx and
    /// dropped connections are retried; other refusals are not).
    async fn deliver(
        &self,
        channel: &Channel,
        alert: &Alert,
        action: &str,
        dedup_key: &str,
    ) -> std::result::Result<(), DeliveryError> {
        let secret = |s: &std::result::Result<Secret, String>| {
            s.clone().map_err(|message| DeliveryError {
                message,
                permanent: false,
            })
        };
        let (url, body) = match &channel.kind {
            ChannelKind::Slack { url } => (
                secret(url)?.expose().to_string(),
                slack_payload(&self.project.name, alert, action),
            ),
            ChannelKind::PagerDuty { url, routing_key } => (
                url.clone(),
                pagerduty_payload(
                    &self.project.name,
                    alert,
                    action,
                    dedup_key,
                    secret(routing_key)?.expose(),
                ),
            ),
            ChannelKind::Webhook { url } => (
                secret(url)?.expose().to_string(),
                json!({
                    "project": self.project.name,
                    "action": action,
                    "dedup_key": dedup_key,
                    "alert": alert,
                    "at": Utc::now(),
                }),
            ),
        };
        let mut last = String::new();
        for attempt in 0..3u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300 * (1 << attempt))).await;
            }
            match self.http.post(&url).json(&body).send().await {
                Ok(reply) => {
                    let status = reply.status();
                    let retry_after = reply
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let text: String = reply
                        .text()
                        .await
                        .unwrap_or_default()
                        .chars()
                        .take(300)
                        .collect();
                    if status.is_success() {
                        return Ok(());
                    }
                    last = format!("{} answered {status}: {}", channel.name, text.trim());
                    if status.as_u16() == 429 {
                        tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1).min(5)))
                            .await;
                        continue;
                    }
                    if status.is_server_error() {
                        continue;
                    }
                    // A refusal (bad payload, revoked webhook): retrying the
                    // same thing will not help; the channel's owner must act.
                    return Err(DeliveryError {
                        message: last,
                        permanent: true,
                    });
                }
                // Without the URL: a Slack webhook URL is a secret.
                Err(e) => last = format!("{}: {}", channel.name, e.without_url()),
            }
        }
        Err(DeliveryError {
            message: last,
            permanent: false,
        })
    }
}

/// A delivery that did not go through.
#[derive(Debug)]
struct DeliveryError {
    message: String,
    /// The channel refused it (a 4xx other than 429): retrying cannot help.
    permanent: bool,
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Slack's Block Kit message, with `text` as the notification fallback.
pub fn slack_payload(project: &str, alert: &Alert, action: &str) -> Value {
    let (mark, label) = match (action, alert.severity) {
        ("resolve", _) => ("✅", "RESOLVED"),
        (_, Severity::Critical) => ("🔴", "CRITICAL"),
        (_, Severity::Warning) => ("🟠", "WARNING"),
        (_, Severity::Info) => ("🔵", "INFO"),
    };
    let text = format!("[{label}] {}", alert.summary);
    let mut facts = format!(
        "*Pipeline:* `{}`\n*Rule:* `{}`\n*Owner:* {}",
        alert.pipeline,
        alert.rule,
        alert.owner.as_deref().unwrap_or("(none set)")
    );
    if let Some(obj) = alert.details.as_object() {
        for (k, v) in obj {
            if v.is_null() {
                continue;
            }
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            facts.push_str(&format!("\n*{k}:* {}", cut(&v, 400)));
        }
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": cut(&format!("{mark} {label}: {}", alert.rule.replace('_', " ")), 150), "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&alert.summary, 3000)}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&facts, 3000)}}),
    ];
    if action != "resolve" {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": cut(&format!("*Next:* {}", alert.next_action), 3000)}}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": cut(&format!("ferry · {project}"), 300)}]}));
    json!({"text": cut(&text, 3000), "blocks": blocks})
}

/// A PagerDuty Events API v2 event.
pub fn pagerduty_payload(
    project: &str,
    alert: &Alert,
    action: &str,
    dedup_key: &str,
    routing_key: &str,
) -> Value {
    let dedup_key = cut(dedup_key, 255);
    if action == "resolve" {
        return json!({"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key});
    }
    json!({
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": cut(&alert.summary, 1024),
            "source": format!("ferry/{project}"),
            "severity": alert.severity.as_str(),
            "component": alert.pipeline,
            "group": project,
            "class": alert.rule,
            "custom_details": {
                "details": alert.details,
                "owner": alert.owner,
                "next_action": alert.next_action,
            },
        },
    })
}

/// Up to 3 dead-lettered rows of a sync run, with their errors.
async fn dead_letter_samples(lake: &Lake, sync: &str, run_id: Option<&str>) -> Vec<Value> {
    let Some(run_id) = run_id else {
        return Vec::new();
    };
    let sql = format!(
        "select key, error_category, error_message from ferry.sync_log \
         where sync = '{}' and run_id = '{}' and status in ('rejected', 'failed') limit 3",
        sync.replace('\'', "''"),
        run_id.replace('\'', "''")
    );
    let rows = async {
        let ctx = crate::engine::session(lake).await?;
        let batches = ctx.sql(&sql).await?.collect().await?;
        crate::lake::log::batch_rows_json(&batches)
    }
    .await;
    rows.unwrap_or_default()
}

/// The digest's figures for the last 24 hours.
async fn digest_figures(lake: &Lake, now: DateTime<Utc>) -> Result<Value> {
    let ctx = crate::engine::session(lake).await?;
    let since = (now - chrono::Duration::hours(24)).to_rfc3339();
    let one = |sql: String| {
        let ctx = ctx.clone();
        async move {
            let batches = ctx.sql(&sql).await?.collect().await?;
            crate::lake::log::batch_rows_json(&batches)
        }
    };
    let extracted = one(format!(
        "select coalesce(sum(rows), 0) as n, coalesce(sum(quarantined), 0) as q from ferry.extract_runs where started_at >= timestamp '{since}'"
    ))
    .await?;
    let synced = one(format!(
        "select coalesce(sum(created + updated + archived), 0) as n, coalesce(sum(rejected + failed), 0) as r from ferry.sync_runs where started_at >= timestamp '{since}'"
    ))
    .await?;
    let categories = one(format!(
        "select error_category, count(*) as rows from ferry.sync_log where at >= timestamp '{since}' and status in ('rejected', 'failed') group by 1 order by 2 desc limit 10"
    ))
    .await?;
    let waiting = one(include_str!("../../sql/health/dead_letter_count.sql").to_string()).await?;
    let n = |v: &[Value], k: &str| v.first().and_then(|r| r[k].as_i64()).unwrap_or(0);
    Ok(json!({
        "rows_extracted": n(&extracted, "n"),
        "rows_quarantined": n(&extracted, "q"),
        "records_synced": n(&synced, "n"),
        "rejected": n(&synced, "r"),
        "errors_by_category": categories,
        "dead_letter_waiting": n(&waiting, "n"),
    }))
}

/// The incidents open now, for the health page.
pub async fn open_incidents(lake: &Lake) -> Result<Vec<Value>> {
    let state: OpenState = match lake.store().get(&open_path()).await {
        Ok(g) => serde_json::from_slice(&g.bytes().await?).unwrap_or_default(),
        Err(object_store::Error::NotFound { .. }) => OpenState::default(),
        Err(e) => return Err(e.into()),
    };
    Ok(state
        .incidents
        .values()
        .filter(|i| !i.resolving)
        .map(|i| {
            json!({
                "severity": i.alert.severity.as_str(),
                "rule": i.alert.rule,
                "pipeline": i.alert.pipeline,
                "summary": i.alert.summary,
                "owner": i.alert.owner,
                "next_action": i.alert.next_action,
                "opened_at": i.opened_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
                "undelivered": i.pending.iter().collect::<Vec<_>>(),
            })
        })
        .collect())
}
